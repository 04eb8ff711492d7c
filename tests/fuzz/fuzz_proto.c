/* fuzz_proto: libFuzzer target for the wire protocol (common/proto.c).
 *
 * Input layout: byte 0 picks the line limit (bit 7 set: the daemon's real
 * PROTO_MAX_MSG + 1; otherwise 2 + (byte & 0x7f), so the oversize paths are
 * reachable with small inputs), byte 1 seeds the sizes of the simulated
 * reads, and the rest is the byte stream a client sends.
 *
 * The stream goes through proto_buf in chunks exactly as daemon/server.c's
 * on_alloc/on_read do (space, commit, then every complete line), and every
 * non-empty line through what handle_line and the op handlers do with it:
 * proto_parse, proto_request_head, proto_check_fields and the typed getters
 * with op_submit's, op_list's and op_eval's fields and ranges, then an error
 * reply built and encoded from the resulting proto_error. The client side is
 * covered too: proto_reply_is_error on each parsed message, and the same
 * stream read back through proto_read_msg from a memfd.
 *
 * Checked, besides ASan/UBSan: the framer yields exactly the lines an
 * independent split of the stream gives (trailing '\r' removed), reports
 * -EMSGSIZE exactly when a line reaches the limit, never offers more room than
 * the limit allows; getters only return values of the right type in range;
 * encoded messages are one line that parses back, values echoed through
 * proto_set_* come back (reals to 16 digits); proto_str keeps the length of
 * any byte string. */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "proto.h"

static struct fuzz_file file;

static uint32_t rng_next(uint32_t *s) {
    *s = *s * 1103515245u + 12345u;
    return *s >> 16;
}

/* Encodes msg, checks it is one line, parses it back. */
static void check_encode(const json_t *msg) {
    struct proto_error e = {0};
    char *line = NULL;
    size_t len = 0;
    if (proto_encode(msg, &line, &len, &e) < 0) {
        FUZZ_CHECK(e.code == PROTO_TOO_LARGE, "encode failed: %s", e.msg);
        return;
    }
    FUZZ_CHECK(len >= 3 && strlen(line) == len && line[len - 1] == '\n', "encoded line framing");
    FUZZ_CHECK(memchr(line, '\n', len - 1) == NULL, "raw newline inside an encoded message");
    json_t *back = NULL;
    int r = proto_parse(line, len - 1, &back, &e);
    FUZZ_CHECK(r == 0, "encoded message does not parse back: %s", e.msg);
    FUZZ_CHECK(json_object_size(back) == json_object_size(msg), "field count changed by encoding");
    json_decref(back);
    free(line);
}

/* Encodes an echo object and checks every value comes back: integers and
 * booleans exactly, reals to the 16 significant digits proto_encode keeps. */
static void check_echo(const json_t *echo) {
    struct proto_error e = {0};
    char *line = NULL;
    size_t len = 0;
    FUZZ_CHECK(proto_encode(echo, &line, &len, &e) == 0, "encode echo: %s", e.msg);
    json_t *back = NULL;
    FUZZ_CHECK(proto_parse(line, len - 1, &back, &e) == 0, "echo does not parse back: %s", e.msg);
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)echo, key, v) {
        json_t *w = json_object_get(back, key);
        if (json_is_real(v)) {
            double a = json_real_value(v), b = json_number_value(w);
            FUZZ_CHECK(json_is_number(w) && fabs(a - b) <= 1e-15 * fabs(a), "real '%s' %.17g came back as %.17g",
                       key, a, b);
        } else {
            FUZZ_CHECK(json_equal(v, w), "field '%s' changed by encoding", key);
        }
    }
    json_decref(back);
    free(line);
}

/* The fields op_submit reads, with its types and ranges. */
static void submit_fields(json_t *msg) {
    static const char *const fields[] = {
        "id", "op", "model", "out", "method", "ratio", "calib", "nsamples", "seqlen", "seed",
        "calib_windows", "dense", "overwrite", "eval_text", "eval_seqlen", "eval_max_windows",
        "alpha", "ranks", "layers", "attn_split", "centered", NULL,
    };
    static const char *const strs[] = {"model", "out", "method", "calib", "calib_windows", "eval_text", "ranks"};
    static const char *const nums[] = {"ratio", "alpha", "attn_split"};
    static const char *const bools[] = {"dense", "overwrite", "centered"};
    static const struct {
        const char *name;
        long long lo, hi;
    } ints[] = {
        {"nsamples", 1, 65536},   {"seqlen", 2, 65536},          {"seed", 0, PROTO_MAX_ID},
        {"eval_seqlen", 0, 65536}, {"eval_max_windows", 0, INT_MAX}, {"layers", 0, 1024},
    };
    struct proto_error e = {0};
    int r = proto_check_fields(msg, fields, &e);
    FUZZ_CHECK(r == 0 || (r == -EINVAL && e.code == PROTO_BAD_REQUEST), "check_fields %d", r);
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++) {
        const char *s = NULL;
        r = proto_get_string(msg, strs[i], i < 2, &s, &e);
        FUZZ_CHECK(r == 1 ? s != NULL && json_is_string(json_object_get(msg, strs[i])) : s == NULL,
                   "get_string('%s') %d", strs[i], r);
        if (r == 1) {
            json_t *j = proto_str(s);
            FUZZ_CHECK(j && strcmp(json_string_value(j), s) == 0, "proto_str changed a valid string");
            json_decref(j);
        }
    }
    /* Values echoed back as the daemon's job objects do (proto_set_*),
     * then encoded and parsed again as a client would. */
    json_t *echo = proto_event_new(1, "progress");
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        double d = -12345.0;
        r = proto_get_number(msg, nums[i], i == 0, &d, &e);
        FUZZ_CHECK(r == 1 ? json_is_number(json_object_get(msg, nums[i])) : d == -12345.0,
                   "get_number('%s') %d", nums[i], r);
        if (r == 1)
            proto_set_real(echo, nums[i], d);
    }
    for (size_t i = 0; i < sizeof bools / sizeof bools[0]; i++) {
        bool b = false;
        r = proto_get_bool(msg, bools[i], false, &b, &e);
        FUZZ_CHECK(r != 1 || json_is_true(json_object_get(msg, bools[i])) == b, "get_bool('%s')", bools[i]);
        if (r == 1)
            proto_set_bool(echo, bools[i], b);
    }
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        long long v = LLONG_MIN;
        r = proto_get_int(msg, ints[i].name, false, ints[i].lo, ints[i].hi, &v, &e);
        if (r == 1)
            FUZZ_CHECK(v >= ints[i].lo && v <= ints[i].hi, "get_int('%s') = %lld out of range", ints[i].name, v);
        else
            FUZZ_CHECK(v == LLONG_MIN, "get_int('%s') wrote on failure", ints[i].name);
        FUZZ_CHECK(r == 1 || r == 0 || (r == -EINVAL && e.code == PROTO_BAD_REQUEST), "get_int %d", r);
        if (r == 1)
            proto_set_int(echo, ints[i].name, v);
    }
    check_echo(echo);
    json_decref(echo);
}

/* op_list and op_eval / op_cancel / op_status. */
static void other_fields(json_t *msg) {
    static const char *const list_fields[] = {"id", "op", "state", "limit", NULL};
    static const char *const eval_fields[] = {"id", "op", "model", "text", "seqlen", "max_windows", NULL};
    struct proto_error e = {0};
    const char *s = NULL;
    long long v = 0;
    proto_check_fields(msg, list_fields, &e);
    proto_get_string(msg, "state", false, &s, &e);
    proto_get_int(msg, "limit", false, 1, 10000, &v, &e);
    proto_check_fields(msg, eval_fields, &e);
    proto_get_string(msg, "text", true, &s, &e);
    proto_get_int(msg, "max_windows", false, 0, INT_MAX, &v, &e);
    if (proto_get_int(msg, "job", true, 1, INT64_MAX, &v, &e) == 1)
        FUZZ_CHECK(v >= 1, "job id %lld", v);
}

/* What handle_line does with one line, plus the client's view of it. */
static void handle_line(const char *line, size_t len) {
    struct proto_error e = {0};
    json_t *msg = NULL;
    if (proto_parse(line, len, &msg, &e) < 0) {
        FUZZ_CHECK(e.code == PROTO_BAD_JSON && msg == NULL, "parse failure code %d", e.code);
        json_t *rep = proto_reply_error(PROTO_NO_ID, e.code, e.msg);
        check_encode(rep);
        FUZZ_CHECK(proto_reply_is_error(rep, &e) == 1 && e.code == PROTO_BAD_JSON, "reply_is_error");
        json_decref(rep);
        return;
    }
    FUZZ_CHECK(json_is_object(msg), "proto_parse returned a non-object");

    /* The client side: a daemon reply may be an error. */
    struct proto_error ce = {0};
    if (proto_reply_is_error(msg, &ce) == 1)
        FUZZ_CHECK(ce.code >= 0 && ce.code < PROTO_CODE_COUNT && strnlen(ce.msg, sizeof ce.msg) < sizeof ce.msg,
                   "reply_is_error code %d", ce.code);

    long long id = 0;
    const char *op = NULL;
    int r = proto_request_head(msg, &id, &op, &e);
    if (r == 0) {
        FUZZ_CHECK(id >= 0 && id <= PROTO_MAX_ID && op != NULL, "request head id %lld", id);
        (void)proto_code_parse(op);
        json_t *rep = proto_reply_ok(id);
        proto_set_str(rep, "op", op);
        check_encode(rep);
        json_decref(rep);
        rep = proto_request_new(id, op);
        check_echo(rep);
        json_decref(rep);
        submit_fields(msg);
        other_fields(msg);
    } else {
        FUZZ_CHECK(e.code == PROTO_BAD_REQUEST || e.code == PROTO_UNKNOWN_OP, "head error code %d", e.code);
        FUZZ_CHECK(e.code != PROTO_BAD_REQUEST || id == PROTO_NO_ID, "id set on a bad id");
    }
    json_t *rep = proto_reply_error(r == 0 ? id : PROTO_NO_ID, r == 0 ? PROTO_BAD_REQUEST : e.code,
                                    r == 0 ? "x" : e.msg);
    check_encode(rep);
    json_decref(rep);
    check_encode(msg);
    json_decref(msg);
}

/* Independent framing: the next expected line of stream[*pos..n). Returns 1
 * with [*ls, *ls + *ll) the line (sans '\n' and one '\r'), -1 if the limit
 * max is hit first, 0 at the end (a partial line shorter than max). */
static int expect_next(const uint8_t *s, size_t n, size_t *pos, size_t max, size_t *ls, size_t *ll) {
    const uint8_t *nl = memchr(s + *pos, '\n', n - *pos);
    size_t l = nl ? (size_t)(nl - (s + *pos)) : n - *pos;
    if (l >= max)
        return -1;
    if (!nl)
        return 0;
    *ls = *pos;
    *ll = l;
    if (l > 0 && s[*pos + l - 1] == '\r')
        (*ll)--;
    *pos += l + 1;
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2)
        return 0;
    size_t max = data[0] & 0x80 ? PROTO_MAX_MSG + 1 : 2 + (size_t)(data[0] & 0x7f);
    uint32_t seed = data[1];
    const uint8_t *s = data + 2;
    size_t n = size - 2;

    /* The daemon's path: on_alloc / on_read. */
    struct proto_buf b;
    FUZZ_CHECK(proto_buf_init(&b, max) == 0, "buf_init");
    size_t off = 0, epos = 0;
    bool done = false;
    while (!done) {
        size_t room = 0;
        char *p = proto_buf_space(&b, &room);
        FUZZ_CHECK(room > 0, "no room although every complete line was taken");
        FUZZ_CHECK(b.len - b.start + room <= max, "room %zu lets the buffer exceed max %zu", room, max);
        if (off == n)
            break;
        size_t chunk = 1 + rng_next(&seed) % 64;
        if (rng_next(&seed) % 4 == 0)
            chunk = room;
        if (chunk > room)
            chunk = room;
        if (chunk > n - off)
            chunk = n - off;
        memcpy(p, s + off, chunk);
        off += chunk;
        proto_buf_commit(&b, chunk);
        for (;;) {
            char *line;
            size_t len;
            int r = proto_buf_next(&b, &line, &len);
            if (r == 0)
                break;
            size_t es = 0, el = 0;
            /* Lines up to what has arrived: the expectation sees only s[0..off). */
            int want = expect_next(s, off, &epos, max, &es, &el);
            if (r < 0) {
                FUZZ_CHECK(r == -EMSGSIZE && want == -1, "framer said %d, expected %d", r, want);
                done = true;
                break;
            }
            FUZZ_CHECK(want == 1 && len == el && memcmp(line, s + es, el) == 0 && line[len] == '\0',
                       "framer line differs from the expected one (want %d, len %zu vs %zu)", want, len, el);
            if (len > 0) {
                handle_line(line, len);
                /* A file name with any bytes: proto_str keeps the byte count. */
                json_t *j = proto_str(line);
                FUZZ_CHECK(j && strlen(json_string_value(j)) == strlen(line), "proto_str length");
                json_decref(j);
            }
        }
    }
    if (!done) {
        /* All delivered: nothing more may be pending, and no oversize line missed. */
        size_t es, el;
        FUZZ_CHECK(expect_next(s, n, &epos, max, &es, &el) == 0, "framer missed a line or an oversize line");
    }
    proto_buf_free(&b);

    /* The client's path: proto_read_msg on a file descriptor. */
    fuzz_file_put(&file, "fuzz_proto", s, n);
    FUZZ_CHECK(lseek(file.fd, 0, SEEK_SET) == 0, "lseek");
    FUZZ_CHECK(proto_buf_init(&b, max) == 0, "buf_init");
    for (int i = 0; i < 1000; i++) {
        json_t *msg = NULL;
        struct proto_error e = {0};
        size_t start = b.start, len = b.len;
        off_t at = lseek(file.fd, 0, SEEK_CUR);
        int r = proto_read_msg(file.fd, &b, &msg, &e);
        if (r <= 0) {
            FUZZ_CHECK(r == 0 || e.code == PROTO_BAD_JSON || e.code == PROTO_TOO_LARGE, "read_msg code %d: %s",
                       e.code, e.msg);
            /* The client gives up on bad JSON; go on (to cover more lines)
             * unless nothing moved (a truncated last line at end of file). */
            if (r < 0 && e.code == PROTO_BAD_JSON &&
                (b.start != start || b.len != len || lseek(file.fd, 0, SEEK_CUR) != at))
                continue;
            break;
        }
        FUZZ_CHECK(json_is_object(msg), "read_msg returned a non-object");
        json_decref(msg);
    }
    proto_buf_free(&b);
    return 0;
}
