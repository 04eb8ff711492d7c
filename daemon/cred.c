/* cred: per-thread filesystem credentials; see cred.h for the design.
 *
 * Invariants:
 *  - Only raw syscalls change credentials, so only the calling thread's
 *    change (Linux keeps credentials per task; glibc's wrappers broadcast).
 *  - cred_enter switches groups, then fsgid, then fsuid; cred_leave undoes it
 *    in the reverse order (fsuid 0 first gives back the filesystem
 *    capabilities, then the rest).
 *  - Every value set is read back. setfsuid/setfsgid return the previous id
 *    whatever happens, so each is called a second time with the same value:
 *    that call returns the id now in effect, which must be the one asked for.
 *  - Nothing here logs: the runner decides. */
#include "cred.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/capability.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

#ifndef AT_EACCESS
#define AT_EACCESS 0x200
#endif

/* More is refused rather than truncated: dropping a group can grant access
 * (a file mode 0604 denies its group what it allows others). */
#define CRED_MAX_GROUPS 65536

const char *cred_how_name(enum cred_how how) {
    switch (how) {
    case CRED_SWITCH:
        return "switch";
    case CRED_SELF:
        return "self";
    default:
        return "check";
    }
}

void cred_free(struct cred *c) {
    if (!c)
        return;
    free(c->groups);
    free(c->saved_groups);
    c->groups = c->saved_groups = NULL;
    c->ngroups = c->saved_ngroups = 0;
}

int cred_lookup(struct cred *ret, uint32_t uid, uint32_t gid, struct sv_err *err) {
    memset(ret, 0, sizeof *ret);
    if (uid == (uint32_t)-1)
        return sv_err_set(err, -EPERM, "the requester's uid is unknown (no SO_PEERCRED)");
    long sz = sysconf(_SC_GETPW_R_SIZE_MAX);
    size_t bufsz = sz > 0 ? (size_t)sz : 16384;
    char *buf = NULL;
    struct passwd pw, *found = NULL;
    int e;
    for (;;) {
        char *nb = realloc(buf, bufsz);
        if (!nb) {
            free(buf);
            return sv_err_set(err, -ENOMEM, "uid %u: out of memory", (unsigned)uid);
        }
        buf = nb;
        e = getpwuid_r((uid_t)uid, &pw, buf, bufsz, &found);
        if (e != ERANGE || bufsz >= (1u << 20))
            break;
        bufsz *= 2;
    }
    int r = 0;
    if (e != 0 && e != ENOENT && e != ESRCH) {
        /* The user database could not be read: do not guess the groups. */
        r = sv_err_set(err, -e, "uid %u: cannot read its passwd entry: %s", (unsigned)uid, strerror(e));
        goto out;
    }
    if (found) {
        ret->gid = (uint32_t)pw.pw_gid;
        int n = 32;
        gid_t *g = NULL;
        for (;;) {
            gid_t *ng = realloc(g, (size_t)n * sizeof *g);
            if (!ng) {
                free(g);
                r = sv_err_set(err, -ENOMEM, "uid %u: out of memory", (unsigned)uid);
                goto out;
            }
            g = ng;
            int want = n;
            if (getgrouplist(pw.pw_name, pw.pw_gid, g, &want) >= 0) {
                n = want;
                break;
            }
            if (want <= n || want > CRED_MAX_GROUPS) {
                free(g);
                r = sv_err_set(err, -E2BIG, "uid %u (%s): cannot list its groups (%d)", (unsigned)uid,
                               pw.pw_name, want);
                goto out;
            }
            n = want;
        }
        ret->groups = g;
        ret->ngroups = n;
        ret->from_passwd = true;
    } else {
        if (gid == (uint32_t)-1) {
            r = sv_err_set(err, -EPERM, "uid %u has no passwd entry and its gid is unknown", (unsigned)uid);
            goto out;
        }
        ret->gid = gid;
        if (!(ret->groups = malloc(sizeof *ret->groups))) {
            r = sv_err_set(err, -ENOMEM, "uid %u: out of memory", (unsigned)uid);
            goto out;
        }
        ret->groups[0] = (gid_t)gid;
        ret->ngroups = 1;
    }
    ret->uid = uid;
    if (geteuid() == 0)
        ret->how = CRED_SWITCH;
    else if ((uid_t)uid == geteuid())
        ret->how = CRED_SELF;
    else
        ret->how = CRED_CHECK;
out:
    free(buf);
    if (r < 0)
        cred_free(ret);
    return r;
}

/* ---- switching ------------------------------------------------------------- */

static long sys_setfsuid(uid_t u) { return syscall(SYS_setfsuid, u); }
static long sys_setfsgid(gid_t g) { return syscall(SYS_setfsgid, g); }

/* The thread's supplementary groups, malloc'ed into *ret. */
static int thread_groups(gid_t **ret, int *ret_n) {
    long n = syscall(SYS_getgroups, 0, NULL);
    if (n < 0)
        return -errno;
    gid_t *g = malloc((size_t)(n ? n : 1) * sizeof *g);
    if (!g)
        return -ENOMEM;
    long k = n ? syscall(SYS_getgroups, n, g) : 0;
    if (k < 0) {
        int e = errno;
        free(g);
        return -e;
    }
    *ret = g;
    *ret_n = (int)k;
    return 0;
}

/* 1 if the thread's groups are exactly want (as sets). */
static int groups_are(const gid_t *want, int n) {
    gid_t *have = NULL;
    int nh = 0;
    if (thread_groups(&have, &nh) < 0)
        return 0;
    int ok = 1;
    for (int i = 0; i < nh && ok; i++) {
        int seen = 0;
        for (int k = 0; k < n && !seen; k++)
            seen = have[i] == want[k];
        ok = seen;
    }
    for (int k = 0; k < n && ok; k++) {
        int seen = 0;
        for (int i = 0; i < nh && !seen; i++)
            seen = have[i] == want[k];
        ok = seen;
    }
    free(have);
    return ok;
}

/* The filesystem capabilities the kernel drops when fsuid leaves 0. */
#define FS_CAPS                                                                                         \
    ((1u << CAP_CHOWN) | (1u << CAP_DAC_OVERRIDE) | (1u << CAP_DAC_READ_SEARCH) | (1u << CAP_FOWNER) | \
     (1u << CAP_FSETID))

/* 1 if none of FS_CAPS is effective on this thread. */
static int fs_caps_dropped(void) {
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[_LINUX_CAPABILITY_U32S_3];
    memset(d, 0, sizeof d);
    if (syscall(SYS_capget, &h, d) < 0)
        return 0;
    return (d[0].effective & FS_CAPS) == 0;
}

/* Back to the saved credentials; 0 when every one reads back. */
static int restore(struct cred *c) {
    int ok = 1;
    sys_setfsuid(c->saved_fsuid);
    ok &= sys_setfsuid(c->saved_fsuid) == (long)c->saved_fsuid;
    sys_setfsgid(c->saved_fsgid);
    ok &= sys_setfsgid(c->saved_fsgid) == (long)c->saved_fsgid;
    ok &= syscall(SYS_setgroups, (size_t)c->saved_ngroups, c->saved_groups) == 0;
    ok &= groups_are(c->saved_groups, c->saved_ngroups);
    return ok ? 0 : -EPERM;
}

int cred_enter(struct cred *c, struct sv_err *err) {
    if (c->entered)
        return sv_err_set(err, -EINVAL, "uid %u: credentials already entered", (unsigned)c->uid);
    if (c->how != CRED_SWITCH) {
        c->entered = true;
        return 0;
    }
    /* -1 is no valid id: the call changes nothing and returns the current one. */
    c->saved_fsuid = (uid_t)sys_setfsuid((uid_t)-1);
    c->saved_fsgid = (gid_t)sys_setfsgid((gid_t)-1);
    free(c->saved_groups);
    c->saved_groups = NULL;
    int r = thread_groups(&c->saved_groups, &c->saved_ngroups);
    if (r < 0)
        return sv_err_set(err, r, "uid %u: cannot read the thread's groups: %s", (unsigned)c->uid, strerror(-r));
    const char *what = NULL;
    if (syscall(SYS_setgroups, (size_t)c->ngroups, c->groups) < 0 || !groups_are(c->groups, c->ngroups))
        what = "setgroups";
    if (!what) {
        sys_setfsgid((gid_t)c->gid);
        if (sys_setfsgid((gid_t)c->gid) != (long)c->gid)
            what = "setfsgid";
    }
    if (!what) {
        sys_setfsuid((uid_t)c->uid);
        if (sys_setfsuid((uid_t)c->uid) != (long)c->uid)
            what = "setfsuid";
    }
    if (!what && c->uid != 0 && !fs_caps_dropped())
        what = "dropping the filesystem capabilities";
    if (what) {
        int e = errno;
        if (restore(c) < 0)
            return sv_err_set(err, -EPERM, "uid %u: %s failed and the thread's own credentials could not be "
                              "restored", (unsigned)c->uid, what);
        return sv_err_set(err, -EPERM, "cannot act as uid %u: %s did not take effect (%s)", (unsigned)c->uid,
                          what, strerror(e));
    }
    c->entered = true;
    return 0;
}

int cred_leave(struct cred *c, struct sv_err *err) {
    if (!c->entered)
        return 0;
    c->entered = false;
    if (c->how != CRED_SWITCH)
        return 0;
    if (restore(c) < 0)
        return sv_err_set(err, -EPERM, "cannot return from uid %u to the daemon's own credentials",
                          (unsigned)c->uid);
    return 0;
}

/* ---- access checks ------------------------------------------------------------ */

static const char *mode_word(int mode) {
    if (mode & W_OK)
        return "writable";
    if (mode & R_OK)
        return "readable";
    return "searchable";
}

static int in_groups(const struct cred *c, gid_t g) {
    if (g == (gid_t)c->gid)
        return 1;
    for (int i = 0; i < c->ngroups; i++)
        if (c->groups[i] == g)
            return 1;
    return 0;
}

/* The classic permission check on mode bits (no ACL) for c. */
static int bits_allow(const struct cred *c, const struct stat *st, int mode) {
    if (c->uid == 0)
        return 1;
    unsigned bits = (unsigned)st->st_mode;
    if (st->st_uid == (uid_t)c->uid)
        bits >>= 6;
    else if (in_groups(c, st->st_gid))
        bits >>= 3;
    return ((int)bits & mode & 7) == (mode & 7);
}

/* One component for check_bits: stat, no ACL, the bits allow want. */
static int check_one(const struct cred *c, const char *path, int want, struct sv_err *err) {
    struct stat st;
    if (stat(path, &st) < 0)
        return sv_err_set(err, -errno, "%s: %s", path, strerror(errno));
    if (getxattr(path, "system.posix_acl_access", NULL, 0) >= 0)
        return sv_err_set(err, -EACCES, "%s: has an ACL, which svdllmd (not running as root) cannot evaluate "
                          "for uid %u", path, (unsigned)c->uid);
    if (!bits_allow(c, &st, want))
        return sv_err_set(err, -EACCES, "%s: not %s by uid %u: %s", path, mode_word(want), (unsigned)c->uid,
                          strerror(EACCES));
    return 0;
}

/* CRED_CHECK: every directory above path (search) and path itself (mode),
 * by mode bits for c. path is absolute and resolved (no symlinks). */
static int check_bits(const struct cred *c, const char *path, int mode, struct sv_err *err) {
    char dir[PATH_MAX];
    size_t n = strlen(path);
    if (path[0] != '/' || n >= sizeof dir)
        return sv_err_set(err, -EINVAL, "%s: not an absolute path", path);
    for (size_t s = 0; s < n; s++) {
        if (path[s] != '/')
            continue;
        size_t len = s ? s : 1;   /* the slash at 0 stands for "/" */
        memcpy(dir, path, len);
        dir[len] = '\0';
        int r = check_one(c, dir, X_OK, err);
        if (r < 0)
            return r;
    }
    return check_one(c, path, mode, err);
}

int cred_access(const struct cred *c, const char *path, int mode, struct sv_err *err) {
    /* access(2) and faccessat without AT_EACCESS check the real uid, which
     * setfsuid leaves alone: only the effective (fs) check is meaningful. */
    if (syscall(SYS_faccessat2, AT_FDCWD, path, mode, AT_EACCESS) < 0) {
        int e = errno;
        if (e != ENOSYS && c->how == CRED_CHECK)
            return sv_err_set(err, -e, "%s: not %s by svdllmd: %s (svdllmd runs as uid %u)", path, mode_word(mode),
                              strerror(e), (unsigned)geteuid());
        if (e != ENOSYS)
            return sv_err_set(err, -e, "%s: not %s by uid %u: %s", path, mode_word(mode), (unsigned)c->uid,
                              strerror(e));
        /* Before Linux 5.8: the mode bits, and the access itself is checked
         * by the kernel when the (switched) thread opens the file. */
        return check_bits(c, path, mode, err);
    }
    if (c->how == CRED_CHECK)
        return check_bits(c, path, mode, err);
    return 0;
}
