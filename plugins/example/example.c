/* Example plugin: a scaled residual MLP, y = x + scale * W2 gelu(W1 norm(x)).
 * It shows the parts every plugin has: an option schema, parameters
 * registered under the layer's prefix, a forward built from thinklab ops (so
 * autograd covers it) and a FLOP count. */
#include <stdio.h>
#include <stdlib.h>

#include <thinklab/plugin.h>
#include <thinklab/thinklab.h>

typedef struct example_layer {
    tl_tensor *norm, *w1, *w2; /* norm (C), w1 (F, C), w2 (C, F) */
    float scale, eps;
    int64_t C, F;
    tl_block_style style;
} example_layer;

static const tl_opt_spec example_options[] = {
    {.name = "scale", .type = TL_OPT_FLOAT, .def = {.type = TL_OPT_FLOAT, .f = 0.5}, .min = -10,
     .max = 10, .doc = "factor on the MLP branch before it is added to x"},
    {.name = "hidden", .type = TL_OPT_INT, .def = {.type = TL_OPT_INT, .i = 0}, .min = 0,
     .max = 1 << 20, .doc = "MLP hidden width F; 0 picks 4C"},
};

static void *example_create(const tl_opt_table *opts, const tl_layer_dims *dims, tl_params *params,
                            const char *prefix)
{
    example_layer *st = calloc(1, sizeof *st);
    if (!st) {
        tl_seterr(TL_ENOMEM, "could not allocate an example layer");
        return NULL;
    }
    st->C = dims->block.d_model;
    st->F = tl_opt_int(opts, "hidden") ? tl_opt_int(opts, "hidden") : 4 * st->C;
    st->scale = (float)tl_opt_float(opts, "scale");
    st->eps = dims->block.norm_eps;
    st->style = dims->block.style;
    char name[128];
    snprintf(name, sizeof name, "%s.norm", prefix);
    st->norm = tl_params_add(params, name, 1, (int64_t[]){st->C}, TL_INIT_CONST, 1.0f, 0);
    snprintf(name, sizeof name, "%s.w1", prefix);
    st->w1 = tl_params_add(params, name, 2, (int64_t[]){st->F, st->C}, TL_INIT_NORMAL,
                           dims->block.init_std, TL_PARAM_DECAY);
    snprintf(name, sizeof name, "%s.w2", prefix);
    st->w2 = tl_params_add(params, name, 2, (int64_t[]){st->C, st->F}, TL_INIT_NORMAL,
                           dims->block.init_std, TL_PARAM_DECAY);
    if (!st->norm || !st->w1 || !st->w2) {
        free(st);
        return NULL;
    }
    return st;
}

static tl_tensor *example_forward(tl_ctx *ctx, void *state, tl_tensor *x, tl_layer_args *args)
{
    example_layer *st = state;
    tl_tensor *h = st->style == TL_BLOCK_GPT2 ? tl_layernorm(ctx, x, st->norm, NULL, st->eps)
                                              : tl_rmsnorm(ctx, x, st->norm, st->eps);
    tl_tensor *m = tl_linear(ctx, tl_gelu(ctx, tl_linear(ctx, h, st->w1), true), st->w2);
    return tl_add(ctx, x, tl_scale(ctx, m, st->scale));
}

static double example_flops(const void *state, int64_t T)
{
    const example_layer *st = state;
    return 4.0 * (double)st->C * (double)st->F + 10.0 * (double)st->C;
}

static void example_destroy(void *state) { free(state); }

static const tl_plugin example_plugin = {
    .header = TL_PLUGIN_HEADER_INIT("example"),
    .description = "example out-of-tree layer: scaled residual MLP",
    .version = "1.0",
    .options = example_options,
    .n_options = 2,
    .create = example_create,
    .forward = example_forward,
    .flops_per_token = example_flops,
    .destroy = example_destroy,
};

TL_PLUGIN_EXPORT(example_plugin)
