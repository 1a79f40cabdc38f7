/* Gradient averaging across ranks: the trainer's reduce_grads hook.
 *
 * The gradient block (tl_params_grads, numel floats) is reduced in buckets
 * of at most cfg.bucket_bytes, one collective per bucket, in block order.
 * The buckets run after backward has finished, not overlapped with it. For
 * an 820k-parameter model the reduction alone took 10 to 22 ms against a
 * 174 to 184 ms step (bench_mpi, 2 ranks on 2 busy vCPUs), so overlap could
 * save at most about a tenth of a step (framework/bench/BENCHMARKS.md). */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dist/dist_internal.h"

struct tl_dist_reducer {
    tl_dist_config cfg;
    int64_t bucket;       /* floats per collective */
    float *gathered;      /* deterministic mode: (world, bucket) */
    double *losses;       /* deterministic mode: (world) */
    tl_watchdog *watchdog;
    tl_dist_stats stats;
};

/* Elements below which the averaging loops stay serial. */
enum { PARALLEL_MIN = 1 << 15 };

tl_dist_config tl_dist_config_default(void)
{
    return (tl_dist_config){
        .bucket_bytes = TL_DIST_BUCKET_BYTES_DEFAULT,
        .deterministic = false,
        .timeout_s = 600.0,
        .check_every = 100,
    };
}

const tl_dist_stats *tl_dist_reducer_stats(const tl_dist_reducer *r) { return &r->stats; }

tl_dist_reducer *tl_dist_reducer_new(const tl_dist_config *cfg)
{
    tl_dist_config c = cfg ? *cfg : tl_dist_config_default();
    if (c.bucket_bytes == 0)
        c.bucket_bytes = TL_DIST_BUCKET_BYTES_DEFAULT;
    if (c.bucket_bytes < sizeof(float)) {
        tl_seterr(TL_EINVAL, "bucket_bytes %zu is smaller than one float; use at least 4 (or 0 "
                             "for the default %d)", c.bucket_bytes, TL_DIST_BUCKET_BYTES_DEFAULT);
        return NULL;
    }
    if (!(c.timeout_s >= 0) || !isfinite(c.timeout_s)) {
        tl_seterr(TL_EINVAL, "timeout_s %g must be a finite number of seconds >= 0 (0 turns "
                             "the watchdog off)", c.timeout_s);
        return NULL;
    }
    if (c.check_every < 0) {
        tl_seterr(TL_EINVAL, "check_every %lld must be >= 0 (0 = never)",
                  (long long)c.check_every);
        return NULL;
    }
    int world = tl_dist_world();
    /* A collective counts elements in an int; the gather receives world
     * buckets at once. */
    int64_t max_bucket = c.deterministic ? INT_MAX / world : INT_MAX;
    int64_t bucket = (int64_t)(c.bucket_bytes / sizeof(float));
    if (bucket > max_bucket)
        bucket = max_bucket;

    tl_dist_reducer *r = calloc(1, sizeof *r);
    if (!r) {
        tl_seterr(TL_ENOMEM, "no memory for a gradient reducer");
        return NULL;
    }
    r->cfg = c;
    r->bucket = bucket;
    if (c.deterministic && world > 1) {
        r->gathered = malloc((size_t)bucket * (size_t)world * sizeof *r->gathered);
        r->losses = malloc((size_t)world * sizeof *r->losses);
        if (!r->gathered || !r->losses) {
            tl_seterr(TL_ENOMEM, "no memory for the deterministic reduction's scratch (%d ranks "
                                 "x %zu bytes); lower bucket_bytes", world, c.bucket_bytes);
            tl_dist_reducer_free(r);
            return NULL;
        }
    }
    if (c.timeout_s > 0 && tl_dist_active() && world > 1) {
        r->watchdog = tl_watchdog_start(c.timeout_s);
        if (!r->watchdog) {
            tl_dist_reducer_free(r);
            return NULL;
        }
    }
    return r;
}

void tl_dist_reducer_free(tl_dist_reducer *r)
{
    if (!r)
        return;
    tl_watchdog_stop(r->watchdog);
    free(r->gathered);
    free(r->losses);
    free(r);
}

#ifdef TL_HAVE_MPI

/* 64-bit hash of the parameter values' bits (FNV-1a over 32-bit words). */
static uint64_t params_hash(const float *x, int64_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (int64_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &x[i], sizeof bits);
        h = (h ^ bits) * 0x100000001b3ull;
    }
    return h;
}

/* Compares the parameter hash across ranks with one MPI_Allreduce(MAX) of
 * (h, ~h): every rank holds the same hash exactly when max h == ~max ~h. */
static tl_status check_params(tl_dist_reducer *r, const tl_params *params, int64_t step)
{
    uint64_t h = params_hash(tl_params_data(params), tl_params_numel(params));
    uint64_t pair[2] = {h, ~h};
    tl_watchdog_enter(r->watchdog, "MPI_Allreduce (parameter check)", step);
    tl_dist_check(MPI_Allreduce(MPI_IN_PLACE, pair, 2, MPI_UINT64_T, MPI_MAX, tl_dist_comm),
                  "MPI_Allreduce (parameter check)");
    tl_watchdog_leave(r->watchdog);
    r->stats.collectives++;
    if (pair[0] != ~pair[1])
        return tl_seterr(TL_ESTATE, "rank %d: the ranks' parameters differ at step %lld (hash "
                                    "%016llx here): the ranks were started from different "
                                    "checkpoints or seeds, or the reduction is not identical on "
                                    "every rank; rerun with deterministic reduction",
                         tl_dist_rank(), (long long)step, (unsigned long long)h);
    return TL_OK;
}

/* Sums x (count floats) over all ranks in place and divides by world. */
static void allreduce_mean(tl_dist_reducer *r, float *x, int count, int64_t step)
{
    int world = tl_dist_world();
    tl_watchdog_enter(r->watchdog, "MPI_Allreduce", step);
    tl_dist_check(MPI_Allreduce(MPI_IN_PLACE, x, count, MPI_FLOAT, MPI_SUM, tl_dist_comm),
                  "MPI_Allreduce");
    tl_watchdog_leave(r->watchdog);
    float w = (float)world;
#pragma omp parallel for if (count > PARALLEL_MIN)
    for (int i = 0; i < count; i++)
        x[i] /= w;
}

/* Gathers every rank's x (count floats) and replaces x by the mean, summed
 * in rank order in double and rounded once. The same gathered values give
 * the same bits on every rank, whatever the MPI library does inside. */
static void gather_mean(tl_dist_reducer *r, float *x, int count, int64_t step)
{
    int world = tl_dist_world();
    float *g = r->gathered; /* (world, count) */
    tl_watchdog_enter(r->watchdog, "MPI_Allgather", step);
    tl_dist_check(MPI_Allgather(x, count, MPI_FLOAT, g, count, MPI_FLOAT, tl_dist_comm),
                  "MPI_Allgather");
    tl_watchdog_leave(r->watchdog);
#pragma omp parallel for if ((int64_t)count * world > PARALLEL_MIN)
    for (int i = 0; i < count; i++) {
        double sum = 0.0;
        for (int k = 0; k < world; k++)
            sum += (double)g[(size_t)k * (size_t)count + (size_t)i];
        x[i] = (float)(sum / world);
    }
}

static double mean_loss(tl_dist_reducer *r, double loss, int64_t step)
{
    int world = tl_dist_world();
    if (r->cfg.deterministic) {
        tl_watchdog_enter(r->watchdog, "MPI_Allgather (loss)", step);
        tl_dist_check(MPI_Allgather(&loss, 1, MPI_DOUBLE, r->losses, 1, MPI_DOUBLE, tl_dist_comm),
                      "MPI_Allgather (loss)");
        tl_watchdog_leave(r->watchdog);
        double sum = 0.0;
        for (int k = 0; k < world; k++)
            sum += r->losses[k];
        return sum / world;
    }
    tl_watchdog_enter(r->watchdog, "MPI_Allreduce (loss)", step);
    tl_dist_check(MPI_Allreduce(MPI_IN_PLACE, &loss, 1, MPI_DOUBLE, MPI_SUM, tl_dist_comm),
                  "MPI_Allreduce (loss)");
    tl_watchdog_leave(r->watchdog);
    return loss / world;
}

tl_status tl_dist_reduce_grads(tl_params *params, double *loss, void *reducer)
{
    tl_dist_reducer *r = reducer;
    if (!r || !params || !loss)
        return tl_seterr(TL_EINVAL, "tl_dist_reduce_grads: params, loss and the reducer (the "
                                    "trainer's reduce_user) must be given");
    int64_t step = r->stats.calls++;
    if (!tl_dist_active() || tl_dist_world() == 1)
        return TL_OK;
    double t0 = tl_dist_now();
    if (r->cfg.check_every > 0 && step % r->cfg.check_every == 0) {
        tl_status st = check_params(r, params, step);
        if (st != TL_OK)
            return st;
    }
    if (r->cfg.deterministic && !r->gathered)
        return tl_seterr(TL_ESTATE, "tl_dist_reduce_grads: the reducer was created before "
                                    "tl_dist_init(); create it after");

    float *grads = tl_params_grads(params);
    int64_t n = tl_params_numel(params);
    for (int64_t off = 0; off < n; off += r->bucket) {
        int count = (int)(n - off < r->bucket ? n - off : r->bucket);
        if (r->cfg.deterministic)
            gather_mean(r, grads + off, count, step);
        else
            allreduce_mean(r, grads + off, count, step);
        r->stats.collectives++;
    }
    *loss = mean_loss(r, *loss, step);
    r->stats.collectives++;
    r->stats.bytes += (double)n * sizeof(float);
    r->stats.seconds += tl_dist_now() - t0;
    return TL_OK;
}

#else /* built without MPI: one process, nothing to average */

tl_status tl_dist_reduce_grads(tl_params *params, double *loss, void *reducer)
{
    tl_dist_reducer *r = reducer;
    if (!r || !params || !loss)
        return tl_seterr(TL_EINVAL, "tl_dist_reduce_grads: params, loss and the reducer (the "
                                    "trainer's reduce_user) must be given");
    r->stats.calls++;
    return TL_OK;
}

#endif
