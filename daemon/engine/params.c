/* params: a job's parameters (params.h). The name tables, the defaults,
 * params_check() (values, and that the paths can be read), params_precheck()
 * (the inputs' contents) and params_job_key(). The key hashes everything
 * that shapes the output, so a resume whose inputs changed is refused
 * (WORK/KEY, compress.c) and the checkpoints are keyed by it. */
#include "params.h"

#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "afile.h"
#include "config.h"
#include "corpus.h"
#include "jobfiles.h"
#include "model.h"
#include "ranks.h"
#include "sha256.h"
#include "st.h"

#define KEY_VERSION "svdllm-job-v2"
#define ALPHA_DEFAULT 0.5
#define ATTN_SPLIT_DEFAULT 3.0

static const char *const method_names[METHOD_NAMES] = {"svd", "svdllm", "asvd", "awsvd", "svdllm-update",
                                                       "rom", "lorap", "rrr", "auto"};
static const char *const ranks_names[RANKS_COUNT] = {"default", "uniform", "lorap", "last-n", "auto", "sensitive"};

const char *params_ranks_name(enum compress_ranks r) { return (r >= 0 && r < RANKS_COUNT) ? ranks_names[r] : "?"; }

int params_ranks_parse(const char *s, enum compress_ranks *ret) {
    for (int i = 0; i < RANKS_COUNT; i++)
        if (strcmp(s, ranks_names[i]) == 0) {
            *ret = (enum compress_ranks)i;
            return 0;
        }
    return -EINVAL;
}

const char *params_method_name(enum compress_method m) {
    return (m >= 0 && m < METHOD_NAMES) ? method_names[m] : "?";
}

int params_method_parse(const char *s, enum compress_method *ret) {
    for (int i = 0; i < METHOD_NAMES; i++)
        if (strcmp(s, method_names[i]) == 0) {
            *ret = (enum compress_method)i;
            return 0;
        }
    return -EINVAL;
}

bool params_method_sequential(enum compress_method m) {
    return m == METHOD_ROM || m == METHOD_SVDLLM_UPDATE || m == METHOD_RRR;
}

bool params_method_two_streams(enum compress_method m) { return m == METHOD_SVDLLM_UPDATE || m == METHOD_RRR; }

enum compress_ranks params_ranks_resolve(enum compress_method m, enum compress_ranks ranks, int layers) {
    return ranks != RANKS_DEFAULT ? ranks : m == METHOD_LORAP ? RANKS_LORAP : layers ? RANKS_LAST_N : RANKS_UNIFORM;
}

static const char *const windows_names[2] = {"random", "first"};

#define OFF(m) offsetof(struct compress_params, m)
/* In the job key's order (the key's text predates the table: see
 * params_job_key()). */
const struct params_field params_fields[] = {
    {.name = "model", .type = PARAMS_PATH, .required = true, .flag = "--model", .column = "model",
     .slot = PARAMS_SLOT_PATH, .off = OFF(model_dir), .help = "the model directory"},
    {.name = "out", .type = PARAMS_PATH, .required = true, .flag = "--out", .column = "out",
     .slot = PARAMS_SLOT_PATH, .off = OFF(out_dir), .help = "the output directory"},
    {.name = "method", .type = PARAMS_ENUM, .def = METHOD_AUTO, .names = method_names, .n_names = METHOD_NAMES,
     .noun = "method", .flag = "--method", .column = "method", .key = PARAMS_KEY_YES, .key_name = "method",
     .slot = PARAMS_SLOT_INT, .off = OFF(method), .help = "the compression method"},
    {.name = "alpha", .type = PARAMS_NUMBER, .min = 0, .max = 4, .min_open = true, .def = ALPHA_DEFAULT, .zero_default = true,
     .flag = "--alpha", .column = "alpha", .key = PARAMS_KEY_ASVD, .key_name = "alpha", .slot = PARAMS_SLOT_DOUBLE,
     .off = OFF(alpha), .help = "asvd's exponent"},
    {.name = "ratio", .type = PARAMS_NUMBER, .required = true, .min = 0, .max = 1, .min_open = true, .max_open = true,
     .flag = "--ratio", .column = "ratio", .key = PARAMS_KEY_YES, .key_name = "ratio", .slot = PARAMS_SLOT_DOUBLE,
     .off = OFF(ratio), .help = "the fraction of parameters removed"},
    {.name = "calib", .type = PARAMS_PATH, .flag = "--calib", .column = "calib", .slot = PARAMS_SLOT_PATH,
     .off = OFF(calib_path), .help = "the calibration text"},
    {.name = "nsamples", .type = PARAMS_INT, .min = 1, .max = 65536, .def = 32, .flag = "--nsamples",
     .column = "nsamples", .key = PARAMS_KEY_YES, .key_name = "nsamples", .slot = PARAMS_SLOT_INT,
     .off = OFF(nsamples), .help = "calibration windows"},
    {.name = "seqlen", .type = PARAMS_INT, .min = 2, .max = 65536, .def = 128, .flag = "--seqlen",
     .column = "seqlen", .key = PARAMS_KEY_YES, .key_name = "seqlen", .slot = PARAMS_SLOT_INT, .off = OFF(seqlen),
     .help = "tokens per calibration window"},
    {.name = "seed", .type = PARAMS_INT, .min = 0, .max = 9007199254740991.0, .flag = "--seed", .column = "seed",
     .key = PARAMS_KEY_YES, .key_name = "seed", .slot = PARAMS_SLOT_U64, .off = OFF(seed),
     .help = "the window sampling's seed"},
    {.name = "calib_windows", .type = PARAMS_ENUM, .names = windows_names, .n_names = 2, .noun = "window rule",
     .flag = "--calib-windows", .column = "calib_first", .key = PARAMS_KEY_YES, .key_name = "windows",
     .slot = PARAMS_SLOT_BOOL, .off = OFF(calib_first), .help = "which calibration windows"},
    {.name = "dense", .type = PARAMS_BOOL, .flag = "--dense", .column = "dense", .key = PARAMS_KEY_YES,
     .key_name = "dense", .slot = PARAMS_SLOT_BOOL, .off = OFF(dense), .help = "write W' with the original shapes"},
    {.name = "ranks", .type = PARAMS_ENUM, .names = ranks_names, .n_names = RANKS_COUNT, .noun = "rank rule",
     .flag = "--ranks", .column = "ranks", .key = PARAMS_KEY_YES, .key_name = "ranks", .slot = PARAMS_SLOT_INT,
     .off = OFF(ranks), .help = "the rank allocation"},
    {.name = "layers", .type = PARAMS_INT, .min = 0, .max = CONFIG_MAX_LAYERS, .flag = "--layers",
     .column = "layers", .key = PARAMS_KEY_YES, .key_name = "layers", .slot = PARAMS_SLOT_INT, .off = OFF(layers),
     .help = "last-n's count of final layers"},
    {.name = "attn_split", .type = PARAMS_NUMBER, .min = 0, .max = 100, .min_open = true, .def = ATTN_SPLIT_DEFAULT,
     .zero_default = true, .flag = "--attn-split", .column = "attn_split", .key = PARAMS_KEY_YES,
     .key_name = "attn_split", .slot = PARAMS_SLOT_DOUBLE, .off = OFF(attn_split),
     .help = "lorap's (v+o):(q+k) ratio"},
    {.name = "centered", .type = PARAMS_BOOL, .flag = "--centered", .column = "centered", .key = PARAMS_KEY_YES,
     .key_name = "centered", .slot = PARAMS_SLOT_BOOL, .off = OFF(centered), .help = "rom's centred covariance"},
    {.name = "overwrite", .type = PARAMS_BOOL, .flag = "--overwrite", .column = "overwrite",
     .slot = PARAMS_SLOT_BOOL, .off = OFF(overwrite), .help = "replace an existing output"},
    {.name = "eval_text", .type = PARAMS_PATH, .flag = "--eval-text", .column = "eval_text",
     .slot = PARAMS_SLOT_PATH, .off = OFF(eval_path), .help = "the evaluation text"},
    {.name = "eval_seqlen", .type = PARAMS_INT, .min = 0, .max = 65536, .flag = "--eval-seqlen",
     .column = "eval_seqlen", .slot = PARAMS_SLOT_INT, .off = OFF(eval_seqlen),
     .help = "the evaluation's window length"},
    {.name = "eval_max_windows", .type = PARAMS_INT, .min = 0, .max = INT_MAX, .flag = "--eval-max-windows",
     .column = "eval_max_windows", .slot = PARAMS_SLOT_INT, .off = OFF(eval_max_windows),
     .help = "evaluation windows scored"},
};
const size_t params_n_fields = sizeof params_fields / sizeof params_fields[0];

const struct params_field *params_field_find(const char *name) {
    for (size_t i = 0; i < params_n_fields; i++)
        if (strcmp(params_fields[i].name, name) == 0)
            return &params_fields[i];
    return NULL;
}

int params_field_enum(const struct params_field *f, const char *s) {
    for (int i = 0; i < f->n_names; i++)
        if (strcmp(s, f->names[i]) == 0)
            return i;
    return -EINVAL;
}

int params_field_range(const struct params_field *f, double v, char *why, size_t n) {
    bool lo = f->min_open ? v > f->min : v >= f->min, hi = f->max_open ? v < f->max : v <= f->max;
    if (lo && hi) /* false for NaN */
        return 0;
    if (f->type == PARAMS_INT)
        snprintf(why, n, "%.0f is outside [%.0f, %.0f]", v, f->min, f->max);
    else
        snprintf(why, n, "%g is outside %c%g, %g%c", v, f->min_open ? '(' : '[', f->min, f->max,
                 f->max_open ? ')' : ']');
    return -EINVAL;
}

void params_field_set(struct compress_params *p, const struct params_field *f, double v, const char *s) {
    char *at = (char *)p + f->off;
    switch (f->slot) {
    case PARAMS_SLOT_PATH:
        snprintf(at, PATH_MAX, "%s", s ? s : "");
        break;
    case PARAMS_SLOT_INT: /* int and the enums (int-sized) */
        *(int *)at = (int)v;
        break;
    case PARAMS_SLOT_U64:
        *(uint64_t *)at = (uint64_t)v;
        break;
    case PARAMS_SLOT_DOUBLE:
        *(double *)at = v;
        break;
    case PARAMS_SLOT_BOOL:
        *(bool *)at = v != 0;
        break;
    }
}

double params_field_get(const struct compress_params *p, const struct params_field *f) {
    const char *at = (const char *)p + f->off;
    switch (f->slot) {
    case PARAMS_SLOT_PATH:
        return (double)strlen(at);
    case PARAMS_SLOT_INT:
        return *(const int *)at;
    case PARAMS_SLOT_U64:
        return (double)*(const uint64_t *)at;
    case PARAMS_SLOT_DOUBLE:
        return *(const double *)at;
    case PARAMS_SLOT_BOOL:
        return *(const bool *)at;
    }
    return 0;
}

void params_defaults(struct compress_params *p) {
    for (size_t i = 0; i < params_n_fields; i++) {
        const struct params_field *f = &params_fields[i];
        params_field_set(p, f, f->zero_default ? 0 : f->def, "");
    }
}

/* Field f of p against its range or names; why names the field. */
static int field_check(const struct compress_params *p, const struct params_field *f, struct sv_err *err) {
    double v = params_field_get(p, f);
    char why[128];
    if (f->type == PARAMS_ENUM && (v < 0 || v >= f->n_names))
        return sv_err_set(err, -EINVAL, "unknown %s %d", f->noun, (int)v);
    if ((f->type == PARAMS_INT || f->type == PARAMS_NUMBER) && !(f->zero_default && v == 0) &&
        params_field_range(f, v, why, sizeof why) < 0)
        return sv_err_set(err, -EINVAL, "%s %s", f->name, why);
    return 0;
}

int params_values_check(const struct compress_params *p, struct sv_err *err) {
    int r;
    for (size_t i = 0; i < params_n_fields; i++)
        if ((r = field_check(p, &params_fields[i], err)) < 0)
            return r;
    if (p->method == METHOD_LORAP &&
        (p->ranks == RANKS_AUTO || p->ranks == RANKS_SENSITIVE || p->ranks == RANKS_LAST_N || p->layers))
        return sv_err_set(err, -EINVAL, "method lorap allocates its own ranks: use ranks lorap or uniform, no layers");
    if (p->method == METHOD_AUTO && (p->ranks == RANKS_LORAP || p->ranks == RANKS_LAST_N || p->layers))
        return sv_err_set(err, -EINVAL, "method auto chooses among methods with ranks default, uniform, auto or "
                          "sensitive: not %s%s", params_ranks_name(p->ranks), p->layers ? " or layers" : "");
    if (p->ranks == RANKS_SENSITIVE && !p->calib_path[0])
        return sv_err_set(err, -EINVAL, "ranks sensitive measures on calibration windows: it needs a calibration file");
    if (p->ranks == RANKS_LAST_N && !p->layers)
        return sv_err_set(err, -EINVAL, "ranks last-n needs layers (how many final layers to compress)");
    if (p->layers && p->ranks != RANKS_LAST_N && p->ranks != RANKS_DEFAULT)
        return sv_err_set(err, -EINVAL, "layers %d applies to ranks last-n only, not %s", p->layers,
                          params_ranks_name(p->ranks));
    if (!p->model_dir[0] || !p->out_dir[0])
        return sv_err_set(err, -EINVAL, "model and out directories are required");
    if (p->method != METHOD_SVD && !p->calib_path[0])
        return sv_err_set(err, -EINVAL, "method %s needs a calibration file", params_method_name(p->method));
    return 0;
}

int params_check(const struct compress_params *p, struct sv_err *err) {
    int r = params_values_check(p, err);
    if (r < 0)
        return r;
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/config.json", p->model_dir);
    if (access(p->model_dir, R_OK | X_OK) < 0)
        return sv_err_set(err, -errno, "model directory '%s': %s", p->model_dir, strerror(errno));
    struct config c;
    if ((r = config_load(&c, path, err)) < 0)
        return r;
    if (p->seqlen > c.max_pos)
        r = sv_err_set(err, -EINVAL, "seqlen %d exceeds the model's max_position_embeddings %d", p->seqlen, c.max_pos);
    else if (p->layers > c.n_layers)
        r = sv_err_set(err, -EINVAL, "layers %d exceeds the model's %d decoder layers", p->layers, c.n_layers);
    else if (p->layers && p->ratio * c.n_layers / p->layers >= 1.0)
        r = sv_err_set(err, -EINVAL,
                       "ratio %g over only the last %d of %d layers would remove %.0f %% of each: more layers or a "
                       "smaller ratio",
                       p->ratio, p->layers, c.n_layers, 100.0 * p->ratio * c.n_layers / p->layers);
    config_free(&c);
    if (r < 0)
        return r;
    if (p->calib_path[0] && access(p->calib_path, R_OK) < 0)
        return sv_err_set(err, -errno, "calibration file '%s': %s", p->calib_path, strerror(errno));
    if (p->eval_path[0] && access(p->eval_path, R_OK) < 0)
        return sv_err_set(err, -errno, "evaluation text '%s': %s", p->eval_path, strerror(errno));
    char parent[PATH_MAX];
    afile_parent_dir(p->out_dir, parent, sizeof parent);
    if (access(parent, W_OK | X_OK) < 0)
        return sv_err_set(err, -errno, "output parent directory '%s': %s", parent, strerror(errno));
    if (!p->overwrite && access(p->out_dir, F_OK) == 0)
        return sv_err_set(err, -EEXIST, "output directory '%s' exists (pass overwrite to replace it)", p->out_dir);
    return 0;
}

/* Hashes what identifies a safetensors file cheaply but strictly: its size
 * and its whole header (names, dtypes, shapes, offsets, metadata). */
static int hash_st_file(struct sha256 *h, const char *path, struct sv_err *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return sv_err_set(err, -errno, "file '%s': %s", path, strerror(errno));
    struct stat st;
    uint64_t hl = 0;
    int r = 0;
    if (fstat(fd, &st) < 0 || pread(fd, &hl, 8, 0) != 8 || hl > (uint64_t)st.st_size) {
        r = sv_err_set(err, -EINVAL, "file '%s': cannot read the safetensors header", path);
        goto out;
    }
    char *hdr = malloc(hl + 1);
    if (!hdr) {
        r = sv_err_set(err, -ENOMEM, "file '%s': out of memory", path);
        goto out;
    }
    if (pread(fd, hdr, hl, 8) != (ssize_t)hl) {
        free(hdr);
        r = sv_err_set(err, -EIO, "file '%s': short read of the header", path);
        goto out;
    }
    uint64_t size = (uint64_t)st.st_size;
    sha256_update(h, &size, sizeof size);
    sha256_update(h, hdr, hl);
    free(hdr);
out:
    close(fd);
    return r;
}

double params_alpha(const struct compress_params *p) { return p->alpha > 0 ? p->alpha : ALPHA_DEFAULT; }

double params_attn_split(const struct compress_params *p) {
    return p->attn_split > 0 ? p->attn_split : ATTN_SPLIT_DEFAULT;
}

/* The parameters' part of the job key's text: KEY_VERSION, then
 * "<key_name>=<value>\n" for each keyed field in table order (enums by
 * name, numbers %.17g, integers and booleans in decimal). This reproduces
 * the text of the keys written before the table, so jobs in flight keep
 * their keys. */
static void key_params(const struct compress_params *p, char *buf, size_t n) {
    size_t at = (size_t)snprintf(buf, n, "%s\n", KEY_VERSION);
    for (size_t i = 0; i < params_n_fields && at < n; i++) {
        const struct params_field *f = &params_fields[i];
        if (f->key == PARAMS_KEY_NO)
            continue;
        double v = params_field_get(p, f);
        if (f->key == PARAMS_KEY_ASVD)
            v = p->method == METHOD_ASVD ? params_alpha(p) : 0.0;
        if (f->type == PARAMS_ENUM)
            at += (size_t)snprintf(buf + at, n - at, "%s=%s\n", f->key_name,
                                   v >= 0 && v < f->n_names ? f->names[(int)v] : "?");
        else if (f->type == PARAMS_NUMBER)
            at += (size_t)snprintf(buf + at, n - at, "%s=%.17g\n", f->key_name, v);
        else if (f->slot == PARAMS_SLOT_U64)
            at += (size_t)snprintf(buf + at, n - at, "%s=%llu\n", f->key_name,
                                   (unsigned long long)*(const uint64_t *)((const char *)p + f->off));
        else
            at += (size_t)snprintf(buf + at, n - at, "%s=%d\n", f->key_name, (int)v);
    }
}

int params_job_key(const struct compress_params *p, char key[65], struct sv_err *err) {
    struct sha256 h;
    sha256_init(&h);
    char buf[PATH_MAX * 2 + 512], hex[65];
    int r;
    key_params(p, buf, sizeof buf);
    sha256_update(&h, buf, strlen(buf));
    snprintf(buf, sizeof buf, "%s/config.json", p->model_dir);
    if ((r = sha256_file(buf, hex, NULL, err)) < 0)
        return r;
    sha256_update(&h, hex, 64);
    struct st_model *st = NULL;
    if ((r = st_open(&st, p->model_dir, err)) < 0)
        return r;
    for (size_t i = 0; i < st_shard_count(st) && r == 0; i++)
        r = hash_st_file(&h, st_shard_path(st, i), err);
    st_free(st);
    if (r < 0)
        return r;
    if (p->calib_path[0]) {
        if ((r = sha256_file(p->calib_path, hex, NULL, err)) < 0)
            return r;
        sha256_update(&h, hex, 64);
    }
    uint8_t d[32];
    sha256_final(&h, d);
    sha256_hex(d, key);
    return 0;
}

int params_full_rank(const struct config *c, const char *model_dir, struct sv_err *err) {
    for (int l = 0; l < c->n_layers; l++)
        for (int q = 0; q < PROJ_COUNT; q++)
            if (c->rank[l][q])
                return sv_err_set(err, -ENOTSUP, "model '%s' is already low-rank; compress the original model",
                                  model_dir);
    return 0;
}

/* A text's token count against the windows it must hold. */
static int precheck_text(const char *path, const struct compress_params *p, const struct config *c, int seqlen,
                         int windows, const char *what, compress_readable_fn readable, void *ctx, struct sv_err *err) {
    int32_t *ids = NULL;
    size_t n = 0;
    int r = readable ? readable(ctx, path, err) : 0;
    if (r < 0)
        return r;
    size_t plen = strlen(path);
    if (readable && !(plen > 4 && strcmp(path + plen - 4, ".i32") == 0)) {
        char tpath[PATH_MAX + 32];
        snprintf(tpath, sizeof tpath, "%s/tokenizer.json", p->model_dir);
        if ((r = readable(ctx, tpath, err)) < 0)
            return r;
    }
    if ((r = corpus_load(path, p->model_dir, c->vocab, &ids, &n, err)) < 0)
        return r;
    free(ids);
    if (n / (size_t)seqlen < (size_t)windows)
        return sv_err_set(err, -EINVAL, "'%s' holds %zu tokens: %zu window(s) of %d, fewer than the %d %s", path, n,
                          n / (size_t)seqlen, seqlen, windows, what);
    return 0;
}

int params_precheck(const struct compress_params *p, compress_readable_fn readable, void *ctx,
                      enum compress_check *ret_what, struct sv_err *err) {
    char path[PATH_MAX + 64];
    struct model *m = NULL;
    int r = 0;
    *ret_what = COMPRESS_CHECK_MODEL;
    snprintf(path, sizeof path, "%s/config.json", p->model_dir);
    if (readable && (r = readable(ctx, path, err)) < 0)
        return r;
    if ((r = model_open(&m, p->model_dir, err)) < 0)
        return r;
    const struct config *c = &m->cfg;
    for (size_t i = 0; readable && i < st_shard_count(m->st) && r == 0; i++)
        r = readable(ctx, st_shard_path(m->st, i), err);
    if (r == 0)
        r = params_full_rank(c, p->model_dir, err);
    for (size_t i = 0; readable && i < JOBFILES_N_MODEL_EXTRA && r == 0; i++) {
        snprintf(path, sizeof path, "%s/%s", p->model_dir, jobfiles_model_extra[i]);
        if (access(path, F_OK) == 0 || errno != ENOENT)
            r = readable(ctx, path, err);
    }
    if (r < 0)
        goto out;
    *ret_what = COMPRESS_CHECK_RATIO;
    if ((r = ranks_precheck(p, c, err)) < 0)
        goto out;
    *ret_what = COMPRESS_CHECK_CALIB;
    if (p->method != METHOD_SVD &&
        (r = precheck_text(p->calib_path, p, c, p->seqlen, p->nsamples, "calibration windows (nsamples)", readable,
                           ctx, err)) < 0)
        goto out;
    *ret_what = COMPRESS_CHECK_EVAL;
    if (p->eval_path[0])
        r = precheck_text(p->eval_path, p, c, p->eval_seqlen ? p->eval_seqlen : p->seqlen, 1,
                          "evaluation window needed", readable, ctx, err);
out:
    model_free(m);
    return r;
}
