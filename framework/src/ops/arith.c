/* add, mul, scale, sum and mean, with row- and column-vector broadcasting. */
#include <string.h>

#include "../internal.h"

/* How b lines up with a (..., C): equal shape, row vector (C), or column
 * vector (..., 1) with a's leading dims. */
typedef enum { TL_BCAST_SAME, TL_BCAST_ROW, TL_BCAST_COL } tl_bcast;

static bool tl_broadcast_kind(const char *op, const tl_tensor *a, const tl_tensor *b, tl_bcast *kind)
{
    int64_t C = tl_cols(a);
    if (tl_same_shape(a, b)) {
        *kind = TL_BCAST_SAME;
        return true;
    }
    if (b->ndim == 1 && b->shape[0] == C) {
        *kind = TL_BCAST_ROW;
        return true;
    }
    if (b->ndim == a->ndim && tl_cols(b) == 1) {
        bool lead = true;
        for (int i = 0; i + 1 < a->ndim; i++)
            lead = lead && a->shape[i] == b->shape[i];
        if (lead) {
            *kind = TL_BCAST_COL;
            return true;
        }
    }
    char sa[96], sb[96];
    tl_seterr(TL_ESHAPE, "%s: b %s does not broadcast against a %s; b must have a's shape, "
                         "be a row vector of its last dimension or a column vector (..., 1)",
              op, tl_shape_str(b, sb, sizeof sb), tl_shape_str(a, sa, sizeof sa));
    return false;
}

static tl_tensor *tl_binary(tl_ctx *ctx, tl_op op, tl_tensor *a, tl_tensor *b)
{
    if (TL_ANY_NULL2(a, b))
        return NULL;
    const char *name = tl_op_name(op);
    tl_bcast kind;
    if (!tl_check_f32(name, "a", a) || !tl_check_f32(name, "b", b) ||
        !tl_broadcast_kind(name, a, b, &kind))
        return NULL;
    tl_tensor *out = tl_new_like(ctx, a);
    if (!out)
        return NULL;
    const float *x = tl_f32(a), *y = tl_f32(b);
    float *z = tl_f32(out);
    int64_t N = tl_rows_of(a), C = tl_cols(a);
    bool add = op == TL_OP_ADD;
    /* The broadcast kind and the op are tested once per row, outside the
     * element loops, so that each of those is a plain vector loop. */
#pragma omp parallel for if (N * C > 32768) schedule(static)
    for (int64_t i = 0; i < N; i++) {
        const float *xi = x + i * C;
        float *zi = z + i * C;
        if (kind == TL_BCAST_COL) {
            float s = y[i];
            if (add) {
#pragma omp simd
                for (int64_t j = 0; j < C; j++)
                    zi[j] = xi[j] + s;
            } else {
#pragma omp simd
                for (int64_t j = 0; j < C; j++)
                    zi[j] = xi[j] * s;
            }
        } else {
            const float *yi = kind == TL_BCAST_SAME ? y + i * C : y;
            if (add) {
#pragma omp simd
                for (int64_t j = 0; j < C; j++)
                    zi[j] = xi[j] + yi[j];
            } else {
#pragma omp simd
                for (int64_t j = 0; j < C; j++)
                    zi[j] = xi[j] * yi[j];
            }
        }
    }
    tl_count_flops(ctx, op, (double)N * C);
    tl_node *node = tl_record(ctx, op, out, 2, (tl_tensor *[]){a, b});
    if (node)
        node->ints[0] = kind;
    return out;
}

tl_tensor *tl_add(tl_ctx *ctx, tl_tensor *a, tl_tensor *b) { return tl_binary(ctx, TL_OP_ADD, a, b); }
tl_tensor *tl_mul(tl_ctx *ctx, tl_tensor *a, tl_tensor *b) { return tl_binary(ctx, TL_OP_MUL, a, b); }

/* Accumulates d(out) into a and b. For add the local derivatives are 1; for
 * mul they are the other operand. */
static void tl_binary_backward(tl_ctx *ctx, tl_node *node, bool add)
{
    tl_tensor *a = node->in[0], *b = node->in[1];
    tl_bcast kind = (tl_bcast)node->ints[0];
    const float *dz = node->out->grad, *x = tl_f32(a), *y = tl_f32(b);
    int64_t N = tl_rows_of(a), C = tl_cols(a);
    bool same_add = add && kind == TL_BCAST_SAME;
    double terms = 0.0; /* operands whose gradient was added to, for the FLOP count */

    /* For a + b of equal shapes, dL/da is dz itself: the first gradient a
     * receives takes dz's buffer, and one that b receives first is a copy,
     * where either would otherwise be zeroed and then added to. */
    bool a_took = same_add && tl_grad_take(a, node->out);
    bool b_fresh = false;
    float *da = a_took ? NULL : tl_grad(ctx, a);
    float *db = same_add ? tl_grad_dst(ctx, b, &b_fresh) : tl_grad(ctx, b);
    if (b_fresh) {
        memcpy(db, dz, (size_t)(N * C) * sizeof(float));
        db = NULL;
    }

    if (da) {
        terms += 1.0;
#pragma omp parallel for if (N * C > 32768) schedule(static)
        for (int64_t i = 0; i < N; i++) {
            const float *dzi = dz + i * C;
            float *dai = da + i * C;
            if (add) {
#pragma omp simd
                for (int64_t j = 0; j < C; j++)
                    dai[j] += dzi[j];
            } else if (kind == TL_BCAST_COL) {
                float s = y[i];
#pragma omp simd
                for (int64_t j = 0; j < C; j++)
                    dai[j] += dzi[j] * s;
            } else {
                const float *yi = kind == TL_BCAST_SAME ? y + i * C : y;
#pragma omp simd
                for (int64_t j = 0; j < C; j++)
                    dai[j] += dzi[j] * yi[j];
            }
        }
    }
    if (db) {
        terms += 1.0;
        if (kind == TL_BCAST_SAME) {
            if (add) {
#pragma omp parallel for simd if (N * C > 32768) schedule(static)
                for (int64_t k = 0; k < N * C; k++)
                    db[k] += dz[k];
            } else {
#pragma omp parallel for simd if (N * C > 32768) schedule(static)
                for (int64_t k = 0; k < N * C; k++)
                    db[k] += dz[k] * x[k];
            }
        } else if (kind == TL_BCAST_ROW) {
            /* Sum over rows; serial over rows keeps the order fixed. */
            for (int64_t i = 0; i < N; i++) {
                const float *dzi = dz + i * C, *xi = x + i * C;
                if (add) {
#pragma omp simd
                    for (int64_t j = 0; j < C; j++)
                        db[j] += dzi[j];
                } else {
#pragma omp simd
                    for (int64_t j = 0; j < C; j++)
                        db[j] += dzi[j] * xi[j];
                }
            }
        } else {
            for (int64_t i = 0; i < N; i++) {
                float s = 0.0f;
                for (int64_t j = 0; j < C; j++)
                    s += add ? dz[i * C + j] : dz[i * C + j] * x[i * C + j];
                db[i] += s;
            }
        }
    }
    tl_count_flops(ctx, node->op, (add ? 1.0 : 2.0) * (double)N * C * terms);
}

void tl_add_backward(tl_ctx *ctx, tl_node *node) { tl_binary_backward(ctx, node, true); }
void tl_mul_backward(tl_ctx *ctx, tl_node *node) { tl_binary_backward(ctx, node, false); }

tl_tensor *tl_scale(tl_ctx *ctx, tl_tensor *a, float s)
{
    if (!a || !tl_check_f32("scale", "a", a))
        return NULL;
    tl_tensor *out = tl_new_like(ctx, a);
    if (!out)
        return NULL;
    int64_t n = tl_numel(a);
    const float *x = tl_f32(a);
    float *z = tl_f32(out);
    for (int64_t i = 0; i < n; i++)
        z[i] = s * x[i];
    tl_count_flops(ctx, TL_OP_SCALE, (double)n);
    tl_node *node = tl_record(ctx, TL_OP_SCALE, out, 1, &a);
    if (node)
        node->floats[0] = s;
    return out;
}

void tl_scale_backward(tl_ctx *ctx, tl_node *node)
{
    float *da = tl_grad(ctx, node->in[0]);
    const float *dz = node->out->grad;
    float s = node->floats[0];
    int64_t n = tl_numel(node->out);
    for (int64_t i = 0; i < n; i++)
        da[i] += s * dz[i];
    tl_count_flops(ctx, TL_OP_SCALE, (double)n);
}

static tl_tensor *tl_reduce(tl_ctx *ctx, tl_op op, tl_tensor *a)
{
    if (!a || !tl_check_f32(tl_op_name(op), "a", a))
        return NULL;
    tl_tensor *out = tl_new1(ctx, 1);
    if (!out)
        return NULL;
    int64_t n = tl_numel(a);
    const float *x = tl_f32(a);
    double s = 0.0;
    for (int64_t i = 0; i < n; i++)
        s += x[i];
    if (op == TL_OP_MEAN && n > 0)
        s /= (double)n;
    tl_f32(out)[0] = (float)s;
    tl_count_flops(ctx, op, (double)n);
    tl_record(ctx, op, out, 1, &a);
    return out;
}

tl_tensor *tl_sum(tl_ctx *ctx, tl_tensor *a) { return tl_reduce(ctx, TL_OP_SUM, a); }
tl_tensor *tl_mean(tl_ctx *ctx, tl_tensor *a) { return tl_reduce(ctx, TL_OP_MEAN, a); }

static void tl_reduce_backward(tl_ctx *ctx, tl_node *node, bool mean)
{
    tl_tensor *a = node->in[0];
    float *da = tl_grad(ctx, a);
    int64_t n = tl_numel(a);
    float g = node->out->grad[0];
    if (mean && n > 0)
        g /= (float)n;
    for (int64_t i = 0; i < n; i++)
        da[i] += g;
    tl_count_flops(ctx, node->op, (double)n);
}

void tl_sum_backward(tl_ctx *ctx, tl_node *node) { tl_reduce_backward(ctx, node, false); }
void tl_mean_backward(tl_ctx *ctx, tl_node *node) { tl_reduce_backward(ctx, node, true); }
