/* Tensors, the per-step context and reverse-mode autograd.
 *
 * A tensor is a contiguous row-major array of float32 or int32 with up to four
 * dimensions. Activations, their gradients and graph nodes live in the context's
 * arena and are valid until tl_ctx_reset(); parameters live in a tl_params store.
 *
 * Ops run eagerly and, when an input requires a gradient and gradients are
 * enabled, record a node on the context's tape. tl_backward() walks the tape in
 * reverse and accumulates into every tensor's grad. After backward, the grads
 * of leaves, parameters and views can be read until the next reset. The grad
 * of an op's output can be read only if tl_keep_grad() marked it before
 * backward: backward hands the others on to later gradients as soon as the
 * op that produced the tensor has consumed them.
 *
 * Shape letters used across thinklab: B batch, T sequence length, C channels
 * (model width), H heads, D head size (C = H*D), V vocabulary, N rows of a
 * flattened (B*T, C) matrix, K selected tokens per sequence. */
#ifndef THINKLAB_TENSOR_H
#define THINKLAB_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "thinklab/status.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { TL_MAX_DIMS = 4 };

typedef enum tl_dtype { TL_F32, TL_I32, TL_DTYPE_COUNT } tl_dtype;

enum tl_tensor_flags {
    TL_REQUIRES_GRAD = 1u << 0,
    TL_PARAM = 1u << 1, /* owned by a tl_params store, grad is persistent */
    TL_KEEP_GRAD = 1u << 2, /* grad outlives backward (tl_keep_grad) */
    TL_GRAD_TRANSIENT = 1u << 3, /* set by autograd: grad allocated during backward */
};

typedef struct tl_node tl_node;

typedef struct tl_tensor {
    tl_dtype dtype;
    int ndim;
    int64_t shape[TL_MAX_DIMS];
    void *data;         /* contiguous row-major */
    float *grad;        /* same shape as data, float32; NULL until a gradient arrives */
    tl_node *node;      /* op that produced this tensor; NULL for leaves and views */
    unsigned flags;     /* enum tl_tensor_flags */
    const char *name;   /* parameter name, NULL for activations */
} tl_tensor;

static inline float *tl_f32(const tl_tensor *t) { return (float *)t->data; }
static inline int32_t *tl_i32(const tl_tensor *t) { return (int32_t *)t->data; }
static inline bool tl_requires_grad(const tl_tensor *t) { return (t->flags & TL_REQUIRES_GRAD) != 0; }

int64_t tl_numel(const tl_tensor *t);
/* Size of the last dimension, and the product of all others. */
int64_t tl_cols(const tl_tensor *t);
int64_t tl_rows_of(const tl_tensor *t);
bool tl_same_shape(const tl_tensor *a, const tl_tensor *b);
/* Writes "(12, 64, 128) f32" into buf. Returns buf. */
char *tl_shape_str(const tl_tensor *t, char *buf, size_t size);

/* ---- context ------------------------------------------------------------ */

typedef struct tl_ctx tl_ctx;

/* Creates a context whose arena grows in blocks of block_bytes (0 picks 64 MiB).
 * Blocks are kept across resets, so after the first steps no heap allocation
 * happens. Returns NULL on allocation failure. */
tl_ctx *tl_ctx_new(size_t block_bytes);
void tl_ctx_free(tl_ctx *ctx);

/* Drops every activation, gradient and node of the current step. */
void tl_ctx_reset(tl_ctx *ctx);

/* Bytes in use in the arena now, the maximum since creation, and reserved. */
size_t tl_ctx_arena_used(const tl_ctx *ctx);
size_t tl_ctx_arena_peak(const tl_ctx *ctx);
size_t tl_ctx_arena_reserved(const tl_ctx *ctx);
/* Number of heap blocks the arena has allocated since creation. */
size_t tl_ctx_arena_blocks(const tl_ctx *ctx);

/* With gradients disabled, ops record nothing and outputs need no gradient. */
void tl_ctx_set_grad_enabled(tl_ctx *ctx, bool enabled);
bool tl_ctx_grad_enabled(const tl_ctx *ctx);

/* Floating-point operations performed by ops on this context since the last
 * tl_ctx_reset_flops(), forward and backward counted apart. A multiply-add
 * counts as two. */
double tl_ctx_flops_forward(const tl_ctx *ctx);
double tl_ctx_flops_backward(const tl_ctx *ctx);
void tl_ctx_reset_flops(tl_ctx *ctx);
void tl_ctx_add_flops(tl_ctx *ctx, double flops);

/* Allocates size bytes (64-byte aligned) from the arena, uninitialised. */
void *tl_ctx_alloc(tl_ctx *ctx, size_t size);

/* New arena tensor, uninitialised (tl_new) or zeroed (tl_zeros). shape has ndim
 * entries. Returns NULL with a message on invalid shape. */
tl_tensor *tl_new(tl_ctx *ctx, tl_dtype dtype, int ndim, const int64_t *shape);
tl_tensor *tl_zeros(tl_ctx *ctx, tl_dtype dtype, int ndim, const int64_t *shape);
/* Shorthands for float32 tensors of 1 to 3 dimensions. */
tl_tensor *tl_new1(tl_ctx *ctx, int64_t n0);
tl_tensor *tl_new2(tl_ctx *ctx, int64_t n0, int64_t n1);
tl_tensor *tl_new3(tl_ctx *ctx, int64_t n0, int64_t n1, int64_t n2);
/* Wraps caller-owned memory without copying; the caller keeps it alive. */
tl_tensor *tl_wrap(tl_ctx *ctx, tl_dtype dtype, void *data, int ndim, const int64_t *shape);

/* Marks an arena leaf tensor as requiring a gradient (for inputs of gradient
 * checks and analyses). */
void tl_set_requires_grad(tl_tensor *t, bool requires);

/* Keeps t's gradient readable after tl_backward (until the next reset). Call
 * it on an op's output before backward, when dL/dt itself is wanted: the
 * gradient analyses read dL/dh of every layer output this way. Called after
 * backward it has no effect: the gradient is gone, t->grad is NULL and
 * tl_grad() reports TL_ESTATE. */
void tl_keep_grad(tl_tensor *t);

/* ---- views: share data, and alias the gradient of their source ----------- */

/* Same data with another shape of equal element count. */
tl_tensor *tl_reshape(tl_ctx *ctx, tl_tensor *x, int ndim, const int64_t *shape);
/* Rows [start, start+count) along dimension 0. */
tl_tensor *tl_narrow_rows(tl_ctx *ctx, tl_tensor *x, int64_t start, int64_t count);
/* Same data, no gradient flows back through the result. */
tl_tensor *tl_detach(tl_ctx *ctx, tl_tensor *x);

/* ---- autograd ----------------------------------------------------------- */

/* Runs reverse-mode autograd from a scalar loss (dloss/dloss = 1). Parameter
 * gradients accumulate into their persistent buffers; zero them explicitly. */
tl_status tl_backward(tl_ctx *ctx, tl_tensor *loss);

/* Returns the gradient buffer of t, allocating a zeroed one in the arena if it
 * has none yet, or NULL when t requires no gradient. After tl_backward, for an
 * op's output that was not kept (tl_keep_grad), returns NULL and sets
 * TL_ESTATE instead: its gradient was released. */
float *tl_grad(tl_ctx *ctx, tl_tensor *t);

#ifdef __cplusplus
}
#endif
#endif
