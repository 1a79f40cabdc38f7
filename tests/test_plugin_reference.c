/* The itt and mod layers against a reference written step by step from the
 * method's formulas. The reference runs one sequence at a time and computes
 * the router scores in double. It selects tokens by its own sort (or
 * threshold), runs a separate tl_block with copied weights on the selected
 * rows at their original positions, and applies the update in plain loops:
 *
 *   ITT:  Y0 = B(X) phi_0
 *         s = gate(Y r_t), S = topk(s, k) or s > threshold
 *         Y[S] += alpha_t s[S] Z phi_t              rtc_add "block", Z = B(Y[S])
 *         Y[S] += alpha_t s[S] Delta phi_t          rtc_add "delta"
 *         Y[S] += alpha_t s[S] (Z phi_t - Y[S])     no_rtc
 *   MoD:  y[S] = x[S] + r[S] Delta(x[S]),  r = x w
 *
 * and the auxiliary loss as the sum over decisions of the mean BCE between
 * the router logit and top-k membership. Selections must match exactly and
 * outputs to float rounding. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plugin_util.h"

enum { B = 3, T = 20, C = 8, H = 2, N = B * T * C, MAX_STEPS = 4 };

typedef enum { REF_RTC_BLOCK, REF_RTC_DELTA, REF_RTC_NONE } ref_rtc;

/* What the reference needs to know of a layer's configuration. */
typedef struct ref_config {
    const char *plugin;            /* "itt" or "mod" */
    tl_block_style style;
    int steps;                     /* itt: N; mod: 1 */
    int64_t k[MAX_STEPS];          /* tokens per sequence at each routed step, under top-k */
    double alpha[MAX_STEPS];
    ref_rtc rtc;
    bool context_all, tanh_gate, no_atr;
    bool causal;                   /* threshold rule instead of top-k */
} ref_config;

static float x[N];

static int make(pl_layer *L, const char *plugin, const tl_opt_setting *s, int n,
                tl_block_style style)
{
    int rc = pl_layer_make(L, plugin, s, n, style, C, H, 41);
    if (rc != 0) {
        gc_failures++;
        return rc;
    }
    /* Router vectors spread the gates over (0, 1) so that no two scores of a
     * sequence are close enough for float rounding to reorder them, and step
     * encodings away from 1 so that every phi_t is exercised. */
    pl_randomize(L, "router", 0.5f, 9);
    tl_rng rng;
    tl_rng_seed(&rng, 10);
    for (size_t i = 0; i < tl_params_count(L->params); i++) {
        tl_tensor *t = tl_params_at(L->params, i);
        if (strstr(t->name, ".phi.") && !(tl_params_flags_at(L->params, i) & TL_PARAM_FROZEN))
            for (int64_t j = 0; j < tl_numel(t); j++)
                tl_f32(t)[j] = 1.0f + 0.3f * tl_rng_normal(&rng);
    }
    return 0;
}

/* A block with the layer's configuration and a copy of its weights. */
static tl_params *ref_block(const pl_layer *L, tl_block_style style, tl_block *blk)
{
    tl_block_config cfg = tl_block_config_default(C, H);
    cfg.style = style;
    if (style == TL_BLOCK_GPT2)
        cfg.rope = TL_ROPE_NONE;
    cfg.n_layers = 2;
    tl_params *p = tl_params_new();
    tl_rng rng;
    tl_rng_seed(&rng, 1);
    if (tl_block_init(blk, &cfg, p, "layers.0") != TL_OK || tl_params_alloc(p, &rng) != TL_OK) {
        fprintf(stderr, "reference block: %s\n", tl_errmsg());
        tl_params_free(p);
        return NULL;
    }
    for (size_t i = 0; i < tl_params_count(p); i++) {
        tl_tensor *d = tl_params_at(p, i);
        tl_tensor *s = tl_params_find(L->params, d->name);
        if (s)
            memcpy(tl_f32(d), tl_f32(s), (size_t)tl_numel(d) * sizeof(float));
    }
    return p;
}

static const float *param(const pl_layer *L, const char *fmt, int t)
{
    char name[64];
    snprintf(name, sizeof name, fmt, t);
    tl_tensor *p = tl_params_find(L->params, name);
    return p ? tl_f32(p) : NULL;
}

/* Positions of the k highest scores of one sequence, ascending; ties go to
 * the earlier position. */
static int64_t ref_topk(const double *s, int64_t k, int32_t *pos)
{
    bool taken[T] = {false};
    for (int64_t j = 0; j < k; j++) {
        int best = -1;
        for (int i = 0; i < T; i++)
            if (!taken[i] && (best < 0 || s[i] > s[best]))
                best = i;
        taken[best] = true;
    }
    int64_t n = 0;
    for (int i = 0; i < T; i++)
        if (taken[i])
            pos[n++] = i;
    return n;
}

/* Runs the block (or its residual branch) on rows pos[0..k) of state (T, C)
 * of one sequence: queries and keys are the selected rows at their own
 * positions, or with context_all the keys are every row of state. Writes
 * (k, C) into out. */
static bool ref_block_rows(tl_ctx *ctx, const tl_block *blk, const float *state, const int32_t *pos,
                           int64_t k, bool context_all, bool delta, float *out)
{
    tl_ctx_reset(ctx);
    tl_tensor *xq = tl_new3(ctx, 1, k, C);
    tl_tensor *qpos = tl_new(ctx, TL_I32, 2, (int64_t[]){1, k});
    for (int64_t j = 0; j < k; j++) {
        memcpy(tl_f32(xq) + j * C, state + (int64_t)pos[j] * C, C * sizeof(float));
        tl_i32(qpos)[j] = pos[j];
    }
    tl_tensor *r;
    if (context_all) {
        tl_tensor *xkv = tl_new3(ctx, 1, T, C);
        memcpy(tl_f32(xkv), state, T * C * sizeof(float));
        tl_attention_opts attn = {.q_pos = qpos};
        r = tl_block_delta_cross(ctx, blk, xq, xkv, &attn);
        if (r && !delta)
            r = tl_add(ctx, xq, r);
    } else {
        tl_attention_opts attn = {.q_pos = qpos, .k_pos = qpos};
        r = delta ? tl_block_delta(ctx, blk, xq, &attn) : tl_block_forward(ctx, blk, xq, &attn);
    }
    if (!r) {
        fprintf(stderr, "reference block rows: %s\n", tl_errmsg());
        return false;
    }
    memcpy(out, tl_f32(r), (size_t)(k * C) * sizeof(float));
    return true;
}

static double ref_bce(double logit, double label)
{
    return fmax(logit, 0.0) - logit * label + log1p(exp(-fabs(logit)));
}

/* One routed step of ITT (or the decision of MoD) on state y (B, T, C).
 * Fills mask (B*T) and adds the step's mean BCE to *aux. */
static bool ref_step(tl_ctx *ctx, const pl_layer *L, const tl_block *blk, const ref_config *rc,
                     int t, float *y, uint8_t *mask, double *aux)
{
    bool itt = strcmp(rc->plugin, "itt") == 0;
    const float *router = itt ? param(L, "layers.0.router.%d", t) : param(L, "layers.0.router", 0);
    const float *phi = itt ? param(L, "layers.0.phi.%d", t) : NULL;
    double bce = 0.0;
    for (int b = 0; b < B; b++) {
        float *state = y + (int64_t)b * T * C;
        double logit[T], s[T];
        for (int i = 0; i < T; i++) {
            logit[i] = 0.0;
            for (int c = 0; c < C; c++)
                logit[i] += (double)state[i * C + c] * (router ? router[c] : 0.0);
            if (rc->no_atr)
                s[i] = 1.0;
            else if (!itt)
                s[i] = logit[i];
            else
                s[i] = rc->tanh_gate ? tanh(logit[i]) : 1.0 / (1.0 + exp(-logit[i]));
        }

        int32_t top[T], pos[T];
        int64_t n_top = ref_topk(s, rc->no_atr ? T : rc->k[t - 1], top);
        uint8_t label[T] = {0};
        for (int64_t j = 0; j < n_top; j++)
            label[top[j]] = 1;
        for (int i = 0; i < T; i++)
            bce += ref_bce(logit[i], label[i]) / (double)(B * T);

        int64_t k = 0;
        /* The threshold rule: sigmoid gate > 0.5, tanh gate or MoD logit > 0. */
        double threshold = itt && !rc->tanh_gate ? 0.5 : 0.0;
        for (int i = 0; i < T; i++) {
            bool chosen = rc->causal ? s[i] > threshold : label[i];
            mask[b * T + i] = chosen;
            if (chosen)
                pos[k++] = i;
        }
        if (k == 0)
            continue;

        bool delta = !itt || rc->rtc == REF_RTC_DELTA;
        float *out = malloc((size_t)(k * C) * sizeof(float));
        if (!ref_block_rows(ctx, blk, state, pos, k, rc->context_all, delta, out)) {
            free(out);
            return false;
        }
        for (int64_t j = 0; j < k; j++) {
            float *row = state + (int64_t)pos[j] * C;
            double gate = s[pos[j]];
            for (int c = 0; c < C; c++) {
                double z = out[j * C + c], upd;
                if (!itt)
                    upd = gate * z;
                else if (rc->rtc == REF_RTC_NONE)
                    upd = rc->alpha[t - 1] * gate * (z * phi[c] - row[c]);
                else
                    upd = rc->alpha[t - 1] * gate * z * phi[c];
                row[c] = (float)(row[c] + upd);
            }
        }
        free(out);
    }
    *aux += bce;
    return true;
}

/* The reference output of layer L on x, its selection masks (one B*T plane
 * per decision) and the auxiliary loss sum. */
static bool ref_forward(const pl_layer *L, const ref_config *rc, float *y, uint8_t *masks,
                        double *aux)
{
    tl_block blk;
    tl_params *p = ref_block(L, rc->style, &blk);
    if (!p)
        return false;
    tl_ctx *ctx = tl_ctx_new(1 << 20);
    bool ok = true;
    *aux = 0.0;
    memcpy(y, x, sizeof x);
    if (strcmp(rc->plugin, "itt") == 0) {
        /* Y0 = B(X) phi_0 */
        tl_tensor *xt = tl_new3(ctx, B, T, C);
        memcpy(tl_f32(xt), x, sizeof x);
        tl_tensor *y0 = tl_block_forward(ctx, &blk, xt, NULL);
        const float *phi0 = param(L, "layers.0.phi.%d", 0);
        ok = y0 && phi0;
        for (int64_t i = 0; ok && i < N; i++)
            y[i] = tl_f32(y0)[i] * phi0[i % C];
        for (int t = 1; ok && t < rc->steps; t++)
            ok = ref_step(ctx, L, &blk, rc, t, y, masks + (size_t)(t - 1) * B * T, aux);
    } else {
        ok = ref_step(ctx, L, &blk, rc, 1, y, masks, aux);
    }
    tl_ctx_free(ctx);
    tl_params_free(p);
    return ok;
}

/* Compares layer L with the reference under its configured routing, in
 * training mode so that the auxiliary loss is added where the mode has one. */
static void check(const char *label, const char *plugin, const tl_opt_setting *s, int n,
                  const ref_config *rc, tl_routing routing, bool with_aux)
{
    pl_layer L;
    if (make(&L, plugin, s, n, rc->style) != 0)
        return;
    int decisions = rc->steps > 1 ? rc->steps - 1 : 1;
    float y[N], want[N];
    uint8_t masks[MAX_STEPS * B * T], want_masks[MAX_STEPS * B * T];
    double aux = pl_run(&L, x, B, T, C, (tl_layer_args){.train = true, .routing = routing}, y,
                        masks, sizeof masks);
    double want_aux;
    CHECK_MSG(!isnan(aux), "%s: the layer failed", label);
    if (isnan(aux) || !ref_forward(&L, rc, want, want_masks, &want_aux)) {
        gc_failures++;
        pl_layer_free(&L);
        return;
    }

    int mask_diff = 0;
    for (int i = 0; i < decisions * B * T; i++)
        mask_diff += masks[i] != want_masks[i];
    CHECK_MSG(mask_diff == 0, "%s: %d tokens routed differently from the reference", label,
              mask_diff);

    /* Float32 blocks on packed (B, Kmax, C) batches differ from one sequence
     * at a time by float rounding alone: measured at most 1.1e-7 of the
     * largest value. */
    double worst = 0.0, scale = 0.0;
    for (int i = 0; i < N; i++) {
        worst = fmax(worst, fabs((double)y[i] - want[i]));
        scale = fmax(scale, fabs(want[i]));
    }
    CHECK_MSG(worst <= 1e-5 * scale, "%s: output differs from the reference by %.3g (largest "
              "value %.3g)", label, worst, scale);

    if (with_aux)
        CHECK_MSG(fabs(aux - want_aux) <= 1e-5 * want_aux, "%s: auxiliary loss %.7g, reference "
                  "%.7g", label, aux, want_aux);
    else
        CHECK_MSG(aux == 0.0, "%s: auxiliary loss %.7g where the mode has none", label, aux);
    int selected = 0;
    for (int i = 0; i < decisions * B * T; i++)
        selected += want_masks[i];
    printf("%-28s %3d tokens routed, max difference %.2e of %.2e, aux %.6f\n", label, selected,
           worst, scale, aux);
    pl_layer_free(&L);
}

static ref_config itt_config(tl_block_style style)
{
    return (ref_config){.plugin = "itt", .style = style, .steps = 4, .k = {10, 10, 10},
                        .alpha = {1.0, 1.0, 1.0}};
}

int main(void)
{
    tl_rng rng;
    tl_rng_seed(&rng, 4);
    gc_randn(&rng, x, N, 1.0f);

    ref_config rc = itt_config(TL_BLOCK_LLAMA);
    check("itt defaults", "itt", NULL, 0, &rc, TL_ROUTING_TOPK, false);

    /* ceil(rho * 20) for 0.3, 0.55 and 0.07: 6, 11 and 2. */
    double ratios[] = {0.3, 0.55, 0.07}, alpha[] = {0.7, 1.3, -0.4};
    tl_opt_setting scaled[] = {{"ratios", tl_optv_list(3, ratios)}, {"alpha", tl_optv_list(3, alpha)}};
    rc = itt_config(TL_BLOCK_LLAMA);
    memcpy(rc.k, (int64_t[]){6, 11, 2}, sizeof rc.k[0] * 3);
    memcpy(rc.alpha, alpha, sizeof alpha);
    check("itt ratios alpha topk_aux", "itt", scaled, 2, &rc, TL_ROUTING_TOPK_AUX, true);

    /* Ratio 1 takes the unpacked path with the gate, ratio 0 skips the step. */
    double edges[] = {1.0, 0.5, 0.0};
    tl_opt_setting edge[] = {{"ratios", tl_optv_list(3, edges)}};
    rc = itt_config(TL_BLOCK_LLAMA);
    memcpy(rc.k, (int64_t[]){20, 10, 0}, sizeof rc.k[0] * 3);
    check("itt ratios 1 and 0", "itt", edge, 1, &rc, TL_ROUTING_TOPK, false);

    tl_opt_setting delta[] = {{"rtc_add", tl_optv_string("delta")}};
    rc = itt_config(TL_BLOCK_LLAMA);
    rc.rtc = REF_RTC_DELTA;
    check("itt rtc delta", "itt", delta, 1, &rc, TL_ROUTING_TOPK, false);

    tl_opt_setting no_rtc[] = {{"no_rtc", tl_optv_bool(true)}, {"alpha", tl_optv_list(3, alpha)}};
    rc = itt_config(TL_BLOCK_GPT2);
    rc.rtc = REF_RTC_NONE;
    memcpy(rc.alpha, alpha, sizeof alpha);
    check("itt no_rtc gpt2", "itt", no_rtc, 2, &rc, TL_ROUTING_TOPK, false);

    tl_opt_setting all[] = {{"context", tl_optv_string("all")}};
    rc = itt_config(TL_BLOCK_LLAMA);
    rc.context_all = true;
    check("itt context all", "itt", all, 1, &rc, TL_ROUTING_TOPK, false);

    tl_opt_setting causal[] = {{"routing", tl_optv_string("causal")}};
    rc = itt_config(TL_BLOCK_LLAMA);
    rc.causal = true;
    check("itt causal", "itt", causal, 1, &rc, TL_ROUTING_DEFAULT, true);

    tl_opt_setting tanh_all[] = {{"router", tl_optv_string("tanh")}, {"context", tl_optv_string("all")},
                                 {"rtc_add", tl_optv_string("delta")}};
    rc = itt_config(TL_BLOCK_LLAMA);
    rc.tanh_gate = true;
    rc.context_all = true;
    rc.rtc = REF_RTC_DELTA;
    rc.causal = true;
    check("itt tanh causal all delta", "itt", tanh_all, 3, &rc, TL_ROUTING_CAUSAL, true);

    tl_opt_setting no_atr[] = {{"no_atr", tl_optv_bool(true)}, {"steps", tl_optv_int(3)}};
    rc = itt_config(TL_BLOCK_LLAMA);
    rc.no_atr = true;
    rc.steps = 3;
    check("itt no_atr", "itt", no_atr, 2, &rc, TL_ROUTING_TOPK, false);

    tl_opt_setting no_tse[] = {{"no_tse", tl_optv_bool(true)}, {"steps", tl_optv_int(2)}};
    rc = itt_config(TL_BLOCK_GPT2);
    rc.steps = 2;
    check("itt no_tse", "itt", no_tse, 2, &rc, TL_ROUTING_TOPK, false);

    tl_opt_setting mod[] = {{"capacity", tl_optv_float(0.25)}};
    ref_config rm = {.plugin = "mod", .style = TL_BLOCK_LLAMA, .steps = 1, .k = {5}};
    check("mod topk_aux", "mod", mod, 1, &rm, TL_ROUTING_TOPK_AUX, true);
    rm.causal = true;
    check("mod causal", "mod", mod, 1, &rm, TL_ROUTING_CAUSAL, true);
    rm.style = TL_BLOCK_GPT2;
    rm.causal = false;
    check("mod gpt2 topk", "mod", mod, 1, &rm, TL_ROUTING_TOPK, false);

    return gc_finish("plugin reference");
}
