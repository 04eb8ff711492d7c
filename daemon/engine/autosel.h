/* autosel: --method auto (autosel.c's note). */
#ifndef AUTOSEL_H
#define AUTOSEL_H

#include "job.h"

/* The rule in words, for compression.json "method_choice". */
const char *autosel_rule(void);
/* How many layers a candidate is tried on, of L. */
int autosel_trial_layers(int L);
/* The method a method-auto job runs: WORK/method.json when it holds one,
 * else every candidate tried (needs hidden-0, hex0) and the choice written
 * there; j->method_choice gets the candidates' held-out losses. */
int autosel_pick(struct job *j, const char *hex0, enum compress_method *ret, struct sv_err *err);

#endif
