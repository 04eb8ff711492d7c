/* afile: durable files (afile.h). */
#include "afile.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int afile_fsync_dir(const char *dir, struct sv_err *err) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return sv_err_set(err, -errno, "directory '%s': %s", dir, strerror(errno));
    int r = fsync(fd) < 0 ? sv_err_set(err, -errno, "fsync of directory '%s' failed: %s", dir, strerror(errno)) : 0;
    close(fd);
    return r;
}

int afile_write_full(int fd, const void *buf, size_t n, const char *path, struct sv_err *err) {
    const char *p = buf;
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return sv_err_set(err, -errno, "file '%s': write failed: %s", path, strerror(errno));
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

int afile_tmp_open(const char *path, char *tmp, size_t n, struct sv_err *err) {
    snprintf(tmp, n, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return sv_err_set(err, -errno, "file '%s': cannot create: %s", tmp, strerror(errno));
    return fd;
}

/* Ends an atomic write: given fd open on tmp and r the outcome so far, fsyncs
 * and closes fd, renames tmp to path and fsyncs dir; removes tmp on failure. */
int afile_tmp_finish(int fd, int r, const char *tmp, const char *path, const char *dir, struct sv_err *err) {
    char parent[PATH_MAX];
    if (r == 0 && fsync(fd) < 0)
        r = sv_err_set(err, -errno, "file '%s': fsync failed: %s", tmp, strerror(errno));
    /* close() can report a deferred write error (NFS); after it the fd is gone either way. */
    if (close(fd) < 0 && r == 0)
        r = sv_err_set(err, -errno, "file '%s': close failed: %s", tmp, strerror(errno));
    if (r == 0 && rename(tmp, path) < 0)
        r = sv_err_set(err, -errno, "file '%s': rename from '%s' failed: %s", path, tmp, strerror(errno));
    if (r == 0 && !dir) {
        afile_parent_dir(path, parent, sizeof parent);
        dir = parent;
    }
    if (r == 0)
        r = afile_fsync_dir(dir, err);
    if (r < 0)
        unlink(tmp);
    return r;
}

/* Writes buf to path atomically: path.tmp, fsync, rename, fsync dir. */
int afile_write_atomic(const char *dir, const char *path, const void *buf, size_t n, struct sv_err *err) {
    char tmp[PATH_MAX + 8];
    int fd = afile_tmp_open(path, tmp, sizeof tmp, err);
    if (fd < 0)
        return fd;
    return afile_tmp_finish(fd, afile_write_full(fd, buf, n, tmp, err), tmp, path, dir, err);
}

int afile_copy(const char *src, const char *dst, struct sv_err *err) {
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return sv_err_set(err, -errno, "file '%s': %s", src, strerror(errno));
    int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int r = 0;
    if (out < 0) {
        r = sv_err_set(err, -errno, "file '%s': %s", dst, strerror(errno));
        goto done;
    }
    char buf[1 << 16];
    for (;;) {
        ssize_t k = read(in, buf, sizeof buf);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            r = sv_err_set(err, -errno, "file '%s': read failed: %s", src, strerror(errno));
            break;
        }
        if (k == 0)
            break;
        if ((r = afile_write_full(out, buf, (size_t)k, dst, err)) < 0)
            break;
    }
    if (r == 0 && fsync(out) < 0)
        r = sv_err_set(err, -errno, "file '%s': fsync failed: %s", dst, strerror(errno));
done:
    if (out >= 0)
        close(out);
    close(in);
    return r;
}

/* Removes path and, if it is a directory, what it holds. A symlink is
 * removed, never followed (it may point anywhere). */
int afile_remove_tree(const char *path) {
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        if (fd >= 0)
            close(fd);
        return unlink(path) < 0 && errno != ENOENT ? -errno : 0;
    }
    struct dirent *e;
    char sub[PATH_MAX];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
        afile_remove_tree(sub);
    }
    closedir(d);
    return rmdir(path) < 0 ? -errno : 0;
}

void afile_parent_dir(const char *path, char *out, size_t n) {
    snprintf(out, n, "%s", path);
    char *s = strrchr(out, '/');
    if (!s)
        snprintf(out, n, ".");
    else if (s == out)
        out[1] = '\0';
    else
        *s = '\0';
}
