/* Arena, autograd bookkeeping, views, parameter store, RNG and threads. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "internal.h"

static void test_arena(void)
{
    tl_ctx *ctx = tl_ctx_new(4096);
    void *a = tl_ctx_alloc(ctx, 10);
    void *b = tl_ctx_alloc(ctx, 100);
    CHECK(((uintptr_t)a % 64) == 0);
    CHECK(((uintptr_t)b % 64) == 0);
    CHECK(tl_ctx_arena_used(ctx) == 64 + 128);
    /* A request larger than a block gets a block of its own. */
    void *big = tl_ctx_alloc(ctx, 10000);
    CHECK(big != NULL);
    size_t blocks = tl_ctx_arena_blocks(ctx);
    CHECK(blocks == 2);
    size_t peak = tl_ctx_arena_peak(ctx);
    tl_ctx_reset(ctx);
    CHECK(tl_ctx_arena_used(ctx) == 0);
    CHECK(tl_ctx_arena_peak(ctx) == peak);
    /* The same allocations after a reset reuse the kept blocks. */
    for (int step = 0; step < 3; step++) {
        tl_ctx_alloc(ctx, 10);
        tl_ctx_alloc(ctx, 100);
        tl_ctx_alloc(ctx, 10000);
        tl_ctx_reset(ctx);
    }
    CHECK(tl_ctx_arena_blocks(ctx) == blocks);
    tl_ctx_free(ctx);
}

/* Large blocks start on a 2 MiB boundary (for huge pages), small ones on a
 * cache line, and zero = true zeroes them. */
static void test_alloc_large(void)
{
    size_t sizes[3] = {100, (size_t)2 << 20, ((size_t)5 << 20) + 12};
    for (int i = 0; i < 3; i++) {
        unsigned char *m = tl_alloc_large(sizes[i], true);
        CHECK(m != NULL);
        if (!m)
            continue;
        uintptr_t align = sizes[i] >= ((size_t)2 << 20) ? (uintptr_t)2 << 20 : 64;
        CHECK_MSG((uintptr_t)m % align == 0, "%zu bytes at %p", sizes[i], (void *)m);
        size_t nonzero = 0;
        for (size_t j = 0; j < sizes[i]; j++)
            nonzero += m[j] != 0;
        CHECK_MSG(nonzero == 0, "%zu of %zu bytes not zeroed", nonzero, sizes[i]);
        free(m);
    }
}

static void test_tensors_and_views(void)
{
    tl_ctx *ctx = tl_ctx_new(0);
    tl_tensor *x = tl_zeros(ctx, TL_F32, 3, (int64_t[]){2, 3, 4});
    CHECK(tl_numel(x) == 24);
    CHECK(tl_cols(x) == 4);
    CHECK(tl_rows_of(x) == 6);
    char buf[64];
    CHECK(strcmp(tl_shape_str(x, buf, sizeof buf), "(2, 3, 4) f32") == 0);
    CHECK(tl_new(ctx, TL_F32, 5, (int64_t[]){1, 1, 1, 1, 1}) == NULL);
    CHECK(tl_lasterr() == TL_ESHAPE);
    CHECK(tl_new(ctx, TL_F32, 2, (int64_t[]){2, -1}) == NULL);

    for (int i = 0; i < 24; i++)
        tl_f32(x)[i] = (float)i;
    tl_set_requires_grad(x, true);
    tl_tensor *r = tl_reshape(ctx, x, 2, (int64_t[]){6, 4});
    CHECK(r != NULL);
    CHECK(r->data == x->data);
    CHECK(tl_reshape(ctx, x, 2, (int64_t[]){5, 4}) == NULL);
    CHECK(strstr(tl_errmsg(), "24 elements") != NULL);
    tl_tensor *rows = tl_narrow_rows(ctx, r, 2, 3);
    CHECK(rows != NULL);
    CHECK(tl_f32(rows)[0] == 8.0f);
    CHECK(rows->shape[0] == 3);
    CHECK(tl_narrow_rows(ctx, r, 5, 2) == NULL);

    /* Gradient through a view lands in the source at the view's offset. */
    tl_tensor *loss = tl_sum(ctx, tl_scale(ctx, rows, 2.0f));
    CHECK(tl_backward(ctx, loss) == TL_OK);
    CHECK(x->grad != NULL);
    for (int i = 0; i < 24; i++)
        CHECK_MSG(x->grad[i] == (i >= 8 && i < 20 ? 2.0f : 0.0f), "grad[%d] = %g", i, (double)x->grad[i]);
    /* A view's gradient stays readable after backward. */
    CHECK(rows->grad != NULL);
    CHECK(rows->grad[0] == 2.0f);
    /* A second backward on the same step is rejected. */
    CHECK(tl_backward(ctx, loss) == TL_ESTATE);
    tl_ctx_free(ctx);
}

static void test_autograd_rules(void)
{
    tl_ctx *ctx = tl_ctx_new(0);
    float data[4] = {1, 2, 3, 4};
    tl_tensor *x = tl_wrap(ctx, TL_F32, data, 1, (int64_t[]){4});
    /* Nothing requires a gradient: no node, and backward reports why. */
    tl_tensor *s = tl_sum(ctx, x);
    CHECK(s->node == NULL);
    CHECK(!tl_requires_grad(s));
    CHECK(tl_backward(ctx, s) == TL_ESTATE);

    tl_set_requires_grad(x, true);
    /* A detached copy carries no gradient. */
    tl_tensor *d = tl_detach(ctx, x);
    CHECK(!tl_requires_grad(d));
    /* Gradients accumulate when a tensor is used twice. */
    tl_tensor *l = tl_sum(ctx, tl_add(ctx, x, tl_add(ctx, x, d)));
    CHECK(tl_backward(ctx, l) == TL_OK);
    for (int i = 0; i < 4; i++)
        CHECK(x->grad[i] == 2.0f);
    tl_ctx_reset(ctx);

    /* With gradients disabled, ops record nothing. */
    x = tl_wrap(ctx, TL_F32, data, 1, (int64_t[]){4});
    tl_set_requires_grad(x, true);
    tl_ctx_set_grad_enabled(ctx, false);
    tl_tensor *y = tl_scale(ctx, x, 3.0f);
    CHECK(y->node == NULL);
    CHECK(!tl_requires_grad(y));
    tl_ctx_set_grad_enabled(ctx, true);

    /* A non-scalar or non-finite loss is rejected with the value named. */
    tl_tensor *v = tl_scale(ctx, x, 1.0f);
    CHECK(tl_backward(ctx, v) == TL_ESHAPE);
    float bad = NAN;
    tl_tensor *nanv = tl_wrap(ctx, TL_F32, &bad, 1, (int64_t[]){1});
    tl_tensor *nl = tl_add(ctx, tl_sum(ctx, x), nanv);
    CHECK(tl_backward(ctx, nl) == TL_ENUMERIC);
    CHECK(strstr(tl_errmsg(), "nan") != NULL);
    CHECK(tl_backward(ctx, NULL) == TL_EINVAL);
    tl_ctx_free(ctx);
}

/* Runs a chain of L residual layers h + f(1.1 h), f alternately tanh and
 * GELU, on a leaf of n elements, then backward. Every intermediate is kept
 * (keep_all) or only layer `mid`, and a view of layer mid + 1 is read after
 * backward. Copies dL/dx, dL/dh_mid and the view's grad into out (3 n floats)
 * and returns the arena bytes in use at the end. */
static size_t run_chain(int L, int n, int mid, bool keep_all, float *out, bool *released)
{
    tl_ctx *ctx = tl_ctx_new(0);
    tl_tensor *x = tl_new1(ctx, n);
    for (int i = 0; i < n; i++)
        tl_f32(x)[i] = 0.01f * (float)(i % 97) - 0.4f;
    tl_set_requires_grad(x, true);
    tl_tensor *h = x, *kept = NULL, *view = NULL, *dropped = NULL;
    for (int l = 0; l < L; l++) {
        tl_tensor *s = tl_scale(ctx, h, 1.1f);
        tl_tensor *f = l % 2 ? tl_gelu(ctx, s, true) : tl_tanh(ctx, s);
        h = tl_add(ctx, f, h);
        if (keep_all) {
            tl_keep_grad(s);
            tl_keep_grad(f);
            tl_keep_grad(h);
        }
        if (l == mid)
            tl_keep_grad(h);
        if (l == mid)
            kept = h;
        if (l == mid + 1) {
            view = tl_reshape(ctx, h, 2, (int64_t[]){2, n / 2});
            h = view;
        }
        if (l == mid + 3)
            dropped = h;
    }
    CHECK(tl_backward(ctx, tl_sum(ctx, h)) == TL_OK);
    *released = dropped->grad == NULL;
    if (*released) {
        /* A released gradient reads as an error, not as a new zeroed buffer,
         * also through a view made now or a late tl_keep_grad. */
        tl_keep_grad(dropped);
        CHECK(tl_grad(ctx, dropped) == NULL);
        CHECK(tl_lasterr() == TL_ESTATE);
        CHECK(strstr(tl_errmsg(), "tl_keep_grad") != NULL);
        tl_tensor *late = tl_reshape(ctx, dropped, 2, (int64_t[]){2, n / 2});
        CHECK(late != NULL);
        CHECK(late && late->grad == NULL);
        CHECK(late && !tl_requires_grad(late));
    }
    CHECK(tl_grad(ctx, kept) == kept->grad);
    CHECK(x->grad != NULL);
    CHECK(kept->grad != NULL);
    CHECK(view->grad != NULL);
    if (x->grad && kept->grad && view->grad) {
        memcpy(out, x->grad, (size_t)n * sizeof(float));
        memcpy(out + n, kept->grad, (size_t)n * sizeof(float));
        memcpy(out + 2 * n, view->grad, (size_t)n * sizeof(float));
    }
    size_t used = tl_ctx_arena_used(ctx);
    tl_ctx_free(ctx);
    return used;
}

/* Backward hands the gradient of an op's output to later gradients once its
 * node has run, and an add passes its output's gradient on as the first
 * gradient of an operand, unless tl_keep_grad marked them. Leaves, kept
 * tensors and views keep theirs, and neither changes a bit of any gradient. */
static void test_grad_reuse(void)
{
    enum { L = 40, N = 1000, MID = 20 };
    float *kept_all = calloc(3 * N, sizeof(float)), *reused = calloc(3 * N, sizeof(float));
    bool released_all, released;
    size_t used_all = run_chain(L, N, MID, true, kept_all, &released_all);
    size_t used = run_chain(L, N, MID, false, reused, &released);
    CHECK_MSG(!released_all, "a kept gradient was released");
    CHECK_MSG(released, "an unkept intermediate gradient is still set after backward");
    CHECK_MSG(memcmp(kept_all, reused, 3 * N * sizeof(float)) == 0,
              "gradients differ when buffers are reused");
    /* 3 L op outputs (scale, activation, add) and the GELU derivatives;
     * all but a few gradients share a handful of buffers, so at least
     * 3 L - 10 gradients of N floats are not allocated. */
    size_t saved = used_all > used ? used_all - used : 0;
    CHECK_MSG(saved >= (size_t)(3 * L - 10) * N * sizeof(float),
              "reuse saved %zu bytes of %zu", saved, used_all);
    free(kept_all);
    free(reused);
}

static void test_params(void)
{
    tl_params *p = tl_params_new();
    tl_tensor *w = tl_params_add(p, "layers.0.attn.wq", 2, (int64_t[]){64, 32}, TL_INIT_NORMAL, 0.02f,
                                 TL_PARAM_DECAY);
    tl_tensor *g = tl_params_add(p, "layers.0.attn_norm", 1, (int64_t[]){32}, TL_INIT_CONST, 1.0f, 0);
    CHECK(w != NULL);
    CHECK(g != NULL);
    CHECK(tl_params_add(p, "layers.0.attn.wq", 1, (int64_t[]){3}, TL_INIT_ZEROS, 0, 0) == NULL);
    CHECK(strstr(tl_errmsg(), "twice") != NULL);
    CHECK(tl_params_add(p, "zero", 1, (int64_t[]){0}, TL_INIT_ZEROS, 0, 0) == NULL);
    CHECK(w->data == NULL);
    tl_rng rng;
    tl_rng_seed(&rng, 3);
    CHECK(tl_params_alloc(p, &rng) == TL_OK);
    /* One block: data, then grads, then moments, in registration order. */
    CHECK(tl_f32(w) == tl_params_data(p));
    CHECK(tl_f32(g) == tl_params_data(p) + 64 * 32);
    CHECK(w->grad == tl_params_grads(p));
    CHECK(tl_params_m(p) == tl_params_data(p) + 2 * tl_params_numel(p));
    CHECK(tl_params_find(p, "layers.0.attn_norm") == g);
    CHECK(tl_params_find(p, "nope") == NULL);
    CHECK(tl_params_add(p, "late", 1, (int64_t[]){2}, TL_INIT_ZEROS, 0, 0) == NULL);
    CHECK(tl_lasterr() == TL_ESTATE);
    /* N(0, 0.02^2) over 2048 draws: the sample std is within 10% of 0.02
     * (its standard error is about 1.6%). */
    double ss = 0;
    for (int i = 0; i < 64 * 32; i++)
        ss += (double)tl_f32(w)[i] * tl_f32(w)[i];
    CHECK(fabs(sqrt(ss / 2048) - 0.02) < 0.002);
    CHECK(tl_f32(g)[31] == 1.0f);
    tl_params_free(p);
}

static void test_rng(void)
{
    tl_rng a, b;
    tl_rng_seed(&a, 42);
    tl_rng_seed(&b, 42);
    for (int i = 0; i < 100; i++)
        CHECK(tl_rng_u64(&a) == tl_rng_u64(&b));
    /* Saving the state and restoring it continues the same sequence. */
    tl_rng saved = a;
    uint64_t next = tl_rng_u64(&a);
    CHECK(tl_rng_u64(&saved) == next);
    tl_rng_seed(&b, 43);
    CHECK(tl_rng_u64(&a) != tl_rng_u64(&b));

    /* 1e5 normals: mean within 0.02 (5 standard errors), variance within 0.03. */
    double s = 0, s2 = 0;
    float umin = 1, umax = 0;
    for (int i = 0; i < 100000; i++) {
        double z = tl_rng_normal(&a);
        s += z;
        s2 += z * z;
        float u = tl_rng_uniform(&a);
        umin = fminf(umin, u);
        umax = fmaxf(umax, u);
    }
    CHECK(fabs(s / 1e5) < 0.02);
    CHECK(fabs(s2 / 1e5 - 1.0) < 0.03);
    CHECK(umin >= 0.0f);
    CHECK(umax < 1.0f);
    int counts[3] = {0};
    for (int i = 0; i < 30000; i++)
        counts[tl_rng_below(&a, 3)]++;
    for (int i = 0; i < 3; i++)
        CHECK(abs(counts[i] - 10000) < 500);
}

static void test_threads(void)
{
    int cores = tl_cores_available();
    CHECK(cores >= 1);
    CHECK(tl_threads_set(cores + 100) == cores);
    CHECK(tl_threads_set(1) == 1);
    CHECK(tl_threads_get() == 1);
    char buf[256];
    tl_threads_describe(buf, sizeof buf);
    CHECK(strstr(buf, "threads 1 of") != NULL);
    CHECK(strstr(buf, "openmp") != NULL);
    tl_threads_set(0);
    CHECK(tl_threads_get() == cores);
}

static void test_status(void)
{
    CHECK(strcmp(tl_status_name(TL_EABI), "ABI mismatch") == 0);
    CHECK(strcmp(tl_status_name((tl_status)99), "unknown status") == 0);
    CHECK(tl_seterr(TL_EIO, "file '%s' missing", "x.txt") == TL_EIO);
    CHECK(strcmp(tl_errmsg(), "file 'x.txt' missing") == 0);
    /* The previous message as an argument survives (formatted into a copy). */
    CHECK(tl_seterr(TL_EFORMAT, "%s; retry", tl_errmsg()) == TL_EFORMAT);
    CHECK_MSG(strcmp(tl_errmsg(), "file 'x.txt' missing; retry") == 0, "%s", tl_errmsg());
    CHECK(tl_lasterr() == TL_EFORMAT);
    tl_clearerr();
    CHECK(tl_lasterr() == TL_OK);
    CHECK(tl_errmsg()[0] == '\0');
    for (int op = 0; op < TL_OP_COUNT; op++)
        CHECK(strcmp(tl_op_name((tl_op)op), "unknown op") != 0);
}

int main(void)
{
    test_arena();
    test_alloc_large();
    test_tensors_and_views();
    test_autograd_rules();
    test_grad_reuse();
    test_params();
    test_rng();
    test_threads();
    test_status();
    return gc_finish("core");
}
