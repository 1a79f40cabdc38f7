/* Accuracy of the branch-free exp, sigmoid and tanh in src/ops/vmath.h over a
 * dense sweep of float inputs, their special values, and agreement between
 * the inline functions called here and the vectorised loops of the ops. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "gradcheck.h"
#include "ops/vmath.h"

/* Spacing of floats at the magnitude of v (v rounded to float), down to the
 * subnormal spacing 2^-149. */
static double ulp_at(double v)
{
    float f = fabsf((float)v);
    if (f < FLT_MIN)
        return 0x1p-149;
    int e;
    frexpf(f, &e);
    return ldexp(1.0, e - 24);
}

/* The next input of the sweep: 61 float steps up from x, so the sweep visits
 * one float in 61 of every binade, subnormal inputs included. */
static float sweep_next(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if (x == 0.0f)
        return FLT_TRUE_MIN;
    if (x < 0.0f)
        u = u > 0x80000000u + 61u ? u - 61u : 0u; /* towards zero, then +0 */
    else
        u += 61u;
    memcpy(&x, &u, sizeof x);
    return x;
}

typedef float (*approx_fn)(float);
typedef double (*ref_fn)(double);

static double ref_sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

/* Largest error in ulp of the reference over [lo, hi], skipping references
 * below skip_below (whose float results are 0 or subnormal by design). */
static double max_ulp_error(approx_fn f, ref_fn ref, float lo, float hi, double skip_below,
                            float *where)
{
    double worst = 0.0;
    for (float x = lo; x <= hi; x = sweep_next(x)) {
        double want = ref((double)x);
        if (fabs(want) < skip_below)
            continue;
        double err = fabs((double)f(x) - want) / ulp_at(want);
        if (!(err <= worst)) { /* also catches NaN */
            worst = err;
            *where = x;
        }
    }
    return worst;
}

int main(void)
{
    float where = 0.0f;

    /* exp over every input whose result is finite, subnormal results
     * included: measured 0.96 ulp at most on this sweep (Cody-Waite
     * reduction with a 9-bit high part of ln 2 and Cephes' polynomial).
     * Tolerance 2 ulp, the accuracy the kernels are written for. */
    double e = max_ulp_error(tl_vexpf, exp, -103.9f, 88.72f, 0.0, &where);
    CHECK_MSG(e < 2.0, "exp: %.3g ulp at x = %a", e, (double)where);

    /* The exp behind sigmoid, over the inputs it is written for, those whose
     * exp is a normal float below 2^127.5: measured 1.01 ulp at most over
     * every float of that range. Tolerance 2 ulp, as for tl_vexpf. */
    e = max_ulp_error(tl_vexpf_normal, exp, -87.3f, 88.37f, 0.0, &where);
    CHECK_MSG(e < 2.0, "exp (normal range): %.3g ulp at x = %a", e, (double)where);

    /* The softmax exp for x <= 0: +0 below one cutoff, near -87.68 where exp
     * falls below 2^-126.5, and the bits of tl_vexpf from there up. */
    {
        int64_t bad = 0;
        float bad_x = 0.0f, last_zero = -INFINITY, first_value = INFINITY;
        const float zero = 0.0f;
        for (float x = -120.0f; x <= 0.0f; x = sweep_next(x)) {
            float got = tl_vexpf_nonpos(x), want = tl_vexpf(x);
            if (memcmp(&got, &zero, sizeof got) == 0) {
                last_zero = x;
            } else {
                if (first_value == INFINITY)
                    first_value = x;
                if (memcmp(&got, &want, sizeof got) != 0) {
                    bad++;
                    bad_x = x;
                }
            }
        }
        CHECK_MSG(bad == 0, "exp for x <= 0: %lld results differ from tl_vexpf, the last at "
                            "x = %a", (long long)bad, (double)bad_x);
        CHECK_MSG(last_zero < first_value && last_zero >= -87.69f && first_value <= -87.67f,
                  "exp for x <= 0: the last 0 at x = %a, the first other result at %a; "
                  "expected one cutoff near -87.68", (double)last_zero, (double)first_value);
    }

    /* sigmoid = 1 / (1 + exp(-x)) adds the rounding of the sum and of the
     * division to that of exp: measured 2.5 ulp. Tolerance 4 ulp. Results
     * below FLT_MIN are skipped. */
    e = max_ulp_error(tl_vsigmoidf, ref_sigmoid, -100.0f, 30.0f, FLT_MIN, &where);
    CHECK_MSG(e < 4.0, "sigmoid: %.3g ulp at x = %a", e, (double)where);

    /* tanh: odd polynomial below 0.625, exp-based quotient above: measured
     * 1.5 ulp. Tolerance 3 ulp. Beyond |x| = 20, tanh rounds to +-1. */
    e = max_ulp_error(tl_vtanhf, tanh, -20.0f, 20.0f, FLT_MIN, &where);
    CHECK_MSG(e < 3.0, "tanh: %.3g ulp at x = %a", e, (double)where);

    /* Special values: exact results where exp is exact, overflow to +inf
     * above ln(FLT_MAX) = 88.7228, 0 below ln(2^-150) = -103.97, NaN in NaN
     * out. */
    CHECK(tl_vexpf(0.0f) == 1.0f);
    CHECK(tl_vexpf(-0.0f) == 1.0f);
    CHECK(tl_vexpf(INFINITY) == INFINITY);
    CHECK(tl_vexpf(-INFINITY) == 0.0f);
    CHECK(tl_vexpf(1e30f) == INFINITY);
    CHECK(tl_vexpf(-1e30f) == 0.0f);
    CHECK(isinf(tl_vexpf(88.7229f)));
    CHECK(isfinite(tl_vexpf(88.7228f)));
    CHECK(tl_vexpf(-104.0f) == 0.0f);
    CHECK(tl_vexpf(-103.0f) > 0.0f);
    CHECK(isnan(tl_vexpf(NAN)));
    /* Masked scores are -inf and give exactly 0. exp(-87.3) is a normal
     * float; exp(-87.7) is below 2^-126.5 and comes out as 0. */
    CHECK(tl_vexpf_nonpos(0.0f) == 1.0f);
    CHECK(tl_vexpf_nonpos(-0.0f) == 1.0f);
    CHECK(tl_vexpf_nonpos(-INFINITY) == 0.0f);
    CHECK(tl_vexpf_nonpos(-1e30f) == 0.0f);
    CHECK(tl_vexpf_nonpos(-87.3f) >= FLT_MIN);
    CHECK(tl_vexpf_nonpos(-87.7f) == 0.0f);
    CHECK(isnan(tl_vexpf_nonpos(NAN)));
    /* Outside that range: the smallest normal result below, inf above. */
    CHECK(tl_vexpf_normal(-1e30f) == tl_vexpf_normal(-87.3f));
    CHECK(tl_vexpf_normal(-87.3f) >= FLT_MIN);
    CHECK(tl_vexpf_normal(-INFINITY) == tl_vexpf_normal(-87.3f));
    CHECK(isinf(tl_vexpf_normal(88.38f)));
    CHECK(isinf(tl_vexpf_normal(INFINITY)));
    CHECK(isfinite(tl_vexpf_normal(88.37f)));
    CHECK(isnan(tl_vexpf_normal(NAN)));
    CHECK(isnan(tl_vtanhf(NAN)));
    CHECK(isnan(tl_vsigmoidf(NAN)));
    CHECK(tl_vsigmoidf(-200.0f) == 0.0f);
    CHECK(tl_vsigmoidf(200.0f) == 1.0f);
    CHECK(tl_vtanhf(-50.0f) == -1.0f);
    CHECK(tl_vtanhf(50.0f) == 1.0f);
    CHECK(tl_vtanhf(0.0f) == 0.0f);
    /* tanh keeps relative accuracy near 0, where 1 - exp(-2x) would cancel. */
    CHECK_MSG(fabs(tl_vtanhf(1e-5f) - tanh((double)1e-5f)) < ulp_at(1e-5),
              "tanh(1e-5) = %a", (double)tl_vtanhf(1e-5f));

    /* The library compiles these functions into vectorised loops; the
     * operations and their order are the same, so tl_sigmoid and tl_tanh must
     * give the bits of the inline functions called here one by one. 100000
     * elements is over the ops' parallel threshold. */
    {
        enum { N = 100000 };
        static float x[N];
        tl_rng rng;
        tl_rng_seed(&rng, 5);
        gc_randn(&rng, x, N, 30.0f);
        tl_ctx *ctx = tl_ctx_new(0);
        tl_tensor *xt = tl_wrap(ctx, TL_F32, x, 1, (int64_t[]){N});
        tl_tensor *s = tl_sigmoid(ctx, xt), *t = tl_tanh(ctx, xt);
        CHECK(s && t);
        int64_t differ = 0;
        for (int64_t i = 0; s && t && i < N; i++) {
            float ws = tl_vsigmoidf(x[i]), wt = tl_vtanhf(x[i]);
            differ += memcmp(&ws, tl_f32(s) + i, sizeof ws) != 0;
            differ += memcmp(&wt, tl_f32(t) + i, sizeof wt) != 0;
        }
        CHECK_MSG(differ == 0, "%lld results of the ops differ from the scalar functions",
                  (long long)differ);
        tl_ctx_free(ctx);
    }
    /* tl_softmax exponentiates with tl_vexpf_nonpos: scores 88 to 100
     * below their row's maximum come out as exactly 0 (tl_vexpf would give
     * subnormals), and the others within 1 ulp of the scalar function's
     * exp times the row's 1 / sum. */
    {
        enum { ROWS = 600, COLS = 64 };
        static float x[ROWS * COLS];
        tl_rng rng;
        tl_rng_seed(&rng, 6);
        gc_randn(&rng, x, ROWS * COLS, 1.0f);
        for (int64_t i = 0; i < ROWS; i++) {
            x[i * COLS] = 10.0f; /* the maximum: the random entries stay far below it */
            for (int64_t j = 1; j < COLS; j += 4)
                x[i * COLS + j] = 10.0f - 88.0f - (float)(j % 13);
        }
        tl_ctx *ctx = tl_ctx_new(0);
        tl_tensor *xt = tl_wrap(ctx, TL_F32, x, 2, (int64_t[]){ROWS, COLS});
        tl_tensor *y = tl_softmax(ctx, xt);
        CHECK(y);
        int64_t not_zero = 0, far = 0;
        for (int64_t i = 0; y && i < ROWS; i++) {
            const float *xi = x + i * COLS, *yi = tl_f32(y) + i * COLS;
            float max = xi[0];
            for (int64_t j = 1; j < COLS; j++)
                max = xi[j] > max ? xi[j] : max;
            double sum = 0.0;
            for (int64_t j = 0; j < COLS; j++)
                sum += tl_vexpf_nonpos(xi[j] - max);
            float inv = (float)(1.0 / sum);
            for (int64_t j = 0; j < COLS; j++) {
                if (j % 4 == 1) {
                    not_zero += yi[j] != 0.0f;
                    continue;
                }
                double want = (double)(tl_vexpf_nonpos(xi[j] - max) * inv);
                far += fabs((double)yi[j] - want) > ulp_at(want);
            }
        }
        CHECK_MSG(not_zero == 0, "softmax: %lld scores 88 or more below the maximum gave "
                                 "nonzero probabilities", (long long)not_zero);
        CHECK_MSG(far == 0, "softmax: %lld probabilities more than 1 ulp from the scalar exp",
                  (long long)far);
        tl_ctx_free(ctx);
    }
    return gc_finish("vmath");
}
