/* jobfiles: the files a job writes and reads back (jobfiles.c's note). */
#ifndef JOBFILES_H
#define JOBFILES_H

#include <stdint.h>

#include "compress.h"
#include "factor.h"
#include "job.h"
#include "lowrank.h"

/* Files of the model directory copied into the output when present. */
#define JOBFILES_N_MODEL_EXTRA 5
extern const char *const jobfiles_model_extra[JOBFILES_N_MODEL_EXTRA];

/* WORK/KEY: written with key when absent; -ESTALE when it names another
 * key (the inputs changed since the job started). */
int jobfiles_key_check(const char *work_dir, const char *key, struct sv_err *err);
/* Writes layer-l.safetensors with the factor pairs in res (rank > 0), the
 * pruned MLP matrices (lorap) and, in its metadata, the report and the
 * checksums of the states written for layer l + 1; fills ck. */
int jobfiles_layer_write(struct job *j, const struct layer_w *lw, const struct lowrank_result *res,
                         float *const pruned[3], const struct mat_report *rep, const char *next_hex,
                         const char *orig_next_hex, struct compress_checkpoint *ck, struct sv_err *err);
/* Reads a checkpointed layer file's metadata value (hidden_next_sha256 or report). */
int jobfiles_layer_meta(const struct job *j, int l, const char *key, char *out, size_t n, struct sv_err *err);
/* Layer l's checkpoint: 1 if it has a committed row whose file is intact,
 * 0 if it has no row, 2 if the row's file is missing or not the recorded
 * bytes (why says what was found), < 0 if the lookup itself failed. */
int jobfiles_layer_committed(struct job *j, int l, char *why, size_t n_why, struct sv_err *err);
/* Layer l as its checkpoint holds it: lc starts as lw (the original, dense)
 * and takes each factor pair of the file; the arrays go to f[], freed by the
 * caller. */
int jobfiles_layer_read(const struct job *j, const struct layer_w *lw, struct layer_w *lc,
                        float *f[2 * PROJ_COUNT], struct sv_err *err);
/* ranks.json (--ranks auto) into j->rank; an error when unreadable or damaged. */
int jobfiles_ranks_read(struct job *j, const char *path, struct sv_err *err);
/* Writes j->rank to ranks.json at path, atomically. */
int jobfiles_ranks_write(const struct job *j, const char *path, struct sv_err *err);
/* 1 if dir/compression.json names this job key. */
int jobfiles_own_output(const char *dir, const char *key);
/* Builds the output in tmp (OUT.tmp): config, model, tokenizer files. */
int jobfiles_assemble(struct job *j, const char *tmp, struct compress_result *res, struct sv_err *err);
/* Writes tmp/compression.json. */
int jobfiles_report(struct job *j, const char *dir, const char *key, const struct compress_result *res,
                    struct sv_err *err);
/* Renames tmp over OUT (see jobfiles.c). */
int jobfiles_publish(struct job *j, const char *tmp, const char *key, struct sv_err *err);

/* --method auto's choice (j->p->method and j->method_choice) in WORK/method.json. */
int jobfiles_method_write(const struct job *j, const char *path, struct sv_err *err);
int jobfiles_method_read(struct job *j, const char *path, enum compress_method *ret, struct sv_err *err);

#endif
