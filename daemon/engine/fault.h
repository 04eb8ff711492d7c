/* fault: crash points for the durability tests (fault.c's note). */
#ifndef FAULT_H
#define FAULT_H

/* 1 if the armed fault is kind at layer. */
int fault_is(const char *kind, int layer);
/* Kills the process with SIGKILL when the armed fault is kind at layer. */
void fault_point(const char *kind, int layer);
/* When the armed fault is kind at layer: holds the caller for up to 60 s,
 * until cancelled(ctx) or the release file exists. */
void fault_stall(const char *kind, int layer, int (*cancelled)(void *ctx), void *ctx);

#endif
