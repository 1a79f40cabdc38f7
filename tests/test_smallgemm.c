/* The small-matrix product behind attention's per-head blocks, against a
 * double-precision reference: full register tiles, partial tiles at both
 * edges, row-major and transposed A, overwrite and accumulate, and strided
 * operands inside larger rows. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "gradcheck.h"
#include "ops/smallgemm.h"

static float uniform(unsigned *state)
{
    *state = *state * 1664525u + 1013904223u;
    return (float)(*state >> 8) / (float)(1u << 24) * 2.0f - 1.0f;
}

/* One product of shape (M,N,K) with A transposed or not, C with a leading
 * dimension wider than N, and accumulation into C when add is true. Returns
 * the largest error relative to sum_k |A| |B| (1 + |C0|), the scale of the
 * float rounding of each element. */
static double check_one(int M, int N, int K, bool trans_a, bool add, unsigned *seed)
{
    int lda = (trans_a ? M : K) + 3, ldb = N + 5, ldc = N + 2;
    int a_rows = trans_a ? K : M;
    float *a = malloc(sizeof(float) * (size_t)(a_rows * lda + 1));
    float *b = malloc(sizeof(float) * (size_t)(K * ldb + 1));
    float *c = malloc(sizeof(float) * (size_t)(M * ldc + 1));
    float *c0 = malloc(sizeof(float) * (size_t)(M * ldc + 1));
    for (int i = 0; i < a_rows * lda + 1; i++)
        a[i] = uniform(seed);
    for (int i = 0; i < K * ldb + 1; i++)
        b[i] = uniform(seed);
    for (int i = 0; i < M * ldc + 1; i++)
        c[i] = c0[i] = uniform(seed);
    float alpha = 0.75f;
    int64_t a_rs = trans_a ? 1 : lda, a_ks = trans_a ? lda : 1;
    tl_small_gemm(M, N, K, alpha, a, a_rs, a_ks, b, ldb, add, c, ldc);

    double worst = 0.0;
    for (int r = 0; r < M; r++) {
        for (int n = 0; n < ldc; n++) {
            float got = c[r * ldc + n];
            if (n >= N) { /* padding past N is left alone */
                CHECK_MSG(got == c0[r * ldc + n], "M %d N %d K %d: column %d written", M, N, K, n);
                continue;
            }
            double want = add ? c0[r * ldc + n] : 0.0, scale = 1.0 + fabs(want);
            for (int k = 0; k < K; k++) {
                double av = a[r * a_rs + k * a_ks], bv = b[k * ldb + n];
                want += alpha * av * bv;
                scale += fabs(alpha * av * bv);
            }
            worst = fmax(worst, fabs(got - want) / scale);
        }
    }
    CHECK_MSG(c[M * ldc] == c0[M * ldc], "M %d N %d K %d: wrote past C", M, N, K);
    free(a);
    free(b);
    free(c);
    free(c0);
    return worst;
}

int main(void)
{
    /* Rows around the 4-row tile, columns around the 16-column tile, and
     * the attention shapes (16 queries, 64 keys, D 32); K = 0 gives C = 0
     * (or C unchanged with add). */
    static const int Ms[] = {1, 3, 4, 5, 8, 16, 17};
    static const int Ns[] = {1, 7, 15, 16, 17, 32, 33, 64};
    static const int Ks[] = {0, 1, 5, 16, 32, 64};
    unsigned seed = 12345u;
    double worst = 0.0;
    int cases = 0;
    for (size_t i = 0; i < sizeof Ms / sizeof Ms[0]; i++)
        for (size_t j = 0; j < sizeof Ns / sizeof Ns[0]; j++)
            for (size_t k = 0; k < sizeof Ks / sizeof Ks[0]; k++)
                for (int mode = 0; mode < 4; mode++) {
                    double e = check_one(Ms[i], Ns[j], Ks[k], mode & 1, mode & 2, &seed);
                    /* Float sums of at most 64 terms: the error bound is
                     * about K * 2^-24 of the scale, 4e-6 at K = 64. */
                    CHECK_MSG(e < 1e-5, "M %d N %d K %d trans %d add %d: relative error %.3g",
                              Ms[i], Ns[j], Ks[k], mode & 1, (mode & 2) != 0, e);
                    worst = fmax(worst, e);
                    cases++;
                }
    printf("small gemm: %d shapes, largest relative error %.3g\n", cases, worst);
    return gc_finish("smallgemm");
}
