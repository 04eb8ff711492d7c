/* conn: one client connection to svdllmd: a Unix stream socket and the
 * line buffer its newline-delimited JSON replies are read into (proto.h).
 * Shared by svdllmctl's commands and its sweep. */
#ifndef CONN_H
#define CONN_H

#include <jansson.h>

#include "proto.h"
#include "sv_err.h"

struct conn {
    int fd;               /* -1 when closed */
    struct proto_buf buf;
    const char *path;     /* borrowed: the socket path, for messages */
};

/* Connects to the socket at path. Returns 0, -ENOMEM (out of memory) or
 * another negative errno with err naming the path ("cannot connect to
 * PATH: ... (is svdllmd running?)"); c is then closed. */
int conn_open(struct conn *c, const char *path, struct sv_err *err);
/* Closes c (again: nothing). */
void conn_close(struct conn *c);

/* Reading reply members: o's string k, or "" when absent or not a string;
 * o's number k, or dflt when absent or not a number. */
const char *conn_jstr(json_t *o, const char *k);
double conn_jnum(json_t *o, const char *k, double dflt);

#endif
