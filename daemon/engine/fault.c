/* fault: crash points for the durability tests. */
#include "fault.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Crash injection for the durability tests (in the spirit of SQLite's
 * crash tests): SVDLLM_FAULT="after-commit:L" kills the process with SIGKILL
 * right after layer L's checkpoint row is committed; "mid-write:L" kills it
 * halfway through writing layer L's checkpoint file; "stall-after-commit:L"
 * holds the job after layer L's commit (up to 60 s, until it is cancelled or
 * the file named by SVDLLM_FAULT_RELEASE exists),
 * so a test can cancel a job that is certainly running. Unset in production. */
int fault_is(const char *kind, int layer) {
    const char *f = getenv("SVDLLM_FAULT");
    size_t n = strlen(kind);
    return f && strncmp(f, kind, n) == 0 && f[n] == ':' && atoi(f + n + 1) == layer;
}

/* stall-after-commit also ends once the file $SVDLLM_FAULT_RELEASE exists. */
int fault_released(void) {
    const char *f = getenv("SVDLLM_FAULT_RELEASE");
    return f && *f && access(f, F_OK) == 0;
}

void fault_point(const char *kind, int layer) {
    if (fault_is(kind, layer))
        raise(SIGKILL);
}
