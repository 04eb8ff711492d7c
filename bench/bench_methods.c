/* bench_methods: the method x ratio table of held-out perplexity and job
 * seconds, every job run through compress_run() in this one process, one
 * after another on idle cores.
 *
 *   bench_methods [--model DIR]... [--method NAME]... [--ratio R]... [--ranks NAME]
 *                 [--nsamples N] [--seqlen L] [--eval-windows N] [--data DIR]
 *                 [--calib FILE] [--eval FILE] [--no-eval]
 *
 * --calib FILE and --eval FILE replace the calibration and evaluation texts
 * (e.g. .i32 ids for a synthetic model without a tokenizer); --no-eval skips
 * perplexity, so "sec" is the compression alone (bench/methods_cost.sh).
 * "speed" is the compressed model's evaluation tokens/s over the original's,
 * both measured in the same job. With --ranks sensitive or --method auto
 * each cell is followed by the choice made on held-out calibration windows:
 * every candidate's mean NLL there, the kept one starred.
 *
 * Protocol (printed with the table): calibration text = the first 300 kB of
 * DATA/text/tinystories-valid-head.txt, nsamples windows of seqlen tokens
 * (seeded choice); evaluation = the next 200 kB, the first eval-windows
 * non-overlapping windows of seqlen tokens. Defaults: both bundled models,
 * every method, ratios 0.2 0.4 0.6, 32 x 128 calibration, 120 eval windows. */
#include <errno.h>
#include <jansson.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "compress.h"
#include "forward.h"
#include "mono.h"

#define MAXN 16

/* --ranks sensitive's and --method auto's choices, from compression.json:
 * " [uniform 1.234 auto 1.200 *sensitive 1.100]", the kept one starred. */
static void print_choices(const char *out) {
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/compression.json", out);
    json_t *root = json_load_file(path, 0, NULL);
    const char *keys[2] = {"method_choice", "rank_choice"};
    for (int q = 0; q < 2; q++) {
        json_t *ch = json_object_get(root, keys[q]), *e;
        const char *chosen = json_string_value(json_object_get(ch, "chosen"));
        size_t i;
        if (!chosen)
            continue;
        printf(" [");
        json_array_foreach(json_object_get(ch, "candidates"), i, e) {
            const char *n = json_string_value(json_object_get(e, "name"));
            printf("%s%s%s %.4f", i ? " " : "", n && !strcmp(n, chosen) ? "*" : "", n ? n : "?",
                   json_number_value(json_object_get(e, "heldout_loss")));
        }
        printf("]");
    }
    json_decref(root);
}

int main(int argc, char **argv) {
    const char *models[MAXN], *data = "tests/data";
    int nmodels = 0, nmethods = 0, nratios = 0;
    enum compress_method methods[MAXN];
    double ratios[MAXN];
    enum compress_ranks ranks = RANKS_DEFAULT;
    long nsamples = 32, seqlen = 128, evalw = 120;
    const char *calib = NULL, *evalf = NULL;
    int no_eval = 0;
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},  {"method", required_argument, 0, 'M'},
        {"ratio", required_argument, 0, 'r'},  {"ranks", required_argument, 0, 'R'},
        {"nsamples", required_argument, 0, 'n'}, {"seqlen", required_argument, 0, 'L'},
        {"eval-windows", required_argument, 0, 'w'}, {"data", required_argument, 0, 'd'},
        {"calib", required_argument, 0, 'c'}, {"no-eval", no_argument, 0, 'E'},
        {"eval", required_argument, 0, 'e'},
        {0, 0, 0, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            if (nmodels < MAXN)
                models[nmodels++] = optarg;
            break;
        case 'M':
            if (nmethods >= MAXN || params_method_parse(optarg, &methods[nmethods]) < 0) {
                fprintf(stderr, "bench_methods: unknown method '%s'\n", optarg);
                return 2;
            }
            nmethods++;
            break;
        case 'r': {
            char *end;
            if (nratios >= MAXN || !((ratios[nratios] = strtod(optarg, &end)) > 0) || *end) {
                fprintf(stderr, "bench_methods: bad ratio '%s'\n", optarg);
                return 2;
            }
            nratios++;
            break;
        }
        case 'R':
            if (params_ranks_parse(optarg, &ranks) < 0) {
                fprintf(stderr, "bench_methods: unknown ranks '%s'\n", optarg);
                return 2;
            }
            break;
        case 'n':
        case 'L':
        case 'w': {
            long v;
            if (args_parse_long(optarg, 1, 1 << 20, &v) < 0) {
                fprintf(stderr, "bench_methods: bad number '%s'\n", optarg);
                return 2;
            }
            *(c == 'n' ? &nsamples : c == 'L' ? &seqlen : &evalw) = v;
            break;
        }
        case 'd': data = optarg; break;
        case 'c': calib = optarg; break;
        case 'e': evalf = optarg; break;
        case 'E': no_eval = 1; break;
        default: return 2;
        }
    }
    static char mbuf[2][PATH_MAX];
    if (!nmodels) {
        snprintf(mbuf[0], sizeof mbuf[0], "%s/tinystories-656K", data);
        snprintf(mbuf[1], sizeof mbuf[1], "%s/stories260K-hf", data);
        models[0] = mbuf[0];
        models[1] = mbuf[1];
        nmodels = 2;
    }
    if (!nmethods)
        for (int m = 0; m < METHOD_COUNT; m++)
            methods[nmethods++] = (enum compress_method)m;
    if (!nratios) {
        ratios[0] = 0.2, ratios[1] = 0.4, ratios[2] = 0.6;
        nratios = 3;
    }
    char tmp[] = "/tmp/bench-methods-XXXXXX", cmd[PATH_MAX * 3];
    if (!mkdtemp(tmp))
        return 1;
    snprintf(cmd, sizeof cmd,
             "head -c 300000 '%s/text/tinystories-valid-head.txt' > %s/calib.txt && "
             "tail -c +300001 '%s/text/tinystories-valid-head.txt' | head -c 200000 > %s/eval.txt",
             data, tmp, data, tmp);
    if (system(cmd) != 0)
        return 1;
    forward_threads_set(0);
    printf("calibration: %s, %ld x %ld tokens (seeded windows); ", calib ? calib : "first 300 kB of tinystories-valid-head.txt",
           nsamples, seqlen);
    if (no_eval)
        printf("no evaluation");
    else
        printf("eval: next 200 kB, %ld windows of %ld tokens", evalw, seqlen);
    printf("; ranks %s; %d threads\n", params_ranks_name(ranks), forward_threads_get());
    int fails = 0, run = 0;
    for (int mi = 0; mi < nmodels; mi++) {
        printf("\n%s\n%-14s", models[mi], "method");
        for (int ri = 0; ri < nratios; ri++)
            printf("  ppl@%.2f  sec speed", ratios[ri]);
        printf("\n");
        double before = 0;
        for (int k = 0; k < nmethods; k++) {
            printf("%-14s", params_method_name(methods[k]));
            fflush(stdout);
            for (int ri = 0; ri < nratios; ri++) {
                struct compress_params p = {0};
                snprintf(p.model_dir, sizeof p.model_dir, "%s", models[mi]);
                snprintf(p.out_dir, sizeof p.out_dir, "%s/out-%d", tmp, run);
                snprintf(p.work_dir, sizeof p.work_dir, "%s/work-%d", tmp, run);
                if (calib)
                    snprintf(p.calib_path, sizeof p.calib_path, "%s", calib);
                else
                    snprintf(p.calib_path, sizeof p.calib_path, "%s/calib.txt", tmp);
                if (!no_eval)
                    snprintf(p.eval_path, sizeof p.eval_path, "%s", evalf ? evalf : "");
                if (!no_eval && !evalf)
                    snprintf(p.eval_path, sizeof p.eval_path, "%s/eval.txt", tmp);
                run++;
                snprintf(cmd, sizeof cmd, "mkdir -p '%s'", p.work_dir);
                if (system(cmd) != 0)
                    return 1;
                p.method = methods[k];
                p.ratio = ratios[ri];
                p.ranks = methods[k] == METHOD_LORAP && (ranks == RANKS_AUTO || ranks == RANKS_SENSITIVE)
                              ? RANKS_DEFAULT
                              : ranks;
                p.nsamples = (int)nsamples;
                p.seqlen = (int)seqlen;
                p.eval_max_windows = (int)evalw;
                struct compress_result res;
                struct sv_err err = {0};
                double t0 = mono_now();
                if (compress_run(&p, NULL, &res, &err) < 0) {
                    printf("  failed: %s", err.msg);
                    fails++;
                } else {
                    printf("  %8.2f %5.1f %4.2fx", no_eval ? 0.0 : res.ppl_after, mono_now() - t0,
                           res.tok_s_before > 0 ? res.tok_s_after / res.tok_s_before : 0.0);
                    before = res.ppl_before;
                    print_choices(p.out_dir);
                }
                fflush(stdout);
                snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", p.out_dir, p.work_dir);
                if (system(cmd) != 0)
                    return 1;
            }
            printf("\n");
        }
        if (no_eval)
            printf("(no evaluation: 'sec' is the compression job alone)\n");
        else
            printf("original      ppl %.2f (the 'sec' column includes the two evaluations)\n", before);
    }
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd) != 0)
        return 1;
    return fails ? 1 : 0;
}
