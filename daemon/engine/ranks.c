/* ranks: every rank rule. uniform, last-n and lorap are closed forms of the
 * shapes and the ratio (ranks_plan); auto is a pre-pass over the model that
 * collects each matrix's spectrum and one greedy allocation under two
 * budgets (ranks_plan_auto; the choice is kept in WORK/ranks.json, read and
 * written by jobfiles.c); ranks_precheck() refuses at submit a ratio whose
 * rule would leave a matrix rank 0.
 *
 * sensitive (issue 14): auto's normalised energies say how much of a
 * matrix's own output a rank removes, not how much that costs the model:
 * auto lost to uniform at light ratios and for rom. So the same pre-pass
 * also measures, per matrix, the increase of the model's final loss when
 * only that matrix is truncated at its uniform rank (under the pre-pass's
 * statistic, forward passes from its layer on, on S spare calibration
 * windows), and divides it by that truncation's normalised discarded
 * energy: a loss per unit of relative energy. The greedy then takes
 * eigenvalues by weight^gamma * lambda / trace / (d_out + d_in) under one
 * budget (the weights make the attention / MLP split that auto needed
 * redundant; gamma in {0.5, 0.75, 1}, see ranks_sens_gamma).
 * The guarantee is not a model of the loss but a measurement of it: the
 * candidates uniform, auto and the three sensitive ones are each run for real with the
 * job's own method (trial.c) and scored on other spare calibration windows; the lowest
 * held-out loss is kept, ties to uniform. Never worse than uniform on those
 * windows by construction; on the evaluation text it is measured (README).
 *
 * Whose spectra. The pre-pass's statistic is the original model's (svdllm's
 * for the sequential methods). That is exactly what svdllm-update factors
 * (its B = U_k^T W comes from svdllm's statistics; only A is refitted).
 * rom and rrr factor statistics of the compressed model, which depend on
 * the ranks upstream and so cannot be known before they are chosen. For
 * them three more candidates, sequential-gamma, allocate as the trial's
 * sequential pass proceeds (ranks_adapt_stage): just before a stage's
 * matrices are factored, the greedy reruns under what is left of the
 * budget over the stage's spectra under the method's own statistic (rom:
 * the stage's Gram measured on the compressed model; rrr: W_ls G' W_ls^T,
 * whose tail beyond k is exactly rank k's excess calibration loss) and the
 * pre-pass spectra of every matrix not reached yet; the stage's ranks are
 * then fixed. A reached matrix's weight is its measured loss increase over
 * the share of its own spectrum that the uniform rank drops (the pre-pass's
 * share is svdllm's, not the method's). The trial records the ranks it
 * chose; the job runs them fixed, so it makes the model that was scored.
 * They are candidates beside the static ones, not replacements: on the
 * bundled models each kind won some cells (README).
 * Cost: the pre-pass (one layer pass and the spectra), 7 L partial forward
 * passes on S windows for the sensitivities, and one run of the method per
 * distinct candidate (up to 5; 8 for rom and rrr, whose sequential ones also
 * compute one eigenvalue-only spectrum per matrix) before the job's own. */
#include "ranks.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "afile.h"
#include "calib.h"
#include "jobfiles.h"
#include "lowrank.h"
#include "factor.h"
#include "forward.h"
#include "mono.h"
#include "stats.h"
#include "trial.h"

/* sensitive: spare calibration windows for the sensitivities, and as many
 * others for the held-out comparison. */
#define RANKS_SENS_WINDOWS 8
/* How strongly the measured sensitivities override the spectra: the weight
 * is (loss per unit of normalised energy)^gamma. The linear model behind
 * gamma = 1 (a matrix's loss is proportional to its discarded energy)
 * over-trusts one truncation's measurement: on tinystories-656K at 0.4
 * gamma = 0.5 / 0.75 / 1 gave held-out losses 4.321 / 4.313 / 4.402 (rrr)
 * and 4.438 / 4.401 / 4.477 (svdllm). Which gamma is best depends on the
 * model and method, so all three are candidates for the held-out guard. */
#define RANKS_SENS_NGAMMA 3
static const double ranks_sens_gamma[RANKS_SENS_NGAMMA] = {0.5, 0.75, 1.0};

const char *ranks_rule(const struct job *j) {
    switch (j->ranks) {
    case RANKS_LAST_N:
        return "last-n: only the last `layers` decoder layers, each at ratio' = ratio * n_layers / layers, "
               "k = floor(d_out*d_in*(1-ratio')/(d_out+d_in)); earlier layers kept dense";
    case RANKS_LORAP:
        return "lorap: per layer, attention keeps (1-ratio) of its parameters, split (v+o):(q+k) = attn_split, "
               "q,k (and v,o) one common rank; MLP uniform (method lorap: channels pruned to "
               "round(ffn*(1-ratio)))";
    case RANKS_AUTO:
        return "auto: attention and MLP each keep (1-ratio) of their parameters; every matrix starts at rank 1, "
               "then the eigenvalues of all layers' statistics are taken greedily by lambda / trace / (d_out + d_in) "
               "while the sub-layer's budget lasts (discarded lambdas = predicted squared output error); "
               "rank <= d_out*d_in/(d_out+d_in)";
    case RANKS_SENSITIVE:
        return "sensitive: the lowest mean NLL on held-out spare calibration windows, with the job's own method run "
               "for real, among uniform, auto and the sensitivity-weighted greedy for gamma 0.5, 0.75 and 1 (one "
               "budget; eigenvalues taken by w^gamma * lambda / trace / (d_out + d_in), w = the loss increase when "
               "only that matrix is truncated at its uniform rank, over that truncation's normalised discarded "
               "energy); for rom and rrr also sequential-gamma: the same greedy rerun before each stage of the "
               "method's pass over the stage's spectra under the method's own statistic, those ranks then fixed; "
               "ties go to the earlier, uniform first (rank_choice has every candidate's loss)";
    default:
        return "uniform: k = floor(d_out*d_in*(1-ratio)/(d_out+d_in)) per q/k/v/o/gate/up/down; embeddings, norms, "
               "head kept";
    }
}

/* lorap's attention ranks before clamping: q and k share k_qk, v and o
 * k_vo, so that the four keep (1 - ratio) of their parameters split
 * (v+o):(q+k) = attn_split. */
static void lorap_attn_ranks(const struct config *c, const struct compress_params *p, int dout[4], int din[4],
                             double *k_qk, double *k_vo) {
    double total = 0;
    for (int q = 0; q <= PROJ_O; q++) {
        config_proj_shape(c, q, &dout[q], &din[q]);
        total += (double)dout[q] * din[q];
    }
    double split = params_attn_split(p), keep = (1 - p->ratio) * total;
    *k_qk = floor(keep / (1 + split) / (dout[0] + din[0] + dout[1] + din[1]));
    *k_vo = floor(keep * split / (1 + split) / (dout[2] + din[2] + dout[3] + din[3]));
}

/* Method lorap: the MLP's intermediate channels kept, before clamping. */
static double lorap_ff_keep(const struct config *c, double ratio) { return floor(c->intermediate * (1 - ratio) + 0.5); }

static void plan_lorap_attn(struct job *j, int l) {
    int dout[4], din[4];
    double k_qk, k_vo;
    lorap_attn_ranks(j->c, j->p, dout, din, &k_qk, &k_vo);
    for (int p = 0; p <= PROJ_O; p++) {
        double k = p <= PROJ_K ? k_qk : k_vo;
        int mn = dout[p] < din[p] ? dout[p] : din[p];
        j->rank[l][p] = k < 1 ? 1 : k > mn ? mn : (int)k;
    }
}

/* Every rule but auto. */
void ranks_plan(struct job *j) {
    const struct config *c = j->c;
    int L = c->n_layers, first = j->ranks == RANKS_LAST_N ? L - j->p->layers : 0;
    double ratio = j->ranks == RANKS_LAST_N ? j->p->ratio * L / j->p->layers : j->p->ratio;
    for (int l = 0; l < L; l++)
        for (int q = 0; q < PROJ_COUNT; q++) {
            int d_out, d_in;
            config_proj_shape(c, q, &d_out, &d_in);
            j->rank[l][q] = l < first ? 0 : lowrank_rank_for_ratio(d_out, d_in, ratio);
        }
    for (int l = 0; l < L && j->ranks == RANKS_LORAP; l++)
        plan_lorap_attn(j, l);
    if (j->p->method == METHOD_LORAP) {
        double keep = lorap_ff_keep(c, j->p->ratio);
        j->ff_keep = keep < 2 ? 2 : (int)keep;
        for (int l = 0; l < L; l++)
            j->rank[l][PROJ_GATE] = j->rank[l][PROJ_UP] = j->rank[l][PROJ_DOWN] = 0;
    }
}

/* 0 for the attention projections, 1 for the MLP's. */
static int sublayer(int p) { return p <= PROJ_O ? 0 : 1; }

struct gain {
    double score;
    int m, i;
};

static int gain_cmp(const void *a, const void *b) {
    const struct gain *x = a, *y = b;
    if (x->score != y->score)
        return x->score > y->score ? -1 : 1;
    return x->m != y->m ? x->m - y->m : x->i - y->i;
}

/* A matrix's spectrum spec[0..n) (descending): its sum, and how many of
 * its eigenvalues a rank may take (cap: up to d_out d_in / (d_out + d_in),
 * where the factors stop saving parameters; at least 1). */
static void spectrum_sum(const double *spec, int n, int d_out, int d_in, double *total, int *cap) {
    *total = 0;
    for (int i = 0; i < n; i++)
        *total += spec[i];
    int be = (int)((double)d_out * d_in / (d_out + d_in));
    *cap = be < 1 ? 1 : be < n ? be : n;
}

/* The share of the spectrum's sum that rank k drops (of its first cap). */
static double spectrum_dropped(const double *spec, int cap, double total, int k) {
    double kept = 0;
    for (int i = 0; i < k && i < cap; i++)
        kept += spec[i];
    return total > 0 ? 1 - kept / total : 0;
}

/* --ranks auto's pre-pass results: each matrix mi = l * PROJ_COUNT + p's
 * eigenvalues (descending), their sum and how many may be taken (cap). */
struct spectra {
    double **spec, *total;
    int *cap;
    /* sensitive: the windows the sensitivities are measured on, the
     * original model's states entering the current layer, its loss there;
     * per matrix the loss increase at the uniform rank and that rank's
     * normalised discarded energy. */
    struct trial_set fit;
    float *x;
    double base, *dl, *e;
};

/* sensitive, at layer l: each matrix truncated alone at its uniform rank
 * (j->rank, still the uniform plan) under statistic st of method m, the
 * loss from layer l on; then sp->x moves on through the original layer. */
static int sens_layer(struct job *j, enum compress_method m, struct layer_w *lw, struct stats *st,
                      struct spectra *sp, struct sv_err *err) {
    const int l = lw->index;
    struct lowrank_result res[PROJ_COUNT];
    struct mat_report rep[PROJ_COUNT];
    memset(res, 0, sizeof res);
    memset(rep, 0, sizeof rep);
    int r = factor_layer(j, m, lw, st, 0, res, rep, err);
    for (int p = 0; p < PROJ_COUNT && r == 0; p++) {
        int mi = l * PROJ_COUNT + p;
        const struct linear *lin = &lw->proj[p];
        if (!res[p].k)
            continue;
        struct linear ov = {.d_out = lin->d_out, .d_in = lin->d_in, .rank = res[p].k, .a = res[p].a, .b = res[p].b};
        double lp;
        job_progress(j, l, "sensitivity", (double)p / PROJ_COUNT);
        if ((r = trial_loss_from(j, &sp->fit, l, sp->x, l, p, &ov, &lp, err)) < 0)
            break;
        sp->dl[mi] = lp - sp->base;
        sp->e[mi] = spectrum_dropped(sp->spec[mi], sp->cap[mi], sp->total[mi], res[p].k);
    }
    for (int p = 0; p < PROJ_COUNT; p++)
        lowrank_result_free(&res[p]);
    if (r == 0)
        r = forward_layer(j->c, lw, sp->x, sp->fit.n, sp->fit.T, NULL, err);
    return r;
}

/* The pre-pass over layer l: the original layer over the pre-pass states
 * (hex names those entering it, and gets those leaving it) when the
 * statistic needs calibration, then each matrix's spectrum under it. */
static int auto_layer(struct job *j, enum compress_method m, int l, char hex[65], struct spectra *sp,
                      struct sv_err *err) {
    enum stats_kind kind = stats_kind_of(m);
    char in[PATH_MAX + 64], out[PATH_MAX + 64], next[65], what[200];
    struct layer_w lw = {0};
    struct stats st = {0};
    int r = model_layer_load(j->m, l, &lw, err);
    if (r == 0 && kind != STATS_NONE) {
        job_work_path(j, in, sizeof in, l == 0 ? "hidden-%d.f32" : "pre-%d.f32", l);
        job_work_path(j, out, sizeof out, "pre-%d.f32", l + 1);
        job_seg(j, 1.0);
        j->pass_phase = "allocate";
        r = stats_alloc(j, kind, &st, err);
        if (r == 0)
            r = calib_layer(j, &lw, &st, in, hex, out, next, err);
        j->pass_phase = NULL;
        if (r == 0 && l > 0)
            unlink(in);
        if (r == 0)
            memcpy(hex, next, 65);
    }
    if (r == 0)
        job_seg(j, COST_SPECTRA);
    for (int p = 0; p < PROJ_COUNT && r == 0; p++) {
        const struct linear *lin = &lw.proj[p];
        int mi = l * PROJ_COUNT + p, n = 0;
        model_proj_prefix(l, p, what, sizeof what);
        job_progress(j, l, "allocate", (double)p / PROJ_COUNT);
        const double *gi, *co;
        double *own = NULL;
        int nmax = lin->d_out > lin->d_in ? lin->d_out : lin->d_in;
        if (!(sp->spec[mi] = malloc((size_t)nmax * sizeof **sp->spec))) {
            r = sv_err_set(err, -ENOMEM, "rank allocation: out of memory");
            break;
        }
        if (kind == STATS_GRAMS) /* the svdllm family's packed statistics (stats.h) */
            r = lowrank_spectrum_packed(lin->w, lin->d_out, lin->d_in, st.cov[p] ? NULL : st.gin[stats_group(p)],
                                        st.cov[p], sp->spec[mi], &n, what, err);
        else if ((r = stats_matrix(j, m, &st, p, lin, &own, &gi, &co, what, err)) == 0)
            r = lowrank_spectrum(lin->w, lin->d_out, lin->d_in, gi, co, sp->spec[mi], &n, what, err);
        free(own);
        if (r < 0)
            break;
        spectrum_sum(sp->spec[mi], n, lin->d_out, lin->d_in, &sp->total[mi], &sp->cap[mi]);
    }
    if (r == 0 && sp->x)
        r = sens_layer(j, m, &lw, &st, sp, err);
    stats_free(&st);
    model_layer_free(&lw);
    return r;
}

/* The greedy allocation over the spectra into j->rank.
 * Two budgets, attention's and the MLP's, each (1 - ratio) of its
 * parameters; within each the spectra decide across all layers and
 * matrices. The score is the share of the matrix's output energy an
 * eigenvalue carries, per parameter: raw eigenvalues are squared errors
 * in each matrix's own units, and ranking them together gave every rank
 * to the few matrices with the largest activations (ppl 207 / 2191 on
 * tinystories-656K at 0.4 / 0.6 against 131 / 269 uniform). Normalised,
 * one global budget measured 106 / 272 (and 93 / 229 on stories260K);
 * with the attention / MLP split 100 / 258 (94 / 193): relative errors of
 * the two sub-layers are not worth the same, as LoRAP also finds. */
/* weight (sensitive): each matrix's loss per unit of normalised energy,
 * NULL for auto; split: the attention / MLP budgets (auto) or one. */
/* sensitive, rom and rrr: a guard trial's allocation as the sequential pass
 * proceeds. spec/total/cap[mi]: the method's own spectrum of matrix mi,
 * once its stage has been reached (NULL before: the pre-pass's stands in);
 * fixed[mi]: its rank is chosen (and factored). */
struct ranks_adapt {
    const struct spectra *sp;
    const double *w;             /* the pre-pass's weights, for the matrices not reached yet */
    double gamma, floor;         /* sens_weight's, for those reached */
    const int (*uniform)[PROJ_COUNT];
    double **spec, *total, *wseq; /* wseq[mi]: the weight under the method's own spectrum */
    int *cap;
    unsigned char *fixed;
};

static double sens_weight(double dl, double e, double fl, double gamma);

static int auto_greedy(struct job *j, const struct spectra *sp, const double *weight, int split,
                       const struct ranks_adapt *a, struct sv_err *err) {
    const struct config *c = j->c;
    const int M = c->n_layers * PROJ_COUNT;
    double budget[2] = {0, 0}; /* [sublayer(p)] */
#define BUDGET(p) budget[split ? sublayer(p) : 0]
    size_t cap_all = 0;
    for (int mi = 0; mi < M; mi++)
        cap_all += (size_t)(a && a->spec[mi] ? a->cap[mi] : sp->cap[mi]);
    struct gain *g = malloc((cap_all ? cap_all : 1) * sizeof *g);
    if (!g)
        return sv_err_set(err, -ENOMEM, "rank allocation: out of memory");
    size_t ng = 0;
    for (int mi = 0; mi < M; mi++) {
        int d_out, d_in, p = mi % PROJ_COUNT, *rk = &j->rank[mi / PROJ_COUNT][p];
        config_proj_shape(c, p, &d_out, &d_in);
        double cost = d_out + d_in;
        if (a && a->fixed[mi]) { /* chosen and factored: only its parameters count */
            BUDGET(p) += (1 - j->p->ratio) * d_out * d_in - *rk * cost;
            continue;
        }
        *rk = 1;
        BUDGET(p) += (1 - j->p->ratio) * d_out * d_in - cost;
        const int own = a && a->spec[mi], cap = own ? a->cap[mi] : sp->cap[mi];
        const double *spec = own ? a->spec[mi] : sp->spec[mi], tot = own ? a->total[mi] : sp->total[mi];
        double w = own ? a->wseq[mi] : weight ? weight[mi] : 1;
        for (int i = 1; i < cap; i++)
            g[ng++] = (struct gain){tot > 0 ? w * spec[i] / tot / cost : 0, mi, i};
    }
    for (int q = 0; q < 2; q++)
        if (budget[q] < 0) {
            free(g);
            return sv_err_set(err, -EINVAL, "ratio %g leaves less than rank 1 for every matrix", j->p->ratio);
        }
    qsort(g, ng, sizeof *g, gain_cmp);
    for (size_t i = 0; i < ng; i++) {
        int l = g[i].m / PROJ_COUNT, p = g[i].m % PROJ_COUNT, d_out, d_in;
        config_proj_shape(c, p, &d_out, &d_in);
        /* Within a matrix the scores descend, so a taken gain always extends a prefix. */
        if (BUDGET(p) >= d_out + d_in && g[i].i == j->rank[l][p]) {
            j->rank[l][p]++;
            BUDGET(p) -= d_out + d_in;
        }
    }
#undef BUDGET
    free(g);
    return 0;
}

int ranks_adapt_stage(struct job *j, int l, int p0, int p1, ranks_spectrum_fn fn, void *ctx, struct sv_err *err) {
    struct ranks_adapt *a = j->adapt;
    if (!a)
        return 0;
    /* The ranks the stage's matrices would get are not the ones later
     * stages leave: the greedy reruns over everything not yet fixed. */
    int(*keep)[PROJ_COUNT] = malloc((size_t)j->c->n_layers * sizeof *keep);
    if (!keep)
        return sv_err_set(err, -ENOMEM, "rank allocation: out of memory");
    int r = 0;
    for (int p = p0; p <= p1 && r == 0; p++) {
        int mi = l * PROJ_COUNT + p, d_out, d_in, n = 0;
        if (!j->rank[l][p])
            continue;
        config_proj_shape(j->c, p, &d_out, &d_in);
        free(a->spec[mi]);
        if (!(a->spec[mi] = malloc((size_t)(d_out > d_in ? d_out : d_in) * sizeof **a->spec))) {
            r = sv_err_set(err, -ENOMEM, "rank allocation: out of memory");
            break;
        }
        if ((r = fn(ctx, p, a->spec[mi], &n, err)) < 0)
            break;
        spectrum_sum(a->spec[mi], n, d_out, d_in, &a->total[mi], &a->cap[mi]);
        /* The measured loss of the uniform truncation over the share of
         * this spectrum that truncation drops: the weight in the method's
         * own units (the pre-pass's e is svdllm's share). */
        a->wseq[mi] = sens_weight(a->sp->dl[mi], spectrum_dropped(a->spec[mi], a->cap[mi], a->total[mi],
                                                                  a->uniform[l][p]),
                                  a->floor, a->gamma);
    }
    if (r == 0) {
        memcpy(keep, j->rank, (size_t)j->c->n_layers * sizeof *keep);
        r = auto_greedy(j, a->sp, a->w, 0, a, err);
    }
    if (r == 0) {
        for (int p = p0; p <= p1; p++) /* the stage's ranks are fixed; the rest stay as they were */
            if (keep[l][p]) {
                keep[l][p] = j->rank[l][p];
                a->fixed[l * PROJ_COUNT + p] = 1;
            }
        memcpy(j->rank, keep, (size_t)j->c->n_layers * sizeof *keep);
    }
    free(keep);
    return r;
}

/* sensitive's weights: (loss increase / normalised energy at the uniform
 * rank)^gamma. An increase at or below 0 (a truncation the loss did not notice,
 * or noise) gets a floor of 1e-3 of the mean positive increase, so that
 * its eigenvalues still rank among themselves. */
static double sens_floor(const struct spectra *sp, int M) {
    double sum = 0;
    int npos = 0;
    for (int mi = 0; mi < M; mi++)
        if (sp->dl[mi] > 0)
            sum += sp->dl[mi], npos++;
    return npos ? 1e-3 * sum / npos : 1e-9;
}

/* One matrix's weight: loss increase dl (floored at fl) over the
 * normalised discarded energy e of the same truncation, to the gamma. */
static double sens_weight(double dl, double e, double fl, double gamma) {
    return pow((dl > fl ? dl : fl) / (e > 1e-12 ? e : 1e-12), gamma);
}

static void sens_weights(const struct spectra *sp, int M, double gamma, double *w) {
    double fl = sens_floor(sp, M);
    for (int mi = 0; mi < M; mi++)
        w[mi] = sens_weight(sp->dl[mi], sp->e[mi], fl, gamma);
}

static void adapt_free(struct ranks_adapt *a, int M) {
    for (int mi = 0; a->spec && mi < M; mi++)
        free(a->spec[mi]);
    free(a->spec);
    free(a->total);
    free(a->wseq);
    free(a->cap);
    free(a->fixed);
}

/* sensitive: the candidates run for real with the job's method and scored
 * on the held-out windows; j->rank gets the lowest (ties: the earlier,
 * uniform first). cand: n allocations of L rows; aw[k]: candidate k's
 * sensitivity weights when its ranks are chosen as the trial proceeds
 * (ranks_adapt_stage; cand[k] then starts it and gets what it chose),
 * else NULL. */
static int sens_guard(struct job *j, const char *hex0, int (*cand)[PROJ_COUNT], const char *const *names,
                      const double *const *aw, const double *gamma, int n, const struct spectra *sp,
                      const struct trial_set *held, struct sv_err *err) {
    const int L = j->c->n_layers, M = L * PROJ_COUNT;
    struct job_choice *ch = &j->rank_choice;
    int r = 0;
    memset(ch, 0, sizeof *ch);
    ch->windows = held->n;
    ch->in_sample = held->in_sample;
    ch->layers = L;
    for (int k = 0; k < n && r == 0; k++) {
        int same = -1;
        for (int q = 0; q < k && same < 0 && !aw[k]; q++)
            if (!aw[q] && !memcmp(cand[(size_t)q * L], cand[(size_t)k * L], (size_t)L * sizeof *cand))
                same = q;
        snprintf(ch->name[k], sizeof ch->name[k], "%s", names[k]);
        job_progress(j, 0, "allocate", (double)k / n);
        if (same >= 0) {
            ch->loss[k] = ch->loss[same];
        } else if (aw[k]) {
            struct ranks_adapt a = {.sp = sp, .w = aw[k], .gamma = gamma[k], .floor = sens_floor(sp, M),
                                    .uniform = (const int(*)[PROJ_COUNT])cand, /* candidate 0 */
                                    .spec = calloc((size_t)M, sizeof *a.spec), .total = calloc((size_t)M, sizeof *a.total),
                                    .wseq = calloc((size_t)M, sizeof *a.wseq), .cap = calloc((size_t)M, sizeof *a.cap),
                                    .fixed = calloc((size_t)M, 1)};
            if (!a.spec || !a.total || !a.wseq || !a.cap || !a.fixed)
                r = sv_err_set(err, -ENOMEM, "rank allocation: out of memory");
            else
                r = trial_method(j, j->p->method, &cand[(size_t)k * L], L, hex0, held, &a, &ch->loss[k], err);
            adapt_free(&a, M);
        } else {
            r = trial_method(j, j->p->method, &cand[(size_t)k * L], L, hex0, held, NULL, &ch->loss[k], err);
        }
        ch->n = k + 1;
        if (r == 0 && ch->loss[k] < ch->loss[ch->chosen])
            ch->chosen = k;
    }
    if (r == 0)
        memcpy(j->rank, &cand[(size_t)ch->chosen * L], (size_t)L * sizeof *cand);
    return r;
}

/* --ranks auto: a pre-pass over all layers collects each matrix's spectrum
 * under the job's statistic (the original model's for the sequential
 * methods: their own statistics depend on the ranks being chosen), then one
 * greedy allocation. Needs hidden-0 (hex0); writes ranks.json so a resumed
 * job reuses it without the pre-pass. */
int ranks_plan_auto(struct job *j, const char *hex0, struct sv_err *err) {
    const int L = j->c->n_layers, M = L * PROJ_COUNT;
    char path[PATH_MAX + 64], hex[65];
    int r;
    job_work_path(j, path, sizeof path, "ranks.json", 0);
    if (access(path, F_OK) == 0) {
        /* From a run that died before layer 0 was committed. */
        if (jobfiles_ranks_read(j, path, err) == 0)
            return 0;
        if ((r = job_drop_layers(j, 0, err->msg, err)) < 0)
            return r;
        unlink(path);
    }
    enum compress_method m = j->p->method;
    /* The update factors B under the original model's svdllm statistics,
     * which the pre-pass has; rom and rrr do not (adaptive below). */
    const int sens = j->ranks == RANKS_SENSITIVE, adaptive = m == METHOD_ROM || m == METHOD_RRR;
    if (params_method_sequential(m))
        m = METHOD_SVDLLM;
    double t0 = mono_now();
    struct spectra sp = {.spec = calloc((size_t)M, sizeof *sp.spec), .total = calloc((size_t)M, sizeof *sp.total),
                         .cap = calloc((size_t)M, sizeof *sp.cap)};
    struct trial_set held = {0};
    int(*cand)[PROJ_COUNT] = NULL;
    double *w = NULL;
    r = 0;
    if (!sp.spec || !sp.cap || !sp.total)
        r = sv_err_set(err, -ENOMEM, "rank allocation: out of memory");
    /* rom and rrr factor statistics of the compressed model, which the
     * pre-pass cannot know: their weighted candidates are also run with the
     * ranks chosen as the trial proceeds (ranks_adapt_stage). */
    const int nc = sens ? 2 + RANKS_SENS_NGAMMA * (adaptive ? 2 : 1) : 0;
    if (r == 0 && sens) {
        sp.dl = calloc((size_t)M, sizeof *sp.dl);
        sp.e = calloc((size_t)M, sizeof *sp.e);
        w = calloc((size_t)M * RANKS_SENS_NGAMMA, sizeof *w);
        cand = calloc((size_t)nc * L, sizeof *cand);
        if (!sp.dl || !sp.e || !w || !cand)
            r = sv_err_set(err, -ENOMEM, "rank allocation: out of memory");
        if (r == 0 && (r = trial_sets_new(j, RANKS_SENS_WINDOWS, &sp.fit, &held, err)) == 0 &&
            (r = trial_embed(j, &sp.fit, &sp.x, err)) == 0)
            r = trial_loss_from(j, &sp.fit, 0, sp.x, -1, 0, NULL, &sp.base, err);
        if (r == 0) /* candidate 0: the uniform plan, in j->rank now */
            memcpy(cand, j->rank, (size_t)L * sizeof *cand);
    }
    snprintf(hex, sizeof hex, "%s", hex0);
    for (int l = 0; l < L && r == 0; l++)
        if ((r = auto_layer(j, m, l, hex, &sp, err)) == 0 && job_cancelled(j))
            r = sv_err_set(err, -ECANCELED, "cancelled");
    if (r == 0) {
        job_work_path(j, path, sizeof path, "pre-%d.f32", L);
        unlink(path);
        r = auto_greedy(j, &sp, NULL, 1, NULL, err);
    }
    if (r == 0 && sens) {
        static const char *const names[2 + 2 * RANKS_SENS_NGAMMA] = {
            "uniform", "auto", "sensitive-0.5", "sensitive-0.75", "sensitive-1", "sequential-0.5", "sequential-0.75",
            "sequential-1"};
        const double *aw[2 + 2 * RANKS_SENS_NGAMMA] = {0};
        double ag[2 + 2 * RANKS_SENS_NGAMMA] = {0};
        memcpy(cand + L, j->rank, (size_t)L * sizeof *cand);
        for (int g = 0; g < RANKS_SENS_NGAMMA && r == 0; g++) {
            sens_weights(&sp, M, ranks_sens_gamma[g], w + (size_t)g * M);
            if ((r = auto_greedy(j, &sp, w + (size_t)g * M, 0, NULL, err)) == 0)
                memcpy(cand + (size_t)(2 + g) * L, j->rank, (size_t)L * sizeof *cand);
        }
        for (int g = 0; g < RANKS_SENS_NGAMMA && adaptive; g++) { /* each starts from its static counterpart */
            memcpy(cand + (size_t)(2 + RANKS_SENS_NGAMMA + g) * L, cand + (size_t)(2 + g) * L, (size_t)L * sizeof *cand);
            aw[2 + RANKS_SENS_NGAMMA + g] = w + (size_t)g * M;
            ag[2 + RANKS_SENS_NGAMMA + g] = ranks_sens_gamma[g];
        }
        if (r == 0)
            r = sens_guard(j, hex0, cand, names, aw, ag, nc, &sp, &held, err);
        j->rank_choice.seconds = mono_now() - t0;
    }
    if (r == 0) {
        job_work_path(j, path, sizeof path, "ranks.json", 0);
        r = jobfiles_ranks_write(j, path, err);
    }
    for (int mi = 0; sp.spec && mi < M; mi++)
        free(sp.spec[mi]);
    free(sp.spec);
    free(sp.cap);
    free(sp.total);
    free(sp.dl);
    free(sp.e);
    free(sp.x);
    free(w);
    free(cand);
    trial_set_free(&sp.fit);
    trial_set_free(&held);
    return r;
}

/* The rank rule of p on config c gives every factored matrix rank >= 1 (and
 * method lorap keeps >= 1 MLP channel), before any clamping: a ratio that
 * needs rank 0 cannot be honoured. */
int ranks_precheck(const struct compress_params *p, const struct config *c, struct sv_err *err) {
    enum compress_ranks rule = params_ranks_resolve(p->method, p->ranks, p->layers);
    const int L = c->n_layers;
    if (rule == RANKS_AUTO || rule == RANKS_SENSITIVE) { /* every matrix starts at rank 1 out of its sub-layer's budget */
        double budget[2] = {0, 0}, need[2] = {0, 0};
        for (int q = 0; q < PROJ_COUNT; q++) {
            int d_out, d_in;
            config_proj_shape(c, q, &d_out, &d_in);
            budget[sublayer(q)] += (double)L * (1 - p->ratio) * d_out * d_in;
            need[sublayer(q)] += (double)L * (d_out + d_in);
        }
        for (int q = 0; q < 2; q++)
            if (budget[q] < need[q])
                return sv_err_set(err, -EINVAL,
                                  "ratio %g leaves the %s %.0f parameters, fewer than the %.0f of rank 1 for each of "
                                  "its matrices",
                                  p->ratio, q ? "MLP" : "attention", budget[q], need[q]);
        return 0;
    }
    double ratio = rule == RANKS_LAST_N ? p->ratio * L / p->layers : p->ratio;
    for (int q = 0; q < PROJ_COUNT; q++) {
        if (p->method == METHOD_LORAP && q >= PROJ_GATE)
            continue; /* pruned, checked below */
        if (rule == RANKS_LORAP && q <= PROJ_O)
            continue; /* the split, checked below */
        int d_out, d_in;
        config_proj_shape(c, q, &d_out, &d_in);
        double k = floor((double)d_out * d_in * (1.0 - ratio) / ((double)d_out + d_in) + 1e-9);
        if (k < 1)
            return sv_err_set(err, -EINVAL,
                              "ratio %g leaves %s (%d x %d) rank %.0f; every matrix keeps rank 1 up to ratio %.4g%s",
                              p->ratio, config_proj_name(q), d_out, d_in, k,
                              (1.0 - ((double)d_out + d_in) / ((double)d_out * d_in)) *
                                  (rule == RANKS_LAST_N ? (double)p->layers / L : 1.0),
                              rule == RANKS_LAST_N ? " (last-n: ratio * layers / n_layers)" : "");
    }
    if (rule == RANKS_LORAP) { /* as plan_lorap_attn */
        int dout[4], din[4];
        double k_qk, k_vo;
        lorap_attn_ranks(c, p, dout, din, &k_qk, &k_vo);
        if (k_qk < 1 || k_vo < 1)
            return sv_err_set(err, -EINVAL, "ratio %g with attn_split %g leaves %s rank %.0f", p->ratio,
                              params_attn_split(p), k_qk < 1 ? "q_proj/k_proj" : "v_proj/o_proj",
                              k_qk < 1 ? k_qk : k_vo);
    }
    if (p->method == METHOD_LORAP && lorap_ff_keep(c, p->ratio) < 1)
        return sv_err_set(err, -EINVAL, "ratio %g prunes every one of the %d MLP channels", p->ratio, c->intermediate);
    return 0;
}
