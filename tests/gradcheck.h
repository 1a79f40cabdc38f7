/* Finite-difference gradient checks for thinklab ops and layers.
 *
 * gc_check() runs a forward function on fresh copies of the inputs, reduces its
 * output to L = sum(out * R) with a fixed random R (so every output element
 * matters), runs backward, and compares each analytic dL/dx with the central
 * difference (L(x+h) - L(x-h)) / 2h computed in double from float32 forwards.
 * An element passes when |analytic - numeric| <= atol + rtol * max(|a|, |n|). */
#ifndef THINKLAB_TEST_GRADCHECK_H
#define THINKLAB_TEST_GRADCHECK_H

#include <stdio.h>

#include "thinklab/thinklab.h"

typedef struct gc_input {
    tl_dtype dtype;
    int ndim;
    int64_t shape[TL_MAX_DIMS];
    void *data;  /* caller-owned; float or int32 */
    bool diff;   /* check the gradient with respect to this input */
} gc_input;

/* Builds the op or layer under test from in[] and returns its output. */
typedef tl_tensor *(*gc_forward)(tl_ctx *ctx, tl_tensor **in, void *user);

typedef struct gc_options {
    double step;      /* h, in input units; 1e-2 unless set */
    double atol, rtol;
    int max_elems;    /* elements checked per input, spread evenly; 0 = all */
} gc_options;

/* Returns the number of failing elements and prints one line per input with
 * the maximum error found. */
int gc_check(const char *label, gc_forward forward, void *user, gc_input *in, int n_in,
             gc_options opts);

/* Fills x with N(0, scale^2) draws. */
void gc_randn(tl_rng *rng, float *x, int64_t n, float scale);

/* Counting checks for tests: prints the failing condition with file:line. */
extern int gc_failures;
#define CHECK(cond)                                                                     \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);    \
            gc_failures++;                                                              \
        }                                                                               \
    } while (0)
#define CHECK_MSG(cond, ...)                                                            \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);    \
            fprintf(stderr, __VA_ARGS__);                                               \
            fputc('\n', stderr);                                                        \
            gc_failures++;                                                              \
        }                                                                               \
    } while (0)

/* Prints the summary line and returns the process exit status. */
int gc_finish(const char *suite);

#endif
