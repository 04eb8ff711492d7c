#include "corpus.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tok.h"

/* Reads a whole regular file; *ret is malloc'ed (NUL-terminated for text). */
static int read_all(const char *path, char **ret, size_t *ret_n, struct sv_err *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return sv_err_set(err, -errno, "text '%s': %s", path, strerror(errno));
    struct stat st;
    char *buf = NULL;
    int r = 0;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        r = sv_err_set(err, -EINVAL, "text '%s': not a regular file", path);
        goto out;
    }
    buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        r = sv_err_set(err, -ENOMEM, "text '%s': out of memory for %lld bytes", path, (long long)st.st_size);
        goto out;
    }
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t k = read(fd, buf + got, (size_t)st.st_size - got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            r = sv_err_set(err, k < 0 ? -errno : -EIO, "text '%s': read failed: %s", path,
                           k < 0 ? strerror(errno) : "file shrank");
            goto out;
        }
        got += (size_t)k;
    }
    buf[got] = '\0';
    *ret = buf;
    *ret_n = got;
    buf = NULL;
out:
    free(buf);
    close(fd);
    return r;
}

int corpus_load(const char *path, const char *model_dir, int vocab, int32_t **ret_ids, size_t *ret_n,
                struct sv_err *err) {
    char *buf = NULL;
    size_t n = 0;
    int r = read_all(path, &buf, &n, err);
    if (r < 0)
        return r;
    size_t plen = strlen(path);
    int32_t *ids = NULL;
    size_t nids = 0;
    if (plen > 4 && strcmp(path + plen - 4, ".i32") == 0) {
        if (n == 0 || n % 4 != 0) {
            r = sv_err_set(err, -EINVAL, "ids '%s': size %zu is not a positive multiple of 4", path, n);
            goto out;
        }
        nids = n / 4;
        ids = malloc(n);
        if (!ids) {
            r = sv_err_set(err, -ENOMEM, "ids '%s': out of memory", path);
            goto out;
        }
        memcpy(ids, buf, n); /* little-endian host assumed, as everywhere in safetensors */
    } else {
        if (n == 0) {
            r = sv_err_set(err, -EINVAL, "text '%s' is empty", path);
            goto out;
        }
        char tpath[PATH_MAX + 32];
        snprintf(tpath, sizeof tpath, "%s/tokenizer.json", model_dir);
        struct tok *t = NULL;
        if ((r = tok_new(&t, tpath, err)) < 0)
            goto out;
        r = tok_encode(t, buf, n, 1, &ids, &nids, err);
        tok_free(t);
        if (r < 0)
            goto out;
    }
    for (size_t i = 0; vocab > 0 && i < nids; i++)
        if (ids[i] < 0 || ids[i] >= vocab) {
            r = sv_err_set(err, -EINVAL, "'%s': token %zu has id %d, outside the vocabulary of %d", path, i,
                           (int)ids[i], vocab);
            goto out;
        }
    *ret_ids = ids;
    *ret_n = nids;
    ids = NULL;
out:
    free(ids);
    free(buf);
    return r;
}
