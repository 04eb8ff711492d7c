/* mono: the monotonic clock, for durations, ETAs and benchmarks. */
#ifndef MONO_H
#define MONO_H

/* Seconds on CLOCK_MONOTONIC (arbitrary origin). */
double mono_now(void);

#endif
