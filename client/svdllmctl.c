/* svdllmctl: command-line client of svdllmd.
 *
 * One blocking Unix-socket connection per invocation, one request, its reply
 * (and, for watch, the events that follow), all through common/proto. Exit
 * status: 0 on success, 1 on any failure (with one line on stderr saying
 * why), 2 on a usage error. With --json every message received is printed
 * as one raw JSON line. Links neither BLIS nor the engine. */
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
#include <unistd.h>

#include "proto.h"

#define DEFAULT_SOCKET "/run/svdllmd/svdllmd.sock"

static bool opt_json;

static void die_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die_usage(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("svdllmctl: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs(" (see svdllmctl --help)\n", stderr);
    va_end(ap);
    exit(2);
}

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("svdllmctl: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

static void usage(FILE *f) {
    fputs("Usage: svdllmctl [--socket PATH] [--json] COMMAND [ARGS]\n"
          "\n"
          "Commands:\n"
          "  ping                      check that svdllmd answers\n"
          "  version                   daemon version, protocol, compute threads and methods\n"
          "  submit --model DIR --out DIR --ratio R\n"
          "         [--method svd|svdllm|asvd|awsvd|svdllm-update|rom|lorap]\n"
          "         [--ranks default|uniform|lorap|last-n|auto] [--layers N]\n"
          "         [--attn-split X] [--centered] [--alpha A]\n"
          "         [--calib FILE] [--nsamples N] [--seqlen L] [--seed S]\n"
          "         [--calib-windows random|first] [--dense] [--overwrite]\n"
          "         [--eval-text FILE] [--eval-seqlen L] [--eval-max-windows N]\n"
          "                            queue a compression job; prints its id\n"
          "                            (--ranks: rank allocation, default: lorap for\n"
          "                            method lorap, last-n with --layers, else uniform;\n"
          "                            --layers: last-n's count of final layers in\n"
          "                            [0, 1024], 0 = all; --attn-split: lorap's\n"
          "                            (v+o):(q+k) ratio in (0, 100], default 3;\n"
          "                            --centered: rom's centred output covariance;\n"
          "                            --alpha: asvd's exponent in (0, 4], default 0.5)\n"
          "  status JOB                state, layer i/N, phase, ETA, peak RSS, perplexities\n"
          "  list [--state S] [--limit N]\n"
          "                            jobs, newest first\n"
          "  watch JOB                 follow a job until it ends (exit 0 only if done)\n"
          "                            (another user's job: status and list show only its\n"
          "                            state, owner and progress; watch and cancel are\n"
          "                            forbidden unless you are root)\n"
          "  cancel JOB                cancel a queued or running job (its work directory\n"
          "                            is emptied: a cancelled job cannot be resumed)\n"
          "  resume JOB                requeue a failed job (owner or root): it continues\n"
          "                            from its intact checkpoints, e.g. once disk space is\n"
          "                            freed; a daemon restart does not retry failed jobs\n"
          "  eval --model DIR --text FILE [--seqlen L] [--max-windows N]\n"
          "                            perplexity of a model on a text\n"
          "  generate --model DIR --prompt TEXT [--max-tokens N] [--temperature T]\n"
          "           [--top-p P] [--seed S] [--no-bos]\n"
          "                            continue TEXT with the model and print prompt and\n"
          "                            continuation (N new tokens, default 256, at most\n"
          "                            4096; temperature 0, the default, is greedy; top-p\n"
          "                            default 0.9, 0 or 1 = off; seed default 1, >= 1)\n"
          "\n"
          "  --socket PATH   daemon socket (default $SVDLLMD_SOCKET or " DEFAULT_SOCKET ")\n"
          "  --json          print the daemon's raw JSON messages, one per line\n"
          "\n"
          "Exit status 0 on success, 1 on failure (one line on stderr: for a daemon error\n"
          "its code and message, e.g. too_many_clients when the daemon refuses the\n"
          "connection, even if it closed while the request was being written), 2 on a\n"
          "usage error.\n",
          f);
}

/* ---- Connection -------------------------------------------------------------- */

struct conn {
    int fd;
    struct proto_buf buf;
    const char *path;
};

static int conn_open(struct conn *c, const char *path) {
    c->path = path;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path)
        return fail("cannot connect to %s: path too long", path);
    memcpy(sa.sun_path, path, strlen(path) + 1);
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return fail("socket: %s", strerror(errno));
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int e = errno;
        close(c->fd);
        return fail("cannot connect to %s: %s (is svdllmd running?)", path, strerror(e));
    }
    if (proto_buf_init(&c->buf, PROTO_MAX_MSG + 1) < 0) {
        close(c->fd);
        return fail("out of memory");
    }
    return 0;
}

static void conn_close(struct conn *c) {
    close(c->fd);
    proto_buf_free(&c->buf);
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
 * reason printed. */
static int conn_read(struct conn *c, json_t **ret) {
    struct proto_error e = {0};
    int r = proto_read_msg(c->fd, &c->buf, ret, &e);
    if (r == 0) {
        fail("%s: svdllmd closed the connection (is it shutting down?)", c->path);
        return 0;
    }
    if (r < 0) {
        fail("%s: %s", c->path, e.msg);
        return 0;
    }
    if (opt_json)
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

/* Sends req (consumed) and reads its reply. Returns the reply, or NULL with
 * the reason printed (an error reply is printed as "code: message"). */
static json_t *call(struct conn *c, json_t *req) {
    struct proto_error e = {0};
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
            fail("%s: %s", c->path, e.msg);
            return NULL;
        }
        if (opt_json)
            print_json(reply);
        struct proto_error re = {0};
        if (proto_reply_is_error(reply, &re))
            fail("%s: %s", proto_code_name(re.code), re.msg);
        else
            fail("%s: %s", c->path, e.msg);   /* not an answer to a request never sent whole */
        json_decref(reply);
        return NULL;
    }
    if (!conn_read(c, &reply))
        return NULL;
    if (proto_reply_is_error(reply, &e)) {
        if (!opt_json)
            fail("%s: %s", proto_code_name(e.code), e.msg);
        else
            fprintf(stderr, "svdllmctl: %s: %s\n", proto_code_name(e.code), e.msg);
        json_decref(reply);
        return NULL;
    }
    return reply;
}

/* ---- Formatting ---------------------------------------------------------------- */

static const char *jstr(json_t *o, const char *k) {
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

static long long jint(json_t *o, const char *k) {
    return (long long)json_integer_value(json_object_get(o, k));
}

static double jnum(json_t *o, const char *k, double dflt) {
    json_t *v = json_object_get(o, k);
    return json_is_number(v) ? json_number_value(v) : dflt;
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
    const char *phase = jstr(job, "phase");
    double f = jnum(job, "fraction", 0) * 100.0;
    if (nl <= 0)
        snprintf(out, n, "%s%s%.1f%%", phase, *phase ? ", " : "", f);
    else if (json_is_integer(layer) && strcmp(jstr(job, "state"), "running") == 0)
        snprintf(out, n, "layer %lld/%lld%s%s, %.1f%%",
                 (long long)json_integer_value(layer) + (json_integer_value(layer) < nl), nl,
                 *phase ? ", " : "", phase, f);
    else
        snprintf(out, n, "%lld/%lld layers done, %.1f%%", done, nl, f);
}

static void print_status(json_t *job) {
    char buf[256];
    printf("job %lld: %s\n", jint(job, "id"), jstr(job, "state"));
    if (json_is_true(json_object_get(job, "restricted"))) {
        /* Another user's job: svdllmd shows only that it exists. */
        printf("  owner       uid %lld (its details are shown to it and root only)\n", jint(job, "owner_uid"));
        fmt_progress(buf, sizeof buf, job);
        printf("  progress    %s\n", buf);
        return;
    }
    printf("  method      %s, ratio %g", jstr(job, "method"), jnum(job, "ratio", 0));
    if (json_is_number(json_object_get(job, "alpha")))   /* asvd jobs only */
        printf(", alpha %g", jnum(job, "alpha", 0));
    if (json_is_true(json_object_get(job, "centered")))
        printf(", centered");
    printf("\n");
    /* The rank rule, when it is not the plain default. */
    const char *ranks = jstr(job, "ranks");
    bool has_layers = json_is_integer(json_object_get(job, "layers"));
    bool has_split = json_is_number(json_object_get(job, "attn_split"));
    if ((*ranks && strcmp(ranks, "default") != 0) || has_layers || has_split) {
        printf("  ranks       %s", *ranks ? ranks : "default");
        if (has_layers)
            printf(", last %lld layers", jint(job, "layers"));
        if (has_split)
            printf(", attn_split %g", jnum(job, "attn_split", 0));
        printf("\n");
    }
    printf("  model       %s\n", jstr(job, "model"));
    printf("  out         %s\n", jstr(job, "out"));
    if (*jstr(job, "calib"))
        printf("  calib       %s (%lld x %lld tokens, %s windows, seed %lld)\n", jstr(job, "calib"),
               jint(job, "nsamples"), jint(job, "seqlen"), jstr(job, "calib_windows"), jint(job, "seed"));
    fmt_progress(buf, sizeof buf, job);
    printf("  progress    %s\n", buf);
    if (strcmp(jstr(job, "state"), "running") == 0) {
        fmt_duration(buf, sizeof buf, jnum(job, "eta_s", -1));
        printf("  eta         %s\n", buf);
        fmt_duration(buf, sizeof buf, jnum(job, "elapsed_s", -1));
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
        double b = jnum(res, "ppl_before", 0), a = jnum(res, "ppl_after", 0);
        if (b > 0 || a > 0)
            printf("  perplexity  %.4g -> %.4g\n", b, a);
        double sb = jnum(res, "tokens_per_s_before", 0), sa = jnum(res, "tokens_per_s_after", 0);
        if (sb > 0 && sa > 0)
            printf("  speed       %.0f -> %.0f tokens/s (x%.2f, evaluation forward pass)\n", sb, sa, sa / sb);
        long long pb = jint(res, "params_before"), pa = jint(res, "params_after");
        if (pb > 0)
            printf("  params      %lld -> %lld (%.1f%% removed)\n", pb, pa, 100.0 * (double)(pb - pa) / (double)pb);
        fmt_duration(buf, sizeof buf, jnum(res, "seconds", -1));
        printf("  time        %s (%lld layers resumed from checkpoints)\n", buf, jint(res, "layers_resumed"));
    }
    if (*jstr(job, "error"))
        printf("  error       %s\n", jstr(job, "error"));
}

/* ---- Commands --------------------------------------------------------------------- */

struct args {
    const char *model, *out, *method, *ranks, *calib, *calib_windows, *eval_text, *text, *state;
    double ratio, alpha, attn_split;
    bool has_ratio, has_alpha, has_attn_split, dense, overwrite, centered;
    long long nsamples, seqlen, seed, eval_seqlen, eval_max_windows, max_windows, limit, layers;
    /* generate */
    const char *prompt;
    long long max_tokens;
    double temperature, top_p;
    bool has_temperature, has_top_p, no_bos;
};

static long long parse_ll(const char *opt, const char *v, long long min, long long max) {
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end || x < min || x > max)
        die_usage("--%s: '%s' is not an integer in [%lld, %lld]", opt, v, min, max);
    return x;
}

static long long parse_job(const char *v) {
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end || x < 1)
        die_usage("'%s' is not a job id", v);
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
        exit(1);
    }
    size_t n = strlen(cwd) + strlen(p) + 2;
    char *s = malloc(n);
    if (!s)
        exit(1);
    snprintf(s, n, "%s/%s", cwd, p);
    json_t *v = proto_str(s);
    free(s);
    return v;
}

static int cmd_simple(struct conn *c, const char *op) {
    json_t *r = call(c, proto_request_new(1, op));
    if (!r)
        return 1;
    if (!opt_json) {
        if (strcmp(op, "ping") == 0)
            printf("svdllmd at %s is alive\n", c->path);
        else {
            printf("svdllmd %s, protocol %lld, threads %lld, methods:", jstr(r, "version"), jint(r, "protocol"),
                   jint(r, "threads"));
            size_t i;
            json_t *m;
            json_array_foreach(json_object_get(r, "methods"), i, m)
                printf(" %s", json_string_value(m));
            printf("\n");
        }
    }
    json_decref(r);
    return 0;
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
    if (a->eval_text)
        json_object_set_new(q, "eval_text", abs_path(a->eval_text));
    if (a->eval_seqlen >= 0)
        proto_set_int(q, "eval_seqlen", a->eval_seqlen);
    if (a->eval_max_windows >= 0)
        proto_set_int(q, "eval_max_windows", a->eval_max_windows);
    json_t *r = call(c, q);
    if (!r)
        return 1;
    if (!opt_json)
        printf("%lld\n", jint(json_object_get(r, "job"), "id"));
    json_decref(r);
    return 0;
}

static json_t *job_request(const char *op, long long job) {
    json_t *q = proto_request_new(1, op);
    proto_set_int(q, "job", job);
    return q;
}

static int cmd_status(struct conn *c, long long job) {
    json_t *r = call(c, job_request("status", job));
    if (!r)
        return 1;
    if (!opt_json)
        print_status(json_object_get(r, "job"));
    json_decref(r);
    return 0;
}

static int cmd_list(struct conn *c, const struct args *a) {
    json_t *q = proto_request_new(1, "list");
    if (a->state)
        proto_set_str(q, "state", a->state);
    if (a->limit > 0)
        proto_set_int(q, "limit", a->limit);
    json_t *r = call(c, q);
    if (!r)
        return 1;
    if (!opt_json) {
        json_t *jobs = json_object_get(r, "jobs");
        if (json_array_size(jobs) == 0)
            printf("no jobs\n");
        else
            printf("%6s  %-9s  %-13s  %5s  %-8s  %s\n", "ID", "STATE", "METHOD", "RATIO", "LAYERS", "MODEL -> OUT");
        size_t i;
        json_t *j;
        json_array_foreach(jobs, i, j) {
            char layers[32];
            snprintf(layers, sizeof layers, "%lld/%lld", jint(j, "layers_done"), jint(j, "n_layers"));
            if (json_is_true(json_object_get(j, "restricted")))   /* another user's */
                printf("%6lld  %-9s  %-13s  %5s  %-8s  (uid %lld's job)\n", jint(j, "id"), jstr(j, "state"), "-",
                       "-", layers, jint(j, "owner_uid"));
            else
                printf("%6lld  %-9s  %-13s  %5.2f  %-8s  %s -> %s\n", jint(j, "id"), jstr(j, "state"),
                       jstr(j, "method"), jnum(j, "ratio", 0), layers, jstr(j, "model"), jstr(j, "out"));
        }
        if (json_is_true(json_object_get(r, "truncated")))
            printf("(more jobs not shown)\n");
    }
    json_decref(r);
    return 0;
}

static void draw_bar(json_t *job, bool tty, char *last, size_t last_n) {
    char prog[160], eta[32], line[320];
    fmt_progress(prog, sizeof prog, job);
    const char *state = jstr(job, "state");
    if (tty) {
        enum { W = 24 };
        double f = jnum(job, "fraction", 0);
        int fill = (int)(f * W + 0.5);
        char bar[W + 1];
        for (int i = 0; i < W; i++)
            bar[i] = i < fill ? '#' : '-';
        bar[W] = '\0';
        fmt_duration(eta, sizeof eta, jnum(job, "eta_s", -1));
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

static int cmd_watch(struct conn *c, long long job) {
    json_t *r = call(c, job_request("watch", job));
    if (!r)
        return 1;
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
            return 1;
        }
        const char *name = jstr(ev, "event");
        json_t *j = json_object_get(ev, "job");
        if (strcmp(name, "end") == 0) {
            const char *state = jstr(ev, "state");
            int rc = strcmp(state, "done") == 0 ? 0 : 1;
            if (!opt_json) {
                if (tty)
                    putchar('\n');
                json_t *res = json_object_get(j, "result");
                if (rc == 0 && res && jnum(res, "ppl_after", 0) > 0)
                    printf("job %lld: done (perplexity %.4g -> %.4g)\n", job, jnum(res, "ppl_before", 0),
                           jnum(res, "ppl_after", 0));
                else if (rc == 0)
                    printf("job %lld: done\n", job);
            }
            if (rc != 0)
                fail("job %lld %s%s%s", job, state, *jstr(j, "error") ? ": " : "", jstr(j, "error"));
            json_decref(ev);
            return rc;
        }
        if (!opt_json && j)
            draw_bar(j, tty, last, sizeof last);
        json_decref(ev);
    }
}

static int cmd_cancel(struct conn *c, long long job) {
    json_t *r = call(c, job_request("cancel", job));
    if (!r)
        return 1;
    if (!opt_json) {
        if (strcmp(jstr(r, "state"), "cancelling") == 0)
            printf("job %lld: cancelling (it stops at its next safe point)\n", job);
        else
            printf("job %lld: cancelled\n", job);
    }
    json_decref(r);
    return 0;
}

static int cmd_resume(struct conn *c, long long job) {
    json_t *r = call(c, job_request("resume", job));
    if (!r)
        return 1;
    if (!opt_json)
        printf("job %lld: %s (resumes from %lld checkpointed layers)\n", job,
               jstr(json_object_get(r, "job"), "state"), jint(json_object_get(r, "job"), "layers_done"));
    json_decref(r);
    return 0;
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
        return 1;
    if (!opt_json)
        printf("perplexity %.4f (mean NLL %.4f; %lld windows of %lld tokens, %lld predictions, %.1f s)\n",
               jnum(r, "ppl", 0), jnum(r, "mean_nll", 0), jint(r, "windows"), jint(r, "seqlen"),
               jint(r, "predicted"), jnum(r, "seconds", 0));
    json_decref(r);
    return 0;
}

/* generate: the daemon answers when the whole text is there; printed with a
 * final newline (as svdllm-engine generate and llama2.c's run do). */
static int cmd_generate(struct conn *c, const struct args *a) {
    if (!a->model || !a->prompt)
        die_usage("generate needs --model and --prompt (which may be '')");
    json_t *q = proto_request_new(1, "generate");
    json_object_set_new(q, "model", abs_path(a->model));
    json_object_set_new(q, "prompt", json_string(a->prompt));
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
        return 1;
    if (!opt_json) {
        json_t *t = json_object_get(r, "text");
        fwrite(json_string_value(t) ? json_string_value(t) : "", 1, json_string_length(t), stdout);
        putchar('\n');
    }
    json_decref(r);
    return 0;
}

/* ---- main ------------------------------------------------------------------------- */

enum {
    O_SOCKET = 256, O_JSON, O_HELP, O_MODEL, O_OUT, O_METHOD, O_RATIO, O_CALIB, O_NSAMPLES,
    O_SEQLEN, O_SEED, O_WINDOWS, O_DENSE, O_OVERWRITE, O_EVAL_TEXT, O_EVAL_SEQLEN,
    O_EVAL_MAX, O_TEXT, O_MAX_WINDOWS, O_STATE, O_LIMIT, O_ALPHA, O_RANKS, O_LAYERS,
    O_ATTN_SPLIT, O_CENTERED, O_PROMPT, O_MAX_TOKENS, O_TEMPERATURE, O_TOP_P, O_NO_BOS, O_END
};

/* Which options each command accepts (besides --socket, --json). */
static const struct {
    const char *name;
    int opts[24];
} commands[] = {
    {"ping", {0}},
    {"version", {0}},
    {"submit", {O_MODEL, O_OUT, O_METHOD, O_RATIO, O_CALIB, O_NSAMPLES, O_SEQLEN, O_SEED, O_WINDOWS,
                O_DENSE, O_OVERWRITE, O_EVAL_TEXT, O_EVAL_SEQLEN, O_EVAL_MAX, O_ALPHA, O_RANKS, O_LAYERS, O_ATTN_SPLIT,
                O_CENTERED, 0}},
    {"status", {0}},
    {"list", {O_STATE, O_LIMIT, 0}},
    {"watch", {0}},
    {"cancel", {0}},
    {"resume", {0}},
    {"eval", {O_MODEL, O_TEXT, O_SEQLEN, O_MAX_WINDOWS, 0}},
    {"generate", {O_MODEL, O_PROMPT, O_MAX_TOKENS, O_TEMPERATURE, O_TOP_P, O_SEED, O_NO_BOS, 0}},
};

int main(int argc, char **argv) {
    static const struct option longopts[] = {
        {"socket", required_argument, NULL, O_SOCKET},
        {"json", no_argument, NULL, O_JSON},
        {"help", no_argument, NULL, O_HELP},
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
    /* A daemon that closes while we write must not kill us: we read its reply. */
    signal(SIGPIPE, SIG_IGN);
    const char *socket_path = getenv("SVDLLMD_SOCKET");
    if (!socket_path || !*socket_path)
        socket_path = DEFAULT_SOCKET;
    struct args a = {.nsamples = -1, .seqlen = -1, .seed = -1, .eval_seqlen = -1,
                     .eval_max_windows = -1, .max_windows = -1, .limit = -1, .layers = -1, .max_tokens = -1};
    bool seen[O_END] = {0};
    const char *seen_name[O_END] = {0};
    const char *pos[3];
    int npos = 0;
    int opt, idx = 0;
    opterr = 0;
    /* '+': stop at each positional argument; take it and go on, so options
     * may come before or after the command. */
    while ((opt = getopt_long(argc, argv, "+:h", longopts, &idx)) != -1 || optind < argc) {
        if (opt == -1) {
            if (npos == 3)
                die_usage("too many arguments");
            pos[npos++] = argv[optind++];
            continue;
        }
        if (opt == '?')
            die_usage("unknown option '%s'", argv[optind - 1]);
        if (opt == ':')
            die_usage("option '%s' needs a value", argv[optind - 1]);
        if (opt >= O_MODEL && opt < O_END) {
            if (seen[opt])
                die_usage("option --%s given twice", longopts[idx].name);
            seen[opt] = true;
            seen_name[opt] = longopts[idx].name;
        }
        switch (opt) {
        case O_SOCKET: socket_path = optarg; break;
        case O_JSON: opt_json = true; break;
        case 'h':
        case O_HELP: usage(stdout); return 0;
        case O_MODEL: a.model = optarg; break;
        case O_OUT: a.out = optarg; break;
        case O_METHOD: a.method = optarg; break;
        case O_RATIO: {
            char *end;
            errno = 0;
            a.ratio = strtod(optarg, &end);
            if (errno || end == optarg || *end)
                die_usage("--ratio: '%s' is not a number", optarg);
            a.has_ratio = true;
            break;
        }
        case O_ALPHA: {
            /* The range is the daemon's to check; JSON cannot carry nan or inf. */
            char *end;
            errno = 0;
            a.alpha = strtod(optarg, &end);
            if (errno || end == optarg || *end || !isfinite(a.alpha))
                die_usage("--alpha: '%s' is not a number", optarg);
            a.has_alpha = true;
            break;
        }
        case O_RANKS: a.ranks = optarg; break;   /* the daemon knows the names */
        case O_LAYERS: a.layers = parse_ll("layers", optarg, 0, 1024); break;
        case O_ATTN_SPLIT: {
            /* As --alpha: the range (0, 100] is the daemon's to check. */
            char *end;
            errno = 0;
            a.attn_split = strtod(optarg, &end);
            if (errno || end == optarg || *end || !isfinite(a.attn_split))
                die_usage("--attn-split: '%s' is not a number", optarg);
            a.has_attn_split = true;
            break;
        }
        case O_CENTERED: a.centered = true; break;
        case O_CALIB: a.calib = optarg; break;
        case O_NSAMPLES: a.nsamples = parse_ll("nsamples", optarg, 1, INT_MAX); break;
        case O_SEQLEN: a.seqlen = parse_ll("seqlen", optarg, 1, INT_MAX); break;
        case O_SEED: a.seed = parse_ll("seed", optarg, 0, PROTO_MAX_ID); break;
        case O_WINDOWS: a.calib_windows = optarg; break;
        case O_DENSE: a.dense = true; break;
        case O_OVERWRITE: a.overwrite = true; break;
        case O_EVAL_TEXT: a.eval_text = optarg; break;
        case O_EVAL_SEQLEN: a.eval_seqlen = parse_ll("eval-seqlen", optarg, 0, INT_MAX); break;
        case O_EVAL_MAX: a.eval_max_windows = parse_ll("eval-max-windows", optarg, 0, INT_MAX); break;
        case O_TEXT: a.text = optarg; break;
        case O_MAX_WINDOWS: a.max_windows = parse_ll("max-windows", optarg, 0, INT_MAX); break;
        case O_STATE: a.state = optarg; break;
        case O_LIMIT: a.limit = parse_ll("limit", optarg, 1, 10000); break;
        case O_PROMPT: a.prompt = optarg; break;
        case O_MAX_TOKENS: a.max_tokens = parse_ll("max-tokens", optarg, 1, INT_MAX); break;
        case O_TEMPERATURE:
        case O_TOP_P: {
            /* The ranges are the daemon's to check; JSON cannot carry nan or inf. */
            char *end;
            errno = 0;
            double v = strtod(optarg, &end);
            if (errno || end == optarg || *end || !isfinite(v))
                die_usage("--%s: '%s' is not a number", opt == O_TOP_P ? "top-p" : "temperature", optarg);
            if (opt == O_TOP_P)
                a.top_p = v, a.has_top_p = true;
            else
                a.temperature = v, a.has_temperature = true;
            break;
        }
        case O_NO_BOS: a.no_bos = true; break;
        default: die_usage("unexpected option");
        }
    }
    if (npos == 0) {
        usage(stderr);
        return 2;
    }
    size_t ci = 0;
    while (ci < sizeof commands / sizeof commands[0] && strcmp(commands[ci].name, pos[0]) != 0)
        ci++;
    if (ci == sizeof commands / sizeof commands[0])
        die_usage("unknown command '%s'", pos[0]);
    for (int o = O_MODEL; o < O_END; o++) {
        if (!seen[o])
            continue;
        bool ok = false;
        for (int k = 0; commands[ci].opts[k]; k++)
            ok |= commands[ci].opts[k] == o;
        if (!ok)
            die_usage("option --%s does not apply to '%s'", seen_name[o], pos[0]);
    }
    const char *cmd = pos[0];
    bool takes_job = !strcmp(cmd, "status") || !strcmp(cmd, "watch") || !strcmp(cmd, "cancel") ||
                     !strcmp(cmd, "resume");
    if (takes_job && npos != 2)
        die_usage("'%s' takes one job id", cmd);
    if (!takes_job && npos != 1)
        die_usage("'%s' takes no arguments", cmd);
    long long job = takes_job ? parse_job(pos[1]) : 0;

    struct conn c;
    if (conn_open(&c, socket_path) != 0)
        return 1;
    int rc;
    if (!strcmp(cmd, "ping") || !strcmp(cmd, "version"))
        rc = cmd_simple(&c, cmd);
    else if (!strcmp(cmd, "submit"))
        rc = cmd_submit(&c, &a);
    else if (!strcmp(cmd, "status"))
        rc = cmd_status(&c, job);
    else if (!strcmp(cmd, "list"))
        rc = cmd_list(&c, &a);
    else if (!strcmp(cmd, "watch"))
        rc = cmd_watch(&c, job);
    else if (!strcmp(cmd, "cancel"))
        rc = cmd_cancel(&c, job);
    else if (!strcmp(cmd, "resume"))
        rc = cmd_resume(&c, job);
    else if (!strcmp(cmd, "generate"))
        rc = cmd_generate(&c, &a);
    else
        rc = cmd_eval(&c, &a);
    conn_close(&c);
    return rc;
}
