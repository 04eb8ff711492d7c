/* daemon_harness: the scaffolding of tests/test_daemon.c's cases (see
 * daemon_harness.h): the daemon process, the raw client, svdllmctl, and the
 * runner that gives each case its own directory, daemon knobs and alarm. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon_harness.h"
#include "harness.h"

int sv_test_failures, sv_test_checks;   /* harness.h's counters, shared (SV_HARNESS_SHARED) */

const char *svdllmd, *svdllmctl;
char dir[256], sock_path[300], state_dir[300], log_path[300];
char model[1024], calib[1024], model656[1024], srcdir[512];
pid_t daemon_pid = -1;
uid_t run_as = 0;
const char *daemon_fault, *daemon_release, *daemon_threads;

/* ---- Daemon process --------------------------------------------------------------- */

/* Starts svdllmd with extra args; waits for READY=1 on --ready-fd and, when
 * notify is set, on a $NOTIFY_SOCKET datagram socket at that address. */
int start_daemon(const char *notify, const char *config) {
    int p[2];
    if (pipe(p) < 0)
        return -1;
    int nfd = -1;
    struct sockaddr_un na = {.sun_family = AF_UNIX};
    socklen_t nlen = 0;
    if (notify) {
        nfd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        size_t n = strlen(notify);
        memcpy(na.sun_path, notify, n);
        if (notify[0] == '@')
            na.sun_path[0] = '\0';
        nlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (notify[0] != '@'));
        unlink(notify);
        if (bind(nfd, (struct sockaddr *)&na, nlen) < 0) {
            perror("bind notify socket");
            return -1;
        }
    }
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        int lf = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (lf >= 0)
            dup2(lf, STDERR_FILENO);
        if (notify)
            setenv("NOTIFY_SOCKET", notify, 1);
        else
            unsetenv("NOTIFY_SOCKET");
        if (daemon_fault)
            setenv("SVDLLM_FAULT", daemon_fault, 1);
        else
            unsetenv("SVDLLM_FAULT");
        if (daemon_release)
            setenv("SVDLLM_FAULT_RELEASE", daemon_release, 1);
        else
            unsetenv("SVDLLM_FAULT_RELEASE");
        if (run_as != 0 && (setgroups(0, NULL) < 0 || setgid(run_as) < 0 || setuid(run_as) < 0))
            _exit(126);
        char fdarg[16];
        snprintf(fdarg, sizeof fdarg, "%d", p[1]);
        const char *argv[16] = {svdllmd, "--socket", sock_path, "--state-dir", state_dir, "--ready-fd", fdarg,
                                "--log-level", "debug"};
        int n = 9;
        if (config) {
            argv[n++] = "--config";
            argv[n++] = config;
        }
        if (daemon_threads) {
            argv[n++] = "--threads";
            argv[n++] = daemon_threads;
        }
        argv[n] = NULL;
        execv(svdllmd, (char *const *)argv);
        _exit(127);
    }
    close(p[1]);
    daemon_pid = pid;
    struct pollfd pfd = {p[0], POLLIN, 0};
    char buf[64] = "";
    ssize_t n = 0;
    if (poll(&pfd, 1, 60000) == 1)
        n = read(p[0], buf, sizeof buf - 1);
    close(p[0]);
    int ok = n > 0 && strncmp(buf, "READY=1\n", 8) == 0;
    if (!ok)
        fprintf(stderr, "svdllmd did not signal readiness on --ready-fd (got %zd bytes)\n", n);
    if (ok && notify) {
        struct pollfd q = {nfd, POLLIN, 0};
        char msg[512] = "";
        ssize_t k = poll(&q, 1, 5000) == 1 ? recv(nfd, msg, sizeof msg - 1, 0) : -1;
        SV_CHECK(k > 0);
        SV_ASSERT_STR_CONTAINS(msg, "READY=1");
        SV_ASSERT_STR_CONTAINS(msg, "MAINPID=");
        close(nfd);
        if (notify[0] != '@')
            unlink(notify);
    }
    return ok ? 0 : -1;
}

/* Sanitizer reports in the daemon's log are failures (when built with them). */
void check_log_clean(void) {
    FILE *f = fopen(log_path, "r");
    char line[1024];
    bool bad = false;
    while (f && !bad && fgets(line, sizeof line, f)) {
        bad = strstr(line, "Sanitizer") || strstr(line, "runtime error:");
        if (bad)
            fprintf(stderr, "daemon log: %s", line);
    }
    SV_CHECK(!bad);
    if (f)
        fclose(f);
}

/* Sends sig and waits up to 60 s; returns the exit status or -1. */
int stop_daemon(int sig) {
    if (daemon_pid < 0)
        return -1;
    kill(daemon_pid, sig);
    int st = 0;
    for (int i = 0; i < 600; i++) {
        pid_t r = waitpid(daemon_pid, &st, WNOHANG);
        if (r == daemon_pid) {
            daemon_pid = -1;
            check_log_clean();
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        usleep(100000);
    }
    kill(daemon_pid, SIGKILL);
    waitpid(daemon_pid, &st, 0);
    daemon_pid = -1;
    return -1;
}


int conn_open(struct conn *c) {
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%.107s", sock_path);
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        fprintf(stderr, "connect %s: %s\n", sock_path, strerror(errno));
        close(c->fd);
        return -1;
    }
    struct timeval tv = {60, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    proto_buf_init(&c->b, PROTO_MAX_MSG + 1);
    return 0;
}

void conn_close(struct conn *c) {
    close(c->fd);
    proto_buf_free(&c->b);
}

void send_raw(struct conn *c, const char *data, size_t n) {
    size_t off = 0;
    while (off < n) {
        ssize_t k = send(c->fd, data + off, n - off, MSG_NOSIGNAL);
        if (k <= 0)
            return;
        off += (size_t)k;
    }
}

/* Next message or NULL (printing why). */
json_t *recv_msg(struct conn *c) {
    json_t *m = NULL;
    struct proto_error e = {0};
    int r = proto_read_msg(c->fd, &c->b, &m, &e);
    if (r != 1) {
        fprintf(stderr, "recv: %s\n", r == 0 ? "end of stream" : e.msg);
        return NULL;
    }
    return m;
}

json_t *request(struct conn *c, const char *line) {
    send_raw(c, line, strlen(line));
    send_raw(c, "\n", 1);
    return recv_msg(c);
}

const char *err_code(json_t *m) {
    return json_string_value(json_object_get(json_object_get(m, "error"), "code"));
}

const char *err_msg(json_t *m) {
    return json_string_value(json_object_get(json_object_get(m, "error"), "message"));
}

void check_ping(void) {
    struct conn c;
    if (conn_open(&c) < 0) {
        SV_CHECK(!"connect for ping");
        return;
    }
    json_t *m = request(&c, "{\"id\":77,\"op\":\"ping\"}");
    SV_CHECK(m && json_is_true(json_object_get(m, "ok")));
    SV_ASSERT_EQ(json_integer_value(json_object_get(m, "id")), 77);
    json_decref(m);
    conn_close(&c);
}

/* Sends line on a fresh connection, expects an error reply with code and a
 * message containing needle, then checks the daemon still answers ping. */
void expect_error_line(int lineno, const char *line, const char *code, const char *needle) {
    struct conn c;
    if (conn_open(&c) < 0) {
        SV_CHECK(!"connect");
        return;
    }
    json_t *m = request(&c, line);
    if (!m || !err_code(m) || strcmp(err_code(m), code) != 0 || !err_msg(m) || !strstr(err_msg(m), needle)) {
        char *s = m ? json_dumps(m, 0) : NULL;
        fprintf(stderr, "test_daemon.c:%d: want %s containing '%s', got %s\n", lineno, code, needle,
                s ? s : "nothing");
        free(s);
        sv_test_failures++;
    }
    sv_test_checks++;
    json_decref(m);
    conn_close(&c);
    check_ping();
}

/* A submit request with the given extra JSON members; method svdllm unless
 * extra names one (the default, auto, first runs a trial of every candidate:
 * the cases that mean it say so). */
char *submit_line(const char *model_dir, const char *out, const char *extra) {
    static char buf[8192];
    snprintf(buf, sizeof buf,
             "{\"id\":5,\"op\":\"submit\",\"model\":\"%s\",\"out\":\"%s/%s\",\"calib\":\"%s\"%s%s%s}",
             model_dir, dir, out, calib, strstr(extra, "\"method\"") ? "" : ",\"method\":\"svdllm\"",
             *extra ? "," : "", extra);
    return buf;
}


void slurp(const char *path, char *dst, size_t n) {
    FILE *f = fopen(path, "r");
    size_t k = f ? fread(dst, 1, n - 1, f) : 0;
    dst[k] = '\0';
    if (f)
        fclose(f);
}

/* Runs svdllmctl --socket SOCKET args... as uid (uid != our euid: we must
 * be root) with stdout/stderr captured; the output files are opened before
 * the uid changes. */
static void ctl_run(uid_t uid, struct ctl_result *r, const char *socket_path, const char *const *args) {
    char outp[320], errp[320];
    snprintf(outp, sizeof outp, "%s/ctl.out", dir);
    snprintf(errp, sizeof errp, "%s/ctl.err", dir);
    pid_t pid = fork();
    if (pid == 0) {
        int o = open(outp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int e = open(errp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(o, STDOUT_FILENO);
        dup2(e, STDERR_FILENO);
        if (uid != geteuid() && (setgroups(0, NULL) < 0 || setgid(uid) < 0 || setuid(uid) < 0))
            _exit(126);
        const char *argv[32] = {svdllmctl, "--socket", socket_path};
        int n = 3;
        for (int i = 0; args[i] && n < 31; i++)
            argv[n++] = args[i];
        argv[n] = NULL;
        execv(svdllmctl, (char *const *)argv);
        _exit(127);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    r->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    slurp(outp, r->out, sizeof r->out);
    slurp(errp, r->err, sizeof r->err);
}

void ctl(struct ctl_result *r, const char *socket_path, const char *const *args) {
    ctl_run(geteuid(), r, socket_path, args);
}

/* Counts lines in s. */
int lines(const char *s) {
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

long long submit_ok(const char *out, const char *extra) {
    struct conn c;
    if (conn_open(&c) < 0)
        return -1;
    json_t *m = request(&c, submit_line(model, out, extra));
    long long id = -1;
    if (m && json_is_true(json_object_get(m, "ok")))
        id = json_integer_value(json_object_get(json_object_get(m, "job"), "id"));
    else {
        char *s = m ? json_dumps(m, 0) : NULL;
        fprintf(stderr, "submit failed: %s\n", s ? s : "no reply");
        free(s);
    }
    SV_CHECK(id > 0);
    json_decref(m);
    conn_close(&c);
    return id;
}

/* Status of job id as a JSON object (caller decrefs), or NULL. */
json_t *job_status(long long id) {
    struct conn c;
    if (conn_open(&c) < 0)
        return NULL;
    char line[128];
    snprintf(line, sizeof line, "{\"id\":1,\"op\":\"status\",\"job\":%lld}", id);
    json_t *m = request(&c, line);
    conn_close(&c);
    json_t *j = json_incref(json_object_get(m, "job"));
    json_decref(m);
    return j;
}

/* Watches job id to its end over the raw protocol; returns the final state. */
char *watch_end(long long id, int *n_events) {
    static char state[32];
    state[0] = '\0';
    *n_events = 0;
    struct conn c;
    if (conn_open(&c) < 0)
        return state;
    char line[128];
    snprintf(line, sizeof line, "{\"id\":42,\"op\":\"watch\",\"job\":%lld}", id);
    json_t *m = request(&c, line);
    bool ok = m && json_is_true(json_object_get(m, "ok"));
    SV_CHECK(ok);
    json_decref(m);
    while (ok && (m = recv_msg(&c))) {
        SV_ASSERT_EQ(json_integer_value(json_object_get(m, "id")), 42);
        const char *ev = json_string_value(json_object_get(m, "event"));
        (*n_events)++;
        if (ev && strcmp(ev, "end") == 0) {
            snprintf(state, sizeof state, "%s", json_string_value(json_object_get(m, "state")));
            json_decref(m);
            break;
        }
        SV_CHECK(ev && strcmp(ev, "progress") == 0);
        json_decref(m);
    }
    conn_close(&c);
    return state;
}

/* Points state_dir and log_path at STATE/<name> and DIR/svdllmd-<name>.log
 * until use_own_state(NULL) puts the main ones back. */
void use_own_state(const char *name) {
    static char saved_state[sizeof state_dir], saved_log[sizeof log_path];
    if (name) {
        memcpy(saved_state, state_dir, sizeof state_dir);
        memcpy(saved_log, log_path, sizeof log_path);
        snprintf(state_dir, sizeof state_dir, "%s/state-%s", dir, name);
        snprintf(log_path, sizeof log_path, "%s/svdllmd-%s.log", dir, name);
    } else {
        memcpy(state_dir, saved_state, sizeof state_dir);
        memcpy(log_path, saved_log, sizeof log_path);
    }
}



bool side_enter(struct side *sv, const char *name, const char *config) {
    memcpy(sv->sock, sock_path, sizeof sock_path);
    memcpy(sv->state, state_dir, sizeof state_dir);
    memcpy(sv->log, log_path, sizeof log_path);
    sv->pid = daemon_pid;
    daemon_pid = -1;
    char sub[300], cfg[400];
    snprintf(sub, sizeof sub, "%s/conn", dir);
    mkdir(sub, 0755);
    chmod(dir, 0711);
    snprintf(sock_path, sizeof sock_path, "%.200s/%.40s.sock", sub, name);
    snprintf(state_dir, sizeof state_dir, "%.200s/state-%.40s", sub, name);
    snprintf(log_path, sizeof log_path, "%s/svdllmd-%s.log", dir, name);
    snprintf(cfg, sizeof cfg, "%s/%s.conf", sub, name);
    write_file(cfg, config);
    sv->up = start_daemon(NULL, cfg) == 0;
    if (!sv->up)
        fprintf(stderr, "side daemon %s did not start (log %s)\n", name, log_path);
    SV_CHECK(sv->up);
    return sv->up;
}

void side_leave(struct side *sv) {
    if (daemon_pid > 0)
        SV_ASSERT_EQ(stop_daemon(SIGTERM), 0);
    chmod(dir, 0700);
    memcpy(sock_path, sv->sock, sizeof sock_path);
    memcpy(state_dir, sv->state, sizeof state_dir);
    memcpy(log_path, sv->log, sizeof log_path);
    daemon_pid = sv->pid;
}

/* svdllmctl as uid against the current sock_path. */
void ctl_as(uid_t uid, struct ctl_result *r, const char *const *args) {
    ctl_run(uid, r, sock_path, args);
}

/* The alarm that ends a hung run: SIGALRM's default action would leave the
 * running daemon (and any svdllmctl child) behind, still holding the test
 * runner's output pipe, so meson would wait for its own, longer timeout and
 * the daemon would linger. Under meson the test leads its own process group
 * (a new session), so the whole group is killed; otherwise only the daemon. */
static void on_alarm(int sig) {
    (void)sig;
    static const char msg[] = "test_daemon: timeout (SV_TEST_TIMEOUT, default 900 s): killing its daemons\n";
    ssize_t w = write(STDERR_FILENO, msg, sizeof msg - 1);
    (void)w;
    if (daemon_pid > 0)
        kill(daemon_pid, SIGKILL);
    if (getpgrp() == getpid())
        kill(0, SIGKILL);
    signal(SIGALRM, SIG_DFL);
    raise(SIGALRM);
}

/* alarm() with SV_TEST_TIMEOUT seconds (default 900: meson's timeout for the
 * suite; a run with --timeout-multiplier on a loaded or sanitizer build sets
 * it to match) and the handler above. */
static void arm_timeout(void) {
    const char *t = getenv("SV_TEST_TIMEOUT");
    long s = t ? strtol(t, NULL, 10) : 900;
    signal(SIGALRM, on_alarm);
    alarm(s > 0 ? (unsigned)s : 900);
}

bool start_main_daemon(void) {
    char cfg[400], notify[400];
    snprintf(cfg, sizeof cfg, "%s/svdllmd.conf", dir);
    write_file(cfg, "# test settings\nmax_clients = 4\n\nsocket_mode = 0600\nthreads = 1\n");
    snprintf(notify, sizeof notify, "%s/notify.sock", dir);
    if (start_daemon(notify, cfg) < 0) {
        SV_CHECK(!"daemon start");
        return false;
    }
    struct stat st;
    SV_CHECK(stat(sock_path, &st) == 0 && (st.st_mode & 0777) == 0600);
    check_ping();
    return true;
}

void stop_main_daemon(void) {
    check_ping();
    SV_ASSERT_EQ(stop_daemon(SIGTERM), 0);
    SV_CHECK(access(sock_path, F_OK) != 0);   /* socket removed on exit */
}

/* ---- Cases -------------------------------------------------------------------------- */

/* One case in a fresh directory; returns its failure count. */
static int run_case(const struct sv_case *c) {
    int failures0 = sv_test_failures, checks0 = sv_test_checks;
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/svdllmd-test.XXXXXX", tmp && strlen(tmp) < 80 ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        fprintf(stderr, "mkdtemp %s: %s\n", dir, strerror(errno));
        return 1;
    }
    snprintf(sock_path, sizeof sock_path, "%s/svdllmd.sock", dir);
    snprintf(state_dir, sizeof state_dir, "%s/state", dir);
    snprintf(log_path, sizeof log_path, "%s/svdllmd.log", dir);
    daemon_pid = -1;
    run_as = 0;
    daemon_fault = daemon_release = daemon_threads = NULL;
    /* The small jobs' calibration text (submit_small and the fault cases). */
    char cmd[1600];
    snprintf(cmd, sizeof cmd, "head -c 200000 '%s' > '%s/calib-200k.txt'", calib, dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not write %s/calib-200k.txt\n", dir);
    c->run();
    if (daemon_pid > 0) {   /* every case stops what it started */
        fprintf(stderr, "case %s left svdllmd (pid %ld) running\n", c->name, (long)daemon_pid);
        sv_test_failures++;
        stop_daemon(SIGKILL);
    }
    int failed = sv_test_failures - failures0;
    printf("case %s: %d checks, %d failed\n", c->name, sv_test_checks - checks0, failed);
    if (failed == 0) {
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", dir);
    } else {
        fprintf(stderr, "case %s: kept %s (daemon log: %s)\n", c->name, dir, log_path);
    }
    return failed;
}

int daemon_harness_main(int argc, char **argv, const struct sv_case *cases, size_t n_cases) {
    int meta = sv_cases_meta(argc, argv, cases, n_cases);
    if (meta >= 0)
        return meta;
    if (argc < 3) {
        fprintf(stderr, "usage: %s SVDLLMD SVDLLMCTL [CASE...] | --list | --registered NAME...\n", argv[0]);
        return 2;
    }
    if (sv_cases_known(argc, argv, 3, cases, n_cases) != 0)
        return 2;
    svdllmd = argv[1];
    svdllmctl = argv[2];
    signal(SIGPIPE, SIG_IGN);
    arm_timeout();   /* a hang is a failure, not a stuck CI run */
    const char *src = getenv("SV_SRCDIR");
    char cwd[512];
    if (!src)
        src = getcwd(cwd, sizeof cwd);
    snprintf(srcdir, sizeof srcdir, "%s", src);
    snprintf(model, sizeof model, "%s/tests/data/stories260K-hf", src);
    snprintf(model656, sizeof model656, "%s/tests/data/tinystories-656K", src);
    snprintf(calib, sizeof calib, "%s/tests/data/text/tinystories-valid-head.txt", src);
    int failed_cases = 0;
    if (argc == 3)
        for (size_t i = 0; i < n_cases; i++)
            failed_cases += run_case(&cases[i]) != 0;
    for (int a = 3; a < argc; a++)
        failed_cases += run_case(sv_case_named(cases, n_cases, argv[a])) != 0;
    if (failed_cases)
        fprintf(stderr, "%d case(s) failed\n", failed_cases);
    return sv_test_result("test_daemon");
}
