/* proto: framing, error codes and message helpers; see proto.h.
 *
 * Design note: the line buffer is the only place that decides how much of an
 * untrusted stream is held in memory. It grows from 4 KiB up to its max, and a
 * line is recognised only once its '\n' has arrived, so a peer can never make
 * us hold more than max bytes. Scanning resumes where it stopped, so a line
 * that arrives in many small reads costs O(n), not O(n^2). */
#include "proto.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static const char *const code_names[PROTO_CODE_COUNT] = {
    [PROTO_OK] = "ok",
    [PROTO_BAD_JSON] = "bad_json",
    [PROTO_TOO_LARGE] = "too_large",
    [PROTO_UNKNOWN_OP] = "unknown_op",
    [PROTO_BAD_REQUEST] = "bad_request",
    [PROTO_BAD_PATH] = "bad_path",
    [PROTO_EXISTS] = "exists",
    [PROTO_BAD_MODEL] = "bad_model",
    [PROTO_INVALID] = "invalid",
    [PROTO_NOT_FOUND] = "not_found",
    [PROTO_BAD_STATE] = "bad_state",
    [PROTO_FORBIDDEN] = "forbidden",
    [PROTO_TOO_MANY_CLIENTS] = "too_many_clients",
    [PROTO_QUEUE_FULL] = "queue_full",
    [PROTO_BUSY] = "busy",
    [PROTO_SHUTTING_DOWN] = "shutting_down",
    [PROTO_FAILED] = "failed",
    [PROTO_CANCELLED] = "cancelled",
    [PROTO_INTERNAL] = "internal",
    [PROTO_TIMEOUT] = "timeout",
};

const char *proto_code_name(enum proto_code c) {
    if ((unsigned)c >= PROTO_CODE_COUNT)
        return "internal";
    return code_names[c];
}

enum proto_code proto_code_parse(const char *s) {
    for (int c = 0; c < PROTO_CODE_COUNT; c++)
        if (strcmp(s, code_names[c]) == 0)
            return (enum proto_code)c;
    return PROTO_CODE_COUNT;
}

int proto_error_set(struct proto_error *e, enum proto_code code, const char *fmt, ...) {
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
        e->code = code;
    }
    return -EINVAL;
}

/* ---- Framing ---------------------------------------------------------------- */

#define BUF_INITIAL 4096

int proto_buf_init(struct proto_buf *b, size_t max) {
    memset(b, 0, sizeof *b);
    if (max < 2)
        return -EINVAL;
    b->max = max;
    b->cap = max < BUF_INITIAL ? max : BUF_INITIAL;
    b->data = malloc(b->cap + 1);   /* +1: room to NUL-terminate a full line */
    return b->data ? 0 : -ENOMEM;
}

void proto_buf_free(struct proto_buf *b) {
    if (!b)
        return;
    free(b->data);
    memset(b, 0, sizeof *b);
}

char *proto_buf_space(struct proto_buf *b, size_t *ret_n) {
    if (b->start > 0) {
        memmove(b->data, b->data + b->start, b->len - b->start);
        b->len -= b->start;
        b->scanned -= b->start;
        b->start = 0;
    }
    if (b->len == b->cap && b->cap < b->max) {
        size_t ncap = b->cap * 2 < b->max ? b->cap * 2 : b->max;
        char *n = realloc(b->data, ncap + 1);
        if (n) {
            b->data = n;
            b->cap = ncap;
        }
    }
    /* Never offer more than the unconsumed input may grow to. */
    size_t room = b->cap - b->len;
    if (b->len + room > b->max)
        room = b->max > b->len ? b->max - b->len : 0;
    *ret_n = room;
    return b->data + b->len;
}

void proto_buf_commit(struct proto_buf *b, size_t n) {
    b->len += n;
}

int proto_buf_next(struct proto_buf *b, char **ret_line, size_t *ret_len) {
    char *nl = memchr(b->data + b->scanned, '\n', b->len - b->scanned);
    if (!nl) {
        b->scanned = b->len;
        if (b->len - b->start >= b->max)
            return -EMSGSIZE;
        return 0;
    }
    char *line = b->data + b->start;
    size_t n = (size_t)(nl - line);
    *nl = '\0';
    if (n > 0 && line[n - 1] == '\r')
        line[--n] = '\0';
    b->start = (size_t)(nl - b->data) + 1;
    b->scanned = b->start;
    *ret_line = line;
    *ret_len = n;
    return 1;
}

/* ---- Decoding --------------------------------------------------------------- */

static const char *type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "object";
    case JSON_ARRAY: return "array";
    case JSON_STRING: return "string";
    case JSON_INTEGER: return "integer";
    case JSON_REAL: return "number";
    case JSON_TRUE:
    case JSON_FALSE: return "boolean";
    case JSON_NULL: return "null";
    }
    return "?";
}

int proto_parse(const char *line, size_t len, json_t **ret, struct proto_error *e) {
    json_error_t jerr;
    json_t *v = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!v) {
        bool utf8 = json_error_code(&jerr) == json_error_invalid_utf8;
        return proto_error_set(e, PROTO_BAD_JSON, "%s at line %d, column %d: %s",
                               utf8 ? "invalid UTF-8" : "invalid JSON", jerr.line, jerr.column,
                               jerr.text);
    }
    if (!json_is_object(v)) {
        int r = proto_error_set(e, PROTO_BAD_JSON, "a message must be a JSON object, got %s",
                                type_name(v));
        json_decref(v);
        return r;
    }
    *ret = v;
    return 0;
}

int proto_request_head(json_t *msg, long long *ret_id, const char **ret_op, struct proto_error *e) {
    long long id = 0;
    *ret_id = PROTO_NO_ID;
    int r = proto_get_int(msg, "id", true, 0, PROTO_MAX_ID, &id, e);
    if (r < 0)
        return r;
    *ret_id = id;
    json_t *op = json_object_get(msg, "op");
    if (!op || json_is_null(op))
        return proto_error_set(e, PROTO_UNKNOWN_OP, "missing field 'op'");
    if (!json_is_string(op))
        return proto_error_set(e, PROTO_UNKNOWN_OP, "field 'op': expected a string, got %s",
                               type_name(op));
    *ret_op = json_string_value(op);
    return 0;
}

int proto_check_fields(json_t *obj, const char *const *allowed, struct proto_error *e) {
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v) {
        bool ok = false;
        for (size_t i = 0; allowed[i] && !ok; i++)
            ok = strcmp(key, allowed[i]) == 0;
        if (!ok)
            return proto_error_set(e, PROTO_BAD_REQUEST, "unknown field '%.200s'", key);
    }
    return 0;
}

/* Looks field up; returns NULL (absent) or the value, or sets e for a missing
 * required field. */
static int get_field(json_t *obj, const char *field, bool required, json_t **ret,
                     struct proto_error *e) {
    json_t *v = json_object_get(obj, field);
    if (!v || json_is_null(v)) {
        if (required)
            return proto_error_set(e, PROTO_BAD_REQUEST, "missing field '%s'", field);
        return 0;
    }
    *ret = v;
    return 1;
}

int proto_get_string(json_t *obj, const char *field, bool required, const char **ret,
                     struct proto_error *e) {
    json_t *v = NULL;
    int r = get_field(obj, field, required, &v, e);
    if (r <= 0)
        return r;
    if (!json_is_string(v))
        return proto_error_set(e, PROTO_BAD_REQUEST, "field '%s': expected a string, got %s",
                               field, type_name(v));
    *ret = json_string_value(v);
    return 1;
}

int proto_get_int(json_t *obj, const char *field, bool required, long long min, long long max,
                  long long *ret, struct proto_error *e) {
    json_t *v = NULL;
    int r = get_field(obj, field, required, &v, e);
    if (r <= 0)
        return r;
    if (!json_is_integer(v))
        return proto_error_set(e, PROTO_BAD_REQUEST, "field '%s': expected an integer, got %s",
                               field, type_name(v));
    long long x = (long long)json_integer_value(v);
    if (x < min || x > max)
        return proto_error_set(e, PROTO_BAD_REQUEST, "field '%s': %lld is out of range [%lld, %lld]",
                               field, x, min, max);
    *ret = x;
    return 1;
}

int proto_get_number(json_t *obj, const char *field, bool required, double *ret,
                     struct proto_error *e) {
    json_t *v = NULL;
    int r = get_field(obj, field, required, &v, e);
    if (r <= 0)
        return r;
    if (!json_is_number(v))
        return proto_error_set(e, PROTO_BAD_REQUEST, "field '%s': expected a number, got %s",
                               field, type_name(v));
    *ret = json_number_value(v);
    return 1;
}

int proto_get_bool(json_t *obj, const char *field, bool required, bool *ret,
                   struct proto_error *e) {
    json_t *v = NULL;
    int r = get_field(obj, field, required, &v, e);
    if (r <= 0)
        return r;
    if (!json_is_boolean(v))
        return proto_error_set(e, PROTO_BAD_REQUEST, "field '%s': expected true or false, got %s",
                               field, type_name(v));
    *ret = json_is_true(v);
    return 1;
}

/* ---- Encoding --------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if invalid. */
static size_t utf8_seq(const unsigned char *s) {
    unsigned c = s[0];
    if (c < 0x80)
        return 1;
    size_t n;
    unsigned min;
    if ((c & 0xE0) == 0xC0) { n = 2; min = 0x80; c &= 0x1F; }
    else if ((c & 0xF0) == 0xE0) { n = 3; min = 0x800; c &= 0x0F; }
    else if ((c & 0xF8) == 0xF0) { n = 4; min = 0x10000; c &= 0x07; }
    else return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        c = (c << 6) | (s[i] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
        return 0;
    return n;
}

json_t *proto_str(const char *s) {
    if (!s)
        return json_null();
    json_t *v = json_string(s);
    if (v)
        return v;
    size_t n = strlen(s);
    char *copy = malloc(n + 1);
    if (!copy)
        return NULL;
    size_t i = 0;
    while (i < n) {
        size_t k = utf8_seq((const unsigned char *)s + i);
        if (k == 0) {
            copy[i++] = '?';
        } else {
            memcpy(copy + i, s + i, k);
            i += k;
        }
    }
    copy[n] = '\0';
    v = json_string(copy);
    free(copy);
    return v;
}

void proto_set_str(json_t *obj, const char *key, const char *s) {
    json_object_set_new(obj, key, proto_str(s));
}

void proto_set_int(json_t *obj, const char *key, long long v) {
    json_object_set_new(obj, key, json_integer((json_int_t)v));
}

void proto_set_real(json_t *obj, const char *key, double v) {
    json_object_set_new(obj, key, json_real(v));
}

void proto_set_bool(json_t *obj, const char *key, bool v) {
    json_object_set_new(obj, key, json_boolean(v));
}

static json_t *id_value(long long id) {
    return id == PROTO_NO_ID ? json_null() : json_integer((json_int_t)id);
}

json_t *proto_request_new(long long id, const char *op) {
    json_t *m = json_object();
    json_object_set_new(m, "id", id_value(id));
    proto_set_str(m, "op", op);
    return m;
}

json_t *proto_reply_ok(long long id) {
    json_t *m = json_object();
    json_object_set_new(m, "id", id_value(id));
    json_object_set_new(m, "ok", json_true());
    return m;
}

json_t *proto_reply_error(long long id, enum proto_code code, const char *msg) {
    json_t *m = json_object();
    json_object_set_new(m, "id", id_value(id));
    json_object_set_new(m, "ok", json_false());
    json_t *err = json_object();
    proto_set_str(err, "code", proto_code_name(code));
    proto_set_str(err, "message", msg);
    json_object_set_new(m, "error", err);
    return m;
}

json_t *proto_event_new(long long id, const char *name) {
    json_t *m = json_object();
    json_object_set_new(m, "id", id_value(id));
    proto_set_str(m, "event", name);
    return m;
}

int proto_encode(const json_t *msg, char **ret, size_t *ret_len, struct proto_error *e) {
    /* JSON_COMPACT never emits a raw newline: strings escape it. 16
     * significant digits print 0.4 as 0.4, not 0.40000000000000002. */
    char *s = json_dumps(msg, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(16));
    if (!s)
        return proto_error_set(e, PROTO_INTERNAL, "cannot encode message: out of memory");
    size_t n = strlen(s);
    if (n > PROTO_MAX_MSG) {
        free(s);
        return proto_error_set(e, PROTO_TOO_LARGE, "message of %zu bytes exceeds the %d-byte limit",
                               n, PROTO_MAX_MSG);
    }
    char *line = realloc(s, n + 2);
    if (!line) {
        free(s);
        return proto_error_set(e, PROTO_INTERNAL, "cannot encode message: out of memory");
    }
    line[n] = '\n';
    line[n + 1] = '\0';
    *ret = line;
    *ret_len = n + 1;
    return 0;
}

int proto_reply_is_error(json_t *msg, struct proto_error *e) {
    json_t *ok = json_object_get(msg, "ok");
    if (!json_is_false(ok))
        return 0;
    json_t *err = json_object_get(msg, "error");
    const char *code = json_string_value(json_object_get(err, "code"));
    const char *text = json_string_value(json_object_get(err, "message"));
    enum proto_code c = code ? proto_code_parse(code) : PROTO_INTERNAL;
    if (e) {
        e->code = c == PROTO_CODE_COUNT ? PROTO_INTERNAL : c;
        snprintf(e->msg, sizeof e->msg, "%s", text ? text : (code ? code : "unknown error"));
    }
    return 1;
}

/* ---- Blocking I/O ----------------------------------------------------------- */

int proto_write_msg(int fd, const json_t *msg, struct proto_error *e) {
    char *line;
    size_t n;
    int r = proto_encode(msg, &line, &n, e);
    if (r < 0)
        return r;
    size_t off = 0;
    bool sock = true;
    while (off < n) {
        ssize_t w = sock ? send(fd, line + off, n - off, MSG_NOSIGNAL) : write(fd, line + off, n - off);
        if (w < 0 && errno == ENOTSOCK && sock) {
            sock = false;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            r = proto_error_set(e, PROTO_INTERNAL, "write: %s", strerror(errno));
            break;
        }
        off += (size_t)w;
    }
    free(line);
    return r;
}

int proto_read_msg(int fd, struct proto_buf *b, json_t **ret, struct proto_error *e) {
    for (;;) {
        char *line;
        size_t len;
        int r = proto_buf_next(b, &line, &len);
        if (r < 0)
            return proto_error_set(e, PROTO_TOO_LARGE, "message longer than %d bytes", PROTO_MAX_MSG);
        if (r > 0) {
            if (len == 0)
                continue;   /* blank lines carry nothing */
            return proto_parse(line, len, ret, e) < 0 ? -EINVAL : 1;
        }
        size_t room;
        char *p = proto_buf_space(b, &room);
        if (room == 0)
            return proto_error_set(e, PROTO_TOO_LARGE, "message longer than %d bytes", PROTO_MAX_MSG);
        ssize_t got = read(fd, p, room);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return proto_error_set(e, PROTO_INTERNAL, "read: %s", strerror(errno));
        if (got == 0) {
            if (b->len > b->start)
                return proto_error_set(e, PROTO_BAD_JSON, "connection closed in the middle of a message");
            return 0;
        }
        proto_buf_commit(b, (size_t)got);
    }
}
