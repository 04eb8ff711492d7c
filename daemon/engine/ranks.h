/* ranks: every rank rule (ranks.c's note). */
#ifndef RANKS_H
#define RANKS_H

#include "config.h"
#include "job.h"

/* The rule in words, for compression.json "rank_rule". */
const char *ranks_rule(const struct job *j);
/* Fills j->rank (and j->ff_keep) by every rule but auto. */
void ranks_plan(struct job *j);
/* --ranks auto: the pre-pass and the greedy allocation (or ranks.json). */
int ranks_plan_auto(struct job *j, const char *hex0, struct sv_err *err);
/* The rank rule of p on config c gives every factored matrix rank >= 1 (and
 * method lorap keeps >= 1 MLP channel), before any clamping: a ratio that
 * needs rank 0 cannot be honoured. */
int ranks_precheck(const struct compress_params *p, const struct config *c, struct sv_err *err);

#endif
