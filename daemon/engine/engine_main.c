/* svdllm-engine: one-shot command-line entry to the engine, without the daemon.
 *
 *   svdllm-engine eval --model DIR --text FILE --seqlen L [--max-windows N] [--threads N] [--json]
 *
 * --threads goes to forward_threads_set(), as svdllmd's does: 0 or absent
 * means the CPUs this process may run on (its affinity mask).
 *
 * Exits 0 on success; on failure prints one line "svdllm-engine: <reason>" to
 * stderr and exits 1 (2 for usage errors). */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "forward.h"
#include "ppl.h"

static void usage(FILE *f) {
    fprintf(f, "usage: svdllm-engine eval --model DIR --text FILE --seqlen L [--max-windows N] [--threads N] [--json]\n");
}

static int cmd_eval(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"text", required_argument, 0, 't'},
        {"seqlen", required_argument, 0, 'L'}, {"max-windows", required_argument, 0, 'w'},
        {"threads", required_argument, 0, 'j'}, {"json", no_argument, 0, 'J'},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0},
    };
    const char *model = NULL, *text = NULL;
    long seqlen = 0, maxw = 0, threads = 0;
    int json = 0, c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 't': text = optarg; break;
        case 'L':
            if (args_parse_long(optarg, 2, 1 << 20, &seqlen) < 0) {
                fprintf(stderr, "svdllm-engine: --seqlen '%s' must be an integer >= 2\n", optarg);
                return 2;
            }
            break;
        case 'w':
            if (args_parse_long(optarg, 0, 1L << 40, &maxw) < 0) {
                fprintf(stderr, "svdllm-engine: --max-windows '%s' must be a non-negative integer\n", optarg);
                return 2;
            }
            break;
        case 'j':
            if (args_parse_long(optarg, 0, 1024, &threads) < 0) {
                fprintf(stderr, "svdllm-engine: --threads '%s' must be an integer in [0, 1024]\n", optarg);
                return 2;
            }
            break;
        case 'J': json = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!model || !text || !seqlen) {
        fprintf(stderr, "svdllm-engine: eval needs --model, --text and --seqlen\n");
        return 2;
    }
    forward_threads_set((int)threads);
    struct ppl_result res;
    struct sv_err err = {0};
    if (ppl_eval(model, text, (int)seqlen, (size_t)maxw, NULL, NULL, &res, &err) < 0) {
        fprintf(stderr, "svdllm-engine: %s\n", err.msg);
        return 1;
    }
    if (json) {
        /* jansson escapes the paths; reals keep full precision. */
        json_t *o = json_pack("{s:s, s:s, s:f, s:f, s:I, s:I, s:I, s:i, s:f, s:f}", "model", model, "text", text,
                              "ppl", res.ppl, "mean_nll", res.mean_nll, "tokens", (json_int_t)res.tokens, "windows",
                              (json_int_t)res.windows, "predicted", (json_int_t)res.predicted, "seqlen", res.seqlen,
                              "seconds", res.seconds, "tokens_per_s", res.tokens_per_s);
        char *out = o ? json_dumps(o, JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(12)) : NULL;
        json_decref(o);
        if (!out) {
            fprintf(stderr, "svdllm-engine: cannot format the result as JSON\n");
            return 1;
        }
        puts(out);
        free(out);
    }
    else
        printf("ppl %.4f (mean NLL %.6f) on '%s': %zu tokens, %zu windows of L=%d, %zu predictions; %.2f s, %.0f tok/s\n",
               res.ppl, res.mean_nll, text, res.tokens, res.windows, res.seqlen, res.predicted, res.seconds,
               res.tokens_per_s);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "eval") == 0)
        return cmd_eval(argc - 1, argv + 1);
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "svdllm-engine: unknown command '%s' (try --help)\n", argv[1]);
    return 2;
}
