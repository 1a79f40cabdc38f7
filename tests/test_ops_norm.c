/* Gradient checks, forward values and argument errors for rmsnorm and
 * layernorm (with and without bias). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"

static const float EPS = 1e-5f;

static tl_tensor *fwd_rmsnorm(tl_ctx *ctx, tl_tensor **in, void *u) { return tl_rmsnorm(ctx, in[0], in[1], EPS); }
static tl_tensor *fwd_layernorm(tl_ctx *ctx, tl_tensor **in, void *u)
{
    return tl_layernorm(ctx, in[0], in[1], in[2], EPS);
}
static tl_tensor *fwd_layernorm_nobias(tl_ctx *ctx, tl_tensor **in, void *u)
{
    return tl_layernorm(ctx, in[0], in[1], NULL, EPS);
}

/* norm(x) + x*x + g*g (+ b*b), with the squares recorded after the norm:
 * backward reaches the norm with the gradients of x, g and b already
 * non-zero, so a backward that overwrote them would fail. */
static tl_tensor *fwd_layernorm_accumulate(tl_ctx *ctx, tl_tensor **in, void *u)
{
    tl_tensor *y = tl_layernorm(ctx, in[0], in[1], in[2], EPS);
    tl_tensor *xx = tl_mul(ctx, in[0], in[0]);
    tl_tensor *gg = tl_mul(ctx, in[1], in[1]);
    tl_tensor *bb = tl_mul(ctx, in[2], in[2]);
    return tl_add(ctx, tl_add(ctx, tl_add(ctx, y, xx), gg), bb);
}
static tl_tensor *fwd_rmsnorm_accumulate(tl_ctx *ctx, tl_tensor **in, void *u)
{
    tl_tensor *y = tl_rmsnorm(ctx, in[0], in[1], EPS);
    tl_tensor *xx = tl_mul(ctx, in[0], in[0]);
    tl_tensor *gg = tl_mul(ctx, in[1], in[1]);
    return tl_add(ctx, tl_add(ctx, y, xx), gg);
}

/* Normalisation is non-linear in x, so the central difference with h = 1e-2
 * carries an O(h^2) truncation error on top of float32 rounding. The largest
 * error measured on these checks is 8e-5, so this bound leaves a margin above
 * 10 while a wrong term in a gradient misses it by orders of magnitude. */
static const gc_options TOL = {.step = 1e-2, .atol = 1e-3, .rtol = 1e-2};

/* Double reference of one row: LayerNorm when layer, else RMSNorm. */
static void ref_norm_row(const float *x, const float *g, const float *b, int64_t C, double *y,
                         bool layer)
{
    double mu = 0.0, ss = 0.0;
    if (layer) {
        for (int64_t j = 0; j < C; j++)
            mu += x[j];
        mu /= (double)C;
    }
    for (int64_t j = 0; j < C; j++)
        ss += (x[j] - mu) * (x[j] - mu);
    double r = 1.0 / sqrt(ss / (double)C + EPS);
    for (int64_t j = 0; j < C; j++)
        y[j] = (x[j] - mu) * r * g[j] + (b ? b[j] : 0.0);
}

static double max_err_vs_ref(const tl_tensor *out, const float *x, const float *g, const float *b,
                             int64_t N, int64_t C, bool layer)
{
    double worst = 0.0;
    double *y = malloc(sizeof(double) * (size_t)C);
    for (int64_t i = 0; i < N; i++) {
        ref_norm_row(x + i * C, g, b, C, y, layer);
        for (int64_t j = 0; j < C; j++)
            worst = fmax(worst, fabs(tl_f32(out)[i * C + j] - y[j]));
    }
    free(y);
    return worst;
}

int main(void)
{
    tl_rng rng;
    tl_rng_seed(&rng, 5);
    enum { B = 2, T = 3, C = 33, N = 7, C2 = 13 };
    static float x[B * T * C], g[C], b[C];
    gc_randn(&rng, x, B * T * C, 1.0f);
    /* Gains around 1 and a non-zero mean in x, as in trained models. */
    for (int j = 0; j < C; j++)
        g[j] = 1.0f + 0.3f * tl_rng_normal(&rng);
    gc_randn(&rng, b, C, 0.5f);
    for (int i = 0; i < B * T * C; i++)
        x[i] += 0.5f;

    gc_input rms2[2] = {{TL_F32, 2, {N, C2}, x, true}, {TL_F32, 1, {C2}, g, true}};
    gc_check("rmsnorm (7, 13)", fwd_rmsnorm, NULL, rms2, 2, TOL);
    gc_input rms3[2] = {{TL_F32, 3, {B, T, C}, x, true}, {TL_F32, 1, {C}, g, true}};
    gc_check("rmsnorm (2, 3, 33)", fwd_rmsnorm, NULL, rms3, 2, TOL);

    gc_input ln2[3] = {{TL_F32, 2, {N, C2}, x, true}, {TL_F32, 1, {C2}, g, true},
                       {TL_F32, 1, {C2}, b, true}};
    gc_check("layernorm (7, 13) with bias", fwd_layernorm, NULL, ln2, 3, TOL);
    gc_input ln3[3] = {{TL_F32, 3, {B, T, C}, x, true}, {TL_F32, 1, {C}, g, true},
                       {TL_F32, 1, {C}, b, true}};
    gc_check("layernorm (2, 3, 33) with bias", fwd_layernorm, NULL, ln3, 3, TOL);
    gc_input ln3nb[2] = {{TL_F32, 3, {B, T, C}, x, true}, {TL_F32, 1, {C}, g, true}};
    gc_check("layernorm (2, 3, 33) no bias", fwd_layernorm_nobias, NULL, ln3nb, 2, TOL);
    gc_check("rmsnorm accumulates", fwd_rmsnorm_accumulate, NULL, rms3, 2, TOL);
    gc_check("layernorm accumulates", fwd_layernorm_accumulate, NULL, ln3, 3, TOL);

    tl_ctx *ctx = tl_ctx_new(0);

    /* Forward values against a double reference: float32 rows of 33 values
     * agree to a few ulps, so 1e-5 absolute on outputs of order 1. */
    {
        tl_tensor *xt = tl_wrap(ctx, TL_F32, x, 3, (int64_t[]){B, T, C});
        tl_tensor *gt = tl_wrap(ctx, TL_F32, g, 1, (int64_t[]){C});
        tl_tensor *bt = tl_wrap(ctx, TL_F32, b, 1, (int64_t[]){C});
        tl_tensor *r = tl_rmsnorm(ctx, xt, gt, EPS);
        CHECK_MSG(r != NULL, "%s", tl_errmsg());
        if (r) {
            double err = max_err_vs_ref(r, x, g, NULL, B * T, C, false);
            CHECK_MSG(err < 1e-5, "rmsnorm forward error %.3g", err);
        }
        tl_tensor *l = tl_layernorm(ctx, xt, gt, bt, EPS);
        CHECK_MSG(l != NULL, "%s", tl_errmsg());
        if (l) {
            double err = max_err_vs_ref(l, x, g, b, B * T, C, true);
            CHECK_MSG(err < 1e-5, "layernorm forward error %.3g", err);
        }
        tl_tensor *l0 = tl_layernorm(ctx, xt, gt, NULL, EPS);
        CHECK_MSG(l0 != NULL, "%s", tl_errmsg());
        if (l0) {
            double err = max_err_vs_ref(l0, x, g, NULL, B * T, C, true);
            CHECK_MSG(err < 1e-5, "layernorm without bias forward error %.3g", err);
        }
    }

    /* Rows of width 128 around 1000 with unit spread: the mean and variance
     * must not lose the spread to rounding. float32 holds x to 6e-5, and the
     * outputs were measured within 3e-5 of the double reference. */
    {
        enum { R = 4, W = 128 };
        static float xo[R * W], go[W];
        gc_randn(&rng, xo, R * W, 1.0f);
        for (int i = 0; i < R * W; i++)
            xo[i] += 1000.0f;
        for (int j = 0; j < W; j++)
            go[j] = 1.0f;
        tl_tensor *l = tl_layernorm(ctx, tl_wrap(ctx, TL_F32, xo, 2, (int64_t[]){R, W}),
                                    tl_wrap(ctx, TL_F32, go, 1, (int64_t[]){W}), NULL, EPS);
        CHECK_MSG(l != NULL, "%s", tl_errmsg());
        if (l) {
            double err = max_err_vs_ref(l, xo, go, NULL, R, W, true);
            CHECK_MSG(err < 1e-4, "layernorm forward error %.3g at offset 1000", err);
        }
    }

    /* A row whose variance overflows float (values of +-1e20, variance 1e40)
     * gives NaN outputs, not the zeros of 1/sqrt(inf) = 0. The other row is
     * unaffected. */
    {
        float big[8] = {1e20f, -1e20f, 1e20f, -1e20f, 1, 2, 3, 4}, ones[4] = {1, 1, 1, 1};
        tl_tensor *l = tl_layernorm(ctx, tl_wrap(ctx, TL_F32, big, 2, (int64_t[]){2, 4}),
                                    tl_wrap(ctx, TL_F32, ones, 1, (int64_t[]){4}), NULL, EPS);
        CHECK_MSG(l != NULL, "%s", tl_errmsg());
        for (int j = 0; l && j < 4; j++) {
            CHECK_MSG(isnan(tl_f32(l)[j]), "overflowing row: y[%d] = %g", j,
                      (double)tl_f32(l)[j]);
            CHECK(isfinite(tl_f32(l)[4 + j]));
        }
    }

    /* Hand-computed, eps = 0: rmsnorm of (3, 4) has rms sqrt(12.5), so
     * y = (3, 4) / 3.5355339; layernorm of (1, 3) is (-1, 1). */
    {
        float p[2] = {3, 4}, one[2] = {1, 1}, q[2] = {1, 3};
        tl_tensor *gt = tl_wrap(ctx, TL_F32, one, 1, (int64_t[]){2});
        tl_tensor *r = tl_rmsnorm(ctx, tl_wrap(ctx, TL_F32, p, 1, (int64_t[]){2}), gt, 0.0f);
        CHECK(r && fabsf(tl_f32(r)[0] - 0.8485281f) < 1e-6f && fabsf(tl_f32(r)[1] - 1.1313708f) < 1e-6f);
        tl_tensor *l = tl_layernorm(ctx, tl_wrap(ctx, TL_F32, q, 1, (int64_t[]){2}), gt, NULL, 0.0f);
        CHECK(l && fabsf(tl_f32(l)[0] + 1.0f) < 1e-6f && fabsf(tl_f32(l)[1] - 1.0f) < 1e-6f);
    }

    /* Parameter gradients on the parallel path (N*C above the threshold) sum
     * rows in order: two runs agree bit for bit, and the bias gradient equals
     * a serial column sum exactly. */
    {
        enum { BN = 400, BC = 130 };
        float *bx = malloc(sizeof(float) * BN * BC), *dy = malloc(sizeof(float) * BN * BC);
        gc_randn(&rng, bx, BN * BC, 1.0f);
        gc_randn(&rng, dy, BN * BC, 1.0f);
        float *grads[2] = {NULL, NULL};
        for (int run = 0; run < 2; run++) {
            tl_ctx_reset(ctx);
            tl_tensor *xt = tl_wrap(ctx, TL_F32, bx, 2, (int64_t[]){BN, BC});
            tl_tensor *gt = tl_new(ctx, TL_F32, 1, (int64_t[]){BC});
            tl_tensor *bt = tl_new(ctx, TL_F32, 1, (int64_t[]){BC});
            for (int j = 0; j < BC; j++) {
                tl_f32(gt)[j] = 1.0f + 0.01f * (float)j;
                tl_f32(bt)[j] = 0.0f;
            }
            tl_set_requires_grad(gt, true);
            tl_set_requires_grad(bt, true);
            tl_tensor *rt = tl_wrap(ctx, TL_F32, dy, 2, (int64_t[]){BN, BC});
            tl_tensor *l = tl_sum(ctx, tl_mul(ctx, tl_layernorm(ctx, xt, gt, bt, EPS), rt));
            CHECK(tl_backward(ctx, l) == TL_OK);
            grads[run] = malloc(sizeof(float) * 2 * BC);
            memcpy(grads[run], gt->grad, sizeof(float) * BC);
            memcpy(grads[run] + BC, bt->grad, sizeof(float) * BC);
        }
        CHECK_MSG(memcmp(grads[0], grads[1], sizeof(float) * 2 * BC) == 0,
                  "layernorm parameter gradients differ between identical runs");
        /* db[j] is the plain column sum of dy in row order. */
        bool same = true;
        for (int j = 0; j < BC; j++) {
            float s = 0.0f;
            for (int i = 0; i < BN; i++)
                s += dy[i * BC + j];
            same = same && s == grads[0][BC + j];
        }
        CHECK_MSG(same, "layernorm bias gradient differs from the serial column sum");
        free(grads[0]);
        free(grads[1]);
        free(bx);
        free(dy);
    }

    /* Argument errors name the value. */
    {
        tl_ctx_reset(ctx);
        tl_tensor *xt = tl_wrap(ctx, TL_F32, x, 2, (int64_t[]){N, C2});
        tl_tensor *gt = tl_wrap(ctx, TL_F32, g, 1, (int64_t[]){C2 + 1});
        tl_tensor *g_ok = tl_wrap(ctx, TL_F32, g, 1, (int64_t[]){C2});
        CHECK(tl_rmsnorm(ctx, xt, gt, EPS) == NULL);
        CHECK(tl_lasterr() == TL_ESHAPE);
        CHECK_MSG(strstr(tl_errmsg(), "g (14) f32") && strstr(tl_errmsg(), "(13)"), "%s", tl_errmsg());
        CHECK(tl_layernorm(ctx, xt, g_ok, gt, EPS) == NULL);
        CHECK_MSG(strstr(tl_errmsg(), "b (14) f32") != NULL, "%s", tl_errmsg());
        CHECK(tl_layernorm(ctx, xt, g_ok, NULL, -1.0f) == NULL);
        CHECK(tl_lasterr() == TL_EINVAL);
        CHECK_MSG(strstr(tl_errmsg(), "eps = -1") != NULL, "%s", tl_errmsg());
        CHECK(tl_rmsnorm(ctx, xt, g_ok, NAN) == NULL);
        CHECK_MSG(strstr(tl_errmsg(), "eps = nan") != NULL, "%s", tl_errmsg());
        tl_clearerr();
        CHECK(tl_layernorm(ctx, xt, NULL, NULL, EPS) == NULL);
        CHECK(tl_lasterr() == TL_OK);
    }

    tl_ctx_free(ctx);
    return gc_finish("ops norm");
}
