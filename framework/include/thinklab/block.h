/* The pre-norm decoder block B(x) that every layer kind is built from.
 *
 *   h    = x + Attn(Norm(x))
 *   B(x) = h + MLP(Norm(h))          Delta(x) = B(x) - x
 *
 * LLaMA style (default): RMSNorm, RoPE attention, SwiGLU MLP W2(silu(W1 x) * W3 x),
 * no biases. GPT-2 style: LayerNorm without bias, no RoPE (the model adds learned
 * absolute positions), GELU MLP (tanh approximation, as GPT-2) of width 4C, no
 * biases.
 *
 * Parameter names below a prefix p: p.attn_norm, p.attn.wq, p.attn.wk, p.attn.wv,
 * p.attn.wo, p.mlp_norm, p.mlp.w1, p.mlp.w2 and, for SwiGLU, p.mlp.w3. Weight
 * matrices use nn.Linear's (out, in) layout. */
#ifndef THINKLAB_BLOCK_H
#define THINKLAB_BLOCK_H

#include "thinklab/ops.h"
#include "thinklab/params.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum tl_block_style { TL_BLOCK_LLAMA, TL_BLOCK_GPT2, TL_BLOCK_STYLE_COUNT } tl_block_style;

typedef struct tl_block_config {
    tl_block_style style;
    int64_t d_model;        /* C */
    int n_head;             /* H; C must be divisible by H */
    /* MLP hidden width. 0 picks 4C for GPT-2 and, for LLaMA, 8C/3 rounded up
     * to a multiple of 32 (LLaMA itself rounds to 256, which would add up to
     * 255 columns to a small model). */
    int64_t d_ff;
    float norm_eps;         /* 1e-5 */
    /* TL_ROPE_INTERLEAVED in tl_block_config_default. The field is honoured in
     * both styles: a GPT-2 style block sets TL_ROPE_NONE itself, because its
     * model adds learned absolute positions. */
    tl_rope_pairing rope;
    float rope_base;        /* 10000 */
    float init_std;         /* 0.02 */
    /* Output projections (wo, w2) start at init_std / sqrt(2 * n_layers) when
     * scaled_init is set, as in GPT-2. */
    bool scaled_init;
    int n_layers;           /* depth of the model; 1 in tl_block_config_default */
} tl_block_config;

/* LLaMA-style defaults for width d_model and n_head heads: eps 1e-5, RoPE
 * base 10000, init_std 0.02, scaled_init on, n_layers 1. */
tl_block_config tl_block_config_default(int64_t d_model, int n_head);
/* Fills d_ff when 0 and checks every field; the message names the field. */
tl_status tl_block_config_resolve(tl_block_config *cfg);

typedef struct tl_block {
    tl_block_config cfg;
    tl_tensor *attn_norm, *wq, *wk, *wv, *wo;
    tl_tensor *mlp_norm, *w1, *w2, *w3; /* w3 is NULL for GPT-2 */
} tl_block;

/* Resolves a copy of cfg into blk->cfg and registers the block's parameters
 * under prefix in p (before tl_params_alloc): matrices N(0, init_std^2) with
 * weight decay, norm gains 1 without. A NULL or empty prefix gives bare names
 * such as "attn.wq". */
tl_status tl_block_init(tl_block *blk, const tl_block_config *cfg, tl_params *p,
                        const char *prefix);

/* Delta(x) for x (B, T, C); the caller adds the residual (B(x) = x + Delta).
 * attn carries positions and lengths for blocks applied to a subset of tokens
 * (its n_head, rope and rope_base fields are taken from the block config);
 * NULL means all tokens at positions 0..T-1. */
tl_tensor *tl_block_delta(tl_ctx *ctx, const tl_block *blk, tl_tensor *x,
                          const tl_attention_opts *attn);

/* B(x) = x + Delta(x). */
tl_tensor *tl_block_forward(tl_ctx *ctx, const tl_block *blk, tl_tensor *x,
                            const tl_attention_opts *attn);

/* Attention over a subset with keys and values from other tokens
 * ("context = all" in ITT): queries from xq (B, Tq, C), keys and values from
 * xkv (B, Tk, C), positions and lengths in attn. Returns Delta for the query
 * tokens, with the MLP applied to the query tokens only. */
tl_tensor *tl_block_delta_cross(tl_ctx *ctx, const tl_block *blk, tl_tensor *xq, tl_tensor *xkv,
                                const tl_attention_opts *attn);

/* Parameters of one block, and its forward FLOPs for `tokens` tokens that
 * attend to keys_per_token keys each on average ((T + 1) / 2 for causal
 * attention over T tokens). FLOPs count 2 per multiply-add in the projections,
 * the MLP, the scores and the weighted sum of values. Norms, activations,
 * softmax and residual adds are not counted. Both return -1 for an invalid
 * configuration. */
int64_t tl_block_param_count(const tl_block_config *cfg);
double tl_block_flops(const tl_block_config *cfg, int64_t tokens, double keys_per_token);

#ifdef __cplusplus
}
#endif
#endif
