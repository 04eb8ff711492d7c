/* model: LLaMA weights from safetensors, one decoder layer at a time. */
#include "model.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void model_proj_prefix(int l, enum config_proj p, char *buf, size_t n) {
    snprintf(buf, n, "model.layers.%d.%s", l, config_proj_name(p));
}

void model_bias_name(int l, enum config_proj p, int rank, char *buf, size_t n) {
    snprintf(buf, n, "model.layers.%d.%s.%sbias", l, config_proj_name(p), rank > 0 ? "1." : "");
}

static const char *embed_name(const struct model *m) {
    /* Tied models may store only lm_head.weight, aliased by __metadata__. */
    if (st_find(m->st, "model.embed_tokens.weight"))
        return "model.embed_tokens.weight";
    return m->cfg.tie_embeddings ? "lm_head.weight" : "model.embed_tokens.weight";
}

static const char *head_name(const struct model *m) {
    if (st_find(m->st, "lm_head.weight"))
        return "lm_head.weight";
    return m->cfg.tie_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
}

/* Checks NAME exists, is F32/F16/BF16 and has shape (d0, d1) (d1 < 0: 1-D). */
static int check_tensor(const struct model *m, const char *name, int64_t d0, int64_t d1, struct sv_err *err) {
    const struct st_tensor *t = st_find(m->st, name);
    if (!t)
        return sv_err_set(err, -ENOENT, "model '%s': tensor '%s' is missing", m->dir, name);
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16)
        return sv_err_set(err, -ENOTSUP, "model '%s': tensor '%s': dtype %s not supported (F32, F16, BF16)",
                          m->dir, name, st_dtype_name(t->dtype));
    int want_nd = d1 < 0 ? 1 : 2;
    if (t->ndim != want_nd || t->shape[0] != d0 || (want_nd == 2 && t->shape[1] != d1))
        return sv_err_set(err, -EINVAL, "model '%s': tensor '%s' has shape [%lld%s%lld], want [%lld%s%lld]",
                          m->dir, name, (long long)t->shape[0], t->ndim > 1 ? ", " : "",
                          t->ndim > 1 ? (long long)t->shape[1] : 0LL, (long long)d0, d1 < 0 ? "" : ", ",
                          d1 < 0 ? 0LL : (long long)d1);
    return 0;
}

/* Rank of a stored projection: 0 if dense, k if factored, <0 if neither is present. */
static int proj_rank(const struct model *m, int l, enum config_proj p, struct sv_err *err) {
    char pre[200], name[ST_MAX_NAME];
    int d_out, d_in;
    config_proj_shape(&m->cfg, p, &d_out, &d_in);
    model_proj_prefix(l, p, pre, sizeof pre);
    snprintf(name, sizeof name, "%s.weight", pre);
    if (st_find(m->st, name))
        return check_tensor(m, name, d_out, d_in, err);
    snprintf(name, sizeof name, "%s.0.weight", pre);
    const struct st_tensor *b = st_find(m->st, name);
    if (!b)
        return sv_err_set(err, -ENOENT, "model '%s': tensor '%s.weight' is missing", m->dir, pre);
    if (b->ndim != 2 || b->shape[0] < 1 || b->shape[0] > (d_out < d_in ? d_out : d_in))
        return sv_err_set(err, -EINVAL, "model '%s': factor '%s' has an invalid shape", m->dir, name);
    int k = (int)b->shape[0];
    int r;
    if ((r = check_tensor(m, name, k, d_in, err)) < 0)
        return r;
    snprintf(name, sizeof name, "%s.1.weight", pre);
    if ((r = check_tensor(m, name, d_out, k, err)) < 0)
        return r;
    if (m->cfg.rank[l][p] && m->cfg.rank[l][p] != k)
        return sv_err_set(err, -EINVAL, "model '%s': '%s' has rank %d but config.json low_rank says %d", m->dir,
                          pre, k, m->cfg.rank[l][p]);
    return k;
}

static int validate(const struct model *m, struct sv_err *err) {
    const struct config *c = &m->cfg;
    int r;
    char name[ST_MAX_NAME];
    if ((r = check_tensor(m, embed_name(m), c->vocab, c->hidden, err)) < 0 ||
        (r = check_tensor(m, head_name(m), c->vocab, c->hidden, err)) < 0 ||
        (r = check_tensor(m, "model.norm.weight", c->hidden, -1, err)) < 0)
        return r;
    for (int l = 0; l < c->n_layers; l++) {
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
        if ((r = check_tensor(m, name, c->hidden, -1, err)) < 0)
            return r;
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
        if ((r = check_tensor(m, name, c->hidden, -1, err)) < 0)
            return r;
        for (int p = 0; p < PROJ_COUNT; p++) {
            int k = proj_rank(m, l, p, err), d_out, d_in;
            if (k < 0)
                return k;
            config_proj_shape(c, p, &d_out, &d_in);
            model_bias_name(l, p, k, name, sizeof name);
            if (c->bias[p] && (r = check_tensor(m, name, d_out, -1, err)) < 0)
                return r;
        }
        if (c->qk_norm) {
            snprintf(name, sizeof name, "model.layers.%d.self_attn.q_norm.weight", l);
            if ((r = check_tensor(m, name, c->head_dim, -1, err)) < 0)
                return r;
            snprintf(name, sizeof name, "model.layers.%d.self_attn.k_norm.weight", l);
            if ((r = check_tensor(m, name, c->head_dim, -1, err)) < 0)
                return r;
        }
    }
    return 0;
}

int model_open(struct model **ret, const char *dir, struct sv_err *err) {
    struct model *m = calloc(1, sizeof *m);
    char path[PATH_MAX + 32];
    int r;
    if (!m)
        return sv_err_set(err, -ENOMEM, "model '%s': out of memory", dir);
    snprintf(m->dir, sizeof m->dir, "%s", dir);
    snprintf(path, sizeof path, "%s/config.json", dir);
    if ((r = config_load(&m->cfg, path, err)) < 0) {
        free(m);
        return r;
    }
    if ((r = st_open(&m->st, dir, err)) < 0 || (r = validate(m, err)) < 0) {
        model_free(m);
        return r;
    }
    *ret = m;
    return 0;
}

void model_free(struct model *m) {
    if (!m)
        return;
    st_free(m->st);
    config_free(&m->cfg);
    free(m);
}

/* Allocates and reads a (d0, d1) tensor as f32, then releases its pages. */
static int load_f32(const struct model *m, const char *name, int64_t d0, int64_t d1, float **ret,
                    struct sv_err *err) {
    size_t n = (size_t)d0 * (size_t)(d1 < 0 ? 1 : d1);
    float *buf = malloc(n * sizeof *buf);
    if (!buf)
        return sv_err_set(err, -ENOMEM, "model '%s': tensor '%s': out of memory", m->dir, name);
    int r = st_read_f32_shape(m->st, name, d0, d1, buf, err);
    if (r < 0) {
        free(buf);
        return r;
    }
    st_release(m->st, name);
    *ret = buf;
    return 0;
}

int model_layer_load(const struct model *m, int l, struct layer_w *ret, struct sv_err *err) {
    const struct config *c = &m->cfg;
    struct layer_w lw;
    char name[ST_MAX_NAME], pre[200];
    int r;
    memset(&lw, 0, sizeof lw);
    lw.index = l;
    if (l < 0 || l >= c->n_layers)
        return sv_err_set(err, -EINVAL, "model '%s': no layer %d", m->dir, l);
    snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
    if ((r = load_f32(m, name, c->hidden, -1, &lw.attn_norm, err)) < 0)
        goto fail;
    snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
    if ((r = load_f32(m, name, c->hidden, -1, &lw.ffn_norm, err)) < 0)
        goto fail;
    for (int p = 0; p < PROJ_COUNT; p++) {
        struct linear *lin = &lw.proj[p];
        config_proj_shape(c, p, &lin->d_out, &lin->d_in);
        if ((r = proj_rank(m, l, p, err)) < 0)
            goto fail;
        lin->rank = r;
        model_proj_prefix(l, p, pre, sizeof pre);
        if (lin->rank == 0) {
            snprintf(name, sizeof name, "%s.weight", pre);
            if ((r = load_f32(m, name, lin->d_out, lin->d_in, &lin->w, err)) < 0)
                goto fail;
        } else {
            snprintf(name, sizeof name, "%s.0.weight", pre);
            if ((r = load_f32(m, name, lin->rank, lin->d_in, &lin->b, err)) < 0)
                goto fail;
            snprintf(name, sizeof name, "%s.1.weight", pre);
            if ((r = load_f32(m, name, lin->d_out, lin->rank, &lin->a, err)) < 0)
                goto fail;
        }
        model_bias_name(l, p, lin->rank, name, sizeof name);
        if (c->bias[p] && (r = load_f32(m, name, lin->d_out, -1, &lw.bias[p], err)) < 0)
            goto fail;
    }
    if (c->qk_norm) {
        snprintf(name, sizeof name, "model.layers.%d.self_attn.q_norm.weight", l);
        if ((r = load_f32(m, name, c->head_dim, -1, &lw.q_norm, err)) < 0)
            goto fail;
        snprintf(name, sizeof name, "model.layers.%d.self_attn.k_norm.weight", l);
        if ((r = load_f32(m, name, c->head_dim, -1, &lw.k_norm, err)) < 0)
            goto fail;
    }
    *ret = lw;
    return 0;
fail:
    model_layer_free(&lw);
    return r;
}

void model_layer_free(struct layer_w *lw) {
    if (!lw)
        return;
    free(lw->attn_norm);
    free(lw->ffn_norm);
    for (int p = 0; p < PROJ_COUNT; p++) {
        free(lw->proj[p].w);
        free(lw->proj[p].a);
        free(lw->proj[p].b);
        free(lw->bias[p]);
    }
    free(lw->q_norm);
    free(lw->k_norm);
    memset(lw, 0, sizeof *lw);
}

int model_embed(const struct model *m, const int32_t *ids, size_t n, float *x, struct sv_err *err) {
    const struct st_tensor *t = st_find(m->st, embed_name(m));
    size_t d = (size_t)m->cfg.hidden;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= m->cfg.vocab)
            return sv_err_set(err, -EINVAL, "model '%s': token id %d at position %zu is outside the vocabulary (%d)",
                              m->dir, (int)ids[i], i, m->cfg.vocab);
        const unsigned char *row = (const unsigned char *)t->data + (size_t)ids[i] * d * st_dtype_size(t->dtype);
        float *out = x + i * d;
        /* Only the rows used are converted: the 7B table is 500 MB in f32. */
        if (t->dtype == ST_F32) {
            memcpy(out, row, d * sizeof(float));
        } else {
            for (size_t j = 0; j < d; j++) {
                uint16_t h;
                memcpy(&h, row + 2 * j, 2);
                out[j] = t->dtype == ST_F16 ? st_f16_to_f32(h) : st_bf16_to_f32(h);
            }
        }
    }
    return 0;
}

int model_head_load(const struct model *m, struct head_w *ret, struct sv_err *err) {
    struct head_w h = {0};
    int r;
    if ((r = load_f32(m, "model.norm.weight", m->cfg.hidden, -1, &h.norm, err)) < 0)
        return r;
    if ((r = load_f32(m, head_name(m), m->cfg.vocab, m->cfg.hidden, &h.w, err)) < 0) {
        free(h.norm);
        return r;
    }
    *ret = h;
    return 0;
}

void model_head_free(struct head_w *h) {
    if (!h)
        return;
    free(h->norm);
    free(h->w);
    h->norm = h->w = NULL;
}

uint64_t model_linear_params(const struct model *m) {
    uint64_t total = 0;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int p = 0; p < PROJ_COUNT; p++) {
            int d_out, d_in;
            config_proj_shape(&m->cfg, p, &d_out, &d_in);
            int k = proj_rank(m, l, p, NULL);
            total += k > 0 ? (uint64_t)k * (uint64_t)(d_out + d_in) : (uint64_t)d_out * (uint64_t)d_in;
        }
    return total;
}
