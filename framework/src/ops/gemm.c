/* Single-thread matrix products on an AVX2 register kernel.
 *
 * Why not sgemm everywhere: the CPU measured is AVX2 without AVX-512 (AMD
 * family 25 model 1). With both cores busy, OpenBLAS 0.3.21 and its Zen
 * kernels ran the training step's forward and input-gradient products there
 * at 79 to 88 GFLOP/s, output zeroed first. These products have 384 rows,
 * and K and N of 128 and 512. This code ran them at 82 to 93. matmul.c
 * sends it only the products where it was faster (see tl_mm_in_tree there).
 * On AVX-512 CPUs OpenBLAS keeps every product, because this kernel uses
 * half their vector width and was not measured there.
 *
 * The method is the usual one for sgemm. K is cut into blocks of at most
 * TL_GEMM_KC, and N into blocks whose packed B fits TL_GEMM_B_FLOATS. Each
 * block of op(B) is packed into panels of 16 columns, k-major, so that the
 * kernel reads 16 consecutive floats per k. The kernel keeps a 6 x 16 tile
 * of C in 12 registers and, per k, loads one row of the B panel and
 * broadcasts one element of each of the 6 rows of op(A): 12 multiply-adds
 * for 8 loads. A row-major A is read where it lies, 6 rows at a time. A
 * transposed A, and a block whose rows are not a multiple of 6, is packed in
 * blocks of TL_GEMM_MC rows. Tiles at the bottom and right edges of C go
 * through a 6 x 16 scratch tile, with op(A)'s missing rows and B's missing
 * columns packed as zeros.
 *
 * The sums run in an order set by the shapes alone, so the same call gives
 * the same bits on every run. */
#include "gemm.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../internal.h"
#include "transpose8.h"

enum {
    TL_GEMM_MR = 6,   /* rows of the register tile */
    TL_GEMM_NR = 16,  /* columns of the register tile, two 8-float vectors */
    TL_GEMM_KC = 256, /* maximum k per block, so that a B panel (at most 16 KiB) stays in L1 */
    TL_GEMM_MC = 96,  /* rows per packed block of op(A) */
    /* Floats of packed B per block, 256 KiB: half of a Zen 3 core's L2. */
    TL_GEMM_B_FLOATS = 64 * 1024,
    TL_GEMM_A_FLOATS = TL_GEMM_MC * TL_GEMM_KC,
};

/* ---- which code runs the products ---- */

/* THINKLAB_GEMM as the first call found it, set once under tl_gemm_setting_once. */
static struct {
    tl_gemm_kind kind;
    bool valid;
    bool long_value; /* the value is longer than the copy below */
    char value[65];  /* a bad value, for the message */
} tl_gemm_setting;
static pthread_once_t tl_gemm_setting_once = PTHREAD_ONCE_INIT;

static void tl_gemm_read_setting(void)
{
    const char *env = getenv("THINKLAB_GEMM");
    bool cpu = false;
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    cpu = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
          !__builtin_cpu_supports("avx512f");
#endif
    tl_gemm_setting.valid = true;
    if (!env || !env[0] || strcmp(env, "auto") == 0) {
        tl_gemm_setting.kind = cpu ? TL_GEMM_AVX2 : TL_GEMM_OPENBLAS;
    } else if (strcmp(env, "openblas") == 0) {
        tl_gemm_setting.kind = TL_GEMM_OPENBLAS;
    } else {
        tl_gemm_setting.valid = false;
        tl_gemm_setting.kind = TL_GEMM_OPENBLAS;
        tl_gemm_setting.long_value = strlen(env) >= sizeof tl_gemm_setting.value;
        snprintf(tl_gemm_setting.value, sizeof tl_gemm_setting.value, "%s", env);
    }
}

bool tl_gemm_setting_valid(void)
{
    pthread_once(&tl_gemm_setting_once, tl_gemm_read_setting);
    return tl_gemm_setting.valid;
}

tl_status tl_gemm_kind_get(tl_gemm_kind *kind)
{
    pthread_once(&tl_gemm_setting_once, tl_gemm_read_setting);
    if (!tl_gemm_setting.valid)
        return tl_seterr(TL_EINVAL, "THINKLAB_GEMM='%s'%s is invalid: set it to 'auto' (the "
                                    "in-tree kernel where it is faster, the default) or "
                                    "'openblas', or unset it", tl_gemm_setting.value,
                         tl_gemm_setting.long_value ? " (first 64 characters)" : "");
    *kind = tl_gemm_setting.kind;
    return TL_OK;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* ---- per-thread packing buffers ---- */

static pthread_key_t tl_gemm_key;
static pthread_once_t tl_gemm_once = PTHREAD_ONCE_INIT;
static bool tl_gemm_key_ok;

static void tl_gemm_make_key(void)
{
    tl_gemm_key_ok = pthread_key_create(&tl_gemm_key, free) == 0;
}

/* Returns the calling thread's packing buffer, or NULL when out of memory:
 * TL_GEMM_B_FLOATS floats for B, then TL_GEMM_A_FLOATS for A and a 6 x 16
 * scratch tile, 64-byte aligned. The buffer is freed when the thread exits. */
static float *tl_gemm_buffers(void)
{
    pthread_once(&tl_gemm_once, tl_gemm_make_key);
    if (!tl_gemm_key_ok)
        return NULL;
    float *buf = pthread_getspecific(tl_gemm_key);
    if (!buf) {
        size_t floats = TL_GEMM_B_FLOATS + TL_GEMM_A_FLOATS + TL_GEMM_MR * TL_GEMM_NR;
        buf = aligned_alloc(64, floats * sizeof(float));
        if (buf && pthread_setspecific(tl_gemm_key, buf) != 0) {
            free(buf);
            buf = NULL;
        }
    }
    return buf;
}

/* ---- packing ---- */

/* Packs op(B)[k0 : k0+kc, j0 : j0+nc] into panels of 16 columns: panel p
 * contains column j0 + 16p + l of row k0 + k at dst[p*16*kc + k*16 + l], with
 * zeros past column j0 + nc. Full panels copy a constant size, which GCC
 * compiles to vector moves. A variable size became `rep movsq`, about 3% of
 * the training step under perf. */
__attribute__((target("avx2,fma"))) static void tl_gemm_pack_b(bool tb, const float *b, int64_t ldb,
                                                              int64_t k0, int64_t kc, int64_t j0,
                                                              int64_t nc, float *dst)
{
    for (int64_t p = 0; p < nc; p += TL_GEMM_NR) {
        int64_t nr = nc - p < TL_GEMM_NR ? nc - p : TL_GEMM_NR;
        float *d = dst + p * kc;
        if (!tb && nr == TL_GEMM_NR) { /* B (K,N): each k's 16 columns are contiguous */
            for (int64_t k = 0; k < kc; k++)
                memcpy(d + k * TL_GEMM_NR, b + (k0 + k) * ldb + j0 + p, TL_GEMM_NR * sizeof(float));
        } else if (nr < TL_GEMM_NR) { /* the last, partial panel, either layout */
            for (int64_t k = 0; k < kc; k++) {
                for (int64_t l = 0; l < TL_GEMM_NR; l++) {
                    int64_t row = tb ? j0 + p + l : k0 + k, col = tb ? k0 + k : j0 + p + l;
                    d[k * TL_GEMM_NR + l] = l < nr ? b[row * ldb + col] : 0.0f;
                }
            }
        } else {
            /* B stored (N,K): each column is a stored row, so 8 x 8 blocks
             * are transposed into each half of the panel. */
            const float *s = b + (j0 + p) * ldb + k0;
            int64_t kc8 = kc / 8 * 8;
            for (int64_t k = 0; k < kc8; k += 8) {
                tl_transpose8(d + k * TL_GEMM_NR, TL_GEMM_NR, s + k, ldb);
                tl_transpose8(d + k * TL_GEMM_NR + 8, TL_GEMM_NR, s + 8 * ldb + k, ldb);
            }
            for (int64_t k = kc8; k < kc; k++)
                for (int64_t l = 0; l < TL_GEMM_NR; l++)
                    d[k * TL_GEMM_NR + l] = s[l * ldb + k];
        }
    }
}

/* Packs rows [i0, i0+mc) of op(A), k in [k0, k0+kc), into panels of 6 rows:
 * panel q contains row i0 + 6q + r at dst[q*6*kc + k*6 + r], zeros past mc.
 * op(A)(i, k) is a[i * a_rs + k * a_ks]. */
__attribute__((target("avx2,fma"))) static void tl_gemm_pack_a(const float *a, int64_t a_rs,
                                                              int64_t a_ks, int64_t i0, int64_t mc,
                                                              int64_t k0, int64_t kc, float *dst)
{
    int64_t full = mc / TL_GEMM_MR * TL_GEMM_MR;
    if (a_rs == 1) {
        /* A transposed: the block's rows at one k are contiguous, so the
         * copy reads A row by row. Panel by panel, it read 6 floats per
         * stored row of A, whose stride of 2 KiB (512 rows of op(A)) kept
         * few lines in L1: 8% of the product's time. */
        for (int64_t k = 0; k < kc; k++) {
            const float *s = a + i0 + (k0 + k) * a_ks;
            float *d = dst + k * TL_GEMM_MR;
            for (int64_t q = 0; q < full; q += TL_GEMM_MR)
                memcpy(d + q * kc, s + q, TL_GEMM_MR * sizeof(float));
            for (int64_t r = 0; full < mc && r < TL_GEMM_MR; r++)
                d[full * kc + r] = full + r < mc ? s[full + r] : 0.0f;
        }
        return;
    }
    for (int64_t q = 0; q < mc; q += TL_GEMM_MR) {
        int64_t mr = mc - q < TL_GEMM_MR ? mc - q : TL_GEMM_MR;
        float *d = dst + q * kc;
        const float *s = a + (i0 + q) * a_rs + k0 * a_ks;
        for (int64_t k = 0; k < kc; k++)
            for (int64_t r = 0; r < TL_GEMM_MR; r++)
                d[k * TL_GEMM_MR + r] = r < mr ? s[r * a_rs + k * a_ks] : 0.0f;
    }
}

/* ---- the kernel ---- */

/* C[0:6, 0:16] = (or +=) sum over k < kc of A(r, k) Bp[k, 0:16], where
 * A(r, k) is a[r * rs + k * ks] and Bp is one packed panel. The accumulator
 * for row R and half H is cRH. */
__attribute__((target("avx2,fma"), always_inline)) static inline void
tl_gemm_tile(int64_t kc, const float *a, int64_t rs, int64_t ks, const float *bp, bool add,
             float *c, int64_t ldc)
{
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    const float *a0 = a, *a3 = a + 3 * rs; /* rows 0-2 and 3-5 off two pointers */
    for (int64_t k = 0; k < kc; k++) {
        __m256 b0 = _mm256_load_ps(bp), b1 = _mm256_load_ps(bp + 8), x;
        x = _mm256_broadcast_ss(a0);
        c00 = _mm256_fmadd_ps(x, b0, c00);
        c01 = _mm256_fmadd_ps(x, b1, c01);
        x = _mm256_broadcast_ss(a0 + rs);
        c10 = _mm256_fmadd_ps(x, b0, c10);
        c11 = _mm256_fmadd_ps(x, b1, c11);
        x = _mm256_broadcast_ss(a0 + 2 * rs);
        c20 = _mm256_fmadd_ps(x, b0, c20);
        c21 = _mm256_fmadd_ps(x, b1, c21);
        x = _mm256_broadcast_ss(a3);
        c30 = _mm256_fmadd_ps(x, b0, c30);
        c31 = _mm256_fmadd_ps(x, b1, c31);
        x = _mm256_broadcast_ss(a3 + rs);
        c40 = _mm256_fmadd_ps(x, b0, c40);
        c41 = _mm256_fmadd_ps(x, b1, c41);
        x = _mm256_broadcast_ss(a3 + 2 * rs);
        c50 = _mm256_fmadd_ps(x, b0, c50);
        c51 = _mm256_fmadd_ps(x, b1, c51);
        a0 += ks;
        a3 += ks;
        bp += TL_GEMM_NR;
    }
    __m256 acc[TL_GEMM_MR][2] = {{c00, c01}, {c10, c11}, {c20, c21},
                                 {c30, c31}, {c40, c41}, {c50, c51}};
    for (int r = 0; r < TL_GEMM_MR; r++) {
        for (int h = 0; h < 2; h++) {
            float *p = c + r * ldc + 8 * h;
            __m256 v = acc[r][h];
            if (add)
                v = _mm256_add_ps(_mm256_loadu_ps(p), v);
            _mm256_storeu_ps(p, v);
        }
    }
}

/* Computes one tile of C with mr <= 6 rows and nr <= 16 columns. A partial
 * tile goes through the scratch tile, whose extra rows and columns are
 * discarded. */
__attribute__((target("avx2,fma"), always_inline)) static inline void
tl_gemm_any_tile(int64_t kc, const float *a, int64_t rs, int64_t ks, const float *bp, bool add,
                 float *c, int64_t ldc, int64_t mr, int64_t nr, float *scratch)
{
    if (mr == TL_GEMM_MR && nr == TL_GEMM_NR) {
        tl_gemm_tile(kc, a, rs, ks, bp, add, c, ldc);
        return;
    }
    tl_gemm_tile(kc, a, rs, ks, bp, false, scratch, TL_GEMM_NR);
    for (int64_t r = 0; r < mr; r++)
        for (int64_t l = 0; l < nr; l++)
            c[r * ldc + l] = add ? c[r * ldc + l] + scratch[r * TL_GEMM_NR + l]
                                 : scratch[r * TL_GEMM_NR + l];
}

__attribute__((target("avx2,fma"))) static void
tl_gemm_run(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float *a, int64_t lda,
            const float *b, int64_t ldb, bool add, float *c, int64_t ldc, float *buf)
{
    float *pb = buf, *pa = buf + TL_GEMM_B_FLOATS, *scratch = pa + TL_GEMM_A_FLOATS;
    int64_t a_rs = ta ? 1 : lda, a_ks = ta ? lda : 1;
    /* Equal K blocks, a multiple of 8 each, at most TL_GEMM_KC. */
    int64_t nkb = (K + TL_GEMM_KC - 1) / TL_GEMM_KC;
    int64_t kcs = ((K + nkb - 1) / nkb + 7) / 8 * 8;
    int64_t ncs = TL_GEMM_B_FLOATS / kcs / TL_GEMM_NR * TL_GEMM_NR;

    for (int64_t k0 = 0; k0 < K; k0 += kcs) {
        int64_t kc = K - k0 < kcs ? K - k0 : kcs;
        bool acc = add || k0 > 0; /* later K blocks add to the earlier ones */
        for (int64_t j0 = 0; j0 < N; j0 += ncs) {
            int64_t nc = N - j0 < ncs ? N - j0 : ncs;
            tl_gemm_pack_b(tb, b, ldb, k0, kc, j0, nc, pb);
            for (int64_t i0 = 0; i0 < M; i0 += TL_GEMM_MC) {
                int64_t mc = M - i0 < TL_GEMM_MC ? M - i0 : TL_GEMM_MC;
                if (ta || mc % TL_GEMM_MR != 0) {
                    tl_gemm_pack_a(a, a_rs, a_ks, i0, mc, k0, kc, pa);
                    /* Each B panel stays in L1 across the block's A panels,
                     * which the packing made contiguous: 85 against 80
                     * GFLOP/s with the tiles row by row, on weight-gradient
                     * shapes. */
                    for (int64_t j = 0; j < nc; j += TL_GEMM_NR) {
                        int64_t nr = nc - j < TL_GEMM_NR ? nc - j : TL_GEMM_NR;
                        for (int64_t i = 0; i < mc; i += TL_GEMM_MR) {
                            int64_t mr = mc - i < TL_GEMM_MR ? mc - i : TL_GEMM_MR;
                            tl_gemm_any_tile(kc, pa + i * kc, 1, TL_GEMM_MR, pb + j * kc, acc,
                                             c + (i0 + i) * ldc + j0 + j, ldc, mr, nr, scratch);
                        }
                    }
                    continue;
                }
                /* A read in place, 6 rows at a time, each panel held in L1
                 * across the B panels. */
                for (int64_t i = 0; i < mc; i += TL_GEMM_MR) {
                    const float *ai = a + (i0 + i) * a_rs + k0 * a_ks;
                    float *ci = c + (i0 + i) * ldc + j0;
                    for (int64_t j = 0; j < nc; j += TL_GEMM_NR) {
                        int64_t nr = nc - j < TL_GEMM_NR ? nc - j : TL_GEMM_NR;
                        tl_gemm_any_tile(kc, ai, a_rs, a_ks, pb + j * kc, acc, ci + j, ldc,
                                         TL_GEMM_MR, nr, scratch);
                    }
                }
            }
        }
    }
}

bool tl_gemm_avx2(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float *a, int64_t lda,
                  const float *b, int64_t ldb, bool add, float *c, int64_t ldc)
{
    if (M < 1 || N < 1 || K < 1 || !__builtin_cpu_supports("avx2") ||
        !__builtin_cpu_supports("fma"))
        return false;
    float *buf = tl_gemm_buffers();
    if (!buf)
        return false;
    tl_gemm_run(ta, tb, M, N, K, a, lda, b, ldb, add, c, ldc, buf);
    return true;
}

#else /* not x86-64 with GCC's builtins */

bool tl_gemm_avx2(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float *a, int64_t lda,
                  const float *b, int64_t ldb, bool add, float *c, int64_t ldc)
{
    (void)ta, (void)tb, (void)M, (void)N, (void)K, (void)a, (void)lda;
    (void)b, (void)ldb, (void)add, (void)c, (void)ldc;
    return false;
}

#endif
