/* The Inner Thinking Transformer layer (Chen et al., arXiv 2502.13842):
 * one full pass of a block, then N-1 routed thinking steps with the same
 * weights.
 *
 *   Y0 = B(X) * phi_0
 *   step t = 1..N-1:
 *     s  = gate(Y · r_t)                      sigmoid or tanh, one score per token
 *     S  = topk(s, ceil(rho_t n)), or s > threshold under causal routing
 *          (0.5, or 0 for tanh) and calibrated routing (theta_t, set by
 *          calibration)
 *     Z  = B(Y[S])                            selected tokens attend to each other
 *                                             (context "selected") or to all (context "all")
 *     Y[S] += alpha_t s[S] * Z * phi_t        rtc_add "block" (Residual Thinking Connection)
 *     Y[S] += alpha_t s[S] * Delta * phi_t    rtc_add "delta"
 *     Y[S] += alpha_t s[S] * (Z * phi_t - Y[S])   no_rtc (the step replaces the state)
 *
 * Ablations: no_atr drops the router (s = 1, rho = 1), no_tse freezes phi at
 * 1, no_rtc replaces instead of accumulating. rho_t = 0 skips step t. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "route.h"

enum { ITT_MAX_STEPS = TL_STATS_MAX_STEPS };

typedef enum { ITT_RTC_BLOCK, ITT_RTC_DELTA } itt_rtc_add;
typedef enum { ITT_CONTEXT_SELECTED, ITT_CONTEXT_ALL } itt_context;
typedef enum { ITT_GATE_SIGMOID, ITT_GATE_TANH } itt_gate;

typedef struct itt_layer {
    tl_block blk;
    int steps;                        /* N */
    double ratios[ITT_MAX_STEPS];     /* rho_t for t = 1..N-1, at [t - 1] */
    double alpha[ITT_MAX_STEPS];      /* alpha_t for t = 1..N-1, at [t - 1] */
    itt_rtc_add rtc_add;
    itt_context context;
    itt_gate gate;
    tl_routing routing;
    bool no_rtc, no_tse, no_atr;
    tl_tensor *router[ITT_MAX_STEPS]; /* r_t (C) at [t], NULL when no_atr */
    tl_tensor *phi[ITT_MAX_STEPS];    /* phi_t (C) at [t], frozen at 1 when no_tse */
    /* Calibrated routing: theta_t at [t - 1] (NAN until set) and the rho_t
     * it was calibrated at. */
    double thresholds[ITT_MAX_STEPS];
    double calibrated_ratio[ITT_MAX_STEPS];
    tl_routing_stats stats;
    tl_route_buffers buffers;
} itt_layer;

static const tl_opt_spec itt_options[] = {
    {.name = "steps", .type = TL_OPT_INT, .def = {.type = TL_OPT_INT, .i = 4}, .min = 1,
     .max = ITT_MAX_STEPS, .doc = "N: one full pass plus N-1 routed thinking steps"},
    {.name = "ratios", .type = TL_OPT_FLOAT_LIST,
     .def = {.type = TL_OPT_FLOAT_LIST, .n = 3, .list = {0.5, 0.5, 0.5}}, .min = 0, .max = 1,
     .doc = "rho_t, fraction of tokens per routed step: N-1 values, or one for all steps; 0 "
            "skips a step (unset: 0.5 for every step)"},
    {.name = "alpha", .type = TL_OPT_FLOAT_LIST, .def = {.type = TL_OPT_FLOAT_LIST, .n = 1, .list = {1.0}},
     .min = -1e6, .max = 1e6, .doc = "alpha_t, fixed scale of each step's update: N-1 values, or one for all"},
    {.name = "phi_step_init", .type = TL_OPT_FLOAT, .def = {.type = TL_OPT_FLOAT, .f = 1.0},
     .min = -1e6, .max = 1e6, .doc = "initial value of the step encodings phi_t for t >= 1 (phi_0 starts at 1)"},
    {.name = "rtc_add", .type = TL_OPT_ENUM, .def = {.type = TL_OPT_ENUM, .s = "block"},
     .choices = {"block", "delta"},
     .doc = "what a step adds to the state: the block output B(Y) or only its residual branch"},
    {.name = "context", .type = TL_OPT_ENUM, .def = {.type = TL_OPT_ENUM, .s = "selected"},
     .choices = {"selected", "all"},
     .doc = "keys of a routed step: the selected tokens only, or all tokens' current states"},
    {.name = "routing", .type = TL_OPT_ENUM, .def = {.type = TL_OPT_ENUM, .s = "topk"},
     .choices = {"topk", "topk_aux", "causal"},
     .doc = "token choice: per-sequence top-k, top-k plus auxiliary loss, or causal threshold plus auxiliary loss"},
    {.name = "router", .type = TL_OPT_ENUM, .def = {.type = TL_OPT_ENUM, .s = "sigmoid"},
     .choices = {"sigmoid", "tanh"},
     .doc = "router nonlinearity; causal threshold 0.5 for sigmoid, 0 for tanh"},
    {.name = "router_init_std", .type = TL_OPT_FLOAT, .def = {.type = TL_OPT_FLOAT, .f = 0.02},
     .min = 0, .max = 10, .doc = "standard deviation of the router vectors at initialisation"},
    {.name = "no_rtc", .type = TL_OPT_BOOL, .def = {.type = TL_OPT_BOOL, .b = false},
     .doc = "ablation: a step replaces the state of its tokens (gated by s) instead of adding to it"},
    {.name = "no_tse", .type = TL_OPT_BOOL, .def = {.type = TL_OPT_BOOL, .b = false},
     .doc = "ablation: step encodings phi fixed to 1 and not trained"},
    {.name = "no_atr", .type = TL_OPT_BOOL, .def = {.type = TL_OPT_BOOL, .b = false},
     .doc = "ablation: no router; every step takes every token (rho = 1) with s = 1"},
    {.name = "d_ff", .type = TL_OPT_INT, .def = {.type = TL_OPT_INT, .i = 0}, .min = 0, .max = 1 << 20,
     .doc = "MLP hidden width; 0 takes the model's"},
};
enum { ITT_N_OPTIONS = sizeof itt_options / sizeof itt_options[0] };

/* Fills out[0..n) from a list option of 1 or n values (one value repeats). */
static tl_status itt_per_step(const tl_opt_table *opts, const char *name, int n, double fallback,
                              double *out)
{
    const double *v;
    int count = tl_opt_list(opts, name, &v);
    if (!tl_opt_is_set(opts, name) && count != n && count != 1) {
        for (int i = 0; i < n; i++)
            out[i] = fallback;
        return TL_OK;
    }
    if (count != 1 && count != n)
        return tl_seterr(TL_EINVAL, "plugin 'itt' option '%s' has %d values but steps = %d needs "
                                    "%d (one per routed step) or 1 for all steps",
                         name, count, n + 1, n);
    for (int i = 0; i < n; i++)
        out[i] = v[count == 1 ? 0 : i];
    return TL_OK;
}

static void itt_destroy(void *state)
{
    itt_layer *st = state;
    if (!st)
        return;
    tl_route_buffers_free(&st->buffers);
    free(st);
}

static void *itt_create(const tl_opt_table *opts, const tl_layer_dims *dims, tl_params *params,
                        const char *prefix)
{
    itt_layer *st = calloc(1, sizeof *st);
    if (!st) {
        tl_seterr(TL_ENOMEM, "could not allocate an itt layer");
        return NULL;
    }
    st->steps = (int)tl_opt_int(opts, "steps");
    st->rtc_add = (itt_rtc_add)tl_opt_choice(opts, "rtc_add");
    st->context = (itt_context)tl_opt_choice(opts, "context");
    st->gate = (itt_gate)tl_opt_choice(opts, "router");
    st->routing = (tl_routing)(TL_ROUTING_TOPK + tl_opt_choice(opts, "routing"));
    st->no_rtc = tl_opt_bool(opts, "no_rtc");
    st->no_tse = tl_opt_bool(opts, "no_tse");
    st->no_atr = tl_opt_bool(opts, "no_atr");
    int routed = st->steps - 1;
    if (itt_per_step(opts, "ratios", routed, 0.5, st->ratios) != TL_OK ||
        itt_per_step(opts, "alpha", routed, 1.0, st->alpha) != TL_OK)
        goto fail;
    if (st->no_atr)
        for (int i = 0; i < routed; i++)
            st->ratios[i] = 1.0;
    for (int i = 0; i < ITT_MAX_STEPS; i++)
        st->thresholds[i] = NAN;

    tl_block_config cfg = dims->block;
    if (tl_opt_is_set(opts, "d_ff"))
        cfg.d_ff = tl_opt_int(opts, "d_ff");
    if (tl_block_config_resolve(&cfg) != TL_OK || tl_block_init(&st->blk, &cfg, params, prefix) != TL_OK)
        goto fail;

    int64_t C = cfg.d_model;
    float router_std = (float)tl_opt_float(opts, "router_init_std");
    float phi_init = st->no_tse ? 1.0f : (float)tl_opt_float(opts, "phi_step_init");
    unsigned phi_flags = st->no_tse ? TL_PARAM_FROZEN : 0u;
    char name[128];
    for (int t = 1; t < st->steps && !st->no_atr; t++) {
        snprintf(name, sizeof name, "%s.router.%d", prefix, t);
        st->router[t] = tl_params_add(params, name, 1, (int64_t[]){C}, TL_INIT_NORMAL, router_std, 0);
        if (!st->router[t])
            goto fail;
    }
    for (int t = 0; t < st->steps; t++) {
        snprintf(name, sizeof name, "%s.phi.%d", prefix, t);
        st->phi[t] = tl_params_add(params, name, 1, (int64_t[]){C}, TL_INIT_CONST,
                                   t == 0 ? 1.0f : phi_init, phi_flags);
        if (!st->phi[t])
            goto fail;
    }
    return st;

fail:
    itt_destroy(st);
    return NULL;
}

/* Scores and routing of step t on state y (B, T, C); threshold applies
 * under causal and calibrated routing. On return gate is the (B, T, 1) gate
 * s, or NULL without a router; r is the route. */
static tl_status itt_route(tl_ctx *ctx, itt_layer *st, int t, tl_routing routing, float threshold,
                           bool train, tl_tensor *y, tl_tensor **gate, tl_route *r,
                           tl_layer_args *args)
{
    int64_t B = y->shape[0], T = y->shape[1], C = y->shape[2];
    int64_t k = tl_ratio_count(st->ratios[t - 1], T);
    *gate = NULL;
    if (st->no_atr) {
        tl_tensor *ones = tl_new2(ctx, B, T);
        if (!ones)
            return tl_lasterr();
        for (int64_t i = 0; i < B * T; i++)
            tl_f32(ones)[i] = 1.0f;
        return tl_route_select(ctx, ones, false, 0.0f, T, false, r);
    }
    tl_tensor *w = tl_reshape(ctx, st->router[t], 2, (int64_t[]){1, C});
    tl_tensor *logits = tl_linear(ctx, y, w);
    *gate = st->gate == ITT_GATE_TANH ? tl_tanh(ctx, logits) : tl_sigmoid(ctx, logits);
    tl_tensor *scores = tl_reshape(ctx, *gate, 2, (int64_t[]){B, T});
    if (!scores)
        return tl_lasterr();
    bool causal = routing == TL_ROUTING_CAUSAL || routing == TL_ROUTING_CALIBRATED;
    bool aux = routing == TL_ROUTING_TOPK_AUX || routing == TL_ROUTING_CAUSAL;
    tl_status s = tl_route_select(ctx, scores, causal, threshold, k, causal || aux, r);
    if (s != TL_OK)
        return s;
    if (aux && train) {
        /* The auxiliary loss sees a stop-gradient copy of the state, so it
         * trains the router vector alone. */
        tl_tensor *sg = tl_linear(ctx, tl_detach(ctx, y), w);
        return tl_route_add_aux(ctx, r, sg, args);
    }
    return TL_OK;
}

/* The update a step adds at its tokens, and the new state. ysel, the step
 * output z = B(ysel) (or its residual branch delta under rtc_add "delta")
 * and the gate slice gsel are (B, K, C), (B, K, C) and (B, K, 1), or cover
 * the full state when every token is chosen. */
static tl_tensor *itt_update(tl_ctx *ctx, itt_layer *st, int t, tl_tensor *y, tl_tensor *ysel,
                             tl_tensor *z, tl_tensor *delta, tl_tensor *gsel, const tl_route *r)
{
    tl_tensor *phi = st->phi[t];
    double alpha = st->alpha[t - 1];
    bool unit_gate = gsel == NULL && alpha == 1.0;

    if (st->no_rtc && unit_gate) {
        /* s = 1 and alpha = 1: Y + (Z phi - Y) is Z phi in exact arithmetic, so
         * write Z phi into the chosen rows instead of adding and subtracting
         * Y, which keeps this path bit for bit equal to a Loop step. */
        tl_tensor *zphi = tl_mul(ctx, z, phi);
        if (r->all)
            return zphi;
        return tl_route_scatter_add(ctx, r, tl_mul(ctx, y, tl_route_keep_mask(ctx, r)), zphi);
    }

    tl_tensor *upd;
    if (st->no_rtc)
        upd = tl_add(ctx, tl_mul(ctx, z, phi), tl_scale(ctx, ysel, -1.0f));
    else if (st->rtc_add == ITT_RTC_DELTA)
        upd = tl_mul(ctx, delta, phi);
    else
        upd = tl_mul(ctx, z, phi);
    if (gsel)
        upd = tl_mul(ctx, upd, gsel);
    if (alpha != 1.0)
        upd = tl_scale(ctx, upd, (float)alpha);
    return r->all ? tl_add(ctx, y, upd) : tl_route_scatter_add(ctx, r, y, upd);
}

/* Records step statistics; gate values are read from the forward tensor. */
static void itt_record(itt_layer *st, int t, const tl_route *r, const tl_tensor *gate)
{
    tl_routing_stats *rs = &st->stats;
    tl_step_stats *s = &rs->steps[rs->n_steps];
    memset(s, 0, sizeof *s);
    s->step = t;
    s->ratio = st->ratios[t - 1];
    double lo = st->gate == ITT_GATE_TANH ? -1.0 : 0.0;
    if (r->mask) {
        tl_route_step_stats(s, r, gate ? tl_f32(gate) : NULL, lo, 1.0);
        int64_t n = r->B * r->T;
        uint8_t *mask = st->buffers.masks + (size_t)rs->n_steps * (size_t)n;
        memcpy(mask, r->mask, (size_t)n);
        /* Without a router every score is s = 1. */
        float *scores = st->buffers.scores + (size_t)rs->n_steps * (size_t)n;
        for (int64_t i = 0; i < n; i++)
            scores[i] = gate ? tl_f32(gate)[i] : 1.0f;
        for (int64_t i = 0; i < n; i++)
            st->buffers.passes[i] += r->mask[i];
    } else {
        s->skipped = true;
        s->tokens = rs->B * rs->T;
        s->topk_agreement = -1.0;
        s->hist_lo = lo;
        s->hist_hi = 1.0;
    }
    rs->n_steps++;
}

static tl_tensor *itt_forward(tl_ctx *ctx, void *state, tl_tensor *x, tl_layer_args *args)
{
    itt_layer *st = state;
    if (!x)
        return NULL;
    if (x->ndim != 3) {
        char buf[96];
        tl_seterr(TL_ESHAPE, "itt: input %s must be (B, T, C)", tl_shape_str(x, buf, sizeof buf));
        return NULL;
    }
    tl_routing routing = args->routing != TL_ROUTING_DEFAULT ? args->routing : st->routing;
    int64_t B = x->shape[0], T = x->shape[1];
    if (args->collect_stats) {
        memset(&st->stats, 0, sizeof st->stats);
        st->stats.B = B;
        st->stats.T = T;
        if (tl_route_buffers_reserve(&st->buffers, st->steps - 1, B * T) != TL_OK)
            return NULL;
        st->stats.masks = st->buffers.masks;
        st->stats.token_passes = st->buffers.passes;
        st->stats.scores = st->buffers.scores;
    }

    /* Thresholds are checked before any work, so a missing calibration
     * fails at once. Without a router every step takes every token. */
    float threshold[ITT_MAX_STEPS] = {0};
    float causal_threshold = st->gate == ITT_GATE_TANH ? 0.0f : 0.5f;
    for (int t = 1; t < st->steps && !st->no_atr; t++)
        if (st->ratios[t - 1] > 0.0 &&
            tl_route_threshold("itt", t, routing, causal_threshold, st->thresholds,
                               st->calibrated_ratio, st->ratios[t - 1], t - 1,
                               &threshold[t - 1]) != TL_OK)
            return NULL;

    tl_tensor *y = tl_mul(ctx, tl_block_forward(ctx, &st->blk, x, NULL), st->phi[0]);
    for (int t = 1; t < st->steps && y; t++) {
        tl_route r = {0};
        tl_tensor *gate = NULL;
        if (st->ratios[t - 1] > 0.0 &&
            itt_route(ctx, st, t, routing, threshold[t - 1], args->train, y, &gate, &r, args) !=
                TL_OK)
            return NULL;
        if (args->collect_stats)
            itt_record(st, t, &r, gate);
        if (r.selected == 0)
            continue; /* rho_t = 0, or no token passed the threshold */

        /* Under rtc_add "delta" the step needs Delta(Y[S]); otherwise it needs
         * Z = B(Y[S]), taken from tl_block_forward so that a step over every
         * token computes exactly what a Loop step computes. */
        bool want_delta = st->rtc_add == ITT_RTC_DELTA && !st->no_rtc;
        tl_tensor *ysel, *z = NULL, *delta = NULL, *gsel = NULL;
        if (r.all) {
            ysel = y;
            gsel = gate;
            if (want_delta)
                delta = tl_block_delta(ctx, &st->blk, y, NULL);
            else
                z = tl_block_forward(ctx, &st->blk, y, NULL);
        } else {
            tl_attention_opts attn = tl_route_attention(&r);
            ysel = tl_route_gather(ctx, &r, y);
            if (st->context == ITT_CONTEXT_ALL) {
                attn.k_pos = NULL;
                attn.k_len = NULL;
                delta = tl_block_delta_cross(ctx, &st->blk, ysel, y, &attn);
                if (!want_delta)
                    z = tl_add(ctx, ysel, delta);
            } else if (want_delta) {
                delta = tl_block_delta(ctx, &st->blk, ysel, &attn);
            } else {
                z = tl_block_forward(ctx, &st->blk, ysel, &attn);
            }
            if (gate)
                gsel = tl_route_gather(ctx, &r, gate);
        }
        if (!(want_delta ? delta : z))
            return NULL;
        y = itt_update(ctx, st, t, y, ysel, z, delta, gsel, &r);
    }
    return y;
}

static tl_status itt_stats(const void *state, tl_routing_stats *out)
{
    const itt_layer *st = state;
    *out = st->stats;
    return TL_OK;
}

static tl_status itt_set_ratios(void *state, const double *ratios, int n)
{
    itt_layer *st = state;
    int routed = st->steps - 1;
    if (n != routed && n != 1)
        return tl_seterr(TL_EINVAL, "itt: %d ratios given, the layer has %d routed steps; give "
                                    "%d or one for every step", n, routed, routed);
    /* One ratio applies to every routed step, as the "ratios" option does. */
    double all[ITT_MAX_STEPS];
    if (n == 1 && routed > 1) {
        for (int i = 0; i < routed; i++)
            all[i] = ratios[0];
        ratios = all;
        n = routed;
    }
    for (int i = 0; i < n; i++)
        if (!(ratios[i] >= 0.0 && ratios[i] <= 1.0))
            return tl_seterr(TL_EINVAL, "itt: ratio %d = %g is outside [0, 1]", i + 1, ratios[i]);
    if (st->no_atr)
        for (int i = 0; i < n; i++)
            if (ratios[i] != 0.0 && ratios[i] != 1.0)
                return tl_seterr(TL_EINVAL, "itt: ratio %d = %g, but without a router (no_atr) a "
                                            "step takes every token (1) or none (0)",
                                 i + 1, ratios[i]);
    for (int i = 0; i < n; i++)
        st->ratios[i] = ratios[i];
    return TL_OK;
}

static tl_status itt_set_thresholds(void *state, const double *thresholds, int n)
{
    itt_layer *st = state;
    return tl_route_set_thresholds("itt", st->thresholds, st->calibrated_ratio, st->ratios,
                                   st->steps - 1, thresholds, n);
}

static int itt_thresholds(const void *state, double *out, int max)
{
    const itt_layer *st = state;
    for (int i = 0; i < st->steps - 1 && i < max; i++)
        out[i] = st->thresholds[i];
    return st->steps - 1;
}

static double itt_flops(const void *state, int64_t T)
{
    const itt_layer *st = state;
    const tl_block_config *cfg = &st->blk.cfg;
    double C = (double)cfg->d_model;
    double f = tl_block_flops(cfg, T, (double)(T + 1) / 2.0) + C * (double)T; /* pass 0, phi_0 */
    for (int t = 1; t < st->steps; t++) {
        int64_t k = tl_ratio_count(st->ratios[t - 1], T);
        if (k == 0)
            continue;
        double keys = st->context == ITT_CONTEXT_ALL ? (double)(T + 1) / 2.0 : (double)(k + 1) / 2.0;
        f += tl_block_flops(cfg, k, keys);
        /* Under context "all" the keys and values of the T - k unselected
         * tokens are projected too (2 matrices of C x C). */
        if (st->context == ITT_CONTEXT_ALL)
            f += 4.0 * C * C * (double)(T - k);
        if (!st->no_atr)
            f += 2.0 * C * (double)T; /* router logits */
        f += 4.0 * C * (double)k;    /* residual, phi, gate and the scatter-add */
    }
    return f / (double)T;
}

static const tl_plugin itt_plugin = {
    .header = TL_PLUGIN_HEADER_INIT("itt"),
    .description = "Inner Thinking Transformer: a full pass plus N-1 routed thinking steps "
                   "with residual accumulation and step encodings",
    .version = "1.0",
    .options = itt_options,
    .n_options = ITT_N_OPTIONS,
    .create = itt_create,
    .forward = itt_forward,
    .stats = itt_stats,
    .set_ratios = itt_set_ratios,
    .set_thresholds = itt_set_thresholds,
    .thresholds = itt_thresholds,
    .flops_per_token = itt_flops,
    .destroy = itt_destroy,
};

TL_PLUGIN_EXPORT(itt_plugin)
