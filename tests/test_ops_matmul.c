/* Gradient checks, forward values, FLOP counts and shape errors for matmul
 * and linear: every transpose combination, batched and linear products. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"

typedef struct mm_case {
    bool ta, tb;
} mm_case;

static tl_tensor *fwd_matmul(tl_ctx *ctx, tl_tensor **in, void *u)
{
    const mm_case *c = u;
    return tl_matmul(ctx, in[0], in[1], c->ta, c->tb);
}

static tl_tensor *fwd_linear(tl_ctx *ctx, tl_tensor **in, void *u) { return tl_linear(ctx, in[0], in[1]); }

/* a^T a uses one tensor twice, so both backward contributions must add up. */
static tl_tensor *fwd_gram(tl_ctx *ctx, tl_tensor **in, void *u) { return tl_matmul(ctx, in[0], in[0], true, false); }

/* sum(op(a) op(b)) + sum(a*a) + sum(b*b): the squares are recorded after the
 * product, so backward reaches matmul with a and b's gradients already
 * non-zero, and a backward that overwrote instead of adding would fail. */
static tl_tensor *fwd_accumulate(tl_ctx *ctx, tl_tensor **in, void *u)
{
    const mm_case *c = u;
    tl_tensor *z = tl_sum(ctx, tl_matmul(ctx, in[0], in[1], c->ta, c->tb));
    tl_tensor *sa = tl_sum(ctx, tl_mul(ctx, in[0], in[0]));
    tl_tensor *sb = tl_sum(ctx, tl_mul(ctx, in[1], in[1]));
    return tl_add(ctx, z, tl_add(ctx, sa, sb));
}

/* matmul is linear in each input, so the central difference has no truncation
 * error; what remains is float32 rounding of L (sum of up to ~500 outputs)
 * divided by 2h = 0.02, measured at most 1e-4 on these shapes. */
static const gc_options TOL = {.step = 1e-2, .atol = 1e-3, .rtol = 1e-3};
/* The accumulation check reduces to a scalar near 100 whose float32 rounding
 * (about 8e-6) over 2h = 0.02 would reach 4e-4. L is quadratic in each input,
 * so the central difference is exact for any h, and h = 0.1 shrinks the
 * rounding part to below 1e-4. */
static const gc_options TOL_ACC = {.step = 1e-1, .atol = 1e-3, .rtol = 1e-3};

/* Reference C[b] = op(A[b]) op(B[b]) in double, with stored layouts as in tl_matmul. */
static void ref_matmul(const float *a, const float *b, double *c, int64_t batch, int64_t M, int64_t K,
                       int64_t N, bool ta, bool tb, bool b_shared)
{
    for (int64_t p = 0; p < batch; p++) {
        const float *ap = a + p * M * K, *bp = b + (b_shared ? 0 : p * K * N);
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) {
                double s = 0.0;
                for (int64_t k = 0; k < K; k++) {
                    double av = ta ? ap[k * M + i] : ap[i * K + k];
                    double bv = tb ? bp[j * K + k] : bp[k * N + j];
                    s += av * bv;
                }
                c[p * M * N + i * N + j] = s;
            }
    }
}

/* Largest |got - want| / (1 + |want|) over n values. */
static double max_rel_err(const float *got, const double *want, int64_t n)
{
    double worst = 0.0;
    for (int64_t i = 0; i < n; i++)
        worst = fmax(worst, fabs(got[i] - want[i]) / (1.0 + fabs(want[i])));
    return worst;
}

int main(void)
{
    tl_rng rng;
    tl_rng_seed(&rng, 7);
    enum { M = 7, K = 13, N = 5, BA = 2, BB = 3 };
    static float a[BA * BB * M * K], b[BA * BB * K * N];
    gc_randn(&rng, a, BA * BB * M * K, 1.0f);
    gc_randn(&rng, b, BA * BB * K * N, 1.0f);
    const mm_case cases[4] = {{false, false}, {false, true}, {true, false}, {true, true}};
    char label[64];

    /* 2-D and batched (3-D and 4-D), each with every transpose combination. */
    for (int c = 0; c < 4; c++) {
        bool ta = cases[c].ta, tb = cases[c].tb;
        int64_t ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
        gc_input two[2] = {{TL_F32, 2, {ar, ac}, a, true}, {TL_F32, 2, {br, bc}, b, true}};
        snprintf(label, sizeof label, "matmul 2-d ta=%d tb=%d", ta, tb);
        gc_check(label, fwd_matmul, (void *)&cases[c], two, 2, TOL);

        gc_input three[2] = {{TL_F32, 3, {BB, ar, ac}, a, true}, {TL_F32, 3, {BB, br, bc}, b, true}};
        snprintf(label, sizeof label, "matmul accumulates ta=%d tb=%d", ta, tb);
        gc_check(label, fwd_accumulate, (void *)&cases[c], two, 2, TOL_ACC);

        snprintf(label, sizeof label, "matmul batched 3-d ta=%d tb=%d", ta, tb);
        gc_check(label, fwd_matmul, (void *)&cases[c], three, 2, TOL);

        gc_input four[2] = {{TL_F32, 4, {BA, BB, ar, ac}, a, true},
                            {TL_F32, 4, {BA, BB, br, bc}, b, true}};
        snprintf(label, sizeof label, "matmul batched 4-d ta=%d tb=%d", ta, tb);
        gc_check(label, fwd_matmul, (void *)&cases[c], four, 2, TOL);
    }

    /* Linear: a (..., K) against a 2-D b, with and without tb, and tl_linear. */
    gc_input lin3[2] = {{TL_F32, 3, {BB, M, K}, a, true}, {TL_F32, 2, {K, N}, b, true}};
    gc_check("matmul linear 3-d a", fwd_matmul, (void *)&cases[0], lin3, 2, TOL);
    gc_input lin4[2] = {{TL_F32, 4, {BA, BB, M, K}, a, true}, {TL_F32, 2, {N, K}, b, true}};
    gc_check("matmul linear 4-d a tb", fwd_matmul, (void *)&cases[1], lin4, 2, TOL);
    gc_input lin1[2] = {{TL_F32, 1, {K}, a, true}, {TL_F32, 2, {K, N}, b, true}};
    gc_check("matmul linear 1-d a", fwd_matmul, (void *)&cases[0], lin1, 2, TOL);
    gc_input linw[2] = {{TL_F32, 3, {BB, M, K}, a, true}, {TL_F32, 2, {N, K}, b, true}};
    gc_check("linear 3-d x", fwd_linear, NULL, linw, 2, TOL);
    gc_input gram[1] = {{TL_F32, 2, {M, K}, a, true}};
    gc_check("matmul a^T a accumulates", fwd_gram, NULL, gram, 1, TOL);

    /* A larger odd product, every fifth element or so checked. */
    enum { BM = 33, BK = 17, BN = 29 };
    static float big_a[BM * BK], big_b[BK * BN];
    gc_randn(&rng, big_a, BM * BK, 1.0f);
    gc_randn(&rng, big_b, BK * BN, 1.0f);
    gc_input big[2] = {{TL_F32, 2, {BK, BM}, big_a, true}, {TL_F32, 2, {BN, BK}, big_b, true}};
    gc_options big_tol = TOL;
    big_tol.max_elems = 120;
    gc_check("matmul 33x17x29 ta tb", fwd_matmul, (void *)&cases[3], big, 2, big_tol);

    /* Forward values against a double reference; float32 sums of 13 products
     * of N(0,1) values stay within 1e-5 relative. */
    tl_ctx *ctx = tl_ctx_new(0);
    static double want[BA * BB * M * N];
    for (int c = 0; c < 4; c++) {
        bool ta = cases[c].ta, tb = cases[c].tb;
        int64_t ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
        tl_tensor *x = tl_wrap(ctx, TL_F32, a, 4, (int64_t[]){BA, BB, ar, ac});
        tl_tensor *y = tl_wrap(ctx, TL_F32, b, 4, (int64_t[]){BA, BB, br, bc});
        tl_tensor *z = tl_matmul(ctx, x, y, ta, tb);
        CHECK_MSG(z != NULL, "%s", tl_errmsg());
        if (!z)
            continue;
        CHECK(z->ndim == 4 && z->shape[0] == BA && z->shape[1] == BB && z->shape[2] == M &&
              z->shape[3] == N);
        ref_matmul(a, b, want, BA * BB, M, K, N, ta, tb, false);
        double err = max_rel_err(tl_f32(z), want, BA * BB * M * N);
        CHECK_MSG(err < 1e-5, "batched ta=%d tb=%d forward error %.3g", ta, tb, err);
    }
    {
        tl_tensor *x = tl_wrap(ctx, TL_F32, a, 3, (int64_t[]){BB, M, K});
        tl_tensor *w = tl_wrap(ctx, TL_F32, b, 2, (int64_t[]){N, K});
        tl_tensor *z = tl_linear(ctx, x, w);
        CHECK_MSG(z != NULL, "%s", tl_errmsg());
        if (z) {
            CHECK(z->ndim == 3 && z->shape[0] == BB && z->shape[1] == M && z->shape[2] == N);
            ref_matmul(a, b, want, 1, BB * M, K, N, false, true, true);
            double err = max_rel_err(tl_f32(z), want, BB * M * N);
            CHECK_MSG(err < 1e-5, "linear forward error %.3g", err);
        }
    }

    /* A hand-computed product: [[1,2],[3,4]] x [[5,6],[7,8]] = [[19,22],[43,50]]. */
    {
        float p[4] = {1, 2, 3, 4}, q[4] = {5, 6, 7, 8};
        tl_tensor *x = tl_wrap(ctx, TL_F32, p, 2, (int64_t[]){2, 2});
        tl_tensor *y = tl_wrap(ctx, TL_F32, q, 2, (int64_t[]){2, 2});
        tl_tensor *z = tl_matmul(ctx, x, y, false, false);
        CHECK(z && tl_f32(z)[0] == 19.0f && tl_f32(z)[1] == 22.0f && tl_f32(z)[2] == 43.0f &&
              tl_f32(z)[3] == 50.0f);
        /* x^T y = [[1,3],[2,4]] x [[5,6],[7,8]] = [[26,30],[38,44]]. */
        z = tl_matmul(ctx, x, y, true, false);
        CHECK(z && tl_f32(z)[0] == 26.0f && tl_f32(z)[1] == 30.0f && tl_f32(z)[2] == 38.0f &&
              tl_f32(z)[3] == 44.0f);
    }

    /* FLOPs: 2*M*N*K forward, and the same again per input needing a gradient. */
    {
        tl_ctx_reset(ctx);
        tl_ctx_reset_flops(ctx);
        tl_tensor *x = tl_new(ctx, TL_F32, 2, (int64_t[]){M, K});
        tl_tensor *y = tl_new(ctx, TL_F32, 2, (int64_t[]){K, N});
        memcpy(x->data, a, sizeof(float) * M * K);
        memcpy(y->data, b, sizeof(float) * K * N);
        tl_set_requires_grad(x, true);
        tl_set_requires_grad(y, true);
        tl_tensor *z = tl_matmul(ctx, x, y, false, false);
        CHECK(tl_ctx_flops_forward(ctx) == 2.0 * M * N * K);
        tl_tensor *l = tl_sum(ctx, z);
        CHECK(tl_backward(ctx, l) == TL_OK);
        /* The sum's backward adds M*N. */
        CHECK_MSG(tl_ctx_flops_backward(ctx) == 4.0 * M * N * K + M * N, "backward flops %g",
                  tl_ctx_flops_backward(ctx));
    }

    /* Shape errors name the offending sizes. */
    {
        tl_ctx_reset(ctx);
        tl_tensor *x = tl_wrap(ctx, TL_F32, a, 2, (int64_t[]){M, K});
        tl_tensor *y = tl_wrap(ctx, TL_F32, b, 2, (int64_t[]){K + 1, N});
        CHECK(tl_matmul(ctx, x, y, false, false) == NULL);
        CHECK(tl_lasterr() == TL_ESHAPE);
        CHECK_MSG(strstr(tl_errmsg(), "K = 13") && strstr(tl_errmsg(), "K = 14"), "%s", tl_errmsg());

        tl_tensor *w = tl_wrap(ctx, TL_F32, b, 2, (int64_t[]){N, K - 1});
        CHECK(tl_linear(ctx, x, w) == NULL);
        CHECK_MSG(strstr(tl_errmsg(), "(5, 12) f32") != NULL, "%s", tl_errmsg());

        tl_tensor *x3 = tl_wrap(ctx, TL_F32, a, 3, (int64_t[]){2, M, K});
        tl_tensor *y3 = tl_wrap(ctx, TL_F32, b, 3, (int64_t[]){3, K, N});
        CHECK(tl_matmul(ctx, x3, y3, false, false) == NULL);
        CHECK_MSG(strstr(tl_errmsg(), "leading dimension 0") != NULL, "%s", tl_errmsg());

        tl_tensor *y2 = tl_wrap(ctx, TL_F32, b, 2, (int64_t[]){M, N});
        CHECK(tl_matmul(ctx, x3, y2, true, false) == NULL);
        CHECK_MSG(strstr(tl_errmsg(), "cannot be transposed") != NULL, "%s", tl_errmsg());

        CHECK(tl_matmul(ctx, x, y3, false, false) == NULL);
        CHECK_MSG(strstr(tl_errmsg(), "different ranks") != NULL, "%s", tl_errmsg());

        tl_tensor *ids = tl_wrap(ctx, TL_I32, b, 2, (int64_t[]){K, N});
        CHECK(tl_matmul(ctx, x, ids, false, false) == NULL);
        CHECK(tl_lasterr() == TL_EINVAL);

        tl_clearerr();
        CHECK(tl_matmul(ctx, NULL, y, false, false) == NULL);
        CHECK(tl_lasterr() == TL_OK);
    }

    /* K = 0 gives zeros rather than reading empty inputs. */
    {
        tl_ctx_reset(ctx);
        tl_tensor *x = tl_new(ctx, TL_F32, 2, (int64_t[]){3, 0});
        tl_tensor *y = tl_new(ctx, TL_F32, 2, (int64_t[]){0, 4});
        tl_tensor *z = tl_matmul(ctx, x, y, false, false);
        CHECK(z && z->shape[0] == 3 && z->shape[1] == 4);
        bool zero = z != NULL;
        for (int i = 0; z && i < 12; i++)
            zero = zero && tl_f32(z)[i] == 0.0f;
        CHECK(zero);
    }

    tl_ctx_free(ctx);
    return gc_finish("ops matmul");
}
