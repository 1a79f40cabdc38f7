/* MPI start-up and shut-down, rank and world size, and the per-rank thread
 * share. Without TL_HAVE_MPI the same functions describe one process. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dist/dist_internal.h"

double tl_dist_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Rank and sizes in force; one process until tl_dist_init() starts MPI. */
static int dist_rank = 0, dist_world = 1, dist_local = 1;
static bool dist_active = false;
static tl_dist_reducer *dist_reducer = NULL; /* tl_dist_default_reducer() */

tl_dist_reducer *tl_dist_default_reducer(void) { return dist_reducer; }

bool tl_dist_active(void) { return dist_active; }
int tl_dist_rank(void) { return dist_rank; }
int tl_dist_world(void) { return dist_world; }
int tl_dist_local_world(void) { return dist_local; }

/* Whether tl_dist_init() should start MPI: under a launcher, or forced. */
static bool mpi_wanted(void)
{
    const char *force = getenv("THINKLAB_MPI");
    if (force && strcmp(force, "0") == 0)
        return false;
    if (force && strcmp(force, "1") == 0)
        return true;
    const char *names[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (getenv(names[i]))
            return true;
    return false;
}

int tl_dist_threads(int requested)
{
    if (dist_local <= 1)
        return requested;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int share = cores > 0 ? (int)(cores / dist_local) : 1;
    if (share < 1)
        share = 1;
    return requested > 0 && requested < share ? requested : share;
}

#ifdef TL_HAVE_MPI

MPI_Comm tl_dist_comm = MPI_COMM_NULL;
static bool dist_started_mpi = false; /* this library called MPI_Init_thread */

bool tl_dist_compiled(void) { return true; }

void tl_dist_check(int rc, const char *call)
{
    if (rc == MPI_SUCCESS)
        return;
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS)
        snprintf(text, sizeof text, "MPI error code %d", rc);
    fprintf(stderr, "thinklab: rank %d: %s failed: %s; aborting all %d ranks\n", dist_rank, call,
            text, dist_world);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    abort(); /* MPI_Abort does not return; this keeps the contract if it did */
}

tl_status tl_dist_init(int *argc, char ***argv)
{
    if (dist_active || !mpi_wanted())
        return TL_OK;
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
        int provided = 0;
        int rc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
        if (rc != MPI_SUCCESS)
            return tl_seterr(TL_EIO, "MPI_Init_thread failed (code %d); check the output of "
                                     "mpirun above, or set THINKLAB_MPI=0 to run as one process",
                             rc);
        dist_started_mpi = true;
    }
    /* Errors come back as codes that tl_dist_check reports with the rank. */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    tl_dist_check(MPI_Comm_dup(MPI_COMM_WORLD, &tl_dist_comm), "MPI_Comm_dup");
    tl_dist_check(MPI_Comm_set_errhandler(tl_dist_comm, MPI_ERRORS_RETURN),
                  "MPI_Comm_set_errhandler");
    tl_dist_check(MPI_Comm_rank(tl_dist_comm, &dist_rank), "MPI_Comm_rank");
    tl_dist_check(MPI_Comm_size(tl_dist_comm, &dist_world), "MPI_Comm_size");
    MPI_Comm local;
    tl_dist_check(MPI_Comm_split_type(tl_dist_comm, MPI_COMM_TYPE_SHARED, dist_rank,
                                      MPI_INFO_NULL, &local),
                  "MPI_Comm_split_type");
    tl_dist_check(MPI_Comm_size(local, &dist_local), "MPI_Comm_size");
    MPI_Comm_free(&local);
    dist_active = true;
    if (dist_world > 1) {
        tl_dist_config cfg;
        if (tl_dist_config_from_env(&cfg) != TL_OK ||
            !(dist_reducer = tl_dist_reducer_new(&cfg))) {
            char message[512];
            snprintf(message, sizeof message, "%s", tl_errmsg());
            return tl_seterr(tl_lasterr(), "rank %d: %s", dist_rank, message);
        }
    }
    return TL_OK;
}

void tl_dist_barrier(void)
{
    if (dist_active)
        tl_dist_check(MPI_Barrier(tl_dist_comm), "MPI_Barrier");
}

void tl_dist_finalize(bool failed)
{
    if (!dist_active)
        return;
    if (failed && dist_world > 1) {
        fprintf(stderr, "thinklab: rank %d failed; aborting all %d ranks\n", dist_rank,
                dist_world);
        fflush(stderr);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    tl_dist_reducer_free(dist_reducer);
    dist_reducer = NULL;
    MPI_Comm_free(&tl_dist_comm);
    dist_active = false;
    if (dist_started_mpi)
        MPI_Finalize();
    dist_started_mpi = false;
    dist_rank = 0;
    dist_world = dist_local = 1;
}

#else /* built without MPI */

bool tl_dist_compiled(void) { return false; }

/* Returns the rank count announced by an MPI launcher's environment, 1 when
 * it announces none, or 0 when a launcher is present without a count. */
static int launcher_world(void)
{
    static const char *const size_vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"};
    for (size_t i = 0; i < sizeof size_vars / sizeof size_vars[0]; i++) {
        const char *v = getenv(size_vars[i]);
        if (v && v[0])
            return atoi(v) > 0 ? atoi(v) : 1;
    }
    return getenv("PMIX_RANK") ? 0 : 1;
}

tl_status tl_dist_init(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    if (!mpi_wanted())
        return TL_OK;
    int world = launcher_world();
    if (world != 1)
        return tl_seterr(TL_EINVAL, "this process was started by an MPI launcher%s, but "
                                    "thinklab was built without MPI, so every rank would train "
                                    "alone: install libopenmpi-dev and rebuild (cmake "
                                    "-DTL_MPI=ON), or run one process without mpirun",
                         world > 1 ? " with several ranks" : "");
    return TL_OK;
}

void tl_dist_barrier(void) {}

void tl_dist_finalize(bool failed) { (void)failed; }

#endif
