/* compress: the driver of one compression job (compress.h has the
 * durability protocol). compress_run() opens the job (the job key against
 * WORK/KEY, the model, the rank plan), finds the resume point, evaluates
 * before, prepares the calibration states entering the first layer to
 * compute, runs each layer (statistics, factorization, checkpoint, then
 * hooks->layer_done(): this is its one caller), assembles the output,
 * evaluates after and publishes. Same inputs give the same bytes: fixed
 * window choice, fixed chunk order, BLIS's deterministic partitioning, and
 * no timestamps in anything that reaches the model files.
 * The rooms, each with its own note: params.c (names, defaults, checks, the
 * job key), cost.c (the progress scale), calib.c (calibration states and the
 * passes over them), stats.c (what each method measures), factor.c (the
 * whitening methods), lorap.c (channel pruning), seq.c (rom,
 * svdllm-update), rrr.c (reduced-rank regression), ranks.c (rank rules), trial.c (candidates run and
 * scored on spare calibration windows), autosel.c (--method auto), jobfiles.c (every file a job
 * writes), job.c (the job's shared state and hook wrappers), fault.c
 * (crash points for the tests). */
#include "compress.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "afile.h"
#include "autosel.h"
#include "calib.h"
#include "factor.h"
#include "fault.h"
#include "job.h"
#include "jobfiles.h"
#include "lorap.h"
#include "mono.h"
#include "ppl.h"
#include "ranks.h"
#include "rrr.h"
#include "seq.h"
#include "stats.h"
#include "trial.h"

/* ppl_eval's and fault_stall's cancel test. */
static int cancel_cb(void *ctx) { return job_cancelled(ctx); }

/* Opens the job: the key (refused when it is not the one the job was
 * submitted with, hooks->job_key, or WORK/KEY names another), the model
 * (mapped: later reads need no access check), the rank plan and the cost
 * scale. The inputs and the output's parent are checked again with the
 * submitter's rights; an existing OUT that is this job's own earlier output
 * is not an error (the daemon died after publishing). */
static int run_open(struct job *j, struct cost *cost, char key[65], struct compress_result *res,
                    struct sv_err *err) {
    const struct compress_params *p = j->p;
    int r = job_user_enter(j, err);
    if (r < 0)
        return r;
    if ((r = params_job_key(p, key, err)) < 0 && j->h && j->h->job_key)
        sv_err_prefix(err, "inputs changed since the job was submitted");
    else if (r == 0 && j->h && j->h->job_key && strcmp(key, j->h->job_key) != 0)
        r = sv_err_set(err, -ESTALE, "inputs changed since the job was submitted: job key was %.16s..., "
                       "the model, calibration or evaluation files now give %.16s...", j->h->job_key, key);
    else if (r == 0 && (r = params_check(p, err)) == -EEXIST && jobfiles_own_output(p->out_dir, key))
        r = 0;
    if ((r = job_user_leave(j, r, err)) < 0 || (r = jobfiles_key_check(p->work_dir, key, err)) < 0)
        return r;
    if ((r = job_user_enter(j, err)) < 0)
        return r;
    r = model_open(&j->m, p->model_dir, err);
    if ((r = job_user_leave(j, r, err)) < 0)
        return r;
    j->c = &j->m->cfg;
    if ((r = params_full_rank(j->c, p->model_dir, err)) < 0)
        return r;
    if (!(j->rank = calloc((size_t)j->c->n_layers, sizeof *j->rank)))
        return sv_err_set(err, -ENOMEM, "out of memory");
    res->params_before = model_linear_params(j->m);
    j->ranks = params_ranks_resolve(p->method, p->ranks, p->layers);
    ranks_plan(j);
    struct cost_in ci;
    cost_in_of(p, &ci);
    cost_init(cost, &ci, j->c->n_layers);
    j->cost = cost;
    return 0;
}

/* The resume point: the first layer without a committed checkpoint. A
 * damaged one is recomputed with every later layer (their rows are
 * forgotten first). --ranks auto: every layer's ranks come from ranks.json;
 * without it (or damaged) the allocation and so every layer is redone. */
static int run_resume_point(struct job *j, int *ret_l0, struct sv_err *err) {
    char why[SV_ERR_MSG_MAX], path[PATH_MAX + 64];
    int l0 = 0, r;
    while (l0 < j->c->n_layers) {
        if ((r = jobfiles_layer_committed(j, l0, why, sizeof why, err)) < 0)
            return r;
        if (r == 2 && (r = job_drop_layers(j, l0, why, err)) < 0)
            return r;
        if (r != 1)
            break;
        l0++;
    }
    if ((j->ranks == RANKS_AUTO || j->ranks == RANKS_SENSITIVE) && l0 > 0) {
        job_work_path(j, path, sizeof path, "ranks.json", 0);
        if (jobfiles_ranks_read(j, path, err) < 0) {
            if ((r = job_drop_layers(j, 0, err->msg, err)) < 0)
                return r;
            unlink(path);
            l0 = 0;
        }
    }
    *ret_l0 = l0;
    return 0;
}

/* Perplexity and speed of the model in model_dir (the original, or OUT.tmp)
 * on the evaluation text, with the submitter's rights. */
static int run_eval(struct job *j, const char *model_dir, double *ret_ppl, double *ret_tok_s, struct sv_err *err) {
    const struct compress_params *p = j->p;
    struct ppl_result pr;
    double t_e = mono_now();
    int r = job_user_enter(j, err);
    if (r < 0)
        return r;
    r = ppl_eval(model_dir, p->eval_path, p->eval_seqlen ? p->eval_seqlen : p->seqlen, (size_t)p->eval_max_windows,
                 cancel_cb, j, &pr, err);
    if ((r = job_user_leave(j, r, err)) < 0)
        return r;
    j->t.eval += mono_now() - t_e;
    *ret_ppl = pr.ppl;
    *ret_tok_s = pr.tokens_per_s;
    return 0;
}

/* The calibration states entering layer l0 and their checksums (hex, and
 * orig_hex for svdllm-update's and rrr's original stream): hidden-0 for a new job;
 * on resume the files layer l0 - 1 recorded, regenerated through the
 * checkpointed layers when they are missing or damaged. */
static int run_states(struct job *j, int l0, char hex[65], char orig_hex[65], struct sv_err *err) {
    const int update = params_method_two_streams(j->p->method);
    double t_h = mono_now();
    int r;
    if (l0 == 0) {
        job_seg(j, COST_CALIB0);
        job_progress(j, 0, "calibrate", 0);
        if ((r = calib_hidden0(j, hex, err)) < 0)
            return r;
        j->t.write += mono_now() - t_h;
        snprintf(orig_hex, 65, "%s", hex);
        return 0;
    }
    char want[65], want_orig[65] = "", in[PATH_MAX + 64], why[SV_ERR_MSG_MAX];
    if ((r = jobfiles_layer_meta(j, l0 - 1, "hidden_next_sha256", want, sizeof want, err)) < 0 ||
        (update && (r = jobfiles_layer_meta(j, l0 - 1, "orig_next_sha256", want_orig, sizeof want_orig, err)) < 0))
        return r;
    job_work_path(j, in, sizeof in, "hidden-%d.f32", l0);
    int ok = calib_states_intact(in, want, why, sizeof why);
    if (ok && update) {
        job_work_path(j, in, sizeof in, "orig-%d.f32", l0);
        ok = calib_states_intact(in, want_orig, why, sizeof why);
    }
    if (ok) {
        memcpy(hex, want, 65);
        memcpy(orig_hex, want_orig, 65);
        return 0;
    }
    size_t n = strlen(why);
    snprintf(why + n, sizeof why - n, "; regenerating them through layers 0..%d", l0 - 1);
    t_h = mono_now();
    if ((r = job_drop_layers(j, l0, why, err)) < 0 || (r = calib_replay(j, l0, want, want_orig, hex, orig_hex, err)) < 0)
        return r;
    j->t.write += mono_now() - t_h;
    return 0;
}

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

/* Computes layer l from the states hex (orig_hex) names and writes its
 * checkpoint file (ck); next_hex and orig_next_hex get the checksums of the
 * states written for layer l + 1. Nothing is committed here. */
static int run_layer(struct job *j, int l, const char *hex, const char *orig_hex, char next_hex[65],
                     char orig_next_hex[65], struct compress_checkpoint *ck, struct sv_err *err) {
    const struct compress_params *p = j->p;
    struct layer_w lw = {0};
    struct stats st = {0};
    struct lowrank_result lres[PROJ_COUNT];
    struct mat_report rep[PROJ_COUNT];
    float *pruned[3] = {NULL, NULL, NULL};
    memset(lres, 0, sizeof lres);
    memset(rep, 0, sizeof rep);
    next_hex[0] = orig_next_hex[0] = '\0';
    int r = model_layer_load(j->m, l, &lw, err);
    if (r < 0)
        goto out;
    if (p->method == METHOD_RRR) {
        r = rrr_layer(j, &lw, lres, rep, hex, orig_hex, next_hex, orig_next_hex, err);
    } else if (params_method_sequential(p->method)) {
        r = seq_layer(j, &lw, lres, rep, hex, orig_hex, next_hex, orig_next_hex, err);
    } else {
        int comp = l >= j->cost->first;
        if (p->method != METHOD_SVD) {
            char in[PATH_MAX + 64], out[PATH_MAX + 64];
            job_work_path(j, in, sizeof in, "hidden-%d.f32", l);
            job_work_path(j, out, sizeof out, "hidden-%d.f32", l + 1);
            job_seg(j, 1.0);
            if ((r = stats_alloc(j, stats_kind_of(p->method), &st, err)) == 0)
                r = calib_layer(j, &lw, &st, in, hex, out, next_hex, err);
        }
        job_seg(j, !comp                        ? 0
                   : p->method == METHOD_LORAP ? COST_FACTOR * (cost_factor_share[0] + cost_factor_share[1])
                                               : COST_FACTOR);
        if (r == 0)
            r = factor_layer(j, p->method, &lw, &st, !j->ff_keep, lres, rep, err);
        if (r == 0 && j->ff_keep) {
            job_seg(j, COST_REFIT);
            r = lorap_prune(j, &lw, &st, pruned, rep, err);
        }
    }
    for (int q = 0; q < PROJ_COUNT; q++)
        if (!lres[q].k && rep[q].kind != MAT_PRUNED)
            rep[q].kind = MAT_DENSE;
    double t_w = mono_now();
    if (r == 0)
        r = jobfiles_layer_write(j, &lw, lres, pruned, rep, next_hex, orig_next_hex, ck, err);
    j->t.write += mono_now() - t_w;
out:
    layer_scratch_free(&st, &lw, lres, pruned);
    return r;
}

int compress_layer_trial(struct job *j, int l, const char *hex, const char *orig_hex, char next_hex[65],
                         char orig_next_hex[65], struct sv_err *err) {
    struct compress_checkpoint ck;
    return run_layer(j, l, hex, orig_hex, next_hex, orig_next_hex, &ck, err);
}

/* After the output is assembled: the evaluation after, compression.json,
 * and OUT.tmp renamed to OUT. */
static int run_finish(struct job *j, const char *tmp, const char *key, struct compress_result *res,
                      struct sv_err *err) {
    const int L = j->c->n_layers;
    int r;
    if (j->p->eval_path[0]) {
        job_seg(j, j->cost->eval_w);
        job_progress(j, L, "eval", 0);
        if ((r = run_eval(j, tmp, &res->ppl_after, &res->tok_s_after, err)) < 0)
            return r;
    }
    if ((r = jobfiles_report(j, tmp, key, res, err)) < 0 || (r = jobfiles_publish(j, tmp, key, err)) < 0)
        return r;
    res->seconds = mono_now() - j->t_start;
    j->layers_done = L;
    job_seg_at(j, j->cost->total);
    job_progress(j, L, "done", 1);
    return 0;
}

/* --method auto: the job continues as the chosen method (pc, j->p), its
 * rank plan and cost scale made again. Resumed: the choice from
 * method.json (missing or damaged: every layer is redone); new: hidden-0,
 * then autosel_pick(). */
static int run_pick_method(struct job *j, struct compress_params *pc, struct cost *cost, int *l0, char hex[65],
                           char orig_hex[65], struct sv_err *err) {
    char path[PATH_MAX + 64];
    enum compress_method m = METHOD_SVDLLM;
    int r;
    job_work_path(j, path, sizeof path, "method.json", 0);
    if (*l0 > 0 && jobfiles_method_read(j, path, &m, err) < 0) {
        if ((r = job_drop_layers(j, 0, err->msg, err)) < 0)
            return r;
        unlink(path);
        *l0 = 0;
    }
    if (*l0 == 0) {
        j->layers_done = 0;
        if ((r = run_states(j, 0, hex, orig_hex, err)) < 0 || (r = autosel_pick(j, hex, &m, err)) < 0)
            return r;
    }
    *pc = *j->p;
    pc->method = m;
    if (m == METHOD_LORAP && (pc->ranks == RANKS_AUTO || pc->ranks == RANKS_SENSITIVE))
        pc->ranks = RANKS_DEFAULT; /* lorap allocates its own ranks */
    j->p = pc;
    j->ranks = params_ranks_resolve(m, pc->ranks, pc->layers);
    ranks_plan(j);
    struct cost_in ci;
    cost_in_of(pc, &ci);
    cost_init(cost, &ci, j->c->n_layers);
    return 0;
}

/* The driver. The layer loop is the durability order of compress.h in one
 * place: compute and write layer l's checkpoint (run_layer), commit its row
 * (hooks->layer_done, the only call), and only then drop its input states. */
int compress_run(const struct compress_params *p, const struct compress_hooks *h, struct compress_result *ret,
                 struct sv_err *err) {
    struct job j = {.p = p, .h = h, .t_start = mono_now(), .n_samples = p->nsamples, .T = p->seqlen,
                    .method_asked = p->method};
    struct compress_params *pc = NULL; /* method auto: the job's params with the chosen method */
    struct compress_result res = {0};
    struct cost cost = {0};
    char tmp[PATH_MAX + 16] = "", key[65], path[PATH_MAX + 64];
    char hex[65] = "", next_hex[65], orig_hex[65] = "", orig_next_hex[65];
    int assembling = 0, l0 = 0, r;
    if ((r = run_open(&j, &cost, key, &res, err)) < 0 || (r = run_resume_point(&j, &l0, err)) < 0)
        goto out;
    const int L = j.c->n_layers;
    res.layers_resumed = l0;
    j.layers_done = l0;
    if (l0 > 0) /* what a resumed run repeats holds the fraction at its checkpoints' */
        job_seg_at(&j, cost_layer_start(&cost, l0));
    if (p->eval_path[0]) {
        if (l0 == 0)
            job_seg(&j, cost.eval_w);
        job_progress(&j, l0, "eval", 0);
        if ((r = run_eval(&j, p->model_dir, &res.ppl_before, &res.tok_s_before, err)) < 0)
            goto out;
    }
    if (p->method == METHOD_AUTO) {
        if (!(pc = malloc(sizeof *pc))) {
            r = sv_err_set(err, -ENOMEM, "out of memory");
            goto out;
        }
        if ((r = run_pick_method(&j, pc, &cost, &l0, hex, orig_hex, err)) < 0)
            goto out;
        res.layers_resumed = l0;
    }
    /* svd: G = I, also for its auto pre-pass; method auto made hidden-0 already */
    if (j.p->method != METHOD_SVD && l0 < L && !(p->method == METHOD_AUTO && l0 == 0) &&
        (r = run_states(&j, l0, hex, orig_hex, err)) < 0)
        goto out;
    if ((j.ranks == RANKS_AUTO || j.ranks == RANKS_SENSITIVE) && l0 == 0 && (r = ranks_plan_auto(&j, hex, err)) < 0)
        goto out;
    for (int l = l0; l < L; l++) {
        if (job_cancelled(&j)) {
            r = sv_err_set(err, -ECANCELED, "cancelled before layer %d", l);
            goto out;
        }
        job_seg_at(&j, cost_layer_start(&cost, l));
        job_progress(&j, l, "statistics", 0);
        struct compress_checkpoint ck;
        if ((r = run_layer(&j, l, hex, orig_hex, next_hex, orig_next_hex, &ck, err)) < 0)
            goto out;
        if (h && h->layer_done && (r = h->layer_done(h->ctx, l, &ck, err)) < 0)
            goto out;
        fault_point("after-commit", l);
        /* Committed: the input states of this layer are no longer needed. */
        job_work_path(&j, path, sizeof path, "hidden-%d.f32", l);
        unlink(path);
        job_work_path(&j, path, sizeof path, "orig-%d.f32", l);
        unlink(path);
        memcpy(hex, next_hex, sizeof hex);
        memcpy(orig_hex, orig_next_hex, sizeof orig_hex);
        j.layers_done = l + 1;
        job_seg_at(&j, cost_layer_start(&cost, l + 1));
        job_progress(&j, l + 1, "statistics", 0);
        fault_stall("stall-after-commit", l, cancel_cb, &j);
    }
    job_seg_at(&j, cost_layer_start(&cost, L));
    job_seg(&j, L * COST_ASSEMBLE);
    job_progress(&j, L, "assemble", 0);
    snprintf(tmp, sizeof tmp, "%s.tmp", p->out_dir);
    assembling = 1;
    double t_a = mono_now();
    if ((r = jobfiles_assemble(&j, tmp, &res, err)) < 0)
        goto out;
    j.t.assemble = mono_now() - t_a;
    if ((r = run_finish(&j, tmp, key, &res, err)) < 0)
        goto out;
    if (ret)
        *ret = res;
out:
    /* No half-built output is left behind; where it cannot be removed, the
     * error says so. */
    if (r < 0 && assembling) {
        int rm = afile_remove_tree(tmp);
        if (rm < 0 && rm != -ENOENT && err) {
            size_t n = strlen(err->msg);
            snprintf(err->msg + n, sizeof err->msg - n, "; the partial output '%.300s' could not be removed: %s", tmp,
                     strerror(-rm));
        }
    }
    free(j.rank);
    free(pc);
    model_free(j.m);
    return r;
}
