/* cli: what svdllmctl's two command-line parsers share (the commands in
 * svdllmctl.c, `sweep` in sweep.c): one usage-error exit that names the
 * program and where its help is, the getopt_long errors, and option values
 * parsed or refused through it. Single-threaded: the setting is global. */
#ifndef CLI_H
#define CLI_H

/* What usage errors print: "PROG: ... (see HINT)" (both copied). */
void cli_usage_set(const char *prog, const char *hint);
/* Prints the usage error and exits 2. */
void cli_die_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
/* getopt_long's result with an optstring that starts with "+:" (or ":"):
 * dies on '?' (unknown option) and ':' (a missing value), else returns. */
void cli_getopt_check(int opt, char **argv);
/* v as an integer in [min, max], or a usage error naming --opt. */
long long cli_parse_ll(const char *opt, const char *v, long long min, long long max);
/* v as a finite number, or a usage error naming --opt. */
double cli_parse_num(const char *opt, const char *v);

#endif
