/* State of a run log and the growing-dataset helper its parts share. */
#ifndef THINKLAB_LOG_INTERNAL_H
#define THINKLAB_LOG_INTERNAL_H

#include <hdf5.h>

#include "thinklab/log.h"

/* H5Pset_file_locking exists in HDF5 1.10.7+ and 1.12.1+. */
#if H5_VERSION_GE(1, 12, 1) || (H5_VERS_MAJOR == 1 && H5_VERS_MINOR == 10 && H5_VERS_RELEASE >= 7)
#define TL_LOG_HAVE_FILE_LOCKING 1
#else
#define TL_LOG_HAVE_FILE_LOCKING 0
#endif

/* Bytes a flush needs beyond twice its estimate, for HDF5's metadata and heap
 * growth (see tl_log_check_room). */
#define TL_LOG_FLUSH_HEADROOM ((uint64_t)1 << 20)

/* Sets a message naming the log file, the failing HDF5 call and the innermost
 * HDF5 error description, then clears the HDF5 error stack. */
void tl_log_h5_error(const char *path, const char *call);

/* The one check for HDF5 calls: a negative result (hid_t or herr_t) sets the
 * message and jumps to the enclosing function's fail label. */
#define TL_H5(path, call)                                                                \
    do {                                                                                 \
        if ((call) < 0) {                                                                \
            tl_log_h5_error((path), #call);                                              \
            goto fail;                                                                   \
        }                                                                                \
    } while (0)

/* A dataset of rows with a fixed shape, growing along an unlimited first
 * axis. Rows are buffered in memory until tl_log_column_write(). */
typedef struct tl_log_column {
    hid_t dset;
    hid_t mem_type;
    bool is_string;        /* rows are one char * each (variable-length UTF-8), owned here */
    int row_rank;          /* 0..2 dimensions after the first */
    hsize_t row_dims[2];
    size_t row_bytes;
    hsize_t rows_in_file;
    /* The dataset contains more than rows_in_file rows, and the next write
     * removes the extra ones, which a resumed run logs again (see
     * tl_log_append). */
    bool trim;
    unsigned char *pending; /* n_pending rows of row_bytes */
    size_t n_pending, cap_pending;
} tl_log_column;

/* Element types of columns. */
typedef enum tl_log_type {
    TL_LOG_F64,
    TL_LOG_F32,
    TL_LOG_I64,
    TL_LOG_I32,
    TL_LOG_I8,
    TL_LOG_U8,
    TL_LOG_STR,
    TL_LOG_TYPE_COUNT
} tl_log_type;

/* Variable-length UTF-8 string type; the caller closes it. */
hid_t tl_log_str_type(void);

tl_status tl_log_column_create(const char *path, tl_log_column *col, hid_t group,
                               const char *name, tl_log_type type, int row_rank,
                               const hsize_t *row_dims);
/* Opens dataset name of group, written by tl_log_column_create() with type
 * and row_rank dimensions after the first, to append to it. The row
 * dimensions come from the file. */
tl_status tl_log_column_open(const char *path, tl_log_column *col, hid_t group,
                             const char *name, tl_log_type type, int row_rank);
/* Plans to keep only the leading rows of the n columns whose step, read from
 * the int64 column cols[0], is below limit: the rows from the first step at
 * limit or above are removed at the next write. Rows beyond the shortest
 * column, which a crash during a flush can leave, go as well. Sets *dropped
 * to the rows of cols[0] removed and *last_step to the last kept step, or -1
 * when no row stays. */
tl_status tl_log_columns_keep_before(const char *path, tl_log_column *const *cols, int n,
                                     int64_t limit, int64_t *dropped, int64_t *last_step);
/* Appends a zeroed row and returns it, or NULL with a message. */
void *tl_log_column_push(tl_log_column *col);
/* Appends one zeroed row to each of n columns; on failure no column keeps a
 * new row. */
tl_status tl_log_columns_push(tl_log_column *const *cols, void **rows, int n);
/* Sets the dataset to rows_in_file plus the buffered rows, which removes the
 * rows of a planned trim, writes the buffered rows and empties the buffer. */
tl_status tl_log_column_write(const char *path, tl_log_column *col);
/* Estimates the bytes the next tl_log_column_write() adds to the file. */
uint64_t tl_log_column_write_bytes(const tl_log_column *col);
void tl_log_column_close(tl_log_column *col);

/* Writes a scalar attribute or a scalar / 1-D string dataset. */
tl_status tl_log_attr_i64(const char *path, hid_t obj, const char *name, int64_t value);
tl_status tl_log_attr_u64(const char *path, hid_t obj, const char *name, uint64_t value);
tl_status tl_log_attr_f64(const char *path, hid_t obj, const char *name, double value);
tl_status tl_log_attr_str(const char *path, hid_t obj, const char *name, const char *value);
tl_status tl_log_strings(const char *path, hid_t group, const char *name, int64_t n,
                         const char *const *values);
tl_status tl_log_string_scalar(const char *path, hid_t group, const char *name,
                               const char *value);
/* Reads a scalar string attribute into a heap string the caller frees, or
 * NULL with a message. */
char *tl_log_read_attr_str(const char *path, hid_t obj, const char *name);
/* Writes a fixed 1-D float64 dataset. */
tl_status tl_log_f64_array(const char *path, hid_t group, const char *name, int64_t n,
                           const double *values);

typedef struct tl_log_routing_layer tl_log_routing_layer;
typedef struct tl_log_spikes tl_log_spikes;

struct tl_log {
    char *path;
    hid_t file;
    int lock_fd; /* descriptor holding the writer's lock (see lock.c), or -1 */
    hid_t g_meta, g_train, g_eval, g_routing;
    int flush_every;
    bool failed; /* a write failed: the file may lack rows, so appends are rejected */

    tl_log_column train_step, train_loss, train_lr, train_grad_norm, train_tokens_per_s,
        train_flops;
    int64_t last_train_step;
    bool any_train_step;

    tl_log_column eval_step, eval_split, eval_loss, eval_perplexity, eval_bits_per_byte,
        eval_routing_mode, eval_selected_fraction;

    hid_t g_grad_norms; /* H5I_INVALID_HID until initialised */
    /* The group came from the file (tl_log_append) and waits for the
     * matching tl_log_grad_norms_init(); likewise for /token_grads. */
    bool grad_norms_reopened, token_grads_reopened;
    int64_t n_params;
    tl_log_column gn_step, gn_values;

    hid_t g_token_grads;
    int token_states;
    int64_t n_tokens;
    tl_log_column tg_step, tg_norms, tg_tokens, tg_losses;

    tl_log_routing_layer **routing;
    int n_routing;

    tl_log_spikes *spikes;
    bool spikes_in_file; /* /analysis/gradient_spikes was there before tl_log_append */

    /* The resumed run's /meta, a copy owned here, and the checkpoint step
     * of tl_log_append(). The next flush writes them together with the
     * planned row removals and sets resume_meta to NULL. Until then the
     * file stays as tl_log_append() found it. */
    tl_log_meta *resume_meta;
    int64_t resume_step;
};

/* Opens path with HDF5 file locking off, as the writer does, so that a log
 * that a reader has open can still be continued. A log that a writer of
 * this process has open can then be read as well, because HDF5 rejects a
 * second open of a file that is open with another locking setting. */
hid_t tl_log_open_file(const char *path, unsigned flags);

/* Takes the lock that marks path as written by this process and sets
 * *fd_out to the descriptor that holds it, or to -1 when path does not
 * exist, cannot be opened for writing or its file system has no such locks.
 * Fails when another process holds the lock. */
tl_status tl_log_lock(const char *path, int *fd_out);
/* Releases the lock of tl_log_lock(); -1 is a no-op. */
void tl_log_unlock(int fd);

/* Allocates a log for path with no HDF5 object open and meta's flush
 * interval; it takes lock_fd (tl_log_lock), which it releases when the
 * allocation fails. NULL with a message on failure. */
tl_log *tl_log_alloc(const char *path, const tl_log_meta *meta, int lock_fd);
/* Rejects calls on a NULL or failed log. */
bool tl_log_usable(const tl_log *log, const char *func);
/* Checks path and meta for func, tl_log_create() or tl_log_append(). */
bool tl_log_meta_valid(const char *func, const char *path, const tl_log_meta *meta);
/* Writes the /meta items that describe the run's configuration: all but
 * start_time and resumed_at_steps. */
tl_status tl_log_write_run_meta(tl_log *log, const tl_log_meta *meta);
/* Creates the /train and /eval columns, or opens those of an existing log. */
tl_status tl_log_main_columns(tl_log *log, bool open_existing);

/* Parts of tl_log_append(): reopen the groups of the part that the file
 * has, plan the removal of rows of steps from `step` on, and append
 * "group rows" items for groups that lose rows to report (size bytes). */
tl_status tl_log_records_reopen(tl_log *log, int64_t step, char *report, size_t size);
tl_status tl_log_routing_reopen(tl_log *log, int64_t step, char *report, size_t size);
/* Writes the /meta of a resumed run that tl_log_append() keeps in
 * log->resume_meta and frees it; a no-op when there is none. */
tl_status tl_log_append_write_meta(tl_log *log);
/* Frees log->resume_meta and the strings it owns. */
void tl_log_append_free(tl_log *log);
/* Appends ", name count" (without the comma when report is empty). */
void tl_log_report_add(char *report, size_t size, const char *name, int64_t count);

/* Parts of tl_log_flush() and tl_log_close() owned by the part's file. */
tl_status tl_log_routing_flush(tl_log *log);
void tl_log_routing_free(tl_log *log);
tl_status tl_log_spikes_flush(tl_log *log);
void tl_log_spikes_free(tl_log *log);
tl_status tl_log_records_flush(tl_log *log);
/* Estimates of the bytes the part's next flush adds to the file. */
uint64_t tl_log_routing_write_bytes(const tl_log *log);
uint64_t tl_log_spikes_write_bytes(const tl_log *log);
uint64_t tl_log_records_write_bytes(const tl_log *log);
void tl_log_records_free(tl_log *log);

#endif
