/* trial: the calibration-only choices' measuring stick (trial.c's note). */
#ifndef TRIAL_H
#define TRIAL_H

#include <stdint.h>

#include "job.h"
#include "model.h"

/* Calibration windows the job does not fit on (calib_unused_ids). */
struct trial_set {
    int n, T;
    int32_t *ids;   /* (n, T) */
    int in_sample;  /* no spare window: these are fit windows */
};
void trial_set_free(struct trial_set *ts);
/* Up to 2n spare windows, split in two disjoint sets of up to n (a and b
 * are the same windows when fewer than 2 are spare). */
int trial_sets_new(struct job *j, int n, struct trial_set *a, struct trial_set *b, struct sv_err *err);
/* x (n T, hidden) = the embeddings of ts's windows. */
int trial_embed(const struct job *j, const struct trial_set *ts, float **ret_x, struct sv_err *err);
/* Mean next-token NLL over ts's windows of the original model from layer
 * l0 on, x (the states entering l0, not modified), except that matrix
 * (ov_l, ov_p) is *ov when ov is given. */
int trial_loss_from(struct job *j, const struct trial_set *ts, int l0, const float *x, int ov_l, int ov_p,
                    const struct linear *ov, double *ret, struct sv_err *err);
/* Method m run for real on the job's calibration windows over layers
 * 0..n_layers-1 (rank: the allocation, NULL for m's own rule), then the
 * mean NLL on ts of that model (the later layers original). Uses hidden-0
 * (hex0) and leaves no file of its own in WORK. adapt (ranks.h, or NULL):
 * the ranks are chosen stage by stage as the run proceeds, starting from
 * rank, and rank gets the ones chosen. */
int trial_method(struct job *j, enum compress_method m, int (*rank)[PROJ_COUNT], int n_layers, const char *hex0,
                 const struct trial_set *ts, struct ranks_adapt *adapt, double *ret, struct sv_err *err);

/* compress.c's run_layer, for trial_method: layer l computed and its
 * checkpoint file written, nothing committed. */
int compress_layer_trial(struct job *j, int l, const char *hex, const char *orig_hex, char next_hex[65],
                         char orig_next_hex[65], struct sv_err *err);

#endif
