/* conn: one client connection to svdllmd (conn.h). */
#include "conn.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int conn_open(struct conn *c, const char *path, struct sv_err *err) {
    c->path = path;
    c->fd = -1;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path)
        return sv_err_set(err, -ENAMETOOLONG, "cannot connect to %s: path too long", path);
    memcpy(sa.sun_path, path, strlen(path) + 1);
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return sv_err_set(err, -errno, "socket: %s", strerror(errno));
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int e = errno;
        close(c->fd);
        c->fd = -1;
        return sv_err_set(err, -e, "cannot connect to %s: %s (is svdllmd running?)", path, strerror(e));
    }
    if (proto_buf_init(&c->buf, PROTO_MAX_MSG + 1) < 0) {
        close(c->fd);
        c->fd = -1;
        return sv_err_set(err, -ENOMEM, "out of memory");
    }
    return 0;
}

void conn_close(struct conn *c) {
    if (c->fd < 0)
        return;
    close(c->fd);
    proto_buf_free(&c->buf);
    c->fd = -1;
}

const char *conn_jstr(json_t *o, const char *k) {
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

double conn_jnum(json_t *o, const char *k, double dflt) {
    json_t *v = json_object_get(o, k);
    return json_is_number(v) ? json_number_value(v) : dflt;
}
