/* Matrix norms from singular values (LAPACK sgesdd from OpenBLAS). */
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "thinklab/linalg.h"

/* LAPACK's Fortran interface with 32-bit integers (Debian's OpenBLAS is not
 * ILP64). The trailing size_t is the hidden length of the jobz string that
 * gfortran-compiled LAPACK expects. */
void sgesdd_(const char *jobz, const int *m, const int *n, float *a, const int *lda, float *s,
             float *u, const int *ldu, float *vt, const int *ldvt, float *work,
             const int *lwork, int *iwork, int *info, size_t jobz_len);

tl_status tl_matrix_norms(const float *a, int64_t rows, int64_t cols, double *nuclear,
                          double *frobenius, double *max_sv)
{
    if (!nuclear || !frobenius || !max_sv || (!a && rows > 0 && cols > 0))
        return tl_seterr(TL_EINVAL, "tl_matrix_norms: a and the three outputs are required");
    if (rows < 0 || cols < 0)
        return tl_seterr(TL_EINVAL, "tl_matrix_norms: shape (%lld, %lld) is negative",
                         (long long)rows, (long long)cols);
    *nuclear = *frobenius = *max_sv = 0.0;
    if (rows == 0 || cols == 0)
        return TL_OK;
    if (rows > INT_MAX || cols > INT_MAX || rows > INT_MAX / cols)
        return tl_seterr(TL_EINVAL, "tl_matrix_norms: shape (%lld, %lld) exceeds LAPACK's "
                                    "32-bit sizes; split the matrix",
                         (long long)rows, (long long)cols);

    int64_t numel = rows * cols;
    double sum_sq = 0.0;
    for (int64_t i = 0; i < numel; i++) {
        if (!isfinite(a[i]))
            return tl_seterr(TL_ENUMERIC, "tl_matrix_norms: entry %lld of the (%lld, %lld) "
                                          "matrix is %g; norms need finite entries",
                             (long long)i, (long long)rows, (long long)cols, (double)a[i]);
        sum_sq += (double)a[i] * (double)a[i];
    }

    /* The row-major (rows, cols) matrix is the column-major (cols, rows)
     * matrix a^T, which has the same singular values. */
    int m = (int)cols, n = (int)rows, lda = m, ldu = 1, ldvt = 1, info = 0;
    int k = m < n ? m : n;
    float *copy = malloc((size_t)numel * sizeof *copy);
    float *s = malloc((size_t)k * sizeof *s);
    int *iwork = malloc((size_t)8 * (size_t)k * sizeof *iwork);
    float *work = NULL, query = 0.0f, unused = 0.0f;
    tl_status st = TL_OK;
    if (!copy || !s || !iwork) {
        st = tl_seterr(TL_ENOMEM, "tl_matrix_norms: could not allocate workspace for a "
                                  "(%lld, %lld) matrix", (long long)rows, (long long)cols);
        goto done;
    }
    memcpy(copy, a, (size_t)numel * sizeof *copy);

    int lwork = -1;
    sgesdd_("N", &m, &n, copy, &lda, s, &unused, &ldu, &unused, &ldvt, &query, &lwork, iwork,
            &info, 1);
    if (info != 0) {
        st = tl_seterr(TL_EINVAL, "tl_matrix_norms: sgesdd workspace query returned info %d",
                       info);
        goto done;
    }
    lwork = (int)query + 1;
    work = malloc((size_t)lwork * sizeof *work);
    if (!work) {
        st = tl_seterr(TL_ENOMEM, "tl_matrix_norms: could not allocate %d floats of LAPACK "
                                  "workspace", lwork);
        goto done;
    }
    sgesdd_("N", &m, &n, copy, &lda, s, &unused, &ldu, &unused, &ldvt, work, &lwork, iwork,
            &info, 1);
    if (info != 0) {
        st = tl_seterr(TL_ENUMERIC, "tl_matrix_norms: sgesdd did not converge on the "
                                    "(%lld, %lld) matrix (info %d)",
                       (long long)rows, (long long)cols, info);
        goto done;
    }

    /* sgesdd returns the singular values in descending order. */
    double total = 0.0;
    for (int i = 0; i < k; i++)
        total += s[i];
    *nuclear = total;
    *frobenius = sqrt(sum_sq);
    *max_sv = s[0];

done:
    free(copy);
    free(s);
    free(iwork);
    free(work);
    return st;
}
