/* model: a LLaMA-family model directory (config.json + safetensors), read one
 * decoder layer at a time.
 *
 * model_open() parses the config, maps the safetensors and checks, before any
 * compute, that every tensor the forward pass needs exists with the right
 * shape and a convertible dtype, so a missing or truncated tensor fails at
 * once with its name instead of halfway through a job.
 *
 * Each linear of a decoder layer is either dense, "<module>.weight" (d_out x
 * d_in), or a factor pair written by our compressor and loadable as
 * torch.nn.Sequential(Linear(d_in, k), Linear(k, d_out)):
 *     "<module>.0.weight"  B: (k, d_in)
 *     "<module>.1.weight"  A: (d_out, k)        W' = A B
 * A module with a bias (config.bias[p]: Qwen2's q/k/v) has "<module>.bias"
 * (d_out) when dense and "<module>.1.bias" when factored: the bias belongs to
 * the second Linear of the pair, so the state dict still loads as that
 * Sequential. Qwen3 adds "self_attn.q_norm.weight" and "self_attn.k_norm.weight"
 * (head_dim) per layer.
 * Layer weights are converted to f32 on load and freed by the caller; the
 * mapped pages are released after conversion so resident memory holds about
 * one layer. */
#ifndef MODEL_H
#define MODEL_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "st.h"
#include "sv_err.h"

struct linear {
    int d_out, d_in;
    int rank;   /* 0: dense w; > 0: factor pair a, b */
    float *w;   /* W: (d_out, d_in) row-major, or NULL */
    float *a;   /* A: (d_out, rank) */
    float *b;   /* B: (rank, d_in) */
};

struct layer_w {
    int index;
    float *attn_norm;   /* (hidden) */
    float *ffn_norm;    /* (hidden) */
    struct linear proj[PROJ_COUNT];
    /* Kept beside the linears, not in them: the compressor replaces a
     * struct linear by its factor pair and the bias stays as it was. */
    float *bias[PROJ_COUNT];   /* (d_out of p), or NULL */
    float *q_norm, *k_norm;    /* (head_dim), Qwen3 only, else NULL */
};

struct head_w {
    float *norm;   /* (hidden) */
    float *w;      /* lm_head: (vocab, hidden) */
};

struct model {
    struct config cfg;
    struct st_model *st;
    char dir[PATH_MAX];
};

int model_open(struct model **ret, const char *dir, struct sv_err *err);
void model_free(struct model *m);

/* Tensor name of layer l's projection p, "model.layers.3.mlp.up_proj" (no suffix). */
void model_proj_prefix(int l, enum config_proj p, char *buf, size_t n);

/* Tensor name of the bias of a projection stored dense (rank 0: "<prefix>.bias")
 * or as a factor pair ("<prefix>.1.bias"). */
void model_bias_name(int l, enum config_proj p, int rank, char *buf, size_t n);

int model_layer_load(const struct model *m, int l, struct layer_w *ret, struct sv_err *err);
void model_layer_free(struct layer_w *lw);

/* x: (n, hidden) rows of the embedding table for ids; converts only those rows. */
int model_embed(const struct model *m, const int32_t *ids, size_t n, float *x, struct sv_err *err);

int model_head_load(const struct model *m, struct head_w *ret, struct sv_err *err);
void model_head_free(struct head_w *h);

/* Parameters of the decoder linears as stored (dense d_out*d_in, factored k*(d_out+d_in)). */
uint64_t model_linear_params(const struct model *m);

#endif
