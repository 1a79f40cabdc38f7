#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <string.h>

#include <cblas.h>
#include <omp.h>

#include "internal.h"
#include "ops/gemm.h"

static int tl_nthreads = 0; /* 0 until tl_threads_set() runs */

int tl_cores_available(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0)
            return n;
    }
    return omp_get_num_procs();
}

int tl_threads_set(int n)
{
    int cores = tl_cores_available();
    if (n <= 0 || n > cores)
        n = cores;
    /* OpenBLAS's OpenMP build waits for every thread it was given, so OpenMP
     * must start them all. A team cut short by OMP_DYNAMIC or by
     * OMP_THREAD_LIMIT left a product spinning forever. */
    int limit = omp_get_thread_limit();
    if (n > limit)
        n = limit;
    omp_set_dynamic(0);
    tl_nthreads = n;
    omp_set_num_threads(n);
    omp_set_max_active_levels(1);
    openblas_set_num_threads(n);
    return n;
}

int tl_threads_get(void)
{
    if (tl_nthreads == 0)
        return tl_threads_set(0);
    return tl_nthreads;
}

char *tl_threads_describe(char *buf, size_t size)
{
    static const char *const parallel[] = {"sequential", "pthreads", "openmp"};
    int p = openblas_get_parallel();
    const char *core = openblas_get_corename();
    /* OPENBLAS_VERSION is the header's " OpenBLAS 0.3.21 ", spaces included. */
    const char *version = OPENBLAS_VERSION;
    while (*version == ' ')
        version++;
    int len = (int)strlen(version);
    while (len > 0 && version[len - 1] == ' ')
        len--;
    tl_gemm_kind kind = TL_GEMM_OPENBLAS;
    const char *products = "";
    if (!tl_gemm_setting_valid())
        products = "; THINKLAB_GEMM has an invalid value";
    else if (tl_gemm_kind_get(&kind) == TL_OK && kind == TL_GEMM_AVX2)
        products = "; large one-thread products (shards, 1 thread) use thinklab's AVX2 kernel";
    int cores = tl_cores_available(), limit = omp_get_thread_limit();
    char limited[48] = "";
    if (limit < cores)
        snprintf(limited, sizeof limited, ", at most %d by OMP_THREAD_LIMIT", limit);
    snprintf(buf, size, "threads %d of %d %s%s (%.*s built with %s, %s kernels%s)",
             tl_threads_get(), cores, cores == 1 ? "core" : "cores", limited, len, version,
             p >= 0 && p <= 2 ? parallel[p] : "unknown threading", core ? core : "unknown",
             products);
    return buf;
}

void tl_thread_range(int64_t n, int64_t *lo, int64_t *hi)
{
    int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    int64_t lines = (n + 15) / 16;
    int64_t a = lines * t / nt * 16, b = lines * (t + 1) / nt * 16;
    *lo = a < n ? a : n;
    *hi = b < n ? b : n;
}
