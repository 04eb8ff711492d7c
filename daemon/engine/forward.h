/* forward: the LLaMA forward pass on BLIS, batched over samples x positions.
 *
 * Hidden states are (B*T, hidden) row-major: B independent sequences of T
 * tokens, each starting at position 0. Attention is causal with grouped-query
 * heads and HF's rotate_half RoPE. Every product is a BLIS sgemm; the thread
 * count is set once by forward_threads_set() (the one place that decides it).
 *
 * Taps let the compressor observe each linear's input (and output) without
 * the forward pass knowing about statistics: q/k/v share one input (reported
 * as PROJ_Q), gate/up share one (PROJ_GATE). An output is observed before the
 * module's bias is added (Qwen2's q/k/v): the compressor factors W only, and
 * the original and the compressed module add the same bias.
 *
 * Per family (config.h): a q/k/v bias is added after its linear, dense or factored
 * (y = x W^T + b, or (x B^T) A^T + b); Qwen3's q_norm / k_norm is an RMSNorm
 * over each head's head_dim values of q and k, with rms_norm_eps, after the
 * bias and before RoPE, as in transformers' Qwen3Attention. */
#ifndef FORWARD_H
#define FORWARD_H

#include <stddef.h>

#include "config.h"
#include "model.h"
#include "sv_err.h"

struct forward_taps {
    void *ctx;
    /* x: (ntok, width) rows entering projection p. NULL: not observed. */
    int (*input)(void *ctx, enum config_proj p, const float *x, size_t ntok, int width);
    /* y: (ntok, width) rows leaving projection p. NULL: not observed. */
    int (*output)(void *ctx, enum config_proj p, const float *y, size_t ntok, int width);
};

/* Sets the thread count of every BLIS product and of OpenMP regions (ours
 * pass it as num_threads). n <= 0: the CPUs this process may run on, counted
 * by a helper here from sched_getaffinity (so CPUAffinity= and cpusets are
 * respected; sysconf's online count only if that fails). Call once before
 * any compute; returns the count in force. BLIS's setting is process-wide,
 * OpenMP's default team size per thread: another thread that computes calls
 * forward_threads_set(forward_threads_get()) once to adopt the same count. */
int forward_threads_set(int n);
int forward_threads_get(void);
/* For a caller that runs several BLIS computations side by side on its own
 * threads: BLIS's (process-wide) count set to n for now, n <= 0 back to the
 * count in force. OpenMP and the forward pass keep forward_threads_get(). */
void forward_blas_threads(int n);

/* y (ntok, d_out) = x (ntok, d_in) W^T, or (x B^T) A^T for a factor pair. */
int forward_linear(const struct linear *lin, const float *x, size_t ntok, float *y, struct sv_err *err);

/* Runs one decoder layer in place on x (B*T, hidden). A tap returning < 0
 * stops it with that error; a tap returning FORWARD_STOP ends it early with
 * that value (x is then partly updated): a caller that needs only the
 * statistics up to some linear does not pay for the rest of the layer. */
#define FORWARD_STOP 1
int forward_layer(const struct config *c, const struct layer_w *lw, float *x, int B, int T,
                  const struct forward_taps *taps, struct sv_err *err);

/* Incremental decoding: one decoder layer on x (n, hidden), n new tokens of
 * one sequence at positions pos0 .. pos0+n-1. kc, vc: this layer's key and
 * value cache, (cap, n_kv_heads * head_dim) each, rows [0, pos0) filled by
 * earlier calls; this call writes rows pos0 .. pos0+n-1 (keys after bias,
 * k_norm and RoPE). Equal to forward_layer on the whole sequence up to float
 * rounding. A call of under about 4 million multiply-adds (a small model's
 * token) runs on the calling thread alone, BLIS included: a thread team
 * would cost more than it saves. -EINVAL when pos0 + n > cap; -ENOTSUP past
 * a sliding_window. */
int forward_layer_cached(const struct config *c, const struct layer_w *lw, float *x, int n, int pos0, float *kc,
                         float *vc, int cap, struct sv_err *err);

/* logits (ntok, vocab) = lm_head(rmsnorm(x)). x is not modified. */
int forward_logits(const struct config *c, const struct head_w *h, const float *x, size_t ntok, float *logits,
                   struct sv_err *err);

/* forward_logits for the few rows of a generation step: on this thread alone
 * when the product is small (see forward_layer_cached), else forward_logits. */
int forward_logits_small(const struct config *c, const struct head_w *h, const float *x, size_t ntok, float *logits,
                         struct sv_err *err);

/* Raw sgemm C (m,n) = alpha A (m,k) op B + beta C, all row-major; transb: B is (n,k). */
void forward_sgemm(int transb, size_t m, size_t n, size_t k, float alpha, const float *a, size_t lda,
                   const float *b, size_t ldb, float beta, float *cm, size_t ldc);

#endif
