/* Products of small matrices, for attention's per-head blocks (a few dozen
 * rows and columns). OpenBLAS's sgemm takes a buffer from its pool and packs
 * both operands on every call. These loops read the operands where they lie:
 * attention's forward plus backward on thinklab-bench-ops (one AVX2 thread)
 * went from 0.80 ms with sgemm to 0.59 ms with them. */
#ifndef THINKLAB_OPS_SMALLGEMM_H
#define THINKLAB_OPS_SMALLGEMM_H

#include <stdbool.h>
#include <stdint.h>

/* C (M,N) = alpha A B, or C += alpha A B when add is true, where A (M,K) has
 * element (r, k) at a[r * a_rs + k * a_ks] (a_rs = lda, a_ks = 1 for a
 * row-major A, a_rs = 1, a_ks = lda for a transposed one), B (K,N) is
 * row-major with leading dimension ldb and C with ldc. C must not overlap A
 * or B. Runs on the calling thread. */
void tl_small_gemm(int64_t M, int64_t N, int64_t K, float alpha, const float *a, int64_t a_rs,
                   int64_t a_ks, const float *b, int64_t ldb, bool add, float *c, int64_t ldc);

#endif
