#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "thinklab/status.h"

static _Thread_local char tl_message[2048];
static _Thread_local tl_status tl_last = TL_OK;

static const char *const tl_status_names[] = {
    [TL_OK] = "ok",
    [TL_EINVAL] = "invalid argument",
    [TL_ESHAPE] = "shape mismatch",
    [TL_ENOMEM] = "out of memory",
    [TL_EIO] = "input/output error",
    [TL_ENOTFOUND] = "not found",
    [TL_EABI] = "ABI mismatch",
    [TL_ENUMERIC] = "non-finite value",
    [TL_ESTATE] = "invalid state",
    [TL_EFORMAT] = "invalid format",
    [TL_EINTR] = "interrupted",
};
_Static_assert(sizeof(tl_status_names) / sizeof(tl_status_names[0]) == TL_STATUS_COUNT,
               "every tl_status needs a name");

const char *tl_status_name(tl_status status)
{
    if ((unsigned)status >= TL_STATUS_COUNT)
        return "unknown status";
    return tl_status_names[status];
}

const char *tl_errmsg(void) { return tl_message; }

tl_status tl_lasterr(void) { return tl_last; }

tl_status tl_seterr(tl_status status, const char *fmt, ...)
{
    /* Format into a copy first: callers may pass tl_errmsg() as an argument,
     * and vsnprintf into the buffer it reads from is undefined. */
    char text[sizeof tl_message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    memcpy(tl_message, text, sizeof text);
    tl_last = status;
    return status;
}

void tl_clearerr(void)
{
    tl_message[0] = '\0';
    tl_last = TL_OK;
}
