/* AdamW and SGD against a double-precision reference of PyTorch's update
 * rules, global-norm clipping in place and folded into the update, and the
 * learning-rate schedules. */
#include <math.h>
#include <string.h>

#include "gradcheck.h"

enum { N0 = 5, N1 = 3, STEPS = 12 };

static tl_params *make_params(void)
{
    tl_params *p = tl_params_new();
    tl_params_add(p, "w", 2, (int64_t[]){N0, N1}, TL_INIT_NORMAL, 0.5f, TL_PARAM_DECAY);
    tl_params_add(p, "gain", 1, (int64_t[]){N1}, TL_INIT_CONST, 1.0f, 0);
    tl_params_add(p, "frozen", 1, (int64_t[]){2}, TL_INIT_CONST, 3.0f, TL_PARAM_FROZEN);
    tl_rng rng;
    tl_rng_seed(&rng, 7);
    tl_params_alloc(p, &rng);
    return p;
}

/* Deterministic pseudo-gradient for element j at step t. */
static float fake_grad(int64_t j, int t) { return sinf(0.7f * (float)j + 1.3f * (float)t) * 0.1f; }

static void test_adamw(void)
{
    tl_params *p = make_params();
    tl_optim_config cfg = tl_optim_default();
    cfg.weight_decay = 0.1f;
    int64_t n = tl_params_numel(p);
    double x[64], m[64] = {0}, v[64] = {0};
    for (int64_t j = 0; j < n; j++)
        x[j] = tl_params_data(p)[j];

    float lr = 3e-3f;
    for (int t = 1; t <= STEPS; t++) {
        for (int64_t j = 0; j < n; j++)
            tl_params_grads(p)[j] = fake_grad(j, t);
        CHECK(tl_optim_step(p, &cfg, lr, t) == TL_OK);
        /* Reference: torch.optim.AdamW (decoupled decay, then Adam step). */
        for (size_t i = 0; i < tl_params_count(p); i++) {
            unsigned flags = tl_params_flags_at(p, i);
            int64_t off = tl_params_offset(p, i), cnt = tl_numel(tl_params_at(p, i));
            for (int64_t j = off; j < off + cnt; j++) {
                if (flags & TL_PARAM_FROZEN)
                    continue;
                double g = fake_grad(j, t);
                if (flags & TL_PARAM_DECAY)
                    x[j] *= 1.0 - (double)lr * cfg.weight_decay;
                m[j] = 0.9 * m[j] + 0.1 * g;
                v[j] = 0.95 * v[j] + 0.05 * g * g;
                double mhat = m[j] / (1 - pow(0.9, t)), vhat = v[j] / (1 - pow(0.95, t));
                x[j] -= lr * mhat / (sqrt(vhat) + 1e-8);
            }
        }
    }
    /* Float32 state against a double reference over 12 steps: 1e-6 absolute
     * on values of order 1. */
    double worst = 0;
    for (int64_t j = 0; j < n; j++)
        worst = fmax(worst, fabs(x[j] - tl_params_data(p)[j]));
    CHECK_MSG(worst < 1e-6, "AdamW differs from the reference by %g", worst);
    /* The frozen parameter never moves. */
    tl_tensor *fz = tl_params_find(p, "frozen");
    CHECK(tl_f32(fz)[0] == 3.0f && tl_f32(fz)[1] == 3.0f);
    CHECK(!tl_requires_grad(fz));
    /* Invalid calls. */
    CHECK(tl_optim_step(p, &cfg, lr, 0) == TL_EINVAL);
    CHECK(tl_optim_step(p, &cfg, NAN, 1) == TL_EINVAL);
    tl_optim_config bad = cfg;
    bad.beta2 = 1.0f;
    CHECK(tl_optim_validate(&bad) == TL_EINVAL);
    CHECK(strstr(tl_errmsg(), "betas") != NULL);
    tl_params_free(p);
}

static void test_sgd(void)
{
    tl_params *p = make_params();
    tl_optim_config cfg = {.kind = TL_OPTIM_SGD, .momentum = 0.9f, .weight_decay = 0.0f};
    CHECK(tl_optim_validate(&cfg) == TL_OK);
    int64_t n = tl_params_numel(p);
    double x[64], buf[64] = {0};
    for (int64_t j = 0; j < n; j++)
        x[j] = tl_params_data(p)[j];
    for (int t = 1; t <= STEPS; t++) {
        for (int64_t j = 0; j < n; j++)
            tl_params_grads(p)[j] = fake_grad(j, t);
        tl_optim_step(p, &cfg, 0.1f, t);
        for (int64_t j = 0; j < n - 2; j++) { /* the last two elements are frozen */
            buf[j] = 0.9 * buf[j] + fake_grad(j, t);
            x[j] -= 0.1 * buf[j];
        }
    }
    double worst = 0;
    for (int64_t j = 0; j < n; j++)
        worst = fmax(worst, fabs(x[j] - tl_params_data(p)[j]));
    CHECK_MSG(worst < 1e-5, "SGD with momentum differs from the reference by %g", worst);
    tl_params_free(p);
}

static void test_clip(void)
{
    tl_params *p = make_params();
    int64_t n = tl_params_numel(p);
    double ss = 0;
    for (int64_t j = 0; j < n; j++) {
        tl_params_grads(p)[j] = (float)(j + 1);
        ss += (double)(j + 1) * (j + 1);
    }
    double norm = tl_clip_grad_norm(p, 1.0);
    CHECK(fabs(norm - sqrt(ss)) < 1e-9 * sqrt(ss));
    CHECK(fabs(tl_grad_norm(p) - 1.0) < 1e-5);
    /* Below the limit nothing changes. */
    double again = tl_clip_grad_norm(p, 10.0);
    CHECK(fabs(again - tl_grad_norm(p)) == 0.0);
    tl_params_zero_grad(p);
    CHECK(tl_grad_norm(p) == 0.0);
    tl_params_free(p);
}

/* A store above the size where zeroing splits over the threads: every
 * gradient is zeroed, and the norm of varied values at an odd length
 * matches a double sum. */
static void test_large_store(void)
{
    tl_params *p = tl_params_new();
    tl_params_add(p, "big", 2, (int64_t[]){517, 263}, TL_INIT_CONST, 0.0f, 0);
    tl_rng rng;
    tl_rng_seed(&rng, 3);
    CHECK(tl_params_alloc(p, &rng) == TL_OK);
    int64_t n = tl_params_numel(p);
    float *g = tl_params_grads(p);
    int threads = tl_threads_get();
    tl_threads_set(2);
    double ss = 0;
    for (int64_t j = 0; j < n; j++) {
        g[j] = (float)((j % 97) - 48) * 0.25f;
        ss += (double)g[j] * g[j];
    }
    double norm = tl_grad_norm(p);
    CHECK_MSG(fabs(norm - sqrt(ss)) <= 1e-12 * sqrt(ss), "norm %.17g, double sum %.17g", norm,
              sqrt(ss));
    tl_params_zero_grad(p);
    int64_t nonzero = 0;
    for (int64_t j = 0; j < n; j++)
        nonzero += g[j] != 0.0f;
    CHECK_MSG(nonzero == 0, "%lld of %lld gradients not zeroed", (long long)nonzero,
              (long long)n);
    tl_threads_set(threads);
    tl_params_free(p);
}

/* Clipping folded into the update gives the bits of clipping in place and
 * then updating, for AdamW and SGD, and leaves the stored gradients alone. */
static void test_step_scaled(void)
{
    CHECK(tl_clip_scale(0.5, 1.0) == 1.0f);
    CHECK(tl_clip_scale(4.0, 0.0) == 1.0f);
    CHECK(tl_clip_scale(NAN, 1.0) == 1.0f);
    CHECK(tl_clip_scale(4.0, 1.0) == (float)(1.0 / (4.0 + 1e-6)));

    tl_optim_config cfgs[2] = {tl_optim_default(),
                               {.kind = TL_OPTIM_SGD, .momentum = 0.9f, .weight_decay = 0.01f}};
    for (int k = 0; k < 2; k++) {
        tl_params *a = make_params(), *b = make_params();
        int64_t n = tl_params_numel(a);
        for (int t = 1; t <= STEPS; t++) {
            for (int64_t j = 0; j < n; j++) {
                tl_params_grads(a)[j] = 30.0f * fake_grad(j, t);
                tl_params_grads(b)[j] = 30.0f * fake_grad(j, t);
            }
            double norm = tl_clip_grad_norm(a, 1.0);
            CHECK(norm > 1.0); /* the scale is not 1 */
            CHECK(tl_optim_step(a, &cfgs[k], 0.01f, t) == TL_OK);
            CHECK(tl_optim_step_scaled(b, &cfgs[k], 0.01f, t, tl_clip_scale(norm, 1.0)) == TL_OK);
            CHECK_MSG(tl_params_grads(b)[1] == 30.0f * fake_grad(1, t),
                      "%s: the stored gradient changed", k ? "SGD" : "AdamW");
        }
        CHECK_MSG(memcmp(tl_params_data(a), tl_params_data(b), (size_t)n * sizeof(float)) == 0,
                  "%s: folded clipping gave other bits", k ? "SGD" : "AdamW");
        tl_params_free(a);
        tl_params_free(b);
    }

    tl_params *p = make_params();
    tl_optim_config cfg = tl_optim_default();
    CHECK(tl_optim_step_scaled(p, &cfg, 0.01f, 1, NAN) == TL_EINVAL);
    CHECK_MSG(strstr(tl_errmsg(), "gradient scale nan") != NULL, "%s", tl_errmsg());
    CHECK(tl_optim_step_scaled(p, &cfg, 0.01f, 1, -1.0f) == TL_EINVAL);
    tl_params_free(p);
}

static void test_schedules(void)
{
    tl_schedule c = {.kind = TL_SCHEDULE_CONSTANT, .lr = 1e-3f};
    CHECK(tl_schedule_validate(&c) == TL_OK);
    CHECK(tl_schedule_lr(&c, 0) == 1e-3f && tl_schedule_lr(&c, 999) == 1e-3f);

    tl_schedule s = {.kind = TL_SCHEDULE_WARMUP_COSINE, .lr = 1.0f, .min_lr = 0.1f,
                     .warmup = 4, .total = 20};
    CHECK(tl_schedule_validate(&s) == TL_OK);
    /* Warm-up: lr/(W+1) at step 0, rising linearly to lr at step W. */
    CHECK(fabsf(tl_schedule_lr(&s, 0) - 0.2f) < 1e-7f);
    CHECK(fabsf(tl_schedule_lr(&s, 3) - 0.8f) < 1e-7f);
    CHECK(fabsf(tl_schedule_lr(&s, 4) - 1.0f) < 1e-7f);
    /* Cosine midpoint, the floor at the last step, and monotone decay. */
    float expect = 0.1f + 0.9f * 0.5f * (1.0f + cosf(3.14159265f * 7.0f / 15.0f));
    CHECK(fabsf(tl_schedule_lr(&s, 11) - expect) < 1e-6f);
    CHECK(fabsf(tl_schedule_lr(&s, 19) - 0.1f) < 1e-7f);
    CHECK(fabsf(tl_schedule_lr(&s, 50) - 0.1f) < 1e-7f);
    for (int64_t t = 5; t < 20; t++)
        CHECK(tl_schedule_lr(&s, t) <= tl_schedule_lr(&s, t - 1));

    tl_schedule bad = s;
    bad.warmup = 20;
    CHECK(tl_schedule_validate(&bad) == TL_EINVAL);
    CHECK(strstr(tl_errmsg(), "warm-up") != NULL);
    bad = s;
    bad.min_lr = 2.0f;
    CHECK(tl_schedule_validate(&bad) == TL_EINVAL);
}

int main(void)
{
    test_adamw();
    test_sgd();
    test_clip();
    test_large_store();
    test_step_scaled();
    test_schedules();
    return gc_finish("optimizers and schedules");
}
