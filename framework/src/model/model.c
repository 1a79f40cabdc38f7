/* Building the model from its configuration, and the forward pass. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../internal.h"
#include "model_internal.h"

tl_model_config tl_model_config_default(tl_block_style style, int64_t vocab, int64_t d_model,
                                        int n_head, int64_t context, int n_layers)
{
    return (tl_model_config){
        .vocab = vocab,
        .d_model = d_model,
        .n_head = n_head,
        .context = context,
        .d_ff = 0,
        .style = style,
        .norm_eps = 1e-5f,
        .rope = style == TL_BLOCK_LLAMA ? TL_ROPE_INTERLEAVED : TL_ROPE_NONE,
        .rope_base = 10000.0f,
        .init_std = 0.02f,
        .scaled_init = true,
        .tie_head = -1,
        .aux_weight = 0.01f,
        .n_layers = n_layers,
        .layers = NULL,
    };
}

bool tl_model_tied(const tl_model_config *cfg)
{
    return cfg->tie_head < 0 ? cfg->style == TL_BLOCK_GPT2 : cfg->tie_head != 0;
}

tl_status tl_model_block_config(const tl_model_config *cfg, tl_block_config *out)
{
    if (cfg->vocab <= 0)
        return tl_seterr(TL_EINVAL, "model vocab = %lld must be positive", (long long)cfg->vocab);
    if (cfg->context <= 0)
        return tl_seterr(TL_EINVAL, "model context = %lld must be positive",
                         (long long)cfg->context);
    if (cfg->n_layers < 0)
        return tl_seterr(TL_EINVAL, "model n_layers = %d must not be negative", cfg->n_layers);
    if ((unsigned)cfg->style >= TL_BLOCK_STYLE_COUNT)
        return tl_seterr(TL_EINVAL, "model style %d is invalid; use TL_BLOCK_LLAMA or "
                                    "TL_BLOCK_GPT2",
                         (int)cfg->style);
    tl_block_config b = tl_block_config_default(cfg->d_model, cfg->n_head);
    b.style = cfg->style;
    b.d_ff = cfg->d_ff;
    b.norm_eps = cfg->norm_eps;
    b.rope = cfg->style == TL_BLOCK_GPT2 ? TL_ROPE_NONE : cfg->rope;
    b.rope_base = cfg->rope_base;
    b.init_std = cfg->init_std;
    b.scaled_init = cfg->scaled_init;
    b.n_layers = cfg->n_layers;
    tl_status st = tl_block_config_resolve(&b);
    if (st != TL_OK)
        return st;
    *out = b;
    return TL_OK;
}

/* Prefixes the current message with the layer, copying it first because
 * tl_seterr() writes into the buffer tl_errmsg() returns. An empty message
 * means a plugin function failed without setting one. */
static tl_status tl_layer_error(int l, const char *plugin)
{
    char msg[1024];
    snprintf(msg, sizeof msg, "%s",
             tl_errmsg()[0] ? tl_errmsg()
                            : "the plugin failed without a message; make it call tl_seterr() "
                              "before it returns NULL");
    tl_status st = tl_lasterr() != TL_OK ? tl_lasterr() : TL_EINVAL;
    if (plugin)
        return tl_seterr(st, "layer %d (plugin '%s'): %s", l, plugin, msg);
    return tl_seterr(st, "layer %d: %s", l, msg);
}

/* Opens the plugin of layer l, validates its settings and creates it. */
static tl_status tl_model_add_layer(tl_model *m, int l, const tl_layer_spec *spec)
{
    tl_model_layer *layer = &m->layers[l];
    const char *plugin = spec && spec->plugin ? spec->plugin : "transformer";
    layer->lib = tl_plugin_open(plugin);
    if (!layer->lib)
        return tl_layer_error(l, NULL);
    layer->plugin = tl_plugin_desc(layer->lib);

    tl_opt_table *opts = &layer->opts;
    tl_status st = tl_plugin_options(layer->plugin, spec ? spec->options : NULL,
                                     spec ? spec->n_options : 0, opts);
    if (st != TL_OK)
        return tl_layer_error(l, NULL);

    tl_layer_dims dims = {.block = m->block, .layer_index = l, .context = m->cfg.context};
    char prefix[32];
    snprintf(prefix, sizeof prefix, "layers.%d", l);
    tl_clearerr();
    layer->state = layer->plugin->create(opts, &dims, m->params, prefix);
    if (!layer->state)
        return tl_layer_error(l, layer->plugin->header.name);
    return TL_OK;
}

tl_model *tl_model_new(const tl_model_config *cfg, tl_rng *rng)
{
    tl_block_config block;
    if (tl_model_block_config(cfg, &block) != TL_OK)
        return NULL;
    tl_model *m = calloc(1, sizeof *m);
    if (!m) {
        tl_seterr(TL_ENOMEM, "could not allocate a model");
        return NULL;
    }
    m->cfg = *cfg;
    m->cfg.layers = NULL; /* the caller's array need not outlive this call */
    m->block = block;
    m->params = tl_params_new();
    m->layers = calloc((size_t)(cfg->n_layers ? cfg->n_layers : 1), sizeof *m->layers);
    m->hidden = calloc((size_t)cfg->n_layers + 1, sizeof *m->hidden);
    m->layer_flops = calloc((size_t)(cfg->n_layers ? cfg->n_layers : 1), sizeof *m->layer_flops);
    if (!m->params || !m->layers || !m->hidden || !m->layer_flops) {
        tl_seterr(TL_ENOMEM, "could not allocate a model of %d layers", cfg->n_layers);
        goto fail;
    }

    int64_t V = cfg->vocab, C = cfg->d_model;
    m->tok_emb = tl_params_add(m->params, "tok_emb", 2, (int64_t[]){V, C}, TL_INIT_NORMAL,
                               cfg->init_std, TL_PARAM_DECAY);
    if (!m->tok_emb)
        goto fail;
    if (cfg->style == TL_BLOCK_GPT2) {
        m->pos_emb = tl_params_add(m->params, "pos_emb", 2, (int64_t[]){cfg->context, C},
                                   TL_INIT_NORMAL, cfg->init_std, TL_PARAM_DECAY);
        if (!m->pos_emb)
            goto fail;
    }
    for (int l = 0; l < cfg->n_layers; l++) {
        m->n_layers = l + 1;
        if (tl_model_add_layer(m, l, cfg->layers ? &cfg->layers[l] : NULL) != TL_OK)
            goto fail;
    }
    m->final_norm = tl_params_add(m->params, "final_norm", 1, (int64_t[]){C}, TL_INIT_CONST, 1.0f, 0);
    if (!m->final_norm)
        goto fail;
    if (tl_model_tied(cfg)) {
        m->head = m->tok_emb;
    } else {
        m->head = tl_params_add(m->params, "head", 2, (int64_t[]){V, C}, TL_INIT_NORMAL,
                                cfg->init_std, TL_PARAM_DECAY);
        if (!m->head)
            goto fail;
    }
    if (tl_params_alloc(m->params, rng) != TL_OK)
        goto fail;
    return m;

fail:
    tl_model_free(m);
    return NULL;
}

void tl_model_free(tl_model *m)
{
    if (!m)
        return;
    for (int l = 0; l < m->n_layers; l++) {
        if (m->layers[l].state)
            m->layers[l].plugin->destroy(m->layers[l].state);
        tl_plugin_close(m->layers[l].lib);
    }
    tl_model_calib_clear(m);
    free(m->layers);
    free(m->hidden);
    free(m->layer_flops);
    tl_params_free(m->params);
    free(m);
}

const tl_model_config *tl_model_config_of(const tl_model *m) { return &m->cfg; }
tl_params *tl_model_params(tl_model *m) { return m->params; }
int tl_model_n_layers(const tl_model *m) { return m->n_layers; }

const char *tl_model_layer_plugin(const tl_model *m, int l)
{
    return l >= 0 && l < m->n_layers ? m->layers[l].plugin->header.name : NULL;
}

const tl_opt_table *tl_model_layer_options(const tl_model *m, int l)
{
    return l >= 0 && l < m->n_layers ? &m->layers[l].opts : NULL;
}

/* Token embeddings, plus learned absolute positions in GPT-2 style. */
static tl_tensor *tl_model_embed(tl_model *m, tl_ctx *ctx, tl_tensor *ids)
{
    tl_tensor *x = tl_embedding(ctx, m->tok_emb, ids);
    if (!x || !m->pos_emb)
        return x;
    int64_t B = ids->shape[0], T = ids->shape[1];
    tl_tensor *pos = tl_new(ctx, TL_I32, 2, (int64_t[]){B, T});
    if (!pos)
        return NULL;
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++)
            tl_i32(pos)[b * T + t] = (int32_t)t;
    return tl_add(ctx, x, tl_embedding(ctx, m->pos_emb, pos));
}

/* The forward. With keep false it leaves the model's per-call state (layer
 * outputs, FLOP counts, token count) alone, so that shards can run it at the
 * same time on contexts of their own. */
static tl_status tl_model_forward_impl(tl_model *m, tl_ctx *ctx, tl_tensor *ids,
                                       tl_tensor *targets, const tl_layer_args *args,
                                       tl_model_output *out, bool keep)
{
    memset(out, 0, sizeof *out);
    if (!ids || ids->dtype != TL_I32 || ids->ndim != 2)
        return tl_seterr(TL_EINVAL, "model forward: ids must be an int32 (B, T) tensor");
    int64_t B = ids->shape[0], T = ids->shape[1];
    if (T < 1 || T > m->cfg.context)
        return tl_seterr(TL_ESHAPE, "model forward: sequence length T = %lld is outside [1, %lld]; "
                                    "shorten the sequences or raise context",
                         (long long)T, (long long)m->cfg.context);
    if (targets && (targets->dtype != TL_I32 || !tl_same_shape(ids, targets)))
        return tl_seterr(TL_ESHAPE, "model forward: targets must be int32 with the shape of ids");

    tl_layer_args la = args ? *args : (tl_layer_args){.train = false};
    la.aux_loss = NULL;
    la.n_aux_terms = 0;
    double flops_start = tl_ctx_flops_forward(ctx);
    if (keep)
        m->tokens = B * T;

    tl_tensor *x = tl_model_embed(m, ctx, ids);
    if (!x)
        return tl_lasterr();
    if (keep) {
        m->hidden[0] = x;
        tl_keep_grad(x); /* dL/dh is what tl_model_hidden offers */
    }
    for (int l = 0; l < m->n_layers; l++) {
        tl_model_layer *layer = &m->layers[l];
        double before = tl_ctx_flops_forward(ctx);
        tl_tensor *in = x;
        tl_clearerr();
        x = layer->plugin->forward(ctx, layer->state, in, &la);
        if (!x)
            return tl_layer_error(l, layer->plugin->header.name);
        /* A plugin's output feeds the next layer, which would report the
         * wrong shape as its own input's. */
        if (x->dtype != TL_F32 || !tl_same_shape(x, in)) {
            char got[64], want[64];
            return tl_seterr(TL_ESHAPE, "layer %d (plugin '%s'): forward returned y of shape %s, "
                                        "but y must have the shape of x, %s; fix the plugin",
                             l, layer->plugin->header.name, tl_shape_str(x, got, sizeof got),
                             tl_shape_str(in, want, sizeof want));
        }
        if (keep) {
            m->layer_flops[l] = tl_ctx_flops_forward(ctx) - before;
            m->hidden[l + 1] = x;
            tl_keep_grad(x);
        }
    }

    tl_tensor *h = m->cfg.style == TL_BLOCK_GPT2
                       ? tl_layernorm(ctx, x, m->final_norm, NULL, m->cfg.norm_eps)
                       : tl_rmsnorm(ctx, x, m->final_norm, m->cfg.norm_eps);
    out->logits = tl_linear(ctx, h, m->head);
    if (!out->logits)
        return tl_lasterr();
    out->aux = la.aux_loss;
    out->n_aux_terms = la.n_aux_terms;
    if (targets) {
        int64_t V = m->cfg.vocab;
        tl_tensor *flat = tl_reshape(ctx, out->logits, 2, (int64_t[]){B * T, V});
        tl_tensor *tgt = tl_reshape(ctx, targets, 1, (int64_t[]){B * T});
        out->ce = tl_cross_entropy(ctx, flat, tgt, NULL, &out->token_loss);
        if (!out->ce)
            return tl_lasterr();
        out->loss = out->ce;
        if (out->aux && m->cfg.aux_weight != 0.0f)
            out->loss = tl_add(ctx, out->ce, tl_scale(ctx, out->aux, m->cfg.aux_weight));
        if (!out->loss)
            return tl_lasterr();
    }
    if (keep)
        m->flops = tl_ctx_flops_forward(ctx) - flops_start;
    return TL_OK;
}

tl_status tl_model_forward(tl_model *m, tl_ctx *ctx, tl_tensor *ids, tl_tensor *targets,
                           const tl_layer_args *args, tl_model_output *out)
{
    return tl_model_forward_impl(m, ctx, ids, targets, args, out, true);
}

tl_status tl_model_forward_shard(tl_model *m, tl_ctx *ctx, tl_tensor *ids, tl_tensor *targets,
                                 const tl_layer_args *args, tl_model_output *out)
{
    if (args && args->collect_stats)
        return tl_seterr(TL_EINVAL, "model forward of a shard: collect_stats must be false, "
                                    "since the layers keep one set of statistics");
    return tl_model_forward_impl(m, ctx, ids, targets, args, out, false);
}

tl_tensor *tl_model_hidden(const tl_model *m, int l)
{
    return l >= -1 && l < m->n_layers ? m->hidden[l + 1] : NULL;
}

tl_status tl_model_layer_stats(const tl_model *m, int l, tl_routing_stats *out)
{
    if (l < 0 || l >= m->n_layers)
        return tl_seterr(TL_EINVAL, "layer %d does not exist; the model has %d layers", l,
                         m->n_layers);
    const tl_model_layer *layer = &m->layers[l];
    if (!layer->plugin->stats) {
        memset(out, 0, sizeof *out);
        return TL_OK;
    }
    return layer->plugin->stats(layer->state, out);
}

tl_status tl_model_set_ratios(tl_model *m, int l, const double *ratios, int n)
{
    if (l < 0 || l >= m->n_layers)
        return tl_seterr(TL_EINVAL, "layer %d does not exist; the model has %d layers", l,
                         m->n_layers);
    tl_model_layer *layer = &m->layers[l];
    if (!layer->plugin->set_ratios)
        return tl_seterr(TL_EINVAL, "layer %d (plugin '%s') has no ratios to set", l,
                         layer->plugin->header.name);
    return layer->plugin->set_ratios(layer->state, ratios, n);
}
