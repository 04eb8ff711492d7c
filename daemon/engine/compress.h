/* compress: one compression job, run layer by layer with checkpoints.
 *
 * The engine knows nothing of SQLite or sockets: the daemon's runner passes
 * hooks. The durability protocol (also written in daemon/store.c; the loop
 * is compress_run() in compress.c, the files jobfiles.c and calib.c):
 *   for each decoder layer l not yet done:
 *     compute the layer's factors, writing the next layer's calibration
 *     states as WORK/hidden-(L+1).f32.tmp (and orig-(L+1).f32.tmp for
 *     svdllm-update), fsync, rename to hidden-(L+1).f32, fsync WORK; write
 *     WORK/layer-L.safetensors.tmp (factors, and those states' sha256 in its
 *     metadata), fsync, rename to layer-L.safetensors, fsync WORK; then call
 *     hooks->layer_done(), which commits the SQLite row (file, size,
 *     sha256). Only after that returns 0 is the layer done, and only then
 *     are hidden-L.f32 (orig-L.f32) removed. A crash anywhere before leaves
 *     a row-less layer that is redone from scratch, and redoing is
 *     idempotent (same inputs, same bytes).
 *   On resume, hooks->layer_lookup() tells which layers have rows; the engine
 *   checks each recorded file's size and sha256 before trusting it. A
 *   missing or damaged checkpoint is not an error: hooks->layers_drop() is
 *   told why, and that layer and every later one are recomputed. Damaged or
 *   missing calibration states entering the first layer to compute are
 *   regenerated from the calibration text through the checkpointed layers
 *   and must then match the checksums recorded with them.
 * When every layer is done the output directory is assembled from the layer
 * files (config.json, model.safetensors, tokenizer files, compression.json)
 * in OUT.tmp and renamed to OUT; a failed or cancelled assembly removes
 * OUT.tmp (the error says so when it cannot). */
#ifndef COMPRESS_H
#define COMPRESS_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>

#include "cost.h"
#include "params.h"
#include "sv_err.h"

/* Which phase a job is in, for status and watch. */
struct compress_progress {
    int layer;          /* 0-based layer being worked on, n_layers when assembling */
    int n_layers;
    int layers_done;
    const char *phase;  /* "eval", "calibrate", "replay", "allocate", "statistics", "factorize",
                         * "checkpoint", "assemble", "done" */
    double fraction;    /* overall, 0..1, never decreasing within a run (cost model in cost.c) */
};

struct compress_checkpoint {
    char file[PATH_MAX];   /* path relative to work_dir */
    uint64_t size;
    char sha256[65];
};

struct compress_hooks {
    void *ctx;
    /* Returns 1 and fills ck if layer has a committed row, 0 if not, <0 on error. */
    int (*layer_lookup)(void *ctx, int layer, struct compress_checkpoint *ck);
    /* Commits layer's row; only after it returns 0 is the layer done. */
    int (*layer_done)(void *ctx, int layer, const struct compress_checkpoint *ck, struct sv_err *err);
    /* Forgets the committed rows of layers from..n_layers-1 because their
     * checkpoints cannot be trusted: why names what was found (a missing,
     * truncated or altered file, damaged calibration states). Called before
     * the engine recomputes them; also with no rows to forget, when only the
     * calibration states entering layer `from` are regenerated. May be NULL. */
    int (*layers_drop)(void *ctx, int from, const char *why, struct sv_err *err);
    /* Non-zero: stop at the next safe point with -ECANCELED. */
    int (*should_cancel)(void *ctx);
    void (*progress)(void *ctx, const struct compress_progress *p);
    /* Called with enter = 1 just before and enter = 0 just after each
     * access to the submitter's files: the model's config, safetensors and
     * tokenizer files, the calibration and evaluation texts, OUT.tmp and OUT
     * (create, write, rename, remove). Never around the work directory or
     * the other hooks. The daemon switches the thread to the submitter's
     * credentials. A failed enter stops the job with its error before the
     * access; a failed leave is returned as the job's error. May be NULL. */
    int (*user_fs)(void *ctx, int enter, struct sv_err *err);
    /* Called (outside user_fs) just before OUT is created or replaced: the
     * daemon's rules for outputs (state directory, model, ownership of what
     * would be replaced). Non-zero stops the job with that error. May be NULL. */
    int (*output_check)(void *ctx, const char *out_dir, struct sv_err *err);
    /* The key the job was submitted with (params_job_key() at submit), or
     * NULL. When set, the key the engine computes as it opens the job (the
     * one computation per run: it hashes the model files) must equal it, or
     * the job stops with -ESTALE, "inputs changed since the job was
     * submitted: ...". */
    const char *job_key;
};

struct compress_result {
    double ppl_before, ppl_after;     /* 0 when not evaluated */
    /* CPU inference speed of the evaluation (batched forward pass, tokens/s),
     * original and compressed model, measured in this job on the same
     * threads; 0 when not evaluated. */
    double tok_s_before, tok_s_after;
    uint64_t params_before, params_after;   /* decoder-linear parameters */
    uint64_t bytes_before, bytes_after;     /* whole model files */
    double seconds;
    int layers_resumed;                /* layers taken from checkpoints */
};

/* Runs (or resumes) the job. Returns 0, -ECANCELED, or another negative code. */
int compress_run(const struct compress_params *p, const struct compress_hooks *h,
                 struct compress_result *ret, struct sv_err *err);

#endif
