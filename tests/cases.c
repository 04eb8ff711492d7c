/* cases: the case table's command line (see cases.h). */
#include <stdio.h>
#include <string.h>

#include "cases.h"

const struct sv_case *sv_case_named(const struct sv_case *cases, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++)
        if (strcmp(cases[i].name, name) == 0)
            return &cases[i];
    return NULL;
}

static int check_registered(int argc, char **argv, const struct sv_case *cases, size_t n) {
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        int seen = 0;
        for (int a = 0; a < argc; a++)
            seen += strcmp(argv[a], cases[i].name) == 0;
        if (seen != 1) {
            fprintf(stderr, "case %s is registered %d times in meson.build, not once\n", cases[i].name, seen);
            bad = 1;
        }
    }
    for (int a = 0; a < argc; a++)
        if (!sv_case_named(cases, n, argv[a])) {
            fprintf(stderr, "meson.build registers '%s', which is no case of this test\n", argv[a]);
            bad = 1;
        }
    printf("%zu cases, %d registered: %s\n", n, argc, bad ? "they differ" : "the same");
    return bad;
}

int sv_cases_meta(int argc, char **argv, const struct sv_case *cases, size_t n) {
    if (argc == 2 && strcmp(argv[1], "--list") == 0) {
        for (size_t i = 0; i < n; i++)
            printf("%s\n", cases[i].name);
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "--registered") == 0)
        return check_registered(argc - 2, argv + 2, cases, n);
    return -1;
}

int sv_cases_known(int argc, char **argv, int first, const struct sv_case *cases, size_t n) {
    for (int a = first; a < argc; a++)
        if (!sv_case_named(cases, n, argv[a])) {
            fprintf(stderr, "%s: no case '%s' (--list shows them)\n", argv[0], argv[a]);
            return 2;
        }
    return 0;
}
