/* svdllm-genmodel: writes a synthetic LLaMA model directory (config.json +
 * model.safetensors) with random weights and real shapes, for benchmarks and
 * tests that need a model larger than the bundled ones.
 *
 *   svdllm-genmodel --out DIR --hidden 2048 --layers N --heads H [--kv-heads K]
 *                   --ffn F --vocab V [--dtype bf16|f16|f32] [--seed S] [--max-pos P]
 *                   [--spectrum-decay A] [--family llama|qwen2|qwen3] [--head-dim N]
 *                   [--tie-embeddings]
 *
 * --family qwen2 writes a Qwen2/Qwen2.5 config (Qwen2ForCausalLM, its fields
 * as the real configs have them) and a bias for q, k and v
 * ("<module>.bias", normal(0, 0.5): Qwen's k bias is large); qwen3 a Qwen3
 * config and "self_attn.q_norm.weight" / "k_norm.weight" (head_dim). In both,
 * every norm weight is 1 + normal(0, 0.2) rather than 1, so a test of the
 * forward pass sees each norm applied with its own weight. --head-dim sets
 * head_dim apart from hidden / heads (written to config.json), as Qwen3 does;
 * --tie-embeddings writes no lm_head.weight and tie_word_embeddings = true.
 * The llama family without these options is byte for byte what it always was.
 *
 * Design note. Weights are normal(0, 1/sqrt(d_in)) for every matrix (the
 * embedding and lm_head use d_in = hidden), so activations keep unit scale
 * through the layers; norm weights are 1. Normals come from Box-Muller on
 * xorshift64* uniforms. Each tensor has its own generator, seeded from
 * (seed, tensor index) by splitmix64, so the bytes depend only on the seed and
 * the shapes, never on the order of calls or the platform's libm beyond
 * log/sqrt/cos/sin. Tensors are declared first and then streamed one at a
 * time through st_writer, already converted to the on-disk dtype: the peak
 * memory is one tensor (the embedding, vocab x hidden x 2 bytes in BF16),
 * never the model. The directory is created if needed; config.json is written
 * after the weights, so a directory with a config.json is complete.
 *
 * --spectrum-decay A (A > 0). Gaussian matrices have a flat singular spectrum;
 * pretrained LLaMA linears decay roughly like a power law. With the option,
 * every decoder linear W (d_out x d_in, r = min of the two) is instead
 * W = Q_out D Q_in^T with D[k][k] = s_k = c (k+1)^-A for k < r (zero
 * elsewhere), c chosen so that ||W||_F^2 = d_out d_in std^2, the expected
 * squared norm of the normal(0, std) init (activations keep their scale).
 * Q_out and Q_in are random orthogonal matrices, so the singular values of W
 * are exactly the s_k (to double rounding, then the dtype's). Each Q is a
 * product of "levels", a level being a random row permutation followed by a
 * block-diagonal matrix of random 16 x 16 orthogonal blocks (the last block
 * smaller when 16 does not divide d); a block is modified Gram-Schmidt, run
 * twice, of a Gaussian matrix, in double. With L levels an output coordinate
 * mixes up to 16^L inputs; we use one level more than 16^L >= d needs, so W
 * is dense and its singular vectors are spread over all coordinates. Cost:
 * 32 L flops per element per side (about 13 GFLOP for 11008 x 4096, seconds
 * on two cores), in plain C with a fixed summation order, so the bytes still
 * depend only on the seed and shapes (OpenMP splits the blocks, not the sums).
 * Memory: two double copies of the largest matrix. The permutations and
 * blocks come from the tensor's own generator (Q_in's levels first), so the
 * other tensors (embedding, norms, head) are the same bytes as without the
 * option, and without it the output is byte for byte what it always was.
 *
 * Exits 0 on success; on failure prints one line "svdllm-genmodel: <reason>"
 * to stderr and exits 1 (2 for usage errors). */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "args.h"
#include "st.h"
#include "sv_err.h"

#define GEN_MAX_TENSORS (3 + 12 * 1024)

struct gen_opts {
    const char *out;
    int hidden, layers, heads, kv_heads, ffn, vocab, max_pos;
    enum st_dtype dtype;
    uint64_t seed;
    double decay; /* --spectrum-decay; 0: Gaussian weights */
    enum gen_family { GEN_LLAMA = 0, GEN_QWEN2, GEN_QWEN3 } family;
    int head_dim;      /* 0: hidden / heads (and no head_dim in config.json) */
    int tie;           /* --tie-embeddings */
};

/* One declared tensor: name, shape (d0, d1) or (d0) if d1 == 0, and its init. */
struct gen_tensor {
    char name[ST_MAX_NAME];
    int64_t d0, d1;
    int ones;        /* norm weight: all 1 (qwen families: 1 + normal(0, std)) */
    int linear;      /* a decoder linear: power-law spectrum under --spectrum-decay */
    double std;      /* otherwise normal(0, std) */
};

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

struct gen_rng {
    uint64_t s;
    int have_spare;
    double spare;
};

static void gen_rng_seed(struct gen_rng *g, uint64_t seed, uint64_t stream) {
    uint64_t s = seed ^ (stream * 0xd1b54a32d192ed03ULL);
    g->s = splitmix64(&s);
    if (g->s == 0)
        g->s = 1; /* xorshift's one fixed point */
    g->have_spare = 0;
}

/* xorshift64*: 64 random bits. */
static uint64_t gen_rng_next(struct gen_rng *g) {
    g->s ^= g->s >> 12;
    g->s ^= g->s << 25;
    g->s ^= g->s >> 27;
    return g->s * 0x2545f4914f6cdd1dULL;
}

/* Standard normal by Box-Muller, using both outputs of each pair. */
static double gen_rng_normal(struct gen_rng *g) {
    if (g->have_spare) {
        g->have_spare = 0;
        return g->spare;
    }
    double u1 = (double)((gen_rng_next(g) >> 11) + 1) * 0x1.0p-53; /* (0, 1] */
    double u2 = (double)(gen_rng_next(g) >> 11) * 0x1.0p-53;       /* [0, 1) */
    double r = sqrt(-2.0 * log(u1)), a = 2.0 * M_PI * u2;
    g->spare = r * sin(a);
    g->have_spare = 1;
    return r * cos(a);
}

static void gen_add(struct gen_tensor *t, size_t *n, int64_t d0, int64_t d1, int ones, double std,
                    const char *fmt, int l) {
    struct gen_tensor *e = &t[(*n)++];
    snprintf(e->name, sizeof e->name, fmt, l);
    e->d0 = d0;
    e->d1 = d1;
    e->ones = ones;
    e->linear = strstr(fmt, "_proj.weight") != NULL;
    e->std = std;
}

/* Fills the tensor list in file order; returns the count. */
static size_t gen_plan(const struct gen_opts *o, struct gen_tensor *t) {
    const int hd = o->head_dim ? o->head_dim : o->hidden / o->heads;
    const int64_t d = o->hidden, q = (int64_t)o->heads * hd, kv = (int64_t)o->kv_heads * hd, f = o->ffn;
    const double sd = 1.0 / sqrt((double)d), sq = 1.0 / sqrt((double)q), sf = 1.0 / sqrt((double)f);
    /* Norm weights: exactly 1 for llama (unchanged bytes), 1 + normal(0, 0.2) for qwen. */
    const double sn = o->family == GEN_LLAMA ? 0.0 : 0.2, sb = 0.5;
    size_t n = 0;
    gen_add(t, &n, o->vocab, d, 0, sd, "model.embed_tokens.weight", 0);
    for (int l = 0; l < o->layers; l++) {
        /* W: (d_out, d_in) row-major, std 1/sqrt(d_in). */
        gen_add(t, &n, d, 0, 1, sn, "model.layers.%d.input_layernorm.weight", l);
        gen_add(t, &n, q, d, 0, sd, "model.layers.%d.self_attn.q_proj.weight", l);
        if (o->family == GEN_QWEN2)
            gen_add(t, &n, q, 0, 0, sb, "model.layers.%d.self_attn.q_proj.bias", l);
        gen_add(t, &n, kv, d, 0, sd, "model.layers.%d.self_attn.k_proj.weight", l);
        if (o->family == GEN_QWEN2)
            gen_add(t, &n, kv, 0, 0, sb, "model.layers.%d.self_attn.k_proj.bias", l);
        gen_add(t, &n, kv, d, 0, sd, "model.layers.%d.self_attn.v_proj.weight", l);
        if (o->family == GEN_QWEN2)
            gen_add(t, &n, kv, 0, 0, sb, "model.layers.%d.self_attn.v_proj.bias", l);
        gen_add(t, &n, d, q, 0, sq, "model.layers.%d.self_attn.o_proj.weight", l);
        if (o->family == GEN_QWEN3) {
            gen_add(t, &n, hd, 0, 1, sn, "model.layers.%d.self_attn.q_norm.weight", l);
            gen_add(t, &n, hd, 0, 1, sn, "model.layers.%d.self_attn.k_norm.weight", l);
        }
        gen_add(t, &n, d, 0, 1, sn, "model.layers.%d.post_attention_layernorm.weight", l);
        gen_add(t, &n, f, d, 0, sd, "model.layers.%d.mlp.gate_proj.weight", l);
        gen_add(t, &n, f, d, 0, sd, "model.layers.%d.mlp.up_proj.weight", l);
        gen_add(t, &n, d, f, 0, sf, "model.layers.%d.mlp.down_proj.weight", l);
    }
    gen_add(t, &n, d, 0, 1, sn, "model.norm.weight", 0);
    if (!o->tie)
        gen_add(t, &n, o->vocab, d, 0, sd, "lm_head.weight", 0);
    return n;
}

/* ---- --spectrum-decay: W = Q_out D Q_in^T ------------------------------------ */

#define SPEC_B 16    /* orthogonal block size */
#define SPEC_JB 128  /* columns per L1 tile */
/* Two doubles (GCC/clang vector extension): element-wise IEEE mul and add,
 * the same results as scalar code; no FMA contraction on the baseline x86-64
 * target, so the bytes do not depend on the CPU. */
typedef double spec_v2 __attribute__((vector_size(16)));

/* One level: a row permutation, then 16 x 16 orthogonal blocks. */
struct spec_level {
    int *perm;     /* d entries: output row i of the permutation is input row perm[i] */
    double *q;     /* nblk blocks of SPEC_B^2, row-major; the last one uses its top-left bs x bs */
};

static int spec_nlevels(int64_t d) {
    int l = 1;
    for (int64_t m = SPEC_B; m < d; m *= SPEC_B)
        l++;
    return l + 1;
}

/* A Haar-distributed n x n orthogonal matrix (row-major, stride SPEC_B):
 * modified Gram-Schmidt, twice, over the rows of a Gaussian matrix. */
static void spec_orthogonal(struct gen_rng *g, double *q, int n) {
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++)
            q[i * SPEC_B + j] = gen_rng_normal(g);
    for (int i = 0; i < n; i++) {
        double *qi = q + i * SPEC_B;
        for (int pass = 0; pass < 2; pass++)
            for (int p = 0; p < i; p++) {
                const double *qp = q + p * SPEC_B;
                double dot = 0;
                for (int j = 0; j < n; j++)
                    dot += qp[j] * qi[j];
                for (int j = 0; j < n; j++)
                    qi[j] -= dot * qp[j];
            }
        double nrm = 0;
        for (int j = 0; j < n; j++)
            nrm += qi[j] * qi[j];
        nrm = sqrt(nrm);
        for (int j = 0; j < n; j++)
            qi[j] /= nrm;
    }
}

static void spec_levels_free(struct spec_level *lv, int nl) {
    for (int i = 0; i < nl; i++) {
        free(lv[i].perm);
        free(lv[i].q);
    }
}

/* Draws nl levels of dimension d from g into the zeroed lv. */
static int spec_levels_new(struct gen_rng *g, struct spec_level *lv, int nl, int64_t d) {
    int64_t nblk = (d + SPEC_B - 1) / SPEC_B;
    for (int l = 0; l < nl; l++) {
        lv[l].perm = malloc((size_t)d * sizeof *lv[l].perm);
        lv[l].q = malloc((size_t)nblk * SPEC_B * SPEC_B * sizeof *lv[l].q);
        if (!lv[l].perm || !lv[l].q)
            return -ENOMEM; /* the caller frees all nl levels */
        for (int64_t i = 0; i < d; i++)
            lv[l].perm[i] = (int)i;
        for (int64_t i = d - 1; i > 0; i--) { /* Fisher-Yates */
            int64_t j = (int64_t)(gen_rng_next(g) % (uint64_t)(i + 1));
            int t = lv[l].perm[i];
            lv[l].perm[i] = lv[l].perm[j];
            lv[l].perm[j] = t;
        }
        for (int64_t b = 0; b < nblk; b++) {
            int bs = (int)(d - b * SPEC_B < SPEC_B ? d - b * SPEC_B : SPEC_B);
            spec_orthogonal(g, lv[l].q + b * SPEC_B * SPEC_B, bs);
        }
    }
    return 0;
}

/* y (d x n) = level * x (d x n), row-major. Each output element is one sum in
 * a fixed order (k ascending), whatever the thread count. */
static void spec_apply(const struct spec_level *lv, int64_t d, int64_t n, const double *x, double *y) {
    int64_t nblk = (d + SPEC_B - 1) / SPEC_B;
#pragma omp parallel for schedule(dynamic, 4)
    for (int64_t b = 0; b < nblk; b++) {
        int bs = (int)(d - b * SPEC_B < SPEC_B ? d - b * SPEC_B : SPEC_B);
        const double *q = lv->q + b * SPEC_B * SPEC_B;
        const double *xr[SPEC_B];
        for (int k = 0; k < bs; k++)
            xr[k] = x + (size_t)lv->perm[b * SPEC_B + k] * (size_t)n;
        for (int64_t j0 = 0; j0 < n; j0 += SPEC_JB) { /* bs x SPEC_JB of x stays in L1 */
            int64_t j1 = n - j0 < SPEC_JB ? n : j0 + SPEC_JB;
            for (int i = 0; i < bs; i++) {
                double *yr = y + (size_t)(b * SPEC_B + i) * (size_t)n;
                const double *qi = q + i * SPEC_B;
                int64_t j = j0;
                for (; j + 16 <= j1; j += 16) { /* 16 columns in 8 registers */
                    spec_v2 a[8] = {{0, 0}};
                    for (int k = 0; k < bs; k++) {
                        const spec_v2 qk = {qi[k], qi[k]};
                        const double *xk = xr[k] + j;
                        for (int u = 0; u < 8; u++) {
                            spec_v2 xv;
                            memcpy(&xv, xk + 2 * u, sizeof xv);
                            a[u] += qk * xv;
                        }
                    }
                    memcpy(yr + j, a, sizeof a);
                }
                for (; j < j1; j++) {
                    double acc = 0;
                    for (int k = 0; k < bs; k++)
                        acc += qi[k] * xr[k][j];
                    yr[j] = acc;
                }
            }
        }
    }
}

/* Applies Q = L_nl ... L_1 to the d x n matrix in *x (row-major), with *tmp
 * (same size) as scratch; on return *x holds the result (the two buffers may
 * have been swapped). */
static void spec_transform(const struct spec_level *lv, int nl, int64_t d, int64_t n, double **x, double **tmp) {
    for (int l = 0; l < nl; l++) {
        spec_apply(&lv[l], d, n, *x, *tmp);
        double *t = *x;
        *x = *tmp;
        *tmp = t;
    }
}

static void gen_store(enum st_dtype dtype, float v, unsigned char *p);

/* Tensor t (d0 = d_out, d1 = d_in) into buf (d_out x d_in, row-major, the
 * on-disk dtype). -ENOMEM if the scratch cannot be allocated. */
static int spec_matrix(const struct gen_opts *o, const struct gen_tensor *t, struct gen_rng *g, unsigned char *buf) {
    const int64_t dout = t->d0, din = t->d1, r = dout < din ? dout : din;
    const int nli = spec_nlevels(din), nlo = spec_nlevels(dout);
    struct spec_level lvi[8] = {{0}}, lvo[8] = {{0}}; /* 6 levels at most: d <= 2^18 */
    size_t ne = (size_t)dout * (size_t)din;
    double *x = calloc(ne, sizeof *x), *y = malloc(ne * sizeof *y);
    int rc = -ENOMEM;
    if (!x || !y || spec_levels_new(g, lvi, nli, din) < 0)
        goto out;
    if (spec_levels_new(g, lvo, nlo, dout) < 0)
        goto out;
    double sum = 0;
    for (int64_t k = r - 1; k >= 0; k--) /* smallest first */
        sum += pow((double)(k + 1), -2.0 * o->decay);
    const double c = sqrt((double)dout * (double)din * t->std * t->std / sum);
    /* x = D^T (d_in x d_out), then Q_in D^T. */
    for (int64_t k = 0; k < r; k++)
        x[(size_t)k * (size_t)dout + (size_t)k] = c * pow((double)(k + 1), -o->decay);
    spec_transform(lvi, nli, din, dout, &x, &y);
    /* y = (Q_in D^T)^T = D Q_in^T (d_out x d_in), in 32 x 32 tiles. */
    for (int64_t i0 = 0; i0 < din; i0 += 32)
        for (int64_t j0 = 0; j0 < dout; j0 += 32)
            for (int64_t i = i0; i < i0 + 32 && i < din; i++)
                for (int64_t j = j0; j < j0 + 32 && j < dout; j++)
                    y[(size_t)j * (size_t)din + (size_t)i] = x[(size_t)i * (size_t)dout + (size_t)j];
    spec_transform(lvo, nlo, dout, din, &y, &x);
    const size_t es = st_dtype_size(o->dtype);
    for (size_t i = 0; i < ne; i++)
        gen_store(o->dtype, (float)y[i], buf + i * es);
    rc = 0;
out:
    spec_levels_free(lvi, nli);
    spec_levels_free(lvo, nlo);
    free(x);
    free(y);
    return rc;
}

static void gen_store(enum st_dtype dtype, float v, unsigned char *p) {
    if (dtype == ST_F32) {
        uint32_t u;
        memcpy(&u, &v, 4);
        for (int b = 0; b < 4; b++)
            p[b] = (unsigned char)(u >> (8 * b));
    } else {
        uint16_t h = dtype == ST_BF16 ? st_f32_to_bf16(v) : st_f32_to_f16(v);
        p[0] = (unsigned char)(h & 0xff); /* little-endian, as safetensors stores */
        p[1] = (unsigned char)(h >> 8);
    }
}

/* Generates tensor i into buf (nelem elements of the on-disk dtype). Returns
 * 0, or -ENOMEM (--spectrum-decay's scratch). */
static int gen_fill(const struct gen_opts *o, const struct gen_tensor *t, uint64_t i, unsigned char *buf,
                    size_t nelem) {
    struct gen_rng g;
    gen_rng_seed(&g, o->seed, i + 1);
    size_t es = st_dtype_size(o->dtype);
    if (o->decay > 0 && t->linear)
        return spec_matrix(o, t, &g, buf);
    for (size_t j = 0; j < nelem; j++) {
        float v = t->ones ? (t->std > 0 ? (float)(1.0 + t->std * gen_rng_normal(&g)) : 1.0f)
                          : (float)(t->std * gen_rng_normal(&g));
        gen_store(o->dtype, v, buf + j * es);
    }
    return 0;
}

static int gen_config(const struct gen_opts *o, struct sv_err *err) {
    char path[4096], tmp[4200];
    snprintf(path, sizeof path, "%s/config.json", o->out);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return sv_err_set(err, -errno, "cannot create '%s': %s", tmp, strerror(errno));
    const char *td = o->dtype == ST_BF16 ? "bfloat16" : o->dtype == ST_F16 ? "float16" : "float32";
    if (o->family != GEN_LLAMA) {
        /* The fields of Qwen2.5-0.5B's / Qwen3-0.6B's config.json, with our shapes. */
        int q3 = o->family == GEN_QWEN3;
        fprintf(f,
                "{\n"
                "  \"architectures\": [\"%s\"],\n"
                "  \"model_type\": \"%s\",\n"
                "%s"
                "  \"attention_dropout\": 0.0,\n"
                "  \"bos_token_id\": %d,\n"
                "  \"eos_token_id\": %d,\n",
                q3 ? "Qwen3ForCausalLM" : "Qwen2ForCausalLM", q3 ? "qwen3" : "qwen2",
                q3 ? "  \"attention_bias\": false,\n" : "", o->vocab > 1 ? o->vocab - 2 : 0, o->vocab - 1);
        if (o->head_dim)
            fprintf(f, "  \"head_dim\": %d,\n", o->head_dim);
        fprintf(f,
                "  \"hidden_act\": \"silu\",\n"
                "  \"hidden_size\": %d,\n"
                "  \"initializer_range\": 0.02,\n"
                "  \"intermediate_size\": %d,\n"
                "  \"max_position_embeddings\": %d,\n"
                "  \"max_window_layers\": %d,\n"
                "  \"num_attention_heads\": %d,\n"
                "  \"num_hidden_layers\": %d,\n"
                "  \"num_key_value_heads\": %d,\n"
                "  \"rms_norm_eps\": 1e-06,\n"
                "%s"
                "  \"rope_theta\": 1000000.0,\n"
                "  \"sliding_window\": %s,\n"
                "  \"tie_word_embeddings\": %s,\n"
                "  \"torch_dtype\": \"%s\",\n"
                "  \"use_cache\": true,\n"
                "  \"use_sliding_window\": false,\n"
                "  \"vocab_size\": %d,\n"
                "  \"svdllm_synthetic\": {\"generator\": \"svdllm-genmodel\", \"seed\": %llu",
                o->hidden, o->ffn, o->max_pos, o->layers, o->heads, o->layers, o->kv_heads,
                q3 ? "  \"rope_scaling\": null,\n" : "", q3 ? "null" : "4096", o->tie ? "true" : "false", td,
                o->vocab, (unsigned long long)o->seed);
        goto tail;
    }
    fprintf(f,
            "{\n"
            "  \"architectures\": [\"LlamaForCausalLM\"],\n"
            "  \"model_type\": \"llama\",\n"
            "  \"hidden_act\": \"silu\",\n"
            "  \"hidden_size\": %d,\n"
            "  \"intermediate_size\": %d,\n"
            "  \"num_hidden_layers\": %d,\n"
            "  \"num_attention_heads\": %d,\n"
            "  \"num_key_value_heads\": %d,\n"
            "  \"vocab_size\": %d,\n"
            "  \"max_position_embeddings\": %d,\n"
            "  \"rms_norm_eps\": 1e-05,\n"
            "  \"rope_theta\": 10000.0,\n"
            "  \"rope_scaling\": null,\n"
            "  \"attention_bias\": false,\n"
            "  \"mlp_bias\": false,\n"
            "  \"tie_word_embeddings\": %s,\n"
            "  \"bos_token_id\": 1,\n"
            "  \"eos_token_id\": 2,\n",
            o->hidden, o->ffn, o->layers, o->heads, o->kv_heads, o->vocab, o->max_pos, o->tie ? "true" : "false");
    if (o->head_dim)
        fprintf(f, "  \"head_dim\": %d,\n", o->head_dim);
    fprintf(f,
            "  \"torch_dtype\": \"%s\",\n"
            "  \"svdllm_synthetic\": {\"generator\": \"svdllm-genmodel\", \"seed\": %llu",
            td, (unsigned long long)o->seed);
tail:
    if (o->decay > 0)
        fprintf(f, ", \"spectrum_decay\": %.17g", o->decay);
    fprintf(f, "}\n}\n");
    int bad = ferror(f);
    if (fflush(f) != 0 || fsync(fileno(f)) != 0)
        bad = 1;
    int e = errno;
    if (fclose(f) != 0 || bad) {
        unlink(tmp);
        return sv_err_set(err, -(e ? e : EIO), "cannot write '%s': %s", tmp, strerror(e ? e : EIO));
    }
    if (rename(tmp, path) < 0) {
        e = errno;
        unlink(tmp);
        return sv_err_set(err, -e, "cannot rename '%s' to '%s': %s", tmp, path, strerror(e));
    }
    return 0;
}

static int gen_model(const struct gen_opts *o, struct sv_err *err) {
    char path[4096];
    struct st_writer *w = NULL;
    struct gen_tensor *t = calloc(GEN_MAX_TENSORS, sizeof *t);
    unsigned char *buf = NULL;
    int r = 0;
    if (!t)
        return sv_err_set(err, -ENOMEM, "out of memory");
    if (mkdir(o->out, 0755) < 0 && errno != EEXIST) {
        r = sv_err_set(err, -errno, "cannot create directory '%s': %s", o->out, strerror(errno));
        goto out;
    }
    /* An old config.json would make a half-written directory look complete. */
    snprintf(path, sizeof path, "%s/config.json", o->out);
    if (unlink(path) < 0 && errno != ENOENT) {
        r = sv_err_set(err, -errno, "cannot remove '%s': %s", path, strerror(errno));
        goto out;
    }
    size_t n = gen_plan(o, t), maxel = 0;
    snprintf(path, sizeof path, "%s/model.safetensors", o->out);
    if ((r = st_writer_new(&w, path, err)) < 0)
        goto out;
    if ((r = st_writer_meta(w, "format", "pt", err)) < 0)
        goto out;
    for (size_t i = 0; i < n; i++) {
        int64_t shape[2] = {t[i].d0, t[i].d1};
        if ((r = st_writer_declare(w, t[i].name, o->dtype, t[i].d1 ? 2 : 1, shape, err)) < 0)
            goto out;
        size_t ne = (size_t)t[i].d0 * (size_t)(t[i].d1 ? t[i].d1 : 1);
        maxel = ne > maxel ? ne : maxel;
    }
    if (!(buf = malloc(maxel * st_dtype_size(o->dtype)))) {
        r = sv_err_set(err, -ENOMEM, "out of memory for a tensor of %zu elements", maxel);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        size_t ne = (size_t)t[i].d0 * (size_t)(t[i].d1 ? t[i].d1 : 1);
        if (gen_fill(o, &t[i], i, buf, ne) < 0) {
            r = sv_err_set(err, -ENOMEM, "out of memory for the spectrum of %s", t[i].name);
            goto out;
        }
        if ((r = st_writer_write_raw(w, t[i].name, buf, ne * st_dtype_size(o->dtype), err)) < 0)
            goto out;
    }
    r = st_writer_finish(w, err);
    w = NULL;
    if (r == 0)
        r = gen_config(o, err);
out:
    st_writer_free(w);
    free(buf);
    free(t);
    return r;
}

#ifndef SV_VERSION
#define SV_VERSION "unknown"
#endif

static void usage(FILE *f) {
    fprintf(f, "usage: svdllm-genmodel --out DIR --hidden D --layers N --heads H [--kv-heads K] --ffn F --vocab V\n"
               "                       [--dtype bf16|f16|f32] [--seed S] [--max-pos P] [--spectrum-decay A]\n"
               "                       [--family llama|qwen2|qwen3] [--head-dim N] [--tie-embeddings]\n"
               "  --family qwen2: q/k/v biases; qwen3: q_norm/k_norm; both: Qwen's config.json fields\n"
               "  --head-dim N: head size apart from hidden / heads (even); --tie-embeddings: no lm_head.weight\n"
               "  --spectrum-decay A: decoder linears get singular values proportional to (i+1)^-A, A in (0, 8]\n"
               "       svdllm-genmodel --help | --version\n");
}

int main(int argc, char **argv) {
    static const struct option opts[] = {
        {"out", required_argument, 0, 'o'},    {"hidden", required_argument, 0, 'd'},
        {"layers", required_argument, 0, 'l'}, {"heads", required_argument, 0, 'H'},
        {"kv-heads", required_argument, 0, 'K'}, {"ffn", required_argument, 0, 'f'},
        {"vocab", required_argument, 0, 'v'},  {"dtype", required_argument, 0, 't'},
        {"seed", required_argument, 0, 's'},   {"max-pos", required_argument, 0, 'p'},
        {"spectrum-decay", required_argument, 0, 'a'},
        {"family", required_argument, 0, 'F'},    {"head-dim", required_argument, 0, 'D'},
        {"tie-embeddings", no_argument, 0, 'T'},
        {"help", no_argument, 0, 'h'},         {"version", no_argument, 0, 'V'},
        {0, 0, 0, 0},
    };
    /* Limits match what config.c accepts. */
    static const struct {
        int opt;
        const char *name;
        long lo, hi;
    } lim[] = {
        {'d', "--hidden", 2, 1 << 16}, {'l', "--layers", 1, 1024}, {'H', "--heads", 1, 1024},
        {'K', "--kv-heads", 1, 1024},  {'f', "--ffn", 1, 1 << 18}, {'v', "--vocab", 1, 1 << 22},
        {'p', "--max-pos", 1, 1 << 24}, {'D', "--head-dim", 2, 4096},
    };
    struct gen_opts o = {.dtype = ST_BF16, .max_pos = 4096};
    long val[128] = {0};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'o': o.out = optarg; break;
        case 't':
            if (strcmp(optarg, "bf16") == 0)
                o.dtype = ST_BF16;
            else if (strcmp(optarg, "f16") == 0)
                o.dtype = ST_F16;
            else if (strcmp(optarg, "f32") == 0)
                o.dtype = ST_F32;
            else {
                fprintf(stderr, "svdllm-genmodel: --dtype '%s' must be bf16, f16 or f32\n", optarg);
                return 2;
            }
            break;
        case 's': {
            char *end;
            errno = 0;
            unsigned long long s = strtoull(optarg, &end, 10);
            if (errno || end == optarg || *end || optarg[0] == '-') {
                fprintf(stderr, "svdllm-genmodel: --seed '%s' must be a non-negative integer\n", optarg);
                return 2;
            }
            o.seed = s;
            break;
        }
        case 'a': {
            char *end;
            errno = 0;
            double a = strtod(optarg, &end);
            if (errno || end == optarg || *end || !(a > 0 && a <= 8)) {
                fprintf(stderr, "svdllm-genmodel: --spectrum-decay '%s' must be a number in (0, 8]\n", optarg);
                return 2;
            }
            o.decay = a;
            break;
        }
        case 'F':
            if (strcmp(optarg, "llama") == 0)
                o.family = GEN_LLAMA;
            else if (strcmp(optarg, "qwen2") == 0)
                o.family = GEN_QWEN2;
            else if (strcmp(optarg, "qwen3") == 0)
                o.family = GEN_QWEN3;
            else {
                fprintf(stderr, "svdllm-genmodel: --family '%s' must be llama, qwen2 or qwen3\n", optarg);
                return 2;
            }
            break;
        case 'T': o.tie = 1; break;
        case 'h': usage(stdout); return 0;
        case 'V': printf("svdllm-genmodel %s\n", SV_VERSION); return 0;
        case '?': usage(stderr); return 2;
        default:
            for (size_t i = 0; i < sizeof lim / sizeof lim[0]; i++)
                if (lim[i].opt == c && args_parse_long(optarg, lim[i].lo, lim[i].hi, &val[c]) < 0) {
                    fprintf(stderr, "svdllm-genmodel: %s '%s' must be an integer in [%ld, %ld]\n", lim[i].name,
                            optarg, lim[i].lo, lim[i].hi);
                    return 2;
                }
            break;
        }
    }
    o.hidden = (int)val['d'];
    o.layers = (int)val['l'];
    o.heads = (int)val['H'];
    o.kv_heads = val['K'] ? (int)val['K'] : o.heads;
    o.ffn = (int)val['f'];
    o.vocab = (int)val['v'];
    if (val['p'])
        o.max_pos = (int)val['p'];
    if (optind < argc || !o.out || !o.hidden || !o.layers || !o.heads || !o.ffn || !o.vocab) {
        fprintf(stderr, "svdllm-genmodel: needs --out, --hidden, --layers, --heads, --ffn and --vocab\n");
        return 2;
    }
    o.head_dim = (int)val['D'];
    if (o.head_dim && o.head_dim % 2 != 0) {
        fprintf(stderr, "svdllm-genmodel: --head-dim %d must be even for RoPE\n", o.head_dim);
        return 2;
    }
    if (!o.head_dim && (o.hidden % o.heads != 0 || (o.hidden / o.heads) % 2 != 0)) {
        fprintf(stderr, "svdllm-genmodel: --hidden %d must be --heads %d times an even head size\n", o.hidden,
                o.heads);
        return 2;
    }
    if (o.heads % o.kv_heads != 0) {
        fprintf(stderr, "svdllm-genmodel: --heads %d is not a multiple of --kv-heads %d\n", o.heads, o.kv_heads);
        return 2;
    }
    if (strlen(o.out) > 4000) {
        fprintf(stderr, "svdllm-genmodel: --out path is too long\n");
        return 2;
    }
    struct sv_err err = {0};
    if (gen_model(&o, &err) < 0) {
        fprintf(stderr, "svdllm-genmodel: %s\n", err.msg);
        return 1;
    }
    return 0;
}
