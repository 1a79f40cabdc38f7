/* The one thread setting for OpenBLAS and thinklab's own parallel loops.
 *
 * thinklab links the OpenMP build of OpenBLAS, so sgemm and the framework's
 * loops share a single OpenMP thread pool and can never oversubscribe the
 * cores. Parallel regions do not nest: inside one (a data-parallel shard,
 * thinklab/shards.h) every op and every sgemm runs on the calling thread. */
#ifndef THINKLAB_THREADS_H
#define THINKLAB_THREADS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Number of cores this process may run on (sched_getaffinity). */
int tl_cores_available(void);

/* Sets the thread count for OpenBLAS and for thinklab's loops. n = 0 picks the
 * available cores; a larger n than the cores, or than OMP_THREAD_LIMIT, is
 * clamped to them. Turns OpenMP's dynamic adjustment off, since OpenBLAS waits
 * for every thread it was given. Returns the count in force. */
int tl_threads_set(int n);
int tl_threads_get(void);

/* Writes a one-line description such as "threads 2 of 2 cores (OpenBLAS
 * 0.3.21, openmp)" into buf. 256 bytes are enough for every form. Returns buf. */
char *tl_threads_describe(char *buf, size_t size);

#ifdef __cplusplus
}
#endif
#endif
