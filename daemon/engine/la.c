/* la: libFLAME's LAPACK-compatible routines, in double, with checked info. */
#include "la.h"

#include <blis.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info);
void dsyevd_(const char *jobz, const char *uplo, const int *n, double *a, const int *lda, double *w, double *work,
             const int *lwork, int *iwork, const int *liwork, int *info);
void dsytrd_(const char *uplo, const int *n, double *a, const int *lda, double *d, double *e, double *tau, double *work,
             const int *lwork, int *info);
void dsterf_(const int *n, double *d, double *e, int *info);
void dstemr_(const char *jobz, const char *range, const int *n, double *d, double *e, const double *vl,
             const double *vu, const int *il, const int *iu, int *m, double *w, double *z, const int *ldz,
             const int *nzc, int *isuppz, int *tryrac, double *work, const int *lwork, int *iwork, const int *liwork,
             int *info);
void dlarft_(const char *direct, const char *storev, const int *n, const int *k, double *v, const int *ldv,
             const double *tau, double *t, const int *ldt);
void dgesdd_(const char *jobz, const int *m, const int *n, double *a, const int *lda, double *s, double *u,
             const int *ldu, double *vt, const int *ldvt, double *work, const int *lwork, int *iwork, int *info);

int la_cholesky(double *g, int n, const char *what, struct sv_err *err) {
    int info = 0;
    /* Column-major "L" of our symmetric matrix: the lower triangle. */
    dpotrf_("L", &n, g, &n, &info);
    if (info < 0)
        return sv_err_set(err, -EINVAL, "%s: dpotrf argument %d is invalid", what, -info);
    if (info > 0)
        return sv_err_set(err, -EDOM, "%s: Gram matrix is not positive definite (leading minor %d of %d)", what,
                          info, n);
    for (int j = 1; j < n; j++) /* column j, rows < j: the strict upper triangle */
        memset(g + (size_t)j * n, 0, (size_t)j * sizeof *g);
    return 0;
}

/* LAPACK returns workspace sizes as doubles; at large n the rounding can land
 * below the true need, so round up with margin. */
static int ws_size(double q) { return (int)(q * 1.0001) + 64; }

static int syevd(const char *jobz, double *a, double *w, int n, const char *what, struct sv_err *err) {
    int info = 0, lwork = -1, liwork = -1, iq = 0;
    double q = 0;
    dsyevd_(jobz, "L", &n, a, &n, w, &q, &lwork, &iq, &liwork, &info);
    if (info != 0)
        return sv_err_set(err, -EINVAL, "%s: dsyevd workspace query failed (info %d)", what, info);
    lwork = ws_size(q);
    liwork = iq + 64;
    double *work = malloc((size_t)lwork * sizeof *work);
    int *iwork = malloc((size_t)liwork * sizeof *iwork);
    int r = 0;
    if (!work || !iwork) {
        r = sv_err_set(err, -ENOMEM, "%s: out of memory for the eigensolver workspace (n = %d)", what, n);
        goto out;
    }
    dsyevd_(jobz, "L", &n, a, &n, w, work, &lwork, iwork, &liwork, &info);
    if (info < 0)
        r = sv_err_set(err, -EINVAL, "%s: dsyevd argument %d is invalid", what, -info);
    else if (info > 0)
        r = sv_err_set(err, -EDOM, "%s: eigensolver did not converge (dsyevd info %d, n = %d)", what, info, n);
out:
    free(work);
    free(iwork);
    return r;
}

int la_syevd(double *a, double *w, int n, const char *what, struct sv_err *err) {
    return syevd("V", a, w, n, what, err);
}

/* a (symmetric, its upper triangle read) = Q T Q^T with T tridiagonal: d
 * (n) its diagonal, e (n - 1) its off-diagonal, the reflectors in a and tau
 * (n). The upper triangle: libFLAME's "L" path measured 3x slower at
 * n = 4096 (21 s against 7.4 s on 2 cores), and dsyevd reduces that one. */
static int tridiag_upper(double *a, int n, double *d, double *e, double *tau, const char *what, struct sv_err *err) {
    int info = 0, lwork = -1;
    double q = 0, *work = NULL;
    dsytrd_("U", &n, a, &n, d, e, tau, &q, &lwork, &info);
    if (info == 0) {
        lwork = ws_size(q);
        if (!(work = malloc((size_t)lwork * sizeof *work)))
            return sv_err_set(err, -ENOMEM, "%s: out of memory for the eigensolver workspace (n = %d)", what, n);
        dsytrd_("U", &n, a, &n, d, e, tau, work, &lwork, &info);
        free(work);
    }
    return info != 0 ? sv_err_set(err, -EINVAL, "%s: dsytrd failed (info %d, n = %d)", what, info, n) : 0;
}

/* The upper-triangle reduction and dsterf (all eigenvalues, O(n^2)). */
int la_syevd_values(double *a, double *w, int n, const char *what, struct sv_err *err) {
    int info = 0, r = 0;
    double *e = malloc((size_t)n * sizeof *e), *tau = malloc((size_t)n * sizeof *tau);
    if (!e || !tau)
        r = sv_err_set(err, -ENOMEM, "%s: out of memory for the eigensolver (n = %d)", what, n);
    if (r == 0 && (r = tridiag_upper(a, n, w, e, tau, what, err)) == 0) {
        dsterf_(&n, w, e, &info);
        if (info != 0)
            r = sv_err_set(err, info < 0 ? -EINVAL : -EDOM, "%s: dsterf failed (info %d, n = %d)", what, info, n);
    }
    free(e);
    free(tau);
    return r;
}

/* z (n x k, column-major) := Q z for Q = H(n-1) ... H(1) of dsytrd("U"):
 * reflector j (0-based, j < n - 1) is v = (a[(j+1) n + 0 .. j-1], 1, 0...)
 * with tau[j], acting on rows 0..j. Blocks of QR_NB reflectors as one
 * I - V T V^T (dlarft, backward), applied lowest block first by two BLIS
 * GEMMs and a triangular product: the same 2 n^2 k flops as dormtr, whose
 * 32-wide blocks ran at 20 GFLOP/s on one core here; measured 1.3-1.5x
 * faster at n = 4096, k = 1228 (8.3-10.2 s against 6.4-6.8 s, loaded
 * machine, side by side; relative difference 1e-15). */
#define QR_NB 128

static int back_transform(const double *a, int n, const double *tau, double *z, int k, const char *what,
                          struct sv_err *err) {
    const int m = n - 1;
    if (m < 1)
        return 0;
    const int nbk = m < QR_NB ? m : QR_NB;
    double *v = malloc((size_t)m * nbk * sizeof *v), *t = malloc((size_t)nbk * nbk * sizeof *t),
           *w = malloc((size_t)nbk * k * sizeof *w);
    int r = 0;
    if (!v || !t || !w) {
        r = sv_err_set(err, -ENOMEM, "%s: out of memory for the back-transformation (n = %d)", what, n);
        goto out;
    }
    double one = 1, zero = 0, mone = -1;
    for (int j0 = 0; j0 < m; j0 += nbk) {
        int b = m - j0 < nbk ? m - j0 : nbk, mb = j0 + b;
        for (int c = 0; c < b; c++) { /* V (mb x b, column-major) with its unit and zeros explicit */
            int j = j0 + c;
            double *vc = v + (size_t)c * mb;
            memcpy(vc, a + (size_t)(j + 1) * n, (size_t)j * sizeof *vc);
            vc[j] = 1;
            memset(vc + j + 1, 0, (size_t)(mb - j - 1) * sizeof *vc);
        }
        dlarft_("B", "C", &mb, &b, v, &mb, tau + j0, t, &b);
        /* w = T (V^T z[0:mb]); z[0:mb] -= V w. T is lower triangular. */
        bli_dgemm(BLIS_TRANSPOSE, BLIS_NO_TRANSPOSE, b, k, mb, &one, v, 1, mb, z, 1, n, &zero, w, 1, b);
        bli_dtrmm(BLIS_LEFT, BLIS_LOWER, BLIS_NO_TRANSPOSE, BLIS_NONUNIT_DIAG, b, k, &one, t, 1, b, w, 1, b);
        bli_dgemm(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, mb, k, b, &mone, v, 1, mb, w, 1, b, &one, z, 1, n);
    }
out:
    free(v);
    free(t);
    free(w);
    return r;
}

/* Tridiagonal reduction of the upper triangle (tridiag_upper), then all
 * eigenvalues by dsterf (O(n^2)), the top k vectors of the tridiagonal matrix
 * by MRRR (dstemr, O(n k)) and their back-transformation (2 n^2 k):
 * the work of dsyevd's divide and conquer and of back-transforming the other
 * n - k vectors is skipped. */
int la_syevr_top(double *a, int n, int k, double *w, double *z, const char *what, struct sv_err *err) {
    if (k < 1 || k > n)
        return sv_err_set(err, -EINVAL, "%s: %d eigenvectors of a %d x %d matrix", what, k, n, n);
    int info = 0, lwork = 0, liwork = -1, m = 0, il = n - k + 1, iu = n, tryrac = 1, iq = 0, r = 0;
    double q = 0, vl = 0, vu = 0;
    double *d = malloc((size_t)n * sizeof *d), *e = malloc((size_t)n * sizeof *e), *tau = malloc((size_t)n * sizeof *tau);
    double *d2 = malloc((size_t)n * sizeof *d2), *e2 = malloc((size_t)n * sizeof *e2);
    double *wk = malloc((size_t)n * sizeof *wk); /* dstemr writes up to n values */
    int *isuppz = malloc(2 * (size_t)k * sizeof *isuppz), *iwork = NULL;
    double *work = NULL;
    if (!d || !e || !tau || !d2 || !e2 || !wk || !isuppz) {
        r = sv_err_set(err, -ENOMEM, "%s: out of memory for the eigensolver (n = %d)", what, n);
        goto out;
    }
    /* Each routine's workspace is queried once its inputs exist. */
    if ((r = tridiag_upper(a, n, d, e, tau, what, err)) < 0)
        goto out;
    int lw = -1;
    dstemr_("V", "I", &n, d, e, &vl, &vu, &il, &iu, &m, wk, z, &n, &k, isuppz, &tryrac, &q, &lw, &iq, &liwork, &info);
    if (info != 0) {
        r = sv_err_set(err, -EINVAL, "%s: eigenvector workspace query failed (info %d)", what, info);
        goto out;
    }
    lwork = ws_size(q);
    work = malloc((size_t)lwork * sizeof *work);
    liwork = iq + 64;
    iwork = malloc((size_t)liwork * sizeof *iwork);
    if (!work || !iwork) {
        r = sv_err_set(err, -ENOMEM, "%s: out of memory for the eigensolver workspace (n = %d)", what, n);
        goto out;
    }
    memcpy(d2, d, (size_t)n * sizeof *d);
    memcpy(e2, e, (size_t)n * sizeof *e);
    dsterf_(&n, d2, e2, &info);
    if (info != 0) {
        r = sv_err_set(err, info < 0 ? -EINVAL : -EDOM, "%s: dsterf failed (info %d, n = %d)", what, info, n);
        goto out;
    }
    memcpy(w, d2, (size_t)n * sizeof *w);
    dstemr_("V", "I", &n, d, e, &vl, &vu, &il, &iu, &m, wk, z, &n, &k, isuppz, &tryrac, work, &lwork, iwork, &liwork,
            &info);
    if (info != 0 || m != k) {
        r = sv_err_set(err, info < 0 ? -EINVAL : -EDOM, "%s: dstemr failed (info %d, %d of %d vectors, n = %d)", what,
                       info, m, k, n);
        goto out;
    }
    r = back_transform(a, n, tau, z, k, what, err);
out:
    free(d);
    free(e);
    free(tau);
    free(d2);
    free(e2);
    free(wk);
    free(isuppz);
    free(work);
    free(iwork);
    return r;
}

int la_gesdd(double *a, int m, int n, double *s, double *u, double *vt, const char *what, struct sv_err *err) {
    int info = 0, lwork = -1, mn = m < n ? m : n;
    double q = 0;
    int *iwork = malloc(8 * (size_t)mn * sizeof *iwork);
    if (!iwork)
        return sv_err_set(err, -ENOMEM, "%s: out of memory", what);
    dgesdd_("S", &m, &n, a, &m, s, u, &m, vt, &mn, &q, &lwork, iwork, &info);
    lwork = ws_size(q);
    double *work = malloc((size_t)lwork * sizeof *work);
    int r = 0;
    if (info != 0 || !work) {
        r = sv_err_set(err, -ENOMEM, "%s: dgesdd workspace (info %d)", what, info);
        goto out;
    }
    dgesdd_("S", &m, &n, a, &m, s, u, &m, vt, &mn, work, &lwork, iwork, &info);
    if (info != 0)
        r = sv_err_set(err, info < 0 ? -EINVAL : -EDOM, "%s: dgesdd failed (info %d)", what, info);
out:
    free(work);
    free(iwork);
    return r;
}
