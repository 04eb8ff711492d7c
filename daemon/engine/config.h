/* config: a LLaMA-family config.json (LLaMA 1/2/3, Mistral, Vicuna, Qwen2 /
 * Qwen2.5, Qwen3).
 *
 * Everything the forward pass depends on is read and checked; a field whose
 * value would change the math in a way we do not implement (another
 * architecture, a rope_scaling type other than linear / dynamic / llama3,
 * attention or MLP bias beyond Qwen2's q/k/v bias, an activation other than
 * silu, sliding-window attention actually in effect) is refused with a message
 * naming the field, never silently ignored.
 *
 * The families differ in two places, both decided here from model_type, as
 * transformers' modelling code hard-codes them: Qwen2 has a bias on q, k and v
 * (always: Qwen2Attention builds them with bias=True and ignores any
 * attention_bias field), Qwen3 an RMSNorm over each head of q and k
 * (q_norm / k_norm, weight of head_dim) before RoPE. Qwen's sliding_window is
 * in effect only with use_sliding_window = true. Fields that only matter for
 * training or generation (initializer_range, use_cache, ...) are ignored. */
#ifndef CONFIG_H
#define CONFIG_H

#include <stdbool.h>

#include "sv_err.h"

#define CONFIG_MAX_LAYERS 1024
#define CONFIG_MAX_HEAD_DIM 4096

/* Linear module ids within one decoder layer. */
enum config_proj { PROJ_Q = 0, PROJ_K, PROJ_V, PROJ_O, PROJ_GATE, PROJ_UP, PROJ_DOWN, PROJ_COUNT };

/* RoPE frequency scaling (config.json "rope_scaling"). */
enum config_rope { CONFIG_ROPE_DEFAULT = 0, CONFIG_ROPE_LINEAR, CONFIG_ROPE_DYNAMIC, CONFIG_ROPE_LLAMA3 };

struct config {
    int hidden;         /* d */
    int intermediate;   /* ffn width (dense models; see ffn[] for pruned ones) */
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim;       /* hidden / n_heads unless given */
    int vocab;
    int max_pos;
    double rms_eps;
    double rope_theta;
    enum config_rope rope_type;
    double rope_factor;                   /* linear, dynamic, llama3; 1 otherwise */
    double rope_low_freq, rope_high_freq; /* llama3: low_freq_factor, high_freq_factor */
    int rope_orig_max_pos;                /* llama3: original_max_position_embeddings */
    bool tie_embeddings;
    int bos_id;         /* -1 if absent */
    int eos_id;         /* -1 if absent; the first one when a list */
    int sliding_window; /* 0 = none; longer sequences are refused */
    bool bias[PROJ_COUNT]; /* projection p has "<module>.bias" (d_out) added after it: Qwen2's q, k, v
                              (the only ones ever set; forward.c adds no other) */
    bool qk_norm;       /* Qwen3: per-head RMSNorm of q and k (q_norm, k_norm) before RoPE */
    /* Low-rank section written by our compressor ("low_rank": {"ranks": {...}}):
     * rank[l][p] > 0 means layer l's projection p is stored as a factor pair;
     * 0 means dense. */
    int (*rank)[PROJ_COUNT];   /* n_layers rows, owned */
};

/* A factored svdllm output's config.json: model_type "svdllm_<type>" (type
 * one of the supported ones), architectures ["SvdLlmForCausalLM"], and a
 * low_rank section, which the prefix requires; the original names are in
 * low_rank.base_model_type and base_architectures. Loaded as <type>. */
#define CONFIG_FACTORED_PREFIX "svdllm_"
#define CONFIG_FACTORED_ARCH "SvdLlmForCausalLM"

/* Loads PATH (a config.json). On failure nothing is allocated. */
int config_load(struct config *ret, const char *path, struct sv_err *err);
void config_free(struct config *c);

/* Input and output widths of projection p (d_in, d_out of W: d_out x d_in). */
void config_proj_shape(const struct config *c, enum config_proj p, int *d_out, int *d_in);
/* The head_dim / 2 rotary inverse frequencies (radians per position) for a
 * sequence of seq_len positions, as transformers computes them for
 * rope_type default, linear (divided by factor), dynamic (NTK: the base
 * raised to (factor seq_len / max_pos - factor + 1)^(hd / (hd - 2)) once
 * seq_len > max_position_embeddings) and llama3 (Llama 3.1's wavelength
 * bands). */
void config_rope_inv_freq(const struct config *c, int seq_len, double *inv);
/* "self_attn.q_proj", ..., "mlp.down_proj". */
const char *config_proj_name(enum config_proj p);

#endif
