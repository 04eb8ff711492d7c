#!/usr/bin/python3
"""Independent reference forward pass for LLaMA / Qwen2 / Qwen3 checkpoints.

Written from the math of Hugging Face transformers' modelling code
(LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM), in numpy float64,
sharing no code with the C engine:

  x = embed_tokens[ids]
  per layer:
    h = RMSNorm(x; input_layernorm, eps)
    q = h Wq^T (+ bq), k = h Wk^T (+ bk), v = h Wv^T (+ bv)      Qwen2: biases
    q, k viewed (T, heads, head_dim); Qwen3: q = RMSNorm(q; q_norm) per head,
        k = RMSNorm(k; k_norm), before RoPE
    RoPE, rotate_half form: inv_freq_i = theta^(-2i / head_dim),
        q' = q cos + rotate_half(q) sin, rotate_half(x) = (-x2, x1)
    GQA: query head h reads key/value head h // (heads / kv_heads)
    a = softmax(q' k'^T / sqrt(head_dim) + causal mask) v
    x = x + a Wo^T
    h = RMSNorm(x; post_attention_layernorm)
    x = x + (silu(h Wg^T) * (h Wu^T)) Wd^T
  logits = RMSNorm(x; model.norm) W_head^T, W_head = lm_head or (tied) embed_tokens

Usage (Debian's python3 with numpy; no torch needed):
  /usr/bin/python3 tools/ref_forward.py MODEL_DIR --tokens T --ids-out IDS.i32 --logits-out LOGITS.f32

The ids are a fixed pseudo-random sequence (a 32-bit LCG, written out), so the
C test reads the same ids. Writes little-endian int32 ids and float32 logits
(T, vocab) row-major.
"""
import argparse
import json
import os
import struct
import sys

import numpy as np


def read_safetensors(path):
    with open(path, "rb") as f:
        (hlen,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(hlen))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        raw = data[a:b]
        dt = meta["dtype"]
        if dt == "F32":
            arr = np.frombuffer(raw, dtype="<f4").astype(np.float64)
        elif dt == "F16":
            arr = np.frombuffer(raw, dtype="<f2").astype(np.float64)
        elif dt == "BF16":
            u = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = u.view(np.float32).astype(np.float64)
        else:
            raise SystemExit(f"{path}: tensor {name}: dtype {dt} not handled")
        out[name] = arr.reshape(meta["shape"])
    return out


def rmsnorm(x, w, eps):
    var = np.mean(x * x, axis=-1, keepdims=True)
    return w * (x / np.sqrt(var + eps))


def rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def forward(cfg, W, ids):
    mt = cfg["model_type"]
    if mt not in ("llama", "mistral", "qwen2", "qwen3"):
        raise SystemExit(f"model_type {mt} not handled")
    rs = cfg.get("rope_scaling")
    if rs and (rs.get("rope_type") or rs.get("type")) not in (None, "default"):
        raise SystemExit("rope_scaling not handled by this reference")
    d = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads", nh)
    hd = cfg.get("head_dim") or d // nh
    eps = cfg.get("rms_norm_eps", 1e-6)
    theta = cfg.get("rope_theta", 10000.0)
    L = cfg["num_hidden_layers"]
    T = len(ids)

    x = W["model.embed_tokens.weight"][ids]                   # (T, d)
    inv = 1.0 / (theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    ang = np.outer(np.arange(T, dtype=np.float64), inv)       # (T, hd/2)
    emb = np.concatenate([ang, ang], axis=-1)                  # (T, hd)
    cos, sin = np.cos(emb)[:, None, :], np.sin(emb)[:, None, :]
    mask = np.triu(np.full((T, T), -np.inf), k=1)

    def lin(h, name):
        y = h @ W[name + ".weight"].T
        if name + ".bias" in W:
            y = y + W[name + ".bias"]
        return y

    for l in range(L):
        p = f"model.layers.{l}."
        h = rmsnorm(x, W[p + "input_layernorm.weight"], eps)
        q = lin(h, p + "self_attn.q_proj").reshape(T, nh, hd)
        k = lin(h, p + "self_attn.k_proj").reshape(T, nkv, hd)
        v = lin(h, p + "self_attn.v_proj").reshape(T, nkv, hd)
        if mt == "qwen3":
            q = rmsnorm(q, W[p + "self_attn.q_norm.weight"], eps)
            k = rmsnorm(k, W[p + "self_attn.k_norm.weight"], eps)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        group = nh // nkv
        att = np.empty((T, nh, hd))
        for hh in range(nh):
            kv = hh // group
            s = q[:, hh, :] @ k[:, kv, :].T / np.sqrt(hd) + mask
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            s = s / s.sum(axis=-1, keepdims=True)
            att[:, hh, :] = s @ v[:, kv, :]
        x = x + lin(att.reshape(T, nh * hd), p + "self_attn.o_proj")
        h = rmsnorm(x, W[p + "post_attention_layernorm.weight"], eps)
        g = lin(h, p + "mlp.gate_proj")
        u = lin(h, p + "mlp.up_proj")
        x = x + lin(g / (1.0 + np.exp(-g)) * u, p + "mlp.down_proj")

    x = rmsnorm(x, W["model.norm.weight"], eps)
    head = W.get("lm_head.weight")
    if head is None:
        if not cfg.get("tie_word_embeddings", False):
            raise SystemExit("no lm_head.weight and tie_word_embeddings is not true")
        head = W["model.embed_tokens.weight"]
    return x @ head.T


def lcg_ids(n, vocab):
    s, out = 12345, []
    for _ in range(n):
        s = (s * 1103515245 + 12345) & 0xFFFFFFFF
        out.append((s >> 8) % vocab)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--ids-out", required=True)
    ap.add_argument("--logits-out", required=True)
    a = ap.parse_args()
    with open(os.path.join(a.model, "config.json")) as f:
        cfg = json.load(f)
    W = read_safetensors(os.path.join(a.model, "model.safetensors"))
    ids = lcg_ids(a.tokens, cfg["vocab_size"])
    logits = forward(cfg, W, np.array(ids))
    np.array(ids, dtype="<i4").tofile(a.ids_out)
    logits.astype("<f4").tofile(a.logits_out)
    print(f"{a.model}: {len(ids)} tokens, logits {logits.shape}, |logits| rms {np.sqrt(np.mean(logits**2)):.4f}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
