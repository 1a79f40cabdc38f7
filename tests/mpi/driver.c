/* Driver of the MPI tests (tests/mpi/run.sh starts it under mpirun).
 *
 *   mpi_driver train --steps K --batch B --out PREFIX [--deterministic]
 *                    [--bucket-bytes N] [--sgd] [--no-reduce] [--save-at S --checkpoint PATH]
 *                    [--resume PATH] [--die-at S] [--hang-at S] [--timeout SEC]
 *   mpi_driver compare FILE_A FILE_B TOLERANCE
 *
 * train builds the two-layer test model (width 32, Tiny Shakespeare chars),
 * trains it for K steps of B rows per rank with one thread per rank, and has
 * every rank write its parameter block (numel float32, native order) to
 * PREFIX.rankR.bin. --die-at makes rank 1 kill itself with SIGKILL before
 * step S, --hang-at makes rank 1 sleep there without exiting. --sgd trains
 * with SGD (momentum 0.9), whose update, unlike AdamW's, scales with the
 * gradient, so a wrong averaging factor shows. --no-reduce leaves out the
 * reduction hook: the negative control that each rank's own gradient gives
 * other parameters.
 *
 * compare prints the largest absolute difference between two such files and
 * exits 1 when it exceeds TOLERANCE; TOLERANCE 0 demands identical bytes. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "thinklab/dist.h"
#include "train_util.h"

typedef struct options {
    int64_t steps, batch;
    const char *out, *checkpoint, *resume;
    bool deterministic, sgd, no_reduce;
    size_t bucket_bytes;
    int64_t save_at, die_at, hang_at;
    double timeout_s;
} options;

static void usage_exit(const char *why)
{
    fprintf(stderr, "mpi_driver: %s\n(see the comment at the top of tests/mpi/driver.c)\n", why);
    exit(2);
}

static options parse(int argc, char **argv)
{
    options o = {.steps = 0, .batch = 0, .save_at = -1, .die_at = -1, .hang_at = -1,
                 .timeout_s = 60};
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--deterministic") == 0 || strcmp(a, "--sgd") == 0 ||
            strcmp(a, "--no-reduce") == 0) {
            o.deterministic |= strcmp(a, "--deterministic") == 0;
            o.sgd |= strcmp(a, "--sgd") == 0;
            o.no_reduce |= strcmp(a, "--no-reduce") == 0;
            continue;
        }
        if (!v)
            usage_exit("an option is missing its value");
        i++;
        if (strcmp(a, "--steps") == 0)
            o.steps = atoll(v);
        else if (strcmp(a, "--batch") == 0)
            o.batch = atoll(v);
        else if (strcmp(a, "--out") == 0)
            o.out = v;
        else if (strcmp(a, "--bucket-bytes") == 0)
            o.bucket_bytes = (size_t)atoll(v);
        else if (strcmp(a, "--save-at") == 0)
            o.save_at = atoll(v);
        else if (strcmp(a, "--checkpoint") == 0)
            o.checkpoint = v;
        else if (strcmp(a, "--resume") == 0)
            o.resume = v;
        else if (strcmp(a, "--die-at") == 0)
            o.die_at = atoll(v);
        else if (strcmp(a, "--hang-at") == 0)
            o.hang_at = atoll(v);
        else if (strcmp(a, "--timeout") == 0)
            o.timeout_s = atof(v);
        else
            usage_exit("unknown option");
    }
    if (o.steps < 1 || o.batch < 1 || !o.out)
        usage_exit("train needs --steps, --batch and --out");
    if (o.save_at >= 0 && !o.checkpoint)
        usage_exit("--save-at needs --checkpoint");
    return o;
}

/* Fails the run on this rank; tl_dist_finalize(true) then ends the others. */
static int fail(const char *what)
{
    fprintf(stderr, "mpi_driver: rank %d: %s: %s\n", tl_dist_rank(), what, tl_errmsg());
    tl_dist_finalize(true);
    return 1;
}

static int train(int argc, char **argv)
{
    options o = parse(argc, argv);
    if (tl_dist_init(&argc, &argv) != TL_OK)
        return fail("tl_dist_init");
    int rank = tl_dist_rank(), world = tl_dist_world();

    tl_dist_config dc = tl_dist_config_default();
    dc.deterministic = o.deterministic;
    dc.bucket_bytes = o.bucket_bytes;
    dc.timeout_s = o.timeout_s;
    dc.check_every = 1;
    tl_dist_reducer *reducer = tl_dist_reducer_new(&dc);
    if (!reducer)
        return fail("tl_dist_reducer_new");

    tu_data d;
    tu_data_load(&d);
    tl_model *m = tu_model(tl_tokenizer_vocab_size(d.tok), 2, false, NULL, 7);
    tl_train_config c = tu_config(o.steps);
    c.batch_size = o.batch;
    c.threads = 1;
    c.eval_batches = 0;
    c.rank = rank;
    c.world = world;
    if (o.sgd) {
        c.optim.kind = TL_OPTIM_SGD;
        c.optim.momentum = 0.9f;
        c.optim.weight_decay = 0.0f;
    }
    if (!o.no_reduce) {
        c.reduce_grads = tl_dist_reduce_grads;
        c.reduce_user = reducer;
    }
    tl_trainer *tr = tl_trainer_new(m, &d.data, &c);
    if (!tr)
        return fail("tl_trainer_new");
    if (o.resume && tl_trainer_load(tr, o.resume) != TL_OK)
        return fail("tl_trainer_load");

    while (tl_trainer_step_index(tr) < o.steps) {
        int64_t step = tl_trainer_step_index(tr);
        if (rank == 1 && step == o.die_at) {
            fprintf(stderr, "mpi_driver: rank 1 kills itself before step %lld\n",
                    (long long)step);
            fflush(stderr);
            raise(SIGKILL);
        }
        if (rank == 1 && step == o.hang_at) {
            fprintf(stderr, "mpi_driver: rank 1 hangs before step %lld\n", (long long)step);
            fflush(stderr);
            for (;;)
                pause();
        }
        if (tl_trainer_step(tr) != TL_OK)
            return fail("tl_trainer_step");
        if (rank == 0 && tl_trainer_step_index(tr) == o.save_at &&
            tl_trainer_save(tr, o.checkpoint) != TL_OK)
            return fail("tl_trainer_save");
    }

    char path[1024];
    snprintf(path, sizeof path, "%s.rank%d.bin", o.out, rank);
    FILE *f = fopen(path, "wb");
    tl_params *p = tl_model_params(m);
    size_t n = (size_t)tl_params_numel(p);
    if (!f || fwrite(tl_params_data(p), sizeof(float), n, f) != n || fclose(f) != 0) {
        tl_seterr(TL_EIO, "cannot write '%s'", path);
        return fail("writing the parameters");
    }
    const tl_dist_stats *s = tl_dist_reducer_stats(reducer);
    fprintf(stderr, "mpi_driver: rank %d of %d: %lld steps, B %lld, loss %.6f, %lld reduce "
                    "calls, %lld collectives, %.3f s reducing\n",
            rank, world, (long long)o.steps, (long long)o.batch, tl_trainer_stats(tr)->loss,
            (long long)s->calls, (long long)s->collectives, s->seconds);

    tl_trainer_free(tr);
    tl_model_free(m);
    tu_data_free(&d);
    tl_dist_reducer_free(reducer);
    tl_dist_finalize(false);
    return 0;
}

/* Reads a whole parameter file; exits 1 on failure. */
static float *read_floats(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "compare: cannot open '%s'\n", path);
        exit(1);
    }
    fseek(f, 0, SEEK_END);
    long bytes = ftell(f);
    fseek(f, 0, SEEK_SET);
    float *x = malloc((size_t)bytes + 1);
    if (!x || fread(x, 1, (size_t)bytes, f) != (size_t)bytes) {
        fprintf(stderr, "compare: cannot read '%s'\n", path);
        exit(1);
    }
    fclose(f);
    *n = (size_t)bytes / sizeof(float);
    return x;
}

static int compare(const char *a_path, const char *b_path, double tol)
{
    size_t na, nb;
    float *a = read_floats(a_path, &na), *b = read_floats(b_path, &nb);
    if (na != nb || na == 0) {
        fprintf(stderr, "compare: '%s' has %zu floats, '%s' %zu\n", a_path, na, b_path, nb);
        return 1;
    }
    double max_diff = 0, max_abs = 0;
    size_t worst = 0, differing = 0;
    for (size_t i = 0; i < na; i++) {
        double diff = fabs((double)a[i] - (double)b[i]);
        if (memcmp(&a[i], &b[i], sizeof(float)) != 0)
            differing++;
        if (diff > max_diff || isnan(diff)) {
            max_diff = isnan(diff) ? INFINITY : diff;
            worst = i;
        }
        if (fabs((double)a[i]) > max_abs)
            max_abs = fabs((double)a[i]);
    }
    printf("compare: %zu floats, %zu differ in their bits, max |a-b| %.3g at %zu (max |a| "
           "%.3g), tolerance %.3g\n",
           na, differing, max_diff, worst, max_abs, tol);
    bool ok = tol == 0 ? differing == 0 : max_diff <= tol;
    free(a);
    free(b);
    return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "train") == 0)
        return train(argc, argv);
    if (argc == 5 && strcmp(argv[1], "compare") == 0)
        return compare(argv[2], argv[3], atof(argv[4]));
    usage_exit("expected 'train ...' or 'compare A B TOLERANCE'");
    return 2;
}
