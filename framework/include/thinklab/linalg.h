/* Dense linear algebra helpers built on the LAPACK inside OpenBLAS. */
#ifndef THINKLAB_LINALG_H
#define THINKLAB_LINALG_H

#include <stdint.h>

#include "thinklab/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Computes the nuclear norm (sum of singular values), the Frobenius norm and
 * the largest singular value of the row-major (rows, cols) float32 matrix a.
 * The singular values come from LAPACK sgesdd without singular vectors, in
 * float32, and are summed in double; the Frobenius norm is summed in double
 * from the entries. An empty matrix gives three zeros. Fails with TL_ENUMERIC
 * on a non-finite entry and TL_EINVAL on sizes LAPACK's 32-bit integers cannot
 * hold. Calls OpenBLAS, so do not call it inside an OpenMP parallel region. */
tl_status tl_matrix_norms(const float *a, int64_t rows, int64_t cols, double *nuclear,
                          double *frobenius, double *max_sv);

#ifdef __cplusplus
}
#endif
#endif
