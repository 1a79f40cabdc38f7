/* Per-op benchmark: forward plus backward of the ops that take the most time
 * in the training step besides the matrix products, at the shapes one shard
 * of thinklab-bench-step gives them (6 sequences of 64 tokens, C = 128,
 * H = 4, MLP width 512, vocabulary 65), on one thread.
 *
 * Each case builds the op on fresh inputs, reduces its output to a scalar
 * with tl_sum where it is not one already, runs backward and resets the
 * context. The "sum only" rows time that reduction alone, to subtract.
 *
 *   build/framework/bench/thinklab-bench-ops [--iters N] [--rounds N]
 *
 * Prints, per case, the lowest over the rounds of the mean time per
 * iteration, after one untimed iteration of the case. Uses only the public
 * API, so it also builds against older versions of the library for
 * before-and-after comparisons. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "thinklab/thinklab.h"

enum { ROWS = 6 * 64, CTX = 64, SEQS = 6, WIDTH = 128, HEADS = 4, HIDDEN = 512, VOCAB = 65 };

typedef enum {
    CASE_ATTENTION,
    CASE_GELU,
    CASE_LAYERNORM,
    CASE_CROSS_ENTROPY,
    CASE_SUM_ATTENTION,
    CASE_SUM_GELU,
    CASE_SUM_LAYERNORM,
    CASE_COUNT
} bench_case;

static const char *const case_names[CASE_COUNT] = {
    "attention (6, 64, 128), 4 heads, causal",
    "gelu tanh (384, 512)",
    "layernorm (384, 128), gain, no bias",
    "cross-entropy (384, 65)",
    "sum only (6, 64, 128)",
    "sum only (384, 512)",
    "sum only (384, 128)",
};

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Inputs, filled once with normal values (ids uniform in the vocabulary). */
typedef struct bench_inputs {
    float *q, *k, *v, *act, *norm, *gain, *logits;
    int32_t *targets;
} bench_inputs;

static tl_tensor *input(tl_ctx *ctx, float *data, int ndim, const int64_t *shape)
{
    tl_tensor *t = tl_wrap(ctx, TL_F32, data, ndim, shape);
    if (t)
        tl_set_requires_grad(t, true);
    return t;
}

/* One iteration of case c; returns the status of backward. */
static tl_status run_case(tl_ctx *ctx, bench_case c, const bench_inputs *in)
{
    int64_t qkv[3] = {SEQS, CTX, WIDTH}, act[2] = {ROWS, HIDDEN}, norm[2] = {ROWS, WIDTH};
    tl_tensor *loss = NULL;
    switch (c) {
    case CASE_ATTENTION: {
        tl_attention_opts o = {.n_head = HEADS, .rope = TL_ROPE_NONE};
        loss = tl_sum(ctx, tl_attention(ctx, input(ctx, in->q, 3, qkv), input(ctx, in->k, 3, qkv),
                                        input(ctx, in->v, 3, qkv), &o));
        break;
    }
    case CASE_GELU:
        loss = tl_sum(ctx, tl_gelu(ctx, input(ctx, in->act, 2, act), true));
        break;
    case CASE_LAYERNORM:
        loss = tl_sum(ctx, tl_layernorm(ctx, input(ctx, in->norm, 2, norm),
                                        input(ctx, in->gain, 1, (int64_t[]){WIDTH}), NULL, 1e-5f));
        break;
    case CASE_CROSS_ENTROPY:
        loss = tl_cross_entropy(ctx, input(ctx, in->logits, 2, (int64_t[]){ROWS, VOCAB}),
                                tl_wrap(ctx, TL_I32, in->targets, 1, (int64_t[]){ROWS}), NULL,
                                NULL);
        break;
    case CASE_SUM_ATTENTION:
        loss = tl_sum(ctx, input(ctx, in->q, 3, qkv));
        break;
    case CASE_SUM_GELU:
        loss = tl_sum(ctx, input(ctx, in->act, 2, act));
        break;
    case CASE_SUM_LAYERNORM:
        loss = tl_sum(ctx, input(ctx, in->norm, 2, norm));
        break;
    case CASE_COUNT:
        break;
    }
    return tl_backward(ctx, loss);
}

/* Runs one iteration of case c and resets the context; prints the error and
 * returns false if the case failed. */
static bool run_iteration(tl_ctx *ctx, bench_case c, const bench_inputs *in)
{
    if (run_case(ctx, c, in) != TL_OK) {
        fprintf(stderr, "thinklab-bench-ops: %s failed: %s\n", case_names[c], tl_errmsg());
        return false;
    }
    tl_ctx_reset(ctx);
    return true;
}

/* Parses a whole number from 1 to max into *out; prints the flag and the
 * range and returns false otherwise. */
static bool parse_count(const char *flag, const char *text, long max, int *out)
{
    char *end = NULL;
    errno = 0;
    long v = text[0] >= '0' && text[0] <= '9' ? strtol(text, &end, 10) : -1;
    if (errno != 0 || end == NULL || *end != '\0' || v < 1 || v > max) {
        fprintf(stderr, "thinklab-bench-ops: %s '%s' must be a whole number from 1 to %ld\n",
                flag, text, max);
        return false;
    }
    *out = (int)v;
    return true;
}

int main(int argc, char **argv)
{
    int iters = 200, rounds = 5;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            printf("usage: thinklab-bench-ops [--iters N (default 200)] [--rounds N (default 5)]\n");
            return 0;
        } else if (i + 1 < argc && strcmp(argv[i], "--iters") == 0) {
            if (!parse_count(argv[i], argv[i + 1], 1000000, &iters))
                return 2;
            i++;
        } else if (i + 1 < argc && strcmp(argv[i], "--rounds") == 0) {
            if (!parse_count(argv[i], argv[i + 1], 1000, &rounds))
                return 2;
            i++;
        } else {
            fprintf(stderr, "thinklab-bench-ops: unknown or incomplete option '%s'; see --help\n",
                    argv[i]);
            return 2;
        }
    }

    tl_threads_set(1);
    tl_rng rng;
    tl_rng_seed(&rng, 1);
    size_t qkv_n = (size_t)SEQS * CTX * WIDTH;
    bench_inputs in = {
        .q = malloc(qkv_n * sizeof(float)), .k = malloc(qkv_n * sizeof(float)),
        .v = malloc(qkv_n * sizeof(float)), .act = malloc((size_t)ROWS * HIDDEN * sizeof(float)),
        .norm = malloc((size_t)ROWS * WIDTH * sizeof(float)), .gain = malloc(WIDTH * sizeof(float)),
        .logits = malloc((size_t)ROWS * VOCAB * sizeof(float)),
        .targets = malloc(ROWS * sizeof(int32_t)),
    };
    tl_ctx *ctx = tl_ctx_new(0);
    if (!ctx || !in.q || !in.k || !in.v || !in.act || !in.norm || !in.gain || !in.logits ||
        !in.targets) {
        fprintf(stderr, "thinklab-bench-ops: out of memory\n");
        return 1;
    }
    float *fill[6] = {in.q, in.k, in.v, in.act, in.norm, in.logits};
    size_t count[6] = {qkv_n, qkv_n, qkv_n, (size_t)ROWS * HIDDEN, (size_t)ROWS * WIDTH,
                       (size_t)ROWS * VOCAB};
    for (int a = 0; a < 6; a++)
        for (size_t j = 0; j < count[a]; j++)
            fill[a][j] = tl_rng_normal(&rng);
    for (int j = 0; j < WIDTH; j++)
        in.gain[j] = 1.0f + 0.1f * tl_rng_normal(&rng);
    for (int j = 0; j < ROWS; j++)
        in.targets[j] = (int32_t)tl_rng_below(&rng, VOCAB);

    printf("thinklab op benchmark: forward plus backward on 1 thread, %d iterations after 1 "
           "untimed, lowest of %d rounds\n", iters, rounds);
    for (int c = 0; c < CASE_COUNT; c++) {
        /* The first iteration of a case is the slowest, likely from cold caches
         * and a growing arena: timed, it made GELU read 3.1 ms at --iters 1 against
         * about 0.3 ms. So it runs untimed. */
        if (!run_iteration(ctx, (bench_case)c, &in))
            return 1;
        double best = 1e30;
        for (int r = 0; r < rounds; r++) {
            double t0 = now_s();
            for (int i = 0; i < iters; i++) {
                if (!run_iteration(ctx, (bench_case)c, &in))
                    return 1;
            }
            double ms = (now_s() - t0) * 1e3 / iters;
            best = ms < best ? ms : best;
        }
        printf("%-42s %8.4f ms\n", case_names[c], best);
    }
    tl_ctx_free(ctx);
    free(in.q);
    free(in.k);
    free(in.v);
    free(in.act);
    free(in.norm);
    free(in.gain);
    free(in.logits);
    free(in.targets);
    return 0;
}
