/* The pre-norm decoder block: configuration, parameters, forward and cost. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "thinklab/block.h"

tl_block_config tl_block_config_default(int64_t d_model, int n_head)
{
    return (tl_block_config){
        .style = TL_BLOCK_LLAMA,
        .d_model = d_model,
        .n_head = n_head,
        .d_ff = 0,
        .norm_eps = 1e-5f,
        .rope = TL_ROPE_INTERLEAVED,
        .rope_base = 10000.0f,
        .init_std = 0.02f,
        .scaled_init = true,
        .n_layers = 1,
    };
}

/* SwiGLU width: 8C/3 keeps the MLP's parameter count at that of a 4C GELU MLP.
 * It is rounded up to a multiple of 32 rather than LLaMA's 256, because 256
 * would add up to 255 columns, which is large next to the widths of small
 * models (C = 128 gives 352, where 256-rounding would give 512). */
static int64_t tl_swiglu_width(int64_t d_model)
{
    int64_t f = (8 * d_model + 2) / 3;
    return (f + 31) / 32 * 32;
}

tl_status tl_block_config_resolve(tl_block_config *cfg)
{
    if ((unsigned)cfg->style >= TL_BLOCK_STYLE_COUNT)
        return tl_seterr(TL_EINVAL, "block style %d is unknown; use TL_BLOCK_LLAMA or "
                                    "TL_BLOCK_GPT2", (int)cfg->style);
    if (cfg->d_model <= 0)
        return tl_seterr(TL_EINVAL, "block d_model %lld must be positive",
                         (long long)cfg->d_model);
    if (cfg->n_head <= 0 || cfg->d_model % cfg->n_head != 0)
        return tl_seterr(TL_EINVAL, "block n_head %d must be positive and divide d_model %lld",
                         cfg->n_head, (long long)cfg->d_model);
    if (cfg->d_ff < 0)
        return tl_seterr(TL_EINVAL, "block d_ff %lld must be positive, or 0 for the default",
                         (long long)cfg->d_ff);
    if (!(cfg->norm_eps > 0) || !isfinite(cfg->norm_eps))
        return tl_seterr(TL_EINVAL, "block norm_eps %g must be positive and finite",
                         (double)cfg->norm_eps);
    if ((unsigned)cfg->rope > TL_ROPE_HALF)
        return tl_seterr(TL_EINVAL, "block rope pairing %d is unknown; use TL_ROPE_NONE, "
                                    "TL_ROPE_INTERLEAVED or TL_ROPE_HALF", (int)cfg->rope);
    int64_t head_dim = cfg->d_model / cfg->n_head;
    if (cfg->rope != TL_ROPE_NONE && head_dim % 2 != 0)
        return tl_seterr(TL_EINVAL, "block head size %lld (d_model %lld / n_head %d) must be even "
                                    "for RoPE; choose n_head so that d_model / n_head is even, or "
                                    "set rope = \"none\" (TL_ROPE_NONE in C)",
                         (long long)head_dim, (long long)cfg->d_model, cfg->n_head);
    if (cfg->rope != TL_ROPE_NONE && (!(cfg->rope_base > 1) || !isfinite(cfg->rope_base)))
        return tl_seterr(TL_EINVAL, "block rope_base %g must be finite and greater than 1 "
                                    "(10000 is the usual value)", (double)cfg->rope_base);
    if (!(cfg->init_std >= 0) || !isfinite(cfg->init_std))
        return tl_seterr(TL_EINVAL, "block init_std %g must be finite and >= 0",
                         (double)cfg->init_std);
    if (cfg->n_layers < 1)
        return tl_seterr(TL_EINVAL, "block n_layers %d must be at least 1 (the model's depth, "
                                    "used by scaled_init)", cfg->n_layers);

    if (cfg->d_ff == 0)
        cfg->d_ff = cfg->style == TL_BLOCK_GPT2 ? 4 * cfg->d_model : tl_swiglu_width(cfg->d_model);
    return TL_OK;
}

/* Registers prefix.suffix; an empty or NULL prefix gives the bare suffix. */
static tl_tensor *tl_block_param(tl_params *p, const char *prefix, const char *suffix,
                                 int64_t rows, int64_t cols, tl_init init, float value,
                                 unsigned flags)
{
    char name[256];
    int n = prefix && *prefix ? snprintf(name, sizeof name, "%s.%s", prefix, suffix)
                              : snprintf(name, sizeof name, "%s", suffix);
    if (n < 0 || (size_t)n >= sizeof name) {
        tl_seterr(TL_EINVAL, "block parameter prefix '%s' is too long (the full name must be "
                             "shorter than %zu characters)", prefix, sizeof name);
        return NULL;
    }
    int64_t shape[2] = {rows, cols};
    return tl_params_add(p, name, cols ? 2 : 1, shape, init, value, flags);
}

tl_status tl_block_init(tl_block *blk, const tl_block_config *cfg, tl_params *p,
                        const char *prefix)
{
    tl_block_config c = *cfg;
    tl_status st = tl_block_config_resolve(&c);
    if (st != TL_OK)
        return st;
    memset(blk, 0, sizeof *blk);
    blk->cfg = c;

    int64_t C = c.d_model, F = c.d_ff;
    float std = c.init_std;
    float out_std = c.scaled_init ? std / sqrtf(2.0f * (float)c.n_layers) : std;
    /* Matrices are decayed; norm gains (initialised to 1) are not. The order of
     * registration fixes the order of random draws in tl_params_alloc. */
    blk->attn_norm = tl_block_param(p, prefix, "attn_norm", C, 0, TL_INIT_CONST, 1.0f, 0);
    blk->wq = tl_block_param(p, prefix, "attn.wq", C, C, TL_INIT_NORMAL, std, TL_PARAM_DECAY);
    blk->wk = tl_block_param(p, prefix, "attn.wk", C, C, TL_INIT_NORMAL, std, TL_PARAM_DECAY);
    blk->wv = tl_block_param(p, prefix, "attn.wv", C, C, TL_INIT_NORMAL, std, TL_PARAM_DECAY);
    blk->wo = tl_block_param(p, prefix, "attn.wo", C, C, TL_INIT_NORMAL, out_std, TL_PARAM_DECAY);
    blk->mlp_norm = tl_block_param(p, prefix, "mlp_norm", C, 0, TL_INIT_CONST, 1.0f, 0);
    blk->w1 = tl_block_param(p, prefix, "mlp.w1", F, C, TL_INIT_NORMAL, std, TL_PARAM_DECAY);
    blk->w2 = tl_block_param(p, prefix, "mlp.w2", C, F, TL_INIT_NORMAL, out_std, TL_PARAM_DECAY);
    bool ok = blk->attn_norm && blk->wq && blk->wk && blk->wv && blk->wo && blk->mlp_norm &&
              blk->w1 && blk->w2;
    if (ok && c.style == TL_BLOCK_LLAMA) {
        blk->w3 = tl_block_param(p, prefix, "mlp.w3", F, C, TL_INIT_NORMAL, std, TL_PARAM_DECAY);
        ok = blk->w3 != NULL;
    }
    /* NOTE: parameters registered before a failure stay in the store, which
     * has no way to remove them; the caller should discard the store. */
    return ok ? TL_OK : tl_lasterr();
}

static tl_tensor *tl_block_norm(tl_ctx *ctx, const tl_block *blk, tl_tensor *x, tl_tensor *gain)
{
    if (blk->cfg.style == TL_BLOCK_GPT2)
        return tl_layernorm(ctx, x, gain, NULL, blk->cfg.norm_eps);
    return tl_rmsnorm(ctx, x, gain, blk->cfg.norm_eps);
}

/* MLP(x) for x (B, T, C): W2 silu(W1 x) * (W3 x) for LLaMA, W2 gelu_tanh(W1 x)
 * for GPT-2. */
static tl_tensor *tl_block_mlp(tl_ctx *ctx, const tl_block *blk, tl_tensor *x)
{
    tl_tensor *hidden;
    if (blk->cfg.style == TL_BLOCK_GPT2)
        hidden = tl_gelu(ctx, tl_linear(ctx, x, blk->w1), true);
    else
        hidden = tl_swiglu(ctx, tl_linear(ctx, x, blk->w1), tl_linear(ctx, x, blk->w3));
    return tl_linear(ctx, hidden, blk->w2);
}

static bool tl_block_check_input(const tl_block *blk, const char *fn, const char *arg,
                                 const tl_tensor *x)
{
    if (!blk->wq) {
        tl_seterr(TL_ESTATE, "%s: the block has no parameters; call tl_block_init first", fn);
        return false;
    }
    if (x->dtype != TL_F32 || x->ndim != 3 || x->shape[2] != blk->cfg.d_model) {
        char buf[96];
        tl_seterr(TL_ESHAPE, "%s: %s is %s, expected float32 (B, T, %lld) for this block's "
                             "d_model", fn, arg, tl_shape_str(x, buf, sizeof buf),
                  (long long)blk->cfg.d_model);
        return false;
    }
    return true;
}

static tl_attention_opts tl_block_attention_opts(const tl_block *blk, const tl_attention_opts *attn)
{
    tl_attention_opts o = {0};
    if (attn)
        o = *attn;
    o.n_head = blk->cfg.n_head;
    o.rope = blk->cfg.rope;
    o.rope_base = blk->cfg.rope_base;
    return o;
}

/* The two residual branches for queries xq (B, Tq, C) and keys and values
 * from xkv (B, Tk, C): *attn_out = Wo Attn(Norm(xq), Norm(xkv)) and
 * *mlp_out = MLP(Norm(xq + attn_out)), both (B, Tq, C). With xkv == xq the
 * key-value norm is the query norm, computed once. Returns h = xq + attn_out. */
static tl_tensor *tl_block_branches(tl_ctx *ctx, const tl_block *blk, tl_tensor *xq,
                                    tl_tensor *xkv, const tl_attention_opts *attn,
                                    tl_tensor **attn_out, tl_tensor **mlp_out)
{
    tl_attention_opts opts = tl_block_attention_opts(blk, attn);
    tl_tensor *nq = tl_block_norm(ctx, blk, xq, blk->attn_norm);
    tl_tensor *nkv = xkv == xq ? nq : tl_block_norm(ctx, blk, xkv, blk->attn_norm);
    tl_tensor *q = tl_linear(ctx, nq, blk->wq);
    tl_tensor *k = tl_linear(ctx, nkv, blk->wk);
    tl_tensor *v = tl_linear(ctx, nkv, blk->wv);
    tl_tensor *a = tl_linear(ctx, tl_attention(ctx, q, k, v, &opts), blk->wo);
    tl_tensor *h = tl_add(ctx, xq, a);
    tl_tensor *m = tl_block_mlp(ctx, blk, tl_block_norm(ctx, blk, h, blk->mlp_norm));
    *attn_out = a;
    *mlp_out = m;
    return m ? h : NULL;
}

tl_tensor *tl_block_delta(tl_ctx *ctx, const tl_block *blk, tl_tensor *x,
                          const tl_attention_opts *attn)
{
    if (!x || !tl_block_check_input(blk, "block_delta", "x", x))
        return NULL;
    tl_tensor *a, *m;
    if (!tl_block_branches(ctx, blk, x, x, attn, &a, &m))
        return NULL;
    return tl_add(ctx, a, m);
}

tl_tensor *tl_block_forward(tl_ctx *ctx, const tl_block *blk, tl_tensor *x,
                            const tl_attention_opts *attn)
{
    if (!x || !tl_block_check_input(blk, "block_forward", "x", x))
        return NULL;
    tl_tensor *a, *m;
    tl_tensor *h = tl_block_branches(ctx, blk, x, x, attn, &a, &m);
    /* x + (a + m) computed as (x + a) + m, which saves one add; the two
     * differ only by float rounding. */
    return h ? tl_add(ctx, h, m) : NULL;
}

tl_tensor *tl_block_delta_cross(tl_ctx *ctx, const tl_block *blk, tl_tensor *xq, tl_tensor *xkv,
                                const tl_attention_opts *attn)
{
    if (!xq || !xkv)
        return NULL;
    if (!tl_block_check_input(blk, "block_delta_cross", "xq", xq) ||
        !tl_block_check_input(blk, "block_delta_cross", "xkv", xkv))
        return NULL;
    if (xq->shape[0] != xkv->shape[0]) {
        tl_seterr(TL_ESHAPE, "block_delta_cross: xq has batch %lld and xkv has batch %lld; "
                             "they must be equal", (long long)xq->shape[0],
                  (long long)xkv->shape[0]);
        return NULL;
    }
    tl_tensor *a, *m;
    if (!tl_block_branches(ctx, blk, xq, xkv, attn, &a, &m))
        return NULL;
    return tl_add(ctx, a, m);
}

/* Matrices 4C^2 + (2 or 3) C F, plus the two norm gains. */
int64_t tl_block_param_count(const tl_block_config *cfg)
{
    tl_block_config c = *cfg;
    if (tl_block_config_resolve(&c) != TL_OK)
        return -1;
    int64_t C = c.d_model, F = c.d_ff;
    int64_t mlp_mats = c.style == TL_BLOCK_GPT2 ? 2 : 3;
    return 2 * C + 4 * C * C + mlp_mats * C * F;
}

double tl_block_flops(const tl_block_config *cfg, int64_t tokens, double keys_per_token)
{
    tl_block_config c = *cfg;
    if (tl_block_config_resolve(&c) != TL_OK)
        return -1.0;
    double C = (double)c.d_model, F = (double)c.d_ff;
    double mlp_mats = c.style == TL_BLOCK_GPT2 ? 2.0 : 3.0;
    /* Per token, the q, k, v and o projections take 4 * 2C^2 and the MLP 2CF
     * per matrix. Each key costs 2C for the score q.k and 2C for the weighted
     * sum of values. */
    double per_token = 8.0 * C * C + 2.0 * mlp_mats * C * F + 4.0 * C * keys_per_token;
    return per_token * (double)tokens;
}
