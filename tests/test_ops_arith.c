/* Gradient checks and forward values for add, mul, scale, sum and mean. */
#include <math.h>
#include <string.h>

#include "gradcheck.h"

static tl_tensor *fwd_add(tl_ctx *ctx, tl_tensor **in, void *u) { return tl_add(ctx, in[0], in[1]); }
static tl_tensor *fwd_mul(tl_ctx *ctx, tl_tensor **in, void *u) { return tl_mul(ctx, in[0], in[1]); }
static tl_tensor *fwd_scale(tl_ctx *ctx, tl_tensor **in, void *u) { return tl_scale(ctx, in[0], -1.7f); }
static tl_tensor *fwd_sum(tl_ctx *ctx, tl_tensor **in, void *u) { return tl_sum(ctx, in[0]); }
static tl_tensor *fwd_mean(tl_ctx *ctx, tl_tensor **in, void *u) { return tl_mean(ctx, in[0]); }

/* Float32 forwards with h = 1e-2 give central differences good to about 1e-3
 * relative on these smooth ops. */
static const gc_options TOL = {.step = 1e-2, .atol = 1e-3, .rtol = 1e-2};

int main(void)
{
    tl_rng rng;
    tl_rng_seed(&rng, 1);
    enum { N = 7, C = 13 };
    float a[N * C], b[N * C], row[C], col[N];
    gc_randn(&rng, a, N * C, 1.0f);
    gc_randn(&rng, b, N * C, 1.0f);
    gc_randn(&rng, row, C, 1.0f);
    gc_randn(&rng, col, N, 1.0f);

    gc_input same[2] = {{TL_F32, 2, {N, C}, a, true}, {TL_F32, 2, {N, C}, b, true}};
    gc_input rowb[2] = {{TL_F32, 2, {N, C}, a, true}, {TL_F32, 1, {C}, row, true}};
    gc_input colb[2] = {{TL_F32, 2, {N, C}, a, true}, {TL_F32, 2, {N, 1}, col, true}};
    gc_input three[2] = {{TL_F32, 3, {1, N, C}, a, true}, {TL_F32, 3, {1, N, 1}, col, true}};

    gc_check("add same shape", fwd_add, NULL, same, 2, TOL);
    gc_check("add row vector", fwd_add, NULL, rowb, 2, TOL);
    gc_check("add column vector", fwd_add, NULL, colb, 2, TOL);
    gc_check("mul same shape", fwd_mul, NULL, same, 2, TOL);
    gc_check("mul row vector", fwd_mul, NULL, rowb, 2, TOL);
    gc_check("mul column vector", fwd_mul, NULL, colb, 2, TOL);
    gc_check("mul column vector 3-d", fwd_mul, NULL, three, 2, TOL);
    gc_check("scale", fwd_scale, NULL, same, 1, TOL);
    gc_check("sum", fwd_sum, NULL, same, 1, TOL);
    gc_check("mean", fwd_mean, NULL, same, 1, TOL);

    /* Forward values and shape errors. */
    tl_ctx *ctx = tl_ctx_new(0);
    tl_tensor *x = tl_wrap(ctx, TL_F32, a, 2, (int64_t[]){N, C});
    tl_tensor *r = tl_wrap(ctx, TL_F32, row, 1, (int64_t[]){C});
    tl_tensor *y = tl_add(ctx, x, r);
    CHECK(y && fabsf(tl_f32(y)[C + 2] - (a[C + 2] + row[2])) == 0.0f);
    tl_tensor *bad = tl_wrap(ctx, TL_F32, row, 1, (int64_t[]){C - 1});
    CHECK(tl_add(ctx, x, bad) == NULL);
    CHECK(tl_lasterr() == TL_ESHAPE);
    CHECK(strstr(tl_errmsg(), "does not broadcast") != NULL);
    CHECK(tl_add(ctx, NULL, r) == NULL);
    tl_tensor *m = tl_mean(ctx, x);
    double s = 0;
    for (int i = 0; i < N * C; i++)
        s += a[i];
    CHECK(fabs(tl_f32(m)[0] - s / (N * C)) < 1e-6);
    tl_ctx_free(ctx);
    return gc_finish("ops arith");
}
