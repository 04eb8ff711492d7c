/* fuzz_st_index: libFuzzer target for sharded models, st_open() on a
 * directory holding model.safetensors.index.json (daemon/engine/st.c,
 * open_index and the cross-shard checks of finish_load).
 *
 * Input layout: parts separated by "####". Part 0 is the index JSON; parts 1
 * to 3 (if present) are the shard files "s1", "s2", "s3". They are written
 * into one private directory under /tmp (created once per process, removed at
 * exit); shards absent from the input are removed, so an index naming them
 * gets ENOENT. model.safetensors never exists, so st_open() always takes the
 * index path.
 *
 * Checked on success: every weight_map name resolves (directly or as an
 * alias), each stored tensor is listed in weight_map and lives in the shard
 * weight_map names, shard paths are the distinct names in sorted order, names
 * are sorted and unique across shards, and every tensor reads as in fuzz_st
 * (fuzz_st_check.h). On failure: a negative code and a bounded message. */
#include <errno.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_st_check.h"
#include "fuzz_util.h"
#include "st.h"

#define NSHARDS 3
static const char *const shard_names[NSHARDS] = {"s1", "s2", "s3"};
static char dir[64];

static void dir_path(char *buf, size_t n, const char *name) {
    snprintf(buf, n, "%s/%s", dir, name);
}

static void cleanup(void) {
    char p[128];
    dir_path(p, sizeof p, "model.safetensors.index.json");
    unlink(p);
    for (int i = 0; i < NSHARDS; i++) {
        dir_path(p, sizeof p, shard_names[i]);
        unlink(p);
    }
    rmdir(dir);
}

static void put(const char *name, const uint8_t *data, size_t n) {
    char p[128];
    dir_path(p, sizeof p, name);
    FILE *f = fopen(p, "wb");
    FUZZ_CHECK(f != NULL, "cannot create %s", p);
    FUZZ_CHECK((n == 0 || fwrite(data, 1, n, f) == n) && fclose(f) == 0, "cannot write %s", p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "/tmp/svdllm-fuzz-index.XXXXXX");
        FUZZ_CHECK(mkdtemp(dir) != NULL, "mkdtemp");
        atexit(cleanup);
    }
    /* Split the input into the index and up to NSHARDS shards. */
    const uint8_t *p = data, *end = data + size;
    const uint8_t *sep = fuzz_find_sep(p, end);
    const uint8_t *iend = sep ? sep : end;
    put("model.safetensors.index.json", data, (size_t)(iend - data));
    for (int i = 0; i < NSHARDS; i++) {
        char path[128];
        dir_path(path, sizeof path, shard_names[i]);
        if (!sep) {
            unlink(path);
            continue;
        }
        p = sep + 4;
        sep = fuzz_find_sep(p, end);
        const uint8_t *send = sep ? sep : end;
        put(shard_names[i], p, (size_t)(send - p));
    }

    struct st_model *m = NULL;
    struct sv_err err = {0};
    int r = st_open(&m, dir, &err);
    if (r < 0) {
        FUZZ_CHECK_FAILURE(r, m, err);
        return 0;
    }

    json_error_t je;
    json_t *root = json_loadb((const char *)data, (size_t)(iend - data), JSON_REJECT_DUPLICATES, &je);
    json_t *wm = json_object_get(root, "weight_map");
    FUZZ_CHECK(json_is_object(wm) && json_object_size(wm) > 0, "opened without a weight_map");

    /* Shards: the distinct weight_map values, sorted (strcmp). */
    size_t ns = st_shard_count(m);
    FUZZ_CHECK(ns >= 1 && ns <= NSHARDS, "%zu shards", ns);
    for (size_t i = 0; i < ns; i++) {
        const char *sp = st_shard_path(m, i);
        FUZZ_CHECK(strncmp(sp, dir, strlen(dir)) == 0 && sp[strlen(dir)] == '/', "shard path '%s'", sp);
        if (i > 0)
            FUZZ_CHECK(strcmp(st_shard_path(m, i - 1), sp) < 0, "shards not sorted");
    }
    const char *key;
    json_t *val;
    json_object_foreach(wm, key, val) {
        const struct st_tensor *t = st_find(m, key);
        FUZZ_CHECK(t != NULL, "weight_map name '%s' does not resolve", key);
        const char *sp = st_shard_path(m, (size_t)t->shard);
        FUZZ_CHECK(sp != NULL, "tensor '%s' shard %d", key, t->shard);
        if (strcmp(t->name, key) == 0)
            FUZZ_CHECK(strcmp(sp + strlen(dir) + 1, json_string_value(val)) == 0,
                       "tensor '%s' in '%s' but weight_map says '%s'", key, sp, json_string_value(val));
        check_read(m, t, key);
    }
    for (size_t i = 0; i < st_count(m); i++) {
        const struct st_tensor *t = st_get(m, i);
        FUZZ_CHECK(json_object_get(wm, t->name) != NULL, "tensor '%s' not in weight_map", t->name);
        if (i > 0)
            FUZZ_CHECK(strcmp(st_get(m, i - 1)->name, t->name) < 0, "tensors not sorted/unique at %zu", i);
        FUZZ_CHECK(st_find(m, t->name) == t, "st_find('%s')", t->name);
    }
    json_decref(root);
    st_free(m);
    return 0;
}
