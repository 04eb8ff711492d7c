/* stats: what each method measures of a layer's activations, and the
 * statistic each matrix is factored under (stats.c's note). */
#ifndef STATS_H
#define STATS_H

#include <stddef.h>

#include "config.h"
#include "job.h"
#include "model.h"

/* Per-layer statistics. */
struct stats {
    int d, qw, ff;
    /* svdllm (packed, lowrank_pgram_accum): each matrix's statistic on the
     * narrower side of its eigenproblem. cov[p] = Y^T Y of p's outputs when
     * d_out <= d_in (q/k/v/o/down in LLaMA): the output covariance
     * W G W^T itself, so no Cholesky, no W S product and no W G W^T product
     * at factorization time, and no shift for a singular G. gin[g] = X^T X
     * of input group g (stats_group) when a matrix reading it has
     * d_out > d_in (gate/up): whitened once for the group. */
    double *cov[PROJ_COUNT], *gin[4];
    /* asvd / awsvd / lorap: per input channel sum |x| and sum x^2, for the
     * inputs of q/k/v (0), o (1), gate/up (2), down (3); tokens seen in ntok. */
    double *abs_sum[4], *sq_sum[4];
    int width[4];
    double ntok;
};

enum stats_kind { STATS_NONE = 0, STATS_GRAMS, STATS_DIAG };

/* What a non-sequential method measures on the original model. */
enum stats_kind stats_kind_of(enum compress_method m);
/* Which input matrix p reads: q/k/v 0, o 1, gate/up 2, down 3. */
int stats_group(enum config_proj p);
/* The forward taps (struct forward_taps) that fill a struct stats. */
int stats_input(void *ctx, enum config_proj p, const float *x, size_t ntok, int width);
int stats_output(void *ctx, enum config_proj p, const float *y, size_t ntok, int width);
void stats_free(struct stats *s);
int stats_alloc(const struct job *j, enum stats_kind kind, struct stats *st, struct sv_err *err);
/* The statistic of matrix p under a diagonal method (asvd, awsvd, lorap) or
 * svd: g (an input Gram) or cout (an output covariance), possibly built
 * into *own (the caller frees it). The svdllm family's packed statistics
 * (cov, gin) are read directly by factor.c and ranks.c. */
int stats_matrix(const struct job *j, enum compress_method m, const struct stats *s, enum config_proj p,
                 const struct linear *lin, double **own, const double **g, const double **cout,
                 const char *what, struct sv_err *err);

#endif
