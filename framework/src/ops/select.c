/* Token selection for routed layers: top-k positions of router scores, and the
 * number of tokens a capacity ratio selects. Neither carries a gradient. */
#include <math.h>
#include <stdlib.h>

#include "../internal.h"

/* Below this many scores tl_topk runs on one thread. */
enum { TL_TOPK_PARALLEL_WORK = 1 << 14 };

typedef struct tl_scored {
    float score;
    int32_t pos;
} tl_scored;

/* Higher score first; equal scores by earlier position, so the order is total
 * and qsort's instability cannot change the selection. */
static int tl_scored_cmp(const void *pa, const void *pb)
{
    const tl_scored *a = pa, *b = pb;
    if (a->score != b->score)
        return a->score > b->score ? -1 : 1;
    return (a->pos > b->pos) - (a->pos < b->pos);
}

/* Earlier position first, for the selected entries. */
static int tl_pos_cmp(const void *pa, const void *pb)
{
    const tl_scored *a = pa, *b = pb;
    return (a->pos > b->pos) - (a->pos < b->pos);
}

tl_tensor *tl_topk(tl_ctx *ctx, tl_tensor *scores, int64_t k)
{
    if (!scores)
        return NULL;
    if (!tl_check_f32("topk", "scores", scores))
        return NULL;
    if (scores->ndim != 2) {
        char buf[96];
        tl_seterr(TL_ESHAPE, "topk: scores %s must be (B, T)", tl_shape_str(scores, buf, sizeof buf));
        return NULL;
    }
    int64_t B = scores->shape[0], T = scores->shape[1];
    if (k < 0 || k > T) {
        tl_seterr(TL_EINVAL, "topk: k = %lld is outside [0, T] with T = %lld", (long long)k,
                  (long long)T);
        return NULL;
    }
    const float *s = tl_f32(scores);
    for (int64_t n = 0; n < B * T; n++) {
        if (isnan(s[n])) {
            tl_seterr(TL_ENUMERIC, "topk: scores[%lld][%lld] is NaN; the router diverged, lower the "
                                   "learning rate", (long long)(n / T), (long long)(n % T));
            return NULL;
        }
    }

    tl_tensor *out = tl_new(ctx, TL_I32, 2, (int64_t[]){B, k});
    tl_scored *order = tl_ctx_alloc(ctx, (size_t)(B * T) * sizeof(tl_scored));
    if (!out || !order)
        return NULL;
    int32_t *idx = tl_i32(out);
#pragma omp parallel for if (B * T > TL_TOPK_PARALLEL_WORK) schedule(static)
    for (int64_t b = 0; b < B; b++) {
        tl_scored *o = order + b * T;
        for (int64_t t = 0; t < T; t++)
            o[t] = (tl_scored){s[b * T + t], (int32_t)t};
        qsort(o, (size_t)T, sizeof *o, tl_scored_cmp);
        qsort(o, (size_t)k, sizeof *o, tl_pos_cmp);
        for (int64_t r = 0; r < k; r++)
            idx[b * k + r] = o[r].pos;
    }
    return out;
}

int64_t tl_ratio_count(double ratio, int64_t n)
{
    if (n <= 0 || !(ratio > 0.0))
        return 0; /* also NaN */
    if (ratio >= 1.0)
        return n;
    double x = ratio * (double)n;
    double nearest = round(x);
    /* A float ratio such as 0.55f is off by about 1e-8 relative, so ratio*n
     * can land just above an integer. Snapping within 1e-6*n keeps ceil from
     * adding a token. */
    double k = fabs(x - nearest) <= 1e-6 * (double)n ? nearest : ceil(x);
    if (k < 0.0)
        return 0;
    if (k > (double)n)
        return n;
    return (int64_t)k;
}
