/* compress: one compression job, run layer by layer with checkpoints.
 *
 * The engine knows nothing of SQLite or sockets: the daemon's runner passes
 * hooks. The durability protocol (also written in daemon/store.c):
 *   for each decoder layer l not yet done:
 *     compute the layer's factors; write WORK/layer-L.st.tmp, fsync, rename to
 *     WORK/layer-L.st, fsync WORK; write the next layer's calibration hidden
 *     states the same way; then call hooks->layer_done(), which commits the
 *     SQLite row (file, size, sha256). Only after that returns 0 is the layer
 *     done. A crash anywhere before leaves a row-less layer that is redone from
 *     scratch, and redoing is idempotent (same inputs, same bytes).
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

#include "sv_err.h"

/* svd: G = I. svdllm: G = X^T X of the original model's activations.
 * asvd: G = diag(s^2), s_j = (mean |x_j|)^alpha (ASVD). awsvd: G = diag(s^2),
 * s_j = RMS of input channel j (LoRAP's AWSVD). See lowrank.h.
 * svdllm-update: svdllm's B = U_k^T W, then A refitted by least squares so
 * that the compressed model's inputs reproduce the original model's outputs.
 * rom: sequential; U_k from the output covariance of the already-compressed
 * model (within a layer o/down see compressed q/k/v and gate/up).
 * lorap: attention by awsvd with the (v+o):(q+k) split, MLP by structured
 * channel pruning.
 * rrr: sequential like the update; both factors free: the rank-k reduced-rank
 * regression of the original outputs on the compressed model's inputs, with
 * a ridge toward W chosen on held-out calibration windows (lowrank.h). */
enum compress_method {
    METHOD_SVD = 0, METHOD_SVDLLM, METHOD_ASVD, METHOD_AWSVD, METHOD_SVDLLM_UPDATE, METHOD_ROM, METHOD_LORAP,
    METHOD_RRR, METHOD_COUNT
};

/* Rank allocation. default: lorap for method lorap, last-n when layers > 0,
 * uniform otherwise. uniform: k = floor(d_out d_in (1 - ratio) / (d_out + d_in)).
 * lorap: attention's kept parameters split (v+o):(q+k) = attn_split, MLP uniform.
 * last-n: only the last `layers` decoder layers, each at ratio * L / layers.
 * auto: one global budget, greedy on the discarded eigenvalues (compress.c). */
enum compress_ranks { RANKS_DEFAULT = 0, RANKS_UNIFORM, RANKS_LORAP, RANKS_LAST_N, RANKS_AUTO, RANKS_COUNT };

struct compress_params {
    char model_dir[PATH_MAX];
    char out_dir[PATH_MAX];
    char calib_path[PATH_MAX];   /* text or .i32 ids */
    char work_dir[PATH_MAX];     /* the job's checkpoint directory (exists) */
    char eval_path[PATH_MAX];    /* "" = no perplexity before/after */
    enum compress_method method;
    double ratio;                /* fraction of decoder-linear params removed, in (0,1) */
    double alpha;                /* asvd's exponent; 0 = the default 0.5 */
    int nsamples;
    int seqlen;
    uint64_t seed;
    bool calib_first;            /* take the first nsamples windows instead of seeded sampling */
    bool dense;                  /* write W' with original shapes instead of factor pairs */
    bool overwrite;              /* allow replacing an existing out_dir */
    int eval_seqlen;             /* 0 = seqlen */
    int eval_max_windows;        /* 0 = all */
    enum compress_ranks ranks;
    int layers;                  /* last-n: how many final layers to compress; 0 = all */
    double attn_split;           /* lorap's (v+o):(q+k) parameter ratio; 0 = the default 3 */
    bool centered;               /* rom: centred output covariance (default uncentred) */
};

/* Which phase a job is in, for status and watch. */
struct compress_progress {
    int layer;          /* 0-based layer being worked on, n_layers when assembling */
    int n_layers;
    int layers_done;
    const char *phase;  /* "eval", "calibrate", "replay", "allocate", "statistics", "factorize",
                         * "checkpoint", "assemble", "done" */
    double fraction;    /* overall, 0..1, never decreasing within a run (cost model in compress.c) */
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

/* What a job's progress scale depends on (compress.c: the cost model). */
struct compress_cost_in {
    enum compress_method method;
    enum compress_ranks ranks;   /* as submitted */
    int layers;                  /* last-n */
    bool eval;                   /* an evaluation text is set */
    int nsamples, seqlen, eval_seqlen, eval_max_windows;
};
void compress_cost_in_of(const struct compress_params *p, struct compress_cost_in *ret);
/* The fraction at which a run of that job starts when layers_done of its
 * n_layers layers are checkpointed: what status shows for a queued or failed
 * job, and never more than what the run then reports. */
double compress_fraction_resumed(const struct compress_cost_in *c, int n_layers, int layers_done);

/* Checks params without touching the model (ratio range, sizes, paths readable). */
int compress_params_check(const struct compress_params *p, struct sv_err *err);
/* Which input compress_precheck() found at fault. */
enum compress_check { COMPRESS_CHECK_MODEL = 1, COMPRESS_CHECK_CALIB, COMPRESS_CHECK_EVAL, COMPRESS_CHECK_RATIO };
/* Called with every file compress_precheck() is about to read (absolute
 * path); non-zero refuses it with that error. */
typedef int (*compress_readable_fn)(void *ctx, const char *path, struct sv_err *err);
/* The checks that need the inputs' contents, for a submit that
 * compress_params_check() accepted; nothing is written. In order: the model
 * (config.json, every safetensors header and every tensor the forward pass
 * needs, with shape and dtype: model_open(); not already low-rank; its
 * tokenizer and other files the output copies readable); the rank rule
 * leaves every matrix a rank >= 1 (method lorap: >= 1 MLP channel); the
 * calibration text (methods other than svd) is non-empty, tokenizes and
 * holds at least nsamples windows of seqlen; the evaluation text at least
 * one window of eval_seqlen. Reads the files with the caller's credentials;
 * readable (may be NULL) vets each path first. On failure *ret_what names
 * the input at fault and err says why, naming the file or tensor. */
int compress_precheck(const struct compress_params *p, compress_readable_fn readable, void *ctx,
                      enum compress_check *ret_what, struct sv_err *err);
/* Hex sha256 over every input that shapes the output: model files, method,
 * ratio, calibration file, nsamples, seqlen, seed, window rule, dense. */
int compress_job_key(const struct compress_params *p, char key[65], struct sv_err *err);
/* Runs (or resumes) the job. Returns 0, -ECANCELED, or another negative code. */
int compress_run(const struct compress_params *p, const struct compress_hooks *h,
                 struct compress_result *ret, struct sv_err *err);

const char *compress_method_name(enum compress_method m);
int compress_method_parse(const char *s, enum compress_method *ret);
const char *compress_ranks_name(enum compress_ranks r);
int compress_ranks_parse(const char *s, enum compress_ranks *ret);

#endif
