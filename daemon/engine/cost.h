/* cost: the fixed cost model behind a job's progress fraction (cost.c's
 * design note). Its unit is one layer pass: one decoder layer run over the
 * calibration states. The daemon uses cost_fraction_resumed() for jobs that
 * are not running; the engine's job (job.h) walks the same scale. */
#ifndef COST_H
#define COST_H

#include <stdbool.h>

#include "params.h"

/* What a job's progress scale depends on (cost.c). */
struct cost_in {
    enum compress_method method;
    enum compress_ranks ranks;   /* as submitted */
    int layers;                  /* last-n */
    bool eval;                   /* an evaluation text is set */
    int nsamples, seqlen, eval_seqlen, eval_max_windows;
};
void cost_in_of(const struct compress_params *p, struct cost_in *ret);
/* The fraction at which a run of that job starts when layers_done of its
 * n_layers layers are checkpointed: what status shows for a queued or failed
 * job, and never more than what the run then reports. */
double cost_fraction_resumed(const struct cost_in *c, int n_layers, int layers_done);

#define COST_FACTOR 5.4      /* a layer's seven factorizations */
#define COST_WRITE 0.25      /* a layer's states and checkpoint */
#define COST_SPECTRA 3.0     /* --ranks auto: a layer's eigenvalues (tridiagonal reductions) */
#define COST_CALIB0 0.1      /* hidden-0: embeddings of the windows */
#define COST_ASSEMBLE 0.06   /* per layer: copying the output */
#define COST_REFIT 0.02      /* svdllm-update: a stage's least-squares refit */
#define COST_FINAL 0.6       /* a compressed layer's pass (rom, update): the next layer's states */
#define COST_RRR 11.0        /* rrr: a stage's factorizations per svdllm one (eight held-out candidates, the fit,
                                lambda = 0, the update's reference) */
extern const double cost_factor_share[4];   /* stages q/k/v, o, gate/up, down */
extern const double cost_rom_pass[4];       /* each stage's pass to its tap */
extern const double cost_upd_pass[4];       /* original + compressed stream */

/* One job's scale. */
struct cost {
    enum compress_method method;
    int L, first;                /* layers before `first` stay dense (last-n) */
    int auto_ranks;
    double eval_w, pre, total;   /* one evaluation; everything before layer 0; the whole job */
};
void cost_init(struct cost *c, const struct cost_in *in, int L);
/* Layer l's weight; the segments compress_run and seq_layer report add up to it. */
double cost_layer(const struct cost *c, int l);
/* Where layer l starts on the scale. */
double cost_layer_start(const struct cost *c, int l);

#endif
