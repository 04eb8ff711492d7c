/* test_proto: common/proto framing, parsing and field getters, with the
 * blocking helpers exercised over a socketpair. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"
#include "proto.h"

static void test_codes(void) {
    for (int c = 0; c < PROTO_CODE_COUNT; c++)
        SV_ASSERT_EQ(proto_code_parse(proto_code_name((enum proto_code)c)), c);
    SV_ASSERT_EQ(proto_code_parse("no_such_code"), PROTO_CODE_COUNT);
    SV_CHECK(strcmp(proto_code_name(PROTO_TOO_LARGE), "too_large") == 0);
}

/* Feeds data into b in pieces of step bytes, collecting complete lines. */
static int feed(struct proto_buf *b, const char *data, size_t n, size_t step, char lines[][64],
                int max_lines) {
    int got = 0;
    size_t off = 0;
    while (off < n) {
        size_t room;
        char *p = proto_buf_space(b, &room);
        size_t k = n - off < step ? n - off : step;
        if (k > room)
            k = room;
        if (k == 0)
            return -EMSGSIZE;
        memcpy(p, data + off, k);
        proto_buf_commit(b, k);
        off += k;
        char *line;
        size_t len;
        int r;
        while ((r = proto_buf_next(b, &line, &len)) == 1)
            if (got < max_lines)
                snprintf(lines[got++], 64, "%s", line);
        if (r < 0)
            return r;
    }
    return got;
}

static void test_framing(void) {
    static const char data[] = "{\"a\":1}\n\n{\"b\":2}\r\nxyz\n{\"tail\"";
    for (size_t step = 1; step <= sizeof data; step++) {
        struct proto_buf b;
        SV_ASSERT_EQ(proto_buf_init(&b, 64), 0);
        char lines[8][64];
        int n = feed(&b, data, sizeof data - 1, step, lines, 8);
        SV_ASSERT_EQ(n, 4);
        SV_CHECK(strcmp(lines[0], "{\"a\":1}") == 0);
        SV_CHECK(strcmp(lines[1], "") == 0);
        SV_CHECK(strcmp(lines[2], "{\"b\":2}") == 0);   /* \r stripped */
        SV_CHECK(strcmp(lines[3], "xyz") == 0);
        SV_ASSERT_EQ(b.len - b.start, 7);                 /* the partial tail is kept */
        proto_buf_free(&b);
    }

    /* The limit counts the '\n': max-1 bytes of line fit, max do not. */
    size_t max = PROTO_MAX_MSG + 1;
    char *big = malloc(max + 1);
    memset(big, 'x', max + 1);
    big[max - 1] = '\n';
    struct proto_buf b;
    SV_ASSERT_EQ(proto_buf_init(&b, max), 0);
    size_t off = 0, room;
    int r = 0;
    char *line = NULL;
    size_t len = 0;
    while (off < max && (r = proto_buf_next(&b, &line, &len)) == 0) {
        char *p = proto_buf_space(&b, &room);
        size_t k = max - off < room ? max - off : room;
        memcpy(p, big + off, k);
        proto_buf_commit(&b, k);
        off += k;
    }
    if (r == 0)
        r = proto_buf_next(&b, &line, &len);
    SV_ASSERT_EQ(r, 1);
    SV_ASSERT_EQ(len, PROTO_MAX_MSG);
    proto_buf_free(&b);

    SV_ASSERT_EQ(proto_buf_init(&b, max), 0);
    off = 0;
    r = 0;
    while (r == 0) {
        char *p = proto_buf_space(&b, &room);
        if (room == 0)
            break;
        memset(p, 'y', room);   /* never a newline */
        proto_buf_commit(&b, room);
        off += room;
        r = proto_buf_next(&b, &line, &len);
    }
    SV_ASSERT_EQ(r, -EMSGSIZE);
    SV_ASSERT_EQ(off, max);   /* it held exactly max bytes, not one more */
    proto_buf_free(&b);
    free(big);
}

static json_t *parse_ok(const char *s) {
    json_t *v = NULL;
    struct proto_error e = {0};
    SV_ASSERT_EQ(proto_parse(s, strlen(s), &v, &e), 0);
    return v;
}

static void expect_parse_error(const char *s, size_t n, const char *needle) {
    json_t *v = NULL;
    struct proto_error e = {0};
    SV_ASSERT_EQ(proto_parse(s, n, &v, &e), -EINVAL);
    SV_ASSERT_EQ(e.code, PROTO_BAD_JSON);
    SV_ASSERT_STR_CONTAINS(e.msg, needle);
    SV_CHECK(v == NULL);
}

static void test_parse(void) {
    expect_parse_error("{\"id\":1,", 8, "line 1, column");
    expect_parse_error("[1,2]", 5, "must be a JSON object, got array");
    expect_parse_error("\"str\"", 5, "line 1");
    expect_parse_error("{\"a\":\"\xff\xfe\"}", 10, "UTF-8");
    expect_parse_error("{\"a\":1,\"a\":2}", 13, "duplicate");
    expect_parse_error("{\"a\":1}\0{}", 10, "line 1");
    expect_parse_error("{\"a\":\"\\u0000\"}", 14, "line 1");

    struct proto_error e = {0};
    long long id;
    const char *op;
    json_t *v = parse_ok("{\"op\":\"ping\"}");
    SV_ASSERT_EQ(proto_request_head(v, &id, &op, &e), -EINVAL);
    SV_ASSERT_EQ(e.code, PROTO_BAD_REQUEST);
    SV_ASSERT_STR_CONTAINS(e.msg, "missing field 'id'");
    SV_ASSERT_EQ(id, PROTO_NO_ID);
    json_decref(v);

    v = parse_ok("{\"id\":\"7\",\"op\":\"ping\"}");
    SV_ASSERT_EQ(proto_request_head(v, &id, &op, &e), -EINVAL);
    SV_ASSERT_STR_CONTAINS(e.msg, "field 'id': expected an integer, got string");
    json_decref(v);

    v = parse_ok("{\"id\":-3,\"op\":\"ping\"}");
    SV_ASSERT_EQ(proto_request_head(v, &id, &op, &e), -EINVAL);
    SV_ASSERT_STR_CONTAINS(e.msg, "out of range");
    json_decref(v);

    v = parse_ok("{\"id\":7}");
    SV_ASSERT_EQ(proto_request_head(v, &id, &op, &e), -EINVAL);
    SV_ASSERT_EQ(e.code, PROTO_UNKNOWN_OP);
    SV_ASSERT_STR_CONTAINS(e.msg, "missing field 'op'");
    SV_ASSERT_EQ(id, 7);
    json_decref(v);

    v = parse_ok("{\"id\":7,\"op\":3}");
    SV_ASSERT_EQ(proto_request_head(v, &id, &op, &e), -EINVAL);
    SV_ASSERT_EQ(e.code, PROTO_UNKNOWN_OP);
    json_decref(v);

    v = parse_ok("{\"id\":9007199254740991,\"op\":\"status\"}");
    SV_ASSERT_EQ(proto_request_head(v, &id, &op, &e), 0);
    SV_ASSERT_EQ(id, PROTO_MAX_ID);
    SV_CHECK(strcmp(op, "status") == 0);
    json_decref(v);
}

static void test_getters(void) {
    struct proto_error e = {0};
    json_t *v = parse_ok("{\"s\":\"x\",\"i\":5,\"r\":0.5,\"b\":true,\"n\":null,\"big\":[1]}");
    const char *s = NULL;
    long long i = -1;
    double d = -1;
    bool b = false;

    SV_ASSERT_EQ(proto_get_string(v, "s", true, &s, &e), 1);
    SV_CHECK(s && strcmp(s, "x") == 0);
    SV_ASSERT_EQ(proto_get_string(v, "i", true, &s, &e), -EINVAL);
    SV_ASSERT_EQ(e.code, PROTO_BAD_REQUEST);
    SV_ASSERT_STR_CONTAINS(e.msg, "field 'i': expected a string, got integer");
    SV_ASSERT_EQ(proto_get_string(v, "absent", false, &s, &e), 0);
    SV_ASSERT_EQ(proto_get_string(v, "absent", true, &s, &e), -EINVAL);
    SV_ASSERT_STR_CONTAINS(e.msg, "missing field 'absent'");
    SV_ASSERT_EQ(proto_get_string(v, "n", false, &s, &e), 0);   /* null = absent */

    SV_ASSERT_EQ(proto_get_int(v, "i", true, 0, 10, &i, &e), 1);
    SV_ASSERT_EQ(i, 5);
    SV_ASSERT_EQ(proto_get_int(v, "i", true, 6, 10, &i, &e), -EINVAL);
    SV_ASSERT_STR_CONTAINS(e.msg, "field 'i': 5 is out of range [6, 10]");
    SV_ASSERT_EQ(proto_get_int(v, "r", true, 0, 10, &i, &e), -EINVAL);
    SV_ASSERT_STR_CONTAINS(e.msg, "expected an integer, got number");

    SV_ASSERT_EQ(proto_get_number(v, "r", true, &d, &e), 1);
    SV_ASSERT_NEAR_REL(d, 0.5, 0);
    SV_ASSERT_EQ(proto_get_number(v, "i", true, &d, &e), 1);   /* integers are numbers */
    SV_ASSERT_NEAR_REL(d, 5.0, 0);
    SV_ASSERT_EQ(proto_get_number(v, "b", true, &d, &e), -EINVAL);
    SV_ASSERT_STR_CONTAINS(e.msg, "field 'b': expected a number, got boolean");

    SV_ASSERT_EQ(proto_get_bool(v, "b", true, &b, &e), 1);
    SV_CHECK(b);
    SV_ASSERT_EQ(proto_get_bool(v, "s", true, &b, &e), -EINVAL);
    SV_ASSERT_STR_CONTAINS(e.msg, "expected true or false, got string");

    static const char *const some[] = {"s", "i", "r", "b", "n", NULL};
    SV_ASSERT_EQ(proto_check_fields(v, some, &e), -EINVAL);
    SV_ASSERT_STR_CONTAINS(e.msg, "unknown field 'big'");
    static const char *const all[] = {"s", "i", "r", "b", "n", "big", NULL};
    SV_ASSERT_EQ(proto_check_fields(v, all, &e), 0);
    json_decref(v);
}

static void test_encode(void) {
    struct proto_error e = {0};
    char *line;
    size_t len;
    json_t *m = proto_reply_error(PROTO_NO_ID, PROTO_BAD_JSON, "a\nb");
    SV_ASSERT_EQ(proto_encode(m, &line, &len, &e), 0);
    SV_CHECK(strcmp(line, "{\"id\":null,\"ok\":false,\"error\":{\"code\":\"bad_json\",\"message\":\"a\\nb\"}}\n") == 0);
    SV_ASSERT_EQ(len, strlen(line));
    free(line);
    SV_ASSERT_EQ(proto_reply_is_error(m, &e), 1);
    SV_ASSERT_EQ(e.code, PROTO_BAD_JSON);
    SV_CHECK(strcmp(e.msg, "a\nb") == 0);
    json_decref(m);

    m = proto_reply_ok(12);
    proto_set_real(m, "ratio", 0.4);
    SV_ASSERT_EQ(proto_reply_is_error(m, &e), 0);
    SV_ASSERT_EQ(proto_encode(m, &line, &len, &e), 0);
    SV_CHECK(strcmp(line, "{\"id\":12,\"ok\":true,\"ratio\":0.4}\n") == 0);
    free(line);
    json_decref(m);

    /* Bytes that are not UTF-8 (a file name) are replaced, never dropped. */
    json_t *s = proto_str("ok-\xff-\xc3\xa9-\xe2\x82");
    SV_CHECK(s != NULL);
    SV_CHECK(s && strcmp(json_string_value(s), "ok-?-\xc3\xa9-??") == 0);
    json_decref(s);

    /* Our own messages obey the limit too. */
    char *big = malloc(PROTO_MAX_MSG + 1);
    memset(big, 'z', PROTO_MAX_MSG);
    big[PROTO_MAX_MSG] = '\0';
    m = proto_reply_ok(1);
    proto_set_str(m, "x", big);
    SV_ASSERT_EQ(proto_encode(m, &line, &len, &e), -EINVAL);
    SV_ASSERT_EQ(e.code, PROTO_TOO_LARGE);
    json_decref(m);
    free(big);
}

struct writer {
    int fd;
    const char *data;
    size_t n;
};

static void *writer_main(void *arg) {
    struct writer *w = arg;
    size_t off = 0;
    while (off < w->n) {
        ssize_t k = send(w->fd, w->data + off, w->n - off > 1000 ? 1000 : w->n - off, MSG_NOSIGNAL);
        if (k <= 0)
            break;
        off += (size_t)k;
    }
    close(w->fd);
    return NULL;
}

static void test_socketpair(void) {
    int sv[2];
    SV_ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    struct proto_error e = {0};
    struct proto_buf b;
    proto_buf_init(&b, PROTO_MAX_MSG + 1);

    /* Several messages written whole, read back one by one. */
    for (int i = 1; i <= 3; i++) {
        json_t *m = proto_request_new(i, "ping");
        SV_ASSERT_EQ(proto_write_msg(sv[0], m, &e), 0);
        json_decref(m);
    }
    for (int i = 1; i <= 3; i++) {
        json_t *m = NULL;
        SV_ASSERT_EQ(proto_read_msg(sv[1], &b, &m, &e), 1);
        long long id;
        const char *op;
        SV_ASSERT_EQ(proto_request_head(m, &id, &op, &e), 0);
        SV_ASSERT_EQ(id, i);
        json_decref(m);
    }

    /* A message split across many writes, then garbage, then a clean line. */
    struct writer w = {sv[0], "{\"id\":4,\n\"op\":\"x\"}\nnot json\n{\"id\":5,\"op\":\"y\"}\n", 0};
    w.n = strlen(w.data);
    pthread_t th;
    pthread_create(&th, NULL, writer_main, &w);
    json_t *m = NULL;
    /* "{\"id\":4," alone is a line: bad JSON, reported, and reading goes on. */
    SV_ASSERT_EQ(proto_read_msg(sv[1], &b, &m, &e), -EINVAL);
    SV_ASSERT_EQ(e.code, PROTO_BAD_JSON);
    SV_ASSERT_EQ(proto_read_msg(sv[1], &b, &m, &e), -EINVAL);   /* "op":"x"} */
    SV_ASSERT_EQ(proto_read_msg(sv[1], &b, &m, &e), -EINVAL);   /* not json */
    SV_ASSERT_EQ(proto_read_msg(sv[1], &b, &m, &e), 1);
    SV_ASSERT_EQ(json_integer_value(json_object_get(m, "id")), 5);
    json_decref(m);
    SV_ASSERT_EQ(proto_read_msg(sv[1], &b, &m, &e), 0);   /* clean end of stream */
    pthread_join(th, NULL);
    close(sv[1]);
    proto_buf_free(&b);

    /* End of stream in the middle of a line. */
    SV_ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    proto_buf_init(&b, PROTO_MAX_MSG + 1);
    SV_ASSERT_EQ(write(sv[0], "{\"id\":1", 7), 7);
    close(sv[0]);
    SV_ASSERT_EQ(proto_read_msg(sv[1], &b, &m, &e), -EINVAL);
    SV_ASSERT_STR_CONTAINS(e.msg, "closed in the middle");
    close(sv[1]);
    proto_buf_free(&b);

    /* An oversize line is refused once max bytes arrived, not buffered on. */
    SV_ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    proto_buf_init(&b, PROTO_MAX_MSG + 1);
    size_t n = PROTO_MAX_MSG + 100;
    char *big = malloc(n);
    memset(big, ' ', n);
    struct writer w2 = {sv[0], big, n};
    pthread_create(&th, NULL, writer_main, &w2);
    SV_ASSERT_EQ(proto_read_msg(sv[1], &b, &m, &e), -EINVAL);
    SV_ASSERT_EQ(e.code, PROTO_TOO_LARGE);
    close(sv[1]);
    pthread_join(th, NULL);
    proto_buf_free(&b);
    free(big);
}

int main(void) {
    test_codes();
    test_framing();
    test_parse();
    test_getters();
    test_encode();
    test_socketpair();
    return sv_test_result("test_proto");
}
