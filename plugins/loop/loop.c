/* The Loop layer: one block applied `steps` times to every token,
 * Y = B(B(...B(X))), with one set of weights. */
#include <stdlib.h>

#include "thinklab/plugin.h"

typedef struct loop_layer {
    tl_block blk;
    int steps;
} loop_layer;

static const tl_opt_spec loop_options[] = {
    {.name = "steps", .type = TL_OPT_INT, .def = {.type = TL_OPT_INT, .i = 4}, .min = 1, .max = 64,
     .doc = "N, the number of times the block is applied"},
    {.name = "d_ff", .type = TL_OPT_INT, .def = {.type = TL_OPT_INT, .i = 0}, .min = 0, .max = 1 << 20,
     .doc = "MLP hidden width; 0 takes the model's"},
};

static void *loop_create(const tl_opt_table *opts, const tl_layer_dims *dims, tl_params *params,
                         const char *prefix)
{
    loop_layer *st = calloc(1, sizeof *st);
    if (!st) {
        tl_seterr(TL_ENOMEM, "could not allocate a loop layer");
        return NULL;
    }
    st->steps = (int)tl_opt_int(opts, "steps");
    tl_block_config cfg = dims->block;
    if (tl_opt_is_set(opts, "d_ff"))
        cfg.d_ff = tl_opt_int(opts, "d_ff");
    if (tl_block_config_resolve(&cfg) != TL_OK || tl_block_init(&st->blk, &cfg, params, prefix) != TL_OK) {
        free(st);
        return NULL;
    }
    return st;
}

static tl_tensor *loop_forward(tl_ctx *ctx, void *state, tl_tensor *x, tl_layer_args *args)
{
    loop_layer *st = state;
    for (int i = 0; i < st->steps; i++)
        x = tl_block_forward(ctx, &st->blk, x, NULL);
    return x;
}

static double loop_flops(const void *state, int64_t T)
{
    const loop_layer *st = state;
    return st->steps * tl_block_flops(&st->blk.cfg, T, (double)(T + 1) / 2.0) / (double)T;
}

static void loop_destroy(void *state) { free(state); }

static const tl_plugin loop_plugin = {
    .header = TL_PLUGIN_HEADER_INIT("loop"),
    .description = "one block applied N times to every token (shared weights)",
    .version = "1.0",
    .options = loop_options,
    .n_options = 2,
    .create = loop_create,
    .forward = loop_forward,
    .flops_per_token = loop_flops,
    .destroy = loop_destroy,
};

TL_PLUGIN_EXPORT(loop_plugin)
