/* job: the running job's hook wrappers and progress (job.h). */
#include "job.h"

#include <stdio.h>
#include <string.h>

__thread double job_tap_seconds;

int job_cancelled(const struct job *j) { return j->h && j->h->should_cancel && j->h->should_cancel(j->h->ctx); }

int job_user_enter(const struct job *j, struct sv_err *err) {
    return j->h && j->h->user_fs ? j->h->user_fs(j->h->ctx, 1, err) : 0;
}

int job_user_leave(const struct job *j, int r, struct sv_err *err) {
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

void job_seg(struct job *j, double w) {
    j->seg_at = j->at;
    j->seg_w = w;
    j->at += w;
}

void job_seg_at(struct job *j, double at) {
    j->at = j->seg_at = at;
    j->seg_w = 0;
}

/* Reports phase at t (0..1) of the current segment. Callers from two
 * threads (factor_worker) hold their pool's mutex. */
void job_progress(struct job *j, int layer, const char *phase, double t) {
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

void job_work_path(const struct job *j, char *buf, size_t n, const char *fmt, int l) {
    char name[64];
    snprintf(name, sizeof name, fmt, l);
    snprintf(buf, n, "%s/%s", j->p->work_dir, name);
}

int job_drop_layers(struct job *j, int from, const char *why, struct sv_err *err) {
    char msg[SV_ERR_MSG_MAX];
    snprintf(msg, sizeof msg, "%s", why);   /* why may be err->msg */
    if (j->h && j->h->layers_drop)
        return j->h->layers_drop(j->h->ctx, from, msg, err);
    return 0;
}
