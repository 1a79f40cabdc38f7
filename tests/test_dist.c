/* The data-parallel layer in one process (no mpirun): rank 0 of 1, the
 * thread share, THINKLAB_MPI_* parsing, reducer argument checks, and a
 * reduction that leaves gradients and loss alone. The runs under mpirun are
 * in tests/mpi/run.sh. */
#define _POSIX_C_SOURCE 200809L /* setenv, unsetenv */
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "thinklab/dist.h"
#include "thinklab/thinklab.h"

static void test_one_process(void)
{
    CHECK(tl_dist_init(NULL, NULL) == TL_OK);
    CHECK(!tl_dist_active());
    CHECK(tl_dist_rank() == 0);
    CHECK(tl_dist_world() == 1);
    CHECK(tl_dist_local_world() == 1);
    CHECK(tl_dist_default_reducer() == NULL);
    /* One local rank: the request passes unchanged, 0 still means every core. */
    CHECK(tl_dist_threads(0) == 0);
    CHECK(tl_dist_threads(3) == 3);
    tl_dist_barrier();
    tl_dist_finalize(false);
    tl_dist_finalize(true); /* one process: nothing to abort */
}

static void test_env_settings(void)
{
    tl_dist_config c;
    unsetenv("THINKLAB_MPI_BUCKET_BYTES");
    unsetenv("THINKLAB_MPI_DETERMINISTIC");
    unsetenv("THINKLAB_MPI_TIMEOUT");
    unsetenv("THINKLAB_MPI_CHECK_EVERY");
    CHECK(tl_dist_config_from_env(&c) == TL_OK);
    tl_dist_config d = tl_dist_config_default();
    CHECK(c.bucket_bytes == d.bucket_bytes);
    CHECK(c.deterministic == d.deterministic);
    CHECK(c.timeout_s == d.timeout_s);
    CHECK(c.check_every == d.check_every);

    setenv("THINKLAB_MPI_BUCKET_BYTES", "65536", 1);
    setenv("THINKLAB_MPI_DETERMINISTIC", "1", 1);
    setenv("THINKLAB_MPI_TIMEOUT", "2.5", 1);
    setenv("THINKLAB_MPI_CHECK_EVERY", "0", 1);
    CHECK(tl_dist_config_from_env(&c) == TL_OK);
    CHECK(c.bucket_bytes == 65536);
    CHECK(c.deterministic);
    CHECK(c.timeout_s == 2.5);
    CHECK(c.check_every == 0);

    static const struct {
        const char *name, *value;
    } bad[] = {
        {"THINKLAB_MPI_TIMEOUT", "soon"},
        {"THINKLAB_MPI_TIMEOUT", "-1"},
        {"THINKLAB_MPI_DETERMINISTIC", "0.5"},
        {"THINKLAB_MPI_DETERMINISTIC", "2"},
        {"THINKLAB_MPI_BUCKET_BYTES", "2"},
        {"THINKLAB_MPI_CHECK_EVERY", "10x"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        setenv(bad[i].name, bad[i].value, 1);
        CHECK_MSG(tl_dist_config_from_env(&c) == TL_EINVAL, "%s=%s accepted", bad[i].name,
                  bad[i].value);
        CHECK_MSG(strstr(tl_errmsg(), bad[i].name) != NULL, "message lacks %s: %s", bad[i].name,
                  tl_errmsg());
        unsetenv(bad[i].name);
    }
    unsetenv("THINKLAB_MPI_BUCKET_BYTES");
    unsetenv("THINKLAB_MPI_DETERMINISTIC");
    unsetenv("THINKLAB_MPI_TIMEOUT");
    unsetenv("THINKLAB_MPI_CHECK_EVERY");
}

static void test_reducer_checks(void)
{
    tl_dist_config c = tl_dist_config_default();
    c.bucket_bytes = 2;
    CHECK(tl_dist_reducer_new(&c) == NULL);
    CHECK(strstr(tl_errmsg(), "bucket_bytes") != NULL);
    c = tl_dist_config_default();
    c.timeout_s = -1;
    CHECK(tl_dist_reducer_new(&c) == NULL);
    CHECK(strstr(tl_errmsg(), "timeout_s") != NULL);
    c = tl_dist_config_default();
    c.check_every = -1;
    CHECK(tl_dist_reducer_new(&c) == NULL);
    CHECK(strstr(tl_errmsg(), "check_every") != NULL);
    tl_dist_reducer_free(NULL);
}

/* One process: the mean over one rank is the rank's own gradient and loss,
 * bit for bit, and every call is counted. */
static void test_reduce_one_process(void)
{
    tl_params *p = tl_params_new();
    int64_t shape[2] = {3, 5};
    CHECK(tl_params_add(p, "w", 2, shape, TL_INIT_NORMAL, 1.0f, 0) != NULL);
    tl_rng rng;
    tl_rng_seed(&rng, 4);
    CHECK(tl_params_alloc(p, &rng) == TL_OK);
    float *g = tl_params_grads(p);
    int64_t n = tl_params_numel(p);
    float expect[15];
    for (int64_t i = 0; i < n; i++)
        g[i] = expect[i] = 0.1f * (float)i - 0.7f;

    tl_dist_config c = tl_dist_config_default();
    c.deterministic = true;
    tl_dist_reducer *r = tl_dist_reducer_new(&c);
    CHECK(r != NULL);
    double loss = 2.5;
    CHECK(tl_dist_reduce_grads(p, &loss, r) == TL_OK);
    CHECK(tl_dist_reduce_grads(p, &loss, r) == TL_OK);
    CHECK(loss == 2.5);
    CHECK(memcmp(g, expect, sizeof expect) == 0);
    CHECK(tl_dist_reducer_stats(r)->calls == 2);
    CHECK(tl_dist_reduce_grads(p, &loss, NULL) == TL_EINVAL);
    CHECK(strstr(tl_errmsg(), "reduce_user") != NULL);
    tl_dist_reducer_free(r);
    tl_params_free(p);
}

/* Built without MPI, a launcher that starts two ranks is rejected, so two
 * copies never train apart. With MPI the same environment would start MPI,
 * which needs a real launcher, so that build skips this case. */
static void test_launcher_without_mpi(void)
{
    if (tl_dist_compiled())
        return;
    setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
    CHECK(tl_dist_init(NULL, NULL) == TL_EINVAL);
    CHECK(strstr(tl_errmsg(), "built without MPI") != NULL);
    setenv("OMPI_COMM_WORLD_SIZE", "1", 1);
    CHECK(tl_dist_init(NULL, NULL) == TL_OK);
    unsetenv("OMPI_COMM_WORLD_SIZE");
}

int main(void)
{
    unsetenv("THINKLAB_MPI");
    test_one_process();
    test_env_settings();
    test_reducer_checks();
    test_reduce_one_process();
    test_launcher_without_mpi();
    return gc_finish("data parallelism in one process");
}
