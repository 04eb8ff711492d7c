/* rrr: the rrr method's layer pass (rrr.c's note; the numerics are
 * lowrank_rrr in lowrank.h). */
#ifndef RRR_H
#define RRR_H

#include "factor.h"
#include "job.h"

/* The ridge grid, the held-out windows and the rule compression.json states. */
extern const double rrr_lambdas[RRR_NLAMBDA];
#define RRR_LAMBDA_FIXED 1e-3 /* with fewer than RRR_HELD_MIN windows */
#define RRR_HELD_MIN 4
#define RRR_RULE                                                                                               \
    "per matrix, the grid value whose factors fitted on the other windows have the lowest loss on the held-out " \
    "windows (the last nsamples/8, at least 1, when nsamples >= 4; else lambda_fixed); then fitted on all windows"
/* Held-out windows of a job with n_samples calibration windows: the last
 * n_samples / 8 (at least 1), none below RRR_HELD_MIN. */
int rrr_held_windows(int n_samples);

/* One layer of rrr; the contract of seq_layer (seq.h): res/rep are filled
 * for every matrix with rank > 0, next_hex and orig_next_hex name the
 * compressed and original states written for layer l + 1. */
int rrr_layer(struct job *j, const struct layer_w *lw, struct lowrank_result *res, struct mat_report *rep,
              const char *in_hex, const char *orig_in_hex, char next_hex[65], char orig_next_hex[65],
              struct sv_err *err);

#endif
