/* svdllmctl: command-line client of svdllmd.
 *
 * One blocking Unix-socket connection per invocation, one request, its reply
 * (and, for watch, the events that follow), all through common/proto. Links
 * neither BLIS nor the engine.
 *
 * Design note. Every command is one row of `commands[]` below: its name,
 * synopsis, the options it accepts (each with the help line `svdllmctl CMD
 * --help` prints: what it means, its unit and default), the options it
 * requires, whether it takes a job id, the protocol fields it sends (so
 * that a daemon error naming a field is shown with the flag instead) and the
 * function that runs it. The global --help, per-command --help, the check
 * that an option applies to the command and the local argument checks all
 * read that table, so a new command is one function and one row.
 *
 * Exit status (the same in --help, svdllmctl(1) and the README):
 *   0  success (watch: the job ended done)
 *   1  the daemon refused the request (an error reply: not_found, bad_path,
 *      ...) or the watched job ended failed or cancelled
 *   2  usage error, found before connecting
 *   3  svdllmd unreachable: cannot connect, or the connection broke before
 *      the reply (a retry may succeed)
 * With --json every message received is printed as one raw JSON line, except
 * that submit prints the job object itself (its "id" is the job's id). */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "conn.h"
#include "proto.h"
#include "sweep.h"

#ifndef SV_VERSION
#define SV_VERSION "unknown"
#endif

#define DEFAULT_SOCKET "/run/svdllmd/svdllmd.sock"

enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2, EXIT_UNREACHABLE = 3 };

static bool opt_json;
/* --json: print each message as received (false: the command prints its
 * own JSON, e.g. submit's job object). */
static bool json_raw = true;
/* What the last failed call() was: EXIT_FAIL (an error reply) or
 * EXIT_UNREACHABLE (no reply). */
static int call_failure = EXIT_FAIL;
/* The command being run (for errors that name a protocol field). */
static const struct command *cur_cmd;

static void say_v(const char *fmt, va_list ap) {
    fputs("svdllmctl: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    say_v(fmt, ap);
    va_end(ap);
    return EXIT_FAIL;
}

/* A failure to reach the daemon: printed like fail(), exit status 3. */
static int unreachable(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int unreachable(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    say_v(fmt, ap);
    va_end(ap);
    call_failure = EXIT_UNREACHABLE;
    return EXIT_UNREACHABLE;
}

/* ---- Connection -------------------------------------------------------------- */

/* Connects; on failure prints the reason and returns its exit status (3:
 * unreachable; 1: out of memory). */
static int ctl_open(struct conn *c, const char *path) {
    struct sv_err err = {0};
    int r = conn_open(c, path, &err);
    if (r == -ENOMEM)
        return fail("%s", err.msg);
    return r < 0 ? unreachable("%s", err.msg) : 0;
}

/* One raw JSON line on stdout (--json). */
static void print_json(json_t *m) {
    char *s = json_dumps(m, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(16));
    if (s)
        puts(s);
    free(s);
    fflush(stdout);
}

/* Reads the next message; prints it with --json. Returns 1, or 0 with the
 * reason printed (the daemon is then unreachable: exit status 3). */
static int conn_read(struct conn *c, json_t **ret) {
    struct proto_error e = {0};
    int r = proto_read_msg(c->fd, &c->buf, ret, &e);
    if (r == 0) {
        unreachable("%s: svdllmd closed the connection (is it shutting down?)", c->path);
        return 0;
    }
    if (r < 0) {
        unreachable("%s: %s", c->path, e.msg);
        return 0;
    }
    if (opt_json && json_raw)
        print_json(*ret);
    return 1;
}

/* After a failed write: the daemon may have closed because it refused us
 * (too_many_clients) or the request (too_large, timeout), and its reply is
 * still readable. Returns that message, or NULL (nothing was sent). Bounded
 * by a receive timeout: a broken connection must not hang the client. */
static json_t *reply_after_write_error(struct conn *c) {
    struct timeval tv = {5, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    json_t *m = NULL;
    struct proto_error e = {0};
    if (proto_read_msg(c->fd, &c->buf, &m, &e) != 1)
        return NULL;
    return m;
}

static void error_line(enum proto_code code, const char *msg);

/* Sends req (consumed) and reads its reply. Returns the reply, or NULL with
 * the reason printed (an error reply as "code: message", its fields named
 * by their flags) and call_failure set. */
static json_t *call(struct conn *c, json_t *req) {
    struct proto_error e = {0};
    call_failure = EXIT_FAIL;
    int r = proto_write_msg(c->fd, req, &e);
    json_decref(req);
    json_t *reply;
    if (r < 0 && e.code == PROTO_TOO_LARGE) {   /* refused before anything was written */
        fail("too_large: the request is longer than %d bytes (svdllmd's limit); not sent", PROTO_MAX_MSG);
        return NULL;
    }
    if (r < 0) {
        /* EPIPE or ECONNRESET: whatever the daemon said before closing is
         * the reason, and better than "Broken pipe". */
        reply = reply_after_write_error(c);
        if (!reply) {
            unreachable("%s: %s", c->path, e.msg);
            return NULL;
        }
        if (opt_json)
            print_json(reply);
        struct proto_error re = {0};
        if (proto_reply_is_error(reply, &re))
            error_line(re.code, re.msg);
        else
            unreachable("%s: %s", c->path, e.msg);   /* not an answer to a request never sent whole */
        json_decref(reply);
        return NULL;
    }
    if (!conn_read(c, &reply))
        return NULL;
    if (proto_reply_is_error(reply, &e)) {
        if (opt_json && !json_raw) {
            /* The command prints its own JSON: the error without the
             * request's correlation id, which a script could take for a
             * job's. */
            json_object_del(reply, "id");
            print_json(reply);
        }
        error_line(e.code, e.msg);
        json_decref(reply);
        return NULL;
    }
    return reply;
}

/* ---- Formatting ---------------------------------------------------------------- */

static long long jint(json_t *o, const char *k) {
    return (long long)json_integer_value(json_object_get(o, k));
}

static void fmt_duration(char *out, size_t n, double s) {
    if (s < 0 || !isfinite(s)) {
        snprintf(out, n, "unknown");
        return;
    }
    long long t = (long long)(s + 0.5);
    if (t < 60)
        snprintf(out, n, "%llds", t);
    else if (t < 3600)
        snprintf(out, n, "%lldm%02llds", t / 60, t % 60);
    else
        snprintf(out, n, "%lldh%02lldm", t / 3600, (t % 3600) / 60);
}

static void fmt_bytes(char *out, size_t n, double b) {
    const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (b >= 1024 && u < 4) {
        b /= 1024;
        u++;
    }
    snprintf(out, n, u ? "%.1f %s" : "%.0f %s", b, units[u]);
}

/* "layer 12/32, factorize, 37.5%" */
static void fmt_progress(char *out, size_t n, json_t *job) {
    long long nl = jint(job, "n_layers"), done = jint(job, "layers_done");
    json_t *layer = json_object_get(job, "layer");
    const char *phase = conn_jstr(job, "phase");
    double f = conn_jnum(job, "fraction", 0) * 100.0;
    if (nl <= 0)
        snprintf(out, n, "%s%s%.1f%%", phase, *phase ? ", " : "", f);
    else if (json_is_integer(layer) && strcmp(conn_jstr(job, "state"), "running") == 0)
        snprintf(out, n, "layer %lld/%lld%s%s, %.1f%%",
                 (long long)json_integer_value(layer) + (json_integer_value(layer) < nl), nl,
                 *phase ? ", " : "", phase, f);
    else
        snprintf(out, n, "%lld/%lld layers done, %.1f%%", done, nl, f);
}

static void print_status(json_t *job) {
    char buf[256];
    printf("job %lld: %s\n", jint(job, "id"), conn_jstr(job, "state"));
    if (json_is_true(json_object_get(job, "restricted"))) {
        /* Another user's job: svdllmd shows only that it exists. */
        printf("  owner       uid %lld (its details are shown to it and root only)\n", jint(job, "owner_uid"));
        fmt_progress(buf, sizeof buf, job);
        printf("  progress    %s\n", buf);
        return;
    }
    printf("  method      %s, ratio %g", conn_jstr(job, "method"), conn_jnum(job, "ratio", 0));
    if (json_is_number(json_object_get(job, "alpha")))   /* asvd jobs only */
        printf(", alpha %g", conn_jnum(job, "alpha", 0));
    if (json_is_true(json_object_get(job, "centered")))
        printf(", centered");
    printf("\n");
    /* The rank rule, when it is not the plain default. */
    const char *ranks = conn_jstr(job, "ranks");
    bool has_layers = json_is_integer(json_object_get(job, "layers"));
    bool has_split = json_is_number(json_object_get(job, "attn_split"));
    if ((*ranks && strcmp(ranks, "default") != 0) || has_layers || has_split) {
        printf("  ranks       %s", *ranks ? ranks : "default");
        if (has_layers)
            printf(", last %lld layers", jint(job, "layers"));
        if (has_split)
            printf(", attn_split %g", conn_jnum(job, "attn_split", 0));
        printf("\n");
    }
    printf("  model       %s\n", conn_jstr(job, "model"));
    printf("  out         %s\n", conn_jstr(job, "out"));
    if (*conn_jstr(job, "calib"))
        printf("  calib       %s (%lld x %lld tokens, %s windows, seed %lld)\n", conn_jstr(job, "calib"),
               jint(job, "nsamples"), jint(job, "seqlen"), conn_jstr(job, "calib_windows"), jint(job, "seed"));
    fmt_progress(buf, sizeof buf, job);
    printf("  progress    %s\n", buf);
    if (strcmp(conn_jstr(job, "state"), "running") == 0) {
        fmt_duration(buf, sizeof buf, conn_jnum(job, "eta_s", -1));
        printf("  eta         %s\n", buf);
        fmt_duration(buf, sizeof buf, conn_jnum(job, "elapsed_s", -1));
        printf("  elapsed     %s\n", buf);
    }
    if (json_is_integer(json_object_get(job, "threads")))   /* absent: ended under an earlier daemon */
        printf("  threads     %lld\n", jint(job, "threads"));
    if (json_is_integer(json_object_get(job, "peak_rss"))) {
        fmt_bytes(buf, sizeof buf, (double)jint(job, "peak_rss"));
        printf("  peak rss    %s (svdllmd)\n", buf);
    }
    json_t *res = json_object_get(job, "result");
    if (res) {
        double b = conn_jnum(res, "ppl_before", 0), a = conn_jnum(res, "ppl_after", 0);
        if (b > 0 || a > 0)
            printf("  perplexity  %.4g -> %.4g\n", b, a);
        double sb = conn_jnum(res, "tokens_per_s_before", 0), sa = conn_jnum(res, "tokens_per_s_after", 0);
        if (sb > 0 && sa > 0)
            printf("  speed       %.0f -> %.0f tokens/s (x%.2f, evaluation forward pass)\n", sb, sa, sa / sb);
        long long pb = jint(res, "params_before"), pa = jint(res, "params_after");
        if (pb > 0)
            printf("  params      %lld -> %lld (%.1f%% removed)\n", pb, pa, 100.0 * (double)(pb - pa) / (double)pb);
        fmt_duration(buf, sizeof buf, conn_jnum(res, "seconds", -1));
        printf("  time        %s (%lld layers resumed from checkpoints)\n", buf, jint(res, "layers_resumed"));
    }
    if (*conn_jstr(job, "error"))
        printf("  error       %s\n", conn_jstr(job, "error"));
    const char *state = conn_jstr(job, "state");
    if (json_is_true(json_object_get(job, "keep_checkpoints")))
        printf("  checkpoints kept after success (--keep-checkpoints)\n");
    if (strcmp(state, "failed") == 0 || strcmp(state, "cancelled") == 0)
        printf("  next        svdllmctl resume %lld continues it; svdllmctl rm %lld deletes its checkpoints\n",
               jint(job, "id"), jint(job, "id"));
}

/* ---- Commands --------------------------------------------------------------------- */

struct args {
    const char *model, *out, *method, *ranks, *calib, *calib_windows, *eval_text, *text, *state;
    double ratio, alpha, attn_split;
    bool has_ratio, has_alpha, has_attn_split, dense, overwrite, centered, keep_checkpoints;
    long long nsamples, seqlen, seed, eval_seqlen, eval_max_windows, max_windows, limit, layers;
    long long job;   /* commands that take a job id */
    /* generate */
    const char *prompt;
    long long max_tokens;
    double temperature, top_p;
    bool has_temperature, has_top_p, no_bos;
};

static long long parse_job(const char *v) {
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end || x < 1)
        cli_die_usage("'%s' is not a job id", v);
    return x;
}

/* Absolute form of a path given on the command line (the daemon has another
 * working directory); "" stays "". */
static json_t *abs_path(const char *p) {
    if (!p || p[0] == '/')
        return proto_str(p);
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd)) {
        fail("getcwd: %s", strerror(errno));
        exit(EXIT_FAIL);
    }
    size_t n = strlen(cwd) + strlen(p) + 2;
    char *s = malloc(n);
    if (!s)
        exit(EXIT_FAIL);
    snprintf(s, n, "%s/%s", cwd, p);
    json_t *v = proto_str(s);
    free(s);
    return v;
}

static json_t *job_request(const char *op, long long job) {
    json_t *q = proto_request_new(1, op);
    proto_set_int(q, "job", job);
    return q;
}

static int cmd_ping(struct conn *c, const struct args *a) {
    (void)a;
    json_t *r = call(c, proto_request_new(1, "ping"));
    if (!r)
        return call_failure;
    if (!opt_json)
        printf("svdllmd at %s is alive\n", c->path);
    json_decref(r);
    return EXIT_OK;
}

static int cmd_version(struct conn *c, const struct args *a) {
    (void)a;
    json_t *r = call(c, proto_request_new(1, "version"));
    if (!r)
        return call_failure;
    if (!opt_json) {
        printf("svdllmd %s, protocol %lld, threads %lld, methods:", conn_jstr(r, "version"), jint(r, "protocol"),
               jint(r, "threads"));
        size_t i;
        json_t *m;
        json_array_foreach(json_object_get(r, "methods"), i, m)
            printf(" %s", json_string_value(m));
        printf("\n");
    }
    json_decref(r);
    return EXIT_OK;
}

static int cmd_submit(struct conn *c, const struct args *a) {
    json_t *q = proto_request_new(1, "submit");
    if (a->model)
        json_object_set_new(q, "model", abs_path(a->model));
    if (a->out)
        json_object_set_new(q, "out", abs_path(a->out));
    if (a->method)
        proto_set_str(q, "method", a->method);
    if (a->has_ratio)
        proto_set_real(q, "ratio", a->ratio);
    if (a->has_alpha)
        proto_set_real(q, "alpha", a->alpha);
    if (a->ranks)
        proto_set_str(q, "ranks", a->ranks);
    if (a->layers >= 0)
        proto_set_int(q, "layers", a->layers);
    if (a->has_attn_split)
        proto_set_real(q, "attn_split", a->attn_split);
    if (a->centered)
        proto_set_bool(q, "centered", true);
    if (a->calib)
        json_object_set_new(q, "calib", abs_path(a->calib));
    if (a->nsamples >= 0)
        proto_set_int(q, "nsamples", a->nsamples);
    if (a->seqlen >= 0)
        proto_set_int(q, "seqlen", a->seqlen);
    if (a->seed >= 0)
        proto_set_int(q, "seed", a->seed);
    if (a->calib_windows)
        proto_set_str(q, "calib_windows", a->calib_windows);
    if (a->dense)
        proto_set_bool(q, "dense", true);
    if (a->overwrite)
        proto_set_bool(q, "overwrite", true);
    if (a->keep_checkpoints)
        proto_set_bool(q, "keep_checkpoints", true);
    if (a->eval_text)
        json_object_set_new(q, "eval_text", abs_path(a->eval_text));
    if (a->eval_seqlen >= 0)
        proto_set_int(q, "eval_seqlen", a->eval_seqlen);
    if (a->eval_max_windows >= 0)
        proto_set_int(q, "eval_max_windows", a->eval_max_windows);
    json_t *r = call(c, q);
    if (!r)
        return call_failure;
    json_t *job = json_object_get(r, "job");
    if (opt_json)
        print_json(job);   /* the job object: "id" is the job's id */
    else
        printf("%lld\n", jint(job, "id"));
    json_decref(r);
    return EXIT_OK;
}

static int cmd_status(struct conn *c, const struct args *a) {
    json_t *r = call(c, job_request("status", a->job));
    if (!r)
        return call_failure;
    if (!opt_json)
        print_status(json_object_get(r, "job"));
    json_decref(r);
    return EXIT_OK;
}

/* "42s", "17m", "5h", "3d": how long ago t (unix seconds) was. */
static void fmt_age(char *out, size_t n, long long t) {
    long long d = (long long)time(NULL) - t;
    if (t <= 0) {
        snprintf(out, n, "-");
        return;
    }
    if (d < 0)
        d = 0;
    if (d < 120)
        snprintf(out, n, "%llds", d);
    else if (d < 2 * 3600)
        snprintf(out, n, "%lldm", d / 60);
    else if (d < 2 * 86400)
        snprintf(out, n, "%lldh", d / 3600);
    else
        snprintf(out, n, "%lldd", d / 86400);
}

static int cmd_list(struct conn *c, const struct args *a) {
    json_t *q = proto_request_new(1, "list");
    if (a->state)
        proto_set_str(q, "state", a->state);
    if (a->limit > 0)
        proto_set_int(q, "limit", a->limit);
    json_t *r = call(c, q);
    if (!r)
        return call_failure;
    if (!opt_json) {
        json_t *jobs = json_object_get(r, "jobs");
        if (json_array_size(jobs) == 0)
            printf("no jobs\n");
        else
            printf("%6s  %-9s  %-13s  %5s  %-8s  %4s  %s\n", "ID", "STATE", "METHOD", "RATIO", "LAYERS", "AGE",
                   "MODEL -> OUT");
        size_t i;
        json_t *j;
        json_array_foreach(jobs, i, j) {
            char layers[32], age[24];
            snprintf(layers, sizeof layers, "%lld/%lld", jint(j, "layers_done"), jint(j, "n_layers"));
            fmt_age(age, sizeof age, jint(j, "created_at"));
            if (json_is_true(json_object_get(j, "restricted"))) {   /* another user's */
                printf("%6lld  %-9s  %-13s  %5s  %-8s  %4s  (uid %lld's job)\n", jint(j, "id"), conn_jstr(j, "state"),
                       "-", "-", layers, age, jint(j, "owner_uid"));
                continue;
            }
            printf("%6lld  %-9s  %-13s  %5.2f  %-8s  %4s  %s -> %s\n", jint(j, "id"), conn_jstr(j, "state"),
                   conn_jstr(j, "method"), conn_jnum(j, "ratio", 0), layers, age, conn_jstr(j, "model"), conn_jstr(j, "out"));
            if (*conn_jstr(j, "error"))   /* indented: not a row (the completion reads ids from rows) */
                printf("        error: %s\n", conn_jstr(j, "error"));
        }
        if (json_is_true(json_object_get(r, "truncated")))
            printf("(more jobs not shown)\n");
    }
    json_decref(r);
    return EXIT_OK;
}

static void draw_bar(json_t *job, bool tty, char *last, size_t last_n) {
    char prog[160], eta[32], line[320];
    fmt_progress(prog, sizeof prog, job);
    const char *state = conn_jstr(job, "state");
    if (tty) {
        enum { W = 24 };
        double f = conn_jnum(job, "fraction", 0);
        int fill = (int)(f * W + 0.5);
        char bar[W + 1];
        for (int i = 0; i < W; i++)
            bar[i] = i < fill ? '#' : '-';
        bar[W] = '\0';
        fmt_duration(eta, sizeof eta, conn_jnum(job, "eta_s", -1));
        snprintf(line, sizeof line, "job %lld [%s] %s %s ETA %s", jint(job, "id"), bar, state, prog, eta);
        printf("\r%-79.79s", line);
        fflush(stdout);
        return;
    }
    /* Plain output: a line only when something other than time changed. */
    snprintf(line, sizeof line, "job %lld: %s", jint(job, "id"), state);
    if (strcmp(state, "running") == 0)
        snprintf(line + strlen(line), sizeof line - strlen(line), " %s", prog);
    char key[320];
    snprintf(key, sizeof key, "%s", line);
    char *pct = strrchr(key, '%');   /* ignore the percentage for the change test */
    if (pct)
        *pct = '\0';
    if (strcmp(key, last) == 0)
        return;
    snprintf(last, last_n, "%s", key);
    puts(line);
    fflush(stdout);
}

static int cmd_watch(struct conn *c, const struct args *a) {
    long long job = a->job;
    json_t *r = call(c, job_request("watch", job));
    if (!r)
        return call_failure;
    bool tty = !opt_json && isatty(STDOUT_FILENO);
    char last[320] = "";
    if (!opt_json)
        draw_bar(json_object_get(r, "job"), tty, last, sizeof last);
    json_decref(r);
    for (;;) {
        json_t *ev;
        if (!conn_read(c, &ev)) {
            if (tty)
                putchar('\n');
            return EXIT_UNREACHABLE;
        }
        const char *name = conn_jstr(ev, "event");
        json_t *j = json_object_get(ev, "job");
        if (strcmp(name, "end") == 0) {
            const char *state = conn_jstr(ev, "state");
            int rc = strcmp(state, "done") == 0 ? EXIT_OK : EXIT_FAIL;
            if (!opt_json) {
                if (tty)
                    putchar('\n');
                json_t *res = json_object_get(j, "result");
                if (rc == 0 && res && conn_jnum(res, "ppl_after", 0) > 0)
                    printf("job %lld: done (perplexity %.4g -> %.4g)\n", job, conn_jnum(res, "ppl_before", 0),
                           conn_jnum(res, "ppl_after", 0));
                else if (rc == 0)
                    printf("job %lld: done\n", job);
            }
            if (rc != 0)
                fail("job %lld %s%s%s", job, state, *conn_jstr(j, "error") ? ": " : "", conn_jstr(j, "error"));
            json_decref(ev);
            return rc;
        }
        if (!opt_json && j)
            draw_bar(j, tty, last, sizeof last);
        json_decref(ev);
    }
}

static int cmd_cancel(struct conn *c, const struct args *a) {
    json_t *r = call(c, job_request("cancel", a->job));
    if (!r)
        return call_failure;
    if (!opt_json) {
        if (strcmp(conn_jstr(r, "state"), "cancelling") == 0)
            printf("job %lld: cancelling (it stops at its next safe point; svdllmctl resume %lld continues it)\n",
                   a->job, a->job);
        else
            printf("job %lld: cancelled (svdllmctl resume %lld continues it)\n", a->job, a->job);
    }
    json_decref(r);
    return EXIT_OK;
}

static int cmd_resume(struct conn *c, const struct args *a) {
    json_t *r = call(c, job_request("resume", a->job));
    if (!r)
        return call_failure;
    if (!opt_json)
        printf("job %lld: %s (resumes from %lld checkpointed layers)\n", a->job,
               conn_jstr(json_object_get(r, "job"), "state"), jint(json_object_get(r, "job"), "layers_done"));
    json_decref(r);
    return EXIT_OK;
}

static int cmd_rm(struct conn *c, const struct args *a) {
    json_t *r = call(c, job_request("rm", a->job));
    if (!r)
        return call_failure;
    if (!opt_json) {
        char freed[32];
        fmt_bytes(freed, sizeof freed, (double)jint(r, "freed_bytes"));
        json_t *job = json_object_get(r, "job");
        printf("job %lld: removed (its work directory and record, %s freed; the output %s is kept)\n", a->job,
               freed, *conn_jstr(job, "out") ? conn_jstr(job, "out") : "directory");
    }
    json_decref(r);
    return EXIT_OK;
}

static int cmd_eval(struct conn *c, const struct args *a) {
    json_t *q = proto_request_new(1, "eval");
    if (a->model)
        json_object_set_new(q, "model", abs_path(a->model));
    if (a->text)
        json_object_set_new(q, "text", abs_path(a->text));
    if (a->seqlen >= 0)
        proto_set_int(q, "seqlen", a->seqlen);
    if (a->max_windows >= 0)
        proto_set_int(q, "max_windows", a->max_windows);
    json_t *r = call(c, q);
    if (!r)
        return call_failure;
    if (!opt_json)
        printf("perplexity %.4f (mean NLL %.4f; %lld windows of %lld tokens, %lld predictions, %.1f s)\n",
               conn_jnum(r, "ppl", 0), conn_jnum(r, "mean_nll", 0), jint(r, "windows"), jint(r, "seqlen"),
               jint(r, "predicted"), conn_jnum(r, "seconds", 0));
    json_decref(r);
    return EXIT_OK;
}

/* generate: the daemon answers when the whole text is there; printed with a
 * final newline (as svdllm-engine generate and llama2.c's run do). */
static int cmd_generate(struct conn *c, const struct args *a) {
    json_t *q = proto_request_new(1, "generate");
    json_object_set_new(q, "model", abs_path(a->model));
    json_object_set_new(q, "prompt", json_string(a->prompt ? a->prompt : ""));
    if (a->max_tokens >= 0)
        proto_set_int(q, "max_tokens", a->max_tokens);
    if (a->has_temperature)
        proto_set_real(q, "temperature", a->temperature);
    if (a->has_top_p)
        proto_set_real(q, "top_p", a->top_p);
    if (a->seed >= 0)
        proto_set_int(q, "seed", a->seed);
    if (a->no_bos)
        proto_set_bool(q, "bos", false);
    json_t *r = call(c, q);
    if (!r)
        return call_failure;
    if (!opt_json) {
        json_t *t = json_object_get(r, "text");
        fwrite(json_string_value(t) ? json_string_value(t) : "", 1, json_string_length(t), stdout);
        putchar('\n');
    }
    json_decref(r);
    return EXIT_OK;
}

/* ---- The command table ---------------------------------------------------------- */

enum {
    O_SOCKET = 256, O_JSON, O_HELP, O_VERSION, O_MODEL, O_OUT, O_METHOD, O_RATIO, O_CALIB, O_NSAMPLES,
    O_SEQLEN, O_SEED, O_WINDOWS, O_DENSE, O_OVERWRITE, O_EVAL_TEXT, O_EVAL_SEQLEN,
    O_EVAL_MAX, O_TEXT, O_MAX_WINDOWS, O_STATE, O_LIMIT, O_ALPHA, O_RANKS, O_LAYERS,
    O_ATTN_SPLIT, O_CENTERED, O_KEEP_CKPT, O_PROMPT, O_MAX_TOKENS, O_TEMPERATURE, O_TOP_P, O_NO_BOS, O_END
};

static const struct option longopts[] = {
    {"socket", required_argument, NULL, O_SOCKET},
    {"json", no_argument, NULL, O_JSON},
    {"help", no_argument, NULL, O_HELP},
    {"version", no_argument, NULL, O_VERSION},
    {"model", required_argument, NULL, O_MODEL},
    {"out", required_argument, NULL, O_OUT},
    {"method", required_argument, NULL, O_METHOD},
    {"ratio", required_argument, NULL, O_RATIO},
    {"alpha", required_argument, NULL, O_ALPHA},
    {"ranks", required_argument, NULL, O_RANKS},
    {"layers", required_argument, NULL, O_LAYERS},
    {"attn-split", required_argument, NULL, O_ATTN_SPLIT},
    {"centered", no_argument, NULL, O_CENTERED},
    {"calib", required_argument, NULL, O_CALIB},
    {"nsamples", required_argument, NULL, O_NSAMPLES},
    {"seqlen", required_argument, NULL, O_SEQLEN},
    {"seed", required_argument, NULL, O_SEED},
    {"calib-windows", required_argument, NULL, O_WINDOWS},
    {"dense", no_argument, NULL, O_DENSE},
    {"overwrite", no_argument, NULL, O_OVERWRITE},
    {"keep-checkpoints", no_argument, NULL, O_KEEP_CKPT},
    {"eval-text", required_argument, NULL, O_EVAL_TEXT},
    {"eval-seqlen", required_argument, NULL, O_EVAL_SEQLEN},
    {"eval-max-windows", required_argument, NULL, O_EVAL_MAX},
    {"text", required_argument, NULL, O_TEXT},
    {"max-windows", required_argument, NULL, O_MAX_WINDOWS},
    {"state", required_argument, NULL, O_STATE},
    {"limit", required_argument, NULL, O_LIMIT},
    {"prompt", required_argument, NULL, O_PROMPT},
    {"max-tokens", required_argument, NULL, O_MAX_TOKENS},
    {"temperature", required_argument, NULL, O_TEMPERATURE},
    {"top-p", required_argument, NULL, O_TOP_P},
    {"no-bos", no_argument, NULL, O_NO_BOS},
    {NULL, 0, NULL, 0},
};

static const char *opt_name(int id) {
    for (size_t i = 0; longopts[i].name; i++)
        if (longopts[i].val == id)
            return longopts[i].name;
    return "?";
}

/* One option of a command: its value's name (NULL: a switch) and the help
 * line `svdllmctl CMD --help` prints (meaning, unit, range, default). */
struct cmd_opt {
    int id;
    const char *arg;
    const char *help;
};

#define MAX_CMD_OPTS 24

struct command {
    const char *name;
    const char *synopsis;   /* after the name, for the global --help */
    const char *summary;    /* one line */
    bool takes_job;         /* one positional argument: a job id */
    int required[4];        /* options that must be given (0-terminated) */
    struct cmd_opt opts[MAX_CMD_OPTS];   /* {0} ends the list */
    const char *notes;      /* more text for CMD --help (may be NULL) */
    int (*run)(struct conn *c, const struct args *a);
};

static const struct command commands[] = {
    {"ping", "", "check that svdllmd answers", false, {0}, {{0}}, NULL, cmd_ping},
    {"version", "", "daemon version, protocol, compute threads and methods", false, {0}, {{0}}, NULL, cmd_version},
    {"submit", "--model DIR --out DIR --ratio R [--calib FILE] [options]",
     "queue a compression job; prints its id", false, {O_MODEL, O_OUT, O_RATIO, 0},
     {{O_MODEL, "DIR", "model directory, Hugging Face layout (config.json,\n"
                       "*.safetensors, tokenizer.json); required"},
      {O_OUT, "DIR", "output directory to create (its parent must exist);\n"
                     "required"},
      {O_RATIO, "R", "fraction of the decoder-linear parameters REMOVED,\n"
                     "in (0, 1): 0.4 removes 40 % and keeps 60 % (embeddings,\n"
                     "norms and the head are kept); required"},
      {O_METHOD, "M", "svd | svdllm | asvd | awsvd | svdllm-update | rom |\n"
                      "lorap | rrr | auto (default auto: each of\n"
                      "svdllm, svdllm-update, rom, lorap, rrr tried on the\n"
                      "calibration data, the lowest held-out loss is run)"},
      {O_CALIB, "FILE", "calibration text, or a .i32 file of int32 token ids;\n"
                        "required unless --method svd"},
      {O_NSAMPLES, "N", "calibration windows, 1..65536 (default 32)"},
      {O_SEQLEN, "L", "tokens per calibration window, 2..65536 (default 128;\n"
                      "use 2048 for 7B-class models)"},
      {O_SEED, "S", "seed of the window sampling, >= 0 (default 0)"},
      {O_WINDOWS, "W", "random | first: which calibration windows (default\n"
                       "random)"},
      {O_RANKS, "RULE", "rank allocation: default | uniform | lorap | last-n |\n"
                        "auto | sensitive (default: lorap for --method lorap,\n"
                        "last-n with --layers, else uniform; sensitive: the\n"
                        "best of uniform, auto and a loss-weighted allocation\n"
                        "on spare calibration windows, never worse than uniform\n"
                        "there)"},
      {O_LAYERS, "N", "last-n: how many final decoder layers are compressed,\n"
                      "0..1024 (default 0 = all)"},
      {O_ATTN_SPLIT, "X", "lorap rule: attention's kept parameters split\n"
                          "(v+o):(q+k) = X, in (0, 100] (default 3)"},
      {O_CENTERED, NULL, "rom: centred output covariance (default uncentred)"},
      {O_ALPHA, "A", "asvd: exponent of the channel scales, in (0, 4]\n"
                     "(default 0.5)"},
      {O_DENSE, NULL, "write each compressed W' dense under its original name\n"
                      "(a plain LLaMA checkpoint) instead of factor pairs"},
      {O_OVERWRITE, NULL, "replace an existing --out, only if it is an earlier\n"
                          "svdllm output of yours (default: an existing --out is\n"
                          "refused); every input must be readable and --out's\n"
                          "parent writable by you"},
      {O_KEEP_CKPT, NULL, "keep the job's checkpoints once it is done (default:\n"
                          "its work directory is emptied on success)"},
      {O_EVAL_TEXT, "FILE", "measure perplexity and tokens/s before and after on\n"
                            "this text (default: no evaluation)"},
      {O_EVAL_SEQLEN, "L", "tokens per evaluation window (default 0 = --seqlen)"},
      {O_EVAL_MAX, "N", "evaluate at most N windows (default 0 = all)"},
      {0}},
     "Prints the job's id. With --json it prints the job object instead (one\n"
     "line; its \"id\" is the job's id: id=$(svdllmctl --json submit ... | jq .id)).\n"
     "The daemon checks the paths, the model and the parameters before it\n"
     "records the job; an error names the flag at fault.",
     cmd_submit},
    {"status", "JOB", "state, layer i/N, phase, ETA, peak RSS, perplexities", true, {0}, {{0}}, NULL, cmd_status},
    {"list", "[--state S] [--limit N]", "jobs, newest first, with their age and error", false, {0},
     {{O_STATE, "S", "only jobs in state S: queued | running | done |\n"
                     "failed | cancelled (default: all)"},
      {O_LIMIT, "N", "at most N jobs, 1..10000 (default 100)"},
      {0}},
     "AGE is the time since the job was submitted (s, m, h, d); a failed or\n"
     "cancelled job's error follows on an indented line.",
     cmd_list},
    {"watch", "JOB", "follow a job until it ends (exit 0 only if done)", true, {0}, {{0}},
     "A progress bar on a terminal, one line per change otherwise. Only the\n"
     "job's owner, root or svdllmd's user may watch it. Exit 0 if it ends done,\n"
     "1 if failed or cancelled.",
     cmd_watch},
    {"cancel", "JOB", "cancel a queued or running job (its checkpoints are kept)", true, {0}, {{0}},
     "A running job stops at its next safe point. Its checkpoints are kept, so\n"
     "svdllmctl resume JOB continues it; svdllmctl rm JOB deletes them.",
     cmd_cancel},
    {"resume", "JOB", "requeue a failed or cancelled job from its checkpoints", true, {0}, {{0}},
     "Owner or root only. It continues from its intact checkpoints to the same\n"
     "output as an uninterrupted run. Refused (invalid) when the model or\n"
     "calibration files changed since the job was submitted. A daemon restart\n"
     "does not retry failed jobs.",
     cmd_resume},
    {"rm", "JOB", "delete a finished job's work directory and record", true, {0}, {{0}},
     "For a done, failed or cancelled job; owner or root only. Its output\n"
     "directory is kept. A removed job cannot be resumed.",
     cmd_rm},
    {"eval", "--model DIR --text FILE [--seqlen L] [--max-windows N]", "perplexity of a model on a text", false,
     {O_MODEL, O_TEXT, 0},
     {{O_MODEL, "DIR", "model directory (an original or an svdllm output);\n"
                       "required"},
      {O_TEXT, "FILE", "the text (or .i32 token ids); required"},
      {O_SEQLEN, "L", "tokens per window, 2..65536 (default 128)"},
      {O_MAX_WINDOWS, "N", "evaluate at most N windows (default 0 = all)"},
      {0}},
     NULL, cmd_eval},
    {"generate", "--model DIR --prompt TEXT [--max-tokens N] [--temperature T] [--top-p P] [--seed S] [--no-bos]",
     "continue TEXT with the model; prints prompt and continuation", false, {O_MODEL, O_PROMPT, 0},
     {{O_MODEL, "DIR", "model directory (an original or an svdllm output);\n"
                       "required"},
      {O_PROMPT, "TEXT", "the text to continue; required (may be '': BOS alone),\n"
                         "at most 16384 bytes"},
      {O_MAX_TOKENS, "N", "new tokens, 1..4096 (default 256); stops earlier at\n"
                          "the model's EOS or a full context"},
      {O_TEMPERATURE, "T", "sampling temperature, 0..100 (default 0 = greedy)"},
      {O_TOP_P, "P", "top-p (nucleus) threshold, 0..1 (default 0.9; 0 or 1 =\n"
                     "the whole vocabulary)"},
      {O_SEED, "S", "sampling seed, >= 1 (default 1): the same seed gives\n"
                    "the same text"},
      {O_NO_BOS, NULL, "leave out the tokenizer's BOS (default: prepended)"},
      {0}},
     NULL, cmd_generate},
};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

static const char exit_status_text[] =
    "Exit status:\n"
    "  0  success (watch: the job ended done)\n"
    "  1  svdllmd refused the request (one line on stderr: its code and message,\n"
    "     e.g. not_found, exists, too_many_clients), or the watched job ended\n"
    "     failed or cancelled\n"
    "  2  usage error (unknown command or option, missing or malformed argument),\n"
    "     found before connecting\n"
    "  3  svdllmd unreachable: cannot connect, or the connection broke before\n"
    "     the reply (a retry may succeed)\n";

static void usage(FILE *f) {
    fputs("Usage: svdllmctl [--socket PATH] [--json] COMMAND [ARGS]\n"
          "       svdllmctl COMMAND --help | --help | --version\n"
          "\n"
          "Commands:\n", f);
    for (size_t i = 0; i < N_COMMANDS; i++) {
        const struct command *c = &commands[i];
        char head[160];
        snprintf(head, sizeof head, "%s%s%s", c->name, *c->synopsis ? " " : "", c->synopsis);
        if (strlen(head) <= 26)
            fprintf(f, "  %-26s  %s\n", head, c->summary);
        else
            fprintf(f, "  %s\n  %-26s  %s\n", head, "", c->summary);
    }
    /* sweep runs its own connections (client/sweep.c), outside the table. */
    fputs("  sweep --model DIR --methods M,M --ratios R,R --eval-text FILE\n"
          "        [--out-dir DIR] [--svg FILE] [submit options]\n"
          "                              a job per method and ratio, then a table and an SVG\n"
          "                              plot of perplexity against parameters kept\n"
          "                              (svdllmctl sweep --help)\n", f);
    fputs("\n"
          "  --socket PATH   daemon socket (default $SVDLLMD_SOCKET or " DEFAULT_SOCKET ")\n"
          "  --json          print the daemon's raw JSON messages, one per line (submit:\n"
          "                  the job object, whose \"id\" is the job's id)\n"
          "  --help          this text; after a command: that command's options, their\n"
          "                  units and defaults\n"
          "  --version       svdllmctl's version (svdllmctl version: the daemon's)\n"
          "\n", f);
    fputs(exit_status_text, f);
}

/* CMD --help: its synopsis, every option with its unit and default. */
static void usage_command(FILE *f, const struct command *c) {
    fprintf(f, "Usage: svdllmctl %s%s%s\n\nsvdllmctl %s: %s.\nGlobal options (--socket PATH, --json): svdllmctl --help.\n", c->name,
            *c->synopsis ? " " : "", c->synopsis, c->name, c->summary);
    if (c->takes_job)
        fputs("JOB is a job id (svdllmctl list shows them).\n", f);
    if (c->opts[0].id) {
        fputs("\nOptions:\n", f);
        for (const struct cmd_opt *o = c->opts; o->id; o++) {
            char head[64];
            snprintf(head, sizeof head, "--%s%s%s", opt_name(o->id), o->arg ? " " : "", o->arg ? o->arg : "");
            fprintf(f, "  %-20s  ", head);
            for (const char *p = o->help; *p; p++) {   /* continuation lines indented */
                fputc(*p, f);
                if (*p == '\n')
                    fprintf(f, "  %-20s  ", "");
            }
            fputc('\n', f);
        }
    }
    if (c->notes)
        fprintf(f, "\n%s\n", c->notes);
    fputs("\n", f);
    fputs(exit_status_text, f);
}

static const struct command *command_find(const char *name) {
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

static bool command_has_opt(const struct command *c, int id) {
    for (const struct cmd_opt *o = c->opts; o->id; o++)
        if (o->id == id)
            return true;
    return false;
}

/* ---- Errors in the command line's terms ------------------------------------------- */

/* If the protocol field named by s[0..n) is sent from one of the command's
 * options, writes that flag ("--eval-text") into flag and returns true. The
 * fields are the flags' names with '_' for '-'. */
static bool field_flag(const char *s, size_t n, char *flag, size_t flag_n) {
    if (!cur_cmd || n == 0 || n > 40)
        return false;
    char name[48];
    for (size_t i = 0; i < n; i++)
        name[i] = s[i] == '_' ? '-' : s[i];
    name[n] = '\0';
    for (const struct cmd_opt *o = cur_cmd->opts; o->id; o++)
        if (strcmp(opt_name(o->id), name) == 0) {
            snprintf(flag, flag_n, "--%s", name);
            return true;
        }
    return false;
}

static size_t field_len(const char *s) {
    size_t n = 0;
    while ((s[n] >= 'a' && s[n] <= 'z') || s[n] == '_')
        n++;
    return n;
}

/* The daemon's message with the fields it names shown as the flags that set
 * them: "field 'ratio': ..." and "missing field 'calib'" become "--ratio:
 * ..." and "missing --calib", a leading "out: " or "seqlen 4096 ..." gets
 * its flag, "set overwrite" becomes "use --overwrite". */
static void flag_message(const char *msg, char *out, size_t n) {
    size_t o = 0;
    const char *p = msg;
    char flag[64];
#define EMIT(str, len)                                                 \
    do {                                                               \
        size_t l_ = (len);                                             \
        if (o + l_ >= n)                                               \
            l_ = n - 1 - o;                                            \
        memcpy(out + o, (str), l_);                                    \
        o += l_;                                                       \
    } while (0)
    size_t lead = field_len(p);
    if (lead && (p[lead] == ':' || (p[lead] == ' ' && p[lead + 1] >= '0' && p[lead + 1] <= '9')) &&
        field_flag(p, lead, flag, sizeof flag)) {
        EMIT(flag, strlen(flag));
        p += lead;
    }
    while (*p && o + 1 < n) {
        static const char fq[] = "field '", mf[] = "missing field '";
        const char *pre = strncmp(p, mf, sizeof mf - 1) == 0 ? mf : strncmp(p, fq, sizeof fq - 1) == 0 ? fq : NULL;
        if (pre) {
            const char *f = p + strlen(pre);
            size_t fl = field_len(f);
            if (f[fl] == '\'' && field_flag(f, fl, flag, sizeof flag)) {
                if (pre == mf)
                    EMIT("missing ", 8);
                EMIT(flag, strlen(flag));
                p = f + fl + 1;
                continue;
            }
        }
        static const char so[] = "set overwrite", po[] = "pass overwrite";
        if (strncmp(p, so, sizeof so - 1) == 0 || strncmp(p, po, sizeof po - 1) == 0) {
            EMIT("use --overwrite", 15);
            p += *p == 's' ? sizeof so - 1 : sizeof po - 1;
            continue;
        }
        out[o++] = *p++;
    }
#undef EMIT
    out[o] = '\0';
}

/* One line on stderr for an error reply: "code: message", in flags. */
static void error_line(enum proto_code code, const char *msg) {
    char text[2 * SV_ERR_MSG_MAX];
    flag_message(msg, text, sizeof text);
    fail("%s: %s", proto_code_name(code), text);
    call_failure = EXIT_FAIL;
}

/* ---- main ------------------------------------------------------------------------- */

int main(int argc, char **argv) {
    /* A daemon that closes while we write must not kill us: we read its reply. */
    signal(SIGPIPE, SIG_IGN);
    if (sweep_is_command(argc, argv)) /* client/sweep.c: its own options and --help */
        return sweep_main(argc, argv, DEFAULT_SOCKET);
    const char *socket_path = getenv("SVDLLMD_SOCKET");
    if (!socket_path || !*socket_path)
        socket_path = DEFAULT_SOCKET;
    struct args a = {.nsamples = -1, .seqlen = -1, .seed = -1, .eval_seqlen = -1,
                     .eval_max_windows = -1, .max_windows = -1, .limit = -1, .layers = -1,
                     .max_tokens = -1};
    bool seen[O_END] = {0};
    bool want_help = false;
    const char *pos[3];
    int npos = 0;
    int opt, idx = 0;
    opterr = 0;
    /* Usage errors point at the command's own --help once one is named. */
    for (int i = 1; i < argc; i++)
        if (argv[i][0] != '-' && command_find(argv[i])) {
            char hint[64];
            snprintf(hint, sizeof hint, "svdllmctl %s --help", argv[i]);
            cli_usage_set("svdllmctl", hint);
            break;
        }
    /* '+': stop at each positional argument; take it and go on, so options
     * may come before or after the command. */
    while ((opt = getopt_long(argc, argv, "+:h", longopts, &idx)) != -1 || optind < argc) {
        if (opt == -1) {
            if (npos == 3)
                cli_die_usage("too many arguments");
            pos[npos++] = argv[optind++];
            continue;
        }
        cli_getopt_check(opt, argv);
        if (opt >= O_MODEL && opt < O_END) {
            if (seen[opt])
                cli_die_usage("option --%s given twice", opt_name(opt));
            seen[opt] = true;
        }
        switch (opt) {
        case O_SOCKET: socket_path = optarg; break;
        case O_JSON: opt_json = true; break;
        case 'h':
        case O_HELP: want_help = true; break;
        case O_VERSION: printf("svdllmctl %s\n", SV_VERSION); return EXIT_OK;
        case O_MODEL: a.model = optarg; break;
        case O_OUT: a.out = optarg; break;
        case O_METHOD: a.method = optarg; break;
        case O_RATIO: {
            /* The fraction removed: (0, 1) is checked here, before connecting. */
            char *end;
            errno = 0;
            a.ratio = strtod(optarg, &end);
            if (errno || end == optarg || *end)
                cli_die_usage("--ratio: '%s' is not a number", optarg);
            if (!(a.ratio > 0.0 && a.ratio < 1.0))
                cli_die_usage("--ratio: %s is outside (0, 1) (the fraction of parameters removed: 0.4 keeps 60 %%)",
                          optarg);
            a.has_ratio = true;
            break;
        }
        case O_ALPHA: {
            /* The range is the daemon's to check; JSON cannot carry nan or inf. */
            char *end;
            errno = 0;
            a.alpha = strtod(optarg, &end);
            if (errno || end == optarg || *end || !isfinite(a.alpha))
                cli_die_usage("--alpha: '%s' is not a number", optarg);
            a.has_alpha = true;
            break;
        }
        case O_RANKS: a.ranks = optarg; break;   /* the daemon knows the names */
        case O_LAYERS: a.layers = cli_parse_ll("layers", optarg, 0, 1024); break;
        case O_ATTN_SPLIT: {
            /* As --alpha: the range (0, 100] is the daemon's to check. */
            char *end;
            errno = 0;
            a.attn_split = strtod(optarg, &end);
            if (errno || end == optarg || *end || !isfinite(a.attn_split))
                cli_die_usage("--attn-split: '%s' is not a number", optarg);
            a.has_attn_split = true;
            break;
        }
        case O_CENTERED: a.centered = true; break;
        case O_CALIB: a.calib = optarg; break;
        case O_NSAMPLES: a.nsamples = cli_parse_ll("nsamples", optarg, 1, INT_MAX); break;
        case O_SEQLEN: a.seqlen = cli_parse_ll("seqlen", optarg, 1, INT_MAX); break;
        case O_SEED: a.seed = cli_parse_ll("seed", optarg, 0, PROTO_MAX_ID); break;
        case O_WINDOWS: a.calib_windows = optarg; break;
        case O_DENSE: a.dense = true; break;
        case O_OVERWRITE: a.overwrite = true; break;
        case O_KEEP_CKPT: a.keep_checkpoints = true; break;
        case O_EVAL_TEXT: a.eval_text = optarg; break;
        case O_EVAL_SEQLEN: a.eval_seqlen = cli_parse_ll("eval-seqlen", optarg, 0, INT_MAX); break;
        case O_EVAL_MAX: a.eval_max_windows = cli_parse_ll("eval-max-windows", optarg, 0, INT_MAX); break;
        case O_TEXT: a.text = optarg; break;
        case O_MAX_WINDOWS: a.max_windows = cli_parse_ll("max-windows", optarg, 0, INT_MAX); break;
        case O_STATE: a.state = optarg; break;
        case O_LIMIT: a.limit = cli_parse_ll("limit", optarg, 1, 10000); break;
        case O_PROMPT: a.prompt = optarg; break;
        case O_MAX_TOKENS: a.max_tokens = cli_parse_ll("max-tokens", optarg, 1, INT_MAX); break;
        case O_TEMPERATURE:
        case O_TOP_P: {
            /* The ranges are the daemon's to check; JSON cannot carry nan or inf. */
            char *end;
            errno = 0;
            double v = strtod(optarg, &end);
            if (errno || end == optarg || *end || !isfinite(v))
                cli_die_usage("--%s: '%s' is not a number", opt == O_TOP_P ? "top-p" : "temperature", optarg);
            if (opt == O_TOP_P)
                a.top_p = v, a.has_top_p = true;
            else
                a.temperature = v, a.has_temperature = true;
            break;
        }
        case O_NO_BOS: a.no_bos = true; break;
        default: cli_die_usage("unexpected option");
        }
    }
    /* "svdllmctl help [CMD]" is --help too. */
    if (npos >= 1 && strcmp(pos[0], "help") == 0) {
        want_help = true;
        memmove(pos, pos + 1, (size_t)--npos * sizeof *pos);
    }
    if (npos == 0) {
        usage(want_help ? stdout : stderr);
        return want_help ? EXIT_OK : EXIT_USAGE;
    }
    const struct command *cmd = command_find(pos[0]);
    if (!cmd)
        cli_die_usage("unknown command '%s'", pos[0]);
    if (want_help) {
        usage_command(stdout, cmd);
        return EXIT_OK;
    }
    for (int o = O_MODEL; o < O_END; o++)
        if (seen[o] && !command_has_opt(cmd, o))
            cli_die_usage("option --%s does not apply to '%s'", opt_name(o), cmd->name);
    if (cmd->takes_job && npos != 2)
        cli_die_usage("'%s' takes one job id", cmd->name);
    if (!cmd->takes_job && npos != 1)
        cli_die_usage("'%s' takes no arguments", cmd->name);
    a.job = cmd->takes_job ? parse_job(pos[1]) : 0;
    /* Local checks, before connecting: the required options, named. */
    for (int k = 0; cmd->required[k]; k++)
        if (!seen[cmd->required[k]]) {
            const struct cmd_opt *o = cmd->opts;
            while (o->id && o->id != cmd->required[k])
                o++;
            cli_die_usage("%s: --%s %s is required", cmd->name, opt_name(o->id), o->arg ? o->arg : "");
        }
    /* submit prints its own JSON (the job object), the others the raw messages. */
    json_raw = cmd->run != cmd_submit;
    cur_cmd = cmd;

    struct conn c;
    int rc = ctl_open(&c, socket_path);
    if (rc != 0)
        return rc;
    rc = cmd->run(&c, &a);
    conn_close(&c);
    return rc;
}
