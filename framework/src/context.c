/* The per-step context: a block arena for activations, gradients and nodes,
 * the tape, and the FLOP counters. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Bytes of a cache line: arena allocations and contexts start on one. */
enum { TL_ALIGN = 64 };
/* Released gradient buffers a context keeps for reuse. */
enum { TL_CTX_SPARE = 32 };

typedef struct tl_arena_block {
    struct tl_arena_block *next;
    size_t size; /* usable bytes after the header */
    size_t used;
} tl_arena_block;

struct tl_ctx {
    tl_arena_block *first;    /* blocks are kept across resets */
    tl_arena_block *current;  /* block being filled */
    size_t block_bytes;
    size_t used;        /* bytes handed out since the last reset, padding included */
    size_t peak;
    size_t reserved;
    size_t n_blocks;
    tl_node *tape;      /* last recorded node */
    bool grad_enabled;
    bool in_backward;
    bool backward_done;
    bool alloc_failed;  /* an allocation failed since the last reset */
    double flops_fwd, flops_bwd;
    /* When set, parameter gradients go to grad_dst + (t->grad - grad_src)
     * instead of t->grad; grad_src spans grad_n floats (tl_params_grads). */
    float *grad_dst;
    const float *grad_src;
    int64_t grad_n;
    /* Gradient buffers released during backward, reused by later requests of
     * the same rounded size (last released first, the one most likely still
     * in cache). Emptied by reset. */
    struct { size_t size; void *p; } spare[TL_CTX_SPARE];
    int n_spare;
};

static size_t tl_arena_block_header(void)
{
    return (sizeof(tl_arena_block) + TL_ALIGN - 1) / TL_ALIGN * TL_ALIGN;
}

static tl_arena_block *tl_arena_block_new(size_t size)
{
    tl_arena_block *b = tl_alloc_large(tl_arena_block_header() + size, false);
    if (!b)
        return NULL;
    b->next = NULL;
    b->size = size;
    b->used = 0;
    return b;
}

tl_ctx *tl_ctx_new(size_t block_bytes)
{
    /* The context gets whole cache lines of its own, because the shards'
     * contexts are written by different threads on every op, and two of them
     * in one line would move it between the cores. */
    size_t bytes = (sizeof(tl_ctx) + TL_ALIGN - 1) / TL_ALIGN * TL_ALIGN;
    tl_ctx *ctx = tl_alloc_large(bytes, true);
    if (!ctx) {
        tl_seterr(TL_ENOMEM, "could not allocate a context");
        return NULL;
    }
    ctx->block_bytes = block_bytes ? block_bytes : (size_t)64 << 20;
    ctx->grad_enabled = true;
    ctx->first = tl_arena_block_new(ctx->block_bytes);
    if (!ctx->first) {
        free(ctx);
        tl_seterr(TL_ENOMEM, "could not allocate a %zu-byte arena block", block_bytes);
        return NULL;
    }
    ctx->current = ctx->first;
    ctx->reserved = ctx->block_bytes;
    ctx->n_blocks = 1;
    return ctx;
}

void tl_ctx_free(tl_ctx *ctx)
{
    if (!ctx)
        return;
    tl_arena_block *b = ctx->first;
    while (b) {
        tl_arena_block *next = b->next;
        free(b);
        b = next;
    }
    free(ctx);
}

void tl_ctx_reset(tl_ctx *ctx)
{
    for (tl_arena_block *b = ctx->first; b; b = b->next)
        b->used = 0;
    ctx->current = ctx->first;
    ctx->used = 0;
    ctx->tape = NULL;
    ctx->backward_done = false;
    ctx->in_backward = false;
    ctx->alloc_failed = false;
    ctx->n_spare = 0;
}

tl_node **tl_ctx_tape(tl_ctx *ctx) { return &ctx->tape; }

void tl_ctx_redirect_grads(tl_ctx *ctx, const tl_params *p, float *grads)
{
    ctx->grad_dst = grads;
    ctx->grad_src = grads ? tl_params_grads(p) : NULL;
    ctx->grad_n = grads ? tl_params_numel(p) : 0;
}

float *tl_ctx_param_grad(const tl_ctx *ctx, const tl_tensor *t)
{
    if (ctx->grad_dst) {
        ptrdiff_t off = t->grad - ctx->grad_src;
        if (off >= 0 && off < ctx->grad_n)
            return ctx->grad_dst + off;
    }
    return t->grad;
}

void tl_ctx_set_backward(tl_ctx *ctx, bool in_backward, bool done)
{
    ctx->in_backward = in_backward;
    ctx->backward_done = done;
}

bool tl_ctx_backward_done(const tl_ctx *ctx) { return ctx->backward_done; }
bool tl_ctx_alloc_failed(const tl_ctx *ctx) { return ctx->alloc_failed; }

/* Rounds an allocation up to whole cache lines, at least one. */
static size_t tl_round_size(size_t size)
{
    size = (size + TL_ALIGN - 1) / TL_ALIGN * TL_ALIGN;
    return size ? size : TL_ALIGN;
}

void *tl_ctx_alloc(tl_ctx *ctx, size_t size)
{
    size = tl_round_size(size);
    tl_arena_block *b = ctx->current;
    /* Move on to the next kept block that fits; blocks too small for this
     * request are skipped for the rest of the step. */
    while (b->used + size > b->size) {
        if (!b->next) {
            size_t want = size > ctx->block_bytes ? size : ctx->block_bytes;
            b->next = tl_arena_block_new(want);
            if (!b->next) {
                ctx->alloc_failed = true;
                tl_seterr(TL_ENOMEM, "arena could not grow by %zu bytes (in use: %zu)", want,
                          ctx->used);
                return NULL;
            }
            ctx->reserved += want;
            ctx->n_blocks++;
        }
        ctx->used += b->size - b->used; /* the skipped tail counts as used */
        b = b->next;
        ctx->current = b;
    }
    void *p = (char *)b + tl_arena_block_header() + b->used;
    b->used += size;
    ctx->used += size;
    if (ctx->used > ctx->peak)
        ctx->peak = ctx->used;
    return p;
}

void tl_ctx_release(tl_ctx *ctx, void *p, size_t size)
{
    if (ctx->n_spare == TL_CTX_SPARE)
        return; /* the buffer stays in the arena, unused until reset */
    ctx->spare[ctx->n_spare].size = tl_round_size(size);
    ctx->spare[ctx->n_spare].p = p;
    ctx->n_spare++;
}

void *tl_ctx_alloc_reuse(tl_ctx *ctx, size_t size)
{
    size = tl_round_size(size);
    for (int i = ctx->n_spare - 1; i >= 0; i--) {
        if (ctx->spare[i].size == size) {
            void *p = ctx->spare[i].p;
            memmove(&ctx->spare[i], &ctx->spare[i + 1],
                    (size_t)(ctx->n_spare - 1 - i) * sizeof ctx->spare[0]);
            ctx->n_spare--;
            return p;
        }
    }
    return tl_ctx_alloc(ctx, size);
}

size_t tl_ctx_arena_used(const tl_ctx *ctx) { return ctx->used; }
size_t tl_ctx_arena_peak(const tl_ctx *ctx) { return ctx->peak; }
size_t tl_ctx_arena_reserved(const tl_ctx *ctx) { return ctx->reserved; }
size_t tl_ctx_arena_blocks(const tl_ctx *ctx) { return ctx->n_blocks; }

void tl_ctx_set_grad_enabled(tl_ctx *ctx, bool enabled) { ctx->grad_enabled = enabled; }
bool tl_ctx_grad_enabled(const tl_ctx *ctx) { return ctx->grad_enabled; }
bool tl_ctx_in_backward(const tl_ctx *ctx) { return ctx->in_backward; }

double tl_ctx_flops_forward(const tl_ctx *ctx) { return ctx->flops_fwd; }
double tl_ctx_flops_backward(const tl_ctx *ctx) { return ctx->flops_bwd; }

void tl_ctx_reset_flops(tl_ctx *ctx)
{
    ctx->flops_fwd = 0;
    ctx->flops_bwd = 0;
}

void tl_ctx_add_flops(tl_ctx *ctx, double flops)
{
    if (ctx->in_backward)
        ctx->flops_bwd += flops;
    else
        ctx->flops_fwd += flops;
}

void tl_count_flops(tl_ctx *ctx, tl_op op, double flops)
{
    (void)op;
    tl_ctx_add_flops(ctx, flops);
}

/* ---- tensors ------------------------------------------------------------- */

int64_t tl_numel(const tl_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

int64_t tl_cols(const tl_tensor *t) { return t->ndim ? t->shape[t->ndim - 1] : 1; }

int64_t tl_rows_of(const tl_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i + 1 < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

bool tl_same_shape(const tl_tensor *a, const tl_tensor *b)
{
    if (a->ndim != b->ndim)
        return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i])
            return false;
    return true;
}

char *tl_shape_str(const tl_tensor *t, char *buf, size_t size)
{
    size_t n = 0;
    n += (size_t)snprintf(buf + n, n < size ? size - n : 0, "(");
    for (int i = 0; i < t->ndim; i++)
        n += (size_t)snprintf(buf + n, n < size ? size - n : 0, "%s%lld", i ? ", " : "",
                              (long long)t->shape[i]);
    snprintf(buf + n, n < size ? size - n : 0, ") %s", t->dtype == TL_F32 ? "f32" : "i32");
    return buf;
}

static bool tl_valid_shape(int ndim, const int64_t *shape)
{
    if (ndim < 1 || ndim > TL_MAX_DIMS) {
        tl_seterr(TL_ESHAPE, "tensor rank %d is outside 1..%d", ndim, TL_MAX_DIMS);
        return false;
    }
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) {
            tl_seterr(TL_ESHAPE, "tensor dimension %d has negative size %lld", i,
                      (long long)shape[i]);
            return false;
        }
    }
    return true;
}

static tl_tensor *tl_header(tl_ctx *ctx, tl_dtype dtype, int ndim, const int64_t *shape)
{
    if (!tl_valid_shape(ndim, shape))
        return NULL;
    tl_tensor *t = tl_ctx_alloc(ctx, sizeof *t);
    if (!t)
        return NULL;
    memset(t, 0, sizeof *t);
    t->dtype = dtype;
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof shape[0]);
    return t;
}

tl_tensor *tl_new(tl_ctx *ctx, tl_dtype dtype, int ndim, const int64_t *shape)
{
    tl_tensor *t = tl_header(ctx, dtype, ndim, shape);
    if (!t)
        return NULL;
    t->data = tl_ctx_alloc(ctx, (size_t)tl_numel(t) * 4);
    return t->data ? t : NULL;
}

tl_tensor *tl_zeros(tl_ctx *ctx, tl_dtype dtype, int ndim, const int64_t *shape)
{
    tl_tensor *t = tl_new(ctx, dtype, ndim, shape);
    if (t)
        memset(t->data, 0, (size_t)tl_numel(t) * 4);
    return t;
}

tl_tensor *tl_new1(tl_ctx *ctx, int64_t n0) { return tl_new(ctx, TL_F32, 1, (int64_t[]){n0}); }

tl_tensor *tl_new2(tl_ctx *ctx, int64_t n0, int64_t n1)
{
    return tl_new(ctx, TL_F32, 2, (int64_t[]){n0, n1});
}

tl_tensor *tl_new3(tl_ctx *ctx, int64_t n0, int64_t n1, int64_t n2)
{
    return tl_new(ctx, TL_F32, 3, (int64_t[]){n0, n1, n2});
}

tl_tensor *tl_new_like(tl_ctx *ctx, const tl_tensor *x)
{
    return tl_new(ctx, TL_F32, x->ndim, x->shape);
}

tl_tensor *tl_wrap(tl_ctx *ctx, tl_dtype dtype, void *data, int ndim, const int64_t *shape)
{
    tl_tensor *t = tl_header(ctx, dtype, ndim, shape);
    if (t)
        t->data = data;
    return t;
}

void tl_set_requires_grad(tl_tensor *t, bool requires)
{
    if (requires)
        t->flags |= TL_REQUIRES_GRAD;
    else
        t->flags &= ~(unsigned)TL_REQUIRES_GRAD;
}

bool tl_check_f32(const char *op, const char *arg, const tl_tensor *t)
{
    if (t->dtype != TL_F32) {
        tl_seterr(TL_EINVAL, "%s: %s must be float32, got int32", op, arg);
        return false;
    }
    return true;
}

bool tl_check_i32(const char *op, const char *arg, const tl_tensor *t)
{
    if (t->dtype != TL_I32) {
        tl_seterr(TL_EINVAL, "%s: %s must be int32 indices, got float32", op, arg);
        return false;
    }
    return true;
}

/* ---- views ----------------------------------------------------------------- */

/* A view shares x's data. When x needs a gradient, the view's grad points into
 * x's grad buffer (allocated now if missing), so accumulation into the view is
 * accumulation into x and no backward node is needed. */
static tl_tensor *tl_view(tl_ctx *ctx, tl_tensor *x, int64_t offset, int ndim, const int64_t *shape)
{
    tl_tensor *v = tl_header(ctx, x->dtype, ndim, shape);
    if (!v)
        return NULL;
    v->data = (char *)x->data + offset * 4;
    /* After backward an op's output whose gradient was released gives a view
     * without one, instead of one onto a new zeroed buffer. */
    bool released = ctx->backward_done && x->node && !x->grad;
    if (ctx->grad_enabled && tl_requires_grad(x) && !released) {
        float *g = tl_grad(ctx, x);
        if (!g)
            return NULL;
        v->grad = g + offset;
        v->flags |= TL_REQUIRES_GRAD;
    }
    return v;
}

tl_tensor *tl_reshape(tl_ctx *ctx, tl_tensor *x, int ndim, const int64_t *shape)
{
    if (!x)
        return NULL;
    if (!tl_valid_shape(ndim, shape))
        return NULL;
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= shape[i];
    if (n != tl_numel(x)) {
        char buf[96];
        return tl_seterr(TL_ESHAPE, "reshape: %s has %lld elements, the new shape has %lld",
                         tl_shape_str(x, buf, sizeof buf), (long long)tl_numel(x), (long long)n),
               NULL;
    }
    return tl_view(ctx, x, 0, ndim, shape);
}

tl_tensor *tl_narrow_rows(tl_ctx *ctx, tl_tensor *x, int64_t start, int64_t count)
{
    if (!x)
        return NULL;
    if (start < 0 || count < 0 || start + count > x->shape[0]) {
        tl_seterr(TL_ESHAPE, "narrow_rows: rows [%lld, %lld) outside dimension 0 of size %lld",
                  (long long)start, (long long)(start + count), (long long)x->shape[0]);
        return NULL;
    }
    int64_t shape[TL_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[0] = count;
    int64_t row = x->shape[0] ? tl_numel(x) / x->shape[0] : 0;
    return tl_view(ctx, x, start * row, x->ndim, shape);
}

tl_tensor *tl_detach(tl_ctx *ctx, tl_tensor *x)
{
    if (!x)
        return NULL;
    tl_tensor *v = tl_header(ctx, x->dtype, x->ndim, x->shape);
    if (v)
        v->data = x->data;
    return v;
}
