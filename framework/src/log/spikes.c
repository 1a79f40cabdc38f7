/* /analysis/gradient_spikes: per-sequence norms of attention weight matrices
 * with easy/hard labels. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "log_internal.h"

struct tl_log_spikes {
    hid_t analysis, group;
    int n_layers;
    double easy_quantile, hard_quantile;
    /* Rows: step, sequence, loss, label_by_answer (); nuclear, frobenius,
     * max_sv (n_layers, 4). label_by_loss is rewritten whole at every flush. */
    tl_log_column step, sequence, loss, label_by_answer, nuclear, frobenius, max_sv;
    tl_log_column label_by_loss;
    double *losses; /* every logged loss, in row order */
    size_t n_losses, cap_losses;
};

enum { TL_LOG_SPIKE_COLUMNS = 7 };

static void tl_log_spike_columns(tl_log_spikes *s, tl_log_column **cols)
{
    cols[0] = &s->step;
    cols[1] = &s->sequence;
    cols[2] = &s->loss;
    cols[3] = &s->label_by_answer;
    cols[4] = &s->nuclear;
    cols[5] = &s->frobenius;
    cols[6] = &s->max_sv;
}

static tl_status tl_log_spikes_create(tl_log *log, tl_log_spikes *s)
{
    const char *p = log->path;
    static const char *const matrices[TL_LOG_SPIKE_MATRICES] = {"wq", "wk", "wv", "wo"};
    htri_t has_analysis = H5Lexists(log->file, "analysis", H5P_DEFAULT);
    TL_H5(p, has_analysis);
    if (has_analysis > 0)
        TL_H5(p, s->analysis = H5Gopen2(log->file, "analysis", H5P_DEFAULT));
    else
        TL_H5(p, s->analysis = H5Gcreate2(log->file, "analysis", H5P_DEFAULT, H5P_DEFAULT,
                                          H5P_DEFAULT));
    TL_H5(p, s->group = H5Gcreate2(s->analysis, "gradient_spikes", H5P_DEFAULT, H5P_DEFAULT,
                                   H5P_DEFAULT));
    tl_status st = tl_log_strings(p, s->group, "matrices", TL_LOG_SPIKE_MATRICES, matrices);
    if (st == TL_OK)
        st = tl_log_attr_i64(p, s->group, "n_layers", s->n_layers);
    if (st == TL_OK)
        st = tl_log_attr_f64(p, s->group, "easy_quantile", s->easy_quantile);
    if (st == TL_OK)
        st = tl_log_attr_f64(p, s->group, "hard_quantile", s->hard_quantile);
    if (st == TL_OK)
        st = tl_log_attr_f64(p, s->group, "easy_threshold", NAN);
    if (st == TL_OK)
        st = tl_log_attr_f64(p, s->group, "hard_threshold", NAN);
    if (st != TL_OK)
        return st;

    hsize_t norms_row[2] = {(hsize_t)s->n_layers, TL_LOG_SPIKE_MATRICES};
    struct {
        tl_log_column *col;
        const char *name;
        tl_log_type type;
        int rank;
    } cols[] = {
        {&s->step, "step", TL_LOG_I64, 0},
        {&s->sequence, "sequence", TL_LOG_I64, 0},
        {&s->loss, "loss", TL_LOG_F64, 0},
        {&s->label_by_answer, "label_by_answer", TL_LOG_I8, 0},
        {&s->label_by_loss, "label_by_loss", TL_LOG_I8, 0},
        {&s->nuclear, "nuclear", TL_LOG_F64, 2},
        {&s->frobenius, "frobenius", TL_LOG_F64, 2},
        {&s->max_sv, "max_sv", TL_LOG_F64, 2},
    };
    for (size_t i = 0; i < sizeof cols / sizeof cols[0] && st == TL_OK; i++)
        st = tl_log_column_create(p, cols[i].col, s->group, cols[i].name, cols[i].type,
                                  cols[i].rank, cols[i].rank ? norms_row : NULL);
    return st;

fail:
    return TL_EIO;
}

tl_status tl_log_spikes_init(tl_log *log, int n_layers, double easy_quantile,
                             double hard_quantile)
{
    if (!tl_log_usable(log, "tl_log_spikes_init"))
        return tl_lasterr();
    if (log->spikes)
        return tl_seterr(TL_ESTATE, "tl_log_spikes_init: run log '%s' already has "
                                    "/analysis/gradient_spikes; initialise it once", log->path);
    if (log->spikes_in_file)
        return tl_seterr(TL_ESTATE, "tl_log_spikes_init: run log '%s' already has "
                                    "/analysis/gradient_spikes, written before the run was "
                                    "resumed, and a log contains one analysis; run this analysis "
                                    "with a trainer that logs to another path", log->path);
    if (n_layers <= 0 || !(easy_quantile >= 0.0 && easy_quantile <= hard_quantile &&
                           hard_quantile <= 1.0))
        return tl_seterr(TL_EINVAL, "tl_log_spikes_init: n_layers %d, quantiles easy %g and "
                                    "hard %g; need n_layers > 0 and 0 <= easy <= hard <= 1",
                         n_layers, easy_quantile, hard_quantile);
    tl_log_spikes *s = calloc(1, sizeof *s);
    if (!s)
        return tl_seterr(TL_ENOMEM, "could not allocate the gradient-spike state");
    s->analysis = s->group = H5I_INVALID_HID;
    s->n_layers = n_layers;
    s->easy_quantile = easy_quantile;
    s->hard_quantile = hard_quantile;
    log->spikes = s;
    tl_status st = tl_log_spikes_create(log, s);
    if (st != TL_OK)
        log->failed = true;
    return st;
}

tl_status tl_log_spike(tl_log *log, const tl_log_spike_record *rec)
{
    if (!tl_log_usable(log, "tl_log_spike"))
        return tl_lasterr();
    tl_log_spikes *s = log->spikes;
    if (!s)
        return tl_seterr(TL_ESTATE, "tl_log_spike: call tl_log_spikes_init() first for run "
                                    "log '%s'", log->path);
    if (!rec || !rec->nuclear || !rec->frobenius || !rec->max_sv)
        return tl_seterr(TL_EINVAL, "tl_log_spike: record with nuclear, frobenius and max_sv "
                                    "is required");
    if (!isfinite(rec->loss))
        return tl_seterr(TL_ENUMERIC, "tl_log_spike: loss of sequence %lld is %g; quantile "
                                      "labels need finite losses",
                         (long long)rec->sequence, rec->loss);
    if (rec->correct < -1 || rec->correct > 1)
        return tl_seterr(TL_EINVAL, "tl_log_spike: correct is %d; use 1 correct, 0 wrong, "
                                    "-1 unknown", rec->correct);
    if (s->n_losses == s->cap_losses) {
        size_t cap = s->cap_losses ? 2 * s->cap_losses : 64;
        double *grown = realloc(s->losses, cap * sizeof *grown);
        if (!grown)
            return tl_seterr(TL_ENOMEM, "could not grow the gradient-spike loss list to %zu",
                             cap);
        s->losses = grown;
        s->cap_losses = cap;
    }

    tl_log_column *cols[TL_LOG_SPIKE_COLUMNS];
    void *rows[TL_LOG_SPIKE_COLUMNS];
    tl_log_spike_columns(s, cols);
    if (tl_log_columns_push(cols, rows, TL_LOG_SPIKE_COLUMNS) != TL_OK)
        return TL_ENOMEM;
    size_t n = (size_t)s->n_layers * TL_LOG_SPIKE_MATRICES;
    *(int64_t *)rows[0] = rec->step;
    *(int64_t *)rows[1] = rec->sequence;
    *(double *)rows[2] = rec->loss;
    /* A correct answer marks an easy sequence (0), a wrong one a hard one (1). */
    int8_t by_answer = -1;
    if (rec->correct == 1)
        by_answer = 0;
    else if (rec->correct == 0)
        by_answer = 1;
    *(int8_t *)rows[3] = by_answer;
    memcpy(rows[4], rec->nuclear, n * sizeof(double));
    memcpy(rows[5], rec->frobenius, n * sizeof(double));
    memcpy(rows[6], rec->max_sv, n * sizeof(double));
    s->losses[s->n_losses++] = rec->loss;
    return TL_OK;
}

static int tl_compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The q-quantile of sorted[0..n) with linear interpolation between order
 * statistics, as numpy.quantile's default method. */
static double tl_quantile_sorted(const double *sorted, size_t n, double q)
{
    double h = (double)(n - 1) * q;
    size_t lo = (size_t)floor(h);
    if (lo + 1 >= n)
        return sorted[n - 1];
    return sorted[lo] + (h - (double)lo) * (sorted[lo + 1] - sorted[lo]);
}

static tl_status tl_log_write_attr_f64(const char *path, hid_t obj, const char *name,
                                       double value)
{
    hid_t attr = H5I_INVALID_HID;
    TL_H5(path, attr = H5Aopen(obj, name, H5P_DEFAULT));
    TL_H5(path, H5Awrite(attr, H5T_NATIVE_DOUBLE, &value));
    H5Aclose(attr);
    return TL_OK;

fail:
    if (attr >= 0)
        H5Aclose(attr);
    return TL_EIO;
}

/* Recomputes label_by_loss over every sequence logged so far and rewrites
 * the whole dataset, since each new loss can move the thresholds. */
static tl_status tl_log_spikes_relabel(tl_log *log, tl_log_spikes *s)
{
    size_t n = s->n_losses;
    double *sorted = malloc(n * sizeof *sorted);
    if (!sorted)
        return tl_seterr(TL_ENOMEM, "could not sort %zu sequence losses", n);
    memcpy(sorted, s->losses, n * sizeof *sorted);
    qsort(sorted, n, sizeof *sorted, tl_compare_double);
    double easy = tl_quantile_sorted(sorted, n, s->easy_quantile);
    double hard = tl_quantile_sorted(sorted, n, s->hard_quantile);
    free(sorted);

    tl_log_column *col = &s->label_by_loss;
    col->n_pending = 0;
    col->rows_in_file = 0;
    for (size_t i = 0; i < n; i++) {
        int8_t *label = tl_log_column_push(col);
        if (!label)
            return TL_ENOMEM;
        *label = -1;
        if (s->losses[i] <= easy)
            *label = 0;
        else if (s->losses[i] >= hard)
            *label = 1;
    }
    tl_status st = tl_log_column_write(log->path, col);
    if (st == TL_OK)
        st = tl_log_write_attr_f64(log->path, s->group, "easy_threshold", easy);
    if (st == TL_OK)
        st = tl_log_write_attr_f64(log->path, s->group, "hard_threshold", hard);
    return st;
}

tl_status tl_log_spikes_flush(tl_log *log)
{
    tl_log_spikes *s = log->spikes;
    if (!s || s->step.n_pending == 0)
        return TL_OK;
    tl_log_column *cols[TL_LOG_SPIKE_COLUMNS];
    tl_log_spike_columns(s, cols);
    for (int i = 0; i < TL_LOG_SPIKE_COLUMNS; i++) {
        tl_status st = tl_log_column_write(log->path, cols[i]);
        if (st != TL_OK)
            return st;
    }
    return tl_log_spikes_relabel(log, s);
}

uint64_t tl_log_spikes_write_bytes(const tl_log *log)
{
    if (!log->spikes)
        return 0;
    tl_log_column *cols[TL_LOG_SPIKE_COLUMNS];
    tl_log_spike_columns(log->spikes, cols);
    uint64_t bytes = 0;
    for (int i = 0; i < TL_LOG_SPIKE_COLUMNS; i++)
        bytes += tl_log_column_write_bytes(cols[i]);
    return bytes;
}

void tl_log_spikes_free(tl_log *log)
{
    tl_log_spikes *s = log->spikes;
    if (!s)
        return;
    tl_log_column *cols[TL_LOG_SPIKE_COLUMNS];
    tl_log_spike_columns(s, cols);
    for (int i = 0; i < TL_LOG_SPIKE_COLUMNS; i++)
        tl_log_column_close(cols[i]);
    tl_log_column_close(&s->label_by_loss);
    if (s->group > 0)
        H5Gclose(s->group);
    if (s->analysis > 0)
        H5Gclose(s->analysis);
    free(s->losses);
    free(s);
    log->spikes = NULL;
}
