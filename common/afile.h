/* afile: durable files. Atomic replacement (PATH.tmp, fsync, rename, fsync
 * of the directory), a directory's fsync, a copy, a tree's removal: the one
 * implementation the engine's job files, the store and the safetensors
 * writer share. Any thread; no logging; errors name the file. */
#ifndef AFILE_H
#define AFILE_H

#include <stddef.h>

#include "sv_err.h"

/* fsync of directory dir (a rename or create in it is then durable). */
int afile_fsync_dir(const char *dir, struct sv_err *err);
/* Writes all n bytes of buf to fd (path names it in errors); retries EINTR. */
int afile_write_full(int fd, const void *buf, size_t n, const char *path, struct sv_err *err);
/* Starts an atomic write of path: opens path.tmp (its name into tmp, n
 * bytes) for writing, created 0644 or truncated; the fd, or -errno. */
int afile_tmp_open(const char *path, char *tmp, size_t n, struct sv_err *err);
/* Ends an atomic write: given fd open on tmp and r the outcome so far, fsyncs
 * and closes fd, renames tmp to path and fsyncs dir (NULL: path's parent);
 * removes tmp on failure. */
int afile_tmp_finish(int fd, int r, const char *tmp, const char *path, const char *dir, struct sv_err *err);
/* Writes buf to path atomically: path.tmp, fsync, rename, fsync dir. */
int afile_write_atomic(const char *dir, const char *path, const void *buf, size_t n, struct sv_err *err);
/* Copies src to dst (created 0644 or truncated) and fsyncs dst. */
int afile_copy(const char *src, const char *dst, struct sv_err *err);
/* Removes path and, if it is a directory, what it holds. A symlink is
 * removed, never followed (it may point anywhere). 0 or -errno of the last
 * step. */
int afile_remove_tree(const char *path);
/* The directory part of path ("." when it has none, "/" for "/x"). */
void afile_parent_dir(const char *path, char *out, size_t n);

#endif
