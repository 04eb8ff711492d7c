/* cases: a test executable as a table of named cases that meson registers
 * one test each (meson.build lists the names; --registered checks the two
 * lists agree, so a case in one and not the other cannot go unrun). */
#ifndef CASES_H
#define CASES_H

#include <stddef.h>

struct sv_case {
    const char *name;
    void (*run)(void);
};

/* The case called name, or NULL. */
const struct sv_case *sv_case_named(const struct sv_case *cases, size_t n, const char *name);
/* `PROG --list` (the names, one a line) and `PROG --registered NAME...`
 * (exit 1 unless every case is named exactly once and nothing else is):
 * returns the exit code, or -1 when argv asks for neither. */
int sv_cases_meta(int argc, char **argv, const struct sv_case *cases, size_t n);
/* Checks that argv (from arg first on) names only cases; 0, or 2 after
 * printing the unknown name. */
int sv_cases_known(int argc, char **argv, int first, const struct sv_case *cases, size_t n);

#endif
