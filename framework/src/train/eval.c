/* Validation loss, perplexity and bits per token and per byte under each
 * routing mode. */
#include <math.h>
#include <string.h>

#include "train/train_internal.h"

static const double LN2 = 0.69314718055994530942;

const char *tl_eval_routing_name(tl_eval_routing mode)
{
    switch (mode) {
    case TL_EVAL_TOPK: return "topk";
    case TL_EVAL_CAUSAL: return "causal";
    case TL_EVAL_CALIBRATED: return "calibrated";
    default: return "unknown";
    }
}

tl_status tl_calibrate_thresholds(tl_ctx *ctx, tl_model *model, const tl_train_data *data,
                                  int64_t batch_size, int64_t context, int64_t n_batches,
                                  tl_rng *rng)
{
    if (!ctx || !model || !data || !data->train || !rng)
        return tl_seterr(TL_EINVAL, "tl_calibrate_thresholds: ctx, model, training tokens and "
                                    "rng must be given");
    if (n_batches < 1 || batch_size < 1 || context < 1 || batch_size > INT32_MAX ||
        context > INT32_MAX)
        return tl_seterr(TL_EINVAL, "tl_calibrate_thresholds: n_batches %lld, batch_size %lld "
                                    "and context %lld must be positive", (long long)n_batches,
                         (long long)batch_size, (long long)context);
    tl_sampler sampler;
    tl_status st = tl_sampler_init(&sampler, data->train, (int)batch_size, (int)context, 0, 1);
    if (st != TL_OK)
        return st;
    st = tl_model_calibrate_begin(model);
    size_t bt = (size_t)(batch_size * context);
    for (int64_t b = 0; b < n_batches && st == TL_OK; b++) {
        tl_ctx_reset(ctx);
        int32_t *inputs = tl_ctx_alloc(ctx, bt * sizeof *inputs);
        int32_t *targets = tl_ctx_alloc(ctx, bt * sizeof *targets);
        if (!inputs || !targets) {
            st = tl_lasterr();
            break;
        }
        st = tl_sampler_next(&sampler, rng, inputs, targets);
        if (st != TL_OK)
            break;
        int64_t shape[2] = {batch_size, context};
        tl_tensor *ids = tl_wrap(ctx, TL_I32, inputs, 2, shape);
        st = ids ? tl_model_calibrate_add(model, ctx, ids) : tl_lasterr();
    }
    tl_ctx_reset(ctx);
    if (st != TL_OK)
        return st;
    return tl_model_calibrate_end(model);
}

int64_t tl_train_target_bytes(const tl_tokenizer *tok, const int32_t *targets, int64_t n)
{
    if (!tok)
        return 0;
    int64_t bytes = 0;
    for (int64_t i = 0; i < n; i++) {
        size_t len = 0;
        if (tl_tokenizer_token_bytes(tok, targets[i], &len))
            bytes += (int64_t)len;
    }
    return bytes;
}

/* Adds the selected and scored token counts of every routing decision of the
 * last forward. */
static tl_status count_selected(const tl_model *model, int64_t *selected, int64_t *scored)
{
    for (int l = 0; l < tl_model_n_layers(model); l++) {
        tl_routing_stats rs;
        tl_status st = tl_model_layer_stats(model, l, &rs);
        if (st != TL_OK)
            return st;
        for (int t = 0; t < rs.n_steps; t++) {
            *selected += rs.steps[t].selected;
            *scored += rs.steps[t].tokens;
        }
    }
    return TL_OK;
}

tl_status tl_evaluate(tl_ctx *ctx, tl_model *model, const tl_train_data *data, int64_t batch_size,
                      int64_t context, int64_t n_batches, tl_eval_routing routing,
                      tl_eval_result *out)
{
    if (!ctx || !model || !data || !out)
        return tl_seterr(TL_EINVAL, "tl_evaluate: ctx, model, data and out must be given");
    if (!data->val || !data->val->ids)
        return tl_seterr(TL_EINVAL, "tl_evaluate: no validation tokens; set data->val");
    if ((unsigned)routing >= TL_EVAL_ROUTING_COUNT)
        return tl_seterr(TL_EINVAL, "tl_evaluate: routing mode %d is unknown", (int)routing);
    if (batch_size < 1 || context < 1 || batch_size > INT32_MAX || context > INT32_MAX ||
        n_batches < 0)
        return tl_seterr(TL_EINVAL, "tl_evaluate: batch_size %lld and context %lld must be "
                                    "positive and n_batches %lld >= 0", (long long)batch_size,
                         (long long)context, (long long)n_batches);

    tl_eval_iter it;
    tl_status st = tl_eval_iter_init(&it, data->val, (int)batch_size, (int)context, 0, 1,
                                     n_batches);
    if (st != TL_OK)
        return st;
    bool grad_was = tl_ctx_grad_enabled(ctx);
    tl_ctx_set_grad_enabled(ctx, false);
    tl_layer_args args = {
        .train = false,
        .routing = routing == TL_EVAL_CAUSAL       ? TL_ROUTING_CAUSAL
                   : routing == TL_EVAL_CALIBRATED ? TL_ROUTING_CALIBRATED
                                                   : TL_ROUTING_TOPK,
        .collect_stats = true,
    };

    double total = 0.0;
    int64_t tokens = 0, bytes = 0, selected = 0, scored = 0;
    for (;;) {
        tl_ctx_reset(ctx);
        size_t bt = (size_t)(batch_size * context);
        int32_t *inputs = tl_ctx_alloc(ctx, bt * sizeof *inputs);
        int32_t *targets = tl_ctx_alloc(ctx, bt * sizeof *targets);
        if (!inputs || !targets) {
            st = tl_lasterr();
            break;
        }
        int rows = 0;
        if (!tl_eval_iter_next(&it, inputs, targets, &rows))
            break;
        if (rows == 0)
            continue;
        int64_t shape[2] = {rows, context};
        tl_tensor *ids = tl_wrap(ctx, TL_I32, inputs, 2, shape);
        tl_tensor *tgt = tl_wrap(ctx, TL_I32, targets, 2, shape);
        tl_model_output mo;
        st = ids && tgt ? tl_model_forward(model, ctx, ids, tgt, &args, &mo) : tl_lasterr();
        if (st != TL_OK)
            break;
        int64_t n = (int64_t)rows * context;
        const float *per_token = tl_f32(mo.token_loss);
        for (int64_t i = 0; i < n; i++)
            total += per_token[i];
        tokens += n;
        bytes += tl_train_target_bytes(data->tokenizer, targets, n);
        if ((st = count_selected(model, &selected, &scored)) != TL_OK)
            break;
    }
    tl_ctx_reset(ctx);
    tl_ctx_set_grad_enabled(ctx, grad_was);
    if (st != TL_OK)
        return st;
    if (tokens == 0)
        return tl_seterr(TL_EINVAL, "tl_evaluate: the validation split (%lld tokens) holds no "
                                    "full window of %lld + 1 tokens", (long long)data->val->n,
                         (long long)context);

    double loss = total / (double)tokens;
    *out = (tl_eval_result){
        .loss = loss,
        .perplexity = exp(loss),
        .bits_per_token = loss / LN2,
        .bits_per_byte = bytes > 0 ? total / (LN2 * (double)bytes) : NAN,
        .tokens = tokens,
        .bytes = bytes,
        .selected_fraction = scored > 0 ? (double)selected / (double)scored : NAN,
        .routing = routing,
    };
    return TL_OK;
}
