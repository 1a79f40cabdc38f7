/* The run log file: creation with /meta, /train and /eval rows, flush, close. */
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "log_internal.h"
#include "thinklab/thinklab.h"

bool tl_log_usable(const tl_log *log, const char *func)
{
    if (!log) {
        tl_seterr(TL_EINVAL, "%s: log is NULL; create it with tl_log_create()", func);
        return false;
    }
    if (log->failed) {
        tl_seterr(TL_ESTATE, "%s: an earlier write to run log '%s' failed, so the file may "
                             "lack rows; close the log", func, log->path);
        return false;
    }
    return true;
}

const char *tl_log_path(const tl_log *log) { return log ? log->path : NULL; }

int64_t tl_log_train_rows_flushed(const tl_log *log)
{
    return log ? (int64_t)log->train_step.rows_in_file : 0;
}

int64_t tl_log_last_train_step(const tl_log *log)
{
    return log && log->any_train_step ? log->last_train_step : -1;
}

tl_status tl_log_write_run_meta(tl_log *log, const tl_log_meta *meta)
{
    const char *p = log->path;
    hid_t g = log->g_meta;
    unsigned major = 0, minor = 0, release = 0;
    H5get_libversion(&major, &minor, &release);
    char hdf5_version[32];
    snprintf(hdf5_version, sizeof hdf5_version, "%u.%u.%u", major, minor, release);

    tl_status st = tl_log_string_scalar(p, g, "config_json", meta->config_json);
    if (st == TL_OK)
        st = tl_log_strings(p, g, "plugin_names", meta->n_plugins, meta->plugin_names);
    if (st == TL_OK)
        st = tl_log_strings(p, g, "plugin_versions", meta->n_plugins, meta->plugin_versions);
    if (st == TL_OK)
        st = tl_log_attr_u64(p, g, "seed", meta->seed);
    if (st == TL_OK)
        st = tl_log_attr_i64(p, g, "threads", meta->threads);
    if (st == TL_OK)
        st = tl_log_attr_str(p, g, "thinklab_version", TL_VERSION_STRING);
    if (st == TL_OK)
        st = tl_log_attr_str(p, g, "hdf5_version", hdf5_version);
    if (st == TL_OK)
        st = tl_log_attr_i64(p, g, "flush_every", log->flush_every);
    if (st == TL_OK && meta->run_id && meta->run_id[0])
        st = tl_log_attr_str(p, g, "run_id", meta->run_id);
    return st;
}

static tl_status tl_log_write_meta(tl_log *log, const tl_log_meta *meta)
{
    const char *p = log->path;
    char start[32];
    time_t now = time(NULL);
    struct tm utc;
    if (!gmtime_r(&now, &utc) || strftime(start, sizeof start, "%Y-%m-%dT%H:%M:%SZ", &utc) == 0)
        strcpy(start, "unknown");
    tl_status st = tl_log_attr_i64(p, log->file, "thinklab_log_version", TL_LOG_FORMAT_VERSION);
    if (st == TL_OK)
        st = tl_log_attr_str(p, log->g_meta, "start_time", start);
    if (st == TL_OK)
        st = tl_log_write_run_meta(log, meta);
    return st;
}

tl_status tl_log_main_columns(tl_log *log, bool open_existing)
{
    const char *p = log->path;
    struct {
        tl_log_column *col;
        hid_t group;
        const char *name;
        tl_log_type type;
    } cols[] = {
        {&log->train_step, log->g_train, "step", TL_LOG_I64},
        {&log->train_loss, log->g_train, "loss", TL_LOG_F64},
        {&log->train_lr, log->g_train, "lr", TL_LOG_F64},
        {&log->train_grad_norm, log->g_train, "grad_norm", TL_LOG_F64},
        {&log->train_tokens_per_s, log->g_train, "tokens_per_s", TL_LOG_F64},
        {&log->train_flops, log->g_train, "flops", TL_LOG_F64},
        {&log->eval_step, log->g_eval, "step", TL_LOG_I64},
        {&log->eval_split, log->g_eval, "split", TL_LOG_STR},
        {&log->eval_loss, log->g_eval, "loss", TL_LOG_F64},
        {&log->eval_perplexity, log->g_eval, "perplexity", TL_LOG_F64},
        {&log->eval_bits_per_byte, log->g_eval, "bits_per_byte", TL_LOG_F64},
        {&log->eval_routing_mode, log->g_eval, "routing_mode", TL_LOG_STR},
        {&log->eval_selected_fraction, log->g_eval, "selected_fraction", TL_LOG_F64},
    };
    for (size_t i = 0; i < sizeof cols / sizeof cols[0]; i++) {
        tl_status st = open_existing
                           ? tl_log_column_open(p, cols[i].col, cols[i].group, cols[i].name,
                                                cols[i].type, 0)
                           : tl_log_column_create(p, cols[i].col, cols[i].group, cols[i].name,
                                                  cols[i].type, 0, NULL);
        if (st != TL_OK)
            return st;
    }
    return TL_OK;
}

bool tl_log_meta_valid(const char *func, const char *path, const tl_log_meta *meta)
{
    if (!path || !*path) {
        tl_seterr(TL_EINVAL, "%s: path is empty; pass the run's log file path", func);
        return false;
    }
    if (!meta || !meta->config_json) {
        tl_seterr(TL_EINVAL, "%s: meta and meta->config_json are required for "
                             "run log '%s'", func, path);
        return false;
    }
    if (meta->n_plugins < 0 ||
        (meta->n_plugins > 0 && (!meta->plugin_names || !meta->plugin_versions))) {
        tl_seterr(TL_EINVAL, "%s: n_plugins is %d but plugin_names or "
                             "plugin_versions is missing for run log '%s'", func,
                  meta->n_plugins, path);
        return false;
    }
    for (int i = 0; i < meta->n_plugins; i++)
        if (!meta->plugin_names[i] || !meta->plugin_versions[i]) {
            tl_seterr(TL_EINVAL, "%s: plugin %d has a NULL name or version", func, i);
            return false;
        }
    if (meta->flush_every < 0) {
        tl_seterr(TL_EINVAL, "%s: flush_every is %d; use a positive step count "
                             "or 0 for %d", func, meta->flush_every, TL_LOG_FLUSH_EVERY_DEFAULT);
        return false;
    }
    if (meta->run_id && strlen(meta->run_id) >= TL_LOG_RUN_ID_SIZE) {
        tl_seterr(TL_EINVAL, "%s: run_id '%s' is longer than %d characters", func,
                  meta->run_id, TL_LOG_RUN_ID_SIZE - 1);
        return false;
    }
    return true;
}

tl_log *tl_log_alloc(const char *path, const tl_log_meta *meta, int lock_fd)
{
    tl_log *log = calloc(1, sizeof *log);
    char *path_copy = strdup(path);
    if (!log || !path_copy) {
        free(log);
        free(path_copy);
        tl_log_unlock(lock_fd);
        tl_seterr(TL_ENOMEM, "could not allocate run log '%s'", path);
        return NULL;
    }
    log->path = path_copy;
    log->file = log->g_meta = log->g_train = log->g_eval = log->g_routing = H5I_INVALID_HID;
    log->g_grad_norms = log->g_token_grads = H5I_INVALID_HID;
    log->lock_fd = lock_fd;
    log->flush_every = meta->flush_every ? meta->flush_every : TL_LOG_FLUSH_EVERY_DEFAULT;
    return log;
}

bool tl_log_is_run_log(const char *path)
{
    /* H5Fopen blocks on a FIFO until another process opens it for writing. */
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
        return false;
    tl_hdf5_prepare();
    hid_t file = tl_log_open_file(path, H5F_ACC_RDONLY);
    bool yes = file >= 0 && H5Aexists(file, "thinklab_log_version") > 0;
    if (file >= 0)
        H5Fclose(file);
    H5Eclear2(H5E_DEFAULT);
    return yes;
}

tl_log *tl_log_create(const char *path, const tl_log_meta *meta)
{
    if (!tl_log_meta_valid("tl_log_create", path, meta))
        return NULL;
    if (tl_check_parent_folder(path, "run log") != TL_OK)
        return NULL;
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        tl_seterr(TL_EINVAL, "run log '%s' is a folder; give a file path such as '%s/run.h5'",
                  path, path);
        return NULL;
    }
    if (tl_check_existing_file(path, "run log") != TL_OK ||
        tl_check_link_target(path, "run log") != TL_OK)
        return NULL;
    tl_hdf5_prepare();
    if (!meta->overwrite && access(path, F_OK) == 0) {
        tl_seterr(TL_EIO, "run log '%s' already exists; choose a new path, or replace it with "
                          "log_overwrite = true (the trainer key; overwrite in tl_log_meta)",
                  path);
        return NULL;
    }
    /* Below the headroom every flush fails its room check, and a limit that
     * the first writes cross kills the process with SIGXFSZ and leaves a
     * file that no reader can open. */
    uint64_t limit = tl_file_size_limit();
    if (limit < TL_LOG_FLUSH_HEADROOM) {
        tl_seterr(TL_EIO, "cannot create run log '%s': the process's file size limit "
                          "(ulimit -f) is %.2f MiB, and a log needs at least %.2f MiB: raise "
                          "the limit", path, (double)limit / 1048576.0,
                  (double)TL_LOG_FLUSH_HEADROOM / 1048576.0);
        return NULL;
    }
    if (access(path, F_OK) != 0) {
        int err = tl_probe_create(path);
        if (err != 0) {
            tl_seterr(TL_EIO, "cannot create run log '%s': %s; %s", path, strerror(err),
                      tl_create_advice(err));
            return NULL;
        }
    }
    /* An existing log that overwrite would truncate may still be written by
     * another process, so the lock comes before anything reads or truncates
     * the file. */
    int lock_fd = -1;
    if (meta->overwrite && access(path, F_OK) == 0) {
        if (tl_log_lock(path, &lock_fd) != TL_OK)
            return NULL;
        if (!tl_log_is_run_log(path)) {
            tl_log_unlock(lock_fd);
            tl_seterr(TL_EIO, "run log '%s' exists and is not a thinklab run log; overwriting "
                              "would destroy it: choose another path or delete the file", path);
            return NULL;
        }
    }

    tl_log *log = tl_log_alloc(path, meta, lock_fd);
    if (!log)
        return NULL;

    hid_t fapl = H5I_INVALID_HID;
    TL_H5(path, fapl = H5Pcreate(H5P_FILE_ACCESS));
#if TL_LOG_HAVE_FILE_LOCKING
    /* A non-SWMR writer otherwise holds an exclusive lock until close, and
     * readers could not open the file during the run. The default (earliest)
     * format keeps superblock version 0, which has no "open for writing" flag
     * that would also stop readers or need h5clear after a crash. */
    TL_H5(path, H5Pset_file_locking(fapl, 0, 1));
#endif
    unsigned flags = meta->overwrite ? H5F_ACC_TRUNC : H5F_ACC_EXCL;
    TL_H5(path, log->file = H5Fcreate(path, flags, H5P_DEFAULT, fapl));
    H5Pclose(fapl);
    fapl = H5I_INVALID_HID;
    if (log->lock_fd < 0 && tl_log_lock(path, &log->lock_fd) != TL_OK)
        goto fail_keep_message;

    TL_H5(path, log->g_meta = H5Gcreate2(log->file, "meta", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    TL_H5(path, log->g_train = H5Gcreate2(log->file, "train", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    TL_H5(path, log->g_eval = H5Gcreate2(log->file, "eval", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    TL_H5(path, log->g_routing = H5Gcreate2(log->file, "routing", H5P_DEFAULT, H5P_DEFAULT,
                                            H5P_DEFAULT));
    if (tl_log_write_meta(log, meta) != TL_OK || tl_log_main_columns(log, false) != TL_OK)
        goto fail_keep_message;
    TL_H5(path, H5Fflush(log->file, H5F_SCOPE_LOCAL));
    return log;

fail:
fail_keep_message:
    if (fapl >= 0)
        H5Pclose(fapl);
    log->failed = true;
    {
        /* Keep the message of the first failure over anything close reports,
         * and remove the half-written file so a retry with the same path works. */
        char message[2048];
        tl_status status = tl_lasterr();
        bool created = log->file >= 0;
        snprintf(message, sizeof message, "%s", tl_errmsg());
        tl_log_close(log);
        if (created)
            unlink(path);
        tl_seterr(status, "%s", message);
    }
    return NULL;
}

tl_status tl_log_train(tl_log *log, const tl_log_train_record *rec)
{
    if (!tl_log_usable(log, "tl_log_train"))
        return tl_lasterr();
    if (!rec)
        return tl_seterr(TL_EINVAL, "tl_log_train: record is NULL");
    if (log->any_train_step && rec->step <= log->last_train_step)
        return tl_seterr(TL_EINVAL, "tl_log_train: step %lld after step %lld in run log '%s'; "
                                    "steps must increase",
                         (long long)rec->step, (long long)log->last_train_step, log->path);

    tl_log_column *cols[] = {&log->train_step, &log->train_loss, &log->train_lr,
                             &log->train_grad_norm, &log->train_tokens_per_s, &log->train_flops};
    void *rows[6];
    if (tl_log_columns_push(cols, rows, 6) != TL_OK)
        return TL_ENOMEM;
    *(int64_t *)rows[0] = rec->step;
    *(double *)rows[1] = rec->loss;
    *(double *)rows[2] = rec->lr;
    *(double *)rows[3] = rec->grad_norm;
    *(double *)rows[4] = rec->tokens_per_s;
    *(double *)rows[5] = rec->flops;
    log->last_train_step = rec->step;
    log->any_train_step = true;

    if (log->train_step.n_pending >= (size_t)log->flush_every)
        return tl_log_flush(log);
    return TL_OK;
}

tl_status tl_log_eval(tl_log *log, const tl_log_eval_record *rec)
{
    if (!tl_log_usable(log, "tl_log_eval"))
        return tl_lasterr();
    if (!rec || !rec->split || !rec->routing_mode)
        return tl_seterr(TL_EINVAL, "tl_log_eval: record, split and routing_mode are required "
                                    "(use \"none\" for a model without a router)");
    char *split = strdup(rec->split), *mode = strdup(rec->routing_mode);
    tl_log_column *cols[] = {&log->eval_step, &log->eval_split, &log->eval_loss,
                             &log->eval_perplexity, &log->eval_bits_per_byte,
                             &log->eval_routing_mode, &log->eval_selected_fraction};
    void *rows[7];
    if (!split || !mode || tl_log_columns_push(cols, rows, 7) != TL_OK) {
        free(split);
        free(mode);
        return tl_seterr(TL_ENOMEM, "could not buffer an eval record for run log '%s'",
                         log->path);
    }
    *(int64_t *)rows[0] = rec->step;
    *(char **)rows[1] = split;
    *(double *)rows[2] = rec->loss;
    *(double *)rows[3] = rec->perplexity;
    *(double *)rows[4] = rec->bits_per_byte;
    *(char **)rows[5] = mode;
    *(double *)rows[6] = rec->selected_fraction;
    return TL_OK;
}

/* Checks that the file system and the process's file size limit leave room
 * for a flush that adds about `bytes`. A write that fails halfway leaves an
 * HDF5 file that no reader can open, so a flush without room is rejected
 * before it writes anything, and the file keeps the rows of earlier flushes. */
static tl_status tl_log_check_room(const tl_log *log, uint64_t bytes)
{
    /* Twice the estimate plus 1 MiB for HDF5's metadata and heap growth. */
    uint64_t need = 2 * bytes + TL_LOG_FLUSH_HEADROOM;
    struct stat st;
    struct statvfs fs;
    if (stat(log->path, &st) != 0 || statvfs(log->path, &fs) != 0)
        return TL_OK; /* the flush itself reports what is wrong with the file */
    uint64_t room = (uint64_t)fs.f_bavail * (uint64_t)fs.f_frsize;
    const char *bound = "on its file system";
    struct rlimit lim;
    if (getrlimit(RLIMIT_FSIZE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY) {
        uint64_t size = st.st_size > 0 ? (uint64_t)st.st_size : 0;
        uint64_t below = lim.rlim_cur > size ? (uint64_t)lim.rlim_cur - size : 0;
        if (below < room) {
            room = below;
            bound = "below the process's file size limit (ulimit -f)";
        }
    }
    if (room >= need)
        return TL_OK;
    return tl_seterr(TL_EIO, "run log '%s': only %.2f MiB of room is left %s, and writing "
                             "the buffered rows needs about %.2f MiB (twice their size plus 1 "
                             "MiB, so that no write stops halfway), so they are not written and "
                             "the log keeps "
                             "the %lld training steps flushed before: make room, then run again "
                             "or resume from a checkpoint",
                     log->path, (double)room / 1048576.0, bound, (double)need / 1048576.0,
                     (long long)log->train_step.rows_in_file);
}

tl_status tl_log_flush(tl_log *log)
{
    if (!tl_log_usable(log, "tl_log_flush"))
        return tl_lasterr();
    tl_log_column *cols[] = {
        &log->train_step,      &log->train_loss,         &log->train_lr,
        &log->train_grad_norm, &log->train_tokens_per_s, &log->train_flops,
        &log->eval_step,       &log->eval_split,         &log->eval_loss,
        &log->eval_perplexity, &log->eval_bits_per_byte, &log->eval_routing_mode,
        &log->eval_selected_fraction,
    };
    uint64_t bytes = tl_log_records_write_bytes(log) + tl_log_routing_write_bytes(log) +
                     tl_log_spikes_write_bytes(log);
    for (size_t i = 0; i < sizeof cols / sizeof cols[0]; i++)
        bytes += tl_log_column_write_bytes(cols[i]);
    tl_status st = bytes > 0 ? tl_log_check_room(log, bytes) : TL_OK;
    if (st != TL_OK)
        goto fail_keep_message;
    /* The first flush after tl_log_append() writes the resumed run's /meta
     * too; the column writes below remove the rows that it logs again. */
    st = tl_log_append_write_meta(log);
    for (size_t i = 0; i < sizeof cols / sizeof cols[0] && st == TL_OK; i++)
        st = tl_log_column_write(log->path, cols[i]);
    if (st == TL_OK)
        st = tl_log_records_flush(log);
    if (st == TL_OK)
        st = tl_log_routing_flush(log);
    if (st == TL_OK)
        st = tl_log_spikes_flush(log);
    if (st != TL_OK)
        goto fail_keep_message;
    /* The single H5Fflush of this flush: until it returns, the file on disk may
     * hold a mix of old and new metadata. */
    TL_H5(log->path, H5Fflush(log->file, H5F_SCOPE_LOCAL));
    return TL_OK;

fail:
fail_keep_message:
    log->failed = true;
    return tl_lasterr();
}

tl_status tl_log_close(tl_log *log)
{
    if (!log)
        return TL_OK;
    tl_status st = TL_OK;
    if (!log->failed && log->file >= 0)
        st = tl_log_flush(log);

    tl_log_column *cols[] = {
        &log->train_step,      &log->train_loss,         &log->train_lr,
        &log->train_grad_norm, &log->train_tokens_per_s, &log->train_flops,
        &log->eval_step,       &log->eval_split,         &log->eval_loss,
        &log->eval_perplexity, &log->eval_bits_per_byte, &log->eval_routing_mode,
        &log->eval_selected_fraction,
    };
    for (size_t i = 0; i < sizeof cols / sizeof cols[0]; i++)
        tl_log_column_close(cols[i]);
    tl_log_records_free(log);
    tl_log_routing_free(log);
    tl_log_spikes_free(log);
    tl_log_append_free(log);
    hid_t groups[] = {log->g_meta, log->g_train, log->g_eval, log->g_routing};
    for (size_t i = 0; i < sizeof groups / sizeof groups[0]; i++)
        if (groups[i] >= 0)
            H5Gclose(groups[i]);
    if (log->file >= 0) {
        hid_t file = log->file;
        log->file = H5I_INVALID_HID;
        if (st == TL_OK)
            TL_H5(log->path, H5Fclose(file));
        else
            H5Fclose(file);
    }
    tl_log_unlock(log->lock_fd);
    free(log->path);
    free(log);
    return st;

fail:
    tl_log_unlock(log->lock_fd);
    free(log->path);
    free(log);
    return TL_EIO;
}
