/* st: safetensors files, read through mmap and written by streaming.
 *
 * Reading. st_open() takes a model directory holding either model.safetensors
 * or model.safetensors.index.json plus its shards. Every header is validated
 * before any tensor byte is touched, the way gguf readers do: header length
 * within the file, valid JSON object, every dtype name known, every shape
 * product and byte range checked for overflow and bounds, ranges matching the
 * dtype size exactly, no two tensors overlapping, no duplicate names across
 * shards. Each failure has its own message naming the file and tensor.
 * Aliases listed in a file's "__metadata__" (name -> other tensor name, as
 * tinystories-656K ties model.embed_tokens.weight to lm_head.weight) resolve
 * to the aliased tensor.
 *
 * Data stays in the page cache mapping; st_read_f32() converts one tensor
 * (F32, F16, BF16) into a caller buffer and st_release() drops the pages of a
 * tensor from our resident set again, so the engine holds one decoder layer at
 * a time however large the model.
 *
 * Writing. st_writer declares every tensor first (name, dtype, shape), then
 * writes their data in declaration order, so a model of any size streams to
 * disk. The file goes to PATH.tmp, is fsynced, renamed to PATH, and the
 * directory fsynced.
 *
 * Thread safety: an st_model is immutable after st_open(); concurrent
 * st_read_f32() calls are safe. A writer belongs to one thread. */
#ifndef ST_H
#define ST_H

#include <stddef.h>
#include <stdint.h>

#include "sv_err.h"

#define ST_MAX_DIMS 8
#define ST_MAX_NAME 256

enum st_dtype { ST_F32 = 0, ST_F16, ST_BF16, ST_F64, ST_I32, ST_I64, ST_I8, ST_U8, ST_BOOL, ST_I16, ST_DTYPE_COUNT };

struct st_tensor {
    char name[ST_MAX_NAME];
    enum st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t nelem;
    uint64_t nbytes;
    const void *data;   /* borrowed: inside the mapping, valid until st_free() */
    int shard;          /* index of the file holding it */
};

struct st_model;

/* Opens DIR/model.safetensors or, if absent, DIR/model.safetensors.index.json. */
int st_open(struct st_model **ret, const char *dir, struct sv_err *err);
/* Opens exactly one .safetensors file. */
int st_open_file(struct st_model **ret, const char *path, struct sv_err *err);
void st_free(struct st_model *m);

size_t st_count(const struct st_model *m);
const struct st_tensor *st_get(const struct st_model *m, size_t i);
/* NULL if absent; follows __metadata__ aliases. */
const struct st_tensor *st_find(const struct st_model *m, const char *name);

/* Converts tensor NAME to f32 into out, which holds n floats; n must equal
 * the tensor's element count (a shape mismatch is an error naming both). */
int st_read_f32(const struct st_model *m, const char *name, float *out, size_t n, struct sv_err *err);
/* Same, also checking the shape is exactly (d0, d1) (ndim 2) or (d0) if d1 < 0. */
int st_read_f32_shape(const struct st_model *m, const char *name, int64_t d0, int64_t d1,
                      float *out, struct sv_err *err);
/* Advises the kernel that the tensor's pages will not be needed soon. */
void st_release(const struct st_model *m, const char *name);

/* Paths of the shard files, for hashing inputs and copying. */
size_t st_shard_count(const struct st_model *m);
const char *st_shard_path(const struct st_model *m, size_t i);

const char *st_dtype_name(enum st_dtype t);
/* Returns 0 and the dtype for a safetensors dtype name, or -EINVAL. */
int st_dtype_parse(const char *name, enum st_dtype *ret);
size_t st_dtype_size(enum st_dtype t);

/* f32 <-> half conversions (round to nearest even), exposed for tests and the writer. */
uint16_t st_f32_to_f16(float f);
float st_f16_to_f32(uint16_t h);
uint16_t st_f32_to_bf16(float f);
float st_bf16_to_f32(uint16_t h);

struct st_writer;

int st_writer_new(struct st_writer **ret, const char *path, struct sv_err *err);
/* Adds one "__metadata__" string entry. Call before st_writer_declare. */
int st_writer_meta(struct st_writer *w, const char *key, const char *value, struct sv_err *err);
/* Declares a tensor; dtype is the on-disk type (F32, F16 or BF16). */
int st_writer_declare(struct st_writer *w, const char *name, enum st_dtype dtype, int ndim,
                      const int64_t *shape, struct sv_err *err);
/* Writes the data of the next declared tensor (declaration order), converting
 * from f32; n must equal its element count. The header is written on the first call. */
int st_writer_write_f32(struct st_writer *w, const char *name, const float *data, size_t n,
                        struct sv_err *err);
/* Writes raw bytes already in the declared dtype (used to copy tensors unchanged). */
int st_writer_write_raw(struct st_writer *w, const char *name, const void *data, size_t nbytes,
                        struct sv_err *err);
/* Checks every declared tensor was written, fsyncs, renames PATH.tmp to PATH,
 * fsyncs the directory. Frees w whatever the outcome. */
int st_writer_finish(struct st_writer *w, struct sv_err *err);
/* Abandons the file (removes PATH.tmp). Accepts NULL. */
void st_writer_free(struct st_writer *w);

#endif
