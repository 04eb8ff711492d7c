/* trial: measured losses of candidate compressions on calibration windows
 * the job does not fit on: the measuring stick of --ranks sensitive
 * (ranks.c) and --method auto (autosel.c). Only calibration data decides;
 * the evaluation text is never read here.
 *  - trial_loss_from: the original model from one layer on, one matrix
 *    optionally replaced: the sensitivity of the final loss to that
 *    matrix's truncation, by forward passes only.
 *  - trial_method: a candidate (method, allocation) run for real by the
 *    engine's own rooms (compress.c's run_layer) over the job's own
 *    calibration states, under the job's usual WORK file names, then the
 *    model it made scored. It runs only before the job's layer 0 is
 *    committed, and removes every file it wrote before it returns; a crash
 *    in between leaves layer files that no store row names, so the job
 *    recomputes them. Same inputs, same bytes: the job that follows with
 *    the chosen candidate makes exactly the model that was scored.
 * Runs on the job's thread. */
#include "trial.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "calib.h"
#include "forward.h"
#include "jobfiles.h"
#include "ppl.h"
#include "ranks.h"
#include "st.h"

void trial_set_free(struct trial_set *ts) {
    if (!ts)
        return;
    free(ts->ids);
    ts->ids = NULL;
    ts->n = 0;
}

int trial_sets_new(struct job *j, int n, struct trial_set *a, struct trial_set *b, struct sv_err *err) {
    int32_t *ids = NULL;
    int got = 0, in_sample = 0;
    int r = calib_unused_ids(j, 2 * n, &ids, &got, &in_sample, err);
    if (r < 0)
        return r;
    const size_t T = (size_t)j->T;
    int na = got < 2 ? got : (got + 1) / 2, nb = got < 2 ? got : got - na;
    a->ids = malloc((size_t)na * T * sizeof *ids);
    b->ids = malloc((size_t)nb * T * sizeof *ids);
    if (!a->ids || !b->ids || got < 1) {
        free(ids);
        trial_set_free(a);
        trial_set_free(b);
        return sv_err_set(err, got < 1 ? -EINVAL : -ENOMEM, "calibration: %s",
                          got < 1 ? "no window to measure on" : "out of memory");
    }
    memcpy(a->ids, ids, (size_t)na * T * sizeof *ids);
    memcpy(b->ids, ids + (got < 2 ? 0 : (size_t)na * T), (size_t)nb * T * sizeof *ids);
    a->n = na;
    b->n = nb;
    a->T = b->T = j->T;
    a->in_sample = b->in_sample = in_sample;
    free(ids);
    return 0;
}

int trial_embed(const struct job *j, const struct trial_set *ts, float **ret_x, struct sv_err *err) {
    size_t ntok = (size_t)ts->n * ts->T;
    float *x = malloc(ntok * j->c->hidden * sizeof *x);
    if (!x)
        return sv_err_set(err, -ENOMEM, "trial: out of memory");
    int r = model_embed(j->m, ts->ids, ntok, x, err);
    if (r < 0) {
        free(x);
        return r;
    }
    *ret_x = x;
    return 0;
}

/* Layer l as the trial's checkpoint holds it, factor pairs and lorap's
 * pruned MLP matrices; arrays in f[] (freed by the caller). */
static int ck_read(const struct job *j, const struct layer_w *lw, struct layer_w *lc, float *f[2 * PROJ_COUNT],
                   struct sv_err *err) {
    int r = jobfiles_layer_read(j, lw, lc, f, err);
    if (r < 0 || !j->ff_keep)
        return r;
    char path[PATH_MAX + 64], name[ST_MAX_NAME + 32], what[200];
    struct st_model *m = NULL;
    job_work_path(j, path, sizeof path, "layer-%d.safetensors", lw->index);
    if ((r = st_open_file(&m, path, err)) < 0)
        return r;
    for (int p = PROJ_GATE; p <= PROJ_DOWN && r == 0; p++) {
        model_proj_prefix(lw->index, p, what, sizeof what);
        snprintf(name, sizeof name, "%s.weight", what);
        const struct st_tensor *t = st_find(m, name);
        if (!t)
            continue;
        if (t->ndim != 2 || t->shape[0] < 1 || t->shape[1] < 1 || t->shape[0] > 1 << 20 || t->shape[1] > 1 << 20) {
            r = sv_err_set(err, -EIO, "trial checkpoint '%s': tensor '%s' has an unexpected shape", path, name);
            break;
        }
        if (!(f[2 * p] = malloc((size_t)t->shape[0] * t->shape[1] * sizeof(float)))) {
            r = sv_err_set(err, -ENOMEM, "trial: out of memory");
            break;
        }
        if ((r = st_read_f32_shape(m, name, t->shape[0], t->shape[1], f[2 * p], err)) == 0)
            lc->proj[p] = (struct linear){.d_out = (int)t->shape[0], .d_in = (int)t->shape[1], .w = f[2 * p]};
    }
    st_free(m);
    return r;
}

/* The loss of layers l0.. over a copy of x: layers below n_ck from the
 * trial's checkpoints, the others original, matrix (ov_l, ov_p) = *ov. */
static int loss_run(struct job *j, const struct trial_set *ts, int l0, const float *x0, int n_ck, int ov_l, int ov_p,
                    const struct linear *ov, double *ret, struct sv_err *err) {
    const struct config *c = j->c;
    const size_t ntok = (size_t)ts->n * ts->T, d = (size_t)c->hidden;
    float *x = malloc(ntok * d * sizeof *x), *logits = malloc((size_t)ts->T * c->vocab * sizeof *logits);
    struct head_w head = {0};
    int r = 0;
    if (!x || !logits) {
        r = sv_err_set(err, -ENOMEM, "trial: out of memory");
        goto out;
    }
    memcpy(x, x0, ntok * d * sizeof *x);
    for (int l = l0; l < c->n_layers && r == 0; l++) {
        struct layer_w lw = {0}, lc;
        float *f[2 * PROJ_COUNT] = {0};
        if (job_cancelled(j)) {
            r = sv_err_set(err, -ECANCELED, "cancelled");
            break;
        }
        if ((r = model_layer_load(j->m, l, &lw, err)) == 0) {
            lc = lw;
            if (l < n_ck)
                r = ck_read(j, &lw, &lc, f, err);
            if (l == ov_l && ov)
                lc.proj[ov_p] = *ov;
            if (r == 0)
                r = forward_layer(c, &lc, x, ts->n, ts->T, NULL, err);
        }
        model_layer_free(&lw);
        for (int i = 0; i < 2 * PROJ_COUNT; i++)
            free(f[i]);
    }
    if (r < 0 || (r = model_head_load(j->m, &head, err)) < 0)
        goto out;
    double total = 0;
    for (int b = 0; b < ts->n && r == 0; b++)
        if ((r = forward_logits(c, &head, x + (size_t)b * ts->T * d, (size_t)ts->T, logits, err)) == 0)
            total += ppl_window_nll(logits, ts->ids + (size_t)b * ts->T, ts->T, c->vocab);
    if (r == 0) {
        *ret = total / ((double)ts->n * (ts->T - 1));
        if (!isfinite(*ret))
            r = sv_err_set(err, -EDOM, "trial: the held-out loss is not finite");
    }
out:
    model_head_free(&head);
    free(x);
    free(logits);
    return r;
}

int trial_loss_from(struct job *j, const struct trial_set *ts, int l0, const float *x, int ov_l, int ov_p,
                    const struct linear *ov, double *ret, struct sv_err *err) {
    return loss_run(j, ts, l0, x, 0, ov_l, ov_p, ov, ret, err);
}

/* Removes what trial_method's layers 0..n-1 wrote. */
static void trial_files_remove(const struct job *j, int n) {
    char path[PATH_MAX + 64];
    for (int l = 0; l < n; l++) {
        job_work_path(j, path, sizeof path, "layer-%d.safetensors", l);
        unlink(path);
        job_work_path(j, path, sizeof path, "hidden-%d.f32", l + 1);
        unlink(path);
        job_work_path(j, path, sizeof path, "orig-%d.f32", l + 1);
        unlink(path);
    }
}

int trial_method(struct job *j, enum compress_method m, int (*rank)[PROJ_COUNT], int n_layers, const char *hex0,
                 const struct trial_set *ts, struct ranks_adapt *adapt, double *ret, struct sv_err *err) {
    const int L = j->c->n_layers;
    struct compress_params *tp = malloc(sizeof *tp);
    struct compress_hooks th = {0};
    struct job tj = {.h = &th, .m = j->m, .c = j->c, .n_samples = j->n_samples, .T = j->T, .t_start = j->t_start};
    struct cost cost = {0};
    float *x = NULL;
    char hex[65], orig[65], next[65], onext[65];
    int r = 0, done = 0;
    tj.rank = calloc((size_t)L, sizeof *tj.rank);
    if (!tp || !tj.rank) {
        r = sv_err_set(err, -ENOMEM, "trial: out of memory");
        goto out;
    }
    *tp = *j->p;
    tp->method = m;
    tp->ranks = RANKS_DEFAULT; /* lorap's own rule for lorap, uniform for the others */
    tp->layers = 0;
    tj.p = tp;
    if (j->h) { /* cancel and the submitter's rights; no progress, no store */
        th.ctx = j->h->ctx;
        th.should_cancel = j->h->should_cancel;
        th.user_fs = j->h->user_fs;
    }
    tj.ranks = params_ranks_resolve(m, tp->ranks, 0);
    ranks_plan(&tj);
    if (rank)
        memcpy(tj.rank, rank, (size_t)L * sizeof *rank);
    tj.adapt = adapt;
    struct cost_in ci;
    cost_in_of(tp, &ci);
    cost_init(&cost, &ci, L);
    tj.cost = &cost;
    snprintf(hex, sizeof hex, "%s", hex0);
    snprintf(orig, sizeof orig, "%s", hex0);
    for (int l = 0; l < n_layers && r == 0; l++) {
        if (job_cancelled(j)) {
            r = sv_err_set(err, -ECANCELED, "cancelled");
            break;
        }
        r = compress_layer_trial(&tj, l, hex, orig, next, onext, err);
        done = l + 1;
        if (r == 0) {
            memcpy(hex, next, sizeof hex);
            memcpy(orig, onext, sizeof orig);
        }
    }
    if (r == 0 && (r = trial_embed(j, ts, &x, err)) == 0)
        r = loss_run(&tj, ts, 0, x, n_layers, -1, 0, NULL, ret, err);
    if (r == 0 && rank && adapt)
        memcpy(rank, tj.rank, (size_t)L * sizeof *rank);
out:
    trial_files_remove(&tj, done);
    j->t.forward += tj.t.forward;
    j->t.statistics += tj.t.statistics;
    j->t.factorize += tj.t.factorize;
    j->t.write += tj.t.write;
    j->t.passes += tj.t.passes;
    free(x);
    free(tj.rank);
    free(tp);
    return r;
}
