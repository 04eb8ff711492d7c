/* proto: the svdllmd wire protocol, shared by the daemon and svdllmctl.
 *
 * Newline-delimited JSON over a Unix SOCK_STREAM socket (schema/protocol.md is
 * the reference). This file owns the framing (a bounded line buffer), the
 * error codes, typed field getters that produce `bad_request` errors naming the
 * field, reply/event builders, and blocking read/write helpers for the client
 * and the tests. On the wire it is, with the daemon's request handlers
 * (daemon/server.c) and svdllmctl, the only jansson user; the engine uses
 * jansson on its own for the model's files (config.c, st.c, tok.c), a job's
 * files (jobfiles.c) and svdllm-engine's output. It never logs and holds no
 * global state, so any thread may call it on its own objects. */
#ifndef PROTO_H
#define PROTO_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "sv_err.h"

#define PROTO_VERSION 1
/* Largest message in either direction, in bytes, not counting its '\n'. */
#define PROTO_MAX_MSG (1024 * 1024)
/* Request ids are integers in [0, PROTO_MAX_ID] (exact in a double, so any
 * JSON implementation can echo them); PROTO_NO_ID is sent as null. */
#define PROTO_MAX_ID 9007199254740991LL
#define PROTO_NO_ID (-1LL)

/* Error codes of `"error":{"code":...}`; names in proto.c, meanings in
 * schema/protocol.md. */
enum proto_code {
    PROTO_OK = 0,
    PROTO_BAD_JSON,          /* not UTF-8 JSON, or not an object; connection closed */
    PROTO_TOO_LARGE,         /* line longer than PROTO_MAX_MSG; connection closed */
    PROTO_UNKNOWN_OP,        /* missing or unknown "op" */
    PROTO_BAD_REQUEST,       /* missing, unknown or mistyped field, value out of range */
    PROTO_BAD_PATH,          /* path not absolute, missing, unreadable or of the wrong type */
    PROTO_EXISTS,            /* output exists and "overwrite" is not set */
    PROTO_BAD_MODEL,         /* model directory is not a supported LLaMA model */
    PROTO_INVALID,           /* the engine refused the parameters */
    PROTO_NOT_FOUND,         /* no such job */
    PROTO_BAD_STATE,         /* the job is not in a state that allows the op */
    PROTO_FORBIDDEN,         /* peer is not the job's owner nor root */
    PROTO_TOO_MANY_CLIENTS,  /* connection limit reached; connection closed */
    PROTO_QUEUE_FULL,        /* queued-job or eval limit reached */
    PROTO_BUSY,              /* too many requests in flight on this connection */
    PROTO_SHUTTING_DOWN,     /* the daemon is stopping */
    PROTO_FAILED,            /* the operation ran and failed (eval) */
    PROTO_CANCELLED,         /* the operation was cancelled (eval during shutdown) */
    PROTO_INTERNAL,          /* daemon-side failure (I/O, SQLite, out of memory) */
    PROTO_TIMEOUT,           /* idle connection or half-sent line timed out; connection closed */
    PROTO_CODE_COUNT
};

const char *proto_code_name(enum proto_code c);
/* Returns the code named s, or PROTO_CODE_COUNT if none. */
enum proto_code proto_code_parse(const char *s);

/* A protocol-level error: a code for the reply plus a one-line message. */
struct proto_error {
    enum proto_code code;
    char msg[SV_ERR_MSG_MAX];
};

/* Fills e (may be NULL) and returns -EINVAL, so handlers can
 * `return proto_error_set(e, PROTO_BAD_REQUEST, "...")`. */
int proto_error_set(struct proto_error *e, enum proto_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- Framing ----------------------------------------------------------------
 * A bounded buffer that splits a byte stream into lines. It never holds more
 * than max bytes of unconsumed input; a line (with its '\n') that does not fit
 * is reported as -EMSGSIZE and the stream can not be resynchronised. */
struct proto_buf {
    char *data;
    size_t start;     /* first unconsumed byte */
    size_t len;       /* bytes held (data[start..len) unconsumed) */
    size_t scanned;   /* data[start..scanned) known to hold no '\n' */
    size_t cap;
    size_t max;
};

/* max is the largest line including its '\n' (normally PROTO_MAX_MSG + 1). */
int proto_buf_init(struct proto_buf *b, size_t max);
void proto_buf_free(struct proto_buf *b);
/* Free space to read into (compacting and growing as needed); *ret_n == 0
 * means the buffer is full. Invalidates lines returned earlier. */
char *proto_buf_space(struct proto_buf *b, size_t *ret_n);
void proto_buf_commit(struct proto_buf *b, size_t n);
/* Takes the next complete line: returns 1 with *ret_line NUL-terminated (the
 * '\n' and a trailing '\r' removed) and *ret_len its length; 0 when no complete
 * line is held; -EMSGSIZE when max bytes are held without a '\n'. The line
 * stays valid until the next proto_buf_space(). */
int proto_buf_next(struct proto_buf *b, char **ret_line, size_t *ret_len);

/* ---- Decoding ---------------------------------------------------------------- */

/* Parses one line into a JSON object (duplicate keys refused). On failure:
 * PROTO_BAD_JSON with jansson's line/column and reason. */
int proto_parse(const char *line, size_t len, json_t **ret, struct proto_error *e);
/* Reads "id" (required integer in [0, PROTO_MAX_ID]) and "op" (required
 * string). A missing/invalid id gives PROTO_BAD_REQUEST with *ret_id left
 * PROTO_NO_ID; a missing op gives PROTO_UNKNOWN_OP. */
int proto_request_head(json_t *msg, long long *ret_id, const char **ret_op, struct proto_error *e);
/* Refuses any key of obj not in the NULL-terminated list allowed. */
int proto_check_fields(json_t *obj, const char *const *allowed, struct proto_error *e);

/* Typed getters. Each returns 1 when the field is present and valid (*ret
 * set), 0 when it is absent and optional (*ret untouched), or -EINVAL with
 * PROTO_BAD_REQUEST naming the field and what was wrong. null counts as
 * absent. */
int proto_get_string(json_t *obj, const char *field, bool required, const char **ret,
                     struct proto_error *e);
int proto_get_int(json_t *obj, const char *field, bool required, long long min, long long max,
                  long long *ret, struct proto_error *e);
int proto_get_number(json_t *obj, const char *field, bool required, double *ret,
                     struct proto_error *e);
int proto_get_bool(json_t *obj, const char *field, bool required, bool *ret,
                   struct proto_error *e);

/* ---- Encoding ---------------------------------------------------------------- */

/* A JSON string for s; bytes that are not valid UTF-8 (file names can hold
 * any bytes) are replaced by '?', so the result is never NULL unless out of
 * memory. */
json_t *proto_str(const char *s);
/* obj[key] = proto_str(s). */
void proto_set_str(json_t *obj, const char *key, const char *s);
void proto_set_int(json_t *obj, const char *key, long long v);
void proto_set_real(json_t *obj, const char *key, double v);
void proto_set_bool(json_t *obj, const char *key, bool v);

/* {"id":id,"op":op} */
json_t *proto_request_new(long long id, const char *op);
/* {"id":id,"ok":true} */
json_t *proto_reply_ok(long long id);
/* {"id":id|null,"ok":false,"error":{"code":...,"message":msg}} */
json_t *proto_reply_error(long long id, enum proto_code code, const char *msg);
/* {"id":id,"event":name} */
json_t *proto_event_new(long long id, const char *name);

/* Compact one-line encoding with the trailing '\n' (malloc'd). Fails with
 * PROTO_TOO_LARGE when the line would exceed PROTO_MAX_MSG. */
int proto_encode(const json_t *msg, char **ret, size_t *ret_len, struct proto_error *e);

/* If msg is an error reply, fills e from it and returns 1; 0 otherwise. */
int proto_reply_is_error(json_t *msg, struct proto_error *e);

/* ---- Blocking I/O (client, tests) ------------------------------------------- */

/* Encodes msg and writes it whole (EINTR-safe; no SIGPIPE on sockets).
 * Errors: PROTO_INTERNAL naming the syscall. */
int proto_write_msg(int fd, const json_t *msg, struct proto_error *e);
/* Reads until b holds a complete line and parses it: 1 with *ret, 0 at a clean
 * end of stream, <0 with e set (I/O error, truncated line, oversize line, bad
 * JSON). */
int proto_read_msg(int fd, struct proto_buf *b, json_t **ret, struct proto_error *e);

#endif
