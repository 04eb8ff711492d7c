/* config.json: accepted LLaMA variants and every refused field, by message. */
#include <errno.h>
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

    expect_fail("{" BASE ", \"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4}}", -ENOTSUP, "rope_scaling type 'yarn'");
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

    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    SV_ASSERT_EQ(system(cmd), 0);
    return sv_test_result("config");
}
