/* compress: one compression job, layer by layer, checkpointed.
 *
 * Design note (the durability protocol is in compress.h and daemon/store.c).
 * Work directory of a job:
 *     KEY                  the job key (hash of every input); a resume whose
 *                          inputs changed is refused
 *     hidden-L.f32         calibration hidden states entering layer L:
 *                          (nsamples, seqlen, hidden) f32, written atomically;
 *                          for rom, svdllm-update and rrr those of the
 *                          COMPRESSED model (layers 0..L-1 already replaced)
 *     orig-L.f32           svdllm-update and rrr: the original model's states
 *     ranks.json           --ranks auto: the allocation, written once before
 *                          layer 0 (pre-L.f32 are the pre-pass's states)
 *     layer-L.safetensors  layer L's factors (f32), LoRAP's pruned MLP, and in
 *                          __metadata__ the per-matrix report and the sha256
 *                          of hidden-(L+1) (and orig-(L+1))
 * Layer L is done when the store has its row (file, size, sha256). On resume
 * the first layer without a row is redone from hidden-L (and orig-L), whose
 * checksums the previous layer's file records. Same inputs give the same
 * bytes: fixed window choice, fixed chunk order, BLIS's deterministic
 * partitioning, and no timestamps in anything that reaches the model files.
 *
 * One core for every method (lowrank.h: a statistic, then a projection);
 * they differ only in the statistic and in which model produced it:
 *   svd      G = I, no calibration.
 *   svdllm   G_attn = X^T X of the attention input (shared by q, k, v), G_o of
 *            o_proj's input, G_mlp of the MLP input (gate, up), and C_down =
 *            Y^T Y of down_proj's OUTPUT (hidden^2 instead of ffn^2), all from
 *            the original model, accumulated in double.
 *   asvd, awsvd, lorap's attention: G = diag(s^2) from channel statistics.
 *   rom      the same Grams, but measured on the compressed model, and within
 *            a layer in four stages (q/k/v; o; gate/up; down), each stage's
 *            pass running the layer with the earlier stages already
 *            compressed and stopping at the stage's tap (FORWARD_STOP).
 *   svdllm-update  B = U_k^T W from svdllm's statistics; then, per stage, the
 *            original layer on the original states (targets Y) runs in
 *            lockstep with the compressed-so-far layer on the compressed
 *            states (Z = X' B^T), accumulating Z^T Z (k^2) and Y^T Z
 *            (d_out k): A = (Y^T Z)(Z^T Z)^+. DESIGN.md's A = C'U_k(U_k^T C'
 *            U_k)^-1 with C' = W G' W^T fits the compressed inputs to X' W^T;
 *            fitting them to the original outputs X W^T is what SVD-LLM's
 *            update is for (undo upstream error), and it needs no d_in^2
 *            statistic even for down_proj.
 *   lorap    attention as awsvd with the (v+o):(q+k) split; MLP channels
 *            pruned by activation-weighted magnitude (lorap_channels()).
 *   rrr      both factors free: per stage, the two streams of the update
 *            give G' = X'^T X' and H = X'^T X of the stage's input, and the
 *            reduced-rank regression of the original outputs on X' (ridge
 *            toward W, its weight chosen on held-out windows: rrr_layer())
 *            replaces each matrix.
 * Cost per layer, in passes of the layer over the calibration states: 1 for
 * the whitening methods, up to 5 for rom (four partial), up to 10 for the
 * update (eight partial), 6 for rrr (four two-stream partial, one two-stream
 * full); --ranks auto adds one pre-pass over the model. */
#include "compress.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
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

#define KEY_VERSION "svdllm-job-v2"
#define CHUNK_TOKENS 4096
#define CHUNK_BYTES ((size_t)256 << 20)

static const char *const method_names[METHOD_COUNT] = {"svd", "svdllm", "asvd", "awsvd", "svdllm-update", "rom", "lorap", "rrr"};
static const char *const ranks_names[RANKS_COUNT] = {"default", "uniform", "lorap", "last-n", "auto"};

const char *compress_ranks_name(enum compress_ranks r) { return (r >= 0 && r < RANKS_COUNT) ? ranks_names[r] : "?"; }

int compress_ranks_parse(const char *s, enum compress_ranks *ret) {
    for (int i = 0; i < RANKS_COUNT; i++)
        if (strcmp(s, ranks_names[i]) == 0) {
            *ret = (enum compress_ranks)i;
            return 0;
        }
    return -EINVAL;
}

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

/* rom, svdllm-update and rrr measure on the compressed model, layer by
 * layer; the update and rrr also keep the original model's stream. */
static int method_sequential(enum compress_method m) {
    return m == METHOD_ROM || m == METHOD_SVDLLM_UPDATE || m == METHOD_RRR;
}
static int method_two_streams(enum compress_method m) { return m == METHOD_SVDLLM_UPDATE || m == METHOD_RRR; }

/* Crash injection for the durability tests (in the spirit of SQLite's
 * crash tests): SVDLLM_FAULT="after-commit:L" kills the process with SIGKILL
 * right after layer L's checkpoint row is committed; "mid-write:L" kills it
 * halfway through writing layer L's checkpoint file; "stall-after-commit:L"
 * holds the job after layer L's commit (up to 60 s, until it is cancelled or
 * the file named by SVDLLM_FAULT_RELEASE exists),
 * so a test can cancel a job that is certainly running. Unset in production. */
static int fault_is(const char *kind, int layer) {
    const char *f = getenv("SVDLLM_FAULT");
    size_t n = strlen(kind);
    return f && strncmp(f, kind, n) == 0 && f[n] == ':' && atoi(f + n + 1) == layer;
}

/* stall-after-commit also ends once the file $SVDLLM_FAULT_RELEASE exists. */
static int fault_released(void) {
    const char *f = getenv("SVDLLM_FAULT_RELEASE");
    return f && *f && access(f, F_OK) == 0;
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

/* Removes path and, if it is a directory, what it holds. A symlink is
 * removed, never followed (it may point anywhere). */
static int remove_tree(const char *path) {
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        if (fd >= 0)
            close(fd);
        return unlink(path) < 0 && errno != ENOENT ? -errno : 0;
    }
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
                          compress_ranks_name(p->ranks));
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
    snprintf(buf, sizeof buf, "ranks=%s\nlayers=%d\nattn_split=%.17g\ncentered=%d\n", compress_ranks_name(p->ranks),
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

/* ---- the job ------------------------------------------------------------- */

/* Where this run's time went (compression.json "timing"; a resumed job
 * counts only what it redid). statistics: inside the forward taps (Gram and
 * cross-product accumulation); forward: the layer passes minus that; write:
 * calibration-state I/O and checkpoints. */
struct job_timing {
    double forward, statistics, factorize, write, assemble, eval;
    long passes;
};

/* Seconds spent in this thread's taps (a job runs on one thread). */
static __thread double tap_seconds;

struct job {
    const struct compress_params *p;
    const struct compress_hooks *h;
    struct model *m;
    const struct config *c;
    int (*rank)[PROJ_COUNT];
    int n_samples, T;
    double t_start;
    int layers_done;
    enum compress_ranks ranks;   /* resolved: never RANKS_DEFAULT */
    int ff_keep;                 /* lorap: intermediate channels kept; 0 = not pruned */
    struct job_timing t;
    /* Progress (see the cost model below), in cost units: the work before
     * the current segment, the segment's start and weight; the highest
     * fraction reported; what stream_pass reports its chunks as. */
    struct cost *cost;
    double at, seg_at, seg_w, f_last;
    const char *pass_phase;
};

static int cancelled(const struct job *j) { return j->h && j->h->should_cancel && j->h->should_cancel(j->h->ctx); }

/* The submitter's credentials around an access to their files (see
 * compress_hooks.user_fs): enter, access, leave, nothing else between. */
static int user_enter(const struct job *j, struct sv_err *err) {
    return j->h && j->h->user_fs ? j->h->user_fs(j->h->ctx, 1, err) : 0;
}

/* Back to the daemon's credentials; returns r, or the leave's own error
 * when r is 0. */
static int user_leave(const struct job *j, int r, struct sv_err *err) {
    if (!j->h || !j->h->user_fs)
        return r;
    struct sv_err e = {0};
    int l = j->h->user_fs(j->h->ctx, 0, &e);
    if (l < 0 && r == 0) {
        if (err)
            *err = e;
        return l;
    }
    return r;
}

/* ---- progress: a fixed cost model ------------------------------------------
 *
 * fraction = (work done) / (work of the whole job), both in one unit: a
 * layer pass, one decoder layer run over the calibration states. The
 * weights are the phases' costs measured at LLaMA-7B shapes, where jobs are
 * long enough for progress to matter (README, bench/layer7b.sh: 32 x 128
 * tokens, svdllm per layer: pass and statistics 16 s, the seven
 * factorizations 86 s (5.4 passes; q/k/v 28 %, o 9.5 %, gate/up 53 %, down
 * 9.5 % of their flops), states and checkpoint 4 s, assembly 1 s; rom's and
 * the update's partial passes by the share of the layer's flops before
 * their tap, which gives their measured 1.14x and 1.61x of svdllm). The
 * scale depends only on the job's parameters and the layer count, so every
 * run of a job (a resume included) uses the same one: a resumed run starts
 * at the cost of its checkpointed layers (compress_fraction_resumed()), and
 * what it repeats (the evaluation before, a regeneration of the states)
 * holds the fraction where it is. Within a run the fraction never
 * decreases. Order of the phases:
 *   evaluation before (if any) | hidden-0 | --ranks auto pre-pass (per
 *   layer: a pass and the spectra) | layers 0..L-1 | assembly | evaluation
 *   after. */
#define COST_FACTOR 5.4      /* a layer's seven factorizations */
#define COST_WRITE 0.25      /* a layer's states and checkpoint */
#define COST_SPECTRA 3.0     /* --ranks auto: a layer's eigenvalues (tridiagonal reductions) */
#define COST_CALIB0 0.1      /* hidden-0: embeddings of the windows */
#define COST_ASSEMBLE 0.06   /* per layer: copying the output */
#define COST_REFIT 0.02      /* svdllm-update: a stage's least-squares refit */
#define COST_FINAL 0.6       /* a compressed layer's pass (rom, update): the next layer's states */
#define RRR_COST_FACTOR 11.0 /* rrr: a stage's factorizations per svdllm one (eight held-out candidates, the fit,
                                lambda = 0, the update's reference) */
static const double factor_share[4] = {0.28, 0.095, 0.53, 0.095};   /* stages q/k/v, o, gate/up, down */
static const double rom_pass[4] = {0.02, 0.25, 0.33, 1.0};          /* each stage's pass to its tap */
static const double upd_pass[4] = {0.27, 0.58, 1.1, 1.8};           /* original + compressed stream */

struct cost {
    enum compress_method method;
    int L, first;                /* layers before `first` stay dense (last-n) */
    int auto_ranks;
    double eval_w, pre, total;   /* one evaluation; everything before layer 0; the whole job */
};

static enum compress_ranks resolve_ranks(enum compress_method m, enum compress_ranks ranks, int layers) {
    return ranks != RANKS_DEFAULT ? ranks : m == METHOD_LORAP ? RANKS_LORAP : layers ? RANKS_LAST_N : RANKS_UNIFORM;
}

/* Layer l's weight; the segments compress_run and seq_layer report add up to it. */
static double cost_layer(const struct cost *c, int l) {
    int comp = l >= c->first;
    double w = COST_WRITE;
    switch (c->method) {
    case METHOD_ROM:
        for (int sg = 0; sg < 4 && comp; sg++)
            w += rom_pass[sg] + COST_FACTOR * factor_share[sg];
        return w + (comp ? COST_FINAL : 1.0);
    case METHOD_SVDLLM_UPDATE:
        w += 1.0 + (comp ? COST_FACTOR : 0);
        for (int sg = 0; sg < 4 && comp; sg++)
            w += upd_pass[sg] + COST_REFIT;
        return w + (comp ? COST_FINAL : 1.0);
    case METHOD_RRR: /* the final pass runs both streams */
        for (int sg = 0; sg < 4 && comp; sg++)
            w += upd_pass[sg] + COST_FACTOR * factor_share[sg] * RRR_COST_FACTOR;
        return w + 1.0 + COST_FINAL;
    case METHOD_LORAP:
        return w + 1.0 + (comp ? COST_FACTOR * (factor_share[0] + factor_share[1]) + COST_REFIT : 0);
    case METHOD_SVD:
        return w + (comp ? COST_FACTOR : 0);
    default:
        return w + 1.0 + (comp ? COST_FACTOR : 0);
    }
}

static double cost_layer_start(const struct cost *c, int l) {
    double at = c->pre;
    for (int i = 0; i < l && i < c->L; i++)
        at += cost_layer(c, i);
    return at;
}

static void cost_init(struct cost *c, const struct compress_cost_in *in, int L) {
    enum compress_ranks rk = resolve_ranks(in->method, in->ranks, in->layers);
    *c = (struct cost){.method = in->method, .L = L, .auto_ranks = rk == RANKS_AUTO};
    c->first = rk == RANKS_LAST_N && in->layers > 0 && in->layers < L ? L - in->layers : 0;
    if (in->eval) {
        /* The whole model (L layers and the head) over the evaluation's
         * tokens; "all windows" is counted as four times the calibration's. */
        double calib = (double)in->nsamples * in->seqlen, L_e = in->eval_seqlen ? in->eval_seqlen : in->seqlen;
        double tokens = in->eval_max_windows > 0 ? in->eval_max_windows * L_e : 4 * calib;
        c->eval_w = calib > 0 ? (L + 1) * tokens / calib : 0;
    }
    int calib = in->method != METHOD_SVD;
    c->pre = c->eval_w + (calib ? COST_CALIB0 : 0) + (c->auto_ranks ? L * ((calib ? 1.0 : 0) + COST_SPECTRA) : 0);
    c->total = cost_layer_start(c, L) + L * COST_ASSEMBLE + c->eval_w;
}

void compress_cost_in_of(const struct compress_params *p, struct compress_cost_in *ret) {
    *ret = (struct compress_cost_in){
        .method = p->method, .ranks = p->ranks, .layers = p->layers, .eval = p->eval_path[0] != '\0',
        .nsamples = p->nsamples, .seqlen = p->seqlen, .eval_seqlen = p->eval_seqlen,
        .eval_max_windows = p->eval_max_windows,
    };
}

double compress_fraction_resumed(const struct compress_cost_in *in, int n_layers, int layers_done) {
    if (n_layers <= 0 || layers_done <= 0)
        return 0;
    struct cost c;
    cost_init(&c, in, n_layers);
    double f = c.total > 0 ? cost_layer_start(&c, layers_done) / c.total : 0;
    return f < 0 ? 0 : f > 1 ? 1 : f;
}

/* The next segment of the job: weight w (cost units) starting where the last ended. */
static void seg(struct job *j, double w) {
    j->seg_at = j->at;
    j->seg_w = w;
    j->at += w;
}

/* A zero-weight segment at absolute position at (a layer's start, a resume). */
static void seg_at(struct job *j, double at) {
    j->at = j->seg_at = at;
    j->seg_w = 0;
}

/* Reports phase at t (0..1) of the current segment. Callers from two
 * threads (factor_worker) hold their pool's mutex. */
static void progress(struct job *j, int layer, const char *phase, double t) {
    if (!j->h || !j->h->progress)
        return;
    t = t < 0 ? 0 : t > 1 ? 1 : t;
    double f = j->cost && j->cost->total > 0 ? (j->seg_at + t * j->seg_w) / j->cost->total : 0;
    f = f > 1 ? 1 : f;
    if (f < j->f_last)
        f = j->f_last;
    j->f_last = f;
    struct compress_progress pr = {
        .layer = layer, .n_layers = j->c->n_layers, .layers_done = j->layers_done, .phase = phase, .fraction = f,
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
    int r = user_enter(j, err);
    if (r < 0)
        return r;
    r = corpus_load(j->p->calib_path, j->p->model_dir, j->c->vocab, &ids, &n, err);
    if ((r = user_leave(j, r, err)) < 0) {
        free(ids);
        return r;
    }
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
    /* asvd / awsvd / lorap: per input channel sum |x| and sum x^2, for the
     * inputs of q/k/v (0), o (1), gate/up (2), down (3); tokens seen in ntok. */
    double *abs_sum[4], *sq_sum[4];
    int width[4];
    double ntok;
};

enum stats_kind { STATS_NONE = 0, STATS_GRAMS, STATS_DIAG };

/* What a non-sequential method measures on the original model. */
static enum stats_kind stats_kind_of(enum compress_method m) {
    return m == METHOD_SVD ? STATS_NONE : m == METHOD_SVDLLM ? STATS_GRAMS : STATS_DIAG;
}

static int stats_group(enum config_proj p) {
    return p <= PROJ_V ? 0 : p == PROJ_O ? 1 : p <= PROJ_UP ? 2 : 3;
}

static int stats_input_body(struct stats *s, enum config_proj p, const float *x, size_t ntok, int width) {
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

static int stats_input(void *ctx, enum config_proj p, const float *x, size_t ntok, int width) {
    double t0 = mono_now();
    int r = stats_input_body(ctx, p, x, ntok, width);
    tap_seconds += mono_now() - t0;
    return r;
}

static int stats_output(void *ctx, enum config_proj p, const float *y, size_t ntok, int width) {
    struct stats *s = ctx;
    if (p != PROJ_DOWN || !s->c_down)
        return 0;
    double t0 = mono_now();
    int r = lowrank_gram_accum(s->c_down, y, ntok, width, NULL);
    tap_seconds += mono_now() - t0;
    return r;
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
    memset(s, 0, sizeof *s);
}

static int stats_alloc(const struct job *j, enum stats_kind kind, struct stats *st, struct sv_err *err) {
    const struct config *c = j->c;
    int d = c->hidden, qw = c->n_heads * c->head_dim, ok = 1;
    *st = (struct stats){.d = d, .qw = qw, .ff = c->intermediate, .width = {d, qw, d, c->intermediate}};
    if (kind == STATS_GRAMS) {
        st->g_attn = calloc((size_t)d * d, sizeof(double));
        st->g_o = calloc((size_t)qw * qw, sizeof(double));
        st->g_mlp = calloc((size_t)d * d, sizeof(double));
        st->c_down = calloc((size_t)d * d, sizeof(double));
        ok = st->g_attn && st->g_o && st->g_mlp && st->c_down;
    } else if (kind == STATS_DIAG) {
        for (int g = 0; g < 4; g++) {
            st->abs_sum[g] = calloc((size_t)st->width[g], sizeof(double));
            st->sq_sum[g] = calloc((size_t)st->width[g], sizeof(double));
            ok = ok && st->abs_sum[g] && st->sq_sum[g];
        }
    }
    if (!ok) {
        stats_free(st);
        return sv_err_set(err, -ENOMEM, "out of memory for the layer statistics");
    }
    return 0;
}

/* One pass of calibration states through a layer. Several streams run in
 * lockstep, chunk by chunk and in array order (the closed-form update needs
 * the original model's outputs of a chunk next to the compressed model's
 * inputs of the same tokens). Each stream reads `in`, checks its sha256
 * against in_hex when given, runs lw with its taps and, when `out` is set,
 * writes the results atomically and returns their sha256 in out_hex. A tap
 * may stop the layer early (FORWARD_STOP); such a stream has no `out`. */
struct stream {
    char in[PATH_MAX + 64];
    const char *in_hex;
    char out[PATH_MAX + 64];
    char *out_hex;
    const struct layer_w *lw;
    const struct forward_taps *taps;
    /* private */
    int fd_in, fd_out;
    float *x;
    struct sha256 h_in, h_out;
};

static int stream_pass(struct job *j, int layer, struct stream *s, int ns, struct sv_err *err) {
    const size_t d = (size_t)j->c->hidden, T = (size_t)j->T, row = T * d * sizeof(float);
    char tmp[2][PATH_MAX + 72];
    /* Samples per chunk: up to CHUNK_TOKENS tokens, fewer when the forward
     * pass's activations of a chunk (the state, the norm, q/k/v/attention,
     * gate/up: about 4 (3 d + 2 qw + 2 kvw + 2 ff) bytes a token) would pass
     * CHUNK_BYTES: 1280 tokens at LLaMA-7B, so one layer's memory stays
     * bounded whatever the calibration size. */
    const struct config *c = j->c;
    size_t tok_bytes = 4 * (3 * d + 2 * (size_t)c->n_heads * c->head_dim + 2 * (size_t)c->n_kv_heads * c->head_dim +
                            2 * (size_t)c->intermediate);
    size_t per_tok = CHUNK_TOKENS, cap = CHUNK_BYTES / tok_bytes;
    per_tok = per_tok < cap ? per_tok : cap;
    int per = (int)(per_tok / T), r = 0;
    if (per < 1)
        per = 1;
    for (int i = 0; i < ns; i++) {
        s[i].fd_in = s[i].fd_out = -1;
        s[i].x = NULL;
    }
    for (int i = 0; i < ns; i++) {
        if ((s[i].fd_in = open(s[i].in, O_RDONLY | O_CLOEXEC)) < 0) {
            r = sv_err_set(err, -errno, "calibration states '%s': %s", s[i].in, strerror(errno));
            goto out;
        }
        if (!(s[i].x = malloc((size_t)per * row))) {
            r = sv_err_set(err, -ENOMEM, "calibration: out of memory");
            goto out;
        }
        if (s[i].out[0]) {
            snprintf(tmp[i], sizeof tmp[i], "%s.tmp", s[i].out);
            if ((s[i].fd_out = open(tmp[i], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) < 0) {
                r = sv_err_set(err, -errno, "file '%s': %s", tmp[i], strerror(errno));
                goto out;
            }
        }
        sha256_init(&s[i].h_in);
        sha256_init(&s[i].h_out);
        j->t.passes++;
    }
    for (int s0 = 0; s0 < j->n_samples; s0 += per) {
        int nb = j->n_samples - s0 < per ? j->n_samples - s0 : per;
        size_t want = (size_t)nb * row;
        for (int i = 0; i < ns; i++) {
            size_t got = 0;
            double t_io = mono_now();
            while (got < want) {
                ssize_t k = pread(s[i].fd_in, (char *)s[i].x + got, want - got, (off_t)((size_t)s0 * row + got));
                if (k <= 0) {
                    r = sv_err_set(err, -EIO, "calibration states '%s' are truncated (restart the job)", s[i].in);
                    goto out;
                }
                got += (size_t)k;
            }
            if (s[i].in_hex)
                sha256_update(&s[i].h_in, s[i].x, want);
            double t_fw = mono_now(), tap0 = tap_seconds;
            j->t.write += t_fw - t_io;
            if ((r = forward_layer(j->c, s[i].lw, s[i].x, nb, (int)T, s[i].taps, err)) < 0)
                goto out;
            r = 0;
            double t_end = mono_now();
            j->t.statistics += tap_seconds - tap0;
            j->t.forward += t_end - t_fw - (tap_seconds - tap0);
            if (s[i].fd_out >= 0) {
                sha256_update(&s[i].h_out, s[i].x, want);
                if ((r = write_full(s[i].fd_out, s[i].x, want, tmp[i], err)) < 0)
                    goto out;
            }
            j->t.write += mono_now() - t_end;
        }
        if (cancelled(j)) {
            r = sv_err_set(err, -ECANCELED, "cancelled");
            goto out;
        }
        progress(j, layer, j->pass_phase ? j->pass_phase : "statistics", (double)(s0 + nb) / j->n_samples);
    }
    for (int i = 0; i < ns; i++) {
        uint8_t dg[32];
        char hex[65];
        if (s[i].in_hex) {
            sha256_final(&s[i].h_in, dg);
            sha256_hex(dg, hex);
            if (strcmp(hex, s[i].in_hex) != 0) {
                r = sv_err_set(err, -EIO, "calibration states '%s' do not match their recorded checksum", s[i].in);
                goto out;
            }
        }
        if (s[i].fd_out >= 0) {
            r = tmp_finish(s[i].fd_out, 0, tmp[i], s[i].out, j->p->work_dir, err);
            s[i].fd_out = -1;
            if (r < 0)
                goto out;
            sha256_final(&s[i].h_out, dg);
            sha256_hex(dg, s[i].out_hex);
        }
    }
out:
    for (int i = 0; i < ns; i++) {
        if (s[i].fd_out >= 0) {
            close(s[i].fd_out);
            unlink(tmp[i]);
        }
        if (s[i].fd_in >= 0)
            close(s[i].fd_in);
        free(s[i].x);
    }
    return r;
}

/* Runs the original layer over the states in in_path, accumulating the
 * statistics in s and writing the next layer's states to out_path. */
static int calibrate_layer(struct job *j, const struct layer_w *lw, struct stats *s, const char *in_path,
                           const char *in_hex, const char *out_path, char next_hex[65], struct sv_err *err) {
    struct forward_taps taps = {.ctx = s, .input = stats_input, .output = stats_output};
    struct stream st = {.in_hex = in_hex, .out_hex = next_hex, .lw = lw, .taps = &taps};
    snprintf(st.in, sizeof st.in, "%s", in_path);
    snprintf(st.out, sizeof st.out, "%s", out_path);
    int r = stream_pass(j, lw->index, &st, 1, err);
    if (r == 0 && s->g_attn) {
        lowrank_gram_symmetrize(s->g_attn, s->d);
        lowrank_gram_symmetrize(s->g_o, s->qw);
        lowrank_gram_symmetrize(s->g_mlp, s->d);
        lowrank_gram_symmetrize(s->c_down, s->d);
    }
    return r;
}

enum mat_kind { MAT_FACTORED = 0, MAT_DENSE, MAT_PRUNED };

/* rrr's ridge grid (rrr_layer) */
#define RRR_NLAMBDA 8
static const double rrr_lambdas[RRR_NLAMBDA] = {0, 1e-3, 1e-2, 0.1, 0.3, 1, 3, 10};

struct mat_report {
    int rank, k_effective;
    double energy, discarded, seconds;
    int fallback;
    double shift;
    double gflop;
    char side;
    enum mat_kind kind;
    int channels;                  /* pruned: intermediate channels kept */
    int refit;                     /* svdllm-update: A was refitted */
    int refit_dropped;
    double loss_before, loss_after; /* svdllm-update: ||Y - Z A^T||^2 with A = U_k, then refitted; rrr: its loss */
    int rrr, rrr_held;             /* rrr; lambda chosen on held-out windows */
    double rrr_lambda, rrr_heldout[RRR_NLAMBDA];
    double loss_svdllm, loss_update; /* rrr: svdllm's factors and the update's refit on the same inputs */
    double loss_lambda0;           /* rrr: the fit with lambda = 0 */
};

static int report_json(const struct mat_report *rep, char **ret) {
    json_t *o = json_object();
    for (int p = 0; p < PROJ_COUNT; p++) {
        json_t *e;
        if (rep[p].kind == MAT_DENSE)
            e = json_pack("{s:s}", "kept", "dense");
        else if (rep[p].kind == MAT_PRUNED)
            e = json_pack("{s:s, s:i, s:f}", "pruned", "lorap-channels", "channels_kept", rep[p].channels, "seconds",
                          rep[p].seconds);
        else
            e = json_pack("{s:i, s:i, s:f, s:f, s:s, s:f, s:s, s:f, s:f}", "rank", rep[p].rank, "k_effective",
                          rep[p].k_effective, "retained_energy", rep[p].energy, "discarded", rep[p].discarded,
                          "fallback", rep[p].fallback ? "shifted-cholesky" : "none", "shift", rep[p].shift,
                          "side", rep[p].side == 'i' ? "input" : "output", "gflop", rep[p].gflop, "seconds",
                          rep[p].seconds);
        if (rep[p].refit) {
            json_object_set_new(e, "refit_loss_before", json_real(rep[p].loss_before));
            json_object_set_new(e, "refit_loss_after", json_real(rep[p].loss_after));
            json_object_set_new(e, "refit_dropped_directions", json_integer(rep[p].refit_dropped));
        }
        if (rep[p].rrr) {
            json_object_set_new(e, "rrr_lambda", json_real(rep[p].rrr_lambda));
            json_object_set_new(e, "rrr_lambda_rule", json_string(rep[p].rrr_held ? "held-out" : "fixed"));
            if (rep[p].rrr_held) {
                json_t *a = json_array();
                for (int li = 0; li < RRR_NLAMBDA; li++)
                    json_array_append_new(a, json_real(rep[p].rrr_heldout[li]));
                json_object_set_new(e, "heldout_loss", a);
            }
            json_object_set_new(e, "calib_loss", json_real(rep[p].loss_after));
            json_object_set_new(e, "calib_loss_lambda0", json_real(rep[p].loss_lambda0));
            json_object_set_new(e, "calib_loss_svdllm", json_real(rep[p].loss_svdllm));
            json_object_set_new(e, "calib_loss_update", json_real(rep[p].loss_update));
        }
        json_object_set_new(o, config_proj_name(p), e);
    }
    *ret = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
    json_decref(o);
    return *ret ? 0 : -ENOMEM;
}

static void report_factored(struct mat_report *rep, const struct lowrank_result *res, double seconds) {
    *rep = (struct mat_report){.rank = res->k, .k_effective = res->k_effective, .energy = res->energy,
                               .discarded = res->discarded, .seconds = seconds, .fallback = (int)res->fallback,
                               .shift = res->shift, .gflop = res->gflop, .side = res->side};
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

/* The statistic of matrix p under the job's (non-sequential) method: g (an
 * input Gram) or cout (an output covariance), possibly built into *own. */
static int method_statistic(const struct job *j, enum compress_method m, const struct stats *s, enum config_proj p,
                            const struct linear *lin, double **own, const double **g, const double **cout,
                            const char *what, struct sv_err *err) {
    *own = NULL;
    *g = *cout = NULL;
    if (m == METHOD_SVDLLM || m == METHOD_SVDLLM_UPDATE || m == METHOD_ROM) {
        if (p == PROJ_DOWN && lin->d_out <= lin->d_in)
            *cout = s->c_down;
        else if (p == PROJ_DOWN)
            return sv_err_set(err, -ENOTSUP, "%s: ffn narrower than hidden is not supported", what);
        else
            *g = p <= PROJ_V ? s->g_attn : p == PROJ_O ? s->g_o : s->g_mlp;
        return 0;
    }
    if (m == METHOD_ASVD || m == METHOD_AWSVD || m == METHOD_LORAP)
        return diag_statistic(j, s, p, lin, own, g, cout, what, err);
    return 0; /* svd: G = I */
}

/* Where matrix p's Gram lives (q/k/v share the attention input's, gate/up
 * the MLP input's; down_proj's is its output covariance). */
static double **group_gram(struct stats *s, int p) {
    return p <= PROJ_V ? &s->g_attn : p == PROJ_O ? &s->g_o : p <= PROJ_UP ? &s->g_mlp : &s->c_down;
}

/* Non-sequential methods: every matrix with rank > 0 from its statistic.
 *
 * Two matrices are factored side by side when the job has two or more
 * threads, each with half of them for BLIS: the tridiagonal reduction that
 * dominates at LLaMA-7B (dsytrd, half its flops in a memory-bound dsymv that
 * BLIS runs on one thread) took 7.4 s on 2 threads and 8.6 s on 1, and the
 * MRRR step is single-threaded, so one matrix at a time left a core idle for
 * most of the factorization. Each matrix's arithmetic does not depend on
 * which worker runs it (single-threaded BLIS and LAPACK are deterministic),
 * so the bytes are the same as one at a time. Input-side matrices (gate,
 * up: the largest working set, 0.5 GiB at 7B) never run together, so peak
 * memory stays that of one of them plus one output-side matrix.
 * A shared Gram is whitened (Cholesky) once, before the workers start, and
 * freed as soon as it is: at LLaMA-7B a Gram is 128 MiB. drop_w: each W is
 * freed once factored (the caller needs only the factors and the shapes). */
struct factor_pool {
    struct job *j;
    enum compress_method m;
    struct layer_w *lw;
    struct stats *s;
    int drop_w, shared;
    struct lowrank_result *res;
    struct mat_report *rep;
    struct lowrank_white wh[3];   /* by stats_group: q/k/v, o, gate/up */
    int order[PROJ_COUNT], n, next, done, big_running;
    int r;                        /* first error */
    struct sv_err err;
    pthread_mutex_t mu;
    pthread_cond_t cv;
};

static int factor_big(const struct linear *lin) { return lin->d_out > lin->d_in; }

static int factor_one(struct factor_pool *fp, int p, struct sv_err *err) {
    struct job *j = fp->j;
    int l = fp->lw->index, r;
    struct linear *lin = &fp->lw->proj[p];
    char what[200];
    model_proj_prefix(l, p, what, sizeof what);
    double t0 = mono_now();
    if (fp->shared && p != PROJ_DOWN) {
        r = lowrank_project_white(lin->w, lin->d_out, lin->d_in, &fp->wh[stats_group(p)], j->rank[l][p], what,
                                  &fp->res[p], err);
    } else {
        const double *g, *cout;
        double *own;
        if ((r = method_statistic(j, fp->m, fp->s, p, lin, &own, &g, &cout, what, err)) == 0)
            r = lowrank_project(lin->w, lin->d_out, lin->d_in, g, cout, j->rank[l][p], what, &fp->res[p], err);
        free(own);
    }
    if (r < 0)
        return r;
    report_factored(&fp->rep[p], &fp->res[p], mono_now() - t0);
    if (fp->drop_w) {
        free(lin->w);
        lin->w = NULL;
    }
    return 0;
}

static void *factor_worker(void *arg) {
    struct factor_pool *fp = arg;
    pthread_mutex_lock(&fp->mu);
    while (fp->next < fp->n && fp->r == 0) {
        int p = fp->order[fp->next], big = factor_big(&fp->lw->proj[p]);
        if (big && fp->big_running) {
            pthread_cond_wait(&fp->cv, &fp->mu);
            continue;
        }
        fp->next++;
        fp->big_running += big;
        pthread_mutex_unlock(&fp->mu);
        struct sv_err e = {0};
        int r = cancelled(fp->j) ? sv_err_set(&e, -ECANCELED, "cancelled") : factor_one(fp, p, &e);
        pthread_mutex_lock(&fp->mu);
        fp->big_running -= big;
        fp->done++;
        if (r < 0 && fp->r == 0) {
            fp->r = r;
            fp->err = e;
        }
        progress(fp->j, fp->lw->index, "factorize", (double)fp->done / fp->n);
        pthread_cond_broadcast(&fp->cv);
    }
    pthread_mutex_unlock(&fp->mu);
    return NULL;
}

static int factor_matrices(struct job *j, enum compress_method m, struct layer_w *lw, struct stats *s, int drop_w,
                           struct lowrank_result *res, struct mat_report *rep, struct sv_err *err) {
    struct factor_pool fp = {.j = j, .m = m, .lw = lw, .s = s, .drop_w = drop_w, .res = res, .rep = rep,
                             .shared = m == METHOD_SVDLLM || m == METHOD_SVDLLM_UPDATE || m == METHOD_ROM};
    const int l = lw->index;
    int r = 0;
    /* Queue order: the input-side matrices first and last, so the rule that
     * two never run together costs no waiting. */
    static const int order[PROJ_COUNT] = {PROJ_GATE, PROJ_Q, PROJ_K, PROJ_V, PROJ_O, PROJ_DOWN, PROJ_UP};
    for (int i = 0; i < PROJ_COUNT; i++)
        if (j->rank[l][order[i]])
            fp.order[fp.n++] = order[i];
    progress(j, l, "factorize", 0);
    /* Whiten each shared Gram that a factored matrix reads, then free the
     * Grams (down_proj's output covariance is read as it is). */
    double t0 = mono_now();
    for (int p = 0; p < PROJ_COUNT && r == 0; p++) {
        double **gp = group_gram(s, p);
        if (p == PROJ_DOWN || !*gp)
            continue;
        int grp = stats_group(p), used = 0;
        for (int q = 0; q < PROJ_DOWN; q++)
            used |= stats_group(q) == grp && j->rank[l][q] > 0;
        char what[200];
        model_proj_prefix(l, p, what, sizeof what);
        if (fp.shared && used)
            r = lowrank_white_new(*gp, lw->proj[p].d_in, what, &fp.wh[grp], err);
        if (fp.shared) {
            free(*gp);
            *gp = NULL;
        }
    }
    /* The whitenings' time goes to the first matrix factored. */
    double t_white = mono_now() - t0;
    int workers = forward_threads_get() >= 2 && fp.n >= 2 ? 2 : 1;
    if (r == 0) {
        pthread_mutex_init(&fp.mu, NULL);
        pthread_cond_init(&fp.cv, NULL);
        pthread_t tid;
        int second = 0;
        if (workers == 2) {
            forward_blas_threads(forward_threads_get() / 2);
            second = pthread_create(&tid, NULL, factor_worker, &fp) == 0;
            if (!second)
                forward_blas_threads(0);
        }
        factor_worker(&fp);
        if (second) {
            pthread_join(tid, NULL);
            forward_blas_threads(0);
        }
        pthread_mutex_destroy(&fp.mu);
        pthread_cond_destroy(&fp.cv);
        if ((r = fp.r) < 0)
            *err = fp.err;
    }
    for (int i = 0; i < fp.n && r == 0; i++)
        if (fp.order[i] != PROJ_DOWN) { /* the first matrix of the job order that read a whitened Gram */
            rep[fp.order[i]].seconds += t_white;
            break;
        }
    j->t.factorize += mono_now() - t0; /* wall time: the matrices' seconds overlap */
    for (int g = 0; g < 3; g++)
        lowrank_white_free(&fp.wh[g]);
    if (fp.shared) { /* the whitened Grams are gone; what is left is c_down (diagonal statistics stay) */
        free(s->c_down);
        s->c_down = NULL;
    }
    return r;
}

/* ---- lorap: structured pruning of MLP channels ---------------------------- */

/* LoRAP's channel choice for layer lw (lowrank_channel_select()), from the
 * sums of squares of the MLP input (x) and of down_proj's input (h). */
static int lorap_channels(const struct job *j, const struct layer_w *lw, const struct stats *s, int *kept,
                          struct sv_err *err) {
    char what[200];
    model_proj_prefix(lw->index, PROJ_GATE, what, sizeof what);
    return lowrank_channel_select(lw->proj[PROJ_GATE].w, lw->proj[PROJ_UP].w, lw->proj[PROJ_DOWN].w, j->c->hidden,
                                  j->c->intermediate, s->sq_sum[2], s->sq_sum[3], j->ff_keep, kept, what, err);
}

/* pruned[0..2]: gate (keep, d), up (keep, d), down (d, keep), malloc'ed. */
static int lorap_prune(struct job *j, const struct layer_w *lw, const struct stats *s, float *pruned[3],
                       struct mat_report *rep, struct sv_err *err) {
    int ff = j->c->intermediate, d = j->c->hidden, keep = j->ff_keep;
    double t0 = mono_now();
    int *kept = malloc((size_t)keep * sizeof *kept);
    if (!kept)
        return sv_err_set(err, -ENOMEM, "layer %d: out of memory", lw->index);
    int r = lorap_channels(j, lw, s, kept, err);
    for (int m = 0; m < 3 && r == 0; m++)
        if (!(pruned[m] = malloc((size_t)keep * d * sizeof(float))))
            r = sv_err_set(err, -ENOMEM, "layer %d: out of memory", lw->index);
    if (r == 0) {
        for (int n = 0; n < keep; n++) {
            memcpy(pruned[0] + (size_t)n * d, lw->proj[PROJ_GATE].w + (size_t)kept[n] * d, (size_t)d * sizeof(float));
            memcpy(pruned[1] + (size_t)n * d, lw->proj[PROJ_UP].w + (size_t)kept[n] * d, (size_t)d * sizeof(float));
        }
        for (int o = 0; o < d; o++)
            for (int n = 0; n < keep; n++)
                pruned[2][(size_t)o * keep + n] = lw->proj[PROJ_DOWN].w[(size_t)o * ff + kept[n]];
        double sec = mono_now() - t0;
        j->t.factorize += sec;
        for (int p = PROJ_GATE; p <= PROJ_DOWN; p++)
            rep[p] = (struct mat_report){.kind = MAT_PRUNED, .channels = keep, .seconds = sec};
    }
    free(kept);
    return r;
}

/* ---- sequential methods: rom and svdllm-update ---------------------------- */

/* Within a layer the matrices are solved in four stages, each seeing the
 * already-compressed earlier ones: q/k/v (input: the attention norm), o
 * (input: attention of compressed q/k/v), gate/up (input: the MLP norm after
 * the compressed attention block), down (input: silu(gate') * up'). */
/* A stage's matrices are stage_in[s]..stage_last[s]; the first of them names
 * the stage's tapped input (q/k/v share the attention input, gate/up the MLP's). */
static const int stage_in[4] = {PROJ_Q, PROJ_O, PROJ_GATE, PROJ_DOWN};
static const int stage_last[4] = {PROJ_V, PROJ_O, PROJ_UP, PROJ_DOWN};

struct seq_ctx {
    const struct job *j;
    int stage;
    /* rom: Gram of the stage's inputs (down: of its outputs through the
     * original W_down) and their column sums, for the centred variant. */
    double *g, *sum, n;
    int width;
    /* svdllm-update */
    const struct lowrank_result *res;   /* B of each matrix */
    float *y[PROJ_COUNT];               /* this chunk's original outputs */
    size_t ycap[PROJ_COUNT];
    int ydim[PROJ_COUNT];
    double *yz[PROJ_COUNT], *zz[PROJ_COUNT], yy[PROJ_COUNT];
    float *z;
    size_t zcap;
};

static int rom_tap(struct seq_ctx *c, const float *x, size_t ntok, int width) {
    double t0 = mono_now();
    if (c->j->p->centered) /* the mean is needed only to remove it */
        for (size_t t = 0; t < ntok; t++)
            for (int i = 0; i < width; i++)
                c->sum[i] += x[t * (size_t)width + i];
    c->n += (double)ntok;
    int r = lowrank_gram_accum(c->g, x, ntok, width, NULL);
    tap_seconds += mono_now() - t0;
    return r < 0 ? r : FORWARD_STOP;
}

static int rom_in(void *ctx, enum config_proj p, const float *x, size_t ntok, int width) {
    struct seq_ctx *c = ctx;
    return c->stage < 3 && (int)p == stage_in[c->stage] ? rom_tap(c, x, ntok, width) : 0;
}

static int rom_out(void *ctx, enum config_proj p, const float *y, size_t ntok, int width) {
    struct seq_ctx *c = ctx;
    return c->stage == 3 && p == PROJ_DOWN ? rom_tap(c, y, ntok, width) : 0;
}

/* Original layer on the original stream: keep the stage's outputs Y. */
static int upd_out(void *ctx, enum config_proj p, const float *y, size_t ntok, int width) {
    struct seq_ctx *c = ctx;
    if ((int)p < stage_in[c->stage] || (int)p > stage_last[c->stage])
        return 0;
    size_t n = ntok * (size_t)width;
    double t0 = mono_now();
    if (c->ycap[p] < n) {
        float *t = realloc(c->y[p], n * sizeof *t);
        if (!t)
            return -ENOMEM;
        c->y[p] = t;
        c->ycap[p] = n;
    }
    memcpy(c->y[p], y, n * sizeof *y);
    c->ydim[p] = width;
    for (size_t i = 0; i < n; i++)
        c->yy[p] += (double)y[i] * y[i];
    tap_seconds += mono_now() - t0;
    return (int)p == stage_last[c->stage] ? FORWARD_STOP : 0;
}

/* Compressed layer on the compressed stream: Z = X' B^T, accumulate Z^T Z
 * and Y^T Z against the outputs upd_out kept for the same tokens. */
static int upd_in(void *ctx, enum config_proj p, const float *x, size_t ntok, int width) {
    struct seq_ctx *c = ctx;
    if ((int)p != stage_in[c->stage])
        return 0;
    double t0 = mono_now();
    for (int m = stage_in[c->stage]; m <= stage_last[c->stage]; m++) {
        const struct lowrank_result *rs = &c->res[m];
        if (!rs->k)
            continue;
        size_t n = ntok * (size_t)rs->k;
        if (c->zcap < n) {
            float *t = realloc(c->z, n * sizeof *t);
            if (!t)
                return -ENOMEM;
            c->z = t;
            c->zcap = n;
        }
        forward_sgemm(1, ntok, (size_t)rs->k, (size_t)width, 1.0f, x, (size_t)width, rs->b, (size_t)width, 0.0f, c->z,
                      (size_t)rs->k);
        int d_out = c->ydim[m];
        int r = lowrank_gram_accum(c->zz[m], c->z, ntok, rs->k, NULL);
        if (r == 0)
            r = lowrank_cross_accum(c->yz[m], c->y[m], d_out, c->z, rs->k, ntok, NULL);
        if (r < 0)
            return r;
    }
    tap_seconds += mono_now() - t0;
    return FORWARD_STOP;
}

static void seq_ctx_free(struct seq_ctx *c) {
    free(c->g);
    free(c->sum);
    for (int p = 0; p < PROJ_COUNT; p++) {
        free(c->y[p]);
        free(c->yz[p]);
        free(c->zz[p]);
    }
    free(c->z);
    memset(c, 0, sizeof *c);
}

/* Paths of the two calibration streams entering layer l: the compressed
 * model's (hidden-L, shared with the other methods) and the original
 * model's (orig-L; at layer 0 both are the embeddings, hidden-0). */
static void orig_path(const struct job *j, char *buf, size_t n, int l) {
    work_path(j, buf, n, l == 0 ? "hidden-%d.f32" : "orig-%d.f32", l);
}

/* One layer of rom or svdllm-update. res/rep are filled for every matrix with
 * rank > 0; next_hex (and, for the update, orig_next_hex) name the states
 * written for layer l + 1. */
static int seq_layer(struct job *j, const struct layer_w *lw, struct lowrank_result *res, struct mat_report *rep,
                     const char *in_hex, const char *orig_in_hex, char next_hex[65], char orig_next_hex[65],
                     struct sv_err *err) {
    const int l = lw->index, update = j->p->method == METHOD_SVDLLM_UPDATE;
    char what[200], comp_in[PATH_MAX + 64], orig_in[PATH_MAX + 64], path[PATH_MAX + 64];
    struct layer_w lc = *lw; /* the layer as compressed so far (shares lw's dense weights) */
    struct stats st = {0};
    struct seq_ctx cx = {.j = j, .res = res};
    int r = 0;
    work_path(j, comp_in, sizeof comp_in, "hidden-%d.f32", l);
    orig_path(j, orig_in, sizeof orig_in, l);
    if (update) {
        /* B = U_k^T W from the original model's whitening (svdllm), and the
         * original stream for the next layer. */
        if ((r = stats_alloc(j, STATS_GRAMS, &st, err)) < 0)
            goto out;
        work_path(j, path, sizeof path, "orig-%d.f32", l + 1);
        seg(j, 1.0);
        if ((r = calibrate_layer(j, lw, &st, orig_in, orig_in_hex, path, orig_next_hex, err)) < 0)
            goto out;
        int comp = 0;
        for (int p = 0; p < PROJ_COUNT; p++)
            comp |= j->rank[l][p] > 0;
        seg(j, comp ? COST_FACTOR : 0);
        /* drop_w 0: lw is only read (the cast drops a const factor_matrices
         * needs for drop_w 1 alone). */
        if ((r = factor_matrices(j, METHOD_SVDLLM, (struct layer_w *)lw, &st, 0, res, rep, err)) < 0)
            goto out;
        stats_free(&st);
    }
    for (int sg = 0; sg < 4; sg++) {
        int any = 0;
        for (int p = stage_in[sg]; p <= stage_last[sg]; p++)
            any |= j->rank[l][p] > 0;
        if (!any)
            continue;
        cx.stage = sg;
        if (!update) {
            int w = sg == 0 || sg == 2 || sg == 3 ? j->c->hidden : j->c->n_heads * j->c->head_dim;
            cx.width = w;
            cx.n = 0;
            free(cx.g);
            free(cx.sum);
            cx.g = calloc((size_t)w * w, sizeof *cx.g);
            cx.sum = calloc((size_t)w, sizeof *cx.sum);
            if (!cx.g || !cx.sum) {
                r = sv_err_set(err, -ENOMEM, "layer %d: out of memory for statistics", l);
                goto out;
            }
            struct forward_taps taps = {.ctx = &cx, .input = rom_in, .output = rom_out};
            struct stream s = {.lw = &lc, .taps = &taps};
            snprintf(s.in, sizeof s.in, "%s", comp_in);
            seg(j, rom_pass[sg]);
            if ((r = stream_pass(j, l, &s, 1, err)) < 0)
                goto out;
            seg(j, COST_FACTOR * factor_share[sg]);
            progress(j, l, "factorize", 0);
            lowrank_gram_symmetrize(cx.g, w);
            if (j->p->centered && cx.n > 0) /* sum (x - mean)(x - mean)^T = G - s s^T / n */
                for (int a = 0; a < w; a++)
                    for (int b = 0; b < w; b++)
                        cx.g[(size_t)a * w + b] -= cx.sum[a] * cx.sum[b] / cx.n;
            struct lowrank_white wh = {0}; /* the stage's whitening, shared by its matrices */
            for (int p = stage_in[sg]; p <= stage_last[sg] && r == 0; p++) {
                if (!j->rank[l][p])
                    continue;
                const struct linear *lin = &lw->proj[p];
                model_proj_prefix(l, p, what, sizeof what);
                double t0 = mono_now();
                if (sg == 3)
                    r = lowrank_project(lin->w, lin->d_out, lin->d_in, NULL, cx.g, j->rank[l][p], what, &res[p], err);
                else if (wh.s || (r = lowrank_white_new(cx.g, w, what, &wh, err)) == 0)
                    r = lowrank_project_white(lin->w, lin->d_out, lin->d_in, &wh, j->rank[l][p], what, &res[p], err);
                if (r == 0) {
                    report_factored(&rep[p], &res[p], mono_now() - t0);
                    j->t.factorize += rep[p].seconds;
                }
            }
            lowrank_white_free(&wh);
            if (r < 0)
                goto out;
        } else {
            for (int p = stage_in[sg]; p <= stage_last[sg]; p++) {
                if (!res[p].k)
                    continue;
                size_t k = (size_t)res[p].k;
                cx.yz[p] = calloc((size_t)lw->proj[p].d_out * k, sizeof(double));
                cx.zz[p] = calloc(k * k, sizeof(double));
                if (!cx.yz[p] || !cx.zz[p]) {
                    r = sv_err_set(err, -ENOMEM, "layer %d: out of memory for the update", l);
                    goto out;
                }
            }
            struct forward_taps to = {.ctx = &cx, .output = upd_out}, tc = {.ctx = &cx, .input = upd_in};
            struct stream s[2] = {{.lw = lw, .taps = &to}, {.lw = &lc, .taps = &tc}};
            snprintf(s[0].in, sizeof s[0].in, "%s", orig_in);
            snprintf(s[1].in, sizeof s[1].in, "%s", comp_in);
            seg(j, upd_pass[sg]);
            if ((r = stream_pass(j, l, s, 2, err)) < 0)
                goto out;
            seg(j, COST_REFIT);
            progress(j, l, "factorize", 0);
            for (int p = stage_in[sg]; p <= stage_last[sg]; p++) {
                if (!res[p].k)
                    continue;
                int k = res[p].k, d_out = lw->proj[p].d_out;
                model_proj_prefix(l, p, what, sizeof what);
                double t0 = mono_now(), *a0 = malloc((size_t)d_out * k * sizeof *a0),
                       *a1 = malloc((size_t)d_out * k * sizeof *a1);
                if (!a0 || !a1) {
                    free(a0);
                    free(a1);
                    r = sv_err_set(err, -ENOMEM, "%s: out of memory for the update", what);
                    goto out;
                }
                lowrank_gram_symmetrize(cx.zz[p], k);
                for (size_t i = 0; i < (size_t)d_out * k; i++)
                    a0[i] = res[p].a[i];
                r = lowrank_refit(cx.yz[p], cx.zz[p], d_out, k, what, a1, &rep[p].refit_dropped, err);
                if (r == 0) {
                    rep[p].refit = 1;
                    rep[p].loss_before = lowrank_refit_loss(cx.yy[p], a0, cx.yz[p], cx.zz[p], d_out, k);
                    rep[p].loss_after = lowrank_refit_loss(cx.yy[p], a1, cx.yz[p], cx.zz[p], d_out, k);
                    for (size_t i = 0; i < (size_t)d_out * k; i++)
                        res[p].a[i] = (float)a1[i];
                    rep[p].seconds += mono_now() - t0;
                    j->t.factorize += mono_now() - t0;
                }
                free(a0);
                free(a1);
                if (r < 0)
                    goto out;
            }
        }
        /* The later stages see these matrices compressed. */
        for (int p = stage_in[sg]; p <= stage_last[sg]; p++)
            if (res[p].k)
                lc.proj[p] = (struct linear){.d_out = lw->proj[p].d_out, .d_in = lw->proj[p].d_in, .rank = res[p].k,
                                             .a = res[p].a, .b = res[p].b};
    }
    /* The compressed layer's outputs: the next layer's compressed stream. */
    struct stream s = {.in_hex = in_hex, .out_hex = next_hex, .lw = &lc};
    snprintf(s.in, sizeof s.in, "%s", comp_in);
    work_path(j, s.out, sizeof s.out, "hidden-%d.f32", l + 1);
    int dense = 1;
    for (int p = 0; p < PROJ_COUNT; p++)
        dense &= !res[p].k;
    seg(j, dense ? 1.0 : COST_FINAL);
    r = stream_pass(j, l, &s, 1, err);
out:
    stats_free(&st);
    seq_ctx_free(&cx);
    return r;
}

/* ---- rrr: reduced-rank regression on the compressed model -----------------
 *
 * Per stage, as for the update, the original layer on the original stream
 * and the compressed-so-far layer on the compressed stream run in lockstep.
 * The original stream's input tap keeps the chunk's stage input X and adds
 * to G = X^T X (for the update's B, the reference rrr is compared with);
 * its output taps add ||Y||^2 per matrix and stop after the stage's last
 * matrix. The compressed stream's tap adds G' = X'^T X' and H = X'^T X
 * (lowrank.h). The statistics come in two parts: the fit windows and the
 * held-out ones, the last RRR_HELD_DIV-th of the calibration windows (at
 * least one, when there are RRR_HELD_MIN or more). Each matrix's ridge lambda
 * is the grid value whose factors, fitted on the fit windows, have the
 * lowest loss on the held-out ones (exact, from the held-out statistics);
 * the factors are then fitted on all windows with that lambda. Fewer
 * windows: lambda = RRR_LAMBDA_FIXED. The report has lambda, the held-out
 * loss of every candidate, and on all windows the calibration loss of rrr,
 * of rrr with lambda = 0 (which no rank-k pair beats), of svdllm's factors
 * (B = U_k^T W from G, A = U_k) and of svdllm-update's refit of A for the
 * same B, all on the same compressed inputs X'.
 * Memory per stage: five d_in^2 doubles (G, G' and H twice) besides the
 * core's (lowrank.h); for down_proj d_in is the intermediate size. */
#define RRR_HELD_DIV 8
#define RRR_HELD_MIN 4
#define RRR_LAMBDA_FIXED 1e-3

static int rrr_held_windows(int n_samples) {
    if (n_samples < RRR_HELD_MIN)
        return 0;
    int h = n_samples / RRR_HELD_DIV;
    return h < 1 ? 1 : h;
}

struct rrr_ctx {
    int stage, width;          /* the stage's input width */
    size_t fit_tok;            /* tokens of the fit windows */
    size_t tok_orig, tok_comp; /* tokens each stream has passed through the stage's input */
    size_t chunk0;             /* first token of the current chunk */
    float *x;                  /* this chunk's original stage input (ntok, width) */
    size_t xcap, xtok;
    double *g;                 /* G = X^T X (lower), all windows */
    double *gp[2], *h[2];      /* [0] fit, [1] held-out: G' (lower), H (full) */
    double yy[2][PROJ_COUNT];
};

/* Rows [0, n_fit) of a chunk that starts at token t0 are fit windows. */
static size_t rrr_fit_rows(const struct rrr_ctx *c, size_t t0, size_t ntok) {
    return c->fit_tok <= t0 ? 0 : c->fit_tok - t0 < ntok ? c->fit_tok - t0 : ntok;
}

static int rrr_orig_in(void *ctx, enum config_proj p, const float *x, size_t ntok, int width) {
    struct rrr_ctx *c = ctx;
    if ((int)p != stage_in[c->stage])
        return 0;
    double t0 = mono_now();
    size_t n = ntok * (size_t)width;
    if (c->xcap < n) {
        float *t = realloc(c->x, n * sizeof *t);
        if (!t)
            return -ENOMEM;
        c->x = t;
        c->xcap = n;
    }
    memcpy(c->x, x, n * sizeof *x);
    c->xtok = ntok;
    c->chunk0 = c->tok_orig;
    c->tok_orig += ntok;
    int r = lowrank_gram_accum(c->g, x, ntok, width, NULL);
    tap_seconds += mono_now() - t0;
    return r;
}

static int rrr_orig_out(void *ctx, enum config_proj p, const float *y, size_t ntok, int width) {
    struct rrr_ctx *c = ctx;
    if ((int)p < stage_in[c->stage] || (int)p > stage_last[c->stage])
        return 0;
    size_t nf = rrr_fit_rows(c, c->chunk0, ntok) * (size_t)width, n = ntok * (size_t)width;
    for (size_t i = 0; i < n; i++)
        c->yy[i >= nf][p] += (double)y[i] * y[i];
    return (int)p == stage_last[c->stage] ? FORWARD_STOP : 0;
}

static int rrr_comp_in(void *ctx, enum config_proj p, const float *x, size_t ntok, int width) {
    struct rrr_ctx *c = ctx;
    if ((int)p != stage_in[c->stage])
        return 0;
    if (c->tok_comp != c->chunk0 || ntok != c->xtok || width != c->width)
        return -EIO; /* the two streams out of step: cannot happen with stream_pass's order */
    double t0 = mono_now();
    size_t nf = rrr_fit_rows(c, c->tok_comp, ntok), w = (size_t)width;
    c->tok_comp += ntok;
    int r = 0;
    for (int part = 0; part < 2 && r == 0; part++) {
        size_t r0 = part ? nf : 0, nr = part ? ntok - nf : nf;
        if (!nr)
            continue;
        if ((r = lowrank_gram_accum(c->gp[part], x + r0 * w, nr, width, NULL)) == 0)
            r = lowrank_cross_accum(c->h[part], x + r0 * w, width, c->x + r0 * w, width, nr, NULL);
    }
    tap_seconds += mono_now() - t0;
    return r < 0 ? r : FORWARD_STOP;
}

static void rrr_ctx_free(struct rrr_ctx *c) {
    free(c->x);
    free(c->g);
    for (int i = 0; i < 2; i++) {
        free(c->gp[i]);
        free(c->h[i]);
    }
    memset(c, 0, sizeof *c);
}

/* The reference on the same inputs: svdllm's factors of W (G = X^T X) and
 * svdllm-update's refit of their A, their calibration losses into rep. */
static int rrr_reference(const struct linear *lin, const struct rrr_ctx *c, int p, int k, const char *what,
                         struct mat_report *rep, struct sv_err *err) {
    struct lowrank_result ru;
    memset(&ru, 0, sizeof ru);
    int d_out = lin->d_out, d_in = lin->d_in;
    double *yz = malloc((size_t)d_out * k * sizeof *yz), *zz = malloc((size_t)k * k * sizeof *zz),
           *a = malloc((size_t)d_out * k * sizeof *a);
    int r = 0;
    if (!yz || !zz || !a) {
        r = sv_err_set(err, -ENOMEM, "%s: out of memory for the update's reference", what);
        goto out;
    }
    double yy = c->yy[0][p] + c->yy[1][p];
    if ((r = lowrank_project(lin->w, d_out, d_in, c->g, NULL, k, what, &ru, err)) < 0 ||
        (r = lowrank_rrr_zstats(lin->w, d_out, d_in, c->gp[0], c->h[0], ru.b, k, yz, zz, err)) < 0)
        goto out;
    for (size_t i = 0; i < (size_t)d_out * k; i++)
        a[i] = ru.a[i];
    rep->loss_svdllm = lowrank_refit_loss(yy, a, yz, zz, d_out, k);
    if ((r = lowrank_refit(yz, zz, d_out, k, what, a, NULL, err)) < 0)
        goto out;
    rep->loss_update = lowrank_refit_loss(yy, a, yz, zz, d_out, k);
out:
    lowrank_result_free(&ru);
    free(yz);
    free(zz);
    free(a);
    return r;
}

/* One stage's factors from the statistics in c: lambda per matrix on the
 * held-out part, then the fit on all windows (c->gp[0], c->h[0] become the
 * sums). */
static int rrr_stage_factor(struct job *j, const struct layer_w *lw, struct rrr_ctx *c, int sg,
                            struct lowrank_result *res, struct mat_report *rep, struct sv_err *err) {
    const int l = lw->index, w = c->width, held = c->fit_tok < (size_t)j->n_samples * j->T;
    char what[200];
    int best[PROJ_COUNT] = {0}, r = 0;
    struct lowrank_rrr q = {0}, q0 = {0};
    double hl[PROJ_COUNT][RRR_NLAMBDA];
    lowrank_gram_symmetrize(c->g, w);
    for (int part = 0; part < 2; part++)
        lowrank_gram_symmetrize(c->gp[part], w);
    for (int li = 0; li < RRR_NLAMBDA && held; li++) {
        double t0 = mono_now();
        model_proj_prefix(l, stage_in[sg], what, sizeof what);
        if ((r = lowrank_rrr_new(c->gp[0], c->h[0], w, rrr_lambdas[li], what, &q, err)) < 0)
            return r;
        for (int p = stage_in[sg]; p <= stage_last[sg] && r == 0; p++) {
            if (!j->rank[l][p])
                continue;
            const struct linear *lin = &lw->proj[p];
            struct lowrank_result rt;
            memset(&rt, 0, sizeof rt);
            model_proj_prefix(l, p, what, sizeof what);
            if ((r = lowrank_rrr_project(lin->w, lin->d_out, lin->d_in, &q, j->rank[l][p], what, &rt, err)) == 0)
                hl[p][li] = lowrank_rrr_loss(c->yy[1][p], lin->w, lin->d_out, lin->d_in, c->gp[1], c->h[1], rt.a,
                                             rt.b, rt.k);
            lowrank_result_free(&rt);
            if (r == 0 && isfinite(hl[p][li]) && (li == 0 || !(hl[p][li] >= hl[p][best[p]])))
                best[p] = li;
            rep[p].seconds += (mono_now() - t0) / (stage_last[sg] - stage_in[sg] + 1);
        }
        lowrank_rrr_free(&q);
        j->t.factorize += mono_now() - t0;
        if (r < 0)
            return r;
    }
    size_t ww = (size_t)w * w;
    for (size_t i = 0; i < ww; i++) {
        c->gp[0][i] += c->gp[1][i];
        c->h[0][i] += c->h[1][i];
    }
    for (int p = stage_in[sg]; p <= stage_last[sg]; p++) {
        if (!j->rank[l][p])
            continue;
        const struct linear *lin = &lw->proj[p];
        double lambda = held ? rrr_lambdas[best[p]] : RRR_LAMBDA_FIXED, t0 = mono_now(), sec = rep[p].seconds;
        model_proj_prefix(l, p, what, sizeof what);
        /* q/k/v (gate/up) that chose the same lambda share its Cholesky. */
        if ((!q.wh.s || q.lambda != lambda) &&
            (lowrank_rrr_free(&q), r = lowrank_rrr_new(c->gp[0], c->h[0], w, lambda, what, &q, err)) < 0)
            break;
        if ((r = lowrank_rrr_project(lin->w, lin->d_out, lin->d_in, &q, j->rank[l][p], what, &res[p], err)) < 0)
            break;
        res[p].gflop += q.gflop;
        report_factored(&rep[p], &res[p], sec);
        rep[p].rrr = 1;
        rep[p].rrr_lambda = lambda;
        rep[p].rrr_held = held;
        for (int li = 0; li < RRR_NLAMBDA && held; li++)
            rep[p].rrr_heldout[li] = hl[p][li];
        rep[p].loss_after = lowrank_rrr_loss(c->yy[0][p] + c->yy[1][p], lin->w, lin->d_out, lin->d_in, c->gp[0],
                                             c->h[0], res[p].a, res[p].b, res[p].k);
        /* lambda = 0, the plain reduced-rank regression: never above the update. */
        rep[p].loss_lambda0 = rep[p].loss_after;
        if (lambda != 0) {
            struct lowrank_result r0;
            memset(&r0, 0, sizeof r0);
            if ((!q0.wh.s && (r = lowrank_rrr_new(c->gp[0], c->h[0], w, 0.0, what, &q0, err)) < 0) ||
                (r = lowrank_rrr_project(lin->w, lin->d_out, lin->d_in, &q0, res[p].k, what, &r0, err)) < 0)
                break;
            rep[p].loss_lambda0 = lowrank_rrr_loss(c->yy[0][p] + c->yy[1][p], lin->w, lin->d_out, lin->d_in,
                                                   c->gp[0], c->h[0], r0.a, r0.b, r0.k);
            lowrank_result_free(&r0);
        }
        if ((r = rrr_reference(lin, c, p, res[p].k, what, &rep[p], err)) < 0)
            break;
        double dt = mono_now() - t0;
        rep[p].seconds += dt;
        j->t.factorize += dt;
    }
    lowrank_rrr_free(&q);
    lowrank_rrr_free(&q0);
    return r;
}

/* One layer of rrr; the contract of seq_layer. */
static int rrr_layer(struct job *j, const struct layer_w *lw, struct lowrank_result *res, struct mat_report *rep,
                     const char *in_hex, const char *orig_in_hex, char next_hex[65], char orig_next_hex[65],
                     struct sv_err *err) {
    const int l = lw->index;
    const struct config *cf = j->c;
    char comp_in[PATH_MAX + 64], orig_in[PATH_MAX + 64];
    struct layer_w lc = *lw; /* the layer as compressed so far (shares lw's dense weights) */
    struct rrr_ctx cx = {0};
    int r = 0;
    work_path(j, comp_in, sizeof comp_in, "hidden-%d.f32", l);
    orig_path(j, orig_in, sizeof orig_in, l);
    for (int sg = 0; sg < 4; sg++) {
        int any = 0;
        for (int p = stage_in[sg]; p <= stage_last[sg]; p++)
            any |= j->rank[l][p] > 0;
        if (!any)
            continue;
        int w = sg == 0 || sg == 2 ? cf->hidden : sg == 1 ? cf->n_heads * cf->head_dim : cf->intermediate;
        size_t ww = (size_t)w * w;
        rrr_ctx_free(&cx);
        cx.fit_tok = (size_t)(j->n_samples - rrr_held_windows(j->n_samples)) * j->T;
        cx.stage = sg;
        cx.width = w;
        cx.g = calloc(ww, sizeof *cx.g);
        for (int part = 0; part < 2; part++) {
            cx.gp[part] = calloc(ww, sizeof(double));
            cx.h[part] = calloc(ww, sizeof(double));
        }
        if (!cx.g || !cx.gp[0] || !cx.gp[1] || !cx.h[0] || !cx.h[1]) {
            r = sv_err_set(err, -ENOMEM, "layer %d: out of memory for rrr's statistics (5 x %d^2 doubles)", l, w);
            goto out;
        }
        struct forward_taps to = {.ctx = &cx, .input = rrr_orig_in, .output = rrr_orig_out},
                            tc = {.ctx = &cx, .input = rrr_comp_in};
        struct stream s[2] = {{.lw = lw, .taps = &to}, {.lw = &lc, .taps = &tc}};
        snprintf(s[0].in, sizeof s[0].in, "%s", orig_in);
        snprintf(s[1].in, sizeof s[1].in, "%s", comp_in);
        seg(j, upd_pass[sg]);
        if ((r = stream_pass(j, l, s, 2, err)) < 0)
            goto out;
        seg(j, COST_FACTOR * factor_share[sg] * RRR_COST_FACTOR);
        progress(j, l, "factorize", 0);
        if ((r = rrr_stage_factor(j, lw, &cx, sg, res, rep, err)) < 0)
            goto out;
        /* The later stages see these matrices compressed. */
        for (int p = stage_in[sg]; p <= stage_last[sg]; p++)
            if (res[p].k)
                lc.proj[p] = (struct linear){.d_out = lw->proj[p].d_out, .d_in = lw->proj[p].d_in, .rank = res[p].k,
                                             .a = res[p].a, .b = res[p].b};
    }
    rrr_ctx_free(&cx);
    /* Both streams for the next layer: the compressed layer's outputs and the
     * original layer's. */
    struct stream s[2] = {{.in_hex = in_hex, .out_hex = next_hex, .lw = &lc},
                          {.in_hex = orig_in_hex, .out_hex = orig_next_hex, .lw = lw}};
    snprintf(s[0].in, sizeof s[0].in, "%s", comp_in);
    work_path(j, s[0].out, sizeof s[0].out, "hidden-%d.f32", l + 1);
    snprintf(s[1].in, sizeof s[1].in, "%s", orig_in);
    work_path(j, s[1].out, sizeof s[1].out, "orig-%d.f32", l + 1);
    seg(j, 1.0 + COST_FINAL);
    r = stream_pass(j, l, s, 2, err);
out:
    rrr_ctx_free(&cx);
    return r;
}

/* ---- the layer checkpoint -------------------------------------------------- */

/* Writes layer-l.safetensors with the factor pairs in res (rank > 0), the
 * pruned MLP matrices (lorap) and, in its metadata, the report and the
 * checksums of the states written for layer l + 1; fills ck. */
static int write_layer(struct job *j, const struct layer_w *lw, const struct lowrank_result *res, float *const pruned[3],
                       const struct mat_report *rep, const char *next_hex, const char *orig_next_hex,
                       struct compress_checkpoint *ck, struct sv_err *err) {
    int l = lw->index, r;
    char what[200], path[PATH_MAX + 64], name[ST_MAX_NAME + 32], *rj = NULL;
    struct st_writer *w = NULL;
    seg(j, COST_WRITE);
    progress(j, l, "checkpoint", 0);
    if ((r = report_json(rep, &rj)) < 0)
        return sv_err_set(err, r, "layer %d: out of memory for the report", l);
    work_path(j, path, sizeof path, "layer-%d.safetensors", l);
    if ((r = st_writer_new(&w, path, err)) < 0 || (r = st_writer_meta(w, "report", rj, err)) < 0 ||
        (r = st_writer_meta(w, "hidden_next_sha256", next_hex, err)) < 0 ||
        (orig_next_hex[0] && (r = st_writer_meta(w, "orig_next_sha256", orig_next_hex, err)) < 0))
        goto out;
    for (int pass = 0; pass < 2 && r == 0; pass++)
        for (int p = 0; p < PROJ_COUNT && r == 0; p++) {
            const struct linear *lin = &lw->proj[p];
            model_proj_prefix(l, p, what, sizeof what);
            if (pass == 1 && p == PROJ_COUNT / 2)
                fault_point("mid-write", l);
            if (res[p].k) {
                int64_t sb[2] = {res[p].k, lin->d_in}, sa[2] = {lin->d_out, res[p].k};
                snprintf(name, sizeof name, "%s.0.weight", what);
                r = pass ? st_writer_write_f32(w, name, res[p].b, (size_t)res[p].k * lin->d_in, err)
                         : st_writer_declare(w, name, ST_F32, 2, sb, err);
                snprintf(name, sizeof name, "%s.1.weight", what);
                if (r == 0)
                    r = pass ? st_writer_write_f32(w, name, res[p].a, (size_t)lin->d_out * res[p].k, err)
                             : st_writer_declare(w, name, ST_F32, 2, sa, err);
            } else if (rep[p].kind == MAT_PRUNED) {
                int keep = rep[p].channels;
                int64_t sh[2] = {p == PROJ_DOWN ? lin->d_out : keep, p == PROJ_DOWN ? keep : lin->d_in};
                snprintf(name, sizeof name, "%s.weight", what);
                r = pass ? st_writer_write_f32(w, name, pruned[p - PROJ_GATE], (size_t)sh[0] * sh[1], err)
                         : st_writer_declare(w, name, ST_F32, 2, sh, err);
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

/* Layer l's checkpoint: 1 if it has a committed row whose file is intact,
 * 0 if it has no row, 2 if the row's file is missing or not the recorded
 * bytes (why says what was found), < 0 if the lookup itself failed. */
static int layer_committed(struct job *j, int l, char *why, size_t n_why, struct sv_err *err) {
    if (!j->h || !j->h->layer_lookup)
        return 0;
    struct compress_checkpoint ck;
    int r = j->h->layer_lookup(j->h->ctx, l, &ck);
    if (r <= 0)
        return r < 0 ? sv_err_set(err, r, "layer %d: checkpoint lookup failed", l) : 0;
    char path[PATH_MAX * 2 + 2], hex[65];
    uint64_t size = 0;
    struct sv_err e = {0};
    snprintf(path, sizeof path, "%s/%s", j->p->work_dir, ck.file);
    if (sha256_file(path, hex, &size, &e) < 0) {
        snprintf(why, n_why, "layer %d: checkpoint '%.400s' is recorded but unreadable: %s", l, path,
                 e.code == -ENOENT ? "missing" : strerror(-e.code));
        return 2;
    }
    if (size != ck.size || strcmp(hex, ck.sha256) != 0) {
        snprintf(why, n_why, "layer %d: checkpoint '%.400s' does not match its recorded size and sha256 "
                 "(%llu bytes, recorded %llu)", l, path, (unsigned long long)size, (unsigned long long)ck.size);
        return 2;
    }
    return 1;
}

/* Tells the store that layers from.. are to be recomputed, and why. */
static int drop_layers(struct job *j, int from, const char *why, struct sv_err *err) {
    char msg[SV_ERR_MSG_MAX];
    snprintf(msg, sizeof msg, "%s", why);   /* why may be err->msg */
    if (j->h && j->h->layers_drop)
        return j->h->layers_drop(j->h->ctx, from, msg, err);
    return 0;
}

/* 1 if the calibration states at path are the bytes of checksum hex; 0 if
 * not (why filled). */
static int states_intact(const char *path, const char *hex, char *why, size_t n_why) {
    char got[65];
    uint64_t size = 0;
    struct sv_err e = {0};
    if (sha256_file(path, got, &size, &e) < 0) {
        snprintf(why, n_why, "calibration states '%.400s': %s", path,
                 e.code == -ENOENT ? "missing" : strerror(-e.code));
        return 0;
    }
    if (strcmp(got, hex) != 0) {
        snprintf(why, n_why, "calibration states '%.400s' do not match the checksum their layer recorded", path);
        return 0;
    }
    return 1;
}

/* Layer l as its checkpoint holds it: lc starts as lw (the original, dense)
 * and takes each factor pair of the file; the arrays go to f[], freed by the
 * caller. */
static int layer_from_checkpoint(const struct job *j, const struct layer_w *lw, struct layer_w *lc,
                                 float *f[2 * PROJ_COUNT], struct sv_err *err) {
    char path[PATH_MAX + 64], name[ST_MAX_NAME + 32], what[200];
    struct st_model *m = NULL;
    int l = lw->index;
    *lc = *lw;
    work_path(j, path, sizeof path, "layer-%d.safetensors", l);
    int r = st_open_file(&m, path, err);
    for (int p = 0; p < PROJ_COUNT && r == 0; p++) {
        model_proj_prefix(l, p, what, sizeof what);
        snprintf(name, sizeof name, "%s.0.weight", what);
        const struct st_tensor *tb = st_find(m, name);
        if (!tb)
            continue;
        const struct linear *lin = &lw->proj[p];
        int64_t k = tb->ndim == 2 ? tb->shape[0] : 0;
        if (k < 1 || k > lin->d_in || k > lin->d_out) {
            r = sv_err_set(err, -EIO, "checkpoint '%s': tensor '%s' has an unexpected shape", path, name);
            break;
        }
        f[2 * p] = malloc((size_t)k * lin->d_in * sizeof(float));
        f[2 * p + 1] = malloc((size_t)lin->d_out * k * sizeof(float));
        if (!f[2 * p] || !f[2 * p + 1]) {
            r = sv_err_set(err, -ENOMEM, "layer %d: out of memory", l);
            break;
        }
        if ((r = st_read_f32_shape(m, name, k, lin->d_in, f[2 * p], err)) < 0)
            break;
        snprintf(name, sizeof name, "%s.1.weight", what);
        if ((r = st_read_f32_shape(m, name, lin->d_out, k, f[2 * p + 1], err)) < 0)
            break;
        lc->proj[p] = (struct linear){.d_out = lin->d_out, .d_in = lin->d_in, .rank = (int)k, .a = f[2 * p + 1],
                                      .b = f[2 * p]};
    }
    st_free(m);
    return r;
}

/* Regenerates the calibration states entering layer k (hidden-k, and orig-k
 * for svdllm-update) when they are missing or damaged and layers 0..k-1 are
 * checkpointed: hidden-0 from the calibration text, then each layer run
 * forward, the original one (the original model's stream) or, for rom's and
 * the update's compressed stream, the layer as its checkpoint holds it. It
 * repeats the computation that wrote them, so the result must match the
 * checksums layer k-1 recorded (want, want_orig); hex/orig_hex get them. */
static int replay_states(struct job *j, int k, const char *want, const char *want_orig, char hex[65],
                         char orig_hex[65], struct sv_err *err) {
    const int sequential = method_sequential(j->p->method);
    const int update = method_two_streams(j->p->method);
    char next[65] = "", orig_next[65] = "";
    struct layer_w lw = {0}, lc;
    float *f[2 * PROJ_COUNT] = {0};
    const char *saved_phase = j->pass_phase;
    j->pass_phase = "replay";
    progress(j, k, "replay", 0);
    int r = make_hidden0(j, hex, err);
    snprintf(orig_hex, 65, "%s", hex);
    for (int l = 0; l < k && r == 0; l++) {
        if (cancelled(j)) {
            r = sv_err_set(err, -ECANCELED, "cancelled");
            break;
        }
        if ((r = model_layer_load(j->m, l, &lw, err)) < 0)
            break;
        if (sequential && (r = layer_from_checkpoint(j, &lw, &lc, f, err)) < 0)
            goto next;
        struct stream s[2] = {{.in_hex = hex, .out_hex = next, .lw = sequential ? &lc : &lw},
                              {.in_hex = orig_hex, .out_hex = orig_next, .lw = &lw}};
        work_path(j, s[0].in, sizeof s[0].in, "hidden-%d.f32", l);
        work_path(j, s[0].out, sizeof s[0].out, "hidden-%d.f32", l + 1);
        orig_path(j, s[1].in, sizeof s[1].in, l);
        work_path(j, s[1].out, sizeof s[1].out, "orig-%d.f32", l + 1);
        if ((r = stream_pass(j, l, s, update ? 2 : 1, err)) < 0)
            goto next;
        unlink(s[0].in);
        if (update)
            unlink(s[1].in);
        memcpy(hex, next, 65);
        memcpy(orig_hex, orig_next, 65);
    next:
        model_layer_free(&lw);
        for (int i = 0; i < 2 * PROJ_COUNT; i++) {
            free(f[i]);
            f[i] = NULL;
        }
    }
    j->pass_phase = saved_phase;
    if (r == 0 && (strcmp(hex, want) != 0 || (update && strcmp(orig_hex, want_orig) != 0)))
        r = sv_err_set(err, -EIO, "layer %d: the regenerated calibration states do not match the checksums "
                       "layer %d recorded (its inputs changed?)", k, k - 1);
    return r;
}

/* ---- rank allocation ------------------------------------------------------- */

static const char *rank_rule(const struct job *j) {
    switch (j->ranks) {
    case RANKS_LAST_N:
        return "last-n: only the last `layers` decoder layers, each at ratio' = ratio * n_layers / layers, "
               "k = floor(d_out*d_in*(1-ratio')/(d_out+d_in)); earlier layers kept dense";
    case RANKS_LORAP:
        return "lorap: per layer, attention keeps (1-ratio) of its parameters, split (v+o):(q+k) = attn_split, "
               "q,k (and v,o) one common rank; MLP uniform (method lorap: channels pruned to "
               "round(ffn*(1-ratio)))";
    case RANKS_AUTO:
        return "auto: attention and MLP each keep (1-ratio) of their parameters; every matrix starts at rank 1, "
               "then the eigenvalues of all layers' statistics are taken greedily by lambda / trace / (d_out + d_in) "
               "while the sub-layer's budget lasts (discarded lambdas = predicted squared output error); "
               "rank <= d_out*d_in/(d_out+d_in)";
    default:
        return "uniform: k = floor(d_out*d_in*(1-ratio)/(d_out+d_in)) per q/k/v/o/gate/up/down; embeddings, norms, "
               "head kept";
    }
}

static void plan_lorap_attn(struct job *j, int l) {
    const struct config *c = j->c;
    int dout[4], din[4];
    double total = 0;
    for (int p = 0; p <= PROJ_O; p++) {
        config_proj_shape(c, p, &dout[p], &din[p]);
        total += (double)dout[p] * din[p];
    }
    double split = j->p->attn_split > 0 ? j->p->attn_split : 3.0, keep = (1 - j->p->ratio) * total;
    double k_qk = floor(keep / (1 + split) / (dout[0] + din[0] + dout[1] + din[1]));
    double k_vo = floor(keep * split / (1 + split) / (dout[2] + din[2] + dout[3] + din[3]));
    for (int p = 0; p <= PROJ_O; p++) {
        double k = p <= PROJ_K ? k_qk : k_vo;
        int mn = dout[p] < din[p] ? dout[p] : din[p];
        j->rank[l][p] = k < 1 ? 1 : k > mn ? mn : (int)k;
    }
}

/* Every rule but auto. */
static void plan_ranks(struct job *j) {
    const struct config *c = j->c;
    int L = c->n_layers, first = j->ranks == RANKS_LAST_N ? L - j->p->layers : 0;
    double ratio = j->ranks == RANKS_LAST_N ? j->p->ratio * L / j->p->layers : j->p->ratio;
    for (int l = 0; l < L; l++)
        for (int q = 0; q < PROJ_COUNT; q++) {
            int d_out, d_in;
            config_proj_shape(c, q, &d_out, &d_in);
            j->rank[l][q] = l < first ? 0 : lowrank_rank_for_ratio(d_out, d_in, ratio);
        }
    for (int l = 0; l < L && j->ranks == RANKS_LORAP; l++)
        plan_lorap_attn(j, l);
    if (j->p->method == METHOD_LORAP) {
        double keep = floor(c->intermediate * (1 - j->p->ratio) + 0.5);
        j->ff_keep = keep < 2 ? 2 : (int)keep;
        for (int l = 0; l < L; l++)
            j->rank[l][PROJ_GATE] = j->rank[l][PROJ_UP] = j->rank[l][PROJ_DOWN] = 0;
    }
}

/* 0 for the attention projections, 1 for the MLP's. */
static int sublayer(int p) { return p <= PROJ_O ? 0 : 1; }

struct gain {
    double score;
    int m, i;
};

static int gain_cmp(const void *a, const void *b) {
    const struct gain *x = a, *y = b;
    if (x->score != y->score)
        return x->score > y->score ? -1 : 1;
    return x->m != y->m ? x->m - y->m : x->i - y->i;
}

static int ranks_file_read(struct job *j, const char *path, struct sv_err *err) {
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je), *a = json_object_get(root, "ranks");
    int r = 0;
    if (!json_is_array(a) || json_array_size(a) != (size_t)j->c->n_layers)
        r = sv_err_set(err, -EIO, "rank file '%s' is unreadable (restart the job)", path);
    for (int l = 0; l < j->c->n_layers && r == 0; l++)
        for (int p = 0; p < PROJ_COUNT && r == 0; p++) {
            json_t *v = json_array_get(json_array_get(a, (size_t)l), (size_t)p);
            int d_out, d_in;
            config_proj_shape(j->c, p, &d_out, &d_in);
            if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > (d_out < d_in ? d_out : d_in))
                r = sv_err_set(err, -EIO, "rank file '%s' is damaged (restart the job)", path);
            else
                j->rank[l][p] = (int)json_integer_value(v);
        }
    json_decref(root);
    return r;
}

/* --ranks auto: a pre-pass over all layers collects each matrix's spectrum
 * under the job's statistic (the original model's for the sequential
 * methods: their own statistics depend on the ranks being chosen), then one
 * greedy allocation. Needs hidden-0 (hex0); writes ranks.json so a resumed
 * job reuses it without the pre-pass. */
static int plan_auto(struct job *j, const char *hex0, struct sv_err *err) {
    const struct config *c = j->c;
    int r0;
    const int L = c->n_layers, M = L * PROJ_COUNT;
    char path[PATH_MAX + 64], in[PATH_MAX + 64], out[PATH_MAX + 64], hex[65], next[65], what[200];
    work_path(j, path, sizeof path, "ranks.json", 0);
    if (access(path, F_OK) == 0) {
        /* From a run that died before layer 0 was committed. */
        if (ranks_file_read(j, path, err) == 0)
            return 0;
        if ((r0 = drop_layers(j, 0, err->msg, err)) < 0)
            return r0;
        unlink(path);
    }
    enum compress_method m = j->p->method;
    if (method_sequential(m))
        m = METHOD_SVDLLM;
    enum stats_kind kind = stats_kind_of(m);
    double **spec = calloc((size_t)M, sizeof *spec);
    int *cap = calloc((size_t)M, sizeof *cap), r = 0;
    double *total = calloc((size_t)M, sizeof *total);
    struct layer_w lw = {0};
    struct stats st = {0};
    struct gain *g = NULL;
    if (!spec || !cap || !total) {
        r = sv_err_set(err, -ENOMEM, "rank allocation: out of memory");
        goto out;
    }
    snprintf(hex, sizeof hex, "%s", hex0);
    size_t ng = 0;
    for (int l = 0; l < L; l++) {
        if ((r = model_layer_load(j->m, l, &lw, err)) < 0)
            goto out;
        if (kind != STATS_NONE) {
            work_path(j, in, sizeof in, l == 0 ? "hidden-%d.f32" : "pre-%d.f32", l);
            work_path(j, out, sizeof out, "pre-%d.f32", l + 1);
            seg(j, 1.0);
            j->pass_phase = "allocate";
            r = stats_alloc(j, kind, &st, err);
            if (r == 0)
                r = calibrate_layer(j, &lw, &st, in, hex, out, next, err);
            j->pass_phase = NULL;
            if (r < 0)
                goto out;
            if (l > 0)
                unlink(in);
            memcpy(hex, next, sizeof hex);
        }
        seg(j, COST_SPECTRA);
        for (int p = 0; p < PROJ_COUNT; p++) {
            const struct linear *lin = &lw.proj[p];
            int mi = l * PROJ_COUNT + p, n = 0;
            model_proj_prefix(l, p, what, sizeof what);
            progress(j, l, "allocate", (double)p / PROJ_COUNT);
            const double *gi, *co;
            double *own;
            int nmax = lin->d_out > lin->d_in ? lin->d_out : lin->d_in;
            if (!(spec[mi] = malloc((size_t)nmax * sizeof **spec))) {
                r = sv_err_set(err, -ENOMEM, "rank allocation: out of memory");
                goto out;
            }
            if ((r = method_statistic(j, m, &st, p, lin, &own, &gi, &co, what, err)) == 0)
                r = lowrank_spectrum(lin->w, lin->d_out, lin->d_in, gi, co, spec[mi], &n, what, err);
            free(own);
            if (r < 0)
                goto out;
            for (int i = 0; i < n; i++)
                total[mi] += spec[mi][i];
            int be = (int)((double)lin->d_out * lin->d_in / (lin->d_out + lin->d_in));
            cap[mi] = be < 1 ? 1 : be < n ? be : n;
            ng += (size_t)cap[mi] - 1;
        }
        stats_free(&st);
        model_layer_free(&lw);
        if (cancelled(j)) {
            r = sv_err_set(err, -ECANCELED, "cancelled");
            goto out;
        }
    }
    work_path(j, out, sizeof out, "pre-%d.f32", L);
    unlink(out);
    /* Two budgets, attention's and the MLP's, each (1 - ratio) of its
     * parameters; within each the spectra decide across all layers and
     * matrices. The score is the share of the matrix's output energy an
     * eigenvalue carries, per parameter: raw eigenvalues are squared errors
     * in each matrix's own units, and ranking them together gave every rank
     * to the few matrices with the largest activations (ppl 207 / 2191 on
     * tinystories-656K at 0.4 / 0.6 against 131 / 269 uniform). Normalised,
     * one global budget measured 106 / 272 (and 93 / 229 on stories260K);
     * with the attention / MLP split 100 / 258 (94 / 193): relative errors of
     * the two sub-layers are not worth the same, as LoRAP also finds. */
    double budget[2] = {0, 0}; /* [sublayer(p)] */
    if (!(g = malloc((ng ? ng : 1) * sizeof *g))) {
        r = sv_err_set(err, -ENOMEM, "rank allocation: out of memory");
        goto out;
    }
    ng = 0;
    for (int mi = 0; mi < M; mi++) {
        int d_out, d_in, p = mi % PROJ_COUNT;
        config_proj_shape(c, p, &d_out, &d_in);
        double cost = d_out + d_in;
        j->rank[mi / PROJ_COUNT][p] = 1;
        budget[sublayer(p)] += (1 - j->p->ratio) * d_out * d_in - cost;
        double tot = total[mi];
        for (int i = 1; i < cap[mi]; i++)
            g[ng++] = (struct gain){tot > 0 ? spec[mi][i] / tot / cost : 0, mi, i};
    }
    for (int q = 0; q < 2; q++)
        if (budget[q] < 0) {
            r = sv_err_set(err, -EINVAL, "ratio %g leaves less than rank 1 for every matrix", j->p->ratio);
            goto out;
        }
    qsort(g, ng, sizeof *g, gain_cmp);
    for (size_t i = 0; i < ng; i++) {
        int l = g[i].m / PROJ_COUNT, p = g[i].m % PROJ_COUNT, d_out, d_in;
        config_proj_shape(c, p, &d_out, &d_in);
        /* Within a matrix the scores descend, so a taken gain always extends a prefix. */
        if (budget[sublayer(p)] >= d_out + d_in && g[i].i == j->rank[l][p]) {
            j->rank[l][p]++;
            budget[sublayer(p)] -= d_out + d_in;
        }
    }
    json_t *a = json_array();
    for (int l = 0; l < L; l++) {
        json_t *row = json_array();
        for (int p = 0; p < PROJ_COUNT; p++)
            json_array_append_new(row, json_integer(j->rank[l][p]));
        json_array_append_new(a, row);
    }
    json_t *root = json_pack("{s:s, s:o}", "allocation", "auto", "ranks", a);
    char *text = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!text) {
        r = sv_err_set(err, -ENOMEM, "rank allocation: out of memory");
        goto out;
    }
    r = write_file_atomic(j->p->work_dir, path, text, strlen(text), err);
    free(text);
out:
    stats_free(&st);
    model_layer_free(&lw);
    for (int mi = 0; spec && mi < M; mi++)
        free(spec[mi]);
    free(spec);
    free(cap);
    free(total);
    free(g);
    return r;
}

/* ---- output -------------------------------------------------------------- */

/* 1 if NAME is "model.layers.L.<proj><suffix>" for a layer of the job's model. */
static int is_proj_tensor(const struct job *j, const char *name, const char *suffix, int *ret_l, int *ret_p) {
    int l, n = 0;
    if (sscanf(name, "model.layers.%d.%n", &l, &n) != 1 || n == 0 || l < 0 || l >= j->c->n_layers)
        return 0;
    for (int p = 0; p < PROJ_COUNT; p++) {
        const char *pn = config_proj_name(p);
        size_t pl = strlen(pn);
        if (strncmp(name + n, pn, pl) == 0 && strcmp(name + n + pl, suffix) == 0) {
            *ret_l = l;
            *ret_p = p;
            return 1;
        }
    }
    return 0;
}

static int is_factored_name(const struct job *j, const char *name, int *ret_l, int *ret_p) {
    return is_proj_tensor(j, name, ".weight", ret_l, ret_p);
}

/* 1 if NAME is the bias of a projection ("model.layers.L.<proj>.bias"). */
static int is_bias_name(const struct job *j, const char *name, int *ret_l, int *ret_p) {
    return is_proj_tensor(j, name, ".bias", ret_l, ret_p);
}

/* A factored output is not a dense checkpoint: a loader that took it for
 * one (transformers' LlamaForCausalLM would find no <module>.weight,
 * initialise those layers at random and only warn) would compute garbage.
 * So its config names a model type and architecture of its own, which
 * AutoConfig, llama.cpp's converter and vLLM refuse by name, and keeps the
 * original ones in low_rank (base_model_type, base_architectures) for
 * config_load(), which reads "svdllm_<type>" as <type> with factor pairs
 * (the names are config.h's CONFIG_FACTORED_*). --dense outputs are plain
 * checkpoints and keep the original names. */
static void mark_factored_config(json_t *root, json_t *low_rank) {
    const char *mt = json_string_value(json_object_get(root, "model_type"));
    char type[96];
    snprintf(type, sizeof type, CONFIG_FACTORED_PREFIX "%s", mt ? mt : "llama");
    json_object_set(low_rank, "base_model_type", json_object_get(root, "model_type"));
    json_t *arch = json_object_get(root, "architectures");
    json_object_set_new(low_rank, "base_architectures", arch ? json_deep_copy(arch) : json_array());
    json_object_set_new(root, "model_type", json_string(type));
    json_object_set_new(root, "architectures", json_pack("[s]", CONFIG_FACTORED_ARCH));
}

static int write_config(const struct job *j, const char *dir, struct sv_err *err) {
    char src[PATH_MAX + 32], dst[PATH_MAX + 32];
    snprintf(src, sizeof src, "%s/config.json", j->p->model_dir);
    snprintf(dst, sizeof dst, "%s/config.json", dir);
    json_error_t jerr;
    json_t *root = json_load_file(src, 0, &jerr);
    if (!root)
        return sv_err_set(err, -EINVAL, "config '%s': %s", src, jerr.text);
    if (j->ff_keep) /* lorap: a plain LLaMA config with the pruned width */
        json_object_set_new(root, "intermediate_size", json_integer(j->ff_keep));
    int factored = 0;
    for (int l = 0; l < j->c->n_layers; l++)
        for (int p = 0; p < PROJ_COUNT; p++)
            factored += j->rank[l][p] > 0;
    if (!j->p->dense && factored) {
        json_t *ranks = json_object();
        char name[256];
        for (int l = 0; l < j->c->n_layers; l++)
            for (int p = 0; p < PROJ_COUNT; p++) {
                model_proj_prefix(l, p, name, sizeof name);
                if (j->rank[l][p])
                    json_object_set_new(ranks, name, json_integer(j->rank[l][p]));
            }
        json_t *lr = json_pack("{s:s, s:f, s:s, s:s, s:o}", "method", compress_method_name(j->p->method), "ratio",
                               j->p->ratio, "allocation", compress_ranks_name(j->ranks), "format",
                               "<module>.0.weight (rank, in) then <module>.1.weight (out, rank), and "
                               "<module>.1.bias (out) for a module with a bias: "
                               "torch.nn.Sequential(Linear(in, rank, bias=False), Linear(rank, out, "
                               "bias=<module has a bias>))",
                               "ranks", ranks);
        json_object_set_new(root, "low_rank", lr);
        mark_factored_config(root, lr);
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

/* The output is assembled from mapped files; each tensor's pages are dropped
 * once copied (st_release), or resident memory would grow with the model. */
static int write_released(struct st_writer *w, const struct st_model *src, const struct st_tensor *t,
                          struct sv_err *err) {
    int r = st_writer_write_raw(w, t->name, t->data, t->nbytes, err);
    st_release(src, t->name);
    return r;
}

/* write_released under another name: a factored module's bias becomes
 * "<module>.1.bias", the second Linear's (model.h). */
static int write_released_as(struct st_writer *w, const struct st_model *src, const struct st_tensor *t,
                             const char *name, struct sv_err *err) {
    int r = st_writer_write_raw(w, name, t->data, t->nbytes, err);
    st_release(src, t->name);
    return r;
}

static int read_released(const struct st_model *m, const char *name, int r) {
    st_release(m, name);
    return r;
}

static int write_model(struct job *j, const char *dir, uint64_t *params_after, struct sv_err *err) {
    struct st_model *src = j->m->st;
    struct st_model **layers = calloc((size_t)j->c->n_layers, sizeof *layers);
    struct st_writer *w = NULL;
    char path[PATH_MAX + 64], name[ST_MAX_NAME + 32];
    int r = 0, entered = 0;
    float *buf = NULL, *buf2 = NULL;
    if (!layers)
        return sv_err_set(err, -ENOMEM, "output: out of memory");
    for (int l = 0; l < j->c->n_layers && r == 0; l++) {
        work_path(j, path, sizeof path, "layer-%d.safetensors", l);
        r = st_open_file(&layers[l], path, err);
    }
    if (r < 0)
        goto out;
    /* The checkpoints are mapped (daemon's files); the rest writes OUT.tmp. */
    if ((r = user_enter(j, err)) < 0)
        goto out;
    entered = 1;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if ((r = st_writer_new(&w, path, err)) < 0 || (r = st_writer_meta(w, "format", "pt", err)) < 0)
        goto out;
    *params_after = 0;
    /* Pass 1 declares, pass 2 writes, in the same (name) order. */
    for (int pass = 0; pass < 2 && r == 0; pass++) {
        for (size_t i = 0; i < st_count(src) && r == 0; i++) {
            const struct st_tensor *t = st_get(src, i);
            int l, p;
            if (!j->p->dense && is_bias_name(j, t->name, &l, &p) && j->rank[l][p] > 0) {
                /* Only the weight is factored; the bias is copied as it is. */
                model_bias_name(l, p, j->rank[l][p], name, sizeof name);
                if (pass == 0)
                    r = st_writer_declare(w, name, t->dtype, t->ndim, t->shape, err);
                else
                    r = write_released_as(w, src, t, name, err);
                continue;
            }
            if (!is_factored_name(j, t->name, &l, &p)) {
                if (pass == 0)
                    r = st_writer_declare(w, t->name, t->dtype, t->ndim, t->shape, err);
                else
                    r = write_released(w, src, t, err);
                continue;
            }
            int d_out = (int)t->shape[0], d_in = (int)t->shape[1], k = j->rank[l][p];
            char pre[200];
            model_proj_prefix(l, p, pre, sizeof pre);
            if (!k) { /* kept dense: the original, or its pruned replacement in the checkpoint */
                snprintf(name, sizeof name, "%s.weight", pre);
                const struct st_tensor *pt = st_find(layers[l], name);
                if (!pt) {
                    if (pass == 0)
                        r = st_writer_declare(w, t->name, t->dtype, t->ndim, t->shape, err);
                    else
                        r = write_released(w, src, t, err);
                    *params_after += pass == 0 ? (uint64_t)d_out * (uint64_t)d_in : 0;
                    continue;
                }
                size_t n = (size_t)pt->shape[0] * (size_t)pt->shape[1];
                if (pass == 0) {
                    r = st_writer_declare(w, t->name, t->dtype, 2, pt->shape, err);
                    *params_after += n;
                    continue;
                }
                if (!(buf = malloc(n * sizeof *buf))) {
                    r = sv_err_set(err, -ENOMEM, "output: out of memory for '%s'", t->name);
                    goto out;
                }
                if ((r = read_released(layers[l], name, st_read_f32(layers[l], name, buf, n, err))) == 0)
                    r = st_writer_write_f32(w, t->name, buf, n, err);
                free(buf);
                buf = NULL;
                continue;
            }
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
                if ((r = read_released(layers[l], name, st_read_f32(layers[l], name, buf, (size_t)k * d_in, err))) < 0)
                    goto out;
                snprintf(name, sizeof name, "%s.1.weight", pre);
                if ((r = read_released(layers[l], name, st_read_f32(layers[l], name, buf2, (size_t)d_out * k, err))) < 0)
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
                if ((r = read_released(layers[l], name, st_read_f32(layers[l], name, buf, n, err))) == 0)
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
    if (entered)
        r = user_leave(j, r, err);
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
        rank_rule(j),
        "nsamples", j->p->nsamples, "seqlen", j->p->seqlen, "seed", (int)j->p->seed, "calibration_windows",
        j->p->calib_first ? "first" : "random", "calibration", j->p->calib_path, "dense", j->p->dense,
        "linear_params_before", (json_int_t)res->params_before, "linear_params_after", (json_int_t)res->params_after,
        "bytes_before", (json_int_t)res->bytes_before, "bytes_after", (json_int_t)res->bytes_after);
    if (j->p->method == METHOD_ASVD)
        json_object_set_new(root, "alpha", json_real(job_alpha(j->p)));
    if (j->p->method == METHOD_RRR) {
        json_t *grid = json_array();
        for (int li = 0; li < RRR_NLAMBDA; li++)
            json_array_append_new(grid, json_real(rrr_lambdas[li]));
        json_object_set_new(root, "rrr",
                            json_pack("{s:o, s:i, s:f, s:s}", "lambda_grid", grid, "heldout_windows",
                                      rrr_held_windows(j->n_samples), "lambda_fixed", RRR_LAMBDA_FIXED, "rule",
                                      "per matrix, the grid value whose factors fitted on the other windows have the "
                                      "lowest loss on the held-out windows (the last nsamples/8, at least 1, when "
                                      "nsamples >= 4; else lambda_fixed); then fitted on all windows"));
    }
    if (res->ppl_before > 0) {
        json_t *ev = json_pack("{s:s, s:i, s:f, s:f, s:s}", "text", j->p->eval_path, "seqlen",
                               j->p->eval_seqlen ? j->p->eval_seqlen : j->p->seqlen, "before", res->ppl_before,
                               "after", res->ppl_after, "protocol",
                               "whole text tokenized once with one BOS; non-overlapping windows of L tokens from "
                               "position 0; L-1 predictions per window; exp(mean NLL)");
        /* Wall-clock: the only values here, with each matrix's "seconds",
         * that differ between two runs of the same job. */
        json_object_set_new(ev, "speed",
                            json_pack("{s:f, s:f, s:f, s:i, s:s}", "tokens_per_s_before", res->tok_s_before,
                                      "tokens_per_s_after", res->tok_s_after, "ratio",
                                      res->tok_s_before > 0 ? res->tok_s_after / res->tok_s_before : 0.0,
                                      "threads", forward_threads_get(), "measured",
                                      "the evaluation's batched forward pass (all windows, logits and NLL "
                                      "included), original then compressed model, in this job"));
        json_object_set_new(root, "perplexity", ev);
    }
    json_object_set_new(root, "threads", json_integer(forward_threads_get()));
    /* Wall-clock too, like each matrix's seconds: this run's phases. */
    const struct job_timing *t = &j->t;
    json_object_set_new(root, "timing",
                        json_pack("{s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:I, s:I}", "calibration_forward", t->forward,
                                  "statistics", t->statistics, "factorize", t->factorize, "write", t->write,
                                  "assemble", t->assemble, "eval", t->eval, "total", mono_now() - j->t_start,
                                  "tokens", (json_int_t)j->n_samples * j->T, "passes", (json_int_t)t->passes));
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
    if ((r = user_enter(j, err)) == 0)
        r = user_leave(j, write_file_atomic(dir, path, text, n + 1, err), err);
    free(text);
    return r;
}

/* Files of the model directory copied into the output when present. */
static const char *const model_extra_files[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                                "generation_config.json", "tokenizer.model"};
#define N_MODEL_EXTRA_FILES (sizeof model_extra_files / sizeof model_extra_files[0])

/* Builds the output in tmp (OUT.tmp): config, model, tokenizer files. All
 * of it with the submitter's rights, except reading the checkpoints
 * (write_model switches around them). */
static int assemble(struct job *j, const char *tmp, struct compress_result *res, struct sv_err *err) {
    char path[PATH_MAX * 2], src[PATH_MAX * 2];
    int r = user_enter(j, err);
    if (r < 0)
        return r;
    remove_tree(tmp);
    if (mkdir(tmp, 0755) < 0)
        r = sv_err_set(err, -errno, "output '%s': %s", tmp, strerror(errno));
    if (r == 0)
        r = write_config(j, tmp, err);
    if ((r = user_leave(j, r, err)) < 0)
        return r;
    if ((r = write_model(j, tmp, &res->params_after, err)) < 0)
        return r;
    if ((r = user_enter(j, err)) < 0)
        return r;
    for (size_t i = 0; i < N_MODEL_EXTRA_FILES && r == 0; i++) {
        snprintf(src, sizeof src, "%s/%s", j->p->model_dir, model_extra_files[i]);
        snprintf(path, sizeof path, "%s/%s", tmp, model_extra_files[i]);
        if (access(src, F_OK) == 0)
            r = copy_file(src, path, err);
    }
    if (r == 0) {
        snprintf(path, sizeof path, "%s/model.safetensors", tmp);
        res->bytes_after = file_size(path);
        for (size_t i = 0; i < st_shard_count(j->m->st); i++)
            res->bytes_before += file_size(st_shard_path(j->m->st, i));
    }
    return user_leave(j, r, err);
}

/* Renames tmp over OUT. An existing OUT is replaced only with overwrite, or
 * when it is this job's own earlier output (same job key in its report: the
 * daemon died after publishing but before recording the job as done). The
 * daemon's output rules (hooks->output_check) are checked again first: what
 * is at OUT now may not be what was there at submit. */
static int publish(struct job *j, const char *tmp, const char *key, struct sv_err *err) {
    char parent[PATH_MAX];
    int r;
    if (j->h && j->h->output_check && (r = j->h->output_check(j->h->ctx, j->p->out_dir, err)) < 0)
        return r;
    if ((r = user_enter(j, err)) < 0)
        return r;
    if ((r = fsync_dir(tmp, err)) < 0)
        goto out;
    struct stat sb;
    if (lstat(j->p->out_dir, &sb) == 0) {
        if (!j->p->overwrite && !own_output(j->p->out_dir, key)) {
            r = sv_err_set(err, -EEXIST, "output directory '%s' appeared while the job ran (submit with overwrite "
                           "to replace it)", j->p->out_dir);
            goto out;
        }
        char old[PATH_MAX + 16];
        snprintf(old, sizeof old, "%s.old", j->p->out_dir);
        remove_tree(old);
        if (rename(j->p->out_dir, old) < 0) {
            r = sv_err_set(err, -errno, "output '%s': %s", j->p->out_dir, strerror(errno));
            goto out;
        }
        remove_tree(old);
    }
    if (rename(tmp, j->p->out_dir) < 0) {
        r = sv_err_set(err, -errno, "output '%s': %s", j->p->out_dir, strerror(errno));
        goto out;
    }
    parent_dir(j->p->out_dir, parent, sizeof parent);
    r = fsync_dir(parent, err);
out:
    return user_leave(j, r, err);
}

static int eval_cancel(void *ctx) { return cancelled(ctx); }

static void layer_scratch_free(struct stats *st, struct layer_w *lw, struct lowrank_result *res, float *pruned[3]) {
    stats_free(st);
    model_layer_free(lw);
    for (int q = 0; q < PROJ_COUNT; q++)
        lowrank_result_free(&res[q]);
    for (int m = 0; m < 3; m++) {
        free(pruned[m]);
        pruned[m] = NULL;
    }
}

/* ---- submit-time checks ----------------------------------------------------- */

/* The rank rule of p on config c gives every factored matrix rank >= 1 (and
 * method lorap keeps >= 1 MLP channel), before any clamping: a ratio that
 * needs rank 0 cannot be honoured. */
static int precheck_ranks(const struct compress_params *p, const struct config *c, struct sv_err *err) {
    enum compress_ranks rule = p->ranks != RANKS_DEFAULT ? p->ranks
                               : p->method == METHOD_LORAP ? RANKS_LORAP
                               : p->layers                 ? RANKS_LAST_N
                                                           : RANKS_UNIFORM;
    const int L = c->n_layers;
    if (rule == RANKS_AUTO) { /* every matrix starts at rank 1 out of its sub-layer's budget */
        double budget[2] = {0, 0}, need[2] = {0, 0};
        for (int q = 0; q < PROJ_COUNT; q++) {
            int d_out, d_in;
            config_proj_shape(c, q, &d_out, &d_in);
            budget[sublayer(q)] += (double)L * (1 - p->ratio) * d_out * d_in;
            need[sublayer(q)] += (double)L * (d_out + d_in);
        }
        for (int q = 0; q < 2; q++)
            if (budget[q] < need[q])
                return sv_err_set(err, -EINVAL,
                                  "ratio %g leaves the %s %.0f parameters, fewer than the %.0f of rank 1 for each of "
                                  "its matrices",
                                  p->ratio, q ? "MLP" : "attention", budget[q], need[q]);
        return 0;
    }
    double ratio = rule == RANKS_LAST_N ? p->ratio * L / p->layers : p->ratio;
    for (int q = 0; q < PROJ_COUNT; q++) {
        if (p->method == METHOD_LORAP && q >= PROJ_GATE)
            continue; /* pruned, checked below */
        if (rule == RANKS_LORAP && q <= PROJ_O)
            continue; /* the split, checked below */
        int d_out, d_in;
        config_proj_shape(c, q, &d_out, &d_in);
        double k = floor((double)d_out * d_in * (1.0 - ratio) / ((double)d_out + d_in) + 1e-9);
        if (k < 1)
            return sv_err_set(err, -EINVAL,
                              "ratio %g leaves %s (%d x %d) rank %.0f; every matrix keeps rank 1 up to ratio %.4g%s",
                              p->ratio, config_proj_name(q), d_out, d_in, k,
                              (1.0 - ((double)d_out + d_in) / ((double)d_out * d_in)) *
                                  (rule == RANKS_LAST_N ? (double)p->layers / L : 1.0),
                              rule == RANKS_LAST_N ? " (last-n: ratio * layers / n_layers)" : "");
    }
    if (rule == RANKS_LORAP) { /* as plan_lorap_attn */
        int dout[4], din[4];
        double total = 0;
        for (int q = 0; q <= PROJ_O; q++) {
            config_proj_shape(c, q, &dout[q], &din[q]);
            total += (double)dout[q] * din[q];
        }
        double split = p->attn_split > 0 ? p->attn_split : 3.0, keep = (1 - p->ratio) * total;
        double k_qk = floor(keep / (1 + split) / (dout[0] + din[0] + dout[1] + din[1]));
        double k_vo = floor(keep * split / (1 + split) / (dout[2] + din[2] + dout[3] + din[3]));
        if (k_qk < 1 || k_vo < 1)
            return sv_err_set(err, -EINVAL, "ratio %g with attn_split %g leaves %s rank %.0f", p->ratio, split,
                              k_qk < 1 ? "q_proj/k_proj" : "v_proj/o_proj", k_qk < 1 ? k_qk : k_vo);
    }
    if (p->method == METHOD_LORAP && floor(c->intermediate * (1 - p->ratio) + 0.5) < 1)
        return sv_err_set(err, -EINVAL, "ratio %g prunes every one of the %d MLP channels", p->ratio, c->intermediate);
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

int compress_precheck(const struct compress_params *p, compress_readable_fn readable, void *ctx,
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
    for (int l = 0; l < c->n_layers && r == 0; l++)
        for (int q = 0; q < PROJ_COUNT && r == 0; q++)
            if (c->rank[l][q])
                r = sv_err_set(err, -ENOTSUP, "model '%s' is already low-rank; compress the original model",
                               p->model_dir);
    for (size_t i = 0; readable && i < N_MODEL_EXTRA_FILES && r == 0; i++) {
        snprintf(path, sizeof path, "%s/%s", p->model_dir, model_extra_files[i]);
        if (access(path, F_OK) == 0 || errno != ENOENT)
            r = readable(ctx, path, err);
    }
    if (r < 0)
        goto out;
    *ret_what = COMPRESS_CHECK_RATIO;
    if ((r = precheck_ranks(p, c, err)) < 0)
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

int compress_run(const struct compress_params *p, const struct compress_hooks *h, struct compress_result *ret,
                 struct sv_err *err) {
    struct job j = {.p = p, .h = h, .t_start = mono_now(), .n_samples = p->nsamples, .T = p->seqlen};
    struct compress_result res = {0};
    struct cost cost = {0};
    char tmp[PATH_MAX + 16] = "";
    int assembling = 0;
    char key[65], path[PATH_MAX + 64], hex[65] = "", next_hex[65], orig_hex[65] = "", orig_next_hex[65];
    int r;
    struct layer_w lw = {0};
    struct stats st = {0};
    struct lowrank_result lres[PROJ_COUNT];
    struct mat_report rep[PROJ_COUNT];
    float *pruned[3] = {NULL, NULL, NULL};
    memset(lres, 0, sizeof lres);
    /* The inputs and the output's parent, with the submitter's rights. */
    if ((r = user_enter(&j, err)) < 0)
        return r;
    if ((r = compress_job_key(p, key, err)) == 0 && (r = compress_params_check(p, err)) == -EEXIST &&
        own_output(p->out_dir, key))
        r = 0;
    if ((r = user_leave(&j, r, err)) < 0)
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
    if ((r = user_enter(&j, err)) < 0)
        return r;
    r = model_open(&j.m, p->model_dir, err); /* mapped: later reads need no access check */
    if ((r = user_leave(&j, r, err)) < 0)
        goto out;
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
    j.ranks = resolve_ranks(p->method, p->ranks, p->layers);
    /* rom, svdllm-update, rrr: the states come from the compressed model */
    const int sequential = method_sequential(p->method);
    plan_ranks(&j);
    struct compress_cost_in ci;
    compress_cost_in_of(p, &ci);
    cost_init(&cost, &ci, c->n_layers);
    j.cost = &cost;

    /* Resume: the first layer without a committed checkpoint. A damaged one
     * is recomputed with every later layer (their rows are forgotten first). */
    char why[SV_ERR_MSG_MAX];
    int l0 = 0;
    while (l0 < c->n_layers) {
        if ((r = layer_committed(&j, l0, why, sizeof why, err)) < 0)
            goto out;
        if (r == 2 && (r = drop_layers(&j, l0, why, err)) < 0)
            goto out;
        if (r != 1)
            break;
        l0++;
    }
    r = 0;
    /* --ranks auto: every layer's ranks come from ranks.json; without it
     * (or damaged) the allocation and so every layer is redone. */
    if (j.ranks == RANKS_AUTO && l0 > 0) {
        work_path(&j, path, sizeof path, "ranks.json", 0);
        if (ranks_file_read(&j, path, err) < 0) {
            if ((r = drop_layers(&j, 0, err->msg, err)) < 0)
                goto out;
            unlink(path);
            l0 = 0;
        }
    }
    res.layers_resumed = l0;
    j.layers_done = l0;
    /* What a resumed run repeats holds the fraction at its checkpoints'. */
    if (l0 > 0)
        seg_at(&j, cost_layer_start(&cost, l0));

    int eval_L = p->eval_seqlen ? p->eval_seqlen : p->seqlen;
    if (p->eval_path[0]) {
        if (l0 == 0)
            seg(&j, cost.eval_w);
        progress(&j, l0, "eval", 0);
        struct ppl_result pr;
        double t_e = mono_now();
        if ((r = user_enter(&j, err)) < 0)
            goto out;
        r = ppl_eval(p->model_dir, p->eval_path, eval_L, (size_t)p->eval_max_windows, eval_cancel, &j, &pr, err);
        if ((r = user_leave(&j, r, err)) < 0)
            goto out;
        j.t.eval += mono_now() - t_e;
        res.ppl_before = pr.ppl;
        res.tok_s_before = pr.tokens_per_s;
    }

    int need_calib = p->method != METHOD_SVD; /* svd: G = I, also for its auto pre-pass */
    if (need_calib && l0 < c->n_layers) {
        if (l0 == 0) {
            seg(&j, COST_CALIB0);
            progress(&j, 0, "calibrate", 0);
            double t_h = mono_now();
            if ((r = make_hidden0(&j, hex, err)) < 0)
                goto out;
            j.t.write += mono_now() - t_h;
            snprintf(orig_hex, sizeof orig_hex, "%s", hex);
        } else {
            char want[65], want_orig[65] = "", in[PATH_MAX + 64];
            if ((r = layer_meta(&j, l0 - 1, "hidden_next_sha256", want, sizeof want, err)) < 0 ||
                (method_two_streams(p->method) &&
                 (r = layer_meta(&j, l0 - 1, "orig_next_sha256", want_orig, sizeof want_orig, err)) < 0))
                goto out;
            work_path(&j, in, sizeof in, "hidden-%d.f32", l0);
            int ok = states_intact(in, want, why, sizeof why);
            if (ok && method_two_streams(p->method)) {
                work_path(&j, in, sizeof in, "orig-%d.f32", l0);
                ok = states_intact(in, want_orig, why, sizeof why);
            }
            if (!ok) {
                size_t n = strlen(why);
                snprintf(why + n, sizeof why - n, "; regenerating them through layers 0..%d", l0 - 1);
                double t_h = mono_now();
                if ((r = drop_layers(&j, l0, why, err)) < 0 ||
                    (r = replay_states(&j, l0, want, want_orig, hex, orig_hex, err)) < 0)
                    goto out;
                j.t.write += mono_now() - t_h;
            } else {
                memcpy(hex, want, sizeof hex);
                memcpy(orig_hex, want_orig, sizeof orig_hex);
            }
        }
    }
    if (j.ranks == RANKS_AUTO && l0 == 0 && (r = plan_auto(&j, hex, err)) < 0)
        goto out;
    enum stats_kind kind = stats_kind_of(p->method);
    for (int l = l0; l < c->n_layers; l++) {
        if (cancelled(&j)) {
            r = sv_err_set(err, -ECANCELED, "cancelled before layer %d", l);
            goto out;
        }
        seg_at(&j, cost_layer_start(&cost, l));
        progress(&j, l, "statistics", 0);
        if ((r = model_layer_load(j.m, l, &lw, err)) < 0)
            goto out;
        next_hex[0] = orig_next_hex[0] = '\0';
        memset(lres, 0, sizeof lres);
        memset(rep, 0, sizeof rep);
        if (sequential) {
            r = (p->method == METHOD_RRR ? rrr_layer : seq_layer)(&j, &lw, lres, rep, hex, orig_hex, next_hex,
                                                                   orig_next_hex, err);
        } else {
            int comp = l >= cost.first;
            if (p->method != METHOD_SVD) {
                char in[PATH_MAX + 64];
                work_path(&j, in, sizeof in, "hidden-%d.f32", l);
                work_path(&j, path, sizeof path, "hidden-%d.f32", l + 1);
                seg(&j, 1.0);
                if ((r = stats_alloc(&j, kind, &st, err)) == 0)
                    r = calibrate_layer(&j, &lw, &st, in, hex, path, next_hex, err);
            }
            seg(&j, !comp ? 0 : p->method == METHOD_LORAP ? COST_FACTOR * (factor_share[0] + factor_share[1])
                                                           : COST_FACTOR);
            if (r == 0)
                r = factor_matrices(&j, p->method, &lw, &st, !j.ff_keep, lres, rep, err);
            if (r == 0 && j.ff_keep) {
                seg(&j, COST_REFIT);
                r = lorap_prune(&j, &lw, &st, pruned, rep, err);
            }
        }
        for (int q = 0; q < PROJ_COUNT; q++)
            if (!lres[q].k && rep[q].kind != MAT_PRUNED)
                rep[q].kind = MAT_DENSE;
        struct compress_checkpoint ck;
        double t_w = mono_now();
        if (r == 0)
            r = write_layer(&j, &lw, lres, pruned, rep, next_hex, orig_next_hex, &ck, err);
        j.t.write += mono_now() - t_w;
        layer_scratch_free(&st, &lw, lres, pruned);
        if (r < 0)
            goto out;
        if (h && h->layer_done && (r = h->layer_done(h->ctx, l, &ck, err)) < 0)
            goto out;
        fault_point("after-commit", l);
        /* Committed: the input states of this layer are no longer needed. */
        work_path(&j, path, sizeof path, "hidden-%d.f32", l);
        unlink(path);
        work_path(&j, path, sizeof path, "orig-%d.f32", l);
        unlink(path);
        memcpy(hex, next_hex, sizeof hex);
        memcpy(orig_hex, orig_next_hex, sizeof orig_hex);
        j.layers_done = l + 1;
        seg_at(&j, cost_layer_start(&cost, l + 1));
        progress(&j, l + 1, "statistics", 0);
        for (int i = 0; i < 3000 && fault_is("stall-after-commit", l) && !cancelled(&j) && !fault_released(); i++)
            usleep(20000);
    }
    seg_at(&j, cost_layer_start(&cost, c->n_layers));
    seg(&j, c->n_layers * COST_ASSEMBLE);
    progress(&j, c->n_layers, "assemble", 0);
    snprintf(tmp, sizeof tmp, "%s.tmp", p->out_dir);
    assembling = 1;
    double t_a = mono_now();
    if ((r = assemble(&j, tmp, &res, err)) < 0)
        goto out;
    j.t.assemble = mono_now() - t_a;
    if (p->eval_path[0]) {
        seg(&j, cost.eval_w);
        progress(&j, c->n_layers, "eval", 0);
        struct ppl_result pr;
        double t_e = mono_now();
        if ((r = user_enter(&j, err)) < 0)
            goto out;
        r = ppl_eval(tmp, p->eval_path, eval_L, (size_t)p->eval_max_windows, eval_cancel, &j, &pr, err);
        if ((r = user_leave(&j, r, err)) < 0)
            goto out;
        j.t.eval += mono_now() - t_e;
        res.ppl_after = pr.ppl;
        res.tok_s_after = pr.tokens_per_s;
    }
    if ((r = write_report(&j, tmp, key, &res, err)) < 0 || (r = publish(&j, tmp, key, err)) < 0)
        goto out;
    res.seconds = mono_now() - j.t_start;
    j.layers_done = c->n_layers;
    seg_at(&j, cost.total);
    progress(&j, c->n_layers, "done", 1);
    if (ret)
        *ret = res;
out:
    /* No half-built output is left behind; where it cannot be removed, the
     * error says so. */
    if (r < 0 && assembling) {
        int rm = remove_tree(tmp);
        if (rm < 0 && rm != -ENOENT && err) {
            size_t n = strlen(err->msg);
            snprintf(err->msg + n, sizeof err->msg - n, "; the partial output '%.300s' could not be removed: %s", tmp,
                     strerror(-rm));
        }
    }
    layer_scratch_free(&st, &lw, lres, pruned);
    free(j.rank);
    model_free(j.m);
    return r;
}
