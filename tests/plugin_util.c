#include "plugin_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifndef TL_TEST_PLUGIN_DIR
#error "TL_TEST_PLUGIN_DIR must name the build's plugin folder"
#endif

int pl_layer_make(pl_layer *L, const char *name, const tl_opt_setting *settings, int n,
                  tl_block_style style, int64_t C, int H, uint64_t seed)
{
    memset(L, 0, sizeof *L);
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.so", TL_TEST_PLUGIN_DIR, name);
    L->lib = tl_plugin_open(path);
    if (!L->lib) {
        fprintf(stderr, "open %s: %s\n", path, tl_errmsg());
        return -1;
    }
    L->plugin = tl_plugin_desc(L->lib);
    tl_opt_table opts;
    if (tl_plugin_options(L->plugin, settings, n, &opts) != TL_OK) {
        fprintf(stderr, "options for %s: %s\n", name, tl_errmsg());
        return -1;
    }
    tl_layer_dims dims = {.block = tl_block_config_default(C, H), .layer_index = 0, .context = 64};
    dims.block.style = style;
    if (style == TL_BLOCK_GPT2)
        dims.block.rope = TL_ROPE_NONE;
    dims.block.n_layers = 2;
    if (tl_block_config_resolve(&dims.block) != TL_OK) {
        fprintf(stderr, "block config: %s\n", tl_errmsg());
        return -1;
    }
    L->params = tl_params_new();
    L->state = L->plugin->create(&opts, &dims, L->params, "layers.0");
    if (!L->state) {
        fprintf(stderr, "create %s: %s\n", name, tl_errmsg());
        return -1;
    }
    tl_rng rng;
    tl_rng_seed(&rng, seed);
    if (tl_params_alloc(L->params, &rng) != TL_OK) {
        fprintf(stderr, "alloc: %s\n", tl_errmsg());
        return -1;
    }
    return 0;
}

void pl_layer_free(pl_layer *L)
{
    if (L->state)
        L->plugin->destroy(L->state);
    tl_params_free(L->params);
    tl_plugin_close(L->lib);
    memset(L, 0, sizeof *L);
}

void pl_copy_params(pl_layer *dst, const pl_layer *src)
{
    for (size_t i = 0; i < tl_params_count(src->params); i++) {
        tl_tensor *s = tl_params_at(src->params, i);
        tl_tensor *d = tl_params_find(dst->params, s->name);
        if (d && tl_numel(d) == tl_numel(s))
            memcpy(d->data, s->data, (size_t)tl_numel(s) * sizeof(float));
    }
}

void pl_randomize(pl_layer *L, const char *part, float std, uint64_t seed)
{
    tl_rng rng;
    tl_rng_seed(&rng, seed);
    for (size_t i = 0; i < tl_params_count(L->params); i++) {
        tl_tensor *t = tl_params_at(L->params, i);
        if (strstr(t->name, part))
            gc_randn(&rng, tl_f32(t), tl_numel(t), std);
    }
}

/* One forward (and optionally backward) on a fresh context; returns
 * L = sum(y * R) + aux in double, and fills y, masks and the gradient of x. */
static double pl_eval(pl_layer *L, tl_ctx *ctx, const float *x, int64_t B, int64_t T, int64_t C,
                      tl_layer_args args, const float *R, bool grad, float *y, float *dx,
                      uint8_t *masks, size_t masks_size, double *aux_out)
{
    tl_ctx_reset(ctx);
    tl_ctx_set_grad_enabled(ctx, grad);
    tl_tensor *xt = tl_new3(ctx, B, T, C);
    memcpy(xt->data, x, (size_t)(B * T * C) * sizeof(float));
    tl_set_requires_grad(xt, grad && dx);
    args.aux_loss = NULL;
    args.n_aux_terms = 0;
    args.collect_stats = args.collect_stats || masks;
    tl_tensor *out = L->plugin->forward(ctx, L->state, xt, &args);
    if (!out) {
        fprintf(stderr, "forward failed: %s\n", tl_errmsg());
        return NAN;
    }
    double s = 0.0;
    for (int64_t i = 0; i < B * T * C; i++) {
        s += R ? (double)tl_f32(out)[i] * R[i] : 0.0;
        if (y)
            y[i] = tl_f32(out)[i];
    }
    double aux = args.aux_loss ? tl_f32(args.aux_loss)[0] : 0.0;
    if (aux_out)
        *aux_out = aux;
    s += aux;
    if (masks) {
        memset(masks, 0, masks_size);
        if (L->plugin->stats) {
            tl_routing_stats st;
            L->plugin->stats(L->state, &st);
            size_t n = (size_t)st.n_steps * (size_t)(B * T);
            if (st.masks && n <= masks_size)
                memcpy(masks, st.masks, n);
        }
    }
    if (grad) {
        tl_tensor *rt = tl_new3(ctx, B, T, C);
        memcpy(rt->data, R, (size_t)(B * T * C) * sizeof(float));
        tl_tensor *loss = tl_sum(ctx, tl_mul(ctx, out, rt));
        if (args.aux_loss)
            loss = tl_add(ctx, loss, args.aux_loss);
        if (tl_backward(ctx, loss) != TL_OK) {
            fprintf(stderr, "backward failed: %s\n", tl_errmsg());
            return NAN;
        }
        if (dx) {
            if (xt->grad)
                memcpy(dx, xt->grad, (size_t)(B * T * C) * sizeof(float));
            else
                memset(dx, 0, (size_t)(B * T * C) * sizeof(float));
        }
    }
    return s;
}

double pl_run(pl_layer *L, const float *x, int64_t B, int64_t T, int64_t C, tl_layer_args args,
              float *y, uint8_t *masks, size_t masks_size)
{
    tl_ctx *ctx = tl_ctx_new(1 << 20);
    double aux = 0.0;
    double s = pl_eval(L, ctx, x, B, T, C, args, NULL, false, y, NULL, masks, masks_size, &aux);
    tl_ctx_free(ctx);
    return isnan(s) ? NAN : aux;
}

typedef struct pl_target {
    float *data;
    const float *grad;
    int64_t n;
    const char *name;
} pl_target;

int pl_gradcheck(const char *label, pl_layer *L, float *x, int64_t B, int64_t T, int64_t C,
                 tl_layer_args args, int per_param, gc_options tol, int *skipped)
{
    double h = tol.step > 0 ? tol.step : 1e-2;
    int64_t N = B * T * C;
    tl_ctx *ctx = tl_ctx_new(1 << 20);
    float *R = malloc((size_t)N * sizeof(float));
    float *dx = malloc((size_t)N * sizeof(float));
    size_t masks_size = (size_t)TL_STATS_MAX_STEPS * (size_t)(B * T);
    uint8_t *mask0 = malloc(masks_size), *mask1 = malloc(masks_size);
    tl_rng rng;
    tl_rng_seed(&rng, 777);
    gc_randn(&rng, R, N, 1.0f);
    tl_params_zero_grad(L->params);
    double base = pl_eval(L, ctx, x, B, T, C, args, R, true, NULL, dx, mask0, masks_size, NULL);
    int fails = 0, skips = 0;
    if (isnan(base)) {
        fails = 1;
        goto done;
    }

    size_t n_params = tl_params_count(L->params);
    for (size_t p = 0; p <= n_params; p++) {
        pl_target tg;
        if (p == n_params) {
            tg = (pl_target){x, dx, N, "input x"};
        } else {
            tl_tensor *t = tl_params_at(L->params, p);
            if (tl_params_flags_at(L->params, p) & TL_PARAM_FROZEN)
                continue;
            tg = (pl_target){tl_f32(t), t->grad, tl_numel(t), t->name};
        }
        int64_t stride = tg.n > per_param ? tg.n / per_param : 1;
        double worst = -1.0, worst_a = 0, worst_n = 0;
        int bad = 0;
        for (int64_t k = 0; k < tg.n; k += stride) {
            float keep = tg.data[k];
            tg.data[k] = keep + (float)h;
            double hp = (double)tg.data[k] - keep;
            double lp = pl_eval(L, ctx, x, B, T, C, args, R, false, NULL, NULL, mask1, masks_size, NULL);
            bool moved = memcmp(mask0, mask1, masks_size) != 0;
            tg.data[k] = keep - (float)h;
            double hm = keep - (double)tg.data[k];
            double lm = pl_eval(L, ctx, x, B, T, C, args, R, false, NULL, NULL, mask1, masks_size, NULL);
            moved = moved || memcmp(mask0, mask1, masks_size) != 0;
            tg.data[k] = keep;
            if (moved) {
                skips++;
                continue;
            }
            double num = (lp - lm) / (hp + hm), ana = tg.grad[k];
            double err = fabs(num - ana), allowed = tol.atol + tol.rtol * fmax(fabs(num), fabs(ana));
            if (err > allowed)
                bad++;
            if (err / allowed > worst) {
                worst = err / allowed;
                worst_a = ana;
                worst_n = num;
            }
        }
        printf("%-34s %-26s %s, worst analytic %.6g numeric %.6g (error/allowed %.2f)\n", label,
               tg.name, bad ? "FAIL" : "ok", worst_a, worst_n, worst);
        fails += bad;
    }
done:
    if (skipped)
        *skipped = skips;
    free(R);
    free(dx);
    free(mask0);
    free(mask1);
    tl_ctx_free(ctx);
    gc_failures += fails;
    return fails;
}

/* L = aux only: forward, and with grad the backward from the aux sum. */
static double pl_eval_aux(pl_layer *L, tl_ctx *ctx, const float *x, int64_t B, int64_t T,
                          int64_t C, tl_layer_args args, bool grad, float *dx)
{
    tl_ctx_reset(ctx);
    tl_ctx_set_grad_enabled(ctx, grad);
    tl_tensor *xt = tl_new3(ctx, B, T, C);
    memcpy(xt->data, x, (size_t)(B * T * C) * sizeof(float));
    tl_set_requires_grad(xt, grad);
    args.aux_loss = NULL;
    args.n_aux_terms = 0;
    tl_tensor *out = L->plugin->forward(ctx, L->state, xt, &args);
    if (!out || !args.aux_loss) {
        fprintf(stderr, "forward failed or added no auxiliary loss: %s\n", tl_errmsg());
        return NAN;
    }
    double aux = tl_f32(args.aux_loss)[0];
    if (grad) {
        if (tl_backward(ctx, args.aux_loss) != TL_OK) {
            fprintf(stderr, "backward failed: %s\n", tl_errmsg());
            return NAN;
        }
        for (int64_t i = 0; i < B * T * C; i++)
            dx[i] = xt->grad ? xt->grad[i] : 0.0f;
    }
    return aux;
}

int pl_auxcheck(const char *label, pl_layer *L, float *x, int64_t B, int64_t T, int64_t C,
                tl_layer_args args, gc_options tol)
{
    double h = tol.step > 0 ? tol.step : 1e-2;
    tl_ctx *ctx = tl_ctx_new(1 << 20);
    float *dx = calloc((size_t)(B * T * C), sizeof(float));
    int fails = 0;
    tl_params_zero_grad(L->params);
    if (isnan(pl_eval_aux(L, ctx, x, B, T, C, args, true, dx))) {
        fails = 1;
        goto done;
    }
    int64_t nonzero_x = 0;
    for (int64_t i = 0; i < B * T * C; i++)
        nonzero_x += dx[i] != 0.0f;
    if (nonzero_x) {
        printf("%-34s aux loss sends gradient to %lld input elements\n", label, (long long)nonzero_x);
        fails++;
    }
    for (size_t p = 0; p < tl_params_count(L->params); p++) {
        tl_tensor *t = tl_params_at(L->params, p);
        int64_t n = tl_numel(t);
        if (!strstr(t->name, "router")) {
            int64_t nonzero = 0;
            for (int64_t k = 0; k < n; k++)
                nonzero += t->grad[k] != 0.0f;
            if (nonzero) {
                printf("%-34s aux loss sends gradient to %s (%lld elements)\n", label, t->name,
                       (long long)nonzero);
                fails++;
            }
            continue;
        }
        int bad = 0;
        double worst = 0.0;
        for (int64_t k = 0; k < n; k++) {
            float keep = tl_f32(t)[k];
            tl_f32(t)[k] = keep + (float)h;
            double hp = (double)tl_f32(t)[k] - keep;
            double lp = pl_eval_aux(L, ctx, x, B, T, C, args, false, NULL);
            tl_f32(t)[k] = keep - (float)h;
            double hm = keep - (double)tl_f32(t)[k];
            double lm = pl_eval_aux(L, ctx, x, B, T, C, args, false, NULL);
            tl_f32(t)[k] = keep;
            double num = (lp - lm) / (hp + hm), ana = t->grad[k];
            double allowed = tol.atol + tol.rtol * fmax(fabs(num), fabs(ana));
            bad += fabs(num - ana) > allowed;
            worst = fmax(worst, fabs(num - ana) / allowed);
        }
        printf("%-34s aux d/d%-20s %s (error/allowed %.2f)\n", label, t->name, bad ? "FAIL" : "ok",
               worst);
        fails += bad;
    }
done:
    free(dx);
    tl_ctx_free(ctx);
    gc_failures += fails;
    return fails;
}
