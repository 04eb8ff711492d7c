/* fuzz_st_check: checks shared by fuzz_st and fuzz_st_index on an opened
 * st_model: every readable tensor converts bit-exactly (F16 against an
 * independent ldexp reference), unsupported dtypes give -ENOTSUP, a wrong
 * element count or shape -EINVAL, the f32 -> f16/bf16 conversions invert
 * the reads for non-NaN values, and every F32 value read converts to f16 and
 * bf16 as an independent round-to-nearest-even reference does (the writer's
 * conversions, st_f32_to_f16 / st_f32_to_bf16). */
#ifndef FUZZ_ST_CHECK_H
#define FUZZ_ST_CHECK_H

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "st.h"

/* Independent half -> float: every half is exactly a float. */
static float ref_f16(uint16_t h) {
    int sign = h >> 15, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    double v;
    if (exp == 0)
        v = ldexp(mant, -24);
    else if (exp == 31)
        v = mant ? NAN : INFINITY;
    else
        v = ldexp(mant + 1024, exp - 25);
    return (float)(sign ? -v : v);
}

static uint32_t fbits(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    return x;
}

/* Independent f32 -> half/bf16 rounding (to nearest even, through double):
 * the value the writer's conversion must produce, as a float. */
static float ref_round(float x, int mant_bits, int min_exp, double maxval) {
    if (x == 0)
        return x;
    int e;
    frexp(fabs(x), &e);
    e -= 1;  /* |x| in [2^e, 2^(e+1)) */
    if (e < min_exp)
        e = min_exp;  /* subnormal range: fixed quantum */
    double q = ldexp(1.0, e - mant_bits);
    double r = nearbyint(fabs(x) / q) * q;
    if (r > maxval)
        r = INFINITY;
    return (float)(x < 0 ? -r : r);
}

/* The writer's conversions of one f32 value, against ref_round. */
static void check_to_half(float x) {
    float h = st_f16_to_f32(st_f32_to_f16(x)), b = st_bf16_to_f32(st_f32_to_bf16(x));
    if (isnan(x)) {
        FUZZ_CHECK(isnan(h) && isnan(b), "NaN 0x%08x not kept NaN", fbits(x));
        return;
    }
    float wh = ref_round(x, 10, -14, 65504.0), wb = ref_round(x, 7, -126, ldexp(255.0, 120));
    FUZZ_CHECK(fbits(h) == fbits(wh), "f32 0x%08x (%a) -> f16 %a, want %a", fbits(x), x, h, wh);
    FUZZ_CHECK(fbits(b) == fbits(wb), "f32 0x%08x (%a) -> bf16 %a, want %a", fbits(x), x, b, wb);
}

static void check_values(const struct st_tensor *t, const float *out, const uint8_t *raw) {
    for (uint64_t i = 0; i < t->nelem; i++) {
        switch (t->dtype) {
        case ST_F32: {
            uint32_t want;
            memcpy(&want, raw + 4 * i, 4);
            FUZZ_CHECK(fbits(out[i]) == want, "tensor '%s' F32 element %llu", t->name, (unsigned long long)i);
            check_to_half(out[i]);
            break;
        }
        case ST_F16: {
            uint16_t h = (uint16_t)(raw[2 * i] | raw[2 * i + 1] << 8);
            float want = ref_f16(h);
            if (isnan(want)) {
                FUZZ_CHECK(isnan(out[i]), "tensor '%s' F16 element %llu: NaN 0x%04x lost", t->name,
                           (unsigned long long)i, h);
                FUZZ_CHECK(st_f32_to_f16(out[i]) >> 15 == h >> 15, "F16 NaN 0x%04x sign", h);
            } else {
                FUZZ_CHECK(fbits(out[i]) == fbits(want), "tensor '%s' F16 element %llu: 0x%04x -> %a, want %a",
                           t->name, (unsigned long long)i, h, out[i], want);
                FUZZ_CHECK(st_f32_to_f16(out[i]) == h, "F16 0x%04x does not round-trip", h);
            }
            break;
        }
        case ST_BF16: {
            uint16_t h = (uint16_t)(raw[2 * i] | raw[2 * i + 1] << 8);
            FUZZ_CHECK(fbits(out[i]) == (uint32_t)h << 16, "tensor '%s' BF16 element %llu", t->name,
                       (unsigned long long)i);
            if (!isnan(out[i]))
                FUZZ_CHECK(st_f32_to_bf16(out[i]) == h, "BF16 0x%04x does not round-trip", h);
            break;
        }
        default:
            break;
        }
    }
}

static void check_read(const struct st_model *m, const struct st_tensor *t, const char *lookup) {
    struct sv_err err = {0};
    size_t n = (size_t)t->nelem;
    float *out = malloc((n + 1) * sizeof *out);
    FUZZ_CHECK(out != NULL, "out of memory for %zu floats", n + 1);
    int r = st_read_f32(m, lookup, out, n, &err);
    bool supported = t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16;
    if (supported) {
        FUZZ_CHECK(r == 0, "st_read_f32('%s') failed: %s", lookup, err.msg);
        check_values(t, out, t->data);
    } else {
        FUZZ_CHECK(r == -ENOTSUP, "st_read_f32('%s') of dtype %s returned %d", lookup, st_dtype_name(t->dtype), r);
    }
    r = st_read_f32(m, lookup, out, n + 1, &err);
    FUZZ_CHECK(r == -EINVAL, "st_read_f32('%s') with n + 1 returned %d", lookup, r);
    if (t->ndim == 1 || t->ndim == 2) {
        int64_t d1 = t->ndim == 2 ? t->shape[1] : -1;
        r = st_read_f32_shape(m, lookup, t->shape[0], d1, out, &err);
        FUZZ_CHECK(r == (supported ? 0 : -ENOTSUP), "st_read_f32_shape('%s') returned %d: %s", lookup, r, err.msg);
        r = st_read_f32_shape(m, lookup, t->shape[0] + 1, d1, out, &err);
        FUZZ_CHECK(r == -EINVAL, "st_read_f32_shape('%s') with a wrong shape returned %d", lookup, r);
    }
    st_release(m, lookup);
    free(out);
}

#endif
