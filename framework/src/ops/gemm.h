/* Single-thread matrix products on an in-tree AVX2 kernel, for the CPUs on
 * which it was measured faster than OpenBLAS's sgemm (see gemm.c). */
#ifndef THINKLAB_OPS_GEMM_H
#define THINKLAB_OPS_GEMM_H

#include <stdbool.h>
#include <stdint.h>

#include "thinklab/status.h"

/* Which code runs the products that matmul hands to one thread. */
typedef enum tl_gemm_kind {
    TL_GEMM_OPENBLAS, /* cblas_sgemm */
    TL_GEMM_AVX2,     /* the kernel in gemm.c */
} tl_gemm_kind;

/* Sets *kind for this process: TL_GEMM_AVX2 on CPUs with AVX2 and FMA but
 * without AVX-512, unless THINKLAB_GEMM=openblas, and TL_GEMM_OPENBLAS
 * otherwise. Reads THINKLAB_GEMM once, and unset or empty means "auto".
 * Returns TL_EINVAL with a message naming the value for any value other
 * than "auto" and "openblas". */
tl_status tl_gemm_kind_get(tl_gemm_kind *kind);

/* Returns whether THINKLAB_GEMM is unset or valid. Sets no error message. */
bool tl_gemm_setting_valid(void);

/* Computes C (M,N) = op(A) op(B), or C += op(A) op(B) when add is true, all
 * row-major. A is stored (K,M) when ta, else (M,K), with leading dimension
 * lda. B is stored (N,K) when tb, else (K,N), with ldb, and C has ldc. C
 * overlaps neither operand. Runs on the calling thread.
 * Returns false, with C untouched, when the kernel cannot run here: no AVX2,
 * no memory for the packing buffers, or a dimension below 1. The caller
 * then uses sgemm. */
bool tl_gemm_avx2(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float *a, int64_t lda,
                  const float *b, int64_t ldb, bool add, float *c, int64_t ldc);

#endif
