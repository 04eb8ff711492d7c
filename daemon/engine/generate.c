/* generate: see generate.h.
 *
 * Design note. struct gen owns the model, every decoder layer (f32), the head
 * and the key/value cache, laid out per layer as (cap, kv_heads * head_dim)
 * for keys and the same for values. gen_feed runs the new tokens through
 * forward_layer_cached layer by layer, so a prompt of n tokens is one pass of
 * n rows and each generated token one pass of one row. The text is decoded
 * again from all ids after each token (tok_decode is linear in the ids, and a
 * run is at most a context long), which keeps it exactly the tokenizer's
 * decode of the whole sequence rather than a concatenation of pieces. */
#include "generate.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "forward.h"
#include "model.h"
#include "mono.h"
#include "tok.h"

struct gen {
    struct model *m;
    struct layer_w *layers;   /* (n_layers) */
    struct head_w head;
    float *kc, *vc;           /* (n_layers, cap, kvw) */
    int cap, pos;
    float *x;                 /* (rows_cap, hidden) scratch */
    int rows_cap;
};

void gen_free(struct gen *g) {
    if (!g)
        return;
    for (int l = 0; g->layers && l < g->m->cfg.n_layers; l++)
        model_layer_free(&g->layers[l]);
    free(g->layers);
    model_head_free(&g->head);
    free(g->kc);
    free(g->vc);
    free(g->x);
    model_free(g->m);
    free(g);
}

int gen_new(struct gen **ret, const char *model_dir, int cap, struct sv_err *err) {
    struct gen *g = calloc(1, sizeof *g);
    if (!g)
        return sv_err_set(err, -ENOMEM, "model '%s': out of memory", model_dir);
    int r = model_open(&g->m, model_dir, err);
    if (r < 0) {
        free(g);
        return r;
    }
    const struct config *c = &g->m->cfg;
    int ctx = c->max_pos;
    if (c->sliding_window && c->sliding_window < ctx)
        ctx = c->sliding_window;
    g->cap = cap > 0 && cap < ctx ? cap : ctx;
    size_t kvw = (size_t)c->n_kv_heads * c->head_dim, per = (size_t)g->cap * kvw;
    g->layers = calloc((size_t)c->n_layers, sizeof *g->layers);
    g->kc = malloc((size_t)c->n_layers * per * sizeof(float));
    g->vc = malloc((size_t)c->n_layers * per * sizeof(float));
    if (!g->layers || !g->kc || !g->vc) {
        r = sv_err_set(err, -ENOMEM, "model '%s': out of memory for a cache of %d positions", model_dir, g->cap);
        goto fail;
    }
    for (int l = 0; l < c->n_layers; l++)
        if ((r = model_layer_load(g->m, l, &g->layers[l], err)) < 0)
            goto fail;
    if ((r = model_head_load(g->m, &g->head, err)) < 0)
        goto fail;
    *ret = g;
    return 0;
fail:
    gen_free(g);
    return r;
}

const struct config *gen_config(const struct gen *g) { return &g->m->cfg; }
int gen_pos(const struct gen *g) { return g->pos; }
void gen_rewind(struct gen *g) { g->pos = 0; }

int gen_feed(struct gen *g, const int32_t *ids, int n, int all, float *logits, struct sv_err *err) {
    const struct config *c = &g->m->cfg;
    if (n < 1)
        return sv_err_set(err, -EINVAL, "model '%s': no tokens to feed", g->m->dir);
    if (n > g->cap - g->pos)
        return sv_err_set(err, -ENOSPC, "model '%s': %d more tokens do not fit the context of %d (%d used)",
                          g->m->dir, n, g->cap, g->pos);
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab)
            return sv_err_set(err, -EINVAL, "model '%s': token id %d is outside the vocabulary (%d)", g->m->dir,
                              (int)ids[i], c->vocab);
    if (n > g->rows_cap) {
        float *x = realloc(g->x, (size_t)n * c->hidden * sizeof *x);
        if (!x)
            return sv_err_set(err, -ENOMEM, "model '%s': out of memory for %d tokens", g->m->dir, n);
        g->x = x;
        g->rows_cap = n;
    }
    int r = model_embed(g->m, ids, (size_t)n, g->x, err);
    size_t per = (size_t)g->cap * c->n_kv_heads * c->head_dim;
    for (int l = 0; r == 0 && l < c->n_layers; l++)
        r = forward_layer_cached(c, &g->layers[l], g->x, n, g->pos, g->kc + l * per, g->vc + l * per, g->cap, err);
    if (r < 0)
        return r;   /* the cache rows past pos are scratch; pos is unchanged */
    g->pos += n;
    const float *rows = all ? g->x : g->x + (size_t)(n - 1) * c->hidden;
    return forward_logits_small(c, &g->head, rows, all ? (size_t)n : 1, logits, err);
}

/* ---- sampling: llama2.c run.c's ---------------------------------------------- */

struct gen_prob {
    float prob;
    int index;
};

int gen_sampler_init(struct gen_sampler *s, int vocab, double temperature, double top_p, uint64_t seed,
                     struct sv_err *err) {
    memset(s, 0, sizeof *s);
    if (!(temperature >= 0) || !isfinite(temperature))
        return sv_err_set(err, -EINVAL, "temperature %g: must be a finite number >= 0", temperature);
    if (!(top_p >= 0) || !isfinite(top_p))
        return sv_err_set(err, -EINVAL, "top_p %g: must be a finite number >= 0", top_p);
    if (seed == 0)
        return sv_err_set(err, -EINVAL, "seed 0: must be non-zero (the xorshift state)");
    if (vocab < 2)
        return sv_err_set(err, -EINVAL, "vocabulary of %d: too small to sample from", vocab);
    s->vocab = vocab;
    s->temperature = (float)temperature;
    s->top_p = (float)top_p;
    s->state = seed;
    if (s->temperature > 0 && s->top_p > 0 && s->top_p < 1 && !(s->scratch = malloc((size_t)vocab * sizeof *s->scratch)))
        return sv_err_set(err, -ENOMEM, "out of memory for the sampler");
    return 0;
}

void gen_sampler_free(struct gen_sampler *s) {
    free(s->scratch);
    s->scratch = NULL;
}

static uint32_t rng_u32(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return (uint32_t)((*s * 0x2545F4914F6CDD1Dull) >> 32);
}

static float rng_f32(uint64_t *s) {
    return (float)(rng_u32(s) >> 8) / 16777216.0f;
}

static int prob_cmp(const void *a, const void *b) {
    const struct gen_prob *x = a, *y = b;
    return x->prob > y->prob ? -1 : x->prob < y->prob ? 1 : 0;
}

int32_t gen_sample(struct gen_sampler *s, float *p) {
    const int n = s->vocab;
    if (s->temperature == 0.0f) {
        int best = 0;
        for (int i = 1; i < n; i++)
            if (p[i] > p[best])
                best = i;
        return best;
    }
    for (int i = 0; i < n; i++)
        p[i] /= s->temperature;
    float mx = p[0], sum = 0;
    for (int i = 1; i < n; i++)
        mx = p[i] > mx ? p[i] : mx;
    for (int i = 0; i < n; i++) {
        p[i] = expf(p[i] - mx);
        sum += p[i];
    }
    for (int i = 0; i < n; i++)
        p[i] /= sum;
    float coin = rng_f32(&s->state);
    if (!s->scratch) {   /* whole vocabulary */
        float cdf = 0;
        for (int i = 0; i < n; i++) {
            cdf += p[i];
            if (coin < cdf)
                return i;
        }
        return n - 1;   /* rounding */
    }
    const float cutoff = (1.0f - s->top_p) / (float)(n - 1);
    int n0 = 0;
    for (int i = 0; i < n; i++)
        if (p[i] >= cutoff)
            s->scratch[n0++] = (struct gen_prob){p[i], i};
    qsort(s->scratch, (size_t)n0, sizeof *s->scratch, prob_cmp);
    float cum = 0;
    int last = n0 - 1;
    for (int i = 0; i < n0; i++) {
        cum += s->scratch[i].prob;
        if (cum > s->top_p) {
            last = i;
            break;
        }
    }
    float rr = coin * cum, cdf = 0;
    for (int i = 0; i <= last; i++) {
        cdf += s->scratch[i].prob;
        if (rr < cdf)
            return s->scratch[i].index;
    }
    return s->scratch[last].index;
}

/* ---- the run ---------------------------------------------------------------------- */

const char *gen_finish_name(enum gen_finish f) {
    static const char *const names[] = {"eos", "length", "context", "text_limit"};
    return (unsigned)f < sizeof names / sizeof names[0] ? names[f] : "?";
}

void gen_result_free(struct gen_result *r) {
    if (!r)
        return;
    free(r->ids);
    free(r->text);
    memset(r, 0, sizeof *r);
}

/* Bytes of text that no later token can change: all but a trailing run of
 * U+FFFD, which may be the start of a character still being generated. */
static size_t stable_len(const char *s, size_t n) {
    while (n >= 3 && memcmp(s + n - 3, "\xef\xbf\xbd", 3) == 0)
        n -= 3;
    return n;
}

int gen_run(const char *model_dir, const struct gen_params *p, gen_text_fn on_text, void *text_ctx,
            gen_cancel_fn cancel, void *cancel_ctx, struct gen_result *ret, struct sv_err *err) {
    struct gen *g = NULL;
    struct tok *t = NULL;
    struct gen_sampler smp = {0};
    int32_t *ids = NULL;
    size_t n_prompt = 0, emitted = 0;
    float *logits = NULL;
    char *text = NULL;
    size_t text_len = 0;
    char tpath[PATH_MAX];
    int r;
    memset(ret, 0, sizeof *ret);
    if (p->max_tokens < 1)
        return sv_err_set(err, -EINVAL, "max_tokens %d: must be at least 1", p->max_tokens);
    if ((size_t)snprintf(tpath, sizeof tpath, "%s/tokenizer.json", model_dir) >= sizeof tpath)
        return sv_err_set(err, -ENAMETOOLONG, "model '%s': path too long", model_dir);
    if ((r = tok_new(&t, tpath, err)) < 0)
        return r;
    if ((r = tok_encode(t, p->prompt ? p->prompt : "", p->prompt ? p->prompt_len : 0, p->add_bos, &ids, &n_prompt,
                        err)) < 0)
        goto out;
    if (n_prompt == 0) {
        r = sv_err_set(err, -EINVAL, "model '%s': the prompt is empty and the tokenizer adds no BOS: nothing to "
                       "continue", model_dir);
        goto out;
    }
    /* The cache holds what the run can reach; gen_new caps it at the context. */
    long long want = (long long)n_prompt + p->max_tokens;
    if ((r = gen_new(&g, model_dir, want > INT_MAX ? INT_MAX : (int)want, err)) < 0)
        goto out;
    const struct config *c = gen_config(g);
    if (n_prompt >= (size_t)g->cap) {
        r = sv_err_set(err, -E2BIG, "model '%s': the prompt has %zu tokens; the context holds %d", model_dir,
                       n_prompt, g->cap);
        goto out;
    }
    if ((r = gen_sampler_init(&smp, c->vocab, p->temperature, p->top_p, p->seed ? p->seed : 1, err)) < 0)
        goto out;
    int32_t *grown = realloc(ids, ((size_t)n_prompt + (size_t)p->max_tokens) * sizeof *ids);
    logits = malloc((size_t)c->vocab * sizeof *logits);
    if (!grown || !logits) {
        r = sv_err_set(err, -ENOMEM, "model '%s': out of memory", model_dir);
        goto out;
    }
    ids = grown;
    double t0 = mono_now();
    if ((r = gen_feed(g, ids, (int)n_prompt, 0, logits, err)) < 0)
        goto out;
    double t1 = mono_now();
    size_t n = n_prompt;
    enum gen_finish fin = GEN_FINISH_LENGTH;
    for (int k = 0; k < p->max_tokens; k++) {
        if (cancel && cancel(cancel_ctx)) {
            r = sv_err_set(err, -ECANCELED, "generation cancelled");
            goto out;
        }
        int32_t next = gen_sample(&smp, logits);
        ids[n++] = next;
        free(text);
        text = NULL;
        if ((r = tok_decode(t, ids, n, TOK_DECODE_SKIP_SPECIAL, &text, &text_len, err)) < 0)
            goto out;
        if (p->max_text_bytes && text_len > p->max_text_bytes) {
            fin = GEN_FINISH_TEXT_LIMIT;
            break;
        }
        if (next == c->eos_id) {
            fin = GEN_FINISH_EOS;
            break;
        }
        size_t st = stable_len(text, text_len);
        if (on_text && st > emitted && (r = on_text(text_ctx, text + emitted, st - emitted)) < 0)
            goto out;
        emitted = st > emitted ? st : emitted;
        if (k + 1 == p->max_tokens)
            break;
        if (g->pos == g->cap) {
            fin = GEN_FINISH_CONTEXT;
            break;
        }
        if ((r = gen_feed(g, &next, 1, 0, logits, err)) < 0)
            goto out;
    }
    if (fin == GEN_FINISH_TEXT_LIMIT) {
        /* The last token took the text over the limit: keep the text of the ones before. */
        n--;
        free(text);
        text = NULL;
        if ((r = tok_decode(t, ids, n, TOK_DECODE_SKIP_SPECIAL, &text, &text_len, err)) < 0)
            goto out;
    }
    if (!text && (r = tok_decode(t, ids, n, TOK_DECODE_SKIP_SPECIAL, &text, &text_len, err)) < 0)
        goto out;
    if (on_text && text_len > emitted && (r = on_text(text_ctx, text + emitted, text_len - emitted)) < 0)
        goto out;
    double t2 = mono_now();
    ret->ids = ids;
    ret->n_ids = n;
    ret->n_prompt = n_prompt;
    ret->text = text;
    ret->text_len = text_len;
    ret->finish = fin;
    ret->prompt_seconds = t1 - t0;
    ret->gen_seconds = t2 - t1;
    ret->tokens_per_s = t2 > t1 ? (double)(n - n_prompt) / (t2 - t1) : 0;
    ids = NULL;
    text = NULL;
    r = 0;
out:
    free(ids);
    free(text);
    free(logits);
    gen_sampler_free(&smp);
    gen_free(g);
    tok_free(t);
    return r;
}
