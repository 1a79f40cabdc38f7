/* Cross-entropy and binary cross-entropy with logits: finite-difference
 * gradients, forward values against double-precision hand computation, masks,
 * per-row losses and input errors. */
#include <math.h>
#include <string.h>

#include "gradcheck.h"

enum { N = 6, V = 9 };

static int32_t targets[N] = {3, 0, 8, 5, 5, 1};
static float mask_some[N] = {1, 0, 1, 1, 0, 1};

static tl_tensor *fwd_ce(tl_ctx *ctx, tl_tensor **in, void *user)
{
    tl_tensor *t = tl_wrap(ctx, TL_I32, targets, 1, (int64_t[]){N});
    tl_tensor *m = user ? tl_wrap(ctx, TL_F32, user, 1, (int64_t[]){N}) : NULL;
    return tl_cross_entropy(ctx, in[0], t, m, NULL);
}

static tl_tensor *fwd_bce(tl_ctx *ctx, tl_tensor **in, void *user)
{
    return tl_bce_logits(ctx, in[0], in[1]);
}

/* log(sum(exp(x))) - x[t] in double. */
static double ref_ce_row(const float *x, int32_t t)
{
    double max = x[0], sum = 0.0;
    for (int c = 1; c < V; c++)
        max = fmax(max, x[c]);
    for (int c = 0; c < V; c++)
        sum += exp(x[c] - max);
    return max + log(sum) - x[t];
}

/* Both losses are smooth; float32 forwards with h = 1e-2 give central
 * differences good to about 1e-4 on these O(1) inputs. */
static const gc_options TOL = {.step = 1e-2, .atol = 2e-4, .rtol = 2e-3};

static void check_cross_entropy(tl_rng *rng)
{
    float logits[N * V];
    gc_randn(rng, logits, N * V, 2.0f);
    gc_input in[1] = {{TL_F32, 2, {N, V}, logits, true}};
    gc_check("cross_entropy", fwd_ce, NULL, in, 1, TOL);
    gc_check("cross_entropy masked", fwd_ce, mask_some, in, 1, TOL);
    gc_input in3[1] = {{TL_F32, 3, {2, 3, V}, logits, true}};
    gc_check("cross_entropy (B,T,V) logits", fwd_ce, mask_some, in3, 1, TOL);
    /* 37 logits per row: two full groups of 16 lanes and a tail. */
    static float wide[N * 37];
    gc_randn(rng, wide, N * 37, 2.0f);
    gc_input in_wide[1] = {{TL_F32, 2, {N, 37}, wide, true}};
    gc_check("cross_entropy 37 logits", fwd_ce, NULL, in_wide, 1, TOL);

    /* Values: per-row losses and the masked mean against double. 1e-5
     * relative covers float32 exp and log over V = 9 terms. */
    tl_ctx *ctx = tl_ctx_new(1 << 20);
    tl_tensor *x = tl_wrap(ctx, TL_F32, logits, 2, (int64_t[]){N, V});
    tl_tensor *t = tl_wrap(ctx, TL_I32, targets, 1, (int64_t[]){N});
    tl_tensor *m = tl_wrap(ctx, TL_F32, mask_some, 1, (int64_t[]){N});
    tl_tensor *rows = NULL;
    tl_tensor *loss = tl_cross_entropy(ctx, x, t, m, &rows);
    CHECK(loss && rows);
    CHECK(rows && rows->ndim == 1 && rows->shape[0] == N);
    CHECK(rows && !tl_requires_grad(rows));
    double sum = 0.0;
    int counted = 0;
    for (int i = 0; loss && i < N; i++) {
        double want = mask_some[i] != 0.0f ? ref_ce_row(logits + i * V, targets[i]) : 0.0;
        CHECK_MSG(fabs(tl_f32(rows)[i] - want) <= 1e-5 * fmax(1.0, fabs(want)),
                  "per-row loss %d: %g, expected %g", i, (double)tl_f32(rows)[i], want);
        if (mask_some[i] != 0.0f) {
            sum += want;
            counted++;
        }
    }
    CHECK(loss && fabs(tl_f32(loss)[0] - sum / counted) <= 1e-5 * fabs(sum / counted));

    /* Without a mask the mean is over all rows. */
    loss = tl_cross_entropy(ctx, x, t, NULL, NULL);
    sum = 0.0;
    for (int i = 0; i < N; i++)
        sum += ref_ce_row(logits + i * V, targets[i]);
    CHECK(loss && fabs(tl_f32(loss)[0] - sum / N) <= 1e-5 * fabs(sum / N));

    /* A hand-computed case: uniform logits give log(V) for any target. */
    float flat[V] = {0};
    tl_tensor *xf = tl_wrap(ctx, TL_F32, flat, 2, (int64_t[]){1, V});
    loss = tl_cross_entropy(ctx, xf, tl_wrap(ctx, TL_I32, targets, 1, (int64_t[]){1}), NULL, NULL);
    CHECK(loss && fabsf(tl_f32(loss)[0] - logf((float)V)) <= 1e-6f);

    /* Logits of 1e4 stay finite and exact: the target is the clear maximum. */
    float big[V];
    for (int c = 0; c < V; c++)
        big[c] = c == 3 ? 1e4f : -1e4f;
    tl_tensor *xb = tl_wrap(ctx, TL_F32, big, 2, (int64_t[]){1, V});
    loss = tl_cross_entropy(ctx, xb, tl_wrap(ctx, TL_I32, targets, 1, (int64_t[]){1}), NULL, NULL);
    CHECK(loss && tl_f32(loss)[0] == 0.0f);

    /* All rows masked: loss 0 and zero gradient, not NaN. */
    tl_ctx_reset(ctx);
    float none[N] = {0};
    x = tl_wrap(ctx, TL_F32, logits, 2, (int64_t[]){N, V});
    tl_set_requires_grad(x, true);
    loss = tl_cross_entropy(ctx, x, tl_wrap(ctx, TL_I32, targets, 1, (int64_t[]){N}),
                            tl_wrap(ctx, TL_F32, none, 1, (int64_t[]){N}), NULL);
    CHECK(loss && tl_f32(loss)[0] == 0.0f);
    CHECK(tl_backward(ctx, loss) == TL_OK);
    int nonzero = 0;
    for (int k = 0; x->grad && k < N * V; k++)
        nonzero += x->grad[k] != 0.0f;
    CHECK_MSG(nonzero == 0, "all-masked loss gave %d non-zero gradients", nonzero);

    /* Target errors name the target and V; masked rows may hold any id. */
    tl_ctx_reset(ctx);
    x = tl_wrap(ctx, TL_F32, logits, 2, (int64_t[]){N, V});
    int32_t bad[N] = {3, 0, 9, 5, 5, 1};
    CHECK(tl_cross_entropy(ctx, x, tl_wrap(ctx, TL_I32, bad, 1, (int64_t[]){N}), NULL, NULL) == NULL);
    CHECK(strstr(tl_errmsg(), "targets[2] = 9") != NULL);
    CHECK(strstr(tl_errmsg(), "V = 9") != NULL);
    bad[2] = -1;
    bad[1] = -1; /* row 1 is masked */
    CHECK(tl_cross_entropy(ctx, x, tl_wrap(ctx, TL_I32, bad, 1, (int64_t[]){N}), NULL, NULL) == NULL);
    CHECK(strstr(tl_errmsg(), "targets[1] = -1") != NULL);
    bad[2] = 8;
    CHECK(tl_cross_entropy(ctx, x, tl_wrap(ctx, TL_I32, bad, 1, (int64_t[]){N}),
                           tl_wrap(ctx, TL_F32, mask_some, 1, (int64_t[]){N}), NULL) != NULL);
    CHECK(tl_cross_entropy(ctx, x, tl_wrap(ctx, TL_I32, bad, 1, (int64_t[]){N - 1}), NULL, NULL) == NULL);
    CHECK(tl_lasterr() == TL_ESHAPE);
    CHECK(tl_cross_entropy(ctx, NULL, tl_wrap(ctx, TL_I32, bad, 1, (int64_t[]){N}), NULL, NULL) == NULL);
    tl_ctx_free(ctx);
}

static void check_bce(tl_rng *rng)
{
    enum { M = 11 };
    float x[M], y[M];
    gc_randn(rng, x, M, 2.0f);
    for (int i = 0; i < M; i++)
        y[i] = (float)(i % 4) / 3.0f; /* 0, 1/3, 2/3, 1: hard and soft labels */
    gc_input in[2] = {{TL_F32, 1, {M}, x, true}, {TL_F32, 1, {M}, y, false}};
    gc_check("bce_logits", fwd_bce, NULL, in, 2, TOL);

    /* Values against the naive form in double, including |x| = 50 where
     * log(sigmoid(x)) underflows in float; 1e-6 relative is float32 rounding. */
    x[0] = 50.0f;
    x[1] = -50.0f;
    tl_ctx *ctx = tl_ctx_new(1 << 20);
    tl_tensor *xt = tl_wrap(ctx, TL_F32, x, 1, (int64_t[]){M});
    tl_tensor *yt = tl_wrap(ctx, TL_F32, y, 1, (int64_t[]){M});
    tl_set_requires_grad(yt, true);
    tl_tensor *loss = tl_bce_logits(ctx, xt, yt);
    double sum = 0.0;
    for (int i = 0; i < M; i++) {
        double log_p = x[i] > 0 ? -log1p(exp(-(double)x[i])) : x[i] - log1p(exp((double)x[i]));
        double log_q = log_p - x[i]; /* log(1 - p) */
        sum += -(y[i] * log_p + (1.0 - y[i]) * log_q);
    }
    CHECK_MSG(loss && fabs(tl_f32(loss)[0] - sum / M) <= 1e-6 * fabs(sum / M),
              "bce %g, expected %g", loss ? (double)tl_f32(loss)[0] : NAN, sum / M);
    /* Labels carry no gradient, so a label that requires one records nothing. */
    CHECK(loss && !tl_requires_grad(loss));

    /* log(2) for a zero logit, whatever the label. */
    float zero = 0.0f, label = 0.25f;
    loss = tl_bce_logits(ctx, tl_wrap(ctx, TL_F32, &zero, 1, (int64_t[]){1}),
                         tl_wrap(ctx, TL_F32, &label, 1, (int64_t[]){1}));
    CHECK(loss && fabsf(tl_f32(loss)[0] - logf(2.0f)) <= 1e-7f);

    y[4] = 1.5f;
    CHECK(tl_bce_logits(ctx, xt, yt) == NULL);
    CHECK(strstr(tl_errmsg(), "labels[4] = 1.5") != NULL);
    CHECK(tl_bce_logits(ctx, xt, tl_wrap(ctx, TL_F32, y, 1, (int64_t[]){M - 1})) == NULL);
    CHECK(tl_lasterr() == TL_ESHAPE);
    tl_ctx_free(ctx);
}

/* Rows wider than one group of 16 lanes, with a tail (V = 37) and a BPE-sized
 * vocabulary (V = 1024): per-row losses and gradients against double
 * references, and a NaN logit giving a NaN loss, which training relies on to
 * stop. */
static void check_cross_entropy_wide(tl_rng *rng)
{
    enum { R = 3 };
    static const int64_t widths[2] = {37, 1024};
    static float x[R * 1024];
    int32_t t[R] = {0, 36, 17};
    for (int w = 0; w < 2; w++) {
        int64_t W = widths[w];
        gc_randn(rng, x, R * W, 3.0f);
        tl_ctx *ctx = tl_ctx_new(0);
        tl_tensor *xt = tl_wrap(ctx, TL_F32, x, 2, (int64_t[]){R, W});
        tl_set_requires_grad(xt, true);
        tl_tensor *rows = NULL;
        tl_tensor *loss = tl_cross_entropy(ctx, xt, tl_wrap(ctx, TL_I32, t, 1, (int64_t[]){R}),
                                           NULL, &rows);
        CHECK(loss != NULL);
        CHECK(tl_backward(ctx, loss) == TL_OK);
        double worst_loss = 0.0, worst_grad = 0.0;
        for (int i = 0; loss && i < R; i++) {
            const float *xi = x + i * W;
            double max = xi[0], sum = 0.0;
            for (int64_t c = 1; c < W; c++)
                max = fmax(max, xi[c]);
            for (int64_t c = 0; c < W; c++)
                sum += exp((double)xi[c] - max);
            double lse = max + log(sum);
            worst_loss = fmax(worst_loss, fabs(tl_f32(rows)[i] - (lse - xi[t[i]])));
            for (int64_t c = 0; c < W; c++) {
                double want = (exp((double)xi[c] - lse) - (c == t[i])) / R;
                worst_grad = fmax(worst_grad, fabs(xt->grad[i * W + c] - want));
            }
        }
        /* Losses of order 10 in float32: 1e-5 absolute; gradient entries below
         * 1: 1e-6. */
        CHECK_MSG(worst_loss < 1e-5, "V = %lld: per-row loss off by %.3g", (long long)W,
                  worst_loss);
        CHECK_MSG(worst_grad < 1e-6, "V = %lld: gradient off by %.3g", (long long)W, worst_grad);

        tl_ctx_reset(ctx);
        x[W + 20] = NAN;
        loss = tl_cross_entropy(ctx, tl_wrap(ctx, TL_F32, x, 2, (int64_t[]){R, W}),
                                tl_wrap(ctx, TL_I32, t, 1, (int64_t[]){R}), NULL, NULL);
        CHECK_MSG(loss && isnan(tl_f32(loss)[0]), "V = %lld: a NaN logit gave loss %g",
                  (long long)W, loss ? (double)tl_f32(loss)[0] : 0.0);
        tl_ctx_free(ctx);
    }
}

int main(void)
{
    tl_rng rng;
    tl_rng_seed(&rng, 3);
    check_cross_entropy(&rng);
    check_cross_entropy_wide(&rng);
    check_bce(&rng);
    return gc_finish("ops loss");
}
