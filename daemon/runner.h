/* runner: svdllmd's worker threads and the queue that hands their results
 * back to the event loop.
 *
 * Three threads, each with its own task queue (mutex + condition variable):
 *   ctl   quick tasks that touch files or SQLite: submit (path checks, model
 *         config check, params_check, params_precheck, job key, all with
 *         the submitter's credentials; then the output rules and the insert
 *         with the daemon's), cancel, resume (failed or cancelled -> queued,
 *         after checking the job key against the current inputs) and rm (a
 *         final job's work directory, then its rows);
 *   job   runs queued jobs one at a time in FIFO (SQLite id) order through
 *         compress_run(), owning its own SQLite connection for the layer
 *         hooks;
 *   eval  runs ppl_eval() and gen_run() (generate) requests one at a time,
 *         with the requester's credentials.
 * Credentials are switched per thread (daemon/cred.h); the job thread takes
 * the owner's only around the engine's accesses to the owner's files
 * (compress_hooks.user_fs), never around SQLite or the work directory.
 * Every result goes back as a struct runner_event through one
 * mutex-protected list and uv_async_send(); async sends coalesce, so the loop
 * drains the whole list on each wake-up, in order. Nothing here runs jansson.
 *
 * Calls: runner_new, runner_push, runner_drop_client, runner_stop and
 * runner_free are for the loop thread only. */
#ifndef RUNNER_H
#define RUNNER_H

#include <limits.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "compress.h"
#include "ppl.h"
#include "proto.h"
#include "store.h"
#include "sv_err.h"

enum runner_task_type { RUNNER_TASK_SUBMIT, RUNNER_TASK_CANCEL, RUNNER_TASK_EVAL, RUNNER_TASK_RESUME, RUNNER_TASK_RM,
                         RUNNER_TASK_GENERATE };

struct runner_eval_params {
    char model_dir[PATH_MAX];
    char text_path[PATH_MAX];
    int seqlen;
    size_t max_windows;   /* 0 = all */
};

/* generate: bounded so that the reply (text, JSON-escaped, and ids) fits
 * one protocol line (PROTO_MAX_MSG). */
#define RUNNER_PROMPT_MAX 16384
#define RUNNER_GEN_MAX_TOKENS 4096
#define RUNNER_GEN_MAX_TEXT (128 * 1024)

struct runner_gen_params {
    char model_dir[PATH_MAX];
    char prompt[RUNNER_PROMPT_MAX + 1];
    size_t prompt_len;
    bool add_bos;
    int max_tokens;
    double temperature, top_p;
    uint64_t seed;
};

/* The answer to a generate; text and ids are malloc'ed, freed with the event. */
struct runner_gen_reply {
    char *text;
    size_t text_len;
    int32_t *ids;
    size_t n_ids, n_prompt;
    const char *finish;           /* gen_finish_name() */
    double prompt_seconds, seconds, tokens_per_s;
};

/* A request for a worker thread; allocate with calloc, runner_push takes it. */
struct runner_task {
    enum runner_task_type type;
    uint64_t client_id;      /* where the reply goes (0: nobody) */
    long long req_id;
    uint32_t uid;            /* peer credentials of the requester */
    uint32_t gid;            /* (SO_PEERCRED, taken at accept) */
    struct compress_params params;      /* SUBMIT: absolute, not yet resolved */
    bool keep_checkpoints;              /* SUBMIT: not emptied once done */
    int64_t job_id;                     /* CANCEL, RESUME, RM */
    struct runner_eval_params eval;     /* EVAL */
    struct runner_gen_params gen;       /* GENERATE */
    atomic_int cancel;                  /* EVAL, GENERATE: set when the client is gone */
    struct runner_task *next;
};

enum runner_event_type {
    RUNNER_EV_JOB,        /* a job's row changed; job holds the new record */
    RUNNER_EV_PROGRESS,   /* progress of the running job */
    RUNNER_EV_REPLY,      /* the answer to a task */
    RUNNER_EV_EXITED,     /* every worker thread has ended (after runner_stop) */
};

struct runner_progress {
    int64_t job_id;
    int layer, n_layers, layers_done;
    char phase[16];
    double fraction;      /* 0..1 */
    double elapsed_s;     /* since this run of the job started */
    double eta_s;         /* < 0: not known yet (once known, known until the run ends) */
    uint64_t peak_rss;    /* bytes, the daemon's maximum resident set so far */
};

struct runner_event {
    enum runner_event_type type;
    enum runner_task_type task;   /* REPLY: the task answered */
    uint64_t client_id;
    long long req_id;
    enum proto_code code;         /* REPLY: PROTO_OK or the error */
    char msg[SV_ERR_MSG_MAX];     /* REPLY: error message */
    struct store_job *job;        /* JOB; REPLY to SUBMIT/CANCEL/RESUME/RM (may be NULL; RM: the
                                   * record as it was before its removal) */
    uint64_t freed_bytes;         /* REPLY to RM: bytes of the work directory removed */
    bool cancelling;              /* REPLY to CANCEL: was running, flag set */
    struct runner_progress progress;
    struct ppl_result ppl;        /* REPLY to EVAL */
    struct runner_gen_reply gen;  /* REPLY to GENERATE */
    struct runner_event *next;
};

/* Called on the loop thread for each event, in order; the runner frees ev
 * afterwards (set ev->job = NULL to keep the job record). */
typedef void (*runner_event_fn)(void *ctx, struct runner_event *ev);

struct runner;

/* Opens the workers' SQLite connections (state_dir/svdllmd.db), sets up the
 * async handle on loop and starts the threads; the job thread begins with
 * the oldest queued job at once. */
int runner_new(struct runner **ret, uv_loop_t *loop, const char *state_dir, runner_event_fn fn,
               void *ctx, struct sv_err *err);
/* Queues t (ownership passes) for its thread. */
void runner_push(struct runner *r, struct runner_task *t);
/* The client went away: its pending evals and generates are cancelled (their replies still
 * come back, with PROTO_CANCELLED, so counts stay right). */
void runner_drop_client(struct runner *r, uint64_t client_id);
/* Begins shutdown: queued tasks are answered PROTO_SHUTTING_DOWN, the
 * running job is asked to stop at its next safe point and stays 'running' in
 * SQLite so the next start resumes it. RUNNER_EV_EXITED follows. */
void runner_stop(struct runner *r);
/* After RUNNER_EV_EXITED (or if never started): joins the threads, closes the
 * connections and the async handle; memory goes in the close callback. */
void runner_free(struct runner *r);

/* Inside the state directory: the SQLite database and the parent of the
 * per-job work directories (jobs/<id>/). */
#define RUNNER_DB_NAME "svdllmd.db"
#define RUNNER_JOBS_DIR "jobs"

#endif
