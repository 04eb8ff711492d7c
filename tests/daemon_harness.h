/* daemon_harness: what every case of tests/test_daemon.c shares. It starts
 * the real svdllmd (start_daemon: --ready-fd, optionally $NOTIFY_SOCKET),
 * talks to it over the raw protocol (conn_open, request, expect_error) and
 * through svdllmctl (ctl, ctl_as), and runs the named cases one by one
 * (daemon_harness_main): each case gets its own mkdtemp directory (dir, with
 * the socket, state and log paths below it and calib-200k.txt, the first
 * 200 kB of the calibration text, already written), a fresh set of daemon
 * knobs (run_as, daemon_fault, ...) and the SV_TEST_TIMEOUT alarm, and no
 * daemon left running after it. A case's directory is removed when it
 * passed and kept (named on stderr with the daemon's log) when it failed.
 *
 * The globals are the cases' shared vocabulary; a case that points them
 * elsewhere (use_own_state, side_enter) puts them back before it returns.
 * The SV_CHECK counters are shared with the cases' file (SV_HARNESS_SHARED). */
#ifndef DAEMON_HARNESS_H
#define DAEMON_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include <jansson.h>

#include "cases.h"
#include "proto.h"

extern const char *svdllmd, *svdllmctl;   /* the binaries under test (argv[1], argv[2]) */
extern char dir[256];                     /* this case's mkdtemp directory */
extern char sock_path[300], state_dir[300], log_path[300];
extern char model[1024], calib[1024], model656[1024], srcdir[512];
extern pid_t daemon_pid;                  /* the running daemon, or -1 */
extern uid_t run_as;                      /* when non-zero (and we are root): the daemon's uid */
extern const char *daemon_fault;          /* SVDLLM_FAULT for the daemon (NULL: unset) */
extern const char *daemon_release;        /* SVDLLM_FAULT_RELEASE for the daemon (NULL: unset) */
extern const char *daemon_threads;        /* --threads for the daemon (NULL: not passed) */

/* ---- Daemon process ---- */
int start_daemon(const char *notify, const char *config);
void check_log_clean(void);
int stop_daemon(int sig);
/* The daemon most request cases talk to: a settings file (max_clients 4,
 * socket_mode 0600, threads 1) and a $NOTIFY_SOCKET path; checks the socket's
 * mode and ping. stop_main_daemon: ping, SIGTERM exits 0, socket removed. */
bool start_main_daemon(void);
void stop_main_daemon(void);
/* Points state_dir and log_path at DIR/state-<name> and DIR/svdllmd-<name>.log
 * until use_own_state(NULL) puts the previous ones back. */
void use_own_state(const char *name);
/* A daemon of its own for one test, started from config text, its socket in
 * dir/conn (which other uids can reach while it runs: dir is made 0711 and
 * the config should set socket_mode = 0666); side_leave() stops it and puts
 * the previous daemon's globals back. */
struct side {
    char sock[300], state[300], log[300];
    pid_t pid;
    bool up;
};
bool side_enter(struct side *sv, const char *name, const char *config);
void side_leave(struct side *sv);

/* ---- Raw client ---- */
struct conn {
    int fd;
    struct proto_buf b;
};
int conn_open(struct conn *c);
void conn_close(struct conn *c);
void send_raw(struct conn *c, const char *data, size_t n);
json_t *recv_msg(struct conn *c);
json_t *request(struct conn *c, const char *line);
const char *err_code(json_t *m);
const char *err_msg(json_t *m);
void check_ping(void);
void expect_error_line(int lineno, const char *line, const char *code, const char *needle);
#define expect_error(line, code, needle) expect_error_line(__LINE__, line, code, needle)
/* method svdllm unless extra names one */
char *submit_line(const char *model_dir, const char *out, const char *extra);
long long submit_ok(const char *out, const char *extra);
json_t *job_status(long long id);
char *watch_end(long long id, int *n_events);

/* ---- svdllmctl ---- */
struct ctl_result {
    int status;
    char out[65536];
    char err[4096];
};
void ctl(struct ctl_result *r, const char *socket_path, const char *const *args);
void ctl_as(uid_t uid, struct ctl_result *r, const char *const *args);

/* ---- Small file helpers ---- */
void slurp(const char *path, char *dst, size_t n);
void write_file(const char *path, const char *text);
int lines(const char *s);

/* ---- Cases ---- */
/* test_daemon SVDLLMD SVDLLMCTL [CASE...]: the named cases (none: all, in
 * table order), each as described above; exits 1 when any check failed.
 * test_daemon --list: the case names, one a line.
 * test_daemon --registered NAME...: exits 1 unless the names are exactly the
 * table's (meson.build's list against this file's, so no case goes unrun). */
int daemon_harness_main(int argc, char **argv, const struct sv_case *cases, size_t n_cases);

#endif
