/* Data-parallel training over MPI.
 *
 * Every rank has a full copy of the model. It draws the same global batch of
 * world*B windows as every other rank and keeps its own B rows (tl_sampler). After backward,
 * tl_dist_reduce_grads(), installed as the trainer's reduce_grads hook,
 * replaces each rank's gradient block by the mean over all ranks and the
 * step's loss by the mean loss. Clipping and the optimizer then run on the
 * same gradient on every rank, so the parameters stay identical and N ranks
 * with batch size b train like one process with batch size N*b.
 *
 * What is exact and what is not. A single process computes the mean over N*b
 * rows inside sgemm, in an order that differs from "mean of N per-rank
 * means", so N ranks x b match 1 process x N*b only within float rounding
 * (the tests state the tolerance). Two stronger properties do hold:
 *   - In both modes every rank receives the same reduced gradient (Open MPI
 *     returns one result to all ranks; the deterministic mode guarantees it
 *     by construction), so the ranks' parameters stay bit-identical. A
 *     periodic check (check_every) compares a hash of the parameters across
 *     ranks and fails the step when they differ.
 *   - With deterministic set, the reduced gradient is a pure function of the
 *     per-rank gradients: each element is the sum in rank order, in double,
 *     divided by world and rounded once to float. It does not depend on the
 *     MPI library's reduction algorithm, on the bucket size or on timing, so
 *     a rerun with the same world size, batch and thread count repeats the
 *     same bits.
 * The default mode (one MPI_Allreduce per bucket) leaves the summation order
 * to the MPI library, which may pick another algorithm for another message
 * size or rank count.
 *
 * Built without MPI (cmake -DTL_MPI=OFF, or Open MPI not found), the same
 * functions exist: tl_dist_init() reports one process, tl_dist_rank() is 0,
 * tl_dist_world() is 1, and a launcher that starts several ranks is
 * rejected, so N copies never each train on their own.
 *
 * Failures. Collectives run on a duplicate of MPI_COMM_WORLD whose error
 * handler is MPI_ERRORS_RETURN. A failing MPI call prints
 * "thinklab: rank R: MPI_Allreduce failed: <MPI's message>" on stderr and
 * calls MPI_Abort, which ends every rank: a rank that returned an error
 * instead would leave its peers waiting in the next collective. A collective
 * that has not finished after timeout_s seconds (a peer that hangs, or one
 * that died without the launcher noticing) prints the rank and the call and
 * aborts the same way. These are the only places where the library prints
 * or ends the process. */
#ifndef THINKLAB_DIST_H
#define THINKLAB_DIST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "thinklab/params.h"
#include "thinklab/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- process set-up ------------------------------------------------------- */

/* Returns true when this libthinklab was built with MPI. */
bool tl_dist_compiled(void);

/* Initialises MPI with MPI_Init_thread(MPI_THREAD_FUNNELED) when the process
 * was started by an MPI launcher, detected through the environment variables
 * OMPI_COMM_WORLD_SIZE (Open MPI's mpirun), PMI_SIZE (MPICH's Hydra, Intel
 * MPI) or PMIX_RANK (PMIx launchers such as srun --mpi=pmix). THINKLAB_MPI=1
 * initialises MPI without those, THINKLAB_MPI=0 never does. A plain
 * single-process run therefore never starts MPI. argc and argv may be NULL.
 * With more than one rank it also creates tl_dist_default_reducer(), which
 * can fail on an invalid THINKLAB_MPI_* variable. Calling it again is a
 * no-op. Rejects, when built without MPI, a launcher environment that
 * announces more than one rank. */
tl_status tl_dist_init(int *argc, char ***argv);

/* Returns true between a tl_dist_init() that started MPI and
 * tl_dist_finalize(). */
bool tl_dist_active(void);

/* This process's rank (0 without MPI) and the number of ranks (1). */
int tl_dist_rank(void);
int tl_dist_world(void);
/* Ranks on this machine, counted with MPI_Comm_split_type(MPI_COMM_TYPE_SHARED);
 * 1 without MPI. */
int tl_dist_local_world(void);

/* Threads one rank may use so that the ranks on this machine together use at
 * most its cores: min(requested, max(1, online cores / local ranks)), where
 * requested 0 means no limit of its own. Without MPI, or with one local
 * rank, returns requested unchanged (0 stays 0: every core). */
int tl_dist_threads(int requested);

/* Waits until every rank has called it (MPI_Barrier); returns at once
 * without MPI. */
void tl_dist_barrier(void);

/* Ends MPI when tl_dist_init() started it. With failed set and more than one
 * rank it calls MPI_Abort(1) instead of MPI_Finalize: the other ranks may be
 * blocked in a collective that this rank will never join, and MPI_Abort ends
 * them. Safe to call without MPI or twice. */
void tl_dist_finalize(bool failed);

/* ---- gradient reduction --------------------------------------------------- */

/* Default bucket: 1 MiB of floats per collective. */
enum { TL_DIST_BUCKET_BYTES_DEFAULT = 1 << 20 };

typedef struct tl_dist_config {
    /* Bytes of the gradient block reduced per collective, rounded down to
     * whole floats; 0 = TL_DIST_BUCKET_BYTES_DEFAULT. */
    size_t bucket_bytes;
    /* Reduce with MPI_Allgather and sum in rank order in double (see the
     * file comment). Costs world times the traffic and a bucket of scratch
     * per rank. */
    bool deterministic;
    /* Seconds a collective may take before every rank is aborted; 0 turns
     * the watchdog off. A rank that writes a checkpoint keeps the others
     * waiting in their next collective, so leave room for that. */
    double timeout_s;
    /* Steps between checks that every rank holds the same parameters (a
     * 64-bit hash compared across ranks); 0 = never. */
    int64_t check_every;
} tl_dist_config;

/* Returns the defaults: 1 MiB buckets, MPI_Allreduce, watchdog 600 s, a
 * parameter check every 100 steps. */
tl_dist_config tl_dist_config_default(void);

/* Time and traffic of the reductions so far, for benchmarks and logs. */
typedef struct tl_dist_stats {
    int64_t calls;        /* reduce_grads calls */
    int64_t collectives;  /* MPI collectives issued, buckets and loss included */
    double seconds;       /* wall time inside tl_dist_reduce_grads */
    double bytes;         /* gradient bytes this rank contributed */
} tl_dist_stats;

typedef struct tl_dist_reducer tl_dist_reducer;

/* Creates a reducer: checks cfg (the message names the field), allocates the
 * scratch of the deterministic mode, and starts the watchdog thread when
 * timeout_s > 0 and MPI is active. cfg NULL takes the defaults. Works
 * without MPI too, where reducing is a no-op. Returns NULL with a message. */
tl_dist_reducer *tl_dist_reducer_new(const tl_dist_config *cfg);
/* Stops the watchdog and frees the reducer. NULL is a no-op. */
void tl_dist_reducer_free(tl_dist_reducer *r);

/* The trainer's reduce_grads hook (tl_train_reduce_fn) with user = a
 * tl_dist_reducer. Replaces the gradient block of params by its mean over
 * all ranks and *loss by the mean loss. Every rank must call it at the same
 * step with the same parameter layout. An MPI failure aborts every rank (see
 * the file comment); diverged parameters return TL_ESTATE on every rank. */
tl_status tl_dist_reduce_grads(tl_params *params, double *loss, void *reducer);

const tl_dist_stats *tl_dist_reducer_stats(const tl_dist_reducer *r);

/* Fills *cfg with the defaults overridden by the environment:
 * THINKLAB_MPI_BUCKET_BYTES (bytes), THINKLAB_MPI_DETERMINISTIC (0 or 1),
 * THINKLAB_MPI_TIMEOUT (seconds, 0 = no watchdog) and
 * THINKLAB_MPI_CHECK_EVERY (steps, 0 = never). Rejects a value that is not a
 * number in range, naming the variable. */
tl_status tl_dist_config_from_env(tl_dist_config *cfg);

/* The reducer that tl_dist_init() creates from tl_dist_config_from_env()
 * when it starts MPI with more than one rank; NULL otherwise. The thinklab
 * command's trainers use it. tl_dist_finalize() frees it. */
tl_dist_reducer *tl_dist_default_reducer(void);

#ifdef __cplusplus
}
#endif
#endif
