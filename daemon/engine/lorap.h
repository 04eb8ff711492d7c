/* lorap: LoRAP's structured pruning of a layer's MLP channels. */
#ifndef LORAP_H
#define LORAP_H

#include "factor.h"
#include "job.h"
#include "stats.h"

/* pruned[0..2]: gate (keep, d), up (keep, d), down (d, keep), malloc'ed;
 * keep = j->ff_keep; rep's gate/up/down say so. */
int lorap_prune(struct job *j, const struct layer_w *lw, const struct stats *s, float *pruned[3],
                struct mat_report *rep, struct sv_err *err);

#endif
