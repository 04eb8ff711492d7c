/* Compression jobs through the engine API: svdllm beats svd on held-out text,
 * the factored output equals the dense one, an interrupted job resumes to
 * byte-identical files, and changed inputs or bad parameters are refused. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "compress.h"
#include "forward.h"
#include "harness.h"
#include "ppl.h"
#include "sha256.h"

static char tmp[64];

/* An in-memory checkpoint table standing in for the daemon's SQLite store. */
struct fake_store {
    int n;
    struct compress_checkpoint ck[64];
    int done[64];
    int fail_at; /* layer_done of this layer fails (a crash before the commit); -1: never */
};

static int fake_lookup(void *ctx, int layer, struct compress_checkpoint *ck) {
    struct fake_store *s = ctx;
    if (!s->done[layer])
        return 0;
    *ck = s->ck[layer];
    return 1;
}

static int fake_done(void *ctx, int layer, const struct compress_checkpoint *ck, struct sv_err *err) {
    struct fake_store *s = ctx;
    if (layer == s->fail_at)
        return sv_err_set(err, -EIO, "simulated crash before committing layer %d", layer);
    s->ck[layer] = *ck;
    s->done[layer] = 1;
    return 0;
}

static void params(struct compress_params *p, const char *model, const char *out, const char *work,
                   enum compress_method m, double ratio) {
    memset(p, 0, sizeof *p);
    snprintf(p->model_dir, sizeof p->model_dir, "%s", model);
    snprintf(p->out_dir, sizeof p->out_dir, "%s/%s", tmp, out);
    snprintf(p->work_dir, sizeof p->work_dir, "%s/%s", tmp, work);
    snprintf(p->calib_path, sizeof p->calib_path, "%s/calib.txt", tmp);
    snprintf(p->eval_path, sizeof p->eval_path, "%s/eval.txt", tmp);
    p->method = m;
    p->ratio = ratio;
    p->nsamples = 32;
    p->seqlen = 128;
    p->eval_max_windows = 120;
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", p->work_dir);
    SV_ASSERT_EQ(system(cmd), 0);
}

static int run(const struct compress_params *p, struct fake_store *s, struct compress_result *res, struct sv_err *err) {
    struct compress_hooks h = {.ctx = s, .layer_lookup = fake_lookup, .layer_done = fake_done};
    return compress_run(p, s ? &h : NULL, res, err);
}

static void file_hash(const char *dir, const char *name, char hex[65]) {
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    SV_ASSERT_EQ(sha256_file(path, hex, NULL, NULL), 0);
}

int main(void) {
    forward_threads_set(0);
    strcpy(tmp, "/tmp/svdllm-test-compress-XXXXXX");
    SV_CHECK(mkdtemp(tmp) != NULL);
    char cmd[600];
    /* Calibration: the first 300 kB of the TinyStories validation text;
     * evaluation: the next 200 kB (held out). */
    snprintf(cmd, sizeof cmd,
             "head -c 300000 tests/data/text/tinystories-valid-head.txt > %s/calib.txt && "
             "tail -c +300001 tests/data/text/tinystories-valid-head.txt | head -c 200000 > %s/eval.txt",
             tmp, tmp);
    SV_ASSERT_EQ(system(cmd), 0);
    struct compress_params p;
    struct compress_result res;
    struct sv_err err = {0};

    /* Both bundled models; the asvd/awsvd rows of the larger one only. */
    const char *models[2] = {"tests/data/tinystories-656K", "tests/data/stories260K-hf"};
    const double ratios[] = {0.2, 0.4, 0.6};
    for (int mi = 0; mi < 2; mi++) {
        printf("%s, calibration 32 x 128 tokens, eval 120 windows of 128 held-out tokens\n", models[mi]);
        printf("ratio  method  ppl_before  ppl_after  params_after\n");
        for (int i = 0; i < 3; i++) {
            double ppl[METHOD_COUNT];
            /* The activation-scaled methods only at 0.4, to keep the suite short. */
            int nm = (mi == 0 && ratios[i] == 0.4) ? METHOD_COUNT : METHOD_SVDLLM + 1;
            for (int m = 0; m < nm; m++) {
                char out[64], work[64];
                snprintf(out, sizeof out, "out-%d-%d-%d", mi, m, i);
                snprintf(work, sizeof work, "work-%d-%d-%d", mi, m, i);
                params(&p, models[mi], out, work, (enum compress_method)m, ratios[i]);
                int r = run(&p, NULL, &res, &err);
                SV_ASSERT_EQ(r, 0);
                if (r < 0)
                    fprintf(stderr, "%s\n", err.msg);
                ppl[m] = res.ppl_after;
                printf("%.1f    %-6s  %10.4f %10.4f  %llu / %llu\n", ratios[i], compress_method_name(m),
                       res.ppl_before, res.ppl_after, (unsigned long long)res.params_after,
                       (unsigned long long)res.params_before);
                SV_CHECK(res.ppl_after > res.ppl_before);
            }
            SV_CHECK(ppl[METHOD_SVDLLM] < ppl[METHOD_SVD]);
            if (nm == METHOD_COUNT) { /* svdllm < asvd, awsvd < svd */
                SV_CHECK(ppl[METHOD_SVDLLM] < ppl[METHOD_ASVD] && ppl[METHOD_ASVD] < ppl[METHOD_SVD]);
                SV_CHECK(ppl[METHOD_SVDLLM] < ppl[METHOD_AWSVD] && ppl[METHOD_AWSVD] < ppl[METHOD_SVD]);
            }
        }
    }
    const char *model = models[0];

    /* Dense output: same perplexity as the factored one (1e-4 relative: the
     * only difference is the f32 rounding of A B). */
    params(&p, model, "dense", "work-dense", METHOD_SVDLLM, 0.4);
    p.dense = 1;
    SV_ASSERT_EQ(run(&p, NULL, &res, &err), 0);
    struct ppl_result pf, pd;
    char fdir[300];
    snprintf(fdir, sizeof fdir, "%s/out-0-1-1", tmp);
    SV_ASSERT_EQ(ppl_eval(fdir, p.eval_path, 128, 120, NULL, NULL, &pf, &err), 0);
    SV_ASSERT_EQ(ppl_eval(p.out_dir, p.eval_path, 128, 120, NULL, NULL, &pd, &err), 0);
    printf("factored ppl %.6f, dense ppl %.6f\n", pf.ppl, pd.ppl);
    SV_ASSERT_NEAR_REL(pd.ppl, pf.ppl, 1e-4);

    /* Resume: a crash before layer 1's commit, then a rerun, gives the same
     * bytes as the uninterrupted run (out-0-1-1, same parameters). */
    struct fake_store s1 = {.fail_at = 1};
    params(&p, model, "resumed", "work-resume", METHOD_SVDLLM, 0.4);
    SV_ASSERT_EQ(run(&p, &s1, &res, &err), -EIO);
    SV_ASSERT_STR_CONTAINS(err.msg, "simulated crash");
    SV_ASSERT_EQ(s1.done[0], 1);
    s1.fail_at = -1;
    SV_ASSERT_EQ(run(&p, &s1, &res, &err), 0);
    SV_ASSERT_EQ(res.layers_resumed, 1);
    const char *files[] = {"model.safetensors", "config.json", "tokenizer.json"};
    for (size_t i = 0; i < 3; i++) {
        char a[65], b[65];
        file_hash(fdir, files[i], a);
        file_hash(p.out_dir, files[i], b);
        SV_ASSERT_STR_CONTAINS(a, b);
    }
    /* A corrupted checkpoint is detected, not trusted. */
    char lpath[PATH_MAX + 32];
    snprintf(lpath, sizeof lpath, "%s/layer-0.safetensors", p.work_dir);
    FILE *f = fopen(lpath, "r+b");
    fseek(f, -4, SEEK_END);
    fputc('X', f);
    fclose(f);
    p.overwrite = 1;
    SV_ASSERT_EQ(run(&p, &s1, &res, &err), -EIO);
    SV_ASSERT_STR_CONTAINS(err.msg, "does not match its recorded size and sha256");

    /* Changed inputs in the same work directory are refused. */
    params(&p, model, "changed", "work-resume", METHOD_SVDLLM, 0.5);
    SV_ASSERT_EQ(run(&p, &s1, &res, &err), -ESTALE);
    SV_ASSERT_STR_CONTAINS(err.msg, "inputs changed");

    /* Bad parameters. */
    params(&p, model, "bad", "work-bad", METHOD_SVDLLM, 1.0);
    SV_ASSERT_EQ(compress_params_check(&p, &err), -EINVAL);
    SV_ASSERT_STR_CONTAINS(err.msg, "ratio 1 is outside (0, 1)");
    p.ratio = 0.4;
    snprintf(p.calib_path, sizeof p.calib_path, "/nonexistent/calib.txt");
    SV_ASSERT_EQ(compress_params_check(&p, &err), -ENOENT);
    SV_ASSERT_STR_CONTAINS(err.msg, "/nonexistent/calib.txt");
    params(&p, model, "out-0-1-1", "work-bad", METHOD_SVDLLM, 0.4);
    SV_ASSERT_EQ(compress_params_check(&p, &err), -EEXIST);
    SV_ASSERT_STR_CONTAINS(err.msg, "exists");
    params(&p, model, "big", "work-bad", METHOD_SVDLLM, 0.4);
    p.nsamples = 100000;
    SV_ASSERT_EQ(run(&p, NULL, &res, &err), -EINVAL);
    SV_ASSERT_STR_CONTAINS(err.msg, "fewer than nsamples");

    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    SV_ASSERT_EQ(system(cmd), 0);
    return sv_test_result("compress");
}
