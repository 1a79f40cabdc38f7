/* Top-k selection and the token count of a capacity ratio. */
#include <math.h>
#include <string.h>

#include "gradcheck.h"

/* Returns true when got (k) equals want (k). */
static bool same_idx(const int32_t *got, const int32_t *want, int64_t k)
{
    return memcmp(got, want, (size_t)k * sizeof(int32_t)) == 0;
}

/* Reference: repeatedly take the first maximum not yet taken, then list the
 * taken positions in order. */
static void ref_topk(const float *s, int64_t T, int64_t k, int32_t *out)
{
    bool taken[64] = {0};
    for (int64_t r = 0; r < k; r++) {
        int64_t best = -1;
        for (int64_t t = 0; t < T; t++)
            if (!taken[t] && (best < 0 || s[t] > s[best]))
                best = t;
        taken[best] = true;
    }
    int64_t n = 0;
    for (int64_t t = 0; t < T; t++)
        if (taken[t])
            out[n++] = (int32_t)t;
}

static void check_topk(tl_rng *rng)
{
    tl_ctx *ctx = tl_ctx_new(1 << 20);

    /* Ties go to the earlier position. */
    float tie[2 * 5] = {1, 3, 3, 2, 3, 0, 0, 0, 0, 0};
    tl_tensor *s = tl_wrap(ctx, TL_F32, tie, 2, (int64_t[]){2, 5});
    tl_tensor *idx = tl_topk(ctx, s, 2);
    CHECK(idx && idx->dtype == TL_I32);
    CHECK(idx && idx->shape[0] == 2 && idx->shape[1] == 2);
    CHECK(idx && same_idx(tl_i32(idx), (int32_t[]){1, 2}, 2));
    CHECK(idx && same_idx(tl_i32(idx) + 2, (int32_t[]){0, 1}, 2));
    idx = tl_topk(ctx, s, 3);
    CHECK(idx && same_idx(tl_i32(idx), (int32_t[]){1, 2, 4}, 3));

    /* k = 0 gives an empty (B, 0); k = T gives every position ascending. */
    idx = tl_topk(ctx, s, 0);
    CHECK(idx && idx->ndim == 2 && idx->shape[0] == 2 && idx->shape[1] == 0);
    idx = tl_topk(ctx, s, 5);
    CHECK(idx && same_idx(tl_i32(idx), (int32_t[]){0, 1, 2, 3, 4}, 5));
    CHECK(idx && same_idx(tl_i32(idx) + 5, (int32_t[]){0, 1, 2, 3, 4}, 5));

    /* Random rows with repeated values, against the reference, for every k. */
    enum { B = 3, T = 37 };
    float r[B * T];
    for (int n = 0; n < B * T; n++)
        r[n] = (float)(int)(tl_rng_uniform(rng) * 8.0f); /* 8 levels: many ties */
    s = tl_wrap(ctx, TL_F32, r, 2, (int64_t[]){B, T});
    int wrong = 0, unordered = 0;
    for (int64_t k = 0; k <= T; k++) {
        idx = tl_topk(ctx, s, k);
        for (int64_t b = 0; idx && b < B; b++) {
            int32_t want[T];
            ref_topk(r + b * T, T, k, want);
            wrong += !same_idx(tl_i32(idx) + b * k, want, k);
            for (int64_t n = 1; n < k; n++)
                unordered += tl_i32(idx)[b * k + n] <= tl_i32(idx)[b * k + n - 1];
        }
    }
    CHECK_MSG(wrong == 0, "%d rows differ from the reference top-k", wrong);
    CHECK_MSG(unordered == 0, "%d positions are not ascending", unordered);

    /* Errors: k outside [0, T], NaN scores, wrong rank. */
    s = tl_wrap(ctx, TL_F32, tie, 2, (int64_t[]){2, 5});
    CHECK(tl_topk(ctx, s, 6) == NULL);
    CHECK(strstr(tl_errmsg(), "k = 6") != NULL);
    CHECK(tl_topk(ctx, s, -1) == NULL);
    tie[7] = NAN;
    CHECK(tl_topk(ctx, s, 2) == NULL);
    CHECK(strstr(tl_errmsg(), "scores[1][2] is NaN") != NULL);
    CHECK(tl_topk(ctx, tl_wrap(ctx, TL_F32, tie, 1, (int64_t[]){10}), 2) == NULL);
    CHECK(tl_topk(ctx, NULL, 2) == NULL);
    tl_ctx_free(ctx);
}

static void check_ratio_count(void)
{
    CHECK(tl_ratio_count(0.07, 100) == 7);
    CHECK(tl_ratio_count(0.55f, 100) == 55);
    CHECK(tl_ratio_count(0.5, 7) == 4);     /* ceil(3.5) */
    CHECK(tl_ratio_count(0.125, 64) == 8);
    CHECK(tl_ratio_count(0.13, 64) == 9);   /* ceil(8.32) */
    CHECK(tl_ratio_count(0.0, 64) == 0);
    CHECK(tl_ratio_count(1.0, 64) == 64);
    CHECK(tl_ratio_count(1e-3, 64) == 1);   /* ceil(0.064) */
    CHECK(tl_ratio_count(1e-9, 64) == 0);   /* 6.4e-8 lies within 1e-6*n of 0 */
    CHECK(tl_ratio_count(-0.5, 64) == 0);
    CHECK(tl_ratio_count(1.5, 64) == 64);
    CHECK(tl_ratio_count(NAN, 64) == 0);
    CHECK(tl_ratio_count(0.5, 0) == 0);

    /* For every n in 1..4096 and k in 0..n, the ratio k/n, in double and in
     * float, selects exactly k tokens: float error never adds one. */
    long wrong_double = 0, wrong_float = 0;
    for (int64_t n = 1; n <= 4096; n++) {
        for (int64_t k = 0; k <= n; k++) {
            wrong_double += tl_ratio_count((double)k / (double)n, n) != k;
            wrong_float += tl_ratio_count((float)k / (float)n, n) != k;
        }
    }
    CHECK_MSG(wrong_double == 0, "%ld double ratios k/n gave another count than k", wrong_double);
    CHECK_MSG(wrong_float == 0, "%ld float ratios k/n gave another count than k", wrong_float);
}

int main(void)
{
    tl_rng rng;
    tl_rng_seed(&rng, 5);
    check_topk(&rng);
    check_ratio_count();
    return gc_finish("ops select");
}
