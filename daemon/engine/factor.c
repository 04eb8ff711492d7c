/* factor: the non-sequential methods' factorization of a layer (svd,
 * svdllm, asvd, awsvd, lorap's attention, and svdllm-update's first B =
 * U_k^T W). One core for every method (lowrank.h: a statistic, then a
 * projection); they differ only in the statistic (stats.c). */
#include "factor.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "forward.h"
#include "mono.h"

void factor_report(struct mat_report *rep, const struct lowrank_result *res, double seconds) {
    *rep = (struct mat_report){.rank = res->k, .k_effective = res->k_effective, .energy = res->energy,
                               .discarded = res->discarded, .seconds = seconds, .fallback = (int)res->fallback,
                               .shift = res->shift, .gflop = res->gflop, .side = res->side};
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
 * An output-side matrix of the svdllm family reads its own output
 * covariance (stats.h), freed once it is factored; a shared input Gram
 * (gate/up's) is whitened (Cholesky) once, before the workers start, and
 * freed as soon as it is: at LLaMA-7B a packed Gram is 64 MiB. drop_w: each W is
 * freed once factored (the caller needs only the factors and the shapes). */
struct factor_pool {
    struct job *j;
    enum compress_method m;
    struct layer_w *lw;
    struct stats *s;
    int drop_w, shared;
    struct lowrank_result *res;
    struct mat_report *rep;
    struct lowrank_white wh[4];   /* by stats_group: q/k/v, o, gate/up, down */
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
    if (fp->shared && fp->s->cov[p]) {
        r = lowrank_project_packed(lin->w, lin->d_out, lin->d_in, fp->s->cov[p], j->rank[l][p], what, &fp->res[p],
                                   err);
        free(fp->s->cov[p]); /* only this worker reads it */
        fp->s->cov[p] = NULL;
    } else if (fp->shared) {
        r = lowrank_project_white(lin->w, lin->d_out, lin->d_in, &fp->wh[stats_group(p)], j->rank[l][p], what,
                                  &fp->res[p], err);
    } else {
        const double *g, *cout;
        double *own;
        if ((r = stats_matrix(j, fp->m, fp->s, p, lin, &own, &g, &cout, what, err)) == 0)
            r = lowrank_project(lin->w, lin->d_out, lin->d_in, g, cout, j->rank[l][p], what, &fp->res[p], err);
        free(own);
    }
    if (r < 0)
        return r;
    factor_report(&fp->rep[p], &fp->res[p], mono_now() - t0);
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
        int r = job_cancelled(fp->j) ? sv_err_set(&e, -ECANCELED, "cancelled") : factor_one(fp, p, &e);
        pthread_mutex_lock(&fp->mu);
        fp->big_running -= big;
        fp->done++;
        if (r < 0 && fp->r == 0) {
            fp->r = r;
            fp->err = e;
        }
        job_progress(fp->j, fp->lw->index, "factorize", (double)fp->done / fp->n);
        pthread_cond_broadcast(&fp->cv);
    }
    pthread_mutex_unlock(&fp->mu);
    return NULL;
}

int factor_layer(struct job *j, enum compress_method m, struct layer_w *lw, struct stats *s, int drop_w,
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
    job_progress(j, l, "factorize", 0);
    /* Whiten each shared input Gram that a factored input-side matrix
     * reads, then free the Grams (output covariances are read as they are). */
    double t0 = mono_now();
    int whitened[PROJ_COUNT] = {0};
    for (int p = 0; p < PROJ_COUNT && r == 0; p++) {
        int grp = stats_group(p), used = 0;
        double **gp = &s->gin[grp];
        if (!*gp || s->cov[p])
            continue;
        for (int q = p; q < PROJ_COUNT; q++)
            if (stats_group(q) == grp && !s->cov[q] && j->rank[l][q] > 0)
                used = whitened[q] = 1;
        char what[200];
        model_proj_prefix(l, p, what, sizeof what);
        if (fp.shared && used)
            r = lowrank_white_new_packed(*gp, lw->proj[p].d_in, what, &fp.wh[grp], err);
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
        if (whitened[fp.order[i]]) { /* the first matrix of the job order that read a whitened Gram */
            rep[fp.order[i]].seconds += t_white;
            break;
        }
    j->t.factorize += mono_now() - t0; /* wall time: the matrices' seconds overlap */
    for (int g = 0; g < 4; g++)
        lowrank_white_free(&fp.wh[g]);
    if (fp.shared) /* the whitened Grams are gone; unfactored matrices' covariances go too (diagonal statistics stay) */
        for (int p = 0; p < PROJ_COUNT; p++) {
            free(s->cov[p]);
            s->cov[p] = NULL;
        }
    return r;
}
