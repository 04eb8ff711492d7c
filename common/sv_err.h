/* sv_err: the one error type shared by every subsystem.
 *
 * Functions return 0 on success or a negative errno-style code, and, when the
 * caller passes a non-NULL struct sv_err, fill it with a bounded, one-line
 * message that names the object at fault:
 *     tensor 'model.layers.3.mlp.up_proj.weight': dtype F64 not supported
 * Library code never logs; the caller decides whether to print, log or send
 * the message in a JSON reply. */
#ifndef SV_ERR_H
#define SV_ERR_H

#include <stddef.h>

#define SV_ERR_MSG_MAX 512

struct sv_err {
    int code;                  /* negative errno-style code, 0 if unset */
    char msg[SV_ERR_MSG_MAX];  /* NUL-terminated, never longer than the buffer */
};

/* Records code and a printf-style message in err (may be NULL) and returns
 * code, so a failing path can be written `return sv_err_set(err, -EINVAL, ...)`.
 * An already-set error is overwritten. */
int sv_err_set(struct sv_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prepends "prefix: " to an error already set, e.g. to add the file name when a
 * lower layer only knew the tensor name. Keeps the code; returns it. */
int sv_err_prefix(struct sv_err *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Clears err (may be NULL). */
void sv_err_clear(struct sv_err *err);

#endif
