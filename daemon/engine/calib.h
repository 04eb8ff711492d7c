/* calib: the calibration states and the passes over them (calib.c's note). */
#ifndef CALIB_H
#define CALIB_H

#include <limits.h>

#include "forward.h"
#include "job.h"
#include "model.h"
#include "sha256.h"
#include "stats.h"

/* One pass of calibration states through a layer. Several streams run in
 * lockstep, chunk by chunk and in array order (the closed-form update needs
 * the original model's outputs of a chunk next to the compressed model's
 * inputs of the same tokens). Each stream reads `in`, checks its sha256
 * against in_hex when given, runs lw with its taps and, when `out` is set,
 * writes the results atomically and returns their sha256 in out_hex. A tap
 * may stop the layer early (FORWARD_STOP); such a stream has no `out`. */
struct calib_stream {
    char in[PATH_MAX + 64];
    const char *in_hex;
    char out[PATH_MAX + 64];
    char *out_hex;
    const struct layer_w *lw;
    const struct forward_taps *taps;
    /* private */
    int fd_in, fd_out;
    char tmp[PATH_MAX + 72];
    float *x;
    struct sha256 h_in, h_out;
};
int calib_stream_pass(struct job *j, int layer, struct calib_stream *s, int ns, struct sv_err *err);
/* Writes hidden-0.f32: the embeddings of the chosen windows; hex gets its sha256. */
int calib_hidden0(struct job *j, char hex[65], struct sv_err *err);
/* Runs the original layer over the states in in_path, accumulating the
 * statistics in s and writing the next layer's states to out_path. */
int calib_layer(struct job *j, const struct layer_w *lw, struct stats *s, const char *in_path,
                const char *in_hex, const char *out_path, char next_hex[65], struct sv_err *err);
/* Path of the original model's stream entering layer l (orig-L; at layer 0
 * it is the embeddings, hidden-0, shared with the compressed stream). */
void calib_orig_path(const struct job *j, char *buf, size_t n, int l);
/* 1 if the calibration states at path are the bytes of checksum hex; 0 if
 * not (why filled). */
int calib_states_intact(const char *path, const char *hex, char *why, size_t n_why);
/* Regenerates the states entering layer k through the checkpointed layers
 * 0..k-1; they must match want (and want_orig); hex/orig_hex get them. */
int calib_replay(struct job *j, int k, const char *want, const char *want_orig, char hex[65],
                 char orig_hex[65], struct sv_err *err);

/* Up to n windows (T tokens each, *ret_ids (*ret_n, T) malloc'ed) of the
 * calibration text outside the job's chosen ones, ascending; none spare:
 * the chosen ones, *ret_in_sample = 1. */
int calib_unused_ids(struct job *j, int n, int32_t **ret_ids, int *ret_n, int *ret_in_sample, struct sv_err *err);

#endif
