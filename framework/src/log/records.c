/* /grad_norms and /token_grads: per-parameter and per-token gradient norms. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "log_internal.h"

/* Checks the names of the parameters of a resumed run against the stored
 * /grad_norms/names. */
static tl_status check_stored_names(tl_log *log, int64_t n_params, const char *const *names)
{
    const char *p = log->path;
    if (n_params != log->n_params)
        return tl_seterr(TL_EINVAL, "tl_log_grad_norms_init: /grad_norms of run log '%s' has "
                                    "%lld parameters, this run %lld; give the run a new log path",
                         p, (long long)log->n_params, (long long)n_params);
    hid_t dset = H5I_INVALID_HID, str = H5I_INVALID_HID;
    char **stored = calloc((size_t)n_params, sizeof *stored);
    if (!stored)
        return tl_seterr(TL_ENOMEM, "no memory for %lld parameter names", (long long)n_params);
    tl_status st = TL_OK;
    TL_H5(p, str = tl_log_str_type());
    TL_H5(p, dset = H5Dopen2(log->g_grad_norms, "names", H5P_DEFAULT));
    hid_t space = H5Dget_space(dset);
    hsize_t n_stored = 0;
    bool fits = space >= 0 && H5Sget_simple_extent_ndims(space) == 1 &&
                H5Sget_simple_extent_dims(space, &n_stored, NULL) == 1 &&
                n_stored == (hsize_t)n_params;
    if (space >= 0)
        H5Sclose(space);
    if (!fits) {
        st = tl_seterr(TL_EFORMAT, "run log '%s': /grad_norms/names does not hold one name per "
                                   "column of /grad_norms/values; the file is damaged", p);
        goto out;
    }
    TL_H5(p, H5Dread(dset, str, H5S_ALL, H5S_ALL, H5P_DEFAULT, stored));
    for (int64_t i = 0; i < n_params && st == TL_OK; i++)
        if (!stored[i] || strcmp(stored[i], names[i]) != 0)
            st = tl_seterr(TL_EINVAL, "tl_log_grad_norms_init: parameter %lld of /grad_norms "
                                      "in run log '%s' is '%s', in this run '%s'; give the run "
                                      "a new log path", (long long)i, p,
                           stored[i] ? stored[i] : "", names[i]);
    goto out;

fail:
    st = TL_EIO;
out:
    for (int64_t i = 0; i < n_params; i++)
        H5free_memory(stored[i]);
    if (dset >= 0)
        H5Dclose(dset);
    if (str >= 0)
        H5Tclose(str);
    free(stored);
    return st;
}

tl_status tl_log_grad_norms_init(tl_log *log, int64_t n_params, const char *const *names)
{
    if (!tl_log_usable(log, "tl_log_grad_norms_init"))
        return tl_lasterr();
    if (log->g_grad_norms >= 0 && !log->grad_norms_reopened)
        return tl_seterr(TL_ESTATE, "tl_log_grad_norms_init: run log '%s' already has "
                                    "/grad_norms; initialise it once", log->path);
    if (n_params <= 0 || !names)
        return tl_seterr(TL_EINVAL, "tl_log_grad_norms_init: n_params is %lld and names is "
                                    "%s; pass at least one parameter name",
                         (long long)n_params, names ? "set" : "NULL");
    for (int64_t i = 0; i < n_params; i++)
        if (!names[i])
            return tl_seterr(TL_EINVAL, "tl_log_grad_norms_init: name %lld is NULL",
                             (long long)i);
    if (log->grad_norms_reopened) {
        /* A log that cannot take this run's rows is marked failed, so that
         * closing it writes nothing, also not what tl_log_append() planned. */
        tl_status st = check_stored_names(log, n_params, names);
        if (st == TL_OK)
            log->grad_norms_reopened = false;
        else
            log->failed = true;
        return st;
    }

    const char *p = log->path;
    hsize_t row[1] = {(hsize_t)n_params};
    TL_H5(p, log->g_grad_norms = H5Gcreate2(log->file, "grad_norms", H5P_DEFAULT, H5P_DEFAULT,
                                            H5P_DEFAULT));
    log->n_params = n_params;
    tl_status st = tl_log_strings(p, log->g_grad_norms, "names", n_params, names);
    if (st == TL_OK)
        st = tl_log_column_create(p, &log->gn_step, log->g_grad_norms, "step", TL_LOG_I64, 0,
                                  NULL);
    if (st == TL_OK)
        st = tl_log_column_create(p, &log->gn_values, log->g_grad_norms, "values", TL_LOG_F64,
                                  1, row);
    if (st != TL_OK)
        log->failed = true;
    return st;

fail:
    log->failed = true;
    return TL_EIO;
}

tl_status tl_log_grad_norms(tl_log *log, int64_t step, const double *norms)
{
    if (!tl_log_usable(log, "tl_log_grad_norms"))
        return tl_lasterr();
    if (log->g_grad_norms < 0 || log->grad_norms_reopened)
        return tl_seterr(TL_ESTATE, "tl_log_grad_norms: call tl_log_grad_norms_init() first "
                                    "for run log '%s'", log->path);
    if (!norms)
        return tl_seterr(TL_EINVAL, "tl_log_grad_norms: norms is NULL");
    int64_t *step_row = tl_log_column_push(&log->gn_step);
    if (!step_row)
        return TL_ENOMEM;
    double *values = tl_log_column_push(&log->gn_values);
    if (!values) {
        log->gn_step.n_pending--;
        return TL_ENOMEM;
    }
    *step_row = step;
    memcpy(values, norms, (size_t)log->n_params * sizeof *norms);
    return TL_OK;
}

tl_status tl_log_grad_norms_params(tl_log *log, int64_t step, const tl_params *params)
{
    if (!tl_log_usable(log, "tl_log_grad_norms_params"))
        return tl_lasterr();
    if (!params || !tl_params_grads(params))
        return tl_seterr(TL_EINVAL, "tl_log_grad_norms_params: the parameter store is NULL or "
                                    "not allocated; call tl_params_alloc() first");
    int64_t n = (int64_t)tl_params_count(params);
    if (log->g_grad_norms < 0 || log->grad_norms_reopened) {
        const char **names = malloc((size_t)(n ? n : 1) * sizeof *names);
        if (!names)
            return tl_seterr(TL_ENOMEM, "could not allocate %lld parameter names", (long long)n);
        for (int64_t i = 0; i < n; i++)
            names[i] = tl_params_at(params, (size_t)i)->name;
        tl_status st = tl_log_grad_norms_init(log, n, names);
        free(names);
        if (st != TL_OK)
            return st;
    } else if (n != log->n_params) {
        return tl_seterr(TL_ESHAPE, "tl_log_grad_norms_params: the store has %lld parameters "
                                    "but /grad_norms of run log '%s' was set up for %lld",
                         (long long)n, log->path, (long long)log->n_params);
    }

    double *norms = malloc((size_t)n * sizeof *norms);
    if (!norms)
        return tl_seterr(TL_ENOMEM, "could not allocate %lld gradient norms", (long long)n);
    const float *grads = tl_params_grads(params);
    for (int64_t i = 0; i < n; i++) {
        const float *g = grads + tl_params_offset(params, (size_t)i);
        int64_t size = tl_numel(tl_params_at(params, (size_t)i));
        double sum = 0.0;
        for (int64_t j = 0; j < size; j++)
            sum += (double)g[j] * (double)g[j];
        norms[i] = sqrt(sum);
    }
    tl_status st = tl_log_grad_norms(log, step, norms);
    free(norms);
    return st;
}

tl_status tl_log_token_grads_init(tl_log *log, int n_layers, int64_t n_tokens)
{
    if (!tl_log_usable(log, "tl_log_token_grads_init"))
        return tl_lasterr();
    if (log->g_token_grads >= 0 && !log->token_grads_reopened)
        return tl_seterr(TL_ESTATE, "tl_log_token_grads_init: run log '%s' already has "
                                    "/token_grads; initialise it once", log->path);
    if (n_layers < 0 || n_tokens <= 0)
        return tl_seterr(TL_EINVAL, "tl_log_token_grads_init: n_layers %d and n_tokens %lld; "
                                    "need n_layers >= 0 and n_tokens > 0",
                         n_layers, (long long)n_tokens);
    if (log->token_grads_reopened) {
        if (n_layers + 1 != log->token_states || n_tokens != log->n_tokens) {
            log->failed = true;
            return tl_seterr(TL_EINVAL, "tl_log_token_grads_init: /token_grads of run log '%s' "
                                        "has %d layers and %lld token positions, this run %d "
                                        "and %lld; keep log_token_seqs as it was or give the "
                                        "run a new log path", log->path, log->token_states - 1,
                             (long long)log->n_tokens, n_layers, (long long)n_tokens);
        }
        log->token_grads_reopened = false;
        return TL_OK;
    }

    const char *p = log->path;
    log->token_states = n_layers + 1;
    log->n_tokens = n_tokens;
    hsize_t norms_row[2] = {(hsize_t)log->token_states, (hsize_t)n_tokens};
    hsize_t token_row[1] = {(hsize_t)n_tokens};
    TL_H5(p, log->g_token_grads = H5Gcreate2(log->file, "token_grads", H5P_DEFAULT,
                                             H5P_DEFAULT, H5P_DEFAULT));
    tl_status st = tl_log_attr_i64(p, log->g_token_grads, "n_layers", n_layers);
    if (st == TL_OK)
        st = tl_log_column_create(p, &log->tg_step, log->g_token_grads, "step", TL_LOG_I64, 0,
                                  NULL);
    if (st == TL_OK)
        st = tl_log_column_create(p, &log->tg_norms, log->g_token_grads, "norms", TL_LOG_F32,
                                  2, norms_row);
    if (st == TL_OK)
        st = tl_log_column_create(p, &log->tg_tokens, log->g_token_grads, "tokens",
                                  TL_LOG_I32, 1, token_row);
    if (st == TL_OK)
        st = tl_log_column_create(p, &log->tg_losses, log->g_token_grads, "losses",
                                  TL_LOG_F32, 1, token_row);
    if (st != TL_OK)
        log->failed = true;
    return st;

fail:
    log->failed = true;
    return TL_EIO;
}

tl_status tl_log_token_grads(tl_log *log, int64_t step, const float *norms,
                             const int32_t *tokens, const float *losses)
{
    if (!tl_log_usable(log, "tl_log_token_grads"))
        return tl_lasterr();
    if (log->g_token_grads < 0 || log->token_grads_reopened)
        return tl_seterr(TL_ESTATE, "tl_log_token_grads: call tl_log_token_grads_init() first "
                                    "for run log '%s'", log->path);
    if (!norms || !tokens || !losses)
        return tl_seterr(TL_EINVAL, "tl_log_token_grads: norms, tokens and losses are required");

    tl_log_column *cols[] = {&log->tg_step, &log->tg_norms, &log->tg_tokens, &log->tg_losses};
    void *rows[4];
    if (tl_log_columns_push(cols, rows, 4) != TL_OK)
        return TL_ENOMEM;
    size_t n = (size_t)log->n_tokens;
    *(int64_t *)rows[0] = step;
    memcpy(rows[1], norms, (size_t)log->token_states * n * sizeof *norms);
    memcpy(rows[2], tokens, n * sizeof *tokens);
    memcpy(rows[3], losses, n * sizeof *losses);
    return TL_OK;
}

/* Reopens /grad_norms: names, step (R,) and values (R, P). */
static tl_status reopen_grad_norms(tl_log *log)
{
    const char *p = log->path;
    TL_H5(p, log->g_grad_norms = H5Gopen2(log->file, "grad_norms", H5P_DEFAULT));
    tl_status st = tl_log_column_open(p, &log->gn_step, log->g_grad_norms, "step", TL_LOG_I64, 0);
    if (st == TL_OK)
        st = tl_log_column_open(p, &log->gn_values, log->g_grad_norms, "values", TL_LOG_F64, 1);
    if (st != TL_OK)
        return st;
    log->n_params = (int64_t)log->gn_values.row_dims[0];
    log->grad_norms_reopened = true;
    return TL_OK;

fail:
    return TL_EIO;
}

/* Reopens /token_grads: step (R,), norms (R, S, N), tokens and losses (R, N). */
static tl_status reopen_token_grads(tl_log *log)
{
    const char *p = log->path;
    TL_H5(p, log->g_token_grads = H5Gopen2(log->file, "token_grads", H5P_DEFAULT));
    tl_status st = tl_log_column_open(p, &log->tg_step, log->g_token_grads, "step", TL_LOG_I64,
                                      0);
    if (st == TL_OK)
        st = tl_log_column_open(p, &log->tg_norms, log->g_token_grads, "norms", TL_LOG_F32, 2);
    if (st == TL_OK)
        st = tl_log_column_open(p, &log->tg_tokens, log->g_token_grads, "tokens", TL_LOG_I32, 1);
    if (st == TL_OK)
        st = tl_log_column_open(p, &log->tg_losses, log->g_token_grads, "losses", TL_LOG_F32, 1);
    if (st != TL_OK)
        return st;
    log->token_states = (int)log->tg_norms.row_dims[0];
    log->n_tokens = (int64_t)log->tg_norms.row_dims[1];
    log->token_grads_reopened = true;
    return TL_OK;

fail:
    return TL_EIO;
}

tl_status tl_log_records_reopen(tl_log *log, int64_t step, char *report, size_t size)
{
    const char *p = log->path;
    int64_t dropped = 0, last = 0;
    htri_t has = H5Lexists(log->file, "grad_norms", H5P_DEFAULT);
    if (has < 0) {
        tl_log_h5_error(p, "H5Lexists(grad_norms)");
        return TL_EIO;
    }
    if (has > 0) {
        tl_log_column *cols[] = {&log->gn_step, &log->gn_values};
        tl_status st = reopen_grad_norms(log);
        if (st == TL_OK)
            st = tl_log_columns_keep_before(p, cols, 2, step, &dropped, &last);
        if (st != TL_OK)
            return st;
        tl_log_report_add(report, size, "grad_norms", dropped);
    }
    has = H5Lexists(log->file, "token_grads", H5P_DEFAULT);
    if (has < 0) {
        tl_log_h5_error(p, "H5Lexists(token_grads)");
        return TL_EIO;
    }
    if (has > 0) {
        tl_log_column *cols[] = {&log->tg_step, &log->tg_norms, &log->tg_tokens, &log->tg_losses};
        tl_status st = reopen_token_grads(log);
        if (st == TL_OK)
            st = tl_log_columns_keep_before(p, cols, 4, step, &dropped, &last);
        if (st != TL_OK)
            return st;
        tl_log_report_add(report, size, "token_grads", dropped);
    }
    return TL_OK;
}

tl_status tl_log_records_flush(tl_log *log)
{
    tl_log_column *cols[] = {&log->gn_step, &log->gn_values, &log->tg_step,
                             &log->tg_norms, &log->tg_tokens, &log->tg_losses};
    for (size_t i = 0; i < sizeof cols / sizeof cols[0]; i++) {
        if (cols[i]->dset <= 0)
            continue;
        tl_status st = tl_log_column_write(log->path, cols[i]);
        if (st != TL_OK)
            return st;
    }
    return TL_OK;
}

uint64_t tl_log_records_write_bytes(const tl_log *log)
{
    const tl_log_column *cols[] = {&log->gn_step, &log->gn_values, &log->tg_step,
                                   &log->tg_norms, &log->tg_tokens, &log->tg_losses};
    uint64_t bytes = 0;
    for (size_t i = 0; i < sizeof cols / sizeof cols[0]; i++)
        if (cols[i]->dset > 0)
            bytes += tl_log_column_write_bytes(cols[i]);
    return bytes;
}

void tl_log_records_free(tl_log *log)
{
    tl_log_column *cols[] = {&log->gn_step, &log->gn_values, &log->tg_step,
                             &log->tg_norms, &log->tg_tokens, &log->tg_losses};
    for (size_t i = 0; i < sizeof cols / sizeof cols[0]; i++)
        tl_log_column_close(cols[i]);
    if (log->g_grad_norms >= 0)
        H5Gclose(log->g_grad_norms);
    if (log->g_token_grads >= 0)
        H5Gclose(log->g_token_grads);
    log->g_grad_norms = log->g_token_grads = H5I_INVALID_HID;
}
