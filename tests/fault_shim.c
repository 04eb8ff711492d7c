/* fault_shim: an LD_PRELOAD library that makes chosen file-system calls of
 * the process it is loaded into fail, for the fault campaign
 * (tests/campaign.sh). It interposes the libc entry points the engine and
 * SQLite's unix VFS call (write, pwrite, pwrite64, writev, fsync, fdatasync,
 * ftruncate, ftruncate64, rename, renameat, renameat2), resolves the real
 * ones with dlsym(RTLD_NEXT) and, for a call that matches, returns -1 with
 * errno set instead of calling through. Our own code is not mocked: the
 * daemon runs unchanged and sees what a failing disk would give it.
 *
 * Configuration (environment, read once at load):
 *   SVDLLM_SHIM_OP       comma-separated op names from the list above
 *                        (required; the shim does nothing without it)
 *   SVDLLM_SHIM_PATTERN  colon-separated fnmatch(3) globs; a call matches
 *                        when its path matches one of them. For an fd op the
 *                        path is readlink(/proc/self/fd/N); for a rename the
 *                        source path. Default "*".
 *   SVDLLM_SHIM_NTH      the first matching call to fail, counted from 1 in
 *                        this process; 0 (default) only traces: every
 *                        matching call is logged and none fails
 *   SVDLLM_SHIM_TIMES    how many matching calls fail from the Nth on
 *                        (default 1; 0 = every one from then on: a disk that
 *                        stays full)
 *   SVDLLM_SHIM_ERRNO    EIO (default), ENOSPC, EDQUOT or a number
 *   SVDLLM_SHIM_LOG      file to which a line per injected fault ("FAULT")
 *                        or, when tracing, per matching call ("CALL") is
 *                        appended: "FAULT n=3 op=write errno=5 path=/x"
 *
 * Threads: the counters are atomics; the log is written with one write(2) per
 * line through the real write, opened O_APPEND, so lines from the daemon's
 * threads never interleave. The shim never allocates. */
/* meson passes -D_FILE_OFFSET_BITS=64, which renames pwrite to pwrite64 in
 * the headers; both symbols are defined here, so see them as libc has them. */
#undef _FILE_OFFSET_BITS
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <limits.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

enum op {
    OP_WRITE, OP_PWRITE, OP_PWRITE64, OP_WRITEV, OP_FSYNC, OP_FDATASYNC, OP_FTRUNCATE, OP_FTRUNCATE64,
    OP_RENAME, OP_RENAMEAT, OP_RENAMEAT2, OP_COUNT
};
static const char *const op_names[OP_COUNT] = {
    "write", "pwrite", "pwrite64", "writev", "fsync", "fdatasync", "ftruncate", "ftruncate64",
    "rename", "renameat", "renameat2",
};

static struct {
    int enabled;
    unsigned ops;            /* bit per enum op */
    char patterns[4096];     /* NUL-separated globs, ended by an empty one */
    long nth, times;
    int err;
    int log_fd;
} cfg = {.log_fd = -1};
static atomic_long n_match, n_failed;

static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_ftruncate)(int, off_t);
static int (*real_ftruncate64)(int, off_t);
static int (*real_rename)(const char *, const char *);
static int (*real_renameat)(int, const char *, int, const char *);
static int (*real_renameat2)(int, const char *, int, const char *, unsigned);

static void *next(const char *name) {
    return dlsym(RTLD_NEXT, name);
}

/* Resolves every real symbol; called by the constructor and, in case a call
 * arrives before it ran (another library's constructor), by each wrapper. */
static void resolve(void) {
    if (real_write)
        return;
    real_pwrite = next("pwrite");
    real_pwrite64 = next("pwrite64");
    real_writev = next("writev");
    real_fsync = next("fsync");
    real_fdatasync = next("fdatasync");
    real_ftruncate = next("ftruncate");
    real_ftruncate64 = next("ftruncate64");
    real_rename = next("rename");
    real_renameat = next("renameat");
    real_renameat2 = next("renameat2");
    real_write = next("write");
}

static int parse_errno(const char *s) {
    if (!s || !*s || !strcmp(s, "EIO"))
        return EIO;
    if (!strcmp(s, "ENOSPC"))
        return ENOSPC;
    if (!strcmp(s, "EDQUOT"))
        return EDQUOT;
    int e = atoi(s);
    return e > 0 ? e : EIO;
}

__attribute__((constructor)) static void shim_init(void) {
    resolve();
    const char *ops = getenv("SVDLLM_SHIM_OP");
    if (!ops || !*ops)
        return;
    char buf[512];
    snprintf(buf, sizeof buf, "%s", ops);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save))
        for (int i = 0; i < OP_COUNT; i++)
            if (!strcmp(t, op_names[i]))
                cfg.ops |= 1u << i;
    const char *pat = getenv("SVDLLM_SHIM_PATTERN");
    snprintf(cfg.patterns, sizeof cfg.patterns - 1, "%s", pat && *pat ? pat : "*");
    for (char *p = cfg.patterns; *p; p++)
        if (*p == ':')
            *p = '\0';
    const char *s = getenv("SVDLLM_SHIM_NTH");
    cfg.nth = s ? atol(s) : 0;
    s = getenv("SVDLLM_SHIM_TIMES");
    cfg.times = s ? atol(s) : 1;
    cfg.err = parse_errno(getenv("SVDLLM_SHIM_ERRNO"));
    s = getenv("SVDLLM_SHIM_LOG");
    if (s && *s)
        cfg.log_fd = open(s, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    cfg.enabled = cfg.ops != 0;
}

static int path_matches(const char *path) {
    for (const char *p = cfg.patterns; *p; p += strlen(p) + 1)
        if (fnmatch(p, path, 0) == 0)
            return 1;
    return 0;
}

static void log_line(const char *kind, long n, enum op op, const char *path) {
    if (cfg.log_fd < 0)
        return;
    char line[PATH_MAX + 128];
    int k = snprintf(line, sizeof line, "%s n=%ld op=%s errno=%d pid=%ld path=%s\n", kind, n, op_names[op],
                     cfg.err, (long)getpid(), path);
    if (k > (int)sizeof line - 1)
        k = (int)sizeof line - 1;
    if (k > 0)
        real_write(cfg.log_fd, line, (size_t)k);
}

/* Whether this call fails: op enabled, path matching, and its count in the
 * window [nth, nth + times). Sets errno when it does. */
static int should_fail(enum op op, const char *path) {
    if (!cfg.enabled || !(cfg.ops & (1u << op)) || !path || !path_matches(path))
        return 0;
    long n = atomic_fetch_add(&n_match, 1) + 1;
    if (cfg.nth <= 0) {
        log_line("CALL", n, op, path);
        return 0;
    }
    if (n < cfg.nth || (cfg.times > 0 && n >= cfg.nth + cfg.times))
        return 0;
    atomic_fetch_add(&n_failed, 1);
    log_line("FAULT", n, op, path);
    errno = cfg.err;
    return 1;
}

/* The path behind fd, or NULL (sockets and pipes read as "socket:[...]",
 * which no absolute pattern matches). buf must hold PATH_MAX bytes. */
static const char *fd_path(int fd, char *buf) {
    if (!cfg.enabled || fd == cfg.log_fd)
        return NULL;
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, buf, PATH_MAX - 1);
    if (n <= 0)
        return NULL;
    buf[n] = '\0';
    return buf;
}

/* An absolute form of path relative to dirfd (AT_FDCWD or a directory). */
static const char *at_path(int dirfd, const char *path, char *buf) {
    if (!cfg.enabled || !path)
        return NULL;
    if (path[0] == '/')
        return path;
    char dir[PATH_MAX];
    const char *d = dirfd == AT_FDCWD ? getcwd(dir, sizeof dir) : fd_path(dirfd, dir);
    if (!d)
        return path;
    size_t nd = strlen(d), np = strlen(path);
    if (nd + 1 + np + 1 > PATH_MAX)
        return path;
    memcpy(buf, d, nd);
    buf[nd] = '/';
    memcpy(buf + nd + 1, path, np + 1);
    return buf;
}

#define FD_OP(op, fd)                                           \
    do {                                                        \
        char pbuf_[PATH_MAX];                                   \
        if (cfg.enabled && (cfg.ops & (1u << (op))) &&          \
            should_fail((op), fd_path((fd), pbuf_)))            \
            return -1;                                          \
    } while (0)

ssize_t write(int fd, const void *buf, size_t n) {
    resolve();
    FD_OP(OP_WRITE, fd);
    return real_write(fd, buf, n);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    resolve();
    FD_OP(OP_PWRITE, fd);
    return real_pwrite(fd, buf, n, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) {
    resolve();
    FD_OP(OP_PWRITE64, fd);
    return real_pwrite64(fd, buf, n, off);
}

ssize_t writev(int fd, const struct iovec *iov, int cnt) {
    resolve();
    FD_OP(OP_WRITEV, fd);
    return real_writev(fd, iov, cnt);
}

int fsync(int fd) {
    resolve();
    FD_OP(OP_FSYNC, fd);
    return real_fsync(fd);
}

int fdatasync(int fd) {
    resolve();
    FD_OP(OP_FDATASYNC, fd);
    return real_fdatasync(fd);
}

int ftruncate(int fd, off_t len) {
    resolve();
    FD_OP(OP_FTRUNCATE, fd);
    return real_ftruncate(fd, len);
}

int ftruncate64(int fd, off_t len) {
    resolve();
    FD_OP(OP_FTRUNCATE64, fd);
    return real_ftruncate64(fd, len);
}

int rename(const char *from, const char *to) {
    resolve();
    char buf[PATH_MAX];
    if (cfg.enabled && (cfg.ops & (1u << OP_RENAME)) && should_fail(OP_RENAME, at_path(AT_FDCWD, from, buf)))
        return -1;
    return real_rename(from, to);
}

int renameat(int fd1, const char *from, int fd2, const char *to) {
    resolve();
    char buf[PATH_MAX];
    if (cfg.enabled && (cfg.ops & (1u << OP_RENAMEAT)) && should_fail(OP_RENAMEAT, at_path(fd1, from, buf)))
        return -1;
    return real_renameat(fd1, from, fd2, to);
}

int renameat2(int fd1, const char *from, int fd2, const char *to, unsigned flags) {
    resolve();
    char buf[PATH_MAX];
    if (cfg.enabled && (cfg.ops & (1u << OP_RENAMEAT2)) && should_fail(OP_RENAMEAT2, at_path(fd1, from, buf)))
        return -1;
    return real_renameat2(fd1, from, fd2, to, flags);
}
