/* Data-parallel shards: one context and one gradient buffer per thread, one
 * parallel region per step. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "internal.h"
#include "ops/vmath.h"
#include "thinklab/shards.h"

enum { TL_SHARDS_MAX = 256 };

typedef struct tl_shard {
    tl_ctx *ctx;
    float *grads;   /* numel floats; NULL for shard 0, which uses the store's */
    double loss;
    tl_status status;
    char message[512];
} tl_shard;

struct tl_shards {
    const tl_params *params;
    int n;
    int64_t numel;
    tl_shard *shard;
    double grad_norm; /* of the store's gradients after the last sum; NAN before */
};

tl_shards *tl_shards_new(const tl_params *p, int n, size_t block_bytes)
{
    if (!p) {
        tl_seterr(TL_EINVAL, "shards: the parameter store is NULL");
        return NULL;
    }
    if (!tl_params_grads(p)) {
        tl_seterr(TL_ESTATE, "shards: the parameter store must be allocated first "
                             "(tl_params_alloc)");
        return NULL;
    }
    if (n == 0)
        n = tl_threads_get();
    if (n < 1 || n > TL_SHARDS_MAX) {
        tl_seterr(TL_EINVAL, "shards: count %d must be between 1 and %d (0 = thread count)", n,
                  TL_SHARDS_MAX);
        return NULL;
    }
    tl_shards *s = calloc(1, sizeof *s);
    tl_shard *shard = calloc((size_t)n, sizeof *shard);
    if (!s || !shard) {
        free(s);
        free(shard);
        tl_seterr(TL_ENOMEM, "shards: could not allocate %d shards", n);
        return NULL;
    }
    s->params = p;
    s->n = n;
    s->numel = tl_params_numel(p);
    s->shard = shard;
    s->grad_norm = NAN;
    for (int i = 0; i < n; i++) {
        shard[i].ctx = tl_ctx_new(block_bytes);
        if (!shard[i].ctx) {
            tl_shards_free(s);
            return NULL;
        }
        if (i == 0)
            continue;
        /* Zeroed here; tl_shards_backward zeroes it again after each sum. */
        shard[i].grads = tl_alloc_large((size_t)(s->numel ? s->numel : 1) * sizeof(float), true);
        if (!shard[i].grads) {
            tl_shards_free(s);
            tl_seterr(TL_ENOMEM, "shards: could not allocate a gradient buffer of %lld floats",
                      (long long)s->numel);
            return NULL;
        }
        tl_ctx_redirect_grads(shard[i].ctx, p, shard[i].grads);
    }
    return s;
}

void tl_shards_free(tl_shards *s)
{
    if (!s)
        return;
    for (int i = 0; i < s->n; i++) {
        tl_ctx_free(s->shard[i].ctx);
        free(s->shard[i].grads);
    }
    free(s->shard);
    free(s);
}

int tl_shards_count(const tl_shards *s) { return s->n; }

tl_ctx *tl_shards_ctx(tl_shards *s, int i) { return i >= 0 && i < s->n ? s->shard[i].ctx : NULL; }

static void tl_shard_run(tl_shard *sh, int i, int n, tl_shard_loss_fn fn, void *user)
{
    sh->status = TL_OK;
    sh->loss = NAN;
    tl_tensor *loss = fn(sh->ctx, i, n, user);
    tl_status st = TL_OK;
    if (!loss) {
        st = tl_lasterr() != TL_OK ? tl_lasterr() : TL_EINVAL;
        if (tl_lasterr() == TL_OK)
            tl_seterr(st, "the loss function returned NULL without an error message");
    } else if (tl_numel(loss) != 1 || loss->dtype != TL_F32) {
        st = tl_seterr(TL_ESHAPE, "the loss must be a float32 scalar, got %s with %lld elements",
                       loss->dtype == TL_F32 ? "float32" : "int32", (long long)tl_numel(loss));
    } else {
        sh->loss = tl_f32(loss)[0];
        st = tl_backward(sh->ctx, tl_scale(sh->ctx, loss, 1.0f / (float)n));
    }
    if (st != TL_OK) {
        sh->status = st;
        snprintf(sh->message, sizeof sh->message, "%s", tl_errmsg());
    }
}

/* Floats per chunk of the sum below: 16 KiB per buffer, so that the adds,
 * the zeroing and the squares of a chunk all find it in L1. */
enum { TL_SHARDS_SUM_CHUNK = 4096 };

/* Adds the shard buffers into grads over [lo, hi) when add is true and
 * zeroes the buffers there either way. Returns the sum of squares of the
 * summed gradients (0 when add is false). Each element is summed in shard
 * order; the squares go to TL_VLANES partial sums with a fixed fold. */
TL_MULTIVERSION
static double tl_shards_sum_range(tl_shards *s, float *grads, int64_t lo, int64_t hi, bool add)
{
    double lane[TL_VLANES] = {0};
    for (int64_t c0 = lo; c0 < hi; c0 += TL_SHARDS_SUM_CHUNK) {
        int64_t m = hi - c0 < TL_SHARDS_SUM_CHUNK ? hi - c0 : TL_SHARDS_SUM_CHUNK;
        float *restrict g = grads + c0;
        for (int i = 1; i < s->n; i++) {
            float *restrict gi = s->shard[i].grads + c0;
            if (add) {
#pragma omp simd
                for (int64_t j = 0; j < m; j++)
                    g[j] += gi[j];
            }
            memset(gi, 0, (size_t)m * sizeof(float));
        }
        if (add)
            tl_vsumsq_lanes(lane, g, m);
    }
    return tl_vlanes_sum_f64(lane);
}

tl_status tl_shards_backward(tl_shards *s, tl_shard_loss_fn fn, void *user, double *loss)
{
    if (!s)
        return tl_seterr(TL_EINVAL, "shards: the shard set is NULL");
    if (!fn)
        return tl_seterr(TL_EINVAL, "shards: the loss function is NULL");
    int n = s->n;
    float *grads = tl_params_grads(s->params);
    int64_t numel = s->numel;
    bool failed = false;
    double sumsq[TL_SHARDS_MAX]; /* per thread, over its range of the gradients */
    int threads = 1;
    s->grad_norm = NAN;

    /* One region: the shards run, then after the barrier every thread sums
     * its range of the gradients, adds up their squares for the global norm
     * and zeroes that range of the shard buffers. The sum is over shards in
     * index order and the squares are added in thread order, so a fixed
     * shard count gives the same bits every run. The team has at most one
     * thread per shard and no more than the thread setting, so extra shards
     * run in turn on each thread. */
    int threads_max = omp_get_max_threads();
    int team = threads_max < n ? threads_max : n;
#pragma omp parallel num_threads(team) if (team > 1)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        for (int i = t; i < n; i += nt)
            tl_shard_run(&s->shard[i], i, n, fn, user);
#pragma omp barrier
#pragma omp single
        {
            threads = nt;
            for (int i = 0; i < n; i++)
                failed = failed || s->shard[i].status != TL_OK;
        }
        int64_t lo, hi;
        tl_thread_range(numel, &lo, &hi);
        sumsq[t] = tl_shards_sum_range(s, grads, lo, hi, !failed);
    }

    if (!failed) {
        double total = 0.0;
        for (int t = 0; t < threads; t++)
            total += sumsq[t];
        s->grad_norm = sqrt(total);
    }

    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        if (s->shard[i].status != TL_OK)
            return tl_seterr(s->shard[i].status, "shard %d of %d: %s", i, n, s->shard[i].message);
        sum += s->shard[i].loss;
    }
    if (loss)
        *loss = sum / n;
    return TL_OK;
}

void tl_shards_reset(tl_shards *s)
{
    for (int i = 0; i < s->n; i++)
        tl_ctx_reset(s->shard[i].ctx);
}

double tl_shards_flops(const tl_shards *s)
{
    double f = 0.0;
    for (int i = 0; i < s->n; i++)
        f += tl_ctx_flops_forward(s->shard[i].ctx) + tl_ctx_flops_backward(s->shard[i].ctx);
    return f;
}

size_t tl_shards_arena_peak(const tl_shards *s)
{
    size_t b = 0;
    for (int i = 0; i < s->n; i++)
        b += tl_ctx_arena_peak(s->shard[i].ctx);
    return b;
}

double tl_shards_grad_norm(const tl_shards *s) { return s ? s->grad_norm : NAN; }
