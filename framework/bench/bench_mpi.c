/* Data-parallel step benchmark: the trainer's full step (sample, forward,
 * backward, gradient reduction, clip, AdamW) timed on every rank, with
 * bench_mpi.sh starting it at 1 and 2 ranks.
 *
 *   mpirun -np N thinklab-bench-mpi [--steps 30] [--warmup 5] [--batch 12]
 *                                   [--threads 1] [--deterministic]
 *                                   [--bucket-bytes N]
 *
 * Model: the plugin model of 4 LLaMA-style transformer layers, C = 128,
 * H = 4, context 64, vocabulary 65, on 200k random token ids; --batch rows
 * per rank, so N ranks process N times the tokens of one (weak scaling).
 * Rank 0 prints the median step time, the global tokens per second, the
 * mean time per step inside the reduction (which includes waiting for the
 * slowest rank) with its share of the step, and the median time of the
 * reduction alone when all ranks enter it together. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "thinklab/dist.h"
#include "thinklab/model.h"
#include "thinklab/thinklab.h"

enum { VOCAB = 65, CONTEXT = 64, WIDTH = 128, HEADS = 4, LAYERS = 4, N_TOKENS = 200000 };

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int fail(const char *what)
{
    fprintf(stderr, "bench_mpi: rank %d: %s: %s\n", tl_dist_rank(), what, tl_errmsg());
    tl_dist_finalize(true);
    return 1;
}

int main(int argc, char **argv)
{
    int steps = 30, warmup = 5, batch = 12, threads = 1;
    tl_dist_config dc = tl_dist_config_default();
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--deterministic") == 0)
            dc.deterministic = true;
        else if (i + 1 < argc && strcmp(argv[i], "--steps") == 0)
            steps = atoi(argv[++i]);
        else if (i + 1 < argc && strcmp(argv[i], "--warmup") == 0)
            warmup = atoi(argv[++i]);
        else if (i + 1 < argc && strcmp(argv[i], "--batch") == 0)
            batch = atoi(argv[++i]);
        else if (i + 1 < argc && strcmp(argv[i], "--threads") == 0)
            threads = atoi(argv[++i]);
        else if (i + 1 < argc && strcmp(argv[i], "--bucket-bytes") == 0)
            dc.bucket_bytes = (size_t)atoll(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_mpi [--steps N] [--warmup N] [--batch B] "
                            "[--threads T] [--deterministic] [--bucket-bytes N]\n");
            return 2;
        }
    }
    if (steps < 1 || warmup < 0 || batch < 1 || threads < 1) {
        fprintf(stderr, "bench_mpi: steps, batch and threads must be >= 1, warmup >= 0\n");
        return 2;
    }
    if (tl_dist_init(&argc, &argv) != TL_OK)
        return fail("tl_dist_init");
    int rank = tl_dist_rank(), world = tl_dist_world();
    tl_dist_reducer *reducer = tl_dist_reducer_new(&dc);
    if (!reducer)
        return fail("tl_dist_reducer_new");

    tl_rng rng;
    tl_rng_seed(&rng, 1);
    tl_tokens tokens = {.ids = malloc(N_TOKENS * sizeof(int32_t)), .n = N_TOKENS};
    if (!tokens.ids) {
        tl_seterr(TL_ENOMEM, "no memory for the token ids");
        return fail("malloc");
    }
    for (int64_t i = 0; i < N_TOKENS; i++)
        tokens.ids[i] = (int32_t)tl_rng_below(&rng, VOCAB);
    tl_model_config mc = tl_model_config_default(TL_BLOCK_LLAMA, VOCAB, WIDTH, HEADS, CONTEXT,
                                                 LAYERS);
    tl_model *m = tl_model_new(&mc, &rng);
    if (!m)
        return fail("tl_model_new");

    tl_train_config c = tl_train_config_default();
    c.batch_size = batch;
    c.context = CONTEXT;
    c.steps = warmup + steps;
    c.schedule.warmup = 1;
    c.threads = threads;
    c.eval_batches = 1;
    c.progress_every = 0;
    c.rank = rank;
    c.world = world;
    c.reduce_grads = tl_dist_reduce_grads;
    c.reduce_user = reducer;
    tl_train_data data = {.train = &tokens};
    tl_trainer *tr = tl_trainer_new(m, &data, &c);
    if (!tr)
        return fail("tl_trainer_new");

    double *times = malloc((size_t)steps * sizeof *times);
    double reduce_start = 0;
    for (int s = 0; s < warmup + steps; s++) {
        if (s == warmup)
            reduce_start = tl_dist_reducer_stats(reducer)->seconds;
        double t0 = now_s();
        if (tl_trainer_step(tr) != TL_OK)
            return fail("tl_trainer_step");
        if (s >= warmup)
            times[s - warmup] = now_s() - t0;
    }
    double reduce_s = (tl_dist_reducer_stats(reducer)->seconds - reduce_start) / steps;
    qsort(times, (size_t)steps, sizeof *times, compare_double);
    double med = times[steps / 2];

    /* The reduction alone, every rank entering together after a barrier:
     * the most that overlapping it with backward could save per step. */
    tl_params *params = tl_model_params(m);
    double *comm = malloc((size_t)steps * sizeof *comm);
    for (int s = 0; s < steps; s++) {
        double loss = 0;
        tl_dist_barrier();
        double t0 = now_s();
        if (tl_dist_reduce_grads(params, &loss, reducer) != TL_OK)
            return fail("tl_dist_reduce_grads");
        comm[s] = now_s() - t0;
    }
    qsort(comm, (size_t)steps, sizeof *comm, compare_double);
    double comm_med = comm[steps / 2];
    free(comm);
    if (rank == 0) {
        int64_t numel = tl_params_numel(tl_model_params(m));
        printf("ranks %d, threads/rank %d, batch/rank %d x %d tokens, %lld parameters "
               "(%.1f MB of gradients), %s reduction, bucket %zu bytes\n",
               world, tl_threads_get(), batch, CONTEXT, (long long)numel,
               (double)numel * 4 / 1e6, dc.deterministic ? "deterministic" : "allreduce",
               dc.bucket_bytes);
        printf("median step %.2f ms | %.0f tokens/s | reduce %.2f ms/step (%.1f%% of the step) "
               "| reduce alone %.2f ms (median after a barrier)\n",
               med * 1e3, (double)batch * CONTEXT * world / med, reduce_s * 1e3,
               100.0 * reduce_s / med, comm_med * 1e3);
    }
    free(times);
    tl_trainer_free(tr);
    tl_model_free(m);
    free(tokens.ids);
    tl_dist_reducer_free(reducer);
    tl_dist_finalize(false);
    return 0;
}
