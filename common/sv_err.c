#include "sv_err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int sv_err_set(struct sv_err *err, int code, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

int sv_err_prefix(struct sv_err *err, const char *fmt, ...) {
    if (!err)
        return 0;
    char head[SV_ERR_MSG_MAX], old[SV_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(head, sizeof head, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    /* Truncation is acceptable: the message stays bounded and NUL-terminated. */
    size_t hn = strnlen(head, sizeof head - 1);
    memcpy(err->msg, head, hn);
    size_t pos = hn;
    if (pos + 2 < sizeof err->msg) {
        err->msg[pos++] = ':';
        err->msg[pos++] = ' ';
    }
    size_t on = strnlen(old, sizeof old);
    if (on > sizeof err->msg - 1 - pos)
        on = sizeof err->msg - 1 - pos;
    memcpy(err->msg + pos, old, on);
    err->msg[pos + on] = '\0';
    return err->code;
}

void sv_err_clear(struct sv_err *err) {
    if (err) {
        err->code = 0;
        err->msg[0] = '\0';
    }
}
