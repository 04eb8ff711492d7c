/* autosel: --method auto, the default method. Which method is best depends
 * on the model and the ratio (README: lorap on one bundled model at 0.2,
 * rrr elsewhere, rom or the update in between), and only the calibration
 * data may decide. So each candidate (svdllm, svdllm-update, rom, lorap,
 * rrr; lorap only where its rule gives every matrix a rank) is run for real by the engine's rooms over the
 * job's calibration windows (trial.c) on the first autosel_trial_layers(L)
 * layers (all of a model of up to 8 layers, else L / 8 rounded up: the
 * later layers stay original in the trial), with its default rank rule,
 * and scored by the mean next-token NLL on up to 16 calibration windows the
 * job does not fit on. The lowest wins; ties go to the earlier (cheaper)
 * candidate. The job then runs the winner under the rank rule it was given
 * (with all layers, it makes exactly the model that was scored when the
 * rule is the default one; lorap allocates its own ranks, so a job asked
 * for ranks auto or sensitive that chose lorap runs lorap's rule). Cost: one run of each candidate on the trial
 * layers, about 32 svdllm layer-jobs' worth per trial layer at LLaMA-7B
 * shapes (rrr's held-out ridge search is 27 of them), then the job. The
 * choice is kept in WORK/method.json so that a resumed job does not try
 * again. Runs on the job's thread. */
#include "autosel.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "calib.h"
#include "jobfiles.h"
#include "mono.h"
#include "ranks.h"
#include "trial.h"

#define AUTOSEL_WINDOWS 16

static const enum compress_method candidates[] = {METHOD_SVDLLM, METHOD_SVDLLM_UPDATE, METHOD_ROM, METHOD_LORAP,
                                                  METHOD_RRR};

const char *autosel_rule(void) {
    return "each of svdllm, svdllm-update, rom, lorap and rrr is run on the "
           "calibration windows over the first layers_tried layers (all when the model has up to 8, else n_layers/8 "
           "rounded up) with its default rank rule; the one with the lowest mean next-token NLL on heldout_windows "
           "calibration windows outside the fit windows is run under the job's rank rule (lorap: its own); ties go to the "
           "earlier";
}

int autosel_trial_layers(int L) { return L <= 8 ? L : (L + 7) / 8; }

int autosel_pick(struct job *j, const char *hex0, enum compress_method *ret, struct sv_err *err) {
    char path[PATH_MAX + 64];
    struct job_choice *ch = &j->method_choice;
    job_work_path(j, path, sizeof path, "method.json", 0);
    if (access(path, F_OK) == 0) {
        if (jobfiles_method_read(j, path, ret, err) == 0)
            return 0;
        unlink(path); /* damaged: chosen again */
    }
    struct trial_set held = {.T = j->T};
    double t0 = mono_now();
    int r = calib_unused_ids(j, AUTOSEL_WINDOWS, &held.ids, &held.n, &held.in_sample, err);
    if (r < 0)
        return r;
    memset(ch, 0, sizeof *ch);
    ch->windows = held.n;
    ch->in_sample = held.in_sample;
    ch->layers = autosel_trial_layers(j->c->n_layers);
    const size_t nc = sizeof candidates / sizeof candidates[0];
    for (size_t k = 0; k < nc && r == 0; k++) {
        enum compress_method m = candidates[k];
        if (m == METHOD_LORAP) {
            struct compress_params lp = *j->p;
            struct sv_err e = {0};
            lp.method = METHOD_LORAP;
            lp.ranks = RANKS_DEFAULT;
            if (ranks_precheck(&lp, j->c, &e) < 0)
                continue;
        }
        job_progress(j, 0, "select", (double)k / nc);
        double loss;
        if ((r = trial_method(j, m, NULL, ch->layers, hex0, &held, NULL, &loss, err)) < 0)
            break;
        snprintf(ch->name[ch->n], sizeof ch->name[ch->n], "%s", params_method_name(m));
        ch->loss[ch->n] = loss;
        if (loss < ch->loss[ch->chosen])
            ch->chosen = ch->n;
        ch->n++;
    }
    ch->seconds = mono_now() - t0;
    trial_set_free(&held);
    if (r < 0)
        return r;
    params_method_parse(ch->name[ch->chosen], ret);
    /* method.json records the chosen method under the job's own params. */
    struct compress_params cp = *j->p;
    const struct compress_params *saved = j->p;
    cp.method = *ret;
    j->p = &cp;
    r = jobfiles_method_write(j, path, err);
    j->p = saved;
    return r;
}
