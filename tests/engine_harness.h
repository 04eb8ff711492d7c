/* engine_harness: what the engine-API tests (test_compress, test_alloc)
 * share: an in-memory checkpoint table standing in for the daemon's SQLite
 * store (with a simulated crash before one layer's commit), and a job's
 * parameters under the README's protocol (32 x 128 calibration tokens from
 * TMP/calib.txt, 120 evaluation windows of TMP/eval.txt). Header-only:
 * each test is one file plus this. */
#ifndef ENGINE_HARNESS_H
#define ENGINE_HARNESS_H

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compress.h"
#include "harness.h"

struct fake_store {
    int n;
    struct compress_checkpoint ck[64];
    int done[64];
    int fail_at; /* layer_done of this layer fails (a crash before the commit); -1: never */
};

static inline int fake_lookup(void *ctx, int layer, struct compress_checkpoint *ck) {
    struct fake_store *s = ctx;
    if (!s->done[layer])
        return 0;
    *ck = s->ck[layer];
    return 1;
}

static inline int fake_done(void *ctx, int layer, const struct compress_checkpoint *ck, struct sv_err *err) {
    struct fake_store *s = ctx;
    if (layer == s->fail_at)
        return sv_err_set(err, -EIO, "simulated crash before committing layer %d", layer);
    s->ck[layer] = *ck;
    s->done[layer] = 1;
    return 0;
}

/* compress_run with s as the store (NULL: no store). */
static inline int fake_run(const struct compress_params *p, struct fake_store *s, struct compress_result *res,
                           struct sv_err *err) {
    struct compress_hooks h = {.ctx = s, .layer_lookup = fake_lookup, .layer_done = fake_done};
    return compress_run(p, s ? &h : NULL, res, err);
}

/* Method m at ratio on model, output TMP/out, work directory TMP/work
 * (created), the protocol's calibration and evaluation. */
static inline void protocol_params(struct compress_params *p, const char *tmp, const char *model, const char *out,
                                   const char *work, enum compress_method m, double ratio) {
    memset(p, 0, sizeof *p);
    snprintf(p->model_dir, sizeof p->model_dir, "%s", model);
    snprintf(p->out_dir, sizeof p->out_dir, "%s/%s", tmp, out);
    snprintf(p->work_dir, sizeof p->work_dir, "%s/%s", tmp, work);
    snprintf(p->calib_path, sizeof p->calib_path, "%s/calib.txt", tmp);
    snprintf(p->eval_path, sizeof p->eval_path, "%s/eval.txt", tmp);
    p->method = m;
    p->ratio = ratio;
    p->nsamples = 32;
    p->seqlen = 128;
    p->eval_max_windows = 120;
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", p->work_dir);
    SV_ASSERT_EQ(system(cmd), 0);
}

#endif
