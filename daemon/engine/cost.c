/* cost: the fixed cost model behind the progress fraction.
 *
 * fraction = (work done) / (work of the whole job), both in one unit: a
 * layer pass, one decoder layer run over the calibration states. The
 * weights are the phases' costs measured at LLaMA-7B shapes, where jobs are
 * long enough for progress to matter (README, bench/layer7b.sh: 32 x 128
 * tokens, svdllm per layer: pass and statistics 16 s, the seven
 * factorizations 86 s (5.4 passes; q/k/v 28 %, o 9.5 %, gate/up 53 %, down
 * 9.5 % of their flops), states and checkpoint 4 s, assembly 1 s; rom's and
 * the update's partial passes by the share of the layer's flops before
 * their tap, which gives their measured 1.14x and 1.61x of svdllm). The
 * scale depends only on the job's parameters and the layer count, so every
 * run of a job (a resume included) uses the same one: a resumed run starts
 * at the cost of its checkpointed layers (cost_fraction_resumed()), and
 * what it repeats (the evaluation before, a regeneration of the states)
 * holds the fraction where it is. Within a run the fraction never
 * decreases. Order of the phases:
 *   evaluation before (if any) | hidden-0 | --ranks auto pre-pass (per
 *   layer: a pass and the spectra) | layers 0..L-1 | assembly | evaluation
 *   after.
 * Cost per layer, in passes of the layer over the calibration states: 1 for
 * the whitening methods, up to 5 for rom (four partial), up to 10 for the
 * update (eight partial); --ranks auto adds one pre-pass over the model. */
#include "cost.h"

#include "params.h"

const double cost_factor_share[4] = {0.28, 0.095, 0.53, 0.095};   /* stages q/k/v, o, gate/up, down */
const double cost_rom_pass[4] = {0.02, 0.25, 0.33, 1.0};          /* each stage's pass to its tap */
const double cost_upd_pass[4] = {0.27, 0.58, 1.1, 1.8};           /* original + compressed stream */

/* Layer l's weight; the segments compress_run and seq_layer report add up to it. */
double cost_layer(const struct cost *c, int l) {
    int comp = l >= c->first;
    double w = COST_WRITE;
    switch (c->method) {
    case METHOD_ROM:
        for (int sg = 0; sg < 4 && comp; sg++)
            w += cost_rom_pass[sg] + COST_FACTOR * cost_factor_share[sg];
        return w + (comp ? COST_FINAL : 1.0);
    case METHOD_SVDLLM_UPDATE:
        w += 1.0 + (comp ? COST_FACTOR : 0);
        for (int sg = 0; sg < 4 && comp; sg++)
            w += cost_upd_pass[sg] + COST_REFIT;
        return w + (comp ? COST_FINAL : 1.0);
    case METHOD_RRR: /* the final pass runs both streams */
        for (int sg = 0; sg < 4 && comp; sg++)
            w += cost_upd_pass[sg] + COST_FACTOR * cost_factor_share[sg] * COST_RRR;
        return w + 1.0 + COST_FINAL;
    case METHOD_LORAP:
        return w + 1.0 + (comp ? COST_FACTOR * (cost_factor_share[0] + cost_factor_share[1]) + COST_REFIT : 0);
    case METHOD_SVD:
        return w + (comp ? COST_FACTOR : 0);
    default:
        return w + 1.0 + (comp ? COST_FACTOR : 0);
    }
}

double cost_layer_start(const struct cost *c, int l) {
    double at = c->pre;
    for (int i = 0; i < l && i < c->L; i++)
        at += cost_layer(c, i);
    return at;
}

void cost_init(struct cost *c, const struct cost_in *in, int L) {
    enum compress_ranks rk = params_ranks_resolve(in->method, in->ranks, in->layers);
    *c = (struct cost){.method = in->method, .L = L, .auto_ranks = rk == RANKS_AUTO || rk == RANKS_SENSITIVE};
    c->first = rk == RANKS_LAST_N && in->layers > 0 && in->layers < L ? L - in->layers : 0;
    if (in->eval) {
        /* The whole model (L layers and the head) over the evaluation's
         * tokens; "all windows" is counted as four times the calibration's. */
        double calib = (double)in->nsamples * in->seqlen, L_e = in->eval_seqlen ? in->eval_seqlen : in->seqlen;
        double tokens = in->eval_max_windows > 0 ? in->eval_max_windows * L_e : 4 * calib;
        c->eval_w = calib > 0 ? (L + 1) * tokens / calib : 0;
    }
    int calib = in->method != METHOD_SVD;
    c->pre = c->eval_w + (calib ? COST_CALIB0 : 0) + (c->auto_ranks ? L * ((calib ? 1.0 : 0) + COST_SPECTRA) : 0);
    c->total = cost_layer_start(c, L) + L * COST_ASSEMBLE + c->eval_w;
}

void cost_in_of(const struct compress_params *p, struct cost_in *ret) {
    *ret = (struct cost_in){
        .method = p->method, .ranks = p->ranks, .layers = p->layers, .eval = p->eval_path[0] != '\0',
        .nsamples = p->nsamples, .seqlen = p->seqlen, .eval_seqlen = p->eval_seqlen,
        .eval_max_windows = p->eval_max_windows,
    };
}

double cost_fraction_resumed(const struct cost_in *in, int n_layers, int layers_done) {
    if (n_layers <= 0 || layers_done <= 0)
        return 0;
    struct cost c;
    cost_init(&c, in, n_layers);
    double f = c.total > 0 ? cost_layer_start(&c, layers_done) / c.total : 0;
    return f < 0 ? 0 : f > 1 ? 1 : f;
}
