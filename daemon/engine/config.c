/* config: LLaMA-family config.json, strict about anything that changes the math. */
#include "config.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const proj_names[PROJ_COUNT] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj",
};

const char *config_proj_name(enum config_proj p) {
    return (p >= 0 && p < PROJ_COUNT) ? proj_names[p] : "?";
}

void config_proj_shape(const struct config *c, enum config_proj p, int *d_out, int *d_in) {
    int q = c->n_heads * c->head_dim, kv = c->n_kv_heads * c->head_dim;
    switch (p) {
    case PROJ_Q: *d_out = q; *d_in = c->hidden; break;
    case PROJ_K:
    case PROJ_V: *d_out = kv; *d_in = c->hidden; break;
    case PROJ_O: *d_out = c->hidden; *d_in = q; break;
    case PROJ_GATE:
    case PROJ_UP: *d_out = c->intermediate; *d_in = c->hidden; break;
    default: *d_out = c->hidden; *d_in = c->intermediate; break;
    }
}

/* Reads a positive integer field; absent -> def (or error when def < 0). */
static int get_int(json_t *root, const char *path, const char *key, int def, int lo, int hi, int *out,
                   struct sv_err *err) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        if (def < 0)
            return sv_err_set(err, -EINVAL, "config '%s': required field '%s' is missing", path, key);
        *out = def;
        return 0;
    }
    if (!json_is_integer(v))
        return sv_err_set(err, -EINVAL, "config '%s': field '%s' must be an integer", path, key);
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return sv_err_set(err, -EINVAL, "config '%s': field '%s' = %lld is outside [%d, %d]", path, key,
                          (long long)x, lo, hi);
    *out = (int)x;
    return 0;
}

/* eos_token_id is an integer, or a list of them in LLaMA 3 (we keep the first). */
static int get_eos(json_t *root, const char *path, int *out, struct sv_err *err) {
    json_t *v = json_object_get(root, "eos_token_id");
    if (json_is_array(v))
        v = json_array_get(v, 0);
    if (!v || json_is_null(v)) {
        *out = 0x7fffffff;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 0x7ffffffe)
        return sv_err_set(err, -EINVAL, "config '%s': field 'eos_token_id' must be a token id", path);
    *out = (int)json_integer_value(v);
    return 0;
}

static int get_real(json_t *root, const char *path, const char *key, double def, double *out,
                    struct sv_err *err) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_number(v))
        return sv_err_set(err, -EINVAL, "config '%s': field '%s' must be a number", path, key);
    *out = json_number_value(v);
    if (!isfinite(*out) || *out <= 0)
        return sv_err_set(err, -EINVAL, "config '%s': field '%s' must be positive and finite", path, key);
    return 0;
}

/* rope_scaling as transformers' rope_init functions read it: "rope_type" (or
 * the legacy "type"); "default" is none. Types whose math we do not implement
 * (yarn, longrope, ...) are refused by name. */
static int parse_rope_scaling(json_t *rs, const char *path, struct config *c, struct sv_err *err) {
    c->rope_type = CONFIG_ROPE_DEFAULT;
    c->rope_factor = 1;
    if (!rs || json_is_null(rs))
        return 0;
    if (!json_is_object(rs))
        return sv_err_set(err, -EINVAL, "config '%s': field 'rope_scaling' must be an object or null", path);
    const char *t = json_string_value(json_object_get(rs, "rope_type"));
    if (!t)
        t = json_string_value(json_object_get(rs, "type"));
    if (!t)
        return sv_err_set(err, -EINVAL, "config '%s': rope_scaling has no 'rope_type'", path);
    if (strcmp(t, "default") == 0)
        return 0;
    c->rope_type = strcmp(t, "linear") == 0    ? CONFIG_ROPE_LINEAR
                   : strcmp(t, "dynamic") == 0 ? CONFIG_ROPE_DYNAMIC
                   : strcmp(t, "llama3") == 0  ? CONFIG_ROPE_LLAMA3
                                               : CONFIG_ROPE_DEFAULT;
    if (c->rope_type == CONFIG_ROPE_DEFAULT)
        return sv_err_set(err, -ENOTSUP, "config '%s': rope_scaling type '%s' is not supported", path, t);
    int r;
    if ((r = get_real(rs, path, "factor", -1, &c->rope_factor, err)) < 0)
        return r;
    if (!(c->rope_factor >= 1))
        return sv_err_set(err, -EINVAL, "config '%s': rope_scaling.factor must be a number >= 1", path);
    if (c->rope_type != CONFIG_ROPE_LLAMA3)
        return 0;
    if ((r = get_real(rs, path, "low_freq_factor", -1, &c->rope_low_freq, err)) < 0 ||
        (r = get_real(rs, path, "high_freq_factor", -1, &c->rope_high_freq, err)) < 0 ||
        (r = get_int(rs, path, "original_max_position_embeddings", -1, 1, 1 << 24, &c->rope_orig_max_pos, err)) < 0)
        return r;
    if (c->rope_low_freq <= 0 || c->rope_high_freq <= 0)
        return sv_err_set(err, -EINVAL, "config '%s': rope_scaling llama3 needs low_freq_factor and high_freq_factor",
                          path);
    if (!(c->rope_high_freq > c->rope_low_freq))
        return sv_err_set(err, -EINVAL, "config '%s': rope_scaling.high_freq_factor must exceed low_freq_factor",
                          path);
    return 0;
}

void config_rope_inv_freq(const struct config *c, int seq_len, double *inv) {
    const int hd = c->head_dim;
    double base = c->rope_theta;
    /* Dynamic NTK: the base grows once the sequence exceeds the trained
     * context, so positions past it stay within the trained angle range. */
    if (c->rope_type == CONFIG_ROPE_DYNAMIC && seq_len > c->max_pos)
        base *= pow(c->rope_factor * seq_len / c->max_pos - (c->rope_factor - 1), (double)hd / (hd - 2));
    for (int i = 0; i < hd / 2; i++) {
        double f = pow(base, -2.0 * i / hd);
        if (c->rope_type == CONFIG_ROPE_LINEAR) {
            f /= c->rope_factor;
        } else if (c->rope_type == CONFIG_ROPE_LLAMA3) {
            /* Wavelengths longer than the original context / low_freq_factor
             * are stretched by factor, shorter than context / high_freq_factor
             * kept, and those between interpolated in 1 / wavelength. */
            double old = c->rope_orig_max_pos, wavelen = 2 * M_PI / f;
            if (wavelen > old / c->rope_low_freq) {
                f /= c->rope_factor;
            } else if (wavelen >= old / c->rope_high_freq) {
                double sm = (old / wavelen - c->rope_low_freq) / (c->rope_high_freq - c->rope_low_freq);
                f = (1 - sm) * f / c->rope_factor + sm * f;
            }
        }
        inv[i] = f;
    }
}

/* A boolean that must be false (or absent) for the math we implement. */
static int require_false(json_t *root, const char *path, const char *mt, const char *key, struct sv_err *err) {
    json_t *v = json_object_get(root, key);
    if (v && !json_is_null(v) && !json_is_false(v))
        return sv_err_set(err, -ENOTSUP,
                          "config '%s': '%s' = true is not supported for model_type '%s' (the only bias "
                          "implemented is Qwen2's on q/k/v)",
                          path, key, mt);
    return 0;
}

static int parse_low_rank(json_t *lr, const char *path, struct config *c, struct sv_err *err) {
    json_t *ranks = json_object_get(lr, "ranks");
    if (!json_is_object(ranks))
        return sv_err_set(err, -EINVAL, "config '%s': 'low_rank.ranks' must be an object", path);
    const char *key;
    json_t *val;
    json_object_foreach(ranks, key, val) {
        /* keys: "model.layers.L.self_attn.q_proj" */
        int l = -1, n = 0;
        if (sscanf(key, "model.layers.%d.%n", &l, &n) != 1 || l < 0 || l >= c->n_layers || n == 0)
            return sv_err_set(err, -EINVAL, "config '%s': low_rank.ranks key '%s' is not a layer module", path, key);
        int p;
        for (p = 0; p < PROJ_COUNT; p++)
            if (strcmp(key + n, proj_names[p]) == 0)
                break;
        if (p == PROJ_COUNT)
            return sv_err_set(err, -EINVAL, "config '%s': low_rank.ranks key '%s' names no projection", path, key);
        int d_out, d_in;
        config_proj_shape(c, p, &d_out, &d_in);
        if (!json_is_integer(val) || json_integer_value(val) < 1 ||
            json_integer_value(val) > (d_out < d_in ? d_out : d_in))
            return sv_err_set(err, -EINVAL, "config '%s': rank of '%s' must be an integer in [1, %d]", path,
                              key, d_out < d_in ? d_out : d_in);
        c->rank[l][p] = (int)json_integer_value(val);
    }
    return 0;
}

int config_load(struct config *ret, const char *path, struct sv_err *err) {
    struct config c;
    memset(&c, 0, sizeof c);
    json_error_t jerr;
    int r = 0;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        if (jerr.line < 0) /* not a parse error: the file could not be read */
            return sv_err_set(err, -EINVAL, "config '%s': %s", path, jerr.text);
        return sv_err_set(err, -EINVAL, "config '%s': %s (line %d, column %d)", path, jerr.text, jerr.line,
                          jerr.column);
    }
    if (!json_is_object(root)) {
        r = sv_err_set(err, -EINVAL, "config '%s': not a JSON object", path);
        goto out;
    }

    /* Architecture: LLaMA and the models that share its math exactly. */
    const char *mt = json_string_value(json_object_get(root, "model_type"));
    if (!mt) {
        r = sv_err_set(err, -EINVAL, "config '%s': field 'model_type' is missing", path);
        goto out;
    }
    /* Our factored outputs: "svdllm_<type>" with architecture
     * SvdLlmForCausalLM, so that other loaders refuse them (compress.c);
     * here the base type, with the low_rank section that makes them so. */
    const bool factored = strncmp(mt, CONFIG_FACTORED_PREFIX, strlen(CONFIG_FACTORED_PREFIX)) == 0;
    if (factored) {
        if (!json_is_object(json_object_get(root, "low_rank"))) {
            r = sv_err_set(err, -EINVAL, "config '%s': model_type '%s' marks an svdllm factored output, but there is "
                           "no 'low_rank' section", path, mt);
            goto out;
        }
        mt += strlen(CONFIG_FACTORED_PREFIX);
    }
    const int qwen2 = strcmp(mt, "qwen2") == 0, qwen3 = strcmp(mt, "qwen3") == 0;
    if (strcmp(mt, "llama") != 0 && strcmp(mt, "mistral") != 0 && !qwen2 && !qwen3) {
        r = sv_err_set(err, -ENOTSUP,
                       "config '%s': model_type '%s' is not supported (only llama, mistral, qwen2, qwen3)", path, mt);
        goto out;
    }
    json_t *arch = json_object_get(root, "architectures");
    if (json_is_array(arch)) {
        size_t i;
        json_t *a;
        json_array_foreach(arch, i, a) {
            const char *s = json_string_value(a);
            if (!s || (strcmp(s, "LlamaForCausalLM") != 0 && strcmp(s, "MistralForCausalLM") != 0 &&
                       strcmp(s, "Qwen2ForCausalLM") != 0 && strcmp(s, "Qwen3ForCausalLM") != 0 &&
                       !(factored && strcmp(s, CONFIG_FACTORED_ARCH) == 0))) {
                r = sv_err_set(err, -ENOTSUP, "config '%s': architecture '%s' is not supported", path,
                               s ? s : "(not a string)");
                goto out;
            }
        }
    }
    const char *act = json_string_value(json_object_get(root, "hidden_act"));
    if (act && strcmp(act, "silu") != 0) {
        r = sv_err_set(err, -ENOTSUP, "config '%s': hidden_act '%s' is not supported (only silu)", path, act);
        goto out;
    }
    if ((r = parse_rope_scaling(json_object_get(root, "rope_scaling"), path, &c, err)) < 0)
        goto out;
    /* Qwen2's q/k/v bias is unconditional (transformers ignores an
     * attention_bias field there); elsewhere attention_bias would also put a
     * bias on o_proj, which we do not implement. */
    if ((!qwen2 && (r = require_false(root, path, mt, "attention_bias", err)) < 0) ||
        (r = require_false(root, path, mt, "mlp_bias", err)) < 0)
        goto out;
    c.bias[PROJ_Q] = c.bias[PROJ_K] = c.bias[PROJ_V] = qwen2;
    c.qk_norm = qwen3;

    if ((r = get_int(root, path, "hidden_size", -1, 1, 1 << 16, &c.hidden, err)) < 0 ||
        (r = get_int(root, path, "intermediate_size", -1, 1, 1 << 18, &c.intermediate, err)) < 0 ||
        (r = get_int(root, path, "num_hidden_layers", -1, 1, CONFIG_MAX_LAYERS, &c.n_layers, err)) < 0 ||
        (r = get_int(root, path, "num_attention_heads", -1, 1, 1024, &c.n_heads, err)) < 0 ||
        (r = get_int(root, path, "num_key_value_heads", c.n_heads, 1, 1024, &c.n_kv_heads, err)) < 0 ||
        (r = get_int(root, path, "vocab_size", -1, 1, 1 << 22, &c.vocab, err)) < 0 ||
        (r = get_int(root, path, "max_position_embeddings", 2048, 1, 1 << 24, &c.max_pos, err)) < 0 ||
        (r = get_int(root, path, "bos_token_id", 0x7fffffff, 0, 0x7fffffff, &c.bos_id, err)) < 0 ||
        (r = get_eos(root, path, &c.eos_id, err)) < 0)
        goto out;
    if (c.bos_id == 0x7fffffff)
        c.bos_id = -1;
    if (c.eos_id == 0x7fffffff)
        c.eos_id = -1;
    if (c.hidden % c.n_heads != 0 && !json_object_get(root, "head_dim")) {
        r = sv_err_set(err, -EINVAL, "config '%s': hidden_size %d is not a multiple of num_attention_heads %d",
                       path, c.hidden, c.n_heads);
        goto out;
    }
    if ((r = get_int(root, path, "head_dim", c.hidden / c.n_heads, 2, CONFIG_MAX_HEAD_DIM, &c.head_dim, err)) < 0)
        goto out;
    if (c.head_dim % 2 != 0) {
        r = sv_err_set(err, -EINVAL, "config '%s': head_dim %d must be even for RoPE", path, c.head_dim);
        goto out;
    }
    if (c.n_heads % c.n_kv_heads != 0) {
        r = sv_err_set(err, -EINVAL, "config '%s': num_attention_heads %d is not a multiple of num_key_value_heads %d",
                       path, c.n_heads, c.n_kv_heads);
        goto out;
    }
    if ((r = get_real(root, path, "rms_norm_eps", 1e-6, &c.rms_eps, err)) < 0 ||
        (r = get_real(root, path, "rope_theta", 10000.0, &c.rope_theta, err)) < 0)
        goto out;
    json_t *tie = json_object_get(root, "tie_word_embeddings");
    /* transformers' default for LLaMA is false. */
    c.tie_embeddings = tie && json_is_true(tie);
    json_t *sw = json_object_get(root, "sliding_window");
    /* Qwen2/Qwen3 configs carry a sliding_window that is in effect only with
     * use_sliding_window = true (then on some layers; refusing longer
     * sequences on every layer is exact for the ones we accept). */
    if ((qwen2 || qwen3) && !json_is_true(json_object_get(root, "use_sliding_window")))
        sw = NULL;
    if (sw && !json_is_null(sw)) {
        /* Mistral's window only changes attention beyond sliding_window
         * positions; the forward pass refuses longer sequences instead of
         * silently computing full attention. */
        if (!json_is_integer(sw) || json_integer_value(sw) < 1) {
            r = sv_err_set(err, -EINVAL, "config '%s': field 'sliding_window' must be a positive integer", path);
            goto out;
        }
        c.sliding_window = json_integer_value(sw) > 0x7fffffff ? 0x7fffffff : (int)json_integer_value(sw);
    }

    c.rank = calloc((size_t)c.n_layers, sizeof *c.rank);
    if (!c.rank) {
        r = sv_err_set(err, -ENOMEM, "config '%s': out of memory", path);
        goto out;
    }
    json_t *lr = json_object_get(root, "low_rank");
    if (lr && (r = parse_low_rank(lr, path, &c, err)) < 0)
        goto out;
    *ret = c;
    c.rank = NULL;
out:
    free(c.rank);
    json_decref(root);
    return r;
}

void config_free(struct config *c) {
    if (!c)
        return;
    free(c->rank);
    c->rank = NULL;
}
