/* config.json: accepted LLaMA variants and every refused field, by message. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "harness.h"

static char dir[64];

static int load_text(const char *json, struct config *c, struct sv_err *err) {
    char path[128];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    fputs(json, f);
    fclose(f);
    return config_load(c, path, err);
}

#define BASE "\"model_type\": \"llama\", \"hidden_size\": 64, \"intermediate_size\": 172, \"num_hidden_layers\": 2, " \
             "\"num_attention_heads\": 8, \"vocab_size\": 512"

static void expect_fail(const char *json, int code, const char *needle) {
    struct config c;
    struct sv_err err = {0};
    int r = load_text(json, &c, &err);
    SV_ASSERT_EQ(r, code);
    SV_ASSERT_STR_CONTAINS(err.msg, needle);
    if (r == 0)
        config_free(&c);
}

/* The test's own RoPE frequencies, written from the descriptions of
 * transformers' rope_init functions (not from config.c): theta_i =
 * base^(-2i/d); linear divides by factor; dynamic NTK replaces the base by
 * base (factor L / L0 - (factor - 1))^(d / (d - 2)) when L > L0; llama3 keeps
 * wavelengths below L_orig / high, stretches those above L_orig / low by
 * factor and blends linearly in L_orig / wavelength between. */
static double ref_freq(const char *type, double base, int d, int i, double factor, double lo, double hi,
                       double l_orig, int seq_len, int max_pos) {
    if (strcmp(type, "dynamic") == 0 && seq_len > max_pos)
        base = base * pow(factor * seq_len / max_pos - (factor - 1), d / (d - 2.0));
    double theta = 1.0 / pow(base, (2.0 * i) / d);
    if (strcmp(type, "linear") == 0)
        return theta / factor;
    if (strcmp(type, "llama3") == 0) {
        double wl = 2 * 3.14159265358979323846 / theta;
        if (wl < l_orig / hi)
            return theta;
        if (wl > l_orig / lo)
            return theta / factor;
        double s = (l_orig / wl - lo) / (hi - lo);
        return s * theta + (1 - s) * theta / factor;
    }
    return theta;
}

static void check_rope(const char *scaling, const char *type, double factor, double lo, double hi, int l_orig,
                       int seq_len) {
    char json[512];
    snprintf(json, sizeof json,
             "{\"model_type\": \"llama\", \"hidden_size\": 4096, \"intermediate_size\": 14336, "
             "\"num_hidden_layers\": 1, \"num_attention_heads\": 32, \"vocab_size\": 128256, "
             "\"rope_theta\": 500000.0, \"max_position_embeddings\": 8192, \"rope_scaling\": %s}", scaling);
    struct config c;
    struct sv_err err = {0};
    SV_ASSERT_EQ(load_text(json, &c, &err), 0);
    if (err.msg[0])
        fprintf(stderr, "  %s\n", err.msg);
    double inv[64], worst = 0;
    config_rope_inv_freq(&c, seq_len, inv);
    int changed = 0;
    for (int i = 0; i < 64; i++) {
        double want = ref_freq(type, 500000.0, 128, i, factor, lo, hi, l_orig, seq_len, 8192);
        double e = fabs(inv[i] - want) / want;
        worst = e > worst ? e : worst;
        changed += fabs(inv[i] - pow(500000.0, -i / 64.0)) > 1e-12 * inv[i];
    }
    printf("  rope %-7s seq %5d: %2d of 64 frequencies scaled, max rel diff vs reference %.1e\n", type, seq_len,
           changed, worst);
    SV_CHECK(worst < 1e-13);
    if (strcmp(type, "default") == 0 || (strcmp(type, "dynamic") == 0 && seq_len <= 8192))
        SV_ASSERT_EQ(changed, 0);
    else
        SV_CHECK(changed > 0);
    config_free(&c);
}

/* A factored svdllm output's own model_type and architecture (compress.c
 * writes them so other loaders refuse it): loaded as the base type with its
 * ranks, refused without the low_rank section they stand for, and the
 * architecture alone does not pass for a plain model. */
static void test_factored_marks(void) {
    const char *lr = "\"low_rank\": {\"ranks\": {\"model.layers.1.mlp.up_proj\": 7}, "
                     "\"base_model_type\": \"qwen2\", \"base_architectures\": [\"Qwen2ForCausalLM\"]}";
    char json[1024];
    snprintf(json, sizeof json, "{\"model_type\": \"svdllm_qwen2\", \"architectures\": [\"SvdLlmForCausalLM\"], "
             "\"hidden_size\": 64, \"intermediate_size\": 172, \"num_hidden_layers\": 2, "
             "\"num_attention_heads\": 8, \"vocab_size\": 512, %s}", lr);
    struct config c;
    struct sv_err err = {0};
    SV_ASSERT_EQ(load_text(json, &c, &err), 0);
    SV_CHECK(c.bias[PROJ_Q] && !c.qk_norm);   /* Qwen2's math, from the base type */
    SV_ASSERT_EQ(c.rank[1][PROJ_UP], 7);
    config_free(&c);
    expect_fail("{\"model_type\": \"svdllm_llama\", \"architectures\": [\"SvdLlmForCausalLM\"], \"hidden_size\": 64, "
                "\"intermediate_size\": 172, \"num_hidden_layers\": 2, \"num_attention_heads\": 8, \"vocab_size\": 512}",
                -EINVAL, "marks an svdllm factored output, but there is no 'low_rank' section");
    expect_fail("{" BASE ", \"architectures\": [\"SvdLlmForCausalLM\"]}", -ENOTSUP, "architecture 'SvdLlmForCausalLM'");
    expect_fail("{\"model_type\": \"svdllm_gpt2\", \"low_rank\": {\"ranks\": {}}, \"hidden_size\": 64}", -ENOTSUP,
                "model_type 'gpt2'");
}

int main(void) {
    strcpy(dir, "/tmp/svdllm-test-config-XXXXXX");
    SV_CHECK(mkdtemp(dir) != NULL);
    struct config c;
    struct sv_err err = {0};

    SV_ASSERT_EQ(config_load(&c, "tests/data/stories260K-hf/config.json", &err), 0);
    SV_ASSERT_EQ(c.hidden, 64);
    SV_ASSERT_EQ(c.n_layers, 5);
    SV_ASSERT_EQ(c.n_kv_heads, 4);
    SV_ASSERT_EQ(c.head_dim, 8);
    SV_ASSERT_EQ(c.tie_embeddings, 0);
    SV_ASSERT_NEAR_REL(c.rms_eps, 1e-5, 1e-12);
    config_free(&c);
    SV_ASSERT_EQ(config_load(&c, "tests/data/tinystories-656K/config.json", &err), 0);
    SV_ASSERT_EQ(c.tie_embeddings, 1);
    SV_ASSERT_EQ(c.intermediate, 384);
    SV_ASSERT_EQ(c.head_dim, 16);
    config_free(&c);

    /* LLaMA 3 style: eos list, rope_theta, explicit head_dim; Mistral's sliding window. */
    SV_ASSERT_EQ(load_text("{" BASE ", \"eos_token_id\": [128001, 128009], \"rope_theta\": 500000.0}", &c, &err), 0);
    SV_ASSERT_EQ(c.eos_id, 128001);
    SV_ASSERT_NEAR_REL(c.rope_theta, 500000.0, 1e-12);
    SV_ASSERT_EQ(c.n_kv_heads, 8);
    config_free(&c);
    SV_ASSERT_EQ(load_text("{\"model_type\": \"mistral\", \"hidden_size\": 64, \"intermediate_size\": 172, "
                           "\"num_hidden_layers\": 2, \"num_attention_heads\": 8, \"vocab_size\": 512, "
                           "\"sliding_window\": 4096}", &c, &err), 0);
    SV_ASSERT_EQ(c.sliding_window, 4096);
    config_free(&c);
    /* low_rank section of our own output. */
    SV_ASSERT_EQ(load_text("{" BASE ", \"low_rank\": {\"ranks\": {\"model.layers.1.mlp.down_proj\": 20}}}", &c, &err), 0);
    SV_ASSERT_EQ(c.rank[1][PROJ_DOWN], 20);
    SV_ASSERT_EQ(c.rank[0][PROJ_DOWN], 0);
    config_free(&c);

    /* rope_scaling: Llama 3.1's own values, linear, dynamic below and above the trained context. */
    check_rope("{\"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
               "\"original_max_position_embeddings\": 8192, \"rope_type\": \"llama3\"}",
               "llama3", 8, 1, 4, 8192, 128);
    check_rope("{\"type\": \"linear\", \"factor\": 2.0}", "linear", 2, 0, 0, 0, 128);
    check_rope("{\"rope_type\": \"dynamic\", \"factor\": 2.0}", "dynamic", 2, 0, 0, 0, 4096);
    check_rope("{\"rope_type\": \"dynamic\", \"factor\": 2.0}", "dynamic", 2, 0, 0, 0, 12000);
    check_rope("{\"rope_type\": \"default\"}", "default", 1, 0, 0, 0, 128);
    check_rope("null", "default", 1, 0, 0, 0, 128);
    expect_fail("{" BASE ", \"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4}}", -ENOTSUP, "rope_scaling type 'yarn'");
    expect_fail("{" BASE ", \"rope_scaling\": {\"rope_type\": \"longrope\", \"factor\": 4}}", -ENOTSUP,
                "rope_scaling type 'longrope'");
    expect_fail("{" BASE ", \"rope_scaling\": {\"rope_type\": \"linear\"}}", -EINVAL, "factor must be a number >= 1");
    expect_fail("{" BASE ", \"rope_scaling\": {\"rope_type\": \"linear\", \"factor\": 0.5}}", -EINVAL,
                "factor must be a number >= 1");
    expect_fail("{" BASE ", \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8, "
                "\"original_max_position_embeddings\": 8192}}", -EINVAL, "needs low_freq_factor");
    expect_fail("{" BASE ", \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8, \"low_freq_factor\": 4, "
                "\"high_freq_factor\": 1, \"original_max_position_embeddings\": 8192}}", -EINVAL,
                "must exceed low_freq_factor");
    expect_fail("{" BASE ", \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8, \"low_freq_factor\": 1, "
                "\"high_freq_factor\": 4}}", -EINVAL, "'original_max_position_embeddings' is missing");
    expect_fail("{" BASE ", \"rope_scaling\": {\"factor\": 2}}", -EINVAL, "no 'rope_type'");
    expect_fail("{\"model_type\": \"gpt2\", \"hidden_size\": 64}", -ENOTSUP, "model_type 'gpt2'");
    expect_fail("{" BASE ", \"architectures\": [\"LlamaForSequenceClassification\"]}", -ENOTSUP,
                "architecture 'LlamaForSequenceClassification'");
    expect_fail("{" BASE ", \"hidden_act\": \"gelu\"}", -ENOTSUP, "hidden_act 'gelu'");
    expect_fail("{" BASE ", \"attention_bias\": true}", -ENOTSUP, "'attention_bias'");
    expect_fail("{" BASE ", \"mlp_bias\": true}", -ENOTSUP, "'mlp_bias'");
    expect_fail("{\"model_type\": \"llama\", \"hidden_size\": 64}", -EINVAL, "'intermediate_size' is missing");
    expect_fail("{" BASE ", \"num_key_value_heads\": 3}", -EINVAL, "not a multiple of num_key_value_heads");
    expect_fail("{" BASE ", \"hidden_size\": 64.5}", -EINVAL, "duplicate");
    expect_fail("{" BASE ", \"rms_norm_eps\": -1}", -EINVAL, "'rms_norm_eps' must be positive");
    expect_fail("{" BASE ", \"vocab_size\": \"512\"}", -EINVAL, "duplicate");
    expect_fail("{\"model_type\": \"llama\", \"hidden_size\": \"64\", \"intermediate_size\": 1, \"num_hidden_layers\": 1, "
                "\"num_attention_heads\": 1, \"vocab_size\": 2}", -EINVAL, "'hidden_size' must be an integer");
    expect_fail("{" BASE ", \"low_rank\": {\"ranks\": {\"model.layers.9.mlp.up_proj\": 3}}}", -EINVAL, "not a layer module");
    expect_fail("{" BASE ", \"low_rank\": {\"ranks\": {\"model.layers.0.mlp.up_proj\": 100}}}", -EINVAL, "must be an integer in [1, 64]");
    expect_fail("{" BASE, -EINVAL, "config '");
    expect_fail("[1, 2]", -EINVAL, "not a JSON object");
    struct config c2;
    SV_ASSERT_EQ(config_load(&c2, "/nonexistent/config.json", &err), -EINVAL);
    SV_ASSERT_STR_CONTAINS(err.msg, "/nonexistent/config.json");

    test_factored_marks();

    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    SV_ASSERT_EQ(system(cmd), 0);
    return sv_test_result("config");
}
