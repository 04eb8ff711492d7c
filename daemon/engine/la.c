/* la: libFLAME's LAPACK-compatible routines, in double, with checked info. */
#include "la.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info);
void dsyevd_(const char *jobz, const char *uplo, const int *n, double *a, const int *lda, double *w, double *work,
             const int *lwork, int *iwork, const int *liwork, int *info);
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

int la_syevd_values(double *a, double *w, int n, const char *what, struct sv_err *err) {
    return syevd("N", a, w, n, what, err);
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
