/* params: a compression job's parameters. The name tables of methods and
 * rank rules, the defaults (alpha 0.5, attn_split 3, the resolved rank rule),
 * the checks at submit (params_check() on the values, params_precheck() on
 * the inputs' contents) and the job key, the hash that names a job's inputs.
 * The daemon parses requests into struct compress_params and calls these;
 * the engine calls them again when a job starts. No JSON here. */
#ifndef PARAMS_H
#define PARAMS_H

#include <limits.h>
#include <stddef.h>
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
 * a ridge toward W chosen on held-out calibration windows (rrr.c, lowrank.h).
 * auto (the default): not a method of its own: the job starts by trying
 * svdllm, svdllm-update, rom, lorap and rrr on the calibration data and runs
 * the one with the lowest held-out calibration loss (autosel.c).
 * METHOD_COUNT counts the factoring methods; METHOD_AUTO comes after them,
 * METHOD_NAMES counts every name. */
enum compress_method {
    METHOD_SVD = 0, METHOD_SVDLLM, METHOD_ASVD, METHOD_AWSVD, METHOD_SVDLLM_UPDATE, METHOD_ROM, METHOD_LORAP,
    METHOD_RRR, METHOD_COUNT, METHOD_AUTO = METHOD_COUNT, METHOD_NAMES
};

/* Rank allocation. default: lorap for method lorap, last-n when layers > 0,
 * uniform otherwise. uniform: k = floor(d_out d_in (1 - ratio) / (d_out + d_in)).
 * lorap: attention's kept parameters split (v+o):(q+k) = attn_split, MLP uniform.
 * last-n: only the last `layers` decoder layers, each at ratio * L / layers.
 * auto: attention's and the MLP's budgets, greedy on the normalised discarded
 * eigenvalues (ranks.c).
 * sensitive: the same eigenvalues weighted by each matrix's measured effect
 * on the model's loss, then uniform, auto and that allocation compared on
 * held-out calibration windows with the job's own method; the lowest is
 * kept, so it is never worse than uniform there (ranks.c). */
enum compress_ranks { RANKS_DEFAULT = 0, RANKS_UNIFORM, RANKS_LORAP, RANKS_LAST_N, RANKS_AUTO, RANKS_SENSITIVE,
                      RANKS_COUNT };

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

const char *params_method_name(enum compress_method m);
int params_method_parse(const char *s, enum compress_method *ret);
/* rom, svdllm-update and rrr measure on the compressed model, layer by
 * layer (its states in hidden-L); the update and rrr also keep the original
 * model's stream (orig-L). */
bool params_method_sequential(enum compress_method m);
bool params_method_two_streams(enum compress_method m);
const char *params_ranks_name(enum compress_ranks r);
int params_ranks_parse(const char *s, enum compress_ranks *ret);
/* asvd's exponent: p->alpha, or the default 0.5 when it is 0. */
double params_alpha(const struct compress_params *p);
/* lorap's (v+o):(q+k) split: p->attn_split, or the default 3 when it is 0. */
double params_attn_split(const struct compress_params *p);
/* The rank rule a job runs under (never RANKS_DEFAULT): ranks, or for
 * RANKS_DEFAULT lorap for method lorap, last-n when layers > 0, else uniform. */
enum compress_ranks params_ranks_resolve(enum compress_method m, enum compress_ranks ranks, int layers);

/* Checks params without touching the model (ratio range, sizes, paths readable). */
int params_check(const struct compress_params *p, struct sv_err *err);
/* Which input params_precheck() found at fault. */
enum compress_check { COMPRESS_CHECK_MODEL = 1, COMPRESS_CHECK_CALIB, COMPRESS_CHECK_EVAL, COMPRESS_CHECK_RATIO };
/* Called with every file params_precheck() is about to read (absolute
 * path); non-zero refuses it with that error. */
typedef int (*compress_readable_fn)(void *ctx, const char *path, struct sv_err *err);
/* The checks that need the inputs' contents, for a submit that
 * params_check() accepted; nothing is written. In order: the model
 * (config.json, every safetensors header and every tensor the forward pass
 * needs, with shape and dtype: model_open(); not already low-rank; its
 * tokenizer and other files the output copies readable); the rank rule
 * leaves every matrix a rank >= 1 (method lorap: >= 1 MLP channel); the
 * calibration text (methods other than svd) is non-empty, tokenizes and
 * holds at least nsamples windows of seqlen; the evaluation text at least
 * one window of eval_seqlen. Reads the files with the caller's credentials;
 * readable (may be NULL) vets each path first. On failure *ret_what names
 * the input at fault and err says why, naming the file or tensor. */
int params_precheck(const struct compress_params *p, compress_readable_fn readable, void *ctx,
                      enum compress_check *ret_what, struct sv_err *err);
/* -ENOTSUP when the model in model_dir (config c) is already factored:
 * factored inputs are not supported, the original is recompressed. */
struct config;
int params_full_rank(const struct config *c, const char *model_dir, struct sv_err *err);
/* Hex sha256 over every input that shapes the output: model files, method,
 * ratio, calibration file, nsamples, seqlen, seed, window rule, dense. */
int params_job_key(const struct compress_params *p, char key[65], struct sv_err *err);

/* ---- the job parameter table ------------------------------------------------
 * Each job parameter once: its submit field (and job.schema.json property),
 * type, default, range, svdllmctl flag, store column, whether and under
 * which name it enters the job key, and where it lives in struct
 * compress_params. The daemon's submit parsing and params_values_check()
 * are driven by it; tests/test_params.c checks job.schema.json,
 * svdllmctl's usage, schema/store.sql and the README against it, and
 * tests/test_store.c round-trips every entry through the store. Adding a
 * parameter is one row here plus the code that uses it. */
enum params_type { PARAMS_PATH = 0, PARAMS_ENUM, PARAMS_INT, PARAMS_NUMBER, PARAMS_BOOL };
/* How a value sits in struct compress_params. */
enum params_slot { PARAMS_SLOT_PATH = 0, PARAMS_SLOT_INT, PARAMS_SLOT_U64, PARAMS_SLOT_DOUBLE, PARAMS_SLOT_BOOL };
enum params_key { PARAMS_KEY_NO = 0, PARAMS_KEY_YES, PARAMS_KEY_ASVD /* asvd's value, 0 for other methods */ };
struct params_field {
    const char *name;            /* submit field; schema property */
    enum params_type type;
    bool required;
    double min, max;             /* INT, NUMBER: accepted values */
    bool min_open, max_open;     /* NUMBER: a bound itself is refused */
    double def;                  /* INT, NUMBER, BOOL: the default; ENUM: its index */
    bool zero_default;           /* NUMBER: 0 in the struct stands for def (absent) */
    const char *const *names;    /* ENUM: the values by index */
    int n_names;
    const char *noun;            /* ENUM: "unknown <noun> 'x'" */
    const char *flag;            /* svdllmctl's option */
    const char *column;          /* the store's jobs column */
    enum params_key key;
    const char *key_name;        /* its name in the job key (table order is key order) */
    enum params_slot slot;
    size_t off;                  /* offsetof(struct compress_params, ...) */
    const char *help;            /* what it is, for error messages */
};
extern const struct params_field params_fields[];
extern const size_t params_n_fields;
/* The entry named name, or NULL. */
const struct params_field *params_field_find(const char *name);
/* Every field at its default (paths empty); what a submit leaves unset. */
void params_defaults(struct compress_params *p);
/* ENUM: the index of s among f's names, or -EINVAL. */
int params_field_enum(const struct params_field *f, const char *s);
/* INT, NUMBER: -EINVAL and why ("1 is outside (0, 1)") when v is outside
 * f's range. */
int params_field_range(const struct params_field *f, double v, char *why, size_t n);
/* Stores v (INT, NUMBER, BOOL, ENUM index) or s (PATH) in p; no checks. */
void params_field_set(struct compress_params *p, const struct params_field *f, double v, const char *s);
/* f's value in p as a number (PATH: its length). */
double params_field_get(const struct compress_params *p, const struct params_field *f);
/* The pure part of params_check(): every field within its range and the
 * rules between fields (lorap's own ranks, last-n needs layers, layers only
 * with last-n, calib for every method but svd). No file is touched; the
 * daemon's submit handler calls it too. */
int params_values_check(const struct compress_params *p, struct sv_err *err);

#endif
