/* params: a job's parameters (params.h). The name tables, the defaults,
 * params_check() (values, and that the paths can be read), params_precheck()
 * (the inputs' contents) and params_job_key(). The key hashes everything
 * that shapes the output, so a resume whose inputs changed is refused
 * (WORK/KEY, compress.c) and the checkpoints are keyed by it. */
#include "params.h"

#include <errno.h>
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

static const char *const method_names[METHOD_COUNT] = {"svd", "svdllm", "asvd", "awsvd", "svdllm-update", "rom", "lorap", "rrr"};
static const char *const ranks_names[RANKS_COUNT] = {"default", "uniform", "lorap", "last-n", "auto"};

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
    return (m >= 0 && m < METHOD_COUNT) ? method_names[m] : "?";
}

int params_method_parse(const char *s, enum compress_method *ret) {
    for (int i = 0; i < METHOD_COUNT; i++)
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

int params_check(const struct compress_params *p, struct sv_err *err) {
    if (!(p->ratio > 0.0 && p->ratio < 1.0))
        return sv_err_set(err, -EINVAL, "ratio %g is outside (0, 1)", p->ratio);
    if (p->method < 0 || p->method >= METHOD_COUNT)
        return sv_err_set(err, -EINVAL, "unknown method %d", (int)p->method);
    if (p->alpha < 0 || p->alpha > 4 || p->alpha != p->alpha)
        return sv_err_set(err, -EINVAL, "alpha %g is outside [0, 4]", p->alpha);
    if (p->ranks < 0 || p->ranks >= RANKS_COUNT)
        return sv_err_set(err, -EINVAL, "unknown rank allocation %d", (int)p->ranks);
    if (p->layers < 0 || p->layers > CONFIG_MAX_LAYERS)
        return sv_err_set(err, -EINVAL, "layers %d is outside [0, %d]", p->layers, CONFIG_MAX_LAYERS);
    if (p->attn_split < 0 || p->attn_split > 100 || p->attn_split != p->attn_split)
        return sv_err_set(err, -EINVAL, "attn_split %g is outside [0, 100]", p->attn_split);
    if (p->method == METHOD_LORAP && (p->ranks == RANKS_AUTO || p->ranks == RANKS_LAST_N || p->layers))
        return sv_err_set(err, -EINVAL, "method lorap allocates its own ranks: use ranks lorap or uniform, no layers");
    if (p->ranks == RANKS_LAST_N && !p->layers)
        return sv_err_set(err, -EINVAL, "ranks last-n needs layers (how many final layers to compress)");
    if (p->layers && p->ranks != RANKS_LAST_N && p->ranks != RANKS_DEFAULT)
        return sv_err_set(err, -EINVAL, "layers %d applies to ranks last-n only, not %s", p->layers,
                          params_ranks_name(p->ranks));
    if (p->nsamples < 1 || p->nsamples > 1000000)
        return sv_err_set(err, -EINVAL, "nsamples %d is outside [1, 1000000]", p->nsamples);
    if (p->seqlen < 2 || p->seqlen > 1 << 20)
        return sv_err_set(err, -EINVAL, "seqlen %d is outside [2, 1048576]", p->seqlen);
    if (!p->model_dir[0] || !p->out_dir[0])
        return sv_err_set(err, -EINVAL, "model and out directories are required");
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/config.json", p->model_dir);
    if (access(p->model_dir, R_OK | X_OK) < 0)
        return sv_err_set(err, -errno, "model directory '%s': %s", p->model_dir, strerror(errno));
    struct config c;
    int r = config_load(&c, path, err);
    if (r < 0)
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
    if (p->method != METHOD_SVD || p->calib_path[0]) {
        if (!p->calib_path[0])
            return sv_err_set(err, -EINVAL, "method %s needs a calibration file", params_method_name(p->method));
        if (access(p->calib_path, R_OK) < 0)
            return sv_err_set(err, -errno, "calibration file '%s': %s", p->calib_path, strerror(errno));
    }
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

double params_alpha(const struct compress_params *p) { return p->alpha > 0 ? p->alpha : 0.5; }

int params_job_key(const struct compress_params *p, char key[65], struct sv_err *err) {
    struct sha256 h;
    sha256_init(&h);
    char buf[PATH_MAX * 2 + 512], hex[65];
    int r;
    snprintf(buf, sizeof buf, "%s\nmethod=%s\nalpha=%.17g\nratio=%.17g\nnsamples=%d\nseqlen=%d\nseed=%llu\nwindows=%s\ndense=%d\n",
             KEY_VERSION, params_method_name(p->method), p->method == METHOD_ASVD ? params_alpha(p) : 0.0, p->ratio, p->nsamples, p->seqlen,
             (unsigned long long)p->seed, p->calib_first ? "first" : "random", p->dense ? 1 : 0);
    sha256_update(&h, buf, strlen(buf));
    snprintf(buf, sizeof buf, "ranks=%s\nlayers=%d\nattn_split=%.17g\ncentered=%d\n", params_ranks_name(p->ranks),
             p->layers, p->attn_split, p->centered ? 1 : 0);
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
