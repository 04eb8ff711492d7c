/* server: svdllmd's event loop side: the listening socket, clients, the
 * protocol's op handlers, the in-memory job table and watchers.
 *
 * Everything here runs on the libuv loop thread and never blocks: file and
 * SQLite work is handed to the runner's threads (daemon/runner.h) and comes
 * back as events. The one exception is server_new(), which runs before the
 * loop serves anyone: it recovers the store (requeues interrupted jobs) and
 * loads the job table synchronously. */
#ifndef SERVER_H
#define SERVER_H

#include <stddef.h>
#include <sys/types.h>

#include <uv.h>

#include "sv_err.h"

struct server_config {
    const char *socket_path;
    const char *state_dir;        /* exists, holds jobs/ */
    mode_t socket_mode;           /* applied to the socket file after bind */
    int max_clients;              /* connections served at once */
    int max_clients_per_uid;      /* of those, per peer uid other than root */
    int root_reserved_clients;    /* of max_clients, kept for root (uid 0); at most
                                   * max_clients - 1 is applied */
    int max_rejected;             /* refused connections kept open (reading and
                                   * discarding) until their too_many_clients reply
                                   * is read; beyond that they are closed at once */
    int idle_timeout;             /* s without a request, nothing pending: closed (0: never) */
    int line_timeout;             /* s for a started line to end with '\n' (0: never) */
    int max_queued_jobs;          /* jobs in state queued (plus submits being checked) */
    int max_evals;                /* eval requests queued or running */
    int threads;                  /* compute threads in force (forward_threads_set's
                                   * result): reported in job objects and version */
    int max_inflight;             /* asynchronous requests pending per connection */
    size_t max_unsent;            /* bytes of replies a client may leave unread */
    /* Called once when shutdown begins (e.g. to send STOPPING=1). May be NULL. */
    void (*on_stopping)(void);
};

#define SERVER_DEFAULT_MAX_CLIENTS 64
#define SERVER_DEFAULT_MAX_CLIENTS_PER_UID 16
#define SERVER_DEFAULT_ROOT_RESERVED 4
#define SERVER_DEFAULT_MAX_REJECTED 64
#define SERVER_DEFAULT_IDLE_TIMEOUT 300
#define SERVER_DEFAULT_LINE_TIMEOUT 30
#define SERVER_DEFAULT_MAX_QUEUED 256
#define SERVER_DEFAULT_MAX_EVALS 8
#define SERVER_DEFAULT_MAX_INFLIGHT 16
#define SERVER_DEFAULT_MAX_UNSENT (8u << 20)

struct server;

/* Recovers and loads the job table, starts the runner threads, binds and
 * listens on the socket, and installs SIGTERM/SIGINT handlers. On success the
 * caller signals readiness and runs the loop; uv_run returns after a signal
 * once every handle is closed. */
int server_new(struct server **ret, uv_loop_t *loop, const struct server_config *cfg,
               struct sv_err *err);
/* Frees what is left after uv_run returned. Accepts NULL. */
void server_free(struct server *s);
/* Number of jobs requeued by the start-up recovery (for the log). */
int server_recovered(const struct server *s);

#endif
