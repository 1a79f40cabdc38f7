/* Training-step benchmark: a small GPT-2 style model, timed one full step at a
 * time. bench_step_torch.py runs the same model and step in PyTorch.
 *
 * Model: token embedding (V = 65) plus learned absolute positions (context 64),
 * 4 GPT-2 style blocks (C = 128, H = 4, LayerNorm without bias, GELU MLP of
 * width 4C), final LayerNorm without bias, head tied to the token embedding,
 * cross-entropy. Batch 12 x 64 tokens of random ids.
 *
 * One step: zero gradients, forward, backward, clip the global norm to 1.0,
 * AdamW, arena reset. With 2 or more threads the forward and backward run as
 * data-parallel shards (thinklab/shards.h), one per thread, each on its share
 * of the batch; --op-threads runs them on the whole batch with the threads
 * inside each op and sgemm instead. Prints the thread description, the
 * median, minimum and mean time per step after warm-up, GFLOP/s from the
 * contexts' FLOP counters at the median time, CPU time per step and peak RSS.
 * --phases also times forward, backward and optimizer (clip + AdamW) on their
 * own; shards run forward and backward together, timed as one phase. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "thinklab/block.h"
#include "thinklab/thinklab.h"

enum { VOCAB = 65, CONTEXT = 64, WIDTH = 128, HEADS = 4, LAYERS = 4, BATCH = 12 };

typedef struct bench_model {
    tl_params *params;
    tl_tensor *wte, *wpe, *ln_f;
    tl_block blocks[LAYERS];
} bench_model;

typedef struct bench_options {
    int threads, steps, warmup;
    int shards; /* 0: one per thread */
    bool phases, op_threads;
} bench_options;

static double clock_ms(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static double now_ms(void) { return clock_ms(CLOCK_MONOTONIC); }

static int compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof v[0], compare_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static tl_status model_init(bench_model *m, uint64_t seed)
{
    m->params = tl_params_new();
    if (!m->params)
        return tl_lasterr();
    int64_t wte_shape[2] = {VOCAB, WIDTH}, wpe_shape[2] = {CONTEXT, WIDTH}, c[1] = {WIDTH};
    m->wte = tl_params_add(m->params, "wte", 2, wte_shape, TL_INIT_NORMAL, 0.02f, TL_PARAM_DECAY);
    m->wpe = tl_params_add(m->params, "wpe", 2, wpe_shape, TL_INIT_NORMAL, 0.02f, TL_PARAM_DECAY);
    if (!m->wte || !m->wpe)
        return tl_lasterr();
    tl_block_config cfg = tl_block_config_default(WIDTH, HEADS);
    cfg.style = TL_BLOCK_GPT2;
    cfg.rope = TL_ROPE_NONE;
    cfg.n_layers = LAYERS;
    for (int l = 0; l < LAYERS; l++) {
        char prefix[32];
        snprintf(prefix, sizeof prefix, "layers.%d", l);
        tl_status st = tl_block_init(&m->blocks[l], &cfg, m->params, prefix);
        if (st != TL_OK)
            return st;
    }
    m->ln_f = tl_params_add(m->params, "ln_f", 1, c, TL_INIT_CONST, 1.0f, 0);
    if (!m->ln_f)
        return tl_lasterr();
    tl_rng rng;
    tl_rng_seed(&rng, seed);
    return tl_params_alloc(m->params, &rng);
}

/* One step's batch: ids, positions and targets, each BATCH x CONTEXT. */
typedef struct bench_batch {
    const bench_model *model;
    int32_t *ids, *pos, *targets;
} bench_batch;

/* Mean next-token cross-entropy over sequences [first, first + rows) of the
 * batch. */
static tl_tensor *model_loss(tl_ctx *ctx, const bench_batch *b, int64_t first, int64_t rows)
{
    const bench_model *m = b->model;
    int64_t off = first * CONTEXT, bt[2] = {rows, CONTEXT}, n[1] = {rows * CONTEXT};
    tl_tensor *ids = tl_wrap(ctx, TL_I32, b->ids + off, 2, bt);
    tl_tensor *pos = tl_wrap(ctx, TL_I32, b->pos + off, 2, bt);
    tl_tensor *targets = tl_wrap(ctx, TL_I32, b->targets + off, 1, n);
    tl_tensor *x = tl_add(ctx, tl_embedding(ctx, m->wte, ids), tl_embedding(ctx, m->wpe, pos));
    for (int l = 0; l < LAYERS; l++)
        x = tl_block_forward(ctx, &m->blocks[l], x, NULL);
    x = tl_layernorm(ctx, x, m->ln_f, NULL, 1e-5f);
    tl_tensor *logits = tl_linear(ctx, tl_reshape(ctx, x, 2, (int64_t[]){rows * CONTEXT, WIDTH}),
                                  m->wte);
    return tl_cross_entropy(ctx, logits, targets, NULL, NULL);
}

/* tl_shard_loss_fn: shard i of n takes BATCH / n consecutive sequences. */
static tl_tensor *shard_loss(tl_ctx *ctx, int shard, int n, void *user)
{
    int64_t rows = BATCH / n;
    return model_loss(ctx, user, shard * rows, rows);
}

/* Parses the value of flag into *out, which must lie in [min, max]. Prints
 * the flag, the value and the range, and returns false, otherwise. */
static bool parse_int(const char *flag, const char *text, long min, long max, int *out)
{
    char *end = NULL;
    errno = 0;
    /* Digits only: strtol alone would also take leading spaces and a sign. */
    long v = text[0] >= '0' && text[0] <= '9' ? strtol(text, &end, 10) : -1;
    if (errno != 0 || end == NULL || *end != '\0' || v < min || v > max) {
        fprintf(stderr, "thinklab-bench-step: %s '%s' must be a whole number from %ld to %ld\n",
                flag, text, min, max);
        return false;
    }
    *out = (int)v;
    return true;
}

static int usage(FILE *f, int status)
{
    fprintf(f, "usage: thinklab-bench-step [--threads N] [--steps N] [--warmup N] [--shards N] "
               "[--phases] [--op-threads]\n"
               "  --threads N   threads, 0 (default) or more than the cores for all cores\n"
               "  --steps N     timed steps, default 30\n"
               "  --warmup N    untimed steps before them, default 5\n"
               "  --shards N    data-parallel shards, a divisor of the batch of 12; 0 (default)\n"
               "                takes one per thread. More shards than threads (under\n"
               "                taskset, say) times the sharded work on fewer cores\n"
               "  --phases      also print the median time of forward, backward and the\n"
               "                optimizer (one figure with shards, which run them together)\n"
               "  --op-threads  with 2 or more threads, split each op and sgemm over the\n"
               "                threads instead of running data-parallel shards (so not\n"
               "                with --shards above 1)\n");
    return status;
}

/* Returns 0 to run, 1 after --help, 2 on a usage error. */
static int parse_options(int argc, char **argv, bench_options *o)
{
    *o = (bench_options){.threads = 0, .steps = 30, .warmup = 5};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has_value = i + 1 < argc;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            return usage(stdout, 1);
        } else if (strcmp(a, "--phases") == 0) {
            o->phases = true;
        } else if (strcmp(a, "--op-threads") == 0) {
            o->op_threads = true;
        } else if (has_value && strcmp(a, "--threads") == 0) {
            if (!parse_int(a, argv[++i], 0, 1024, &o->threads))
                return 2;
        } else if (has_value && strcmp(a, "--steps") == 0) {
            /* The bound keeps the timing arrays small. */
            if (!parse_int(a, argv[++i], 1, 1000000, &o->steps))
                return 2;
        } else if (has_value && strcmp(a, "--warmup") == 0) {
            if (!parse_int(a, argv[++i], 0, 1000000, &o->warmup))
                return 2;
        } else if (has_value && strcmp(a, "--shards") == 0) {
            if (!parse_int(a, argv[++i], 0, BATCH, &o->shards))
                return 2;
            if (o->shards > 0 && BATCH % o->shards != 0) {
                fprintf(stderr, "thinklab-bench-step: --shards %d does not divide the batch of %d; "
                                "use 1, 2, 3, 4, 6 or 12\n", o->shards, BATCH);
                return 2;
            }
        } else {
            fprintf(stderr, "thinklab-bench-step: unknown or incomplete option '%s'\n", a);
            return usage(stderr, 2);
        }
    }
    /* --op-threads runs the whole batch as one shard and would ignore more. */
    if (o->op_threads && o->shards > 1) {
        fprintf(stderr, "thinklab-bench-step: --shards %d cannot be combined with --op-threads, "
                        "which runs the whole batch on one context; drop one of them\n",
                o->shards);
        return 2;
    }
    return 0;
}

int main(int argc, char **argv)
{
    bench_options opt;
    int rc = parse_options(argc, argv, &opt);
    if (rc)
        return rc == 1 ? 0 : rc;
    int threads = tl_threads_set(opt.threads);
    if (opt.threads > threads)
        printf("--threads %d is more than %s: running on %d\n", opt.threads,
               threads < tl_cores_available() ? "OMP_THREAD_LIMIT allows" : "the cores",
               threads);
    char desc[256];
    printf("thinklab step benchmark: GPT-2 style, V %d, context %d, C %d, H %d, %d layers, "
           "batch %d\n%s\n", VOCAB, CONTEXT, WIDTH, HEADS, LAYERS, BATCH,
           tl_threads_describe(desc, sizeof desc));

    bench_model m;
    tl_ctx *ctx = tl_ctx_new(0);
    if (!ctx || model_init(&m, 1) != TL_OK) {
        fprintf(stderr, "thinklab-bench-step: setup failed: %s\n", tl_errmsg());
        return 1;
    }
    /* With more than one thread (or --shards above 1) the step runs as
     * data-parallel shards unless --op-threads requests threads inside each
     * op instead. */
    int n_shards = opt.shards;
    if (n_shards == 0) {
        n_shards = tl_threads_get();
        while (BATCH % n_shards)
            n_shards--;
    }
    tl_shards *shards = NULL;
    if (n_shards > 1 && !opt.op_threads) {
        shards = tl_shards_new(m.params, n_shards, 0);
        if (!shards) {
            fprintf(stderr, "thinklab-bench-step: setup failed: %s\n", tl_errmsg());
            return 1;
        }
        printf("parallel: %d data-parallel shards of %d sequence%s\n", n_shards, BATCH / n_shards,
               BATCH / n_shards == 1 ? "" : "s");
    } else if (tl_threads_get() > 1) {
        printf("parallel: threads inside each op and sgemm\n");
    } else {
        printf("parallel: none (1 thread)\n");
    }
    printf("parameters %lld\n", (long long)tl_params_numel(m.params));

    /* Random ids and positions 0..T-1, kept outside the arena. */
    static int32_t ids[BATCH * CONTEXT], pos[BATCH * CONTEXT], targets[BATCH * CONTEXT];
    bench_batch batch = {&m, ids, pos, targets};
    tl_rng rng;
    tl_rng_seed(&rng, 2);
    tl_optim_config adamw = tl_optim_default();
    int total = opt.warmup + opt.steps;
    double *times = malloc((size_t)total * sizeof *times);
    double *t_fwd = calloc((size_t)total, sizeof *t_fwd);
    double *t_bwd = calloc((size_t)total, sizeof *t_bwd);
    double *t_opt = calloc((size_t)total, sizeof *t_opt);
    double *t_cpu = calloc((size_t)total, sizeof *t_cpu);
    if (!times || !t_fwd || !t_bwd || !t_opt || !t_cpu) {
        fprintf(stderr, "thinklab-bench-step: could not allocate timings for %d steps\n", total);
        return 1;
    }
    double flops = 0.0, first_loss = 0.0, last_loss = 0.0;

    for (int s = 0; s < total; s++) {
        for (int i = 0; i < BATCH * CONTEXT; i++) {
            ids[i] = (int32_t)tl_rng_below(&rng, VOCAB);
            targets[i] = (int32_t)tl_rng_below(&rng, VOCAB);
            pos[i] = i % CONTEXT;
        }
        tl_ctx_reset_flops(ctx);
        double cpu0 = clock_ms(CLOCK_PROCESS_CPUTIME_ID);
        double t0 = now_ms(), t1, t2;
        tl_params_zero_grad(m.params);
        double loss = 0.0;
        if (shards) {
            /* Forward and backward run together inside the shards. */
            t1 = t0;
            if (tl_shards_backward(shards, shard_loss, &batch, &loss) != TL_OK) {
                fprintf(stderr, "thinklab-bench-step: step %d failed: %s\n", s, tl_errmsg());
                return 1;
            }
            t2 = now_ms();
        } else {
            tl_tensor *l = model_loss(ctx, &batch, 0, BATCH);
            t1 = now_ms();
            if (!l || tl_backward(ctx, l) != TL_OK) {
                fprintf(stderr, "thinklab-bench-step: step %d failed: %s\n", s, tl_errmsg());
                return 1;
            }
            loss = tl_f32(l)[0];
            t2 = now_ms();
        }
        /* Clipping to norm 1 is folded into the update, and the shards
         * computed the norm while summing their gradients. */
        double norm = shards ? tl_shards_grad_norm(shards) : tl_grad_norm(m.params);
        if (tl_optim_step_scaled(m.params, &adamw, 1e-3f, s + 1, tl_clip_scale(norm, 1.0)) !=
            TL_OK) {
            fprintf(stderr, "thinklab-bench-step: optimizer failed: %s\n", tl_errmsg());
            return 1;
        }
        double t3 = now_ms();
        last_loss = loss;
        if (s == 0)
            first_loss = last_loss;
        if (shards) {
            flops = tl_shards_flops(shards);
            for (int i = 0; i < n_shards; i++)
                tl_ctx_reset_flops(tl_shards_ctx(shards, i));
            tl_shards_reset(shards);
        } else {
            flops = tl_ctx_flops_forward(ctx) + tl_ctx_flops_backward(ctx);
            tl_ctx_reset(ctx);
        }
        double t4 = now_ms();
        t_cpu[s] = clock_ms(CLOCK_PROCESS_CPUTIME_ID) - cpu0;
        times[s] = t4 - t0;
        t_fwd[s] = t1 - t0;
        t_bwd[s] = t2 - t1;
        t_opt[s] = t3 - t2;
    }

    double *timed = times + opt.warmup;
    double mean = 0.0;
    for (int s = 0; s < opt.steps; s++)
        mean += timed[s] / opt.steps;
    double med = median(timed, opt.steps);
    double best = timed[0]; /* sorted by median() */
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("loss %.4f at step 0, %.4f at step %d (random targets: ln %d = 4.17)\n", first_loss,
           last_loss, total - 1, VOCAB);
    printf("steps %d after %d warm-up: median %.2f ms/step, min %.2f, mean %.2f\n", opt.steps,
           opt.warmup, med, best, mean);
    /* CPU time sums over threads; on a busy machine it moves less than the
     * wall time, but it includes OpenMP threads spinning at barriers. */
    printf("median CPU time %.2f ms/step (all threads)\n", median(t_cpu + opt.warmup, opt.steps));
    printf("FLOPs per step %.3f G (counted by ops), %.2f GFLOP/s at the median\n", flops * 1e-9,
           flops * 1e-9 / (med * 1e-3));
    size_t arena = shards ? tl_shards_arena_peak(shards) : tl_ctx_arena_peak(ctx);
    printf("arena peak %.1f MiB (all contexts), peak RSS %.1f MiB\n", (double)arena / (1 << 20),
           (double)ru.ru_maxrss / 1024.0);
    if (opt.phases && shards) {
        printf("median phases: forward + backward in shards %.2f ms, clip + AdamW %.2f ms\n",
               median(t_bwd + opt.warmup, opt.steps), median(t_opt + opt.warmup, opt.steps));
    } else if (opt.phases) {
        printf("median phases: forward %.2f ms, backward %.2f ms, clip + AdamW %.2f ms\n",
               median(t_fwd + opt.warmup, opt.steps), median(t_bwd + opt.warmup, opt.steps),
               median(t_opt + opt.warmup, opt.steps));
    }
    free(times);
    free(t_fwd);
    free(t_bwd);
    free(t_opt);
    free(t_cpu);
    tl_shards_free(shards);
    tl_params_free(m.params);
    tl_ctx_free(ctx);
    return 0;
}
