/* test_store: daemon/store.c on its own, in a mkdtemp directory.
 *  - a fresh database: an asvd job keeps its alpha, a rom job its rank rule,
 *    layers, attn_split and centered through insert, get and list, and a
 *    reopen (nothing left to migrate) changes nothing;
 *  - a version-1 database, built by hand from the "-- version 1" section of
 *    schema/store.sql, migrates on open: user_version becomes the newest
 *    version and its old job (and layer row) read back with alpha 0 and the
 *    default rank rule;
 *  - a version-2 database (sections 1 and 2) migrates likewise: its job keeps
 *    its alpha and gets ranks default, layers 0, attn_split 0, centered off;
 *  - a database newer than the schema is refused;
 *  - resume and dropped layers: a failed job goes back to queued with its
 *    layers rows and work directory (started_at kept, error and finished_at
 *    cleared), and so does a cancelled one; done jobs are refused, a 'running' row only when
 *    the caller allows it; another live job on the same out refuses the
 *    resume with -EEXIST naming it; store_layers_drop forgets the rows from
 *    a layer on;
 *  - delete: only a final job's row and its layers rows go, in one
 *    transaction; keep_checkpoints survives insert and get. (A failed write's message, naming the database file and
 *    the errno, is checked by test_daemon on a full tmpfs.) */
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sqlite3.h>

#include "harness.h"
#include "store.h"

/* schema/store.sql as one string per line, as store.c embeds it. */
static const char *const sql_lines[] = {
#include "store_sql.h"
    NULL
};

static char tmpdir[] = "/tmp/test_store.XXXXXX";

/* If line is "-- version N", returns N; else 0 (the rule of store.c). */
static int version_of(const char *line) {
    int v = 0, n = 0;
    if (sscanf(line, "-- version %d%n", &v, &n) == 1 && line[n] == '\0' && v > 0)
        return v;
    return 0;
}

static int newest_version(void) {
    int newest = 0;
    for (size_t i = 0; sql_lines[i]; i++)
        if (version_of(sql_lines[i]) > newest)
            newest = version_of(sql_lines[i]);
    return newest;
}

/* The statements of section `version` (malloc'ed), or NULL. */
static char *section(int version) {
    size_t total = 1;
    for (size_t i = 0; sql_lines[i]; i++)
        total += strlen(sql_lines[i]) + 1;
    char *sql = malloc(total);
    if (!sql)
        return NULL;
    size_t len = 0;
    int cur = 0;
    bool found = false;
    for (size_t i = 0; sql_lines[i]; i++) {
        int v = version_of(sql_lines[i]);
        if (v) {
            cur = v;
            found |= v == version;
            continue;
        }
        if (cur != version)
            continue;
        size_t n = strlen(sql_lines[i]);
        memcpy(sql + len, sql_lines[i], n);
        len += n;
        sql[len++] = '\n';
    }
    sql[len] = '\0';
    if (!found) {
        free(sql);
        return NULL;
    }
    return sql;
}

static void path_in(char *buf, size_t n, const char *name) {
    snprintf(buf, n, "%s/%s", tmpdir, name);
}

static int db_user_version(const char *path) {
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int v = -1;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static void fill_params(struct store_job *j, enum compress_method m, double alpha) {
    memset(j, 0, sizeof *j);
    struct compress_params *p = &j->params;
    snprintf(p->model_dir, sizeof p->model_dir, "/models/tiny");
    snprintf(p->out_dir, sizeof p->out_dir, "/out/tiny-%s", params_method_name(m));
    snprintf(p->calib_path, sizeof p->calib_path, "/data/calib.txt");
    p->method = m;
    p->ratio = 0.3;
    p->alpha = alpha;
    p->nsamples = 8;
    p->seqlen = 64;
    p->seed = 7;
    memset(j->key, 'a', 64);
    j->owner_uid = 1000;
    j->created_at = 1700000000;
}

struct seen {
    int n;
    double alpha[4];
    int64_t id[4];
    struct compress_params p[4];
};

static int collect(void *ctx, const struct store_job *j) {
    struct seen *s = ctx;
    if (s->n < 4) {
        s->alpha[s->n] = j->params.alpha;
        s->id[s->n] = j->id;
        s->p[s->n] = j->params;
    }
    s->n++;
    return 0;
}

/* store_open, asserted; NULL (after a message) on failure. */
static struct store *open_store(const char *db) {
    struct sv_err err = {0};
    struct store *s = NULL;
    int r = store_open(&s, db, &err);
    SV_ASSERT_EQ(r, 0);
    if (r < 0)
        fprintf(stderr, "store_open: %s\n", err.msg);
    return r < 0 ? NULL : s;
}

static void test_fresh(void) {
    char db[PATH_MAX], jobs[PATH_MAX];
    path_in(db, sizeof db, "fresh.db");
    path_in(jobs, sizeof jobs, "jobs");
    SV_CHECK(mkdir(jobs, 0750) == 0);
    struct sv_err err = {0};
    struct store *s = open_store(db);
    if (!s)
        return;
    SV_ASSERT_EQ(db_user_version(db), newest_version());

    struct store_job a, b, c, got;
    fill_params(&a, METHOD_ASVD, 0.7);
    fill_params(&b, METHOD_SVDLLM, 0);
    fill_params(&c, METHOD_ROM, 0);
    c.params.ranks = RANKS_LAST_N;
    c.params.layers = 3;
    c.params.attn_split = 2.25;
    c.params.centered = true;
    SV_ASSERT_EQ(store_job_insert(s, &a, jobs, &err), 0);
    SV_ASSERT_EQ(store_job_insert(s, &b, jobs, &err), 0);
    SV_ASSERT_EQ(store_job_insert(s, &c, jobs, &err), 0);
    SV_CHECK(a.id > 0 && b.id > a.id && c.id > b.id);

    SV_ASSERT_EQ(store_job_get(s, a.id, &got, &err), 0);
    SV_CHECK(got.params.method == METHOD_ASVD);
    SV_CHECK(got.params.alpha == 0.7);   /* a REAL column holds the double exactly */
    SV_CHECK(got.params.ratio == 0.3);
    SV_CHECK(got.state == JOB_QUEUED);
    SV_CHECK(strcmp(got.key, a.key) == 0);
    SV_ASSERT_EQ(store_job_get(s, b.id, &got, &err), 0);
    SV_CHECK(got.params.method == METHOD_SVDLLM);
    SV_CHECK(got.params.alpha == 0);
    SV_CHECK(got.params.ranks == RANKS_DEFAULT);
    SV_CHECK(got.params.layers == 0 && got.params.attn_split == 0 && !got.params.centered);
    SV_ASSERT_EQ(store_job_get(s, c.id, &got, &err), 0);
    SV_CHECK(got.params.method == METHOD_ROM);
    SV_CHECK(got.params.ranks == RANKS_LAST_N);
    SV_ASSERT_EQ(got.params.layers, 3);
    SV_CHECK(got.params.attn_split == 2.25);
    SV_CHECK(got.params.centered);

    struct seen seen = {0};
    SV_ASSERT_EQ(store_job_list(s, collect, &seen, &err), 0);
    SV_ASSERT_EQ(seen.n, 3);
    SV_CHECK(seen.id[0] == a.id && seen.alpha[0] == 0.7);
    SV_CHECK(seen.id[1] == b.id && seen.alpha[1] == 0);
    SV_CHECK(seen.id[2] == c.id && seen.p[2].ranks == RANKS_LAST_N && seen.p[2].layers == 3 &&
             seen.p[2].attn_split == 2.25 && seen.p[2].centered);
    SV_CHECK(seen.p[0].ranks == RANKS_DEFAULT && !seen.p[0].centered);

    /* A finished job's result, inference speeds included (schema v4). */
    SV_ASSERT_EQ(store_job_claim(s, b.id, &err), 1);
    struct compress_result res = {.ppl_before = 37.2, .ppl_after = 130.9, .tok_s_before = 21467.5,
                                  .tok_s_after = 23727.25, .params_before = 393216, .params_after = 233216,
                                  .seconds = 1.5};
    SV_ASSERT_EQ(store_job_finish(s, b.id, JOB_DONE, NULL, &res, 1 << 20, &err), 0);
    SV_ASSERT_EQ(store_job_get(s, b.id, &got, &err), 0);
    SV_CHECK(got.state == JOB_DONE && got.has_result);
    SV_CHECK(got.result.ppl_after == 130.9 && got.result.tok_s_before == 21467.5 &&
             got.result.tok_s_after == 23727.25);
    store_free(s);

    /* Reopen: already at the newest version, nothing runs, the job is intact. */
    if (!(s = open_store(db)))
        return;
    SV_ASSERT_EQ(db_user_version(db), newest_version());
    SV_ASSERT_EQ(store_job_get(s, a.id, &got, &err), 0);
    SV_CHECK(got.params.alpha == 0.7);
    SV_ASSERT_EQ(store_job_get(s, c.id, &got, &err), 0);
    SV_CHECK(got.params.ranks == RANKS_LAST_N && got.params.layers == 3 && got.params.attn_split == 2.25 &&
             got.params.centered);
    store_free(s);
}

/* Builds db as an older svdllmd left it: schema sections 1..version of
 * store.sql, user_version set, then rows_sql. Returns 0 or -1. */
static int old_db(const char *db, int version, const char *rows_sql) {
    sqlite3 *raw = NULL;
    char *msg = NULL;
    int rc = sqlite3_open(db, &raw);
    for (int v = 1; v <= version && rc == SQLITE_OK; v++) {
        char *sql = section(v);
        SV_CHECK(sql != NULL);
        rc = sql ? sqlite3_exec(raw, sql, NULL, NULL, &msg) : SQLITE_ERROR;
        free(sql);
    }
    char pragma[64];
    snprintf(pragma, sizeof pragma, "PRAGMA user_version = %d;", version);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(raw, pragma, NULL, NULL, &msg);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(raw, rows_sql, NULL, NULL, &msg);
    SV_ASSERT_EQ(rc, SQLITE_OK);
    if (msg)
        fprintf(stderr, "building the version-%d database: %s\n", version, msg);
    sqlite3_free(msg);
    sqlite3_close(raw);
    return rc == SQLITE_OK ? 0 : -1;
}

/* A database that a version-`version` svdllmd left behind (sql: its rows),
 * at DIR/name, opened (and so migrated) by this store: the version before
 * and after checked; NULL when it could not be made or opened. */
static struct store *open_migrated(char *db, size_t n, const char *name, int version, const char *sql) {
    path_in(db, n, name);
    if (old_db(db, version, sql) < 0)
        return NULL;
    SV_ASSERT_EQ(db_user_version(db), version);
    struct store *s = open_store(db);
    if (!s)
        return NULL;
    SV_CHECK(newest_version() >= version + 1);
    SV_ASSERT_EQ(db_user_version(db), newest_version());
    return s;
}

static void test_migrate_v1(void) {
    char db[PATH_MAX];
    /* What a version-1 svdllmd left behind: a running asvd job (its alpha
     * was never recorded) with one committed layer. */
    struct store *s = open_migrated(db, sizeof db, "v1.db", 1,
            "INSERT INTO jobs (state, model, out, method, ratio, calib, nsamples, seqlen, seed,"
            " calib_first, dense, overwrite, eval_text, eval_seqlen, eval_max_windows, job_key,"
            " owner_uid, work_dir, created_at, started_at, n_layers)"
            " VALUES ('running', '/models/tiny', '/out/old', 'asvd', 0.25, '/data/calib.txt', 4, 32,"
            " 3, 0, 0, 0, '', 0, 0, 'bbbb', 1000, '/state/jobs/1', 1690000000, 1690000005, 2);"
            "INSERT INTO layers (job_id, layer, file, size, sha256, done_at)"
            " VALUES (1, 0, 'layer-0.st', 123, 'cccc', 1690000010);");
    if (!s)
        return;
    struct sv_err err = {0};
    SV_ASSERT_EQ(store_recover(s, &err), 1);

    struct store_job got;
    SV_ASSERT_EQ(store_job_get(s, 1, &got, &err), 0);
    SV_CHECK(got.state == JOB_QUEUED);
    SV_CHECK(got.params.method == METHOD_ASVD);
    SV_CHECK(got.params.alpha == 0);   /* the engine's default, as under version 1 */
    SV_CHECK(got.params.ranks == RANKS_DEFAULT);
    SV_CHECK(got.params.layers == 0 && got.params.attn_split == 0 && !got.params.centered);
    SV_CHECK(got.params.ratio == 0.25);
    SV_CHECK(strcmp(got.key, "bbbb") == 0);
    SV_CHECK(strcmp(got.params.work_dir, "/state/jobs/1") == 0);
    SV_ASSERT_EQ(got.n_layers, 2);
    SV_ASSERT_EQ(got.layers_done, 1);
    struct compress_checkpoint ck;
    SV_ASSERT_EQ(store_layer_get(s, 1, 0, &ck, &err), 1);
    SV_CHECK(strcmp(ck.file, "layer-0.st") == 0 && ck.size == 123);
    store_free(s);
}

static void test_migrate_v2(void) {
    char db[PATH_MAX];
    /* What a version-2 svdllmd left behind: a queued asvd job with its alpha. */
    struct store *s = open_migrated(db, sizeof db, "v2.db", 2,
            "INSERT INTO jobs (state, model, out, method, ratio, calib, nsamples, seqlen, seed,"
            " calib_first, dense, overwrite, eval_text, eval_seqlen, eval_max_windows, job_key,"
            " owner_uid, work_dir, created_at, alpha)"
            " VALUES ('queued', '/models/tiny', '/out/v2', 'asvd', 0.2, '/data/calib.txt', 4, 32,"
            " 3, 0, 0, 0, '', 0, 0, 'dddd', 1000, '/state/jobs/1', 1695000000, 0.9);");
    if (!s)
        return;
    struct sv_err err = {0};
    struct store_job got;
    SV_ASSERT_EQ(store_job_get(s, 1, &got, &err), 0);
    SV_CHECK(got.state == JOB_QUEUED);
    SV_CHECK(got.params.method == METHOD_ASVD);
    SV_CHECK(got.params.alpha == 0.9);
    SV_CHECK(got.params.ranks == RANKS_DEFAULT);
    SV_CHECK(got.params.layers == 0 && got.params.attn_split == 0 && !got.params.centered);
    SV_CHECK(strcmp(got.key, "dddd") == 0);
    store_free(s);
}

static void test_too_new(void) {
    char db[PATH_MAX];
    path_in(db, sizeof db, "future.db");
    sqlite3 *raw = NULL;
    char pragma[64];
    snprintf(pragma, sizeof pragma, "PRAGMA user_version = %d", newest_version() + 1);
    int rc = sqlite3_open(db, &raw);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(raw, pragma, NULL, NULL, NULL);
    sqlite3_close(raw);
    SV_ASSERT_EQ(rc, SQLITE_OK);
    struct sv_err err = {0};
    struct store *s = NULL;
    SV_ASSERT_EQ(store_open(&s, db, &err), -EPROTO);
    SV_ASSERT_STR_CONTAINS(err.msg, "newer than this svdllmd understands");
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void test_resume(void) {
    char db[PATH_MAX], jobs[PATH_MAX];
    path_in(db, sizeof db, "resume.db");
    path_in(jobs, sizeof jobs, "jobs-resume");
    mkdir(jobs, 0750);
    struct store *s = open_store(db);
    if (!s)
        return;
    struct sv_err err = {0};
    struct store_job a, b, got;
    fill_params(&a, METHOD_SVDLLM, 0);
    fill_params(&b, METHOD_ROM, 0);
    SV_ASSERT_EQ(store_job_insert(s, &a, jobs, &err), 0);
    SV_ASSERT_EQ(store_job_insert(s, &b, jobs, &err), 0);
    struct compress_checkpoint ck = {.file = "layer-0.safetensors", .size = 10};
    memset(ck.sha256, 'c', 64);
    SV_ASSERT_EQ(store_job_claim(s, a.id, &err), 1);
    for (int l = 0; l < 3; l++) {
        snprintf(ck.file, sizeof ck.file, "layer-%d.safetensors", l);
        SV_ASSERT_EQ(store_layer_commit(s, a.id, l, 5, &ck, &err), 0);
    }
    /* queued and running are not resumable (running only when allowed). */
    SV_ASSERT_EQ(store_job_resume(s, b.id, true, &err), 0);
    SV_ASSERT_EQ(store_job_resume(s, a.id, false, &err), 0);
    SV_ASSERT_EQ(store_job_finish(s, a.id, JOB_FAILED, "disk full", NULL, 0, &err), 0);
    SV_ASSERT_EQ(store_job_get(s, a.id, &got, &err), 0);
    int64_t started = got.started_at;
    SV_CHECK(started > 0 && got.finished_at > 0);
    /* b (queued) has another out: no conflict. */
    SV_ASSERT_EQ(store_job_resume(s, a.id, false, &err), 1);
    SV_ASSERT_EQ(store_job_get(s, a.id, &got, &err), 0);
    SV_ASSERT_EQ(got.state, JOB_QUEUED);
    SV_ASSERT_EQ(got.layers_done, 3);
    SV_ASSERT_EQ(got.n_layers, 5);
    SV_ASSERT_EQ(got.started_at, started);
    SV_ASSERT_EQ(got.finished_at, 0);
    SV_CHECK(got.error[0] == '\0');
    SV_CHECK(strcmp(got.params.work_dir, a.params.work_dir) == 0);
    /* Another live job on the same out: refused, naming it. */
    SV_ASSERT_EQ(store_job_claim(s, a.id, &err), 1);
    SV_ASSERT_EQ(store_job_finish(s, a.id, JOB_FAILED, "again", NULL, 0, &err), 0);
    struct store_job c;
    fill_params(&c, METHOD_SVDLLM, 0);   /* same out as a */
    SV_ASSERT_EQ(store_job_insert(s, &c, jobs, &err), 0);
    SV_ASSERT_EQ(store_job_resume(s, a.id, false, &err), -EEXIST);
    char want[64];
    snprintf(want, sizeof want, "job %lld (queued)", (long long)c.id);
    SV_ASSERT_STR_CONTAINS(err.msg, want);
    SV_ASSERT_EQ(store_job_cancel_queued(s, c.id, "test", &err), 1);
    SV_ASSERT_EQ(store_job_resume(s, c.id, true, &err), 1);   /* cancelled: resumable too */
    SV_ASSERT_EQ(store_job_cancel_queued(s, c.id, "test", &err), 1);
    /* A 'running' row that no thread runs: resumed when allowed. */
    SV_ASSERT_EQ(store_job_resume(s, a.id, false, &err), 1);
    SV_ASSERT_EQ(store_job_claim(s, a.id, &err), 1);
    SV_ASSERT_EQ(store_job_resume(s, a.id, true, &err), 1);
    SV_ASSERT_EQ(store_job_get(s, a.id, &got, &err), 0);
    SV_ASSERT_EQ(got.state, JOB_QUEUED);
    /* Dropped layers. */
    SV_ASSERT_EQ(store_layers_drop(s, a.id, 1, &err), 2);
    SV_ASSERT_EQ(store_layer_get(s, a.id, 0, &ck, &err), 1);
    SV_ASSERT_EQ(store_layer_get(s, a.id, 1, &ck, &err), 0);
    SV_ASSERT_EQ(store_layers_drop(s, a.id, 1, &err), 0);
    SV_ASSERT_EQ(store_job_get(s, a.id, &got, &err), 0);
    SV_ASSERT_EQ(got.layers_done, 1);
    SV_ASSERT_EQ(store_job_resume(s, 999, true, &err), 0);   /* no such job */
    /* The error of a failed update names the job. */
    SV_ASSERT_EQ(store_job_finish(s, 424242, JOB_FAILED, "x", NULL, 0, &err), -ENOENT);
    SV_ASSERT_STR_CONTAINS(err.msg, "job 424242");
    store_free(s);
}

static void test_delete(void) {
    char db[PATH_MAX], jobs[PATH_MAX];
    path_in(db, sizeof db, "delete.db");
    path_in(jobs, sizeof jobs, "jobs-delete");
    mkdir(jobs, 0750);
    struct store *s = open_store(db);
    if (!s)
        return;
    struct sv_err err = {0};
    struct store_job a, b, got;
    fill_params(&a, METHOD_SVDLLM, 0);
    fill_params(&b, METHOD_SVD, 0);
    a.keep_checkpoints = true;
    SV_ASSERT_EQ(store_job_insert(s, &a, jobs, &err), 0);
    SV_ASSERT_EQ(store_job_insert(s, &b, jobs, &err), 0);
    SV_ASSERT_EQ(store_job_get(s, a.id, &got, &err), 0);
    SV_CHECK(got.keep_checkpoints);
    SV_ASSERT_EQ(store_job_get(s, b.id, &got, &err), 0);
    SV_CHECK(!got.keep_checkpoints);
    struct compress_checkpoint ck = {.file = "layer-0.safetensors", .size = 10};
    memset(ck.sha256, 'd', 64);
    SV_ASSERT_EQ(store_job_claim(s, a.id, &err), 1);
    SV_ASSERT_EQ(store_layer_commit(s, a.id, 0, 2, &ck, &err), 0);
    /* Running and queued jobs are not deleted, nor is a job that does not exist. */
    SV_ASSERT_EQ(store_job_delete(s, a.id, &err), 0);
    SV_ASSERT_EQ(store_job_delete(s, b.id, &err), 0);
    SV_ASSERT_EQ(store_job_delete(s, 4242, &err), 0);
    SV_ASSERT_EQ(store_layer_get(s, a.id, 0, &ck, &err), 1);
    SV_ASSERT_EQ(store_job_finish(s, a.id, JOB_FAILED, "x", NULL, 0, &err), 0);
    SV_ASSERT_EQ(store_job_delete(s, a.id, &err), 1);
    SV_ASSERT_EQ(store_job_get(s, a.id, &got, &err), -ENOENT);
    SV_ASSERT_EQ(store_layer_get(s, a.id, 0, &ck, &err), 0);
    SV_ASSERT_EQ(store_job_get(s, b.id, &got, &err), 0);   /* the other job stays */
    SV_ASSERT_EQ(store_job_cancel_queued(s, b.id, "test", &err), 1);
    SV_ASSERT_EQ(store_job_delete(s, b.id, &err), 1);
    SV_ASSERT_EQ(store_job_delete(s, b.id, &err), 0);
    store_free(s);
}

/* Every entry of the job parameter table (params.h) at a value that is not
 * its default survives insert and get: a parameter the store forgets (no
 * column, no bind, no read) fails here. */
static void test_params_round_trip(void) {
    char db[PATH_MAX], jobs[PATH_MAX];
    path_in(db, sizeof db, "params.db");
    path_in(jobs, sizeof jobs, "jobs-params");
    SV_CHECK(mkdir(jobs, 0750) == 0);
    struct sv_err err = {0};
    struct store *s = open_store(db);
    if (!s)
        return;
    struct store_job j, got;
    memset(&j, 0, sizeof j);
    memset(j.key, 'b', 64);
    params_defaults(&j.params);
    for (size_t i = 0; i < params_n_fields; i++) {
        const struct params_field *f = &params_fields[i];
        char path[64];
        snprintf(path, sizeof path, "/round/trip/%s", f->name);
        double v = f->type == PARAMS_BOOL ? !f->def
                   : f->type == PARAMS_ENUM ? (f->def + 1 < f->n_names ? f->def + 1 : 0)
                   : f->max_open ? (f->min + f->max) / 2 : f->max; /* in range, not the default */
        params_field_set(&j.params, f, v, path);
    }
    SV_ASSERT_EQ(store_job_insert(s, &j, jobs, &err), 0);
    SV_ASSERT_EQ(store_job_get(s, j.id, &got, &err), 0);
    for (size_t i = 0; i < params_n_fields; i++) {
        const struct params_field *f = &params_fields[i];
        double want = params_field_get(&j.params, f), have = params_field_get(&got.params, f);
        if (want != have)
            fprintf(stderr, "test_store: parameter '%s' (column %s): stored %.17g, read back %.17g\n", f->name,
                    f->column, want, have);
        SV_CHECK(want == have);
        if (f->type == PARAMS_PATH)
            SV_ASSERT_STR_CONTAINS((const char *)&got.params + f->off, f->name);
    }
    store_free(s);
}

int main(void) {
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_fresh();
    test_migrate_v1();
    test_migrate_v2();
    test_too_new();
    test_resume();
    test_delete();
    test_params_round_trip();
    nftw(tmpdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    return sv_test_result("store");
}
