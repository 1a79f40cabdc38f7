/* Losses: cross-entropy over a vocabulary and binary cross-entropy with logits.
 * Both return a scalar (1) mean; per-row terms are summed in a fixed order so
 * the result does not depend on the thread count. */
#include <math.h>
#include <string.h>

#include "../internal.h"
#include "vmath.h"

/* Below this many logits the loss loops run on one thread. */
enum { TL_LOSS_PARALLEL_WORK = 1 << 15 };

/* ---- cross-entropy ---------------------------------------------------------- */

static bool tl_ce_check(const tl_tensor *logits, const tl_tensor *targets, const tl_tensor *mask)
{
    char sl[96], st[96], sm[96];
    if (!tl_check_f32("cross_entropy", "logits", logits) ||
        !tl_check_i32("cross_entropy", "targets", targets) ||
        (mask && !tl_check_f32("cross_entropy", "mask", mask)))
        return false;
    int64_t N = tl_rows_of(logits);
    if (logits->ndim < 2 || tl_numel(targets) != N) {
        tl_seterr(TL_ESHAPE, "cross_entropy: logits %s and targets %s do not fit; expected "
                             "logits (N, V) and targets (N)", tl_shape_str(logits, sl, sizeof sl),
                  tl_shape_str(targets, st, sizeof st));
        return false;
    }
    if (mask && tl_numel(mask) != N) {
        tl_seterr(TL_ESHAPE, "cross_entropy: mask %s does not fit logits %s; expected (N) with "
                             "N = %lld", tl_shape_str(mask, sm, sizeof sm),
                  tl_shape_str(logits, sl, sizeof sl), (long long)N);
        return false;
    }
    /* Targets of masked rows are never read, so padding may carry any id. */
    int64_t V = tl_cols(logits);
    const int32_t *t = tl_i32(targets);
    for (int64_t i = 0; i < N; i++) {
        if (mask && tl_f32(mask)[i] == 0.0f)
            continue;
        if (t[i] < 0 || t[i] >= V) {
            tl_seterr(TL_EINVAL, "cross_entropy: targets[%lld] = %d is outside [0, V) with V = "
                                 "%lld; check the tokenizer's vocabulary size", (long long)i, t[i],
                      (long long)V);
            return false;
        }
    }
    return true;
}

/* Log-sum-exp of one row of V logits, with the maximum and the sum of exp in
 * 16 lanes (tl_vmax, tl_vlanes_sum) so that the loops vectorise. A NaN logit
 * is skipped by the maximum, but its exp is NaN, and so is the result. */
TL_MULTIVERSION
static float tl_ce_lse_row(const float *x, int64_t V)
{
    float max = tl_vmax(x, V);
    float lane[TL_VLANES] = {0};
    int64_t groups = V / TL_VLANES * TL_VLANES;
    for (int64_t j0 = 0; j0 < groups; j0 += TL_VLANES)
        for (int l = 0; l < TL_VLANES; l++)
            lane[l] += tl_vexpf(x[j0 + l] - max);
    for (int64_t j = groups; j < V; j++)
        lane[j - groups] += tl_vexpf(x[j] - max);
    return max + logf(tl_vlanes_sum(lane));
}

/* dx[c] += g * exp(x[c] - lse) over one row of V logits. */
TL_MULTIVERSION
static void tl_ce_backward_row(float *restrict dx, const float *restrict x, float lse, float g,
                               int64_t V)
{
#pragma omp simd
    for (int64_t c = 0; c < V; c++)
        dx[c] += g * tl_vexpf(x[c] - lse);
}

/* Logits (N,V), leading dims flattened, int32 targets (N), optional float
 * mask (N). Saves the log-sum-exp of every row for backward. */
tl_tensor *tl_cross_entropy(tl_ctx *ctx, tl_tensor *logits, tl_tensor *targets,
                            tl_tensor *mask, tl_tensor **per_row)
{
    if (per_row)
        *per_row = NULL;
    if (TL_ANY_NULL2(logits, targets))
        return NULL;
    if (!tl_ce_check(logits, targets, mask))
        return NULL;
    int64_t N = tl_rows_of(logits), V = tl_cols(logits);
    tl_tensor *out = tl_new1(ctx, 1);
    tl_tensor *rows = tl_new1(ctx, N);
    float *lse = tl_ctx_alloc(ctx, (size_t)N * sizeof(float));
    if (!out || !rows || !lse)
        return NULL;

    const float *x = tl_f32(logits), *m = mask ? tl_f32(mask) : NULL;
    const int32_t *t = tl_i32(targets);
    float *loss = tl_f32(rows);
#pragma omp parallel for if (N * V > TL_LOSS_PARALLEL_WORK) schedule(static)
    for (int64_t i = 0; i < N; i++) {
        const float *xi = x + i * V;
        if (m && m[i] == 0.0f) {
            loss[i] = 0.0f;
            lse[i] = 0.0f;
            continue;
        }
        lse[i] = tl_ce_lse_row(xi, V);
        loss[i] = lse[i] - xi[t[i]];
    }

    int64_t counted = 0;
    double total = 0.0;
    for (int64_t i = 0; i < N; i++) {
        if (m && m[i] == 0.0f)
            continue;
        counted++;
        total += loss[i];
    }
    /* With every row masked the mean has no rows: the loss is 0 and backward
     * adds zero gradient, rather than the NaN of 0/0. */
    tl_f32(out)[0] = counted ? (float)(total / (double)counted) : 0.0f;
    if (per_row)
        *per_row = rows;

    /* max, subtract, exp and sum per logit, counted over the rows in the mean. */
    tl_count_flops(ctx, TL_OP_CROSS_ENTROPY, 4.0 * (double)counted * (double)V);
    tl_node *node = tl_record(ctx, TL_OP_CROSS_ENTROPY, out, 1, &logits);
    if (node) {
        node->saved[0] = lse;
        node->saved[1] = tl_i32(targets);
        node->saved[2] = m ? (void *)tl_f32(mask) : NULL;
        node->ints[0] = counted;
    }
    return out;
}

/* dlogits[i] = g / counted * (softmax(logits[i]) - onehot(target[i])) for
 * every counted row; masked rows get nothing. */
void tl_cross_entropy_backward(tl_ctx *ctx, tl_node *node)
{
    tl_tensor *logits = node->in[0];
    int64_t N = tl_rows_of(logits), V = tl_cols(logits), counted = node->ints[0];
    const float *lse = node->saved[0], *m = node->saved[2];
    const int32_t *t = node->saved[1];
    float *dx = tl_grad(ctx, logits);
    if (!dx || counted == 0)
        return;
    const float *x = tl_f32(logits);
    float g = node->out->grad[0] / (float)counted;
#pragma omp parallel for if (N * V > TL_LOSS_PARALLEL_WORK) schedule(static)
    for (int64_t i = 0; i < N; i++) {
        if (m && m[i] == 0.0f)
            continue;
        float *dxi = dx + i * V;
        tl_ce_backward_row(dxi, x + i * V, lse[i], g, V);
        dxi[t[i]] -= g;
    }
    tl_count_flops(ctx, TL_OP_CROSS_ENTROPY, 4.0 * (double)counted * (double)V);
}

/* ---- binary cross-entropy with logits -------------------------------------- */

/* Logits and labels of one shape (N). Per element the loss is
 * max(x,0) - x*y + log(1 + exp(-|x|)), which never overflows. */
tl_tensor *tl_bce_logits(tl_ctx *ctx, tl_tensor *logits, tl_tensor *labels)
{
    if (TL_ANY_NULL2(logits, labels))
        return NULL;
    if (!tl_check_f32("bce_logits", "logits", logits) || !tl_check_f32("bce_logits", "labels", labels))
        return NULL;
    if (tl_numel(logits) != tl_numel(labels)) {
        char sx[96], sy[96];
        tl_seterr(TL_ESHAPE, "bce_logits: logits %s and labels %s differ in size; pass one label "
                             "per logit", tl_shape_str(logits, sx, sizeof sx),
                  tl_shape_str(labels, sy, sizeof sy));
        return NULL;
    }
    int64_t n = tl_numel(logits);
    const float *x = tl_f32(logits), *y = tl_f32(labels);
    for (int64_t i = 0; i < n; i++) {
        if (!(y[i] >= 0.0f && y[i] <= 1.0f)) {
            tl_seterr(TL_EINVAL, "bce_logits: labels[%lld] = %g is outside [0, 1]", (long long)i,
                      (double)y[i]);
            return NULL;
        }
    }
    tl_tensor *out = tl_new1(ctx, 1);
    if (!out)
        return NULL;
    double total = 0.0;
    for (int64_t i = 0; i < n; i++)
        total += fmaxf(x[i], 0.0f) - x[i] * y[i] + log1pf(expf(-fabsf(x[i])));
    /* An empty input has no mean: its loss is 0, as for an all-masked cross-entropy. */
    tl_f32(out)[0] = n ? (float)(total / (double)n) : 0.0f;

    /* max, multiply, subtract, abs, exp, log1p and add per element. */
    tl_count_flops(ctx, TL_OP_BCE_LOGITS, 7.0 * (double)n);
    tl_node *node = tl_record(ctx, TL_OP_BCE_LOGITS, out, 1, &logits);
    if (node)
        node->saved[0] = (void *)y;
    return out;
}

/* dlogits = g / n * (sigmoid(x) - y); labels get no gradient. */
void tl_bce_logits_backward(tl_ctx *ctx, tl_node *node)
{
    tl_tensor *logits = node->in[0];
    int64_t n = tl_numel(logits);
    const float *x = tl_f32(logits), *y = node->saved[0];
    float *dx = tl_grad(ctx, logits);
    if (!dx || n == 0)
        return;
    float g = node->out->grad[0] / (float)n;
    for (int64_t i = 0; i < n; i++) {
        /* sigmoid(x) = 1/(1+exp(-x)), evaluated through exp(-|x|) <= 1. */
        float e = expf(-fabsf(x[i]));
        float sig = x[i] >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
        dx[i] += g * (sig - y[i]);
    }
    tl_count_flops(ctx, TL_OP_BCE_LOGITS, 6.0 * (double)n);
}
