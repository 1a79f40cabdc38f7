/* The reducer's settings from THINKLAB_MPI_* environment variables, so that
 * `mpirun -x THINKLAB_MPI_DETERMINISTIC=1 thinklab run x.lua` needs no
 * change to the script. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>

#include "dist/dist_internal.h"

/* Parses variable name as a number in [min, max] into *out; leaves *out
 * when the variable is unset or empty. */
static tl_status env_number(const char *name, double min, double max, double *out)
{
    const char *text = getenv(name);
    if (!text || !text[0])
        return TL_OK;
    char *end = NULL;
    errno = 0;
    double v = strtod(text, &end);
    if (errno != 0 || *end != '\0' || !isfinite(v) || v < min || v > max)
        return tl_seterr(TL_EINVAL, "%s='%s' is invalid: expected a number in [%g, %g]", name,
                         text, min, max);
    *out = v;
    return TL_OK;
}

tl_status tl_dist_config_from_env(tl_dist_config *cfg)
{
    tl_dist_config c = tl_dist_config_default();
    double bucket = (double)c.bucket_bytes, deterministic = c.deterministic ? 1 : 0;
    double timeout = c.timeout_s, check = (double)c.check_every;
    tl_status st;
    if ((st = env_number("THINKLAB_MPI_BUCKET_BYTES", 4, 1e12, &bucket)) != TL_OK ||
        (st = env_number("THINKLAB_MPI_DETERMINISTIC", 0, 1, &deterministic)) != TL_OK ||
        (st = env_number("THINKLAB_MPI_TIMEOUT", 0, 1e9, &timeout)) != TL_OK ||
        (st = env_number("THINKLAB_MPI_CHECK_EVERY", 0, 1e15, &check)) != TL_OK)
        return st;
    if (deterministic != 0 && deterministic != 1)
        return tl_seterr(TL_EINVAL, "THINKLAB_MPI_DETERMINISTIC=%g is invalid: expected 0 or 1",
                         deterministic);
    c.bucket_bytes = (size_t)bucket;
    c.deterministic = deterministic != 0;
    c.timeout_s = timeout;
    c.check_every = (int64_t)check;
    *cfg = c;
    return TL_OK;
}
