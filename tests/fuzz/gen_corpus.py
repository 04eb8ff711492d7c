#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into tests/fuzz/corpus/<target>/
and their dictionaries into tests/fuzz/<target>.dict.

Deterministic and tiny: a handful of valid inputs and near misses per target
(one per validation rule worth reaching quickly). Run from anywhere:
    python3 tests/fuzz/gen_corpus.py
Existing seed files of the same names are overwritten; others are left alone.
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def out(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- safetensors -------------------------------------------------------------

def st_file(header, data, pad=True, hlen=None):
    """header: dict (dumped compactly) or raw str/bytes; pad to 8 like writers do."""
    h = header if isinstance(header, (str, bytes)) else json.dumps(header, separators=(",", ":"))
    if isinstance(h, str):
        h = h.encode()
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h) if hlen is None else hlen) + h + data


def f32(*v):
    return struct.pack("<%df" % len(v), *v)


def f16(*v):
    return struct.pack("<%de" % len(v), *v)


def bf16(*v):
    return b"".join(struct.pack("<f", x)[2:] for x in v)


def tensors(*specs):
    """specs: (name, dtype, shape, bytes) -> (header dict, data), contiguous."""
    hdr, data = {}, b""
    for name, dt, shape, raw in specs:
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    return hdr, data


def gen_st():
    # Two small tensors of different dtypes: the minimal valid model file.
    h, d = tensors(("a.weight", "F32", [2, 2], f32(1.0, -2.5, 0.0, 3.25)),
                   ("b.bias", "F16", [3], f16(0.5, -1.0, 65504.0)))
    out("st", "valid_f32_f16", st_file(h, d))
    # BF16, a scalar, an empty tensor, metadata with a tied-embedding alias.
    h, d = tensors(("lm_head.weight", "BF16", [2, 1], bf16(1.0, -0.125)),
                   ("norm.weight", "F32", [], f32(7.0)),
                   ("empty", "F16", [0, 4], b""))
    h = {"__metadata__": {"format": "pt", "model.embed_tokens.weight": "lm_head.weight"}, **h}
    out("st", "valid_bf16_alias", st_file(h, d))
    # Dtypes the reader maps but cannot convert, in a non-8-aligned header.
    h, d = tensors(("i", "I32", [2], struct.pack("<2i", 1, -1)), ("u", "U8", [3], b"\x01\x02\x03"),
                   ("q", "I64", [1], struct.pack("<q", 5)), ("z", "BOOL", [1], b"\x01"),
                   ("d", "F64", [1], struct.pack("<d", 1.5)), ("s", "I16", [1], b"\0\0"),
                   ("c", "I8", [1], b"\xff"))
    out("st", "valid_int_dtypes_unaligned", st_file(h, d, pad=False))
    # Half special values: subnormals, inf, NaN, -0.
    raw = struct.pack("<8H", 0x0001, 0x03ff, 0x7c00, 0xfc00, 0x7e01, 0x7d00, 0x8000, 0x3c00)
    h, d = tensors(("h", "F16", [8], raw), ("g", "BF16", [4], struct.pack("<4H", 0x7f81, 0xff80, 0x0001, 0x8000)))
    out("st", "valid_half_specials", st_file(h, d))
    # More tensors than the reader's initial table (16), two aliases, one tensor named in metadata.
    specs = [("t.%02d" % i, ("F32", "F16", "BF16")[i % 3], [1], (f32, f16, bf16)[i % 3](i / 3.0)) for i in range(20)]
    h, d = tensors(*specs)
    h = {"__metadata__": {"alias.a": "t.00", "alias.b": "t.19", "t.01": "t.02", "note": "x"}, **h}
    out("st", "valid_20_tensors_2_aliases", st_file(h, d))
    # F32 values that exercise the f16/bf16 rounding (ties, subnormals, overflow, NaN payloads).
    raw = struct.pack("<10I", 0x3f801000, 0x3f803000, 0x33000001, 0x387fc000, 0x477ff000, 0x477fefff,
                      0x7f800001, 0xff7fffff, 0x3f808000, 0x00000001)
    out("st", "valid_f32_rounding", st_file(*tensors(("r", "F32", [10], raw))))
    # Near misses, one validation rule each.
    out("st", "bad_name_too_long", st_file(*tensors(("n" * 300, "F32", [1], f32(1)))))
    out("st", "bad_nine_dims", st_file(*tensors(("a", "F32", [1] * 9, f32(1)))))
    out("st", "bad_metadata_not_object", st_file({"__metadata__": [1]}, b""))
    h, d = tensors(("a", "F32", [2], f32(1, 2)))
    out("st", "bad_truncated_data", st_file(h, d[:5]))
    out("st", "bad_header_len_past_eof", st_file(h, d, hlen=4096))
    out("st", "bad_header_len_zero", st_file(h, d, hlen=0))
    out("st", "bad_short_file", b"\x10\x00\x00")
    out("st", "bad_overlap", st_file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                      "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, f32(1, 2)))
    out("st", "bad_span_mismatch", st_file({"a": {"dtype": "F16", "shape": [2], "data_offsets": [0, 8]}}, f32(1, 2)))
    out("st", "bad_dtype", st_file({"a": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}}, b"\0"))
    out("st", "bad_shape_overflow",
        st_file({"a": {"dtype": "F32", "shape": [4294967296, 4294967296, 16], "data_offsets": [0, 0]}}, b""))
    out("st", "bad_duplicate_key",
        st_file('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],'
                '"data_offsets":[0,4]}}', f32(1)))
    out("st", "bad_metadata_not_string", st_file({"__metadata__": {"k": 1}}, b""))
    out("st", "bad_not_object", st_file("[1,2,3]", b""))
    out("st", "bad_json", st_file('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]', f32(1)))


# ---- sharded models: index "####" s1 "####" s2 "####" s3 ------------------------------

def gen_st_index():
    def model(index, *shards):
        parts = [json.dumps(index, separators=(",", ":")).encode() if isinstance(index, dict) else index.encode()]
        return b"####".join(parts + list(shards))
    h1, d1 = tensors(("lm_head.weight", "F16", [2, 2], f16(1, 2, 3, 4)), ("norm.weight", "F32", [2], f32(1, 1)))
    h1 = {"__metadata__": {"format": "pt", "model.embed_tokens.weight": "lm_head.weight"}, **h1}
    h2, d2 = tensors(("layers.0.w", "BF16", [3], bf16(0.5, -0.5, 2.0)))
    s1, s2 = st_file(h1, d1), st_file(h2, d2)
    wm = {"lm_head.weight": "s1", "norm.weight": "s1", "layers.0.w": "s2", "model.embed_tokens.weight": "s1"}
    out("st_index", "valid_two_shards", model({"metadata": {"total_size": 28}, "weight_map": wm}, s1, s2))
    out("st_index", "valid_one_shard", model({"weight_map": {"layers.0.w": "s1"}}, s2))
    out("st_index", "bad_missing_shard", model({"weight_map": dict(wm, extra="s3")}, s1, s2))
    out("st_index", "bad_wrong_shard", model({"weight_map": dict(wm, **{"norm.weight": "s2"})}, s1, s2))
    out("st_index", "bad_unlisted", model({"weight_map": {"layers.0.w": "s2", "norm.weight": "s1"}}, s1, s2))
    out("st_index", "bad_duplicate_across", model({"weight_map": {"layers.0.w": "s1", "zz": "s2"}}, s2, s2))
    out("st_index", "bad_conflicting_alias",
        model({"weight_map": {"a": "s1", "b": "s2", "x": "s1"}},
              st_file({"__metadata__": {"x": "a"}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
                      f32(1)),
              st_file({"__metadata__": {"x": "b"}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
                      f32(2))))
    out("st_index", "bad_shard_name", model({"weight_map": {"a": "../s1", "b": "x/y", "c": ".."}}, s1))
    out("st_index", "bad_empty_map", model({"weight_map": {}}))
    out("st_index", "bad_index_json", model('{"weight_map":{"a":"s1"', s1))


# ---- tokenizer.json ["####" text] ------------------------------------------------------

def gen_tok():
    root = os.path.dirname(os.path.dirname(HERE))
    p = os.path.join(root, "tests", "data", "stories260K-hf", "tokenizer.json")
    if os.path.exists(p):
        with open(p, "rb") as f:
            out("tok", "model_stories260K", f.read() + "####Once upon a time, Tim saw a big dog.".encode())
    m = "\u2581"
    pieces = ["<unk>", "<s>", "</s>", "<0x41>", "<0xC3>", "<0xA9>", "<0xFF>", m, "a", "b", "c", "h", "t", "e",
              "ab", m + "a", m + "ab", "th", "the", m + "the", "\u00e9"]
    vocab = {x: i for i, x in enumerate(pieces)}
    merges = ["a b", m + " a", m + "a b", "t h", "th e", m + " the"]
    base = {
        "version": "1.0",
        "added_tokens": [{"id": 0, "content": "<unk>", "special": True}, {"id": 1, "content": "<s>", "special": True},
                         {"id": 30, "content": "<pad>", "special": True}],
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": m},
                                                           {"type": "Replace", "pattern": {"String": " "},
                                                            "content": m}]},
        "pre_tokenizer": None,
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                      {"Sequence": {"id": "A", "type_id": 0}}],
                           "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "fuse_unk": True, "byte_fallback": True,
                  "ignore_merges": False, "vocab": vocab, "merges": merges},
    }
    text = "the ab abc \u00e9t\u00e9 A\u00ff ".encode() + b"\xff\x80 \xc3"  # ends in invalid UTF-8
    def tk(name, obj, txt=text):
        out("tok", name, json.dumps(obj, ensure_ascii=False).encode() + b"####" + txt)
    tk("bpe_bytefallback_fuse", base)
    out("tok", "bpe_no_separator_sample", json.dumps(base).encode())
    mm = json.loads(json.dumps(base))
    mm["normalizer"] = None
    mm["pre_tokenizer"] = {"type": "Metaspace", "replacement": m, "prepend_scheme": "first", "split": False}
    mm["model"]["merges"] = [x.split(" ") for x in merges]
    mm["model"]["ignore_merges"] = True
    mm["model"]["byte_fallback"] = False
    mm["model"]["fuse_unk"] = False
    tk("metaspace_array_merges_ignore", mm)
    nb = json.loads(json.dumps(base))
    del nb["post_processor"]["special_tokens"]
    nb["model"].pop("unk_token")
    nb["model"].pop("type")
    tk("no_unk_bos_from_added_tokens", nb)
    bad = json.loads(json.dumps(base))
    bad["pre_tokenizer"] = {"type": "ByteLevel"}
    tk("bad_bytelevel", bad)
    bad = json.loads(json.dumps(base))
    bad["model"]["merges"].append("x y")
    tk("bad_merge_not_in_vocab", bad)
    bad = json.loads(json.dumps(base))
    bad["model"]["unk_token"] = "<nope>"
    tk("bad_unk_not_in_vocab", bad)


# ---- protocol -------------------------------------------------------------------
# Byte 0: line limit (0x80 and up: the daemon's 1 MiB; else 2 + (b & 0x7f)).
# Byte 1: seed for the simulated read sizes. Then the stream.

def gen_proto():
    real = b"\x80\x00"
    submit = {"id": 7, "op": "submit", "model": "/m", "out": "/o", "method": "asvd", "ratio": 0.4,
              "calib": "/c.txt", "nsamples": 16, "seqlen": 64, "seed": 3, "calib_windows": "first",
              "dense": False, "overwrite": True, "eval_text": "/e.txt", "eval_seqlen": 128,
              "eval_max_windows": 4, "alpha": 0.5, "ranks": "auto", "layers": 2, "attn_split": 1.5,
              "centered": True}
    lines = [
        {"id": 1, "op": "ping"},
        {"id": 2, "op": "version"},
        submit,
        {"id": 3, "op": "list", "state": "queued", "limit": 10},
        {"id": 4, "op": "status", "job": 1},
        {"id": 5, "op": "eval", "model": "/m", "text": "/t", "seqlen": 32, "max_windows": 2},
    ]
    stream = b"".join(json.dumps(x, separators=(",", ":")).encode() + b"\n" for x in lines)
    out("proto", "requests", real + stream)
    out("proto", "requests_crlf_small_reads", b"\x80\x07" + stream.replace(b"\n", b"\r\n"))
    out("proto", "replies", real +
        b'{"id":1,"ok":true,"pong":true}\n'
        b'{"id":null,"ok":false,"error":{"code":"bad_json","message":"invalid JSON"}}\n'
        b'{"id":9,"ok":false,"error":{"code":"nope"}}\n'
        b'{"id":9,"event":"progress","state":"running","progress":{"fraction":0.5}}\n')
    out("proto", "bad_fields", real +
        b'{"id":-1,"op":"ping"}\n{"id":1.5,"op":"ping"}\n{"id":9007199254740992,"op":"x"}\n'
        b'{"id":1}\n{"id":1,"op":7}\n{"id":1,"op":"submit","ratio":"x","nsamples":0,"bogus":1}\n'
        b'{"id":1,"op":"submit","model":null,"dense":1,"alpha":true}\n'
        b'{"id":1,"id":2}\n[1,2]\n{"a":"\\u00e9\\ud800"}\n\n\n{"id":1,"op":"ping"')
    out("proto", "invalid_utf8", real + b'{"id":1,"op":"\xc3\x28"}\n/tmp/\xff\xfe\x80name\n')
    out("proto", "too_long_small_limit", b"\x10\x03" + b'{"id":1}\n' + b'{"id":1,"op":"ping","pad":"xxxxxxxx"}\n')
    # Longer than the buffer's first 4 KiB: makes it grow (run.sh raises -max_len for this target).
    big = dict(submit, model="/" + "m" * 3000, out="/" + "o" * 2000)
    out("proto", "long_line_grows_buffer", b"\x80\x05" + json.dumps(big).encode() + b"\n" + stream)
    out("proto", "exact_limit", b"\x08\x01" + b"{}      \n" + b"{}     \n" + b"{}       ")


# ---- config.json ------------------------------------------------------------------

def gen_config():
    root = os.path.dirname(os.path.dirname(HERE))
    base = None
    for m in ("tinystories-656K", "stories260K-hf"):
        p = os.path.join(root, "tests", "data", m, "config.json")
        if os.path.exists(p):
            with open(p, "rb") as f:
                data = f.read()
            out("config", "model_" + m, data)
            if base is None:
                base = json.loads(data)
    if base is None:
        base = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 128,
                "intermediate_size": 384, "num_hidden_layers": 2, "num_attention_heads": 8,
                "num_key_value_heads": 4, "vocab_size": 2048}
    lr = dict(base, low_rank={"ranks": {"model.layers.0.self_attn.q_proj": 16, "model.layers.1.mlp.down_proj": 3}})
    out("config", "low_rank", json.dumps(lr, indent=1))
    mi = dict(base, model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=4096,
              eos_token_id=[2, 3], head_dim=16, tie_word_embeddings=False)
    out("config", "mistral_sw_eos_list", json.dumps(mi))
    out("config", "minimal", '{"model_type":"llama","hidden_size":8,"intermediate_size":8,'
                             '"num_hidden_layers":1,"num_attention_heads":2,"vocab_size":4}')
    out("config", "bad_rope_scaling", json.dumps(dict(base, rope_scaling={"rope_type": "llama3"})))
    out("config", "bad_low_rank_key", json.dumps(dict(base, low_rank={"ranks": {"model.layers.99.mlp.up_proj": 1,
                                                                            "x": 1}})))
    out("config", "bad_head_dim_odd", json.dumps(dict(base, head_dim=7)))
    out("config", "bad_not_object", "[]")

# ---- dictionaries (tests/fuzz/<target>.dict, libFuzzer -dict=) ----------------------

COMMON = ['{', '}', '[', ']', ':', ',', '"', 'null', 'true', 'false', '-1', '0', '1e308', '-0', '0.5',
          '9007199254740991', '9223372036854775807', '-9223372036854775808', '18446744073709551616',
          '\\u0000', '\\ud800', '\\"', '""']
DICTS = {
    'st_index': ['"weight_map"', '"metadata"', '"total_size"', '"s1"', '"s2"', '"s3"', '####',
                 '"dtype"', '"shape"', '"data_offsets"', '"__metadata__"', '"F32"', '"F16"', '"BF16"'],
    'tok': ['####', '"model"', '"type"', '"BPE"', '"vocab"', '"merges"', '"unk_token"', '"fuse_unk"',
            '"byte_fallback"', '"ignore_merges"', '"dropout"', '"normalizer"', '"normalizers"', '"Sequence"',
            '"Prepend"', '"prepend"', '"Replace"', '"pattern"', '"String"', '"Regex"', '"content"',
            '"pre_tokenizer"', '"Metaspace"', '"replacement"', '"split"', '"prepend_scheme"', '"first"',
            '"never"', '"add_prefix_space"', '"post_processor"', '"TemplateProcessing"', '"single"',
            '"SpecialToken"', '"special_tokens"', '"ids"', '"added_tokens"', '"id"', '"<s>"', '"<unk>"',
            '"<0x41>"', '"\\u2581"', '\xe2\x96\x81', '"continuing_subword_prefix"', '"ByteLevel"'],
    'st': ['"dtype"', '"shape"', '"data_offsets"', '"__metadata__"', '"F32"', '"F16"', '"BF16"', '"F64"',
           '"I32"', '"I64"', '"I8"', '"U8"', '"BOOL"', '"I16"', '"format"', '"pt"', '[0,4]', '[]'],
    'proto': ['\n', '\r\n', '"id"', '"op"', '"ping"', '"version"', '"submit"', '"status"', '"list"', '"watch"',
              '"cancel"', '"eval"', '"model"', '"out"', '"method"', '"ratio"', '"calib"', '"nsamples"',
              '"seqlen"', '"seed"', '"calib_windows"', '"dense"', '"overwrite"', '"eval_text"',
              '"eval_seqlen"', '"eval_max_windows"', '"alpha"', '"ranks"', '"layers"', '"attn_split"',
              '"centered"', '"state"', '"limit"', '"job"', '"text"', '"max_windows"', '"ok"', '"error"',
              '"code"', '"message"', '"event"', '"bad_json"', '"internal"'],
    'config': ['"model_type"', '"llama"', '"mistral"', '"architectures"', '"LlamaForCausalLM"',
               '"MistralForCausalLM"', '"hidden_act"', '"silu"', '"rope_scaling"', '"rope_type"', '"type"',
               '"attention_bias"', '"mlp_bias"', '"hidden_size"', '"intermediate_size"',
               '"num_hidden_layers"', '"num_attention_heads"', '"num_key_value_heads"', '"vocab_size"',
               '"max_position_embeddings"', '"bos_token_id"', '"eos_token_id"', '"head_dim"',
               '"rms_norm_eps"', '"rope_theta"', '"tie_word_embeddings"', '"sliding_window"', '"low_rank"',
               '"ranks"', '"model.layers.0.self_attn.q_proj"', '"self_attn.k_proj"', '"self_attn.v_proj"',
               '"self_attn.o_proj"', '"mlp.gate_proj"', '"mlp.up_proj"', '"mlp.down_proj"', 'model.layers.',
               '2147483647', '2147483648', '65536', '1024'],
}


def gen_dicts():
    def esc(t):
        return ''.join('\\\\' if c == '\\' else '\\"' if c == '"' else c if 32 <= ord(c) < 127
                       else '\\x%02X' % ord(c) for c in t)
    for name, toks in DICTS.items():
        with open(os.path.join(HERE, name + '.dict'), 'w') as f:
            f.write('# libFuzzer dictionary for fuzz_%s; written by gen_corpus.py\n' % name)
            for i, t in enumerate(COMMON + toks):
                f.write('kw%d="%s"\n' % (i, esc(t)))


if __name__ == "__main__":
    gen_st()
    gen_st_index()
    gen_tok()
    gen_proto()
    gen_config()
    gen_dicts()
