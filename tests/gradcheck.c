#include "gradcheck.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int gc_failures = 0;

void gc_randn(tl_rng *rng, float *x, int64_t n, float scale)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = scale * tl_rng_normal(rng);
}

static int64_t gc_numel(const gc_input *in)
{
    int64_t n = 1;
    for (int i = 0; i < in->ndim; i++)
        n *= in->shape[i];
    return n;
}

/* Runs forward on copies of the inputs and returns L = sum(out * R) in double.
 * With want_grad, also runs backward and copies dL/dx into grads[i]. R is drawn
 * from a fixed seed on first use and reused for every evaluation. */
static int gc_eval(tl_ctx *ctx, gc_forward forward, void *user, gc_input *in, int n_in,
                   bool want_grad, float **grads, double *loss, float **r, int64_t *r_n)
{
    tl_ctx_reset(ctx);
    tl_ctx_set_grad_enabled(ctx, want_grad);
    tl_tensor *t[8];
    for (int i = 0; i < n_in; i++) {
        t[i] = tl_new(ctx, in[i].dtype, in[i].ndim, in[i].shape);
        memcpy(t[i]->data, in[i].data, (size_t)gc_numel(&in[i]) * 4);
        tl_set_requires_grad(t[i], want_grad && in[i].diff);
    }
    tl_tensor *out = forward(ctx, t, user);
    if (!out) {
        fprintf(stderr, "forward failed: %s\n", tl_errmsg());
        return -1;
    }
    int64_t n = tl_numel(out);
    if (!*r) {
        tl_rng rng;
        tl_rng_seed(&rng, 12345);
        *r = malloc((size_t)n * sizeof(float));
        *r_n = n;
        gc_randn(&rng, *r, n, 1.0f);
    }
    if (*r_n != n) {
        fprintf(stderr, "forward output changed size between evaluations\n");
        return -1;
    }
    double s = 0.0;
    for (int64_t k = 0; k < n; k++)
        s += (double)tl_f32(out)[k] * (*r)[k];
    *loss = s;
    if (!want_grad)
        return 0;

    tl_tensor *rt = tl_new(ctx, TL_F32, out->ndim, out->shape);
    memcpy(rt->data, *r, (size_t)n * sizeof(float));
    tl_tensor *l = tl_sum(ctx, tl_mul(ctx, out, rt));
    if (tl_backward(ctx, l) != TL_OK) {
        fprintf(stderr, "backward failed: %s\n", tl_errmsg());
        return -1;
    }
    for (int i = 0; i < n_in; i++) {
        if (!in[i].diff)
            continue;
        int64_t m = gc_numel(&in[i]);
        if (t[i]->grad)
            memcpy(grads[i], t[i]->grad, (size_t)m * sizeof(float));
        else
            memset(grads[i], 0, (size_t)m * sizeof(float));
    }
    return 0;
}

int gc_check(const char *label, gc_forward forward, void *user, gc_input *in, int n_in,
             gc_options o)
{
    double h = o.step > 0 ? o.step : 1e-2;
    tl_ctx *ctx = tl_ctx_new(1 << 20);
    float *grads[8] = {0};
    float *r = NULL;
    int64_t r_n = 0;
    int bad = 0;
    double loss;

    for (int i = 0; i < n_in; i++)
        if (in[i].diff)
            grads[i] = malloc((size_t)gc_numel(&in[i]) * sizeof(float));
    if (gc_eval(ctx, forward, user, in, n_in, true, grads, &loss, &r, &r_n) != 0) {
        bad = 1;
        goto done;
    }
    for (int i = 0; i < n_in; i++) {
        if (!in[i].diff)
            continue;
        float *x = in[i].data;
        int64_t m = gc_numel(&in[i]);
        int64_t stride = (o.max_elems > 0 && m > o.max_elems) ? m / o.max_elems : 1;
        double worst = 0.0, worst_a = 0.0, worst_n = 0.0, worst_ratio = -1.0;
        int64_t worst_k = -1, fails = 0;
        for (int64_t k = 0; k < m; k += stride) {
            float keep = x[k];
            double lp, lm;
            x[k] = keep + (float)h;
            double hp = (double)x[k] - keep;
            gc_eval(ctx, forward, user, in, n_in, false, NULL, &lp, &r, &r_n);
            x[k] = keep - (float)h;
            double hm = keep - (double)x[k];
            gc_eval(ctx, forward, user, in, n_in, false, NULL, &lm, &r, &r_n);
            x[k] = keep;
            double num = (lp - lm) / (hp + hm);
            double ana = grads[i][k];
            double err = fabs(ana - num);
            double allowed = o.atol + o.rtol * fmax(fabs(ana), fabs(num));
            if (err > allowed)
                fails++;
            if (err / allowed > worst_ratio) {
                worst_ratio = err / allowed;
                worst = err;
                worst_a = ana;
                worst_n = num;
                worst_k = k;
            }
        }
        printf("%-40s input %d: %s, max |error| %.2e at %lld (analytic %.6g, numeric %.6g)\n",
               label, i, fails ? "FAIL" : "ok", worst, (long long)worst_k, worst_a, worst_n);
        bad += (int)fails;
    }
done:
    for (int i = 0; i < n_in; i++)
        free(grads[i]);
    free(r);
    tl_ctx_free(ctx);
    gc_failures += bad;
    return bad;
}

int gc_finish(const char *suite)
{
    if (gc_failures) {
        printf("%s: %d check(s) failed\n", suite, gc_failures);
        return 1;
    }
    printf("%s: all checks passed\n", suite);
    return 0;
}
