/* Routing semantics of the itt and mod layers: token counts per sequence,
 * untouched tokens bit for bit, skipped steps, ITT with every mechanism off
 * equal to Loop, causality of causal routing for every layer kind, and the
 * routing statistics. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plugin_util.h"

enum { B = 3, T = 20, C = 8, H = 2, N = B * T * C };

static float x[N];

static int make(pl_layer *L, const char *plugin, const tl_opt_setting *s, int n, tl_block_style style)
{
    int rc = pl_layer_make(L, plugin, s, n, style, C, H, 31);
    if (rc != 0)
        gc_failures++;
    else
        pl_randomize(L, "router", 0.5f, 8);
    return rc;
}

static bool rows_equal(const float *a, const float *b, int64_t row)
{
    return memcmp(a + row * C, b + row * C, C * sizeof(float)) == 0;
}

static void check_counts(void)
{
    double ratios[] = {0.3, 0.55, 0.07};
    tl_opt_setting s[] = {{"ratios", tl_optv_list(3, ratios)}};
    pl_layer L;
    if (make(&L, "itt", s, 1, TL_BLOCK_LLAMA) != 0)
        return;
    float y[N];
    uint8_t masks[3 * B * T];
    pl_run(&L, x, B, T, C, (tl_layer_args){0}, y, masks, sizeof masks);
    /* ceil(rho * 20): 6, 11 and 2 (0.07 * 20 = 1.4000000000000001). */
    int64_t expect[] = {6, 11, 2};
    for (int t = 0; t < 3; t++) {
        CHECK(tl_ratio_count(ratios[t], T) == expect[t]);
        for (int b = 0; b < B; b++) {
            int64_t n = 0;
            for (int i = 0; i < T; i++)
                n += masks[(t * B + b) * T + i];
            CHECK_MSG(n == expect[t], "step %d sequence %d chose %lld tokens, expected %lld",
                      t + 1, b, (long long)n, (long long)expect[t]);
        }
    }
    tl_routing_stats st;
    CHECK(L.plugin->stats(L.state, &st) == TL_OK);
    CHECK(st.n_steps == 3 && st.B == B && st.T == T);
    int64_t hist_total = 0;
    for (int k = 0; k < TL_STATS_BINS; k++)
        hist_total += st.steps[0].hist[k];
    CHECK(hist_total == B * T);
    CHECK(st.steps[1].selected == 11 * B);
    CHECK(fabs(st.steps[1].fraction - 11.0 / 20.0) < 1e-12);
    CHECK(st.steps[0].topk_agreement == -1.0);
    CHECK(st.steps[0].score_mean > 0.0 && st.steps[0].score_mean < 1.0);
    CHECK(st.steps[0].score_std > 0.0);
    for (int i = 0; i < B * T; i++) {
        int passes = 1 + masks[i] + masks[B * T + i] + masks[2 * B * T + i];
        CHECK(st.token_passes[i] == passes);
    }
    pl_layer_free(&L);

    tl_opt_setting m[] = {{"capacity", tl_optv_float(0.125)}};
    if (make(&L, "mod", m, 1, TL_BLOCK_LLAMA) != 0)
        return;
    uint8_t mmask[B * T];
    pl_run(&L, x, B, T, C, (tl_layer_args){0}, y, mmask, sizeof mmask);
    for (int b = 0; b < B; b++) {
        int n = 0;
        for (int i = 0; i < T; i++)
            n += mmask[b * T + i];
        CHECK_MSG(n == 3, "mod sequence %d chose %d tokens, expected ceil(0.125 * 20) = 3", b, n);
    }
    for (int64_t r = 0; r < B * T; r++)
        if (!mmask[r])
            CHECK(rows_equal(y, x, r));
    pl_layer_free(&L);
}

/* Tokens a step does not choose keep their state bit for bit: ITT with one
 * routed step at ratio 0.5 against the same layer with that step skipped. */
static void check_unchosen_unchanged(void)
{
    tl_opt_setting s[] = {{"steps", tl_optv_int(2)}, {"phi_step_init", tl_optv_float(0.9)}};
    pl_layer L;
    if (make(&L, "itt", s, 2, TL_BLOCK_LLAMA) != 0)
        return;
    float y_half[N], y_zero[N];
    uint8_t mask[B * T];
    pl_run(&L, x, B, T, C, (tl_layer_args){0}, y_half, mask, sizeof mask);
    CHECK(L.plugin->set_ratios(L.state, (double[]){0.0}, 1) == TL_OK);
    pl_run(&L, x, B, T, C, (tl_layer_args){0}, y_zero, NULL, 0);
    int changed = 0;
    for (int64_t r = 0; r < B * T; r++) {
        if (mask[r])
            changed += !rows_equal(y_half, y_zero, r);
        else
            CHECK_MSG(rows_equal(y_half, y_zero, r), "unchosen token %lld changed", (long long)r);
    }
    CHECK(changed == B * T / 2);
    CHECK(L.plugin->set_ratios(L.state, (double[]){0.5, 0.5}, 2) == TL_EINVAL);
    CHECK(strstr(tl_errmsg(), "2 ratios given, the layer has 1 routed steps") != NULL);
    pl_layer_free(&L);
}

/* rho = 0 everywhere leaves Y0 = B(X) * phi_0, which is Loop x1 with the
 * same weights (phi_0 = 1 at initialisation, and x * 1 is exact). */
static void check_zero_ratio_skips(void)
{
    double zeros[] = {0.0, 0.0, 0.0};
    tl_opt_setting s[] = {{"ratios", tl_optv_list(3, zeros)}};
    tl_opt_setting one[] = {{"steps", tl_optv_int(1)}};
    pl_layer itt, loop;
    if (make(&itt, "itt", s, 1, TL_BLOCK_LLAMA) != 0 || make(&loop, "loop", one, 1, TL_BLOCK_LLAMA) != 0)
        return;
    pl_copy_params(&loop, &itt);
    float a[N], b[N];
    uint8_t masks[3 * B * T];
    pl_run(&itt, x, B, T, C, (tl_layer_args){0}, a, masks, sizeof masks);
    pl_run(&loop, x, B, T, C, (tl_layer_args){0}, b, NULL, 0);
    CHECK(memcmp(a, b, sizeof a) == 0);
    tl_routing_stats st;
    itt.plugin->stats(itt.state, &st);
    for (int t = 0; t < 3; t++)
        CHECK(st.steps[t].skipped && st.steps[t].selected == 0);
    pl_layer_free(&itt);
    pl_layer_free(&loop);

    tl_opt_setting m[] = {{"capacity", tl_optv_float(0.0)}};
    pl_layer mod;
    if (make(&mod, "mod", m, 1, TL_BLOCK_LLAMA) != 0)
        return;
    pl_run(&mod, x, B, T, C, (tl_layer_args){0}, a, NULL, 0);
    CHECK(memcmp(a, x, sizeof a) == 0);
    pl_layer_free(&mod);
}

/* ITT with ATR, RTC and TSE all off is Loop: no_atr makes s = 1 and rho = 1,
 * no_tse fixes phi = 1, and no_rtc makes each step Y + 1 * (B(Y) * 1 - Y),
 * which the layer writes as B(Y) directly, so Y(N-1) = B(...B(X)) bit for
 * bit. */
static void check_itt_off_is_loop(tl_block_style style)
{
    tl_opt_setting off[] = {{"no_atr", tl_optv_bool(true)}, {"no_rtc", tl_optv_bool(true)},
                            {"no_tse", tl_optv_bool(true)}};
    tl_opt_setting four[] = {{"steps", tl_optv_int(4)}};
    pl_layer itt, loop;
    if (make(&itt, "itt", off, 3, style) != 0 || make(&loop, "loop", four, 1, style) != 0)
        return;
    pl_copy_params(&loop, &itt);
    float a[N], b[N];
    pl_run(&itt, x, B, T, C, (tl_layer_args){.collect_stats = true}, a, NULL, 0);
    pl_run(&loop, x, B, T, C, (tl_layer_args){0}, b, NULL, 0);
    CHECK_MSG(memcmp(a, b, sizeof a) == 0, "itt with every mechanism off differs from loop (%s)",
              style == TL_BLOCK_GPT2 ? "gpt2" : "llama");
    tl_routing_stats st;
    itt.plugin->stats(itt.state, &st);
    CHECK(st.n_steps == 3);
    for (int i = 0; i < B * T; i++)
        CHECK(st.token_passes[i] == 4);
    CHECK(tl_params_find(itt.params, "layers.0.router.1") == NULL);

    /* With RTC on (the no-ATR ablation: every step re-adds the state) the result must differ. */
    tl_opt_setting no_atr[] = {{"no_atr", tl_optv_bool(true)}};
    pl_layer rtc;
    if (make(&rtc, "itt", no_atr, 1, style) == 0) {
        pl_copy_params(&rtc, &itt);
        pl_run(&rtc, x, B, T, C, (tl_layer_args){0}, a, NULL, 0);
        CHECK(memcmp(a, b, sizeof a) != 0);
        pl_layer_free(&rtc);
    }
    pl_layer_free(&itt);
    pl_layer_free(&loop);
}

/* Changing token j of sequence 0 must leave every output at positions < j
 * unchanged, for layers that claim causality; positions >= j must change. */
static void check_causal(const char *label, const char *plugin, const tl_opt_setting *s, int n,
                         tl_routing routing)
{
    pl_layer L;
    if (make(&L, plugin, s, n, TL_BLOCK_LLAMA) != 0)
        return;
    float x2[N], a[N], b[N];
    tl_rng rng;
    tl_rng_seed(&rng, 44);
    int worst_j = -1;
    for (int j = 1; j < T; j += 3) {
        memcpy(x2, x, sizeof x2);
        for (int c = 0; c < C; c++)
            x2[j * C + c] += 3.0f * tl_rng_normal(&rng);
        tl_layer_args args = {.routing = routing};
        pl_run(&L, x, B, T, C, args, a, NULL, 0);
        pl_run(&L, x2, B, T, C, args, b, NULL, 0);
        /* Bit for bit: the earlier outputs see exactly the same inputs, and
         * every op computes each output row from its own row and earlier keys
         * in a fixed order. */
        for (int i = 0; i < j; i++)
            if (!rows_equal(a, b, i) && worst_j < 0)
                worst_j = j;
        bool later = false;
        for (int i = j; i < T; i++)
            later = later || !rows_equal(a, b, i);
        CHECK_MSG(later, "%s: changing token %d changed no output", label, j);
    }
    CHECK_MSG(worst_j < 0, "%s: changing token %d changed an earlier output", label, worst_j);
    printf("%-32s causal: %s\n", label, worst_j < 0 ? "ok" : "FAIL");
    pl_layer_free(&L);
}

/* Under top-k with the auxiliary loss the mask is top-k membership, and
 * topk_agreement compares it with the threshold rule the aux loss trains
 * (score > rule). The count is recomputed here from the logged scores and
 * masks; it must match exactly (same integer count over the same floats),
 * and a random router must disagree with top-k on some token, which the
 * earlier comparison of top-k with itself (always 1) could not show. */
static void check_aux_agreement(const char *plugin, const tl_opt_setting *s, int n, float rule)
{
    pl_layer L;
    if (make(&L, plugin, s, n, TL_BLOCK_LLAMA) != 0)
        return;
    float y[N];
    pl_run(&L, x, B, T, C, (tl_layer_args){.routing = TL_ROUTING_TOPK_AUX, .collect_stats = true},
           y, NULL, 0);
    tl_routing_stats st;
    CHECK(L.plugin->stats(L.state, &st) == TL_OK);
    CHECK(st.n_steps >= 1 && st.masks && st.scores);
    for (int t = 0; t < st.n_steps; t++) {
        const uint8_t *mask = st.masks + (size_t)t * B * T;
        const float *score = st.scores + (size_t)t * B * T;
        int64_t agree = 0;
        for (int i = 0; i < B * T; i++)
            agree += (uint8_t)(score[i] > rule) == mask[i];
        double expect = (double)agree / (double)(B * T);
        CHECK_MSG(st.steps[t].topk_agreement == expect,
                  "%s step %d: topk_agreement %.6f, recomputed %.6f", plugin, t + 1,
                  st.steps[t].topk_agreement, expect);
        CHECK_MSG(expect < 1.0, "%s step %d: a random router agrees with top-k on every token; "
                  "the check cannot tell a self-comparison apart", plugin, t + 1);
    }
    printf("%-32s topk_aux agreement %.3f\n", plugin, st.steps[0].topk_agreement);
    pl_layer_free(&L);
}

int main(void)
{
    tl_rng rng;
    tl_rng_seed(&rng, 3);
    gc_randn(&rng, x, N, 1.0f);

    check_counts();
    check_unchosen_unchanged();
    check_zero_ratio_skips();
    check_itt_off_is_loop(TL_BLOCK_LLAMA);
    check_itt_off_is_loop(TL_BLOCK_GPT2);

    check_causal("transformer", "transformer", NULL, 0, TL_ROUTING_DEFAULT);
    tl_opt_setting loop3[] = {{"steps", tl_optv_int(3)}};
    check_causal("loop", "loop", loop3, 1, TL_ROUTING_DEFAULT);
    check_causal("itt causal selected", "itt", NULL, 0, TL_ROUTING_CAUSAL);
    tl_opt_setting all[] = {{"context", tl_optv_string("all")}, {"router", tl_optv_string("tanh")}};
    check_causal("itt causal all tanh", "itt", all, 2, TL_ROUTING_CAUSAL);
    tl_opt_setting nortc[] = {{"no_rtc", tl_optv_bool(true)}, {"rtc_add", tl_optv_string("delta")}};
    check_causal("itt causal no_rtc", "itt", nortc, 2, TL_ROUTING_CAUSAL);
    tl_opt_setting half[] = {{"capacity", tl_optv_float(0.5)}};
    check_causal("mod causal", "mod", half, 1, TL_ROUTING_CAUSAL);

    /* Causal statistics: agreement with top-k is measured. */
    pl_layer L;
    if (make(&L, "itt", NULL, 0, TL_BLOCK_LLAMA) == 0) {
        float y[N];
        pl_run(&L, x, B, T, C, (tl_layer_args){.routing = TL_ROUTING_CAUSAL, .collect_stats = true},
               y, NULL, 0);
        tl_routing_stats st;
        L.plugin->stats(L.state, &st);
        for (int t = 0; t < st.n_steps; t++)
            CHECK(st.steps[t].topk_agreement >= 0.0 && st.steps[t].topk_agreement <= 1.0);
        printf("itt causal: selected fractions %.3f %.3f %.3f, top-k agreement %.3f %.3f %.3f\n",
               st.steps[0].fraction, st.steps[1].fraction, st.steps[2].fraction,
               st.steps[0].topk_agreement, st.steps[1].topk_agreement, st.steps[2].topk_agreement);
        pl_layer_free(&L);
    }
    check_aux_agreement("itt", NULL, 0, 0.5f);
    tl_opt_setting tanh_gate[] = {{"router", tl_optv_string("tanh")}};
    check_aux_agreement("itt", tanh_gate, 1, 0.0f);
    check_aux_agreement("mod", half, 1, 0.0f);
    return gc_finish("plugin routing");
}
