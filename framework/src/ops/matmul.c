/* Matrix products: 2-D, batched and linear, through OpenBLAS sgemm or the
 * in-tree kernel of gemm.c. */
#include <cblas.h>
#include <limits.h>
#include <omp.h>
#include <string.h>

#include "../internal.h"
#include "gemm.h"

/* One product C = op(A) op(B) repeated over `batch` matrices: op(A) is (M,K),
 * op(B) is (K,N) and C is (M,N). A is stored (K,M) when ta, else (M,K), and B
 * is stored (N,K) when tb, else (K,N). The linear case folds a's leading dims
 * into M, so a 2-D b always means batch = 1. */
typedef struct tl_gemm_shape {
    int64_t batch, M, K, N;
    bool ta, tb;
} tl_gemm_shape;

static CBLAS_TRANSPOSE tl_trans(bool t) { return t ? CblasTrans : CblasNoTrans; }

/* Returns whether the in-tree kernel takes a product: only on one thread
 * (inside a shard, or with one OpenMP thread), since OpenBLAS splits a
 * product over the threads itself, and only where it was measured faster. On the
 * AVX2 host of framework/bench/BENCHMARKS.md, one thread, with the other
 * core busy: 82 to 93 against 79 to 88 GFLOP/s for op(X) = X with 384 rows
 * and K of 128 or 512, and 74 to 84 against 83 to 88 with X transposed (the
 * weight gradients). With the other core idle: the same speed at 256 rows,
 * slower below that, where packing B weighs more, and 1 to 4% slower from
 * K = 1000 on. */
static bool tl_mm_in_tree(tl_gemm_kind kind, bool tx, int64_t m, int64_t k)
{
    /* omp_get_max_threads, not tl_threads_get, which would apply the
     * default thread setting to a process that has set none. */
    return kind == TL_GEMM_AVX2 && !tx && m >= 256 && k <= 512 &&
           (omp_in_parallel() || omp_get_max_threads() == 1);
}

/* Row-major C (m,n) = op(X) op(Y), or += when add, with leading dimensions
 * that are the stored row lengths. */
static void tl_mm(tl_gemm_kind kind, bool tx, bool ty, int64_t m, int64_t n, int64_t k,
                  const float *x, int64_t ldx, const float *y, int64_t ldy, bool add, float *c,
                  int64_t ldc)
{
    if (tl_mm_in_tree(kind, tx, m, k) && tl_gemm_avx2(tx, ty, m, n, k, x, ldx, y, ldy, add, c, ldc))
        return;
    /* Zeroed here and accumulated with beta = 1, because OpenBLAS's own
     * beta = 0 pass is slower than memset. In a loop of sgemm calls of the
     * GPT-2 bench's shapes (one AVX2 thread, 384 rows, K = 128), a product
     * took 0.160 ms with beta = 0 and 0.145 ms this way. */
    if (!add)
        for (int64_t i = 0; i < m; i++)
            memset(c + i * ldc, 0, (size_t)n * sizeof(float));
    cblas_sgemm(CblasRowMajor, tl_trans(tx), tl_trans(ty), (blasint)m, (blasint)n, (blasint)k,
                1.0f, x, (blasint)ldx, y, (blasint)ldy, 1.0f, c, (blasint)ldc);
}

/* Works out the product's shape, or sets a message naming the mismatch. */
static bool tl_matmul_shape(const tl_tensor *a, const tl_tensor *b, bool ta, bool tb,
                            tl_gemm_shape *s, int *out_ndim, int64_t *out_shape)
{
    char sa[96], sb[96];
    tl_shape_str(a, sa, sizeof sa);
    tl_shape_str(b, sb, sizeof sb);
    if (b->ndim < 2) {
        tl_seterr(TL_ESHAPE, "matmul: b %s must have at least 2 dimensions", sb);
        return false;
    }
    int64_t Kb = tb ? b->shape[b->ndim - 1] : b->shape[b->ndim - 2];
    int64_t N = tb ? b->shape[b->ndim - 2] : b->shape[b->ndim - 1];
    s->ta = ta;
    s->tb = tb;
    s->N = N;

    if (b->ndim == 2 && a->ndim != 2) {
        /* Linear: a (..., K) flattened to (rows, K). */
        if (ta) {
            tl_seterr(TL_ESHAPE, "matmul: a %s is not 2-D, so it cannot be transposed; "
                                 "transpose is supported for 2-D and batched products only", sa);
            return false;
        }
        s->batch = 1;
        s->M = tl_rows_of(a);
        s->K = tl_cols(a);
        *out_ndim = a->ndim;
        memcpy(out_shape, a->shape, sizeof a->shape[0] * (size_t)a->ndim);
        out_shape[a->ndim - 1] = N;
    } else if (a->ndim == b->ndim) {
        /* 2-D, or batched over equal leading dims. */
        s->batch = 1;
        for (int i = 0; i + 2 < a->ndim; i++) {
            if (a->shape[i] != b->shape[i]) {
                tl_seterr(TL_ESHAPE, "matmul: leading dimension %d differs between a %s and b %s; "
                                     "batched products need equal leading dims", i, sa, sb);
                return false;
            }
            s->batch *= a->shape[i];
        }
        s->M = ta ? a->shape[a->ndim - 1] : a->shape[a->ndim - 2];
        s->K = ta ? a->shape[a->ndim - 2] : a->shape[a->ndim - 1];
        *out_ndim = a->ndim;
        memcpy(out_shape, a->shape, sizeof a->shape[0] * (size_t)a->ndim);
        out_shape[a->ndim - 2] = s->M;
        out_shape[a->ndim - 1] = N;
    } else {
        tl_seterr(TL_ESHAPE, "matmul: a %s and b %s have different ranks; b must be 2-D or have "
                             "a's rank", sa, sb);
        return false;
    }

    if (s->K != Kb) {
        tl_seterr(TL_ESHAPE, "matmul: inner dimensions differ: a %s%s gives K = %lld, b %s%s "
                             "gives K = %lld", sa, ta ? " transposed" : "", (long long)s->K,
                  sb, tb ? " transposed" : "", (long long)Kb);
        return false;
    }
    if (s->M > INT_MAX || s->N > INT_MAX || s->K > INT_MAX) {
        tl_seterr(TL_ESHAPE, "matmul: a %s or b %s has a matrix dimension above %d, the limit "
                             "of 32-bit BLAS indices", sa, sb, INT_MAX);
        return false;
    }
    return true;
}

tl_tensor *tl_matmul(tl_ctx *ctx, tl_tensor *a, tl_tensor *b, bool ta, bool tb)
{
    if (TL_ANY_NULL2(a, b))
        return NULL;
    if (!tl_check_f32("matmul", "a", a) || !tl_check_f32("matmul", "b", b))
        return NULL;
    tl_gemm_shape s;
    int ndim;
    int64_t shape[TL_MAX_DIMS];
    if (!tl_matmul_shape(a, b, ta, tb, &s, &ndim, shape))
        return NULL;
    tl_gemm_kind kind;
    if (tl_gemm_kind_get(&kind) != TL_OK)
        return NULL;
    tl_tensor *out = tl_new(ctx, TL_F32, ndim, shape);
    if (!out)
        return NULL;

    float *c = tl_f32(out);
    const float *x = tl_f32(a), *y = tl_f32(b);
    int64_t M = s.M, K = s.K, N = s.N;
    if (K == 0)
        memset(c, 0, (size_t)tl_numel(out) * sizeof(float));
    else if (M > 0 && N > 0)
        for (int64_t i = 0; i < s.batch; i++)
            tl_mm(kind, ta, tb, M, N, K, x + i * M * K, ta ? M : K, y + i * K * N, tb ? K : N,
                  false, c + i * M * N, N);
    tl_count_flops(ctx, TL_OP_MATMUL, 2.0 * (double)s.batch * M * N * K);

    tl_node *node = tl_record(ctx, TL_OP_MATMUL, out, 2, (tl_tensor *[]){a, b});
    if (node) {
        node->ints[0] = s.batch;
        node->ints[1] = M;
        node->ints[2] = K;
        node->ints[3] = N;
        node->ints[4] = ta;
        node->ints[5] = tb;
    }
    return out;
}

/* With dC (M,N): d op(A) = dC op(B)^T and d op(B) = op(A)^T dC. A transposed
 * operand receives the transpose of that, computed directly. The products
 * add to the gradients already accumulated, except into a new dA buffer. */
void tl_matmul_backward(tl_ctx *ctx, tl_node *node)
{
    tl_tensor *a = node->in[0], *b = node->in[1];
    int64_t batch = node->ints[0], M = node->ints[1], K = node->ints[2], N = node->ints[3];
    bool ta = node->ints[4], tb = node->ints[5];
    const float *dc = node->out->grad, *x = tl_f32(a), *y = tl_f32(b);
    int64_t lda = ta ? M : K, ldb = tb ? K : N;
    if (M == 0 || N == 0 || K == 0) {
        tl_grad(ctx, a);
        tl_grad(ctx, b);
        return;
    }
    /* A new buffer for dA is written, not zeroed and added to. When b is a,
     * db is that buffer too, and each batch's dB adds to its dA below. */
    bool da_new;
    float *da = tl_grad_dst(ctx, a, &da_new), *db = tl_grad(ctx, b);
    tl_gemm_kind kind = TL_GEMM_OPENBLAS; /* the forward already reported a bad setting */
    (void)tl_gemm_kind_get(&kind);

    for (int64_t i = 0; i < batch; i++) {
        const float *dci = dc + i * M * N, *xi = x + i * M * K;
        const float *yi = y + i * K * N;
        if (da) {
            float *dai = da + i * M * K;
            if (!ta) /* dA (M,K) += dC op(B)^T */
                tl_mm(kind, false, !tb, M, K, N, dci, N, yi, ldb, !da_new, dai, lda);
            else /* dA (K,M) += op(B) dC^T */
                tl_mm(kind, tb, true, K, M, N, yi, ldb, dci, N, !da_new, dai, lda);
        }
        if (db) {
            float *dbi = db + i * K * N;
            if (!tb) /* dB (K,N) += op(A)^T dC */
                tl_mm(kind, !ta, false, K, N, M, xi, lda, dci, N, true, dbi, ldb);
            else /* dB (N,K) += dC^T op(A) */
                tl_mm(kind, true, ta, N, K, M, dci, N, xi, lda, true, dbi, ldb);
        }
    }
    tl_count_flops(ctx, TL_OP_MATMUL,
                   2.0 * (double)batch * M * N * K * ((da != NULL) + (db != NULL)));
}

tl_tensor *tl_linear(tl_ctx *ctx, tl_tensor *x, tl_tensor *w)
{
    if (TL_ANY_NULL2(x, w))
        return NULL;
    if (w->ndim != 2) {
        char sw[96];
        tl_seterr(TL_ESHAPE, "linear: weight %s must be 2-D (N, K)", tl_shape_str(w, sw, sizeof sw));
        return NULL;
    }
    return tl_matmul(ctx, x, w, false, true);
}
