/* Gradient checks and forward values for silu, gelu (both forms), sigmoid,
 * tanh, swiglu and softmax. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"

static tl_tensor *fwd_silu(tl_ctx *ctx, tl_tensor **in, void *u) { return tl_silu(ctx, in[0]); }
static tl_tensor *fwd_gelu_tanh(tl_ctx *ctx, tl_tensor **in, void *u) { return tl_gelu(ctx, in[0], true); }
static tl_tensor *fwd_gelu_erf(tl_ctx *ctx, tl_tensor **in, void *u) { return tl_gelu(ctx, in[0], false); }
static tl_tensor *fwd_sigmoid(tl_ctx *ctx, tl_tensor **in, void *u) { return tl_sigmoid(ctx, in[0]); }
static tl_tensor *fwd_tanh(tl_ctx *ctx, tl_tensor **in, void *u) { return tl_tanh(ctx, in[0]); }
static tl_tensor *fwd_swiglu(tl_ctx *ctx, tl_tensor **in, void *u) { return tl_swiglu(ctx, in[0], in[1]); }
static tl_tensor *fwd_softmax(tl_ctx *ctx, tl_tensor **in, void *u) { return tl_softmax(ctx, in[0]); }

/* f(x) + x*x, with the square recorded after f (separate statements, since C
 * leaves the order of argument evaluation open): backward reaches f with x's
 * gradient already non-zero, so a backward that overwrote would fail. */
static tl_tensor *fwd_gelu_plus_square(tl_ctx *ctx, tl_tensor **in, void *u)
{
    tl_tensor *y = tl_gelu(ctx, in[0], false);
    tl_tensor *sq = tl_mul(ctx, in[0], in[0]);
    return tl_add(ctx, y, sq);
}
static tl_tensor *fwd_softmax_plus_square(tl_ctx *ctx, tl_tensor **in, void *u)
{
    tl_tensor *y = tl_softmax(ctx, in[0]);
    tl_tensor *sq = tl_mul(ctx, in[0], in[0]);
    return tl_add(ctx, y, sq);
}
static tl_tensor *fwd_swiglu_plus_squares(tl_ctx *ctx, tl_tensor **in, void *u)
{
    tl_tensor *y = tl_swiglu(ctx, in[0], in[1]);
    tl_tensor *sa = tl_mul(ctx, in[0], in[0]);
    tl_tensor *sb = tl_mul(ctx, in[1], in[1]);
    return tl_add(ctx, tl_add(ctx, y, sa), sb);
}

/* Smooth elementwise functions: with h = 1e-2 the central difference has an
 * O(h^2) truncation error. The largest error measured here is 2.2e-4, in the
 * swiglu accumulation check whose larger outputs carry more float32 rounding;
 * the others stay at most 4e-5. */
static const gc_options TOL = {.step = 1e-2, .atol = 1e-3, .rtol = 1e-2};

/* Double references. */
static double ref_sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }
static double ref_silu(double x) { return x * ref_sigmoid(x); }
static double ref_gelu_tanh(double x)
{
    return 0.5 * x * (1.0 + tanh(0.7978845608028654 /* sqrt(2/pi) */ * (x + 0.044715 * x * x * x)));
}
static double ref_gelu_erf(double x) { return 0.5 * x * (1.0 + erf(x / sqrt(2.0))); }

typedef double (*ref_fn)(double);

/* Largest |out - ref(x)| / (1 + |ref(x)|). */
static double max_rel_err(const tl_tensor *out, const float *x, int64_t n, ref_fn ref)
{
    double worst = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double want = ref(x[i]);
        worst = fmax(worst, fabs(tl_f32(out)[i] - want) / (1.0 + fabs(want)));
    }
    return worst;
}

int main(void)
{
    tl_rng rng;
    tl_rng_seed(&rng, 11);
    enum { B = 2, T = 3, C = 33, N = 7, C2 = 13 };
    static float x[B * T * C], y[B * T * C];
    /* Scale 2 reaches the tails of the sigmoid and GELU curves. */
    gc_randn(&rng, x, B * T * C, 2.0f);
    gc_randn(&rng, y, B * T * C, 1.0f);

    gc_input one2[1] = {{TL_F32, 2, {N, C2}, x, true}};
    gc_input one3[1] = {{TL_F32, 3, {B, T, C}, x, true}};
    gc_check("silu (7, 13)", fwd_silu, NULL, one2, 1, TOL);
    gc_check("gelu tanh form (2, 3, 33)", fwd_gelu_tanh, NULL, one3, 1, TOL);
    gc_check("gelu erf form (2, 3, 33)", fwd_gelu_erf, NULL, one3, 1, TOL);
    gc_check("sigmoid (7, 13)", fwd_sigmoid, NULL, one2, 1, TOL);
    gc_check("tanh (7, 13)", fwd_tanh, NULL, one2, 1, TOL);
    gc_input two[2] = {{TL_F32, 3, {B, T, C}, x, true}, {TL_F32, 3, {B, T, C}, y, true}};
    gc_check("swiglu (2, 3, 33)", fwd_swiglu, NULL, two, 2, TOL);
    gc_check("softmax (7, 13)", fwd_softmax, NULL, one2, 1, TOL);
    gc_check("softmax (2, 3, 33)", fwd_softmax, NULL, one3, 1, TOL);
    gc_check("gelu accumulates", fwd_gelu_plus_square, NULL, one2, 1, TOL);
    gc_check("softmax accumulates", fwd_softmax_plus_square, NULL, one2, 1, TOL);
    gc_check("swiglu accumulates", fwd_swiglu_plus_squares, NULL, two, 2, TOL);

    /* Softmax rows shifted by +50: the gradient is unchanged and exp would
     * overflow without the max subtraction. */
    static float shifted[N * C2];
    for (int i = 0; i < N * C2; i++)
        shifted[i] = x[i] + 50.0f;
    gc_input big[1] = {{TL_F32, 2, {N, C2}, shifted, true}};
    gc_check("softmax shifted by +50", fwd_softmax, NULL, big, 1, TOL);

    tl_ctx *ctx = tl_ctx_new(0);
    int64_t n = B * T * C;
    tl_tensor *xt = tl_wrap(ctx, TL_F32, x, 3, (int64_t[]){B, T, C});
    tl_tensor *yt = tl_wrap(ctx, TL_F32, y, 3, (int64_t[]){B, T, C});

    /* Forward values against double references; float32 libm calls are
     * within a few ulps, so 1e-6 relative to 1 + |value|. */
    {
        struct { const char *name; tl_tensor *out; ref_fn ref; } cases[] = {
            {"silu", tl_silu(ctx, xt), ref_silu},
            {"gelu tanh", tl_gelu(ctx, xt, true), ref_gelu_tanh},
            {"gelu erf", tl_gelu(ctx, xt, false), ref_gelu_erf},
            {"sigmoid", tl_sigmoid(ctx, xt), ref_sigmoid},
            {"tanh", tl_tanh(ctx, xt), tanh},
        };
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
            CHECK_MSG(cases[c].out != NULL, "%s: %s", cases[c].name, tl_errmsg());
            if (!cases[c].out)
                continue;
            double err = max_rel_err(cases[c].out, x, n, cases[c].ref);
            CHECK_MSG(err < 1e-6, "%s forward error %.3g", cases[c].name, err);
        }

        tl_tensor *s = tl_swiglu(ctx, xt, yt);
        double worst = 0.0;
        for (int64_t i = 0; s && i < n; i++) {
            double want = ref_silu(x[i]) * y[i];
            worst = fmax(worst, fabs(tl_f32(s)[i] - want) / (1.0 + fabs(want)));
        }
        CHECK(s != NULL);
        CHECK_MSG(worst < 1e-6, "swiglu forward error %.3g", worst);
    }

    /* Hand-computed values: silu(0) = 0, gelu(0) = 0, sigmoid(0) = 0.5,
     * sigmoid(+-100) is 1 and 0 without NaN, gelu(1) = 0.8413447 (erf form)
     * and 0.8411920 (tanh form). */
    {
        float p[4] = {0.0f, 1.0f, 100.0f, -100.0f};
        tl_tensor *pt = tl_wrap(ctx, TL_F32, p, 1, (int64_t[]){4});
        tl_tensor *s = tl_sigmoid(ctx, pt);
        CHECK(s && tl_f32(s)[0] == 0.5f && tl_f32(s)[2] == 1.0f && tl_f32(s)[3] >= 0.0f &&
              tl_f32(s)[3] < 1e-40f);
        tl_tensor *si = tl_silu(ctx, pt);
        CHECK(si && tl_f32(si)[0] == 0.0f && tl_f32(si)[2] == 100.0f && !isnan(tl_f32(si)[3]));
        tl_tensor *ge = tl_gelu(ctx, pt, false), *gt = tl_gelu(ctx, pt, true);
        CHECK(ge && gt && tl_f32(ge)[0] == 0.0f && tl_f32(gt)[0] == 0.0f);
        CHECK(ge && fabsf(tl_f32(ge)[1] - 0.8413447f) < 1e-6f);
        CHECK(gt && fabsf(tl_f32(gt)[1] - 0.8411920f) < 1e-6f);
    }

    /* Softmax: rows sum to 1, logits (0, ln 2, ln 3) give (1/6, 2/6, 3/6), and
     * logits near 1000 stay finite. */
    {
        tl_tensor *s = tl_softmax(ctx, xt);
        bool sums = s != NULL;
        for (int64_t i = 0; s && i < B * T; i++) {
            double sum = 0.0;
            for (int j = 0; j < C; j++)
                sum += tl_f32(s)[i * C + j];
            sums = sums && fabs(sum - 1.0) < 1e-6;
        }
        CHECK(sums);
        float p[6] = {0.0f, logf(2.0f), logf(3.0f), 1000.0f, 1000.0f, 999.0f};
        tl_tensor *q = tl_softmax(ctx, tl_wrap(ctx, TL_F32, p, 2, (int64_t[]){2, 3}));
        CHECK(q != NULL);
        if (q) {
            float *v = tl_f32(q);
            CHECK(fabsf(v[0] - 1.0f / 6) < 1e-6f && fabsf(v[1] - 2.0f / 6) < 1e-6f &&
                  fabsf(v[2] - 3.0f / 6) < 1e-6f);
            /* (e, e, 1) / (2e + 1) */
            double e = exp(1.0);
            CHECK(fabs(v[3] - e / (2 * e + 1)) < 1e-6 && fabs(v[5] - 1 / (2 * e + 1)) < 1e-6);
        }
    }

    /* Both GELU forms differ by less than 1e-3 (the tanh form's known max
     * deviation is about 3e-4 near |x| = 2). */
    {
        tl_tensor *a = tl_gelu(ctx, xt, true), *b = tl_gelu(ctx, xt, false);
        double worst = 0.0;
        for (int64_t i = 0; a && b && i < n; i++)
            worst = fmax(worst, fabs(tl_f32(a)[i] - tl_f32(b)[i]));
        CHECK(a && b);
        CHECK_MSG(worst < 1e-3 && worst > 0.0, "gelu forms differ by %.3g", worst);
    }

    /* SiLU and tanh-form GELU save their derivative when the input needs a
     * gradient: the forward gives the same bits with and without it, and the
     * backward gives the analytic derivative. */
    {
        tl_tensor *xg = tl_wrap(ctx, TL_F32, x, 3, (int64_t[]){B, T, C});
        tl_set_requires_grad(xg, true);
        tl_tensor *plain[2] = {tl_silu(ctx, xt), tl_gelu(ctx, xt, true)};
        tl_tensor *saved[2] = {tl_silu(ctx, xg), tl_gelu(ctx, xg, true)};
        for (int k = 0; k < 2; k++) {
            CHECK(saved[k] != NULL);
            CHECK(plain[k] != NULL);
            if (!saved[k] || !plain[k])
                continue;
            CHECK(saved[k]->node != NULL);
            CHECK(plain[k]->node == NULL);
            CHECK_MSG(memcmp(tl_f32(plain[k]), tl_f32(saved[k]), (size_t)n * 4) == 0,
                      "%s: forward bits differ with a gradient", k ? "gelu tanh" : "silu");
        }
        /* d/dx of x sigmoid(x) and of x sigmoid(2u), in double. */
        tl_tensor *loss = tl_add(ctx, tl_sum(ctx, saved[0]), tl_sum(ctx, saved[1]));
        CHECK(loss != NULL);
        CHECK(tl_backward(ctx, loss) == TL_OK);
        double worst = 0.0;
        for (int64_t i = 0; xg->grad && i < n; i++) {
            double v = x[i], s1 = ref_sigmoid(v);
            double u = 0.7978845608028654 * (v + 0.044715 * v * v * v);
            double s2 = ref_sigmoid(2.0 * u);
            double du = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * v * v);
            double want = s1 * (1.0 + v * (1.0 - s1)) + s2 + 2.0 * v * s2 * (1.0 - s2) * du;
            worst = fmax(worst, fabs(xg->grad[i] - want) / (1.0 + fabs(want)));
        }
        CHECK(xg->grad != NULL);
        CHECK_MSG(worst < 1e-6, "saved derivatives differ from the reference by %.3g", worst);
        tl_ctx_reset(ctx);
        xt = tl_wrap(ctx, TL_F32, x, 3, (int64_t[]){B, T, C});
        yt = tl_wrap(ctx, TL_F32, y, 3, (int64_t[]){B, T, C});
    }

    /* Errors. */
    {
        tl_tensor *short_y = tl_wrap(ctx, TL_F32, y, 3, (int64_t[]){B, T, C - 1});
        CHECK(tl_swiglu(ctx, xt, short_y) == NULL);
        CHECK(tl_lasterr() == TL_ESHAPE);
        CHECK_MSG(strstr(tl_errmsg(), "(2, 3, 32) f32") != NULL, "%s", tl_errmsg());
        tl_tensor *ids = tl_wrap(ctx, TL_I32, y, 1, (int64_t[]){4});
        CHECK(tl_softmax(ctx, ids) == NULL);
        CHECK(tl_lasterr() == TL_EINVAL);
        CHECK_MSG(strstr(tl_errmsg(), "softmax: x must be float32") != NULL, "%s", tl_errmsg());
        tl_clearerr();
        CHECK(tl_gelu(ctx, NULL, true) == NULL);
        CHECK(tl_lasterr() == TL_OK);
    }

    /* FLOP counts of the forward and backward of a recorded activation. */
    {
        tl_ctx_reset(ctx);
        tl_ctx_reset_flops(ctx);
        tl_tensor *v = tl_new(ctx, TL_F32, 1, (int64_t[]){10});
        memcpy(v->data, x, sizeof(float) * 10);
        tl_set_requires_grad(v, true);
        tl_tensor *l = tl_sum(ctx, tl_tanh(ctx, v));
        double fwd = tl_ctx_flops_forward(ctx);
        CHECK(tl_backward(ctx, l) == TL_OK);
        /* tanh: 1 per element forward, 3 backward; the sum adds 10 each way. */
        CHECK_MSG(fwd == 20.0, "forward flops %g", fwd);
        CHECK_MSG(tl_ctx_flops_backward(ctx) == 40.0, "backward flops %g", tl_ctx_flops_backward(ctx));
    }

    tl_ctx_free(ctx);
    return gc_finish("ops activation");
}
