/* bench_tok: single-thread tokenizer speed, for the README's table.
 *
 *   bench_tok [--reps R] [--bytes N] TEXT TOKENIZER.json [TOKENIZER.json ...]
 *
 * Loads each tokenizer (timed once), then encodes the first N bytes of TEXT
 * (default: all of it) R times (default 3) on the calling thread, BOS
 * included, and reports the best run. Output, one line per tokenizer,
 * whitespace-separated:
 *
 *   tok PATH BYTES TOKENS LOAD_SECONDS BEST_SECONDS MB_PER_S TOKENS_PER_S
 *
 * with MB = 1e6 bytes of input text. Exit status 0, 2 on bad arguments, 1 on
 * any tokenizer error. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include "args.h"
#include "mono.h"
#include "tok.h"

static char *read_file(const char *path, size_t *ret_n) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 20, n = 0;
    char *buf = malloc(cap);
    for (size_t got; buf && (got = fread(buf + n, 1, cap - n, f)) > 0;) {
        n += got;
        if (n == cap) {
            char *b = realloc(buf, cap *= 2);
            if (!b)
                free(buf);
            buf = b;
        }
    }
    fclose(f);
    *ret_n = n;
    return buf;
}

int main(int argc, char **argv) {
    static const struct option opts[] = {
        {"reps", required_argument, 0, 'r'}, {"bytes", required_argument, 0, 'b'}, {0, 0, 0, 0}};
    long reps = 3, bytes = 0;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'r' && args_parse_long(optarg, 1, 1000, &reps) == 0)
            continue;
        if (c == 'b' && args_parse_long(optarg, 1, 1L << 40, &bytes) == 0)
            continue;
        fprintf(stderr, "usage: bench_tok [--reps R] [--bytes N] TEXT TOKENIZER.json [TOKENIZER.json ...]\n");
        return 2;
    }
    if (argc - optind < 2) {
        fprintf(stderr, "usage: bench_tok [--reps R] [--bytes N] TEXT TOKENIZER.json [TOKENIZER.json ...]\n");
        return 2;
    }
    size_t len = 0;
    char *text = read_file(argv[optind], &len);
    if (!text) {
        fprintf(stderr, "bench_tok: cannot read %s\n", argv[optind]);
        return 1;
    }
    if (bytes && (size_t)bytes < len)
        len = (size_t)bytes;
    int rc = 0;
    for (int i = optind + 1; i < argc; i++) {
        struct sv_err err = {0};
        struct tok *t = NULL;
        double t0 = mono_now();
        if (tok_new(&t, argv[i], &err) < 0) {
            fprintf(stderr, "bench_tok: %s\n", err.msg);
            rc = 1;
            continue;
        }
        double load = mono_now() - t0, best = 0;
        size_t n = 0;
        for (long r = 0; r < reps; r++) {
            int32_t *ids = NULL;
            t0 = mono_now();
            if (tok_encode(t, text, len, 1, &ids, &n, &err) < 0) {
                fprintf(stderr, "bench_tok: %s\n", err.msg);
                rc = 1;
                break;
            }
            double dt = mono_now() - t0;
            free(ids);
            if (r == 0 || dt < best)
                best = dt;
        }
        if (best > 0)
            printf("tok %s %zu %zu %.3f %.4f %.2f %.0f\n", argv[i], len, n, load, best, (double)len / best / 1e6,
                   (double)n / best);
        tok_free(t);
    }
    free(text);
    return rc;
}
