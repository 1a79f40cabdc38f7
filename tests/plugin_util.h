/* Helpers for the plugin tests: a layer built from a plugin on a tiny block
 * configuration, parameter copying by name, and a finite-difference check
 * that perturbs parameters as well as the input. */
#ifndef THINKLAB_TEST_PLUGIN_UTIL_H
#define THINKLAB_TEST_PLUGIN_UTIL_H

#include "gradcheck.h"
#include "thinklab/plugin.h"

typedef struct pl_layer {
    tl_plugin_lib *lib;
    const tl_plugin *plugin;
    void *state;
    tl_params *params;
} pl_layer;

/* Builds layer 0 of a model of width C with H heads from plugin name and
 * settings; parameters are drawn from seed. Returns 0, or -1 after printing
 * the message. */
int pl_layer_make(pl_layer *L, const char *name, const tl_opt_setting *settings, int n,
                  tl_block_style style, int64_t C, int H, uint64_t seed);
void pl_layer_free(pl_layer *L);

/* Copies every parameter of src whose name also exists in dst. */
void pl_copy_params(pl_layer *dst, const pl_layer *src);
/* Sets every element of parameters whose name contains part to N(0, std^2). */
void pl_randomize(pl_layer *L, const char *part, float std, uint64_t seed);

/* Runs the layer on x (B, T, C) without gradients and copies the output into
 * y (B*T*C floats). With stats, copies the selection masks of every step
 * into masks (n_steps*B*T bytes, may be NULL). Returns the aux sum (0 if
 * none) or NAN on failure. */
double pl_run(pl_layer *L, const float *x, int64_t B, int64_t T, int64_t C, tl_layer_args args,
              float *y, uint8_t *masks, size_t masks_size);

/* Checks d/dx and d/dparams of L = sum(y * R) + aux by central differences.
 * Up to per_param elements of each parameter are checked. An element whose
 * perturbation changes the routing is skipped (the loss is not
 * differentiable there); the count of skipped elements is returned through
 * skipped. Returns the number of failures. */
int pl_gradcheck(const char *label, pl_layer *L, float *x, int64_t B, int64_t T, int64_t C,
                 tl_layer_args args, int per_param, gc_options tol, int *skipped);

/* Checks the auxiliary router loss alone (args.train must be set): its
 * gradient with respect to parameters whose name contains "router" against
 * central differences, and that it sends exactly zero gradient to the input
 * and to every other parameter (the stop-gradient copy of the router
 * input). Returns the number of failures. */
int pl_auxcheck(const char *label, pl_layer *L, float *x, int64_t B, int64_t T, int64_t C,
                tl_layer_args args, gc_options tol);

#endif
