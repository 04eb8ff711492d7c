/* sweep: `svdllmctl sweep`, one compression job per (method, ratio) through
 * svdllmd, then the perplexity and speed of each output and of the original,
 * printed as a table and drawn as an SVG plot (client/svg.h). See sweep.c's
 * design note and `svdllmctl sweep --help`. */
#ifndef SWEEP_H
#define SWEEP_H

#include <stdbool.h>

/* True when the command of this svdllmctl command line is `sweep` (the first
 * argument that is neither an option nor --socket's value). */
bool sweep_is_command(int argc, char **argv);

/* Runs the whole command line (global options included) and returns the
 * exit status: 0 every job done and evaluated, 1 a failure (the table shows
 * which), 2 a usage error. default_socket: used without --socket and
 * $SVDLLMD_SOCKET. */
int sweep_main(int argc, char **argv, const char *default_socket);

#endif
