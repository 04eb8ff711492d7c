/* calib: the calibration states. The windows (choose_windows: a documented,
 * seeded rule), hidden-0 (their embeddings), the pass of states through a
 * layer with taps (calib_stream_pass: several streams in lockstep, bounded
 * memory, checksums on read and write), the original layer's pass that
 * feeds stats.c (calib_layer), and on resume the check and regeneration of
 * the states entering the first layer to compute (calib_states_intact,
 * calib_replay). The state files are WORK/hidden-L.f32, orig-L.f32 and
 * pre-L.f32 (jobfiles.c's note lists the work directory); they are written
 * atomically and their sha256 is recorded in the previous layer's
 * checkpoint. */
#include "calib.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "afile.h"
#include "corpus.h"
#include "jobfiles.h"
#include "lowrank.h"
#include "mono.h"

#define CHUNK_TOKENS 4096
#define CHUNK_BYTES ((size_t)256 << 20)

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

/* Writes hidden-0.f32: the embeddings of the chosen windows. */
int calib_hidden0(struct job *j, char hex[65], struct sv_err *err) {
    int32_t *ids = NULL;
    size_t n = 0, *win = NULL;
    float *x = NULL;
    int r = job_user_enter(j, err);
    if (r < 0)
        return r;
    r = corpus_load(j->p->calib_path, j->p->model_dir, j->c->vocab, &ids, &n, err);
    if ((r = job_user_leave(j, r, err)) < 0) {
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
    job_work_path(j, path, sizeof path, "hidden-%d.f32", 0);
    int fd = afile_tmp_open(path, tmp, sizeof tmp, err);
    if (fd < 0) {
        r = fd;
        goto out;
    }
    struct sha256 h;
    sha256_init(&h);
    size_t bytes = (size_t)j->T * j->c->hidden * sizeof *x;
    for (int s = 0; s < j->n_samples && r == 0; s++) {
        if ((r = model_embed(j->m, ids + win[s] * (size_t)j->T, (size_t)j->T, x, err)) == 0)
            r = afile_write_full(fd, x, bytes, tmp, err);
        sha256_update(&h, x, bytes);
    }
    if ((r = afile_tmp_finish(fd, r, tmp, path, j->p->work_dir, err)) == 0) {
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

/* Samples per chunk: up to CHUNK_TOKENS tokens, fewer when the forward
 * pass's activations of a chunk (the state, the norm, q/k/v/attention,
 * gate/up: about 4 (3 d + 2 qw + 2 kvw + 2 ff) bytes a token) would pass
 * CHUNK_BYTES: 1280 tokens at LLaMA-7B, so one layer's memory stays
 * bounded whatever the calibration size. */
static int chunk_samples(const struct job *j) {
    const struct config *c = j->c;
    size_t d = (size_t)c->hidden;
    size_t tok_bytes = 4 * (3 * d + 2 * (size_t)c->n_heads * c->head_dim + 2 * (size_t)c->n_kv_heads * c->head_dim +
                            2 * (size_t)c->intermediate);
    size_t per_tok = CHUNK_TOKENS, cap = CHUNK_BYTES / tok_bytes;
    per_tok = per_tok < cap ? per_tok : cap;
    int per = (int)(per_tok / (size_t)j->T);
    return per < 1 ? 1 : per;
}

/* Opens stream s: its input, a buffer of `bytes`, and out.tmp when it has an out. */
static int stream_open(struct calib_stream *s, size_t bytes, struct sv_err *err) {
    if ((s->fd_in = open(s->in, O_RDONLY | O_CLOEXEC)) < 0)
        return sv_err_set(err, -errno, "calibration states '%s': %s", s->in, strerror(errno));
    if (!(s->x = malloc(bytes)))
        return sv_err_set(err, -ENOMEM, "calibration: out of memory");
    if (s->out[0] && (s->fd_out = afile_tmp_open(s->out, s->tmp, sizeof s->tmp, err)) < 0)
        return s->fd_out;
    sha256_init(&s->h_in);
    sha256_init(&s->h_out);
    return 0;
}

/* Samples s0..s0+nb-1 of stream s: read, hashed, through the layer, written. */
static int stream_chunk(struct job *j, struct calib_stream *s, int s0, int nb, struct sv_err *err) {
    const size_t row = (size_t)j->T * (size_t)j->c->hidden * sizeof(float), want = (size_t)nb * row;
    size_t got = 0;
    double t_io = mono_now();
    while (got < want) {
        ssize_t k = pread(s->fd_in, (char *)s->x + got, want - got, (off_t)((size_t)s0 * row + got));
        if (k <= 0)
            return sv_err_set(err, -EIO, "calibration states '%s' are truncated (restart the job)", s->in);
        got += (size_t)k;
    }
    if (s->in_hex)
        sha256_update(&s->h_in, s->x, want);
    double t_fw = mono_now(), tap0 = job_tap_seconds;
    j->t.write += t_fw - t_io;
    int r = forward_layer(j->c, s->lw, s->x, nb, j->T, s->taps, err);
    if (r < 0)
        return r;
    double t_end = mono_now();
    j->t.statistics += job_tap_seconds - tap0;
    j->t.forward += t_end - t_fw - (job_tap_seconds - tap0);
    if (s->fd_out >= 0) {
        sha256_update(&s->h_out, s->x, want);
        if ((r = afile_write_full(s->fd_out, s->x, want, s->tmp, err)) < 0)
            return r;
    }
    j->t.write += mono_now() - t_end;
    return 0;
}

/* After the last chunk: the input's checksum checked, the output renamed
 * into place and its checksum returned. */
static int stream_finish(const struct job *j, struct calib_stream *s, struct sv_err *err) {
    uint8_t dg[32];
    char hex[65];
    if (s->in_hex) {
        sha256_final(&s->h_in, dg);
        sha256_hex(dg, hex);
        if (strcmp(hex, s->in_hex) != 0)
            return sv_err_set(err, -EIO, "calibration states '%s' do not match their recorded checksum", s->in);
    }
    if (s->fd_out >= 0) {
        int r = afile_tmp_finish(s->fd_out, 0, s->tmp, s->out, j->p->work_dir, err);
        s->fd_out = -1;
        if (r < 0)
            return r;
        sha256_final(&s->h_out, dg);
        sha256_hex(dg, s->out_hex);
    }
    return 0;
}

int calib_stream_pass(struct job *j, int layer, struct calib_stream *s, int ns, struct sv_err *err) {
    const size_t row = (size_t)j->T * (size_t)j->c->hidden * sizeof(float);
    const int per = chunk_samples(j);
    int r = 0;
    for (int i = 0; i < ns; i++) {
        s[i].fd_in = s[i].fd_out = -1;
        s[i].x = NULL;
    }
    for (int i = 0; i < ns && r == 0; i++)
        if ((r = stream_open(&s[i], (size_t)per * row, err)) == 0)
            j->t.passes++;
    for (int s0 = 0; s0 < j->n_samples && r == 0; s0 += per) {
        int nb = j->n_samples - s0 < per ? j->n_samples - s0 : per;
        for (int i = 0; i < ns && r == 0; i++)
            r = stream_chunk(j, &s[i], s0, nb, err);
        if (r == 0 && job_cancelled(j))
            r = sv_err_set(err, -ECANCELED, "cancelled");
        if (r == 0)
            job_progress(j, layer, j->pass_phase ? j->pass_phase : "statistics", (double)(s0 + nb) / j->n_samples);
    }
    for (int i = 0; i < ns && r == 0; i++)
        r = stream_finish(j, &s[i], err);
    for (int i = 0; i < ns; i++) {
        if (s[i].fd_out >= 0) {
            close(s[i].fd_out);
            unlink(s[i].tmp);
        }
        if (s[i].fd_in >= 0)
            close(s[i].fd_in);
        free(s[i].x);
    }
    return r;
}

/* Runs the original layer over the states in in_path, accumulating the
 * statistics in s and writing the next layer's states to out_path. */
int calib_layer(struct job *j, const struct layer_w *lw, struct stats *s, const char *in_path,
                           const char *in_hex, const char *out_path, char next_hex[65], struct sv_err *err) {
    struct forward_taps taps = {.ctx = s, .input = stats_input, .output = stats_output};
    struct calib_stream st = {.in_hex = in_hex, .out_hex = next_hex, .lw = lw, .taps = &taps};
    snprintf(st.in, sizeof st.in, "%s", in_path);
    snprintf(st.out, sizeof st.out, "%s", out_path);
    return calib_stream_pass(j, lw->index, &st, 1, err);
}

/* Paths of the two calibration streams entering layer l: the compressed
 * model's (hidden-L, shared with the other methods) and the original
 * model's (orig-L; at layer 0 both are the embeddings, hidden-0). */
void calib_orig_path(const struct job *j, char *buf, size_t n, int l) {
    job_work_path(j, buf, n, l == 0 ? "hidden-%d.f32" : "orig-%d.f32", l);
}

/* 1 if the calibration states at path are the bytes of checksum hex; 0 if
 * not (why filled). */
int calib_states_intact(const char *path, const char *hex, char *why, size_t n_why) {
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

/* Regenerates the calibration states entering layer k (hidden-k, and orig-k
 * for svdllm-update and rrr) when they are missing or damaged and layers 0..k-1 are
 * checkpointed: hidden-0 from the calibration text, then each layer run
 * forward, the original one (the original model's stream) or, for rom's and
 * the update's compressed stream, the layer as its checkpoint holds it. It
 * repeats the computation that wrote them, so the result must match the
 * checksums layer k-1 recorded (want, want_orig); hex/orig_hex get them. */
int calib_replay(struct job *j, int k, const char *want, const char *want_orig, char hex[65],
                         char orig_hex[65], struct sv_err *err) {
    const int sequential = params_method_sequential(j->p->method);
    const int update = params_method_two_streams(j->p->method);
    char next[65] = "", orig_next[65] = "";
    struct layer_w lw = {0}, lc;
    float *f[2 * PROJ_COUNT] = {0};
    const char *saved_phase = j->pass_phase;
    j->pass_phase = "replay";
    job_progress(j, k, "replay", 0);
    int r = calib_hidden0(j, hex, err);
    snprintf(orig_hex, 65, "%s", hex);
    for (int l = 0; l < k && r == 0; l++) {
        if (job_cancelled(j)) {
            r = sv_err_set(err, -ECANCELED, "cancelled");
            break;
        }
        if ((r = model_layer_load(j->m, l, &lw, err)) < 0)
            break;
        if (sequential && (r = jobfiles_layer_read(j, &lw, &lc, f, err)) < 0)
            goto next;
        struct calib_stream s[2] = {{.in_hex = hex, .out_hex = next, .lw = sequential ? &lc : &lw},
                              {.in_hex = orig_hex, .out_hex = orig_next, .lw = &lw}};
        job_work_path(j, s[0].in, sizeof s[0].in, "hidden-%d.f32", l);
        job_work_path(j, s[0].out, sizeof s[0].out, "hidden-%d.f32", l + 1);
        calib_orig_path(j, s[1].in, sizeof s[1].in, l);
        job_work_path(j, s[1].out, sizeof s[1].out, "orig-%d.f32", l + 1);
        if ((r = calib_stream_pass(j, l, s, update ? 2 : 1, err)) < 0)
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

/* Up to n windows of the calibration text that the job does not calibrate
 * on: the unchosen windows in ascending order (for the held-out choices of
 * --ranks sensitive and --method auto, trial.c). When the text has no
 * unchosen window, the chosen ones are returned and *ret_in_sample is 1. */
int calib_unused_ids(struct job *j, int n, int32_t **ret_ids, int *ret_n, int *ret_in_sample, struct sv_err *err) {
    int32_t *ids = NULL, *out = NULL;
    size_t nt = 0, *win = NULL;
    int r = job_user_enter(j, err);
    if (r < 0)
        return r;
    r = corpus_load(j->p->calib_path, j->p->model_dir, j->c->vocab, &ids, &nt, err);
    if ((r = job_user_leave(j, r, err)) < 0) {
        free(ids);
        return r;
    }
    const size_t T = (size_t)j->T, nw = nt / T;
    char *used = calloc(nw ? nw : 1, 1);
    win = malloc((size_t)j->n_samples * sizeof *win);
    out = malloc((size_t)n * T * sizeof *out);
    if (!used || !win || !out) {
        r = sv_err_set(err, -ENOMEM, "calibration: out of memory");
        goto done;
    }
    if ((r = choose_windows(nw, j->n_samples, j->p->calib_first, j->p->seed, win, err)) < 0)
        goto done;
    for (int s = 0; s < j->n_samples; s++)
        used[win[s]] = 1;
    int got = 0;
    for (size_t w = 0; w < nw && got < n; w++)
        if (!used[w])
            memcpy(out + (size_t)got++ * T, ids + w * T, T * sizeof *out);
    *ret_in_sample = got == 0;
    for (int s = 0; got == 0 && s < j->n_samples && s < n; s++) /* no spare window: in-sample */
        memcpy(out + (size_t)s * T, ids + win[s] * T, T * sizeof *out);
    *ret_n = got ? got : (j->n_samples < n ? j->n_samples : n);
    *ret_ids = out;
    out = NULL;
done:
    free(ids);
    free(used);
    free(win);
    free(out);
    return r;
}
