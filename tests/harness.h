/* A ten-line test harness: each failed check prints file:line and both
 * values, counts the failure, and the test's main returns sv_test_result(). */
#ifndef HARNESS_H
#define HARNESS_H

#include <stdio.h>
#include <string.h>

/* A test of several files (test_daemon and tests/daemon_harness.c) defines
 * SV_HARNESS_SHARED and the counters once, so every file's checks count. */
#ifdef SV_HARNESS_SHARED
extern int sv_test_failures, sv_test_checks;
#else
static int sv_test_failures;
static int sv_test_checks;
#endif

#define SV_CHECK(cond) do { sv_test_checks++; if (!(cond)) { sv_test_failures++; \
    fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); } } while (0)
#define SV_ASSERT_EQ(a, b) do { long long sv_a_ = (long long)(a), sv_b_ = (long long)(b); \
    sv_test_checks++; if (sv_a_ != sv_b_) { sv_test_failures++; \
    fprintf(stderr, "%s:%d: %s == %s failed: %lld != %lld\n", __FILE__, __LINE__, #a, #b, sv_a_, sv_b_); } } while (0)
#define SV_ASSERT_STR_CONTAINS(hay, needle) do { const char *sv_h_ = (hay), *sv_n_ = (needle); \
    sv_test_checks++; if (!sv_h_ || !strstr(sv_h_, sv_n_)) { sv_test_failures++; \
    fprintf(stderr, "%s:%d: '%s' does not contain '%s'\n", __FILE__, __LINE__, sv_h_ ? sv_h_ : "(null)", sv_n_); } } while (0)
#define SV_ASSERT_NEAR_REL(got, want, tol) do { double sv_g_ = (got), sv_w_ = (want); \
    double sv_d_ = sv_g_ - sv_w_; if (sv_d_ < 0) sv_d_ = -sv_d_; double sv_s_ = sv_w_ < 0 ? -sv_w_ : sv_w_; \
    sv_test_checks++; if (!(sv_d_ <= (tol) * (sv_s_ > 0 ? sv_s_ : 1))) { sv_test_failures++; \
    fprintf(stderr, "%s:%d: %s = %.10g, want %.10g (rel tol %g)\n", __FILE__, __LINE__, #got, sv_g_, sv_w_, (double)(tol)); } } while (0)

static inline int sv_test_result(const char *name) {
    printf("%s: %d checks, %d failed\n", name, sv_test_checks, sv_test_failures);
    return sv_test_failures ? 1 : 0;
}

#endif
