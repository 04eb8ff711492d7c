/* forward: LLaMA decoder math on BLIS.
 *
 * Design note. Everything with O(n^3)-like cost goes through bli_sgemm with
 * explicit strides. Attention copies each head's q/k/v slice to a contiguous
 * (T, hd) block first: read in place, at the full row stride (8 KB at
 * LLaMA-7B widths, a power of two), BLIS's packing ran the per-head products
 * at half speed, and the copy is T*hd per operand against 2*T*T*hd flops.
 * Strides never change a product's result, only its speed.
 * The elementwise steps (RMSNorm, RoPE, softmax, SwiGLU, residual adds) are
 * O(ntok*width), under 2 % of the flops at LLaMA shapes; the large ones are
 * OpenMP loops that also vectorize (bench/bench_forward.c measures the whole
 * layer against the bare sgemm rate). Vectorizing changes no result: each
 * element goes through the same float operations in the same order.
 * RMSNorm sums and RoPE angles are computed in double so results do not depend
 * on the width. Only this file includes blis.h (libFLAME's header cannot share
 * a translation unit with it). */
#include "forward.h"

#include <blis.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <omp.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int forward_nthreads = 1;

/* c ? a : b, by bit masks. GCC (12) does not if-convert a float ?: whose
 * result later meets a float operation that may trap (-ftrapping-math is the
 * default), so a loop calling vexpf stayed scalar with the clamps as branches;
 * the masked form has no branch to keep. Same result as ?: for every input,
 * NaN included. */
static inline float fsel(int c, float a, float b) {
    union { float f; uint32_t u; } ua = {.f = a}, ub = {.f = b}, r;
    uint32_t m = -(uint32_t)(c != 0);
    r.u = (ua.u & m) | (ub.u & ~m);
    return r.f;
}

/* exp(x) for the softmax and SiLU, written so the compiler vectorizes it
 * (libm's expf is a scalar call and was a fifth of the run time at small
 * head_dim). Cody-Waite range reduction x = n ln2 + r, |r| <= ln2/2, and
 * Cephes' degree-6 minimax polynomial for e^r; relative error below 2e-7
 * (about 2 ulp) for x in [-87, 88]. Inputs are clamped to that range
 * (e^-87 = 1.6e-38 is zero for a softmax whose largest term is 1), with no
 * branch so loops vectorize; vectorized and scalar calls return the same bits
 * (checked over all 2^32 inputs). */
static inline float vexpf(float x) {
    float xc = fsel(x > 88.0f, 88.0f, x);
    xc = fsel(xc < -87.0f, -87.0f, xc);
    /* floor via truncation of a positive value: vectorizes without SSE4.1. */
    int32_t ni = (int32_t)(xc * 1.44269504088896341f + 128.5f) - 128;
    float n = (float)ni;
    float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { float f; int32_t i; } sc = {.i = (ni + 127) << 23};
    return p * sc.f;
}

/* The CPUs this process may run on: its affinity mask, so systemd's
 * CPUAffinity= and a container's cpuset count, not the machine's online
 * cores (BLIS would otherwise run more threads than cores it gets). The mask
 * is grown past CPU_SETSIZE for kernels configured with more CPUs; the online
 * count only when the mask cannot be read at all. */
static int cpus_allowed(void) {
    for (int ncpu = CPU_SETSIZE; ncpu <= (1 << 16); ncpu *= 2) {
        cpu_set_t *set = CPU_ALLOC(ncpu);
        if (!set)
            break;
        size_t size = CPU_ALLOC_SIZE(ncpu);
        int r = sched_getaffinity(0, size, set), e = errno;
        int n = r == 0 ? CPU_COUNT_S(size, set) : 0;
        CPU_FREE(set);
        if (n > 0)
            return n;
        if (r == 0 || e != EINVAL)   /* EINVAL: the kernel's mask is larger */
            break;
    }
    long c = sysconf(_SC_NPROCESSORS_ONLN);
    return c > 0 ? (int)c : 1;
}

/* BLIS 0.9's small/unpacked ("sup") level-3 kernels for float read past
 * the end of their operands at some edge shapes (flame/blis #635: the rv
 * 3x2 and 6x2m kernels; #821/#824: the rd 1x16n kernel, which loads the
 * next row of A whenever the row edge is 1 and k is not a multiple of 8;
 * all fixed after 0.9.0, which is Debian 12's). A read past the last row
 * lands on the next page when the buffer ends at one: first seen under
 * ASan (whose allocator ends large blocks at a page), then as a SEGV of a
 * release svdllmd in svdllm-update at LLaMA-7B shapes (a 1228-rank factor,
 * k % 8 = 4, in the rd kernel at the instruction #824 deletes). The
 * conventional path packs its operands within bounds, so every float sup
 * threshold is set to 0: no float product counts as small. Sanitizer and
 * release builds do the same, so ASan tests what ships. Doubles keep their
 * sup kernels (no such report for 0.9's d kernels; ASan would show one).
 * The cost is on tiny products only (the bundled models' forward runs about
 * 2x slower; at LLaMA-7B shapes every product is large enough to be packed
 * anyway); one-row products never reach BLIS (matvec, below). */
static void blis_sup_off(void) {
    blksz_t *t = bli_cntx_l3_sup_thresh_buf(bli_gks_query_cntx());
    const num_t dts[] = {BLIS_FLOAT, BLIS_SCOMPLEX};
    for (int i = 0; i < BLIS_NUM_THRESH; i++)
        for (size_t d = 0; d < sizeof dts / sizeof *dts; d++) {
            bli_blksz_set_def(0, dts[d], &t[i]);
            bli_blksz_set_max(0, dts[d], &t[i]);
        }
}

static pthread_once_t blis_sup_once = PTHREAD_ONCE_INIT;

void forward_blis_init(void) { pthread_once(&blis_sup_once, blis_sup_off); }

int forward_threads_set(int n) {
    forward_blis_init();
    if (n <= 0)
        n = cpus_allowed();
    /* Written only on a change, so a worker thread re-applying the count in
     * force (for its own OpenMP default, below) races no reader. */
    if (forward_nthreads != n)
        forward_nthreads = n;
    /* BLIS 0.9 keeps this in its global rntm: it holds for calls from every
     * thread. OpenMP's default team size is per thread and not inherited by
     * a new pthread: it covers OpenMP code without num_threads (libFLAME's)
     * run on the calling thread. */
    bli_thread_set_num_threads(n);
    omp_set_num_threads(n);
    return n;
}

int forward_threads_get(void) { return forward_nthreads; }

void forward_blas_threads(int n) { bli_thread_set_num_threads(n > 0 ? n : forward_nthreads); }

/* Single-threaded sgemm for use inside our own parallel loops (BLIS would
 * otherwise start its own team per call and oversubscribe the cores). */
static void sgemm1(int transb, size_t m, size_t n, size_t k, float alpha, const float *a, size_t lda, const float *b,
                   size_t ldb, float beta, float *cm, size_t ldc) {
    float al = alpha, be = beta;
    forward_blis_init();
    rntm_t rntm = BLIS_RNTM_INITIALIZER;
    bli_rntm_set_num_threads(1, &rntm);
    bli_sgemm_ex(BLIS_NO_TRANSPOSE, transb ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE, (dim_t)m, (dim_t)n, (dim_t)k, &al,
                 (float *)a, (inc_t)lda, 1, (float *)b, (inc_t)ldb, 1, &be, cm, (inc_t)ldc, 1, NULL, &rntm);
}

void forward_sgemm(int transb, size_t m, size_t n, size_t k, float alpha, const float *a, size_t lda,
                   const float *b, size_t ldb, float beta, float *cm, size_t ldc) {
    if (m == 0 || n == 0)
        return;
    float al = alpha, be = beta;
    forward_blis_init();
    /* Row-major: row stride = ld, column stride = 1. */
    bli_sgemm(BLIS_NO_TRANSPOSE, transb ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE, (dim_t)m, (dim_t)n, (dim_t)k, &al,
              (float *)a, (inc_t)lda, 1, (float *)b, (inc_t)ldb, 1, &be, cm, (inc_t)ldc, 1);
}

int forward_linear(const struct linear *lin, const float *x, size_t ntok, float *y, struct sv_err *err) {
    if (lin->rank == 0) {
        /* y (ntok, d_out) = x (ntok, d_in) W^T, W (d_out, d_in) */
        forward_sgemm(1, ntok, (size_t)lin->d_out, (size_t)lin->d_in, 1.0f, x, (size_t)lin->d_in, lin->w,
                      (size_t)lin->d_in, 0.0f, y, (size_t)lin->d_out);
        return 0;
    }
    float *t = malloc(ntok * (size_t)lin->rank * sizeof *t); /* t: (ntok, k) */
    if (!t)
        return sv_err_set(err, -ENOMEM, "linear (%d x %d, rank %d): out of memory for %zu tokens", lin->d_out,
                          lin->d_in, lin->rank, ntok);
    forward_sgemm(1, ntok, (size_t)lin->rank, (size_t)lin->d_in, 1.0f, x, (size_t)lin->d_in, lin->b,
                  (size_t)lin->d_in, 0.0f, t, (size_t)lin->rank);
    forward_sgemm(1, ntok, (size_t)lin->d_out, (size_t)lin->rank, 1.0f, t, (size_t)lin->rank, lin->a,
                  (size_t)lin->rank, 0.0f, y, (size_t)lin->d_out);
    free(t);
    return 0;
}

/* out (ntok, d) = x / rms(x) * w, on nt threads (forward_nthreads by default). */
static void rmsnorm_nt(float *out, const float *x, const float *w, size_t ntok, int d, double eps, int nt) {
#pragma omp parallel for num_threads(nt)
    for (size_t i = 0; i < ntok; i++) {
        const float *xi = x + i * (size_t)d;
        double ss = 0;
        for (int j = 0; j < d; j++)
            ss += (double)xi[j] * xi[j];
        float s = (float)(1.0 / sqrt(ss / d + eps));
        float *oi = out + i * (size_t)d;
        for (int j = 0; j < d; j++)
            oi[j] = w[j] * (xi[j] * s);
    }
}

static void rmsnorm(float *out, const float *x, const float *w, size_t ntok, int d, double eps) {
    rmsnorm_nt(out, x, w, ntok, d, eps, forward_nthreads);
}

/* x (n) += y (n): the residual connection. */
static void add_inplace_nt(float *x, const float *y, size_t n, int nt) {
#pragma omp parallel for simd num_threads(nt)
    for (size_t i = 0; i < n; i++)
        x[i] += y[i];
}

static void add_inplace(float *x, const float *y, size_t n) {
    add_inplace_nt(x, y, n, forward_nthreads);
}

/* y (ntok, d) += b (d) broadcast over rows: a module's bias. */
static void add_bias_nt(float *y, const float *b, size_t ntok, int d, int nt) {
    if (!b)
        return;
#pragma omp parallel for num_threads(nt)
    for (size_t i = 0; i < ntok; i++) {
        float *yi = y + i * (size_t)d;
        for (int j = 0; j < d; j++)
            yi[j] += b[j];
    }
}

static void add_bias(float *y, const float *b, size_t ntok, int d) {
    add_bias_nt(y, b, ntok, d, forward_nthreads);
}

/* HF rotate_half RoPE on v (B*T rows of nh heads of hd), position = row % T. */
static void rope(float *v, int B, int T, int nh, int hd, const float *cosv, const float *sinv) {
    int half = hd / 2;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            float *row = v + ((size_t)b * T + t) * (size_t)nh * hd;
            const float *cs = cosv + (size_t)t * half, *sn = sinv + (size_t)t * half;
            for (int h = 0; h < nh; h++) {
                float *q = row + (size_t)h * hd;
                for (int i = 0; i < half; i++) {
                    float x1 = q[i], x2 = q[i + half];
                    q[i] = x1 * cs[i] - x2 * sn[i];
                    q[i + half] = x2 * cs[i] + x1 * sn[i];
                }
            }
        }
}

static int tap_in(const struct forward_taps *taps, enum config_proj p, const float *x, size_t ntok, int w) {
    return (taps && taps->input) ? taps->input(taps->ctx, p, x, ntok, w) : 0;
}

static int tap_out(const struct forward_taps *taps, enum config_proj p, const float *y, size_t ntok, int w) {
    return (taps && taps->output) ? taps->output(taps->ctx, p, y, ntok, w) : 0;
}

int forward_layer(const struct config *c, const struct layer_w *lw, float *x, int B, int T,
                  const struct forward_taps *taps, struct sv_err *err) {
    const int d = c->hidden, nh = c->n_heads, nkv = c->n_kv_heads, hd = c->head_dim;
    const int qw = nh * hd, kvw = nkv * hd, ff = lw->proj[PROJ_GATE].d_out;
    const size_t ntok = (size_t)B * T;
    int r = 0;
    if (c->sliding_window && T > c->sliding_window)
        return sv_err_set(err, -ENOTSUP, "layer %d: sequence length %d exceeds the model's sliding_window %d",
                          lw->index, T, c->sliding_window);
    float *xn = malloc(ntok * (size_t)d * sizeof(float));
    float *q = malloc(ntok * (size_t)qw * sizeof(float));
    float *k = malloc(ntok * (size_t)kvw * sizeof(float));
    float *v = malloc(ntok * (size_t)kvw * sizeof(float));
    float *att = malloc(ntok * (size_t)qw * sizeof(float));
    /* Per thread: the score matrix (T, T), then one head's q, k, v as (T, hd) each. */
    const size_t per_thread = (size_t)T * T + 3 * (size_t)T * hd;
    float *sc = malloc((size_t)forward_nthreads * per_thread * sizeof(float));
    float *cosv = malloc((size_t)T * (hd / 2) * sizeof(float));
    float *sinv = malloc((size_t)T * (hd / 2) * sizeof(float));
    float *g = NULL, *u = NULL;
    if (!xn || !q || !k || !v || !att || !sc || !cosv || !sinv) {
        r = sv_err_set(err, -ENOMEM, "layer %d: out of memory for %d x %d tokens", lw->index, B, T);
        goto out;
    }

    /* Attention block. */
    rmsnorm(xn, x, lw->attn_norm, ntok, d, c->rms_eps);
    if ((r = tap_in(taps, PROJ_Q, xn, ntok, d)) != 0)
        goto tap_fail;
    if ((r = forward_linear(&lw->proj[PROJ_Q], xn, ntok, q, err)) < 0 ||
        (r = forward_linear(&lw->proj[PROJ_K], xn, ntok, k, err)) < 0 ||
        (r = forward_linear(&lw->proj[PROJ_V], xn, ntok, v, err)) < 0)
        goto out;
    if ((r = tap_out(taps, PROJ_Q, q, ntok, qw)) < 0 || (r = tap_out(taps, PROJ_K, k, ntok, kvw)) < 0 ||
        (r = tap_out(taps, PROJ_V, v, ntok, kvw)) != 0)
        goto tap_fail;
    add_bias(q, lw->bias[PROJ_Q], ntok, qw);
    add_bias(k, lw->bias[PROJ_K], ntok, kvw);
    add_bias(v, lw->bias[PROJ_V], ntok, kvw);
    if (lw->q_norm) /* Qwen3: each head's row of hd values normalized on its own */
        rmsnorm(q, q, lw->q_norm, ntok * (size_t)nh, hd, c->rms_eps);
    if (lw->k_norm)
        rmsnorm(k, k, lw->k_norm, ntok * (size_t)nkv, hd, c->rms_eps);
    double freq[CONFIG_MAX_HEAD_DIM / 2];
    config_rope_inv_freq(c, T, freq);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < hd / 2; i++) {
            double ang = (double)t * freq[i];
            cosv[(size_t)t * (hd / 2) + i] = (float)cos(ang);
            sinv[(size_t)t * (hd / 2) + i] = (float)sin(ang);
        }
    rope(q, B, T, nh, hd, cosv, sinv);
    rope(k, B, T, nkv, hd, cosv, sinv);
    const float scale = (float)(1.0 / sqrt((double)hd));
    const int group = nh / nkv;
    /* One (sequence, head) pair per iteration, each thread with its own
     * score matrix and single-threaded products: at small head_dim the
     * softmax, not the products, is the cost, so split over heads. */
#pragma omp parallel for schedule(dynamic) num_threads(forward_nthreads)
    for (int bh = 0; bh < B * nh; bh++) {
        int b = bh / nh, h = bh % nh;
        float *scm = sc + (size_t)omp_get_thread_num() * per_thread;
        /* qh, kh, vh: (T, hd) copies of this head's columns of q, k, v. */
        float *qh = scm + (size_t)T * T, *kh = qh + (size_t)T * hd, *vh = kh + (size_t)T * hd;
        for (int t = 0; t < T; t++) {
            size_t row = (size_t)b * T + t;
            memcpy(qh + (size_t)t * hd, q + row * qw + (size_t)h * hd, (size_t)hd * sizeof(float));
            memcpy(kh + (size_t)t * hd, k + row * kvw + (size_t)(h / group) * hd, (size_t)hd * sizeof(float));
            memcpy(vh + (size_t)t * hd, v + row * kvw + (size_t)(h / group) * hd, (size_t)hd * sizeof(float));
        }
        float *oh = att + (size_t)b * T * qw + (size_t)h * hd;
        /* scm (T, T) = scale * qh (T, hd) kh^T; only the causal part is used. */
        sgemm1(1, (size_t)T, (size_t)T, (size_t)hd, scale, qh, (size_t)hd, kh, (size_t)hd, 0.0f, scm, (size_t)T);
        for (int i = 0; i < T; i++) {
            float *row = scm + (size_t)i * T;
            float mx = row[0];
#pragma omp simd reduction(max : mx)
            for (int j = 1; j <= i; j++)
                mx = row[j] > mx ? row[j] : mx;
#pragma omp simd
            for (int j = 0; j <= i; j++)
                row[j] = vexpf(row[j] - mx);
            /* In order, not as a simd reduction: the sum, and so every
             * result, stays independent of the vector width. */
            float sum = 0;
            for (int j = 0; j <= i; j++)
                sum += row[j];
            float inv = 1.0f / sum;
#pragma omp simd
            for (int j = 0; j <= i; j++)
                row[j] *= inv;
            for (int j = i + 1; j < T; j++)
                row[j] = 0.0f;
        }
        /* oh (T, hd) = scm (T, T) vh (T, hd) */
        sgemm1(0, (size_t)T, (size_t)hd, (size_t)T, 1.0f, scm, (size_t)T, vh, (size_t)hd, 0.0f, oh, (size_t)qw);
    }
    if ((r = tap_in(taps, PROJ_O, att, ntok, qw)) != 0)
        goto tap_fail;
    /* xn is free now: o_proj output goes there, then the residual add. */
    if ((r = forward_linear(&lw->proj[PROJ_O], att, ntok, xn, err)) < 0)
        goto out;
    if ((r = tap_out(taps, PROJ_O, xn, ntok, d)) != 0)
        goto tap_fail;
    add_inplace(x, xn, ntok * (size_t)d);
    free(q);
    free(k);
    free(v);
    free(att);
    q = k = v = att = NULL;

    /* MLP block: down(silu(gate(x)) * up(x)). */
    g = malloc(ntok * (size_t)ff * sizeof(float));
    u = malloc(ntok * (size_t)ff * sizeof(float));
    if (!g || !u) {
        r = sv_err_set(err, -ENOMEM, "layer %d: out of memory for the MLP of %zu tokens", lw->index, ntok);
        goto out;
    }
    rmsnorm(xn, x, lw->ffn_norm, ntok, d, c->rms_eps);
    if ((r = tap_in(taps, PROJ_GATE, xn, ntok, d)) != 0)
        goto tap_fail;
    if ((r = forward_linear(&lw->proj[PROJ_GATE], xn, ntok, g, err)) < 0 ||
        (r = forward_linear(&lw->proj[PROJ_UP], xn, ntok, u, err)) < 0)
        goto out;
    if ((r = tap_out(taps, PROJ_GATE, g, ntok, ff)) < 0 || (r = tap_out(taps, PROJ_UP, u, ntok, ff)) != 0)
        goto tap_fail;
    /* Scalar, this loop was 3 % of a layer at hidden 2048. */
#pragma omp parallel for simd num_threads(forward_nthreads)
    for (size_t i = 0; i < ntok * (size_t)ff; i++) {
        float a = g[i];
        g[i] = a / (1.0f + vexpf(-a)) * u[i];
    }
    if ((r = tap_in(taps, PROJ_DOWN, g, ntok, ff)) != 0)
        goto tap_fail;
    if ((r = forward_linear(&lw->proj[PROJ_DOWN], g, ntok, xn, err)) < 0)
        goto out;
    if ((r = tap_out(taps, PROJ_DOWN, xn, ntok, d)) != 0)
        goto tap_fail;
    add_inplace(x, xn, ntok * (size_t)d);
    goto out;
tap_fail: /* r > 0: a tap asked to stop early; not an error */
    if (r < 0 && err && err->code == 0)
        sv_err_set(err, r, "layer %d: statistics callback failed", lw->index);
out:
    free(xn);
    free(q);
    free(k);
    free(v);
    free(att);
    free(sc);
    free(cosv);
    free(sinv);
    free(g);
    free(u);
    return r;
}

int forward_logits(const struct config *c, const struct head_w *h, const float *x, size_t ntok, float *logits,
                   struct sv_err *err) {
    float *xn = malloc(ntok * (size_t)c->hidden * sizeof(float));
    if (!xn)
        return sv_err_set(err, -ENOMEM, "lm_head: out of memory for %zu tokens", ntok);
    rmsnorm(xn, x, h->norm, ntok, c->hidden, c->rms_eps);
    forward_sgemm(1, ntok, (size_t)c->vocab, (size_t)c->hidden, 1.0f, xn, (size_t)c->hidden, h->w,
                  (size_t)c->hidden, 0.0f, logits, (size_t)c->vocab);
    free(xn);
    return 0;
}

/* ---- incremental decoding --------------------------------------------------- */

/* y (d_out) = W (d_out, d_in) x (d_in), rows split over nt threads. */
static void matvec(int nt, const float *w, const float *x, int d_out, int d_in, float *y) {
#pragma omp parallel for num_threads(nt) if (nt > 1)
    for (int j = 0; j < d_out; j++) {
        const float *wj = w + (size_t)j * d_in;
        float s = 0;
#pragma omp simd reduction(+ : s)
        for (int i = 0; i < d_in; i++)
            s += wj[i] * x[i];
        y[j] = s;
    }
}

/* forward_linear for the few rows of a generation step. A single row goes
 * through our own matrix-vector product rather than a BLIS sgemm with
 * m = 1: BLIS 0.9 reads past the end of a one-row operand there (found by
 * ASan in test_generate), and for a vector the product is memory-bound
 * anyway. More rows: BLIS, on nt threads set per call (BLIS's global count
 * is left alone: a job may be computing beside us). */
static int linear_nt(int nt, const struct linear *lin, const float *x, size_t ntok, float *y, struct sv_err *err) {
    if (ntok == 1 && lin->rank == 0) {
        matvec(nt, lin->w, x, lin->d_out, lin->d_in, y);
        return 0;
    }
    if (ntok == 1) {
        float *t = malloc((size_t)lin->rank * sizeof *t); /* t: (k) = B x */
        if (!t)
            return sv_err_set(err, -ENOMEM, "linear (%d x %d, rank %d): out of memory", lin->d_out, lin->d_in,
                              lin->rank);
        matvec(nt, lin->b, x, lin->rank, lin->d_in, t);
        matvec(nt, lin->a, t, lin->d_out, lin->rank, y);
        free(t);
        return 0;
    }
    if (nt == forward_nthreads)
        return forward_linear(lin, x, ntok, y, err);
    if (lin->rank == 0) {
        sgemm1(1, ntok, (size_t)lin->d_out, (size_t)lin->d_in, 1.0f, x, (size_t)lin->d_in, lin->w, (size_t)lin->d_in,
               0.0f, y, (size_t)lin->d_out);
        return 0;
    }
    float *t = malloc(ntok * (size_t)lin->rank * sizeof *t); /* t: (ntok, k) */
    if (!t)
        return sv_err_set(err, -ENOMEM, "linear (%d x %d, rank %d): out of memory for %zu tokens", lin->d_out,
                          lin->d_in, lin->rank, ntok);
    sgemm1(1, ntok, (size_t)lin->rank, (size_t)lin->d_in, 1.0f, x, (size_t)lin->d_in, lin->b, (size_t)lin->d_in, 0.0f,
           t, (size_t)lin->rank);
    sgemm1(1, ntok, (size_t)lin->d_out, (size_t)lin->rank, 1.0f, t, (size_t)lin->rank, lin->a, (size_t)lin->rank,
           0.0f, y, (size_t)lin->d_out);
    free(t);
    return 0;
}

/* Multiply-adds of one call below which it runs single-threaded (about a
 * millisecond on one core). */
#define GEN_SERIAL_WORK 4e6

/* Same math as forward_layer for n new tokens of one sequence at positions
 * pos0 .. pos0+n-1, whose keys and values join the layer's cache; attention
 * reads every cached position up to the query's own. The products of a
 * single token are matrix-vector ones, so BLIS's blocking and our per-head
 * dot products sum in other orders than the full pass: results agree to
 * float rounding, not bit for bit (tests/test_generate.c states the bound). */
int forward_layer_cached(const struct config *c, const struct layer_w *lw, float *x, int n, int pos0, float *kc,
                         float *vc, int cap, struct sv_err *err) {
    const int d = c->hidden, nh = c->n_heads, nkv = c->n_kv_heads, hd = c->head_dim;
    const int qw = nh * hd, kvw = nkv * hd, ff = lw->proj[PROJ_GATE].d_out;
    const size_t ntok = (size_t)n;
    const int len = pos0 + n;   /* positions in the cache after this call */
    int r = 0;
    if (n < 1 || pos0 < 0 || len > cap)
        return sv_err_set(err, -EINVAL, "layer %d: %d tokens at position %d do not fit a cache of %d", lw->index, n,
                          pos0, cap);
    if (c->sliding_window && len > c->sliding_window)
        return sv_err_set(err, -ENOTSUP, "layer %d: sequence length %d exceeds the model's sliding_window %d",
                          lw->index, len, c->sliding_window);
    float *xn = malloc(ntok * (size_t)d * sizeof(float));
    float *q = malloc(ntok * (size_t)qw * sizeof(float));
    float *att = malloc(ntok * (size_t)qw * sizeof(float));
    /* A token of a small model is a few hundred thousand multiply-adds: a
     * thread team's start-up and barriers would cost more than they save
     * (and far more on a loaded machine), so small steps run on this thread. */
    const double work = (double)ntok * ((double)d * (qw + 2 * kvw) + (double)qw * d + 3.0 * d * ff);
    const int nt = work < GEN_SERIAL_WORK ? 1 : forward_nthreads;
    float *sc = malloc((size_t)nt * (size_t)len * sizeof(float));   /* per thread: one score row */
    float *g = NULL, *u = NULL;
    float *k = kc + (size_t)pos0 * kvw, *v = vc + (size_t)pos0 * kvw;   /* the new rows, written in place */
    if (!xn || !q || !att || !sc) {
        r = sv_err_set(err, -ENOMEM, "layer %d: out of memory for %d tokens", lw->index, n);
        goto out;
    }
    rmsnorm_nt(xn, x, lw->attn_norm, ntok, d, c->rms_eps, nt);
    if ((r = linear_nt(nt, &lw->proj[PROJ_Q], xn, ntok, q, err)) < 0 ||
        (r = linear_nt(nt, &lw->proj[PROJ_K], xn, ntok, k, err)) < 0 ||
        (r = linear_nt(nt, &lw->proj[PROJ_V], xn, ntok, v, err)) < 0)
        goto out;
    add_bias_nt(q, lw->bias[PROJ_Q], ntok, qw, nt);
    add_bias_nt(k, lw->bias[PROJ_K], ntok, kvw, nt);
    add_bias_nt(v, lw->bias[PROJ_V], ntok, kvw, nt);
    if (lw->q_norm)
        rmsnorm_nt(q, q, lw->q_norm, ntok * (size_t)nh, hd, c->rms_eps, nt);
    if (lw->k_norm)
        rmsnorm_nt(k, k, lw->k_norm, ntok * (size_t)nkv, hd, c->rms_eps, nt);
    /* RoPE at absolute positions. Dynamic NTK takes the length so far, as
     * transformers' cached generation does (keys already cached keep the
     * angles they were given). */
    double freq[CONFIG_MAX_HEAD_DIM / 2];
    config_rope_inv_freq(c, len, freq);
    for (int t = 0; t < n; t++) {
        float *rows[2] = {q + (size_t)t * qw, k + (size_t)t * kvw};
        int heads[2] = {nh, nkv};
        for (int i = 0; i < hd / 2; i++) {
            double ang = (double)(pos0 + t) * freq[i];
            float cs = (float)cos(ang), sn = (float)sin(ang);
            for (int w = 0; w < 2; w++)
                for (int h = 0; h < heads[w]; h++) {
                    float *p = rows[w] + (size_t)h * hd;
                    float x1 = p[i], x2 = p[i + hd / 2];
                    p[i] = x1 * cs - x2 * sn;
                    p[i + hd / 2] = x2 * cs + x1 * sn;
                }
        }
    }
    const float scale = (float)(1.0 / sqrt((double)hd));
    const int group = nh / nkv;
#pragma omp parallel for schedule(dynamic) num_threads(nt)
    for (int th = 0; th < n * nh; th++) {
        int t = th / nh, h = th % nh, L = pos0 + t + 1;
        float *row = sc + (size_t)omp_get_thread_num() * (size_t)len;
        const float *qh = q + (size_t)t * qw + (size_t)h * hd;
        const size_t koff = (size_t)(h / group) * hd;
        float mx = -INFINITY;
        for (int j = 0; j < L; j++) {
            const float *kj = kc + (size_t)j * kvw + koff;
            float s = 0;
            for (int i = 0; i < hd; i++)
                s += qh[i] * kj[i];
            row[j] = s * scale;
            mx = row[j] > mx ? row[j] : mx;
        }
        float sum = 0;
        for (int j = 0; j < L; j++) {
            row[j] = vexpf(row[j] - mx);
            sum += row[j];
        }
        float inv = 1.0f / sum;
        float *oh = att + (size_t)t * qw + (size_t)h * hd;
        for (int i = 0; i < hd; i++)
            oh[i] = 0;
        for (int j = 0; j < L; j++) {
            const float *vj = vc + (size_t)j * kvw + koff;
            float p = row[j] * inv;
            for (int i = 0; i < hd; i++)
                oh[i] += p * vj[i];
        }
    }
    if ((r = linear_nt(nt, &lw->proj[PROJ_O], att, ntok, xn, err)) < 0)
        goto out;
    add_inplace_nt(x, xn, ntok * (size_t)d, nt);

    g = malloc(ntok * (size_t)ff * sizeof(float));
    u = malloc(ntok * (size_t)ff * sizeof(float));
    if (!g || !u) {
        r = sv_err_set(err, -ENOMEM, "layer %d: out of memory for the MLP of %d tokens", lw->index, n);
        goto out;
    }
    rmsnorm_nt(xn, x, lw->ffn_norm, ntok, d, c->rms_eps, nt);
    if ((r = linear_nt(nt, &lw->proj[PROJ_GATE], xn, ntok, g, err)) < 0 ||
        (r = linear_nt(nt, &lw->proj[PROJ_UP], xn, ntok, u, err)) < 0)
        goto out;
    for (size_t i = 0; i < ntok * (size_t)ff; i++) {
        float a = g[i];
        g[i] = a / (1.0f + vexpf(-a)) * u[i];
    }
    if ((r = linear_nt(nt, &lw->proj[PROJ_DOWN], g, ntok, xn, err)) < 0)
        goto out;
    add_inplace_nt(x, xn, ntok * (size_t)d, nt);
out:
    free(xn);
    free(q);
    free(att);
    free(sc);
    free(g);
    free(u);
    return r;
}

int forward_logits_small(const struct config *c, const struct head_w *h, const float *x, size_t ntok, float *logits,
                         struct sv_err *err) {
    const double work = (double)ntok * c->vocab * c->hidden;
    if (work >= GEN_SERIAL_WORK && ntok > 1)
        return forward_logits(c, h, x, ntok, logits, err);
    float *xn = malloc(ntok * (size_t)c->hidden * sizeof(float));
    if (!xn)
        return sv_err_set(err, -ENOMEM, "lm_head: out of memory for %zu tokens", ntok);
    rmsnorm_nt(xn, x, h->norm, ntok, c->hidden, c->rms_eps, 1);
    if (ntok == 1)   /* see linear_nt */
        matvec(work >= GEN_SERIAL_WORK ? forward_nthreads : 1, h->w, xn, c->vocab, c->hidden, logits);
    else
        sgemm1(1, ntok, (size_t)c->vocab, (size_t)c->hidden, 1.0f, xn, (size_t)c->hidden, h->w, (size_t)c->hidden,
               0.0f, logits, (size_t)c->vocab);
    free(xn);
    return 0;
}
