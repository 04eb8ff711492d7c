/* factor: a layer's matrices factored from their statistics (factor.c's
 * note), and the per-matrix report every method fills. */
#ifndef FACTOR_H
#define FACTOR_H

#include "job.h"
#include "lowrank.h"
#include "model.h"
#include "stats.h"

enum mat_kind { MAT_FACTORED = 0, MAT_DENSE, MAT_PRUNED };

#define RRR_NLAMBDA 8 /* rrr's ridge grid (rrr.c) */

/* One matrix's line in compression.json "matrices". */
struct mat_report {
    int rank, k_effective;
    double energy, discarded, seconds;
    int fallback;
    double shift;
    double gflop;
    char side;
    enum mat_kind kind;
    int channels;                  /* pruned: intermediate channels kept */
    int refit;                     /* svdllm-update: A was refitted */
    int refit_dropped;
    double loss_before, loss_after; /* svdllm-update: ||Y - Z A^T||^2 with A = U_k, then refitted; rrr: its loss */
    int rrr, rrr_held;             /* rrr; lambda chosen on held-out windows */
    double rrr_lambda, rrr_heldout[RRR_NLAMBDA];
    double loss_svdllm, loss_update; /* rrr: svdllm's factors and the update's refit on the same inputs */
    double loss_lambda0;           /* rrr: the fit with lambda = 0 */
};

/* rep from a factorization's result, which took `seconds`. */
void factor_report(struct mat_report *rep, const struct lowrank_result *res, double seconds);
/* Non-sequential methods: every matrix of lw with rank > 0 from its
 * statistic under method m; drop_w frees each W once factored. */
int factor_layer(struct job *j, enum compress_method m, struct layer_w *lw, struct stats *s, int drop_w,
                 struct lowrank_result *res, struct mat_report *rep, struct sv_err *err);

#endif
