/* State shared by the files of src/dist. */
#ifndef THINKLAB_DIST_INTERNAL_H
#define THINKLAB_DIST_INTERNAL_H

#include "thinklab/dist.h"

#ifdef TL_HAVE_MPI
#include <mpi.h>

/* Duplicate of MPI_COMM_WORLD with MPI_ERRORS_RETURN, used by every
 * thinklab collective; MPI_COMM_NULL before tl_dist_init(). */
extern MPI_Comm tl_dist_comm;

/* Checks the return code rc of the MPI call named call. On failure prints
 * "thinklab: rank R: CALL failed: MESSAGE" on stderr and aborts every rank;
 * does not return then. */
void tl_dist_check(int rc, const char *call);
#endif

/* The watchdog: a thread that aborts every rank when a collective bracketed
 * by tl_watchdog_enter/leave takes longer than its timeout. */
typedef struct tl_watchdog tl_watchdog;

/* Starts the thread; timeout_s > 0. Returns NULL with a message. */
tl_watchdog *tl_watchdog_start(double timeout_s);
void tl_watchdog_stop(tl_watchdog *w);
/* Marks the start of the collective call (a string literal) at step. */
void tl_watchdog_enter(tl_watchdog *w, const char *call, int64_t step);
void tl_watchdog_leave(tl_watchdog *w);

/* Monotonic clock in seconds. */
double tl_dist_now(void);

#endif
