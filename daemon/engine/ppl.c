/* ppl: perplexity by the protocol stated in ppl.h.
 *
 * Windows are processed in batches of B sequences; every decoder layer is
 * applied to the whole batch before the next layer is loaded, so the model is
 * touched one layer at a time. When all layers fit in a small budget
 * (PPL_CACHE_BYTES of f32) they are kept between batches instead of being
 * converted again for each batch. */
#include "ppl.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "corpus.h"
#include "forward.h"
#include "model.h"
#include "mono.h"

#define PPL_CACHE_BYTES (1024.0 * 1024 * 1024)
#define PPL_BATCH_TOKENS 8192

double ppl_window_nll(const float *logits, const int32_t *ids, int T, int V) {
    double total = 0;
    for (int t = 0; t + 1 < T; t++) {
        const float *row = logits + (size_t)t * V;
        float mx = row[0];
        for (int j = 1; j < V; j++)
            mx = row[j] > mx ? row[j] : mx;
        double s = 0;
        for (int j = 0; j < V; j++)
            s += exp((double)row[j] - mx);
        total += log(s) + mx - row[ids[t + 1]];
    }
    return total;
}

int ppl_eval(const char *model_dir, const char *text_path, int seqlen, size_t max_windows, ppl_cancel_fn cancel,
             void *cancel_ctx, struct ppl_result *ret, struct sv_err *err) {
    struct model *m = NULL;
    int32_t *ids = NULL;
    size_t n = 0;
    float *x = NULL, *logits = NULL;
    struct layer_w *layers = NULL;
    struct head_w head = {0};
    int r;
    if (seqlen < 2)
        return sv_err_set(err, -EINVAL, "seqlen %d: must be at least 2", seqlen);
    if ((r = model_open(&m, model_dir, err)) < 0)
        return r;
    const struct config *c = &m->cfg;
    if (seqlen > c->max_pos) {
        r = sv_err_set(err, -EINVAL, "seqlen %d exceeds the model's max_position_embeddings %d", seqlen, c->max_pos);
        goto out;
    }
    if ((r = corpus_load(text_path, model_dir, c->vocab, &ids, &n, err)) < 0)
        goto out;
    size_t windows = n / (size_t)seqlen;
    if (windows == 0) {
        r = sv_err_set(err, -EINVAL, "text '%s' has %zu tokens, fewer than one window of %d", text_path, n, seqlen);
        goto out;
    }
    if (max_windows > 0 && windows > max_windows)
        windows = max_windows;

    int B = PPL_BATCH_TOKENS / seqlen;
    if (B < 1)
        B = 1;
    if ((size_t)B > windows)
        B = (int)windows;
    const size_t d = (size_t)c->hidden;
    x = malloc((size_t)B * seqlen * d * sizeof *x);
    logits = malloc((size_t)seqlen * c->vocab * sizeof *logits);
    layers = calloc((size_t)c->n_layers, sizeof *layers);
    if (!x || !logits || !layers) {
        r = sv_err_set(err, -ENOMEM, "model '%s': out of memory for a batch of %d x %d", model_dir, B, seqlen);
        goto out;
    }
    if ((r = model_head_load(m, &head, err)) < 0)
        goto out;
    double layer_bytes = 4.0 * (double)model_linear_params(m);
    int cache = layer_bytes <= PPL_CACHE_BYTES;

    double total = 0, t0 = mono_now();
    for (size_t w0 = 0; w0 < windows; w0 += (size_t)B) {
        int nb = (int)((windows - w0) < (size_t)B ? (windows - w0) : (size_t)B);
        if (cancel && cancel(cancel_ctx)) {
            r = sv_err_set(err, -ECANCELED, "evaluation cancelled");
            goto out;
        }
        const int32_t *bids = ids + w0 * (size_t)seqlen;
        if ((r = model_embed(m, bids, (size_t)nb * seqlen, x, err)) < 0)
            goto out;
        for (int l = 0; l < c->n_layers; l++) {
            if (!layers[l].attn_norm && (r = model_layer_load(m, l, &layers[l], err)) < 0)
                goto out;
            r = forward_layer(c, &layers[l], x, nb, seqlen, NULL, err);
            if (!cache)
                model_layer_free(&layers[l]);
            if (r < 0)
                goto out;
        }
        for (int b = 0; b < nb; b++) {
            if ((r = forward_logits(c, &head, x + (size_t)b * seqlen * d, (size_t)seqlen, logits, err)) < 0)
                goto out;
            total += ppl_window_nll(logits, bids + (size_t)b * seqlen, seqlen, c->vocab);
        }
    }
    double secs = mono_now() - t0;
    struct ppl_result res = {0};
    res.tokens = n;
    res.windows = windows;
    res.predicted = windows * (size_t)(seqlen - 1);
    res.seqlen = seqlen;
    res.mean_nll = total / (double)res.predicted;
    res.ppl = exp(res.mean_nll);
    res.seconds = secs;
    res.tokens_per_s = secs > 0 ? (double)(windows * (size_t)seqlen) / secs : 0;
    if (!isfinite(res.ppl)) {
        r = sv_err_set(err, -EDOM, "model '%s': perplexity is not finite (mean NLL %g)", model_dir, res.mean_nll);
        goto out;
    }
    *ret = res;
out:
    for (int l = 0; layers && l < c->n_layers; l++)
        model_layer_free(&layers[l]);
    free(layers);
    model_head_free(&head);
    free(x);
    free(logits);
    free(ids);
    model_free(m);
    return r;
}
