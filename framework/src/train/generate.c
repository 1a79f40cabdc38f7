/* Text generation by sampling, with causal routing and the whole context
 * recomputed for each new token. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "train/train_internal.h"

typedef struct scored_id {
    float logit;
    int32_t id;
} scored_id;

/* Higher logit first, then lower id, so ties cannot make the choice depend
 * on the sort's stability. */
static int by_logit_desc(const void *a, const void *b)
{
    const scored_id *x = a, *y = b;
    if (x->logit != y->logit)
        return x->logit > y->logit ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* Draws one id from logits (V) at temperature with top-k. order is scratch
 * for V entries. */
static int32_t sample_token(const float *logits, int64_t V, float temperature, int top_k,
                            scored_id *order, tl_rng *rng)
{
    if (temperature <= 0.0f) {
        int32_t best = 0;
        for (int64_t v = 1; v < V; v++)
            if (logits[v] > logits[best])
                best = (int32_t)v;
        return best;
    }
    for (int64_t v = 0; v < V; v++)
        order[v] = (scored_id){logits[v], (int32_t)v};
    int64_t k = top_k > 0 && top_k < V ? top_k : V;
    qsort(order, (size_t)V, sizeof *order, by_logit_desc);

    /* Softmax over the k best at the temperature, in double. */
    double top = order[0].logit, sum = 0.0;
    for (int64_t i = 0; i < k; i++)
        sum += exp(((double)order[i].logit - top) / temperature);
    double u = (double)tl_rng_uniform(rng) * sum, acc = 0.0;
    for (int64_t i = 0; i < k; i++) {
        acc += exp(((double)order[i].logit - top) / temperature);
        if (u < acc)
            return order[i].id;
    }
    return order[k - 1].id;
}

tl_status tl_generate(tl_ctx *ctx, tl_model *model, const int32_t *prompt, int64_t n_prompt,
                      const tl_generate_config *cfg, int64_t context, tl_rng *rng, int32_t *out)
{
    if (!ctx || !model || !prompt || !cfg || !rng || (!out && cfg->max_new_tokens > 0))
        return tl_seterr(TL_EINVAL, "tl_generate: ctx, model, prompt, cfg, rng and out must be "
                                    "given");
    if (n_prompt < 1)
        return tl_seterr(TL_EINVAL, "tl_generate: the prompt needs at least one token, got %lld",
                         (long long)n_prompt);
    if (cfg->max_new_tokens < 0 || !(cfg->temperature >= 0) || cfg->top_k < 0)
        return tl_seterr(TL_EINVAL, "tl_generate: max_new_tokens %lld, temperature %g and top_k "
                                    "%d must be >= 0", (long long)cfg->max_new_tokens,
                         (double)cfg->temperature, cfg->top_k);
    const tl_model_config *mc = tl_model_config_of(model);
    if (context <= 0 || context > mc->context)
        context = mc->context;
    int64_t V = mc->vocab;
    for (int64_t i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= V)
            return tl_seterr(TL_EINVAL, "tl_generate: prompt token %lld is id %d, outside the "
                                        "vocabulary [0, %lld)", (long long)i, (int)prompt[i],
                             (long long)V);

    bool grad_was = tl_ctx_grad_enabled(ctx);
    tl_ctx_set_grad_enabled(ctx, false);
    tl_layer_args args = {.train = false, .routing = TL_ROUTING_CAUSAL};
    tl_status st = TL_OK;
    for (int64_t g = 0; g < cfg->max_new_tokens; g++) {
        tl_ctx_reset(ctx);
        /* The window is the last `context` ids of prompt followed by out[0..g). */
        int64_t total = n_prompt + g;
        int64_t T = total < context ? total : context;
        int64_t start = total - T;
        int32_t *window = tl_ctx_alloc(ctx, (size_t)T * sizeof *window);
        scored_id *order = tl_ctx_alloc(ctx, (size_t)V * sizeof *order);
        if (!window || !order) {
            st = tl_lasterr();
            break;
        }
        for (int64_t i = 0; i < T; i++) {
            int64_t src = start + i;
            window[i] = src < n_prompt ? prompt[src] : out[src - n_prompt];
        }
        int64_t shape[2] = {1, T};
        tl_tensor *ids = tl_wrap(ctx, TL_I32, window, 2, shape);
        tl_model_output mo;
        st = ids ? tl_model_forward(model, ctx, ids, NULL, &args, &mo) : tl_lasterr();
        if (st != TL_OK)
            break;
        const float *last = tl_f32(mo.logits) + (T - 1) * V;
        out[g] = sample_token(last, V, cfg->temperature, cfg->top_k, order, rng);
    }
    tl_ctx_reset(ctx);
    tl_ctx_set_grad_enabled(ctx, grad_was);
    return st;
}
