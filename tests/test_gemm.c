/* The in-tree AVX2 product (src/ops/gemm.c) against a double-precision
 * reference. The cases cut tiles at every edge, span several K and N blocks,
 * and cover every transpose combination, overwrite and accumulate, and
 * operands inside wider rows. A second call must give the same bits, and
 * matmul's gradients must match finite differences where it routes
 * products to the kernel. A bad THINKLAB_GEMM value runs in a process of its
 * own (ctest's test_gemm_bad_env), because the setting is read once, and
 * so does the check that a process without a thread setting keeps its
 * OpenMP thread count (test_gemm_one_thread). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "ops/gemm.h"

static float uniform(unsigned *state)
{
    *state = *state * 1664525u + 1013904223u;
    return (float)(*state >> 8) / (float)(1u << 24) * 2.0f - 1.0f;
}

/* One product with leading dimensions 3 to 5 wider than the rows. Returns
 * the largest error relative to sum_k |op(A)| |op(B)| + |C0| + 1, or -1 when
 * the kernel does not run on this CPU. Checks that the columns past N, the
 * float past C and a repeated call are as they must be. */
static double check_one(int M, int N, int K, bool ta, bool tb, bool add, unsigned *seed)
{
    int a_rows = ta ? K : M, a_cols = ta ? M : K, b_rows = tb ? N : K, b_cols = tb ? K : N;
    int lda = a_cols + 3, ldb = b_cols + 5, ldc = N + 4;
    size_t na = (size_t)a_rows * lda, nb = (size_t)b_rows * ldb, nc = (size_t)M * ldc + 1;
    float *a = malloc(na * sizeof *a), *b = malloc(nb * sizeof *b);
    float *c = malloc(nc * sizeof *c), *c0 = malloc(nc * sizeof *c0);
    float *again = malloc(nc * sizeof *again);
    for (size_t i = 0; i < na; i++)
        a[i] = uniform(seed);
    for (size_t i = 0; i < nb; i++)
        b[i] = uniform(seed);
    for (size_t i = 0; i < nc; i++)
        c[i] = c0[i] = again[i] = uniform(seed);

    double worst = -1.0;
    if (!tl_gemm_avx2(ta, tb, M, N, K, a, lda, b, ldb, add, c, ldc))
        goto done;
    CHECK(tl_gemm_avx2(ta, tb, M, N, K, a, lda, b, ldb, add, again, ldc));
    CHECK_MSG(memcmp(c, again, nc * sizeof *c) == 0, "M %d N %d K %d ta %d tb %d add %d: a "
              "second call gave other bits", M, N, K, ta, tb, add);
    worst = 0.0;
    for (int i = 0; i < M; i++) {
        for (int j = 0; j < ldc; j++) {
            float got = c[i * ldc + j];
            if (j >= N) {
                CHECK_MSG(got == c0[i * ldc + j], "M %d N %d K %d ta %d tb %d: column %d "
                          "written", M, N, K, ta, tb, j);
                continue;
            }
            double want = add ? c0[i * ldc + j] : 0.0, scale = 1.0 + fabs(want);
            for (int k = 0; k < K; k++) {
                double av = ta ? a[k * lda + i] : a[i * lda + k];
                double bv = tb ? b[j * ldb + k] : b[k * ldb + j];
                want += av * bv;
                scale += fabs(av * bv);
            }
            worst = fmax(worst, fabs(got - want) / scale);
        }
    }
    CHECK_MSG(c[nc - 1] == c0[nc - 1], "M %d N %d K %d: wrote past C", M, N, K);
done:
    free(a);
    free(b);
    free(c);
    free(c0);
    free(again);
    return worst;
}

/* Runs check_one over every transpose and add mode. Float sums of K terms
 * stay within about K 2^-24 of the scale, so the bound is 4 times that. */
static int check_shape(int M, int N, int K, unsigned *seed, double *worst)
{
    for (int mode = 0; mode < 8; mode++) {
        bool ta = mode & 1, tb = mode & 2, add = mode & 4;
        double e = check_one(M, N, K, ta, tb, add, seed);
        if (e < 0)
            return 0;
        double tol = 4.0 * (K + 1) / 16777216.0;
        CHECK_MSG(e < tol, "M %d N %d K %d ta %d tb %d add %d: relative error %.3g above %.3g",
                  M, N, K, ta, tb, add, e, tol);
        *worst = fmax(*worst, e);
    }
    return 8;
}

static tl_tensor *fwd_linear(tl_ctx *ctx, tl_tensor **in, void *u)
{
    (void)u;
    return tl_linear(ctx, in[0], in[1]);
}

static tl_tensor *fwd_matmul_nn(tl_ctx *ctx, tl_tensor **in, void *u)
{
    (void)u;
    return tl_matmul(ctx, in[0], in[1], false, false);
}

/* With THINKLAB_GEMM set to a bad value, the first product fails with a
 * message that names the value and the two it accepts. */
static void check_bad_env(void)
{
    tl_ctx *ctx = tl_ctx_new(0);
    float x[4] = {1, 2, 3, 4};
    tl_tensor *a = tl_wrap(ctx, TL_F32, x, 2, (int64_t[]){2, 2});
    tl_tensor *z = tl_matmul(ctx, a, a, false, false);
    CHECK(z == NULL);
    const char *msg = tl_errmsg();
    printf("bad setting: %s\n", msg);
    CHECK_MSG(strstr(msg, "THINKLAB_GEMM='") != NULL, "%s", msg);
    CHECK_MSG(strstr(msg, getenv("THINKLAB_GEMM")) != NULL, "%s", msg);
    CHECK_MSG(strstr(msg, "'auto'") != NULL && strstr(msg, "'openblas'") != NULL, "%s", msg);
    char desc[256];
    tl_threads_describe(desc, sizeof desc);
    CHECK_MSG(strstr(desc, "THINKLAB_GEMM has an invalid value") != NULL, "%s", desc);
    tl_ctx_free(ctx);
}

/* Run with OMP_NUM_THREADS=1 and no thread setting: a linear product of
 * 300 rows goes to the kernel, so it gives the kernel's bits. Choosing the
 * kernel must not apply the default thread setting (every core), which
 * would send the product to OpenBLAS instead. K = 300 makes the kernel sum
 * two blocks of K apart, so its bits differ from OpenBLAS's. */
static void check_env_one_thread(void)
{
    if (!tl_gemm_avx2(false, false, 1, 1, 1, (float[]){1}, 1, (float[]){1}, 1, false,
                      (float[]){0}, 1)) {
        printf("gemm: the in-tree kernel needs AVX2 and FMA, which this CPU lacks; skipped\n");
        return;
    }
    enum { R = 300, K = 300, N = 24 };
    static float x[R * K], w[N * K], want[R * N];
    unsigned seed = 99u;
    for (int i = 0; i < R * K; i++)
        x[i] = uniform(&seed);
    for (int i = 0; i < N * K; i++)
        w[i] = uniform(&seed);
    CHECK(tl_gemm_avx2(false, true, R, N, K, x, K, w, K, false, want, N));
    tl_ctx *ctx = tl_ctx_new(0);
    tl_tensor *a = tl_wrap(ctx, TL_F32, x, 2, (int64_t[]){R, K});
    tl_tensor *b = tl_wrap(ctx, TL_F32, w, 2, (int64_t[]){N, K});
    for (int round = 0; round < 2; round++) {
        tl_tensor *y = tl_linear(ctx, a, b);
        CHECK_MSG(y != NULL, "%s", tl_errmsg());
        if (y)
            CHECK_MSG(memcmp(tl_f32(y), want, sizeof want) == 0, "product %d of 300 rows at "
                      "OMP_NUM_THREADS=1 did not run on the in-tree kernel", round + 1);
    }
    tl_ctx_free(ctx);

    /* A dimension of 0 is declined, not divided by. */
    float c[2] = {5, 5};
    CHECK(!tl_gemm_avx2(false, false, 2, 1, 0, x, 1, w, 1, false, c, 1));
    CHECK(c[0] == 5);
    CHECK(c[1] == 5);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--bad-env") == 0) {
        check_bad_env();
        return gc_finish("gemm bad setting");
    }
    if (argc > 1 && strcmp(argv[1], "--env-one-thread") == 0) {
        check_env_one_thread();
        return gc_finish("gemm at OMP_NUM_THREADS=1");
    }
    tl_gemm_kind kind;
    CHECK_MSG(tl_gemm_kind_get(&kind) == TL_OK, "%s", tl_errmsg());

    /* Rows around the 6-row tile and a 96-row block, columns around the
     * 16-column panel, K around 8 and the 256-float block. */
    static const int Ms[] = {1, 5, 6, 7, 13, 97};
    static const int Ns[] = {1, 15, 16, 17, 33};
    static const int Ks[] = {1, 7, 8, 9, 33, 257};
    unsigned seed = 2024u;
    double worst = 0.0;
    int cases = 0;
    for (size_t i = 0; i < sizeof Ms / sizeof Ms[0]; i++)
        for (size_t j = 0; j < sizeof Ns / sizeof Ns[0]; j++)
            for (size_t k = 0; k < sizeof Ks / sizeof Ks[0]; k++)
                cases += check_shape(Ms[i], Ns[j], Ks[k], &seed, &worst);
    /* Several N blocks (257 gives two K blocks of 136, so at most 480
     * packed columns), and the training benchmark's shapes. */
    cases += check_shape(101, 500, 257, &seed, &worst);
    cases += check_shape(384, 128, 512, &seed, &worst);
    cases += check_shape(384, 512, 128, &seed, &worst);
    if (cases == 0)
        printf("gemm: the in-tree kernel needs AVX2 and FMA, which this CPU lacks; its direct "
               "checks were skipped\n");
    else
        printf("gemm: %d products, largest relative error %.3g\n", cases, worst);

    /* Through matmul at one thread, where products of at least 256 rows of
     * an untransposed left operand go to the kernel: the forward, the input
     * gradient (dY W, 264 rows) and the weight gradient, 60 values of each
     * input. The tolerance is test_ops_matmul.c's. */
    tl_threads_set(1);
    printf("products: %s\n", kind == TL_GEMM_AVX2 ? "in-tree kernel at one thread" : "OpenBLAS");
    enum { R = 264, K = 20, N = 24 };
    static float x[R * K], w[N * K], v[K * N];
    tl_rng rng;
    tl_rng_seed(&rng, 11);
    gc_randn(&rng, x, R * K, 1.0f);
    gc_randn(&rng, w, N * K, 1.0f);
    gc_randn(&rng, v, K * N, 1.0f);
    gc_options tol = {.step = 1e-2, .atol = 1e-3, .rtol = 1e-3, .max_elems = 60};
    gc_input lin[2] = {{TL_F32, 2, {R, K}, x, true}, {TL_F32, 2, {N, K}, w, true}};
    gc_check("linear 264 rows at one thread", fwd_linear, NULL, lin, 2, tol);
    gc_input nn[2] = {{TL_F32, 3, {2, R / 2, K}, x, true}, {TL_F32, 2, {K, N}, v, true}};
    gc_check("matmul (2, 132, 20) (20, 24) at one thread", fwd_matmul_nn, NULL, nn, 2, tol);
    tl_threads_set(0);
    return gc_finish("gemm");
}
