/* fuzz_util: helpers shared by the libFuzzer targets in tests/fuzz/.
 *
 * The readers under test open files by path (they mmap or fopen them), so a
 * target writes each input into one memfd, created once per process and
 * rewritten per iteration, and hands the reader "/proc/self/fd/N". No file
 * touches the disk, the path is the same on every run (determinism), and
 * nothing leaks between iterations. */
#ifndef FUZZ_UTIL_H
#define FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <unistd.h>

/* Aborts with a message: libFuzzer reports it as a crash and saves the input. */
#define FUZZ_CHECK(cond, ...)                                                 \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "fuzz invariant failed at %s:%d: %s: ", __FILE__, \
                    __LINE__, #cond);                                        \
            fprintf(stderr, __VA_ARGS__);                                    \
            fputc('\n', stderr);                                             \
            abort();                                                         \
        }                                                                    \
    } while (0)

/* The error contract of every reader: a failure returns a negative code,
 * stores the same code in err and a non-empty, terminated message, and hands
 * back no object (obj: what the reader returned through its out-pointer, or
 * NULL where the reader has none to check). */
#define FUZZ_CHECK_FAILURE(r, obj, err)                                                  \
    do {                                                                                 \
        FUZZ_CHECK((obj) == NULL, "object returned on failure");                         \
        FUZZ_CHECK((err).code == (r), "err.code %d, returned %d", (err).code, (r));        \
        size_t len_ = strnlen((err).msg, sizeof (err).msg);                               \
        FUZZ_CHECK(len_ > 0 && len_ < sizeof (err).msg, "error message length %zu", len_); \
    } while (0)

/* The first "####" in [p, end): how targets with several parts split an input. */
static inline const uint8_t *fuzz_find_sep(const uint8_t *p, const uint8_t *end) {
    for (; end - p >= 4; p++)
        if (memcmp(p, "####", 4) == 0)
            return p;
    return NULL;
}

struct fuzz_file {
    int fd;
    char path[64];
};

/* Creates the memfd on first use; returns its /proc path after replacing its
 * contents by data[0..size). */
static inline const char *fuzz_file_put(struct fuzz_file *f, const char *name, const uint8_t *data,
                                        size_t size) {
    if (f->fd <= 0) {
        f->fd = memfd_create(name, MFD_CLOEXEC);
        if (f->fd < 0) {
            perror("memfd_create");
            abort();
        }
        snprintf(f->path, sizeof f->path, "/proc/self/fd/%d", f->fd);
    }
    if (ftruncate(f->fd, 0) < 0) {
        perror("ftruncate");
        abort();
    }
    size_t off = 0;
    while (off < size) {
        ssize_t w = pwrite(f->fd, data + off, size - off, (off_t)off);
        if (w <= 0) {
            perror("pwrite");
            abort();
        }
        off += (size_t)w;
    }
    return f->path;
}

#endif
