/* bench_gemm: the BLIS sgemm and dgemm rates at given shapes, for the floors
 * of bench/layer7b.sh.
 *
 *   bench_gemm [--threads N] [--reps R] [--type s|d|sd] M N K [M N K ...]
 *
 * For each shape, C (M x N) = A (M x K) B^T with B (N x K), row-major: the
 * layout of forward_linear (weights transposed) and of the engine's double
 * products. Operands are uniform in [-1, 1) from a fixed seed; one warm-up
 * call, then R timed calls (default 3), and the best is reported. BLIS runs
 * on N threads (bli_thread_set_num_threads; default: the online CPUs).
 * Output, one line per shape and type, whitespace-separated:
 *
 *   gemm TYPE M N K THREADS GFLOP_PER_S BEST_SECONDS
 *
 * with GFLOP = 2 M N K / 1e9. Exit status 0, 2 on bad arguments, 1 if out of
 * memory. */
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <blis.h>

#include "args.h"
#include "mono.h"

static void fill(void *p, size_t n, int dbl, uint64_t seed) {
    uint64_t s = seed * 0x9e3779b97f4a7c15ULL + 1;
    for (size_t i = 0; i < n; i++) {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        double v = (double)((s * 0x2545f4914f6cdd1dULL) >> 11) * 0x1.0p-52 - 1.0;
        if (dbl)
            ((double *)p)[i] = v;
        else
            ((float *)p)[i] = (float)v;
    }
}

static void call(int dbl, long m, long n, long k, const void *a, const void *b, void *c) {
    if (dbl) {
        double one = 1.0, zero = 0.0;
        bli_dgemm(BLIS_NO_TRANSPOSE, BLIS_TRANSPOSE, m, n, k, &one, (double *)a, k, 1, (double *)b, k, 1, &zero,
                  (double *)c, n, 1);
    } else {
        float one = 1.0f, zero = 0.0f;
        bli_sgemm(BLIS_NO_TRANSPOSE, BLIS_TRANSPOSE, m, n, k, &one, (float *)a, k, 1, (float *)b, k, 1, &zero,
                  (float *)c, n, 1);
    }
}

/* Best seconds of reps calls, after one warm-up; < 0 if out of memory. */
static double time_gemm(int dbl, long m, long n, long k, int reps) {
    size_t es = dbl ? sizeof(double) : sizeof(float);
    void *a = malloc((size_t)m * k * es), *b = malloc((size_t)n * k * es), *c = malloc((size_t)m * n * es);
    double best = -1;
    if (a && b && c) {
        fill(a, (size_t)m * k, dbl, 1);
        fill(b, (size_t)n * k, dbl, 2);
        call(dbl, m, n, k, a, b, c);
        for (int r = 0; r < reps; r++) {
            double t0 = mono_now();
            call(dbl, m, n, k, a, b, c);
            double t = mono_now() - t0;
            if (best < 0 || t < best)
                best = t;
        }
    }
    free(a);
    free(b);
    free(c);
    return best;
}

static void usage(FILE *f) {
    fprintf(f, "usage: bench_gemm [--threads N] [--reps R] [--type s|d|sd] M N K [M N K ...]\n");
}

int main(int argc, char **argv) {
    static const struct option opts[] = {
        {"threads", required_argument, 0, 'j'}, {"reps", required_argument, 0, 'r'},
        {"type", required_argument, 0, 't'},    {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    long threads = sysconf(_SC_NPROCESSORS_ONLN), reps = 3;
    const char *type = "sd";
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'j':
            if (args_parse_long(optarg, 1, 1024, &threads) < 0) {
                fprintf(stderr, "bench_gemm: --threads '%s' must be an integer in [1, 1024]\n", optarg);
                return 2;
            }
            break;
        case 'r':
            if (args_parse_long(optarg, 1, 100, &reps) < 0) {
                fprintf(stderr, "bench_gemm: --reps '%s' must be an integer in [1, 100]\n", optarg);
                return 2;
            }
            break;
        case 't':
            if (strcmp(optarg, "s") && strcmp(optarg, "d") && strcmp(optarg, "sd")) {
                fprintf(stderr, "bench_gemm: --type '%s' must be s, d or sd\n", optarg);
                return 2;
            }
            type = optarg;
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    int nshape = argc - optind;
    if (nshape < 3 || nshape % 3) {
        usage(stderr);
        return 2;
    }
    if (threads < 1)
        threads = 1;
    bli_thread_set_num_threads((dim_t)threads);
    for (int i = optind; i < argc; i += 3) {
        long d[3];
        for (int j = 0; j < 3; j++)
            if (args_parse_long(argv[i + j], 1, 1L << 20, &d[j]) < 0) {
                fprintf(stderr, "bench_gemm: dimension '%s' must be an integer in [1, 2^20]\n", argv[i + j]);
                return 2;
            }
        for (const char *t = type; *t; t++) {
            int dbl = *t == 'd';
            double s = time_gemm(dbl, d[0], d[1], d[2], (int)reps);
            if (s < 0) {
                fprintf(stderr, "bench_gemm: out of memory for %ld x %ld x %ld\n", d[0], d[1], d[2]);
                return 1;
            }
            printf("gemm %s %ld %ld %ld %ld %.2f %.6f\n", dbl ? "dgemm" : "sgemm", d[0], d[1], d[2], threads,
                   2.0 * d[0] * d[1] * d[2] / s / 1e9, s);
            fflush(stdout);
        }
    }
    return 0;
}
