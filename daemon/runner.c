/* runner: worker threads of svdllmd; see runner.h for who does what.
 *
 * Invariants:
 *  - Only worker threads touch their SQLite connections, the engine and the
 *    file system on behalf of requests; the loop thread only pushes tasks,
 *    sets flags and reads events.
 *  - A job leaves 'queued' through store_job_claim() or
 *    store_job_cancel_queued(), both conditional UPDATEs, so a cancel racing
 *    with the runner's claim has exactly one winner. The job thread publishes
 *    the id it is about to claim (cur_job) before claiming, so a cancel that
 *    loses the race finds the job there and raises its cancel flag.
 *  - cancel_flag: 0 run, 1 cancelled by a user (the job ends 'cancelled'),
 *    and `stopping` means daemon shutdown (the job stays 'running' so the next
 *    start resumes it from its checkpoints).
 *  - A worker thread holds a submitter's credentials (cred_enter) only
 *    between a cred_enter and its cred_leave, with no SQLite or work-directory
 *    access in between; if it cannot leave, the daemon aborts. The output
 *    rules and the one-live-job-per-output check run with the daemon's own
 *    credentials, on the ctl thread (so two submits cannot race) and again
 *    on the job thread before publishing.
 *  - Progress events are throttled to PROGRESS_PERIOD, except that a change of
 *    layer or phase is always posted; their fraction never decreases and
 *    their ETA, once known, stays known for the run (eta_update).
 *  - Faults end in a defined state: a failed store write is retried once; a
 *    job whose final state cannot be recorded is still posted final to the
 *    loop (every watch ends) and left 'running' in SQLite for the next
 *    start; a failed or cancelled job keeps its work directory for `resume`,
 *    a done one has it emptied unless it keeps its checkpoints
 *    (--keep-checkpoints); `rm` removes a final job's directory and rows.
 *  - resume_mu orders a resume's reply before the resumed job's 'running'
 *    event (the loop moves a record back from final to queued only on that
 *    reply).
 *  - A job and an eval may compute at the same time, each asking BLIS and
 *    OpenMP for every core. Measured with a hidden-1024 model on 2 cores:
 *    eval alone 12.2 s, job alone 11.2 s, both submitted together done after
 *    13.7 s; handing the cores to one at a time (tried) took 24.3 s, since
 *    neither fills both cores on its own (eigensolvers, softmax, I/O). */
#include "runner.h"
#include "mono.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "cred.h"
#include "forward.h"
#include "generate.h"
#include "log.h"

#define PROGRESS_PERIOD 0.25   /* seconds between progress events */

struct queue {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct runner_task *head, *tail;
    struct runner_task *current;    /* task being worked on (eval: for cancel) */
};

struct runner {
    uv_async_t async;
    runner_event_fn fn;
    void *ctx;
    char state_dir[PATH_MAX];
    char jobs_dir[PATH_MAX];

    pthread_mutex_t ev_mu;          /* guards ev_head/ev_tail and alive */
    struct runner_event *ev_head, *ev_tail;
    int alive;                      /* worker threads still running */

    atomic_bool stopping;
    struct queue ctl, eval;

    /* The job thread. */
    pthread_mutex_t job_mu;         /* guards kick_gen, cur_job */
    pthread_cond_t job_cv;
    uint64_t kick_gen;              /* bumped when a job may have become runnable */
    int64_t cur_job;                /* job being claimed or run, 0 if none */
    atomic_int cancel_flag;         /* for cur_job */
    /* Ctl and job threads only: held by a resume from its UPDATE to the
     * post of its reply and by the job thread's claim, so the loop sees a
     * resumed job 'queued' before it sees it 'running'. */
    pthread_mutex_t resume_mu;

    struct store *ctl_store, *job_store;
    pthread_t threads[3];
    int n_threads;
};

/* ---- Event hand-off ---------------------------------------------------------- */

static struct runner_event *event_new(enum runner_event_type type) {
    struct runner_event *ev = calloc(1, sizeof *ev);
    if (ev)
        ev->type = type;
    return ev;
}

static void event_free(struct runner_event *ev) {
    if (!ev)
        return;
    free(ev->gen.text);
    free(ev->gen.ids);
    free(ev->job);
    free(ev);
}

static void post(struct runner *r, struct runner_event *ev) {
    if (!ev) {
        log_msg(LOG_ERR, "out of memory: an event to the event loop was lost");
        return;
    }
    pthread_mutex_lock(&r->ev_mu);
    if (r->ev_tail)
        r->ev_tail->next = ev;
    else
        r->ev_head = ev;
    r->ev_tail = ev;
    pthread_mutex_unlock(&r->ev_mu);
    uv_async_send(&r->async);
}

/* Takes the whole event list (sends coalesce: always drain everything). */
static struct runner_event *take_events(struct runner *r) {
    pthread_mutex_lock(&r->ev_mu);
    struct runner_event *ev = r->ev_head;
    r->ev_head = r->ev_tail = NULL;
    pthread_mutex_unlock(&r->ev_mu);
    return ev;
}

static void on_async(uv_async_t *h) {
    struct runner *r = h->data;
    struct runner_event *ev = take_events(r);
    while (ev) {
        struct runner_event *next = ev->next;
        r->fn(r->ctx, ev);
        event_free(ev);
        ev = next;
    }
}

/* The reply to task t (code, msg or NULL, and job, which the event then
 * owns); NULL when out of memory (job is then still the caller's). */
static struct runner_event *reply_new(const struct runner_task *t, enum proto_code code, const char *msg,
                                      struct store_job *job) {
    struct runner_event *ev = event_new(RUNNER_EV_REPLY);
    if (!ev)
        return NULL;
    ev->task = t->type;
    ev->client_id = t->client_id;
    ev->req_id = t->req_id;
    ev->code = code;
    snprintf(ev->msg, sizeof ev->msg, "%s", msg ? msg : "");
    ev->job = job;
    return ev;
}

static void post_reply(struct runner *r, const struct runner_task *t, enum proto_code code,
                       const char *msg, struct store_job *job) {
    struct runner_event *ev = reply_new(t, code, msg, job);
    if (!ev)
        free(job);
    post(r, ev);   /* NULL: logged as lost */
}

/* Posts the current row of job id (for the loop's table). */
static void post_job(struct runner *r, struct store *st, int64_t id) {
    struct sv_err err = {0};
    struct store_job *j = malloc(sizeof *j);
    if (!j || store_job_get(st, id, j, &err) < 0) {
        log_msg(LOG_ERR, "job %lld: cannot read back its row: %s", (long long)id,
                j ? err.msg : "out of memory");
        free(j);
        return;
    }
    struct runner_event *ev = event_new(RUNNER_EV_JOB);
    if (ev)
        ev->job = j;
    else
        free(j);
    post(r, ev);
}

static void thread_exit(struct runner *r) {
    pthread_mutex_lock(&r->ev_mu);
    bool last = --r->alive == 0;
    pthread_mutex_unlock(&r->ev_mu);
    if (last)
        post(r, event_new(RUNNER_EV_EXITED));
}

/* ---- Task queues ------------------------------------------------------------- */

static int queue_init(struct queue *q) {
    memset(q, 0, sizeof *q);
    if (pthread_mutex_init(&q->mu, NULL) != 0)
        return -ENOMEM;
    if (pthread_cond_init(&q->cv, NULL) != 0) {
        pthread_mutex_destroy(&q->mu);
        return -ENOMEM;
    }
    return 0;
}

static void queue_destroy(struct queue *q) {
    struct runner_task *t = q->head;
    while (t) {
        struct runner_task *n = t->next;
        free(t);
        t = n;
    }
    pthread_cond_destroy(&q->cv);
    pthread_mutex_destroy(&q->mu);
}

/* Blocks for the next task; NULL once stopping. Marks it current. */
static struct runner_task *queue_take(struct runner *r, struct queue *q) {
    pthread_mutex_lock(&q->mu);
    q->current = NULL;
    while (!q->head && !atomic_load(&r->stopping))
        pthread_cond_wait(&q->cv, &q->mu);
    struct runner_task *t = NULL;
    if (!atomic_load(&r->stopping) && q->head) {
        t = q->head;
        q->head = t->next;
        if (!q->head)
            q->tail = NULL;
        t->next = NULL;
        q->current = t;
    }
    pthread_mutex_unlock(&q->mu);
    return t;
}

static void queue_done(struct queue *q) {
    pthread_mutex_lock(&q->mu);
    q->current = NULL;
    pthread_mutex_unlock(&q->mu);
}

/* Answers every task left in q with shutting_down. */
static void queue_flush(struct runner *r, struct queue *q) {
    pthread_mutex_lock(&q->mu);
    struct runner_task *t = q->head;
    q->head = q->tail = NULL;
    pthread_mutex_unlock(&q->mu);
    while (t) {
        struct runner_task *n = t->next;
        post_reply(r, t, PROTO_SHUTTING_DOWN, "svdllmd is shutting down", NULL);
        free(t);
        t = n;
    }
}

/* ---- Path checks (worker threads: they stat and open files) ----------------- */

/* Who a path check was made for, in messages: the submitter when the thread
 * acts with its rights, svdllmd itself when it cannot (CRED_CHECK). */
static const char *who(const struct cred *c, char buf[32]) {
    if (c->how == CRED_CHECK)
        snprintf(buf, 32, "svdllmd (uid %u)", (unsigned)geteuid());
    else
        snprintf(buf, 32, "uid %u", (unsigned)c->uid);
    return buf;
}

/* The thread could not return to the daemon's own credentials: it must not
 * go on (with the submitter's rights, or a mix), so the daemon stops; its
 * jobs resume at the next start. */
static void leave_or_die(struct cred *c) {
    struct sv_err err = {0};
    if (cred_leave(c, &err) < 0) {
        log_msg(LOG_ERR, "%s; stopping svdllmd", err.msg);
        abort();
    }
}

enum want { WANT_DIR, WANT_FILE };

/* Resolves the absolute path in into out (realpath) and checks its type and
 * that c may read it; on failure sets e (PROTO_BAD_PATH) naming field. Call
 * with c entered, so that realpath walks the directories with its rights. */
static int resolve_input(const struct cred *c, const char *field, const char *in, enum want want,
                         char out[PATH_MAX], struct proto_error *e) {
    char wb[32];
    if (in[0] != '/')
        return proto_error_set(e, PROTO_BAD_PATH, "%s: '%.300s' is not an absolute path", field, in);
    if (!realpath(in, out)) {
        if (errno == EACCES)
            return proto_error_set(e, PROTO_BAD_PATH, "%s: %.400s: not readable by %s: %s", field, in,
                                   who(c, wb), strerror(errno));
        return proto_error_set(e, PROTO_BAD_PATH, "%s: %.400s: %s", field, in, strerror(errno));
    }
    struct stat sb;
    if (stat(out, &sb) < 0)
        return proto_error_set(e, PROTO_BAD_PATH, "%s: %.400s: %s", field, out, strerror(errno));
    if (want == WANT_DIR && !S_ISDIR(sb.st_mode))
        return proto_error_set(e, PROTO_BAD_PATH, "%s: %.400s: not a directory", field, out);
    if (want == WANT_FILE && S_ISDIR(sb.st_mode))
        return proto_error_set(e, PROTO_BAD_PATH, "%s: %.400s: is a directory", field, out);
    if (want == WANT_FILE && !S_ISREG(sb.st_mode))
        return proto_error_set(e, PROTO_BAD_PATH, "%s: %.400s: not a regular file", field, out);
    struct sv_err err = {0};
    if (cred_access(c, out, want == WANT_DIR ? R_OK | X_OK : R_OK, &err) < 0)
        return proto_error_set(e, PROTO_BAD_PATH, "%s: %.450s", field, err.msg);
    return 0;
}

/* model_dir (resolved) must hold a config.json that c may read and that
 * config_load accepts. */
static int check_model(const struct cred *c, const char *field, const char *model_dir, struct proto_error *e) {
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/config.json", model_dir);
    struct sv_err err = {0};
    int r = cred_access(c, path, R_OK, &err);
    if (r < 0)
        return proto_error_set(e, r == -ENOENT ? PROTO_BAD_MODEL : PROTO_BAD_PATH, "%s: %.450s", field, err.msg);
    struct config cfg;
    if (config_load(&cfg, path, &err) < 0)
        return proto_error_set(e, PROTO_BAD_MODEL, "%s: not a supported LLaMA model: %s", field, err.msg);
    config_free(&cfg);
    return 0;
}

/* The output directory need not exist: resolve its parent, which c must be
 * able to write, and refuse an existing out unless overwrite is set (what
 * overwrite may replace is output_rules' business). Call with c entered. */
static int resolve_output(const struct cred *c, const char *in, bool overwrite, char out[PATH_MAX],
                          struct proto_error *e) {
    if (in[0] != '/')
        return proto_error_set(e, PROTO_BAD_PATH, "out: '%.300s' is not an absolute path", in);
    char tmp[PATH_MAX], wb[32];
    snprintf(tmp, sizeof tmp, "%s", in);
    size_t n = strlen(tmp);
    while (n > 1 && tmp[n - 1] == '/')
        tmp[--n] = '\0';
    char *slash = strrchr(tmp, '/');
    const char *base = slash + 1;
    if (!*base || strcmp(base, ".") == 0 || strcmp(base, "..") == 0)
        return proto_error_set(e, PROTO_BAD_PATH, "out: '%.300s' does not name a directory to create", in);
    char parent_in[PATH_MAX], parent[PATH_MAX];
    snprintf(parent_in, sizeof parent_in, "%.*s", slash == tmp ? 1 : (int)(slash - tmp), tmp);
    if (!realpath(parent_in, parent)) {
        if (errno == EACCES)
            return proto_error_set(e, PROTO_BAD_PATH, "out: parent directory %.400s: not accessible to %s: %s",
                                   parent_in, who(c, wb), strerror(errno));
        return proto_error_set(e, PROTO_BAD_PATH, "out: parent directory %.400s: %s", parent_in,
                               strerror(errno));
    }
    struct stat sb;
    if (stat(parent, &sb) < 0 || !S_ISDIR(sb.st_mode))
        return proto_error_set(e, PROTO_BAD_PATH, "out: parent %.400s: not a directory", parent);
    struct sv_err err = {0};
    if (cred_access(c, parent, W_OK | X_OK, &err) < 0)
        return proto_error_set(e, PROTO_BAD_PATH, "out: parent directory: %.450s", err.msg);
    if ((size_t)snprintf(out, PATH_MAX, "%s/%s", strcmp(parent, "/") == 0 ? "" : parent, base) >= PATH_MAX)
        return proto_error_set(e, PROTO_BAD_PATH, "out: path too long");
    if (lstat(out, &sb) == 0) {
        if (!overwrite)
            return proto_error_set(e, PROTO_EXISTS, "out: %.400s already exists (set overwrite to replace it)", out);
        if (!S_ISDIR(sb.st_mode))
            return proto_error_set(e, PROTO_BAD_PATH, "out: %.400s exists and is not a directory", out);
    } else if (errno != ENOENT) {
        return proto_error_set(e, PROTO_BAD_PATH, "out: %.400s: %s (%s)", out, strerror(errno), who(c, wb));
    }
    return 0;
}

/* 1 if a is b or lies below it. Compared by device and inode along a's
 * prefixes (a absolute and resolved; prefixes that do not exist are
 * skipped), so another name for b (a bind mount, a symlink put there since
 * the path was resolved) is caught too. 0 when b does not exist. */
static int path_within(const char *a, const char *b) {
    struct stat sb, sa;
    char buf[PATH_MAX];
    if (stat(b, &sb) < 0 || (size_t)snprintf(buf, sizeof buf, "%s", a) >= sizeof buf)
        return 0;
    for (;;) {
        if (stat(buf, &sa) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino)
            return 1;
        char *s = strrchr(buf, '/');
        if (!s || (s == buf && buf[1] == '\0'))
            return 0;
        if (s == buf)
            buf[1] = '\0';
        else
            *s = '\0';
    }
}

struct out_search {
    const char *out;
    uint32_t uid;
    bool live;            /* looking for a queued/running job (else a done one of uid) */
    int64_t found;
    enum job_state state;
};

static int out_search_fn(void *ctx, const struct store_job *j) {
    struct out_search *q = ctx;
    if (strcmp(j->params.out_dir, q->out) != 0)
        return 0;
    bool hit = q->live ? (j->state == JOB_QUEUED || j->state == JOB_RUNNING)
                       : (j->state == JOB_DONE && j->owner_uid == q->uid);
    if (hit) {
        q->found = j->id;
        q->state = j->state;
    }
    return hit;
}

/* The output rules (schema/protocol.md, Authorization), with the daemon's
 * own credentials: at submit (ctl thread) and again just before the engine
 * publishes (job thread, hook_output_check). p's paths are resolved. */
static int output_rules(struct runner *r, struct store *st, const struct cred *c,
                        const struct compress_params *p, struct proto_error *e) {
    const char *out = p->out_dir;
    const char *const daemon_dirs[2] = {r->state_dir, r->jobs_dir};
    for (int i = 0; i < 2; i++) {
        if (path_within(out, daemon_dirs[i]))
            return proto_error_set(e, PROTO_BAD_PATH, "out: %.300s is or lies inside svdllmd's state directory "
                                   "%.300s (its database and the jobs' work directories)", out, r->state_dir);
        if (path_within(daemon_dirs[i], out))
            return proto_error_set(e, PROTO_BAD_PATH, "out: %.300s contains svdllmd's state directory %.300s "
                                   "(its database and the jobs' work directories)", out, r->state_dir);
    }
    if (path_within(p->model_dir, out))
        return proto_error_set(e, PROTO_BAD_PATH, "out: %.300s is or contains the model directory %.300s", out,
                               p->model_dir);
    if (p->calib_path[0] && path_within(p->calib_path, out))
        return proto_error_set(e, PROTO_BAD_PATH, "out: %.300s contains the calibration text %.300s", out,
                               p->calib_path);
    if (p->eval_path[0] && path_within(p->eval_path, out))
        return proto_error_set(e, PROTO_BAD_PATH, "out: %.300s contains the evaluation text %.300s", out,
                               p->eval_path);
    struct stat sb, cs;
    if (lstat(out, &sb) < 0)
        return 0;   /* nothing to replace */
    if (!S_ISDIR(sb.st_mode))
        return proto_error_set(e, PROTO_BAD_PATH, "out: %.400s exists and is not a directory", out);
    char cj[PATH_MAX + 32];
    snprintf(cj, sizeof cj, "%s/compression.json", out);
    if (lstat(cj, &cs) < 0 || !S_ISREG(cs.st_mode))
        return proto_error_set(e, PROTO_BAD_PATH, "out: %.400s exists and is not an svdllm output (it holds no "
                               "compression.json): overwrite replaces only earlier svdllm outputs", out);
    /* Outputs of a daemon that could not switch belong to the daemon's own
     * user: the job table says whose they are. */
    if (c->uid != 0 && sb.st_uid != (uid_t)c->uid) {
        struct out_search q = {.out = out, .uid = c->uid, .live = false};
        struct sv_err err = {0};
        if (sb.st_uid != geteuid() || store_job_list(st, out_search_fn, &q, &err) < 0 || !q.found)
            return proto_error_set(e, PROTO_FORBIDDEN, "out: %.400s is an svdllm output of uid %u, not of uid %u: "
                                   "only its owner or root may overwrite it", out, (unsigned)sb.st_uid,
                                   (unsigned)c->uid);
    }
    return 0;
}

/* A job owns its output path from submit to its end. */
static int out_in_use(struct runner *r, const char *out, struct proto_error *e) {
    struct out_search q = {.out = out, .live = true};
    struct sv_err err = {0};
    if (store_job_list(r->ctl_store, out_search_fn, &q, &err) < 0)
        return proto_error_set(e, PROTO_INTERNAL, "cannot list the jobs: %s", err.msg);
    if (q.found)
        return proto_error_set(e, PROTO_EXISTS, "out: %.400s is the output of job %lld (%s) until it ends", out,
                               (long long)q.found, store_state_name(q.state));
    return 0;
}

static int readable_by(void *ctx, const char *path, struct sv_err *err) {
    return cred_access(ctx, path, R_OK, err);
}

/* params_precheck's verdict as a reply code and a message naming the field
 * (and, for a refused access, whose rights were used). */
static int precheck_error(const struct cred *c, struct proto_error *e, int rc, enum compress_check what,
                          const char *msg) {
    char wb[32];
    static const char *const field[] = {"", "model", "calib", "eval_text", "ratio"};
    const char *f = what >= COMPRESS_CHECK_MODEL && what <= COMPRESS_CHECK_RATIO ? field[what] : "input";
    enum proto_code code = rc == -EACCES || rc == -EPERM ? PROTO_BAD_PATH
                           : rc == -ENOMEM               ? PROTO_INTERNAL
                           : what == COMPRESS_CHECK_MODEL ? PROTO_BAD_MODEL
                                                          : PROTO_INVALID;
    if (code == PROTO_BAD_PATH && !strstr(msg, "by uid") && !strstr(msg, "by svdllmd"))
        return proto_error_set(e, code, "%s: %s (as %s)", f, msg, who(c, wb));
    return proto_error_set(e, code, "%s: %s", f, msg);
}

/* ---- ctl thread: submit and cancel -------------------------------------------- */

/* Everything read for a submit, with the submitter's rights (c entered). */
static int submit_checks_as_user(struct runner *r, const struct cred *c, const struct compress_params *in,
                                 struct store_job *j, struct proto_error *e) {
    struct compress_params *p = &j->params;
    struct sv_err err = {0};
    if (resolve_input(c, "model", in->model_dir, WANT_DIR, p->model_dir, e) < 0 ||
        check_model(c, "model", p->model_dir, e) < 0 ||
        (in->calib_path[0] && resolve_input(c, "calib", in->calib_path, WANT_FILE, p->calib_path, e) < 0) ||
        (in->eval_path[0] && resolve_input(c, "eval_text", in->eval_path, WANT_FILE, p->eval_path, e) < 0) ||
        resolve_output(c, in->out_dir, in->overwrite, p->out_dir, e) < 0)
        return -1;
    /* The work directory is created with the row, after the checks; until
     * then it names the directory that will hold it. */
    snprintf(p->work_dir, sizeof p->work_dir, "%s", r->jobs_dir);
    if (params_check(p, &err) < 0)
        return proto_error_set(e, PROTO_INVALID, "%s", err.msg);
    enum compress_check what = COMPRESS_CHECK_MODEL;
    int rc = params_precheck(p, readable_by, (void *)c, &what, &err);
    if (rc < 0)
        return precheck_error(c, e, rc, what, err.msg);
    if (params_job_key(p, j->key, &err) < 0)
        return proto_error_set(e, PROTO_INVALID, "cannot compute the job key: %s", err.msg);
    return 0;
}

static void do_submit(struct runner *r, struct runner_task *t) {
    struct proto_error e = {0};
    struct sv_err err = {0};
    struct cred cred;
    struct store_job *j = calloc(1, sizeof *j);
    if (!j) {
        post_reply(r, t, PROTO_INTERNAL, "out of memory", NULL);
        return;
    }
    if (cred_lookup(&cred, t->uid, t->gid, &err) < 0) {
        free(j);
        post_reply(r, t, PROTO_FORBIDDEN, err.msg, NULL);
        return;
    }
    j->params = t->params;
    if (cred_enter(&cred, &err) < 0) {
        log_msg(LOG_ERR, "submit: %s", err.msg);
        proto_error_set(&e, PROTO_INTERNAL, "%s", err.msg);
        goto fail;
    }
    int rc = submit_checks_as_user(r, &cred, &t->params, j, &e);
    leave_or_die(&cred);
    if (rc < 0 || output_rules(r, r->ctl_store, &cred, &j->params, &e) < 0 ||
        out_in_use(r, j->params.out_dir, &e) < 0)
        goto fail;
    struct compress_params *p = &j->params;
    j->owner_uid = t->uid;
    j->owner_gid = t->gid;
    j->keep_checkpoints = t->keep_checkpoints;
    j->created_at = (int64_t)time(NULL);
    p->work_dir[0] = '\0';
    if (store_job_insert(r->ctl_store, j, r->jobs_dir, &err) < 0) {
        log_msg(LOG_ERR, "submit: %s", err.msg);
        proto_error_set(&e, PROTO_INTERNAL, "cannot record the job: %s", err.msg);
        goto fail;
    }
    log_msg(LOG_INFO, "job %lld: queued (%s, ratio %g, model %s, uid %u, credentials: %s)", (long long)j->id,
            params_method_name(p->method), p->ratio, p->model_dir, (unsigned)t->uid, cred_how_name(cred.how));
    cred_free(&cred);
    /* The reply carries the record; the loop adds it to its table. */
    post_reply(r, t, PROTO_OK, NULL, j);
    pthread_mutex_lock(&r->job_mu);
    r->kick_gen++;
    pthread_cond_signal(&r->job_cv);
    pthread_mutex_unlock(&r->job_mu);
    return;
fail:
    cred_free(&cred);
    free(j);
    post_reply(r, t, e.code, e.msg, NULL);
}

static void do_cancel(struct runner *r, struct runner_task *t) {
    struct sv_err err = {0};
    char why[64];
    snprintf(why, sizeof why, "cancelled by uid %u", (unsigned)t->uid);
    int c = store_job_cancel_queued(r->ctl_store, t->job_id, why, &err);
    if (c < 0) {
        log_msg(LOG_ERR, "cancel job %lld: %s", (long long)t->job_id, err.msg);
        post_reply(r, t, PROTO_INTERNAL, err.msg, NULL);
        return;
    }
    if (c == 1) {
        log_msg(LOG_INFO, "job %lld: cancelled while queued (uid %u)", (long long)t->job_id,
                (unsigned)t->uid);
        post_job(r, r->ctl_store, t->job_id);
        post_reply(r, t, PROTO_OK, NULL, NULL);
        return;
    }
    /* Not queued: running (the job thread published it before claiming) or
     * already final. */
    pthread_mutex_lock(&r->job_mu);
    bool running = r->cur_job == t->job_id;
    if (running)
        atomic_store(&r->cancel_flag, 1);
    pthread_mutex_unlock(&r->job_mu);
    if (running) {
        log_msg(LOG_INFO, "job %lld: cancel requested (uid %u)", (long long)t->job_id, (unsigned)t->uid);
        struct runner_event *ev = reply_new(t, PROTO_OK, NULL, NULL);
        if (ev)
            ev->cancelling = true;
        post(r, ev);
        return;
    }
    struct store_job *j = malloc(sizeof *j);
    if (j && store_job_get(r->ctl_store, t->job_id, j, &err) == 0) {
        char msg[128];
        snprintf(msg, sizeof msg, "job %lld is already %s", (long long)t->job_id,
                 store_state_name(j->state));
        free(j);
        post_reply(r, t, PROTO_BAD_STATE, msg, NULL);
        return;
    }
    free(j);
    post_reply(r, t, PROTO_NOT_FOUND, "no such job", NULL);
}

/* A resume continues from checkpoints computed from the inputs named by
 * j's key: refused (PROTO_INVALID, naming what changed) when the model or
 * calibration files, read with the owner's rights, now give another key.
 * A second computation, on purpose: the resume request is answered now,
 * on this thread, while the engine checks the key again as it opens the
 * job (compress_hooks.job_key), for changes made while the job was queued. */
static int resume_key_check(const struct store_job *j, struct proto_error *e) {
    struct cred cred;
    struct sv_err err = {0};
    char key[65];
    if (cred_lookup(&cred, j->owner_uid, j->owner_gid, &err) < 0)
        return proto_error_set(e, PROTO_FORBIDDEN, "job %lld: cannot act for its owner: %.400s", (long long)j->id,
                               err.msg);
    int rc = cred_enter(&cred, &err);
    if (rc == 0) {
        rc = params_job_key(&j->params, key, &err);
        leave_or_die(&cred);
    }
    cred_free(&cred);
    if (rc < 0)
        return proto_error_set(e, PROTO_INVALID, "job %lld cannot be resumed: its inputs changed since it was "
                               "submitted: %.360s; submit a new job", (long long)j->id, err.msg);
    if (strcmp(key, j->key) != 0)
        return proto_error_set(e, PROTO_INVALID, "job %lld cannot be resumed: its inputs changed since it was "
                               "submitted (job key %.16s..., the model and calibration files now give %.16s...); "
                               "submit a new job", (long long)j->id, j->key, key);
    return 0;
}

/* failed or cancelled -> queued. The job thread is not running it (checked
 * under job_mu: a job leaves 'failed' and 'cancelled' only here, so it
 * cannot start meanwhile); a 'running' row it does not run is one whose
 * final state could not be recorded, and is resumed too. */
static void do_resume(struct runner *r, struct runner_task *t) {
    struct sv_err err = {0};
    pthread_mutex_lock(&r->job_mu);
    bool running = r->cur_job == t->job_id;
    pthread_mutex_unlock(&r->job_mu);
    if (running) {
        char msg[128];
        snprintf(msg, sizeof msg, "job %lld is still running (or just ending: try again)", (long long)t->job_id);
        post_reply(r, t, PROTO_BAD_STATE, msg, NULL);
        return;
    }
    struct store_job *j = malloc(sizeof *j);
    if (!j) {
        post_reply(r, t, PROTO_INTERNAL, "out of memory", NULL);
        return;
    }
    struct proto_error e = {0};
    if (store_job_get(r->ctl_store, t->job_id, j, &err) == 0 &&
        (j->state == JOB_FAILED || j->state == JOB_CANCELLED || j->state == JOB_RUNNING) &&
        resume_key_check(j, &e) < 0) {
        log_msg(LOG_NOTICE, "resume job %lld (uid %u): %s", (long long)t->job_id, (unsigned)t->uid, e.msg);
        post_reply(r, t, e.code, e.msg, NULL);
        free(j);
        return;
    }
    pthread_mutex_lock(&r->resume_mu);
    int n = store_job_resume(r->ctl_store, t->job_id, true, &err);
    if (n == 1 && store_job_get(r->ctl_store, t->job_id, j, &err) == 0) {
        log_msg(LOG_INFO, "job %lld: resumed by uid %u (%d of its layers checkpointed)", (long long)t->job_id,
                (unsigned)t->uid, j->layers_done);
        post_reply(r, t, PROTO_OK, NULL, j);
        pthread_mutex_unlock(&r->resume_mu);
        pthread_mutex_lock(&r->job_mu);
        r->kick_gen++;
        pthread_cond_signal(&r->job_cv);
        pthread_mutex_unlock(&r->job_mu);
        return;
    }
    pthread_mutex_unlock(&r->resume_mu);
    if (n == -EEXIST) {
        post_reply(r, t, PROTO_EXISTS, err.msg, NULL);
    } else if (n < 0 || n == 1) {
        log_msg(LOG_ERR, "resume job %lld: %s", (long long)t->job_id, err.msg);
        post_reply(r, t, PROTO_INTERNAL, err.msg, NULL);
        if (n == 1) {   /* queued all the same */
            pthread_mutex_lock(&r->job_mu);
            r->kick_gen++;
            pthread_cond_signal(&r->job_cv);
            pthread_mutex_unlock(&r->job_mu);
        }
    } else if (store_job_get(r->ctl_store, t->job_id, j, &err) == 0) {
        char msg[128];
        snprintf(msg, sizeof msg, "job %lld is %s; only a failed or cancelled job can be resumed",
                 (long long)t->job_id, store_state_name(j->state));
        post_reply(r, t, PROTO_BAD_STATE, msg, NULL);
    } else {
        post_reply(r, t, PROTO_NOT_FOUND, "no such job", NULL);
    }
    free(j);
}

static int work_dir_clear(const struct runner *r, const char *dir, uint64_t *freed, struct sv_err *err);

/* rm: a final job's work directory (its contents, then the directory),
 * then its rows. The loop checked the owner and the state it knows; both
 * are checked again here against the database. A job the job thread is
 * still ending is refused; queued and running ones are not final. */
static void do_rm(struct runner *r, struct runner_task *t) {
    struct sv_err err = {0};
    char msg[SV_ERR_MSG_MAX];
    pthread_mutex_lock(&r->job_mu);
    bool running = r->cur_job == t->job_id;
    pthread_mutex_unlock(&r->job_mu);
    struct store_job *j = malloc(sizeof *j);
    if (!j) {
        post_reply(r, t, PROTO_INTERNAL, "out of memory", NULL);
        return;
    }
    int g = store_job_get(r->ctl_store, t->job_id, j, &err);
    if (g == -ENOENT) {
        free(j);
        post_reply(r, t, PROTO_NOT_FOUND, "no such job", NULL);
        return;
    }
    if (g < 0) {
        log_msg(LOG_ERR, "rm job %lld: %s", (long long)t->job_id, err.msg);
        free(j);
        post_reply(r, t, PROTO_INTERNAL, err.msg, NULL);
        return;
    }
    if (t->uid != 0 && t->uid != j->owner_uid) {
        snprintf(msg, sizeof msg, "job %lld belongs to uid %u; only it or root may remove it", (long long)j->id,
                 (unsigned)j->owner_uid);
        free(j);
        post_reply(r, t, PROTO_FORBIDDEN, msg, NULL);
        return;
    }
    if (running || !store_state_final(j->state)) {
        snprintf(msg, sizeof msg, "job %lld is %s%s; only a done, failed or cancelled job can be removed (cancel it "
                 "first)", (long long)j->id, store_state_name(j->state), running ? " (or just ending: try again)" : "");
        free(j);
        post_reply(r, t, PROTO_BAD_STATE, msg, NULL);
        return;
    }
    uint64_t freed = 0;
    int rc = j->params.work_dir[0] ? work_dir_clear(r, j->params.work_dir, &freed, &err) : 0;
    if (rc == 0 && j->params.work_dir[0] && rmdir(j->params.work_dir) < 0 && errno != ENOENT)
        rc = sv_err_set(&err, -errno, "cannot remove %s: %s", j->params.work_dir, strerror(errno));
    if (rc == 0 && (rc = store_job_delete(r->ctl_store, j->id, &err)) == 0) {
        rc = -EAGAIN;   /* not final any more: cannot happen while only this thread resumes */
        snprintf(err.msg, sizeof err.msg, "job %lld changed state while being removed", (long long)j->id);
    }
    if (rc < 0) {
        log_msg(LOG_ERR, "rm job %lld: %s", (long long)j->id, err.msg);
        free(j);
        post_reply(r, t, rc == -EAGAIN ? PROTO_BAD_STATE : PROTO_INTERNAL, err.msg, NULL);
        return;
    }
    log_msg(LOG_INFO, "job %lld: removed by uid %u (work directory %s, %llu bytes; output %s kept)", (long long)j->id,
            (unsigned)t->uid, j->params.work_dir, (unsigned long long)freed, j->params.out_dir);
    struct runner_event *ev = reply_new(t, PROTO_OK, NULL, j);
    if (ev)
        ev->freed_bytes = freed;
    else
        free(j);
    post(r, ev);
}

static void *ctl_main(void *arg) {
    struct runner *r = arg;
    struct runner_task *t;
    while ((t = queue_take(r, &r->ctl))) {
        if (t->type == RUNNER_TASK_SUBMIT)
            do_submit(r, t);
        else if (t->type == RUNNER_TASK_RESUME)
            do_resume(r, t);
        else if (t->type == RUNNER_TASK_RM)
            do_rm(r, t);
        else
            do_cancel(r, t);
        queue_done(&r->ctl);
        free(t);
    }
    queue_flush(r, &r->ctl);
    thread_exit(r);
    return NULL;
}

/* ---- eval thread ------------------------------------------------------------- */

struct eval_cancel {
    struct runner *r;
    struct runner_task *t;
};

static int eval_should_cancel(void *ctx) {
    struct eval_cancel *c = ctx;
    return atomic_load(&c->t->cancel) || atomic_load(&c->r->stopping);
}

/* The start of an eval or a generate, which read only the requester's
 * files: with the requester's rights from the path checks to the end. On 0
 * the credentials are entered (the caller leaves them) and model holds the
 * resolved model directory; on -1 the reply is posted. */
static int eval_enter(struct runner *r, struct runner_task *t, const char *what, const char *model_dir,
                      char model[PATH_MAX], struct cred *cred) {
    struct proto_error e = {0};
    struct sv_err err = {0};
    if (atomic_load(&t->cancel)) {
        post_reply(r, t, PROTO_CANCELLED, "the client went away", NULL);
        return -1;
    }
    if (cred_lookup(cred, t->uid, t->gid, &err) < 0) {
        post_reply(r, t, PROTO_FORBIDDEN, err.msg, NULL);
        return -1;
    }
    if (cred_enter(cred, &err) < 0) {
        log_msg(LOG_ERR, "%s: %s", what, err.msg);
        cred_free(cred);
        post_reply(r, t, PROTO_INTERNAL, err.msg, NULL);
        return -1;
    }
    if (resolve_input(cred, "model", model_dir, WANT_DIR, model, &e) < 0 || check_model(cred, "model", model, &e) < 0) {
        leave_or_die(cred);
        cred_free(cred);
        post_reply(r, t, e.code, e.msg, NULL);
        return -1;
    }
    return 0;
}

/* Leaves the requester's rights; for a failed computation (rc < 0) posts
 * its reply and returns -1. */
static int eval_leave(struct runner *r, struct runner_task *t, struct cred *cred, int rc, const struct sv_err *err) {
    leave_or_die(cred);
    cred_free(cred);
    if (rc == -ECANCELED) {
        post_reply(r, t, PROTO_CANCELLED, atomic_load(&r->stopping) ? "svdllmd is shutting down"
                                                                     : "the client went away", NULL);
        return -1;
    }
    if (rc < 0) {
        post_reply(r, t, PROTO_FAILED, err->msg[0] ? err->msg : strerror(-rc), NULL);
        return -1;
    }
    return 0;
}

static void do_eval(struct runner *r, struct runner_task *t) {
    char model[PATH_MAX], text[PATH_MAX];
    struct cred cred;
    if (eval_enter(r, t, "eval", t->eval.model_dir, model, &cred) < 0)
        return;
    struct proto_error e = {0};
    if (resolve_input(&cred, "text", t->eval.text_path, WANT_FILE, text, &e) < 0) {
        leave_or_die(&cred);
        cred_free(&cred);
        post_reply(r, t, e.code, e.msg, NULL);
        return;
    }
    struct eval_cancel c = {r, t};
    struct ppl_result res = {0};
    struct sv_err err = {0};
    int rc = ppl_eval(model, text, t->eval.seqlen, t->eval.max_windows, eval_should_cancel, &c, &res, &err);
    if (eval_leave(r, t, &cred, rc, &err) < 0)
        return;
    struct runner_event *ev = reply_new(t, PROTO_OK, NULL, NULL);
    if (ev)
        ev->ppl = res;
    post(r, ev);
}

/* generate: like an eval (the model directory and its tokenizer are the
 * requester's files); the reply carries the text and the ids. */
static void do_generate(struct runner *r, struct runner_task *t) {
    char model[PATH_MAX];
    struct cred cred;
    if (eval_enter(r, t, "generate", t->gen.model_dir, model, &cred) < 0)
        return;
    struct eval_cancel c = {r, t};
    struct gen_params gp = {.prompt = t->gen.prompt, .prompt_len = t->gen.prompt_len, .add_bos = t->gen.add_bos,
                            .max_tokens = t->gen.max_tokens, .temperature = t->gen.temperature,
                            .top_p = t->gen.top_p, .seed = t->gen.seed, .max_text_bytes = RUNNER_GEN_MAX_TEXT};
    struct gen_result res;
    struct sv_err err = {0};
    int rc = gen_run(model, &gp, NULL, NULL, eval_should_cancel, &c, &res, &err);
    if (eval_leave(r, t, &cred, rc, &err) < 0)
        return;
    struct runner_event *ev = reply_new(t, PROTO_OK, NULL, NULL);
    if (!ev) {
        gen_result_free(&res);
        post(r, NULL);
        return;
    }
    ev->gen = (struct runner_gen_reply){.text = res.text, .text_len = res.text_len, .ids = res.ids,
                                        .n_ids = res.n_ids, .n_prompt = res.n_prompt,
                                        .finish = gen_finish_name(res.finish), .prompt_seconds = res.prompt_seconds,
                                        .seconds = res.gen_seconds, .tokens_per_s = res.tokens_per_s};
    post(r, ev);
}

/* Starts this worker's OpenMP team now, with the daemon's credentials. A
 * new thread inherits its creator's credentials, and libgomp keeps a
 * team's threads for the next region: a team first started inside a
 * credential switch (an eval, a job's evaluation) would keep the
 * submitter's rights for the daemon's life. They only compute, but no
 * thread should hold a submitter's credentials outside its switch. */
static void compute_team_start(void) {
    int n = forward_threads_get();
    atomic_int started = 0;   /* an empty region is compiled away */
#pragma omp parallel num_threads(n)
    atomic_fetch_add(&started, 1);
    if (atomic_load(&started) != n)
        log_msg(LOG_NOTICE, "compute team: %d of %d threads started", atomic_load(&started), n);
}

static void *eval_main(void *arg) {
    struct runner *r = arg;
    struct runner_task *t;
    forward_threads_set(forward_threads_get());   /* see job_main */
    compute_team_start();
    while ((t = queue_take(r, &r->eval))) {
        if (t->type == RUNNER_TASK_GENERATE)
            do_generate(r, t);
        else
            do_eval(r, t);
        queue_done(&r->eval);
        free(t);
    }
    queue_flush(r, &r->eval);
    thread_exit(r);
    return NULL;
}

/* ---- job thread --------------------------------------------------------------- */

static uint64_t peak_rss(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) < 0)
        return 0;
    return (uint64_t)ru.ru_maxrss * 1024;   /* Linux reports KiB */
}

#define ETA_WINDOW 30.0   /* seconds of progress the ETA's rate is measured over */
#define ETA_HISTORY 256   /* posted (time, fraction) samples kept: > ETA_WINDOW / PROGRESS_PERIOD */
#define ETA_GAIN 0.3      /* how far each new estimate moves the ETA */
#define RETRY_PAUSE_S 1   /* before the one retry of a failed store write */

struct job_ctx {
    struct runner *r;
    int64_t id;
    double t_start;       /* this run's start (monotonic) */
    double t_first;       /* time of the first progress report, < 0 before */
    double f_first;       /* fraction at that report (resumed work) */
    double t_last_post;
    double f_last;        /* highest fraction posted */
    double eta, t_eta;    /* last ETA posted (< 0: none yet) and when */
    double hist_t[ETA_HISTORY], hist_f[ETA_HISTORY];
    int hist_n;
    int last_layer;
    char last_phase[16];
    int n_layers;
    int layers_done;
    bool force_post;
    struct cred *cred;                       /* the job's owner */
    const struct compress_params *params;    /* the job's, resolved at submit */
};

/* compress_hooks.user_fs: the owner's rights around the engine's accesses
 * to the owner's files. */
static int hook_user_fs(void *vctx, int enter, struct sv_err *err) {
    struct job_ctx *c = vctx;
    if (enter)
        return cred_enter(c->cred, err);
    leave_or_die(c->cred);
    return 0;
}

/* compress_hooks.output_check: the submit-time output rules, again. */
static int hook_output_check(void *vctx, const char *out_dir, struct sv_err *err) {
    struct job_ctx *c = vctx;
    struct proto_error e = {0};
    (void)out_dir;   /* the job's own, in c->params */
    if (output_rules(c->r, c->r->job_store, c->cred, c->params, &e) < 0)
        return sv_err_set(err, -EPERM, "%s", e.msg);
    return 0;
}

static int hook_layer_lookup(void *vctx, int layer, struct compress_checkpoint *ck) {
    struct job_ctx *c = vctx;
    struct sv_err err = {0};
    int r = store_layer_get(c->r->job_store, c->id, layer, ck, &err);
    if (r < 0)
        log_msg(LOG_ERR, "job %lld: layer %d lookup: %s", (long long)c->id, layer, err.msg);
    return r;
}

/* A store write that failed with a full disk or an I/O error is tried once
 * more after a pause (space may have been freed meanwhile); a retry costs
 * only that pause, a failed job a resume. */
static bool retry_worth(int r) {
    return r == -ENOSPC || r == -EIO || r == -EBUSY;
}

static int hook_layer_done(void *vctx, int layer, const struct compress_checkpoint *ck,
                           struct sv_err *err) {
    struct job_ctx *c = vctx;
    int r = store_layer_commit(c->r->job_store, c->id, layer, c->n_layers, ck, err);
    if (r < 0 && retry_worth(r)) {
        log_msg(LOG_WARNING, "job %lld: %s; retrying in %d s", (long long)c->id, err->msg, RETRY_PAUSE_S);
        sleep(RETRY_PAUSE_S);
        r = store_layer_commit(c->r->job_store, c->id, layer, c->n_layers, ck, err);
    }
    if (r == 0) {
        c->layers_done++;
        c->force_post = true;
    }
    return r;
}

static int hook_layers_drop(void *vctx, int from, const char *why, struct sv_err *err) {
    struct job_ctx *c = vctx;
    int n = store_layers_drop(c->r->job_store, c->id, from, err);
    if (n < 0)
        return n;
    log_msg(LOG_WARNING, "job %lld: %s; layer %d and every later one are recomputed (%d committed row%s dropped)",
            (long long)c->id, why, from, n, n == 1 ? "" : "s");
    if (c->layers_done > from)
        c->layers_done = from;
    c->force_post = true;
    return 0;
}

static int hook_should_cancel(void *vctx) {
    struct job_ctx *c = vctx;
    return atomic_load(&c->r->cancel_flag) || atomic_load(&c->r->stopping);
}

/* The ETA from the fraction's rate over the last ETA_WINDOW seconds (over
 * this whole run while the window saw no progress: a long phase between two
 * reports), smoothed so that one fast or slow phase moves it only part of
 * the way; resumed work, done before this run, does not count. Unknown
 * (< 0) until this run has made measurable progress, and known from then on
 * until the run ends. */
static double eta_update(struct job_ctx *c, double now, double f) {
    int n = c->hist_n < ETA_HISTORY ? c->hist_n : ETA_HISTORY;
    double t_old = now, f_old = f;
    for (int k = 1; k <= n; k++) {   /* newest to oldest, back to the window's start */
        int i = (c->hist_n - k) % ETA_HISTORY;
        t_old = c->hist_t[i];
        f_old = c->hist_f[i];
        if (now - t_old >= ETA_WINDOW)
            break;
    }
    int i = c->hist_n % ETA_HISTORY;
    c->hist_t[i] = now;
    c->hist_f[i] = f;
    c->hist_n++;
    double rate = now - t_old > 0.5 && f - f_old > 1e-4 ? (f - f_old) / (now - t_old) : 0;
    double df = f - c->f_first, dt = now - c->t_first;
    if (rate <= 0 && df > 0.001 && dt > 0.5)
        rate = df / dt;
    if (rate <= 0 || (c->eta < 0 && !(df > 0.001 && dt > 0.5)))
        return c->eta < 0 ? -1.0 : fmax(0.0, c->eta - (now - c->t_eta));
    double fresh = (1.0 - f) / rate;
    if (c->eta < 0)
        return fresh;
    double predicted = fmax(0.0, c->eta - (now - c->t_eta));
    return predicted + ETA_GAIN * (fresh - predicted);
}

static void hook_progress(void *vctx, const struct compress_progress *p) {
    struct job_ctx *c = vctx;
    double now = mono_now();
    const char *phase = p->phase ? p->phase : "";
    if (p->n_layers > 0)
        c->n_layers = p->n_layers;
    bool changed = p->layer != c->last_layer || strncmp(phase, c->last_phase, sizeof c->last_phase - 1) != 0;
    /* Never backwards (the engine's scale is monotonic; this holds it so). */
    double f = p->fraction < 0 ? 0 : p->fraction > 1 ? 1 : p->fraction;
    if (f < c->f_last)
        f = c->f_last;
    if (c->t_first < 0) {
        c->t_first = now;
        c->f_first = f;
    }
    if (!changed && !c->force_post && now - c->t_last_post < PROGRESS_PERIOD && f < 1.0)
        return;
    c->force_post = false;
    c->t_last_post = now;
    c->last_layer = p->layer;
    snprintf(c->last_phase, sizeof c->last_phase, "%s", phase);
    c->f_last = f;
    double eta = eta_update(c, now, f);
    if (eta >= 0) {
        c->eta = eta;
        c->t_eta = now;
    }

    struct runner_event *ev = event_new(RUNNER_EV_PROGRESS);
    if (!ev)
        return;
    struct runner_progress *o = &ev->progress;
    o->job_id = c->id;
    o->layer = p->layer;
    o->n_layers = p->n_layers;
    o->layers_done = p->layers_done;
    snprintf(o->phase, sizeof o->phase, "%s", phase);
    o->fraction = f;
    o->elapsed_s = now - c->t_start;
    o->eta_s = f >= 1.0 ? 0.0 : eta;
    o->peak_rss = peak_rss();
    post(c->r, ev);
}

/* Empties job work directory dir (only ever a directory under jobs_dir):
 * a done job cannot run again, so its states and checkpoints are dead
 * weight unless it keeps them; rm removes them too. The directory itself
 * stays, as the row names it. Adds the bytes removed to *freed (may be
 * NULL). */
static int work_dir_clear(const struct runner *r, const char *dir, uint64_t *freed, struct sv_err *err) {
    size_t n = strlen(r->jobs_dir);
    if (strncmp(dir, r->jobs_dir, n) != 0 || dir[n] != '/' || strchr(dir + n + 1, '/') || strstr(dir, ".."))
        return sv_err_set(err, -EINVAL, "work directory %s is not under %s: left alone", dir, r->jobs_dir);
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT ? 0 : sv_err_set(err, -errno, "work directory %s: %s", dir, strerror(errno));
    int rc = 0;
    struct dirent *e;
    char path[PATH_MAX + 256];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat sb;
        bool sized = freed && lstat(path, &sb) == 0;
        if (unlink(path) < 0 && errno != ENOENT) {
            if (rc == 0)
                rc = sv_err_set(err, -errno, "cannot remove %s: %s", path, strerror(errno));
        } else if (sized) {
            *freed += (uint64_t)sb.st_size;
        }
    }
    closedir(d);
    return rc;
}

static void clear_work_dir_logged(struct runner *r, int64_t id, const char *dir) {
    struct sv_err err = {0};
    if (work_dir_clear(r, dir, NULL, &err) < 0)
        log_msg(LOG_WARNING, "job %lld: %s", (long long)id, err.msg);
}

/* Records the final state of job id (one retry after a pause, as for a
 * layer commit) and tells the loop. j is the job's record as run_job read
 * it (NULL if it could not). If the state cannot be recorded, the loop's
 * table still gets it, with why appended to the error, so every watch gets
 * its end event; the row stays 'running', so the next start resumes the job
 * (and `resume` accepts it). A recorded done job's work directory is
 * emptied unless it keeps its checkpoints; a failed or cancelled one keeps
 * it for `resume`. */
static void finish(struct runner *r, const struct store_job *j, int64_t id, enum job_state state,
                   const char *error, const struct compress_result *res) {
    struct sv_err err = {0};
    int rc = store_job_finish(r->job_store, id, state, error, res, peak_rss(), &err);
    if (rc < 0 && retry_worth(rc)) {
        log_msg(LOG_WARNING, "job %lld: cannot record state %s: %s; retrying in %d s", (long long)id,
                store_state_name(state), err.msg, RETRY_PAUSE_S);
        sleep(RETRY_PAUSE_S);
        rc = store_job_finish(r->job_store, id, state, error, res, peak_rss(), &err);
    }
    if (rc == 0) {
        if (j && state == JOB_DONE && !j->keep_checkpoints)
            clear_work_dir_logged(r, id, j->params.work_dir);
        post_job(r, r->job_store, id);
        return;
    }
    /* Usually the row stays 'running' and the next start resumes the job;
     * but a commit whose WAL sync failed may still have reached the WAL, so
     * the restarted daemon can find it 'failed': then resume is the way. */
    log_msg(LOG_ERR, "job %lld: cannot record state %s: %s; the next start resumes it, or, if it finds it "
            "failed, svdllmctl resume %lld does", (long long)id, store_state_name(state), err.msg, (long long)id);
    struct store_job *e = j ? malloc(sizeof *e) : NULL;
    if (!e) {
        if (j)
            log_msg(LOG_ERR, "job %lld: out of memory: the job table still shows it running", (long long)id);
        return;
    }
    *e = *j;
    e->state = state == JOB_DONE ? JOB_FAILED : state;   /* not done: its result is not recorded */
    e->finished_at = (int64_t)time(NULL);
    snprintf(e->error, sizeof e->error, "%.200s%sthe final state could not be recorded (%.250s); the next start "
             "resumes it (or, if it shows it failed, svdllmctl resume)", error && *error ? error : "",
             error && *error ? "; " : "", err.msg);
    struct runner_event *ev = event_new(RUNNER_EV_JOB);
    if (ev)
        ev->job = e;
    else
        free(e);
    post(r, ev);
}

static void run_job(struct runner *r, int64_t id) {
    struct sv_err err = {0};
    struct cred cred = {0};
    struct store_job *j = malloc(sizeof *j);
    if (!j) {
        log_msg(LOG_ERR, "job %lld: out of memory", (long long)id);
        return;
    }
    if (store_job_get(r->job_store, id, j, &err) < 0) {
        log_msg(LOG_ERR, "job %lld: %s", (long long)id, err.msg);
        finish(r, NULL, id, JOB_FAILED, err.msg, NULL);
        goto out;
    }
    post_job(r, r->job_store, id);
    log_msg(LOG_INFO, "job %lld: running (%d of its layers already checkpointed)", (long long)id,
            j->layers_done);

    /* The owner's rights for every access to the owner's files. */
    if (cred_lookup(&cred, j->owner_uid, j->owner_gid, &err) < 0) {
        char msg[SV_ERR_MSG_MAX];
        snprintf(msg, sizeof msg, "cannot act for the job's owner: %.440s", err.msg);
        log_msg(LOG_WARNING, "job %lld: %s", (long long)id, msg);
        finish(r, j, id, JOB_FAILED, msg, NULL);
        goto out;
    }
    struct job_ctx *c = calloc(1, sizeof *c);
    if (!c) {
        log_msg(LOG_ERR, "job %lld: out of memory", (long long)id);
        finish(r, j, id, JOB_FAILED, "out of memory", NULL);
        goto out;
    }
    *c = (struct job_ctx){
        .r = r, .id = id, .t_start = mono_now(), .t_first = -1, .eta = -1, .last_layer = -1,
        .n_layers = j->n_layers, .layers_done = j->layers_done, .cred = &cred, .params = &j->params,
    };
    struct compress_hooks hooks = {
        .ctx = c,
        .layer_lookup = hook_layer_lookup,
        .layer_done = hook_layer_done,
        .layers_drop = hook_layers_drop,
        .should_cancel = hook_should_cancel,
        .progress = hook_progress,
        .user_fs = hook_user_fs,
        .output_check = hook_output_check,
        /* The inputs must still be the ones the job was submitted with, or
         * its checkpoints would mix two different computations: the engine
         * checks as it computes the key (once, with the owner's rights). */
        .job_key = j->key,
    };
    struct compress_result res = {0};
    int rc = compress_run(&j->params, &hooks, &res, &err);
    free(c);
    if (rc == 0) {
        log_msg(LOG_INFO, "job %lld: done in %.1f s (ppl %.4g -> %.4g)", (long long)id, res.seconds,
                res.ppl_before, res.ppl_after);
        finish(r, j, id, JOB_DONE, NULL, &res);
    } else if (rc == -ECANCELED && atomic_load(&r->cancel_flag)) {
        log_msg(LOG_INFO, "job %lld: cancelled; its checkpoints in %s are kept for resume", (long long)id,
                j->params.work_dir);
        finish(r, j, id, JOB_CANCELLED, "cancelled while running", NULL);
    } else if (rc == -ECANCELED) {
        /* Shutdown: leave the row 'running'; the next start requeues it. */
        log_msg(LOG_NOTICE, "job %lld: stopped for shutdown; it resumes at the next start",
                (long long)id);
    } else {
        if (!err.msg[0])
            snprintf(err.msg, sizeof err.msg, "%s", strerror(-rc));
        log_msg(LOG_WARNING, "job %lld: failed: %s (its checkpoints are kept for resume)", (long long)id,
                err.msg);
        finish(r, j, id, JOB_FAILED, err.msg, NULL);
    }
out:
    cred_free(&cred);
    free(j);
}

/* Start-up: empties the work directories that done jobs left (a crash
 * between recording the state and emptying it), unless they keep their
 * checkpoints. Cancelled jobs keep theirs for resume. */
static int sweep_one(void *ctx, const struct store_job *j) {
    struct runner *r = ctx;
    if (j->state == JOB_DONE && !j->keep_checkpoints && j->params.work_dir[0])
        clear_work_dir_logged(r, j->id, j->params.work_dir);
    return atomic_load(&r->stopping) ? 1 : 0;
}

static void *job_main(void *arg) {
    struct runner *r = arg;
    /* main() chose the count; OpenMP's default for this thread is its own
     * setting (a new pthread does not inherit it), so adopt the same one. */
    forward_threads_set(forward_threads_get());
    compute_team_start();
    struct sv_err serr = {0};
    if (store_job_list(r->job_store, sweep_one, r, &serr) < 0)
        log_msg(LOG_WARNING, "work directory sweep: %s", serr.msg);
    while (!atomic_load(&r->stopping)) {
        pthread_mutex_lock(&r->job_mu);
        uint64_t gen = r->kick_gen;
        pthread_mutex_unlock(&r->job_mu);

        struct sv_err err = {0};
        int64_t id = 0;
        int n = store_job_next_queued(r->job_store, &id, &err);
        if (n < 0)
            log_msg(LOG_ERR, "job queue: %s", err.msg);
        if (n <= 0) {
            /* Nothing runnable (or the database is unwell: retry later). */
            pthread_mutex_lock(&r->job_mu);
            if (n < 0) {
                struct timespec until;
                clock_gettime(CLOCK_REALTIME, &until);
                until.tv_sec += 5;
                pthread_cond_timedwait(&r->job_cv, &r->job_mu, &until);
            }
            while (n == 0 && gen == r->kick_gen && !atomic_load(&r->stopping))
                pthread_cond_wait(&r->job_cv, &r->job_mu);
            pthread_mutex_unlock(&r->job_mu);
            continue;
        }
        pthread_mutex_lock(&r->job_mu);
        r->cur_job = id;
        atomic_store(&r->cancel_flag, 0);
        pthread_mutex_unlock(&r->job_mu);

        pthread_mutex_lock(&r->resume_mu);
        int c = store_job_claim(r->job_store, id, &err);
        pthread_mutex_unlock(&r->resume_mu);
        if (c < 0)
            log_msg(LOG_ERR, "job %lld: claim: %s", (long long)id, err.msg);
        if (c == 1)
            run_job(r, id);

        pthread_mutex_lock(&r->job_mu);
        r->cur_job = 0;
        pthread_mutex_unlock(&r->job_mu);
        if (c < 0) {
            struct timespec pause = {1, 0};
            nanosleep(&pause, NULL);
        }
    }
    thread_exit(r);
    return NULL;
}

/* ---- Lifecycle ------------------------------------------------------------------ */

int runner_new(struct runner **ret, uv_loop_t *loop, const char *state_dir, runner_event_fn fn,
               void *ctx, struct sv_err *err) {
    struct runner *r = calloc(1, sizeof *r);
    if (!r)
        return sv_err_set(err, -ENOMEM, "out of memory");
    r->fn = fn;
    r->ctx = ctx;
    char db[PATH_MAX];
    if ((size_t)snprintf(r->state_dir, sizeof r->state_dir, "%s", state_dir) >= sizeof r->state_dir ||
        (size_t)snprintf(r->jobs_dir, sizeof r->jobs_dir, "%s/" RUNNER_JOBS_DIR, state_dir) >= sizeof r->jobs_dir ||
        (size_t)snprintf(db, sizeof db, "%s/" RUNNER_DB_NAME, state_dir) >= sizeof db) {
        free(r);
        return sv_err_set(err, -ENAMETOOLONG, "state directory %s: path too long", state_dir);
    }
    pthread_mutex_init(&r->ev_mu, NULL);
    pthread_mutex_init(&r->job_mu, NULL);
    pthread_mutex_init(&r->resume_mu, NULL);
    pthread_cond_init(&r->job_cv, NULL);
    queue_init(&r->ctl);
    queue_init(&r->eval);
    int rc = store_open(&r->ctl_store, db, err);
    if (rc == 0)
        rc = store_open(&r->job_store, db, err);
    if (rc == 0 && (rc = uv_async_init(loop, &r->async, on_async)) < 0)
        sv_err_set(err, -EIO, "uv_async_init: %s", uv_strerror(rc));
    if (rc < 0) {
        store_free(r->ctl_store);
        store_free(r->job_store);
        queue_destroy(&r->ctl);
        queue_destroy(&r->eval);
        pthread_cond_destroy(&r->job_cv);
        pthread_mutex_destroy(&r->resume_mu);
        pthread_mutex_destroy(&r->job_mu);
        pthread_mutex_destroy(&r->ev_mu);
        free(r);
        return rc;
    }
    r->async.data = r;

    /* Workers take no asynchronous signals: the loop thread handles
     * SIGTERM/SIGINT. Faults stay deliverable, so that a crash in a worker
     * (or a BLIS/OpenMP thread it starts) reaches the sanitizers' handlers
     * and is reported instead of killing the process silently. */
    sigset_t all, old;
    sigfillset(&all);
    static const int faults[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGTRAP, SIGSYS};
    for (size_t i = 0; i < sizeof faults / sizeof faults[0]; i++)
        sigdelset(&all, faults[i]);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    void *(*mains[3])(void *) = {ctl_main, job_main, eval_main};
    for (int i = 0; i < 3; i++) {
        pthread_mutex_lock(&r->ev_mu);
        r->alive++;
        pthread_mutex_unlock(&r->ev_mu);
        int e = pthread_create(&r->threads[i], NULL, mains[i], r);
        if (e != 0) {
            pthread_mutex_lock(&r->ev_mu);
            r->alive--;
            pthread_mutex_unlock(&r->ev_mu);
            rc = sv_err_set(err, -e, "pthread_create: %s", strerror(e));
            break;
        }
        r->n_threads++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    *ret = r;
    if (rc < 0) {
        /* The caller must still run the loop until RUNNER_EV_EXITED (if any
         * thread started) and call runner_free. */
        runner_stop(r);
        if (r->n_threads == 0)
            post(r, event_new(RUNNER_EV_EXITED));
    }
    return rc;
}

void runner_push(struct runner *r, struct runner_task *t) {
    struct queue *q = t->type == RUNNER_TASK_EVAL || t->type == RUNNER_TASK_GENERATE ? &r->eval : &r->ctl;
    t->next = NULL;
    pthread_mutex_lock(&q->mu);
    if (q->tail)
        q->tail->next = t;
    else
        q->head = t;
    q->tail = t;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

void runner_drop_client(struct runner *r, uint64_t client_id) {
    pthread_mutex_lock(&r->eval.mu);
    for (struct runner_task *t = r->eval.head; t; t = t->next)
        if (t->client_id == client_id)
            atomic_store(&t->cancel, 1);
    if (r->eval.current && r->eval.current->client_id == client_id)
        atomic_store(&r->eval.current->cancel, 1);
    pthread_mutex_unlock(&r->eval.mu);
}

void runner_stop(struct runner *r) {
    atomic_store(&r->stopping, true);
    struct queue *qs[2] = {&r->ctl, &r->eval};
    for (int i = 0; i < 2; i++) {
        pthread_mutex_lock(&qs[i]->mu);
        pthread_cond_broadcast(&qs[i]->cv);
        pthread_mutex_unlock(&qs[i]->mu);
    }
    pthread_mutex_lock(&r->job_mu);
    pthread_cond_broadcast(&r->job_cv);
    pthread_mutex_unlock(&r->job_mu);
}

static void on_async_closed(uv_handle_t *h) {
    struct runner *r = h->data;
    struct runner_event *ev = take_events(r);
    while (ev) {
        struct runner_event *n = ev->next;
        event_free(ev);
        ev = n;
    }
    queue_destroy(&r->ctl);
    queue_destroy(&r->eval);
    pthread_cond_destroy(&r->job_cv);
    pthread_mutex_destroy(&r->resume_mu);
    pthread_mutex_destroy(&r->job_mu);
    pthread_mutex_destroy(&r->ev_mu);
    free(r);
}

void runner_free(struct runner *r) {
    if (!r)
        return;
    runner_stop(r);
    for (int i = 0; i < r->n_threads; i++)
        pthread_join(r->threads[i], NULL);
    r->n_threads = 0;
    store_free(r->ctl_store);
    store_free(r->job_store);
    r->ctl_store = r->job_store = NULL;
    uv_close((uv_handle_t *)&r->async, on_async_closed);
}
