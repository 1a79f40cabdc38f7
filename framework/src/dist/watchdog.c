/* The collective watchdog: one thread per reducer that wakes at least once a
 * second and aborts every rank when a bracketed collective has run longer
 * than the timeout. Open MPI's mpirun already ends the job when a rank exits
 * or is killed; the watchdog covers a peer that hangs without exiting, and
 * launchers that do not watch their ranks. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "dist/dist_internal.h"

struct tl_watchdog {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    double timeout_s;
    bool stop;
    const char *call;  /* collective in progress, NULL when none */
    int64_t step;
    double started;    /* tl_dist_now() when call began */
};

static void expire(const tl_watchdog *w, double waited)
{
    fprintf(stderr, "thinklab: rank %d: %s at step %lld timed out after %.0f s (limit %.0f s): "
                    "another rank has died or hangs; aborting all %d ranks\n",
            tl_dist_rank(), w->call, (long long)w->step, waited, w->timeout_s, tl_dist_world());
    fflush(stderr);
#ifdef TL_HAVE_MPI
    /* NOTE: MPI_Abort from this thread goes beyond MPI_THREAD_FUNNELED;
     * Open MPI 4.1 handles it (the tests rely on it), and exiting the
     * process below is the fallback if it returns. */
    MPI_Abort(MPI_COMM_WORLD, 1);
#endif
    _Exit(1);
}

static void *watch(void *arg)
{
    tl_watchdog *w = arg;
    pthread_mutex_lock(&w->lock);
    while (!w->stop) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 1;
        pthread_cond_timedwait(&w->wake, &w->lock, &until);
        if (w->call) {
            double waited = tl_dist_now() - w->started;
            if (waited > w->timeout_s)
                expire(w, waited);
        }
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

tl_watchdog *tl_watchdog_start(double timeout_s)
{
    tl_watchdog *w = calloc(1, sizeof *w);
    if (!w) {
        tl_seterr(TL_ENOMEM, "no memory for the collective watchdog");
        return NULL;
    }
    w->timeout_s = timeout_s;
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->wake, NULL);
    if (pthread_create(&w->thread, NULL, watch, w) != 0) {
        pthread_cond_destroy(&w->wake);
        pthread_mutex_destroy(&w->lock);
        free(w);
        tl_seterr(TL_ESTATE, "cannot start the collective watchdog thread; set timeout_s = 0 "
                             "to run without it");
        return NULL;
    }
    return w;
}

void tl_watchdog_stop(tl_watchdog *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    w->stop = true;
    pthread_cond_signal(&w->wake);
    pthread_mutex_unlock(&w->lock);
    pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->wake);
    pthread_mutex_destroy(&w->lock);
    free(w);
}

void tl_watchdog_enter(tl_watchdog *w, const char *call, int64_t step)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    w->call = call;
    w->step = step;
    w->started = tl_dist_now();
    pthread_mutex_unlock(&w->lock);
}

void tl_watchdog_leave(tl_watchdog *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    w->call = NULL;
    pthread_mutex_unlock(&w->lock);
}
