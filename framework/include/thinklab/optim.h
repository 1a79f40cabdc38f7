/* Optimizers, gradient clipping and learning-rate schedules. */
#ifndef THINKLAB_OPTIM_H
#define THINKLAB_OPTIM_H

#include <stdint.h>

#include "thinklab/params.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum tl_optim_kind { TL_OPTIM_ADAMW, TL_OPTIM_SGD, TL_OPTIM_COUNT } tl_optim_kind;

typedef struct tl_optim_config {
    tl_optim_kind kind;
    float beta1, beta2, eps; /* AdamW; defaults 0.9, 0.95, 1e-8 */
    float weight_decay;      /* decoupled; applied to TL_PARAM_DECAY parameters only */
    float momentum;          /* SGD; 0 for plain SGD; the buffer lives in m */
} tl_optim_config;

/* AdamW with betas (0.9, 0.95), eps 1e-8, weight decay 0.1. */
tl_optim_config tl_optim_default(void);
tl_status tl_optim_validate(const tl_optim_config *cfg);

/* Applies one update with learning rate lr. step counts updates from 1 and sets
 * AdamW's bias correction. Frozen parameters are skipped. */
tl_status tl_optim_step(tl_params *p, const tl_optim_config *cfg, float lr, int64_t step);
/* tl_optim_step on the gradients times grad_scale (finite, >= 0), in the same
 * pass over the parameters; the stored gradients keep their values. With
 * grad_scale = tl_clip_scale(norm, max_norm) it gives the same bits as
 * tl_clip_grad_norm followed by tl_optim_step, with one pass over the
 * gradients fewer. */
tl_status tl_optim_step_scaled(tl_params *p, const tl_optim_config *cfg, float lr, int64_t step,
                               float grad_scale);

/* Global L2 norm of all gradients, accumulated in double. */
double tl_grad_norm(const tl_params *p);
/* Scales all gradients so that their global norm is at most max_norm, when
 * max_norm > 0. Returns the norm before clipping. */
double tl_clip_grad_norm(tl_params *p, double max_norm);
/* The factor tl_clip_grad_norm applies to gradients of global norm `norm`:
 * max_norm / (norm + 1e-6) when max_norm > 0 and norm > max_norm, else 1. */
float tl_clip_scale(double norm, double max_norm);

typedef enum tl_schedule_kind {
    TL_SCHEDULE_CONSTANT,
    TL_SCHEDULE_WARMUP_COSINE,
    TL_SCHEDULE_COUNT
} tl_schedule_kind;

typedef struct tl_schedule {
    tl_schedule_kind kind;
    float lr;           /* peak learning rate */
    float min_lr;       /* floor reached at the last step */
    int64_t warmup;     /* W: steps of linear warm-up */
    int64_t total;      /* total steps; the last step is total-1 */
} tl_schedule;

tl_status tl_schedule_validate(const tl_schedule *s);
/* Learning rate at step (0-based). Warm-up rises linearly from lr/(W+1) at
 * step 0 to lr at step W, then a cosine decays it to min_lr at step total-1. */
float tl_schedule_lr(const tl_schedule *s, int64_t step);

#ifdef __cplusplus
}
#endif
#endif
