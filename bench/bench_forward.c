/* bench_forward: the forward pass's GFLOP/s next to the BLIS sgemm rate,
 * measured in the same run on the same threads.
 *
 *   bench_forward [--model DIR] [--genmodel PATH] [--batch B] [--seqlen T] [--layers N]
 *                 [--reps N] [--threads N] [--min-pct P]
 *
 * Without --model it writes two synthetic LLaMA-shaped BF16 models with
 * svdllm-genmodel (hidden 2048, ffn 5504, 16 heads, vocab 32000, N layers;
 * 16 kv heads, then 4 for grouped-query attention) into a temporary
 * directory, and removes them at the end.
 *
 * What is measured. The reference is bli_sgemm (through forward_sgemm, so the
 * same thread count and the same transposed-weight layout as forward_linear)
 * at the forward pass's dominant shape, gate/up: (ntok x hidden) times
 * (ffn x hidden)^T. The forward pass is forward_layer over all layers on
 * B x T tokens, weights already converted to f32 by model_layer_load, so
 * loading is excluded. The reference sgemm and the forward pass alternate,
 * one warm-up round and then --reps rounds, so both see the same machine; the
 * table reports the best time (and the median beside it), and GFLOP/s and
 * "% of GEMM" from the best. The other linear shapes are timed the same way,
 * for information. On 2 cores shared with other processes the numbers are
 * noisy; how busy the cores were just before start is printed for that reason.
 *
 * Flops counted, per layer: 2 ntok sum(d_out d_in) for the seven linears, plus
 * attention 2 x 2 B nh T^2 hd: the code computes the full T x T score matrix
 * (q k^T) and multiplies the full masked matrix by v, so the full product is
 * what is counted, not the causal half. RMSNorm, RoPE, softmax and SwiGLU are
 * not counted (they are O(ntok width) and under 1 % of the work here).
 *
 * Exit status: 0, or 1 if --min-pct P is given and a forward pass falls below
 * P % of the sgemm rate (or anything fails). */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "args.h"
#include "mono.h"
#include "forward.h"
#include "model.h"

extern char **environ;

#define BENCH_MAX_REPS 100

struct bench_opts {
    const char *model;
    const char *genmodel;
    int batch, seqlen, layers, reps, threads;
    double min_pct;
};

struct bench_time {
    double best, median;
};

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static struct bench_time summarize(double *t, int n) {
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    struct bench_time r = {t[0], n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2])};
    return r;
}

/* Times C (m, n) = A (m, k) B^T with B (n, k), the forward_linear layout. */
static struct bench_time time_sgemm(int reps, size_t m, size_t n, size_t k, const float *a, const float *b,
                                    float *c) {
    double t[BENCH_MAX_REPS];
    forward_sgemm(1, m, n, k, 1.0f, a, k, b, k, 0.0f, c, n); /* warm-up */
    for (int i = 0; i < reps; i++) {
        double t0 = mono_now();
        forward_sgemm(1, m, n, k, 1.0f, a, k, b, k, 0.0f, c, n);
        t[i] = mono_now() - t0;
    }
    return summarize(t, reps);
}

/* Percent of all cores busy over half a second, from /proc/stat; < 0 if unknown. */
static double cpu_busy_pct(void) {
    unsigned long long v[2][8];
    for (int k = 0; k < 2; k++) {
        FILE *f = fopen("/proc/stat", "r");
        if (!f)
            return -1;
        memset(v[k], 0, sizeof v[k]);
        int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[k][0], &v[k][1], &v[k][2], &v[k][3],
                       &v[k][4], &v[k][5], &v[k][6], &v[k][7]);
        fclose(f);
        if (n < 5)
            return -1;
        if (k == 0) {
            struct timespec ts = {0, 500000000};
            nanosleep(&ts, NULL);
        }
    }
    unsigned long long total = 0, idle = (v[1][3] - v[0][3]) + (v[1][4] - v[0][4]); /* idle + iowait */
    for (int i = 0; i < 8; i++)
        total += v[1][i] - v[0][i];
    return total ? 100.0 * (double)(total - idle) / (double)total : -1;
}

static void row(const char *what, double gflop, struct bench_time t, double ref_rate) {
    double rate = gflop / t.best;
    printf("  %-44s %8.1f %9.4f %9.4f %9.1f %7.1f %%\n", what, gflop, t.best, t.median, rate,
           100.0 * rate / ref_rate);
}

/* Runs PATH with argv; returns 0 if it exited 0. */
static int run_child(char *const argv[]) {
    pid_t pid;
    int st, r = posix_spawn(&pid, argv[0], NULL, NULL, argv, environ);
    if (r != 0) {
        fprintf(stderr, "bench_forward: cannot run '%s': %s\n", argv[0], strerror(r));
        return -r;
    }
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return -errno;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "bench_forward: '%s' failed (status %d)\n", argv[0], st);
        return -EIO;
    }
    return 0;
}

static int gen(const struct bench_opts *o, const char *dir, int kv_heads) {
    char layers[16], kv[16];
    snprintf(layers, sizeof layers, "%d", o->layers);
    snprintf(kv, sizeof kv, "%d", kv_heads);
    char *argv[] = {(char *)o->genmodel, "--out", (char *)dir, "--hidden", "2048", "--layers", layers,
                    "--heads", "16", "--kv-heads", kv, "--ffn", "5504", "--vocab", "32000",
                    "--dtype", "bf16", "--seed", "1", NULL};
    return run_child(argv);
}

static void remove_model(const char *dir) {
    char p[PATH_MAX + 64];
    snprintf(p, sizeof p, "%s/config.json", dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    unlink(p);
    rmdir(dir);
}

/* Benchmarks one model directory; returns the forward pass's % of the sgemm rate, or < 0. */
static double bench_model(const struct bench_opts *o, const char *dir, const char *label) {
    struct model *m = NULL;
    struct layer_w *lw = NULL;
    float *x0 = NULL, *x = NULL, *c = NULL;
    int32_t *ids = NULL;
    struct sv_err err = {0};
    double pct = -1;
    if (model_open(&m, dir, &err) < 0) {
        fprintf(stderr, "bench_forward: %s\n", err.msg);
        return -1;
    }
    const struct config *cf = &m->cfg;
    const int B = o->batch, T = o->seqlen, L = cf->n_layers;
    const size_t ntok = (size_t)B * T, d = (size_t)cf->hidden;
    const int nh = cf->n_heads, hd = cf->head_dim;
    if (T > cf->max_pos) {
        fprintf(stderr, "bench_forward: --seqlen %d exceeds the model's max_position_embeddings %d\n", T,
                cf->max_pos);
        goto out;
    }
    lw = calloc((size_t)L, sizeof *lw);
    ids = malloc(ntok * sizeof *ids);
    x0 = malloc(ntok * d * sizeof *x0);   /* x0: (ntok, hidden), the embedded tokens */
    x = malloc(ntok * d * sizeof *x);     /* x: (ntok, hidden), overwritten by each run */
    size_t cmax = 0;
    for (int p = 0; p < PROJ_COUNT; p++) {
        int d_out, d_in;
        config_proj_shape(cf, p, &d_out, &d_in);
        cmax = (size_t)d_out > cmax ? (size_t)d_out : cmax;
    }
    c = malloc(ntok * cmax * sizeof *c);  /* c: (ntok, widest d_out) */
    if (!lw || !ids || !x0 || !x || !c) {
        fprintf(stderr, "bench_forward: out of memory\n");
        goto out;
    }
    double tl = mono_now();
    for (int l = 0; l < L; l++)
        if (model_layer_load(m, l, &lw[l], &err) < 0) {
            fprintf(stderr, "bench_forward: %s\n", err.msg);
            goto out;
        }
    tl = mono_now() - tl;
    uint64_t s = 12345;
    for (size_t i = 0; i < ntok; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        ids[i] = (int32_t)((s >> 33) % (uint64_t)cf->vocab);
    }
    if (model_embed(m, ids, ntok, x0, &err) < 0) {
        fprintf(stderr, "bench_forward: %s\n", err.msg);
        goto out;
    }

    /* Flops of one layer. */
    double lin_flop = 0;
    for (int p = 0; p < PROJ_COUNT; p++) {
        int d_out, d_in;
        config_proj_shape(cf, p, &d_out, &d_in);
        lin_flop += 2.0 * (double)ntok * d_out * d_in;
    }
    double att_flop = 2.0 * 2.0 * B * nh * (double)T * T * hd;

    printf("\nmodel %s: hidden %d, ffn %d, heads %d, kv heads %d, head_dim %d, layers %d, vocab %d\n", label,
           cf->hidden, cf->intermediate, nh, cf->n_kv_heads, hd, L, cf->vocab);
    printf("  tokens B x T = %d x %d = %zu; layer load (BF16 -> f32, excluded) %.2f s\n", B, T, ntok, tl);
    printf("  %-44s %8s %9s %9s %9s %9s\n", "measurement", "GFLOP", "s best", "s median", "GFLOP/s", "of GEMM");

    /* The reference, BLIS at the dominant shape on the real gate weights, and
     * the forward pass over all layers, alternating rep by rep so that both
     * see the same machine (the cores may be shared with other processes). */
    const int ff = cf->intermediate, qw = nh * hd, kvw = cf->n_kv_heads * hd;
    double t_ref[BENCH_MAX_REPS], t_fwd[BENCH_MAX_REPS];
    for (int i = -1; i < o->reps; i++) {
        double t0 = mono_now();
        forward_sgemm(1, ntok, (size_t)ff, d, 1.0f, x0, d, lw[0].proj[PROJ_GATE].w, d, 0.0f, c, (size_t)ff);
        double t1 = mono_now();
        memcpy(x, x0, ntok * d * sizeof *x);
        double t2 = mono_now();
        for (int l = 0; l < L; l++)
            if (forward_layer(cf, &lw[l], x, B, T, NULL, &err) < 0) {
                fprintf(stderr, "bench_forward: %s\n", err.msg);
                goto out;
            }
        if (i >= 0) {
            t_ref[i] = t1 - t0;
            t_fwd[i] = mono_now() - t2;
        }
    }
    struct bench_time tg = summarize(t_ref, o->reps), tf = summarize(t_fwd, o->reps);
    double g_gate = 2.0 * ntok * ff * d * 1e-9, ref = g_gate / tg.best;
    char what[96];
    snprintf(what, sizeof what, "sgemm %zux%dx%zu (gate/up)  [reference]", ntok, ff, d);
    row(what, g_gate, tg, ref);

    /* The other linear shapes, and the seven linears of a layer as bare sgemm calls. */
    float *xf = malloc(ntok * (size_t)ff * sizeof *xf); /* xf: (ntok, ffn) input of down_proj */
    if (!xf) {
        fprintf(stderr, "bench_forward: out of memory\n");
        goto out;
    }
    for (size_t i = 0; i < ntok * (size_t)ff; i++)
        xf[i] = x0[i % (ntok * d)];
    struct bench_time td = time_sgemm(o->reps, ntok, d, (size_t)ff, xf, lw[0].proj[PROJ_DOWN].w, c);
    free(xf);
    snprintf(what, sizeof what, "sgemm %zux%zux%d (down)", ntok, d, ff);
    row(what, 2.0 * ntok * d * ff * 1e-9, td, ref);
    struct bench_time tq = time_sgemm(o->reps, ntok, (size_t)qw, d, x0, lw[0].proj[PROJ_Q].w, c);
    snprintf(what, sizeof what, "sgemm %zux%dx%zu (q, o)", ntok, qw, d);
    row(what, 2.0 * ntok * qw * d * 1e-9, tq, ref);
    struct bench_time tk = time_sgemm(o->reps, ntok, (size_t)kvw, d, x0, lw[0].proj[PROJ_K].w, c);
    snprintf(what, sizeof what, "sgemm %zux%dx%zu (k, v)", ntok, kvw, d);
    row(what, 2.0 * ntok * kvw * d * 1e-9, tk, ref);
    struct bench_time tlin = {2 * tg.best + td.best + 2 * tq.best + 2 * tk.best,
                              2 * tg.median + td.median + 2 * tq.median + 2 * tk.median};
    row("7 linears of a layer as bare sgemm (sum)", lin_flop * 1e-9, tlin, ref);

    double g_fwd = L * (lin_flop + att_flop) * 1e-9;
    snprintf(what, sizeof what, "forward_layer x %d (linears + full attention)", L);
    row(what, g_fwd, tf, ref);
    pct = 100.0 * g_fwd / tf.best / ref;
    printf("  forward / reference sgemm rate: %.1f %% (best times), %.1f %% (median times)\n", pct,
           100.0 * (g_fwd / tf.median) / (g_gate / tg.median));
    double t_rest = tf.best / L - tlin.best;
    printf("  per layer: linears %.1f GFLOP + attention %.1f GFLOP (full T x T; causal half %.1f);\n"
           "  forward %.4f s = bare linears %.4f s + attention, norms, RoPE, SwiGLU %.4f s\n",
           lin_flop * 1e-9, att_flop * 1e-9, att_flop * 0.5e-9, tf.best / L, tlin.best, t_rest);
    printf("  counting only the causal half of attention: %.1f GFLOP/s (%.1f %% of GEMM)\n",
           L * (lin_flop + att_flop / 2) * 1e-9 / tf.best, 100.0 * L * (lin_flop + att_flop / 2) * 1e-9 / tf.best / ref);
out:
    for (int l = 0; lw && l < L; l++)
        model_layer_free(&lw[l]);
    free(lw);
    free(ids);
    free(x0);
    free(x);
    free(c);
    model_free(m);
    return pct;
}

static void usage(FILE *f) {
    fprintf(f, "usage: bench_forward [--model DIR] [--genmodel PATH] [--batch B] [--seqlen T] [--layers N]\n"
               "                     [--reps N] [--threads N] [--min-pct P]\n");
}

static int parse_int(const char *s, long lo, long hi, int *out) {
    long v;
    int r = args_parse_long(s, lo, hi, &v);
    if (r == 0)
        *out = (int)v;
    return r;
}

int main(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},   {"genmodel", required_argument, 0, 'g'},
        {"batch", required_argument, 0, 'B'},   {"seqlen", required_argument, 0, 'T'},
        {"layers", required_argument, 0, 'l'},  {"reps", required_argument, 0, 'r'},
        {"threads", required_argument, 0, 'j'}, {"min-pct", required_argument, 0, 'p'},
        {"help", no_argument, 0, 'h'},          {0, 0, 0, 0},
    };
    struct bench_opts o = {.batch = 4, .seqlen = 512, .layers = 2, .reps = 5};
    char genpath[PATH_MAX];
    int c, bad = 0;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm': o.model = optarg; break;
        case 'g': o.genmodel = optarg; break;
        case 'B': bad |= parse_int(optarg, 1, 1024, &o.batch); break;
        case 'T': bad |= parse_int(optarg, 2, 1 << 16, &o.seqlen); break;
        case 'l': bad |= parse_int(optarg, 1, 64, &o.layers); break;
        case 'r': bad |= parse_int(optarg, 1, BENCH_MAX_REPS, &o.reps); break;
        case 'j': bad |= parse_int(optarg, 0, 1024, &o.threads); break;
        case 'p': {
            char *end;
            o.min_pct = strtod(optarg, &end);
            bad |= (end == optarg || *end || o.min_pct < 0) ? -EINVAL : 0;
            break;
        }
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (bad || optind < argc) {
        fprintf(stderr, "bench_forward: invalid arguments\n");
        usage(stderr);
        return 2;
    }
    /* svdllm-genmodel is built beside us. */
    if (!o.model && !o.genmodel) {
        ssize_t n = readlink("/proc/self/exe", genpath, sizeof genpath - 32);
        if (n <= 0) {
            fprintf(stderr, "bench_forward: cannot locate svdllm-genmodel; pass --genmodel PATH\n");
            return 1;
        }
        genpath[n] = 0;
        char *slash = strrchr(genpath, '/');
        strcpy(slash ? slash + 1 : genpath, "svdllm-genmodel");
        o.genmodel = genpath;
    }

    int threads = forward_threads_set(o.threads);
    /* Other processes on the same cores skew every number below. */
    double busy = cpu_busy_pct();
    if (busy >= 0)
        printf("bench_forward: cores %.0f %% busy with other work just before start%s\n", busy,
               busy > 10 ? " (rates will be low and noisy)" : "");
    printf("bench_forward: %d threads (BLIS and OpenMP), B x T = %d x %d, %d reps after one warm-up;\n"
           "times are the best of the reps (median beside it), GFLOP/s from the best\n",
           threads, o.batch, o.seqlen, o.reps);
    int rc = 0;
    double pct[2] = {0, 0};
    const char *labels[2] = {"MHA (16 kv heads)", "GQA (4 kv heads)"};
    if (o.model) {
        pct[0] = bench_model(&o, o.model, o.model);
        labels[0] = o.model;
        rc = pct[0] < 0;
    } else {
        /* About 0.9 GB of BF16 for the two models, one at a time. */
        const char *tmpdir = getenv("TMPDIR");
        char rdir[PATH_MAX];
        int n = snprintf(rdir, sizeof rdir, "%s/svdllm-bench.XXXXXX", tmpdir && *tmpdir ? tmpdir : "/tmp");
        if (n < 0 || (size_t)n >= sizeof rdir || !mkdtemp(rdir)) {
            fprintf(stderr, "bench_forward: cannot create a directory in '%s'\n", tmpdir ? tmpdir : "/tmp");
            return 1;
        }
        const int kv[2] = {16, 4};
        for (int i = 0; i < 2 && !rc; i++) {
            char dir[PATH_MAX + 16];
            snprintf(dir, sizeof dir, "%s/kv%d", rdir, kv[i]);
            double t0 = mono_now();
            if (gen(&o, dir, kv[i]) < 0) {
                rc = 1;
                break;
            }
            printf("\n(generated %s with svdllm-genmodel in %.1f s)", dir, mono_now() - t0);
            pct[i] = bench_model(&o, dir, labels[i]);
            rc = pct[i] < 0;
            remove_model(dir);
        }
        rmdir(rdir);
    }
    if (rc)
        return 1;
    printf("\nsummary: forward pass at");
    for (int i = 0; i < (o.model ? 1 : 2); i++)
        printf("%s %.1f %% (%s)", i ? "," : "", pct[i], labels[i]);
    printf(" of the BLIS sgemm rate; target >= 70 %%\n");
    for (int i = 0; i < (o.model ? 1 : 2); i++)
        if (o.min_pct > 0 && pct[i] < o.min_pct) {
            fprintf(stderr, "bench_forward: %s below --min-pct %.1f\n", labels[i], o.min_pct);
            rc = 1;
        }
    return rc;
}
