/* /routing/<layer>: per-step routing statistics of every routed layer. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "log_internal.h"

struct tl_log_routing_layer {
    char *name;
    int n_steps;
    int64_t n_mask;
    int n_bins;
    double score_min, score_max;
    hid_t group;
    /* Rows: step (), fraction, score_mean, score_std, topk_agreement (n_steps),
     * histogram (n_steps, n_bins), mask (n_steps, n_mask). */
    tl_log_column step, fraction, score_mean, score_std, topk_agreement, histogram, mask;
    char *kind;         /* of a group reopened by tl_log_append, else NULL */
    bool reopened;      /* reopened and not yet claimed by tl_log_routing_register */
    bool row_open;      /* the last buffered row can still take records of row_step */
    bool any_row;
    int64_t row_step;   /* step of the last row, buffered or written */
};

enum { TL_LOG_ROUTING_COLUMNS = 7 };

static void tl_log_routing_columns(tl_log_routing_layer *r, tl_log_column **cols)
{
    cols[0] = &r->step;
    cols[1] = &r->fraction;
    cols[2] = &r->score_mean;
    cols[3] = &r->score_std;
    cols[4] = &r->topk_agreement;
    cols[5] = &r->histogram;
    cols[6] = &r->mask;
}

static void tl_log_routing_layer_free(tl_log_routing_layer *r)
{
    if (!r)
        return;
    tl_log_column *cols[TL_LOG_ROUTING_COLUMNS];
    tl_log_routing_columns(r, cols);
    for (int i = 0; i < TL_LOG_ROUTING_COLUMNS; i++)
        tl_log_column_close(cols[i]);
    if (r->group > 0)
        H5Gclose(r->group);
    free(r->name);
    free(r->kind);
    free(r);
}

static bool tl_log_routing_spec_valid(const tl_log *log, const tl_log_routing_spec *spec)
{
    if (!spec || !spec->name || !*spec->name || strchr(spec->name, '/') ||
        strcmp(spec->name, ".") == 0) {
        tl_seterr(TL_EINVAL, "tl_log_routing_register: layer name '%s' is not a valid HDF5 "
                             "group name; use a non-empty name without '/'",
                  spec && spec->name ? spec->name : "(null)");
        return false;
    }
    if (!spec->kind) {
        tl_seterr(TL_EINVAL, "tl_log_routing_register: layer '%s' needs a kind such as "
                             "\"itt\" or \"mod\"", spec->name);
        return false;
    }
    if (spec->n_steps <= 0 || spec->n_mask_tokens < 0 || spec->n_bins <= 0 ||
        !isfinite(spec->score_min) || !isfinite(spec->score_max) ||
        !(spec->score_max > spec->score_min)) {
        tl_seterr(TL_EINVAL, "tl_log_routing_register: layer '%s' has n_steps %d, "
                             "n_mask_tokens %lld, n_bins %d, score range [%g, %g]; need "
                             "n_steps > 0, n_mask_tokens >= 0, n_bins > 0, finite min < max",
                  spec->name, spec->n_steps, (long long)spec->n_mask_tokens, spec->n_bins,
                  spec->score_min, spec->score_max);
        return false;
    }
    for (int i = 0; i < log->n_routing; i++)
        if (!log->routing[i]->reopened && strcmp(log->routing[i]->name, spec->name) == 0) {
            tl_seterr(TL_EINVAL, "tl_log_routing_register: layer '%s' is already registered "
                                 "in run log '%s'; give every routed layer its own name",
                      spec->name, log->path);
            return false;
        }
    return true;
}

/* Creates the group, its attributes, the bin edges and the columns. */
static tl_status tl_log_routing_create(tl_log *log, tl_log_routing_layer *r, const char *kind)
{
    const char *p = log->path;
    TL_H5(p, r->group = H5Gcreate2(log->g_routing, r->name, H5P_DEFAULT, H5P_DEFAULT,
                                   H5P_DEFAULT));
    tl_status st = tl_log_attr_str(p, r->group, "kind", kind);
    if (st == TL_OK)
        st = tl_log_attr_i64(p, r->group, "n_steps", r->n_steps);
    if (st == TL_OK)
        st = tl_log_attr_i64(p, r->group, "n_mask_tokens", r->n_mask);
    if (st != TL_OK)
        return st;

    double *edges = malloc((size_t)(r->n_bins + 1) * sizeof *edges);
    if (!edges)
        return tl_seterr(TL_ENOMEM, "could not allocate %d histogram bin edges", r->n_bins + 1);
    for (int b = 0; b <= r->n_bins; b++)
        edges[b] = r->score_min + (r->score_max - r->score_min) * b / r->n_bins;
    st = tl_log_f64_array(p, r->group, "bin_edges", r->n_bins + 1, edges);
    free(edges);
    if (st != TL_OK)
        return st;

    hsize_t per_step[1] = {(hsize_t)r->n_steps};
    hsize_t hist_row[2] = {(hsize_t)r->n_steps, (hsize_t)r->n_bins};
    hsize_t mask_row[2] = {(hsize_t)r->n_steps, (hsize_t)r->n_mask};
    struct {
        tl_log_column *col;
        const char *name;
        tl_log_type type;
        int rank;
        const hsize_t *dims;
    } cols[] = {
        {&r->step, "step", TL_LOG_I64, 0, NULL},
        {&r->fraction, "fraction", TL_LOG_F64, 1, per_step},
        {&r->score_mean, "score_mean", TL_LOG_F64, 1, per_step},
        {&r->score_std, "score_std", TL_LOG_F64, 1, per_step},
        {&r->topk_agreement, "topk_agreement", TL_LOG_F64, 1, per_step},
        {&r->histogram, "histogram", TL_LOG_I64, 2, hist_row},
        {&r->mask, "mask", TL_LOG_U8, 2, mask_row},
    };
    for (size_t i = 0; i < sizeof cols / sizeof cols[0] && st == TL_OK; i++)
        st = tl_log_column_create(p, cols[i].col, r->group, cols[i].name, cols[i].type,
                                  cols[i].rank, cols[i].dims);
    return st;

fail:
    return TL_EIO;
}

/* Claims the reopened group of spec's layer when it has the same shape, so
 * that the layer's rows continue it. Returns its id, -1 with a message for
 * another shape, or -2 when no reopened group has the name. */
static int tl_log_routing_claim(tl_log *log, const tl_log_routing_spec *spec)
{
    for (int i = 0; i < log->n_routing; i++) {
        tl_log_routing_layer *r = log->routing[i];
        if (!r->reopened || strcmp(r->name, spec->name) != 0)
            continue;
        if (strcmp(r->kind, spec->kind) != 0 || r->n_steps != spec->n_steps ||
            r->n_mask != spec->n_mask_tokens || r->n_bins != spec->n_bins) {
            tl_seterr(TL_EINVAL, "tl_log_routing_register: /routing/%s of run log '%s' has "
                                 "kind %s, %d routed steps, masks of %lld tokens and %d bins, "
                                 "but this run's layer has %s, %d, %lld and %d; give the run a "
                                 "new log path", r->name, log->path, r->kind, r->n_steps,
                      (long long)r->n_mask, r->n_bins, spec->kind, spec->n_steps,
                      (long long)spec->n_mask_tokens, spec->n_bins);
            return -1;
        }
        r->reopened = false;
        return i;
    }
    return -2;
}

int tl_log_routing_register(tl_log *log, const tl_log_routing_spec *spec)
{
    if (!tl_log_usable(log, "tl_log_routing_register"))
        return -1;
    if (!tl_log_routing_spec_valid(log, spec))
        return -1;
    int claimed = tl_log_routing_claim(log, spec);
    if (claimed != -2)
        return claimed;

    tl_log_routing_layer *r = calloc(1, sizeof *r);
    tl_log_routing_layer **grown = realloc(log->routing,
                                           (size_t)(log->n_routing + 1) * sizeof *grown);
    if (grown)
        log->routing = grown;
    if (!r || !grown || !(r->name = strdup(spec->name))) {
        free(r);
        tl_seterr(TL_ENOMEM, "could not register routed layer '%s'", spec->name);
        return -1;
    }
    r->n_steps = spec->n_steps;
    r->n_mask = spec->n_mask_tokens;
    r->n_bins = spec->n_bins;
    r->score_min = spec->score_min;
    r->score_max = spec->score_max;
    r->group = H5I_INVALID_HID;

    if (tl_log_routing_create(log, r, spec->kind) != TL_OK) {
        tl_log_routing_layer_free(r);
        log->failed = true;
        return -1;
    }
    log->routing[log->n_routing] = r;
    return log->n_routing++;
}

/* Buffers a new row for step: statistics NaN, counts and masks 0. */
static tl_status tl_log_routing_open_row(tl_log_routing_layer *r, int64_t step)
{
    tl_log_column *cols[TL_LOG_ROUTING_COLUMNS];
    void *rows[TL_LOG_ROUTING_COLUMNS];
    tl_log_routing_columns(r, cols);
    if (tl_log_columns_push(cols, rows, TL_LOG_ROUTING_COLUMNS) != TL_OK)
        return TL_ENOMEM;
    *(int64_t *)rows[0] = step;
    for (int c = 1; c <= 4; c++)
        for (int t = 0; t < r->n_steps; t++)
            ((double *)rows[c])[t] = NAN;
    r->row_open = true;
    r->any_row = true;
    r->row_step = step;
    return TL_OK;
}

/* Pointer to element index of the last buffered row of col. */
static void *tl_log_last_row(tl_log_column *col)
{
    return col->pending + (col->n_pending - 1) * col->row_bytes;
}

tl_status tl_log_routing(tl_log *log, int id, const tl_log_routing_record *rec)
{
    if (!tl_log_usable(log, "tl_log_routing"))
        return tl_lasterr();
    if (id < 0 || id >= log->n_routing)
        return tl_seterr(TL_EINVAL, "tl_log_routing: layer id %d is not registered in run log "
                                    "'%s' (%d layers)", id, log->path, log->n_routing);
    tl_log_routing_layer *r = log->routing[id];
    if (r->reopened)
        return tl_seterr(TL_ESTATE, "tl_log_routing: layer '%s' of run log '%s' was written "
                                    "before the run was resumed; register it again first",
                         r->name, log->path);
    if (!rec || !rec->scores || !rec->selected)
        return tl_seterr(TL_EINVAL, "tl_log_routing: layer '%s' needs a record with scores and "
                                    "selected", r->name);
    if (rec->routed_step < 0 || rec->routed_step >= r->n_steps)
        return tl_seterr(TL_EINVAL, "tl_log_routing: routed step %d of layer '%s' is outside "
                                    "0..%d", rec->routed_step, r->name, r->n_steps - 1);
    if (rec->n_scores < r->n_mask)
        return tl_seterr(TL_EINVAL, "tl_log_routing: layer '%s' has %lld scores but stores "
                                    "masks of %lld tokens", r->name, (long long)rec->n_scores,
                         (long long)r->n_mask);
    if (r->any_row && rec->step < r->row_step)
        return tl_seterr(TL_EINVAL, "tl_log_routing: step %lld of layer '%s' after step %lld; "
                                    "steps must not decrease", (long long)rec->step, r->name,
                         (long long)r->row_step);
    if (r->any_row && rec->step == r->row_step && !r->row_open)
        return tl_seterr(TL_ESTATE, "tl_log_routing: step %lld of layer '%s' was already "
                                    "flushed; record every routed step of a training step "
                                    "before the flush", (long long)rec->step, r->name);
    if (!r->any_row || rec->step > r->row_step)
        if (tl_log_routing_open_row(r, rec->step) != TL_OK)
            return TL_ENOMEM;

    /* Mean and population standard deviation in double; NaN scores are left
     * out of every statistic and of the histogram. */
    double sum = 0.0, sum_sq = 0.0;
    int64_t n_finite = 0, n_selected = 0;
    int64_t *hist = (int64_t *)tl_log_last_row(&r->histogram) + (size_t)rec->routed_step * r->n_bins;
    memset(hist, 0, (size_t)r->n_bins * sizeof *hist);
    double width = (r->score_max - r->score_min) / r->n_bins;
    for (int64_t i = 0; i < rec->n_scores; i++) {
        n_selected += rec->selected[i] != 0;
        double s = rec->scores[i];
        if (isnan(s))
            continue;
        sum += s;
        n_finite++;
        double bin = floor((s - r->score_min) / width);
        if (bin < 0)
            bin = 0;
        if (bin > r->n_bins - 1)
            bin = r->n_bins - 1;
        hist[(int)bin]++;
    }
    double mean = n_finite ? sum / (double)n_finite : NAN;
    for (int64_t i = 0; i < rec->n_scores; i++)
        if (!isnan(rec->scores[i]))
            sum_sq += ((double)rec->scores[i] - mean) * ((double)rec->scores[i] - mean);

    int t = rec->routed_step;
    ((double *)tl_log_last_row(&r->fraction))[t] =
        rec->n_scores ? (double)n_selected / (double)rec->n_scores : NAN;
    ((double *)tl_log_last_row(&r->score_mean))[t] = mean;
    ((double *)tl_log_last_row(&r->score_std))[t] = n_finite ? sqrt(sum_sq / (double)n_finite) : NAN;
    ((double *)tl_log_last_row(&r->topk_agreement))[t] = rec->topk_agreement;
    uint8_t *mask = (uint8_t *)tl_log_last_row(&r->mask) + (size_t)t * (size_t)r->n_mask;
    for (int64_t i = 0; i < r->n_mask; i++)
        mask[i] = rec->selected[i] != 0;
    return TL_OK;
}

static tl_status tl_log_read_attr_i64(const char *path, hid_t obj, const char *name,
                                      int64_t *value)
{
    hid_t attr = H5I_INVALID_HID;
    TL_H5(path, attr = H5Aopen(obj, name, H5P_DEFAULT));
    TL_H5(path, H5Aread(attr, H5T_NATIVE_INT64, value));
    H5Aclose(attr);
    return TL_OK;

fail:
    if (attr >= 0)
        H5Aclose(attr);
    return TL_EIO;
}

/* Reads the attributes and bin edges of the open group r->group and opens
 * its columns. */
static tl_status tl_log_routing_open(tl_log *log, tl_log_routing_layer *r)
{
    const char *p = log->path;
    int64_t n_steps = 0;
    tl_status st = tl_log_read_attr_i64(p, r->group, "n_steps", &n_steps);
    if (st == TL_OK)
        st = tl_log_read_attr_i64(p, r->group, "n_mask_tokens", &r->n_mask);
    if (st == TL_OK && !(r->kind = tl_log_read_attr_str(p, r->group, "kind")))
        st = tl_lasterr();
    if (st != TL_OK)
        return st;
    r->n_steps = (int)n_steps;

    tl_log_column *cols[TL_LOG_ROUTING_COLUMNS];
    tl_log_routing_columns(r, cols);
    static const char *const names[TL_LOG_ROUTING_COLUMNS] = {
        "step", "fraction", "score_mean", "score_std", "topk_agreement", "histogram", "mask"};
    static const tl_log_type types[TL_LOG_ROUTING_COLUMNS] = {
        TL_LOG_I64, TL_LOG_F64, TL_LOG_F64, TL_LOG_F64, TL_LOG_F64, TL_LOG_I64, TL_LOG_U8};
    static const int ranks[TL_LOG_ROUTING_COLUMNS] = {0, 1, 1, 1, 1, 2, 2};
    for (int c = 0; c < TL_LOG_ROUTING_COLUMNS && st == TL_OK; c++)
        st = tl_log_column_open(p, cols[c], r->group, names[c], types[c], ranks[c]);
    if (st != TL_OK)
        return st;
    r->n_bins = (int)r->histogram.row_dims[1];

    /* The first and last bin edges give the score range, so that the
     * continued rows bin as the earlier ones did. */
    hid_t dset = H5I_INVALID_HID, space = H5I_INVALID_HID;
    double *edges = NULL;
    hsize_t n_edges = 0;
    TL_H5(p, dset = H5Dopen2(r->group, "bin_edges", H5P_DEFAULT));
    TL_H5(p, space = H5Dget_space(dset));
    if (H5Sget_simple_extent_ndims(space) != 1 ||
        H5Sget_simple_extent_dims(space, &n_edges, NULL) != 1 ||
        n_edges != (hsize_t)r->n_bins + 1) {
        st = tl_seterr(TL_EFORMAT, "run log '%s': /routing/%s/bin_edges does not hold %d edges "
                                   "for %d histogram bins; the file is damaged", p, r->name,
                       r->n_bins + 1, r->n_bins);
        goto out;
    }
    edges = malloc((size_t)n_edges * sizeof *edges);
    if (!edges) {
        st = tl_seterr(TL_ENOMEM, "no memory for %d histogram bin edges", r->n_bins + 1);
        goto out;
    }
    TL_H5(p, H5Dread(dset, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, edges));
    r->score_min = edges[0];
    r->score_max = edges[r->n_bins];
    goto out;

fail:
    st = TL_EIO;
out:
    free(edges);
    if (space >= 0)
        H5Sclose(space);
    if (dset >= 0)
        H5Dclose(dset);
    return st;
}

tl_status tl_log_routing_reopen(tl_log *log, int64_t step, char *report, size_t size)
{
    const char *p = log->path;
    H5G_info_t info;
    TL_H5(p, H5Gget_info(log->g_routing, &info));
    for (hsize_t i = 0; i < info.nlinks; i++) {
        char name[256];
        ssize_t len = H5Lget_name_by_idx(log->g_routing, ".", H5_INDEX_NAME, H5_ITER_INC, i,
                                         name, sizeof name, H5P_DEFAULT);
        if (len < 0 || (size_t)len >= sizeof name) {
            tl_log_h5_error(p, "H5Lget_name_by_idx(/routing)");
            return TL_EIO;
        }
        tl_log_routing_layer *r = calloc(1, sizeof *r);
        tl_log_routing_layer **grown = realloc(log->routing,
                                               (size_t)(log->n_routing + 1) * sizeof *grown);
        if (grown)
            log->routing = grown;
        if (!r || !grown || !(r->name = strdup(name))) {
            free(r);
            return tl_seterr(TL_ENOMEM, "could not reopen routed layer '%s'", name);
        }
        r->group = H5Gopen2(log->g_routing, name, H5P_DEFAULT);
        tl_status st = r->group < 0 ? TL_EIO : tl_log_routing_open(log, r);
        if (r->group < 0)
            tl_log_h5_error(p, "H5Gopen2(/routing/<layer>)");
        int64_t dropped = 0, last = -1;
        tl_log_column *cols[TL_LOG_ROUTING_COLUMNS];
        tl_log_routing_columns(r, cols);
        if (st == TL_OK)
            st = tl_log_columns_keep_before(p, cols, TL_LOG_ROUTING_COLUMNS, step, &dropped,
                                            &last);
        if (st != TL_OK) {
            tl_log_routing_layer_free(r);
            return st;
        }
        r->reopened = true;
        r->any_row = last >= 0;
        r->row_step = last;
        log->routing[log->n_routing++] = r;
        char group[300];
        snprintf(group, sizeof group, "routing/%s", name);
        tl_log_report_add(report, size, group, dropped);
    }
    return TL_OK;

fail:
    return TL_EIO;
}

tl_status tl_log_routing_flush(tl_log *log)
{
    for (int i = 0; i < log->n_routing; i++) {
        tl_log_routing_layer *r = log->routing[i];
        tl_log_column *cols[TL_LOG_ROUTING_COLUMNS];
        tl_log_routing_columns(r, cols);
        for (int c = 0; c < TL_LOG_ROUTING_COLUMNS; c++) {
            tl_status st = tl_log_column_write(log->path, cols[c]);
            if (st != TL_OK)
                return st;
        }
        r->row_open = false;
    }
    return TL_OK;
}

uint64_t tl_log_routing_write_bytes(const tl_log *log)
{
    uint64_t bytes = 0;
    for (int i = 0; i < log->n_routing; i++) {
        tl_log_column *cols[TL_LOG_ROUTING_COLUMNS];
        tl_log_routing_columns(log->routing[i], cols);
        for (int c = 0; c < TL_LOG_ROUTING_COLUMNS; c++)
            bytes += tl_log_column_write_bytes(cols[c]);
    }
    return bytes;
}

void tl_log_routing_free(tl_log *log)
{
    for (int i = 0; i < log->n_routing; i++)
        tl_log_routing_layer_free(log->routing[i]);
    free(log->routing);
    log->routing = NULL;
    log->n_routing = 0;
}
