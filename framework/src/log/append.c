/* Continuing a run log after a resume: run id check, removal of the rows the
 * resumed run logs again, and the new configuration in /meta. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "log_internal.h"

void tl_log_report_add(char *report, size_t size, const char *name, int64_t count)
{
    if (!report || size == 0 || count == 0)
        return;
    size_t used = strlen(report);
    if (used < size)
        snprintf(report + used, size - used, "%s%s %lld", used ? ", " : "", name,
                 (long long)count);
}

hid_t tl_log_open_file(const char *path, unsigned flags)
{
    tl_hdf5_prepare();
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0)
        return H5I_INVALID_HID;
#if TL_LOG_HAVE_FILE_LOCKING
    if (H5Pset_file_locking(fapl, 0, 1) < 0) {
        H5Pclose(fapl);
        return H5I_INVALID_HID;
    }
#endif
    hid_t file = H5Fopen(path, flags, fapl);
    H5Pclose(fapl);
    return file;
}

/* Reads /meta run_id of the open log file into id; "" when it has none. */
static tl_status tl_log_file_run_id(const char *path, hid_t file, char *id, size_t size)
{
    id[0] = '\0';
    htri_t has = H5Aexists_by_name(file, "meta", "run_id", H5P_DEFAULT);
    if (has < 0) {
        tl_log_h5_error(path, "H5Aexists_by_name(meta, run_id)");
        return TL_EIO;
    }
    if (has == 0)
        return TL_OK;
    hid_t meta = H5Gopen2(file, "meta", H5P_DEFAULT);
    if (meta < 0) {
        tl_log_h5_error(path, "H5Gopen2(meta)");
        return TL_EIO;
    }
    char *text = tl_log_read_attr_str(path, meta, "run_id");
    H5Gclose(meta);
    if (!text)
        return tl_lasterr();
    tl_status st = TL_OK;
    if (strlen(text) >= size)
        st = tl_seterr(TL_EFORMAT, "run log '%s': run_id '%s' is longer than %zu characters; "
                                   "the file is damaged", path, text, size - 1);
    else
        strcpy(id, text);
    free(text);
    return st;
}

tl_status tl_log_read_run_id(const char *path, char *id, size_t size)
{
    if (!path || !id || size == 0)
        return tl_seterr(TL_EINVAL, "tl_log_read_run_id: path and an id buffer are required");
    id[0] = '\0';
    if (!tl_log_is_run_log(path))
        return tl_seterr(TL_EFORMAT, "'%s' is not a thinklab run log", path);
    hid_t file = tl_log_open_file(path, H5F_ACC_RDONLY);
    if (file < 0) {
        tl_log_h5_error(path, "H5Fopen");
        return TL_EIO;
    }
    tl_status st = tl_log_file_run_id(path, file, id, size);
    H5Fclose(file);
    return st;
}

/* Removes the /meta items that tl_log_write_run_meta() writes, so that it can
 * write them anew. */
static tl_status tl_log_clear_run_meta(tl_log *log)
{
    const char *p = log->path;
    static const char *const datasets[] = {"config_json", "plugin_names", "plugin_versions"};
    static const char *const attrs[] = {"seed",         "threads",     "thinklab_version",
                                        "hdf5_version", "flush_every", "run_id"};
    for (size_t i = 0; i < sizeof datasets / sizeof datasets[0]; i++) {
        htri_t has = H5Lexists(log->g_meta, datasets[i], H5P_DEFAULT);
        TL_H5(p, has);
        if (has > 0)
            TL_H5(p, H5Ldelete(log->g_meta, datasets[i], H5P_DEFAULT));
    }
    for (size_t i = 0; i < sizeof attrs / sizeof attrs[0]; i++) {
        htri_t has = H5Aexists(log->g_meta, attrs[i]);
        TL_H5(p, has);
        if (has > 0)
            TL_H5(p, H5Adelete(log->g_meta, attrs[i]));
    }
    return TL_OK;

fail:
    return TL_EIO;
}

/* Appends step to the int64 (K,) attribute /meta resumed_at_steps, creating
 * it with K = 1 on the first resume. */
static tl_status tl_log_add_resume_step(tl_log *log, int64_t step)
{
    const char *p = log->path;
    hid_t attr = H5I_INVALID_HID, space = H5I_INVALID_HID;
    int64_t *steps = NULL;
    hsize_t n = 0;
    htri_t has = H5Aexists(log->g_meta, "resumed_at_steps");
    TL_H5(p, has);
    if (has > 0) {
        TL_H5(p, attr = H5Aopen(log->g_meta, "resumed_at_steps", H5P_DEFAULT));
        TL_H5(p, space = H5Aget_space(attr));
        if (H5Sget_simple_extent_ndims(space) != 1 ||
            H5Sget_simple_extent_dims(space, &n, NULL) != 1) {
            tl_seterr(TL_EFORMAT, "run log '%s': /meta resumed_at_steps is not a list of "
                                  "steps; the file is damaged", p);
            goto fail_keep_message;
        }
        H5Sclose(space);
        space = H5I_INVALID_HID;
    }
    steps = malloc((size_t)(n + 1) * sizeof *steps);
    if (!steps) {
        tl_seterr(TL_ENOMEM, "no memory for %llu resume steps", (unsigned long long)n + 1);
        goto fail_keep_message;
    }
    if (n > 0)
        TL_H5(p, H5Aread(attr, H5T_NATIVE_INT64, steps));
    if (attr >= 0) {
        H5Aclose(attr);
        attr = H5I_INVALID_HID;
        TL_H5(p, H5Adelete(log->g_meta, "resumed_at_steps"));
    }
    steps[n] = step;
    hsize_t dims[1] = {n + 1};
    TL_H5(p, space = H5Screate_simple(1, dims, NULL));
    TL_H5(p, attr = H5Acreate2(log->g_meta, "resumed_at_steps", H5T_STD_I64LE, space,
                               H5P_DEFAULT, H5P_DEFAULT));
    TL_H5(p, H5Awrite(attr, H5T_NATIVE_INT64, steps));
    H5Aclose(attr);
    H5Sclose(space);
    free(steps);
    return TL_OK;

fail:
fail_keep_message:
    if (attr >= 0)
        H5Aclose(attr);
    if (space >= 0)
        H5Sclose(space);
    free(steps);
    return tl_lasterr() != TL_OK ? tl_lasterr() : TL_EIO;
}

/* Opens the groups of the file, checks the run id and the format version,
 * and plans the removal of the rows of steps from `step` on in every group
 * (see tl_log_append). Changes nothing in the file. */
static tl_status tl_log_reopen(tl_log *log, const tl_log_meta *meta, int64_t step, char *report,
                               size_t size)
{
    const char *p = log->path;
    int64_t version = 0;
    hid_t attr = H5I_INVALID_HID;
    TL_H5(p, attr = H5Aopen(log->file, "thinklab_log_version", H5P_DEFAULT));
    TL_H5(p, H5Aread(attr, H5T_NATIVE_INT64, &version));
    H5Aclose(attr);
    attr = H5I_INVALID_HID;
    if (version != TL_LOG_FORMAT_VERSION)
        return tl_seterr(TL_EFORMAT, "run log '%s' has format version %lld, this thinklab "
                                     "writes version %d; give the resumed run a new log path",
                         p, (long long)version, (int)TL_LOG_FORMAT_VERSION);

    char id[TL_LOG_RUN_ID_SIZE];
    tl_status st = tl_log_file_run_id(p, log->file, id, sizeof id);
    if (st != TL_OK)
        return st;
    if (!id[0])
        return tl_seterr(TL_EINVAL, "run log '%s' has no run id (an older thinklab wrote it), "
                                    "so it cannot be checked to belong to this run; give the "
                                    "resumed run a new log path", p);
    if (strcmp(id, meta->run_id) != 0)
        return tl_seterr(TL_EINVAL, "run log '%s' belongs to run %s, not to run %s; give the "
                                    "resumed run a new log path", p, id, meta->run_id);

    TL_H5(p, log->g_meta = H5Gopen2(log->file, "meta", H5P_DEFAULT));
    TL_H5(p, log->g_train = H5Gopen2(log->file, "train", H5P_DEFAULT));
    TL_H5(p, log->g_eval = H5Gopen2(log->file, "eval", H5P_DEFAULT));
    TL_H5(p, log->g_routing = H5Gopen2(log->file, "routing", H5P_DEFAULT));
    st = tl_log_main_columns(log, true);
    if (st != TL_OK)
        return st;

    /* /train and the record groups number rows by the steps before them, so
     * the resumed run logs row `step` first; /eval counts completed steps and
     * keeps the evaluation at `step`. */
    int64_t dropped = 0, last = -1;
    tl_log_column *train[] = {&log->train_step,      &log->train_loss,
                              &log->train_lr,        &log->train_grad_norm,
                              &log->train_tokens_per_s, &log->train_flops};
    st = tl_log_columns_keep_before(p, train, 6, step, &dropped, &last);
    if (st != TL_OK)
        return st;
    if (last >= 0 && last != step - 1)
        return tl_seterr(TL_EINVAL, "run log '%s' has training rows up to step %lld only, so "
                                    "continuing it at step %lld would leave steps %lld to %lld "
                                    "out of it; give the resumed run a new log path",
                         p, (long long)last, (long long)step, (long long)last + 1,
                         (long long)step - 1);
    log->any_train_step = last >= 0;
    log->last_train_step = last;
    tl_log_report_add(report, size, "train", dropped);

    tl_log_column *eval[] = {&log->eval_step,          &log->eval_split,
                             &log->eval_loss,          &log->eval_perplexity,
                             &log->eval_bits_per_byte, &log->eval_routing_mode,
                             &log->eval_selected_fraction};
    st = tl_log_columns_keep_before(p, eval, 7, step + 1, &dropped, &last);
    if (st != TL_OK)
        return st;
    tl_log_report_add(report, size, "eval", dropped);

    st = tl_log_records_reopen(log, step, report, size);
    if (st == TL_OK)
        st = tl_log_routing_reopen(log, step, report, size);
    if (st != TL_OK)
        return st;
    htri_t spikes = H5Lexists(log->file, "analysis", H5P_DEFAULT);
    if (spikes > 0)
        spikes = H5Lexists(log->file, "analysis/gradient_spikes", H5P_DEFAULT);
    TL_H5(p, spikes);
    log->spikes_in_file = spikes > 0;
    return TL_OK;

fail:
    if (attr >= 0)
        H5Aclose(attr);
    return TL_EIO;
}

/* Copies meta and the strings it points to into one heap block, so that
 * the copy stays valid after tl_log_append() returns. Returns NULL with a
 * message when there is no memory. */
static tl_log_meta *tl_log_meta_copy(const tl_log_meta *meta)
{
    const char *run_id = meta->run_id ? meta->run_id : "";
    size_t n = (size_t)meta->n_plugins;
    size_t bytes = sizeof(tl_log_meta) + 2 * n * sizeof(char *) + strlen(meta->config_json) +
                   strlen(run_id) + 2;
    for (size_t i = 0; i < n; i++)
        bytes += strlen(meta->plugin_names[i]) + strlen(meta->plugin_versions[i]) + 2;
    tl_log_meta *copy = malloc(bytes);
    if (!copy) {
        tl_seterr(TL_ENOMEM, "no memory for the %zu-byte configuration of the resumed run",
                  bytes);
        return NULL;
    }
    *copy = *meta;
    const char **names = (const char **)(copy + 1);
    const char **versions = names + n;
    char *text = (char *)(versions + n);
    const char *sources[2] = {meta->config_json, run_id};
    const char **targets[2] = {&copy->config_json, &copy->run_id};
    for (int i = 0; i < 2; i++) {
        size_t len = strlen(sources[i]) + 1;
        memcpy(text, sources[i], len);
        *targets[i] = text;
        text += len;
    }
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(meta->plugin_names[i]) + 1;
        memcpy(text, meta->plugin_names[i], len);
        names[i] = text;
        text += len;
        len = strlen(meta->plugin_versions[i]) + 1;
        memcpy(text, meta->plugin_versions[i], len);
        versions[i] = text;
        text += len;
    }
    copy->plugin_names = names;
    copy->plugin_versions = versions;
    return copy;
}

void tl_log_append_free(tl_log *log)
{
    free(log->resume_meta);
    log->resume_meta = NULL;
}

tl_status tl_log_append_write_meta(tl_log *log)
{
    if (!log->resume_meta)
        return TL_OK;
    tl_status st = tl_log_clear_run_meta(log);
    if (st == TL_OK)
        st = tl_log_write_run_meta(log, log->resume_meta);
    if (st == TL_OK)
        st = tl_log_add_resume_step(log, log->resume_step);
    if (st == TL_OK)
        tl_log_append_free(log);
    return st;
}

/* Reads row `row` of column col into *value, converted to mem_type. */
static tl_status tl_log_read_row(const char *path, const tl_log_column *col, hsize_t row,
                                 hid_t mem_type, void *value)
{
    hsize_t one = 1;
    hid_t fspace = H5I_INVALID_HID, mspace = H5I_INVALID_HID;
    TL_H5(path, fspace = H5Dget_space(col->dset));
    TL_H5(path, H5Sselect_hyperslab(fspace, H5S_SELECT_SET, &row, NULL, &one, NULL));
    TL_H5(path, mspace = H5Screate_simple(1, &one, NULL));
    TL_H5(path, H5Dread(col->dset, mem_type, mspace, fspace, H5P_DEFAULT, value));
    H5Sclose(mspace);
    H5Sclose(fspace);
    return TL_OK;

fail:
    if (mspace >= 0)
        H5Sclose(mspace);
    if (fspace >= 0)
        H5Sclose(fspace);
    return TL_EIO;
}

tl_status tl_log_check_train_row(tl_log *log, int64_t step, double loss, double grad_norm)
{
    if (!tl_log_usable(log, "tl_log_check_train_row"))
        return tl_lasterr();
    /* The kept rows end at the checkpoint's last step (tl_log_append checks
     * that they reach it), so that step is the last kept row. */
    hsize_t rows = log->train_step.rows_in_file;
    int64_t last = -1;
    double logged_loss = NAN, logged_norm = NAN;
    tl_status st = TL_OK;
    if (rows > 0) {
        const char *p = log->path;
        st = tl_log_read_row(p, &log->train_step, rows - 1, H5T_NATIVE_INT64, &last);
        if (st == TL_OK)
            st = tl_log_read_row(p, &log->train_loss, rows - 1, H5T_NATIVE_DOUBLE, &logged_loss);
        if (st == TL_OK)
            st = tl_log_read_row(p, &log->train_grad_norm, rows - 1, H5T_NATIVE_DOUBLE,
                                 &logged_norm);
    }
    if (st == TL_OK && last != step)
        st = tl_seterr(TL_EINVAL, "run log '%s' has no training row of step %lld to check "
                                  "against the checkpoint: give the resumed run a new log path",
                       log->path, (long long)step);
    if (st == TL_OK && (memcmp(&logged_loss, &loss, sizeof loss) != 0 ||
                        memcmp(&logged_norm, &grad_norm, sizeof grad_norm) != 0))
        st = tl_seterr(TL_EINVAL, "run log '%s' has loss %.9g and gradient norm %.9g at step "
                                  "%lld, where the checkpoint's run had %.9g and %.9g: after "
                                  "the checkpoint the log went on with another branch of the "
                                  "run (a resume from an earlier checkpoint), and continuing it "
                                  "would join the two; give the resumed run a new log path",
                       log->path, logged_loss, logged_norm, (long long)step, loss, grad_norm);
    if (st != TL_OK)
        log->failed = true;
    return st;
}

tl_log *tl_log_append(const char *path, const tl_log_meta *meta, int64_t step, char *dropped,
                      size_t dropped_size)
{
    if (!tl_log_meta_valid("tl_log_append", path, meta))
        return NULL;
    if (!meta->run_id || !meta->run_id[0]) {
        tl_seterr(TL_EINVAL, "tl_log_append: meta->run_id is required to check that run log "
                             "'%s' belongs to the run", path);
        return NULL;
    }
    if (step < 0) {
        tl_seterr(TL_EINVAL, "tl_log_append: step is %lld; pass the checkpoint's step, 0 or "
                             "more", (long long)step);
        return NULL;
    }
    if (dropped && dropped_size)
        dropped[0] = '\0';
    if (tl_check_existing_file(path, "run log") != TL_OK)
        return NULL;
    /* Another writer may be in the middle of a flush, so the lock comes
     * before anything reads the file. */
    int lock_fd = -1;
    if (tl_log_lock(path, &lock_fd) != TL_OK)
        return NULL;
    if (!tl_log_is_run_log(path)) {
        tl_log_unlock(lock_fd);
        tl_seterr(TL_EINVAL, "cannot continue run log '%s': the file is missing or not a "
                             "thinklab run log", path);
        return NULL;
    }

    tl_log *log = tl_log_alloc(path, meta, lock_fd);
    if (!log)
        return NULL;

    /* The file stays as it was until the first flush, so that a caller can
     * still reject the log, for example in tl_log_token_grads_init(), and
     * close it unchanged. */
    char report[512] = "";
    log->file = tl_log_open_file(path, H5F_ACC_RDWR);
    if (log->file < 0) {
        tl_log_h5_error(path, "H5Fopen");
        goto fail;
    }
    if (tl_log_reopen(log, meta, step, report, sizeof report) != TL_OK)
        goto fail;
    log->resume_meta = tl_log_meta_copy(meta);
    if (!log->resume_meta)
        goto fail;
    log->resume_step = step;
    if (dropped && dropped_size)
        snprintf(dropped, dropped_size, "%s", report);
    return log;

fail:
    log->failed = true;
    {
        char message[2048];
        tl_status status = tl_lasterr();
        snprintf(message, sizeof message, "%s", tl_errmsg());
        tl_log_close(log);
        tl_seterr(status, "%s", message);
    }
    return NULL;
}
