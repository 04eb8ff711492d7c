/* svdllm-engine: one-shot command-line entry to the engine, without the daemon.
 *
 *   svdllm-engine eval --model DIR --text FILE --seqlen L [--max-windows N] [--threads N] [--json]
 *   svdllm-engine tokenize (--tokenizer FILE | --model DIR) [--text FILE] [--no-bos] [--json]
 *   svdllm-engine generate --model DIR --prompt TEXT [--max-tokens N] [--temperature T] [--top-p P]
 *                          [--seed S] [--no-bos] [--threads N] [--json]
 *
 * tokenize encodes the text (stdin without --text) with the tokenizer.json
 * (DIR/tokenizer.json with --model) as the engine does for eval and
 * calibration, BOS included unless --no-bos, and prints the ids on one line,
 * separated by spaces; --json prints one object instead:
 *   {"tokenizer": PATH, "bytes": N, "tokens": K, "ids": [...], "pieces": [...]}
 * where pieces are the vocab strings as the file spells them ("Ġthe", "▁the").
 *
 * generate continues the prompt (BOS in front unless --no-bos; '' is allowed:
 * BOS alone) with the model, greedily by default (generate.h has the
 * sampler, run.c's, and the stop rules), and prints the decoded text of
 * prompt and continuation as it grows, then a newline; so
 *   svdllm-engine generate --model stories260K-hf --prompt '' --max-tokens 256
 * prints what llama2.c's `run stories260K.bin -z tok512.bin -t 0` prints.
 * --max-tokens counts new tokens (default 256); --temperature 0 (default)
 * is greedy; --top-p defaults to 0.9 as in run.c (0 or 1: off); --seed
 * (default 1) must be non-zero. --json prints one object at the end instead:
 *   {"model", "text", "ids", "prompt_tokens", "generated_tokens", "finish" ("eos", "length", "context"),
 *    "temperature", "top_p", "seed", "prompt_seconds", "seconds", "tokens_per_s"}
 *
 * --threads goes to forward_threads_set(), as svdllmd's does: 0 or absent
 * means the CPUs this process may run on (its affinity mask).
 *
 * --version prints "svdllm-engine VERSION". Exits 0 on success; on failure prints one line "svdllm-engine: <reason>" to
 * stderr and exits 1 (2 for usage errors). */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "forward.h"
#include "generate.h"
#include "ppl.h"
#include "tok.h"

#ifndef SV_VERSION
#define SV_VERSION "unknown"
#endif

static void usage(FILE *f) {
    fprintf(f, "usage: svdllm-engine eval --model DIR --text FILE --seqlen L [--max-windows N] [--threads N] [--json]\n");
    fprintf(f, "       svdllm-engine tokenize (--tokenizer FILE | --model DIR) [--text FILE] [--no-bos] [--json]\n");
    fprintf(f, "       svdllm-engine generate --model DIR --prompt TEXT [--max-tokens N] [--temperature T] [--top-p P]\n"
               "                              [--seed S] [--no-bos] [--threads N] [--json]\n");
    fprintf(f, "       svdllm-engine --help | --version\n");
}

/* A real number in [lo, hi] (strtod; the whole string). */
static int parse_real(const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi))
        return -1;
    *out = v;
    return 0;
}

/* The value of option --name (optarg) as an integer (opt_long) or a number
 * (opt_real) in [lo, hi]; false after saying what it must be. */
static bool opt_long(const char *name, long lo, long hi, const char *must, long *out) {
    if (args_parse_long(optarg, lo, hi, out) == 0)
        return true;
    fprintf(stderr, "svdllm-engine: --%s '%s' must be %s\n", name, optarg, must);
    return false;
}

static bool opt_real(const char *name, double lo, double hi, const char *must, double *out) {
    if (parse_real(optarg, lo, hi, out) == 0)
        return true;
    fprintf(stderr, "svdllm-engine: --%s '%s' must be %s\n", name, optarg, must);
    return false;
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
            if (!opt_long("seqlen", 2, 1 << 20, "an integer >= 2", &seqlen))
                return 2;
            break;
        case 'w':
            if (!opt_long("max-windows", 0, 1L << 40, "a non-negative integer", &maxw))
                return 2;
            break;
        case 'j':
            if (!opt_long("threads", 0, 1024, "an integer in [0, 1024]", &threads))
                return 2;
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

/* Text to tokenize: a file, or stdin. Bounded so a runaway pipe fails
 * cleanly rather than exhausting memory. */
#define TOKENIZE_TEXT_MAX ((size_t)1 << 30)

static int read_text(const char *path, char **ret, size_t *ret_len) {
    FILE *f = path ? fopen(path, "rb") : stdin;
    if (!f) {
        fprintf(stderr, "svdllm-engine: text '%s': cannot open: %s\n", path, strerror(errno));
        return -1;
    }
    size_t n = 0, cap = 1 << 16;
    char *buf = malloc(cap);
    int r = 0;
    for (size_t got; buf && (got = fread(buf + n, 1, cap - n, f)) > 0;) {
        n += got;
        if (n == cap) {
            char *b = cap >= TOKENIZE_TEXT_MAX ? NULL : realloc(buf, cap * 2);
            if (!b) {
                fprintf(stderr, "svdllm-engine: text '%s': %s\n", path ? path : "(stdin)",
                        cap >= TOKENIZE_TEXT_MAX ? "larger than 1 GiB" : "out of memory");
                r = -1;
                break;
            }
            buf = b;
            cap *= 2;
        }
    }
    if (r == 0 && !buf) {
        fprintf(stderr, "svdllm-engine: out of memory\n");
        r = -1;
    }
    if (r == 0 && ferror(f)) {
        fprintf(stderr, "svdllm-engine: text '%s': read error: %s\n", path ? path : "(stdin)", strerror(errno));
        r = -1;
    }
    if (path)
        fclose(f);
    if (r < 0) {
        free(buf);
        return r;
    }
    *ret = buf;
    *ret_len = n;
    return 0;
}

static int print_tokens_json(const struct tok *t, const char *tpath, size_t bytes, const int32_t *ids, size_t n) {
    json_t *jids = json_array(), *jpieces = json_array();
    int bad = !jids || !jpieces;
    for (size_t i = 0; i < n && !bad; i++) {
        const char *p;
        size_t pl;
        bad |= json_array_append_new(jids, json_integer(ids[i]));
        /* Every id the encoder emits has a piece; null would mean a bug. */
        bad |= json_array_append_new(jpieces, tok_piece_borrow(t, ids[i], &p, &pl) == 0 ? json_stringn(p, pl)
                                                                                        : json_null());
    }
    json_t *o = bad ? NULL : json_pack("{s:s, s:I, s:I, s:o, s:o}", "tokenizer", tpath, "bytes", (json_int_t)bytes,
                                       "tokens", (json_int_t)n, "ids", jids, "pieces", jpieces);
    if (!o) {
        if (bad) {
            json_decref(jids);
            json_decref(jpieces);
        }
        fprintf(stderr, "svdllm-engine: cannot format the tokens as JSON\n");
        return 1;
    }
    int r = json_dumpf(o, stdout, JSON_PRESERVE_ORDER | JSON_COMPACT);
    json_decref(o);
    if (r < 0 || putchar('\n') == EOF) {
        fprintf(stderr, "svdllm-engine: cannot write the output\n");
        return 1;
    }
    return 0;
}

static int cmd_tokenize(int argc, char **argv) {
    static const struct option opts[] = {
        {"tokenizer", required_argument, 0, 'k'}, {"model", required_argument, 0, 'm'},
        {"text", required_argument, 0, 't'}, {"no-bos", no_argument, 0, 'B'}, {"json", no_argument, 0, 'J'},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0},
    };
    const char *tokfile = NULL, *model = NULL, *text = NULL;
    int json = 0, bos = 1, c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'k': tokfile = optarg; break;
        case 'm': model = optarg; break;
        case 't': text = optarg; break;
        case 'B': bos = 0; break;
        case 'J': json = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!!tokfile == !!model) {
        fprintf(stderr, "svdllm-engine: tokenize needs exactly one of --tokenizer and --model\n");
        return 2;
    }
    if (optind < argc) {
        fprintf(stderr, "svdllm-engine: tokenize: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    char tpath[4096];
    if (model && snprintf(tpath, sizeof tpath, "%s/tokenizer.json", model) >= (int)sizeof tpath) {
        fprintf(stderr, "svdllm-engine: --model path too long\n");
        return 2;
    }
    if (tokfile)
        snprintf(tpath, sizeof tpath, "%s", tokfile);
    struct sv_err err = {0};
    struct tok *t = NULL;
    if (tok_new(&t, tpath, &err) < 0) {
        fprintf(stderr, "svdllm-engine: %s\n", err.msg);
        return 1;
    }
    char *buf = NULL;
    size_t len = 0;
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = 1;
    if (read_text(text, &buf, &len) < 0)
        goto out;
    if (tok_encode(t, buf, len, bos, &ids, &n, &err) < 0) {
        fprintf(stderr, "svdllm-engine: %s\n", err.msg);
        goto out;
    }
    if (json) {
        rc = print_tokens_json(t, tpath, len, ids, n);
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        printf(i ? " %d" : "%d", (int)ids[i]);
    if (putchar('\n') == EOF || fflush(stdout) == EOF) {
        fprintf(stderr, "svdllm-engine: cannot write the output\n");
        goto out;
    }
    rc = 0;
out:
    free(ids);
    free(buf);
    tok_free(t);
    return rc;
}

static int print_text(void *ctx, const char *text, size_t len) {
    *(int *)ctx = 1;   /* something is on stdout: end it with a newline even on failure */
    if (fwrite(text, 1, len, stdout) != len || fflush(stdout) == EOF)
        return -EIO;
    return 0;
}


static int cmd_generate(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"prompt", required_argument, 0, 'p'},
        {"max-tokens", required_argument, 0, 'n'}, {"temperature", required_argument, 0, 'T'},
        {"top-p", required_argument, 0, 'P'}, {"seed", required_argument, 0, 's'},
        {"no-bos", no_argument, 0, 'B'}, {"threads", required_argument, 0, 'j'},
        {"json", no_argument, 0, 'J'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0},
    };
    const char *model = NULL, *prompt = NULL;
    long maxt = 256, threads = 0;
    double temp = 0, top_p = 0.9;
    unsigned long long seed = 1;
    int json = 0, bos = 1, c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'p': prompt = optarg; break;
        case 'n':
            if (!opt_long("max-tokens", 1, 1 << 20, "an integer in [1, 1048576]", &maxt))
                return 2;
            break;
        case 'T':
            if (!opt_real("temperature", 0, 100, "a number in [0, 100]", &temp))
                return 2;
            break;
        case 'P':
            if (!opt_real("top-p", 0, 1, "a number in [0, 1]", &top_p))
                return 2;
            break;
        case 's': {
            char *end;
            errno = 0;
            seed = strtoull(optarg, &end, 10);
            if (errno || end == optarg || *end || seed == 0 || optarg[0] == '-') {
                fprintf(stderr, "svdllm-engine: --seed '%s' must be an integer in [1, 2^64)\n", optarg);
                return 2;
            }
            break;
        }
        case 'B': bos = 0; break;
        case 'j':
            if (!opt_long("threads", 0, 1024, "an integer in [0, 1024]", &threads))
                return 2;
            break;
        case 'J': json = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!model || !prompt) {
        fprintf(stderr, "svdllm-engine: generate needs --model and --prompt (which may be '')\n");
        return 2;
    }
    if (optind < argc) {
        fprintf(stderr, "svdllm-engine: generate: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    forward_threads_set((int)threads);
    struct gen_params gp = {.prompt = prompt, .prompt_len = strlen(prompt), .add_bos = bos, .max_tokens = (int)maxt,
                            .temperature = temp, .top_p = top_p, .seed = seed};
    struct gen_result res;
    struct sv_err err = {0};
    int printed = 0;
    if (gen_run(model, &gp, json ? NULL : print_text, &printed, NULL, NULL, &res, &err) < 0) {
        if (printed)
            putchar('\n');
        fprintf(stderr, "svdllm-engine: %s\n", err.msg);
        return 1;
    }
    int rc = 0;
    if (json) {
        json_t *jids = json_array();
        for (size_t i = 0; jids && i < res.n_ids; i++)
            json_array_append_new(jids, json_integer(res.ids[i]));
        json_t *o = jids ? json_pack("{s:s, s:s%, s:o, s:I, s:I, s:s, s:f, s:f, s:I, s:f, s:f, s:f}", "model", model,
                                     "text", res.text, res.text_len, "ids", jids, "prompt_tokens",
                                     (json_int_t)res.n_prompt, "generated_tokens", (json_int_t)(res.n_ids - res.n_prompt),
                                     "finish", gen_finish_name(res.finish), "temperature", temp, "top_p", top_p,
                                     "seed", (json_int_t)seed, "prompt_seconds", res.prompt_seconds, "seconds",
                                     res.gen_seconds, "tokens_per_s", res.tokens_per_s)
                         : NULL;
        char *out = o ? json_dumps(o, JSON_PRESERVE_ORDER | JSON_COMPACT | JSON_REAL_PRECISION(12)) : NULL;
        json_decref(o);
        if (!out || puts(out) == EOF) {
            fprintf(stderr, "svdllm-engine: cannot format the result as JSON\n");
            rc = 1;
        }
        free(out);
    } else if (putchar('\n') == EOF || fflush(stdout) == EOF) {
        fprintf(stderr, "svdllm-engine: cannot write the output\n");
        rc = 1;
    }
    gen_result_free(&res);
    return rc;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "eval") == 0)
        return cmd_eval(argc - 1, argv + 1);
    if (strcmp(argv[1], "tokenize") == 0)
        return cmd_tokenize(argc - 1, argv + 1);
    if (strcmp(argv[1], "generate") == 0)
        return cmd_generate(argc - 1, argv + 1);
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("svdllm-engine %s\n", SV_VERSION);
        return 0;
    }
    fprintf(stderr, "svdllm-engine: unknown command '%s' (try --help)\n", argv[1]);
    return 2;
}
