/* The parameter store: one allocation for data, gradients and moments. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Gradients below this many floats are zeroed on one thread. */
enum { TL_PARAMS_ZERO_PARALLEL_MIN = 1 << 16 };

typedef struct tl_param_entry {
    tl_tensor *tensor; /* heap-allocated on its own, so the pointer never moves */
    tl_init init;
    float value;
    unsigned flags;
    int64_t offset;
} tl_param_entry;

struct tl_params {
    tl_param_entry *entries;
    size_t count, capacity;
    int64_t numel;
    float *block; /* 4 * numel floats: data, grad, m, v */
};

tl_params *tl_params_new(void)
{
    tl_params *p = calloc(1, sizeof *p);
    if (!p)
        tl_seterr(TL_ENOMEM, "could not allocate a parameter store");
    return p;
}

void tl_params_free(tl_params *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->count; i++) {
        free((char *)p->entries[i].tensor->name);
        free(p->entries[i].tensor);
    }
    free(p->entries);
    free(p->block);
    free(p);
}

tl_tensor *tl_params_find(const tl_params *p, const char *name)
{
    for (size_t i = 0; i < p->count; i++)
        if (strcmp(p->entries[i].tensor->name, name) == 0)
            return p->entries[i].tensor;
    return NULL;
}

tl_tensor *tl_params_add(tl_params *p, const char *name, int ndim, const int64_t *shape,
                         tl_init init, float value, unsigned flags)
{
    if (p->block) {
        tl_seterr(TL_ESTATE, "parameter '%s' registered after the store was allocated; "
                             "register every parameter before tl_params_alloc()", name);
        return NULL;
    }
    if (!name || !*name) {
        tl_seterr(TL_EINVAL, "a parameter needs a non-empty name");
        return NULL;
    }
    if (tl_params_find(p, name)) {
        tl_seterr(TL_EINVAL, "parameter '%s' is registered twice; give it a unique name", name);
        return NULL;
    }
    if (ndim < 1 || ndim > TL_MAX_DIMS || (unsigned)init >= TL_INIT_COUNT) {
        tl_seterr(TL_EINVAL, "parameter '%s': rank %d or initialiser %d is invalid", name, ndim,
                  (int)init);
        return NULL;
    }
    if (p->count == p->capacity) {
        size_t cap = p->capacity ? 2 * p->capacity : 64;
        tl_param_entry *e = realloc(p->entries, cap * sizeof *e);
        if (!e) {
            tl_seterr(TL_ENOMEM, "could not grow the parameter list");
            return NULL;
        }
        p->entries = e;
        p->capacity = cap;
    }
    tl_tensor *t = calloc(1, sizeof *t);
    char *copy = strdup(name);
    if (!t || !copy) {
        free(t);
        free(copy);
        tl_seterr(TL_ENOMEM, "could not allocate parameter '%s'", name);
        return NULL;
    }
    t->dtype = TL_F32;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] <= 0) {
            free(t);
            free(copy);
            tl_seterr(TL_ESHAPE, "parameter '%s': dimension %d has size %lld, must be positive",
                      name, i, (long long)shape[i]);
            return NULL;
        }
        t->shape[i] = shape[i];
    }
    t->name = copy;
    t->flags = TL_PARAM | ((flags & TL_PARAM_FROZEN) ? 0u : (unsigned)TL_REQUIRES_GRAD);
    p->entries[p->count++] = (tl_param_entry){t, init, value, flags, p->numel};
    p->numel += tl_numel(t);
    return t;
}

tl_status tl_params_alloc(tl_params *p, tl_rng *rng)
{
    if (p->block)
        return tl_seterr(TL_ESTATE, "the parameter store is already allocated");
    size_t n = (size_t)p->numel;
    p->block = tl_alloc_large(4 * (size_t)(n ? n : 1) * sizeof(float), true);
    if (!p->block)
        return tl_seterr(TL_ENOMEM, "could not allocate %zu parameters with gradients and "
                                    "moments (%.1f GiB): make the model smaller (d_model, "
                                    "n_layers, vocabulary)",
                         n, 4.0 * (double)n * sizeof(float) / (1024.0 * 1024.0 * 1024.0));
    for (size_t i = 0; i < p->count; i++) {
        tl_param_entry *e = &p->entries[i];
        tl_tensor *t = e->tensor;
        float *x = p->block + e->offset;
        int64_t m = tl_numel(t);
        t->data = x;
        /* Frozen parameters keep a zero gradient buffer that nothing writes. */
        t->grad = p->block + n + e->offset;
        for (int64_t j = 0; j < m; j++) {
            switch (e->init) {
            case TL_INIT_ZEROS: x[j] = 0.0f; break;
            case TL_INIT_CONST: x[j] = e->value; break;
            case TL_INIT_NORMAL: x[j] = e->value * tl_rng_normal(rng); break;
            case TL_INIT_COUNT: break;
            }
        }
    }
    return TL_OK;
}

size_t tl_params_count(const tl_params *p) { return p->count; }
tl_tensor *tl_params_at(const tl_params *p, size_t i) { return i < p->count ? p->entries[i].tensor : NULL; }
unsigned tl_params_flags_at(const tl_params *p, size_t i) { return i < p->count ? p->entries[i].flags : 0; }
int64_t tl_params_numel(const tl_params *p) { return p->numel; }
int64_t tl_params_offset(const tl_params *p, size_t i) { return i < p->count ? p->entries[i].offset : -1; }

float *tl_params_data(const tl_params *p) { return p->block; }
float *tl_params_grads(const tl_params *p) { return p->block ? p->block + p->numel : NULL; }
float *tl_params_m(const tl_params *p) { return p->block ? p->block + 2 * p->numel : NULL; }
float *tl_params_v(const tl_params *p) { return p->block ? p->block + 3 * p->numel : NULL; }

void tl_params_zero_grad(tl_params *p)
{
    if (!p->block)
        return;
    float *grads = p->block + p->numel;
    /* Split over the threads: a model's gradients are megabytes, and one
     * thread's memset would leave the others idle at the start of each step. */
#pragma omp parallel if (p->numel > TL_PARAMS_ZERO_PARALLEL_MIN)
    {
        int64_t lo, hi;
        tl_thread_range(p->numel, &lo, &hi);
        memset(grads + lo, 0, (size_t)(hi - lo) * sizeof(float));
    }
}
