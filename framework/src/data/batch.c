/* Training batches drawn at random and evaluation batches in order. */
#include <string.h>

#include "data_internal.h"

/* Checks the shape and rank arguments shared by the sampler and the
 * evaluation iterator; split names the tokens in messages. */
static tl_status tl_check_batch_args(const tl_tokens *tokens, int batch, int context, int rank,
                                     int world, const char *split)
{
    if (!tokens || (!tokens->ids && tokens->n > 0))
        return tl_seterr(TL_EINVAL, "no %s tokens given: encode the corpus first", split);
    if (batch < 1)
        return tl_seterr(TL_EINVAL, "batch size %d is invalid: use 1 or more rows per rank", batch);
    if (context < 1)
        return tl_seterr(TL_EINVAL, "context length %d is invalid: use 1 or more tokens", context);
    if (world < 1)
        return tl_seterr(TL_EINVAL, "world size %d is invalid: use 1 or more ranks", world);
    if (rank < 0 || rank >= world)
        return tl_seterr(TL_EINVAL, "rank %d is outside [0, %d): ranks count from 0 to world - 1",
                         rank, world);
    if ((int64_t)context + 1 > tokens->n)
        return tl_seterr(TL_EINVAL, "a window of context + 1 = %lld tokens is longer than the "
                                    "%lld tokens of the %s split: use a context of at most %lld, "
                                    "or more text in that split",
                         (long long)context + 1, (long long)tokens->n, split,
                         (long long)tokens->n - 1);
    return TL_OK;
}

/* Copies window [start, start + T] into one row of inputs and of targets. */
static void tl_copy_window(const int32_t *tokens, int64_t start, int T, int32_t *input_row,
                           int32_t *target_row)
{
    memcpy(input_row, tokens + start, (size_t)T * sizeof *input_row);
    memcpy(target_row, tokens + start + 1, (size_t)T * sizeof *target_row);
}

tl_status tl_sampler_init(tl_sampler *s, const tl_tokens *tokens, int batch, int context, int rank,
                          int world)
{
    tl_status status = tl_check_batch_args(tokens, batch, context, rank, world, "training");
    if (status != TL_OK)
        return status;
    *s = (tl_sampler){.tokens = tokens->ids, .n_tokens = tokens->n, .batch = batch,
                      .context = context, .rank = rank, .world = world};
    return TL_OK;
}

tl_status tl_sampler_next(tl_sampler *s, tl_rng *rng, int32_t *inputs, int32_t *targets)
{
    if (!s || !s->tokens || !rng || !inputs || !targets)
        return tl_seterr(TL_EINVAL, "tl_sampler_next needs an initialised sampler, an rng and "
                                    "two (B,T) buffers");
    /* Window starts lie in [0, n - T), so window [start, start + T] fits. */
    uint64_t n_starts = (uint64_t)(s->n_tokens - s->context);
    int first = s->rank * s->batch;
    int rows = s->world * s->batch;
    for (int row = 0; row < rows; row++) {
        int64_t start = (int64_t)tl_rng_below(rng, n_starts);
        int local = row - first;
        if (local < 0 || local >= s->batch)
            continue;
        size_t offset = (size_t)local * (size_t)s->context;
        tl_copy_window(s->tokens, start, s->context, inputs + offset, targets + offset);
    }
    s->batches_drawn++;
    return TL_OK;
}

tl_status tl_eval_iter_init(tl_eval_iter *it, const tl_tokens *tokens, int batch, int context,
                            int rank, int world, int64_t max_batches)
{
    tl_status status = tl_check_batch_args(tokens, batch, context, rank, world, "validation");
    if (status != TL_OK)
        return status;
    if (max_batches < 0)
        return tl_seterr(TL_EINVAL, "max_batches %lld is invalid: use 0 for the whole split or a "
                                    "positive limit", (long long)max_batches);
    *it = (tl_eval_iter){.tokens = tokens->ids, .n_tokens = tokens->n, .batch = batch,
                         .context = context, .rank = rank, .world = world};
    it->n_windows = (tokens->n - 1) / context;
    int64_t per_batch = (int64_t)batch * world;
    if (max_batches > 0 && max_batches < (it->n_windows + per_batch - 1) / per_batch)
        it->n_windows = max_batches * per_batch;
    return TL_OK;
}

int tl_eval_iter_next(tl_eval_iter *it, int32_t *inputs, int32_t *targets, int *rows)
{
    *rows = 0;
    if (it->next_window >= it->n_windows)
        return 0;
    int64_t first = it->next_window + (int64_t)it->rank * it->batch;
    for (int row = 0; row < it->batch && first + row < it->n_windows; row++) {
        size_t offset = (size_t)row * (size_t)it->context;
        tl_copy_window(it->tokens, (first + row) * it->context, it->context, inputs + offset,
                       targets + offset);
        (*rows)++;
    }
    it->next_window += (int64_t)it->batch * it->world;
    return 1;
}

void tl_eval_iter_reset(tl_eval_iter *it) { it->next_window = 0; }
