/* RMSNorm and LayerNorm over the last dimension. */
#include <float.h>
#include <math.h>
#include <string.h>

#include "../internal.h"
#include "vmath.h"

/* Columns per block when summing gain and bias gradients over rows: each
 * thread owns whole column blocks and adds the rows in order, so the sums are
 * the same for any thread count. */
enum { TL_NORM_BLOCK = 64 };

/* Rows per block in the LayerNorm row loops. On a (384, 128) input (AVX2, one
 * thread, a loop over the forward's row function) the forward took 16.7 us
 * row by row and 13.7 us in blocks of 8. */
enum { TL_NORM_ROWS = 8 };

/* Checks x (..., C) against a per-channel vector v (C); v may be NULL. */
static bool tl_check_channel_vec(const char *op, const char *arg, const tl_tensor *x,
                                 const tl_tensor *v)
{
    if (!v)
        return true;
    if (!tl_check_f32(op, arg, v))
        return false;
    if (v->ndim != 1 || v->shape[0] != tl_cols(x)) {
        char sx[96], sv[96];
        tl_seterr(TL_ESHAPE, "%s: %s %s must be (%lld), the last dimension of x %s", op, arg,
                  tl_shape_str(v, sv, sizeof sv), (long long)tl_cols(x),
                  tl_shape_str(x, sx, sizeof sx));
        return false;
    }
    return true;
}

static bool tl_check_eps(const char *op, float eps)
{
    if (eps >= 0.0f && isfinite(eps))
        return true;
    tl_seterr(TL_EINVAL, "%s: eps = %g must be finite and >= 0", op, (double)eps);
    return false;
}

/* dg[j] += sum over rows of dy[i,j] * xhat[i,j] and db[j] += sum of dy[i,j],
 * where xhat is (x - mean) * rstd (mean NULL means 0). dg or db may be NULL. */
TL_MULTIVERSION
static void tl_norm_param_grads_cols(float *dg, float *db, const float *dy, const float *x,
                                     const float *mean, const float *rstd, int64_t N, int64_t C,
                                     int64_t j0, int64_t j1)
{
    for (int64_t i = 0; i < N; i++) {
        const float *dyi = dy + i * C, *xi = x + i * C;
        float mu = mean ? mean[i] : 0.0f, r = rstd[i];
        /* Tests outside the element loops, so both vectorise. */
        if (dg) {
#pragma omp simd
            for (int64_t j = j0; j < j1; j++)
                dg[j] += dyi[j] * (xi[j] - mu) * r;
        }
        if (db) {
#pragma omp simd
            for (int64_t j = j0; j < j1; j++)
                db[j] += dyi[j];
        }
    }
}

static void tl_norm_param_grads(float *dg, float *db, const float *dy, const float *x,
                                const float *mean, const float *rstd, int64_t N, int64_t C)
{
    int64_t n_blocks = (C + TL_NORM_BLOCK - 1) / TL_NORM_BLOCK;
#pragma omp parallel for if (N * C > 32768 && n_blocks > 1) schedule(static)
    for (int64_t blk = 0; blk < n_blocks; blk++) {
        int64_t j0 = blk * TL_NORM_BLOCK;
        int64_t j1 = j0 + TL_NORM_BLOCK < C ? j0 + TL_NORM_BLOCK : C;
        tl_norm_param_grads_cols(dg, db, dy, x, mean, rstd, N, C, j0, j1);
    }
}

/* ---- rmsnorm ------------------------------------------------------------------ */

/* Computes rows [i0, i1) of the RMSNorm forward. */
TL_MULTIVERSION
static void tl_rmsnorm_rows(const float *xs, const float *gs, float *y, float *rstd, int64_t C,
                            float eps, int64_t i0, int64_t i1)
{
    for (int64_t i = i0; i < i1; i++) {
        const float *xi = xs + i * C;
        float *yi = y + i * C;
        double ss = 0.0;
#pragma omp simd reduction(+ : ss)
        for (int64_t j = 0; j < C; j++)
            ss += (double)xi[j] * xi[j];
        float r = (float)(1.0 / sqrt(ss / (double)(C > 0 ? C : 1) + eps));
        rstd[i] = r;
#pragma omp simd
        for (int64_t j = 0; j < C; j++)
            yi[j] = xi[j] * r * gs[j];
    }
}

/* x (N, C) flattened, g (C): y = x * rstd * g with rstd = 1/sqrt(mean(x^2) + eps)
 * per row. Saves rstd (N) for backward. */
tl_tensor *tl_rmsnorm(tl_ctx *ctx, tl_tensor *x, tl_tensor *g, float eps)
{
    if (TL_ANY_NULL2(x, g))
        return NULL;
    if (!tl_check_f32("rmsnorm", "x", x) || !tl_check_channel_vec("rmsnorm", "g", x, g) ||
        !tl_check_eps("rmsnorm", eps))
        return NULL;
    tl_tensor *out = tl_new_like(ctx, x);
    float *rstd = tl_ctx_alloc(ctx, (size_t)tl_rows_of(x) * sizeof(float));
    if (!out || !rstd)
        return NULL;
    int64_t N = tl_rows_of(x), C = tl_cols(x);
    const float *xs = tl_f32(x), *gs = tl_f32(g);
    float *y = tl_f32(out);

#pragma omp parallel if (N * C > 32768)
    {
        int64_t i0, i1;
        tl_thread_range(N, &i0, &i1);
        tl_rmsnorm_rows(xs, gs, y, rstd, C, eps, i0, i1);
    }
    /* Per element: square-add, then two multiplies. */
    tl_count_flops(ctx, TL_OP_RMSNORM, 4.0 * (double)N * C);

    tl_node *node = tl_record(ctx, TL_OP_RMSNORM, out, 2, (tl_tensor *[]){x, g});
    if (node)
        node->saved[0] = rstd;
    return out;
}

/* Adds rows [i0, i1) of the RMSNorm input gradient into dx. */
TL_MULTIVERSION
static void tl_rmsnorm_backward_rows(const float *xs, const float *gs, const float *dy,
                                     const float *rstd, float *dx, int64_t C, int64_t i0,
                                     int64_t i1)
{
    for (int64_t i = i0; i < i1; i++) {
        const float *xi = xs + i * C, *dyi = dy + i * C;
        float *dxi = dx + i * C;
        float r = rstd[i];
        double dot = 0.0;
#pragma omp simd reduction(+ : dot)
        for (int64_t j = 0; j < C; j++)
            dot += (double)gs[j] * dyi[j] * xi[j];
        float coef = (float)(dot / (double)C) * r * r;
#pragma omp simd
        for (int64_t j = 0; j < C; j++)
            dxi[j] += r * (gs[j] * dyi[j] - xi[j] * coef);
    }
}

/* With r = rstd: dx = r * (g*dy - x * r^2 * mean(g*dy*x)), dg = sum_rows dy * x * r. */
void tl_rmsnorm_backward(tl_ctx *ctx, tl_node *node)
{
    tl_tensor *x = node->in[0], *g = node->in[1];
    const float *rstd = node->saved[0], *dy = node->out->grad, *xs = tl_f32(x), *gs = tl_f32(g);
    float *dx = tl_grad(ctx, x), *dg = tl_grad(ctx, g);
    int64_t N = tl_rows_of(x), C = tl_cols(x);

    if (dx) {
#pragma omp parallel if (N * C > 32768)
        {
            int64_t i0, i1;
            tl_thread_range(N, &i0, &i1);
            tl_rmsnorm_backward_rows(xs, gs, dy, rstd, dx, C, i0, i1);
        }
    }
    if (dg)
        tl_norm_param_grads(dg, NULL, dy, xs, NULL, rstd, N, C);
    tl_count_flops(ctx, TL_OP_RMSNORM, (dx ? 8.0 : 0.0) * N * C + (dg ? 4.0 : 0.0) * N * C);
}

/* ---- layernorm ---------------------------------------------------------------- */

/* Computes rows [i0, i1) of the LayerNorm forward. bs may be NULL. Each
 * row's mean, variance and normalisation depend on one another, so the rows
 * go in blocks of TL_NORM_ROWS with one pass at a time over the block, which
 * gives the CPU independent work while a row waits. */
TL_MULTIVERSION
static void tl_layernorm_rows(const float *xs, const float *gs, const float *bs, float *y,
                              float *mean, float *rstd, int64_t C, float eps, int64_t i0,
                              int64_t i1)
{
    float n = (float)(C > 0 ? C : 1);
    for (int64_t b0 = i0; b0 < i1; b0 += TL_NORM_ROWS) {
        int64_t b1 = b0 + TL_NORM_ROWS < i1 ? b0 + TL_NORM_ROWS : i1;
        /* Float partial sums in 16 lanes (tl_vsum), then the variance about
         * that mean in a second pass, so that a large common offset does not
         * cancel the spread (the norm tests check rows around 1000). */
        for (int64_t i = b0; i < b1; i++)
            mean[i] = tl_vsum(xs + i * C, C) / n;
        for (int64_t i = b0; i < b1; i++) {
            const float *xi = xs + i * C;
            float m = mean[i];
            float lane[TL_VLANES] = {0};
            int64_t j0 = 0;
            for (; j0 + TL_VLANES <= C; j0 += TL_VLANES)
                for (int l = 0; l < TL_VLANES; l++)
                    lane[l] += (xi[j0 + l] - m) * (xi[j0 + l] - m);
            for (int64_t j = j0; j < C; j++)
                lane[j - j0] += (xi[j] - m) * (xi[j] - m);
            /* A variance that overflows gives NaN, not 1/sqrt(inf) = 0: zeros
             * would hide a diverging run behind the loss of a uniform guess. */
            float var = tl_vlanes_sum(lane) / n;
            rstd[i] = var <= FLT_MAX ? 1.0f / sqrtf(var + eps) : NAN;
        }
        for (int64_t i = b0; i < b1; i++) {
            const float *xi = xs + i * C;
            float *yi = y + i * C;
            float m = mean[i], r = rstd[i];
            if (bs) {
#pragma omp simd
                for (int64_t j = 0; j < C; j++)
                    yi[j] = (xi[j] - m) * r * gs[j] + bs[j];
            } else {
                /* + 0.0f as with a zero bias, so -0 results stay +0 either way. */
#pragma omp simd
                for (int64_t j = 0; j < C; j++)
                    yi[j] = (xi[j] - m) * r * gs[j] + 0.0f;
            }
        }
    }
}

/* x (N, C) flattened, g (C), b (C) or NULL: y = (x - mean) * rstd * g + b per
 * row, rstd = 1/sqrt(var + eps) with the biased variance. Saves mean and rstd
 * (N each) for backward. */
tl_tensor *tl_layernorm(tl_ctx *ctx, tl_tensor *x, tl_tensor *g, tl_tensor *b, float eps)
{
    if (TL_ANY_NULL2(x, g))
        return NULL;
    if (!tl_check_f32("layernorm", "x", x) || !tl_check_channel_vec("layernorm", "g", x, g) ||
        !tl_check_channel_vec("layernorm", "b", x, b) || !tl_check_eps("layernorm", eps))
        return NULL;
    int64_t N = tl_rows_of(x), C = tl_cols(x);
    tl_tensor *out = tl_new_like(ctx, x);
    float *mean = tl_ctx_alloc(ctx, (size_t)N * sizeof(float));
    float *rstd = tl_ctx_alloc(ctx, (size_t)N * sizeof(float));
    if (!out || !mean || !rstd)
        return NULL;
    const float *xs = tl_f32(x), *gs = tl_f32(g), *bs = b ? tl_f32(b) : NULL;
    float *y = tl_f32(out);

#pragma omp parallel if (N * C > 32768)
    {
        int64_t i0, i1;
        tl_thread_range(N, &i0, &i1);
        tl_layernorm_rows(xs, gs, bs, y, mean, rstd, C, eps, i0, i1);
    }
    /* Per element: sum, subtract-square-add, then subtract, two multiplies and the bias. */
    tl_count_flops(ctx, TL_OP_LAYERNORM, (b ? 8.0 : 7.0) * (double)N * C);

    tl_node *node = tl_record(ctx, TL_OP_LAYERNORM, out, 3, (tl_tensor *[]){x, g, b});
    if (node) {
        node->saved[0] = mean;
        node->saved[1] = rstd;
    }
    return out;
}

/* Adds rows [i0, i1) of the LayerNorm input gradient into dx, in blocks of
 * TL_NORM_ROWS rows as in the forward: first each row's two means, then its
 * update. */
TL_MULTIVERSION
static void tl_layernorm_backward_rows(const float *xs, const float *gs, const float *dy,
                                       const float *mean, const float *rstd, float *dx,
                                       int64_t C, int64_t i0, int64_t i1)
{
    float mean_d[TL_NORM_ROWS], mean_dx[TL_NORM_ROWS];
    for (int64_t b0 = i0; b0 < i1; b0 += TL_NORM_ROWS) {
        int64_t b1 = b0 + TL_NORM_ROWS < i1 ? b0 + TL_NORM_ROWS : i1;
        for (int64_t i = b0; i < b1; i++) {
            const float *xi = xs + i * C, *dyi = dy + i * C;
            float m = mean[i], r = rstd[i];
            float lane_d[TL_VLANES] = {0}, lane_dx[TL_VLANES] = {0};
            int64_t j0 = 0;
            for (; j0 + TL_VLANES <= C; j0 += TL_VLANES)
                for (int l = 0; l < TL_VLANES; l++) {
                    float d = dyi[j0 + l] * gs[j0 + l];
                    lane_d[l] += d;
                    lane_dx[l] += d * ((xi[j0 + l] - m) * r);
                }
            for (int64_t j = j0; j < C; j++) {
                float d = dyi[j] * gs[j];
                lane_d[j - j0] += d;
                lane_dx[j - j0] += d * ((xi[j] - m) * r);
            }
            mean_d[i - b0] = tl_vlanes_sum(lane_d) / (float)C;
            mean_dx[i - b0] = tl_vlanes_sum(lane_dx) / (float)C;
        }
        for (int64_t i = b0; i < b1; i++) {
            const float *xi = xs + i * C, *dyi = dy + i * C;
            float *dxi = dx + i * C;
            float m = mean[i], r = rstd[i], md = mean_d[i - b0], mdx = mean_dx[i - b0];
#pragma omp simd
            for (int64_t j = 0; j < C; j++) {
                float xhat = (xi[j] - m) * r;
                dxi[j] += r * (dyi[j] * gs[j] - md - xhat * mdx);
            }
        }
    }
}

/* With xhat = (x - mean) * r and dxhat = dy * g:
 * dx = r * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)),
 * dg = sum_rows dy * xhat, db = sum_rows dy. */
void tl_layernorm_backward(tl_ctx *ctx, tl_node *node)
{
    tl_tensor *x = node->in[0], *g = node->in[1], *b = node->in[2];
    const float *mean = node->saved[0], *rstd = node->saved[1];
    const float *dy = node->out->grad, *xs = tl_f32(x), *gs = tl_f32(g);
    float *dx = tl_grad(ctx, x), *dg = tl_grad(ctx, g), *db = tl_grad(ctx, b);
    int64_t N = tl_rows_of(x), C = tl_cols(x);

    if (dx) {
#pragma omp parallel if (N * C > 32768)
        {
            int64_t i0, i1;
            tl_thread_range(N, &i0, &i1);
            tl_layernorm_backward_rows(xs, gs, dy, mean, rstd, dx, C, i0, i1);
        }
    }
    if (dg || db)
        tl_norm_param_grads(dg, db, dy, xs, mean, rstd, N, C);
    tl_count_flops(ctx, TL_OP_LAYERNORM, (dx ? 11.0 : 0.0) * N * C + (dg ? 4.0 : 0.0) * N * C +
                                             (db ? 1.0 : 0.0) * N * C);
}
