/* lorap: LoRAP's MLP. Attention is factored as awsvd with the (v+o):(q+k)
 * split (factor.c, ranks.c); the MLP's intermediate channels are pruned by
 * activation-weighted magnitude (lowrank_channel_select()), which keeps a
 * plain LLaMA layout with a narrower intermediate_size. */
#include "lorap.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "lowrank.h"
#include "mono.h"

/* LoRAP's channel choice for layer lw (lowrank_channel_select()), from the
 * sums of squares of the MLP input (x) and of down_proj's input (h). */
static int lorap_channels(const struct job *j, const struct layer_w *lw, const struct stats *s, int *kept,
                          struct sv_err *err) {
    char what[200];
    model_proj_prefix(lw->index, PROJ_GATE, what, sizeof what);
    return lowrank_channel_select(lw->proj[PROJ_GATE].w, lw->proj[PROJ_UP].w, lw->proj[PROJ_DOWN].w, j->c->hidden,
                                  j->c->intermediate, s->sq_sum[2], s->sq_sum[3], j->ff_keep, kept, what, err);
}

/* pruned[0..2]: gate (keep, d), up (keep, d), down (d, keep), malloc'ed. */
int lorap_prune(struct job *j, const struct layer_w *lw, const struct stats *s, float *pruned[3],
                       struct mat_report *rep, struct sv_err *err) {
    int ff = j->c->intermediate, d = j->c->hidden, keep = j->ff_keep;
    double t0 = mono_now();
    int *kept = malloc((size_t)keep * sizeof *kept);
    if (!kept)
        return sv_err_set(err, -ENOMEM, "layer %d: out of memory", lw->index);
    int r = lorap_channels(j, lw, s, kept, err);
    for (int m = 0; m < 3 && r == 0; m++)
        if (!(pruned[m] = malloc((size_t)keep * d * sizeof(float))))
            r = sv_err_set(err, -ENOMEM, "layer %d: out of memory", lw->index);
    if (r == 0) {
        for (int n = 0; n < keep; n++) {
            memcpy(pruned[0] + (size_t)n * d, lw->proj[PROJ_GATE].w + (size_t)kept[n] * d, (size_t)d * sizeof(float));
            memcpy(pruned[1] + (size_t)n * d, lw->proj[PROJ_UP].w + (size_t)kept[n] * d, (size_t)d * sizeof(float));
        }
        for (int o = 0; o < d; o++)
            for (int n = 0; n < keep; n++)
                pruned[2][(size_t)o * keep + n] = lw->proj[PROJ_DOWN].w[(size_t)o * ff + kept[n]];
        double sec = mono_now() - t0;
        j->t.factorize += sec;
        for (int p = PROJ_GATE; p <= PROJ_DOWN; p++)
            rep[p] = (struct mat_report){.kind = MAT_PRUNED, .channels = keep, .seconds = sec};
    }
    free(kept);
    return r;
}
