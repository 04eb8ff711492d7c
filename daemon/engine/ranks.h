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
/* --ranks sensitive for rom and rrr (ranks.c's note): in a guard trial
 * (j->adapt set) the matrices p0..p1 of layer l, one stage of the method,
 * get their ranks just before they are factored, from the spectra of the
 * statistic the method factors them under (fn(ctx, p, ev, &n, err): ev has
 * room for max(d_out, d_in), descending) and the pre-pass spectra of the
 * matrices not factored yet, under what is left of the budget. Does
 * nothing when j->adapt is NULL. */
typedef int (*ranks_spectrum_fn)(void *ctx, int p, double *ev, int *n, struct sv_err *err);
int ranks_adapt_stage(struct job *j, int l, int p0, int p1, ranks_spectrum_fn fn, void *ctx, struct sv_err *err);
/* The rank rule of p on config c gives every factored matrix rank >= 1 (and
 * method lorap keeps >= 1 MLP channel), before any clamping: a ratio that
 * needs rank 0 cannot be honoured. */
int ranks_precheck(const struct compress_params *p, const struct config *c, struct sv_err *err);

#endif
