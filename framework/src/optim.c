/* AdamW, SGD, global-norm clipping and learning-rate schedules. */
#include <math.h>

#include "internal.h"
#include "ops/vmath.h"

/* Parameters below which the update stays on one thread. */
enum { TL_OPTIM_PARALLEL_MIN = 1 << 16 };

tl_optim_config tl_optim_default(void)
{
    return (tl_optim_config){
        .kind = TL_OPTIM_ADAMW, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f,
        .weight_decay = 0.1f, .momentum = 0.0f,
    };
}

tl_status tl_optim_validate(const tl_optim_config *c)
{
    if ((unsigned)c->kind >= TL_OPTIM_COUNT)
        return tl_seterr(TL_EINVAL, "optimizer kind %d is unknown; use adamw or sgd", (int)c->kind);
    if (c->kind == TL_OPTIM_ADAMW && (!(c->beta1 >= 0 && c->beta1 < 1) || !(c->beta2 >= 0 && c->beta2 < 1)))
        return tl_seterr(TL_EINVAL, "AdamW betas (%g, %g) must lie in [0, 1)", (double)c->beta1,
                         (double)c->beta2);
    if (c->kind == TL_OPTIM_ADAMW && !(c->eps > 0))
        return tl_seterr(TL_EINVAL, "AdamW eps %g must be positive", (double)c->eps);
    if (!(c->weight_decay >= 0))
        return tl_seterr(TL_EINVAL, "weight decay %g must be >= 0", (double)c->weight_decay);
    if (!(c->momentum >= 0 && c->momentum < 1))
        return tl_seterr(TL_EINVAL, "SGD momentum %g must lie in [0, 1)", (double)c->momentum);
    return TL_OK;
}

/* AdamW on n elements with gradients gs g: x = x decay - step_size m_hat /
 * (sqrt(v_hat) + eps), with the bias corrections folded into step_size and
 * inv_sqrt_bc2. */
TL_MULTIVERSION
static void tl_adamw_range(float *restrict x, const float *restrict g, float *restrict m,
                           float *restrict v, int64_t n, const tl_optim_config *c, float decay,
                           float step_size, float inv_sqrt_bc2, float gs)
{
    float b1 = c->beta1, b2 = c->beta2, eps = c->eps;
#pragma omp simd
    for (int64_t j = 0; j < n; j++) {
        float gj = g[j] * gs; /* the same product as clipping in place */
        m[j] = b1 * m[j] + (1.0f - b1) * gj;
        v[j] = b2 * v[j] + (1.0f - b2) * gj * gj;
        float denom = sqrtf(v[j]) * inv_sqrt_bc2 + eps;
        x[j] = x[j] * decay - step_size * m[j] / denom;
    }
}

/* SGD on n elements with gradients gs g, with heavy-ball momentum when mu > 0. */
static void tl_sgd_range(float *restrict x, const float *restrict g, float *restrict m, int64_t n,
                         float mu, float decay, float lr, float gs)
{
    if (mu > 0) {
#pragma omp simd
        for (int64_t j = 0; j < n; j++) {
            m[j] = mu * m[j] + g[j] * gs;
            x[j] = x[j] * decay - lr * m[j];
        }
    } else {
#pragma omp simd
        for (int64_t j = 0; j < n; j++)
            x[j] = x[j] * decay - lr * (g[j] * gs);
    }
}

tl_status tl_optim_step(tl_params *p, const tl_optim_config *c, float lr, int64_t step)
{
    return tl_optim_step_scaled(p, c, lr, step, 1.0f);
}

tl_status tl_optim_step_scaled(tl_params *p, const tl_optim_config *c, float lr, int64_t step,
                               float grad_scale)
{
    if (!tl_params_data(p))
        return tl_seterr(TL_ESTATE, "optimizer step before the parameters were allocated");
    if (step < 1)
        return tl_seterr(TL_EINVAL, "optimizer step %lld must count from 1", (long long)step);
    if (!isfinite(lr) || lr < 0)
        return tl_seterr(TL_EINVAL, "learning rate %g must be finite and >= 0", (double)lr);
    if (!isfinite(grad_scale) || grad_scale < 0)
        return tl_seterr(TL_EINVAL, "gradient scale %g must be finite and >= 0; a clipping "
                                    "scale comes from tl_clip_scale", (double)grad_scale);
    float *data = tl_params_data(p), *grad = tl_params_grads(p);
    float *m = tl_params_m(p), *v = tl_params_v(p);
    /* Bias corrections in double: beta2^t underflows float precision slowly. */
    double bc1 = 1.0 - pow(c->beta1, (double)step);
    double bc2 = 1.0 - pow(c->beta2, (double)step);
    float step_size = (float)(lr / bc1);
    float inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2));

    size_t count = tl_params_count(p);
    bool parallel = tl_params_numel(p) > TL_OPTIM_PARALLEL_MIN;
    /* One parallel region for all parameters; each thread updates its share
     * of every parameter, and the shares are disjoint, so nothing waits. */
#pragma omp parallel if (parallel)
    for (size_t i = 0; i < count; i++) {
        unsigned flags = tl_params_flags_at(p, i);
        if (flags & TL_PARAM_FROZEN)
            continue;
        int64_t lo, hi, off = tl_params_offset(p, i);
        tl_thread_range(tl_numel(tl_params_at(p, i)), &lo, &hi);
        off += lo;
        float decay = (flags & TL_PARAM_DECAY) ? 1.0f - lr * c->weight_decay : 1.0f;
        if (c->kind == TL_OPTIM_ADAMW)
            tl_adamw_range(data + off, grad + off, m + off, v + off, hi - lo, c, decay, step_size,
                           inv_sqrt_bc2, grad_scale);
        else
            tl_sgd_range(data + off, grad + off, m + off, hi - lo, c->momentum, decay, lr,
                         grad_scale);
    }
    return TL_OK;
}

TL_MULTIVERSION
static double tl_sumsq(const float *x, int64_t n)
{
    double lane[TL_VLANES] = {0};
    tl_vsumsq_lanes(lane, x, n);
    return tl_vlanes_sum_f64(lane);
}

double tl_grad_norm(const tl_params *p)
{
    const float *g = tl_params_grads(p);
    return g ? sqrt(tl_sumsq(g, tl_params_numel(p))) : 0.0;
}

float tl_clip_scale(double norm, double max_norm)
{
    /* Same rule as torch.nn.utils.clip_grad_norm_: scale by max/(norm+1e-6). */
    if (max_norm > 0 && norm > max_norm)
        return (float)(max_norm / (norm + 1e-6));
    return 1.0f;
}

double tl_clip_grad_norm(tl_params *p, double max_norm)
{
    double norm = tl_grad_norm(p);
    if (max_norm > 0 && norm > max_norm) {
        float scale = tl_clip_scale(norm, max_norm);
        float *g = tl_params_grads(p);
        int64_t n = tl_params_numel(p);
#pragma omp parallel for simd if (n > TL_OPTIM_PARALLEL_MIN) schedule(static)
        for (int64_t j = 0; j < n; j++)
            g[j] *= scale;
    }
    return norm;
}

tl_status tl_schedule_validate(const tl_schedule *s)
{
    if ((unsigned)s->kind >= TL_SCHEDULE_COUNT)
        return tl_seterr(TL_EINVAL, "schedule kind %d is unknown; use constant or cosine",
                         (int)s->kind);
    if (!(s->lr >= 0) || !isfinite(s->lr))
        return tl_seterr(TL_EINVAL, "learning rate %g must be finite and >= 0", (double)s->lr);
    if (!(s->min_lr >= 0) || s->min_lr > s->lr)
        return tl_seterr(TL_EINVAL, "min_lr %g must lie in [0, lr = %g]", (double)s->min_lr,
                         (double)s->lr);
    if (s->kind == TL_SCHEDULE_WARMUP_COSINE && (s->warmup < 0 || s->total < 1 || s->warmup >= s->total))
        return tl_seterr(TL_EINVAL, "warm-up of %lld steps must lie in [0, total steps = %lld)",
                         (long long)s->warmup, (long long)s->total);
    return TL_OK;
}

float tl_schedule_lr(const tl_schedule *s, int64_t step)
{
    if (s->kind == TL_SCHEDULE_CONSTANT)
        return s->lr;
    if (step < s->warmup)
        return s->lr * (float)(step + 1) / (float)(s->warmup + 1);

    /* Cosine from lr at step W down to min_lr at the last step, total-1. */
    int64_t span = s->total - 1 - s->warmup;
    if (span <= 0)
        return s->lr;
    double progress = (double)(step - s->warmup) / (double)span;
    if (progress > 1.0)
        progress = 1.0;
    double cosine = 0.5 * (1.0 + cos(3.141592653589793 * progress));
    return (float)(s->min_lr + (s->lr - s->min_lr) * cosine);
}
