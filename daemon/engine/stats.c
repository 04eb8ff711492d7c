/* stats: what a method measures of a layer's activations on the original
 * model, and which statistic each matrix is factored under.
 *   svd      G = I, no calibration.
 *   svdllm   per matrix, the statistic of the narrower side: C = Y^T Y of
 *            its OUTPUT where d_out <= d_in (q, k, v, o, down: hidden^2
 *            instead of ffn^2 for down), else the Gram X^T X of its input
 *            (gate/up share the MLP input's), all from the original model,
 *            packed (lower triangle) and accumulated in double.
 *   asvd, awsvd, lorap's attention: G = diag(s^2) from channel statistics.
 * The sequential methods' own statistics (measured on the compressed model)
 * are in seq.c. The taps run inside the forward pass; their time is
 * counted in job_tap_seconds. */
#include "stats.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lowrank.h"
#include "mono.h"

/* What a non-sequential method measures on the original model. */
enum stats_kind stats_kind_of(enum compress_method m) {
    return m == METHOD_SVD ? STATS_NONE : m == METHOD_SVDLLM ? STATS_GRAMS : STATS_DIAG;
}

int stats_group(enum config_proj p) {
    return p <= PROJ_V ? 0 : p == PROJ_O ? 1 : p <= PROJ_UP ? 2 : 3;
}

static int stats_input_body(struct stats *s, enum config_proj p, const float *x, size_t ntok, int width) {
    if (s->abs_sum[0]) {
        int g = stats_group(p);
        double *a = s->abs_sum[g], *q = s->sq_sum[g];
        for (size_t t = 0; t < ntok; t++)
            for (int j = 0; j < width; j++) {
                double v = x[t * (size_t)width + j];
                a[j] += fabs(v);
                q[j] += v * v;
            }
        if (g == 0)
            s->ntok += (double)ntok;
        return 0;
    }
    double *g = s->gin[stats_group(p)]; /* the tap fires once per input: q, o, gate, down */
    return g ? lowrank_pgram_accum(g, x, ntok, width, NULL) : 0;
}

int stats_input(void *ctx, enum config_proj p, const float *x, size_t ntok, int width) {
    double t0 = mono_now();
    int r = stats_input_body(ctx, p, x, ntok, width);
    job_tap_seconds += mono_now() - t0;
    return r;
}

int stats_output(void *ctx, enum config_proj p, const float *y, size_t ntok, int width) {
    struct stats *s = ctx;
    if (!s->cov[p])
        return 0;
    double t0 = mono_now();
    int r = lowrank_pgram_accum(s->cov[p], y, ntok, width, NULL);
    job_tap_seconds += mono_now() - t0;
    return r;
}

void stats_free(struct stats *s) {
    for (int g = 0; g < 4; g++) {
        free(s->abs_sum[g]);
        free(s->sq_sum[g]);
    }
    for (int p = 0; p < PROJ_COUNT; p++)
        free(s->cov[p]);
    for (int g = 0; g < 4; g++)
        free(s->gin[g]);
    memset(s, 0, sizeof *s);
}

int stats_alloc(const struct job *j, enum stats_kind kind, struct stats *st, struct sv_err *err) {
    const struct config *c = j->c;
    int d = c->hidden, qw = c->n_heads * c->head_dim, ok = 1;
    *st = (struct stats){.d = d, .qw = qw, .ff = c->intermediate, .width = {d, qw, d, c->intermediate}};
    if (kind == STATS_GRAMS) {
        for (int p = 0; p < PROJ_COUNT && ok; p++) {
            int d_out, d_in, g = stats_group(p);
            config_proj_shape(c, p, &d_out, &d_in);
            if (d_out <= d_in)
                ok = (st->cov[p] = calloc(lowrank_packed_len(d_out), sizeof(double))) != NULL;
            else if (!st->gin[g])
                ok = (st->gin[g] = calloc(lowrank_packed_len(d_in), sizeof(double))) != NULL;
        }
    } else if (kind == STATS_DIAG) {
        for (int g = 0; g < 4; g++) {
            st->abs_sum[g] = calloc((size_t)st->width[g], sizeof(double));
            st->sq_sum[g] = calloc((size_t)st->width[g], sizeof(double));
            ok = ok && st->abs_sum[g] && st->sq_sum[g];
        }
    }
    if (!ok) {
        stats_free(st);
        return sv_err_set(err, -ENOMEM, "out of memory for the layer statistics");
    }
    return 0;
}

/* ASVD / AWSVD: G = diag(s^2) with s from the channel statistics. Output
 * side: C = (W diag(s))(W diag(s))^T, no d_in^2 matrix; input side: the
 * diagonal G itself (d_in is the narrow side there). */
static int diag_statistic(const struct job *j, const struct stats *s, enum config_proj p, const struct linear *lin,
                          double **own, const double **g, const double **cout, const char *what, struct sv_err *err) {
    int grp = stats_group(p), n = lin->d_in;
    double *sc = malloc((size_t)n * sizeof *sc);
    if (!sc)
        return sv_err_set(err, -ENOMEM, "%s: out of memory", what);
    double alpha = params_alpha(j->p), nt = s->ntok > 0 ? s->ntok : 1;
    for (int c = 0; c < n; c++)
        sc[c] = j->p->method == METHOD_ASVD ? pow(s->abs_sum[grp][c] / nt, alpha) : sqrt(s->sq_sum[grp][c] / nt);
    int r = 0;
    if (lin->d_out <= lin->d_in) {
        double *c = malloc((size_t)lin->d_out * lin->d_out * sizeof *c);
        if (!c)
            r = sv_err_set(err, -ENOMEM, "%s: out of memory", what);
        else if ((r = lowrank_scaled_cov(lin->w, lin->d_out, n, sc, c, err)) == 0)
            *cout = c;
        *own = c;
        *g = NULL;
    } else {
        double *gd = calloc((size_t)n * n, sizeof *gd);
        if (!gd)
            r = sv_err_set(err, -ENOMEM, "%s: out of memory", what);
        else
            for (int c = 0; c < n; c++)
                gd[(size_t)c * n + c] = sc[c] * sc[c];
        *own = gd;
        *g = gd;
        *cout = NULL;
    }
    free(sc);
    return r;
}

/* The statistic of matrix p under a diagonal method or svd (stats.h). */
int stats_matrix(const struct job *j, enum compress_method m, const struct stats *s, enum config_proj p,
                            const struct linear *lin, double **own, const double **g, const double **cout,
                            const char *what, struct sv_err *err) {
    *own = NULL;
    *g = *cout = NULL;
    if (m == METHOD_ASVD || m == METHOD_AWSVD || m == METHOD_LORAP)
        return diag_statistic(j, s, p, lin, own, g, cout, what, err);
    return 0; /* svd: G = I */
}

