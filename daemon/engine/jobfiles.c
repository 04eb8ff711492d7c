/* jobfiles: every file a job writes and reads back, and the engine's one
 * user of jansson: the layer checkpoints, ranks.json, and the output
 * (config.json, model.safetensors, compression.json, the tokenizer files,
 * publishing OUT.tmp as OUT).
 * Work directory of a job:
 *     KEY                  the job key (hash of every input); a resume whose
 *                          inputs changed is refused
 *     hidden-L.f32         calibration hidden states entering layer L:
 *                          (nsamples, seqlen, hidden) f32, written atomically;
 *                          for rom, svdllm-update and rrr those of the
 *                          COMPRESSED model (layers 0..L-1 already replaced)
 *     orig-L.f32           svdllm-update and rrr: the original model's states
 *     ranks.json           --ranks auto and sensitive: the allocation (and
 *                          sensitive's choice), written once before layer 0
 *                          (pre-L.f32 are the pre-pass's states)
 *     method.json          --method auto: the method chosen and every
 *                          candidate's held-out loss, written before layer 0
 *     layer-L.safetensors  layer L's factors (f32), LoRAP's pruned MLP, and in
 *                          __metadata__ the per-matrix report and the sha256
 *                          of hidden-(L+1) (and orig-(L+1))
 * Layer L is done when the store has its row (file, size, sha256). On resume
 * the first layer without a row is redone from hidden-L (and orig-L), whose
 * checksums the previous layer's file records. Same inputs give the same
 * bytes: fixed window choice, fixed chunk order, BLIS's deterministic
 * partitioning, and no timestamps in anything that reaches the model files.
 * The output is assembled in OUT.tmp from the layer files and renamed to
 * OUT (jobfiles_publish). */
#include "jobfiles.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "afile.h"
#include "autosel.h"
#include "fault.h"
#include "forward.h"
#include "mono.h"
#include "ranks.h"
#include "rrr.h"
#include "sha256.h"
#include "st.h"

static int report_json(const struct mat_report *rep, char **ret) {
    json_t *o = json_object();
    for (int p = 0; p < PROJ_COUNT; p++) {
        json_t *e;
        if (rep[p].kind == MAT_DENSE)
            e = json_pack("{s:s}", "kept", "dense");
        else if (rep[p].kind == MAT_PRUNED)
            e = json_pack("{s:s, s:i, s:f}", "pruned", "lorap-channels", "channels_kept", rep[p].channels, "seconds",
                          rep[p].seconds);
        else
            e = json_pack("{s:i, s:i, s:f, s:f, s:s, s:f, s:s, s:f, s:f}", "rank", rep[p].rank, "k_effective",
                          rep[p].k_effective, "retained_energy", rep[p].energy, "discarded", rep[p].discarded,
                          "fallback", rep[p].fallback ? "shifted-cholesky" : "none", "shift", rep[p].shift,
                          "side", rep[p].side == 'i' ? "input" : "output", "gflop", rep[p].gflop, "seconds",
                          rep[p].seconds);
        if (rep[p].refit) {
            json_object_set_new(e, "refit_loss_before", json_real(rep[p].loss_before));
            json_object_set_new(e, "refit_loss_after", json_real(rep[p].loss_after));
            json_object_set_new(e, "refit_dropped_directions", json_integer(rep[p].refit_dropped));
        }
        if (rep[p].rrr) {
            json_object_set_new(e, "rrr_lambda", json_real(rep[p].rrr_lambda));
            json_object_set_new(e, "rrr_lambda_rule", json_string(rep[p].rrr_held ? "held-out" : "fixed"));
            if (rep[p].rrr_held) {
                json_t *a = json_array();
                for (int li = 0; li < RRR_NLAMBDA; li++)
                    json_array_append_new(a, json_real(rep[p].rrr_heldout[li]));
                json_object_set_new(e, "heldout_loss", a);
            }
            json_object_set_new(e, "calib_loss", json_real(rep[p].loss_after));
            json_object_set_new(e, "calib_loss_lambda0", json_real(rep[p].loss_lambda0));
            json_object_set_new(e, "calib_loss_svdllm", json_real(rep[p].loss_svdllm));
            json_object_set_new(e, "calib_loss_update", json_real(rep[p].loss_update));
        }
        json_object_set_new(o, config_proj_name(p), e);
    }
    *ret = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
    json_decref(o);
    return *ret ? 0 : -ENOMEM;
}

/* Writes layer-l.safetensors with the factor pairs in res (rank > 0), the
 * pruned MLP matrices (lorap) and, in its metadata, the report and the
 * checksums of the states written for layer l + 1; fills ck. */
int jobfiles_layer_write(struct job *j, const struct layer_w *lw, const struct lowrank_result *res, float *const pruned[3],
                       const struct mat_report *rep, const char *next_hex, const char *orig_next_hex,
                       struct compress_checkpoint *ck, struct sv_err *err) {
    int l = lw->index, r;
    char what[200], path[PATH_MAX + 64], name[ST_MAX_NAME + 32], *rj = NULL;
    struct st_writer *w = NULL;
    job_seg(j, COST_WRITE);
    job_progress(j, l, "checkpoint", 0);
    if ((r = report_json(rep, &rj)) < 0)
        return sv_err_set(err, r, "layer %d: out of memory for the report", l);
    job_work_path(j, path, sizeof path, "layer-%d.safetensors", l);
    if ((r = st_writer_new(&w, path, err)) < 0 || (r = st_writer_meta(w, "report", rj, err)) < 0 ||
        (r = st_writer_meta(w, "hidden_next_sha256", next_hex, err)) < 0 ||
        (orig_next_hex[0] && (r = st_writer_meta(w, "orig_next_sha256", orig_next_hex, err)) < 0))
        goto out;
    for (int pass = 0; pass < 2 && r == 0; pass++)
        for (int p = 0; p < PROJ_COUNT && r == 0; p++) {
            const struct linear *lin = &lw->proj[p];
            model_proj_prefix(l, p, what, sizeof what);
            if (pass == 1 && p == PROJ_COUNT / 2)
                fault_point("mid-write", l);
            if (res[p].k) {
                int64_t sb[2] = {res[p].k, lin->d_in}, sa[2] = {lin->d_out, res[p].k};
                snprintf(name, sizeof name, "%s.0.weight", what);
                r = pass ? st_writer_write_f32(w, name, res[p].b, (size_t)res[p].k * lin->d_in, err)
                         : st_writer_declare(w, name, ST_F32, 2, sb, err);
                snprintf(name, sizeof name, "%s.1.weight", what);
                if (r == 0)
                    r = pass ? st_writer_write_f32(w, name, res[p].a, (size_t)lin->d_out * res[p].k, err)
                             : st_writer_declare(w, name, ST_F32, 2, sa, err);
            } else if (rep[p].kind == MAT_PRUNED) {
                int keep = rep[p].channels;
                int64_t sh[2] = {p == PROJ_DOWN ? lin->d_out : keep, p == PROJ_DOWN ? keep : lin->d_in};
                snprintf(name, sizeof name, "%s.weight", what);
                r = pass ? st_writer_write_f32(w, name, pruned[p - PROJ_GATE], (size_t)sh[0] * sh[1], err)
                         : st_writer_declare(w, name, ST_F32, 2, sh, err);
            }
        }
    if (r < 0)
        goto out;
    r = st_writer_finish(w, err);
    w = NULL;
    if (r < 0)
        goto out;
    snprintf(ck->file, sizeof ck->file, "layer-%d.safetensors", l);
    r = sha256_file(path, ck->sha256, &ck->size, err);
out:
    st_writer_free(w);
    free(rj);
    return r;
}

/* Reads a checkpointed layer file's metadata value (hidden_next_sha256 or report). */
int jobfiles_layer_meta(const struct job *j, int l, const char *key, char *out, size_t n, struct sv_err *err) {
    char path[PATH_MAX + 64];
    job_work_path(j, path, sizeof path, "layer-%d.safetensors", l);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return sv_err_set(err, -errno, "checkpoint '%s': %s", path, strerror(errno));
    uint64_t hl = 0;
    int r = 0;
    char *hdr = NULL;
    if (pread(fd, &hl, 8, 0) != 8 || hl > (1u << 26) || !(hdr = malloc(hl + 1)) ||
        pread(fd, hdr, hl, 8) != (ssize_t)hl) {
        r = sv_err_set(err, -EIO, "checkpoint '%s': unreadable header", path);
        goto out;
    }
    json_t *root = json_loadb(hdr, hl, 0, NULL);
    const char *v = json_string_value(json_object_get(json_object_get(root, "__metadata__"), key));
    if (!v)
        r = sv_err_set(err, -EIO, "checkpoint '%s': no '%s' in its metadata", path, key);
    else
        snprintf(out, n, "%s", v);
    json_decref(root);
out:
    free(hdr);
    close(fd);
    return r;
}

/* Layer l's checkpoint: 1 if it has a committed row whose file is intact,
 * 0 if it has no row, 2 if the row's file is missing or not the recorded
 * bytes (why says what was found), < 0 if the lookup itself failed. */
int jobfiles_layer_committed(struct job *j, int l, char *why, size_t n_why, struct sv_err *err) {
    if (!j->h || !j->h->layer_lookup)
        return 0;
    struct compress_checkpoint ck;
    int r = j->h->layer_lookup(j->h->ctx, l, &ck);
    if (r <= 0)
        return r < 0 ? sv_err_set(err, r, "layer %d: checkpoint lookup failed", l) : 0;
    char path[PATH_MAX * 2 + 2], hex[65];
    uint64_t size = 0;
    struct sv_err e = {0};
    snprintf(path, sizeof path, "%s/%s", j->p->work_dir, ck.file);
    if (sha256_file(path, hex, &size, &e) < 0) {
        snprintf(why, n_why, "layer %d: checkpoint '%.400s' is recorded but unreadable: %s", l, path,
                 e.code == -ENOENT ? "missing" : strerror(-e.code));
        return 2;
    }
    if (size != ck.size || strcmp(hex, ck.sha256) != 0) {
        snprintf(why, n_why, "layer %d: checkpoint '%.400s' does not match its recorded size and sha256 "
                 "(%llu bytes, recorded %llu)", l, path, (unsigned long long)size, (unsigned long long)ck.size);
        return 2;
    }
    return 1;
}

/* Layer l as its checkpoint holds it: lc starts as lw (the original, dense)
 * and takes each factor pair of the file; the arrays go to f[], freed by the
 * caller. */
int jobfiles_layer_read(const struct job *j, const struct layer_w *lw, struct layer_w *lc,
                                 float *f[2 * PROJ_COUNT], struct sv_err *err) {
    char path[PATH_MAX + 64], name[ST_MAX_NAME + 32], what[200];
    struct st_model *m = NULL;
    int l = lw->index;
    *lc = *lw;
    job_work_path(j, path, sizeof path, "layer-%d.safetensors", l);
    int r = st_open_file(&m, path, err);
    for (int p = 0; p < PROJ_COUNT && r == 0; p++) {
        model_proj_prefix(l, p, what, sizeof what);
        snprintf(name, sizeof name, "%s.0.weight", what);
        const struct st_tensor *tb = st_find(m, name);
        if (!tb)
            continue;
        const struct linear *lin = &lw->proj[p];
        int64_t k = tb->ndim == 2 ? tb->shape[0] : 0;
        if (k < 1 || k > lin->d_in || k > lin->d_out) {
            r = sv_err_set(err, -EIO, "checkpoint '%s': tensor '%s' has an unexpected shape", path, name);
            break;
        }
        f[2 * p] = malloc((size_t)k * lin->d_in * sizeof(float));
        f[2 * p + 1] = malloc((size_t)lin->d_out * k * sizeof(float));
        if (!f[2 * p] || !f[2 * p + 1]) {
            r = sv_err_set(err, -ENOMEM, "layer %d: out of memory", l);
            break;
        }
        if ((r = st_read_f32_shape(m, name, k, lin->d_in, f[2 * p], err)) < 0)
            break;
        snprintf(name, sizeof name, "%s.1.weight", what);
        if ((r = st_read_f32_shape(m, name, lin->d_out, k, f[2 * p + 1], err)) < 0)
            break;
        lc->proj[p] = (struct linear){.d_out = lin->d_out, .d_in = lin->d_in, .rank = (int)k, .a = f[2 * p + 1],
                                      .b = f[2 * p]};
    }
    st_free(m);
    return r;
}

/* A job_choice as JSON (ranks.json, method.json, compression.json). */
static json_t *choice_json(const struct job_choice *ch) {
    json_t *a = json_array();
    for (int k = 0; k < ch->n; k++)
        json_array_append_new(a, json_pack("{s:s, s:f}", "name", ch->name[k], "heldout_loss", ch->loss[k]));
    return json_pack("{s:s, s:o, s:i, s:b, s:i, s:f}", "chosen", ch->name[ch->chosen], "candidates", a,
                     "heldout_windows", ch->windows, "in_sample", ch->in_sample, "layers_tried", ch->layers,
                     "seconds", ch->seconds);
}

/* The inverse of choice_json; -EIO when o is not one. */
static int choice_parse(json_t *o, struct job_choice *ch) {
    json_t *a = json_object_get(o, "candidates");
    const char *chosen = json_string_value(json_object_get(o, "chosen"));
    memset(ch, 0, sizeof *ch);
    if (!json_is_array(a) || !chosen || json_array_size(a) < 1 || json_array_size(a) > JOB_CHOICE_MAX)
        return -EIO;
    ch->n = (int)json_array_size(a);
    ch->chosen = -1;
    for (int k = 0; k < ch->n; k++) {
        json_t *e = json_array_get(a, (size_t)k), *v = json_object_get(e, "heldout_loss");
        const char *name = json_string_value(json_object_get(e, "name"));
        if (!name || !json_is_number(v) || strlen(name) >= sizeof ch->name[k])
            return -EIO;
        snprintf(ch->name[k], sizeof ch->name[k], "%s", name);
        ch->loss[k] = json_number_value(v);
        if (ch->chosen < 0 && !strcmp(name, chosen))
            ch->chosen = k;
    }
    ch->windows = (int)json_integer_value(json_object_get(o, "heldout_windows"));
    ch->in_sample = json_is_true(json_object_get(o, "in_sample"));
    ch->layers = (int)json_integer_value(json_object_get(o, "layers_tried"));
    ch->seconds = json_number_value(json_object_get(o, "seconds"));
    return ch->chosen < 0 ? -EIO : 0;
}

int jobfiles_method_write(const struct job *j, const char *path, struct sv_err *err) {
    json_t *root = json_pack("{s:s, s:o}", "method", params_method_name(j->p->method), "choice",
                             choice_json(&j->method_choice));
    char *text = json_dumps(root, JSON_COMPACT | JSON_REAL_PRECISION(17));
    json_decref(root);
    if (!text)
        return sv_err_set(err, -ENOMEM, "method choice: out of memory");
    int r = afile_write_atomic(j->p->work_dir, path, text, strlen(text), err);
    free(text);
    return r;
}

int jobfiles_method_read(struct job *j, const char *path, enum compress_method *ret, struct sv_err *err) {
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    const char *name = json_string_value(json_object_get(root, "method"));
    enum compress_method m;
    int r = 0;
    if (!name || params_method_parse(name, &m) < 0 || m == METHOD_AUTO ||
        choice_parse(json_object_get(root, "choice"), &j->method_choice) < 0)
        r = sv_err_set(err, -EIO, "method choice file '%s' is unreadable or damaged", path);
    else
        *ret = m;
    json_decref(root);
    return r;
}

int jobfiles_ranks_read(struct job *j, const char *path, struct sv_err *err) {
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je), *a = json_object_get(root, "ranks");
    int r = 0;
    if (!json_is_array(a) || json_array_size(a) != (size_t)j->c->n_layers)
        r = sv_err_set(err, -EIO, "rank file '%s' is unreadable (restart the job)", path);
    for (int l = 0; l < j->c->n_layers && r == 0; l++)
        for (int p = 0; p < PROJ_COUNT && r == 0; p++) {
            json_t *v = json_array_get(json_array_get(a, (size_t)l), (size_t)p);
            int d_out, d_in;
            config_proj_shape(j->c, p, &d_out, &d_in);
            if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > (d_out < d_in ? d_out : d_in))
                r = sv_err_set(err, -EIO, "rank file '%s' is damaged (restart the job)", path);
            else
                j->rank[l][p] = (int)json_integer_value(v);
        }
    json_t *ch = json_object_get(root, "choice");
    if (r == 0 && j->ranks == RANKS_SENSITIVE && choice_parse(ch, &j->rank_choice) < 0)
        r = sv_err_set(err, -EIO, "rank file '%s' has no readable choice (restart the job)", path);
    json_decref(root);
    return r;
}

int jobfiles_ranks_write(const struct job *j, const char *path, struct sv_err *err) {
    json_t *a = json_array();
    for (int l = 0; l < j->c->n_layers; l++) {
        json_t *row = json_array();
        for (int p = 0; p < PROJ_COUNT; p++)
            json_array_append_new(row, json_integer(j->rank[l][p]));
        json_array_append_new(a, row);
    }
    json_t *root = json_pack("{s:s, s:o}", "allocation", params_ranks_name(j->ranks), "ranks", a);
    if (j->rank_choice.n)
        json_object_set_new(root, "choice", choice_json(&j->rank_choice));
    char *text = json_dumps(root, JSON_COMPACT | JSON_REAL_PRECISION(17));
    json_decref(root);
    if (!text)
        return sv_err_set(err, -ENOMEM, "rank allocation: out of memory");
    int r = afile_write_atomic(j->p->work_dir, path, text, strlen(text), err);
    free(text);
    return r;
}

int jobfiles_key_check(const char *work_dir, const char *key, struct sv_err *err) {
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/KEY", work_dir);
    FILE *kf = fopen(path, "r");
    if (!kf) {
        char line[66];
        snprintf(line, sizeof line, "%s\n", key);
        return afile_write_atomic(work_dir, path, line, 65, err);
    }
    char old[80] = "";
    if (!fgets(old, sizeof old, kf))
        old[0] = '\0';
    fclose(kf);
    old[strcspn(old, "\n")] = '\0';
    if (strcmp(old, key) != 0)
        return sv_err_set(err, -ESTALE,
                          "inputs changed since the job started (job key %.12s..., now %.12s...): model, "
                          "calibration file or parameters differ; submit a new job",
                          old, key);
    return 0;
}

/* 1 if NAME is "model.layers.L.<proj><suffix>" for a layer of the job's model. */
static int is_proj_tensor(const struct job *j, const char *name, const char *suffix, int *ret_l, int *ret_p) {
    int l, n = 0;
    if (sscanf(name, "model.layers.%d.%n", &l, &n) != 1 || n == 0 || l < 0 || l >= j->c->n_layers)
        return 0;
    for (int p = 0; p < PROJ_COUNT; p++) {
        const char *pn = config_proj_name(p);
        size_t pl = strlen(pn);
        if (strncmp(name + n, pn, pl) == 0 && strcmp(name + n + pl, suffix) == 0) {
            *ret_l = l;
            *ret_p = p;
            return 1;
        }
    }
    return 0;
}

static int is_factored_name(const struct job *j, const char *name, int *ret_l, int *ret_p) {
    return is_proj_tensor(j, name, ".weight", ret_l, ret_p);
}

/* 1 if NAME is the bias of a projection ("model.layers.L.<proj>.bias"). */
static int is_bias_name(const struct job *j, const char *name, int *ret_l, int *ret_p) {
    return is_proj_tensor(j, name, ".bias", ret_l, ret_p);
}

/* A factored output is not a dense checkpoint: a loader that took it for
 * one (transformers' LlamaForCausalLM would find no <module>.weight,
 * initialise those layers at random and only warn) would compute garbage.
 * So its config names a model type and architecture of its own, which
 * AutoConfig, llama.cpp's converter and vLLM refuse by name, and keeps the
 * original ones in low_rank (base_model_type, base_architectures) for
 * config_load(), which reads "svdllm_<type>" as <type> with factor pairs
 * (the names are config.h's CONFIG_FACTORED_*). --dense outputs are plain
 * checkpoints and keep the original names. */
static void mark_factored_config(json_t *root, json_t *low_rank) {
    const char *mt = json_string_value(json_object_get(root, "model_type"));
    char type[96];
    snprintf(type, sizeof type, CONFIG_FACTORED_PREFIX "%s", mt ? mt : "llama");
    json_object_set(low_rank, "base_model_type", json_object_get(root, "model_type"));
    json_t *arch = json_object_get(root, "architectures");
    json_object_set_new(low_rank, "base_architectures", arch ? json_deep_copy(arch) : json_array());
    json_object_set_new(root, "model_type", json_string(type));
    json_object_set_new(root, "architectures", json_pack("[s]", CONFIG_FACTORED_ARCH));
}

static int write_config(const struct job *j, const char *dir, struct sv_err *err) {
    char src[PATH_MAX + 32], dst[PATH_MAX + 32];
    snprintf(src, sizeof src, "%s/config.json", j->p->model_dir);
    snprintf(dst, sizeof dst, "%s/config.json", dir);
    json_error_t jerr;
    json_t *root = json_load_file(src, 0, &jerr);
    if (!root)
        return sv_err_set(err, -EINVAL, "config '%s': %s", src, jerr.text);
    if (j->ff_keep) /* lorap: a plain LLaMA config with the pruned width */
        json_object_set_new(root, "intermediate_size", json_integer(j->ff_keep));
    int factored = 0;
    for (int l = 0; l < j->c->n_layers; l++)
        for (int p = 0; p < PROJ_COUNT; p++)
            factored += j->rank[l][p] > 0;
    if (!j->p->dense && factored) {
        json_t *ranks = json_object();
        char name[256];
        for (int l = 0; l < j->c->n_layers; l++)
            for (int p = 0; p < PROJ_COUNT; p++) {
                model_proj_prefix(l, p, name, sizeof name);
                if (j->rank[l][p])
                    json_object_set_new(ranks, name, json_integer(j->rank[l][p]));
            }
        json_t *lr = json_pack("{s:s, s:f, s:s, s:s, s:o}", "method", params_method_name(j->p->method), "ratio",
                               j->p->ratio, "allocation", params_ranks_name(j->ranks), "format",
                               "<module>.0.weight (rank, in) then <module>.1.weight (out, rank), and "
                               "<module>.1.bias (out) for a module with a bias: "
                               "torch.nn.Sequential(Linear(in, rank, bias=False), Linear(rank, out, "
                               "bias=<module has a bias>))",
                               "ranks", ranks);
        json_object_set_new(root, "low_rank", lr);
        mark_factored_config(root, lr);
    }
    char *text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17));
    json_decref(root);
    if (!text)
        return sv_err_set(err, -ENOMEM, "config: out of memory");
    size_t n = strlen(text);
    text[n] = '\n'; /* json_dumps leaves room for the NUL only; replace it */
    int r = afile_write_atomic(dir, dst, text, n + 1, err);
    free(text);
    return r;
}

/* The output is assembled from mapped files; each tensor's pages are dropped
 * once copied (st_release), or resident memory would grow with the model.
 * t is written under name: its own, or for a factored module's bias
 * "<module>.1.bias", the second Linear's (model.h). */
static int write_released_as(struct st_writer *w, const struct st_model *src, const struct st_tensor *t,
                             const char *name, struct sv_err *err) {
    int r = st_writer_write_raw(w, name, t->data, t->nbytes, err);
    st_release(src, t->name);
    return r;
}

static int write_released(struct st_writer *w, const struct st_model *src, const struct st_tensor *t,
                          struct sv_err *err) {
    return write_released_as(w, src, t, t->name, err);
}

static int read_released(const struct st_model *m, const char *name, int r) {
    st_release(m, name);
    return r;
}

/* Original tensor t of a matrix kept dense: as it is, or the pruned
 * replacement layer file lf holds under the same name (lorap). */
static int out_kept(struct st_writer *w, const struct st_model *src, const struct st_model *lf,
                    const struct st_tensor *t, const char *pre, int pass, uint64_t *params_after,
                    struct sv_err *err) {
    char name[ST_MAX_NAME + 32];
    snprintf(name, sizeof name, "%s.weight", pre);
    const struct st_tensor *pt = st_find(lf, name);
    if (!pt) {
        *params_after += pass == 0 ? (uint64_t)t->shape[0] * (uint64_t)t->shape[1] : 0;
        return pass == 0 ? st_writer_declare(w, t->name, t->dtype, t->ndim, t->shape, err)
                         : write_released(w, src, t, err);
    }
    size_t n = (size_t)pt->shape[0] * (size_t)pt->shape[1];
    if (pass == 0) {
        *params_after += n;
        return st_writer_declare(w, t->name, t->dtype, 2, pt->shape, err);
    }
    float *buf = malloc(n * sizeof *buf);
    if (!buf)
        return sv_err_set(err, -ENOMEM, "output: out of memory for '%s'", t->name);
    int r = read_released(lf, name, st_read_f32(lf, name, buf, n, err));
    if (r == 0)
        r = st_writer_write_f32(w, t->name, buf, n, err);
    free(buf);
    return r;
}

/* --dense: W' (d_out, d_in) = A (d_out, k) B (k, d_in) under t's name. */
static int out_product(struct st_writer *w, const struct st_model *lf, const struct st_tensor *t, const char *pre,
                       int k, int pass, uint64_t *params_after, struct sv_err *err) {
    int d_out = (int)t->shape[0], d_in = (int)t->shape[1], r;
    char name[ST_MAX_NAME + 32];
    if (pass == 0) {
        *params_after += (uint64_t)k * (uint64_t)(d_out + d_in);
        return st_writer_declare(w, t->name, t->dtype, 2, t->shape, err);
    }
    float *b = malloc((size_t)k * d_in * sizeof *b);
    float *a = malloc(((size_t)d_out * k + (size_t)d_out * d_in) * sizeof *a);
    if (!b || !a) {
        r = sv_err_set(err, -ENOMEM, "output: out of memory for '%s'", t->name);
        goto out;
    }
    snprintf(name, sizeof name, "%s.0.weight", pre);
    if ((r = read_released(lf, name, st_read_f32(lf, name, b, (size_t)k * d_in, err))) < 0)
        goto out;
    snprintf(name, sizeof name, "%s.1.weight", pre);
    if ((r = read_released(lf, name, st_read_f32(lf, name, a, (size_t)d_out * k, err))) < 0)
        goto out;
    float *wd = a + (size_t)d_out * k;
    forward_sgemm(0, (size_t)d_out, (size_t)d_in, (size_t)k, 1.0f, a, (size_t)k, b, (size_t)d_in, 0.0f, wd,
                  (size_t)d_in);
    r = st_writer_write_f32(w, t->name, wd, (size_t)d_out * d_in, err);
out:
    free(b);
    free(a);
    return r;
}

/* The factor pair <pre>.0.weight (k, d_in) and <pre>.1.weight (d_out, k)
 * in the input's dtype. */
static int out_factors(struct st_writer *w, const struct st_model *lf, const struct st_tensor *t, const char *pre,
                       int k, int pass, uint64_t *params_after, struct sv_err *err) {
    int d_out = (int)t->shape[0], d_in = (int)t->shape[1], r = 0;
    char name[ST_MAX_NAME + 32];
    for (int half = 0; half < 2 && r == 0; half++) {
        snprintf(name, sizeof name, "%s.%d.weight", pre, half);
        int64_t shape[2] = {half == 0 ? k : d_out, half == 0 ? d_in : k};
        size_t n = (size_t)shape[0] * (size_t)shape[1];
        if (pass == 0) {
            r = st_writer_declare(w, name, t->dtype, 2, shape, err);
            *params_after += n;
            continue;
        }
        float *buf = malloc(n * sizeof *buf);
        if (!buf)
            return sv_err_set(err, -ENOMEM, "output: out of memory for '%s'", name);
        if ((r = read_released(lf, name, st_read_f32(lf, name, buf, n, err))) == 0)
            r = st_writer_write_f32(w, name, buf, n, err); /* converted to the input's dtype */
        free(buf);
    }
    return r;
}

/* Original tensor t in pass 0 (declare) or 1 (write): copied, renamed (a
 * factored module's bias), or replaced by what the layer files hold. */
static int out_tensor(struct job *j, struct st_writer *w, const struct st_model *src, struct st_model **layers,
                      const struct st_tensor *t, int pass, uint64_t *params_after, struct sv_err *err) {
    char name[ST_MAX_NAME + 32], pre[200];
    int l, p;
    if (!j->p->dense && is_bias_name(j, t->name, &l, &p) && j->rank[l][p] > 0) {
        /* Only the weight is factored; the bias is copied as it is. */
        model_bias_name(l, p, j->rank[l][p], name, sizeof name);
        return pass == 0 ? st_writer_declare(w, name, t->dtype, t->ndim, t->shape, err)
                         : write_released_as(w, src, t, name, err);
    }
    if (!is_factored_name(j, t->name, &l, &p))
        return pass == 0 ? st_writer_declare(w, t->name, t->dtype, t->ndim, t->shape, err)
                         : write_released(w, src, t, err);
    int k = j->rank[l][p];
    model_proj_prefix(l, p, pre, sizeof pre);
    if (!k) /* kept dense: the original, or its pruned replacement in the checkpoint */
        return out_kept(w, src, layers[l], t, pre, pass, params_after, err);
    if (j->p->dense)
        return out_product(w, layers[l], t, pre, k, pass, params_after, err);
    return out_factors(w, layers[l], t, pre, k, pass, params_after, err);
}

/* OUT.tmp/model.safetensors from the original and the layer files. */
static int write_model(struct job *j, const char *dir, uint64_t *params_after, struct sv_err *err) {
    struct st_model *src = j->m->st;
    struct st_model **layers = calloc((size_t)j->c->n_layers, sizeof *layers);
    struct st_writer *w = NULL;
    char path[PATH_MAX + 64];
    int r = 0, entered = 0;
    if (!layers)
        return sv_err_set(err, -ENOMEM, "output: out of memory");
    for (int l = 0; l < j->c->n_layers && r == 0; l++) {
        job_work_path(j, path, sizeof path, "layer-%d.safetensors", l);
        r = st_open_file(&layers[l], path, err);
    }
    if (r < 0)
        goto out;
    /* The checkpoints are mapped (daemon's files); the rest writes OUT.tmp. */
    if ((r = job_user_enter(j, err)) < 0)
        goto out;
    entered = 1;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if ((r = st_writer_new(&w, path, err)) < 0 || (r = st_writer_meta(w, "format", "pt", err)) < 0)
        goto out;
    *params_after = 0;
    /* Pass 1 declares, pass 2 writes, in the same (name) order. */
    for (int pass = 0; pass < 2 && r == 0; pass++)
        for (size_t i = 0; i < st_count(src) && r == 0; i++)
            r = out_tensor(j, w, src, layers, st_get(src, i), pass, params_after, err);
    if (r < 0)
        goto out;
    r = st_writer_finish(w, err);
    w = NULL;
out:
    st_writer_free(w);
    if (entered)
        r = job_user_leave(j, r, err);
    for (int l = 0; l < j->c->n_layers; l++)
        st_free(layers[l]);
    free(layers);
    return r;
}

static uint64_t file_size(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
}

/* 1 if dir/compression.json names this job key. */
int jobfiles_own_output(const char *dir, const char *key) {
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/compression.json", dir);
    json_t *root = json_load_file(path, 0, NULL);
    const char *k = json_string_value(json_object_get(root, "job_key"));
    int own = k && strcmp(k, key) == 0;
    json_decref(root);
    return own;
}

int jobfiles_report(struct job *j, const char *dir, const char *key, const struct compress_result *res,
                        struct sv_err *err) {
    json_t *mats = json_object();
    char buf[8192], name[256];
    int r = 0;
    for (int l = 0; l < j->c->n_layers && r == 0; l++) {
        if ((r = jobfiles_layer_meta(j, l, "report", buf, sizeof buf, err)) < 0)
            break;
        json_t *rep = json_loads(buf, 0, NULL);
        for (int p = 0; p < PROJ_COUNT; p++) {
            model_proj_prefix(l, p, name, sizeof name);
            json_t *e = json_object_get(rep, config_proj_name(p));
            if (e)
                json_object_set(mats, name, e);
        }
        json_decref(rep);
    }
    if (r < 0) {
        json_decref(mats);
        return r;
    }
    json_t *root = json_pack(
        "{s:s, s:f, s:s, s:i, s:i, s:i, s:s, s:s, s:b, s:I, s:I, s:I, s:I}", "method",
        params_method_name(j->p->method), "ratio", j->p->ratio, "rank_rule",
        ranks_rule(j),
        "nsamples", j->p->nsamples, "seqlen", j->p->seqlen, "seed", (int)j->p->seed, "calibration_windows",
        j->p->calib_first ? "first" : "random", "calibration", j->p->calib_path, "dense", j->p->dense,
        "linear_params_before", (json_int_t)res->params_before, "linear_params_after", (json_int_t)res->params_after,
        "bytes_before", (json_int_t)res->bytes_before, "bytes_after", (json_int_t)res->bytes_after);
    if (j->p->method == METHOD_ASVD)
        json_object_set_new(root, "alpha", json_real(params_alpha(j->p)));
    if (j->method_asked == METHOD_AUTO) {
        json_object_set_new(root, "method_requested", json_string("auto"));
        json_t *mc = choice_json(&j->method_choice);
        json_object_set_new(mc, "rule", json_string(autosel_rule()));
        json_object_set_new(root, "method_choice", mc);
    }
    if (j->rank_choice.n)
        json_object_set_new(root, "rank_choice", choice_json(&j->rank_choice));
    if (j->p->method == METHOD_RRR) {
        json_t *grid = json_array();
        for (int li = 0; li < RRR_NLAMBDA; li++)
            json_array_append_new(grid, json_real(rrr_lambdas[li]));
        json_object_set_new(root, "rrr",
                            json_pack("{s:o, s:i, s:f, s:s}", "lambda_grid", grid, "heldout_windows",
                                      rrr_held_windows(j->n_samples), "lambda_fixed", RRR_LAMBDA_FIXED, "rule",
                                      RRR_RULE));
    }
    if (res->ppl_before > 0) {
        json_t *ev = json_pack("{s:s, s:i, s:f, s:f, s:s}", "text", j->p->eval_path, "seqlen",
                               j->p->eval_seqlen ? j->p->eval_seqlen : j->p->seqlen, "before", res->ppl_before,
                               "after", res->ppl_after, "protocol",
                               "whole text tokenized once with one BOS; non-overlapping windows of L tokens from "
                               "position 0; L-1 predictions per window; exp(mean NLL)");
        /* Wall-clock: the only values here, with each matrix's "seconds",
         * that differ between two runs of the same job. */
        json_object_set_new(ev, "speed",
                            json_pack("{s:f, s:f, s:f, s:i, s:s}", "tokens_per_s_before", res->tok_s_before,
                                      "tokens_per_s_after", res->tok_s_after, "ratio",
                                      res->tok_s_before > 0 ? res->tok_s_after / res->tok_s_before : 0.0,
                                      "threads", forward_threads_get(), "measured",
                                      "the evaluation's batched forward pass (all windows, logits and NLL "
                                      "included), original then compressed model, in this job"));
        json_object_set_new(root, "perplexity", ev);
    }
    json_object_set_new(root, "threads", json_integer(forward_threads_get()));
    /* Wall-clock too, like each matrix's seconds: this run's phases. */
    const struct job_timing *t = &j->t;
    json_object_set_new(root, "timing",
                        json_pack("{s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:I, s:I}", "calibration_forward", t->forward,
                                  "statistics", t->statistics, "factorize", t->factorize, "write", t->write,
                                  "assemble", t->assemble, "eval", t->eval, "total", mono_now() - j->t_start,
                                  "tokens", (json_int_t)j->n_samples * j->T, "passes", (json_int_t)t->passes));
    json_object_set_new(root, "job_key", json_string(key));
    json_object_set_new(root, "matrices", mats);
    char *text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
    json_decref(root);
    if (!text)
        return sv_err_set(err, -ENOMEM, "report: out of memory");
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/compression.json", dir);
    size_t n = strlen(text);
    text[n] = '\n';
    if ((r = job_user_enter(j, err)) == 0)
        r = job_user_leave(j, afile_write_atomic(dir, path, text, n + 1, err), err);
    free(text);
    return r;
}

/* Files of the model directory copied into the output when present. */
const char *const jobfiles_model_extra[JOBFILES_N_MODEL_EXTRA] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                                "generation_config.json", "tokenizer.model"};

/* Builds the output in tmp (OUT.tmp): config, model, tokenizer files. All
 * of it with the submitter's rights, except reading the checkpoints
 * (write_model switches around them). */
int jobfiles_assemble(struct job *j, const char *tmp, struct compress_result *res, struct sv_err *err) {
    char path[PATH_MAX * 2], src[PATH_MAX * 2];
    int r = job_user_enter(j, err);
    if (r < 0)
        return r;
    afile_remove_tree(tmp);
    if (mkdir(tmp, 0755) < 0)
        r = sv_err_set(err, -errno, "output '%s': %s", tmp, strerror(errno));
    if (r == 0)
        r = write_config(j, tmp, err);
    if ((r = job_user_leave(j, r, err)) < 0)
        return r;
    if ((r = write_model(j, tmp, &res->params_after, err)) < 0)
        return r;
    if ((r = job_user_enter(j, err)) < 0)
        return r;
    for (size_t i = 0; i < JOBFILES_N_MODEL_EXTRA && r == 0; i++) {
        snprintf(src, sizeof src, "%s/%s", j->p->model_dir, jobfiles_model_extra[i]);
        snprintf(path, sizeof path, "%s/%s", tmp, jobfiles_model_extra[i]);
        if (access(src, F_OK) == 0)
            r = afile_copy(src, path, err);
    }
    if (r == 0) {
        snprintf(path, sizeof path, "%s/model.safetensors", tmp);
        res->bytes_after = file_size(path);
        for (size_t i = 0; i < st_shard_count(j->m->st); i++)
            res->bytes_before += file_size(st_shard_path(j->m->st, i));
    }
    return job_user_leave(j, r, err);
}

/* Renames tmp over OUT. An existing OUT is replaced only with overwrite, or
 * when it is this job's own earlier output (same job key in its report: the
 * daemon died after publishing but before recording the job as done). The
 * daemon's output rules (hooks->output_check) are checked again first: what
 * is at OUT now may not be what was there at submit. */
int jobfiles_publish(struct job *j, const char *tmp, const char *key, struct sv_err *err) {
    char parent[PATH_MAX];
    int r;
    if (j->h && j->h->output_check && (r = j->h->output_check(j->h->ctx, j->p->out_dir, err)) < 0)
        return r;
    if ((r = job_user_enter(j, err)) < 0)
        return r;
    if ((r = afile_fsync_dir(tmp, err)) < 0)
        goto out;
    struct stat sb;
    if (lstat(j->p->out_dir, &sb) == 0) {
        if (!j->p->overwrite && !jobfiles_own_output(j->p->out_dir, key)) {
            r = sv_err_set(err, -EEXIST, "output directory '%s' appeared while the job ran (submit with overwrite "
                           "to replace it)", j->p->out_dir);
            goto out;
        }
        char old[PATH_MAX + 16];
        snprintf(old, sizeof old, "%s.old", j->p->out_dir);
        afile_remove_tree(old);
        if (rename(j->p->out_dir, old) < 0) {
            r = sv_err_set(err, -errno, "output '%s': %s", j->p->out_dir, strerror(errno));
            goto out;
        }
        afile_remove_tree(old);
    }
    if (rename(tmp, j->p->out_dir) < 0) {
        r = sv_err_set(err, -errno, "output '%s': %s", j->p->out_dir, strerror(errno));
        goto out;
    }
    afile_parent_dir(j->p->out_dir, parent, sizeof parent);
    r = afile_fsync_dir(parent, err);
out:
    return job_user_leave(j, r, err);
}
