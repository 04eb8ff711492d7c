/* Qwen2 and Qwen3 (and LLaMA with GQA) against an independent forward pass.
 *
 * The models are regenerated here by svdllm-genmodel (argv[1]) with fixed
 * arguments and seeds; their bytes are checked against the sha256 recorded
 * when tools/ref_forward.py (numpy, written from transformers' modelling math)
 * produced the committed logits in tests/data/families/ (see its README.md).
 * The engine's logits must match those to a relative Frobenius error of 1e-5
 * (the engine runs in f32 on bf16 weights, the reference in f64 on the same
 * values; we see about 1e-7). Removing the bias (Qwen2) or q_norm / k_norm
 * (Qwen3) must move the logits far beyond that, so the comparison can fail.
 *
 * Then each Qwen model is compressed with every method; the output must load
 * back, evaluate to the perplexity the job reported, and hold each factored
 * module's bias, byte for byte the original's, as "<module>.1.bias" next to
 * its factor pair. Config reading: Qwen's sliding_window only with
 * use_sliding_window, Mistral's always, attention_bias refused outside Qwen2.
 * Last, --method auto on a 10-layer model tries only its first 2 layers. */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "compress.h"
#include "forward.h"
#include "engine_harness.h"
#include "harness.h"
#include "model.h"
#include "ppl.h"
#include "sha256.h"
#include "st.h"

#define T_REF 32
#define COMMON "--hidden 64 --layers 2 --heads 4 --kv-heads 2 --ffn 160 --vocab 256 --max-pos 512"

static char tmp[64];
static const char *genmodel;

struct family {
    const char *name, *args, *sha256;
};

/* The generator arguments and the sha256 of the model.safetensors that
 * tools/ref_forward.py read (tests/data/families/README.md). */
static const struct family families[] = {
    {"llama", "--family llama " COMMON " --seed 1", "77e1dde748054139b6b15032edd911bcf63ca043b3a692a324608bc1544dc746"},
    {"qwen2", "--family qwen2 " COMMON " --tie-embeddings --seed 2",
     "52eae1b228a5839ad2401f93e480dea27158b84b40038c1f4aaeb620b150cd0b"},
    {"qwen3", "--family qwen3 " COMMON " --head-dim 32 --seed 3",
     "9dde9a42060d1d48a25b7eeccefe620929e28756e1204a6d3748b50ca9c33eb7"},
};

static void *read_array(const char *path, size_t es, size_t n) {
    FILE *f = fopen(path, "rb");
    void *buf = malloc(n * es);
    SV_CHECK(f && buf);
    if (!f || !buf)
        exit(1);
    SV_ASSERT_EQ(fread(buf, es, n, f), n);
    fclose(f);
    return buf;
}

static void gen(const struct family *f, char *dir, size_t n) {
    snprintf(dir, n, "%s/%s", tmp, f->name);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "'%s' --out '%s' %s", genmodel, dir, f->args);
    SV_ASSERT_EQ(system(cmd), 0);
}

/* What to leave out of the forward pass, to show the reference depends on it. */
enum drop { DROP_NONE, DROP_BIAS, DROP_QK_NORM };

/* Relative Frobenius error of the engine's logits on the reference ids. */
static double logits_error(const char *dir, const char *name, enum drop drop) {
    char ids_path[256], ref_path[256];
    snprintf(ids_path, sizeof ids_path, "tests/data/families/%s.ids.i32", name);
    snprintf(ref_path, sizeof ref_path, "tests/data/families/%s.logits.f32", name);
    struct model *m = NULL;
    struct sv_err err = {0};
    int r = model_open(&m, dir, &err);
    SV_ASSERT_EQ(r, 0);
    if (r < 0) {
        fprintf(stderr, "%s\n", err.msg);
        return INFINITY;
    }
    const struct config *c = &m->cfg;
    int32_t *ids = read_array(ids_path, sizeof(int32_t), T_REF);
    float *ref = read_array(ref_path, sizeof(float), (size_t)T_REF * c->vocab);
    float *x = malloc((size_t)T_REF * c->hidden * sizeof *x);
    float *logits = malloc((size_t)T_REF * c->vocab * sizeof *logits);
    SV_ASSERT_EQ(model_embed(m, ids, T_REF, x, &err), 0);
    for (int l = 0; l < c->n_layers; l++) {
        struct layer_w lw;
        SV_ASSERT_EQ(model_layer_load(m, l, &lw, &err), 0);
        struct layer_w run = lw;
        if (drop == DROP_BIAS)
            for (int p = 0; p < PROJ_COUNT; p++)
                run.bias[p] = NULL;
        if (drop == DROP_QK_NORM)
            run.q_norm = run.k_norm = NULL;
        SV_ASSERT_EQ(forward_layer(c, &run, x, 1, T_REF, NULL, &err), 0);
        model_layer_free(&lw);
    }
    struct head_w h;
    SV_ASSERT_EQ(model_head_load(m, &h, &err), 0);
    SV_ASSERT_EQ(forward_logits(c, &h, x, T_REF, logits, &err), 0);
    model_head_free(&h);
    double num = 0, den = 0;
    for (size_t i = 0; i < (size_t)T_REF * c->vocab; i++) {
        double d = (double)logits[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    free(ids);
    free(ref);
    free(x);
    free(logits);
    model_free(m);
    return sqrt(num / den);
}

static void test_reference_logits(void) {
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++) {
        const struct family *f = &families[i];
        char dir[128], path[256], hex[65];
        uint64_t size;
        gen(f, dir, sizeof dir);
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        SV_ASSERT_EQ(sha256_file(path, hex, &size, NULL), 0);
        if (strcmp(hex, f->sha256) != 0)
            fprintf(stderr, "%s: model.safetensors sha256 %s, the reference was made from %s\n", f->name, hex,
                    f->sha256);
        SV_CHECK(strcmp(hex, f->sha256) == 0);
        double e = logits_error(dir, f->name, DROP_NONE);
        printf("%s: logits rel. error %.3g\n", f->name, e);
        SV_CHECK(e <= 1e-5);
        if (strcmp(f->name, "qwen2") == 0) {
            double eb = logits_error(dir, f->name, DROP_BIAS);
            printf("qwen2: without the q/k/v bias %.3g\n", eb);
            SV_CHECK(eb > 1e-2);
        }
        if (strcmp(f->name, "qwen3") == 0) {
            double en = logits_error(dir, f->name, DROP_QK_NORM);
            printf("qwen3: without q_norm/k_norm %.3g\n", en);
            SV_CHECK(en > 1e-2);
        }
    }
}

/* Copies model dir src to dst with config.json edited by set (key, JSON value) pairs. */
static void variant(const char *src, const char *dst, const char *const *kv) {
    char cmd[512], path[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s' && cp '%s/model.safetensors' '%s/'", dst, dst, src, dst);
    SV_ASSERT_EQ(system(cmd), 0);
    snprintf(path, sizeof path, "%s/config.json", src);
    json_t *root = json_load_file(path, 0, NULL);
    SV_CHECK(root != NULL);
    for (; kv[0]; kv += 2)
        json_object_set_new(root, kv[0], json_loads(kv[1], JSON_DECODE_ANY, NULL));
    snprintf(path, sizeof path, "%s/config.json", dst);
    SV_ASSERT_EQ(json_dump_file(root, path, JSON_INDENT(2)), 0);
    json_decref(root);
}

/* n ids in [0, vocab) from a fixed LCG, as an .i32 corpus. */
static void write_ids(const char *path, size_t n, int vocab, uint32_t seed) {
    FILE *f = fopen(path, "wb");
    SV_CHECK(f != NULL);
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        int32_t id = (int32_t)((seed >> 8) % (uint32_t)vocab);
        SV_ASSERT_EQ(fwrite(&id, sizeof id, 1, f), 1);
    }
    fclose(f);
}

static void test_config_rules(void) {
    char q2[128], q3[128], ll[128], dst[160], ids[160];
    struct sv_err err = {0};
    struct model *m = NULL;
    struct ppl_result pr;
    snprintf(q2, sizeof q2, "%s/qwen2", tmp);
    snprintf(q3, sizeof q3, "%s/qwen3", tmp);
    snprintf(ll, sizeof ll, "%s/llama", tmp);
    snprintf(ids, sizeof ids, "%s/eval.i32", tmp);

    /* The generated Qwen configs: bias and q/k norm decided by model_type;
     * Qwen2's sliding_window 4096 is not in effect (use_sliding_window false). */
    SV_ASSERT_EQ(model_open(&m, q2, &err), 0);
    SV_CHECK(m && m->cfg.bias[PROJ_Q] && m->cfg.bias[PROJ_K] && m->cfg.bias[PROJ_V] && !m->cfg.bias[PROJ_O] &&
             !m->cfg.qk_norm && m->cfg.sliding_window == 0 && m->cfg.tie_embeddings);
    model_free(m);
    m = NULL;
    SV_ASSERT_EQ(model_open(&m, q3, &err), 0);
    SV_CHECK(m && !m->cfg.bias[PROJ_Q] && m->cfg.qk_norm && m->cfg.head_dim == 32 && m->cfg.hidden == 64 &&
             m->cfg.n_heads == 4);
    model_free(m);
    m = NULL;

    /* transformers' Qwen2 ignores attention_bias (its q/k/v bias is fixed). */
    snprintf(dst, sizeof dst, "%s/v-q2-ab", tmp);
    variant(q2, dst, (const char *const[]){"attention_bias", "false", NULL});
    SV_ASSERT_EQ(model_open(&m, dst, &err), 0);
    model_free(m);
    m = NULL;
    /* Qwen3 / LLaMA attention_bias would add an o_proj bias: refused by name. */
    snprintf(dst, sizeof dst, "%s/v-q3-ab", tmp);
    variant(q3, dst, (const char *const[]){"attention_bias", "true", NULL});
    SV_ASSERT_EQ(model_open(&m, dst, &err), -ENOTSUP);
    SV_ASSERT_STR_CONTAINS(err.msg, "'attention_bias' = true is not supported for model_type 'qwen3'");
    snprintf(dst, sizeof dst, "%s/v-q2-mlp", tmp);
    variant(q2, dst, (const char *const[]){"mlp_bias", "true", NULL});
    SV_ASSERT_EQ(model_open(&m, dst, &err), -ENOTSUP);
    SV_ASSERT_STR_CONTAINS(err.msg, "'mlp_bias'");
    /* A Qwen2 config over a model without biases: the missing tensor by name. */
    snprintf(dst, sizeof dst, "%s/v-ll-as-q2", tmp);
    variant(ll, dst,
            (const char *const[]){"model_type", "\"qwen2\"", "architectures", "[\"Qwen2ForCausalLM\"]", NULL});
    SV_ASSERT_EQ(model_open(&m, dst, &err), -ENOENT);
    SV_ASSERT_STR_CONTAINS(err.msg, "'model.layers.0.self_attn.q_proj.bias' is missing");
    /* And a Qwen3 one without q_norm. */
    snprintf(dst, sizeof dst, "%s/v-ll-as-q3", tmp);
    variant(ll, dst,
            (const char *const[]){"model_type", "\"qwen3\"", "architectures", "[\"Qwen3ForCausalLM\"]", NULL});
    SV_ASSERT_EQ(model_open(&m, dst, &err), -ENOENT);
    SV_ASSERT_STR_CONTAINS(err.msg, "'model.layers.0.self_attn.q_norm.weight' is missing");
    snprintf(dst, sizeof dst, "%s/v-q3-arch", tmp);
    variant(q3, dst, (const char *const[]){"architectures", "[\"Qwen3MoeForCausalLM\"]", NULL});
    SV_ASSERT_EQ(model_open(&m, dst, &err), -ENOTSUP);
    SV_ASSERT_STR_CONTAINS(err.msg, "architecture 'Qwen3MoeForCausalLM' is not supported");

    /* Sliding windows in effect: evaluating windows longer is refused, up to it runs. */
    write_ids(ids, 4096, 256, 7);
    const char *const q2sw[] = {"use_sliding_window", "true", "sliding_window", "16", NULL};
    const char *const mistral[] = {"model_type", "\"mistral\"", "architectures", "[\"MistralForCausalLM\"]",
                                   "sliding_window", "16", NULL};
    const char *const q3off[] = {"use_sliding_window", "false", "sliding_window", "16", NULL};
    struct {
        const char *src, *name;
        const char *const *kv;
        int window;
    } sw[] = {{q2, "v-q2-sw", q2sw, 16}, {ll, "v-mistral-sw", mistral, 16}, {q3, "v-q3-swoff", q3off, 0}};
    for (size_t i = 0; i < sizeof sw / sizeof sw[0]; i++) {
        snprintf(dst, sizeof dst, "%s/%s", tmp, sw[i].name);
        variant(sw[i].src, dst, sw[i].kv);
        SV_ASSERT_EQ(model_open(&m, dst, &err), 0);
        SV_ASSERT_EQ(m ? m->cfg.sliding_window : -1, sw[i].window);
        model_free(m);
        m = NULL;
        memset(&err, 0, sizeof err);
        int r = ppl_eval(dst, ids, 32, 2, NULL, NULL, &pr, &err);
        if (sw[i].window) {
            SV_ASSERT_EQ(r, -ENOTSUP);
            SV_ASSERT_STR_CONTAINS(err.msg, "sequence length 32 exceeds the model's sliding_window 16");
            SV_ASSERT_EQ(ppl_eval(dst, ids, 16, 2, NULL, NULL, &pr, &err), 0);
        } else {
            SV_ASSERT_EQ(r, 0);
        }
    }
}

/* Checks the compressed output dir against the source model dir. */
static void check_output(const char *src_dir, const char *out, int dense, const char *what) {
    char path[PATH_MAX + 32], name[ST_MAX_NAME];
    struct st_model *src = NULL, *dst = NULL;
    struct sv_err err = {0};
    struct model *m = NULL;
    SV_ASSERT_EQ(model_open(&m, out, &err), 0); /* every bias / norm tensor where model.c expects it */
    if (!m) {
        fprintf(stderr, "%s: %s\n", what, err.msg);
        return;
    }
    snprintf(path, sizeof path, "%s/model.safetensors", src_dir);
    SV_ASSERT_EQ(st_open_file(&src, path, &err), 0);
    snprintf(path, sizeof path, "%s/model.safetensors", out);
    SV_ASSERT_EQ(st_open_file(&dst, path, &err), 0);
    int factored = 0, biases = 0;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int p = 0; p < PROJ_COUNT; p++) {
            int k = m->cfg.rank[l][p];
            factored += k > 0;
            SV_CHECK(!dense || k == 0);
            char dense_bias[ST_MAX_NAME];
            model_bias_name(l, p, 0, dense_bias, sizeof dense_bias);
            model_bias_name(l, p, k, name, sizeof name);
            const struct st_tensor *sb = st_find(src, dense_bias), *ob = st_find(dst, name);
            SV_CHECK((sb != NULL) == (ob != NULL));
            if (k > 0)
                SV_CHECK(st_find(dst, dense_bias) == NULL); /* moved to .1.bias, not duplicated */
            if (sb && ob) {
                biases++;
                SV_CHECK(sb->nbytes == ob->nbytes && sb->dtype == ob->dtype &&
                         memcmp(sb->data, ob->data, sb->nbytes) == 0);
            }
        }
    SV_CHECK(dense || factored > 0);
    SV_CHECK(m->cfg.qk_norm ? st_find(dst, "model.layers.1.self_attn.k_norm.weight") != NULL : 1);
    SV_CHECK(m->cfg.bias[PROJ_Q] ? biases == 3 * m->cfg.n_layers : biases == 0);
    printf("%s: %d modules factored, %d biases kept\n", what, factored, biases);
    st_free(src);
    st_free(dst);
    model_free(m);
}

/* Method m at ratio 0.4 on model_dir, 32 x 64 calibration ids; output
 * TMP/out-NAME, work directory TMP/work-NAME (created). */
static void job_params(struct compress_params *p, const char *model_dir, const char *name, const char *calib,
                       const char *eval, enum compress_method m) {
    char out[96], work[96];
    snprintf(out, sizeof out, "out-%s", name);
    snprintf(work, sizeof work, "work-%s", name);
    protocol_params(p, tmp, model_dir, out, work, m, 0.4);
    snprintf(p->calib_path, sizeof p->calib_path, "%s", calib);
    snprintf(p->eval_path, sizeof p->eval_path, "%s", eval);
    p->seqlen = 64;
    p->eval_max_windows = 0;
}

static void test_compress_families(void) {
    char calib[128], eval[128];
    snprintf(calib, sizeof calib, "%s/calib.i32", tmp);
    snprintf(eval, sizeof eval, "%s/eval.i32", tmp);
    write_ids(calib, 64 * 64, 256, 11);
    write_ids(eval, 4096, 256, 7);
    const char *fams[] = {"qwen2", "qwen3"};
    for (int fi = 0; fi < 2; fi++)
        for (int method = 0; method <= METHOD_COUNT; method++) {
            /* METHOD_COUNT: svd again, with a dense output (W' back in place). */
            int dense = method == METHOD_COUNT;
            enum compress_method mth = dense ? METHOD_SVD : (enum compress_method)method;
            struct compress_params p;
            char mdir[128], name[64], what[64];
            snprintf(mdir, sizeof mdir, "%s/%s", tmp, fams[fi]);
            snprintf(name, sizeof name, "%s-%d", fams[fi], method);
            job_params(&p, mdir, name, calib, eval, mth);
            p.dense = dense;
            snprintf(what, sizeof what, "%s %s%s", fams[fi], params_method_name(mth), dense ? " dense" : "");
            struct compress_result res;
            struct sv_err err = {0};
            int r = compress_run(&p, NULL, &res, &err);
            SV_ASSERT_EQ(r, 0);
            if (r < 0) {
                fprintf(stderr, "%s: %s\n", what, err.msg);
                continue;
            }
            SV_CHECK(isfinite(res.ppl_before) && isfinite(res.ppl_after) && res.ppl_after > 1);
            SV_CHECK(res.params_after < res.params_before);
            /* The output loads back and evaluates to what the job reported. */
            struct ppl_result pr;
            SV_ASSERT_EQ(ppl_eval(p.out_dir, eval, 64, 0, NULL, NULL, &pr, &err), 0);
            SV_ASSERT_NEAR_REL(pr.ppl, res.ppl_after, 1e-9);
            printf("%s: ppl %.3f -> %.3f, params %llu -> %llu\n", what, res.ppl_before, res.ppl_after,
                   (unsigned long long)res.params_before, (unsigned long long)res.params_after);
            check_output(p.model_dir, p.out_dir, dense, what);
        }
}

/* --method auto on a model deeper than 8 layers (autosel.c): its trials
 * cover only the first ceil(L / 8) layers (2 of 10 here; the bundled models
 * have 5 and 8, where they cover all). compression.json says so, the
 * method run is the candidate with the lowest held-out loss, and the job
 * itself compresses every layer. */
static void test_auto_deep(void) {
    char dir[128], calib[128], eval[128], cmd[PATH_MAX + 64];
    snprintf(dir, sizeof dir, "%s/deep", tmp);
    snprintf(calib, sizeof calib, "%s/calib.i32", tmp);
    snprintf(eval, sizeof eval, "%s/eval.i32", tmp);
    snprintf(cmd, sizeof cmd,
             "'%s' --out '%s' --hidden 64 --layers 10 --heads 4 --kv-heads 2 --ffn 160 --vocab 256 --max-pos 512 "
             "--seed 31 --spectrum-decay 0.5",
             genmodel, dir);
    SV_ASSERT_EQ(system(cmd), 0);
    struct compress_params p;
    job_params(&p, dir, "deep-auto", calib, eval, METHOD_AUTO);
    struct compress_result res;
    struct sv_err err = {0};
    int r = compress_run(&p, NULL, &res, &err);
    SV_ASSERT_EQ(r, 0);
    if (r < 0) {
        fprintf(stderr, "deep auto: %s\n", err.msg);
        return;
    }
    snprintf(cmd, sizeof cmd, "%s/compression.json", p.out_dir);
    json_t *rep = json_load_file(cmd, 0, NULL), *ch = json_object_get(rep, "method_choice"), *e;
    SV_ASSERT_EQ(json_integer_value(json_object_get(ch, "layers_tried")), 2);
    const char *chosen = json_string_value(json_object_get(ch, "chosen")), *best = NULL;
    double lbest = INFINITY;
    size_t i;
    json_array_foreach(json_object_get(ch, "candidates"), i, e) {
        double l = json_number_value(json_object_get(e, "heldout_loss"));
        SV_CHECK(isfinite(l) && l > 0);
        if (l < lbest)
            lbest = l, best = json_string_value(json_object_get(e, "name"));
    }
    SV_ASSERT_EQ(json_array_size(json_object_get(ch, "candidates")), 5);
    SV_CHECK(chosen && best && !strcmp(chosen, best));
    const char *ran = json_string_value(json_object_get(rep, "method"));
    SV_CHECK(ran && chosen && !strcmp(ran, chosen));
    struct model *m = NULL; /* every layer compressed, not only the tried ones */
    SV_ASSERT_EQ(model_open(&m, p.out_dir, &err), 0);
    int layers_factored = 0;
    for (int l = 0; m && l < m->cfg.n_layers; l++) {
        int any = 0;
        for (int q = 0; q < PROJ_COUNT; q++)
            any |= m->cfg.rank[l][q] > 0;
        layers_factored += any;
    }
    SV_ASSERT_EQ(layers_factored, 10);
    model_free(m);
    SV_CHECK(res.params_after <= 0.6 * (double)res.params_before + 0.5);
    struct ppl_result pr;
    SV_ASSERT_EQ(ppl_eval(p.out_dir, eval, 64, 0, NULL, NULL, &pr, &err), 0);
    SV_ASSERT_NEAR_REL(pr.ppl, res.ppl_after, 1e-9);
    printf("deep (10 layers) auto: tried %lld layers, ran %s (held-out %.4f), ppl %.3f -> %.3f\n",
           (long long)json_integer_value(json_object_get(ch, "layers_tried")), ran ? ran : "?", lbest,
           res.ppl_before, res.ppl_after);
    json_decref(rep);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: test_families PATH-TO-svdllm-genmodel\n");
        return 2;
    }
    genmodel = argv[1];
    forward_threads_set(0);
    snprintf(tmp, sizeof tmp, "/tmp/svdllm-families-XXXXXX");
    if (!mkdtemp(tmp))
        return 1;
    test_reference_logits();
    test_config_rules();
    test_compress_families();
    test_auto_deep();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd) != 0)
        return 1;
    return sv_test_result("families");
}
