/* Decoder block: configuration, parameters, cost formulas and finite-difference
 * gradients of whole blocks (LLaMA and GPT-2 style, subset and cross calls). */
#include <math.h>
#include <string.h>

#include "gradcheck.h"
#include "thinklab/block.h"

enum { B = 2, T = 5, TK = 7, C = 8, H = 2, MAX_F = 32 };

/* Weights of one tiny block, and which of them gc_check perturbs. */
typedef struct block_case {
    tl_block_config cfg; /* resolved */
    float attn_norm[C], wq[C * C], wk[C * C], wv[C * C], wo[C * C];
    float mlp_norm[C], w1[MAX_F * C], w2[C * MAX_F], w3[MAX_F * C];
    bool mlp_inputs;     /* inputs 1.. are the MLP weights, else the attention weights */
    const char *call;    /* "forward", "delta" or "cross" */
    bool subset;         /* pass positions and lengths */
} block_case;

static const int32_t Q_POS[B * T] = {0, 2, 3, 7, 9, 1, 4, 5, 6, 12};
static const int32_t K_POS_CROSS[B * TK] = {0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 5, 6};
static const int32_t Q_POS_CROSS[B * T] = {0, 2, 3, 5, 6, 1, 2, 4, 5, 6};
static const int32_t Q_LEN[B] = {T, T - 2};
static const int32_t K_LEN_CROSS[B] = {TK, TK - 2};

static tl_tensor *wrap_f32(tl_ctx *ctx, float *data, int64_t rows, int64_t cols)
{
    if (cols == 0)
        return tl_wrap(ctx, TL_F32, data, 1, (int64_t[]){rows});
    return tl_wrap(ctx, TL_F32, data, 2, (int64_t[]){rows, cols});
}

static tl_tensor *wrap_i32(tl_ctx *ctx, const int32_t *data, int ndim, const int64_t *shape)
{
    return tl_wrap(ctx, TL_I32, (void *)data, ndim, shape);
}

/* in[0] is x; in[1] is xkv for "cross"; the weights under test follow. */
static tl_tensor *fwd_block(tl_ctx *ctx, tl_tensor **in, void *user)
{
    block_case *bc = user;
    int64_t F = bc->cfg.d_ff;
    tl_block blk = {.cfg = bc->cfg};
    bool cross = strcmp(bc->call, "cross") == 0;
    int k = cross ? 2 : 1;
    blk.attn_norm = bc->mlp_inputs ? wrap_f32(ctx, bc->attn_norm, C, 0) : in[k++];
    blk.wq = bc->mlp_inputs ? wrap_f32(ctx, bc->wq, C, C) : in[k++];
    blk.wk = bc->mlp_inputs ? wrap_f32(ctx, bc->wk, C, C) : in[k++];
    blk.wv = bc->mlp_inputs ? wrap_f32(ctx, bc->wv, C, C) : in[k++];
    blk.wo = bc->mlp_inputs ? wrap_f32(ctx, bc->wo, C, C) : in[k++];
    bool llama = bc->cfg.style == TL_BLOCK_LLAMA;
    blk.mlp_norm = bc->mlp_inputs ? in[k++] : wrap_f32(ctx, bc->mlp_norm, C, 0);
    blk.w1 = bc->mlp_inputs ? in[k++] : wrap_f32(ctx, bc->w1, F, C);
    blk.w2 = bc->mlp_inputs ? in[k++] : wrap_f32(ctx, bc->w2, C, F);
    if (llama)
        blk.w3 = bc->mlp_inputs ? in[k++] : wrap_f32(ctx, bc->w3, F, C);

    tl_attention_opts opts = {0};
    if (bc->subset) {
        int64_t bt[2] = {B, T}, btk[2] = {B, TK}, b1[1] = {B};
        opts.q_pos = wrap_i32(ctx, cross ? Q_POS_CROSS : Q_POS, 2, bt);
        opts.k_pos = cross ? wrap_i32(ctx, K_POS_CROSS, 2, btk) : opts.q_pos;
        opts.q_len = wrap_i32(ctx, Q_LEN, 1, b1);
        opts.k_len = cross ? wrap_i32(ctx, K_LEN_CROSS, 1, b1) : opts.q_len;
    }
    if (cross)
        return tl_block_delta_cross(ctx, &blk, in[0], in[1], &opts);
    if (strcmp(bc->call, "delta") == 0)
        return tl_block_delta(ctx, &blk, in[0], &opts);
    return tl_block_forward(ctx, &blk, in[0], &opts);
}

/* Weights large enough that attention is far from uniform: matrices
 * N(0, 1/fan_in), gains 1 + N(0, 0.1^2). */
static void fill_case(block_case *bc, tl_rng *rng, tl_block_style style)
{
    memset(bc, 0, sizeof *bc);
    bc->cfg = tl_block_config_default(C, H);
    bc->cfg.style = style;
    if (style == TL_BLOCK_GPT2) {
        bc->cfg.rope = TL_ROPE_NONE;
        bc->cfg.d_ff = 16; /* 4C would be 32; smaller keeps the check fast */
    }
    CHECK(tl_block_config_resolve(&bc->cfg) == TL_OK);
    int64_t F = bc->cfg.d_ff;
    CHECK(F <= MAX_F);
    float sc = 1.0f / sqrtf((float)C), sf = 1.0f / sqrtf((float)F);
    gc_randn(rng, bc->wq, C * C, sc);
    gc_randn(rng, bc->wk, C * C, sc);
    gc_randn(rng, bc->wv, C * C, sc);
    gc_randn(rng, bc->wo, C * C, sc);
    gc_randn(rng, bc->w1, F * C, sc);
    gc_randn(rng, bc->w3, F * C, sc);
    gc_randn(rng, bc->w2, C * F, sf);
    for (int i = 0; i < C; i++) {
        bc->attn_norm[i] = 1.0f + 0.1f * tl_rng_normal(rng);
        bc->mlp_norm[i] = 1.0f + 0.1f * tl_rng_normal(rng);
    }
}

/* Float32 forwards through norms, softmax and two matrix layers: with h = 1e-2
 * the central difference has truncation error O(h^2 f''') of about 1e-4 and
 * rounding noise of about 1e-7 * |L| / h = 1e-5 here, so 1e-3 + 1e-2 relative
 * holds for a correct gradient, while a wrong one is off by O(1). */
static const gc_options TOL = {.step = 1e-2, .atol = 1e-3, .rtol = 1e-2};

static void check_block_gradients(const char *label, tl_block_style style, const char *call,
                                  bool subset, tl_rng *rng)
{
    static block_case bc;
    fill_case(&bc, rng, style);
    bc.call = call;
    bc.subset = subset;
    bool cross = strcmp(call, "cross") == 0;
    int64_t F = bc.cfg.d_ff;
    float x[B * T * C], xkv[B * TK * C];
    gc_randn(rng, x, B * T * C, 1.0f);
    gc_randn(rng, xkv, B * TK * C, 1.0f);

    char name[128];
    for (int part = 0; part < 2; part++) {
        bc.mlp_inputs = part == 1;
        gc_input in[8];
        int n = 0;
        in[n++] = (gc_input){TL_F32, 3, {B, T, C}, x, true};
        if (cross)
            in[n++] = (gc_input){TL_F32, 3, {B, TK, C}, xkv, true};
        if (!bc.mlp_inputs) {
            in[n++] = (gc_input){TL_F32, 1, {C}, bc.attn_norm, true};
            in[n++] = (gc_input){TL_F32, 2, {C, C}, bc.wq, true};
            in[n++] = (gc_input){TL_F32, 2, {C, C}, bc.wk, true};
            in[n++] = (gc_input){TL_F32, 2, {C, C}, bc.wv, true};
            in[n++] = (gc_input){TL_F32, 2, {C, C}, bc.wo, true};
        } else {
            in[n++] = (gc_input){TL_F32, 1, {C}, bc.mlp_norm, true};
            in[n++] = (gc_input){TL_F32, 2, {F, C}, bc.w1, true};
            in[n++] = (gc_input){TL_F32, 2, {C, F}, bc.w2, true};
            if (style == TL_BLOCK_LLAMA)
                in[n++] = (gc_input){TL_F32, 2, {F, C}, bc.w3, true};
        }
        snprintf(name, sizeof name, "%s, %s weights", label, part ? "mlp" : "attention");
        gc_check(name, fwd_block, &bc, in, n, TOL);
    }
}

static void check_config(void)
{
    tl_block_config cfg = tl_block_config_default(128, 4);
    CHECK(cfg.style == TL_BLOCK_LLAMA && cfg.rope == TL_ROPE_INTERLEAVED);
    CHECK(tl_block_config_resolve(&cfg) == TL_OK);
    /* 8 * 128 / 3 = 341.3, rounded up to a multiple of 32. */
    CHECK_MSG(cfg.d_ff == 352, "d_ff %lld", (long long)cfg.d_ff);

    cfg = tl_block_config_default(128, 4);
    cfg.style = TL_BLOCK_GPT2;
    CHECK(tl_block_config_resolve(&cfg) == TL_OK);
    CHECK(cfg.d_ff == 512);

    cfg = tl_block_config_default(96, 5);
    CHECK(tl_block_config_resolve(&cfg) == TL_EINVAL);
    CHECK(strstr(tl_errmsg(), "n_head") != NULL);

    /* Head size 3 cannot be split into RoPE pairs, but is fine without RoPE. */
    cfg = tl_block_config_default(12, 4);
    CHECK(tl_block_config_resolve(&cfg) == TL_EINVAL);
    CHECK(strstr(tl_errmsg(), "head size 3 (d_model 12 / n_head 4) must be even") != NULL);
    CHECK(strstr(tl_errmsg(), "set rope = \"none\" (TL_ROPE_NONE in C)") != NULL);
    cfg.rope = TL_ROPE_NONE;
    CHECK(tl_block_config_resolve(&cfg) == TL_OK);

    cfg = tl_block_config_default(64, 4);
    cfg.d_ff = -1;
    CHECK(tl_block_config_resolve(&cfg) == TL_EINVAL);
    cfg = tl_block_config_default(64, 4);
    cfg.norm_eps = 0.0f;
    CHECK(tl_block_config_resolve(&cfg) == TL_EINVAL);
    cfg = tl_block_config_default(64, 4);
    cfg.n_layers = 0;
    CHECK(tl_block_config_resolve(&cfg) == TL_EINVAL);
    CHECK(tl_block_param_count(&cfg) == -1);
}

static void check_params_and_init(void)
{
    enum { WIDTH = 256, LAYERS = 8 };
    tl_block_config cfg = tl_block_config_default(WIDTH, 4);
    cfg.n_layers = LAYERS;
    tl_params *p = tl_params_new();
    tl_block blk;
    CHECK(tl_block_init(&blk, &cfg, p, "layers.3") == TL_OK);
    tl_rng rng;
    tl_rng_seed(&rng, 7);
    CHECK(tl_params_alloc(p, &rng) == TL_OK);

    CHECK(tl_params_count(p) == 9);
    CHECK(tl_params_numel(p) == tl_block_param_count(&cfg));
    CHECK(tl_params_find(p, "layers.3.attn.wq") == blk.wq);
    CHECK(tl_params_find(p, "layers.3.mlp.w3") == blk.w3);
    CHECK(tl_params_find(p, "layers.3.mlp_norm") == blk.mlp_norm);
    CHECK(blk.w1->shape[0] == blk.cfg.d_ff && blk.w1->shape[1] == WIDTH);
    CHECK(blk.w2->shape[0] == WIDTH && blk.w2->shape[1] == blk.cfg.d_ff);

    for (size_t i = 0; i < tl_params_count(p); i++) {
        tl_tensor *w = tl_params_at(p, i);
        bool decays = (tl_params_flags_at(p, i) & TL_PARAM_DECAY) != 0;
        CHECK_MSG(decays == (w->ndim == 2), "%s", w->name);
        int64_t n = tl_numel(w);
        double s = 0, s2 = 0;
        for (int64_t j = 0; j < n; j++) {
            s += tl_f32(w)[j];
            s2 += (double)tl_f32(w)[j] * tl_f32(w)[j];
        }
        if (w->ndim == 1) {
            CHECK_MSG(s == (double)n && s2 == (double)n, "%s gains must start at 1", w->name);
            continue;
        }
        /* The sample std of n >= 65536 normal draws is within 1% of the true
         * std with probability far above 0.999 (its relative sd is 1/sqrt(2n)). */
        bool output = w == blk.wo || w == blk.w2;
        double want = output ? 0.02 / sqrt(2.0 * LAYERS) : 0.02;
        double std = sqrt(s2 / (double)n - (s / (double)n) * (s / (double)n));
        CHECK_MSG(fabs(std / want - 1.0) < 0.01, "%s std %g, expected %g", w->name, std, want);
    }

    /* Forward equals x + delta, and a wrong width is rejected. */
    tl_ctx *ctx = tl_ctx_new(0);
    tl_tensor *x = tl_new3(ctx, 2, 9, WIDTH);
    gc_randn(&rng, tl_f32(x), tl_numel(x), 1.0f);
    tl_ctx_set_grad_enabled(ctx, false);
    tl_tensor *y = tl_block_forward(ctx, &blk, x, NULL);
    tl_tensor *d = tl_block_delta(ctx, &blk, x, NULL);
    CHECK(y && d);
    if (y && d) {
        double worst = 0;
        for (int64_t i = 0; i < tl_numel(x); i++)
            worst = fmax(worst, fabs(tl_f32(y)[i] - (tl_f32(x)[i] + tl_f32(d)[i])));
        /* The two sums differ in association only: a few ulps of |x| ~ 4. */
        CHECK_MSG(worst < 1e-5, "forward - (x + delta) = %g", worst);
    }
    tl_tensor *narrow = tl_new3(ctx, 2, 9, WIDTH / 2);
    CHECK(tl_block_forward(ctx, &blk, narrow, NULL) == NULL);
    CHECK(tl_lasterr() == TL_ESHAPE);
    CHECK(tl_block_forward(ctx, &blk, NULL, NULL) == NULL);
    tl_tensor *other_batch = tl_new3(ctx, 3, 9, WIDTH);
    CHECK(tl_block_delta_cross(ctx, &blk, x, other_batch, NULL) == NULL);
    CHECK(tl_lasterr() == TL_ESHAPE);
    CHECK(strstr(tl_errmsg(), "batch") != NULL);
    tl_ctx_free(ctx);

    tl_block_config bad = tl_block_config_default(WIDTH, 3);
    CHECK(tl_block_init(&blk, &bad, p, "other") == TL_EINVAL);
    tl_params_free(p);
}

static void check_cost_formulas(void)
{
    tl_block_config llama = tl_block_config_default(128, 4);
    tl_block_config gpt2 = llama;
    gpt2.style = TL_BLOCK_GPT2;
    /* LLaMA: 2*128 + 4*128^2 + 3*128*352; GPT-2: 2*128 + 4*128^2 + 2*128*512. */
    CHECK(tl_block_param_count(&llama) == 256 + 65536 + 135168);
    CHECK(tl_block_param_count(&gpt2) == 256 + 65536 + 131072);
    /* Per token 8C^2 + 2*3*C*F + 4*C*keys with 10 keys, for 64 tokens. */
    double want = 64.0 * (8.0 * 128 * 128 + 6.0 * 128 * 352 + 4.0 * 128 * 10);
    CHECK(tl_block_flops(&llama, 64, 10.0) == want);
    want = 64.0 * (8.0 * 128 * 128 + 4.0 * 128 * 512 + 4.0 * 128 * 32.5);
    CHECK(tl_block_flops(&gpt2, 64, 32.5) == want);
}

int main(void)
{
    tl_rng rng;
    tl_rng_seed(&rng, 3);
    check_config();
    check_params_and_init();
    check_cost_formulas();
    check_block_gradients("llama forward", TL_BLOCK_LLAMA, "forward", false, &rng);
    check_block_gradients("llama delta subset", TL_BLOCK_LLAMA, "delta", true, &rng);
    check_block_gradients("llama cross", TL_BLOCK_LLAMA, "cross", true, &rng);
    check_block_gradients("gpt2 forward", TL_BLOCK_GPT2, "forward", false, &rng);
    check_block_gradients("gpt2 delta subset", TL_BLOCK_GPT2, "delta", true, &rng);
    return gc_finish("block");
}
