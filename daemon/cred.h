/* cred: act on the file system with a submitter's rights, on one thread.
 *
 * svdllmd reads models, calibration and evaluation texts and writes outputs
 * for whoever submitted the job. The kernel checks a file access against the
 * calling thread's filesystem uid/gid and supplementary groups, so a worker
 * thread takes the submitter's (cred_enter) around exactly those accesses
 * and returns to the daemon's own (cred_leave) for its state directory and
 * SQLite. Only raw syscalls are used (SYS_setfsuid, SYS_setfsgid,
 * SYS_setgroups): the glibc wrappers of setgroups/setuid apply the change to
 * every thread of the process, which here would hand the loop thread and the
 * other workers to the submitter. Each switch is verified (the value read
 * back, the filesystem capabilities gone) and a failed one is an error: the
 * access it was meant to guard does not happen.
 *
 * Three ways to act for a uid, chosen by cred_lookup:
 *   CRED_SWITCH  the daemon runs as root (euid 0): enter/leave really switch
 *                (setfsuid away from 0 also drops CAP_DAC_OVERRIDE and the
 *                other filesystem capabilities for this thread);
 *   CRED_SELF    the submitter is the daemon's own uid: nothing to switch;
 *   CRED_CHECK   the daemon is not root and the submitter is another uid: it
 *                cannot take that uid's rights. cred_access then checks the
 *                mode bits of the path and of every directory above it for
 *                the submitter (refusing files with a POSIX ACL, which mode
 *                bits do not describe), as well as the daemon's own access;
 *                the accesses themselves happen with the daemon's rights, so
 *                a file that changes between check and use is not caught and
 *                outputs belong to the daemon's user (see schema/protocol.md,
 *                Authorization).
 *
 * A struct cred belongs to one thread while entered. Not for the loop thread
 * (getpwuid_r and getgrouplist may read files or ask NSS services). */
#ifndef CRED_H
#define CRED_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "sv_err.h"

enum cred_how { CRED_SWITCH = 0, CRED_SELF, CRED_CHECK };

struct cred {
    uint32_t uid, gid;      /* the submitter's uid and primary gid */
    int ngroups;            /* supplementary groups (primary gid included) */
    gid_t *groups;          /* owned */
    enum cred_how how;
    bool from_passwd;       /* groups from the passwd/group databases */
    /* While entered: the thread's own credentials, restored by cred_leave. */
    bool entered;
    uid_t saved_fsuid;
    gid_t saved_fsgid;
    int saved_ngroups;
    gid_t *saved_groups;
};

/* Fills ret for uid: primary gid and supplementary groups from its passwd
 * entry (getpwuid_r, getgrouplist); without an entry, gid alone (the
 * SO_PEERCRED gid of the request, or the one recorded with the job).
 * uid or gid (uint32_t)-1 (unknown peer) is refused. */
int cred_lookup(struct cred *ret, uint32_t uid, uint32_t gid, struct sv_err *err);
/* Frees the group lists; the cred must not be entered. Accepts NULL. */
void cred_free(struct cred *c);

/* Switches the calling thread to c (CRED_SWITCH; otherwise a no-op) and
 * verifies it. On failure the thread is back in its own credentials. */
int cred_enter(struct cred *c, struct sv_err *err);
/* Returns the thread to its own credentials and verifies it. A failure
 * leaves the thread in an unknown state: the caller must stop using it. */
int cred_leave(struct cred *c, struct sv_err *err);

/* 0 if path grants mode (R_OK, W_OK, X_OK, combined) to c, else a negative
 * code with err naming path and the uid. Call with c entered. */
int cred_access(const struct cred *c, const char *path, int mode, struct sv_err *err);

/* "switch", "self", "check". */
const char *cred_how_name(enum cred_how how);

#endif
