/* The Mixture-of-Depths layer (Raposo et al., arXiv 2404.02258): a router
 * picks a capacity fraction of the tokens, the block runs on those alone
 * (causal attention among them at their original positions), and
 *
 *   y[S] = x[S] + r[S] * Delta(x[S]),   r = x · w (no nonlinearity, no bias)
 *
 * while the other tokens pass through unchanged. Causal routing takes the
 * tokens with r > 0, calibrated routing those with r > theta (theta set by
 * calibration). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "route.h"

typedef struct mod_layer {
    tl_block blk;
    double capacity;
    tl_routing routing;
    tl_tensor *router; /* w (C) */
    double threshold;         /* theta of calibrated routing, NAN until set */
    double calibrated_ratio;  /* the capacity theta was calibrated at */
    tl_routing_stats stats;
    tl_route_buffers buffers;
} mod_layer;

static const tl_opt_spec mod_options[] = {
    {.name = "capacity", .type = TL_OPT_FLOAT, .def = {.type = TL_OPT_FLOAT, .f = 0.125}, .min = 0,
     .max = 1, .doc = "c, fraction of each sequence's tokens the block processes; 0 makes the layer the identity"},
    {.name = "routing", .type = TL_OPT_ENUM, .def = {.type = TL_OPT_ENUM, .s = "topk"},
     .choices = {"topk", "topk_aux", "causal"},
     .doc = "token choice: per-sequence top-k, top-k plus auxiliary loss, or causal threshold (logit > 0) plus auxiliary loss"},
    {.name = "router_init_std", .type = TL_OPT_FLOAT, .def = {.type = TL_OPT_FLOAT, .f = 0.02},
     .min = 0, .max = 10, .doc = "standard deviation of the router vector at initialisation"},
    {.name = "d_ff", .type = TL_OPT_INT, .def = {.type = TL_OPT_INT, .i = 0}, .min = 0, .max = 1 << 20,
     .doc = "MLP hidden width; 0 takes the model's"},
};
enum { MOD_N_OPTIONS = sizeof mod_options / sizeof mod_options[0] };

static void mod_destroy(void *state)
{
    mod_layer *st = state;
    if (!st)
        return;
    tl_route_buffers_free(&st->buffers);
    free(st);
}

static void *mod_create(const tl_opt_table *opts, const tl_layer_dims *dims, tl_params *params,
                        const char *prefix)
{
    mod_layer *st = calloc(1, sizeof *st);
    if (!st) {
        tl_seterr(TL_ENOMEM, "could not allocate a mod layer");
        return NULL;
    }
    st->capacity = tl_opt_float(opts, "capacity");
    st->routing = (tl_routing)(TL_ROUTING_TOPK + tl_opt_choice(opts, "routing"));
    st->threshold = NAN;
    tl_block_config cfg = dims->block;
    if (tl_opt_is_set(opts, "d_ff"))
        cfg.d_ff = tl_opt_int(opts, "d_ff");
    if (tl_block_config_resolve(&cfg) != TL_OK || tl_block_init(&st->blk, &cfg, params, prefix) != TL_OK)
        goto fail;
    char name[128];
    snprintf(name, sizeof name, "%s.router", prefix);
    st->router = tl_params_add(params, name, 1, (int64_t[]){cfg.d_model}, TL_INIT_NORMAL,
                               (float)tl_opt_float(opts, "router_init_std"), 0);
    if (!st->router)
        goto fail;
    return st;

fail:
    mod_destroy(st);
    return NULL;
}

static tl_tensor *mod_forward(tl_ctx *ctx, void *state, tl_tensor *x, tl_layer_args *args)
{
    mod_layer *st = state;
    if (!x)
        return NULL;
    if (x->ndim != 3) {
        char buf[96];
        tl_seterr(TL_ESHAPE, "mod: input %s must be (B, T, C)", tl_shape_str(x, buf, sizeof buf));
        return NULL;
    }
    int64_t B = x->shape[0], T = x->shape[1], C = x->shape[2];
    tl_routing routing = args->routing != TL_ROUTING_DEFAULT ? args->routing : st->routing;
    if (args->collect_stats) {
        memset(&st->stats, 0, sizeof st->stats);
        st->stats.B = B;
        st->stats.T = T;
        if (tl_route_buffers_reserve(&st->buffers, 1, B * T) != TL_OK)
            return NULL;
        st->stats.masks = st->buffers.masks;
        st->stats.token_passes = st->buffers.passes;
        st->stats.scores = st->buffers.scores;
        st->stats.n_steps = 1;
        st->stats.steps[0] = (tl_step_stats){.step = 1, .ratio = st->capacity, .skipped = true,
                                             .tokens = B * T, .topk_agreement = -1.0};
        for (int64_t i = 0; i < B * T; i++)
            st->buffers.passes[i] = 0;
    }
    if (st->capacity == 0.0)
        return x;
    float threshold;
    if (tl_route_threshold("mod", 1, routing, 0.0f, &st->threshold, &st->calibrated_ratio,
                           st->capacity, 0, &threshold) != TL_OK)
        return NULL;

    tl_tensor *w = tl_reshape(ctx, st->router, 2, (int64_t[]){1, C});
    tl_tensor *logits = tl_linear(ctx, x, w); /* (B, T, 1) */
    tl_tensor *scores = tl_reshape(ctx, logits, 2, (int64_t[]){B, T});
    if (!scores)
        return NULL;
    bool causal = routing == TL_ROUTING_CAUSAL || routing == TL_ROUTING_CALIBRATED;
    bool aux = routing == TL_ROUTING_TOPK_AUX || routing == TL_ROUTING_CAUSAL;
    tl_route r;
    int64_t k = tl_ratio_count(st->capacity, T);
    if (tl_route_select(ctx, scores, causal, threshold, k, causal || aux, &r) != TL_OK)
        return NULL;
    if (aux && args->train) {
        /* Stop-gradient copy of the router input: the loss trains w alone. */
        tl_tensor *sg = tl_linear(ctx, tl_detach(ctx, x), w);
        if (tl_route_add_aux(ctx, &r, sg, args) != TL_OK)
            return NULL;
    }
    if (args->collect_stats) {
        tl_step_stats *s = &st->stats.steps[0];
        tl_route_step_stats(s, &r, tl_f32(logits), 0.0, 0.0);
        memcpy(st->buffers.masks, r.mask, (size_t)(B * T));
        memcpy(st->buffers.scores, tl_f32(logits), (size_t)(B * T) * sizeof(float));
        for (int64_t i = 0; i < B * T; i++)
            st->buffers.passes[i] = r.mask[i];
    }
    if (r.selected == 0)
        return x;

    if (r.all) {
        tl_tensor *delta = tl_block_delta(ctx, &st->blk, x, NULL);
        return tl_add(ctx, x, tl_mul(ctx, delta, logits));
    }
    tl_attention_opts attn = tl_route_attention(&r);
    tl_tensor *xs = tl_route_gather(ctx, &r, x);
    tl_tensor *delta = tl_block_delta(ctx, &st->blk, xs, &attn);
    tl_tensor *gate = tl_route_gather(ctx, &r, logits);
    return tl_route_scatter_add(ctx, &r, x, tl_mul(ctx, delta, gate));
}

static tl_status mod_stats(const void *state, tl_routing_stats *out)
{
    const mod_layer *st = state;
    *out = st->stats;
    return TL_OK;
}

static tl_status mod_set_ratios(void *state, const double *ratios, int n)
{
    mod_layer *st = state;
    if (n != 1)
        return tl_seterr(TL_EINVAL, "mod: %d ratios given; the layer has one capacity", n);
    if (!(ratios[0] >= 0.0 && ratios[0] <= 1.0))
        return tl_seterr(TL_EINVAL, "mod: capacity %g is outside [0, 1]", ratios[0]);
    st->capacity = ratios[0];
    return TL_OK;
}

static tl_status mod_set_thresholds(void *state, const double *thresholds, int n)
{
    mod_layer *st = state;
    return tl_route_set_thresholds("mod", &st->threshold, &st->calibrated_ratio, &st->capacity, 1,
                                   thresholds, n);
}

static int mod_thresholds(const void *state, double *out, int max)
{
    const mod_layer *st = state;
    if (max > 0)
        out[0] = st->threshold;
    return 1;
}

static double mod_flops(const void *state, int64_t T)
{
    const mod_layer *st = state;
    int64_t k = tl_ratio_count(st->capacity, T);
    if (k == 0)
        return 0.0;
    double C = (double)st->blk.cfg.d_model;
    double f = tl_block_flops(&st->blk.cfg, k, (double)(k + 1) / 2.0);
    f += 2.0 * C * (double)T + 2.0 * C * (double)k; /* router logits, gate and scatter-add */
    return f / (double)T;
}

static const tl_plugin mod_plugin = {
    .header = TL_PLUGIN_HEADER_INIT("mod"),
    .description = "Mixture-of-Depths: the block processes a routed capacity fraction of the "
                   "tokens, the rest pass through",
    .version = "1.0",
    .options = mod_options,
    .n_options = MOD_N_OPTIONS,
    .create = mod_create,
    .forward = mod_forward,
    .stats = mod_stats,
    .set_ratios = mod_set_ratios,
    .set_thresholds = mod_set_thresholds,
    .thresholds = mod_thresholds,
    .flops_per_token = mod_flops,
    .destroy = mod_destroy,
};

TL_PLUGIN_EXPORT(mod_plugin)
