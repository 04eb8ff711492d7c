/* fault: crash injection for the durability tests (fault.c's note). */
#ifndef FAULT_H
#define FAULT_H

/* 1 if the armed fault is kind at layer. */
int fault_is(const char *kind, int layer);
/* stall-after-commit also ends once the release file exists. */
int fault_released(void);
/* Kills the process with SIGKILL when the armed fault is kind at layer. */
void fault_point(const char *kind, int layer);

#endif
