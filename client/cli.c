/* cli: usage errors and option values for svdllmctl's parsers (cli.h). */
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static char usage_prog[64] = "svdllmctl";
static char usage_hint[64] = "svdllmctl --help";

void cli_usage_set(const char *prog, const char *hint) {
    snprintf(usage_prog, sizeof usage_prog, "%s", prog);
    snprintf(usage_hint, sizeof usage_hint, "%s", hint);
}

void cli_die_usage(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", usage_prog);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (see %s)\n", usage_hint);
    va_end(ap);
    exit(2);
}

void cli_getopt_check(int opt, char **argv) {
    if (opt == '?')
        cli_die_usage("unknown option '%s'", argv[optind - 1]);
    if (opt == ':')
        cli_die_usage("option '%s' needs a value", argv[optind - 1]);
}

long long cli_parse_ll(const char *opt, const char *v, long long min, long long max) {
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end || x < min || x > max)
        cli_die_usage("--%s: '%s' is not an integer in [%lld, %lld]", opt, v, min, max);
    return x;
}

double cli_parse_num(const char *opt, const char *v) {
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || !isfinite(x))
        cli_die_usage("--%s: '%s' is not a number", opt, v);
    return x;
}
