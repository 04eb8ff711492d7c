/* rrr: reduced-rank regression on the compressed model, the layer pass.
 *
 * Per stage, as for the update, the original layer on the original stream
 * and the compressed-so-far layer on the compressed stream run in lockstep.
 * The original stream's input tap keeps the chunk's stage input X and adds
 * to G = X^T X (for the update's B, the reference rrr is compared with);
 * its output taps add ||Y||^2 per matrix and stop after the stage's last
 * matrix. The compressed stream's tap adds G' = X'^T X' and H = X'^T X
 * (lowrank.h). The statistics come in two parts: the fit windows and the
 * held-out ones, the last RRR_HELD_DIV-th of the calibration windows (at
 * least one, when there are RRR_HELD_MIN or more). Each matrix's ridge lambda
 * is the grid value whose factors, fitted on the fit windows, have the
 * lowest loss on the held-out ones (exact, from the held-out statistics);
 * the factors are then fitted on all windows with that lambda. Fewer
 * windows: lambda = RRR_LAMBDA_FIXED. The report has lambda, the held-out
 * loss of every candidate, and on all windows the calibration loss of rrr,
 * of rrr with lambda = 0 (which no rank-k pair beats), of svdllm's factors
 * (B = U_k^T W from G, A = U_k) and of svdllm-update's refit of A for the
 * same B, all on the same compressed inputs X'.
 * Memory per stage: five d_in^2 doubles (G, G' and H twice) besides the
 * core's (lowrank.h); for down_proj d_in is the intermediate size. */
#include "rrr.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calib.h"
#include "cost.h"
#include "forward.h"
#include "lowrank.h"
#include "mono.h"
#include "ranks.h"

#define RRR_HELD_DIV 8

const double rrr_lambdas[RRR_NLAMBDA] = {0, 1e-3, 1e-2, 0.1, 0.3, 1, 3, 10};

/* The stages of seq.c: q/k/v, o, gate/up, down; a stage's matrices are
 * stage_in[s]..stage_last[s], the first names its tapped input. */
static const int stage_in[4] = {PROJ_Q, PROJ_O, PROJ_GATE, PROJ_DOWN};
static const int stage_last[4] = {PROJ_V, PROJ_O, PROJ_UP, PROJ_DOWN};

int rrr_held_windows(int n_samples) {
    if (n_samples < RRR_HELD_MIN)
        return 0;
    int h = n_samples / RRR_HELD_DIV;
    return h < 1 ? 1 : h;
}

struct rrr_ctx {
    int stage, width;          /* the stage's input width */
    size_t fit_tok;            /* tokens of the fit windows */
    size_t tok_orig, tok_comp; /* tokens each stream has passed through the stage's input */
    size_t chunk0;             /* first token of the current chunk */
    float *x;                  /* this chunk's original stage input (ntok, width) */
    size_t xcap, xtok;
    double *g;                 /* G = X^T X (lower), all windows */
    double *gp[2], *h[2];      /* [0] fit, [1] held-out: G' (lower), H (full) */
    double yy[2][PROJ_COUNT];
};

/* Rows [0, n_fit) of a chunk that starts at token t0 are fit windows. */
static size_t rrr_fit_rows(const struct rrr_ctx *c, size_t t0, size_t ntok) {
    return c->fit_tok <= t0 ? 0 : c->fit_tok - t0 < ntok ? c->fit_tok - t0 : ntok;
}

static int rrr_orig_in(void *ctx, enum config_proj p, const float *x, size_t ntok, int width) {
    struct rrr_ctx *c = ctx;
    if ((int)p != stage_in[c->stage])
        return 0;
    double t0 = mono_now();
    size_t n = ntok * (size_t)width;
    if (c->xcap < n) {
        float *t = realloc(c->x, n * sizeof *t);
        if (!t)
            return -ENOMEM;
        c->x = t;
        c->xcap = n;
    }
    memcpy(c->x, x, n * sizeof *x);
    c->xtok = ntok;
    c->chunk0 = c->tok_orig;
    c->tok_orig += ntok;
    int r = lowrank_gram_accum(c->g, x, ntok, width, NULL);
    job_tap_seconds += mono_now() - t0;
    return r;
}

static int rrr_orig_out(void *ctx, enum config_proj p, const float *y, size_t ntok, int width) {
    struct rrr_ctx *c = ctx;
    if ((int)p < stage_in[c->stage] || (int)p > stage_last[c->stage])
        return 0;
    size_t nf = rrr_fit_rows(c, c->chunk0, ntok) * (size_t)width, n = ntok * (size_t)width;
    for (size_t i = 0; i < n; i++)
        c->yy[i >= nf][p] += (double)y[i] * y[i];
    return (int)p == stage_last[c->stage] ? FORWARD_STOP : 0;
}

static int rrr_comp_in(void *ctx, enum config_proj p, const float *x, size_t ntok, int width) {
    struct rrr_ctx *c = ctx;
    if ((int)p != stage_in[c->stage])
        return 0;
    if (c->tok_comp != c->chunk0 || ntok != c->xtok || width != c->width)
        return -EIO; /* the two streams out of step: cannot happen with stream_pass's order */
    double t0 = mono_now();
    size_t nf = rrr_fit_rows(c, c->tok_comp, ntok), w = (size_t)width;
    c->tok_comp += ntok;
    int r = 0;
    for (int part = 0; part < 2 && r == 0; part++) {
        size_t r0 = part ? nf : 0, nr = part ? ntok - nf : nf;
        if (!nr)
            continue;
        if ((r = lowrank_gram_accum(c->gp[part], x + r0 * w, nr, width, NULL)) == 0)
            r = lowrank_cross_accum(c->h[part], x + r0 * w, width, c->x + r0 * w, width, nr, NULL);
    }
    job_tap_seconds += mono_now() - t0;
    return r < 0 ? r : FORWARD_STOP;
}

static void rrr_ctx_free(struct rrr_ctx *c) {
    free(c->x);
    free(c->g);
    for (int i = 0; i < 2; i++) {
        free(c->gp[i]);
        free(c->h[i]);
    }
    memset(c, 0, sizeof *c);
}

/* The reference on the same inputs: svdllm's factors of W (G = X^T X) and
 * svdllm-update's refit of their A, their calibration losses into rep. */
static int rrr_reference(const struct linear *lin, const struct rrr_ctx *c, int p, int k, const char *what,
                         struct mat_report *rep, struct sv_err *err) {
    struct lowrank_result ru;
    memset(&ru, 0, sizeof ru);
    int d_out = lin->d_out, d_in = lin->d_in;
    double *yz = malloc((size_t)d_out * k * sizeof *yz), *zz = malloc((size_t)k * k * sizeof *zz),
           *a = malloc((size_t)d_out * k * sizeof *a);
    int r = 0;
    if (!yz || !zz || !a) {
        r = sv_err_set(err, -ENOMEM, "%s: out of memory for the update's reference", what);
        goto out;
    }
    double yy = c->yy[0][p] + c->yy[1][p];
    if ((r = lowrank_project(lin->w, d_out, d_in, c->g, NULL, k, what, &ru, err)) < 0 ||
        (r = lowrank_rrr_zstats(lin->w, d_out, d_in, c->gp[0], c->h[0], ru.b, k, yz, zz, err)) < 0)
        goto out;
    for (size_t i = 0; i < (size_t)d_out * k; i++)
        a[i] = ru.a[i];
    rep->loss_svdllm = lowrank_refit_loss(yy, a, yz, zz, d_out, k);
    if ((r = lowrank_refit(yz, zz, d_out, k, what, a, NULL, err)) < 0)
        goto out;
    rep->loss_update = lowrank_refit_loss(yy, a, yz, zz, d_out, k);
out:
    lowrank_result_free(&ru);
    free(yz);
    free(zz);
    free(a);
    return r;
}

/* rrr's spectrum of matrix p (lowrank_rrr_spectrum), for ranks_adapt_stage. */
struct rrr_spec {
    const struct layer_w *lw;
    struct lowrank_rrr q;
};

static int rrr_spectrum(void *ctx, int p, double *ev, int *n, struct sv_err *err) {
    const struct rrr_spec *sc = ctx;
    const struct linear *lin = &sc->lw->proj[p];
    char what[200];
    model_proj_prefix(sc->lw->index, p, what, sizeof what);
    return lowrank_rrr_spectrum(lin->w, lin->d_out, lin->d_in, &sc->q, ev, n, what, err);
}

/* One stage's factors from the statistics in c: lambda per matrix on the
 * held-out part, then the fit on all windows (c->gp[0], c->h[0] become the
 * sums). */
static int rrr_stage_factor(struct job *j, const struct layer_w *lw, struct rrr_ctx *c, int sg,
                            struct lowrank_result *res, struct mat_report *rep, struct sv_err *err) {
    const int l = lw->index, w = c->width, held = c->fit_tok < (size_t)j->n_samples * j->T;
    char what[200];
    int best[PROJ_COUNT] = {0}, r = 0;
    struct lowrank_rrr q = {0}, q0 = {0};
    double hl[PROJ_COUNT][RRR_NLAMBDA];
    lowrank_gram_symmetrize(c->g, w);
    for (int part = 0; part < 2; part++)
        lowrank_gram_symmetrize(c->gp[part], w);
    if (j->adapt) { /* the ranks from rrr's own spectra (lambda = 0, fit windows) */
        struct rrr_spec sc = {.lw = lw};
        model_proj_prefix(l, stage_in[sg], what, sizeof what);
        if ((r = lowrank_rrr_new(c->gp[0], c->h[0], w, 0.0, what, &sc.q, err)) < 0)
            return r;
        r = ranks_adapt_stage(j, l, stage_in[sg], stage_last[sg], rrr_spectrum, &sc, err);
        lowrank_rrr_free(&sc.q);
        if (r < 0)
            return r;
    }
    for (int li = 0; li < RRR_NLAMBDA && held; li++) {
        double t0 = mono_now();
        /* Each candidate is a factorization of the stage: a cancel is
         * honoured between them. */
        if (job_cancelled(j))
            return sv_err_set(err, -ECANCELED, "cancelled");
        model_proj_prefix(l, stage_in[sg], what, sizeof what);
        if ((r = lowrank_rrr_new(c->gp[0], c->h[0], w, rrr_lambdas[li], what, &q, err)) < 0)
            return r;
        for (int p = stage_in[sg]; p <= stage_last[sg] && r == 0; p++) {
            if (!j->rank[l][p])
                continue;
            const struct linear *lin = &lw->proj[p];
            struct lowrank_result rt;
            memset(&rt, 0, sizeof rt);
            model_proj_prefix(l, p, what, sizeof what);
            if ((r = lowrank_rrr_project(lin->w, lin->d_out, lin->d_in, &q, j->rank[l][p], what, &rt, err)) == 0)
                hl[p][li] = lowrank_rrr_loss(c->yy[1][p], lin->w, lin->d_out, lin->d_in, c->gp[1], c->h[1], rt.a,
                                             rt.b, rt.k);
            lowrank_result_free(&rt);
            if (r == 0 && isfinite(hl[p][li]) && (li == 0 || !(hl[p][li] >= hl[p][best[p]])))
                best[p] = li;
            rep[p].seconds += (mono_now() - t0) / (stage_last[sg] - stage_in[sg] + 1);
        }
        lowrank_rrr_free(&q);
        j->t.factorize += mono_now() - t0;
        if (r < 0)
            return r;
    }
    size_t ww = (size_t)w * w;
    for (size_t i = 0; i < ww; i++) {
        c->gp[0][i] += c->gp[1][i];
        c->h[0][i] += c->h[1][i];
    }
    for (int p = stage_in[sg]; p <= stage_last[sg]; p++) {
        if (!j->rank[l][p])
            continue;
        const struct linear *lin = &lw->proj[p];
        double lambda = held ? rrr_lambdas[best[p]] : RRR_LAMBDA_FIXED, t0 = mono_now(), sec = rep[p].seconds;
        model_proj_prefix(l, p, what, sizeof what);
        if (job_cancelled(j)) {
            r = sv_err_set(err, -ECANCELED, "cancelled");
            break;
        }
        /* q/k/v (gate/up) that chose the same lambda share its Cholesky. */
        if ((!q.wh.s || q.lambda != lambda) &&
            (lowrank_rrr_free(&q), r = lowrank_rrr_new(c->gp[0], c->h[0], w, lambda, what, &q, err)) < 0)
            break;
        if ((r = lowrank_rrr_project(lin->w, lin->d_out, lin->d_in, &q, j->rank[l][p], what, &res[p], err)) < 0)
            break;
        res[p].gflop += q.gflop;
        factor_report(&rep[p], &res[p], sec);
        rep[p].rrr = 1;
        rep[p].rrr_lambda = lambda;
        rep[p].rrr_held = held;
        for (int li = 0; li < RRR_NLAMBDA && held; li++)
            rep[p].rrr_heldout[li] = hl[p][li];
        rep[p].loss_after = lowrank_rrr_loss(c->yy[0][p] + c->yy[1][p], lin->w, lin->d_out, lin->d_in, c->gp[0],
                                             c->h[0], res[p].a, res[p].b, res[p].k);
        /* lambda = 0, the plain reduced-rank regression: never above the update. */
        rep[p].loss_lambda0 = rep[p].loss_after;
        if (lambda != 0) {
            struct lowrank_result r0;
            memset(&r0, 0, sizeof r0);
            if ((!q0.wh.s && (r = lowrank_rrr_new(c->gp[0], c->h[0], w, 0.0, what, &q0, err)) < 0) ||
                (r = lowrank_rrr_project(lin->w, lin->d_out, lin->d_in, &q0, res[p].k, what, &r0, err)) < 0)
                break;
            rep[p].loss_lambda0 = lowrank_rrr_loss(c->yy[0][p] + c->yy[1][p], lin->w, lin->d_out, lin->d_in,
                                                   c->gp[0], c->h[0], r0.a, r0.b, r0.k);
            lowrank_result_free(&r0);
        }
        if ((r = rrr_reference(lin, c, p, res[p].k, what, &rep[p], err)) < 0)
            break;
        if (!isfinite(rep[p].loss_after) || !isfinite(rep[p].loss_lambda0) || !isfinite(rep[p].loss_svdllm) ||
            !isfinite(rep[p].loss_update)) {
            r = sv_err_set(err, -ENOMEM, "%s: out of memory for rrr's calibration losses", what);
            break;
        }
        double dt = mono_now() - t0;
        rep[p].seconds += dt;
        j->t.factorize += dt;
    }
    lowrank_rrr_free(&q);
    lowrank_rrr_free(&q0);
    return r;
}

int rrr_layer(struct job *j, const struct layer_w *lw, struct lowrank_result *res, struct mat_report *rep,
              const char *in_hex, const char *orig_in_hex, char next_hex[65], char orig_next_hex[65],
              struct sv_err *err) {
    const int l = lw->index;
    const struct config *cf = j->c;
    char comp_in[PATH_MAX + 64], orig_in[PATH_MAX + 64];
    struct layer_w lc = *lw; /* the layer as compressed so far (shares lw's dense weights) */
    struct rrr_ctx cx = {0};
    int r = 0;
    job_work_path(j, comp_in, sizeof comp_in, "hidden-%d.f32", l);
    calib_orig_path(j, orig_in, sizeof orig_in, l);
    for (int sg = 0; sg < 4; sg++) {
        int any = 0;
        for (int p = stage_in[sg]; p <= stage_last[sg]; p++)
            any |= j->rank[l][p] > 0;
        if (!any)
            continue;
        int w = sg == 0 || sg == 2 ? cf->hidden : sg == 1 ? cf->n_heads * cf->head_dim : cf->intermediate;
        size_t ww = (size_t)w * w;
        rrr_ctx_free(&cx);
        cx.fit_tok = (size_t)(j->n_samples - rrr_held_windows(j->n_samples)) * j->T;
        cx.stage = sg;
        cx.width = w;
        cx.g = calloc(ww, sizeof *cx.g);
        for (int part = 0; part < 2; part++) {
            cx.gp[part] = calloc(ww, sizeof(double));
            cx.h[part] = calloc(ww, sizeof(double));
        }
        if (!cx.g || !cx.gp[0] || !cx.gp[1] || !cx.h[0] || !cx.h[1]) {
            r = sv_err_set(err, -ENOMEM, "layer %d: out of memory for rrr's statistics (5 x %d^2 doubles)", l, w);
            goto out;
        }
        struct forward_taps to = {.ctx = &cx, .input = rrr_orig_in, .output = rrr_orig_out},
                            tc = {.ctx = &cx, .input = rrr_comp_in};
        struct calib_stream s[2] = {{.lw = lw, .taps = &to}, {.lw = &lc, .taps = &tc}};
        snprintf(s[0].in, sizeof s[0].in, "%s", orig_in);
        snprintf(s[1].in, sizeof s[1].in, "%s", comp_in);
        job_seg(j, cost_upd_pass[sg]);
        if ((r = calib_stream_pass(j, l, s, 2, err)) < 0)
            goto out;
        job_seg(j, COST_FACTOR * cost_factor_share[sg] * COST_RRR);
        job_progress(j, l, "factorize", 0);
        if ((r = rrr_stage_factor(j, lw, &cx, sg, res, rep, err)) < 0)
            goto out;
        /* The later stages see these matrices compressed. */
        for (int p = stage_in[sg]; p <= stage_last[sg]; p++)
            if (res[p].k)
                lc.proj[p] = (struct linear){.d_out = lw->proj[p].d_out, .d_in = lw->proj[p].d_in, .rank = res[p].k,
                                             .a = res[p].a, .b = res[p].b};
    }
    rrr_ctx_free(&cx);
    /* Both streams for the next layer: the compressed layer's outputs and the
     * original layer's. */
    struct calib_stream s[2] = {{.in_hex = in_hex, .out_hex = next_hex, .lw = &lc},
                          {.in_hex = orig_in_hex, .out_hex = orig_next_hex, .lw = lw}};
    snprintf(s[0].in, sizeof s[0].in, "%s", comp_in);
    job_work_path(j, s[0].out, sizeof s[0].out, "hidden-%d.f32", l + 1);
    snprintf(s[1].in, sizeof s[1].in, "%s", orig_in);
    job_work_path(j, s[1].out, sizeof s[1].out, "orig-%d.f32", l + 1);
    job_seg(j, 1.0 + COST_FINAL);
    r = calib_stream_pass(j, l, s, 2, err);
out:
    rrr_ctx_free(&cx);
    return r;
}
