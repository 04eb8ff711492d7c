/* lowrank: "a statistic, then a projection" — the core every method shares.
 *
 * For W (d_out x d_in) and an input Gram G = X^T X of the calibration inputs
 * (G = I for plain SVD, a diagonal for ASVD-style scaling), the rank-k W'
 * minimising ||X W^T - X W'^T||_F is W' = U_k U_k^T W with U_k the top-k
 * eigenvectors of the output covariance C = W G W^T. SVD-LLM's recipe (SVD of
 * W S with S S^T = G, keep U_k Sigma_k V_k^T S^-1) yields the same W'; the
 * tests check it numerically. We store it as the factor pair
 *     A = U_k (d_out x k),  B = U_k^T W (k x d_in),  W' = A B,
 * which needs no inverse of S, so a singular G cannot produce NaN.
 *
 * Which side is solved:
 *  - output side (d_out <= d_in, or C given directly): eigen-decompose C
 *    (d_out^2). A caller that observes the outputs Y = X W^T passes
 *    C = Y^T Y directly (lowrank_project_packed) and never forms the input
 *    Gram: for LLaMA-7B's down_proj that is a 4096^2 statistic instead of
 *    11008^2, and for q/k/v/o it saves W S and (W S)(W S)^T (2 d^3 flops in
 *    double, 4.6 s a matrix on one core at d = 4096) for one more f32 Gram
 *    in the forward pass; a singular G needs no shift there.
 *  - input side (d_out > d_in, gate/up): eigen-decompose M = S^T W^T W S
 *    (d_in^2) with S S^T = G; then U_k = W S V_k / sigma_k.
 * S is the Cholesky factor of G, computed once per input and shared
 * (lowrank_white: q/k/v read one input, gate/up another); both sides use it,
 * W S by a triangular product and C or M by a symmetric rank-k update. When
 * G is not positive definite (fewer tokens than channels, dead channels: at
 * LLaMA-7B's 4096-wide MLP input with 4096 tokens this is the rule) the
 * documented fallback is the Cholesky of G + shift I, shift = 10 n eps
 * trace(G) first (just above the rounding noise of G's zero eigenvalues;
 * 3.7e-8 of the mean diagonal at n = 4096), raised 1000-fold per failure;
 * the shift is reported. It costs one more Cholesky (n^3/3), not an
 * eigendecomposition, and it is a ridge term: directions the calibration
 * never excited keep W's own energy. The reported discarded energy is
 * corrected for it exactly (see project()), so it is still the calibration
 * output error of the stored factors under the unshifted G.
 * The statistic's shifted Grams come from f32 chunk products (noise ~1e-7
 * relative), so in practice the first shift that works is the 1000-fold one
 * (3.7e-5 of the mean diagonal at 4096; measured at LLaMA-7B shapes).
 *
 * Only the top k eigenvectors are computed (la_syevr_top: tridiagonal
 * reduction, all eigenvalues, MRRR for k vectors, k back-transformations),
 * in double: it is exact like a full dsyevd (test_lowrank 16: the factors'
 * loss within 1e-10 of the optimum on power-law W with outlier-heavy G,
 * lambda_max / median 1e6), while an f32 eigensolver measured 4.6e-3 there.
 * Chebyshev-filtered subspace iteration was evaluated (its convergence on
 * power-law spectra, its cost at n = 4096) and not taken: at k = 30-45 % of
 * n its Rayleigh-Ritz steps (an l^3 eigenproblem, l ~ 1.25 k, per round)
 * cost about as much as the reduction, and in f32 the filter loses the small
 * directions next to outliers.
 * W is read a row block at a time (no double copy of it).
 *
 * Directions whose eigenvalue is at the eigensolver's rounding level
 * (<= n eps lambda_max) carry no signal: their columns of A and rows of B are
 * zero (reported as a smaller effective rank).
 *
 * The statistic and the eigensolver are double; inputs and factors are f32,
 * and the final products with W that make the f32 factors (U_k^T W, W S V_k)
 * run in f32 (see project()), except in lowrank_project64. Thread count is the
 * BLIS one set by forward_threads_set(). */
#ifndef LOWRANK_H
#define LOWRANK_H

#include "sv_err.h"

enum lowrank_fallback { LOWRANK_OK = 0, LOWRANK_SHIFT = 1 };

struct lowrank_result {
    int k;               /* rank stored */
    int k_effective;     /* directions with non-negligible singular value */
    float *a;            /* A: (d_out, k), malloc'ed */
    float *b;            /* B: (k, d_in), malloc'ed */
    double *a64, *b64;   /* the same in double (lowrank_project64 only), else NULL */
    double energy;       /* retained fraction: sum of kept / all eigenvalues */
    double discarded;    /* sum of dropped eigenvalues = squared calibration-output error */
    enum lowrank_fallback fallback;
    double shift;        /* fallback: diagonal shift added to G, relative to its mean diagonal */
    char side;           /* 'o' output side, 'i' input side */
    double gflop;        /* nominal double-precision work of the factorization (for benchmarks) */
};

/* w: (d_out, d_in) row-major. g_in: (d_in, d_in) symmetric, or NULL for the
 * identity. c_out: (d_out, d_out) output covariance, or NULL; when given it is
 * used instead of W G W^T. */
int lowrank_project(const float *w, int d_out, int d_in, const double *g_in, const double *c_out, int k,
                    const char *what, struct lowrank_result *ret, struct sv_err *err);
void lowrank_result_free(struct lowrank_result *r);
/* The whitening of one input Gram: S (n, n) row-major lower triangular with
 * S S^T = G + shift I (shift 0 when G is positive definite). */
struct lowrank_white {
    int n;
    double *s;
    double shift;       /* absolute */
    double rel_shift;   /* shift / mean diagonal of G */
};
int lowrank_white_new(const double *g, int n, const char *what, struct lowrank_white *ret, struct sv_err *err);
void lowrank_white_free(struct lowrank_white *wh);
int lowrank_white_new_packed(const double *gp, int n, const char *what, struct lowrank_white *ret,
                             struct sv_err *err);
/* lowrank_project with g_in's whitening already computed (wh NULL: G = I). */
int lowrank_project_white(const float *w, int d_out, int d_in, const struct lowrank_white *wh, int k,
                          const char *what, struct lowrank_result *ret, struct sv_err *err);
/* The output side from an output covariance C = Y^T Y in packed storage
 * (lowrank_pgram_accum). */
int lowrank_project_packed(const float *w, int d_out, int d_in, const double *c_packed, int k, const char *what,
                           struct lowrank_result *ret, struct sv_err *err);
/* The same, also keeping the factors in double (a64, b64): for tests that
 * compare methods beyond f32 storage precision. */
int lowrank_project64(const float *w, int d_out, int d_in, const double *g_in, const double *c_out, int k,
                      const char *what, struct lowrank_result *ret, struct sv_err *err);
/* The statistic's eigenvalues only, descending and clamped at 0, into ev
 * (room for max(d_out, d_in)); *n = their count (d_out on the output side,
 * d_in on the input side). Dropping the smallest n - k of them leaves a
 * squared calibration-output error equal to their sum. */
int lowrank_spectrum(const float *w, int d_out, int d_in, const double *g_in, const double *c_out, double *ev,
                     int *n, const char *what, struct sv_err *err);
/* The same from packed statistics: an input Gram or an output covariance. */
int lowrank_spectrum_packed(const float *w, int d_out, int d_in, const double *g_packed, const double *c_packed,
                            double *ev, int *n, const char *what, struct sv_err *err);

/* The closed-form update for a fixed right factor B (k x d_in): with Z = X' B^T
 * (the compressed model's inputs through B) and Y the target outputs, the
 * least-squares left factor is A = (Y^T Z)(Z^T Z)^+. yz: (d_out, k) = Y^T Z,
 * zz: (k, k) = Z^T Z, both symmetric-complete, double. a: (d_out, k) double.
 * Directions of Z^T Z below 1e-6 of its largest eigenvalue (the precision of
 * f32-accumulated statistics) are dropped (minimum-norm solution);
 * their count goes to *dropped. */
int lowrank_refit(const double *yz, const double *zz, int d_out, int k, const char *what, double *a,
                  int *dropped, struct sv_err *err);
/* ||Y - Z A^T||^2 = yy - 2 <A, YZ> + <A ZZ, A> from the statistics, yy =
 * ||Y||^2: the refit's calibration loss for any A (d_out, k); NaN when out of
 * memory. */
double lowrank_refit_loss(double yy, const double *a, const double *yz, const double *zz, int d_out, int k);
/* c (dy, dz) += y^T z for row blocks y (ntok, dy), z (ntok, dz), f32 products
 * over chunks of at most 256 rows added into the double accumulator. */
int lowrank_cross_accum(double *c, const float *y, int dy, const float *z, int dz, size_t ntok, struct sv_err *err);

/* The rank that removes a fraction `ratio` of a d_out x d_in matrix's
 * parameters when stored as a pair: floor(d_out d_in (1 - ratio) / (d_out + d_in)), at least 1. */
int lowrank_rank_for_ratio(int d_out, int d_in, double ratio);

/* c (d_out, d_out) = (W diag(s)) (W diag(s))^T: the output covariance of a
 * diagonal input statistic G = diag(s^2), formed without the d_in^2 matrix. */
int lowrank_scaled_cov(const float *w, int d_out, int d_in, const double *s, double *c, struct sv_err *err);

/* G += x^T x for x (ntok, n) f32 rows; only the lower triangle (row >= col,
 * row-major) is accumulated. Products in f32 over chunks of at most 256
 * rows, each chunk added into the double accumulator. */
int lowrank_gram_accum(double *g, const float *x, size_t ntok, int n, struct sv_err *err);
/* The same into packed storage: the lower triangle row by row, entry
 * (i, j), j <= i, at i (i + 1) / 2 + j; lowrank_packed_len(n) doubles. Half
 * the memory of a full accumulator (64 instead of 128 MiB at n = 4096). */
int lowrank_pgram_accum(double *gp, const float *x, size_t ntok, int n, struct sv_err *err);
size_t lowrank_packed_len(int n);
/* full (n, n) = the symmetric matrix of packed gp. */
void lowrank_unpack(const double *gp, int n, double *full);
/* Copies the lower triangle into the upper one. */
void lowrank_gram_symmetrize(double *g, int n);

/* LoRAP's structured MLP pruning: which `keep` of the ff intermediate
 * channels stay. Importance of channel i is the activation-weighted weight
 * magnitude of its whole group (row i of gate and up, column i of down):
 *     sum_j (|Wg_ij| + |Wu_ij|) ||x_j|| + sum_o |Wd_oi| ||h_i||,
 * ||x_j||^2 = x_sq[j] (MLP input channel j), ||h_i||^2 = h_sq[i] (down_proj
 * input channel i), sums of squares over the calibration tokens. Kept: the
 * ceil(1 %) least important (at most keep / 2; LoRAP keeps them, since low
 * importance is not no information), then the most important of the rest.
 * wg, wu: (ff, d); wd: (d, ff). kept: keep indices, ascending. */
int lowrank_channel_select(const float *wg, const float *wu, const float *wd, int d, int ff, const double *x_sq,
                           const double *h_sq, int keep, int *kept, const char *what, struct sv_err *err);

/* ---- rrr: reduced-rank regression on the compressed model's inputs --------
 *
 * The sequential methods see two streams: X, the original model's inputs to
 * a matrix (targets Y = X W^T), and X', the inputs the already-compressed
 * upstream produces. svdllm-update keeps B = U_k^T W from X alone and refits
 * A; rrr frees both factors: the rank-k W' minimising
 *     ||X W^T - X' W'^T||_F^2 + lambda ||(W' - W) D||_F^2,   D^2 = diag(G'),
 * from G' = X'^T X' and the cross statistic H = X'^T X (both d_in^2).
 * With G'_l = G' + lambda D^2 the objective is, up to a constant,
 * trace((W' - W_ls) G'_l (W' - W_ls)^T) with the ridge least-squares fit
 *     W_ls = W (H^T + lambda D^2) G'_l^-1
 * (two triangular solves with the Cholesky factor S of G'_l, no inverse), so
 * its rank-k optimum is this core again: W' = U_k U_k^T W_ls, U_k the top-k
 * eigenvectors of W_ls G'_l W_ls^T (lowrank_project's projection of W_ls with
 * S as the whitening), stored as A = U_k, B = U_k^T W_ls. lambda = 0 is the
 * plain reduced-rank regression (the formula); it equals svdllm when
 * X' = X (W_ls = W), and no rank-k pair, the update's in particular, has a
 * lower calibration loss. The ridge is the same problem on augmented data
 * (X' gets the rows sqrt(lambda) D, Y the rows sqrt(lambda) D W^T), which is
 * how test_lowrank checks it. D^2 = diag(G') makes lambda scale-free: the
 * penalty is lambda times the loss W' - W would have on channel-wise
 * decorrelated inputs of the same energy; directions X' never excites
 * (diag 0, or fewer tokens than channels) get the whitening's fallback
 * shift s (lowrank_white_new), which joins the ridge (H^T + lambda D^2 + s I),
 * so they keep W rather than collapse to zero. The shift is reported.
 *
 * res->discarded is the dropped eigenvalue mass of W_ls G'_l W_ls^T (the
 * regularised objective's excess over W_ls); the calibration loss itself is
 * lowrank_rrr_loss (it needs ||Y||^2, which only the caller observes).
 *
 * Cost per matrix (d = d_in, m = d_out), in flops: Cholesky d^3/3 (shared by
 * the matrices of one input), R = W H^T 2 m d^2, the two solves 2 m d^2,
 * then lowrank_project on W_ls with S (output side: W_ls S m d^2, C m^2 d,
 * the eigensolver 4/3 m^3 + 2 m^2 k, B 2 k m d; input side as in project()).
 * Memory beyond the caller's G' and H: S and, transiently, G'_l (d^2 each),
 * W_ls (m d double) and project()'s buffers. At LLaMA-7B's down_proj
 * (m = 4096, d = 11008) the statistics are 0.97 GB each (G', H, S) and
 * W_ls 0.36 GB: ~3.8 GB peak with project()'s W S and C; ~3.5 TFLOP. */
struct lowrank_rrr {
    int n;                  /* d_in */
    double lambda;          /* the ridge weight asked for */
    double shift;           /* fallback shift the Cholesky needed (absolute), 0 normally */
    double rel_shift;       /* shift / mean diagonal of G' */
    double *dd;             /* (n): the ridge's diagonal, lambda diag(G') + shift */
    struct lowrank_white wh; /* S S^T = G' + diag(dd) */
    const double *h_borrow; /* H = X'^T X (n, n) row-major, the caller's */
    double gflop;           /* the Cholesky's */
};
/* gp: G' (n, n) symmetric-complete; h: H (n, n), row i column j =
 * sum_t x'_ti x_tj, borrowed until lowrank_rrr_free. lambda >= 0. */
int lowrank_rrr_new(const double *gp, const double *h, int n, double lambda, const char *what, struct lowrank_rrr *ret,
                    struct sv_err *err);
void lowrank_rrr_free(struct lowrank_rrr *q);
/* w: (d_out, d_in) the original weight; the rank-k factors of the ridge
 * reduced-rank regression into ret (fallback and shift: the Cholesky's). */
int lowrank_rrr_project(const float *w, int d_out, int d_in, const struct lowrank_rrr *q, int k, const char *what,
                        struct lowrank_result *ret, struct sv_err *err);
/* The eigenvalues of W_ls (G' + diag(dd)) W_ls^T only, as lowrank_spectrum
 * (descending, clamped at 0; room for max(d_out, d_in)): with lambda = 0,
 * rank k's calibration loss exceeds the unconstrained least squares' by
 * the sum of those beyond k. */
int lowrank_rrr_spectrum(const float *w, int d_out, int d_in, const struct lowrank_rrr *q, double *ev, int *n,
                         const char *what, struct sv_err *err);
/* lowrank_rrr_new + lowrank_rrr_project + lowrank_rrr_free. */
int lowrank_rrr(const float *w, int d_out, int d_in, const double *gp, const double *h, int k, double lambda,
                const char *what, struct lowrank_result *ret, struct sv_err *err);
/* The update's statistics for a right factor b (k, d_in) from rrr's: with
 * Z = X' B^T, zz (k, k) = Z^T Z = B G' B^T and yz (d_out, k) = Y^T Z =
 * W (B H)^T. lowrank_refit on them is svdllm-update's A for that B. */
int lowrank_rrr_zstats(const float *w, int d_out, int d_in, const double *gp, const double *h, const float *b, int k,
                       double *yz, double *zz, struct sv_err *err);
/* ||X W^T - X' (A B)^T||^2 from the statistics, yy = ||X W^T||^2; a (d_out,
 * k), b (k, d_in). NaN when out of memory. */
double lowrank_rrr_loss(double yy, const float *w, int d_out, int d_in, const double *gp, const double *h,
                        const float *a, const float *b, int k);

#endif
