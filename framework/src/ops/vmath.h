/* Branch-free float exponential and the functions built on it, written so that
 * GCC can vectorise loops that call them (no libm calls, no branches, only
 * selects). Internal to the framework; every function is static inline.
 *
 * Accuracy: tl_vexpf is within 2 ulp of exp over the whole float range
 * (tests/test_vmath.c measures it on a dense sweep and states the bound); it
 * returns +inf above ln(FLT_MAX), 0 below ln(2^-150), subnormals in between,
 * and NaN for NaN. */
#ifndef THINKLAB_OPS_VMATH_H
#define THINKLAB_OPS_VMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline uint32_t tl_vmath_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static inline float tl_vmath_float(uint32_t u)
{
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* Reduces x = n ln2 + r with |r| <= ln2/2 and returns exp(r). *t gets a float
 * whose low mantissa bits, minus those of TL_VEXP_SHIFTER, give n. ln2 is split into a 9-bit high part (n * hi is exact for |n| < 2^15) and a
 * low part (Cody and Waite). exp(r) is Cephes' degree-7 form 1 + r + r^2 P(r),
 * evaluated with fmaf: one rounding per multiply-add, and the same bits on
 * every target, because fmaf is exact by definition. In the x86-64-v3 and
 * v4 versions of the library's loops it becomes 9 vector FMA instructions.
 * Baseline x86-64 has no FMA, so there it calls libm's fmaf, unvectorised. */
#define TL_VEXP_SHIFTER 0x1.8p23f
static inline float tl_vexp_reduced(float x, float *t)
{
    /* Adding 1.5 * 2^23 rounds x / ln2 to the nearest integer n, which then
     * sits in the low mantissa bits of t. */
    *t = fmaf(x, 1.44269504088896341f, TL_VEXP_SHIFTER);
    float n = *t - TL_VEXP_SHIFTER;
    float r = fmaf(n, -0.693359375f, x);
    r = fmaf(n, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f);
    p = fmaf(p, r, 8.3334519073e-3f);
    p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f);
    p = fmaf(p, r, 5.0000001201e-1f);
    return fmaf(p, r * r, r) + 1.0f;
}

/* Returns exp(x) as p * 2^n1 * 2^n2 with n1 + n2 = n, both halves normal powers of
 * two, so results down to the subnormal range and up to overflow come out
 * right without a branch. */
static inline float tl_vexpf(float x)
{
    /* Outside [-104, 89] the result is 0 or inf anyway; clamping keeps n in
     * [-150, 128]. NaN fails both comparisons and passes through. */
    x = x < -104.0f ? -104.0f : x;
    x = x > 89.0f ? 89.0f : x;
    float t;
    float p = tl_vexp_reduced(x, &t);
    /* Unsigned arithmetic: a NaN input gives meaningless bits, not undefined
     * behaviour, and p is NaN anyway. */
    uint32_t ni = tl_vmath_bits(t) - tl_vmath_bits(TL_VEXP_SHIFTER);
    uint32_t n1 = (uint32_t)((int32_t)ni >> 1); /* floor(n / 2), in [-75, 64] */
    uint32_t n2 = ni - n1;                      /* in [-75, 64] */
    float s1 = tl_vmath_float((n1 + 127u) << 23);
    float s2 = tl_vmath_float((n2 + 127u) << 23);
    return p * s1 * s2;
}

/* Returns exp(x) for callers that only add it to 1: the polynomial of tl_vexpf
 * scaled by a single power of two, which saves the split of n and a
 * multiply. Results are right where exp(x) is a normal float below 2^127.5,
 * that is for x in [-87.3, 88.37]. Below -87.3 it returns exp(-87.3), about
 * 1.2e-38, which leaves 1 + exp(x) at 1. From 88.38 up it returns +inf,
 * although exp stays finite up to 88.72. */
static inline float tl_vexpf_normal(float x)
{
    x = x < -87.3f ? -87.3f : x;
    x = x > 89.0f ? 89.0f : x; /* n <= 128, whose scale 2^128 has the bits of inf */
    float t;
    float p = tl_vexp_reduced(x, &t);
    uint32_t ni = tl_vmath_bits(t) - tl_vmath_bits(TL_VEXP_SHIFTER); /* n in [-126, 128] */
    return p * tl_vmath_float((ni + 127u) << 23);
}

/* exp(x) for x <= 0, the shifted scores of a softmax: the bits of tl_vexpf
 * wherever they are not 0, and 0 where exp(x) is below about 2^-126.5 (x
 * below -87.68), where tl_vexpf's result is subnormal. Masked scores are
 * -inf. tl_vexpf takes them through a multiply whose result underflows, and
 * x86 CPUs run that as a slow microcode assist. On the AMD Zen 3 host of
 * framework/bench/BENCHMARKS.md, a loop of this exp over values with one
 * -inf in five took 2.5 times as long as over values without. Here the clamp keeps n in [-127, 0], and the scale
 * 2^-127 has the bits of +0, so no operation works on a subnormal unless
 * the result is one. NaN gives NaN. Not for x > 0. */
static inline float tl_vexpf_nonpos(float x)
{
    x = x < -88.0f ? -88.0f : x;
    float t;
    float p = tl_vexp_reduced(x, &t);
    uint32_t ni = tl_vmath_bits(t) - tl_vmath_bits(TL_VEXP_SHIFTER);
    return p * tl_vmath_float((ni + 127u) << 23);
}

/* 1 / (1 + exp(-x)): 0 for x below -88.37 (exp overflows to inf), 1 for
 * large x, relative error a few ulp everywhere else. */
static inline float tl_vsigmoidf(float x) { return 1.0f / (1.0f + tl_vexpf_normal(-x)); }

/* tanh(x). For |x| < 0.625 Cephes' odd polynomial, which keeps the relative
 * accuracy near 0 that (1 - e) / (1 + e) loses to cancellation; beyond it
 * sign(x) (1 - e) / (1 + e) with e = exp(-2|x|), which is 1 once e underflows. */
static inline float tl_vtanhf(float x)
{
    float z = x * x;
    float small = -5.70498872745e-3f;
    small = small * z + 2.06390887954e-2f;
    small = small * z - 5.37397155531e-2f;
    small = small * z + 1.33314422036e-1f;
    small = small * z - 3.33332819422e-1f;
    small = small * z * x + x;
    float ax = x < 0.0f ? -x : x;
    float e = tl_vexpf(-2.0f * ax);
    float large = (1.0f - e) / (1.0f + e);
    large = x < 0.0f ? -large : large;
    return ax < 0.625f ? small : large;
}

/* ---- short reductions ------------------------------------------------------ */

/* Rows of a few dozen floats (attention scores, norms over C, logits) are
 * reduced in TL_VLANES partial results kept in a local array. Each lane loop
 * is a plain elementwise loop that GCC turns into one vector operation, and
 * the lanes are then folded pairwise. GCC lowers `omp simd reduction` through
 * a per-lane array that it stores and reloads on every iteration and folds in
 * a scalar loop, which on such rows costs more than the arithmetic. The order
 * of the additions is fixed, so results are the same on every run. */
enum { TL_VLANES = 16 }; /* the folds below are written for 16 */

/* Pairwise folds of the TL_VLANES partial results, one loop of constant
 * length per level so that each becomes a vector operation and no level waits
 * on a store of the one before through memory. */
static inline float tl_vlanes_sum(const float *lane)
{
    float a[8], b[4];
    for (int l = 0; l < 8; l++)
        a[l] = lane[l] + lane[l + 8];
    for (int l = 0; l < 4; l++)
        b[l] = a[l] + a[l + 4];
    return (b[0] + b[2]) + (b[1] + b[3]);
}

static inline float tl_vlanes_max(const float *lane)
{
    float a[8], b[4];
    for (int l = 0; l < 8; l++)
        a[l] = lane[l + 8] > lane[l] ? lane[l + 8] : lane[l];
    for (int l = 0; l < 4; l++)
        b[l] = a[l + 4] > a[l] ? a[l + 4] : a[l];
    float c0 = b[2] > b[0] ? b[2] : b[0], c1 = b[3] > b[1] ? b[3] : b[1];
    return c1 > c0 ? c1 : c0;
}

/* sum_j x[j] y[j] for j < n. */
static inline float tl_vdot(const float *x, const float *y, int64_t n)
{
    float lane[TL_VLANES] = {0};
    int64_t j0 = 0;
    for (; j0 + TL_VLANES <= n; j0 += TL_VLANES)
        for (int l = 0; l < TL_VLANES; l++)
            lane[l] += x[j0 + l] * y[j0 + l];
    for (int64_t j = j0; j < n; j++)
        lane[j - j0] += x[j] * y[j];
    return tl_vlanes_sum(lane);
}

/* max_j x[j] for j < n, -inf for n = 0; NaN entries are skipped, because
 * they fail every comparison. */
static inline float tl_vmax(const float *x, int64_t n)
{
    float lane[TL_VLANES];
    for (int l = 0; l < TL_VLANES; l++)
        lane[l] = -INFINITY;
    int64_t j0 = 0;
    for (; j0 + TL_VLANES <= n; j0 += TL_VLANES)
        for (int l = 0; l < TL_VLANES; l++)
            lane[l] = x[j0 + l] > lane[l] ? x[j0 + l] : lane[l];
    for (int64_t j = j0; j < n; j++)
        lane[j - j0] = x[j] > lane[j - j0] ? x[j] : lane[j - j0];
    return tl_vlanes_max(lane);
}

/* sum_j x[j] for j < n. */
static inline float tl_vsum(const float *x, int64_t n)
{
    float lane[TL_VLANES] = {0};
    int64_t j0 = 0;
    for (; j0 + TL_VLANES <= n; j0 += TL_VLANES)
        for (int l = 0; l < TL_VLANES; l++)
            lane[l] += x[j0 + l];
    for (int64_t j = j0; j < n; j++)
        lane[j - j0] += x[j];
    return tl_vlanes_sum(lane);
}

/* Four floats and four doubles as single values: locals of these types stay
 * in vector registers, where a double lane array indexed in the loop is
 * loaded and stored at every step. */
typedef float tl_vmath_f4 __attribute__((vector_size(16)));
typedef double tl_vmath_d4 __attribute__((vector_size(32)));

/* lane[l] += x[j]^2 in double over j < n, element j going to lane j mod
 * TL_VLANES counted from x. Each square of a float is exact in double, so
 * contracting the multiply-add into an FMA changes no bit. Chunks of a long
 * array can be passed one after another; tl_vlanes_sum_f64 folds the lanes. */
static inline void tl_vsumsq_lanes(double *lane, const float *x, int64_t n)
{
    tl_vmath_d4 acc[4];
    memcpy(acc, lane, sizeof acc);
    tl_vmath_d4 a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
    int64_t j0 = 0;
    for (; j0 + TL_VLANES <= n; j0 += TL_VLANES) {
        tl_vmath_f4 f0, f1, f2, f3;
        memcpy(&f0, x + j0, sizeof f0);
        memcpy(&f1, x + j0 + 4, sizeof f1);
        memcpy(&f2, x + j0 + 8, sizeof f2);
        memcpy(&f3, x + j0 + 12, sizeof f3);
        tl_vmath_d4 d0 = __builtin_convertvector(f0, tl_vmath_d4);
        tl_vmath_d4 d1 = __builtin_convertvector(f1, tl_vmath_d4);
        tl_vmath_d4 d2 = __builtin_convertvector(f2, tl_vmath_d4);
        tl_vmath_d4 d3 = __builtin_convertvector(f3, tl_vmath_d4);
        a0 += d0 * d0;
        a1 += d1 * d1;
        a2 += d2 * d2;
        a3 += d3 * d3;
    }
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = a2;
    acc[3] = a3;
    memcpy(lane, acc, sizeof acc);
    for (int64_t j = j0; j < n; j++)
        lane[j - j0] += (double)x[j] * x[j];
}

static inline double tl_vlanes_sum_f64(const double *lane)
{
    double a[8], b[4];
    for (int l = 0; l < 8; l++)
        a[l] = lane[l] + lane[l + 8];
    for (int l = 0; l < 4; l++)
        b[l] = a[l] + a[l + 4];
    return (b[0] + b[2]) + (b[1] + b[3]);
}

#endif
