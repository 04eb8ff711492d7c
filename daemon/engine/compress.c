/* compress: one compression job, layer by layer, checkpointed.
 *
 * Design note (the durability protocol is in compress.h and daemon/store.c).
 * Work directory of a job:
 *     KEY                  the job key (hash of every input); a resume whose
 *                          inputs changed is refused
 *     hidden-L.f32         calibration hidden states entering layer L:
 *                          (nsamples, seqlen, hidden) f32, written atomically
 *     layer-L.safetensors  layer L's factors (f32) and, in __metadata__, its
 *                          per-matrix report and the sha256 of hidden-(L+1)
 * Layer L is done when the store has its row (file, size, sha256). On resume
 * the first layer without a row is redone from hidden-L, whose checksum the
 * previous layer's file records. Same inputs give the same bytes: fixed window
 * choice, fixed chunk order, BLIS's deterministic partitioning, and no
 * timestamps in anything that reaches the model files.
 *
 * Statistics per decoder layer (method svdllm), all accumulated in double:
 *     G_attn = X^T X of the attention input (shared by q, k, v),
 *     G_o    of o_proj's input, G_mlp of the MLP input (gate, up),
 *     C_down = Y^T Y of down_proj's OUTPUT (hidden^2 instead of ffn^2; see
 *              lowrank.h for why that is the same projection).
 * Method svd needs no calibration: G = I. The calibration hidden states for
 * layer L+1 are produced by the original layer L (whitening methods are not
 * sequential). */
#include "compress.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "corpus.h"
#include "forward.h"
#include "lowrank.h"
#include "model.h"
#include "mono.h"
#include "ppl.h"
#include "sha256.h"
#include "st.h"

#define KEY_VERSION "svdllm-job-v1"
#define CHUNK_TOKENS 4096

static const char *const method_names[METHOD_COUNT] = {"svd", "svdllm", "asvd", "awsvd"};

const char *compress_method_name(enum compress_method m) {
    return (m >= 0 && m < METHOD_COUNT) ? method_names[m] : "?";
}

int compress_method_parse(const char *s, enum compress_method *ret) {
    for (int i = 0; i < METHOD_COUNT; i++)
        if (strcmp(s, method_names[i]) == 0) {
            *ret = (enum compress_method)i;
            return 0;
        }
    return -EINVAL;
}

/* Crash injection for the durability tests (in the spirit of SQLite's
 * crash tests): SVDLLM_FAULT="after-commit:L" kills the process with SIGKILL
 * right after layer L's checkpoint row is committed; "mid-write:L" kills it
 * halfway through writing layer L's checkpoint file; "stall-after-commit:L"
 * holds the job after layer L's commit (up to 60 s, until it is cancelled),
 * so a test can cancel a job that is certainly running. Unset in production. */
static int fault_is(const char *kind, int layer) {
    const char *f = getenv("SVDLLM_FAULT");
    size_t n = strlen(kind);
    return f && strncmp(f, kind, n) == 0 && f[n] == ':' && atoi(f + n + 1) == layer;
}

static void fault_point(const char *kind, int layer) {
    if (fault_is(kind, layer))
        raise(SIGKILL);
}

/* ---- small durable-file helpers ------------------------------------------ */

static int fsync_dir(const char *dir, struct sv_err *err) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return sv_err_set(err, -errno, "directory '%s': %s", dir, strerror(errno));
    int r = fsync(fd) < 0 ? sv_err_set(err, -errno, "fsync of directory '%s': %s", dir, strerror(errno)) : 0;
    close(fd);
    return r;
}

static int write_full(int fd, const void *buf, size_t n, const char *path, struct sv_err *err) {
    const char *p = buf;
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return sv_err_set(err, -errno, "file '%s': write failed: %s", path, strerror(errno));
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Ends an atomic write: given fd open on tmp and r the outcome so far, fsyncs
 * and closes fd, renames tmp to path and fsyncs dir; removes tmp on failure. */
static int tmp_finish(int fd, int r, const char *tmp, const char *path, const char *dir, struct sv_err *err) {
    if (r == 0 && fsync(fd) < 0)
        r = sv_err_set(err, -errno, "file '%s': fsync failed: %s", tmp, strerror(errno));
    close(fd);
    if (r == 0 && rename(tmp, path) < 0)
        r = sv_err_set(err, -errno, "rename '%s': %s", tmp, strerror(errno));
    if (r == 0)
        r = fsync_dir(dir, err);
    if (r < 0)
        unlink(tmp);
    return r;
}

/* Writes buf to path atomically: path.tmp, fsync, rename, fsync dir. */
static int write_file_atomic(const char *dir, const char *path, const void *buf, size_t n, struct sv_err *err) {
    char tmp[PATH_MAX + 8];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return sv_err_set(err, -errno, "file '%s': %s", tmp, strerror(errno));
    return tmp_finish(fd, write_full(fd, buf, n, tmp, err), tmp, path, dir, err);
}

static int copy_file(const char *src, const char *dst, struct sv_err *err) {
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return sv_err_set(err, -errno, "file '%s': %s", src, strerror(errno));
    int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int r = 0;
    if (out < 0) {
        r = sv_err_set(err, -errno, "file '%s': %s", dst, strerror(errno));
        goto done;
    }
    char buf[1 << 16];
    for (;;) {
        ssize_t k = read(in, buf, sizeof buf);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            r = sv_err_set(err, -errno, "file '%s': read failed: %s", src, strerror(errno));
            break;
        }
        if (k == 0)
            break;
        if ((r = write_full(out, buf, (size_t)k, dst, err)) < 0)
            break;
    }
    if (r == 0 && fsync(out) < 0)
        r = sv_err_set(err, -errno, "file '%s': fsync failed: %s", dst, strerror(errno));
done:
    if (out >= 0)
        close(out);
    close(in);
    return r;
}

static int remove_tree(const char *path) {
    DIR *d = opendir(path);
    if (!d)
        return unlink(path) < 0 && errno != ENOENT ? -errno : 0;
    struct dirent *e;
    char sub[PATH_MAX];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
        remove_tree(sub);
    }
    closedir(d);
    return rmdir(path) < 0 ? -errno : 0;
}

static void parent_dir(const char *path, char *out, size_t n) {
    snprintf(out, n, "%s", path);
    char *s = strrchr(out, '/');
    if (!s)
        snprintf(out, n, ".");
    else if (s == out)
        out[1] = '\0';
    else
        *s = '\0';
}

/* ---- parameters and key -------------------------------------------------- */

int compress_params_check(const struct compress_params *p, struct sv_err *err) {
    if (!(p->ratio > 0.0 && p->ratio < 1.0))
        return sv_err_set(err, -EINVAL, "ratio %g is outside (0, 1)", p->ratio);
    if (p->method < 0 || p->method >= METHOD_COUNT)
        return sv_err_set(err, -EINVAL, "unknown method %d", (int)p->method);
    if (p->alpha < 0 || p->alpha > 4 || p->alpha != p->alpha)
        return sv_err_set(err, -EINVAL, "alpha %g is outside [0, 4]", p->alpha);
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
    config_free(&c);
    if (r < 0)
        return r;
    if (p->method != METHOD_SVD || p->calib_path[0]) {
        if (!p->calib_path[0])
            return sv_err_set(err, -EINVAL, "method %s needs a calibration file", compress_method_name(p->method));
        if (access(p->calib_path, R_OK) < 0)
            return sv_err_set(err, -errno, "calibration file '%s': %s", p->calib_path, strerror(errno));
    }
    if (p->eval_path[0] && access(p->eval_path, R_OK) < 0)
        return sv_err_set(err, -errno, "evaluation text '%s': %s", p->eval_path, strerror(errno));
    char parent[PATH_MAX];
    parent_dir(p->out_dir, parent, sizeof parent);
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

static double job_alpha(const struct compress_params *p) { return p->alpha > 0 ? p->alpha : 0.5; }

int compress_job_key(const struct compress_params *p, char key[65], struct sv_err *err) {
    struct sha256 h;
    sha256_init(&h);
    char buf[PATH_MAX * 2 + 512], hex[65];
    int r;
    snprintf(buf, sizeof buf, "%s\nmethod=%s\nalpha=%.17g\nratio=%.17g\nnsamples=%d\nseqlen=%d\nseed=%llu\nwindows=%s\ndense=%d\n",
             KEY_VERSION, compress_method_name(p->method), p->method == METHOD_ASVD ? job_alpha(p) : 0.0, p->ratio, p->nsamples, p->seqlen,
             (unsigned long long)p->seed, p->calib_first ? "first" : "random", p->dense ? 1 : 0);
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

/* ---- the job ------------------------------------------------------------- */

struct mat_report {
    int rank, k_effective;
    double energy, discarded, seconds;
    int fallback, clamped;
    char side;
};

struct job {
    const struct compress_params *p;
    const struct compress_hooks *h;
    struct model *m;
    const struct config *c;
    int (*rank)[PROJ_COUNT];
    int n_samples, T;
    double t_start;
    int layers_done;
};

static int cancelled(const struct job *j) { return j->h && j->h->should_cancel && j->h->should_cancel(j->h->ctx); }

static void progress(struct job *j, int layer, const char *phase, double within) {
    if (!j->h || !j->h->progress)
        return;
    struct compress_progress pr = {
        .layer = layer, .n_layers = j->c->n_layers, .layers_done = j->layers_done, .phase = phase,
        .fraction = ((double)j->layers_done + within) / (j->c->n_layers + 1),
    };
    j->h->progress(j->h->ctx, &pr);
}

/* Seeded choice of calibration windows (documented rule): the token stream
 * is cut into floor(n / T) non-overlapping windows; "first" takes windows
 * 0..N-1; otherwise a partial Fisher-Yates shuffle driven by xorshift64*
 * seeded with (seed + 1) picks N distinct windows, used in ascending order. */
static int choose_windows(size_t n_windows, int N, int first, uint64_t seed, size_t *out, struct sv_err *err) {
    if ((size_t)N > n_windows)
        return sv_err_set(err, -EINVAL, "calibration text has %zu windows of this seqlen, fewer than nsamples %d",
                          n_windows, N);
    if (first) {
        for (int i = 0; i < N; i++)
            out[i] = (size_t)i;
        return 0;
    }
    size_t *perm = malloc(n_windows * sizeof *perm);
    if (!perm)
        return sv_err_set(err, -ENOMEM, "calibration: out of memory");
    for (size_t i = 0; i < n_windows; i++)
        perm[i] = i;
    uint64_t s = seed + 1;
    for (int i = 0; i < N; i++) {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        uint64_t rnd = s * 0x2545F4914F6CDD1DULL;
        size_t jdx = (size_t)i + (size_t)(rnd % (n_windows - (size_t)i));
        size_t t = perm[i];
        perm[i] = perm[jdx];
        perm[jdx] = t;
    }
    for (int i = 0; i < N; i++) /* insertion sort of the chosen few */
        for (int k = i; k > 0 && perm[k - 1] > perm[k]; k--) {
            size_t t = perm[k];
            perm[k] = perm[k - 1];
            perm[k - 1] = t;
        }
    memcpy(out, perm, (size_t)N * sizeof *out);
    free(perm);
    return 0;
}

static void work_path(const struct job *j, char *buf, size_t n, const char *fmt, int l) {
    char name[64];
    snprintf(name, sizeof name, fmt, l);
    snprintf(buf, n, "%s/%s", j->p->work_dir, name);
}

/* Writes hidden-0.f32: the embeddings of the chosen windows. */
static int make_hidden0(struct job *j, char hex[65], struct sv_err *err) {
    int32_t *ids = NULL;
    size_t n = 0, *win = NULL;
    float *x = NULL;
    int r = corpus_load(j->p->calib_path, j->p->model_dir, j->c->vocab, &ids, &n, err);
    if (r < 0)
        return r;
    win = malloc((size_t)j->n_samples * sizeof *win);
    x = malloc((size_t)j->T * j->c->hidden * sizeof *x);
    if (!win || !x) {
        r = sv_err_set(err, -ENOMEM, "calibration: out of memory");
        goto out;
    }
    if ((r = choose_windows(n / (size_t)j->T, j->n_samples, j->p->calib_first, j->p->seed, win, err)) < 0)
        goto out;
    char path[PATH_MAX + 64], tmp[PATH_MAX + 72];
    work_path(j, path, sizeof path, "hidden-%d.f32", 0);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        r = sv_err_set(err, -errno, "file '%s': %s", tmp, strerror(errno));
        goto out;
    }
    struct sha256 h;
    sha256_init(&h);
    size_t bytes = (size_t)j->T * j->c->hidden * sizeof *x;
    for (int s = 0; s < j->n_samples && r == 0; s++) {
        if ((r = model_embed(j->m, ids + win[s] * (size_t)j->T, (size_t)j->T, x, err)) == 0)
            r = write_full(fd, x, bytes, tmp, err);
        sha256_update(&h, x, bytes);
    }
    if ((r = tmp_finish(fd, r, tmp, path, j->p->work_dir, err)) == 0) {
        uint8_t d[32];
        sha256_final(&h, d);
        sha256_hex(d, hex);
    }
out:
    free(ids);
    free(win);
    free(x);
    return r;
}

/* Per-layer statistics (see the design note). */
struct stats {
    int d, qw, ff;
    double *g_attn, *g_o, *g_mlp, *c_down;   /* svdllm */
    /* asvd / awsvd: per input channel sum |x| and sum x^2, for the inputs of
     * q/k/v (0), o (1), gate/up (2), down (3); tokens seen in ntok. */
    double *abs_sum[4], *sq_sum[4];
    int width[4];
    double ntok;
};

static int stats_group(enum config_proj p) {
    return p <= PROJ_V ? 0 : p == PROJ_O ? 1 : p <= PROJ_UP ? 2 : 3;
}

static int stats_input(void *ctx, enum config_proj p, const float *x, size_t ntok, int width) {
    struct stats *s = ctx;
    if (s->abs_sum[0]) {
        int g = stats_group(p);
        double *a = s->abs_sum[g], *q = s->sq_sum[g];
        for (size_t t = 0; t < ntok; t++)
            for (int j = 0; j < width; j++) {
                double v = x[t * (size_t)width + j];
                a[j] += fabs(v);
                q[j] += v * v;
            }
        if (g == 0)
            s->ntok += (double)ntok;
        return 0;
    }
    double *g = p == PROJ_Q ? s->g_attn : p == PROJ_O ? s->g_o : p == PROJ_GATE ? s->g_mlp : NULL;
    return g ? lowrank_gram_accum(g, x, ntok, width, NULL) : 0;
}

static int stats_output(void *ctx, enum config_proj p, const float *y, size_t ntok, int width) {
    struct stats *s = ctx;
    return p == PROJ_DOWN && s->c_down ? lowrank_gram_accum(s->c_down, y, ntok, width, NULL) : 0;
}

static void stats_free(struct stats *s) {
    for (int g = 0; g < 4; g++) {
        free(s->abs_sum[g]);
        free(s->sq_sum[g]);
    }
    free(s->g_attn);
    free(s->g_o);
    free(s->g_mlp);
    free(s->c_down);
}

/* Runs layer l over the calibration states in chunks, accumulating the
 * statistics and writing hidden-(l+1). */
static int calibrate_layer(struct job *j, const struct layer_w *lw, struct stats *s, char next_hex[65],
                           const char *in_hex, struct sv_err *err) {
    const size_t d = (size_t)j->c->hidden, T = (size_t)j->T, row = T * d * sizeof(float);
    char in_path[PATH_MAX + 64], out_path[PATH_MAX + 64], tmp[PATH_MAX + 72];
    work_path(j, in_path, sizeof in_path, "hidden-%d.f32", lw->index);
    work_path(j, out_path, sizeof out_path, "hidden-%d.f32", lw->index + 1);
    snprintf(tmp, sizeof tmp, "%s.tmp", out_path);
    int in = open(in_path, O_RDONLY | O_CLOEXEC), out = -1, r = 0;
    float *x = NULL;
    if (in < 0)
        return sv_err_set(err, -errno, "calibration states '%s': %s", in_path, strerror(errno));
    int per = (int)(CHUNK_TOKENS / T);
    if (per < 1)
        per = 1;
    x = malloc((size_t)per * row);
    out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (!x || out < 0) {
        r = x ? sv_err_set(err, -errno, "file '%s': %s", tmp, strerror(errno))
              : sv_err_set(err, -ENOMEM, "calibration: out of memory");
        goto out;
    }
    struct sha256 hin, hout;
    sha256_init(&hin);
    sha256_init(&hout);
    struct forward_taps taps = {.ctx = s, .input = stats_input, .output = stats_output};
    for (int s0 = 0; s0 < j->n_samples; s0 += per) {
        int nb = j->n_samples - s0 < per ? j->n_samples - s0 : per;
        size_t want = (size_t)nb * row, got = 0;
        while (got < want) {
            ssize_t k = pread(in, (char *)x + got, want - got, (off_t)((size_t)s0 * row + got));
            if (k <= 0) {
                r = sv_err_set(err, -EIO, "calibration states '%s' are truncated (restart the job)", in_path);
                goto out;
            }
            got += (size_t)k;
        }
        sha256_update(&hin, x, want);
        if ((r = forward_layer(j->c, lw, x, nb, (int)T, &taps, err)) < 0)
            goto out;
        sha256_update(&hout, x, want);
        if ((r = write_full(out, x, want, tmp, err)) < 0)
            goto out;
        if (cancelled(j)) {
            r = sv_err_set(err, -ECANCELED, "cancelled");
            goto out;
        }
        progress(j, lw->index, "statistics", 0.5 * (s0 + nb) / j->n_samples);
    }
    uint8_t dg[32];
    char hex[65];
    sha256_final(&hin, dg);
    sha256_hex(dg, hex);
    if (in_hex && strcmp(hex, in_hex) != 0) {
        r = sv_err_set(err, -EIO, "calibration states '%s' do not match their recorded checksum", in_path);
        goto out;
    }
    r = tmp_finish(out, 0, tmp, out_path, j->p->work_dir, err);
    out = -1;
    if (r < 0)
        goto out;
    sha256_final(&hout, dg);
    sha256_hex(dg, next_hex);
    if (s->g_attn) {
        lowrank_gram_symmetrize(s->g_attn, s->d);
        lowrank_gram_symmetrize(s->g_o, s->qw);
        lowrank_gram_symmetrize(s->g_mlp, s->d);
        lowrank_gram_symmetrize(s->c_down, s->d);
    }
out:
    if (out >= 0) {
        close(out);
        unlink(tmp);
    }
    close(in);
    free(x);
    return r;
}

static int report_json(const struct mat_report *rep, char **ret) {
    json_t *o = json_object();
    for (int p = 0; p < PROJ_COUNT; p++) {
        json_t *e = json_pack("{s:i, s:i, s:f, s:f, s:s, s:i, s:s, s:f}", "rank", rep[p].rank, "k_effective",
                              rep[p].k_effective, "retained_energy", rep[p].energy, "discarded", rep[p].discarded,
                              "fallback", rep[p].fallback ? "eigen-sqrt" : "none", "clamped_eigenvalues",
                              rep[p].clamped, "side", rep[p].side == 'i' ? "input" : "output", "seconds",
                              rep[p].seconds);
        json_object_set_new(o, config_proj_name(p), e);
    }
    *ret = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
    json_decref(o);
    return *ret ? 0 : -ENOMEM;
}

/* ASVD / AWSVD: G = diag(s^2) with s from the channel statistics. Output
 * side: C = (W diag(s))(W diag(s))^T, no d_in^2 matrix; input side: the
 * diagonal G itself (d_in is the narrow side there). */
static int diag_statistic(const struct job *j, const struct stats *s, enum config_proj p, const struct linear *lin,
                          double **own, const double **g, const double **cout, const char *what, struct sv_err *err) {
    int grp = stats_group(p), n = lin->d_in;
    double *sc = malloc((size_t)n * sizeof *sc);
    if (!sc)
        return sv_err_set(err, -ENOMEM, "%s: out of memory", what);
    double alpha = job_alpha(j->p), nt = s->ntok > 0 ? s->ntok : 1;
    for (int c = 0; c < n; c++)
        sc[c] = j->p->method == METHOD_ASVD ? pow(s->abs_sum[grp][c] / nt, alpha) : sqrt(s->sq_sum[grp][c] / nt);
    int r = 0;
    if (lin->d_out <= lin->d_in) {
        double *c = malloc((size_t)lin->d_out * lin->d_out * sizeof *c);
        if (!c)
            r = sv_err_set(err, -ENOMEM, "%s: out of memory", what);
        else if ((r = lowrank_scaled_cov(lin->w, lin->d_out, n, sc, c, err)) == 0)
            *cout = c;
        *own = c;
        *g = NULL;
    } else {
        double *gd = calloc((size_t)n * n, sizeof *gd);
        if (!gd)
            r = sv_err_set(err, -ENOMEM, "%s: out of memory", what);
        else
            for (int c = 0; c < n; c++)
                gd[(size_t)c * n + c] = sc[c] * sc[c];
        *own = gd;
        *g = gd;
        *cout = NULL;
    }
    free(sc);
    return r;
}

/* Factorizes layer l and writes layer-l.safetensors; fills ck. */
static int factor_layer(struct job *j, const struct layer_w *lw, const struct stats *s, const char *next_hex,
                        struct compress_checkpoint *ck, struct sv_err *err) {
    struct lowrank_result res[PROJ_COUNT];
    struct mat_report rep[PROJ_COUNT];
    memset(res, 0, sizeof res);
    memset(rep, 0, sizeof rep);
    int r = 0, l = lw->index;
    char what[200], path[PATH_MAX + 64];
    struct st_writer *w = NULL;
    char *rj = NULL;
    for (int p = 0; p < PROJ_COUNT; p++) {
        if (cancelled(j)) {
            r = sv_err_set(err, -ECANCELED, "cancelled");
            goto out;
        }
        progress(j, l, "factorize", 0.5 + 0.45 * p / PROJ_COUNT);
        const struct linear *lin = &lw->proj[p];
        model_proj_prefix(l, p, what, sizeof what);
        const double *g = NULL, *cout = NULL;
        if (j->p->method == METHOD_SVDLLM) {
            if (p == PROJ_DOWN && lin->d_out <= lin->d_in)
                cout = s->c_down;
            else
                g = p <= PROJ_V ? s->g_attn : p == PROJ_O ? s->g_o : s->g_mlp;
            if (p == PROJ_DOWN && !cout) {
                r = sv_err_set(err, -ENOTSUP, "%s: ffn narrower than hidden is not supported", what);
                goto out;
            }
        }
        double *own = NULL; /* a statistic built here for the diagonal methods */
        if (j->p->method == METHOD_ASVD || j->p->method == METHOD_AWSVD) {
            if ((r = diag_statistic(j, s, p, lin, &own, &g, &cout, what, err)) < 0)
                goto out;
        }
        double t0 = mono_now();
        r = lowrank_project(lin->w, lin->d_out, lin->d_in, g, cout, j->rank[l][p], what, &res[p], err);
        free(own);
        if (r < 0)
            goto out;
        rep[p] = (struct mat_report){res[p].k, res[p].k_effective, res[p].energy, res[p].discarded, mono_now() - t0,
                                     (int)res[p].fallback, res[p].clamped, res[p].side};
    }
    progress(j, l, "checkpoint", 0.95);
    if ((r = report_json(rep, &rj)) < 0) {
        r = sv_err_set(err, r, "layer %d: out of memory for the report", l);
        goto out;
    }
    work_path(j, path, sizeof path, "layer-%d.safetensors", l);
    if ((r = st_writer_new(&w, path, err)) < 0 || (r = st_writer_meta(w, "report", rj, err)) < 0 ||
        (r = st_writer_meta(w, "hidden_next_sha256", next_hex, err)) < 0)
        goto out;
    char name[ST_MAX_NAME + 32];
    for (int p = 0; p < PROJ_COUNT && r == 0; p++) {
        const struct linear *lin = &lw->proj[p];
        model_proj_prefix(l, p, what, sizeof what);
        int64_t sb[2] = {res[p].k, lin->d_in}, sa[2] = {lin->d_out, res[p].k};
        snprintf(name, sizeof name, "%s.0.weight", what);
        if ((r = st_writer_declare(w, name, ST_F32, 2, sb, err)) == 0) {
            snprintf(name, sizeof name, "%s.1.weight", what);
            r = st_writer_declare(w, name, ST_F32, 2, sa, err);
        }
    }
    for (int p = 0; p < PROJ_COUNT && r == 0; p++) {
        const struct linear *lin = &lw->proj[p];
        model_proj_prefix(l, p, what, sizeof what);
        snprintf(name, sizeof name, "%s.0.weight", what);
        if (p == PROJ_COUNT / 2)
            fault_point("mid-write", l);
        if ((r = st_writer_write_f32(w, name, res[p].b, (size_t)res[p].k * lin->d_in, err)) == 0) {
            snprintf(name, sizeof name, "%s.1.weight", what);
            r = st_writer_write_f32(w, name, res[p].a, (size_t)lin->d_out * res[p].k, err);
        }
    }
    if (r < 0)
        goto out;
    r = st_writer_finish(w, err);
    w = NULL;
    if (r < 0)
        goto out;
    snprintf(ck->file, sizeof ck->file, "layer-%d.safetensors", l);
    r = sha256_file(path, ck->sha256, &ck->size, err);
out:
    st_writer_free(w);
    free(rj);
    for (int p = 0; p < PROJ_COUNT; p++)
        lowrank_result_free(&res[p]);
    return r;
}

/* Reads a checkpointed layer file's metadata value (hidden_next_sha256 or report). */
static int layer_meta(const struct job *j, int l, const char *key, char *out, size_t n, struct sv_err *err) {
    char path[PATH_MAX + 64];
    work_path(j, path, sizeof path, "layer-%d.safetensors", l);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return sv_err_set(err, -errno, "checkpoint '%s': %s", path, strerror(errno));
    uint64_t hl = 0;
    int r = 0;
    char *hdr = NULL;
    if (pread(fd, &hl, 8, 0) != 8 || hl > (1u << 26) || !(hdr = malloc(hl + 1)) ||
        pread(fd, hdr, hl, 8) != (ssize_t)hl) {
        r = sv_err_set(err, -EIO, "checkpoint '%s': unreadable header", path);
        goto out;
    }
    json_t *root = json_loadb(hdr, hl, 0, NULL);
    const char *v = json_string_value(json_object_get(json_object_get(root, "__metadata__"), key));
    if (!v)
        r = sv_err_set(err, -EIO, "checkpoint '%s': no '%s' in its metadata", path, key);
    else
        snprintf(out, n, "%s", v);
    json_decref(root);
out:
    free(hdr);
    close(fd);
    return r;
}

/* Returns 1 if layer l has a committed row whose file is intact, 0 if not. */
static int layer_committed(struct job *j, int l, struct sv_err *err) {
    if (!j->h || !j->h->layer_lookup)
        return 0;
    struct compress_checkpoint ck;
    int r = j->h->layer_lookup(j->h->ctx, l, &ck);
    if (r <= 0)
        return r < 0 ? sv_err_set(err, r, "layer %d: checkpoint lookup failed", l) : 0;
    char path[PATH_MAX * 2 + 2], hex[65];
    uint64_t size = 0;
    snprintf(path, sizeof path, "%s/%s", j->p->work_dir, ck.file);
    if ((r = sha256_file(path, hex, &size, err)) < 0)
        return sv_err_set(err, -EIO, "layer %d: checkpoint '%s' is recorded but unreadable", l, path);
    if (size != ck.size || strcmp(hex, ck.sha256) != 0)
        return sv_err_set(err, -EIO, "layer %d: checkpoint '%s' does not match its recorded size and sha256", l, path);
    return 1;
}

/* ---- output -------------------------------------------------------------- */

static int is_factored_name(const struct job *j, const char *name, int *ret_l, int *ret_p) {
    int l, n = 0;
    if (sscanf(name, "model.layers.%d.%n", &l, &n) != 1 || n == 0 || l < 0 || l >= j->c->n_layers)
        return 0;
    for (int p = 0; p < PROJ_COUNT; p++) {
        const char *pn = config_proj_name(p);
        size_t pl = strlen(pn);
        if (strncmp(name + n, pn, pl) == 0 && strcmp(name + n + pl, ".weight") == 0) {
            *ret_l = l;
            *ret_p = p;
            return 1;
        }
    }
    return 0;
}

static int write_config(const struct job *j, const char *dir, struct sv_err *err) {
    char src[PATH_MAX + 32], dst[PATH_MAX + 32];
    snprintf(src, sizeof src, "%s/config.json", j->p->model_dir);
    snprintf(dst, sizeof dst, "%s/config.json", dir);
    json_error_t jerr;
    json_t *root = json_load_file(src, 0, &jerr);
    if (!root)
        return sv_err_set(err, -EINVAL, "config '%s': %s", src, jerr.text);
    if (!j->p->dense) {
        json_t *ranks = json_object();
        char name[256];
        for (int l = 0; l < j->c->n_layers; l++)
            for (int p = 0; p < PROJ_COUNT; p++) {
                model_proj_prefix(l, p, name, sizeof name);
                json_object_set_new(ranks, name, json_integer(j->rank[l][p]));
            }
        json_object_set_new(root, "low_rank",
                            json_pack("{s:s, s:f, s:s, s:o}", "method", compress_method_name(j->p->method), "ratio",
                                      j->p->ratio, "format",
                                      "<module>.0.weight (rank, in) then <module>.1.weight (out, rank): "
                                      "torch.nn.Sequential(Linear(in, rank, bias=False), Linear(rank, out, bias=False))",
                                      "ranks", ranks));
    }
    char *text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17));
    json_decref(root);
    if (!text)
        return sv_err_set(err, -ENOMEM, "config: out of memory");
    size_t n = strlen(text);
    text[n] = '\n'; /* json_dumps leaves room for the NUL only; replace it */
    int r = write_file_atomic(dir, dst, text, n + 1, err);
    free(text);
    return r;
}

static int write_model(struct job *j, const char *dir, uint64_t *params_after, struct sv_err *err) {
    struct st_model *src = j->m->st;
    struct st_model **layers = calloc((size_t)j->c->n_layers, sizeof *layers);
    struct st_writer *w = NULL;
    char path[PATH_MAX + 64], name[ST_MAX_NAME + 32];
    int r = 0;
    float *buf = NULL, *buf2 = NULL;
    if (!layers)
        return sv_err_set(err, -ENOMEM, "output: out of memory");
    for (int l = 0; l < j->c->n_layers && r == 0; l++) {
        work_path(j, path, sizeof path, "layer-%d.safetensors", l);
        r = st_open_file(&layers[l], path, err);
    }
    if (r < 0)
        goto out;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if ((r = st_writer_new(&w, path, err)) < 0 || (r = st_writer_meta(w, "format", "pt", err)) < 0)
        goto out;
    *params_after = 0;
    /* Pass 1 declares, pass 2 writes, in the same (name) order. */
    for (int pass = 0; pass < 2 && r == 0; pass++) {
        for (size_t i = 0; i < st_count(src) && r == 0; i++) {
            const struct st_tensor *t = st_get(src, i);
            int l, p;
            if (!is_factored_name(j, t->name, &l, &p)) {
                if (pass == 0)
                    r = st_writer_declare(w, t->name, t->dtype, t->ndim, t->shape, err);
                else
                    r = st_writer_write_raw(w, t->name, t->data, t->nbytes, err);
                continue;
            }
            int d_out = (int)t->shape[0], d_in = (int)t->shape[1], k = j->rank[l][p];
            char pre[200];
            model_proj_prefix(l, p, pre, sizeof pre);
            if (j->p->dense) {
                if (pass == 0) {
                    r = st_writer_declare(w, t->name, t->dtype, 2, t->shape, err);
                    *params_after += (uint64_t)k * (uint64_t)(d_out + d_in);
                    continue;
                }
                /* W' (d_out, d_in) = A (d_out, k) B (k, d_in) */
                buf = malloc((size_t)k * d_in * sizeof *buf);
                buf2 = malloc(((size_t)d_out * k + (size_t)d_out * d_in) * sizeof *buf2);
                if (!buf || !buf2) {
                    r = sv_err_set(err, -ENOMEM, "output: out of memory for '%s'", t->name);
                    goto out;
                }
                snprintf(name, sizeof name, "%s.0.weight", pre);
                if ((r = st_read_f32(layers[l], name, buf, (size_t)k * d_in, err)) < 0)
                    goto out;
                snprintf(name, sizeof name, "%s.1.weight", pre);
                if ((r = st_read_f32(layers[l], name, buf2, (size_t)d_out * k, err)) < 0)
                    goto out;
                float *wd = buf2 + (size_t)d_out * k;
                forward_sgemm(0, (size_t)d_out, (size_t)d_in, (size_t)k, 1.0f, buf2, (size_t)k, buf, (size_t)d_in, 0.0f,
                              wd, (size_t)d_in);
                r = st_writer_write_f32(w, t->name, wd, (size_t)d_out * d_in, err);
                free(buf);
                free(buf2);
                buf = buf2 = NULL;
                continue;
            }
            for (int half = 0; half < 2 && r == 0; half++) {
                snprintf(name, sizeof name, "%s.%d.weight", pre, half);
                int64_t shape[2] = {half == 0 ? k : d_out, half == 0 ? d_in : k};
                size_t n = (size_t)shape[0] * (size_t)shape[1];
                if (pass == 0) {
                    r = st_writer_declare(w, name, t->dtype, 2, shape, err);
                    *params_after += n;
                    continue;
                }
                buf = malloc(n * sizeof *buf);
                if (!buf) {
                    r = sv_err_set(err, -ENOMEM, "output: out of memory for '%s'", name);
                    goto out;
                }
                if ((r = st_read_f32(layers[l], name, buf, n, err)) == 0)
                    r = st_writer_write_f32(w, name, buf, n, err); /* converted to the input's dtype */
                free(buf);
                buf = NULL;
            }
        }
    }
    if (r < 0)
        goto out;
    r = st_writer_finish(w, err);
    w = NULL;
out:
    st_writer_free(w);
    free(buf);
    free(buf2);
    for (int l = 0; l < j->c->n_layers; l++)
        st_free(layers[l]);
    free(layers);
    return r;
}

static uint64_t file_size(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
}

/* 1 if dir/compression.json names this job key. */
static int own_output(const char *dir, const char *key) {
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/compression.json", dir);
    json_t *root = json_load_file(path, 0, NULL);
    const char *k = json_string_value(json_object_get(root, "job_key"));
    int own = k && strcmp(k, key) == 0;
    json_decref(root);
    return own;
}

static int write_report(struct job *j, const char *dir, const char *key, const struct compress_result *res,
                        struct sv_err *err) {
    json_t *mats = json_object();
    char buf[8192], name[256];
    int r = 0;
    for (int l = 0; l < j->c->n_layers && r == 0; l++) {
        if ((r = layer_meta(j, l, "report", buf, sizeof buf, err)) < 0)
            break;
        json_t *rep = json_loads(buf, 0, NULL);
        for (int p = 0; p < PROJ_COUNT; p++) {
            model_proj_prefix(l, p, name, sizeof name);
            json_t *e = json_object_get(rep, config_proj_name(p));
            if (e)
                json_object_set(mats, name, e);
        }
        json_decref(rep);
    }
    if (r < 0) {
        json_decref(mats);
        return r;
    }
    json_t *root = json_pack(
        "{s:s, s:f, s:s, s:i, s:i, s:i, s:s, s:s, s:b, s:I, s:I, s:I, s:I}", "method",
        compress_method_name(j->p->method), "ratio", j->p->ratio, "rank_rule",
        "k = floor(d_out*d_in*(1-ratio)/(d_out+d_in)) per q/k/v/o/gate/up/down; embeddings, norms, head kept",
        "nsamples", j->p->nsamples, "seqlen", j->p->seqlen, "seed", (int)j->p->seed, "calibration_windows",
        j->p->calib_first ? "first" : "random", "calibration", j->p->calib_path, "dense", j->p->dense,
        "linear_params_before", (json_int_t)res->params_before, "linear_params_after", (json_int_t)res->params_after,
        "bytes_before", (json_int_t)res->bytes_before, "bytes_after", (json_int_t)res->bytes_after);
    if (j->p->method == METHOD_ASVD)
        json_object_set_new(root, "alpha", json_real(job_alpha(j->p)));
    if (res->ppl_before > 0) {
        json_t *ev = json_pack("{s:s, s:i, s:f, s:f, s:s}", "text", j->p->eval_path, "seqlen",
                               j->p->eval_seqlen ? j->p->eval_seqlen : j->p->seqlen, "before", res->ppl_before,
                               "after", res->ppl_after, "protocol",
                               "whole text tokenized once with one BOS; non-overlapping windows of L tokens from "
                               "position 0; L-1 predictions per window; exp(mean NLL)");
        json_object_set_new(root, "perplexity", ev);
    }
    json_object_set_new(root, "job_key", json_string(key));
    json_object_set_new(root, "matrices", mats);
    char *text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
    json_decref(root);
    if (!text)
        return sv_err_set(err, -ENOMEM, "report: out of memory");
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/compression.json", dir);
    size_t n = strlen(text);
    text[n] = '\n';
    r = write_file_atomic(dir, path, text, n + 1, err);
    free(text);
    return r;
}

/* Builds the output in tmp (OUT.tmp): config, model, tokenizer files. */
static int assemble(struct job *j, const char *tmp, struct compress_result *res, struct sv_err *err) {
    char path[PATH_MAX * 2], src[PATH_MAX * 2];
    remove_tree(tmp);
    if (mkdir(tmp, 0755) < 0)
        return sv_err_set(err, -errno, "output '%s': %s", tmp, strerror(errno));
    int r = write_config(j, tmp, err);
    if (r == 0)
        r = write_model(j, tmp, &res->params_after, err);
    static const char *const extra[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                        "generation_config.json", "tokenizer.model"};
    for (size_t i = 0; i < sizeof extra / sizeof extra[0] && r == 0; i++) {
        snprintf(src, sizeof src, "%s/%s", j->p->model_dir, extra[i]);
        snprintf(path, sizeof path, "%s/%s", tmp, extra[i]);
        if (access(src, F_OK) == 0)
            r = copy_file(src, path, err);
    }
    if (r < 0)
        return r;
    snprintf(path, sizeof path, "%s/model.safetensors", tmp);
    res->bytes_after = file_size(path);
    for (size_t i = 0; i < st_shard_count(j->m->st); i++)
        res->bytes_before += file_size(st_shard_path(j->m->st, i));
    return 0;
}

/* Renames tmp over OUT. An existing OUT is replaced only with overwrite, or
 * when it is this job's own earlier output (same job key in its report: the
 * daemon died after publishing but before recording the job as done). */
static int publish(struct job *j, const char *tmp, const char *key, struct sv_err *err) {
    char parent[PATH_MAX];
    int r;
    if ((r = fsync_dir(tmp, err)) < 0)
        return r;
    if (access(j->p->out_dir, F_OK) == 0) {
        if (!j->p->overwrite && !own_output(j->p->out_dir, key))
            return sv_err_set(err, -EEXIST, "output directory '%s' appeared while the job ran", j->p->out_dir);
        char old[PATH_MAX + 16];
        snprintf(old, sizeof old, "%s.old", j->p->out_dir);
        remove_tree(old);
        if (rename(j->p->out_dir, old) < 0)
            return sv_err_set(err, -errno, "output '%s': %s", j->p->out_dir, strerror(errno));
        remove_tree(old);
    }
    if (rename(tmp, j->p->out_dir) < 0)
        return sv_err_set(err, -errno, "output '%s': %s", j->p->out_dir, strerror(errno));
    parent_dir(j->p->out_dir, parent, sizeof parent);
    return fsync_dir(parent, err);
}

static int eval_cancel(void *ctx) { return cancelled(ctx); }

int compress_run(const struct compress_params *p, const struct compress_hooks *h, struct compress_result *ret,
                 struct sv_err *err) {
    struct job j = {.p = p, .h = h, .t_start = mono_now(), .n_samples = p->nsamples, .T = p->seqlen};
    struct compress_result res = {0};
    char key[65], path[PATH_MAX + 64], hex[65] = "", next_hex[65];
    int r;
    struct layer_w lw = {0};
    struct stats st = {0};
    if ((r = compress_job_key(p, key, err)) < 0)
        return r;
    if ((r = compress_params_check(p, err)) < 0 && !(r == -EEXIST && own_output(p->out_dir, key)))
        return r;
    snprintf(path, sizeof path, "%s/KEY", p->work_dir);
    FILE *kf = fopen(path, "r");
    if (kf) {
        char old[80] = "";
        if (!fgets(old, sizeof old, kf))
            old[0] = '\0';
        fclose(kf);
        old[strcspn(old, "\n")] = '\0';
        if (strcmp(old, key) != 0)
            return sv_err_set(err, -ESTALE,
                              "inputs changed since the job started (job key %.12s..., now %.12s...): model, "
                              "calibration file or parameters differ; submit a new job",
                              old, key);
    } else {
        char line[66];
        snprintf(line, sizeof line, "%s\n", key);
        if ((r = write_file_atomic(p->work_dir, path, line, 65, err)) < 0)
            return r;
    }
    if ((r = model_open(&j.m, p->model_dir, err)) < 0)
        return r;
    j.c = &j.m->cfg;
    const struct config *c = j.c;
    for (int l = 0; l < c->n_layers; l++) /* factored inputs are not supported: recompress the original */
        for (int q = 0; q < PROJ_COUNT; q++)
            if (c->rank[l][q]) {
                r = sv_err_set(err, -ENOTSUP, "model '%s' is already low-rank; compress the original model", p->model_dir);
                goto out;
            }
    j.rank = calloc((size_t)c->n_layers, sizeof *j.rank);
    if (!j.rank) {
        r = sv_err_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    res.params_before = model_linear_params(j.m);
    for (int l = 0; l < c->n_layers; l++)
        for (int q = 0; q < PROJ_COUNT; q++) {
            int d_out, d_in;
            config_proj_shape(c, q, &d_out, &d_in);
            j.rank[l][q] = lowrank_rank_for_ratio(d_out, d_in, p->ratio);
        }

    int eval_L = p->eval_seqlen ? p->eval_seqlen : p->seqlen;
    if (p->eval_path[0]) {
        progress(&j, 0, "eval", 0);
        struct ppl_result pr;
        if ((r = ppl_eval(p->model_dir, p->eval_path, eval_L, (size_t)p->eval_max_windows, eval_cancel, &j, &pr, err)) < 0)
            goto out;
        res.ppl_before = pr.ppl;
    }

    /* Resume: the first layer without an intact committed checkpoint. */
    int l0 = 0;
    while (l0 < c->n_layers) {
        if ((r = layer_committed(&j, l0, err)) < 0)
            goto out;
        if (r == 0)
            break;
        l0++;
    }
    r = 0;
    res.layers_resumed = l0;
    j.layers_done = l0;
    int need_calib = p->method != METHOD_SVD;
    if (need_calib && l0 < c->n_layers) {
        if (l0 == 0) {
            progress(&j, 0, "calibrate", 0);
            if ((r = make_hidden0(&j, hex, err)) < 0)
                goto out;
        } else if ((r = layer_meta(&j, l0 - 1, "hidden_next_sha256", hex, sizeof hex, err)) < 0) {
            goto out;
        }
    }
    for (int l = l0; l < c->n_layers; l++) {
        if (cancelled(&j)) {
            r = sv_err_set(err, -ECANCELED, "cancelled before layer %d", l);
            goto out;
        }
        progress(&j, l, "statistics", 0);
        if ((r = model_layer_load(j.m, l, &lw, err)) < 0)
            goto out;
        next_hex[0] = '\0';
        if (need_calib) {
            int d = c->hidden, qw = c->n_heads * c->head_dim, ok = 1;
            st = (struct stats){.d = d, .qw = qw, .ff = c->intermediate, .width = {d, qw, d, c->intermediate}};
            if (p->method == METHOD_SVDLLM) {
                st.g_attn = calloc((size_t)d * d, sizeof(double));
                st.g_o = calloc((size_t)qw * qw, sizeof(double));
                st.g_mlp = calloc((size_t)d * d, sizeof(double));
                st.c_down = calloc((size_t)d * d, sizeof(double));
                ok = st.g_attn && st.g_o && st.g_mlp && st.c_down;
            } else {
                for (int g = 0; g < 4; g++) {
                    st.abs_sum[g] = calloc((size_t)st.width[g], sizeof(double));
                    st.sq_sum[g] = calloc((size_t)st.width[g], sizeof(double));
                    ok = ok && st.abs_sum[g] && st.sq_sum[g];
                }
            }
            if (!ok) {
                r = sv_err_set(err, -ENOMEM, "layer %d: out of memory for statistics", l);
                goto out;
            }
            if ((r = calibrate_layer(&j, &lw, &st, next_hex, hex, err)) < 0)
                goto out;
        }
        struct compress_checkpoint ck;
        if ((r = factor_layer(&j, &lw, &st, next_hex, &ck, err)) < 0)
            goto out;
        stats_free(&st);
        memset(&st, 0, sizeof st);
        model_layer_free(&lw);
        if (h && h->layer_done && (r = h->layer_done(h->ctx, l, &ck, err)) < 0)
            goto out;
        fault_point("after-commit", l);
        /* Committed: the input states of this layer are no longer needed. */
        work_path(&j, path, sizeof path, "hidden-%d.f32", l);
        unlink(path);
        memcpy(hex, next_hex, sizeof hex);
        j.layers_done = l + 1;
        progress(&j, l + 1, "statistics", 0);
        for (int i = 0; i < 3000 && fault_is("stall-after-commit", l) && !cancelled(&j); i++)
            usleep(20000);
    }
    progress(&j, c->n_layers, "assemble", 0);
    char tmp[PATH_MAX + 16];
    snprintf(tmp, sizeof tmp, "%s.tmp", p->out_dir);
    if ((r = assemble(&j, tmp, &res, err)) < 0)
        goto out;
    if (p->eval_path[0]) {
        progress(&j, c->n_layers, "eval", 0.5);
        struct ppl_result pr;
        if ((r = ppl_eval(tmp, p->eval_path, eval_L, (size_t)p->eval_max_windows, eval_cancel, &j, &pr, err)) < 0)
            goto out;
        res.ppl_after = pr.ppl;
    }
    if ((r = write_report(&j, tmp, key, &res, err)) < 0 || (r = publish(&j, tmp, key, err)) < 0)
        goto out;
    res.seconds = mono_now() - j.t_start;
    j.layers_done = c->n_layers + 1;
    progress(&j, c->n_layers, "done", 1);
    if (ret)
        *ret = res;
out:
    stats_free(&st);
    model_layer_free(&lw);
    free(j.rank);
    model_free(j.m);
    return r;
}
