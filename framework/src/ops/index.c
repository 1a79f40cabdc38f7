/* Row indexing: embedding lookup, gather of rows and scatter-add of rows. */
#include <string.h>

#include "../internal.h"

/* Columns per block when accumulating rows in parallel: each thread owns whole
 * column blocks of the destination, so repeated indices never race and every
 * element sums its contributions in index order. */
enum { TL_ROW_BLOCK = 64 };

/* dst (R, C) rows idx[m] += src (M, C) rows m, skipping idx -1. */
static void tl_rows_accumulate(float *dst, const int32_t *idx, const float *src, int64_t M,
                               int64_t C)
{
    int64_t n_blocks = (C + TL_ROW_BLOCK - 1) / TL_ROW_BLOCK;
#pragma omp parallel for if (M * C > 32768 && n_blocks > 1) schedule(static)
    for (int64_t blk = 0; blk < n_blocks; blk++) {
        int64_t j0 = blk * TL_ROW_BLOCK;
        int64_t j1 = j0 + TL_ROW_BLOCK < C ? j0 + TL_ROW_BLOCK : C;
        for (int64_t m = 0; m < M; m++) {
            if (idx[m] < 0)
                continue;
            float *d = dst + (int64_t)idx[m] * C;
            const float *s = src + m * C;
            for (int64_t j = j0; j < j1; j++)
                d[j] += s[j];
        }
    }
}

/* dst (M, C) rows m += src (R, C) rows idx[m], skipping idx -1. */
static void tl_rows_gather_add(float *dst, const int32_t *idx, const float *src, int64_t M,
                               int64_t C)
{
#pragma omp parallel for if (M * C > 32768) schedule(static)
    for (int64_t m = 0; m < M; m++) {
        if (idx[m] < 0)
            continue;
        const float *s = src + (int64_t)idx[m] * C;
        float *d = dst + m * C;
        for (int64_t j = 0; j < C; j++)
            d[j] += s[j];
    }
}

/* Returns false with a message naming the first index outside [lo, R). */
static bool tl_check_indices(const char *op, const char *arg, const int32_t *idx, int64_t M,
                             int32_t lo, int64_t R, const char *rows)
{
    for (int64_t m = 0; m < M; m++) {
        if (idx[m] < lo || idx[m] >= R) {
            tl_seterr(TL_EINVAL, "%s: %s[%lld] = %d is outside [%d, %lld), the valid range for "
                                 "%s = %lld", op, arg, (long long)m, (int)idx[m], (int)lo,
                      (long long)R, rows, (long long)R);
            return false;
        }
    }
    return true;
}

static bool tl_check_rank(const char *op, const char *arg, const tl_tensor *t, int ndim,
                          const char *layout)
{
    if (t->ndim == ndim)
        return true;
    char st[96];
    tl_seterr(TL_ESHAPE, "%s: %s %s must be %d-D %s", op, arg, tl_shape_str(t, st, sizeof st),
              ndim, layout);
    return false;
}

/* ---- embedding --------------------------------------------------------------- */

tl_tensor *tl_embedding(tl_ctx *ctx, tl_tensor *w, tl_tensor *ids)
{
    if (TL_ANY_NULL2(w, ids))
        return NULL;
    if (!tl_check_f32("embedding", "w", w) || !tl_check_i32("embedding", "ids", ids) ||
        !tl_check_rank("embedding", "w", w, 2, "(V, C)"))
        return NULL;
    if (ids->ndim >= TL_MAX_DIMS) {
        char si[96];
        tl_seterr(TL_ESHAPE, "embedding: ids %s has %d dimensions; at most %d fit, because the "
                             "output adds one", tl_shape_str(ids, si, sizeof si), ids->ndim,
                  TL_MAX_DIMS - 1);
        return NULL;
    }
    int64_t V = w->shape[0], C = w->shape[1], N = tl_numel(ids);
    const int32_t *id = tl_i32(ids);
    if (!tl_check_indices("embedding", "ids", id, N, 0, V, "V"))
        return NULL;

    int64_t shape[TL_MAX_DIMS];
    memcpy(shape, ids->shape, sizeof shape[0] * (size_t)ids->ndim);
    shape[ids->ndim] = C;
    tl_tensor *out = tl_new(ctx, TL_F32, ids->ndim + 1, shape);
    if (!out)
        return NULL;
    const float *x = tl_f32(w);
    float *y = tl_f32(out);
#pragma omp parallel for if (N * C > 32768) schedule(static)
    for (int64_t n = 0; n < N; n++)
        memcpy(y + n * C, x + (int64_t)id[n] * C, (size_t)C * sizeof(float));
    /* A copy performs no arithmetic, so no FLOPs are counted. */
    tl_record(ctx, TL_OP_EMBEDDING, out, 2, (tl_tensor *[]){w, ids});
    return out;
}

void tl_embedding_backward(tl_ctx *ctx, tl_node *node)
{
    tl_tensor *w = node->in[0], *ids = node->in[1];
    float *dw = tl_grad(ctx, w);
    if (!dw)
        return;
    int64_t N = tl_numel(ids), C = w->shape[1];
    tl_rows_accumulate(dw, tl_i32(ids), node->out->grad, N, C);
    tl_count_flops(ctx, TL_OP_EMBEDDING, (double)N * C);
}

/* ---- gather_rows --------------------------------------------------------------- */

tl_tensor *tl_gather_rows(tl_ctx *ctx, tl_tensor *x, tl_tensor *idx)
{
    if (TL_ANY_NULL2(x, idx))
        return NULL;
    if (!tl_check_f32("gather_rows", "x", x) || !tl_check_i32("gather_rows", "idx", idx) ||
        !tl_check_rank("gather_rows", "x", x, 2, "(N, C)") ||
        !tl_check_rank("gather_rows", "idx", idx, 1, "(M)"))
        return NULL;
    int64_t N = x->shape[0], C = x->shape[1], M = idx->shape[0];
    const int32_t *id = tl_i32(idx);
    if (!tl_check_indices("gather_rows", "idx", id, M, -1, N, "N"))
        return NULL;

    tl_tensor *out = tl_new2(ctx, M, C);
    if (!out)
        return NULL;
    const float *src = tl_f32(x);
    float *y = tl_f32(out);
#pragma omp parallel for if (M * C > 32768) schedule(static)
    for (int64_t m = 0; m < M; m++) {
        if (id[m] < 0)
            memset(y + m * C, 0, (size_t)C * sizeof(float));
        else
            memcpy(y + m * C, src + (int64_t)id[m] * C, (size_t)C * sizeof(float));
    }
    tl_record(ctx, TL_OP_GATHER_ROWS, out, 2, (tl_tensor *[]){x, idx});
    return out;
}

void tl_gather_rows_backward(tl_ctx *ctx, tl_node *node)
{
    tl_tensor *x = node->in[0], *idx = node->in[1];
    float *dx = tl_grad(ctx, x);
    if (!dx)
        return;
    int64_t M = idx->shape[0], C = x->shape[1];
    tl_rows_accumulate(dx, tl_i32(idx), node->out->grad, M, C);
    tl_count_flops(ctx, TL_OP_GATHER_ROWS, (double)M * C);
}

/* ---- scatter_add_rows ------------------------------------------------------------ */

tl_tensor *tl_scatter_add_rows(tl_ctx *ctx, tl_tensor *base, tl_tensor *idx, tl_tensor *src)
{
    if (TL_ANY_NULL3(base, idx, src))
        return NULL;
    const char *op = "scatter_add_rows";
    if (!tl_check_f32(op, "base", base) || !tl_check_i32(op, "idx", idx) ||
        !tl_check_f32(op, "src", src) || !tl_check_rank(op, "base", base, 2, "(N, C)") ||
        !tl_check_rank(op, "idx", idx, 1, "(M)") || !tl_check_rank(op, "src", src, 2, "(M, C)"))
        return NULL;
    int64_t N = base->shape[0], C = base->shape[1], M = idx->shape[0];
    if (src->shape[0] != M || src->shape[1] != C) {
        char sb[96], si[96], ss[96];
        tl_seterr(TL_ESHAPE, "%s: src %s must be (%lld, %lld) to match idx %s and base %s", op,
                  tl_shape_str(src, ss, sizeof ss), (long long)M, (long long)C,
                  tl_shape_str(idx, si, sizeof si), tl_shape_str(base, sb, sizeof sb));
        return NULL;
    }
    const int32_t *id = tl_i32(idx);
    if (!tl_check_indices(op, "idx", id, M, -1, N, "N"))
        return NULL;

    tl_tensor *out = tl_new_like(ctx, base);
    if (!out)
        return NULL;
    memcpy(out->data, base->data, (size_t)(N * C) * sizeof(float));
    tl_rows_accumulate(tl_f32(out), id, tl_f32(src), M, C);
    tl_count_flops(ctx, TL_OP_SCATTER_ADD_ROWS, (double)M * C);
    tl_record(ctx, TL_OP_SCATTER_ADD_ROWS, out, 3, (tl_tensor *[]){base, idx, src});
    return out;
}

void tl_scatter_add_rows_backward(tl_ctx *ctx, tl_node *node)
{
    tl_tensor *base = node->in[0], *idx = node->in[1], *src = node->in[2];
    const float *dout = node->out->grad;
    float *dbase = tl_grad(ctx, base), *dsrc = tl_grad(ctx, src);
    int64_t NC = tl_numel(base), M = idx->shape[0], C = base->shape[1];
    if (dbase) {
#pragma omp parallel for if (NC > 32768) schedule(static)
        for (int64_t k = 0; k < NC; k++)
            dbase[k] += dout[k];
    }
    if (dsrc)
        tl_rows_gather_add(dsrc, tl_i32(idx), dout, M, C);
    tl_count_flops(ctx, TL_OP_SCATTER_ADD_ROWS,
                   (dbase ? (double)NC : 0.0) + (dsrc ? (double)M * C : 0.0));
}
