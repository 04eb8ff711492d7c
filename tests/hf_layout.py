#!/usr/bin/env python3
"""Checks a model directory against the state-dict layout that Hugging Face's
LlamaForCausalLM builds from its config.json, independently of our C code:
the set of tensor names must be exactly the expected one and every shape must
match, so `LlamaForCausalLM.from_pretrained(dir)` (or any loader that follows
the LLaMA config) can load it. With a "low_rank" section, the listed modules
must instead be torch.nn.Sequential(Linear(in, k), Linear(k, out)) pairs
`<module>.0.weight` (k, in) and `<module>.1.weight` (out, k), and the config
must carry svdllm's own model_type/architectures (svdllm_llama,
SvdLlmForCausalLM) with the LLaMA ones in low_rank.base_*.

    hf_layout.py DIR [--dense]      exit 0 if the layout matches, 1 if not
    --dense: also require a plain LLaMA config (no low_rank section)

Standard library only (json, struct): reads the safetensors headers."""
import json
import os
import struct
import sys


def header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        h = json.loads(f.read(n))
        size = os.fstat(f.fileno()).st_size
    h.pop("__metadata__", None)
    for name, t in h.items():
        a, b = t["data_offsets"]
        if not (0 <= a <= b <= size - 8 - n):
            raise SystemExit(f"{path}: tensor {name} lies outside the file")
    return {k: tuple(v["shape"]) for k, v in h.items()}


def expected(cfg):
    d = cfg["hidden_size"]
    ff = cfg["intermediate_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads", nh)
    hd = cfg.get("head_dim", d // nh)
    v = cfg["vocab_size"]
    shapes = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)}
    if not cfg.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (v, d)
    mods = {
        "self_attn.q_proj": (nh * hd, d),
        "self_attn.k_proj": (nkv * hd, d),
        "self_attn.v_proj": (nkv * hd, d),
        "self_attn.o_proj": (d, nh * hd),
        "mlp.gate_proj": (ff, d),
        "mlp.up_proj": (ff, d),
        "mlp.down_proj": (d, ff),
    }
    ranks = cfg.get("low_rank", {}).get("ranks", {})
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        shapes[p + "input_layernorm.weight"] = (d,)
        shapes[p + "post_attention_layernorm.weight"] = (d,)
        for m, (o, i) in mods.items():
            k = ranks.get(p + m)
            if k:
                shapes[p + m + ".0.weight"] = (k, i)
                shapes[p + m + ".1.weight"] = (o, k)
            else:
                shapes[p + m + ".weight"] = (o, i)
    return shapes


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    root = sys.argv[1]
    cfg = json.load(open(os.path.join(root, "config.json")))
    if "low_rank" in cfg:
        # Factored: marked so that loaders expecting dense matrices refuse it,
        # the original type kept in low_rank.
        lr = cfg["low_rank"]
        if cfg.get("model_type") != "svdllm_llama" or cfg.get("architectures") != ["SvdLlmForCausalLM"]:
            raise SystemExit("a factored output's config.json must say svdllm_llama / SvdLlmForCausalLM")
        if lr.get("base_model_type") != "llama" or "LlamaForCausalLM" not in lr.get("base_architectures", []):
            raise SystemExit("low_rank does not name the base LlamaForCausalLM")
    elif cfg.get("model_type") != "llama" or "LlamaForCausalLM" not in cfg.get("architectures", []):
        raise SystemExit("config.json is not a LlamaForCausalLM config")
    if "--dense" in sys.argv and "low_rank" in cfg:
        raise SystemExit("config.json has a low_rank section; a plain LLaMA config was expected")
    idx = os.path.join(root, "model.safetensors.index.json")
    files = sorted(set(json.load(open(idx))["weight_map"].values())) if os.path.exists(idx) else ["model.safetensors"]
    got = {}
    for f in files:
        got.update(header(os.path.join(root, f)))
    want = expected(cfg)
    if cfg.get("tie_word_embeddings", False) and "lm_head.weight" in got:
        # Tied: the one matrix may be stored under either name (loaders tie them).
        want["lm_head.weight"] = want["model.embed_tokens.weight"]
        if "model.embed_tokens.weight" not in got:
            del want["model.embed_tokens.weight"]
    bad = [f"missing {k} {v}" for k, v in want.items() if k not in got]
    bad += [f"unexpected {k} {v}" for k, v in got.items() if k not in want]
    bad += [f"{k}: shape {got[k]}, config says {v}" for k, v in want.items() if k in got and got[k] != v]
    if bad:
        print("\n".join(bad[:20]))
        raise SystemExit(1)
    print(f"{root}: {len(got)} tensors match the LlamaForCausalLM layout of its config.json")


main()
