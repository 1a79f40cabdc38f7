/* Status codes and the per-thread error message.
 *
 * Every fallible function returns a tl_status, or NULL for functions that return
 * a pointer. The message that goes with the failure names the value and the fix;
 * tl_errmsg() returns it until the next failure on the same thread.
 * Library code never calls exit(). */
#ifndef THINKLAB_STATUS_H
#define THINKLAB_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum tl_status {
    TL_OK = 0,
    TL_EINVAL,    /* invalid argument or configuration value */
    TL_ESHAPE,    /* tensor shapes do not fit the operation */
    TL_ENOMEM,    /* allocation failed */
    TL_EIO,       /* file could not be read or written */
    TL_ENOTFOUND, /* file, symbol, parameter or option not found */
    TL_EABI,      /* plugin built against another ABI */
    TL_ENUMERIC,  /* NaN or infinity where a finite value is required */
    TL_ESTATE,    /* call made in the wrong order */
    TL_EFORMAT,   /* file exists but its content is not what was expected */
    TL_EINTR,     /* stopped early by a signal (tl_train_interrupt) */
    TL_STATUS_COUNT
} tl_status;

/* Returns a short constant name such as "invalid argument". */
const char *tl_status_name(tl_status status);

/* Returns the message of the last failure on this thread, or "" if none. */
const char *tl_errmsg(void);

/* Stores a printf-formatted message for this thread and returns status. The
 * arguments may include tl_errmsg(): the message is formatted into a copy. */
tl_status tl_seterr(tl_status status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Returns the status of the last failure on this thread (TL_OK if none). */
tl_status tl_lasterr(void);

void tl_clearerr(void);

#ifdef __cplusplus
}
#endif
#endif
