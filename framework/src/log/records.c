/* /grad_norms and /token_grads: per-parameter and per-token gradient norms. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "log_internal.h"

tl_status tl_log_grad_norms_init(tl_log *log, int64_t n_params, const char *const *names)
{
    if (!tl_log_usable(log, "tl_log_grad_norms_init"))
        return tl_lasterr();
    if (log->g_grad_norms >= 0)
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
    if (log->g_grad_norms < 0)
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
    if (log->g_grad_norms < 0) {
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
    if (log->g_token_grads >= 0)
        return tl_seterr(TL_ESTATE, "tl_log_token_grads_init: run log '%s' already has "
                                    "/token_grads; initialise it once", log->path);
    if (n_layers < 0 || n_tokens <= 0)
        return tl_seterr(TL_EINVAL, "tl_log_token_grads_init: n_layers %d and n_tokens %lld; "
                                    "need n_layers >= 0 and n_tokens > 0",
                         n_layers, (long long)n_tokens);

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
    if (log->g_token_grads < 0)
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
