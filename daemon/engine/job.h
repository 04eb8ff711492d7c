/* job: the state one running compression job shares between the engine's
 * rooms (calib, stats, factor, lorap, seq, ranks, jobfiles, compress), and
 * the thin wrappers around the daemon's hooks that they all call: cancel,
 * the submitter's credentials, progress on the cost scale, the work
 * directory's paths. A job runs on one thread (factor.c's second worker
 * reports progress under its pool's mutex). Internal to the engine. */
#ifndef JOB_H
#define JOB_H

#include <stddef.h>

#include "compress.h"
#include "config.h"
#include "cost.h"
#include "model.h"

/* Where this run's time went (compression.json "timing"; a resumed job
 * counts only what it redid). statistics: inside the forward taps (Gram and
 * cross-product accumulation); forward: the layer passes minus that; write:
 * calibration-state I/O and checkpoints. */
struct job_timing {
    double forward, statistics, factorize, write, assemble, eval;
    long passes;
};

/* Seconds spent in this thread's taps (a job runs on one thread). */
extern __thread double job_tap_seconds;

/* A choice made on held-out calibration windows (--ranks sensitive,
 * --method auto, trial.c): each candidate's mean NLL there, the one kept. */
#define JOB_CHOICE_MAX 8
struct job_choice {
    int n, chosen;                   /* n = 0: no choice was made */
    char name[JOB_CHOICE_MAX][24];
    double loss[JOB_CHOICE_MAX];
    int windows, in_sample, layers;  /* held-out windows (fit windows when in_sample), layers tried */
    double seconds;                  /* what choosing cost, this run */
};

struct ranks_adapt;

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
    /* Progress (see cost.c), in cost units: the work before the current
     * segment, the segment's start and weight; the highest fraction
     * reported; what calib_stream_pass reports its chunks as. */
    struct cost *cost;
    double at, seg_at, seg_w, f_last;
    const char *pass_phase;
    struct job_choice rank_choice, method_choice;
    enum compress_method method_asked;   /* METHOD_AUTO when the method was chosen (autosel.c) */
    struct ranks_adapt *adapt;           /* a sensitive guard trial's sequential allocation (ranks.c), else NULL */
};

/* Non-zero when the daemon asked the job to stop. */
int job_cancelled(const struct job *j);
/* The submitter's credentials around an access to their files (see
 * compress_hooks.user_fs): enter, access, leave, nothing else between. */
int job_user_enter(const struct job *j, struct sv_err *err);
/* Back to the daemon's credentials; returns r, or the leave's own error
 * when r is 0. */
int job_user_leave(const struct job *j, int r, struct sv_err *err);
/* The next segment of the job: weight w (cost units) starting where the last ended. */
void job_seg(struct job *j, double w);
/* A zero-weight segment at absolute position at (a layer's start, a resume). */
void job_seg_at(struct job *j, double at);
/* Reports phase at t (0..1) of the current segment. Callers from two
 * threads (factor.c's workers) hold their pool's mutex. */
void job_progress(struct job *j, int layer, const char *phase, double t);
/* WORK/<fmt with l>, e.g. job_work_path(j, buf, n, "hidden-%d.f32", l). */
void job_work_path(const struct job *j, char *buf, size_t n, const char *fmt, int l);
/* Tells the store that layers from.. are to be recomputed, and why. */
int job_drop_layers(struct job *j, int from, const char *why, struct sv_err *err);

#endif
