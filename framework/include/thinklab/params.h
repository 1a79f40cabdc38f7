/* Parameter store: every parameter, its gradient and the optimizer moments in
 * one persistent allocation.
 *
 * Parameters are registered with a name, a shape and an initialiser, then
 * tl_params_alloc() makes one block laid out as [data | grad | m | v], each
 * part holding all parameters back to back in registration order. Tensor
 * pointers handed out at registration stay valid for the store's life; their
 * data pointers are set by tl_params_alloc(). */
#ifndef THINKLAB_PARAMS_H
#define THINKLAB_PARAMS_H

#include "thinklab/rng.h"
#include "thinklab/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum tl_init {
    TL_INIT_ZEROS,
    TL_INIT_CONST,  /* every element = value */
    TL_INIT_NORMAL, /* N(0, value^2) */
    TL_INIT_COUNT
} tl_init;

enum tl_param_flags {
    TL_PARAM_DECAY = 1u << 0,  /* AdamW weight decay applies */
    TL_PARAM_FROZEN = 1u << 1, /* not trained: no gradient, no update */
};

typedef struct tl_params tl_params;

tl_params *tl_params_new(void);
void tl_params_free(tl_params *p);

/* Registers a parameter. The name is copied and must be unique. Returns the
 * tensor (data NULL until tl_params_alloc) or NULL with a message. */
tl_tensor *tl_params_add(tl_params *p, const char *name, int ndim, const int64_t *shape,
                         tl_init init, float value, unsigned flags);

/* Allocates the block and initialises every parameter from rng in registration
 * order; gradients and moments start at zero. */
tl_status tl_params_alloc(tl_params *p, tl_rng *rng);

size_t tl_params_count(const tl_params *p);
tl_tensor *tl_params_at(const tl_params *p, size_t i);
unsigned tl_params_flags_at(const tl_params *p, size_t i);
/* Returns the parameter named name, or NULL without setting a message. */
tl_tensor *tl_params_find(const tl_params *p, const char *name);
/* Total elements of all parameters (frozen ones included). */
int64_t tl_params_numel(const tl_params *p);

/* Flat views of the block, each tl_params_numel() floats; NULL before alloc. */
float *tl_params_data(const tl_params *p);
float *tl_params_grads(const tl_params *p);
float *tl_params_m(const tl_params *p);
float *tl_params_v(const tl_params *p);
/* Offset of parameter i inside each flat part. */
int64_t tl_params_offset(const tl_params *p, size_t i);

void tl_params_zero_grad(tl_params *p);

#ifdef __cplusplus
}
#endif
#endif
