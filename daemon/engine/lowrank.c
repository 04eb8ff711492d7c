/* lowrank: the shared statistic-then-projection core (design in lowrank.h). */
#include "lowrank.h"

#include <blis.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "forward.h"
#include "la.h"

#define GRAM_CHUNK 256

int lowrank_rank_for_ratio(int d_out, int d_in, double ratio) {
    /* The double expression can land a few ulps below an integer the formula
     * reaches exactly (6 x 15 at 0.3: 2.9999999999999996, not 3). Nudge by
     * 1e-9: far above that error (< 1e-10 while the quotient is < 1e5), below
     * any fractional part a ratio of <= 3 decimals yields (a multiple of
     * 1 / (1000 (d_out + d_in)), >= 5e-9 for d_out + d_in <= 2e5). */
    double k = floor((double)d_out * d_in * (1.0 - ratio) / ((double)d_out + d_in) + 1e-9);
    int mn = d_out < d_in ? d_out : d_in;
    if (k < 1)
        k = 1;
    if (k > mn)
        k = mn;
    return (int)k;
}

/* c (m, n) = alpha op(a) op(b) + beta c, double, row-major. */
static void dgemm(int ta, int tb, int m, int n, int k, double alpha, const double *a, int lda, const double *b,
                  int ldb, double beta, double *c, int ldc) {
    bli_dgemm(ta ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE, tb ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE, m, n, k, &alpha,
              (double *)a, lda, 1, (double *)b, ldb, 1, &beta, c, ldc, 1);
}

/* Packed symmetric storage: the lower triangle row by row, (i, j) with
 * j <= i at i (i + 1) / 2 + j. */
static inline size_t pk(size_t i, size_t j) { return i * (i + 1) / 2 + j; }

size_t lowrank_packed_len(int n) { return (size_t)n * ((size_t)n + 1) / 2; }

void lowrank_unpack(const double *gp, int n, double *full) {
    for (size_t i = 0; i < (size_t)n; i++)
        for (size_t j = 0; j <= i; j++)
            full[i * n + j] = full[j * n + i] = gp[pk(i, j)];
}

/* c (m, n) = op(a) op(b), f32, row-major. */
static void sgemm(int ta, int tb, int m, int n, int k, const float *a, int lda, const float *b, int ldb, float *c,
                  int ldc) {
    float one = 1.0f, zero = 0.0f;
    forward_blis_init();
    bli_sgemm(ta ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE, tb ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE, m, n, k, &one,
              (float *)a, lda, 1, (float *)b, ldb, 1, &zero, c, ldc, 1);
}

/* c (dy, dz) += y^T z over row chunks of at most GRAM_CHUNK: the product of
 * a chunk in f32 (BLIS), added into the double accumulator. sym: z == y and
 * only the lower triangle is formed (syrk, half the flops); packed: c is in
 * packed storage (sym only). */
static int chunked_product(double *c, const float *y, int dy, const float *z, int dz, size_t ntok, int sym,
                           int packed, struct sv_err *err) {
    if (dy < 1 || dz < 1)
        return 0;
    float *t = malloc((size_t)dy * dz * sizeof *t);
    if (!t)
        return sv_err_set(err, -ENOMEM, "%s %d x %d: out of memory", sym ? "Gram" : "cross product", dy, dz);
    forward_blis_init();
    for (size_t r0 = 0; r0 < ntok; r0 += GRAM_CHUNK) {
        size_t nr = ntok - r0 < GRAM_CHUNK ? ntok - r0 : GRAM_CHUNK;
        float one = 1.0f, zero = 0.0f, *yc = (float *)(y + r0 * (size_t)dy), *zc = (float *)(z + r0 * (size_t)dz);
        if (sym) /* y_chunk^T is (dy, nr) with row stride 1, column stride dy */
            bli_ssyrk(BLIS_LOWER, BLIS_NO_TRANSPOSE, dy, (dim_t)nr, &one, yc, 1, dy, &zero, t, dy, 1);
        else
            bli_sgemm(BLIS_TRANSPOSE, BLIS_NO_TRANSPOSE, dy, dz, (dim_t)nr, &one, yc, dy, 1, zc, dz, 1, &zero, t,
                      dz, 1);
        /* The double accumulation reads 12 bytes and writes 8 per entry: on
         * one core it was a third of the statistics phase at LLaMA-7B (the
         * chunk's syrk runs on every core). Each entry is its own sum, so
         * the result does not depend on the thread count. */
#pragma omp parallel for schedule(dynamic, 64) if (dy >= 512)
        for (int i = 0; i < dy; i++) {
            const float *ti = t + (size_t)i * dz;
            double *ci = packed ? c + pk((size_t)i, 0) : c + (size_t)i * dz;
            for (int j = 0; j < (sym ? i + 1 : dz); j++)
                ci[j] += ti[j];
        }
    }
    free(t);
    return 0;
}

int lowrank_gram_accum(double *g, const float *x, size_t ntok, int n, struct sv_err *err) {
    return chunked_product(g, x, n, x, n, ntok, 1, 0, err);
}

int lowrank_pgram_accum(double *gp, const float *x, size_t ntok, int n, struct sv_err *err) {
    return chunked_product(gp, x, n, x, n, ntok, 1, 1, err);
}

int lowrank_cross_accum(double *c, const float *y, int dy, const float *z, int dz, size_t ntok, struct sv_err *err) {
    return chunked_product(c, y, dy, z, dz, ntok, 0, 0, err);
}

int lowrank_scaled_cov(const float *w, int d_out, int d_in, const double *s, double *c, struct sv_err *err) {
    double *ws = malloc((size_t)d_out * d_in * sizeof *ws);
    if (!ws)
        return sv_err_set(err, -ENOMEM, "scaled covariance %d x %d: out of memory", d_out, d_in);
    for (int i = 0; i < d_out; i++)
        for (int j = 0; j < d_in; j++)
            ws[(size_t)i * d_in + j] = (double)w[(size_t)i * d_in + j] * s[j];
    dgemm(0, 1, d_out, d_out, d_in, 1.0, ws, d_in, ws, d_in, 0.0, c, d_out);
    free(ws);
    return 0;
}

void lowrank_gram_symmetrize(double *g, int n) {
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++)
            g[(size_t)j * n + i] = g[(size_t)i * n + j];
}

void lowrank_result_free(struct lowrank_result *r) {
    if (!r)
        return;
    free(r->a);
    free(r->b);
    free(r->a64);
    free(r->b64);
    r->a = r->b = NULL;
    r->a64 = r->b64 = NULL;
}

/* Entry (i, j) of a symmetric matrix in full or packed storage. */
static inline double sym_at(const double *g, int packed, size_t n, size_t i, size_t j) {
    return !packed ? g[i * n + j] : j <= i ? g[pk(i, j)] : g[pk(j, i)];
}

static void sym_full(const double *g, int packed, int n, double *full) {
    if (packed)
        lowrank_unpack(g, n, full);
    else
        memcpy(full, g, (size_t)n * n * sizeof *full);
}

static int white_new(const double *g, int packed, int n, const char *what, struct lowrank_white *ret,
                     struct sv_err *err) {
    memset(ret, 0, sizeof *ret);
    size_t nn = (size_t)n * n;
    double trace = 0, gersh = 0;
    for (int i = 0; i < n; i++) {
        double row = 0;
        for (int j = 0; j < n; j++) {
            double v = sym_at(g, packed, (size_t)n, (size_t)i, (size_t)j);
            if (!isfinite(v))
                return sv_err_set(err, -EDOM, "%s: Gram matrix has a non-finite entry (%d, %d)", what, i, j);
            row += fabs(v);
        }
        trace += sym_at(g, packed, (size_t)n, (size_t)i, (size_t)i);
        gersh = row > gersh ? row : gersh;
    }
    double *s = malloc(nn * sizeof *s);
    if (!s)
        return sv_err_set(err, -ENOMEM, "%s: out of memory for the whitening (n = %d)", what, n);
    /* A Gram of N < n tokens (or with dead channels) has exact zero
     * eigenvalues, which rounding turns into +-n eps lambda_max <= n eps
     * trace: 10 n eps trace is the first shift certain to dominate that noise
     * (3.7e-8 of the mean diagonal at n = 4096). Larger ones exist only for
     * inputs that are not a Gram at all (indefinite); the last resort, the
     * Gershgorin bound, makes any symmetric matrix definite. All-zero input:
     * the shift alone whitens, i.e. plain SVD. */
    double base = 10.0 * n * DBL_EPSILON * (trace > 0 ? trace : (double)n);
    int r = 0;
    for (int t = 0; t <= 6; t++) {
        double shift = t == 0 ? 0 : t < 6 ? base * pow(1e3, t - 1) : 2 * gersh + base;
        sym_full(g, packed, n, s);
        for (int i = 0; i < n; i++)
            s[(size_t)i * n + i] += shift;
        struct sv_err cerr = {0};
        r = la_cholesky(s, n, what, &cerr);
        if (r == 0) {
            /* The buffer read row-major is L^T; S = L, row-major lower. */
            for (int i = 0; i < n; i++)
                for (int j = 0; j < i; j++) {
                    double tmp = s[(size_t)i * n + j];
                    s[(size_t)i * n + j] = s[(size_t)j * n + i];
                    s[(size_t)j * n + i] = tmp;
                }
            ret->n = n;
            ret->s = s;
            ret->shift = shift;
            ret->rel_shift = trace > 0 ? shift * n / trace : shift;
            return 0;
        }
        if (r != -EDOM) {
            free(s);
            return sv_err_set(err, r, "%s", cerr.msg);
        }
    }
    free(s);
    return sv_err_set(err, -EDOM, "%s: Gram matrix is not positive definite even shifted by its Gershgorin bound",
                      what);
}

int lowrank_white_new(const double *g, int n, const char *what, struct lowrank_white *ret, struct sv_err *err) {
    return white_new(g, 0, n, what, ret, err);
}

int lowrank_white_new_packed(const double *gp, int n, const char *what, struct lowrank_white *ret,
                             struct sv_err *err) {
    return white_new(gp, 1, n, what, ret, err);
}

void lowrank_white_free(struct lowrank_white *wh) {
    if (!wh)
        return;
    free(wh->s);
    memset(wh, 0, sizeof *wh);
}

/* Rows of W converted to double a block at a time: the core never holds a
 * double copy of W (360 MiB for LLaMA-7B's gate_proj). */
#define ROW_BLOCK 512

static void rows_double(const float *w, const double *w64, int r0, int rows, int d_in, double *dst) {
    if (w64) { /* a W computed in double (rrr's W_ls): copied as is */
        memcpy(dst, w64 + (size_t)r0 * d_in, (size_t)rows * d_in * sizeof *dst);
        return;
    }
    const float *src = w + (size_t)r0 * d_in;
    for (size_t i = 0; i < (size_t)rows * d_in; i++)
        dst[i] = src[i];
}

/* The core. k = 0 with spec != NULL: only the spectrum (descending, n values)
 * is returned. keep64: the result also carries the double factors. wh: the
 * whitening of the input Gram (shared by the matrices that read one input),
 * or NULL for G = I; c_out, when given, replaces W G W^T. w64, when given,
 * is W in double (w unused) and every product with it stays in double.
 * Memory beyond the result: the n^2 statistic, k x (n + d_out + d_in) for the
 * vectors and factors, a block of ROW_BLOCK rows of W, and on the output side
 * W S (d_out x d_in, d_out <= d_in), on the input side F = W^T W (n^2). */
static int project(const float *w, const double *w64, int d_out, int d_in, const struct lowrank_white *wh,
                   const double *c_out, int c_packed, int k, int keep64, double *spec, int *spec_n, const char *what, struct lowrank_result *ret,
                   struct sv_err *err) {
    struct lowrank_result res;
    memset(&res, 0, sizeof res);
    int mn = d_out < d_in ? d_out : d_in;
    if (!spec && (k < 1 || k > mn))
        return sv_err_set(err, -EINVAL, "%s: rank %d outside [1, %d]", what, k, mn);
    if (wh && wh->n != d_in)
        return sv_err_set(err, -EINVAL, "%s: whitening of width %d for a %d x %d matrix", what, wh->n, d_out, d_in);
    if (k < 1)
        k = 1;
    if (wh) {
        res.fallback = wh->shift > 0 ? LOWRANK_SHIFT : LOWRANK_OK;
        res.shift = wh->rel_shift;
    }
    res.side = (c_out || d_out <= d_in) ? 'o' : 'i';
    const int n = res.side == 'o' ? d_out : d_in; /* size of the eigenproblem */
    const int nb = d_out < ROW_BLOCK ? d_out : ROW_BLOCK;
    double one = 1.0, zero = 0.0;
    double *m = malloc((size_t)n * n * sizeof *m), *blk = malloc((size_t)nb * d_in * sizeof *blk);
    double *ev = malloc((size_t)n * sizeof *ev), *ws = NULL, *z = NULL, *vk = NULL, *ut = NULL, *bd = NULL,
           *scale = NULL, *f = NULL;
    int r = 0;
    if (!m || !blk || !ev) {
        r = sv_err_set(err, -ENOMEM, "%s: out of memory", what);
        goto out;
    }
    if (c_out) {
        sym_full(c_out, c_packed, n, m);
    } else if (res.side == 'o') {
        /* C = (W S)(W S)^T: W S by a triangular product, C by a rank-k update. */
        if (!(ws = malloc((size_t)d_out * d_in * sizeof *ws))) {
            r = sv_err_set(err, -ENOMEM, "%s: out of memory", what);
            goto out;
        }
        rows_double(w, w64, 0, d_out, d_in, ws);
        if (wh)
            bli_dtrmm(BLIS_RIGHT, BLIS_LOWER, BLIS_NO_TRANSPOSE, BLIS_NONUNIT_DIAG, d_out, d_in, &one, wh->s, d_in, 1,
                      ws, d_in, 1);
        bli_dsyrk(BLIS_LOWER, BLIS_NO_TRANSPOSE, n, d_in, &one, ws, d_in, 1, &zero, m, n, 1);
        free(ws);
        ws = NULL;
    } else {
        /* F = W^T W over row blocks of W, then M = S^T F S by two triangular
         * products: d_in^2 d_out + 2 d_in^3 flops instead of 2 d_in^2 d_out
         * for (W S)^T (W S), and F is kept for B (below). At LLaMA-7B's
         * gate_proj that is 322 GFLOP instead of 370, and 41 instead of 111
         * for B. F's rounding reaches M amplified by at most cond(S)^2 <=
         * cond(G) (< 1e10 after the fallback's shift), i.e. < 1e-6 relative. */
        if (!(f = calloc((size_t)n * n, sizeof *f))) {
            r = sv_err_set(err, -ENOMEM, "%s: out of memory", what);
            goto out;
        }
        for (int r0 = 0; r0 < d_out; r0 += nb) {
            int rows = d_out - r0 < nb ? d_out - r0 : nb;
            rows_double(w, w64, r0, rows, d_in, blk);
            bli_dsyrk(BLIS_LOWER, BLIS_TRANSPOSE, n, rows, &one, blk, d_in, 1, &one, f, n, 1);
        }
        lowrank_gram_symmetrize(f, n);
        memcpy(m, f, (size_t)n * n * sizeof *m);
        if (wh) {
            bli_dtrmm(BLIS_RIGHT, BLIS_LOWER, BLIS_NO_TRANSPOSE, BLIS_NONUNIT_DIAG, n, n, &one, wh->s, n, 1, m, n, 1);
            bli_dtrmm(BLIS_LEFT, BLIS_LOWER, BLIS_TRANSPOSE, BLIS_NONUNIT_DIAG, n, n, &one, wh->s, n, 1, m, n, 1);
        }
    }
    if (!c_out)
        lowrank_gram_symmetrize(m, n);
    if (!spec && !(z = malloc((size_t)n * k * sizeof *z))) {
        r = sv_err_set(err, -ENOMEM, "%s: out of memory", what);
        goto out;
    }
    if ((r = spec ? la_syevd_values(m, ev, n, what, err) : la_syevr_top(m, n, k, ev, z, what, err)) < 0)
        goto out;
    /* Nominal flops: W S (output side) or S^T F S (input side), the
     * symmetric rank update, the tridiagonal reduction (4/3 n^3), the
     * back-transformation of k vectors (2 n^2 k), then U_k (input side, with
     * S V_k) and B (input side from F). */
    const int in_side = res.side == 'i';
    res.gflop = ((!wh || c_out ? 0 : in_side ? 2.0 * n * (double)n * n : (double)d_out * d_in * d_in) +
                 (c_out ? 0 : (double)d_out * d_in * n) + 4.0 / 3 * n * (double)n * n +
                 (spec ? 0 : 2.0 * n * (double)n * k) +
                 (spec ? 0 : 2.0 * k * (in_side ? (double)d_out * n + (double)n * n : (double)d_out * d_in)) +
                 (spec || !in_side || !wh ? 0 : (double)n * n * k)) / 1e9;
    if (spec) {
        for (int j = 0; j < n; j++)
            spec[j] = ev[n - 1 - j] > 0 ? ev[n - 1 - j] : 0;
        *spec_n = n;
        if (ret)
            *ret = res; /* side, fallback, shift */
        goto out;
    }
    free(m); /* the largest buffer: not needed past the eigensolver */
    m = NULL;
    /* The dropped mass is summed directly, not as total - kept: that
     * difference cancels when little is dropped, and kept / total could
     * exceed 1 by an ulp (the two sums run in different orders). */
    double dropped = 0, kept = 0, top = ev[n - 1] > 0 ? ev[n - 1] : 0;
    for (int j = 0; j < n - k; j++) /* ascending: the n - k smallest */
        dropped += ev[j] > 0 ? ev[j] : 0;
    res.k = k;
    /* Rows of vk: the top-k eigenvectors, descending. */
    vk = malloc((size_t)k * n * sizeof *vk);
    scale = malloc((size_t)k * sizeof *scale);
    res.a = malloc((size_t)d_out * k * sizeof *res.a);
    res.b = malloc((size_t)k * d_in * sizeof *res.b);
    /* U_k^T (k, d_out) in double: always on the output side (it is V_k),
     * on the input side only for the double factors. B (k, d_in) in double:
     * the input side (from F) and the double factors. */
    const int dbl = keep64 || w64 != NULL; /* every product with W in double */
    const int want_ut = res.side == 'o' || dbl, want_bd = res.side == 'i' || dbl;
    if (want_ut)
        ut = malloc((size_t)k * d_out * sizeof *ut);
    if (want_bd)
        bd = calloc((size_t)k * d_in, sizeof *bd);
    if (!vk || !scale || !res.a || !res.b || (want_ut && !ut) || (want_bd && !bd)) {
        r = sv_err_set(err, -ENOMEM, "%s: out of memory", what);
        goto out;
    }
    for (int c = 0; c < k; c++) {
        int j = n - 1 - c;
        double lam = ev[j] > 0 ? ev[j] : 0;
        kept += lam;
        /* The eigensolver's absolute error is ~n eps lambda_max: below that
         * an eigenvalue is rounding noise around zero (a rank-deficient W or
         * G), not a direction with signal. */
        int live = lam > 0 && lam > n * DBL_EPSILON * top;
        res.k_effective += live;
        memcpy(vk + (size_t)c * n, z + (size_t)(j - (n - k)) * n, (size_t)n * sizeof *vk);
        scale[c] = live ? (res.side == 'o' ? 1.0 : 1.0 / sqrt(lam)) : 0.0;
    }
    free(z);
    z = NULL;
    /* The products with W that make the stored f32 factors run in f32
     * (sgemm on W as it is, about twice dgemm's rate and no double copy of
     * W): their rounding error in a direction is relative to that
     * direction's own energy, so the calibration loss moves by ~k eps_f32^2
     * of the kept energy (< 1e-9 of the discarded one at LLaMA-7B shapes),
     * far below the f32 storage of the factors themselves. The double
     * factors (keep64, for tests that compare methods beyond f32) keep
     * every product in double. */
    double wf = 0, bf = 0;
    if (res.side == 'i') {
        /* U_k = W S V_k diag(1/sigma): first (S V_k)^T by a triangular
         * product, then against W. */
        if (wh)
            bli_dtrmm(BLIS_RIGHT, BLIS_LOWER, BLIS_TRANSPOSE, BLIS_NONUNIT_DIAG, k, n, &one, wh->s, n, 1, vk, n, 1);
        if (dbl) {
            for (int r0 = 0; r0 < d_out; r0 += nb) {
                int rows = d_out - r0 < nb ? d_out - r0 : nb;
                rows_double(w, w64, r0, rows, d_in, blk);
                dgemm(0, 1, k, rows, n, 1.0, vk, n, blk, d_in, 0.0, ut + r0, d_out);
            }
            for (int c = 0; c < k; c++)
                for (int i = 0; i < d_out; i++)
                    ut[(size_t)c * d_out + i] *= scale[c];
        } else {
            float *v32 = malloc((size_t)k * n * sizeof *v32);
            if (!v32) {
                r = sv_err_set(err, -ENOMEM, "%s: out of memory", what);
                goto out;
            }
            for (size_t i = 0; i < (size_t)k * n; i++)
                v32[i] = (float)vk[i];
            sgemm(0, 1, d_out, k, n, w, d_in, v32, n, res.a, k); /* A = W (S V_k) */
            free(v32);
            for (int i = 0; i < d_out; i++)
                for (int c = 0; c < k; c++)
                    res.a[(size_t)i * k + c] = (float)(res.a[(size_t)i * k + c] * scale[c]);
        }
        /* B = U_k^T W = diag(1/sigma) (S V_k)^T F. */
        dgemm(0, 0, k, n, n, 1.0, vk, n, f, n, 0.0, bd, d_in);
        for (int c = 0; c < k; c++)
            for (int i = 0; i < d_in; i++)
                bd[(size_t)c * d_in + i] *= scale[c];
        for (int i = 0; i < n; i++)
            wf += f[(size_t)i * n + i];
        free(f);
        f = NULL;
    } else {
        for (int c = 0; c < k; c++)
            for (int i = 0; i < d_out; i++)
                ut[(size_t)c * d_out + i] = vk[(size_t)c * n + i] * scale[c];
        if (dbl) { /* B = U_k^T W, and ||W||^2, a row block of W at a time */
            for (int r0 = 0; r0 < d_out; r0 += nb) {
                int rows = d_out - r0 < nb ? d_out - r0 : nb;
                rows_double(w, w64, r0, rows, d_in, blk);
                for (size_t i = 0; i < (size_t)rows * d_in; i++)
                    wf += blk[i] * blk[i];
                dgemm(0, 0, k, d_in, rows, 1.0, ut + r0, d_out, blk, d_in, 1.0, bd, d_in);
            }
        } else {
            float *u32 = malloc((size_t)k * d_out * sizeof *u32);
            if (!u32) {
                r = sv_err_set(err, -ENOMEM, "%s: out of memory", what);
                goto out;
            }
            for (size_t i = 0; i < (size_t)k * d_out; i++)
                u32[i] = (float)ut[i];
            sgemm(0, 0, k, d_in, d_out, u32, d_out, w, d_in, res.b, d_in); /* B = U_k^T W */
            free(u32);
            if (wh && wh->shift > 0)
                for (size_t i = 0; i < (size_t)d_out * d_in; i++)
                    wf += (double)w[i] * w[i];
        }
    }
    if (bd)
        for (size_t i = 0; i < (size_t)k * d_in; i++)
            res.b[i] = (float)bd[i];
    if (ut)
        for (int i = 0; i < d_out; i++)
            for (int c = 0; c < k; c++)
                res.a[(size_t)i * k + c] = (float)ut[(size_t)c * d_out + i];
    if (wh && wh->shift > 0) {
        /* The eigenvalues are those of W (G + shift I) W^T. For the true G:
         * kept = sum kept - shift ||B||^2 (B = U_k^T W), total = sum all -
         * shift ||W||^2, so dropped loses shift (||W||^2 - ||B||^2): the
         * report stays the exact calibration-output error of these factors. */
        for (size_t i = 0; i < (size_t)k * d_in; i++)
            bf += bd ? bd[i] * bd[i] : (double)res.b[i] * res.b[i];
        kept -= wh->shift * bf;
        dropped -= wh->shift * (wf - bf);
        kept = kept > 0 ? kept : 0;
        dropped = dropped > 0 ? dropped : 0;
    }
    double total = kept + dropped;
    res.energy = total > 0 ? kept / total : 1.0;
    res.discarded = dropped;
    for (size_t i = 0; i < (size_t)k * d_in; i++)
        if (!isfinite(res.b[i])) {
            r = sv_err_set(err, -EDOM, "%s: factor B is not finite", what);
            goto out;
        }
    for (size_t i = 0; i < (size_t)k * d_out; i++)
        if (!isfinite(res.a[i])) {
            r = sv_err_set(err, -EDOM, "%s: factor A is not finite", what);
            goto out;
        }
    if (keep64) {
        res.a64 = malloc((size_t)d_out * k * sizeof *res.a64);
        if (!res.a64) {
            r = sv_err_set(err, -ENOMEM, "%s: out of memory", what);
            goto out;
        }
        for (int i = 0; i < d_out; i++)
            for (int c = 0; c < k; c++)
                res.a64[(size_t)i * k + c] = ut[(size_t)c * d_out + i];
        res.b64 = bd;
        bd = NULL;
    }
    *ret = res;
    memset(&res, 0, sizeof res);
out:
    lowrank_result_free(&res);
    free(m);
    free(blk);
    free(ev);
    free(ws);
    free(z);
    free(vk);
    free(ut);
    free(bd);
    free(scale);
    free(f);
    return r;
}

/* g_in given: whiten once here (callers that factor several matrices of one
 * input share a lowrank_white instead). */
static int project_g(const float *w, int d_out, int d_in, const double *g_in, const double *c_out, int k, int keep64,
                     double *spec, int *spec_n, const char *what, struct lowrank_result *ret, struct sv_err *err) {
    struct lowrank_white wh = {0};
    int r = 0;
    if (g_in && !c_out && (r = lowrank_white_new(g_in, d_in, what, &wh, err)) < 0)
        return r;
    r = project(w, NULL, d_out, d_in, wh.s ? &wh : NULL, c_out, 0, k, keep64, spec, spec_n, what, ret, err);
    lowrank_white_free(&wh);
    return r;
}

int lowrank_project(const float *w, int d_out, int d_in, const double *g_in, const double *c_out, int k,
                    const char *what, struct lowrank_result *ret, struct sv_err *err) {
    return project_g(w, d_out, d_in, g_in, c_out, k, 0, NULL, NULL, what, ret, err);
}

int lowrank_project_white(const float *w, int d_out, int d_in, const struct lowrank_white *wh, int k,
                          const char *what, struct lowrank_result *ret, struct sv_err *err) {
    return project(w, NULL, d_out, d_in, wh, NULL, 0, k, 0, NULL, NULL, what, ret, err);
}

int lowrank_project_packed(const float *w, int d_out, int d_in, const double *c_packed, int k, const char *what,
                           struct lowrank_result *ret, struct sv_err *err) {
    return project(w, NULL, d_out, d_in, NULL, c_packed, 1, k, 0, NULL, NULL, what, ret, err);
}

int lowrank_spectrum_packed(const float *w, int d_out, int d_in, const double *g_packed, const double *c_packed,
                            double *ev, int *n, const char *what, struct sv_err *err) {
    struct lowrank_white wh = {0};
    int r = 0;
    if (g_packed && !c_packed && (r = white_new(g_packed, 1, d_in, what, &wh, err)) < 0)
        return r;
    r = project(w, NULL, d_out, d_in, wh.s ? &wh : NULL, c_packed, 1, 0, 0, ev, n, what, NULL, err);
    lowrank_white_free(&wh);
    return r;
}

int lowrank_project64(const float *w, int d_out, int d_in, const double *g_in, const double *c_out, int k,
                      const char *what, struct lowrank_result *ret, struct sv_err *err) {
    return project_g(w, d_out, d_in, g_in, c_out, k, 1, NULL, NULL, what, ret, err);
}

int lowrank_spectrum(const float *w, int d_out, int d_in, const double *g_in, const double *c_out, double *ev,
                     int *n, const char *what, struct sv_err *err) {
    return project_g(w, d_out, d_in, g_in, c_out, 0, 0, ev, n, what, NULL, err);
}

/* A (d_out, k) = YZ ZZ^+ : the least-squares left factor for fixed B. ZZ is
 * symmetric positive semidefinite; it is eigen-decomposed (k^3, small next
 * to the factorization) and directions with eigenvalue <= 1e-6 lambda_max
 * are dropped. With exact statistics that is the minimum-norm least-squares
 * solution, a minimiser, so the loss cannot exceed that of the previous A.
 * Our statistics are f32 chunk products summed in double (relative error
 * ~1e-7): below 1e-6 lambda_max a direction is noise, and inverting it was
 * measured to make the refit up to 13 % worse than the previous A on nearly
 * collinear Z (never with this threshold). */
int lowrank_refit(const double *yz, const double *zz, int d_out, int k, const char *what, double *a,
                  int *dropped, struct sv_err *err) {
    if (k < 1 || d_out < 1)
        return sv_err_set(err, -EINVAL, "%s: refit of a %d x %d factor", what, d_out, k);
    size_t kk = (size_t)k * k;
    double *q = malloc(kk * sizeof *q), *ev = malloc((size_t)k * sizeof *ev), *m = malloc(kk * sizeof *m),
           *zp = malloc(kk * sizeof *zp);
    int r = 0;
    if (!q || !ev || !m || !zp) {
        r = sv_err_set(err, -ENOMEM, "%s: out of memory for the refit", what);
        goto out;
    }
    memcpy(q, zz, kk * sizeof *q);
    if ((r = la_syevd(q, ev, k, what, err)) < 0)
        goto out;
    /* q read row-major is Q^T (row j = eigenvector j). ZZ^+ = Q diag(1/lambda)
     * Q^T is formed first (k x k), then A = YZ ZZ^+ in one product: no
     * d_out x k temporary (158 MB at LLaMA-7B gate/up) and half the flops of
     * applying Q twice to YZ. */
    double tol = 1e-6 * (ev[k - 1] > 0 ? ev[k - 1] : 0);
    int nd = 0;
    for (int j = 0; j < k; j++) {
        double inv = ev[j] > tol ? 1.0 / ev[j] : 0.0;
        nd += !(ev[j] > tol);
        for (int i = 0; i < k; i++) /* m = diag(1/lambda) Q^T, row j scaled */
            m[(size_t)j * k + i] = q[(size_t)j * k + i] * inv;
    }
    dgemm(1, 0, k, k, k, 1.0, q, k, m, k, 0.0, zp, k); /* Q diag(1/lambda) Q^T */
    dgemm(0, 0, d_out, k, k, 1.0, yz, k, zp, k, 0.0, a, k);
    for (size_t i = 0; i < (size_t)d_out * k; i++)
        if (!isfinite(a[i])) {
            r = sv_err_set(err, -EDOM, "%s: refitted factor A is not finite", what);
            goto out;
        }
    if (dropped)
        *dropped = nd;
out:
    free(q);
    free(ev);
    free(m);
    free(zp);
    return r;
}

/* Row blocks of A ZZ, so the loss needs no d_out x k temporary. */
#define LOSS_ROWS 256

double lowrank_refit_loss(double yy, const double *a, const double *yz, const double *zz, int d_out, int k) {
    int rows = d_out < LOSS_ROWS ? d_out : LOSS_ROWS;
    double *t = malloc((size_t)rows * k * sizeof *t);
    if (!t)
        return NAN;
    double cross = 0, quad = 0;
    for (int r0 = 0; r0 < d_out; r0 += LOSS_ROWS) {
        int nr = d_out - r0 < LOSS_ROWS ? d_out - r0 : LOSS_ROWS;
        const double *ab = a + (size_t)r0 * k, *yb = yz + (size_t)r0 * k;
        dgemm(0, 0, nr, k, k, 1.0, ab, k, zz, k, 0.0, t, k); /* A ZZ, rows r0.. */
        for (size_t i = 0; i < (size_t)nr * k; i++) {
            cross += ab[i] * yb[i];
            quad += ab[i] * t[i];
        }
    }
    free(t);
    return yy - 2 * cross + quad;
}

struct score_idx {
    double s;
    int i;
};

static int score_cmp(const void *a, const void *b) {
    const struct score_idx *x = a, *y = b;
    if (x->s != y->s)
        return x->s < y->s ? -1 : 1;
    return x->i - y->i; /* deterministic ties */
}

int lowrank_channel_select(const float *wg, const float *wu, const float *wd, int d, int ff, const double *x_sq,
                           const double *h_sq, int keep, int *kept, const char *what, struct sv_err *err) {
    if (keep < 1 || keep > ff)
        return sv_err_set(err, -EINVAL, "%s: cannot keep %d of %d channels", what, keep, ff);
    struct score_idx *sc = malloc((size_t)ff * sizeof *sc);
    char *take = calloc((size_t)ff, 1);
    if (!sc || !take) {
        free(sc);
        free(take);
        return sv_err_set(err, -ENOMEM, "%s: out of memory for channel scores", what);
    }
    for (int i = 0; i < ff; i++) {
        double t = 0, col = 0;
        for (int c = 0; c < d; c++)
            t += (fabs((double)wg[(size_t)i * d + c]) + fabs((double)wu[(size_t)i * d + c])) * sqrt(x_sq[c]);
        for (int o = 0; o < d; o++)
            col += fabs((double)wd[(size_t)o * ff + i]);
        sc[i] = (struct score_idx){t + col * sqrt(h_sq[i]), i};
    }
    qsort(sc, (size_t)ff, sizeof *sc, score_cmp);
    int low = (ff + 99) / 100;
    if (low > keep / 2)
        low = keep / 2;
    for (int i = 0; i < low; i++)
        take[sc[i].i] = 1;
    for (int i = ff - 1, n = low; i >= 0 && n < keep; i--)
        if (!take[sc[i].i]) {
            take[sc[i].i] = 1;
            n++;
        }
    for (int i = 0, n = 0; i < ff; i++)
        if (take[i])
            kept[n++] = i;
    free(sc);
    free(take);
    return 0;
}

/* ---- rrr: reduced-rank regression on the compressed model's inputs -------- */

int lowrank_rrr_new(const double *gp, const double *h, int n, double lambda, const char *what, struct lowrank_rrr *ret,
                    struct sv_err *err) {
    memset(ret, 0, sizeof *ret);
    if (n < 1 || !(lambda >= 0) || !isfinite(lambda))
        return sv_err_set(err, -EINVAL, "%s: rrr of width %d with ridge %g", what, n, lambda);
    size_t nn = (size_t)n * n;
    for (size_t i = 0; i < nn; i++)
        if (!isfinite(h[i]))
            return sv_err_set(err, -EDOM, "%s: cross statistic has a non-finite entry (%zu, %zu)", what, i / n, i % n);
    double *dd = malloc((size_t)n * sizeof *dd), *gl = malloc(nn * sizeof *gl);
    if (!dd || !gl) {
        free(dd);
        free(gl);
        return sv_err_set(err, -ENOMEM, "%s: out of memory for the rrr solve (n = %d)", what, n);
    }
    double trace = 0;
    memcpy(gl, gp, nn * sizeof *gl);
    for (int i = 0; i < n; i++) {
        double gii = gp[(size_t)i * n + i];
        dd[i] = lambda * (gii > 0 ? gii : 0);
        gl[(size_t)i * n + i] += dd[i];
        trace += gii;
    }
    /* G' + lambda D^2 is positive definite unless a channel of X' is dead or
     * there are fewer tokens than channels (lambda = 0): then the whitening's
     * fallback shift s is added, and it joins the ridge (dd += s), so those
     * directions are pulled toward W, not toward zero. */
    int r = lowrank_white_new(gl, n, what, &ret->wh, err);
    free(gl);
    if (r < 0) {
        free(dd);
        return r;
    }
    for (int i = 0; i < n; i++)
        dd[i] += ret->wh.shift;
    ret->n = n;
    ret->lambda = lambda;
    ret->shift = ret->wh.shift;
    ret->rel_shift = trace > 0 ? ret->wh.shift * n / trace : ret->wh.shift;
    /* The whitened Gram is exactly G' + diag(dd): no correction in project(). */
    ret->wh.shift = 0;
    ret->wh.rel_shift = 0;
    ret->dd = dd;
    ret->h_borrow = h;
    ret->gflop = (double)n * n * n / 3 / 1e9;
    return 0;
}

void lowrank_rrr_free(struct lowrank_rrr *q) {
    if (!q)
        return;
    lowrank_white_free(&q->wh);
    free(q->dd);
    memset(q, 0, sizeof *q);
}

/* W_ls (d_out, d_in) double, malloc'd into *ret: R = W (H^T + diag(dd)),
 * then W_ls = R (S S^T)^-1 by two triangular solves. */
static int rrr_wls(const float *w, int d_out, int d_in, const struct lowrank_rrr *q, const char *what, double **ret,
                   struct sv_err *err) {
    if (!q || q->n != d_in)
        return sv_err_set(err, -EINVAL, "%s: rrr statistics of width %d for a %d x %d matrix", what, q ? q->n : 0,
                          d_out, d_in);
    const int nb = d_out < ROW_BLOCK ? d_out : ROW_BLOCK;
    double one = 1.0;
    double *wls = malloc((size_t)d_out * d_in * sizeof *wls), *blk = malloc((size_t)nb * d_in * sizeof *blk);
    if (!wls || !blk) {
        free(wls);
        free(blk);
        return sv_err_set(err, -ENOMEM, "%s: out of memory for W_ls (%d x %d)", what, d_out, d_in);
    }
    /* R = W (H^T + diag(dd)), H^T = X^T X', a row block of W at a time. */
    for (int r0 = 0; r0 < d_out; r0 += nb) {
        int rows = d_out - r0 < nb ? d_out - r0 : nb;
        rows_double(w, NULL, r0, rows, d_in, blk);
        double *dst = wls + (size_t)r0 * d_in;
        dgemm(0, 1, rows, d_in, d_in, 1.0, blk, d_in, q->h_borrow, d_in, 0.0, dst, d_in);
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < d_in; j++)
                dst[(size_t)i * d_in + j] += blk[(size_t)i * d_in + j] * q->dd[j];
    }
    free(blk);
    /* W_ls = R (S S^T)^-1 by two triangular solves: T S^T = R, W_ls S = T. */
    bli_dtrsm(BLIS_RIGHT, BLIS_LOWER, BLIS_TRANSPOSE, BLIS_NONUNIT_DIAG, d_out, d_in, &one, q->wh.s, d_in, 1, wls, d_in,
              1);
    bli_dtrsm(BLIS_RIGHT, BLIS_LOWER, BLIS_NO_TRANSPOSE, BLIS_NONUNIT_DIAG, d_out, d_in, &one, q->wh.s, d_in, 1, wls,
              d_in, 1);
    for (size_t i = 0; i < (size_t)d_out * d_in; i++)
        if (!isfinite(wls[i])) {
            free(wls);
            return sv_err_set(err, -EDOM, "%s: least-squares W_ls is not finite", what);
        }
    *ret = wls;
    return 0;
}

int lowrank_rrr_project(const float *w, int d_out, int d_in, const struct lowrank_rrr *q, int k, const char *what,
                        struct lowrank_result *ret, struct sv_err *err) {
    int mn = d_out < d_in ? d_out : d_in;
    if (k < 1 || k > mn)
        return sv_err_set(err, -EINVAL, "%s: rank %d outside [1, %d]", what, k, mn);
    double *wls = NULL;
    int r = rrr_wls(w, d_out, d_in, q, what, &wls, err);
    if (r == 0 && (r = project(NULL, wls, d_out, d_in, &q->wh, NULL, 0, k, 0, NULL, NULL, what, ret, err)) == 0) {
        ret->fallback = q->shift > 0 ? LOWRANK_SHIFT : LOWRANK_OK;
        ret->shift = q->rel_shift;
        ret->gflop += 4.0 * d_out * (double)d_in * d_in / 1e9; /* R, and the two solves */
    }
    free(wls);
    return r;
}

int lowrank_rrr_spectrum(const float *w, int d_out, int d_in, const struct lowrank_rrr *q, double *ev, int *n,
                         const char *what, struct sv_err *err) {
    double *wls = NULL;
    int r = rrr_wls(w, d_out, d_in, q, what, &wls, err);
    if (r == 0)
        r = project(NULL, wls, d_out, d_in, &q->wh, NULL, 0, 0, 0, ev, n, what, NULL, err);
    free(wls);
    return r;
}

int lowrank_rrr(const float *w, int d_out, int d_in, const double *gp, const double *h, int k, double lambda,
                const char *what, struct lowrank_result *ret, struct sv_err *err) {
    struct lowrank_rrr q;
    int r = lowrank_rrr_new(gp, h, d_in, lambda, what, &q, err);
    if (r == 0)
        r = lowrank_rrr_project(w, d_out, d_in, &q, k, what, ret, err);
    if (r == 0)
        ret->gflop += q.gflop;
    lowrank_rrr_free(&q);
    return r;
}

int lowrank_rrr_zstats(const float *w, int d_out, int d_in, const double *gp, const double *h, const float *b, int k,
                       double *yz, double *zz, struct sv_err *err) {
    const int nb = d_out < ROW_BLOCK ? d_out : ROW_BLOCK;
    double *bd = malloc((size_t)k * d_in * sizeof *bd), *t = malloc((size_t)k * d_in * sizeof *t),
           *blk = malloc((size_t)nb * d_in * sizeof *blk);
    int r = 0;
    if (!bd || !t || !blk) {
        r = sv_err_set(err, -ENOMEM, "rrr statistics of a rank-%d factor: out of memory", k);
        goto out;
    }
    for (size_t i = 0; i < (size_t)k * d_in; i++)
        bd[i] = b[i];
    /* ZZ = B G' B^T. */
    dgemm(0, 0, k, d_in, d_in, 1.0, bd, d_in, gp, d_in, 0.0, t, d_in);
    dgemm(0, 1, k, k, d_in, 1.0, t, d_in, bd, d_in, 0.0, zz, k);
    /* Y^T Z = W X^T X' B^T = W (B H)^T. */
    dgemm(0, 0, k, d_in, d_in, 1.0, bd, d_in, h, d_in, 0.0, t, d_in);
    for (int r0 = 0; r0 < d_out; r0 += nb) {
        int rows = d_out - r0 < nb ? d_out - r0 : nb;
        rows_double(w, NULL, r0, rows, d_in, blk);
        dgemm(0, 1, rows, k, d_in, 1.0, blk, d_in, t, d_in, 0.0, yz + (size_t)r0 * k, k);
    }
out:
    free(bd);
    free(t);
    free(blk);
    return r;
}

double lowrank_rrr_loss(double yy, const float *w, int d_out, int d_in, const double *gp, const double *h,
                        const float *a, const float *b, int k) {
    double *yz = malloc((size_t)d_out * k * sizeof *yz), *zz = malloc((size_t)k * k * sizeof *zz),
           *ad = malloc((size_t)d_out * k * sizeof *ad), loss = NAN;
    if (yz && zz && ad && lowrank_rrr_zstats(w, d_out, d_in, gp, h, b, k, yz, zz, NULL) == 0) {
        for (size_t i = 0; i < (size_t)d_out * k; i++)
            ad[i] = a[i];
        loss = lowrank_refit_loss(yy, ad, yz, zz, d_out, k);
    }
    free(yz);
    free(zz);
    free(ad);
    return loss;
}
