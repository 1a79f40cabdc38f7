/* Finite-difference gradient checks through every plugin layer, with respect
 * to the input and to every trained parameter (block weights, router
 * vectors, step encodings phi), including the auxiliary router loss. */
#include <math.h>
#include <string.h>

#include "plugin_util.h"

enum { B = 2, T = 6, C = 8, H = 2 };

/* Central differences of float32 forwards through a whole block with
 * h = 1e-2: the measured worst error/allowed ratio on these configurations
 * stays well below 1 with atol 2e-3 and rtol 2e-2 (rounding of a loss of
 * size ~10 in float32, divided by 2h, is about 1e-4). */
static const gc_options TOL = {.step = 1e-2, .atol = 2e-3, .rtol = 2e-2};

static pl_layer *gc_layer; /* layer used by the gc_check forward below */

static tl_tensor *fwd_layer(tl_ctx *ctx, tl_tensor **in, void *user)
{
    tl_layer_args args = {.train = false};
    return gc_layer->plugin->forward(ctx, gc_layer->state, in[0], &args);
}

/* Runs both checks on one configuration; router vectors get a larger scale
 * than at initialisation so the gates spread over (0, 1) and the routing is
 * stable under the perturbation. */
static void check(const char *label, const char *plugin, const tl_opt_setting *s, int n,
                  tl_block_style style, tl_layer_args args, bool use_gc_check)
{
    pl_layer L;
    if (pl_layer_make(&L, plugin, s, n, style, C, H, 11) != 0) {
        gc_failures++;
        return;
    }
    pl_randomize(&L, "router", 0.5f, 5);
    float x[B * T * C];
    tl_rng rng;
    tl_rng_seed(&rng, 21);
    gc_randn(&rng, x, B * T * C, 1.0f);

    if (use_gc_check) {
        gc_layer = &L;
        gc_input in[1] = {{TL_F32, 3, {B, T, C}, x, true}};
        gc_check(label, fwd_layer, NULL, in, 1, TOL);
    }
    /* The layer output alone (no auxiliary term): the auxiliary loss depends
     * on the input through a stop-gradient copy, so finite differences of it
     * with respect to x or the block would not match by design. */
    tl_layer_args main_args = args;
    main_args.train = false;
    int skipped = 0;
    pl_gradcheck(label, &L, x, B, T, C, main_args, 6, TOL, &skipped);
    /* Elements whose perturbation flips a token's routing are skipped; more
     * than a quarter skipped would leave too little checked. */
    CHECK_MSG(skipped < 40, "%s: %d elements skipped because the routing changed", label, skipped);
    if (skipped)
        printf("%-34s %d element(s) skipped: routing changed under the perturbation\n", label, skipped);
    pl_layer_free(&L);
}

/* The auxiliary loss alone. With one routing decision the loss depends on
 * the router vector directly; with several, a router also moves the next
 * step's input, a path the stop-gradient cuts on purpose, so finite
 * differences would not match there. */
static void check_aux(const char *label, const char *plugin, const tl_opt_setting *s, int n,
                      tl_routing routing)
{
    pl_layer L;
    if (pl_layer_make(&L, plugin, s, n, TL_BLOCK_LLAMA, C, H, 12) != 0) {
        gc_failures++;
        return;
    }
    pl_randomize(&L, "router", 0.5f, 6);
    float x[B * T * C];
    tl_rng rng;
    tl_rng_seed(&rng, 22);
    gc_randn(&rng, x, B * T * C, 1.0f);
    pl_auxcheck(label, &L, x, B, T, C, (tl_layer_args){.train = true, .routing = routing}, TOL);
    pl_layer_free(&L);
}

int main(void)
{
    tl_layer_args train = {.train = true};
    double r2[] = {0.5, 0.7};
    double a2[] = {0.7, 1.3};

    check("transformer llama", "transformer", NULL, 0, TL_BLOCK_LLAMA, train, true);
    check("transformer gpt2", "transformer", NULL, 0, TL_BLOCK_GPT2, train, true);
    tl_opt_setting loop3[] = {{"steps", tl_optv_int(3)}};
    check("loop x3", "loop", loop3, 1, TL_BLOCK_LLAMA, train, true);

    tl_opt_setting itt_topk[] = {{"steps", tl_optv_int(3)}, {"ratios", tl_optv_list(2, r2)},
                                 {"phi_step_init", tl_optv_float(0.8)}, {"alpha", tl_optv_list(2, a2)}};
    check("itt topk", "itt", itt_topk, 4, TL_BLOCK_LLAMA, train, false);

    tl_opt_setting itt_aux[] = {{"steps", tl_optv_int(3)}, {"ratios", tl_optv_list(2, r2)},
                                {"routing", tl_optv_string("topk_aux")}};
    tl_layer_args train_aux = {.train = true, .routing = TL_ROUTING_TOPK_AUX};
    tl_layer_args train_causal = {.train = true, .routing = TL_ROUTING_CAUSAL};
    check("itt topk_aux", "itt", itt_aux, 3, TL_BLOCK_LLAMA, train_aux, false);

    tl_opt_setting itt_causal[] = {{"steps", tl_optv_int(3)}, {"routing", tl_optv_string("causal")},
                                   {"context", tl_optv_string("all")}};
    check("itt causal context all", "itt", itt_causal, 3, TL_BLOCK_LLAMA, train_causal, false);

    tl_opt_setting itt_tanh[] = {{"steps", tl_optv_int(3)}, {"router", tl_optv_string("tanh")},
                                 {"rtc_add", tl_optv_string("delta")}};
    check("itt tanh rtc delta", "itt", itt_tanh, 3, TL_BLOCK_LLAMA, train, false);

    tl_opt_setting itt_abl[] = {{"steps", tl_optv_int(3)}, {"no_rtc", tl_optv_bool(true)},
                                {"no_tse", tl_optv_bool(true)}};
    check("itt no_rtc no_tse", "itt", itt_abl, 3, TL_BLOCK_GPT2, train, false);

    tl_opt_setting itt_noatr[] = {{"steps", tl_optv_int(3)}, {"no_atr", tl_optv_bool(true)},
                                  {"phi_step_init", tl_optv_float(0.6)}};
    check("itt no_atr", "itt", itt_noatr, 3, TL_BLOCK_LLAMA, train, true);

    tl_opt_setting mod_topk[] = {{"capacity", tl_optv_float(0.5)}};
    check("mod topk", "mod", mod_topk, 1, TL_BLOCK_LLAMA, train, false);
    tl_opt_setting mod_causal[] = {{"capacity", tl_optv_float(0.5)}, {"routing", tl_optv_string("causal")}};
    check("mod causal", "mod", mod_causal, 2, TL_BLOCK_LLAMA, train_causal, false);
    tl_opt_setting mod_aux[] = {{"capacity", tl_optv_float(0.5)}, {"routing", tl_optv_string("topk_aux")}};
    check("mod topk_aux", "mod", mod_aux, 2, TL_BLOCK_GPT2, train_aux, false);

    tl_opt_setting itt2[] = {{"steps", tl_optv_int(2)}};
    check_aux("itt aux topk_aux", "itt", itt2, 1, TL_ROUTING_TOPK_AUX);
    check_aux("itt aux causal", "itt", itt2, 1, TL_ROUTING_CAUSAL);
    tl_opt_setting itt2_tanh[] = {{"steps", tl_optv_int(2)}, {"router", tl_optv_string("tanh")}};
    check_aux("itt aux causal tanh", "itt", itt2_tanh, 2, TL_ROUTING_CAUSAL);
    tl_opt_setting mod_half[] = {{"capacity", tl_optv_float(0.5)}};
    check_aux("mod aux topk_aux", "mod", mod_half, 1, TL_ROUTING_TOPK_AUX);
    check_aux("mod aux causal", "mod", mod_half, 1, TL_ROUTING_CAUSAL);

    return gc_finish("plugin layer gradients");
}
