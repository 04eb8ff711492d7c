/* server: clients, op dispatch and the job table, on the libuv loop thread.
 *
 * Design note.
 *  - A client owns a bounded line buffer (proto_buf, PROTO_MAX_MSG + 1 bytes
 *    at most), a count of unsent reply bytes and a few watch subscriptions.
 *    Framing violations (an oversize line, bad JSON), timeouts and refused
 *    connections get an error reply and then *drain*: the reply is flushed,
 *    the write side shut down, and input is read and discarded until the
 *    peer closes, a byte bound is reached or a deadline passes. Closing at
 *    once instead would make a client that is still writing fail with EPIPE
 *    before it reads why. Every other error is a reply on a connection that
 *    stays open. A client that leaves more than max_unsent bytes unread is
 *    dropped. Nothing a client sends can stop the loop or touch another
 *    client.
 *  - Peer identity: SO_PEERCRED's uid, gid and pid, read once at accept.
 *    Connection limits: max_clients in all, max_clients_per_uid for each uid
 *    but root, and root_reserved_clients of max_clients usable by root only,
 *    so neither one user nor everybody together can lock root out. Refused
 *    connections drain too (at most max_rejected at once, 1 s each; beyond
 *    that the reply is tried without blocking and the socket closed), and do
 *    not count as clients.
 *  - One repeating timer (running only while there are clients) closes idle
 *    connections (no request for idle_timeout s, nothing in flight, no
 *    watch), half-sent lines older than line_timeout s, and drains past their
 *    deadline, from per-client timestamps in loop time (uv_now).
 *  - Visibility: a job's full record (paths, parameters, error text, work
 *    directory, result) is shown only to its owner, root and the daemon's own
 *    euid; anyone else sees that it exists (id, state, owner, times,
 *    progress) and may neither watch nor cancel it.
 *  - Requests that need files or SQLite (submit, cancel, eval) become runner
 *    tasks; their replies come back as events carrying the client's id (not a
 *    pointer: the client may have gone), and are dropped if it has.
 *  - The job table mirrors the jobs rows: loaded at start, then updated only
 *    from runner events. status, list and watch read it and never wait for a
 *    thread. A record never moves backwards (queued < running < final), so an
 *    older event arriving after a newer one cannot undo it; the one
 *    exception is `resume` (failed -> queued), applied from its reply.
 *  - Memory of a uv handle is released only in its close callback. */
#include "server.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "compress.h"
#include "log.h"
#include "proto.h"
#include "runner.h"
#include "store.h"

#ifndef SV_VERSION
#define SV_VERSION "unknown"
#endif

#define MAX_WATCHES 8
/* Draining (see the design note): how long a client that got its last reply
 * may take to close, how long an oversize line may take to end when
 * line_timeout is 0, and how much of its input is read and thrown away. */
#define LINGER_MS 1000
#define DRAIN_EOL_MS 30000
#define DRAIN_MAX_BYTES ((size_t)16 << 20)
/* The timeout timer's period. */
#define TICK_MS 250
/* What the engine uses for asvd when compress_params.alpha is 0. */
#define ASVD_DEFAULT_ALPHA 0.5
/* What the engine uses for lorap's split when compress_params.attn_split is 0. */
#define LORAP_DEFAULT_ATTN_SPLIT 3.0

struct watch {
    long long req_id;
    int64_t job_id;
};

struct client {
    uv_pipe_t pipe;
    struct server *srv;
    uint64_t id;
    uint32_t uid, gid;           /* SO_PEERCRED at accept */
    int pid;
    struct proto_buf in;
    size_t unsent;
    int inflight;
    bool closing;
    bool rejected;               /* over a client limit: only gets an error */
    /* Draining (after a fatal reply): no more replies, input discarded. */
    bool draining;
    bool drain_to_eol;           /* still inside an oversize line */
    bool peer_eof;               /* the peer closed its side while we drained */
    bool shut;                   /* our write side is shut down */
    size_t drain_left;           /* bytes still to discard before closing */
    uint64_t drain_deadline;     /* loop time (ms) to close at */
    uv_shutdown_t shut_req;
    /* Timeouts, in loop time (ms). */
    uint64_t t_active;           /* connect, last complete request, last async reply */
    uint64_t t_partial;          /* first byte of the unfinished line, if partial */
    bool partial;
    struct watch watches[MAX_WATCHES];
    int n_watches;
    struct client *prev, *next;
};

struct wreq {
    uv_write_t req;
    struct client *c;
    size_t len;
    char *data;
};

/* The loop's copy of a job row plus its live progress. */
struct sjob {
    int64_t id;
    enum job_state state;
    enum compress_method method;
    double ratio;
    double alpha;                /* as submitted; 0 = the default */
    enum compress_ranks ranks;
    int layers;                  /* 0 = all */
    double attn_split;           /* as submitted; 0 = the default */
    bool centered;
    char *model, *out, *calib, *eval_text, *work_dir, *error;
    char key[65];
    int nsamples, seqlen, eval_seqlen, eval_max_windows;
    uint64_t seed;
    bool calib_first, dense, overwrite, keep_checkpoints;
    uint32_t owner_uid;
    int64_t created_at, started_at, finished_at;
    int n_layers, layers_done;
    bool has_result;
    struct compress_result result;
    uint64_t peak_rss;
    bool has_progress;           /* prog is from this daemon's current run */
    struct runner_progress prog;
    double frac_hwm;             /* highest fraction shown by this daemon (every run) */
    int threads;                 /* this daemon's count; 0: the job had ended before
                                  * it started, under a count not known here */
};

struct server {
    uv_loop_t *loop;
    struct server_config cfg;
    char socket_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    uv_pipe_t listener;
    bool listening;
    uv_signal_t sigterm, sigint;
    bool signals;
    struct runner *runner;
    bool stopping;
    int recovered;

    struct client *clients;      /* served, draining and lingering refused ones */
    int n_clients;               /* served (refused ones not counted) */
    int n_rejected;              /* refused and draining */
    uint64_t next_client_id;
    uv_timer_t tick;             /* timeouts; runs while clients is not empty */
    bool tick_init, tick_active;
    uint32_t euid;               /* the daemon's: may see every job */

    struct sjob **jobs;          /* sorted by id */
    size_t n_jobs, cap_jobs;
    int pending_submits;
    int pending_evals;
};

static void client_close(struct client *c);
static void drain_flushed(struct client *c);
static void server_shutdown(struct server *s, const char *why);

/* ---- Job table ----------------------------------------------------------------- */

static struct sjob *job_find(struct server *s, int64_t id) {
    size_t lo = 0, hi = s->n_jobs;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->jobs[mid]->id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < s->n_jobs && s->jobs[lo]->id == id ? s->jobs[lo] : NULL;
}

static void sjob_free(struct sjob *j) {
    if (!j)
        return;
    free(j->model);
    free(j->out);
    free(j->calib);
    free(j->eval_text);
    free(j->work_dir);
    free(j->error);
    free(j);
}

static int rank(enum job_state st) {
    return st == JOB_QUEUED ? 0 : st == JOB_RUNNING ? 1 : 2;
}

static int count_queued(struct server *s) {
    int n = 0;
    for (size_t i = 0; i < s->n_jobs; i++)
        n += s->jobs[i]->state == JOB_QUEUED;
    return n;
}

/* Copies rec into the table. Returns the entry (NULL on out of memory) and
 * whether its state changed. */
static struct sjob *job_upsert(struct server *s, const struct store_job *rec, bool *changed) {
    *changed = false;
    struct sjob *j = job_find(s, rec->id);
    if (j && rank(rec->state) < rank(j->state))
        return j;   /* stale */
    if (!j) {
        if (s->n_jobs == s->cap_jobs) {
            size_t ncap = s->cap_jobs ? s->cap_jobs * 2 : 64;
            struct sjob **n = realloc(s->jobs, ncap * sizeof *n);
            if (!n)
                return NULL;
            s->jobs = n;
            s->cap_jobs = ncap;
        }
        j = calloc(1, sizeof *j);
        if (!j)
            return NULL;
        size_t pos = s->n_jobs;
        while (pos > 0 && s->jobs[pos - 1]->id > rec->id)
            pos--;
        memmove(s->jobs + pos + 1, s->jobs + pos, (s->n_jobs - pos) * sizeof *s->jobs);
        s->jobs[pos] = j;
        s->n_jobs++;
        *changed = true;
    } else {
        *changed = j->state != rec->state;
    }
    const struct compress_params *p = &rec->params;
    char *strs[6] = {strdup(p->model_dir), strdup(p->out_dir), strdup(p->calib_path),
                     strdup(p->eval_path), strdup(p->work_dir), strdup(rec->error)};
    for (int i = 0; i < 6; i++)
        if (!strs[i]) {
            for (int k = 0; k < 6; k++)
                free(strs[k]);
            return NULL;
        }
    free(j->model);
    free(j->out);
    free(j->calib);
    free(j->eval_text);
    free(j->work_dir);
    free(j->error);
    j->model = strs[0];
    j->out = strs[1];
    j->calib = strs[2];
    j->eval_text = strs[3];
    j->work_dir = strs[4];
    j->error = strs[5];
    j->id = rec->id;
    j->state = rec->state;
    j->method = p->method;
    j->ratio = p->ratio;
    j->alpha = p->alpha;
    j->ranks = p->ranks;
    j->layers = p->layers;
    j->attn_split = p->attn_split;
    j->centered = p->centered;
    snprintf(j->key, sizeof j->key, "%s", rec->key);
    j->nsamples = p->nsamples;
    j->seqlen = p->seqlen;
    j->eval_seqlen = p->eval_seqlen;
    j->eval_max_windows = p->eval_max_windows;
    j->seed = p->seed;
    j->calib_first = p->calib_first;
    j->dense = p->dense;
    j->overwrite = p->overwrite;
    j->keep_checkpoints = rec->keep_checkpoints;
    j->owner_uid = rec->owner_uid;
    j->created_at = rec->created_at;
    j->started_at = rec->started_at;
    j->finished_at = rec->finished_at;
    if (rec->n_layers > 0)
        j->n_layers = rec->n_layers;
    if (rec->layers_done > j->layers_done || rank(rec->state) == 0)
        j->layers_done = rec->layers_done;
    j->has_result = rec->has_result;
    j->result = rec->result;
    j->peak_rss = rec->peak_rss;
    j->threads = s->cfg.threads;
    if (rec->state != JOB_RUNNING)
        j->has_progress = j->has_progress && store_state_final(rec->state);
    return j;
}

/* Takes job id out of the table (rm); no watch can be open on a final job. */
static void job_remove(struct server *s, int64_t id) {
    struct sjob *j = job_find(s, id);
    if (!j)
        return;
    size_t pos = 0;
    while (s->jobs[pos] != j)
        pos++;
    memmove(s->jobs + pos, s->jobs + pos + 1, (s->n_jobs - pos - 1) * sizeof *s->jobs);
    s->n_jobs--;
    sjob_free(j);
}

/* A resumed job leaves its final state: the one move back a record makes
 * (the resume's reply precedes the job's next events, runner.c). */
static void job_reopen(struct server *s, int64_t id) {
    struct sjob *j = job_find(s, id);
    if (j && store_state_final(j->state))
        j->state = JOB_QUEUED;
}

static int load_job(void *ctx, const struct store_job *rec) {
    bool changed;
    struct sjob *j = job_upsert(ctx, rec, &changed);
    if (j && store_state_final(j->state))
        j->threads = 0;   /* ran under an earlier daemon (its compression.json says) */
    return j ? 0 : -ENOMEM;
}

/* ---- JSON views of a job ---------------------------------------------------------- */

static void set_opt_str(json_t *o, const char *key, const char *s) {
    if (s && *s)
        proto_set_str(o, key, s);
    else
        json_object_set_new(o, key, json_null());
}

static void set_opt_time(json_t *o, const char *key, int64_t t) {
    if (t > 0)
        proto_set_int(o, key, t);
    else
        json_object_set_new(o, key, json_null());
}

/* Progress fields shared by status, list and events. */
static void add_progress(json_t *o, const struct sjob *j) {
    const struct runner_progress *p = &j->prog;
    bool live = j->has_progress;
    int n_layers = live && p->n_layers > 0 ? p->n_layers : j->n_layers;
    int done = live ? p->layers_done : j->layers_done;
    if (j->state == JOB_DONE)
        done = n_layers;
    proto_set_int(o, "n_layers", n_layers);
    proto_set_int(o, "layers_done", done);
    if (live && j->state == JOB_RUNNING) {
        proto_set_int(o, "layer", p->layer);
        proto_set_str(o, "phase", p->phase);
        proto_set_real(o, "fraction", p->fraction);
        proto_set_real(o, "elapsed_s", p->elapsed_s);
        if (p->eta_s >= 0)
            proto_set_real(o, "eta_s", p->eta_s);
        else
            json_object_set_new(o, "eta_s", json_null());
        proto_set_int(o, "peak_rss", (long long)p->peak_rss);
    } else {
        /* On the engine's scale (cost_fraction_resumed: where a run
         * with these checkpoints starts), and never below what was shown. */
        struct cost_in ci = {
            .method = j->method, .ranks = j->ranks, .layers = j->layers, .eval = j->eval_text && *j->eval_text,
            .nsamples = j->nsamples, .seqlen = j->seqlen, .eval_seqlen = j->eval_seqlen,
            .eval_max_windows = j->eval_max_windows,
        };
        double f = j->state == JOB_DONE ? 1.0 : fmax(cost_fraction_resumed(&ci, n_layers, done), j->frac_hwm);
        proto_set_real(o, "fraction", f);
        if (j->state == JOB_RUNNING)
            proto_set_str(o, "phase", "starting");
        if (j->has_result)
            proto_set_int(o, "peak_rss", (long long)j->peak_rss);
    }
}

static json_t *job_json(const struct sjob *j, bool full) {
    json_t *o = json_object();
    proto_set_int(o, "id", j->id);
    proto_set_str(o, "state", store_state_name(j->state));
    proto_set_str(o, "method", params_method_name(j->method));
    proto_set_real(o, "ratio", j->ratio);
    if (j->method == METHOD_ASVD)   /* the exponent in effect: 0 stands for the default */
        proto_set_real(o, "alpha", j->alpha > 0 ? j->alpha : ASVD_DEFAULT_ALPHA);
    proto_set_str(o, "ranks", params_ranks_name(j->ranks));
    if (j->layers > 0)
        proto_set_int(o, "layers", j->layers);
    /* The split in effect where lorap's rank rule applies (ranks lorap, or
     * default with method lorap), and any explicitly submitted one. */
    bool lorap_rule = j->ranks == RANKS_LORAP || (j->ranks == RANKS_DEFAULT && j->method == METHOD_LORAP);
    if (j->attn_split > 0 || lorap_rule)
        proto_set_real(o, "attn_split", j->attn_split > 0 ? j->attn_split : LORAP_DEFAULT_ATTN_SPLIT);
    if (j->centered)
        proto_set_bool(o, "centered", true);
    proto_set_str(o, "model", j->model);
    proto_set_str(o, "out", j->out);
    set_opt_time(o, "created_at", j->created_at);
    proto_set_int(o, "owner_uid", j->owner_uid);
    if (j->threads > 0)
        proto_set_int(o, "threads", j->threads);
    add_progress(o, j);
    set_opt_str(o, "error", j->error);
    if (!full)
        return o;
    set_opt_str(o, "calib", j->calib);
    proto_set_int(o, "nsamples", j->nsamples);
    proto_set_int(o, "seqlen", j->seqlen);
    proto_set_int(o, "seed", (long long)j->seed);
    proto_set_str(o, "calib_windows", j->calib_first ? "first" : "random");
    proto_set_bool(o, "dense", j->dense);
    proto_set_bool(o, "overwrite", j->overwrite);
    proto_set_bool(o, "keep_checkpoints", j->keep_checkpoints);
    set_opt_str(o, "eval_text", j->eval_text);
    proto_set_int(o, "eval_seqlen", j->eval_seqlen);
    proto_set_int(o, "eval_max_windows", j->eval_max_windows);
    proto_set_str(o, "work_dir", j->work_dir);
    proto_set_str(o, "job_key", j->key);
    set_opt_time(o, "started_at", j->started_at);
    set_opt_time(o, "finished_at", j->finished_at);
    if (j->has_result && j->state == JOB_DONE) {
        json_t *r = json_object();
        const struct compress_result *res = &j->result;
        if (res->ppl_before > 0)
            proto_set_real(r, "ppl_before", res->ppl_before);
        if (res->ppl_after > 0)
            proto_set_real(r, "ppl_after", res->ppl_after);
        if (res->tok_s_before > 0)
            proto_set_real(r, "tokens_per_s_before", res->tok_s_before);
        if (res->tok_s_after > 0)
            proto_set_real(r, "tokens_per_s_after", res->tok_s_after);
        proto_set_int(r, "params_before", (long long)res->params_before);
        proto_set_int(r, "params_after", (long long)res->params_after);
        proto_set_int(r, "bytes_before", (long long)res->bytes_before);
        proto_set_int(r, "bytes_after", (long long)res->bytes_after);
        proto_set_real(r, "seconds", res->seconds);
        proto_set_int(r, "layers_resumed", res->layers_resumed);
        json_object_set_new(o, "result", r);
    }
    return o;
}

/* What a peer who may not see a job's record learns: that it exists, whose
 * it is, when, and how far along (no paths, parameters or error text). */
static json_t *job_json_restricted(const struct sjob *j) {
    json_t *o = json_object();
    proto_set_int(o, "id", j->id);
    proto_set_str(o, "state", store_state_name(j->state));
    proto_set_int(o, "owner_uid", j->owner_uid);
    set_opt_time(o, "created_at", j->created_at);
    set_opt_time(o, "finished_at", j->finished_at);
    json_t *p = json_object();
    add_progress(p, j);
    static const char *const keep[] = {"n_layers", "layers_done", "fraction"};
    for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++) {
        json_t *v = json_object_get(p, keep[i]);
        if (v)
            json_object_set(o, keep[i], v);
    }
    json_decref(p);
    proto_set_bool(o, "restricted", true);
    return o;
}

/* The job's owner, root and the daemon's own user see everything. */
static bool may_see(const struct client *c, const struct sjob *j) {
    return c->uid == 0 || c->uid == j->owner_uid || c->uid == c->srv->euid;
}

/* j as peer c may see it: job_json(j, full), or the restricted view. */
static json_t *job_view(const struct client *c, const struct sjob *j, bool full) {
    return may_see(c, j) ? job_json(j, full) : job_json_restricted(j);
}

/* ---- Client output ------------------------------------------------------------------ */

static void on_write(uv_write_t *req, int status) {
    struct wreq *w = (struct wreq *)req;
    struct client *c = w->c;
    c->unsent -= w->len;
    free(w->data);
    free(w);
    if (c->closing)
        return;
    if (status < 0) {
        log_msg(LOG_DEBUG, "client %llu: write: %s", (unsigned long long)c->id, uv_strerror(status));
        client_close(c);
        return;
    }
    if (c->draining && c->unsent == 0)
        drain_flushed(c);
}

/* Sends msg (reference consumed) to c. */
static void client_send(struct client *c, json_t *msg) {
    if (!msg) {
        log_msg(LOG_ERR, "client %llu: out of memory building a reply", (unsigned long long)c->id);
        client_close(c);
        return;
    }
    if (c->closing || c->draining) {   /* a draining client got its last reply */
        json_decref(msg);
        return;
    }
    struct proto_error e = {0};
    char *line;
    size_t len;
    int r = proto_encode(msg, &line, &len, &e);
    if (r < 0) {
        /* Our own reply too big (should not happen: list truncates). */
        log_msg(LOG_ERR, "client %llu: %s", (unsigned long long)c->id, e.msg);
        json_t *id = json_object_get(msg, "id");
        long long rid = json_is_integer(id) ? (long long)json_integer_value(id) : PROTO_NO_ID;
        json_decref(msg);
        msg = proto_reply_error(rid, PROTO_INTERNAL, e.msg);
        if (!msg || proto_encode(msg, &line, &len, &e) < 0) {
            json_decref(msg);
            client_close(c);
            return;
        }
    }
    json_decref(msg);
    struct wreq *w = malloc(sizeof *w);
    if (!w) {
        free(line);
        client_close(c);
        return;
    }
    w->c = c;
    w->len = len;
    w->data = line;
    uv_buf_t buf = uv_buf_init(line, (unsigned)len);
    r = uv_write(&w->req, (uv_stream_t *)&c->pipe, &buf, 1, on_write);
    if (r < 0) {
        free(line);
        free(w);
        client_close(c);
        return;
    }
    c->unsent += len;
    if (c->unsent > c->srv->cfg.max_unsent) {
        log_msg(LOG_WARNING, "client %llu (uid %u): %zu bytes of replies unread; dropping it",
                (unsigned long long)c->id, (unsigned)c->uid, c->unsent);
        client_close(c);
    }
}

static void send_error(struct client *c, long long id, enum proto_code code, const char *msg) {
    client_send(c, proto_reply_error(id, code, msg));
}

static void on_shutdown(uv_shutdown_t *req, int status) {
    struct client *c = req->data;
    if (status < 0 && !c->closing)   /* the peer is gone: nothing left to wait for */
        client_close(c);
}

/* The last reply of a draining client is out: tell the peer (EOF), or close
 * if it has already closed its side. */
static void drain_flushed(struct client *c) {
    if (c->peer_eof) {
        client_close(c);
        return;
    }
    if (c->shut)
        return;
    c->shut = true;
    c->shut_req.data = c;
    if (uv_shutdown(&c->shut_req, (uv_stream_t *)&c->pipe, on_shutdown) < 0)
        client_close(c);
}

/* Sends an error as c's last message and starts draining: c's input is read
 * and discarded until the peer closes, DRAIN_MAX_BYTES are discarded or the
 * deadline passes, so the peer can finish its write and read the reply.
 * to_eol: the error is an oversize line, whose end is awaited for up to
 * line_timeout s before the short linger applies. */
static void send_fatal_drain(struct client *c, long long id, enum proto_code code, const char *msg,
                             bool to_eol) {
    struct server *s = c->srv;
    log_msg(LOG_INFO, "client %llu (uid %u, gid %u, pid %d): %s: %s; closing the connection",
            (unsigned long long)c->id, (unsigned)c->uid, (unsigned)c->gid, c->pid, proto_code_name(code), msg);
    send_error(c, id, code, msg);
    if (c->closing)
        return;
    c->draining = true;
    c->drain_to_eol = to_eol;
    c->drain_left = DRAIN_MAX_BYTES;
    uint64_t wait_ms = LINGER_MS;
    if (to_eol)
        wait_ms = s->cfg.line_timeout > 0 ? (uint64_t)s->cfg.line_timeout * 1000 : DRAIN_EOL_MS;
    c->drain_deadline = uv_now(s->loop) + wait_ms;
    c->n_watches = 0;   /* no more events either */
    proto_buf_free(&c->in);
    if (c->unsent == 0)
        drain_flushed(c);
}

static void send_fatal(struct client *c, long long id, enum proto_code code, const char *msg) {
    send_fatal_drain(c, id, code, msg, false);
}

static struct client *client_find(struct server *s, uint64_t id) {
    for (struct client *c = s->clients; c; c = c->next)
        if (c->id == id && !c->closing)
            return c;
    return NULL;
}

/* ---- Watchers ------------------------------------------------------------------------ */

static void notify_watchers(struct server *s, const struct sjob *j, bool end) {
    struct client *next;
    for (struct client *c = s->clients; c; c = next) {
        next = c->next;   /* client_send may close c, which unlinks it */
        for (int i = 0; i < c->n_watches && !c->closing; i++) {
            if (c->watches[i].job_id != j->id)
                continue;
            json_t *ev = proto_event_new(c->watches[i].req_id, end ? "end" : "progress");
            proto_set_str(ev, "state", store_state_name(j->state));
            json_object_set_new(ev, "job", job_json(j, end));
            if (end) {
                c->watches[i] = c->watches[--c->n_watches];
                i--;
                c->t_active = uv_now(s->loop);   /* the idle clock starts when the last watch ends */
            }
            client_send(c, ev);
        }
    }
}

/* ---- Op handlers --------------------------------------------------------------------- */

typedef int (*op_fn)(struct client *c, long long id, json_t *msg, struct proto_error *e);

static int op_ping(struct client *c, long long id, json_t *msg, struct proto_error *e) {
    static const char *const fields[] = {"id", "op", NULL};
    if (proto_check_fields(msg, fields, e) < 0)
        return -EINVAL;
    json_t *r = proto_reply_ok(id);
    proto_set_bool(r, "pong", true);
    client_send(c, r);
    return 0;
}

static int op_version(struct client *c, long long id, json_t *msg, struct proto_error *e) {
    static const char *const fields[] = {"id", "op", NULL};
    if (proto_check_fields(msg, fields, e) < 0)
        return -EINVAL;
    json_t *r = proto_reply_ok(id);
    proto_set_str(r, "version", SV_VERSION);
    proto_set_int(r, "protocol", PROTO_VERSION);
    proto_set_int(r, "threads", c->srv->cfg.threads);
    json_t *m = json_array();
    for (int i = 0; i < METHOD_NAMES; i++)
        json_array_append_new(m, proto_str(params_method_name((enum compress_method)i)));
    json_object_set_new(r, "methods", m);
    client_send(c, r);
    return 0;
}

/* Copies a path field (required or not) into dst; "" when absent. */
static int get_path(json_t *msg, const char *field, bool required, char dst[PATH_MAX],
                    struct proto_error *e) {
    const char *v = NULL;
    int r = proto_get_string(msg, field, required, &v, e);
    if (r <= 0) {
        dst[0] = '\0';
        return r;
    }
    if (!*v)
        return proto_error_set(e, PROTO_BAD_REQUEST, "field '%s': empty path", field);
    if (strlen(v) >= PATH_MAX)
        return proto_error_set(e, PROTO_BAD_REQUEST, "field '%s': longer than %d bytes", field,
                               PATH_MAX - 1);
    memcpy(dst, v, strlen(v) + 1);
    return 1;
}

/* A zeroed task of this type answering request id, or NULL. */
static struct runner_task *task_new(enum runner_task_type type, long long id) {
    struct runner_task *t = calloc(1, sizeof *t);
    if (t) {
        t->type = type;
        t->req_id = id;
    }
    return t;
}

static int push_task(struct client *c, struct runner_task *t) {
    t->client_id = c->id;
    t->uid = c->uid;
    t->gid = c->gid;
    c->inflight++;
    runner_push(c->srv->runner, t);
    return 0;
}

/* One job parameter (params.h's table entry f) of a submit into p; absent
 * leaves params_defaults()' value. Ranges and names come from the table. */
static int submit_field(json_t *msg, const struct params_field *f, struct compress_params *p,
                        struct proto_error *e) {
    char path[PATH_MAX], why[128];
    const char *s = NULL;
    long long n = 0;
    double v = 0;
    bool b = false;
    int r;
    switch (f->type) {
    case PARAMS_PATH:
        if ((r = get_path(msg, f->name, f->required, path, e)) > 0)
            params_field_set(p, f, 0, path);
        return r;
    case PARAMS_ENUM:
        if ((r = proto_get_string(msg, f->name, f->required, &s, e)) <= 0)
            return r;
        if ((r = params_field_enum(f, s)) < 0) {
            char known[256] = "";
            for (int i = 0; i < f->n_names; i++)
                snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", i ? ", " : "", f->names[i]);
            return proto_error_set(e, PROTO_BAD_REQUEST, "field '%s': unknown %s '%.100s' (known: %s)", f->name,
                                   f->noun, s, known);
        }
        params_field_set(p, f, r, NULL);
        return 1;
    case PARAMS_INT:
        if ((r = proto_get_int(msg, f->name, f->required, (long long)f->min, (long long)f->max, &n, e)) > 0)
            params_field_set(p, f, (double)n, NULL);
        return r;
    case PARAMS_NUMBER:
        if ((r = proto_get_number(msg, f->name, f->required, &v, e)) <= 0)
            return r;
        if (params_field_range(f, v, why, sizeof why) < 0)
            return proto_error_set(e, PROTO_BAD_REQUEST, "field '%s': %s (%s)", f->name, why, f->help);
        params_field_set(p, f, v, NULL);
        return 1;
    case PARAMS_BOOL:
        if ((r = proto_get_bool(msg, f->name, f->required, &b, e)) > 0)
            params_field_set(p, f, b, NULL);
        return r;
    }
    return 0;
}

static int op_submit(struct client *c, long long id, json_t *msg, struct proto_error *e) {
    /* id, op, keep_checkpoints (the daemon's: whether a done job's work
     * directory is emptied, not an engine parameter), then the table's. */
    const char *fields[64] = {"id", "op", "keep_checkpoints"};
    for (size_t i = 0; i < params_n_fields && i + 4 < sizeof fields / sizeof fields[0]; i++)
        fields[3 + i] = params_fields[i].name;
    struct server *s = c->srv;
    if (proto_check_fields(msg, fields, e) < 0)
        return -EINVAL;
    struct runner_task *t = task_new(RUNNER_TASK_SUBMIT, id);
    if (!t)
        return proto_error_set(e, PROTO_INTERNAL, "out of memory");
    struct compress_params *p = &t->params;
    struct sv_err err = {0};
    int r = 0;
    params_defaults(p);
    bool keep = false;
    for (size_t i = 0; i < params_n_fields && r >= 0; i++)
        r = submit_field(msg, &params_fields[i], p, e);
    if (r >= 0 && (r = proto_get_bool(msg, "keep_checkpoints", false, &keep, e)) >= 0)
        t->keep_checkpoints = keep;
    if (r < 0)
        goto fail;
    if (!p->calib_path[0] && p->method != METHOD_SVD) {
        r = proto_error_set(e, PROTO_BAD_REQUEST, "missing field 'calib' (method %s needs calibration text)",
                            params_method_name(p->method));
        goto fail;
    }
    if (params_values_check(p, &err) < 0) {
        r = proto_error_set(e, PROTO_BAD_REQUEST, "%s", err.msg);
        goto fail;
    }
    if (count_queued(s) + s->pending_submits >= s->cfg.max_queued_jobs) {
        r = proto_error_set(e, PROTO_QUEUE_FULL, "the queue already holds %d jobs (the limit)",
                            s->cfg.max_queued_jobs);
        goto fail;
    }
    s->pending_submits++;
    return push_task(c, t);
fail:
    free(t);
    return r;
}

static int get_job(struct client *c, json_t *msg, const char *const *fields, struct sjob **ret,
                   struct proto_error *e) {
    long long jid = 0;
    if (proto_check_fields(msg, fields, e) < 0 ||
        proto_get_int(msg, "job", true, 1, INT64_MAX, &jid, e) < 0)
        return -EINVAL;
    struct sjob *j = job_find(c->srv, jid);
    if (!j)
        return proto_error_set(e, PROTO_NOT_FOUND, "no job %lld", jid);
    *ret = j;
    return 0;
}

static int op_status(struct client *c, long long id, json_t *msg, struct proto_error *e) {
    static const char *const fields[] = {"id", "op", "job", NULL};
    struct sjob *j;
    if (get_job(c, msg, fields, &j, e) < 0)
        return -EINVAL;
    json_t *r = proto_reply_ok(id);
    json_object_set_new(r, "job", job_view(c, j, true));
    client_send(c, r);
    return 0;
}

static int op_list(struct client *c, long long id, json_t *msg, struct proto_error *e) {
    static const char *const fields[] = {"id", "op", "state", "limit", NULL};
    struct server *s = c->srv;
    const char *state = NULL;
    long long limit = 100;
    if (proto_check_fields(msg, fields, e) < 0 ||
        proto_get_string(msg, "state", false, &state, e) < 0 ||
        proto_get_int(msg, "limit", false, 1, 10000, &limit, e) < 0)
        return -EINVAL;
    int want = -1;
    if (state) {
        for (int i = 0; i < JOB_STATE_COUNT; i++)
            if (strcmp(state, store_state_name((enum job_state)i)) == 0)
                want = i;
        if (want < 0)
            return proto_error_set(e, PROTO_BAD_REQUEST, "field 'state': unknown state '%.100s'", state);
    }
    /* Newest first; stop before the reply could pass the message limit. */
    json_t *arr = json_array();
    size_t bytes = 256;
    bool truncated = false;
    long long n = 0;
    for (size_t i = s->n_jobs; i-- > 0 && n < limit;) {
        const struct sjob *j = s->jobs[i];
        if (want >= 0 && (int)j->state != want)
            continue;
        json_t *o = job_view(c, j, false);
        char *txt = json_dumps(o, JSON_COMPACT);
        size_t len = txt ? strlen(txt) + 1 : 0;
        free(txt);
        if (!len || bytes + len > PROTO_MAX_MSG) {
            json_decref(o);
            truncated = true;
            break;
        }
        bytes += len;
        json_array_append_new(arr, o);
        n++;
    }
    json_t *r = proto_reply_ok(id);
    json_object_set_new(r, "jobs", arr);
    proto_set_bool(r, "truncated", truncated);
    client_send(c, r);
    return 0;
}

static int op_watch(struct client *c, long long id, json_t *msg, struct proto_error *e) {
    static const char *const fields[] = {"id", "op", "job", NULL};
    struct sjob *j;
    if (get_job(c, msg, fields, &j, e) < 0)
        return -EINVAL;
    if (!may_see(c, j))
        return proto_error_set(e, PROTO_FORBIDDEN,
                               "job %lld belongs to uid %u; only it, root or svdllmd's own user may watch it",
                               (long long)j->id, (unsigned)j->owner_uid);
    bool final = store_state_final(j->state);
    if (!final && c->n_watches >= MAX_WATCHES)
        return proto_error_set(e, PROTO_BUSY, "at most %d watches per connection", MAX_WATCHES);
    json_t *r = proto_reply_ok(id);
    json_object_set_new(r, "job", job_json(j, true));
    client_send(c, r);
    if (final) {
        json_t *ev = proto_event_new(id, "end");
        proto_set_str(ev, "state", store_state_name(j->state));
        json_object_set_new(ev, "job", job_json(j, true));
        client_send(c, ev);
    } else if (!c->closing) {
        c->watches[c->n_watches++] = (struct watch){.req_id = id, .job_id = j->id};
    }
    return 0;
}

static int op_cancel(struct client *c, long long id, json_t *msg, struct proto_error *e) {
    static const char *const fields[] = {"id", "op", "job", NULL};
    struct sjob *j;
    if (get_job(c, msg, fields, &j, e) < 0)
        return -EINVAL;
    if (store_state_final(j->state))
        return proto_error_set(e, PROTO_BAD_STATE, "job %lld is already %s", (long long)j->id,
                               store_state_name(j->state));
    if (!may_see(c, j))
        return proto_error_set(e, PROTO_FORBIDDEN, "job %lld belongs to uid %u; only it or root may cancel it",
                               (long long)j->id, (unsigned)j->owner_uid);
    struct runner_task *t = task_new(RUNNER_TASK_CANCEL, id);
    if (!t)
        return proto_error_set(e, PROTO_INTERNAL, "out of memory");
    t->job_id = j->id;
    return push_task(c, t);
}

static int op_eval(struct client *c, long long id, json_t *msg, struct proto_error *e) {
    static const char *const fields[] = {"id", "op", "model", "text", "seqlen", "max_windows", NULL};
    struct server *s = c->srv;
    if (proto_check_fields(msg, fields, e) < 0)
        return -EINVAL;
    struct runner_task *t = task_new(RUNNER_TASK_EVAL, id);
    if (!t)
        return proto_error_set(e, PROTO_INTERNAL, "out of memory");
    long long seqlen = 128, maxw = 0;
    int r;
    if ((r = get_path(msg, "model", true, t->eval.model_dir, e)) < 0 ||
        (r = get_path(msg, "text", true, t->eval.text_path, e)) < 0 ||
        (r = proto_get_int(msg, "seqlen", false, 2, 65536, &seqlen, e)) < 0 ||
        (r = proto_get_int(msg, "max_windows", false, 0, INT_MAX, &maxw, e)) < 0)
        goto fail;
    if (s->pending_evals >= s->cfg.max_evals) {
        r = proto_error_set(e, PROTO_QUEUE_FULL, "%d evaluations are already queued or running (the limit)",
                            s->cfg.max_evals);
        goto fail;
    }
    t->eval.seqlen = (int)seqlen;
    t->eval.max_windows = (size_t)maxw;
    s->pending_evals++;
    return push_task(c, t);
fail:
    free(t);
    return r;
}

/* Continues a prompt with a model on the eval thread (generate.h); shares
 * the max_evals limit with eval. */
static int op_generate(struct client *c, long long id, json_t *msg, struct proto_error *e) {
    static const char *const fields[] = {"id", "op", "model", "prompt", "max_tokens", "temperature", "top_p",
                                         "seed", "bos", NULL};
    struct server *s = c->srv;
    if (proto_check_fields(msg, fields, e) < 0)
        return -EINVAL;
    struct runner_task *t = task_new(RUNNER_TASK_GENERATE, id);
    if (!t)
        return proto_error_set(e, PROTO_INTERNAL, "out of memory");
    long long maxt = 256, seed = 1;
    double temp = 0, top_p = 0.9;
    bool bos = true;
    const char *prompt = NULL;
    int r;
    if ((r = get_path(msg, "model", true, t->gen.model_dir, e)) < 0 ||
        (r = proto_get_string(msg, "prompt", true, &prompt, e)) < 0 ||
        (r = proto_get_int(msg, "max_tokens", false, 1, RUNNER_GEN_MAX_TOKENS, &maxt, e)) < 0 ||
        (r = proto_get_number(msg, "temperature", false, &temp, e)) < 0 ||
        (r = proto_get_number(msg, "top_p", false, &top_p, e)) < 0 ||
        (r = proto_get_int(msg, "seed", false, 1, PROTO_MAX_ID, &seed, e)) < 0 ||
        (r = proto_get_bool(msg, "bos", false, &bos, e)) < 0)
        goto fail;
    if (!(temp >= 0 && temp <= 100)) {
        r = proto_error_set(e, PROTO_BAD_REQUEST, "field 'temperature': must be a number in [0, 100]");
        goto fail;
    }
    if (!(top_p >= 0 && top_p <= 1)) {
        r = proto_error_set(e, PROTO_BAD_REQUEST, "field 'top_p': must be a number in [0, 1]");
        goto fail;
    }
    size_t plen = json_string_length(json_object_get(msg, "prompt"));
    if (plen > RUNNER_PROMPT_MAX) {
        r = proto_error_set(e, PROTO_BAD_REQUEST, "field 'prompt': %zu bytes, longer than %d", plen,
                            RUNNER_PROMPT_MAX);
        goto fail;
    }
    if (s->pending_evals >= s->cfg.max_evals) {
        r = proto_error_set(e, PROTO_QUEUE_FULL, "%d evaluations are already queued or running (the limit)",
                            s->cfg.max_evals);
        goto fail;
    }
    memcpy(t->gen.prompt, prompt, plen);
    t->gen.prompt_len = plen;
    t->gen.add_bos = bos;
    t->gen.max_tokens = (int)maxt;
    t->gen.temperature = temp;
    t->gen.top_p = top_p;
    t->gen.seed = (uint64_t)seed;
    s->pending_evals++;
    return push_task(c, t);
fail:
    free(t);
    return r;
}

/* failed or cancelled -> queued (the ctl thread checks the database's state
 * and the job key). */
static int op_resume(struct client *c, long long id, json_t *msg, struct proto_error *e) {
    static const char *const fields[] = {"id", "op", "job", NULL};
    struct sjob *j;
    if (get_job(c, msg, fields, &j, e) < 0)
        return -EINVAL;
    if (c->uid != 0 && c->uid != j->owner_uid)
        return proto_error_set(e, PROTO_FORBIDDEN, "job %lld belongs to uid %u; only it or root may resume it",
                               (long long)j->id, (unsigned)j->owner_uid);
    if (j->state != JOB_FAILED && j->state != JOB_CANCELLED)
        return proto_error_set(e, PROTO_BAD_STATE, "job %lld is %s; only a failed or cancelled job can be resumed",
                               (long long)j->id, store_state_name(j->state));
    if (count_queued(c->srv) + c->srv->pending_submits >= c->srv->cfg.max_queued_jobs)
        return proto_error_set(e, PROTO_QUEUE_FULL, "the queue already holds %d jobs (the limit)",
                               c->srv->cfg.max_queued_jobs);
    struct runner_task *t = task_new(RUNNER_TASK_RESUME, id);
    if (!t)
        return proto_error_set(e, PROTO_INTERNAL, "out of memory");
    t->job_id = j->id;
    return push_task(c, t);
}

/* A final job's work directory and rows (the ctl thread removes them; its
 * reply takes the job out of the table). */
static int op_rm(struct client *c, long long id, json_t *msg, struct proto_error *e) {
    static const char *const fields[] = {"id", "op", "job", NULL};
    struct sjob *j;
    if (get_job(c, msg, fields, &j, e) < 0)
        return -EINVAL;
    if (c->uid != 0 && c->uid != j->owner_uid)
        return proto_error_set(e, PROTO_FORBIDDEN, "job %lld belongs to uid %u; only it or root may remove it",
                               (long long)j->id, (unsigned)j->owner_uid);
    if (!store_state_final(j->state))
        return proto_error_set(e, PROTO_BAD_STATE, "job %lld is %s; only a done, failed or cancelled job can be "
                               "removed (cancel it first)", (long long)j->id, store_state_name(j->state));
    struct runner_task *t = task_new(RUNNER_TASK_RM, id);
    if (!t)
        return proto_error_set(e, PROTO_INTERNAL, "out of memory");
    t->job_id = j->id;
    return push_task(c, t);
}

static const struct {
    const char *name;
    op_fn fn;
    bool async;      /* answered later by a runner event */
} ops[] = {
    {"ping", op_ping, false},
    {"version", op_version, false},
    {"submit", op_submit, true},
    {"status", op_status, false},
    {"list", op_list, false},
    {"watch", op_watch, false},
    {"cancel", op_cancel, true},
    {"eval", op_eval, true},
    {"resume", op_resume, true},
    {"rm", op_rm, true},
    {"generate", op_generate, true},
};

static void handle_line(struct client *c, const char *line, size_t len) {
    struct server *s = c->srv;
    struct proto_error e = {0};
    json_t *msg = NULL;
    if (proto_parse(line, len, &msg, &e) < 0) {
        send_fatal(c, PROTO_NO_ID, e.code, e.msg);
        return;
    }
    long long id;
    const char *op = NULL;
    if (proto_request_head(msg, &id, &op, &e) < 0) {
        send_error(c, id, e.code, e.msg);
        goto out;
    }
    size_t i = 0;
    while (i < sizeof ops / sizeof ops[0] && strcmp(ops[i].name, op) != 0)
        i++;
    if (i == sizeof ops / sizeof ops[0]) {
        char known[128] = "";
        for (size_t k = 0; k < sizeof ops / sizeof ops[0]; k++)
            snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", k ? ", " : "",
                     ops[k].name);
        proto_error_set(&e, PROTO_UNKNOWN_OP, "unknown op '%.100s' (known: %s)", op, known);
        send_error(c, id, e.code, e.msg);
        goto out;
    }
    if (ops[i].async && s->stopping) {
        send_error(c, id, PROTO_SHUTTING_DOWN, "svdllmd is shutting down");
        goto out;
    }
    if (ops[i].async && c->inflight >= s->cfg.max_inflight) {
        proto_error_set(&e, PROTO_BUSY, "%d requests are already pending on this connection (the limit)",
                        s->cfg.max_inflight);
        send_error(c, id, e.code, e.msg);
        goto out;
    }
    if (ops[i].fn(c, id, msg, &e) < 0)
        send_error(c, id, e.code, e.msg);
out:
    json_decref(msg);
}

/* ---- Client input ---------------------------------------------------------------------- */

/* What draining clients read into (the loop thread is the only user). */
static char discard_buf[64 * 1024];

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    (void)suggested;   /* the line buffer decides how much it can take */
    struct client *c = h->data;
    if (c->draining) {
        *buf = uv_buf_init(discard_buf, sizeof discard_buf);
        return;
    }
    size_t n = 0;
    char *p = proto_buf_space(&c->in, &n);
    *buf = uv_buf_init(p, (unsigned)n);
}

static void on_read_draining(struct client *c, ssize_t nread, const uv_buf_t *buf) {
    if (nread < 0) {
        /* The peer closed (or reset): close once the reply is out, which it
         * is unless the peer only shut down its write side and still reads. */
        c->peer_eof = true;
        if (c->unsent == 0 || nread != UV_EOF)
            client_close(c);
        return;
    }
    size_t n = (size_t)nread;
    if (c->drain_to_eol && memchr(buf->base, '\n', n)) {
        c->drain_to_eol = false;   /* the oversize line has ended: linger briefly */
        uint64_t linger = uv_now(c->srv->loop) + LINGER_MS;
        if (linger < c->drain_deadline)
            c->drain_deadline = linger;
    }
    if (n >= c->drain_left) {
        log_msg(LOG_INFO, "client %llu (uid %u): %zu bytes discarded after its last reply; closing",
                (unsigned long long)c->id, (unsigned)c->uid, DRAIN_MAX_BYTES);
        client_close(c);
        return;
    }
    c->drain_left -= n;
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
    struct client *c = stream->data;
    if (c->closing)
        return;
    if (c->draining) {
        on_read_draining(c, nread, buf);
        return;
    }
    if (nread == UV_ENOBUFS) {
        send_fatal(c, PROTO_NO_ID, PROTO_TOO_LARGE, "out of buffer space");
        return;
    }
    if (nread < 0) {
        if (nread != UV_EOF)
            log_msg(LOG_DEBUG, "client %llu: read: %s", (unsigned long long)c->id, uv_strerror((int)nread));
        client_close(c);
        return;
    }
    proto_buf_commit(&c->in, (size_t)nread);
    uint64_t now = uv_now(c->srv->loop);
    while (!c->closing && !c->draining) {
        char *line;
        size_t len;
        int r = proto_buf_next(&c->in, &line, &len);
        if (r == 0)
            break;
        if (r < 0) {
            char msg[160];
            snprintf(msg, sizeof msg, "message longer than %d bytes (the limit); the rest of the line is discarded",
                     PROTO_MAX_MSG);
            send_fatal_drain(c, PROTO_NO_ID, PROTO_TOO_LARGE, msg, true);
            break;
        }
        c->partial = false;   /* a line ended; what follows started now */
        c->t_active = now;
        if (len > 0)
            handle_line(c, line, len);
    }
    if (c->closing || c->draining)
        return;
    bool held = c->in.len > c->in.start;   /* bytes of a line without its '\n' */
    if (held && !c->partial) {
        c->partial = true;
        c->t_partial = now;
    } else if (!held) {
        c->partial = false;
    }
}

static void on_client_closed(uv_handle_t *h) {
    struct client *c = h->data;
    proto_buf_free(&c->in);
    free(c);
}

static void client_close(struct client *c) {
    if (c->closing)
        return;
    struct server *s = c->srv;
    c->closing = true;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    if (c->rejected)
        s->n_rejected--;
    else
        s->n_clients--;
    if (s->runner && c->inflight > 0)
        runner_drop_client(s->runner, c->id);
    log_msg(LOG_DEBUG, "client %llu: closed", (unsigned long long)c->id);
    uv_close((uv_handle_t *)&c->pipe, on_client_closed);
}

/* ---- Timeouts ----------------------------------------------------------------------- */

static void on_tick(uv_timer_t *t) {
    struct server *s = t->data;
    uint64_t now = uv_now(s->loop);
    uint64_t idle_ms = (uint64_t)s->cfg.idle_timeout * 1000, line_ms = (uint64_t)s->cfg.line_timeout * 1000;
    struct client *next;
    for (struct client *c = s->clients; c; c = next) {
        next = c->next;   /* c may close (and leave the list); no other client does */
        char msg[160];
        if (c->draining) {
            if (now >= c->drain_deadline)
                client_close(c);
        } else if (line_ms && c->partial && now - c->t_partial >= line_ms) {
            snprintf(msg, sizeof msg, "a line was started and not ended by '\\n' within %d s (line_timeout)",
                     s->cfg.line_timeout);
            send_fatal(c, PROTO_NO_ID, PROTO_TIMEOUT, msg);
        } else if (idle_ms && !c->partial && c->inflight == 0 && c->n_watches == 0 &&
                   now - c->t_active >= idle_ms) {
            snprintf(msg, sizeof msg, "no request for %d s (idle_timeout)", s->cfg.idle_timeout);
            send_fatal(c, PROTO_NO_ID, PROTO_TIMEOUT, msg);
        }
    }
    if (!s->clients && s->tick_active) {
        uv_timer_stop(&s->tick);
        s->tick_active = false;
    }
}

static void tick_arm(struct server *s) {
    if (s->tick_init && !s->tick_active && !s->stopping) {
        uv_timer_start(&s->tick, on_tick, TICK_MS, TICK_MS);
        s->tick_active = true;
    }
}

/* ---- Accepting ------------------------------------------------------------------------ */

static bool privileged_uid(uint32_t uid) {
    return uid == 0;
}

/* Why a new connection from uid must be refused (into msg), or false. */
static bool over_limit(struct server *s, uint32_t uid, char *msg, size_t n) {
    int reserved = s->cfg.root_reserved_clients;
    if (reserved > s->cfg.max_clients - 1)
        reserved = s->cfg.max_clients - 1;
    if (s->n_clients >= s->cfg.max_clients) {
        snprintf(msg, n, "svdllmd already serves %d clients (max_clients)", s->cfg.max_clients);
        return true;
    }
    if (privileged_uid(uid))
        return false;
    if (s->n_clients >= s->cfg.max_clients - reserved) {
        snprintf(msg, n, "svdllmd already serves %d clients; the last %d of max_clients %d are kept for root",
                 s->n_clients, reserved, s->cfg.max_clients);
        return true;
    }
    int mine = 0;
    for (struct client *o = s->clients; o; o = o->next)
        mine += !o->rejected && o->uid == uid;
    if (mine >= s->cfg.max_clients_per_uid) {
        snprintf(msg, n, "uid %u already has %d connections (max_clients_per_uid)", (unsigned)uid, mine);
        return true;
    }
    return false;
}

/* A refused connection when max_rejected of them already drain: the reply
 * is written if the socket takes it at once (it stays readable after the
 * close), and the connection closed. c is not in the client list. */
static void reject_now(struct client *c, const char *why) {
    json_t *m = proto_reply_error(PROTO_NO_ID, PROTO_TOO_MANY_CLIENTS, why);
    struct proto_error e = {0};
    char *line = NULL;
    size_t len = 0;
    if (m && proto_encode(m, &line, &len, &e) == 0) {
        uv_buf_t b = uv_buf_init(line, (unsigned)len);
        uv_try_write((uv_stream_t *)&c->pipe, &b, 1);
    }
    json_decref(m);
    free(line);
    c->closing = true;
    uv_close((uv_handle_t *)&c->pipe, on_client_closed);
}

static void on_connection(uv_stream_t *listener, int status) {
    struct server *s = listener->data;
    if (status < 0) {
        log_msg(LOG_WARNING, "accept: %s", uv_strerror(status));
        return;
    }
    struct client *c = calloc(1, sizeof *c);
    if (!c) {
        log_msg(LOG_ERR, "accept: out of memory");
        return;
    }
    c->srv = s;
    c->id = ++s->next_client_id;
    uv_pipe_init(s->loop, &c->pipe, 0);
    c->pipe.data = c;
    if (uv_accept(listener, (uv_stream_t *)&c->pipe) < 0) {
        c->closing = true;
        uv_close((uv_handle_t *)&c->pipe, on_client_closed);
        return;
    }
    uv_os_fd_t fd;
    struct ucred cred = {0, (uid_t)-1, (gid_t)-1};
    socklen_t clen = sizeof cred;
    if (uv_fileno((uv_handle_t *)&c->pipe, &fd) == 0)
        getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen);
    c->uid = (uint32_t)cred.uid;
    c->gid = (uint32_t)cred.gid;
    c->pid = (int)cred.pid;
    c->t_active = uv_now(s->loop);
    char why[192];
    bool refused = over_limit(s, c->uid, why, sizeof why);
    if (refused && s->n_rejected >= s->cfg.max_rejected) {
        log_msg(LOG_DEBUG, "client %llu (uid %u, pid %d): %s; %d refused connections already wait, closing at once",
                (unsigned long long)c->id, (unsigned)c->uid, c->pid, why, s->n_rejected);
        reject_now(c, why);
        return;
    }
    if (!refused && proto_buf_init(&c->in, PROTO_MAX_MSG + 1) < 0) {
        log_msg(LOG_ERR, "accept: out of memory");
        c->closing = true;
        uv_close((uv_handle_t *)&c->pipe, on_client_closed);
        return;
    }
    c->next = s->clients;
    if (s->clients)
        s->clients->prev = c;
    s->clients = c;
    tick_arm(s);
    if (refused) {
        c->rejected = true;
        s->n_rejected++;
    } else {
        s->n_clients++;
        log_msg(LOG_DEBUG, "client %llu: connected (uid %u, gid %u, pid %d)", (unsigned long long)c->id,
                (unsigned)c->uid, (unsigned)c->gid, c->pid);
    }
    int r = uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
    if (r < 0) {
        log_msg(LOG_WARNING, "client %llu: read start: %s", (unsigned long long)c->id, uv_strerror(r));
        client_close(c);
        return;
    }
    if (refused)
        send_fatal(c, PROTO_NO_ID, PROTO_TOO_MANY_CLIENTS, why);
}

/* ---- Runner events ----------------------------------------------------------------------- */

static void on_reply(struct server *s, struct runner_event *ev) {
    struct client *c = client_find(s, ev->client_id);
    if (ev->task == RUNNER_TASK_SUBMIT)
        s->pending_submits--;
    if (ev->task == RUNNER_TASK_EVAL || ev->task == RUNNER_TASK_GENERATE)
        s->pending_evals--;
    struct sjob *j = NULL;
    json_t *removed = NULL;   /* rm: the record as it was */
    if (ev->task == RUNNER_TASK_RM && ev->code == PROTO_OK && ev->job) {
        struct sjob *old = job_find(s, ev->job->id);
        if (old && c)
            removed = job_json(old, true);
        job_remove(s, ev->job->id);
    }
    if (ev->job && ev->task == RUNNER_TASK_RESUME && ev->code == PROTO_OK)
        job_reopen(s, ev->job->id);
    if (ev->job && ev->task != RUNNER_TASK_RM) {
        bool changed;
        j = job_upsert(s, ev->job, &changed);
        if (!j)
            log_msg(LOG_ERR, "job %lld: out of memory updating the job table", (long long)ev->job->id);
    }
    if (!c)
        return;
    c->inflight--;
    c->t_active = uv_now(s->loop);   /* idle from the reply, not the request */
    if (ev->code != PROTO_OK) {
        send_error(c, ev->req_id, ev->code, ev->msg);
        return;
    }
    json_t *r = proto_reply_ok(ev->req_id);
    switch (ev->task) {
    case RUNNER_TASK_SUBMIT:
        if (j)
            json_object_set_new(r, "job", job_json(j, true));
        break;
    case RUNNER_TASK_CANCEL:
        proto_set_str(r, "state", ev->cancelling ? "cancelling" : "cancelled");
        break;
    case RUNNER_TASK_RESUME:
        if (j)
            json_object_set_new(r, "job", job_json(j, true));
        break;
    case RUNNER_TASK_RM:
        proto_set_int(r, "removed", ev->job ? ev->job->id : 0);
        proto_set_int(r, "freed_bytes", (long long)ev->freed_bytes);
        if (removed)
            json_object_set_new(r, "job", removed);
        removed = NULL;
        break;
    case RUNNER_TASK_EVAL:
        proto_set_real(r, "ppl", ev->ppl.ppl);
        proto_set_real(r, "mean_nll", ev->ppl.mean_nll);
        proto_set_int(r, "tokens", (long long)ev->ppl.tokens);
        proto_set_int(r, "windows", (long long)ev->ppl.windows);
        proto_set_int(r, "predicted", (long long)ev->ppl.predicted);
        proto_set_int(r, "seqlen", ev->ppl.seqlen);
        proto_set_real(r, "seconds", ev->ppl.seconds);
        proto_set_real(r, "tokens_per_s", ev->ppl.tokens_per_s);
        break;
    case RUNNER_TASK_GENERATE: {
        json_t *ids = json_array();
        for (size_t i = 0; ids && i < ev->gen.n_ids; i++)
            json_array_append_new(ids, json_integer(ev->gen.ids[i]));
        /* The text is valid UTF-8 (tok_decode's promise); NUL bytes are kept. */
        json_object_set_new(r, "text", json_stringn(ev->gen.text, ev->gen.text_len));
        json_object_set_new(r, "ids", ids);
        proto_set_int(r, "prompt_tokens", (long long)ev->gen.n_prompt);
        proto_set_int(r, "generated_tokens", (long long)(ev->gen.n_ids - ev->gen.n_prompt));
        proto_set_str(r, "finish", ev->gen.finish);
        proto_set_real(r, "prompt_seconds", ev->gen.prompt_seconds);
        proto_set_real(r, "seconds", ev->gen.seconds);
        proto_set_real(r, "tokens_per_s", ev->gen.tokens_per_s);
        break;
    }
    }
    client_send(c, r);
}

static void on_signal_closed(uv_handle_t *h) {
    (void)h;
}

static void on_runner_event(void *ctx, struct runner_event *ev) {
    struct server *s = ctx;
    switch (ev->type) {
    case RUNNER_EV_REPLY:
        on_reply(s, ev);
        break;
    case RUNNER_EV_JOB: {
        bool changed;
        struct sjob *j = job_upsert(s, ev->job, &changed);
        if (!j) {
            log_msg(LOG_ERR, "job %lld: out of memory updating the job table", (long long)ev->job->id);
            break;
        }
        if (changed)
            notify_watchers(s, j, store_state_final(j->state));
        break;
    }
    case RUNNER_EV_PROGRESS: {
        struct sjob *j = job_find(s, ev->progress.job_id);
        if (!j || j->state != JOB_RUNNING)
            break;
        if (ev->progress.fraction < j->frac_hwm)   /* a resumed run redoing lost work */
            ev->progress.fraction = j->frac_hwm;
        j->frac_hwm = ev->progress.fraction;
        j->prog = ev->progress;
        j->has_progress = true;
        if (ev->progress.n_layers > 0)
            j->n_layers = ev->progress.n_layers;
        j->layers_done = ev->progress.layers_done;
        notify_watchers(s, j, false);
        break;
    }
    case RUNNER_EV_EXITED:
        runner_free(s->runner);
        s->runner = NULL;
        if (s->signals) {
            uv_close((uv_handle_t *)&s->sigterm, on_signal_closed);
            uv_close((uv_handle_t *)&s->sigint, on_signal_closed);
            s->signals = false;
        }
        log_msg(LOG_INFO, "worker threads stopped");
        break;
    }
}

/* ---- Lifecycle ----------------------------------------------------------------------------- */

static void on_listener_closed(uv_handle_t *h) {
    (void)h;
}

static void tick_close(struct server *s) {
    if (s->tick_init) {
        uv_close((uv_handle_t *)&s->tick, on_listener_closed);
        s->tick_init = s->tick_active = false;
    }
}

static void server_shutdown(struct server *s, const char *why) {
    if (s->stopping)
        return;
    s->stopping = true;
    log_msg(LOG_NOTICE, "shutting down (%s)", why);
    if (s->cfg.on_stopping)
        s->cfg.on_stopping();
    if (s->listening) {
        uv_close((uv_handle_t *)&s->listener, on_listener_closed);
        unlink(s->socket_path);
        s->listening = false;
    }
    while (s->clients)
        client_close(s->clients);
    tick_close(s);
    if (s->runner) {
        runner_stop(s->runner);
    } else if (s->signals) {
        uv_close((uv_handle_t *)&s->sigterm, on_signal_closed);
        uv_close((uv_handle_t *)&s->sigint, on_signal_closed);
        s->signals = false;
    }
}

static void on_signal(uv_signal_t *h, int signum) {
    struct server *s = h->data;
    server_shutdown(s, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

/* A socket file left by a daemon that died is removed; one that answers is
 * another daemon's and is left alone. */
static int clear_stale_socket(const char *path, struct sv_err *err) {
    struct stat sb;
    if (lstat(path, &sb) < 0)
        return errno == ENOENT ? 0 : sv_err_set(err, -errno, "socket %s: %s", path, strerror(errno));
    if (!S_ISSOCK(sb.st_mode))
        return sv_err_set(err, -EEXIST, "socket %s: exists and is not a socket", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return sv_err_set(err, -errno, "socket: %s", strerror(errno));
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int r = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    int e = errno;
    close(fd);
    if (r == 0)
        return sv_err_set(err, -EADDRINUSE, "socket %s: another svdllmd is listening there", path);
    if (e != ECONNREFUSED)
        return sv_err_set(err, -e, "socket %s: %s", path, strerror(e));
    if (unlink(path) < 0)
        return sv_err_set(err, -errno, "socket %s: cannot remove the stale socket: %s", path, strerror(errno));
    log_msg(LOG_INFO, "removed stale socket %s", path);
    return 0;
}

static int listen_socket(struct server *s, struct sv_err *err) {
    const char *path = s->cfg.socket_path;
    int r = clear_stale_socket(path, err);
    if (r < 0)
        return r;
    uv_pipe_init(s->loop, &s->listener, 0);
    s->listener.data = s;
    s->listening = true;
    if ((r = uv_pipe_bind(&s->listener, path)) < 0)
        return sv_err_set(err, r, "socket %s: bind: %s", path, uv_strerror(r));
    if (chmod(path, s->cfg.socket_mode) < 0)
        return sv_err_set(err, -errno, "socket %s: chmod: %s", path, strerror(errno));
    if ((r = uv_listen((uv_stream_t *)&s->listener, 128, on_connection)) < 0)
        return sv_err_set(err, r, "socket %s: listen: %s", path, uv_strerror(r));
    return 0;
}

int server_new(struct server **ret, uv_loop_t *loop, const struct server_config *cfg,
               struct sv_err *err) {
    struct server *s = calloc(1, sizeof *s);
    if (!s)
        return sv_err_set(err, -ENOMEM, "out of memory");
    s->loop = loop;
    s->cfg = *cfg;
    int r = 0;
    if (strlen(cfg->socket_path) >= sizeof s->socket_path) {
        r = sv_err_set(err, -ENAMETOOLONG, "socket %s: path longer than %zu bytes", cfg->socket_path,
                       sizeof s->socket_path - 1);
        free(s);
        return r;
    }
    memcpy(s->socket_path, cfg->socket_path, strlen(cfg->socket_path) + 1);
    s->cfg.socket_path = s->socket_path;

    /* Recovery, synchronously: nobody is served yet. */
    char db[PATH_MAX];
    struct store *st = NULL;
    if ((size_t)snprintf(db, sizeof db, "%s/" RUNNER_DB_NAME, cfg->state_dir) >= sizeof db) {
        r = sv_err_set(err, -ENAMETOOLONG, "state directory %s: path too long", cfg->state_dir);
        goto fail;
    }
    if ((r = store_open(&st, db, err)) < 0)
        goto fail;
    if ((r = store_recover(st, err)) < 0)
        goto fail;
    s->recovered = r;
    if ((r = store_job_list(st, load_job, s, err)) < 0)
        goto fail;
    store_free(st);
    st = NULL;

    s->euid = (uint32_t)geteuid();
    uv_timer_init(loop, &s->tick);
    s->tick.data = s;
    s->tick_init = true;
    if ((r = listen_socket(s, err)) < 0)
        goto fail;
    uv_signal_init(loop, &s->sigterm);
    uv_signal_init(loop, &s->sigint);
    s->sigterm.data = s->sigint.data = s;
    s->signals = true;
    uv_signal_start(&s->sigterm, on_signal, SIGTERM);
    uv_signal_start(&s->sigint, on_signal, SIGINT);

    if ((r = runner_new(&s->runner, loop, cfg->state_dir, on_runner_event, s, err)) < 0) {
        if (s->runner) {
            /* Some threads may run: wait for them through the loop. */
            server_shutdown(s, "start-up failed");
            uv_run(loop, UV_RUN_DEFAULT);
        }
        goto fail;
    }
    *ret = s;
    return 0;
fail:
    store_free(st);
    if (!s->stopping) {
        s->stopping = true;
        if (s->listening) {
            uv_close((uv_handle_t *)&s->listener, on_listener_closed);
            unlink(s->socket_path);
        }
        if (s->signals) {
            uv_close((uv_handle_t *)&s->sigterm, on_signal_closed);
            uv_close((uv_handle_t *)&s->sigint, on_signal_closed);
        }
        tick_close(s);
    }
    uv_run(loop, UV_RUN_DEFAULT);   /* let the close callbacks run */
    server_free(s);
    return r;
}

int server_recovered(const struct server *s) {
    return s->recovered;
}

void server_free(struct server *s) {
    if (!s)
        return;
    for (size_t i = 0; i < s->n_jobs; i++)
        sjob_free(s->jobs[i]);
    free(s->jobs);
    free(s);
}
