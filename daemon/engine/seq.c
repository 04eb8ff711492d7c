/* seq: the sequential methods, whose statistics are measured on the
 * compressed model (layers 0..L-1 already replaced, their states in
 * WORK/hidden-L.f32).
 *   rom      the same Grams as svdllm, but measured on the compressed model,
 *            and within a layer in four stages (q/k/v; o; gate/up; down),
 *            each stage's pass running the layer with the earlier stages
 *            already compressed and stopping at the stage's tap (FORWARD_STOP).
 *   svdllm-update  B = U_k^T W from svdllm's statistics; then, per stage, the
 *            original layer on the original states (targets Y) runs in
 *            lockstep with the compressed-so-far layer on the compressed
 *            states (Z = X' B^T), accumulating Z^T Z (k^2) and Y^T Z
 *            (d_out k): A = (Y^T Z)(Z^T Z)^+. DESIGN.md's A = C'U_k(U_k^T C'
 *            U_k)^-1 with C' = W G' W^T fits the compressed inputs to X' W^T;
 *            fitting them to the original outputs X W^T is what SVD-LLM's
 *            update is for (undo upstream error), and it needs no d_in^2
 *            statistic even for down_proj. */
#include "seq.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calib.h"
#include "forward.h"
#include "lowrank.h"
#include "mono.h"
#include "ranks.h"
#include "stats.h"

/* Within a layer the matrices are solved in four stages, each seeing the
 * already-compressed earlier ones: q/k/v (input: the attention norm), o
 * (input: attention of compressed q/k/v), gate/up (input: the MLP norm after
 * the compressed attention block), down (input: silu(gate') * up'). */
/* A stage's matrices are stage_in[s]..stage_last[s]; the first of them names
 * the stage's tapped input (q/k/v share the attention input, gate/up the MLP's). */
static const int stage_in[4] = {PROJ_Q, PROJ_O, PROJ_GATE, PROJ_DOWN};
static const int stage_last[4] = {PROJ_V, PROJ_O, PROJ_UP, PROJ_DOWN};

struct seq_ctx {
    const struct job *j;
    int stage;
    /* rom: Gram of the stage's inputs (down: of its outputs through the
     * original W_down) and their column sums, for the centred variant. */
    double *g, *sum, n;
    int width;
    /* svdllm-update */
    const struct lowrank_result *res;   /* B of each matrix */
    float *y[PROJ_COUNT];               /* this chunk's original outputs */
    size_t ycap[PROJ_COUNT];
    int ydim[PROJ_COUNT];
    double *yz[PROJ_COUNT], *zz[PROJ_COUNT], yy[PROJ_COUNT];
    float *z;
    size_t zcap;
};

static int rom_tap(struct seq_ctx *c, const float *x, size_t ntok, int width) {
    double t0 = mono_now();
    if (c->j->p->centered) /* the mean is needed only to remove it */
        for (size_t t = 0; t < ntok; t++)
            for (int i = 0; i < width; i++)
                c->sum[i] += x[t * (size_t)width + i];
    c->n += (double)ntok;
    int r = lowrank_gram_accum(c->g, x, ntok, width, NULL);
    job_tap_seconds += mono_now() - t0;
    return r < 0 ? r : FORWARD_STOP;
}

static int rom_in(void *ctx, enum config_proj p, const float *x, size_t ntok, int width) {
    struct seq_ctx *c = ctx;
    return c->stage < 3 && (int)p == stage_in[c->stage] ? rom_tap(c, x, ntok, width) : 0;
}

static int rom_out(void *ctx, enum config_proj p, const float *y, size_t ntok, int width) {
    struct seq_ctx *c = ctx;
    return c->stage == 3 && p == PROJ_DOWN ? rom_tap(c, y, ntok, width) : 0;
}

/* Original layer on the original stream: keep the stage's outputs Y. */
static int upd_out(void *ctx, enum config_proj p, const float *y, size_t ntok, int width) {
    struct seq_ctx *c = ctx;
    if ((int)p < stage_in[c->stage] || (int)p > stage_last[c->stage])
        return 0;
    size_t n = ntok * (size_t)width;
    double t0 = mono_now();
    if (c->ycap[p] < n) {
        float *t = realloc(c->y[p], n * sizeof *t);
        if (!t)
            return -ENOMEM;
        c->y[p] = t;
        c->ycap[p] = n;
    }
    memcpy(c->y[p], y, n * sizeof *y);
    c->ydim[p] = width;
    for (size_t i = 0; i < n; i++)
        c->yy[p] += (double)y[i] * y[i];
    job_tap_seconds += mono_now() - t0;
    return (int)p == stage_last[c->stage] ? FORWARD_STOP : 0;
}

/* Compressed layer on the compressed stream: Z = X' B^T, accumulate Z^T Z
 * and Y^T Z against the outputs upd_out kept for the same tokens. */
static int upd_in(void *ctx, enum config_proj p, const float *x, size_t ntok, int width) {
    struct seq_ctx *c = ctx;
    if ((int)p != stage_in[c->stage])
        return 0;
    double t0 = mono_now();
    for (int m = stage_in[c->stage]; m <= stage_last[c->stage]; m++) {
        const struct lowrank_result *rs = &c->res[m];
        if (!rs->k)
            continue;
        size_t n = ntok * (size_t)rs->k;
        if (c->zcap < n) {
            float *t = realloc(c->z, n * sizeof *t);
            if (!t)
                return -ENOMEM;
            c->z = t;
            c->zcap = n;
        }
        forward_sgemm(1, ntok, (size_t)rs->k, (size_t)width, 1.0f, x, (size_t)width, rs->b, (size_t)width, 0.0f, c->z,
                      (size_t)rs->k);
        int d_out = c->ydim[m];
        int r = lowrank_gram_accum(c->zz[m], c->z, ntok, rs->k, NULL);
        if (r == 0)
            r = lowrank_cross_accum(c->yz[m], c->y[m], d_out, c->z, rs->k, ntok, NULL);
        if (r < 0)
            return r;
    }
    job_tap_seconds += mono_now() - t0;
    return FORWARD_STOP;
}

static void seq_ctx_free(struct seq_ctx *c) {
    free(c->g);
    free(c->sum);
    for (int p = 0; p < PROJ_COUNT; p++) {
        free(c->y[p]);
        free(c->yz[p]);
        free(c->zz[p]);
    }
    free(c->z);
    memset(c, 0, sizeof *c);
}

/* svdllm-update's first step: B = U_k^T W from the original model's
 * whitening (svdllm's statistics), and the original stream for the next
 * layer (orig-(L+1), checksum in orig_next_hex). */
static int update_b(struct job *j, const struct layer_w *lw, struct lowrank_result *res, struct mat_report *rep,
                    const char *orig_in, const char *orig_in_hex, char orig_next_hex[65], struct sv_err *err) {
    const int l = lw->index;
    char path[PATH_MAX + 64];
    struct stats st = {0};
    int r = stats_alloc(j, STATS_GRAMS, &st, err);
    if (r < 0)
        return r;
    job_work_path(j, path, sizeof path, "orig-%d.f32", l + 1);
    job_seg(j, 1.0);
    if ((r = calib_layer(j, lw, &st, orig_in, orig_in_hex, path, orig_next_hex, err)) == 0) {
        int comp = 0;
        for (int p = 0; p < PROJ_COUNT; p++)
            comp |= j->rank[l][p] > 0;
        job_seg(j, comp ? COST_FACTOR : 0);
        /* drop_w 0: lw is only read (the cast drops a const factor_layer
         * needs for drop_w 1 alone). */
        r = factor_layer(j, METHOD_SVDLLM, (struct layer_w *)lw, &st, 0, res, rep, err);
    }
    stats_free(&st);
    return r;
}

/* rom's spectrum of matrix p under its stage's statistic g (an input Gram,
 * or down's output covariance), for ranks_adapt_stage. */
struct rom_spec {
    const struct layer_w *lw;
    const double *g;
    int out;
};

static int rom_spectrum(void *ctx, int p, double *ev, int *n, struct sv_err *err) {
    const struct rom_spec *sc = ctx;
    const struct linear *lin = &sc->lw->proj[p];
    char what[200];
    model_proj_prefix(sc->lw->index, p, what, sizeof what);
    return lowrank_spectrum(lin->w, lin->d_out, lin->d_in, sc->out ? NULL : sc->g, sc->out ? sc->g : NULL, ev, n,
                            what, err);
}

/* rom, stage sg: the Gram of the stage's tapped input measured on the
 * compressed-so-far layer lc over the compressed stream comp_in, then the
 * stage's matrices projected under it (down: as an output covariance). */
static int rom_stage(struct job *j, struct seq_ctx *cx, const struct layer_w *lw, const struct layer_w *lc,
                     const char *comp_in, struct lowrank_result *res, struct mat_report *rep, struct sv_err *err) {
    const int l = lw->index, sg = cx->stage;
    const int w = sg == 0 || sg == 2 || sg == 3 ? j->c->hidden : j->c->n_heads * j->c->head_dim;
    char what[200];
    cx->width = w;
    cx->n = 0;
    free(cx->g);
    free(cx->sum);
    cx->g = calloc((size_t)w * w, sizeof *cx->g);
    cx->sum = calloc((size_t)w, sizeof *cx->sum);
    if (!cx->g || !cx->sum)
        return sv_err_set(err, -ENOMEM, "layer %d: out of memory for statistics", l);
    struct forward_taps taps = {.ctx = cx, .input = rom_in, .output = rom_out};
    struct calib_stream s = {.lw = lc, .taps = &taps};
    snprintf(s.in, sizeof s.in, "%s", comp_in);
    job_seg(j, cost_rom_pass[sg]);
    int r = calib_stream_pass(j, l, &s, 1, err);
    if (r < 0)
        return r;
    job_seg(j, COST_FACTOR * cost_factor_share[sg]);
    job_progress(j, l, "factorize", 0);
    lowrank_gram_symmetrize(cx->g, w);
    if (j->p->centered && cx->n > 0) /* sum (x - mean)(x - mean)^T = G - s s^T / n */
        for (int a = 0; a < w; a++)
            for (int b = 0; b < w; b++)
                cx->g[(size_t)a * w + b] -= cx->sum[a] * cx->sum[b] / cx->n;
    struct rom_spec sc = {.lw = lw, .g = cx->g, .out = sg == 3};
    if ((r = ranks_adapt_stage(j, l, stage_in[sg], stage_last[sg], rom_spectrum, &sc, err)) < 0)
        return r;
    struct lowrank_white wh = {0}; /* the stage's whitening, shared by its matrices */
    for (int p = stage_in[sg]; p <= stage_last[sg] && r == 0; p++) {
        if (!j->rank[l][p])
            continue;
        const struct linear *lin = &lw->proj[p];
        model_proj_prefix(l, p, what, sizeof what);
        double t0 = mono_now();
        if (sg == 3)
            r = lowrank_project(lin->w, lin->d_out, lin->d_in, NULL, cx->g, j->rank[l][p], what, &res[p], err);
        else if (wh.s || (r = lowrank_white_new(cx->g, w, what, &wh, err)) == 0)
            r = lowrank_project_white(lin->w, lin->d_out, lin->d_in, &wh, j->rank[l][p], what, &res[p], err);
        if (r == 0) {
            factor_report(&rep[p], &res[p], mono_now() - t0);
            j->t.factorize += rep[p].seconds;
        }
    }
    lowrank_white_free(&wh);
    return r;
}

/* svdllm-update: matrix p's A refitted to the statistics upd_out/upd_in
 * accumulated (A = (Y^T Z)(Z^T Z)^+), with the loss before and after. */
static int update_refit(struct job *j, struct seq_ctx *cx, const struct layer_w *lw, int p,
                        struct lowrank_result *res, struct mat_report *rep, struct sv_err *err) {
    int k = res[p].k, d_out = lw->proj[p].d_out;
    char what[200];
    model_proj_prefix(lw->index, p, what, sizeof what);
    /* One d_out x k double buffer: svdllm's A for the loss before, then the
     * refit's A (at LLaMA-7B gate/up, 158 MB a copy). */
    double t0 = mono_now(), *a = malloc((size_t)d_out * k * sizeof *a);
    if (!a)
        return sv_err_set(err, -ENOMEM, "%s: out of memory for the update", what);
    lowrank_gram_symmetrize(cx->zz[p], k);
    for (size_t i = 0; i < (size_t)d_out * k; i++)
        a[i] = res[p].a[i];
    double before = lowrank_refit_loss(cx->yy[p], a, cx->yz[p], cx->zz[p], d_out, k);
    int r = lowrank_refit(cx->yz[p], cx->zz[p], d_out, k, what, a, &rep[p].refit_dropped, err);
    if (r == 0) {
        rep[p].refit = 1;
        rep[p].loss_before = before;
        rep[p].loss_after = lowrank_refit_loss(cx->yy[p], a, cx->yz[p], cx->zz[p], d_out, k);
        for (size_t i = 0; i < (size_t)d_out * k; i++)
            res[p].a[i] = (float)a[i];
        rep[p].seconds += mono_now() - t0;
        j->t.factorize += mono_now() - t0;
    }
    free(a);
    return r;
}

/* svdllm-update, stage sg: the original layer on the original stream and
 * the compressed-so-far layer lc on the compressed one in lockstep, then
 * each of the stage's A refitted. */
static int update_stage(struct job *j, struct seq_ctx *cx, const struct layer_w *lw, const struct layer_w *lc,
                        const char *orig_in, const char *comp_in, struct lowrank_result *res,
                        struct mat_report *rep, struct sv_err *err) {
    const int l = lw->index, sg = cx->stage;
    for (int p = stage_in[sg]; p <= stage_last[sg]; p++) {
        if (!res[p].k)
            continue;
        size_t k = (size_t)res[p].k;
        cx->yz[p] = calloc((size_t)lw->proj[p].d_out * k, sizeof(double));
        cx->zz[p] = calloc(k * k, sizeof(double));
        if (!cx->yz[p] || !cx->zz[p])
            return sv_err_set(err, -ENOMEM, "layer %d: out of memory for the update", l);
    }
    struct forward_taps to = {.ctx = cx, .output = upd_out}, tc = {.ctx = cx, .input = upd_in};
    struct calib_stream s[2] = {{.lw = lw, .taps = &to}, {.lw = lc, .taps = &tc}};
    snprintf(s[0].in, sizeof s[0].in, "%s", orig_in);
    snprintf(s[1].in, sizeof s[1].in, "%s", comp_in);
    job_seg(j, cost_upd_pass[sg]);
    int r = calib_stream_pass(j, l, s, 2, err);
    if (r < 0)
        return r;
    job_seg(j, COST_REFIT);
    job_progress(j, l, "factorize", 0);
    for (int p = stage_in[sg]; p <= stage_last[sg] && r == 0; p++)
        if (res[p].k)
            r = update_refit(j, cx, lw, p, res, rep, err);
    /* The stage's statistics and kept outputs are done with: the later
     * stages' peak is lower without them (at LLaMA-7B the q..up ones are
     * about 0.7 GB). */
    for (int p = stage_in[sg]; p <= stage_last[sg]; p++) {
        free(cx->y[p]);
        free(cx->yz[p]);
        free(cx->zz[p]);
        cx->y[p] = NULL;
        cx->yz[p] = cx->zz[p] = NULL;
        cx->ycap[p] = 0;
    }
    return r;
}

/* One layer of rom or svdllm-update. res/rep are filled for every matrix with
 * rank > 0; next_hex (and, for the update, orig_next_hex) name the states
 * written for layer l + 1. */
int seq_layer(struct job *j, const struct layer_w *lw, struct lowrank_result *res, struct mat_report *rep,
              const char *in_hex, const char *orig_in_hex, char next_hex[65], char orig_next_hex[65],
              struct sv_err *err) {
    const int l = lw->index, update = j->p->method == METHOD_SVDLLM_UPDATE;
    char comp_in[PATH_MAX + 64], orig_in[PATH_MAX + 64];
    struct layer_w lc = *lw; /* the layer as compressed so far (shares lw's dense weights) */
    struct seq_ctx cx = {.j = j, .res = res};
    int r = 0;
    job_work_path(j, comp_in, sizeof comp_in, "hidden-%d.f32", l);
    calib_orig_path(j, orig_in, sizeof orig_in, l);
    if (update && (r = update_b(j, lw, res, rep, orig_in, orig_in_hex, orig_next_hex, err)) < 0)
        goto out;
    for (int sg = 0; sg < 4; sg++) {
        int any = 0;
        for (int p = stage_in[sg]; p <= stage_last[sg]; p++)
            any |= j->rank[l][p] > 0;
        if (!any)
            continue;
        cx.stage = sg;
        r = update ? update_stage(j, &cx, lw, &lc, orig_in, comp_in, res, rep, err)
                   : rom_stage(j, &cx, lw, &lc, comp_in, res, rep, err);
        if (r < 0)
            goto out;
        /* The later stages see these matrices compressed. */
        for (int p = stage_in[sg]; p <= stage_last[sg]; p++)
            if (res[p].k)
                lc.proj[p] = (struct linear){.d_out = lw->proj[p].d_out, .d_in = lw->proj[p].d_in, .rank = res[p].k,
                                             .a = res[p].a, .b = res[p].b};
    }
    /* The compressed layer's outputs: the next layer's compressed stream. */
    struct calib_stream s = {.in_hex = in_hex, .out_hex = next_hex, .lw = &lc};
    snprintf(s.in, sizeof s.in, "%s", comp_in);
    job_work_path(j, s.out, sizeof s.out, "hidden-%d.f32", l + 1);
    int dense = 1;
    for (int p = 0; p < PROJ_COUNT; p++)
        dense &= !res[p].k;
    job_seg(j, dense ? 1.0 : COST_FINAL);
    r = calib_stream_pass(j, l, &s, 1, err);
out:
    seq_ctx_free(&cx);
    return r;
}
