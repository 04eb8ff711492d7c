/* la: dense factorizations in double through libFLAME's LAPACK interface.
 *
 * This is the only translation unit that talks to libFLAME (its header cannot
 * share one with blis.h, so we declare the Fortran entry points we use; the
 * eigenvectors' back-transformation is ours, on BLIS GEMMs).
 * Every routine checks the LAPACK info code and reports it by name; nothing
 * here returns NaN silently. Matrices are column-major as LAPACK wants them;
 * for the symmetric matrices we pass, row- and column-major are the same. */
#ifndef LA_H
#define LA_H

#include <stddef.h>

#include "sv_err.h"

/* In-place Cholesky G = L L^T of the n x n symmetric positive definite G
 * (lower triangle used; on success L is in the lower triangle and the strict
 * upper triangle is zeroed). Returns 0, or -EDOM with the failing minor when G
 * is not positive definite (G is then unspecified: keep a copy). */
int la_cholesky(double *g, int n, const char *what, struct sv_err *err);

/* Eigen-decomposition of the n x n symmetric a: on success a holds the
 * eigenvectors (column j of the column-major matrix, i.e. a[j*n + i] is
 * component i of vector j) and w the eigenvalues in ascending order. */
int la_syevd(double *a, double *w, int n, const char *what, struct sv_err *err);
/* The eigenvalues only (ascending, into w); a is destroyed. */
int la_syevd_values(double *a, double *w, int n, const char *what, struct sv_err *err);

/* The top k eigenvectors of the n x n symmetric a (destroyed): w gets all n
 * eigenvalues ascending, z (n x k, column-major) the eigenvectors of the k
 * largest, ascending (column c belongs to w[n - k + c]). */
int la_syevr_top(double *a, int n, int k, double *w, double *z, const char *what, struct sv_err *err);

/* Thin SVD of the column-major m x n a (overwritten): s (min(m,n)), u (m x
 * min), vt (min x n). Only for tests and small references: libFLAME's gesdd
 * is QR iteration, far slower than divide and conquer at large n. */
int la_gesdd(double *a, int m, int n, double *s, double *u, double *vt, const char *what, struct sv_err *err);

#endif
