/* The dense layer: one pre-norm decoder block B(x) = x + Delta(x), in the
 * model's style (LLaMA by default, GPT-2 when the model says so). */
#include <stdlib.h>

#include "thinklab/plugin.h"

typedef struct transformer_layer {
    tl_block blk;
} transformer_layer;

static const tl_opt_spec transformer_options[] = {
    {.name = "d_ff", .type = TL_OPT_INT, .def = {.type = TL_OPT_INT, .i = 0}, .min = 0, .max = 1 << 20,
     .doc = "MLP hidden width; 0 takes the model's (4C for GPT-2, 8C/3 rounded up to a multiple of 32 for LLaMA)"},
};

static void *transformer_create(const tl_opt_table *opts, const tl_layer_dims *dims,
                                tl_params *params, const char *prefix)
{
    transformer_layer *st = calloc(1, sizeof *st);
    if (!st) {
        tl_seterr(TL_ENOMEM, "could not allocate a transformer layer");
        return NULL;
    }
    tl_block_config cfg = dims->block;
    if (tl_opt_is_set(opts, "d_ff"))
        cfg.d_ff = tl_opt_int(opts, "d_ff");
    if (tl_block_config_resolve(&cfg) != TL_OK || tl_block_init(&st->blk, &cfg, params, prefix) != TL_OK) {
        free(st);
        return NULL;
    }
    return st;
}

static tl_tensor *transformer_forward(tl_ctx *ctx, void *state, tl_tensor *x, tl_layer_args *args)
{
    transformer_layer *st = state;
    return tl_block_forward(ctx, &st->blk, x, NULL);
}

static double transformer_flops(const void *state, int64_t T)
{
    const transformer_layer *st = state;
    /* A causal query attends to (T + 1) / 2 keys on average. */
    return tl_block_flops(&st->blk.cfg, T, (double)(T + 1) / 2.0) / (double)T;
}

static void transformer_destroy(void *state) { free(state); }

static const tl_plugin transformer_plugin = {
    .header = TL_PLUGIN_HEADER_INIT("transformer"),
    .description = "one pre-norm decoder block (attention + MLP) in the model's style",
    .version = "1.0",
    .options = transformer_options,
    .n_options = 1,
    .create = transformer_create,
    .forward = transformer_forward,
    .flops_per_token = transformer_flops,
    .destroy = transformer_destroy,
};

TL_PLUGIN_EXPORT(transformer_plugin)
