/* Elementwise activations (SiLU, GELU, sigmoid, tanh, SwiGLU) and softmax.
 *
 * FLOP counts treat each add, multiply, divide and each call to exp, tanh or
 * erf as one operation; they are estimates of the arithmetic, not of time. */
#include <math.h>

#include "../internal.h"
#include "vmath.h"

/* Elements below which the loops stay serial. */
enum { TL_ACT_PARALLEL_MIN = 32768 };

/* sqrt(2/pi) and the cubic coefficient of GPT-2's tanh approximation. */
static const float TL_GELU_K = 0.7978845608028654f;
static const float TL_GELU_C = 0.044715f;

/* Returns s = sigmoid(2u) for GELU's tanh form x s, where the tanh argument
 * u = sqrt(2/pi) (x + 0.044715 x^3) is computed as sqrt(2/pi) x (1 + 0.044715 x2)
 * with x2 = x * x. */
static inline float tl_gelu_tanh_gate(float x, float x2)
{
    return tl_vsigmoidf(2.0f * TL_GELU_K * x * fmaf(TL_GELU_C, x2, 1.0f));
}

/* Returns d/dx (x s) = s + 2 x s (1 - s) du/dx for s from tl_gelu_tanh_gate. */
static inline float tl_gelu_tanh_deriv(float x, float x2, float s)
{
    float du = fmaf(3.0f * TL_GELU_C, x2, 1.0f); /* du/dx divided by sqrt(2/pi) */
    return fmaf(2.0f * TL_GELU_K * x * s * (1.0f - s), du, s);
}
/* 1/sqrt(2) and 1/sqrt(2*pi) for the erf form. */
static const float TL_SQRT1_2 = 0.7071067811865476f;
static const float TL_INV_SQRT_2PI = 0.3989422804014327f;

typedef enum { TL_ACT_SILU, TL_ACT_GELU_TANH, TL_ACT_GELU_ERF, TL_ACT_SIGMOID, TL_ACT_TANH } tl_act;

/* One loop per kind, with the kind chosen outside it, so that each loop body
 * is straight-line code that GCC vectorises (tl_vexpf is branch-free).
 *
 * GELU with the tanh approximation uses 0.5 x (1 + tanh u) = x sigmoid(2u),
 * u = sqrt(2/pi) (x + 0.044715 x^3): one exp per element, and for very
 * negative x exp(-2u) overflows to inf and y is -0 instead of NaN. */
TL_MULTIVERSION
static void tl_act_forward_range(tl_act kind, const float *restrict x, float *restrict y,
                                 int64_t n)
{
    switch (kind) {
    /* The same expressions as tl_act_forward_deriv_range, so that a forward
     * with gradients gives the same bits as one without. */
    case TL_ACT_SILU:
#pragma omp simd
        for (int64_t i = 0; i < n; i++)
            y[i] = x[i] * tl_vsigmoidf(x[i]);
        break;
    case TL_ACT_GELU_TANH:
#pragma omp simd
        for (int64_t i = 0; i < n; i++)
            y[i] = x[i] * tl_gelu_tanh_gate(x[i], x[i] * x[i]);
        break;
    case TL_ACT_GELU_ERF:
        /* erff stays a libm call: this loop is not vectorised. */
        for (int64_t i = 0; i < n; i++)
            y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * TL_SQRT1_2));
        break;
    case TL_ACT_SIGMOID:
#pragma omp simd
        for (int64_t i = 0; i < n; i++)
            y[i] = tl_vsigmoidf(x[i]);
        break;
    case TL_ACT_TANH:
#pragma omp simd
        for (int64_t i = 0; i < n; i++)
            y[i] = tl_vtanhf(x[i]);
        break;
    }
}

/* y = f(x) and d = f'(x) in one pass, for the kinds whose derivative needs
 * the exp of the forward: SiLU and GELU with the tanh approximation. Backward
 * then multiplies by d instead of computing exp again. */
TL_MULTIVERSION
static void tl_act_forward_deriv_range(tl_act kind, const float *restrict x, float *restrict y,
                                       float *restrict d, int64_t n)
{
    if (kind == TL_ACT_SILU) {
#pragma omp simd
        for (int64_t i = 0; i < n; i++) {
            float xi = x[i];
            float s = tl_vsigmoidf(xi);
            y[i] = xi * s;
            d[i] = s * (1.0f + xi * (1.0f - s));
        }
    } else {
#pragma omp simd
        for (int64_t i = 0; i < n; i++) {
            float xi = x[i], x2 = xi * xi;
            float s = tl_gelu_tanh_gate(xi, x2);
            y[i] = xi * s;
            d[i] = tl_gelu_tanh_deriv(xi, x2, s);
        }
    }
}

/* dx += dy * d, with d the derivative saved by the forward, or dx = dy * d
 * into a fresh buffer. */
TL_MULTIVERSION
static void tl_act_backward_saved_range(const float *restrict d, const float *restrict dy,
                                        float *restrict dx, int64_t n, bool fresh)
{
    if (fresh) {
#pragma omp simd
        for (int64_t i = 0; i < n; i++)
            dx[i] = dy[i] * d[i];
    } else {
#pragma omp simd
        for (int64_t i = 0; i < n; i++)
            dx[i] += dy[i] * d[i];
    }
}

/* dx += dy * f'(x), given the forward output y. */
TL_MULTIVERSION
static void tl_act_backward_range(tl_act kind, const float *restrict x, const float *restrict y,
                                  const float *restrict dy, float *restrict dx, int64_t n)
{
    switch (kind) {
    case TL_ACT_SILU:
#pragma omp simd
        for (int64_t i = 0; i < n; i++) {
            float s = tl_vsigmoidf(x[i]);
            dx[i] += dy[i] * (s * (1.0f + x[i] * (1.0f - s)));
        }
        break;
    case TL_ACT_GELU_TANH:
#pragma omp simd
        for (int64_t i = 0; i < n; i++) {
            float xi = x[i], x2 = xi * xi;
            dx[i] += dy[i] * tl_gelu_tanh_deriv(xi, x2, tl_gelu_tanh_gate(xi, x2));
        }
        break;
    case TL_ACT_GELU_ERF:
        for (int64_t i = 0; i < n; i++) {
            float xi = x[i];
            float d = 0.5f * (1.0f + erff(xi * TL_SQRT1_2)) +
                      xi * TL_INV_SQRT_2PI * tl_vexpf(-0.5f * xi * xi);
            dx[i] += dy[i] * d;
        }
        break;
    case TL_ACT_SIGMOID:
#pragma omp simd
        for (int64_t i = 0; i < n; i++)
            dx[i] += dy[i] * (y[i] * (1.0f - y[i]));
        break;
    case TL_ACT_TANH:
#pragma omp simd
        for (int64_t i = 0; i < n; i++)
            dx[i] += dy[i] * (1.0f - y[i] * y[i]);
        break;
    }
}

/* The range kernels above run on each thread's share of the elements. */
/* d, when not NULL, receives f'(x) (tl_act_forward_deriv_range). */
static void tl_act_forward(tl_act kind, const float *x, float *y, float *d, int64_t n)
{
#pragma omp parallel if (n > TL_ACT_PARALLEL_MIN)
    {
        int64_t lo, hi;
        tl_thread_range(n, &lo, &hi);
        if (d)
            tl_act_forward_deriv_range(kind, x + lo, y + lo, d + lo, hi - lo);
        else
            tl_act_forward_range(kind, x + lo, y + lo, hi - lo);
    }
}

/* With a saved derivative d the kind is not needed. fresh: dx is a new
 * buffer to write, which only the saved-derivative path is given. */
static void tl_act_backward(tl_act kind, const float *x, const float *y, const float *d,
                            const float *dy, float *dx, int64_t n, bool fresh)
{
#pragma omp parallel if (n > TL_ACT_PARALLEL_MIN)
    {
        int64_t lo, hi;
        tl_thread_range(n, &lo, &hi);
        if (d)
            tl_act_backward_saved_range(d + lo, dy + lo, dx + lo, hi - lo, fresh);
        else
            tl_act_backward_range(kind, x + lo, y + lo, dy + lo, dx + lo, hi - lo);
    }
}

/* Forward and backward operations per element, for the FLOP count. */
static const double tl_act_flops[][2] = {
    [TL_ACT_SILU] = {4, 7},      [TL_ACT_GELU_TANH] = {9, 18}, [TL_ACT_GELU_ERF] = {5, 12},
    [TL_ACT_SIGMOID] = {3, 3},   [TL_ACT_TANH] = {1, 3},
};
/* Operations per element of the forward that also saves the derivative, and
 * of the backward that multiplies by it. */
static const double tl_act_deriv_flops[][2] = {
    [TL_ACT_SILU] = {8, 2}, [TL_ACT_GELU_TANH] = {17, 2},
};

/* Whether the forward of kind saves f'(x) for backward: only where the
 * derivative would otherwise cost another exp per element. It costs one
 * more float per element of arena memory. */
static bool tl_act_saves_deriv(tl_act kind)
{
    return kind == TL_ACT_SILU || kind == TL_ACT_GELU_TANH;
}

static tl_tensor *tl_unary(tl_ctx *ctx, tl_op op, tl_act kind, tl_tensor *x)
{
    if (!x || !tl_check_f32(tl_op_name(op), "x", x))
        return NULL;
    tl_tensor *out = tl_new_like(ctx, x);
    if (!out)
        return NULL;
    int64_t n = tl_numel(x);
    float *d = NULL;
    if (tl_act_saves_deriv(kind) && tl_ctx_grad_enabled(ctx) && tl_requires_grad(x)) {
        d = tl_ctx_alloc(ctx, (size_t)n * sizeof(float));
        if (!d)
            return NULL;
    }
    tl_act_forward(kind, tl_f32(x), tl_f32(out), d, n);
    tl_count_flops(ctx, op, (d ? tl_act_deriv_flops[kind][0] : tl_act_flops[kind][0]) * (double)n);
    tl_node *node = tl_record(ctx, op, out, 1, &x);
    if (node) {
        node->ints[0] = kind;
        node->saved[0] = d;
    }
    return out;
}

static void tl_unary_backward(tl_ctx *ctx, tl_node *node)
{
    tl_tensor *x = node->in[0];
    tl_act kind = (tl_act)node->ints[0];
    const float *d = node->saved[0];
    bool fresh = false;
    float *dx = d ? tl_grad_dst(ctx, x, &fresh) : tl_grad(ctx, x);
    if (!dx)
        return;
    int64_t n = tl_numel(x);
    tl_act_backward(kind, tl_f32(x), tl_f32(node->out), d, node->out->grad, dx, n, fresh);
    tl_count_flops(ctx, node->op,
                   (d ? tl_act_deriv_flops[kind][1] : tl_act_flops[kind][1]) * (double)n);
}

tl_tensor *tl_silu(tl_ctx *ctx, tl_tensor *x) { return tl_unary(ctx, TL_OP_SILU, TL_ACT_SILU, x); }

tl_tensor *tl_gelu(tl_ctx *ctx, tl_tensor *x, bool approximate)
{
    return tl_unary(ctx, TL_OP_GELU, approximate ? TL_ACT_GELU_TANH : TL_ACT_GELU_ERF, x);
}

tl_tensor *tl_sigmoid(tl_ctx *ctx, tl_tensor *x)
{
    return tl_unary(ctx, TL_OP_SIGMOID, TL_ACT_SIGMOID, x);
}

tl_tensor *tl_tanh(tl_ctx *ctx, tl_tensor *x) { return tl_unary(ctx, TL_OP_TANH, TL_ACT_TANH, x); }

void tl_silu_backward(tl_ctx *ctx, tl_node *node) { tl_unary_backward(ctx, node); }
void tl_gelu_backward(tl_ctx *ctx, tl_node *node) { tl_unary_backward(ctx, node); }
void tl_sigmoid_backward(tl_ctx *ctx, tl_node *node) { tl_unary_backward(ctx, node); }
void tl_tanh_backward(tl_ctx *ctx, tl_node *node) { tl_unary_backward(ctx, node); }

/* ---- swiglu ------------------------------------------------------------------ */

/* y = silu(a) * b on n elements. */
TL_MULTIVERSION
static void tl_swiglu_range(const float *restrict a, const float *restrict b, float *restrict y,
                            int64_t n)
{
#pragma omp simd
    for (int64_t i = 0; i < n; i++)
        y[i] = a[i] * tl_vsigmoidf(a[i]) * b[i];
}

/* da += dy * b * silu'(a) and db += dy * silu(a) on n elements; da or db may
 * be NULL. Two loops rather than tests inside one, so each vectorises. */
TL_MULTIVERSION
static void tl_swiglu_backward_range(const float *restrict a, const float *restrict b,
                                     const float *restrict dy, float *restrict da,
                                     float *restrict db, int64_t n)
{
    if (da) {
#pragma omp simd
        for (int64_t i = 0; i < n; i++) {
            float s = tl_vsigmoidf(a[i]);
            da[i] += dy[i] * b[i] * s * (1.0f + a[i] * (1.0f - s));
        }
    }
    if (db) {
#pragma omp simd
        for (int64_t i = 0; i < n; i++)
            db[i] += dy[i] * a[i] * tl_vsigmoidf(a[i]);
    }
}

tl_tensor *tl_swiglu(tl_ctx *ctx, tl_tensor *a, tl_tensor *b)
{
    if (TL_ANY_NULL2(a, b))
        return NULL;
    if (!tl_check_f32("swiglu", "a", a) || !tl_check_f32("swiglu", "b", b))
        return NULL;
    if (!tl_same_shape(a, b)) {
        char sa[96], sb[96];
        tl_seterr(TL_ESHAPE, "swiglu: a %s and b %s must have the same shape",
                  tl_shape_str(a, sa, sizeof sa), tl_shape_str(b, sb, sizeof sb));
        return NULL;
    }
    tl_tensor *out = tl_new_like(ctx, a);
    if (!out)
        return NULL;
    const float *as = tl_f32(a), *bs = tl_f32(b);
    float *y = tl_f32(out);
    int64_t n = tl_numel(a);
#pragma omp parallel if (n > TL_ACT_PARALLEL_MIN)
    {
        int64_t lo, hi;
        tl_thread_range(n, &lo, &hi);
        tl_swiglu_range(as + lo, bs + lo, y + lo, hi - lo);
    }
    tl_count_flops(ctx, TL_OP_SWIGLU, 5.0 * (double)n);
    tl_record(ctx, TL_OP_SWIGLU, out, 2, (tl_tensor *[]){a, b});
    return out;
}

/* da = dy * b * silu'(a), db = dy * silu(a). */
void tl_swiglu_backward(tl_ctx *ctx, tl_node *node)
{
    tl_tensor *a = node->in[0], *b = node->in[1];
    float *da = tl_grad(ctx, a), *db = tl_grad(ctx, b);
    const float *as = tl_f32(a), *bs = tl_f32(b), *dy = node->out->grad;
    int64_t n = tl_numel(a);
#pragma omp parallel if (n > TL_ACT_PARALLEL_MIN)
    {
        int64_t lo, hi;
        tl_thread_range(n, &lo, &hi);
        tl_swiglu_backward_range(as + lo, bs + lo, dy + lo, da ? da + lo : NULL,
                                 db ? db + lo : NULL, hi - lo);
    }
    tl_count_flops(ctx, TL_OP_SWIGLU, (da ? 9.0 : 0.0) * n + (db ? 3.0 : 0.0) * n);
}

/* ---- softmax ------------------------------------------------------------------ */

/* x (N, C) flattened -> softmax over C. The row maximum is subtracted before
 * exp, so large logits cannot overflow. */
tl_tensor *tl_softmax(tl_ctx *ctx, tl_tensor *x)
{
    if (!x || !tl_check_f32("softmax", "x", x))
        return NULL;
    tl_tensor *out = tl_new_like(ctx, x);
    if (!out)
        return NULL;
    int64_t N = tl_rows_of(x), C = tl_cols(x);
    const float *xs = tl_f32(x);
    float *y = tl_f32(out);
#pragma omp parallel for if (N * C > TL_ACT_PARALLEL_MIN) schedule(static)
    for (int64_t i = 0; i < N; i++) {
        const float *xi = xs + i * C;
        float *yi = y + i * C;
        float max = -INFINITY;
#pragma omp simd reduction(max : max)
        for (int64_t j = 0; j < C; j++)
            max = xi[j] > max ? xi[j] : max;
        double sum = 0.0;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < C; j++) {
            yi[j] = tl_vexpf_nonpos(xi[j] - max);
            sum += yi[j];
        }
        float inv = (float)(1.0 / sum);
#pragma omp simd
        for (int64_t j = 0; j < C; j++)
            yi[j] *= inv;
    }
    /* Per element: compare, subtract, exp, add, multiply. */
    tl_count_flops(ctx, TL_OP_SOFTMAX, 5.0 * (double)N * C);
    tl_record(ctx, TL_OP_SOFTMAX, out, 1, &x);
    return out;
}

/* dx = y * (dy - sum_j dy_j y_j) per row. */
void tl_softmax_backward(tl_ctx *ctx, tl_node *node)
{
    tl_tensor *x = node->in[0];
    float *dx = tl_grad(ctx, x);
    if (!dx)
        return;
    int64_t N = tl_rows_of(x), C = tl_cols(x);
    const float *y = tl_f32(node->out), *dy = node->out->grad;
#pragma omp parallel for if (N * C > TL_ACT_PARALLEL_MIN) schedule(static)
    for (int64_t i = 0; i < N; i++) {
        const float *yi = y + i * C, *dyi = dy + i * C;
        float *dxi = dx + i * C;
        double dot = 0.0;
#pragma omp simd reduction(+ : dot)
        for (int64_t j = 0; j < C; j++)
            dot += (double)dyi[j] * yi[j];
        float d = (float)dot;
#pragma omp simd
        for (int64_t j = 0; j < C; j++)
            dxi[j] += yi[j] * (dyi[j] - d);
    }
    tl_count_flops(ctx, TL_OP_SOFTMAX, 4.0 * (double)N * C);
}
