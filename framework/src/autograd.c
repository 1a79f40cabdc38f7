/* Tape recording and the reverse walk. */
#include <math.h>
#include <string.h>

#include "internal.h"


tl_node *tl_record(tl_ctx *ctx, tl_op op, tl_tensor *out, int n_in, tl_tensor *const *in)
{
    if (!tl_ctx_grad_enabled(ctx))
        return NULL;
    bool needed = false;
    for (int i = 0; i < n_in; i++)
        if (in[i] && tl_requires_grad(in[i]))
            needed = true;
    if (!needed)
        return NULL;

    tl_node *node = tl_ctx_alloc(ctx, sizeof *node);
    if (!node)
        return NULL;
    memset(node, 0, sizeof *node);
    node->op = op;
    node->out = out;
    node->n_in = n_in;
    for (int i = 0; i < n_in; i++)
        node->in[i] = in[i];
    tl_node **tape = tl_ctx_tape(ctx);
    node->prev = *tape;
    *tape = node;
    out->node = node;
    out->flags |= TL_REQUIRES_GRAD;
    return node;
}

float *tl_grad_dst(tl_ctx *ctx, tl_tensor *t, bool *fresh)
{
    *fresh = false;
    if (!t || !tl_requires_grad(t))
        return NULL;
    if (t->flags & TL_PARAM)
        return tl_ctx_param_grad(ctx, t);
    if (!t->grad && t->node && tl_ctx_backward_done(ctx)) {
        /* Backward released it, or never reached the tensor: a zeroed buffer
         * now would read as a true gradient of 0. */
        tl_seterr(TL_ESTATE, "grad: the gradient of this %s output was released during backward "
                             "or never computed; call tl_keep_grad() on it before tl_backward() "
                             "to read it afterwards", tl_op_name(t->node->op));
        return NULL;
    }
    if (!t->grad) {
        t->grad = tl_ctx_alloc_reuse(ctx, (size_t)tl_numel(t) * sizeof(float));
        if (!t->grad)
            return NULL;
        /* A buffer allocated during backward has no view aliasing it (views
         * allocate their source's buffer when they are made, in forward), so
         * backward may hand it on once the tensor's own node has run. */
        if (tl_ctx_in_backward(ctx))
            t->flags |= TL_GRAD_TRANSIENT;
        *fresh = true;
    }
    return t->grad;
}

float *tl_grad(tl_ctx *ctx, tl_tensor *t)
{
    bool fresh;
    float *g = tl_grad_dst(ctx, t, &fresh);
    if (g && fresh)
        memset(g, 0, (size_t)tl_numel(t) * sizeof(float));
    return g;
}

/* A buffer backward owns: allocated during backward, not kept, and not a
 * parameter's. */
static bool tl_grad_owned(const tl_tensor *t)
{
    return (t->flags & (TL_GRAD_TRANSIENT | TL_KEEP_GRAD | TL_PARAM)) == TL_GRAD_TRANSIENT;
}

bool tl_grad_take(tl_tensor *t, tl_tensor *from)
{
    if (!tl_requires_grad(t) || (t->flags & TL_PARAM) || t->grad || !from->grad ||
        !tl_grad_owned(from) || tl_numel(t) != tl_numel(from))
        return false;
    t->grad = from->grad;
    t->flags |= TL_GRAD_TRANSIENT;
    from->grad = NULL;
    return true;
}

void tl_keep_grad(tl_tensor *t)
{
    if (t)
        t->flags |= TL_KEEP_GRAD;
}

tl_status tl_backward(tl_ctx *ctx, tl_tensor *loss)
{
    if (!loss)
        return tl_seterr(TL_EINVAL, "backward: the loss is NULL (an op before it failed: %s)",
                         tl_errmsg());
    if (tl_numel(loss) != 1 || loss->dtype != TL_F32)
        return tl_seterr(TL_ESHAPE, "backward: the loss must be a float32 scalar, got %lld elements",
                         (long long)tl_numel(loss));
    if (!tl_requires_grad(loss))
        return tl_seterr(TL_ESTATE, "backward: the loss does not depend on anything that requires "
                                    "a gradient; enable gradients before the forward pass");
    if (tl_ctx_backward_done(ctx))
        return tl_seterr(TL_ESTATE, "backward: already run on this step; call tl_ctx_reset() "
                                    "before the next forward pass");
    if (!isfinite(tl_f32(loss)[0]))
        return tl_seterr(TL_ENUMERIC, "backward: the loss is %g; lower the learning rate or "
                                      "check the data", (double)tl_f32(loss)[0]);

    float *g = tl_grad(ctx, loss);
    if (!g)
        return tl_lasterr();
    g[0] += 1.0f;

    tl_ctx_set_backward(ctx, true, false);
    for (tl_node *node = *tl_ctx_tape(ctx); node; node = node->prev) {
        if (!node->out->grad)
            continue; /* nothing downstream reached this node */
        tl_op_table[node->op].backward(ctx, node);
        if (tl_ctx_alloc_failed(ctx)) {
            tl_ctx_set_backward(ctx, false, true);
            return TL_ENOMEM;
        }
        /* Every node that adds to out's gradient comes later on the tape, so
         * it has run: the buffer is free for the gradients still to come,
         * which keeps backward's writes in buffers the cache still holds. */
        tl_tensor *out = node->out;
        if (out->grad && tl_grad_owned(out)) {
            tl_ctx_release(ctx, out->grad, (size_t)tl_numel(out) * sizeof(float));
            out->grad = NULL;
        }
    }
    tl_ctx_set_backward(ctx, false, true);
    return TL_OK;
}
