/* Data-parallel steps inside one process.
 *
 * A tl_shards splits each step's batch into n shards that run at the same
 * time, one per thread, each with its own context. Inside a shard every op
 * and every sgemm runs on the shard's thread, because parallel regions do not
 * nest. Shard 0 accumulates into the parameter store's gradients and every
 * other shard into a buffer of its own, and the buffers are summed into the
 * store at the end.
 *
 * Threads inside each op synchronise at every op and every sgemm, a few
 * hundred times per step, while shards synchronise twice. On the step
 * benchmark this is the difference between 31.0 and 24.6 ms per step at 2
 * threads (framework/bench/BENCHMARKS.md).
 *
 * The layers must not write shared state during forward or backward. The
 * framework's ops and blocks do not, and plugins write their state only when
 * asked for statistics, so the trainer runs its steps as shards except those
 * that record gradients or routing statistics. */
#ifndef THINKLAB_SHARDS_H
#define THINKLAB_SHARDS_H

#include "thinklab/params.h"
#include "thinklab/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tl_shards tl_shards;

/* Builds the loss of shard `shard` (of n) on ctx and returns it: a float32
 * scalar, the mean loss over the shard's part of the batch. Returns NULL on
 * failure, after tl_seterr. Runs on a worker thread. */
typedef tl_tensor *(*tl_shard_loss_fn)(tl_ctx *ctx, int shard, int n, void *user);

/* Creates n shards over the allocated parameters of p. n = 0 takes the thread
 * count (tl_threads_get); otherwise n must lie in [1, 256]. block_bytes is
 * each context's arena block size, 0 for the default. Returns NULL on failure,
 * with TL_EINVAL, TL_ESTATE (p not allocated) or TL_ENOMEM and a message. */
tl_shards *tl_shards_new(const tl_params *p, int n, size_t block_bytes);
void tl_shards_free(tl_shards *s);

int tl_shards_count(const tl_shards *s);
tl_ctx *tl_shards_ctx(tl_shards *s, int i);

/* Runs fn on every shard in parallel and backpropagates each loss scaled by
 * 1/n, then adds the shards' gradients into tl_params_grads(p). The caller
 * zeroes the store's gradients before the step as usual. When every shard
 * contains the same number of loss terms, the result equals the gradient of the
 * whole batch's mean loss, and *loss (if not NULL) receives that mean. On
 * failure it returns the failing shard's status (the lowest-numbered one)
 * with a message that names the shard, and the store's gradients may hold
 * shard 0's part: zero them before another attempt. Call tl_shards_reset
 * before the next step. */
tl_status tl_shards_backward(tl_shards *s, tl_shard_loss_fn fn, void *user, double *loss);

/* Global L2 norm of the store's gradients after the last successful
 * tl_shards_backward, computed in double while summing them, so clipping
 * needs no pass of its own (tl_clip_scale, tl_optim_step_scaled). It equals
 * tl_grad_norm up to the order of the additions. NAN before the first
 * successful call and after a failed one. */
double tl_shards_grad_norm(const tl_shards *s);

/* Resets every shard's context (end of step). */
void tl_shards_reset(tl_shards *s);

/* FLOP count and arena peak, summed over the shards' contexts. */
double tl_shards_flops(const tl_shards *s);
size_t tl_shards_arena_peak(const tl_shards *s);

#ifdef __cplusplus
}
#endif
#endif
