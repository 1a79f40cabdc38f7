/* Differentiable operations.
 *
 * Each op computes its output at once and, when a gradient is needed, records a
 * node whose backward accumulates into the inputs' gradients. Every op returns
 * NULL with a message on invalid input, and returns NULL without touching the
 * message when any tensor argument is NULL, so a chain of ops can be checked
 * once at its end. */
#ifndef THINKLAB_OPS_H
#define THINKLAB_OPS_H

#include "thinklab/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One entry per op kind; tl_op_name() and the backward table are indexed by it. */
typedef enum tl_op {
    TL_OP_MATMUL,
    TL_OP_ADD,
    TL_OP_MUL,
    TL_OP_SCALE,
    TL_OP_SUM,
    TL_OP_MEAN,
    TL_OP_EMBEDDING,
    TL_OP_GATHER_ROWS,
    TL_OP_SCATTER_ADD_ROWS,
    TL_OP_RMSNORM,
    TL_OP_LAYERNORM,
    TL_OP_SOFTMAX,
    TL_OP_ATTENTION,
    TL_OP_SILU,
    TL_OP_GELU,
    TL_OP_SIGMOID,
    TL_OP_TANH,
    TL_OP_SWIGLU,
    TL_OP_CROSS_ENTROPY,
    TL_OP_BCE_LOGITS,
    TL_OP_COUNT
} tl_op;

const char *tl_op_name(tl_op op);

/* ---- linear algebra ----------------------------------------------------- */

/* Matrix product through OpenBLAS sgemm, with a and b optionally transposed.
 *   2-D:      a (M,K) [or (K,M) if ta], b (K,N) [or (N,K) if tb] -> (M,N)
 *   batched:  a (..., M,K), b (..., K,N) with equal leading dims -> (..., M,N)
 *   linear:   a (..., K) with ta false and 2-D b -> (..., N), leading dims flattened */
tl_tensor *tl_matmul(tl_ctx *ctx, tl_tensor *a, tl_tensor *b, bool ta, bool tb);

/* x (..., K) times w (N, K) transposed -> (..., N): PyTorch's nn.Linear layout. */
tl_tensor *tl_linear(tl_ctx *ctx, tl_tensor *x, tl_tensor *w);

/* ---- elementwise and reductions ------------------------------------------ */

/* a + b and a * b. b has the shape of a, or is a row vector of a's last
 * dimension (broadcast over rows), or a column vector of shape (..., 1) whose
 * leading dims match a's (broadcast over the last dimension). */
tl_tensor *tl_add(tl_ctx *ctx, tl_tensor *a, tl_tensor *b);
tl_tensor *tl_mul(tl_ctx *ctx, tl_tensor *a, tl_tensor *b);
tl_tensor *tl_scale(tl_ctx *ctx, tl_tensor *a, float s);
/* Sum and mean of all elements -> shape (1). */
tl_tensor *tl_sum(tl_ctx *ctx, tl_tensor *a);
tl_tensor *tl_mean(tl_ctx *ctx, tl_tensor *a);

tl_tensor *tl_silu(tl_ctx *ctx, tl_tensor *x);
/* GELU; approximate selects the tanh form used by GPT-2, otherwise the erf form. */
tl_tensor *tl_gelu(tl_ctx *ctx, tl_tensor *x, bool approximate);
tl_tensor *tl_sigmoid(tl_ctx *ctx, tl_tensor *x);
tl_tensor *tl_tanh(tl_ctx *ctx, tl_tensor *x);
/* silu(a) * b, both of one shape. */
tl_tensor *tl_swiglu(tl_ctx *ctx, tl_tensor *a, tl_tensor *b);
/* Softmax over the last dimension. */
tl_tensor *tl_softmax(tl_ctx *ctx, tl_tensor *x);

/* ---- normalisation ------------------------------------------------------ */

/* x (..., C) normalised over C, times gain g (C). */
tl_tensor *tl_rmsnorm(tl_ctx *ctx, tl_tensor *x, tl_tensor *g, float eps);
/* LayerNorm over C with gain g (C) and optional bias b (C, or NULL). */
tl_tensor *tl_layernorm(tl_ctx *ctx, tl_tensor *x, tl_tensor *g, tl_tensor *b, float eps);

/* ---- indexing ------------------------------------------------------------ */

/* w (V, C) rows picked by int32 ids (...) -> (..., C). Ids must lie in [0, V). */
tl_tensor *tl_embedding(tl_ctx *ctx, tl_tensor *w, tl_tensor *ids);
/* x (N, C), int32 idx (M) -> (M, C). idx -1 gives a zero row (padding). */
tl_tensor *tl_gather_rows(tl_ctx *ctx, tl_tensor *x, tl_tensor *idx);
/* base (N, C) with src (M, C) added at rows idx (M) -> new (N, C); base is not
 * modified. Rows with idx -1 are skipped; repeated indices accumulate. */
tl_tensor *tl_scatter_add_rows(tl_ctx *ctx, tl_tensor *base, tl_tensor *idx, tl_tensor *src);

/* ---- attention ------------------------------------------------------------ */

typedef enum tl_rope_pairing {
    TL_ROPE_NONE,        /* no rotary embedding */
    TL_ROPE_INTERLEAVED, /* rotate (x[2i], x[2i+1]) */
    TL_ROPE_HALF,        /* rotate (x[i], x[i + D/2]) */
} tl_rope_pairing;

typedef struct tl_attention_opts {
    int n_head;
    tl_rope_pairing rope;
    float rope_base;          /* 10000 for LLaMA */
    /* Original positions of query and key tokens, int32 (B, Tq) and (B, Tk), in
     * ascending order within each sequence. NULL means 0..T-1. They drive RoPE
     * and the causal mask: query i sees key j when k_pos[j] <= q_pos[i]. */
    tl_tensor *q_pos;
    tl_tensor *k_pos;
    /* Valid tokens per sequence, int32 (B); rows at or past the length are
     * padding: padded keys are masked and padded queries output zeros. NULL
     * means every row is valid. */
    tl_tensor *q_len;
    tl_tensor *k_len;
} tl_attention_opts;

/* Fused causal multi-head self-attention with RoPE:
 * q (B, Tq, H*D), k and v (B, Tk, H*D) -> (B, Tq, H*D). Scores are scaled by
 * 1/sqrt(D); the (Tq, Tk) score matrices are never separate graph nodes. */
tl_tensor *tl_attention(tl_ctx *ctx, tl_tensor *q, tl_tensor *k, tl_tensor *v,
                        const tl_attention_opts *opts);

/* ---- losses ---------------------------------------------------------------- */

/* Mean cross-entropy of logits (N, V) against int32 targets (N), over the rows
 * whose mask (float (N), NULL = all rows) is non-zero -> shape (1). If
 * per_row is not NULL it receives a new (N) tensor of per-row losses without
 * gradient (masked rows hold 0). */
tl_tensor *tl_cross_entropy(tl_ctx *ctx, tl_tensor *logits, tl_tensor *targets,
                            tl_tensor *mask, tl_tensor **per_row);

/* Mean binary cross-entropy of logits (N) against labels (N) in [0, 1], which
 * carry no gradient -> shape (1). */
tl_tensor *tl_bce_logits(tl_ctx *ctx, tl_tensor *logits, tl_tensor *labels);

/* ---- selection (no gradient) ----------------------------------------------- */

/* Indices of the k largest scores in each row of scores (B, T), returned in
 * ascending position order as int32 (B, k). Ties go to the earlier position. */
tl_tensor *tl_topk(tl_ctx *ctx, tl_tensor *scores, int64_t k);

/* Number of tokens that a ratio selects out of n: ceil(ratio * n), except that a
 * product within 1e-6*n of an integer is rounded to it first, so float error
 * cannot add a token; clamped to [0, n]. */
int64_t tl_ratio_count(double ratio, int64_t n);

#ifdef __cplusplus
}
#endif
#endif
