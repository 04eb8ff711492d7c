/* seq: the sequential methods, rom and svdllm-update (seq.c's note). */
#ifndef SEQ_H
#define SEQ_H

#include "factor.h"
#include "job.h"

/* One layer of rom or svdllm-update. res/rep are filled for every matrix with
 * rank > 0; next_hex (and, for the update, orig_next_hex) name the states
 * written for layer l + 1. */
int seq_layer(struct job *j, const struct layer_w *lw, struct lowrank_result *res, struct mat_report *rep,
              const char *in_hex, const char *orig_in_hex, char next_hex[65], char orig_next_hex[65],
              struct sv_err *err);

#endif
