/* Small matrix products on register tiles (see smallgemm.h).
 *
 * C is computed in tiles of TL_SG_MR rows by TL_SG_NR columns, whose
 * accumulators stay in vector registers for the whole sum over k. At each k
 * the tile loads its row of B once and one element of A per row, which gives
 * 64 multiply-adds for 20 loads. 4 x 16 floats take 8 AVX2 registers, which
 * leaves room for B's row and the broadcasts. */
#include "smallgemm.h"

#include <string.h>

#include "../internal.h"

enum { TL_SG_MR = 4, TL_SG_NR = 16 };

/* Eight floats as one value: GCC keeps such locals in vector registers (two
 * SSE registers on baseline x86-64), where an array of accumulators indexed
 * in loops would be loaded and stored at every k. */
typedef float tl_sg_v8 __attribute__((vector_size(32)));

/* The helpers take vectors by pointer, because passing or returning them by
 * value would depend on whether the caller's target has AVX. The helpers are
 * always inlined, so each target version of tl_small_gemm gets its own copy. */
__attribute__((always_inline)) static inline void tl_sg_store(float *p, const tl_sg_v8 *v,
                                                             float alpha, bool add)
{
    tl_sg_v8 out = *v * alpha;
    if (add) {
        tl_sg_v8 old;
        memcpy(&old, p, sizeof old);
        out += old;
    }
    memcpy(p, &out, sizeof out);
}

/* One full tile: C[0:4, 0:16] (+)= alpha sum_k A(r, k) B(k, 0:16), with
 * accumulator cRH for row R and half H of the columns. */
__attribute__((always_inline)) static inline void tl_sg_tile(int64_t K, float alpha, const float *a,
                                                            int64_t a_rs, int64_t a_ks,
                                                            const float *b, int64_t ldb, bool add,
                                                            float *c, int64_t ldc)
{
    tl_sg_v8 c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0};
    tl_sg_v8 c20 = {0}, c21 = {0}, c30 = {0}, c31 = {0};
    for (int64_t k = 0; k < K; k++) {
        const float *bk = b + k * ldb, *ak = a + k * a_ks;
        tl_sg_v8 b0, b1;
        memcpy(&b0, bk, sizeof b0);
        memcpy(&b1, bk + 8, sizeof b1);
        float a0 = ak[0], a1 = ak[a_rs], a2 = ak[2 * a_rs], a3 = ak[3 * a_rs];
        c00 += a0 * b0;
        c01 += a0 * b1;
        c10 += a1 * b0;
        c11 += a1 * b1;
        c20 += a2 * b0;
        c21 += a2 * b1;
        c30 += a3 * b0;
        c31 += a3 * b1;
    }
    tl_sg_store(c, &c00, alpha, add);
    tl_sg_store(c + 8, &c01, alpha, add);
    tl_sg_store(c + ldc, &c10, alpha, add);
    tl_sg_store(c + ldc + 8, &c11, alpha, add);
    tl_sg_store(c + 2 * ldc, &c20, alpha, add);
    tl_sg_store(c + 2 * ldc + 8, &c21, alpha, add);
    tl_sg_store(c + 3 * ldc, &c30, alpha, add);
    tl_sg_store(c + 3 * ldc + 8, &c31, alpha, add);
}

/* A partial tile at the bottom or right edge of C: mr <= MR rows, nr <= NR
 * columns. */
__attribute__((always_inline)) static inline void tl_sg_edge(int64_t K, int mr, int nr, float alpha,
                                                            const float *a, int64_t a_rs,
                                                            int64_t a_ks, const float *b,
                                                            int64_t ldb, bool add, float *c,
                                                            int64_t ldc)
{
    float acc[TL_SG_MR][TL_SG_NR] = {{0}};
    for (int64_t k = 0; k < K; k++) {
        const float *bk = b + k * ldb, *ak = a + k * a_ks;
        for (int r = 0; r < mr; r++) {
            float av = ak[r * a_rs];
            for (int l = 0; l < nr; l++)
                acc[r][l] += av * bk[l];
        }
    }
    for (int r = 0; r < mr; r++)
        for (int l = 0; l < nr; l++)
            c[r * ldc + l] = add ? c[r * ldc + l] + alpha * acc[r][l] : alpha * acc[r][l];
}

TL_MULTIVERSION
void tl_small_gemm(int64_t M, int64_t N, int64_t K, float alpha, const float *a, int64_t a_rs,
                   int64_t a_ks, const float *b, int64_t ldb, bool add, float *c, int64_t ldc)
{
    for (int64_t i = 0; i < M; i += TL_SG_MR) {
        int mr = M - i < TL_SG_MR ? (int)(M - i) : TL_SG_MR;
        const float *ai = a + i * a_rs;
        for (int64_t j = 0; j < N; j += TL_SG_NR) {
            int nr = N - j < TL_SG_NR ? (int)(N - j) : TL_SG_NR;
            if (mr == TL_SG_MR && nr == TL_SG_NR)
                tl_sg_tile(K, alpha, ai, a_rs, a_ks, b + j, ldb, add, c + i * ldc + j, ldc);
            else
                tl_sg_edge(K, mr, nr, alpha, ai, a_rs, a_ks, b + j, ldb, add, c + i * ldc + j,
                           ldc);
        }
    }
}
