/* fault: crash points for the durability tests (in the spirit of SQLite's
 * crash tests). SVDLLM_FAULT="after-commit:L" kills the process with
 * SIGKILL right after layer L's checkpoint row is committed; "mid-write:L"
 * kills it halfway through writing layer L's checkpoint file;
 * "stall-after-commit:L" holds the job after layer L's commit (up to 60 s,
 * until it is cancelled or the file named by SVDLLM_FAULT_RELEASE exists),
 * so a test can cancel a job that is certainly running. Unset in production.
 * Why the environment and not a flag: the tests start the real svdllmd the
 * way a service manager does and the variable reaches it (and any engine
 * process) without a user-visible option in the man pages and usage; it is
 * read once per process (pthread_once), so the points cost a compare. */
#include "fault.h"

#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct {
    char kind[32];      /* "" = no fault armed */
    int layer;
    char release[PATH_MAX];
} armed;
static pthread_once_t armed_once = PTHREAD_ONCE_INIT;

static void arm_from_env(void) {
    const char *f = getenv("SVDLLM_FAULT"), *rel = getenv("SVDLLM_FAULT_RELEASE");
    const char *colon = f ? strchr(f, ':') : NULL;
    if (colon && (size_t)(colon - f) < sizeof armed.kind) {
        memcpy(armed.kind, f, (size_t)(colon - f));
        armed.kind[colon - f] = '\0';
        armed.layer = atoi(colon + 1);
    }
    if (rel)
        snprintf(armed.release, sizeof armed.release, "%s", rel);
}

int fault_is(const char *kind, int layer) {
    pthread_once(&armed_once, arm_from_env);
    return armed.kind[0] && strcmp(armed.kind, kind) == 0 && armed.layer == layer;
}

void fault_point(const char *kind, int layer) {
    if (fault_is(kind, layer))
        raise(SIGKILL);
}

void fault_stall(const char *kind, int layer, int (*cancelled)(void *ctx), void *ctx) {
    for (int i = 0; i < 3000 && fault_is(kind, layer) && !cancelled(ctx); i++) {
        if (armed.release[0] && access(armed.release, F_OK) == 0)
            break;
        usleep(20000);
    }
}
