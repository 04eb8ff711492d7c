/* sweep: `svdllmctl sweep`, the trade-off between size and quality in one
 * command.
 *
 * Order of work, and why:
 *  1. `version`: every --methods name must be one the daemon accepts, so no
 *     job is queued for a sweep that cannot be completed.
 *  2. a one-window `eval` of the original on the evaluation text: the text
 *     exists, tokenizes and holds a window, checked in seconds instead of
 *     after the last job.
 *  3. every job is submitted (without eval_text) before any is watched, so
 *     the daemon checks them all up front; if one is refused, those already
 *     queued are cancelled and nothing is left half done.
 *  4. each job is watched to its end, in order (the daemon runs one at a
 *     time, oldest first).
 *  5. the original and then every output are evaluated with `eval`, one
 *     after another once the jobs have ended: the original is evaluated once
 *     per sweep instead of once per job (a job with eval_text measures it
 *     again every time), and every tokens/s figure is measured the same way,
 *     with no job of the sweep competing for the cores.
 * The daemon keeps no calibration statistics between jobs, so each job
 * calibrates on its own (see the README: svdllm's Grams do not depend on the
 * ratio and could be shared; rom's and svdllm-update's do).
 *
 * One blocking connection per request (a watch keeps its own until the
 * job's `end`). Progress goes to stderr, the table (or, with --json, one
 * JSON object) to stdout; OUT_DIR/sweep.json and the SVG are written by the
 * client with the user's rights. Runs on the client's only thread. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "cli.h"
#include "conn.h"
#include "proto.h"
#include "svg.h"
#include "sweep.h"

#define MAX_METHODS 16
#define MAX_RATIOS 32

bool sweep_is_command(int argc, char **argv) {
    bool help = false;   /* "svdllmctl help sweep" */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--socket") == 0) {
            i++;
            continue;
        }
        if (argv[i][0] == '-')
            continue;
        if (!help && strcmp(argv[i], "help") == 0) {
            help = true;
            continue;
        }
        return strcmp(argv[i], "sweep") == 0;
    }
    return false;
}

static void sweep_usage(FILE *f) {
    fputs("Usage: svdllmctl [--socket PATH] [--json] sweep --model DIR --methods M[,M...]\n"
          "         --ratios R[,R...] --eval-text FILE [--out-dir DIR] [--svg FILE]\n"
          "         [--eval-seqlen L] [--eval-max-windows N] [submit options]\n"
          "\n"
          "Compresses the model once per method and ratio through svdllmd, evaluates the\n"
          "original and every output on the text, prints a table of perplexity, decoder-\n"
          "linear parameters kept and CPU tokens/s (the evaluation's forward pass), and\n"
          "draws perplexity against parameters kept as an SVG (one line per method and\n"
          "the original's point; log scale when the perplexities span more than 10x).\n"
          "\n"
          "  --model DIR          the original model (required)\n"
          "  --methods LIST       comma-separated methods, at most 16 (required)\n"
          "  --ratios LIST        comma-separated fractions of decoder-linear parameters\n"
          "                       removed, each in (0, 1), at most 32 (required)\n"
          "  --eval-text FILE     perplexity text (required)\n"
          "  --eval-seqlen L      tokens per evaluation window; default 0: --seqlen, or\n"
          "                       the daemon's default of 128\n"
          "  --eval-max-windows N at most N evaluation windows; default 0: all\n"
          "  --out-dir DIR        where the outputs go, as DIR/METHOD-RATIO, with\n"
          "                       DIR/sweep.json (the table); created if absent (its\n"
          "                       parent must exist); default ./MODEL-sweep\n"
          "  --svg FILE           the plot; default DIR/sweep.svg\n"
          "  submit options       passed to every job: --calib --nsamples --seqlen --seed\n"
          "                       --calib-windows --ranks --layers --attn-split --centered\n"
          "                       --alpha --dense --overwrite (see svdllmctl --help)\n"
          "  --json               print the table as one JSON object (as in sweep.json)\n"
          "\n"
          "Progress goes to stderr. Interrupting svdllmctl leaves queued jobs to the\n"
          "daemon (svdllmctl cancel them).\n"
          "\n"
          "Exit status:\n"
          "  0  every job done and evaluated\n"
          "  1  a job or an evaluation failed (the table says which)\n"
          "  2  usage error, found before connecting\n"
          "  3  svdllmd unreachable at the start (nothing was queued)\n",
          f);
}

static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void note(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("sweep: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ---- Connection ------------------------------------------------------------------- */

/* The next message, or <0 with err set (an error reply is "code: message"). */
static int conn_next(struct conn *c, json_t **ret, struct sv_err *err) {
    struct proto_error e = {0};
    json_t *m = NULL;
    int r = proto_read_msg(c->fd, &c->buf, &m, &e);
    if (r == 0)
        return sv_err_set(err, -ECONNRESET, "%s: svdllmd closed the connection (is it shutting down?)", c->path);
    if (r < 0)
        return sv_err_set(err, -EIO, "%s: %s", c->path, e.msg);
    if (proto_reply_is_error(m, &e)) {
        sv_err_set(err, -EPROTO, "%s: %s", proto_code_name(e.code), e.msg);
        json_decref(m);
        return -EPROTO;
    }
    *ret = m;
    return 0;
}

/* Sends req (consumed) on c and reads its reply. */
static int conn_call(struct conn *c, json_t *req, json_t **ret, struct sv_err *err) {
    struct proto_error e = {0};
    int r = proto_write_msg(c->fd, req, &e);
    json_decref(req);
    if (r < 0) {
        /* The daemon may have refused us and closed (too_many_clients):
         * its reply is the better reason, when there is one. */
        if (conn_next(c, ret, err) == -EPROTO)
            return -EPROTO;
        return sv_err_set(err, -EIO, "%s: %s", c->path, e.msg);
    }
    return conn_next(c, ret, err);
}

/* One request on a connection of its own. */
static int request(const char *path, json_t *req, json_t **ret, struct sv_err *err) {
    struct conn c;
    int r = conn_open(&c, path, err);
    if (r < 0) {
        json_decref(req);
        return r;
    }
    r = conn_call(&c, req, ret, err);
    conn_close(&c);
    return r;
}

/* ---- Values ----------------------------------------------------------------------- */

/* Absolute form of p (the daemon runs elsewhere); malloc'd. */
static char *abs_path(const char *p) {
    if (p[0] == '/')
        return strdup(p);
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd))
        return NULL;
    size_t n = strlen(cwd) + strlen(p) + 2;
    char *s = malloc(n);
    if (s)
        snprintf(s, n, "%s/%s", cwd, p);
    return s;
}

static char *must_abs(const char *p) {
    char *s = abs_path(p);
    if (!s) {
        fprintf(stderr, "svdllmctl sweep: %s: %s\n", p, strerror(errno));
        exit(1);
    }
    return s;
}

static const char *base_name(const char *p) {
    size_t n = strlen(p);
    while (n > 1 && p[n - 1] == '/')
        n--;
    const char *s = p + n;
    while (s > p && s[-1] != '/')
        s--;
    return s;
}

/* The last path component without trailing slashes, copied into buf. */
static const char *leaf(char *buf, size_t n, const char *p) {
    snprintf(buf, n, "%s", base_name(p));
    size_t k = strlen(buf);
    while (k > 1 && buf[k - 1] == '/')
        buf[--k] = '\0';
    return buf;
}

/* ---- The sweep -------------------------------------------------------------------- */

struct run {
    const char *method;
    double ratio;
    char *out;               /* absolute */
    long long job;           /* 0: not submitted */
    char state[16];          /* "done", "failed", "cancelled", or "" while unknown */
    char error[SV_ERR_MSG_MAX];
    long long params_before, params_after;
    double seconds;          /* the job's own time */
    double ppl, tok_s;       /* NAN until evaluated */
};

struct sweep {
    const char *socket;
    bool json;
    char *model, *eval_text, *out_dir, *svg;
    const char *methods[MAX_METHODS];
    int n_methods;
    double ratios[MAX_RATIOS];
    int n_ratios;
    long long eval_seqlen, eval_max_windows, seqlen;
    json_t *extra;           /* the submit fields passed through */
    char *lists[2];          /* the --methods and --ratios copies methods[] point into */
    struct run *runs;
    int n_runs;
    double orig_ppl, orig_tok_s;
    long long orig_windows, orig_seqlen;
    long long orig_params;
};

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void parse_methods(struct sweep *s, char *list) {
    for (char *save = NULL, *m = strtok_r(list, ",", &save); m; m = strtok_r(NULL, ",", &save)) {
        if (s->n_methods == MAX_METHODS)
            cli_die_usage("--methods: more than %d methods", MAX_METHODS);
        for (int i = 0; i < s->n_methods; i++)
            if (strcmp(s->methods[i], m) == 0)
                cli_die_usage("--methods: '%s' given twice", m);
        s->methods[s->n_methods++] = m;
    }
    if (s->n_methods == 0)
        cli_die_usage("--methods: no method given");
}

static void parse_ratios(struct sweep *s, char *list) {
    for (char *save = NULL, *v = strtok_r(list, ",", &save); v; v = strtok_r(NULL, ",", &save)) {
        if (s->n_ratios == MAX_RATIOS)
            cli_die_usage("--ratios: more than %d ratios", MAX_RATIOS);
        double x = cli_parse_num("ratios", v);
        if (!(x > 0 && x < 1))
            cli_die_usage("--ratios: %s is not in (0, 1) (the fraction of parameters removed)", v);
        for (int i = 0; i < s->n_ratios; i++)
            if (s->ratios[i] == x)
                cli_die_usage("--ratios: %s given twice", v);
        s->ratios[s->n_ratios++] = x;
    }
    if (s->n_ratios == 0)
        cli_die_usage("--ratios: no ratio given");
    qsort(s->ratios, (size_t)s->n_ratios, sizeof s->ratios[0], cmp_double);
}

enum {
    S_SOCKET = 256, S_JSON, S_HELP, S_MODEL, S_METHODS, S_RATIOS, S_EVAL_TEXT, S_EVAL_SEQLEN, S_EVAL_MAX,
    S_OUT_DIR, S_SVG, S_CALIB, S_NSAMPLES, S_SEQLEN, S_SEED, S_WINDOWS, S_RANKS, S_LAYERS, S_ATTN_SPLIT,
    S_CENTERED, S_ALPHA, S_DENSE, S_OVERWRITE, S_END
};

static void parse_args(struct sweep *s, int argc, char **argv) {
    static const struct option longopts[] = {
        {"socket", required_argument, NULL, S_SOCKET},
        {"json", no_argument, NULL, S_JSON},
        {"help", no_argument, NULL, S_HELP},
        {"model", required_argument, NULL, S_MODEL},
        {"methods", required_argument, NULL, S_METHODS},
        {"ratios", required_argument, NULL, S_RATIOS},
        {"eval-text", required_argument, NULL, S_EVAL_TEXT},
        {"eval-seqlen", required_argument, NULL, S_EVAL_SEQLEN},
        {"eval-max-windows", required_argument, NULL, S_EVAL_MAX},
        {"out-dir", required_argument, NULL, S_OUT_DIR},
        {"svg", required_argument, NULL, S_SVG},
        {"calib", required_argument, NULL, S_CALIB},
        {"nsamples", required_argument, NULL, S_NSAMPLES},
        {"seqlen", required_argument, NULL, S_SEQLEN},
        {"seed", required_argument, NULL, S_SEED},
        {"calib-windows", required_argument, NULL, S_WINDOWS},
        {"ranks", required_argument, NULL, S_RANKS},
        {"layers", required_argument, NULL, S_LAYERS},
        {"attn-split", required_argument, NULL, S_ATTN_SPLIT},
        {"centered", no_argument, NULL, S_CENTERED},
        {"alpha", required_argument, NULL, S_ALPHA},
        {"dense", no_argument, NULL, S_DENSE},
        {"overwrite", no_argument, NULL, S_OVERWRITE},
        {NULL, 0, NULL, 0},
    };
    bool seen[S_END] = {0};
    int npos = 0, opt, idx = 0;
    char *methods = NULL, *ratios = NULL;
    const char *model = NULL, *eval_text = NULL, *out_dir = NULL, *svg = NULL;
    s->extra = json_object();
    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "+:h", longopts, &idx)) != -1 || optind < argc) {
        if (opt == -1) {
            if (npos == 0 && strcmp(argv[optind], "help") == 0) {   /* svdllmctl help sweep */
                sweep_usage(stdout);
                exit(0);
            }
            if (npos++ > 0)
                cli_die_usage("unexpected argument '%s'", argv[optind]);
            optind++;   /* "sweep" itself (sweep_is_command found it) */
            continue;
        }
        cli_getopt_check(opt, argv);
        if (opt >= S_MODEL && opt < S_END) {
            if (seen[opt])
                cli_die_usage("option --%s given twice", longopts[idx].name);
            seen[opt] = true;
        }
        json_t *x = s->extra;
        switch (opt) {
        case S_SOCKET: s->socket = optarg; break;
        case S_JSON: s->json = true; break;
        case 'h':
        case S_HELP: sweep_usage(stdout); exit(0);
        case S_MODEL: model = optarg; break;
        case S_METHODS: methods = optarg; break;
        case S_RATIOS: ratios = optarg; break;
        case S_EVAL_TEXT: eval_text = optarg; break;
        case S_EVAL_SEQLEN: s->eval_seqlen = cli_parse_ll("eval-seqlen", optarg, 0, 65536); break;
        case S_EVAL_MAX: s->eval_max_windows = cli_parse_ll("eval-max-windows", optarg, 0, INT_MAX); break;
        case S_OUT_DIR: out_dir = optarg; break;
        case S_SVG: svg = optarg; break;
        /* Passed through: the daemon checks ranges and names, as for submit. */
        case S_CALIB: {
            char *p = must_abs(optarg);
            proto_set_str(x, "calib", p);
            free(p);
            break;
        }
        case S_NSAMPLES: proto_set_int(x, "nsamples", cli_parse_ll("nsamples", optarg, 1, INT_MAX)); break;
        case S_SEQLEN:
            s->seqlen = cli_parse_ll("seqlen", optarg, 1, INT_MAX);
            proto_set_int(x, "seqlen", s->seqlen);
            break;
        case S_SEED: proto_set_int(x, "seed", cli_parse_ll("seed", optarg, 0, PROTO_MAX_ID)); break;
        case S_WINDOWS: proto_set_str(x, "calib_windows", optarg); break;
        case S_RANKS: proto_set_str(x, "ranks", optarg); break;
        case S_LAYERS: proto_set_int(x, "layers", cli_parse_ll("layers", optarg, 0, 1024)); break;
        case S_ATTN_SPLIT: proto_set_real(x, "attn_split", cli_parse_num("attn-split", optarg)); break;
        case S_CENTERED: proto_set_bool(x, "centered", true); break;
        case S_ALPHA: proto_set_real(x, "alpha", cli_parse_num("alpha", optarg)); break;
        case S_DENSE: proto_set_bool(x, "dense", true); break;
        case S_OVERWRITE: proto_set_bool(x, "overwrite", true); break;
        default: cli_die_usage("unexpected option");
        }
    }
    if (!model)
        cli_die_usage("--model DIR is required");
    if (!methods)
        cli_die_usage("--methods LIST is required (e.g. svdllm,svdllm-update,rom)");
    if (!ratios)
        cli_die_usage("--ratios LIST is required (e.g. 0.2,0.4,0.6)");
    if (!eval_text)
        cli_die_usage("--eval-text FILE is required (the perplexity text)");
    /* Copies: strtok_r writes into them, and argv stays as ps shows it. */
    if (!(methods = strdup(methods)) || !(ratios = strdup(ratios)))
        exit(1);
    parse_methods(s, methods);
    parse_ratios(s, ratios);
    s->lists[0] = methods;
    s->lists[1] = ratios;
    s->model = must_abs(model);
    s->eval_text = must_abs(eval_text);
    if (out_dir)
        s->out_dir = must_abs(out_dir);
    else {
        char name[NAME_MAX + 16], b[NAME_MAX + 1];
        snprintf(name, sizeof name, "%s-sweep", leaf(b, sizeof b, model));
        s->out_dir = must_abs(name);
    }
    if (svg)
        s->svg = must_abs(svg);
    else {
        size_t n = strlen(s->out_dir) + 16;
        s->svg = malloc(n);
        if (!s->svg)
            exit(1);
        snprintf(s->svg, n, "%s/sweep.svg", s->out_dir);
    }
}

/* Every method must be one the daemon knows: checked before anything runs. */
static int check_methods(struct sweep *s) {
    json_t *r;
    struct sv_err err = {0};
    if (request(s->socket, proto_request_new(1, "version"), &r, &err) < 0) {
        fprintf(stderr, "svdllmctl sweep: %s\n", err.msg);
        return err.code == -EPROTO ? 1 : 3;   /* no reply: unreachable, as for svdllmctl's commands */
    }
    json_t *known = json_object_get(r, "methods");
    for (int i = 0; i < s->n_methods; i++) {
        bool ok = false;
        size_t k;
        json_t *m;
        json_array_foreach(known, k, m) ok |= strcmp(json_string_value(m) ? json_string_value(m) : "", s->methods[i]) == 0;
        if (!ok) {
            char list[512] = "";
            json_array_foreach(known, k, m) {
                size_t n = strlen(list);
                snprintf(list + n, sizeof list - n, "%s%s", n ? "," : "", json_string_value(m));
            }
            json_decref(r);
            cli_die_usage("--methods: unknown method '%s' (svdllmd accepts %s)", s->methods[i], list);
        }
    }
    json_decref(r);
    return 0;
}

static json_t *eval_request(const struct sweep *s, const char *model, long long max_windows) {
    json_t *q = proto_request_new(1, "eval");
    proto_set_str(q, "model", model);
    proto_set_str(q, "text", s->eval_text);
    /* As a job would: eval_seqlen, else the calibration seqlen (the daemon's
     * default 128 for both when neither is given). */
    if (s->eval_seqlen > 0)
        proto_set_int(q, "seqlen", s->eval_seqlen);
    else if (s->seqlen > 0)
        proto_set_int(q, "seqlen", s->seqlen);
    if (max_windows > 0)
        proto_set_int(q, "max_windows", max_windows);
    return q;
}

static void cancel_submitted(struct sweep *s) {
    for (int i = 0; i < s->n_runs; i++) {
        if (!s->runs[i].job)
            continue;
        json_t *q = proto_request_new(1, "cancel"), *r;
        proto_set_int(q, "job", s->runs[i].job);
        struct sv_err err = {0};
        if (request(s->socket, q, &r, &err) == 0) {
            json_decref(r);
            note("cancelled job %lld (%s ratio %g)", s->runs[i].job, s->runs[i].method, s->runs[i].ratio);
        } else
            note("could not cancel job %lld: %s", s->runs[i].job, err.msg);
    }
}

static int submit_all(struct sweep *s) {
    if (mkdir(s->out_dir, 0777) < 0 && errno != EEXIST) {
        fprintf(stderr, "svdllmctl sweep: --out-dir '%s': %s\n", s->out_dir, strerror(errno));
        return 1;
    }
    for (int i = 0; i < s->n_runs; i++) {
        struct run *u = &s->runs[i];
        json_t *q = proto_request_new(1, "submit"), *r;
        proto_set_str(q, "model", s->model);
        proto_set_str(q, "out", u->out);
        proto_set_str(q, "method", u->method);
        proto_set_real(q, "ratio", u->ratio);
        json_object_update(q, s->extra);
        struct sv_err err = {0};
        if (request(s->socket, q, &r, &err) < 0) {
            fprintf(stderr, "svdllmctl sweep: %s ratio %g: %s%s\n", u->method, u->ratio, err.msg,
                    strstr(err.msg, "exists:") == err.msg ? " (--overwrite replaces an earlier sweep's outputs)" : "");
            cancel_submitted(s);
            return 1;
        }
        u->job = (long long)json_integer_value(json_object_get(json_object_get(r, "job"), "id"));
        json_decref(r);
    }
    note("submitted %d jobs (%lld..%lld) for %d methods x %d ratios", s->n_runs, s->runs[0].job,
         s->runs[s->n_runs - 1].job, s->n_methods, s->n_ratios);
    return 0;
}

/* Follows one job to its end; fills u's state, error and result. */
static void watch_run(struct sweep *s, int i, bool tty) {
    struct run *u = &s->runs[i];
    struct conn c;
    struct sv_err err = {0};
    json_t *q = proto_request_new(1, "watch"), *m = NULL;
    proto_set_int(q, "job", u->job);
    if (conn_open(&c, s->socket, &err) < 0 || conn_call(&c, q, &m, &err) < 0) {
        if (c.fd < 0)
            json_decref(q);
        snprintf(u->error, sizeof u->error, "%s", err.msg);
        snprintf(u->state, sizeof u->state, "unknown");
        conn_close(&c);
        return;
    }
    json_decref(m);
    for (;;) {
        if (conn_next(&c, &m, &err) < 0) {
            snprintf(u->error, sizeof u->error, "%s", err.msg);
            snprintf(u->state, sizeof u->state, "unknown");
            break;
        }
        json_t *j = json_object_get(m, "job");
        if (strcmp(conn_jstr(m, "event"), "end") == 0) {
            snprintf(u->state, sizeof u->state, "%s", conn_jstr(m, "state"));
            snprintf(u->error, sizeof u->error, "%s", conn_jstr(j, "error"));
            json_t *res = json_object_get(j, "result");
            u->params_before = (long long)conn_jnum(res, "params_before", 0);
            u->params_after = (long long)conn_jnum(res, "params_after", 0);
            u->seconds = conn_jnum(res, "seconds", NAN);
            json_decref(m);
            break;
        }
        if (tty && j) {
            char line[200];
            snprintf(line, sizeof line, "sweep: [%d/%d] %s ratio %g: job %lld %s layer %lld/%lld %s %3.0f%%", i + 1,
                     s->n_runs, u->method, u->ratio, u->job, conn_jstr(j, "state"),
                     (long long)conn_jnum(j, "layer", conn_jnum(j, "layers_done", 0)), (long long)conn_jnum(j, "n_layers", 0),
                     conn_jstr(j, "phase"), 100 * conn_jnum(j, "fraction", 0));
            fprintf(stderr, "\r%-79.79s", line);
        }
        json_decref(m);
    }
    conn_close(&c);
    if (tty)
        fputc('\r', stderr);
    if (strcmp(u->state, "done") == 0)
        note("[%d/%d] %s ratio %g: job %lld done in %.1f s%-20s", i + 1, s->n_runs, u->method, u->ratio, u->job,
             u->seconds, "");
    else
        note("[%d/%d] %s ratio %g: job %lld %s: %s", i + 1, s->n_runs, u->method, u->ratio, u->job, u->state,
             u->error);
}

static int eval_one(struct sweep *s, const char *what, const char *model, double *ppl, double *tok_s,
                    char *error, size_t n_error) {
    json_t *r;
    struct sv_err err = {0};
    if (request(s->socket, eval_request(s, model, s->eval_max_windows), &r, &err) < 0) {
        snprintf(error, n_error, "eval: %.400s", err.msg);
        note("%s: %s", what, error);
        return 1;
    }
    *ppl = conn_jnum(r, "ppl", NAN);
    *tok_s = conn_jnum(r, "tokens_per_s", NAN);
    s->orig_windows = (long long)conn_jnum(r, "windows", 0);
    s->orig_seqlen = (long long)conn_jnum(r, "seqlen", 0);
    note("%s: perplexity %.4f, %.0f tokens/s (%.1f s)", what, *ppl, *tok_s, conn_jnum(r, "seconds", 0));
    json_decref(r);
    return 0;
}

/* ---- Output ----------------------------------------------------------------------- */

static double kept_pct(const struct run *u) {
    return u->params_before > 0 ? 100.0 * (double)u->params_after / (double)u->params_before : NAN;
}

static json_t *num_or_null(double v) {
    return isfinite(v) ? json_real(v) : json_null();
}

static json_t *report_json(const struct sweep *s) {
    json_t *o = json_object(), *runs = json_array(), *orig = json_object();
    proto_set_str(o, "model", s->model);
    proto_set_str(o, "eval_text", s->eval_text);
    proto_set_int(o, "eval_windows", s->orig_windows);
    proto_set_int(o, "eval_seqlen", s->orig_seqlen);
    proto_set_str(o, "out_dir", s->out_dir);
    proto_set_str(o, "svg", s->svg);
    json_object_set_new(o, "submit", json_deep_copy(s->extra));
    proto_set_int(orig, "params", s->orig_params);
    json_object_set_new(orig, "ppl", num_or_null(s->orig_ppl));
    json_object_set_new(orig, "tokens_per_s", num_or_null(s->orig_tok_s));
    json_object_set_new(o, "original", orig);
    for (int i = 0; i < s->n_runs; i++) {
        const struct run *u = &s->runs[i];
        json_t *j = json_object();
        proto_set_str(j, "method", u->method);
        proto_set_real(j, "ratio", u->ratio);
        proto_set_int(j, "job", u->job);
        proto_set_str(j, "state", u->state);
        json_object_set_new(j, "error", u->error[0] ? proto_str(u->error) : json_null());
        proto_set_str(j, "out", u->out);
        proto_set_int(j, "params_before", u->params_before);
        proto_set_int(j, "params_after", u->params_after);
        json_object_set_new(j, "kept_pct", num_or_null(kept_pct(u)));
        json_object_set_new(j, "ppl", num_or_null(u->ppl));
        json_object_set_new(j, "tokens_per_s", num_or_null(u->tok_s));
        json_object_set_new(j, "seconds", num_or_null(u->seconds));
        json_array_append_new(runs, j);
    }
    json_object_set_new(o, "runs", runs);
    return o;
}

static void print_table(const struct sweep *s) {
    char mb[NAME_MAX + 1], eb[NAME_MAX + 1];
    printf("sweep of %s: %d methods x %d ratios; perplexity on %s (%lld windows of %lld tokens)\n\n",
           leaf(mb, sizeof mb, s->model), s->n_methods, s->n_ratios, leaf(eb, sizeof eb, s->eval_text),
           s->orig_windows, s->orig_seqlen);
    printf("%-14s %5s  %19s  %19s  %18s  %6s  %8s\n", "METHOD", "RATIO", "PARAMS KEPT", "PERPLEXITY",
           "TOKENS/S", "JOB", "TIME");
    char params[32], ppl[32], tok[32];
    snprintf(params, sizeof params, "%lld 100.0%%", s->orig_params);
    snprintf(ppl, sizeof ppl, "%.2f", s->orig_ppl);
    snprintf(tok, sizeof tok, "%.0f", s->orig_tok_s);
    printf("%-14s %5s  %19s  %19s  %18s  %6s  %8s\n", "original", "-", s->orig_params ? params : "-",
           isfinite(s->orig_ppl) ? ppl : "-", isfinite(s->orig_tok_s) ? tok : "-", "-", "-");
    for (int i = 0; i < s->n_runs; i++) {
        const struct run *u = &s->runs[i];
        char ratio[16], job[24], t[24];
        snprintf(ratio, sizeof ratio, "%.2f", u->ratio);
        snprintf(job, sizeof job, "%lld", u->job);
        if (strcmp(u->state, "done") != 0) {
            printf("%-14s %5s  %19s  %s: %.200s\n", u->method, ratio, "-", u->state[0] ? u->state : "not run",
                   u->error[0] ? u->error : "-");
            continue;
        }
        snprintf(params, sizeof params, "%lld %5.1f%%", u->params_after, kept_pct(u));
        if (isfinite(u->ppl))
            snprintf(ppl, sizeof ppl, "%.2f (x%.2f)", u->ppl, u->ppl / s->orig_ppl);
        else {
            printf("%-14s %5s  %19s  not evaluated: %.200s\n", u->method, ratio, params, u->error);
            continue;
        }
        if (isfinite(u->tok_s))
            snprintf(tok, sizeof tok, "%.0f (x%.2f)", u->tok_s, u->tok_s / s->orig_tok_s);
        else
            snprintf(tok, sizeof tok, "-");
        snprintf(t, sizeof t, "%.1f s", u->seconds);
        printf("%-14s %5s  %19s  %19s  %18s  %6s  %8s\n", u->method, ratio, params, ppl, tok, job, t);
    }
    /* The same perplexities as a method x ratio grid. */
    printf("\n%-14s", "perplexity");
    for (int k = 0; k < s->n_ratios; k++)
        printf(" %9.2f", s->ratios[k]);
    printf("\n");
    for (int m = 0; m < s->n_methods; m++) {
        printf("%-14s", s->methods[m]);
        for (int k = 0; k < s->n_ratios; k++) {
            const struct run *u = &s->runs[m * s->n_ratios + k];
            if (isfinite(u->ppl))
                printf(" %9.2f", u->ppl);
            else
                printf(" %9s", "-");
        }
        printf("\n");
    }
    printf("%-14s %9.2f (all ratios)\n", "original", s->orig_ppl);
    printf("\nratio: fraction of decoder-linear parameters removed; params: decoder-linear\n"
           "parameters kept; tokens/s: the evaluation's batched CPU forward pass.\n");
}

static int write_svg(const struct sweep *s, struct sv_err *err) {
    struct svg_series series[MAX_METHODS];
    double xs[MAX_METHODS][MAX_RATIOS], ys[MAX_METHODS][MAX_RATIOS];
    for (int m = 0; m < s->n_methods; m++) {
        /* Ratios ascending: parameters kept descending, so the line runs in x order. */
        for (int k = 0; k < s->n_ratios; k++) {
            const struct run *u = &s->runs[m * s->n_ratios + k];
            xs[m][k] = strcmp(u->state, "done") == 0 ? kept_pct(u) : NAN;
            ys[m][k] = u->ppl;
        }
        series[m] = (struct svg_series){.name = s->methods[m], .x = xs[m], .y = ys[m], .n = (size_t)s->n_ratios};
    }
    struct svg_mark orig = {.name = "original", .x = 100, .y = s->orig_ppl};
    char title[2 * NAME_MAX + 128], mb[NAME_MAX + 1], eb[NAME_MAX + 1];
    snprintf(title, sizeof title, "%s: perplexity on %s (%lld windows of %lld tokens)", leaf(mb, sizeof mb, s->model),
             leaf(eb, sizeof eb, s->eval_text), s->orig_windows, s->orig_seqlen);
    struct svg_plot p = {
        .title = title,
        .x_label = "decoder-linear parameters kept (%)",
        .y_label = "perplexity",
        .series = series,
        .n_series = (size_t)s->n_methods,
        .marks = &orig,
        .n_marks = isfinite(s->orig_ppl) ? 1 : 0,
    };
    return svg_plot_save(s->svg, &p, err);
}

static int write_report(const struct sweep *s, json_t *o, struct sv_err *err) {
    char path[PATH_MAX], tmp[PATH_MAX + 8];
    snprintf(path, sizeof path, "%s/sweep.json", s->out_dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (json_dump_file(o, tmp, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10)) < 0) {
        unlink(tmp);
        return sv_err_set(err, -EIO, "%s: cannot write", tmp);
    }
    if (rename(tmp, path) < 0) {
        int e = errno;
        unlink(tmp);
        return sv_err_set(err, -e, "%s: rename: %s", tmp, strerror(e));
    }
    return 0;
}

/* Steps 1 to 5 of the design note, then the reports; returns the exit status. */
static int sweep_run(struct sweep *s) {
    int rc = check_methods(s);
    if (rc != 0)
        return rc;

    /* 2. The evaluation text, on one window, before any job is queued. */
    json_t *r;
    struct sv_err err = {0};
    if (request(s->socket, eval_request(s, s->model, 1), &r, &err) < 0) {
        fprintf(stderr, "svdllmctl sweep: --eval-text '%s' on --model '%s': %s\n", s->eval_text, s->model, err.msg);
        return 1;
    }
    json_decref(r);

    s->n_runs = s->n_methods * s->n_ratios;
    s->runs = calloc((size_t)s->n_runs, sizeof *s->runs);
    if (!s->runs)
        return 1;
    for (int m = 0; m < s->n_methods; m++)
        for (int k = 0; k < s->n_ratios; k++) {
            struct run *u = &s->runs[m * s->n_ratios + k];
            u->method = s->methods[m];
            u->ratio = s->ratios[k];
            u->ppl = u->tok_s = u->seconds = NAN;
            size_t n = strlen(s->out_dir) + strlen(u->method) + 40;
            if (!(u->out = malloc(n)))
                return 1;
            snprintf(u->out, n, "%s/%s-%g", s->out_dir, u->method, u->ratio);
        }
    if (submit_all(s) != 0)
        return 1;

    bool tty = isatty(STDERR_FILENO);
    for (int i = 0; i < s->n_runs; i++) {
        watch_run(s, i, tty);
        if (strcmp(s->runs[i].state, "done") != 0)
            rc = 1;
        else if (s->runs[i].params_before > 0)
            s->orig_params = s->runs[i].params_before;
    }

    /* 5. Evaluations, the original first. */
    char e[SV_ERR_MSG_MAX];
    if (eval_one(s, "original", s->model, &s->orig_ppl, &s->orig_tok_s, e, sizeof e) != 0)
        rc = 1;
    for (int i = 0; i < s->n_runs; i++) {
        struct run *u = &s->runs[i];
        if (strcmp(u->state, "done") != 0)
            continue;
        char what[128];
        snprintf(what, sizeof what, "%s ratio %g", u->method, u->ratio);
        if (eval_one(s, what, u->out, &u->ppl, &u->tok_s, u->error, sizeof u->error) != 0)
            rc = 1;
    }

    json_t *o = report_json(s);
    if (write_report(s, o, &err) < 0) {
        fprintf(stderr, "svdllmctl sweep: %s\n", err.msg);
        rc = 1;
    }
    if (write_svg(s, &err) < 0) {
        fprintf(stderr, "svdllmctl sweep: --svg: %s\n", err.msg);
        rc = 1;
    } else
        note("plot written to %s", s->svg);
    if (s->json) {
        char *line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
        if (line)
            puts(line);
        free(line);
    } else
        print_table(s);
    json_decref(o);
    return rc;
}
int sweep_main(int argc, char **argv, const char *default_socket) {
    signal(SIGPIPE, SIG_IGN);   /* a daemon closing while we write: we read its reply */
    cli_usage_set("svdllmctl sweep", "svdllmctl sweep --help");
    struct sweep s = {.orig_ppl = NAN, .orig_tok_s = NAN};
    s.socket = getenv("SVDLLMD_SOCKET");
    if (!s.socket || !*s.socket)
        s.socket = default_socket;
    parse_args(&s, argc, argv);
    int rc = sweep_run(&s);
    json_decref(s.extra);
    for (int i = 0; s.runs && i < s.n_runs; i++)
        free(s.runs[i].out);
    free(s.runs);
    free(s.model);
    free(s.eval_text);
    free(s.out_dir);
    free(s.svg);
    free(s.lists[0]);
    free(s.lists[1]);
    return rc;
}
