/* svdllmd: the compression daemon's entry point.
 *
 * Reads flags and the optional --config file (strict key = value, every error
 * with file:line), prepares the state directory (locked against a second
 * daemon), lets server_new() recover interrupted jobs and listen, then
 * signals readiness (READY=1 on $NOTIFY_SOCKET and on --ready-fd) and runs
 * the libuv loop until SIGTERM/SIGINT. Command-line flags override the file.
 * The compute thread count is decided here, once, before any worker thread
 * exists (forward_threads_set: BLIS and OpenMP). */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <uv.h>

#include "forward.h"
#include "log.h"
#include "runner.h"
#include "server.h"

#ifndef SV_VERSION
#define SV_VERSION "unknown"
#endif

#define DEFAULT_SOCKET "/run/svdllmd/svdllmd.sock"
#define DEFAULT_STATE_DIR "/var/lib/svdllmd"
#define MAX_THREADS 1024

struct settings {
    char socket_path[PATH_MAX];
    char state_dir[PATH_MAX];
    enum log_level log_level;
    mode_t socket_mode;
    int max_clients, max_queued_jobs, max_evals;
    int max_clients_per_uid, root_reserved_clients, max_rejected;
    int idle_timeout, line_timeout;   /* seconds, 0: never */
    int threads;          /* 0: the CPUs this process may run on */
    int ready_fd;
};

static void usage(FILE *f) {
    fprintf(f,
            "Usage: svdllmd [--socket PATH] [--state-dir DIR] [--config FILE]\n"
            "               [--log-level err|warning|notice|info|debug] [--threads N]\n"
            "               [--ready-fd N]\n"
            "\n"
            "  --socket PATH     Unix socket to serve (default " DEFAULT_SOCKET ")\n"
            "  --state-dir DIR   jobs database and checkpoints (default " DEFAULT_STATE_DIR ")\n"
            "  --config FILE     key = value settings: socket, state_dir, log_level,\n"
            "                    socket_mode, max_clients, max_clients_per_uid,\n"
            "                    root_reserved_clients, max_rejected, idle_timeout,\n"
            "                    line_timeout, max_queued_jobs, max_evals, threads\n"
            "  --log-level L     default info\n"
            "  --threads N       compute threads of every job and eval, 1..1024 (default or\n"
            "                    0: the CPUs this process may run on, sched_getaffinity)\n"
            "  --ready-fd N      write READY=1 to fd N once serving, then close it\n");
}

/* ---- Config file -------------------------------------------------------------- */

static char *trim(char *s) {
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n'))
        s[--n] = '\0';
    return s;
}

static int parse_int(const char *v, int min, int max, int base, int *ret) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, base);
    if (errno || end == v || *end || x < min || x > max)
        return -EINVAL;
    *ret = (int)x;
    return 0;
}

static int set_path(char dst[PATH_MAX], const char *v) {
    if (!*v || strlen(v) >= PATH_MAX)
        return -EINVAL;
    memcpy(dst, v, strlen(v) + 1);
    return 0;
}

/* Applies key = value; returns 0 or -EINVAL with why filled. */
static int apply_key(struct settings *st, const char *key, const char *v, const char **why) {
    int x;
    if (strcmp(key, "socket") == 0) {
        *why = "expected a path";
        return set_path(st->socket_path, v);
    }
    if (strcmp(key, "state_dir") == 0) {
        *why = "expected a path";
        return set_path(st->state_dir, v);
    }
    if (strcmp(key, "log_level") == 0) {
        *why = "expected err, warning, notice, info or debug";
        return log_level_parse(v, &st->log_level);
    }
    if (strcmp(key, "socket_mode") == 0) {
        *why = "expected an octal mode such as 0660";
        if (parse_int(v, 0, 0777, 8, &x) < 0)
            return -EINVAL;
        st->socket_mode = (mode_t)x;
        return 0;
    }
    if (strcmp(key, "max_clients") == 0) {
        *why = "expected an integer in [1, 4096]";
        return parse_int(v, 1, 4096, 10, &st->max_clients);
    }
    if (strcmp(key, "max_clients_per_uid") == 0) {
        *why = "expected an integer in [1, 4096]";
        return parse_int(v, 1, 4096, 10, &st->max_clients_per_uid);
    }
    if (strcmp(key, "root_reserved_clients") == 0) {
        *why = "expected an integer in [0, 4096]";
        return parse_int(v, 0, 4096, 10, &st->root_reserved_clients);
    }
    if (strcmp(key, "max_rejected") == 0) {
        *why = "expected an integer in [0, 4096]";
        return parse_int(v, 0, 4096, 10, &st->max_rejected);
    }
    if (strcmp(key, "idle_timeout") == 0) {
        *why = "expected seconds in [0, 86400]; 0: never";
        return parse_int(v, 0, 86400, 10, &st->idle_timeout);
    }
    if (strcmp(key, "line_timeout") == 0) {
        *why = "expected seconds in [0, 3600]; 0: never";
        return parse_int(v, 0, 3600, 10, &st->line_timeout);
    }
    if (strcmp(key, "max_queued_jobs") == 0) {
        *why = "expected an integer in [1, 100000]";
        return parse_int(v, 1, 100000, 10, &st->max_queued_jobs);
    }
    if (strcmp(key, "threads") == 0) {
        *why = "expected an integer in [0, 1024]; 0: the CPUs this process may run on";
        return parse_int(v, 0, MAX_THREADS, 10, &st->threads);
    }
    if (strcmp(key, "max_evals") == 0) {
        *why = "expected an integer in [1, 1024]";
        return parse_int(v, 1, 1024, 10, &st->max_evals);
    }
    *why = NULL;
    return -ENOENT;
}

static int load_config(struct settings *st, const char *path) {
    FILE *f = fopen(path, "re");
    if (!f) {
        fprintf(stderr, "svdllmd: %s: %s\n", path, strerror(errno));
        return -1;
    }
    char line[PATH_MAX + 128];
    char seen[32][32];
    int n_seen = 0, lineno = 0, r = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        if (!strchr(line, '\n') && !feof(f)) {
            fprintf(stderr, "svdllmd: %s:%d: line too long\n", path, lineno);
            r = -1;
            break;
        }
        char *s = trim(line);
        if (!*s || *s == '#')
            continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            fprintf(stderr, "svdllmd: %s:%d: expected key = value\n", path, lineno);
            r = -1;
            break;
        }
        *eq = '\0';
        char *key = trim(s), *val = trim(eq + 1);
        bool dup = false;
        for (int i = 0; i < n_seen; i++)
            dup |= strcmp(seen[i], key) == 0;
        if (dup) {
            fprintf(stderr, "svdllmd: %s:%d: '%s' is set twice\n", path, lineno, key);
            r = -1;
            break;
        }
        const char *why = NULL;
        int e = apply_key(st, key, val, &why);
        if (e == -ENOENT) {
            fprintf(stderr, "svdllmd: %s:%d: unknown key '%s'\n", path, lineno, key);
            r = -1;
            break;
        }
        if (e < 0) {
            fprintf(stderr, "svdllmd: %s:%d: %s: invalid value '%s' (%s)\n", path, lineno, key, val, why);
            r = -1;
            break;
        }
        if (n_seen < 32)
            snprintf(seen[n_seen++], sizeof seen[0], "%s", key);
    }
    if (r == 0 && ferror(f)) {
        fprintf(stderr, "svdllmd: %s: read error\n", path);
        r = -1;
    }
    fclose(f);
    return r;
}

/* ---- Readiness ------------------------------------------------------------------- */

/* sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET, which may
 * be a path or an abstract name written with a leading '@'. */
static void notify(const char *msg) {
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path)
        return;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t n = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || n >= sizeof sa.sun_path) {
        log_msg(LOG_WARNING, "NOTIFY_SOCKET=%s: unsupported address", path);
        return;
    }
    memcpy(sa.sun_path, path, n);
    if (sa.sun_path[0] == '@')
        sa.sun_path[0] = '\0';
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (path[0] == '/'));
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        log_msg(LOG_WARNING, "notify: socket: %s", strerror(errno));
        return;
    }
    if (sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sa, len) < 0)
        log_msg(LOG_WARNING, "notify %s: %s", path, strerror(errno));
    close(fd);
}

static void on_stopping(void) {
    notify("STOPPING=1");
}

static int ready_fd_write(int fd) {
    static const char msg[] = "READY=1\n";
    size_t off = 0;
    while (off < sizeof msg - 1) {
        ssize_t w = write(fd, msg + off, sizeof msg - 1 - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -errno;
        off += (size_t)w;
    }
    return 0;
}

/* ---- State directory --------------------------------------------------------------- */

static int prepare_state(const char *dir, int *ret_lock) {
    if (mkdir(dir, 0750) < 0 && errno != EEXIST) {
        log_msg(LOG_ERR, "state directory %s: %s", dir, strerror(errno));
        return -1;
    }
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/" RUNNER_JOBS_DIR, dir);
    if (mkdir(path, 0750) < 0 && errno != EEXIST) {
        log_msg(LOG_ERR, "%s: %s", path, strerror(errno));
        return -1;
    }
    snprintf(path, sizeof path, "%s/svdllmd.lock", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) {
        log_msg(LOG_ERR, "%s: %s", path, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        log_msg(LOG_ERR, "state directory %s: %s", dir,
                errno == EWOULDBLOCK ? "in use by another svdllmd" : strerror(errno));
        close(fd);
        return -1;
    }
    *ret_lock = fd;
    return 0;
}

int main(int argc, char **argv) {
    struct settings st = {
        .socket_path = DEFAULT_SOCKET,
        .state_dir = DEFAULT_STATE_DIR,
        .log_level = LOG_INFO,
        .socket_mode = 0660,
        .max_clients = SERVER_DEFAULT_MAX_CLIENTS,
        .max_clients_per_uid = SERVER_DEFAULT_MAX_CLIENTS_PER_UID,
        .root_reserved_clients = SERVER_DEFAULT_ROOT_RESERVED,
        .max_rejected = SERVER_DEFAULT_MAX_REJECTED,
        .idle_timeout = SERVER_DEFAULT_IDLE_TIMEOUT,
        .line_timeout = SERVER_DEFAULT_LINE_TIMEOUT,
        .max_queued_jobs = SERVER_DEFAULT_MAX_QUEUED,
        .max_evals = SERVER_DEFAULT_MAX_EVALS,
        .ready_fd = -1,
    };
    static const struct option longopts[] = {
        {"socket", required_argument, NULL, 's'},
        {"state-dir", required_argument, NULL, 'd'},
        {"config", required_argument, NULL, 'c'},
        {"log-level", required_argument, NULL, 'l'},
        {"threads", required_argument, NULL, 't'},
        {"ready-fd", required_argument, NULL, 'r'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    const char *opt_socket = NULL, *opt_state = NULL, *opt_config = NULL, *opt_level = NULL,
               *opt_threads = NULL;
    int opt;
    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (opt) {
        case 's': opt_socket = optarg; break;
        case 'd': opt_state = optarg; break;
        case 'c': opt_config = optarg; break;
        case 'l': opt_level = optarg; break;
        case 't': opt_threads = optarg; break;
        case 'r':
            if (parse_int(optarg, 0, INT_MAX, 10, &st.ready_fd) < 0 || fcntl(st.ready_fd, F_GETFD) < 0) {
                fprintf(stderr, "svdllmd: --ready-fd %s: not an open file descriptor\n", optarg);
                return 2;
            }
            break;
        case 'h': usage(stdout); return 0;
        case 'V': printf("svdllmd %s\n", SV_VERSION); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "svdllmd: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (opt_config && load_config(&st, opt_config) < 0)
        return 1;
    const struct {
        const char *flag, *key, *val;
    } flags[] = {
        {"--socket", "socket", opt_socket},
        {"--state-dir", "state_dir", opt_state},
        {"--log-level", "log_level", opt_level},
        {"--threads", "threads", opt_threads},
    };
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        const char *why = NULL;
        if (flags[i].val && apply_key(&st, flags[i].key, flags[i].val, &why) < 0) {
            fprintf(stderr, "svdllmd: %s: invalid value '%s' (%s)\n", flags[i].flag, flags[i].val, why);
            return 2;
        }
    }
    if (st.ready_fd >= 0)
        fcntl(st.ready_fd, F_SETFD, FD_CLOEXEC);
    log_set_level(st.log_level);
    signal(SIGPIPE, SIG_IGN);

    int lock_fd = -1;
    if (prepare_state(st.state_dir, &lock_fd) < 0)
        return 1;
    log_msg(LOG_INFO, "svdllmd %s starting: socket %s, state %s", SV_VERSION, st.socket_path,
            st.state_dir);
    int reserved = st.root_reserved_clients < st.max_clients ? st.root_reserved_clients : st.max_clients - 1;
    log_msg(LOG_INFO, "clients: %d at most, %d per uid, %d of them for root only%s; idle_timeout %d s, "
            "line_timeout %d s", st.max_clients, st.max_clients_per_uid, reserved,
            reserved < st.root_reserved_clients ? " (root_reserved_clients capped at max_clients - 1)" : "",
            st.idle_timeout, st.line_timeout);
    /* Before server_new() starts the worker threads, which adopt this count. */
    int threads = forward_threads_set(st.threads);
    log_msg(LOG_NOTICE, "%d compute thread(s) per job and eval (%s)", threads,
            st.threads > 0 ? "set by threads" : "the CPUs this process may run on");

    uv_loop_t loop;
    int r = uv_loop_init(&loop);
    if (r < 0) {
        log_msg(LOG_ERR, "uv_loop_init: %s", uv_strerror(r));
        return 1;
    }
    struct server_config cfg = {
        .socket_path = st.socket_path,
        .state_dir = st.state_dir,
        .socket_mode = st.socket_mode,
        .max_clients = st.max_clients,
        .max_clients_per_uid = st.max_clients_per_uid,
        .root_reserved_clients = st.root_reserved_clients,
        .max_rejected = st.max_rejected,
        .idle_timeout = st.idle_timeout,
        .line_timeout = st.line_timeout,
        .max_queued_jobs = st.max_queued_jobs,
        .max_evals = st.max_evals,
        .threads = threads,
        .max_inflight = SERVER_DEFAULT_MAX_INFLIGHT,
        .max_unsent = SERVER_DEFAULT_MAX_UNSENT,
        .on_stopping = on_stopping,
    };
    struct server *srv = NULL;
    struct sv_err err = {0};
    if (server_new(&srv, &loop, &cfg, &err) < 0) {
        log_msg(LOG_ERR, "%s", err.msg);
        uv_loop_close(&loop);
        return 1;
    }
    if (server_recovered(srv) > 0)
        log_msg(LOG_NOTICE, "recovered %d interrupted job(s); they resume first", server_recovered(srv));

    /* Recovery is done and the socket listens: tell whoever waits. */
    char status[PATH_MAX + 64];
    snprintf(status, sizeof status, "READY=1\nSTATUS=serving on %s\nMAINPID=%ld", st.socket_path,
             (long)getpid());
    notify(status);
    if (st.ready_fd >= 0) {
        if ((r = ready_fd_write(st.ready_fd)) < 0)
            log_msg(LOG_WARNING, "--ready-fd %d: %s", st.ready_fd, strerror(-r));
        close(st.ready_fd);
    }
    log_msg(LOG_INFO, "ready");

    uv_run(&loop, UV_RUN_DEFAULT);
    server_free(srv);
    r = uv_loop_close(&loop);
    if (r < 0)
        log_msg(LOG_WARNING, "uv_loop_close: %s", uv_strerror(r));
    close(lock_fd);
    log_msg(LOG_INFO, "stopped");
    return 0;
}
