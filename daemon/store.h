/* store: svdllmd's SQLite database of jobs and checkpointed layers.
 *
 * One struct store is one connection and belongs to one thread; the daemon
 * opens one per worker thread (never on the event-loop thread after start-up).
 * The schema is schema/store.sql; the durability protocol is written at the
 * top of store.c. Functions return 0 (or a documented positive value) or a
 * negative errno-style code with err filled. */
#ifndef STORE_H
#define STORE_H

#include <stdbool.h>
#include <stdint.h>

#include "compress.h"
#include "sv_err.h"

enum job_state { JOB_QUEUED = 0, JOB_RUNNING, JOB_DONE, JOB_FAILED, JOB_CANCELLED, JOB_STATE_COUNT };

/* "queued", "running", "done", "failed", "cancelled". */
const char *store_state_name(enum job_state s);
/* done, failed and cancelled never change again. */
bool store_state_final(enum job_state s);

struct store_job {
    int64_t id;
    enum job_state state;
    struct compress_params params;    /* work_dir included */
    char key[65];                     /* params_job_key() at submit */
    uint32_t owner_uid;
    uint32_t owner_gid;               /* SO_PEERCRED gid at submit; (uint32_t)-1 if not recorded */
    int64_t created_at, started_at, finished_at;   /* unix seconds, 0 = not yet */
    char error[SV_ERR_MSG_MAX];       /* "" unless failed/cancelled */
    int n_layers;                     /* 0 until the runner has seen the model */
    int layers_done;                  /* committed layers rows */
    bool has_result;                  /* done: result and peak_rss are set */
    struct compress_result result;
    uint64_t peak_rss;                /* bytes */
    bool keep_checkpoints;            /* done: the work directory is not emptied */
};

struct store;

/* Opens (creating) the database at path: WAL, synchronous=FULL, foreign keys,
 * a busy timeout for the other connections, and the migrations of
 * schema/store.sql up to the newest version. */
int store_open(struct store **ret, const char *path, struct sv_err *err);
void store_free(struct store *s);

/* Start-up recovery: every 'running' job was interrupted; put it back to
 * 'queued' (it keeps its id, so FIFO order resumes it first). Returns the
 * number of jobs requeued. */
int store_recover(struct store *s, struct sv_err *err);

/* Inserts j (state queued; params, key, owner_uid, owner_gid and created_at taken from
 * j) and creates its work directory jobs_dir/<id> in the same transaction:
 * the row commits only after the directory is durable. Fills j->id and
 * j->params.work_dir. */
int store_job_insert(struct store *s, struct store_job *j, const char *jobs_dir, struct sv_err *err);
/* Returns 0 with *ret filled, or -ENOENT. */
int store_job_get(struct store *s, int64_t id, struct store_job *ret, struct sv_err *err);
/* Calls fn for every job in id order; a non-zero return from fn stops. */
int store_job_list(struct store *s, int (*fn)(void *ctx, const struct store_job *j), void *ctx,
                   struct sv_err *err);
/* The oldest queued job: returns 1 with *ret_id, 0 if none. */
int store_job_next_queued(struct store *s, int64_t *ret_id, struct sv_err *err);
/* queued -> running (sets started_at the first time). Returns 1 if claimed,
 * 0 if the job was no longer queued (cancelled meanwhile). */
int store_job_claim(struct store *s, int64_t id, struct sv_err *err);
/* queued -> cancelled. Returns 1 if done, 0 if the job was not queued. */
int store_job_cancel_queued(struct store *s, int64_t id, const char *why, struct sv_err *err);
/* running -> state (done, failed or cancelled) with error text (may be NULL)
 * and, for done, the result. */
int store_job_finish(struct store *s, int64_t id, enum job_state state, const char *error,
                     const struct compress_result *result, uint64_t peak_rss, struct sv_err *err);

/* Resume of a job that ended 'failed' or 'cancelled' (or, with running_ok,
 * of a 'running' row that no thread runs: its final state could not be
 * recorded; the caller makes sure it is not the job being run): back to
 * 'queued' with its layers rows, work directory and started_at kept, error
 * and finished_at cleared. Returns 1 if resumed, 0 if the job is in another
 * state (or does not exist), -EEXIST while another queued or running job has
 * the same out. */
int store_job_resume(struct store *s, int64_t id, bool running_ok, struct sv_err *err);

/* Deletes a done, failed or cancelled job's row and its layers rows in one
 * transaction (svdllmctl rm; the caller removes the work directory first).
 * Returns 1 if deleted, 0 if the job does not exist or is not final. */
int store_job_delete(struct store *s, int64_t id, struct sv_err *err);

/* Returns 1 with ck filled if layer has a committed row, 0 if not. */
int store_layer_get(struct store *s, int64_t job_id, int layer, struct compress_checkpoint *ck,
                    struct sv_err *err);
/* Commits layer's row (and the job's n_layers) in one transaction. */
int store_layer_commit(struct store *s, int64_t job_id, int layer, int n_layers,
                       const struct compress_checkpoint *ck, struct sv_err *err);

/* Forgets job_id's layers rows from layer `from` on (their checkpoints are
 * damaged, or depend on one that is); returns the number of rows deleted. */
int store_layers_drop(struct store *s, int64_t job_id, int from, struct sv_err *err);

#endif
