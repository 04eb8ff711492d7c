/* fuzz_st: libFuzzer target for the safetensors reader (daemon/engine/st.c).
 *
 * Input: the bytes of one .safetensors file (8-byte little-endian header
 * length, JSON header, data section). It goes to a memfd and st_open_file()
 * maps it through /proc/self/fd/N, exactly as a model file would be read.
 *
 * Beyond "does not crash under ASan/UBSan", an opened file is checked against
 * an independent reading of the same header (jansson on the raw bytes):
 *   - every header entry is a tensor with that name, dtype and shape, and its
 *     data pointer holds exactly bytes [8 + hlen + begin, 8 + hlen + end) of
 *     the input (so a wrong offset or a pointer outside the file is caught
 *     even where ASan cannot see, inside the mmap);
 *   - st_get() is sorted by name with no duplicates, st_find() finds each;
 *   - "__metadata__" aliases resolve as documented in st.h;
 *   - st_read_f32() converts F32/F16/BF16 bit-exactly (F16 against a
 *     reference written here with ldexp), refuses other dtypes with -ENOTSUP
 *     and a wrong element count with -EINVAL; st_read_f32_shape() agrees;
 *   - the f32 -> f16/bf16 conversions invert the reads for non-NaN values,
 *     and round every F32 value read as an independent reference does.
 * A failed open must leave a negative code and a non-empty bounded message. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_st_check.h"
#include "fuzz_util.h"
#include "st.h"

static struct fuzz_file file;

/* Checks one header entry (already validated by st) against the tensor st built. */
static void check_entry(const struct st_model *m, const char *name, json_t *e, const uint8_t *dsec) {
    const struct st_tensor *t = st_find(m, name);
    FUZZ_CHECK(t != NULL, "tensor '%s' in the header but not found", name);
    FUZZ_CHECK(strcmp(t->name, name) == 0, "st_find('%s') returned '%s'", name, t->name);
    FUZZ_CHECK(strcmp(st_dtype_name(t->dtype), json_string_value(json_object_get(e, "dtype"))) == 0,
               "tensor '%s' dtype", name);
    json_t *js = json_object_get(e, "shape");
    FUZZ_CHECK((size_t)t->ndim == json_array_size(js), "tensor '%s' ndim", name);
    uint64_t nelem = 1;
    for (int i = 0; i < t->ndim; i++) {
        FUZZ_CHECK(t->shape[i] == json_integer_value(json_array_get(js, (size_t)i)), "tensor '%s' shape", name);
        nelem *= (uint64_t)t->shape[i];
    }
    FUZZ_CHECK(t->nelem == nelem, "tensor '%s' nelem", name);
    FUZZ_CHECK(t->nbytes == nelem * st_dtype_size(t->dtype), "tensor '%s' nbytes", name);
    json_t *jo = json_object_get(e, "data_offsets");
    uint64_t begin = (uint64_t)json_integer_value(json_array_get(jo, 0));
    uint64_t end = (uint64_t)json_integer_value(json_array_get(jo, 1));
    FUZZ_CHECK(end - begin == t->nbytes, "tensor '%s' span", name);
    if (t->nbytes)
        FUZZ_CHECK(memcmp(t->data, dsec + begin, t->nbytes) == 0, "tensor '%s' data is not input bytes [%llu, %llu)",
                   name, (unsigned long long)begin, (unsigned long long)end);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_file_put(&file, "fuzz_st", data, size);
    struct st_model *m = NULL;
    struct sv_err err = {0};
    int r = st_open_file(&m, path, &err);
    if (r < 0) {
        FUZZ_CHECK_FAILURE(r, m, err);
        return 0;
    }
    FUZZ_CHECK(m != NULL && r == 0, "st_open_file returned %d", r);

    /* It opened, so the header is well formed: read it again independently. */
    FUZZ_CHECK(size >= 8, "opened a %zu-byte file", size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | data[i];
    FUZZ_CHECK(hlen > 0 && hlen <= size - 8, "opened with header length %llu of %zu bytes",
               (unsigned long long)hlen, size);
    const uint8_t *dsec = data + 8 + hlen;
    json_error_t je;
    json_t *root = json_loadb((const char *)data + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &je);
    FUZZ_CHECK(json_is_object(root), "opened but the header does not parse: %s", je.text);

    const char *key;
    json_t *val;
    size_t ntensors = 0;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0)
            continue;
        check_entry(m, key, val, dsec);
        ntensors++;
    }
    FUZZ_CHECK(st_count(m) == ntensors, "st_count %zu, header has %zu tensors", st_count(m), ntensors);
    FUZZ_CHECK(st_get(m, ntensors) == NULL, "st_get past the end");
    FUZZ_CHECK(st_find(m, NULL) == NULL, "st_find(NULL)");
    if (!json_object_get(root, "\x01missing")) {
        float dummy;
        FUZZ_CHECK(st_find(m, "\x01missing") == NULL, "st_find of a missing name");
        FUZZ_CHECK(st_read_f32(m, "\x01missing", &dummy, 1, &err) == -ENOENT, "read of a missing name");
        FUZZ_CHECK(st_read_f32_shape(m, "\x01missing", 1, -1, &dummy, &err) == -ENOENT, "shape read, missing");
    }
    FUZZ_CHECK(st_shard_count(m) == 1 && strcmp(st_shard_path(m, 0), path) == 0, "shard list");
    FUZZ_CHECK(st_shard_path(m, 1) == NULL, "shard past the end");

    for (size_t i = 0; i < ntensors; i++) {
        const struct st_tensor *t = st_get(m, i);
        FUZZ_CHECK(t != NULL, "st_get(%zu)", i);
        if (i > 0)
            FUZZ_CHECK(strcmp(st_get(m, i - 1)->name, t->name) < 0, "tensors not sorted/unique at %zu", i);
        FUZZ_CHECK(st_find(m, t->name) == t, "st_find('%s') is not st_get(%zu)", t->name, i);
        FUZZ_CHECK(t->shard == 0, "tensor '%s' shard %d", t->name, t->shard);
        check_read(m, t, t->name);
    }

    /* Aliases: a metadata key that is not a tensor name, whose value is one. */
    json_t *meta = json_object_get(root, "__metadata__");
    json_object_foreach(meta, key, val) {
        if (json_object_get(root, key) && strcmp(key, "__metadata__") != 0)
            continue;  /* a tensor name: never an alias */
        const struct st_tensor *target = NULL;
        const char *v = json_string_value(val);
        if (strcmp(v, "__metadata__") != 0 && json_object_get(root, v))
            target = st_find(m, v);
        const struct st_tensor *got = st_find(m, key);
        FUZZ_CHECK(got == target, "metadata '%s' -> '%s': st_find gave %s", key, v, got ? got->name : "NULL");
        if (got)
            check_read(m, got, key);
    }

    json_decref(root);
    st_free(m);
    return 0;
}
