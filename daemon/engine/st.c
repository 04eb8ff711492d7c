/* st: safetensors reader (mmap) and streaming writer.
 *
 * What it owns. An st_model owns one read-only mapping per file (shard), a
 * tensor table sorted by name (binary search: real models have thousands of
 * tensors), the "__metadata__" entries of every file, and an alias table
 * sorted by name. Tensor data is never copied at open: st_tensor.data points
 * into the mapping.
 *
 * Validation order. A file is mapped, then its 8-byte length and its JSON
 * header are checked completely (types, dtype names, shape products, byte
 * ranges, sizes, overlaps) before any pointer into the data section is handed
 * out; no tensor byte is read during st_open(). Only after every file of a
 * model has loaded are names checked across shards and aliases resolved, so an
 * alias in one shard may name a tensor stored in another.
 *
 * Aliases. A "__metadata__" entry whose key is not a tensor name and whose
 * value is a tensor name is an alias (tied embeddings store one matrix under
 * two names). Any other metadata ("format": "pt") is kept and ignored.
 *
 * Threads. An st_model is immutable after st_open(), so st_find, st_read_f32
 * and st_release may run concurrently. st_release only drops pages lying
 * wholly inside one tensor, so it cannot discard a neighbour another thread is
 * reading (and dropping pages of a read-only file mapping loses nothing: they
 * are refetched from the page cache on the next touch).
 *
 * Writer. Declarations build the header; the header goes out with the first
 * tensor, then each tensor streams in declaration order with contiguous
 * offsets. The header is compact JSON in declaration order, "__metadata__"
 * first, padded with spaces to a multiple of 8 bytes so the data section is
 * 8-byte aligned; the same input therefore always gives the same bytes. */
#include "st.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "afile.h"

/* safetensors is little-endian; F32 data is memcpy'd straight to the caller. */
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "st.c assumes a little-endian host"
#endif

/* No real header comes near this (a 70B model's is ~100 KiB); a larger value
 * is corruption or an attempt to make us parse gigabytes of JSON. */
#define ST_MAX_HEADER (100u * 1024 * 1024)

struct st_file {
    char *path;
    void *map;
    size_t map_len;
    const unsigned char *data;  /* start of the data section */
    uint64_t data_len;
};

struct st_meta {
    char *key;
    char *value;
    int shard;
};

struct st_alias {
    char *name;
    const struct st_tensor *target;
    int shard;  /* file whose metadata declared it, for messages */
};

struct st_model {
    char *where;  /* directory or file given to open, for messages */
    struct st_file *files;
    size_t nfiles;
    struct st_tensor *tensors;  /* sorted by name once loading is complete */
    size_t ntensors, tensors_cap;
    struct st_meta *meta;
    size_t nmeta, meta_cap;
    struct st_alias *aliases;  /* sorted by name */
    size_t naliases;
    size_t page;
};

static const char *const dtype_names[ST_DTYPE_COUNT] = {
    [ST_F32] = "F32", [ST_F16] = "F16", [ST_BF16] = "BF16", [ST_F64] = "F64", [ST_I32] = "I32",
    [ST_I64] = "I64", [ST_I8] = "I8",   [ST_U8] = "U8",     [ST_BOOL] = "BOOL", [ST_I16] = "I16",
};

static const size_t dtype_sizes[ST_DTYPE_COUNT] = {
    [ST_F32] = 4, [ST_F16] = 2, [ST_BF16] = 2, [ST_F64] = 8, [ST_I32] = 4,
    [ST_I64] = 8, [ST_I8] = 1,  [ST_U8] = 1,   [ST_BOOL] = 1, [ST_I16] = 2,
};

const char *st_dtype_name(enum st_dtype t) {
    if ((unsigned)t >= ST_DTYPE_COUNT)
        return "?";
    return dtype_names[t];
}

int st_dtype_parse(const char *name, enum st_dtype *ret) {
    if (!name)
        return -EINVAL;
    for (int i = 0; i < ST_DTYPE_COUNT; i++)
        if (strcmp(name, dtype_names[i]) == 0) {
            *ret = (enum st_dtype)i;
            return 0;
        }
    return -EINVAL;
}

size_t st_dtype_size(enum st_dtype t) {
    if ((unsigned)t >= ST_DTYPE_COUNT)
        return 0;
    return dtype_sizes[t];
}

/* ---- half-precision conversions ---- */

static uint32_t f32_bits(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    return x;
}

static float bits_f32(uint32_t x) {
    float f;
    memcpy(&f, &x, sizeof f);
    return f;
}

uint16_t st_f32_to_f16(float f) {
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u)  /* NaN: keep the top payload bits, force quiet so it cannot become inf */
        return (uint16_t)(sign | 0x7e00 | ((ax >> 13) & 0x3ff));
    if (ax >= 0x477ff000u)  /* >= 65520 (halfway past 65504, odd mantissa): ties to even = inf */
        return (uint16_t)(sign | 0x7c00);
    if (ax >= 0x38800000u) {  /* normal half: drop 13 mantissa bits, round to nearest even */
        uint32_t h = (ax >> 13) - (112u << 10);
        uint32_t rem = ax & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1)))
            h++;  /* a carry into the exponent is the correct next binade */
        return (uint16_t)(sign | h);
    }
    if (ax <= 0x33000000u)  /* <= 2^-25, half the smallest subnormal: ties to even = 0 */
        return sign;
    /* Subnormal half: the result is value / 2^-24 rounded; value = mant * 2^(e-150). */
    uint32_t e = ax >> 23;
    uint32_t mant = (ax & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e;  /* 14..24 here */
    uint32_t q = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1)))
        q++;
    return (uint16_t)(sign | q);
}

float st_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    if (exp == 0) {
        if (mant == 0)
            return bits_f32(sign);
        /* Subnormal half: every one is a normal f32; shift the leading 1 into place. */
        uint32_t e = 113;
        while (!(mant & 0x400)) {
            mant <<= 1;
            e--;
        }
        return bits_f32(sign | (e << 23) | ((mant & 0x3ff) << 13));
    }
    if (exp == 31)  /* inf stays inf, NaN keeps its (nonzero) payload */
        return bits_f32(sign | 0x7f800000u | (mant << 13));
    return bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t st_f32_to_bf16(float f) {
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u)  /* NaN: truncating could clear the payload; force quiet */
        return (uint16_t)((x >> 16) | 0x0040);
    x += 0x7fffu + ((x >> 16) & 1);  /* round to nearest even; overflow correctly yields inf */
    return (uint16_t)(x >> 16);
}

float st_bf16_to_f32(uint16_t h) {
    return bits_f32((uint32_t)h << 16);
}

/* ---- small helpers ---- */

static char *path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p)
        return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

/* Formats "[a, b, c]" into buf; used in shape messages. */
static const char *fmt_shape(char *buf, size_t n, int ndim, const int64_t *shape) {
    size_t off = 0;
    off += (size_t)snprintf(buf + off, n - off, "[");
    for (int i = 0; i < ndim && off < n; i++)
        off += (size_t)snprintf(buf + off, n - off, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (off < n)
        snprintf(buf + off, n - off, "]");
    return buf;
}

static int tensor_cmp(const void *a, const void *b) {
    return strcmp(((const struct st_tensor *)a)->name, ((const struct st_tensor *)b)->name);
}

static int alias_cmp(const void *a, const void *b) {
    return strcmp(((const struct st_alias *)a)->name, ((const struct st_alias *)b)->name);
}

static const struct st_tensor *find_tensor(const struct st_model *m, const char *name) {
    size_t lo = 0, hi = m->ntensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, m->tensors[mid].name);
        if (c == 0)
            return &m->tensors[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

static const struct st_alias *find_alias(const struct st_model *m, const char *name) {
    size_t lo = 0, hi = m->naliases;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, m->aliases[mid].name);
        if (c == 0)
            return &m->aliases[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

/* ---- reading one file ---- */

struct range {
    uint64_t begin, end;
    size_t idx;  /* into m->tensors */
};

static int range_cmp(const void *a, const void *b) {
    const struct range *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return 0;
}

static int add_meta(struct st_model *m, const char *key, const char *value, int shard) {
    if (m->nmeta == m->meta_cap) {
        size_t cap = m->meta_cap ? 2 * m->meta_cap : 8;
        struct st_meta *p = realloc(m->meta, cap * sizeof *p);
        if (!p)
            return -ENOMEM;
        m->meta = p;
        m->meta_cap = cap;
    }
    struct st_meta *e = &m->meta[m->nmeta];
    e->key = strdup(key);
    e->value = strdup(value);
    e->shard = shard;
    if (!e->key || !e->value) {
        free(e->key);
        free(e->value);
        return -ENOMEM;
    }
    m->nmeta++;
    return 0;
}

static int parse_metadata(struct st_model *m, const char *path, json_t *obj, int shard, struct sv_err *err) {
    const char *key;
    json_t *val;
    if (!json_is_object(obj))
        return sv_err_set(err, -EINVAL, "file '%s': '__metadata__' is not a JSON object", path);
    json_object_foreach(obj, key, val) {
        if (!json_is_string(val))
            return sv_err_set(err, -EINVAL, "file '%s': '__metadata__' entry '%s' is not a string", path, key);
        if (add_meta(m, key, json_string_value(val), shard) < 0)
            return sv_err_set(err, -ENOMEM, "file '%s': out of memory", path);
    }
    return 0;
}

/* Reads a JSON integer that must be >= 0 into *ret; 0, or -1 if not one. */
static int json_nonneg(const json_t *v, uint64_t *ret) {
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return -1;
    *ret = (uint64_t)json_integer_value(v);
    return 0;
}

/* Validates one header entry and fills t (all but data/shard); *begin and
 * *end receive its byte range relative to the data section. */
static int parse_entry(struct st_tensor *t, uint64_t *begin, uint64_t *end, const char *path, const char *name,
                       json_t *e, uint64_t data_len, struct sv_err *err) {
    char sbuf[200];
    if (!json_is_object(e))
        return sv_err_set(err, -EINVAL, "file '%s': tensor '%s': header entry is not an object", path, name);
    json_t *jd = json_object_get(e, "dtype"), *js = json_object_get(e, "shape"),
           *jo = json_object_get(e, "data_offsets");
    if (!jd)
        return sv_err_set(err, -EINVAL, "file '%s': tensor '%s': missing 'dtype'", path, name);
    if (!js)
        return sv_err_set(err, -EINVAL, "file '%s': tensor '%s': missing 'shape'", path, name);
    if (!jo)
        return sv_err_set(err, -EINVAL, "file '%s': tensor '%s': missing 'data_offsets'", path, name);
    if (!json_is_string(jd))
        return sv_err_set(err, -EINVAL, "file '%s': tensor '%s': 'dtype' is not a string", path, name);
    if (!json_is_array(js))
        return sv_err_set(err, -EINVAL, "file '%s': tensor '%s': 'shape' is not an array", path, name);
    if (!json_is_array(jo))
        return sv_err_set(err, -EINVAL, "file '%s': tensor '%s': 'data_offsets' is not an array", path, name);

    if (st_dtype_parse(json_string_value(jd), &t->dtype) < 0)
        return sv_err_set(err, -EINVAL, "file '%s': tensor '%s': unknown dtype '%s'", path, name,
                          json_string_value(jd));

    size_t nd = json_array_size(js);
    if (nd > ST_MAX_DIMS)
        return sv_err_set(err, -EINVAL, "file '%s': tensor '%s': %zu dimensions, more than the %d supported", path,
                          name, nd, ST_MAX_DIMS);
    t->ndim = (int)nd;
    uint64_t nelem = 1;  /* a 0-dim tensor is a scalar */
    for (size_t i = 0; i < nd; i++) {
        json_t *d = json_array_get(js, i);
        if (!json_is_integer(d))
            return sv_err_set(err, -EINVAL, "file '%s': tensor '%s': shape element %zu is not an integer", path,
                              name, i);
        if (json_integer_value(d) < 0)
            return sv_err_set(err, -EINVAL, "file '%s': tensor '%s': shape element %zu is negative (%lld)", path,
                              name, i, (long long)json_integer_value(d));
        t->shape[i] = (int64_t)json_integer_value(d);
        if (__builtin_mul_overflow(nelem, (uint64_t)t->shape[i], &nelem))
            return sv_err_set(err, -EOVERFLOW, "file '%s': tensor '%s': element count of shape %s overflows",
                              path, name, fmt_shape(sbuf, sizeof sbuf, (int)i + 1, t->shape));
    }
    t->nelem = nelem;
    if (__builtin_mul_overflow(nelem, (uint64_t)st_dtype_size(t->dtype), &t->nbytes))
        return sv_err_set(err, -EOVERFLOW, "file '%s': tensor '%s': byte size of shape %s %s overflows", path,
                          name, fmt_shape(sbuf, sizeof sbuf, t->ndim, t->shape), st_dtype_name(t->dtype));

    if (json_array_size(jo) != 2 || json_nonneg(json_array_get(jo, 0), begin) < 0 ||
        json_nonneg(json_array_get(jo, 1), end) < 0)
        return sv_err_set(err, -EINVAL, "file '%s': tensor '%s': 'data_offsets' is not two non-negative integers",
                          path, name);
    if (*end < *begin)
        return sv_err_set(err, -EINVAL, "file '%s': tensor '%s': data_offsets end %llu before begin %llu", path,
                          name, (unsigned long long)*end, (unsigned long long)*begin);
    if (*end > data_len)
        return sv_err_set(err, -EINVAL,
                          "file '%s': tensor '%s': data_offsets end %llu beyond the data section (%llu bytes); "
                          "file truncated?",
                          path, name, (unsigned long long)*end, (unsigned long long)data_len);
    if (*end - *begin != t->nbytes)
        return sv_err_set(err, -EINVAL,
                          "file '%s': tensor '%s': data_offsets span %llu bytes, which does not match shape %s %s "
                          "(%llu bytes)",
                          path, name, (unsigned long long)(*end - *begin),
                          fmt_shape(sbuf, sizeof sbuf, t->ndim, t->shape), st_dtype_name(t->dtype),
                          (unsigned long long)t->nbytes);
    return 0;
}

/* jansson's duplicate-key error does not name the key; it stops right after
 * the key's closing quote, so recover the name from the buffer for the message. */
static void dup_key_name(char *out, size_t n, const char *buf, size_t len, const json_error_t *je) {
    snprintf(out, n, "?");
    if (je->position <= 0 || (size_t)je->position > len)
        return;
    size_t end = (size_t)je->position;
    while (end > 0 && buf[end - 1] != '"')
        end--;
    if (end == 0)
        return;
    size_t start = end - 1;
    while (start > 0 && !(buf[start - 1] == '"' && (start < 2 || buf[start - 2] != '\\')))
        start--;
    if (start == 0)
        return;
    size_t klen = end - 1 - start;
    if (klen >= n)
        klen = n - 1;
    memcpy(out, buf + start, klen);
    out[klen] = '\0';
}

static int grow_tensors(struct st_model *m, size_t extra) {
    if (m->ntensors + extra <= m->tensors_cap)
        return 0;
    size_t cap = m->tensors_cap ? m->tensors_cap : 16;
    while (cap < m->ntensors + extra)
        cap *= 2;
    struct st_tensor *p = realloc(m->tensors, cap * sizeof *p);
    if (!p)
        return -ENOMEM;
    m->tensors = p;
    m->tensors_cap = cap;
    return 0;
}

/* Maps PATH, validates its header and appends its tensors and metadata to m.
 * On failure m stays consistent (the file is recorded so st_free unmaps it;
 * tensors already appended are dropped again). */
static int load_file(struct st_model *m, const char *path, struct sv_err *err) {
    int r = 0, fd = -1;
    json_t *root = NULL;
    struct range *ranges = NULL;
    size_t first = m->ntensors;
    struct stat st;
    struct st_file *f;
    int shard = (int)m->nfiles;

    f = realloc(m->files, (m->nfiles + 1) * sizeof *f);
    if (!f) {
        r = sv_err_set(err, -ENOMEM, "file '%s': out of memory", path);
        goto out;
    }
    m->files = f;
    f = &m->files[m->nfiles];
    memset(f, 0, sizeof *f);
    if (!(f->path = strdup(path))) {
        r = sv_err_set(err, -ENOMEM, "file '%s': out of memory", path);
        goto out;
    }
    m->nfiles++;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        r = -errno;
        sv_err_set(err, r, "file '%s': cannot open: %s", path, strerror(-r));
        goto out;
    }
    if (fstat(fd, &st) < 0) {
        r = -errno;
        sv_err_set(err, r, "file '%s': cannot stat: %s", path, strerror(-r));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        r = sv_err_set(err, -EINVAL, "file '%s': not a regular file", path);
        goto out;
    }
    uint64_t size = (uint64_t)st.st_size;
    if (size < 8) {
        r = sv_err_set(err, -EINVAL, "file '%s': file is %llu bytes, shorter than 8 bytes (no header length)",
                       path, (unsigned long long)size);
        goto out;
    }
#if SIZE_MAX < UINT64_MAX
    if (size > SIZE_MAX) {
        r = sv_err_set(err, -EFBIG, "file '%s': too large to map", path);
        goto out;
    }
#endif
    f->map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (f->map == MAP_FAILED) {
        r = -errno;
        f->map = NULL;
        sv_err_set(err, r, "file '%s': mmap failed: %s", path, strerror(-r));
        goto out;
    }
    f->map_len = (size_t)size;

    const unsigned char *p = f->map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | p[i];
    if (hlen == 0) {
        r = sv_err_set(err, -EINVAL, "file '%s': header length is 0", path);
        goto out;
    }
    if (hlen > ST_MAX_HEADER) {
        r = sv_err_set(err, -EINVAL, "file '%s': header length %llu exceeds the %u-byte limit", path,
                       (unsigned long long)hlen, ST_MAX_HEADER);
        goto out;
    }
    if (hlen > size - 8) {
        r = sv_err_set(err, -EINVAL,
                       "file '%s': header length %llu runs past end of file (%llu bytes); file truncated?", path,
                       (unsigned long long)hlen, (unsigned long long)size);
        goto out;
    }
    f->data = p + 8 + hlen;
    f->data_len = size - 8 - hlen;

    json_error_t je;
    root = json_loadb((const char *)p + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        if (json_error_code(&je) == json_error_duplicate_key) {
            char key[ST_MAX_NAME];
            dup_key_name(key, sizeof key, (const char *)p + 8, (size_t)hlen, &je);
            r = sv_err_set(err, -EINVAL, "file '%s': duplicate key '%s' in header (line %d); tensor names "
                           "must be unique", path, key, je.line);
        } else {
            r = sv_err_set(err, -EINVAL, "file '%s': header is not valid JSON: %s (line %d, column %d)", path,
                           je.text, je.line, je.column);
        }
        goto out;
    }
    if (!json_is_object(root)) {
        r = sv_err_set(err, -EINVAL, "file '%s': header is not a JSON object", path);
        goto out;
    }

    size_t n_entries = json_object_size(root);
    if (grow_tensors(m, n_entries) < 0 || !(ranges = malloc((n_entries ? n_entries : 1) * sizeof *ranges))) {
        r = sv_err_set(err, -ENOMEM, "file '%s': out of memory", path);
        goto out;
    }
    size_t nr = 0;
    const char *key;
    size_t klen;
    json_t *val;
    json_object_keylen_foreach(root, key, klen, val) {
        if (strcmp(key, "__metadata__") == 0 && klen == strlen(key)) {
            if ((r = parse_metadata(m, path, val, shard, err)) < 0)
                goto out;
            continue;
        }
        /* jansson 2.14 already refuses "\u0000" in keys; a C string name must not hide one either way. */
        if (klen != strlen(key)) {
            r = sv_err_set(err, -EINVAL, "file '%s': tensor '%s': name contains a NUL byte", path, key);
            goto out;
        }
        if (klen == 0) {
            r = sv_err_set(err, -EINVAL, "file '%s': tensor with an empty name", path);
            goto out;
        }
        if (klen >= ST_MAX_NAME) {
            r = sv_err_set(err, -ENAMETOOLONG, "file '%s': tensor '%.64s...': name longer than %d bytes", path,
                           key, ST_MAX_NAME - 1);
            goto out;
        }
        struct st_tensor *t = &m->tensors[m->ntensors];
        memset(t, 0, sizeof *t);
        memcpy(t->name, key, klen + 1);
        uint64_t b = 0, e = 0;
        if ((r = parse_entry(t, &b, &e, path, key, val, f->data_len, err)) < 0)
            goto out;
        t->shard = shard;
        ranges[nr].begin = b;
        ranges[nr].end = e;
        ranges[nr].idx = m->ntensors;
        nr++;
        m->ntensors++;
    }

    /* Overlapping ranges mean a corrupt or hostile header (one set of bytes
     * read as two tensors, or a size lie hidden by another entry); the Rust
     * reference reader rejects them too. Sorting makes the check O(n log n).
     * Empty tensors occupy no bytes and cannot overlap anything. */
    qsort(ranges, nr, sizeof *ranges, range_cmp);
    uint64_t max_end = 0;
    size_t max_idx = 0;
    for (size_t i = 0; i < nr; i++) {
        if (ranges[i].begin == ranges[i].end)
            continue;
        if (ranges[i].begin < max_end) {
            r = sv_err_set(err, -EINVAL, "file '%s': tensor '%s': bytes [%llu, %llu) overlap tensor '%s'", path,
                           m->tensors[ranges[i].idx].name, (unsigned long long)ranges[i].begin,
                           (unsigned long long)ranges[i].end, m->tensors[max_idx].name);
            goto out;
        }
        max_end = ranges[i].end;
        max_idx = ranges[i].idx;
    }
    /* Only now, with every range proven inside the data section, hand out pointers. */
    for (size_t i = 0; i < nr; i++)
        m->tensors[ranges[i].idx].data = f->data + ranges[i].begin;

out:
    if (r < 0)
        m->ntensors = first;
    if (fd >= 0)
        close(fd);
    json_decref(root);
    free(ranges);
    return r;
}

/* After all files are in: sort, reject names present in two shards, build aliases. */
static int finish_load(struct st_model *m, struct sv_err *err) {
    qsort(m->tensors, m->ntensors, sizeof *m->tensors, tensor_cmp);
    for (size_t i = 1; i < m->ntensors; i++)
        if (strcmp(m->tensors[i - 1].name, m->tensors[i].name) == 0)
            return sv_err_set(err, -EINVAL, "file '%s': tensor '%s': duplicate name, also in '%s'",
                              m->files[m->tensors[i].shard].path, m->tensors[i].name,
                              m->files[m->tensors[i - 1].shard].path);

    size_t na = 0;
    for (size_t i = 0; i < m->nmeta; i++)
        if (!find_tensor(m, m->meta[i].key) && find_tensor(m, m->meta[i].value))
            na++;
    if (!na)
        return 0;
    if (!(m->aliases = calloc(na, sizeof *m->aliases)))
        return sv_err_set(err, -ENOMEM, "model '%s': out of memory", m->where);
    for (size_t i = 0; i < m->nmeta; i++) {
        const struct st_tensor *t;
        if (find_tensor(m, m->meta[i].key) || !(t = find_tensor(m, m->meta[i].value)))
            continue;
        struct st_alias *a = &m->aliases[m->naliases++];
        a->name = m->meta[i].key;  /* borrowed from meta, which lives as long as m */
        a->target = t;
        a->shard = m->meta[i].shard;
    }
    qsort(m->aliases, m->naliases, sizeof *m->aliases, alias_cmp);
    /* The same alias in two shards is fine if it agrees; otherwise the name is ambiguous. */
    size_t w = 0;
    for (size_t i = 0; i < m->naliases; i++) {
        if (w > 0 && strcmp(m->aliases[w - 1].name, m->aliases[i].name) == 0) {
            if (m->aliases[w - 1].target != m->aliases[i].target)
                return sv_err_set(err, -EINVAL, "file '%s': tensor '%s': alias of '%s' but '%s' aliases it to '%s'",
                                  m->files[m->aliases[i].shard].path, m->aliases[i].name,
                                  m->aliases[i].target->name, m->files[m->aliases[w - 1].shard].path,
                                  m->aliases[w - 1].target->name);
            continue;
        }
        m->aliases[w++] = m->aliases[i];
    }
    m->naliases = w;
    return 0;
}

static struct st_model *model_alloc(const char *where) {
    struct st_model *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    if (!(m->where = strdup(where))) {
        free(m);
        return NULL;
    }
    long pg = sysconf(_SC_PAGESIZE);
    m->page = pg > 0 ? (size_t)pg : 4096;
    return m;
}

void st_free(struct st_model *m) {
    if (!m)
        return;
    for (size_t i = 0; i < m->nfiles; i++) {
        if (m->files[i].map)
            munmap(m->files[i].map, m->files[i].map_len);
        free(m->files[i].path);
    }
    for (size_t i = 0; i < m->nmeta; i++) {
        free(m->meta[i].key);
        free(m->meta[i].value);
    }
    free(m->files);
    free(m->tensors);
    free(m->meta);
    free(m->aliases);
    free(m->where);
    free(m);
}

int st_open_file(struct st_model **ret, const char *path, struct sv_err *err) {
    int r;
    struct st_model *m = model_alloc(path);
    if (!m)
        return sv_err_set(err, -ENOMEM, "file '%s': out of memory", path);
    if ((r = load_file(m, path, err)) < 0 || (r = finish_load(m, err)) < 0)
        goto out;
    *ret = m;
    m = NULL;
out:
    st_free(m);
    return r;
}

static int str_cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Opens the shards named by the index's weight_map and checks the map and the
 * shards agree both ways, so a stale or hand-edited index cannot silently
 * hide or invent a tensor. */
static int open_index(struct st_model **ret, const char *dir, const char *ipath, struct sv_err *err) {
    int r = 0;
    json_t *root = NULL;
    const char **names = NULL;
    char *spath = NULL;
    struct st_model *m = NULL;
    json_error_t je;
    const char *key;
    json_t *val;

    root = json_load_file(ipath, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        r = sv_err_set(err, -EINVAL, "file '%s': not valid JSON: %s (line %d, column %d)", ipath, je.text, je.line,
                       je.column);
        goto out;
    }
    json_t *wm = json_object_get(root, "weight_map");
    if (!json_is_object(root) || !json_is_object(wm)) {
        r = sv_err_set(err, -EINVAL, "file '%s': no 'weight_map' object", ipath);
        goto out;
    }
    size_t nw = json_object_size(wm), nn = 0;
    if (!(names = malloc((nw ? nw : 1) * sizeof *names))) {
        r = sv_err_set(err, -ENOMEM, "file '%s': out of memory", ipath);
        goto out;
    }
    json_object_foreach(wm, key, val) {
        if (!json_is_string(val)) {
            r = sv_err_set(err, -EINVAL, "file '%s': tensor '%s': weight_map value is not a string", ipath, key);
            goto out;
        }
        const char *s = json_string_value(val);
        /* Shards must sit beside the index: a '/' (or "..") could reach any file. */
        if (!*s || strchr(s, '/') || strcmp(s, ".") == 0 || strcmp(s, "..") == 0) {
            r = sv_err_set(err, -EINVAL, "file '%s': tensor '%s': shard name '%s' is not a plain file name", ipath,
                           key, s);
            goto out;
        }
        names[nn++] = s;
    }
    if (nn == 0) {
        r = sv_err_set(err, -EINVAL, "file '%s': weight_map is empty", ipath);
        goto out;
    }
    /* Sorted distinct shard names: shard i of the model is names[i]. */
    qsort(names, nn, sizeof *names, str_cmp);
    size_t ns = 0;
    for (size_t i = 0; i < nn; i++)
        if (ns == 0 || strcmp(names[ns - 1], names[i]) != 0)
            names[ns++] = names[i];

    if (!(m = model_alloc(dir))) {
        r = sv_err_set(err, -ENOMEM, "file '%s': out of memory", ipath);
        goto out;
    }
    for (size_t i = 0; i < ns; i++) {
        if (!(spath = path_join(dir, names[i]))) {
            r = sv_err_set(err, -ENOMEM, "file '%s': out of memory", ipath);
            goto out;
        }
        if ((r = load_file(m, spath, err)) < 0) {
            sv_err_prefix(err, "index '%s'", ipath);
            goto out;
        }
        free(spath);
        spath = NULL;
    }
    if ((r = finish_load(m, err)) < 0)
        goto out;

    json_object_foreach(wm, key, val) {
        const char *s = json_string_value(val);
        const struct st_tensor *t = find_tensor(m, key);
        if (!t) {
            /* A tied name may be listed although only its alias target is stored. */
            if (find_alias(m, key))
                continue;
            r = sv_err_set(err, -ENOENT, "file '%s': tensor '%s': listed in weight_map but not found in shard '%s'",
                           ipath, key, s);
            goto out;
        }
        const char **hit = bsearch(&s, names, ns, sizeof *names, str_cmp);
        if (!hit || (size_t)(hit - names) != (size_t)t->shard) {
            r = sv_err_set(err, -EINVAL, "file '%s': tensor '%s': weight_map says shard '%s' but it is in '%s'",
                           ipath, key, s, m->files[t->shard].path);
            goto out;
        }
    }
    for (size_t i = 0; i < m->ntensors; i++)
        if (!json_object_get(wm, m->tensors[i].name)) {
            r = sv_err_set(err, -EINVAL, "file '%s': tensor '%s': not listed in weight_map of '%s'",
                           m->files[m->tensors[i].shard].path, m->tensors[i].name, ipath);
            goto out;
        }
    *ret = m;
    m = NULL;
out:
    st_free(m);
    free(spath);
    free(names);
    json_decref(root);  /* names point into root: released last */
    return r;
}

int st_open(struct st_model **ret, const char *dir, struct sv_err *err) {
    int r;
    struct stat st;
    char *single = path_join(dir, "model.safetensors");
    char *index = path_join(dir, "model.safetensors.index.json");
    if (!single || !index) {
        r = sv_err_set(err, -ENOMEM, "model '%s': out of memory", dir);
        goto out;
    }
    if (stat(single, &st) == 0) {
        r = st_open_file(ret, single, err);
        goto out;
    }
    if (stat(index, &st) == 0) {
        r = open_index(ret, dir, index, err);
        goto out;
    }
    r = sv_err_set(err, -ENOENT, "no model.safetensors or model.safetensors.index.json in '%s'", dir);
out:
    free(single);
    free(index);
    return r;
}

size_t st_count(const struct st_model *m) {
    return m ? m->ntensors : 0;
}

const struct st_tensor *st_get(const struct st_model *m, size_t i) {
    if (!m || i >= m->ntensors)
        return NULL;
    return &m->tensors[i];
}

const struct st_tensor *st_find(const struct st_model *m, const char *name) {
    if (!m || !name)
        return NULL;
    const struct st_tensor *t = find_tensor(m, name);
    if (t)
        return t;
    const struct st_alias *a = find_alias(m, name);
    return a ? a->target : NULL;
}

size_t st_shard_count(const struct st_model *m) {
    return m ? m->nfiles : 0;
}

const char *st_shard_path(const struct st_model *m, size_t i) {
    if (!m || i >= m->nfiles)
        return NULL;
    return m->files[i].path;
}

int st_read_f32(const struct st_model *m, const char *name, float *out, size_t n, struct sv_err *err) {
    char sbuf[200];
    const struct st_tensor *t = st_find(m, name);
    if (!t)
        return sv_err_set(err, -ENOENT, "model '%s': tensor '%s' not found", m ? m->where : "?", name);
    const char *path = m->files[t->shard].path;
    if (t->nelem != (uint64_t)n)
        return sv_err_set(err, -EINVAL,
                          "file '%s': tensor '%s': caller expects %zu elements but shape %s has %llu", path, name,
                          n, fmt_shape(sbuf, sizeof sbuf, t->ndim, t->shape), (unsigned long long)t->nelem);
    const unsigned char *p = t->data;
    switch (t->dtype) {
    case ST_F32:
        if (n)  /* data may be unaligned (any header length is legal): memcpy, never a cast */
            memcpy(out, p, n * sizeof *out);
        return 0;
    case ST_F16:
        for (size_t i = 0; i < n; i++)
            out[i] = st_f16_to_f32((uint16_t)(p[2 * i] | (p[2 * i + 1] << 8)));
        return 0;
    case ST_BF16:
        for (size_t i = 0; i < n; i++)
            out[i] = st_bf16_to_f32((uint16_t)(p[2 * i] | (p[2 * i + 1] << 8)));
        return 0;
    default:
        return sv_err_set(err, -ENOTSUP, "file '%s': tensor '%s': dtype '%s' not supported (F32, F16, BF16 only)",
                          path, name, st_dtype_name(t->dtype));
    }
}

int st_read_f32_shape(const struct st_model *m, const char *name, int64_t d0, int64_t d1, float *out,
                      struct sv_err *err) {
    char got[200], want[64];
    const struct st_tensor *t = st_find(m, name);
    if (!t)
        return sv_err_set(err, -ENOENT, "model '%s': tensor '%s' not found", m ? m->where : "?", name);
    int64_t ws[2] = {d0, d1};
    int wnd = d1 < 0 ? 1 : 2;
    if (t->ndim != wnd || t->shape[0] != d0 || (wnd == 2 && t->shape[1] != d1))
        return sv_err_set(err, -EINVAL, "file '%s': tensor '%s': shape %s, expected %s", m->files[t->shard].path,
                          name, fmt_shape(got, sizeof got, t->ndim, t->shape), fmt_shape(want, sizeof want, wnd, ws));
    return st_read_f32(m, name, out, (size_t)t->nelem, err);
}

void st_release(const struct st_model *m, const char *name) {
    const struct st_tensor *t = st_find(m, name);
    if (!t || !t->nbytes)
        return;
    /* Only whole pages inside the tensor: edge pages may hold a neighbour in use. */
    uintptr_t a = (uintptr_t)t->data, e = a + (uintptr_t)t->nbytes;
    uintptr_t start = (a + m->page - 1) & ~(uintptr_t)(m->page - 1);
    uintptr_t stop = e & ~(uintptr_t)(m->page - 1);
    if (stop > start)
        (void)madvise((void *)start, stop - start, MADV_DONTNEED);  /* advice only: failure is harmless */
}

/* ---- writer ---- */

struct st_wtensor {
    char name[ST_MAX_NAME];
    enum st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t nelem, nbytes, begin;
};

struct st_writer {
    char *path, *tmp;
    int fd;
    struct st_wtensor *t;
    size_t n, cap;
    char **mkey, **mval;
    size_t nmeta;
    size_t next;       /* index of the next tensor to write */
    uint64_t end;      /* data bytes declared so far */
    int header_done;
    int failed;        /* an I/O error left the file in an unknown state */
};

int st_writer_new(struct st_writer **ret, const char *path, struct sv_err *err) {
    int r = 0;
    struct st_writer *w = calloc(1, sizeof *w);
    if (!w)
        return sv_err_set(err, -ENOMEM, "file '%s': out of memory", path);
    w->fd = -1;
    size_t len = strlen(path);
    if (!(w->path = strdup(path)) || !(w->tmp = malloc(len + 5))) {
        r = sv_err_set(err, -ENOMEM, "file '%s': out of memory", path);
        goto out;
    }
    if ((w->fd = afile_tmp_open(path, w->tmp, len + 5, err)) < 0) {
        r = w->fd;
        goto out;
    }
    *ret = w;
    w = NULL;
out:
    st_writer_free(w);
    return r;
}

void st_writer_free(struct st_writer *w) {
    if (!w)
        return;
    if (w->fd >= 0) {
        close(w->fd);
        unlink(w->tmp);
    }
    for (size_t i = 0; i < w->nmeta; i++) {
        free(w->mkey[i]);
        free(w->mval[i]);
    }
    free(w->mkey);
    free(w->mval);
    free(w->t);
    free(w->path);
    free(w->tmp);
    free(w);
}

/* The header is JSON, which must be UTF-8; jansson's constructor is the
 * validator, so reject bad names when declared rather than at the first write. */
static int utf8_ok(const char *s) {
    json_t *j = json_string(s);
    if (!j)
        return 0;
    json_decref(j);
    return 1;
}

int st_writer_meta(struct st_writer *w, const char *key, const char *value, struct sv_err *err) {
    if (w->n || w->header_done)
        return sv_err_set(err, -EINVAL, "file '%s': metadata '%s' added after tensors were declared", w->path, key);
    if (!utf8_ok(key) || !utf8_ok(value))
        return sv_err_set(err, -EINVAL, "file '%s': metadata '%s': key or value is not valid UTF-8", w->path, key);
    for (size_t i = 0; i < w->nmeta; i++)
        if (strcmp(w->mkey[i], key) == 0)
            return sv_err_set(err, -EINVAL, "file '%s': metadata key '%s' added twice", w->path, key);
    char **k = realloc(w->mkey, (w->nmeta + 1) * sizeof *k);
    if (k)
        w->mkey = k;
    char **v = realloc(w->mval, (w->nmeta + 1) * sizeof *v);
    if (v)
        w->mval = v;
    if (!k || !v)
        return sv_err_set(err, -ENOMEM, "file '%s': out of memory", w->path);
    w->mkey[w->nmeta] = strdup(key);
    w->mval[w->nmeta] = strdup(value);
    if (!w->mkey[w->nmeta] || !w->mval[w->nmeta]) {
        free(w->mkey[w->nmeta]);
        free(w->mval[w->nmeta]);
        return sv_err_set(err, -ENOMEM, "file '%s': out of memory", w->path);
    }
    w->nmeta++;
    return 0;
}

static const struct st_wtensor *writer_lookup(const struct st_writer *w, const char *name) {
    for (size_t i = 0; i < w->n; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return &w->t[i];
    return NULL;
}

int st_writer_declare(struct st_writer *w, const char *name, enum st_dtype dtype, int ndim, const int64_t *shape,
                      struct sv_err *err) {
    char sbuf[200];
    size_t len = strlen(name);
    if (w->header_done)
        return sv_err_set(err, -EINVAL, "file '%s': tensor '%s': declared after data writing started", w->path,
                          name);
    if (len == 0 || len >= ST_MAX_NAME || strcmp(name, "__metadata__") == 0)
        return sv_err_set(err, -EINVAL, "file '%s': tensor '%.64s': invalid name (1 to %d bytes, not "
                          "'__metadata__')", w->path, name, ST_MAX_NAME - 1);
    if (!utf8_ok(name))
        return sv_err_set(err, -EINVAL, "file '%s': tensor '%s': name is not valid UTF-8", w->path, name);
    if ((unsigned)dtype >= ST_DTYPE_COUNT)
        return sv_err_set(err, -EINVAL, "file '%s': tensor '%s': invalid dtype %d", w->path, name, (int)dtype);
    if (ndim < 0 || ndim > ST_MAX_DIMS)
        return sv_err_set(err, -EINVAL, "file '%s': tensor '%s': %d dimensions, supported 0 to %d", w->path, name,
                          ndim, ST_MAX_DIMS);
    if (writer_lookup(w, name))
        return sv_err_set(err, -EEXIST, "file '%s': tensor '%s': declared twice", w->path, name);
    struct st_wtensor t;
    memset(&t, 0, sizeof t);
    memcpy(t.name, name, len + 1);
    t.dtype = dtype;
    t.ndim = ndim;
    t.nelem = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return sv_err_set(err, -EINVAL, "file '%s': tensor '%s': negative dimension in shape %s", w->path,
                              name, fmt_shape(sbuf, sizeof sbuf, ndim, shape));
        t.shape[i] = shape[i];
        if (__builtin_mul_overflow(t.nelem, (uint64_t)shape[i], &t.nelem))
            return sv_err_set(err, -EOVERFLOW, "file '%s': tensor '%s': element count of shape %s overflows",
                              w->path, name, fmt_shape(sbuf, sizeof sbuf, ndim, shape));
    }
    if (__builtin_mul_overflow(t.nelem, (uint64_t)st_dtype_size(dtype), &t.nbytes) ||
        __builtin_add_overflow(w->end, t.nbytes, &t.begin) || t.begin > (uint64_t)INT64_MAX)
        return sv_err_set(err, -EOVERFLOW, "file '%s': tensor '%s': byte size of shape %s overflows", w->path,
                          name, fmt_shape(sbuf, sizeof sbuf, ndim, shape));
    t.begin = w->end;
    if (w->n == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 16;
        struct st_wtensor *p = realloc(w->t, cap * sizeof *p);
        if (!p)
            return sv_err_set(err, -ENOMEM, "file '%s': out of memory", w->path);
        w->t = p;
        w->cap = cap;
    }
    w->t[w->n++] = t;
    w->end += t.nbytes;
    return 0;
}

/* Writes all of buf, retrying short writes; a full disk surfaces here. */
static int write_all(struct st_writer *w, const void *buf, size_t len, struct sv_err *err) {
    int r = afile_write_full(w->fd, buf, len, w->tmp, err);
    if (r < 0)
        w->failed = 1;
    return r;
}

static int write_header(struct st_writer *w, struct sv_err *err) {
    int r = 0;
    char *text = NULL, *buf = NULL;
    json_t *root = json_object(), *meta = NULL;
    if (!root) {
        r = -ENOMEM;
        goto out;
    }
    /* jansson keeps insertion order, so the output is declaration order. The
     * _new setters and json_pack's "o" steal their argument even on failure. */
    if (w->nmeta) {
        if (!(meta = json_object())) {
            r = -ENOMEM;
            goto out;
        }
        for (size_t i = 0; i < w->nmeta; i++)
            if (json_object_set_new(meta, w->mkey[i], json_string(w->mval[i])) < 0)
                r = -ENOMEM;
        if (json_object_set_new(root, "__metadata__", meta) < 0 || r < 0) {
            r = -ENOMEM;
            goto out;
        }
    }
    for (size_t i = 0; i < w->n; i++) {
        const struct st_wtensor *t = &w->t[i];
        json_t *shape = json_array();
        for (int d = 0; shape && d < t->ndim; d++)
            if (json_array_append_new(shape, json_integer((json_int_t)t->shape[d])) < 0)
                r = -ENOMEM;
        json_t *e = json_pack("{s:s, s:o, s:[I,I]}", "dtype", st_dtype_name(t->dtype), "shape", shape,
                              "data_offsets", (json_int_t)t->begin, (json_int_t)(t->begin + t->nbytes));
        if (json_object_set_new(root, t->name, e) < 0 || !shape || r < 0) {
            r = -ENOMEM;
            goto out;
        }
    }
    if (!(text = json_dumps(root, JSON_COMPACT))) {
        r = -ENOMEM;
        goto out;
    }
    size_t len = strlen(text), padded = (len + 7) & ~(size_t)7;
    if (padded > ST_MAX_HEADER) {
        r = sv_err_set(err, -EFBIG, "file '%s': header of %zu bytes exceeds the %u-byte limit", w->path, padded,
                       ST_MAX_HEADER);
        goto out;
    }
    if (!(buf = malloc(8 + padded))) {
        r = -ENOMEM;
        goto out;
    }
    for (int i = 0; i < 8; i++)
        buf[i] = (char)(((uint64_t)padded >> (8 * i)) & 0xff);
    memcpy(buf + 8, text, len);
    memset(buf + 8 + len, ' ', padded - len);
    r = write_all(w, buf, 8 + padded, err);
out:
    if (r == -ENOMEM)
        sv_err_set(err, r, "file '%s': out of memory building the header", w->path);
    if (r == 0)
        w->header_done = 1;
    free(buf);
    free(text);
    json_decref(root);
    return r;
}

/* Checks NAME is the next tensor due and the writer is usable; returns it. */
static int writer_next(struct st_writer *w, const char *name, const struct st_wtensor **ret, struct sv_err *err) {
    if (w->failed)
        return sv_err_set(err, -EIO, "file '%s': tensor '%s': writer failed earlier", w->tmp, name);
    if (w->next < w->n && strcmp(w->t[w->next].name, name) == 0) {
        *ret = &w->t[w->next];
        return 0;
    }
    const struct st_wtensor *t = writer_lookup(w, name);
    if (!t)
        return sv_err_set(err, -ENOENT, "file '%s': tensor '%s': not declared", w->path, name);
    if ((size_t)(t - w->t) < w->next)
        return sv_err_set(err, -EINVAL, "file '%s': tensor '%s': already written", w->path, name);
    return sv_err_set(err, -EINVAL, "file '%s': tensor '%s': written out of order, expected '%s' next", w->path,
                      name, w->t[w->next].name);
}

int st_writer_write_f32(struct st_writer *w, const char *name, const float *data, size_t n, struct sv_err *err) {
    enum { CHUNK = 16384 };
    unsigned char buf[CHUNK * 2];
    char sbuf[200];
    const struct st_wtensor *t;
    int r;
    /* Every argument check comes before the header goes out, so a rejected
     * call leaves the writer as it was (declarations still open). */
    if ((r = writer_next(w, name, &t, err)) < 0)
        return r;
    if ((uint64_t)n != t->nelem)
        return sv_err_set(err, -EINVAL, "file '%s': tensor '%s': %zu elements given, declared shape %s has %llu",
                          w->path, name, n, fmt_shape(sbuf, sizeof sbuf, t->ndim, t->shape),
                          (unsigned long long)t->nelem);
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16)
        return sv_err_set(err, -ENOTSUP, "file '%s': tensor '%s': cannot convert f32 to dtype '%s' "
                          "(use st_writer_write_raw)", w->path, name, st_dtype_name(t->dtype));
    if (!w->header_done && (r = write_header(w, err)) < 0)
        return r;
    if (t->dtype == ST_F32) {
        r = write_all(w, data, n * sizeof *data, err);
    } else {
        for (size_t i = 0; i < n && r == 0; i += CHUNK) {
            size_t k = n - i < CHUNK ? n - i : CHUNK;
            for (size_t j = 0; j < k; j++) {
                uint16_t h = t->dtype == ST_F16 ? st_f32_to_f16(data[i + j]) : st_f32_to_bf16(data[i + j]);
                buf[2 * j] = (unsigned char)(h & 0xff);
                buf[2 * j + 1] = (unsigned char)(h >> 8);
            }
            r = write_all(w, buf, 2 * k, err);
        }
    }
    if (r == 0)
        w->next++;
    return r;
}

int st_writer_write_raw(struct st_writer *w, const char *name, const void *data, size_t nbytes,
                        struct sv_err *err) {
    const struct st_wtensor *t;
    int r;
    if ((r = writer_next(w, name, &t, err)) < 0)
        return r;
    if ((uint64_t)nbytes != t->nbytes)
        return sv_err_set(err, -EINVAL, "file '%s': tensor '%s': %zu bytes given, declared %s tensor has %llu",
                          w->path, name, nbytes, st_dtype_name(t->dtype), (unsigned long long)t->nbytes);
    if (!w->header_done && (r = write_header(w, err)) < 0)
        return r;
    if ((r = write_all(w, data, nbytes, err)) == 0)
        w->next++;
    return r;
}

int st_writer_finish(struct st_writer *w, struct sv_err *err) {
    int r = 0;
    if (!w)
        return sv_err_set(err, -EINVAL, "st_writer_finish: no writer");
    if (w->failed) {
        r = sv_err_set(err, -EIO, "file '%s': writer failed earlier", w->tmp);
        goto out;
    }
    if (w->next < w->n) {
        r = sv_err_set(err, -EINVAL, "file '%s': tensor '%s': declared but not written (%zu of %zu written)",
                       w->path, w->t[w->next].name, w->next, w->n);
        goto out;
    }
    if (!w->header_done && (r = write_header(w, err)) < 0)
        goto out;
    r = afile_tmp_finish(w->fd, 0, w->tmp, w->path, NULL, err);
    w->fd = -1; /* closed, and tmp removed on failure */
out:
    st_writer_free(w);
    return r;
}
