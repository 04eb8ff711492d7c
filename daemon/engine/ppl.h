/* ppl: perplexity of a model on a text, with one stated protocol.
 *
 * Protocol (the GPTQ / SVD-LLM wikitext one): the whole text is tokenized once
 * with one BOS in front (or read as int32 ids, see corpus.h); the stream is cut
 * into floor(n/L) non-overlapping windows of L tokens, the remainder dropped;
 * each window is evaluated from position 0; the L-1 next-token predictions of
 * each window are scored by natural-log NLL over the full vocabulary,
 * accumulated in double; mean_nll = total / (windows * (L-1)), ppl = exp(mean_nll). */
#ifndef PPL_H
#define PPL_H

#include <stddef.h>
#include <stdint.h>

#include "sv_err.h"

struct ppl_result {
    double ppl;
    double mean_nll;
    size_t tokens;       /* tokens in the stream, BOS included */
    size_t windows;
    size_t predicted;    /* windows * (L - 1) */
    int seqlen;
    double seconds;      /* forward time */
    double tokens_per_s; /* windows * L / seconds */
};

/* Called between batches; a non-zero return stops the evaluation with -ECANCELED. */
typedef int (*ppl_cancel_fn)(void *ctx);

/* Evaluates the model in model_dir (dense or our factored output) on the text
 * (or .i32 ids) at text_path. max_windows > 0 limits the windows scored. */
int ppl_eval(const char *model_dir, const char *text_path, int seqlen, size_t max_windows,
             ppl_cancel_fn cancel, void *cancel_ctx, struct ppl_result *ret, struct sv_err *err);

/* Sum of the negative log-likelihoods of a window's T-1 next-token
 * predictions: logits (T, V) row-major, ids the window's T tokens. The one
 * rule for every loss the engine reports on text (ppl_eval, trial.c). */
double ppl_window_nll(const float *logits, const int32_t *ids, int T, int V);

#endif
