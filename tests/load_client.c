/* load_client: the fault campaign's load generator (tests/campaign.sh).
 *
 *   load_client --socket S load --job ID [--clients 64] [--requests 1000]
 *               [--idle 100] [--half 8] [--malformed 40] [--oversize 4]
 *               [--vanish 40]
 *   load_client --socket S limit --idle N [--exec PROGRAM ARGS...]
 *
 * load: opens `idle` connections that never send and `half` that send half a
 * request and stall, then runs `clients` threads, each sending `requests`
 * well-formed requests on its own connection, cycling through status (of
 * job ID), list, ping and a watch subscribe/unsubscribe (a watch on a fresh
 * connection, its reply read, the connection closed). Beside them one thread
 * sends malformed lines, one oversize lines (2 MiB, written whole, then the
 * reply read), and one watches and vanishes (closing without reading, or
 * with a reset after the reply). A well-formed request fails when it gets an
 * error reply, a reply with another id, or no reply within 30 s. It prints
 * one JSON object: counts, the first failure's text, the latency of status
 * (p50/p99/max in ms), what happened to the idle and half-sent connections,
 * and how many malformed/oversize lines were answered.
 *
 * limit: opens N idle connections, then one more, and reports what that one
 * got (a reply and its error code and message, or end of stream / an error), runs
 * PROGRAM (e.g. svdllmctl ping) ten times while they are held and reports
 * how many runs exited 0 or printed too_many_clients, and the first other
 * run's exit status and first line of output; then closes them and pings.
 *
 * Threads only share the counters (atomics) and the latency array (each
 * thread writes its own slice). */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mono.h"
#include "proto.h"

static const char *sock_path;
static long long job_id;
static int n_clients = 64, n_requests = 1000, n_idle = 100, n_half = 8, n_malformed = 40, n_oversize = 4,
           n_vanish = 40;

static atomic_long n_ok, n_failed, n_connect_failed, malformed_answered, oversize_answered, oversize_written,
    vanished;
static atomic_int abusers_done;
static pthread_mutex_t first_mu = PTHREAD_MUTEX_INITIALIZER;
static char first_error[512];
static double *lat_status;   /* n_clients slices of n_requests entries, < 0 unused */

static void note_failure(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void note_failure(const char *fmt, ...) {
    atomic_fetch_add(&n_failed, 1);
    pthread_mutex_lock(&first_mu);
    if (!first_error[0]) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(first_error, sizeof first_error, fmt, ap);
        va_end(ap);
    }
    pthread_mutex_unlock(&first_mu);
}

/* A connected socket with a receive timeout, or -1 (errno set). */
static int conn_new(int timeout_s) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock_path);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    struct timeval tv = {timeout_s, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

/* Writes all of data; 0 or -errno. */
static int send_all(int fd, const char *data, size_t n) {
    size_t off = 0;
    while (off < n) {
        ssize_t k = send(fd, data + off, n - off, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return k < 0 ? -errno : -EPIPE;
        off += (size_t)k;
    }
    return 0;
}

static const char *err_code(json_t *m) {
    return json_string_value(json_object_get(json_object_get(m, "error"), "code"));
}

/* Sends line and reads the reply with the same id (events of other ids are
 * skipped). Returns the reply (caller decrefs) or NULL with why filled. */
static json_t *roundtrip(int fd, struct proto_buf *b, long long id, const char *line, char *why, size_t n_why) {
    int r = send_all(fd, line, strlen(line));
    if (r < 0) {
        snprintf(why, n_why, "send: %s", strerror(-r));
        return NULL;
    }
    for (;;) {
        json_t *m = NULL;
        struct proto_error e = {0};
        r = proto_read_msg(fd, b, &m, &e);
        if (r != 1) {
            snprintf(why, n_why, "%.200s", r == 0 ? "end of stream before the reply" : e.msg);
            return NULL;
        }
        json_t *jid = json_object_get(m, "id");
        if (json_is_integer(jid) && json_integer_value(jid) == id && !json_object_get(m, "event"))
            return m;
        json_decref(m);
    }
}

/* One watch subscribe/unsubscribe: fresh connection, watch, reply, close. */
static int watch_once(long long id, char *why, size_t n_why) {
    int fd = conn_new(30);
    if (fd < 0) {
        atomic_fetch_add(&n_connect_failed, 1);
        snprintf(why, n_why, "connect: %s", strerror(errno));
        return -1;
    }
    struct proto_buf b;
    proto_buf_init(&b, PROTO_MAX_MSG + 1);
    char line[128];
    snprintf(line, sizeof line, "{\"id\":%lld,\"op\":\"watch\",\"job\":%lld}\n", id, job_id);
    json_t *m = roundtrip(fd, &b, id, line, why, n_why);
    int r = -1;
    if (m && json_is_true(json_object_get(m, "ok")))
        r = 0;
    else if (m)
        snprintf(why, n_why, "watch: error %s", err_code(m) ? err_code(m) : "?");
    json_decref(m);
    proto_buf_free(&b);
    close(fd);
    return r;
}

struct worker {
    int index;
};

static void *worker_main(void *arg) {
    struct worker *w = arg;
    double *lat = lat_status + (size_t)w->index * (size_t)n_requests;
    int fd = conn_new(30);
    if (fd < 0) {
        atomic_fetch_add(&n_connect_failed, 1);
        note_failure("client %d: connect: %s", w->index, strerror(errno));
        atomic_fetch_add(&n_failed, n_requests - 1);
        return NULL;
    }
    struct proto_buf b;
    proto_buf_init(&b, PROTO_MAX_MSG + 1);
    for (int k = 0; k < n_requests; k++) {
        long long id = (long long)w->index * 1000000 + k;
        char line[160], why[256] = "";
        int op = k % 4;
        if (op == 3) {
            if (watch_once(id, why, sizeof why) == 0)
                atomic_fetch_add(&n_ok, 1);
            else
                note_failure("client %d request %d (watch): %s", w->index, k, why);
            continue;
        }
        if (op == 0)
            snprintf(line, sizeof line, "{\"id\":%lld,\"op\":\"status\",\"job\":%lld}\n", id, job_id);
        else if (op == 1)
            snprintf(line, sizeof line, "{\"id\":%lld,\"op\":\"list\",\"limit\":20}\n", id);
        else
            snprintf(line, sizeof line, "{\"id\":%lld,\"op\":\"ping\"}\n", id);
        double t0 = mono_now();
        json_t *m = roundtrip(fd, &b, id, line, why, sizeof why);
        double dt = mono_now() - t0;
        if (m && json_is_true(json_object_get(m, "ok"))) {
            atomic_fetch_add(&n_ok, 1);
            if (op == 0)
                lat[k] = dt;
        } else {
            static const char *const names[] = {"status", "list", "ping"};
            if (m)
                snprintf(why, sizeof why, "error reply %s", err_code(m) ? err_code(m) : "?");
            note_failure("client %d request %d (%s): %s", w->index, k, names[op], why);
            if (!m) {   /* the connection is gone: reconnect for the rest */
                close(fd);
                proto_buf_free(&b);
                proto_buf_init(&b, PROTO_MAX_MSG + 1);
                fd = conn_new(30);
                if (fd < 0) {
                    atomic_fetch_add(&n_failed, n_requests - k - 1);
                    proto_buf_free(&b);
                    return NULL;
                }
            }
        }
        json_decref(m);
    }
    proto_buf_free(&b);
    close(fd);
    return NULL;
}

/* Malformed lines, each on a fresh connection: each should get an error
 * reply (bad_json closes the connection, unknown_op/bad_request do not). */
static void *malformed_main(void *arg) {
    static const char *const lines[] = {
        "{\"id\":1,\"op\":\"ping\"\n", "[1,2,3]\n", "{\"id\":1,\"op\":\"frobnicate\"}\n",
        "\xff\xfe\xfd\n", "{\"id\":\"x\",\"op\":\"status\"}\n", "{\"id\":2,\"id\":3,\"op\":\"ping\"}\n",
        "{\"id\":4,\"op\":\"status\",\"job\":\"seven\"}\n", "null\n",
    };
    for (int i = 0; i < n_malformed; i++) {
        int fd = conn_new(10);
        if (fd < 0)
            continue;
        struct proto_buf b;
        proto_buf_init(&b, PROTO_MAX_MSG + 1);
        const char *l = lines[i % (sizeof lines / sizeof lines[0])];
        json_t *m = NULL;
        struct proto_error e = {0};
        if (send_all(fd, l, strlen(l)) == 0 && proto_read_msg(fd, &b, &m, &e) == 1 && err_code(m))
            atomic_fetch_add(&malformed_answered, 1);
        json_decref(m);
        proto_buf_free(&b);
        close(fd);
    }
    atomic_fetch_add(&abusers_done, 1);
    return NULL;
}

/* Oversize lines: 2 MiB and a newline, written whole, then the reply read. */
static void *oversize_main(void *arg) {
    size_t n = 2u << 20;
    char *big = malloc(n + 1);
    if (!big)
        return NULL;
    memset(big, 'p', n);
    memcpy(big, "{\"id\":9,\"op\":\"ping\",\"pad\":\"", 27);
    memcpy(big + n - 2, "\"}", 2);
    big[n] = '\n';
    for (int i = 0; i < n_oversize; i++) {
        int fd = conn_new(10);
        if (fd < 0)
            continue;
        struct proto_buf b;
        proto_buf_init(&b, PROTO_MAX_MSG + 1);
        /* A daemon that closes before the line ends cuts the write short
         * (EPIPE); whether the reply can still be read is counted apart. */
        if (send_all(fd, big, n + 1) == 0)
            atomic_fetch_add(&oversize_written, 1);
        json_t *m = NULL;
        struct proto_error e = {0};
        if (proto_read_msg(fd, &b, &m, &e) == 1 && err_code(m) && strcmp(err_code(m), "too_large") == 0)
            atomic_fetch_add(&oversize_answered, 1);
        json_decref(m);
        proto_buf_free(&b);
        close(fd);
    }
    free(big);
    atomic_fetch_add(&abusers_done, 1);
    return NULL;
}

/* Watchers that vanish: half close without reading the reply, half read the
 * reply and then reset the connection (SO_LINGER 0). */
static void *vanish_main(void *arg) {
    for (int i = 0; i < n_vanish; i++) {
        int fd = conn_new(10);
        if (fd < 0)
            continue;
        char line[128];
        snprintf(line, sizeof line, "{\"id\":%d,\"op\":\"watch\",\"job\":%lld}\n", i, job_id);
        if (send_all(fd, line, strlen(line)) == 0 && i % 2 == 1) {
            struct proto_buf b;
            proto_buf_init(&b, PROTO_MAX_MSG + 1);
            json_t *m = NULL;
            struct proto_error e = {0};
            proto_read_msg(fd, &b, &m, &e);
            json_decref(m);
            proto_buf_free(&b);
            struct linger lg = {1, 0};
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        }
        close(fd);
        atomic_fetch_add(&vanished, 1);
    }
    atomic_fetch_add(&abusers_done, 1);
    return NULL;
}

/* What an idle connection shows now: 1 open (nothing to read), 0 closed by
 * the daemon; a reply it was sent (a timeout notice, too_many_clients) is
 * counted in *replied. */
static int conn_state(int fd, int *replied) {
    char buf[4096];
    ssize_t k = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (k > 0) {
        (*replied)++;
        while ((k = recv(fd, buf, sizeof buf, MSG_DONTWAIT)) > 0)
            ;
    }
    if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return 1;
    return 0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int ping_fresh(void) {
    int fd = conn_new(10);
    if (fd < 0)
        return -1;
    struct proto_buf b;
    proto_buf_init(&b, PROTO_MAX_MSG + 1);
    char why[256];
    json_t *m = roundtrip(fd, &b, 424242, "{\"id\":424242,\"op\":\"ping\"}\n", why, sizeof why);
    int r = m && json_is_true(json_object_get(m, "ok")) ? 0 : -1;
    json_decref(m);
    proto_buf_free(&b);
    close(fd);
    return r;
}

static int run_load(void) {
    int *idle = calloc((size_t)(n_idle + n_half) + 1, sizeof *idle);
    lat_status = malloc(sizeof *lat_status * (size_t)n_clients * (size_t)n_requests);
    pthread_t *th = calloc((size_t)n_clients + 3, sizeof *th);
    struct worker *ws = calloc((size_t)n_clients, sizeof *ws);
    if (!idle || !lat_status || !th || !ws)
        return 1;
    for (size_t i = 0; i < (size_t)n_clients * (size_t)n_requests; i++)
        lat_status[i] = -1;
    int idle_connected = 0, half_connected = 0;
    for (int i = 0; i < n_idle + n_half; i++) {
        idle[i] = conn_new(5);
        if (idle[i] < 0)
            continue;
        if (i >= n_idle) {
            send_all(idle[i], "{\"id\":1,\"op\":", 13);
            half_connected++;
        } else {
            idle_connected++;
        }
    }
    double t0 = mono_now();
    for (int i = 0; i < n_clients; i++) {
        ws[i].index = i;
        pthread_create(&th[i], NULL, worker_main, &ws[i]);
    }
    pthread_create(&th[n_clients], NULL, malformed_main, NULL);
    pthread_create(&th[n_clients + 1], NULL, oversize_main, NULL);
    pthread_create(&th[n_clients + 2], NULL, vanish_main, NULL);
    for (int i = 0; i < n_clients + 3; i++)
        pthread_join(th[i], NULL);
    double seconds = mono_now() - t0;

    int idle_open = 0, half_open = 0, idle_replied = 0;
    for (int i = 0; i < n_idle + n_half; i++) {
        if (idle[i] < 0)
            continue;
        int open = conn_state(idle[i], &idle_replied);
        if (i < n_idle)
            idle_open += open;
        else
            half_open += open;
        close(idle[i]);
    }
    size_t n_lat = 0;
    for (size_t i = 0; i < (size_t)n_clients * (size_t)n_requests; i++)
        if (lat_status[i] >= 0)
            lat_status[n_lat++] = lat_status[i];
    qsort(lat_status, n_lat, sizeof *lat_status, cmp_double);
    double p50 = n_lat ? lat_status[n_lat / 2] * 1e3 : -1, p99 = n_lat ? lat_status[(n_lat * 99) / 100] * 1e3 : -1,
           pmax = n_lat ? lat_status[n_lat - 1] * 1e3 : -1;
    int alive = ping_fresh() == 0;

    json_t *o = json_object();
    json_object_set_new(o, "clients", json_integer(n_clients));
    json_object_set_new(o, "requests", json_integer((long long)n_clients * n_requests));
    json_object_set_new(o, "ok", json_integer(atomic_load(&n_ok)));
    json_object_set_new(o, "failed", json_integer(atomic_load(&n_failed)));
    json_object_set_new(o, "connect_failed", json_integer(atomic_load(&n_connect_failed)));
    json_object_set_new(o, "first_error", json_string(first_error));
    json_object_set_new(o, "seconds", json_real(seconds));
    json_object_set_new(o, "status_samples", json_integer((long long)n_lat));
    json_object_set_new(o, "status_p50_ms", json_real(p50));
    json_object_set_new(o, "status_p99_ms", json_real(p99));
    json_object_set_new(o, "status_max_ms", json_real(pmax));
    json_object_set_new(o, "idle", json_integer(n_idle));
    json_object_set_new(o, "idle_connected", json_integer(idle_connected));
    json_object_set_new(o, "idle_open_at_end", json_integer(idle_open));
    json_object_set_new(o, "half", json_integer(n_half));
    json_object_set_new(o, "half_connected", json_integer(half_connected));
    json_object_set_new(o, "half_open_at_end", json_integer(half_open));
    json_object_set_new(o, "idle_or_half_sent_a_reply", json_integer(idle_replied));
    json_object_set_new(o, "malformed", json_integer(n_malformed));
    json_object_set_new(o, "malformed_answered", json_integer(atomic_load(&malformed_answered)));
    json_object_set_new(o, "oversize", json_integer(n_oversize));
    json_object_set_new(o, "oversize_answered", json_integer(atomic_load(&oversize_answered)));
    json_object_set_new(o, "oversize_written_whole", json_integer(atomic_load(&oversize_written)));
    json_object_set_new(o, "vanished", json_integer(atomic_load(&vanished)));
    json_object_set_new(o, "alive_after", json_boolean(alive));
    char *s = json_dumps(o, JSON_COMPACT);
    printf("%s\n", s);
    free(s);
    json_decref(o);
    free(idle);
    free(lat_status);
    free(th);
    free(ws);
    return 0;
}

/* N idle connections, then one more: what does that one get? */
static char **limit_exec;   /* limit: a command run while the connections are held */

/* Runs argv with stdout and stderr to a pipe; fills its exit status and the
 * first line of its output. */
static void run_held(char **argv, int *ret_status, char *out, size_t n_out) {
    int p[2];
    out[0] = '\0';
    *ret_status = -1;
    if (pipe(p) < 0)
        return;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(p[1], STDOUT_FILENO);
        dup2(p[1], STDERR_FILENO);
        close(p[0]);
        execv(argv[0], argv);
        _exit(127);
    }
    close(p[1]);
    size_t len = 0;
    ssize_t k;
    while (len + 1 < n_out && (k = read(p[0], out + len, n_out - 1 - len)) > 0)
        len += (size_t)k;
    out[len] = '\0';
    out[strcspn(out, "\n")] = '\0';
    close(p[0]);
    int st = 0;
    if (pid > 0 && waitpid(pid, &st, 0) == pid)
        *ret_status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static int run_limit(void) {
    int *fds = calloc((size_t)n_idle + 1, sizeof *fds);
    if (!fds)
        return 1;
    int connected = 0;
    for (int i = 0; i < n_idle; i++) {
        fds[i] = conn_new(5);
        connected += fds[i] >= 0;
    }
    usleep(200000);   /* let the daemon accept them all */
    json_t *o = json_object();
    json_object_set_new(o, "idle", json_integer(n_idle));
    json_object_set_new(o, "idle_connected", json_integer(connected));
    int fd = conn_new(5);
    if (fd < 0) {
        json_object_set_new(o, "probe", json_string("connect failed"));
        json_object_set_new(o, "probe_error", json_string(strerror(errno)));
    } else {
        struct proto_buf b;
        proto_buf_init(&b, PROTO_MAX_MSG + 1);
        /* A well-behaved client sends its request at once; the daemon's
         * unprompted too_many_clients reply may come before or after. */
        int sr = send_all(fd, "{\"id\":1,\"op\":\"ping\"}\n", 21);
        json_t *m = NULL;
        struct proto_error e = {0};
        int r = proto_read_msg(fd, &b, &m, &e);
        if (r == 1 && err_code(m)) {
            json_object_set_new(o, "probe", json_string(err_code(m)));
            /* The message names the limit that refused it. */
            const char *why = json_string_value(json_object_get(json_object_get(m, "error"), "message"));
            json_object_set_new(o, "probe_message", json_string(why ? why : ""));
        }
        else if (r == 1 && json_is_true(json_object_get(m, "pong")))
            json_object_set_new(o, "probe", json_string("pong"));
        else if (r == 1)
            json_object_set_new(o, "probe", json_string("other reply"));
        else
            json_object_set_new(o, "probe", json_string(r == 0 ? "end of stream" : e.msg));
        if (sr < 0)
            json_object_set_new(o, "probe_send", json_string(strerror(-sr)));
        json_decref(m);
        proto_buf_free(&b);
        close(fd);
    }
    if (limit_exec) {
        /* Whether the client sees the reply races with the daemon's close,
         * so the command runs several times; the first odd outcome (not 0,
         * not a too_many_clients message) is the one reported. */
        int st = 0, n_clean = 0;
        char text[512] = "", first[512] = "";
        int first_st = 0;
        bool odd_seen = false;
        for (int i = 0; i < 10; i++) {
            run_held(limit_exec, &st, text, sizeof text);
            bool clean = st == 0 || strstr(text, "too_many_clients");
            n_clean += clean;
            if ((!clean && !odd_seen) || i == 0) {
                odd_seen = !clean;
                snprintf(first, sizeof first, "%s", text);
                first_st = st;
            }
        }
        json_object_set_new(o, "exec_runs", json_integer(10));
        json_object_set_new(o, "exec_clean", json_integer(n_clean));
        json_object_set_new(o, "exec_status", json_integer(first_st));
        json_object_set_new(o, "exec_output", json_string(first));
    }
    int replied = 0, open = 0;
    for (int i = 0; i < n_idle; i++)
        if (fds[i] >= 0) {
            open += conn_state(fds[i], &replied);
            close(fds[i]);
        }
    json_object_set_new(o, "idle_open_at_end", json_integer(open));
    usleep(200000);
    json_object_set_new(o, "ping_after_release", json_boolean(ping_fresh() == 0));
    char *s = json_dumps(o, JSON_COMPACT);
    printf("%s\n", s);
    free(s);
    json_decref(o);
    free(fds);
    return 0;
}

static int usage(void) {
    fprintf(stderr, "usage: load_client --socket S load --job ID [--clients N] [--requests N] [--idle N]\n"
                    "                   [--half N] [--malformed N] [--oversize N] [--vanish N]\n"
                    "       load_client --socket S limit --idle N [--exec PROGRAM ARGS...]\n");
    return 2;
}

int main(int argc, char **argv) {
    const char *mode = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int *knob = !strcmp(a, "--clients")     ? &n_clients
                  : !strcmp(a, "--requests")  ? &n_requests
                  : !strcmp(a, "--idle")      ? &n_idle
                  : !strcmp(a, "--half")      ? &n_half
                  : !strcmp(a, "--malformed") ? &n_malformed
                  : !strcmp(a, "--oversize")  ? &n_oversize
                  : !strcmp(a, "--vanish")    ? &n_vanish
                                              : NULL;
        if (knob && v) {
            *knob = atoi(v);
            i++;
        } else if (!strcmp(a, "--socket") && v) {
            sock_path = v;
            i++;
        } else if (!strcmp(a, "--job") && v) {
            job_id = atoll(v);
            i++;
        } else if (!strcmp(a, "--exec") && v) {
            limit_exec = argv + i + 1;
            break;
        } else if (!strcmp(a, "load") || !strcmp(a, "limit")) {
            mode = a;
        } else {
            return usage();
        }
    }
    if (!sock_path || !mode || n_clients < 1 || n_requests < 1 || n_idle < 0 || n_half < 0)
        return usage();
    if (!strcmp(mode, "load") && job_id <= 0)
        return usage();
    return !strcmp(mode, "load") ? run_load() : run_limit();
}
