/* Checkpoints: one HDF5 file with everything needed to continue a run bit for
 * bit.
 *
 * Layout (all at the root):
 *   attributes  thinklab_checkpoint_version (int32), thinklab_version,
 *               step, batches_drawn, batch_size, context, numel (int64),
 *               world (int64: ranks that wrote it; batch_size is per rank),
 *               checksum (uint64, FNV-1a over params/data, m and v),
 *               state_checksum (uint64, FNV-1a over rng, step and batches_drawn),
 *               config_checksum (uint64, FNV-1a over config_json, arch/names and
 *               arch/shapes). Files written before state_checksum or
 *               config_checksum existed load without that check.
 *               run_id (string): the run the checkpoint belongs to, as in the
 *               run log's /meta; elapsed_s (float64): wall seconds of training
 *               up to the checkpoint. Files without them load as runs
 *               without an id and with 0 s. last_loss, last_grad_norm
 *               (float64): the loss and gradient norm of step `step` - 1,
 *               as the run log has them, NaN at step 0; a resume into the
 *               log checks them (older files skip the check).
 *   rng         uint64 (4): the batch-sampling xoshiro state
 *   config_json string: trainer and model configuration
 *   arch/names  string: parameter names in store order, one per line
 *   arch/shapes int64 (n_params, 1 + TL_MAX_DIMS): ndim, then the dims
 *   params/data, params/m, params/v  float32 (numel): the parameter block
 *               without gradients, which are zero between steps
 *
 * The file is written to path.tmp and renamed over path, so a crash or a
 * failed write leaves the previous checkpoint. */
#define _DEFAULT_SOURCE /* realpath */
#include <errno.h>
#include <hdf5.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "train/train_internal.h"

enum { SHAPE_COLS = 1 + TL_MAX_DIMS };

/* Sets a message naming the checkpoint, the failing HDF5 call and HDF5's
 * innermost error description. */
static void h5_error(const char *path, const char *call)
{
    char detail[TL_HDF5_DETAIL_SIZE];
    tl_seterr(TL_EIO, "checkpoint '%s': %s failed: %s", path, call, tl_hdf5_error_detail(detail));
}

#define CK_H5(path, call)                                                                    \
    do {                                                                                     \
        if ((call) < 0) {                                                                    \
            h5_error((path), #call);                                                         \
            goto fail;                                                                       \
        }                                                                                    \
    } while (0)

static uint64_t fnv1a(uint64_t h, const void *data, size_t n)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* Checksum of what resumes the sampling: the RNG state, step and batches drawn. */
static uint64_t state_checksum(const uint64_t rng[4], int64_t step, int64_t drawn)
{
    uint64_t h = fnv1a(0xcbf29ce484222325ULL, rng, 4 * sizeof rng[0]);
    h = fnv1a(h, &step, sizeof step);
    return fnv1a(h, &drawn, sizeof drawn);
}

/* Checksum of the configuration text and the architecture fingerprint. Each
 * part is hashed after its length, so that bytes moved from one part to the
 * next change the sum. */
static uint64_t config_checksum(const char *config, const char *names, const int64_t *shapes,
                                size_t n_params)
{
    uint64_t h = 14695981039346656037ull;
    const char *texts[2] = {config, names};
    for (int i = 0; i < 2; i++) {
        uint64_t len = strlen(texts[i]);
        h = fnv1a(h, &len, sizeof len);
        h = fnv1a(h, texts[i], (size_t)len);
    }
    uint64_t rows = n_params;
    h = fnv1a(h, &rows, sizeof rows);
    return fnv1a(h, shapes, n_params * SHAPE_COLS * sizeof *shapes);
}

static uint64_t block_checksum(const float *data, const float *m, const float *v, int64_t n)
{
    uint64_t h = 14695981039346656037ull;
    h = fnv1a(h, data, (size_t)n * sizeof(float));
    h = fnv1a(h, m, (size_t)n * sizeof(float));
    return fnv1a(h, v, (size_t)n * sizeof(float));
}

/* ---- writing -------------------------------------------------------------- */

static herr_t write_attr(hid_t loc, const char *name, hid_t type, const void *value)
{
    hid_t space = H5Screate(H5S_SCALAR);
    if (space < 0)
        return -1;
    hid_t attr = H5Acreate2(loc, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    herr_t st = attr < 0 ? -1 : H5Awrite(attr, type, value);
    if (attr >= 0)
        H5Aclose(attr);
    H5Sclose(space);
    return st;
}

static herr_t write_text(hid_t loc, const char *name, const char *text, bool as_attr)
{
    hid_t type = H5Tcopy(H5T_C_S1);
    if (type < 0)
        return -1;
    herr_t st = H5Tset_size(type, strlen(text) + 1);
    if (st >= 0) {
        if (as_attr) {
            st = write_attr(loc, name, type, text);
        } else {
            hid_t space = H5Screate(H5S_SCALAR);
            hid_t dset = space < 0 ? -1
                                   : H5Dcreate2(loc, name, type, space, H5P_DEFAULT,
                                                H5P_DEFAULT, H5P_DEFAULT);
            st = dset < 0 ? -1 : H5Dwrite(dset, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, text);
            if (dset >= 0)
                H5Dclose(dset);
            if (space >= 0)
                H5Sclose(space);
        }
    }
    H5Tclose(type);
    return st;
}

static herr_t write_array(hid_t loc, const char *name, hid_t file_type, hid_t mem_type,
                          int rank, const hsize_t *dims, const void *data)
{
    hid_t space = H5Screate_simple(rank, dims, NULL);
    if (space < 0)
        return -1;
    hid_t dset = H5Dcreate2(loc, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    herr_t st = dset < 0 ? -1 : H5Dwrite(dset, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
    if (dset >= 0)
        H5Dclose(dset);
    H5Sclose(space);
    return st;
}

/* Names joined by '\n' and the (n, SHAPE_COLS) shape table; heap, caller frees. */
static tl_status arch_describe(const tl_params *p, char **names_out, int64_t **shapes_out)
{
    size_t n = tl_params_count(p), len = 1;
    for (size_t i = 0; i < n; i++)
        len += strlen(tl_params_at(p, i)->name) + 1;
    char *names = malloc(len);
    int64_t *shapes = calloc(n ? n * SHAPE_COLS : 1, sizeof *shapes);
    if (!names || !shapes) {
        free(names);
        free(shapes);
        return tl_seterr(TL_ENOMEM, "no memory for the architecture fingerprint");
    }
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        const tl_tensor *t = tl_params_at(p, i);
        at += (size_t)sprintf(names + at, "%s\n", t->name);
        shapes[i * SHAPE_COLS] = t->ndim;
        for (int d = 0; d < t->ndim; d++)
            shapes[i * SHAPE_COLS + 1 + d] = t->shape[d];
    }
    names[at] = '\0';
    *names_out = names;
    *shapes_out = shapes;
    return TL_OK;
}

/* A checkpoint may replace only a thinklab checkpoint: path must be missing or
 * an HDF5 file with the format attribute, its folder must exist, and path.tmp
 * must be missing or a regular file (a leftover of an interrupted save) that
 * this process can create or write. */
static tl_status check_target(const char *path, const char *tmp)
{
    tl_status st = tl_check_parent_folder(path, "checkpoint");
    if (st != TL_OK)
        return st;
    struct stat sb;
    if (stat(tmp, &sb) == 0 && !S_ISREG(sb.st_mode))
        return tl_seterr(TL_EIO, "cannot create checkpoint '%s': '%s' exists and is not a "
                                 "file; remove it or choose another path", path, tmp);
    int err = tl_probe_create(tmp);
    if (err != 0)
        return tl_seterr(TL_EIO, "cannot create checkpoint '%s': its temporary file '%s' "
                                 "cannot be created (%s); %s", path, tmp, strerror(err),
                         tl_create_advice(err));
    if (stat(path, &sb) != 0)
        return TL_OK;
    if (S_ISDIR(sb.st_mode))
        return tl_seterr(TL_EINVAL, "checkpoint '%s' is a folder; give a file path such as "
                                    "'%s/run.ckpt.h5'", path, path);
    if (tl_require_regular_file(path, "checkpoint", sb.st_mode) != TL_OK)
        return tl_lasterr();
    bool is_checkpoint = false;
    if (S_ISREG(sb.st_mode)) {
        tl_hdf5_prepare();
        hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
        if (file >= 0) {
            is_checkpoint = H5Aexists(file, "thinklab_checkpoint_version") > 0;
            H5Fclose(file);
        }
        H5Eclear2(H5E_DEFAULT);
    }
    if (!is_checkpoint)
        return tl_seterr(TL_EINVAL, "checkpoint '%s' exists and is not a thinklab checkpoint; "
                                    "saving would destroy it: choose another path or delete "
                                    "the file", path);
    return TL_OK;
}

/* Returns path.tmp in a heap buffer the caller frees, or NULL with a message. */
static char *temp_path(const char *path)
{
    size_t len = strlen(path) + 5;
    char *tmp = malloc(len);
    if (!tmp)
        tl_seterr(TL_ENOMEM, "no memory for the checkpoint path");
    else
        snprintf(tmp, len, "%s.tmp", path);
    return tmp;
}

static const char *follow_link(const char *path, char **target);

tl_status tl_checkpoint_check_target(const char *path)
{
    char *target;
    const char *to = follow_link(path, &target);
    if (!to)
        return tl_lasterr();
    char *tmp = temp_path(to);
    tl_status st = tmp ? check_target(to, tmp) : TL_ENOMEM;
    free(tmp);
    free(target);
    return st;
}

/* Writes the image of the in-memory file to tmp with stdio, so that a full
 * disk is a plain write error. Sets *created once tmp exists. */
static tl_status write_image(hid_t file, const char *tmp, int fd, const char *path,
                             bool *created)
{
    ssize_t size = H5Fget_file_image(file, NULL, 0);
    if (size < 0) {
        h5_error(path, "H5Fget_file_image");
        return TL_EIO;
    }
    void *image = malloc(size ? (size_t)size : 1);
    if (!image)
        return tl_seterr(TL_ENOMEM, "checkpoint '%s': no memory for its %zd-byte image", path,
                         size);
    if (H5Fget_file_image(file, image, (size_t)size) < 0) {
        free(image);
        h5_error(path, "H5Fget_file_image");
        return TL_EIO;
    }
    /* The bytes go through the descriptor that holds the lock on tmp, emptied
     * first, so that they reach the file this save opened and locked. */
    int wfd = ftruncate(fd, 0) == 0 ? dup(fd) : -1;
    FILE *f = wfd >= 0 ? fdopen(wfd, "wb") : NULL;
    if (!f) {
        int err = errno;
        if (wfd >= 0)
            close(wfd);
        free(image);
        return tl_seterr(TL_EIO, "checkpoint '%s': cannot write '%s': %s", path, tmp,
                         strerror(err));
    }
    *created = true;
    /* A write past the file size limit (ulimit -f) raises SIGXFSZ, whose
     * default action kills the process. Blocked in this thread, the signal
     * stays pending and the write fails with EFBIG, which is reported like a
     * full disk. The pending signal is then taken off and dropped. */
    sigset_t xfsz, old_mask;
    sigemptyset(&xfsz);
    sigaddset(&xfsz, SIGXFSZ);
    pthread_sigmask(SIG_BLOCK, &xfsz, &old_mask);
    bool ok = fwrite(image, 1, (size_t)size, f) == (size_t)size;
    int err = errno;
    if (fclose(f) != 0 && ok) {
        ok = false;
        err = errno;
    }
    if (!sigismember(&old_mask, SIGXFSZ)) {
        const struct timespec no_wait = {0, 0};
        while (sigtimedwait(&xfsz, NULL, &no_wait) == SIGXFSZ)
            ;
    }
    pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
    free(image);
    if (!ok)
        return tl_seterr(TL_EIO, "checkpoint '%s': writing '%s' failed: %s", path, tmp,
                         strerror(err));
    return TL_OK;
}

static tl_status write_file(tl_trainer *tr, const char *tmp, int fd, const char *path,
                            bool *created)
{
    tl_params *p = tr->params;
    int64_t numel = tl_params_numel(p);
    char *names = NULL;
    int64_t *shapes = NULL;
    tl_status st = arch_describe(p, &names, &shapes);
    if (st != TL_OK)
        return st;

    hid_t file = -1, group = -1, fapl = -1;
    tl_hdf5_prepare();
    /* The file is built in memory (the core driver without a backing store)
     * and written out by write_image. When HDF5 writes to disk itself, a
     * failed write (a full disk) leaves a file that H5Fclose cannot close,
     * and HDF5 1.10.8 then crashes when it closes it again at exit. */
    CK_H5(path, fapl = H5Pcreate(H5P_FILE_ACCESS));
    CK_H5(path, H5Pset_fapl_core(fapl, 1 << 20, false));
    CK_H5(path, file = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl));

    int32_t version = TL_CHECKPOINT_FORMAT_VERSION;
    int64_t n_params = (int64_t)tl_params_count(p);
    uint64_t checksum = block_checksum(tl_params_data(p), tl_params_m(p), tl_params_v(p), numel);
    CK_H5(path, write_attr(file, "thinklab_checkpoint_version", H5T_NATIVE_INT32, &version));
    CK_H5(path, write_text(file, "thinklab_version", TL_VERSION_STRING, true));
    CK_H5(path, write_attr(file, "step", H5T_NATIVE_INT64, &tr->step));
    CK_H5(path, write_attr(file, "batches_drawn", H5T_NATIVE_INT64, &tr->sampler.batches_drawn));
    CK_H5(path, write_attr(file, "batch_size", H5T_NATIVE_INT64, &tr->cfg.batch_size));
    int64_t world = tr->cfg.world;
    CK_H5(path, write_attr(file, "world", H5T_NATIVE_INT64, &world));
    CK_H5(path, write_attr(file, "context", H5T_NATIVE_INT64, &tr->cfg.context));
    CK_H5(path, write_attr(file, "numel", H5T_NATIVE_INT64, &numel));
    CK_H5(path, write_attr(file, "checksum", H5T_NATIVE_UINT64, &checksum));
    uint64_t state = state_checksum(tr->rng.s, tr->step, tr->sampler.batches_drawn);
    CK_H5(path, write_attr(file, "state_checksum", H5T_NATIVE_UINT64, &state));
    uint64_t config = config_checksum(tr->config_json, names, shapes, (size_t)n_params);
    CK_H5(path, write_attr(file, "config_checksum", H5T_NATIVE_UINT64, &config));
    CK_H5(path, write_text(file, "run_id", tr->run_id, true));
    double elapsed = tl_train_elapsed(tr);
    CK_H5(path, write_attr(file, "elapsed_s", H5T_NATIVE_DOUBLE, &elapsed));
    double last_loss = tr->stats_has_last_step ? tr->stats.loss : NAN;
    double last_norm = tr->stats_has_last_step ? tr->stats.grad_norm : NAN;
    CK_H5(path, write_attr(file, "last_loss", H5T_NATIVE_DOUBLE, &last_loss));
    CK_H5(path, write_attr(file, "last_grad_norm", H5T_NATIVE_DOUBLE, &last_norm));

    hsize_t four = 4;
    CK_H5(path, write_array(file, "rng", H5T_STD_U64LE, H5T_NATIVE_UINT64, 1, &four, tr->rng.s));
    CK_H5(path, write_text(file, "config_json", tr->config_json, false));

    CK_H5(path, group = H5Gcreate2(file, "arch", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    CK_H5(path, write_text(group, "names", names, false));
    hsize_t shape_dims[2] = {(hsize_t)n_params, SHAPE_COLS};
    CK_H5(path, write_array(group, "shapes", H5T_STD_I64LE, H5T_NATIVE_INT64, 2, shape_dims,
                            shapes));
    CK_H5(path, H5Gclose(group));
    group = -1;

    CK_H5(path, group = H5Gcreate2(file, "params", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    hsize_t n = (hsize_t)numel;
    CK_H5(path, write_array(group, "data", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1, &n,
                            tl_params_data(p)));
    CK_H5(path, write_array(group, "m", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1, &n, tl_params_m(p)));
    CK_H5(path, write_array(group, "v", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1, &n, tl_params_v(p)));
    CK_H5(path, H5Gclose(group));
    group = -1;
    CK_H5(path, H5Fflush(file, H5F_SCOPE_LOCAL));
    st = write_image(file, tmp, fd, path, created);
    H5Fclose(file);
    H5Pclose(fapl);
    free(names);
    free(shapes);
    return st;

fail:
    if (group >= 0)
        H5Gclose(group);
    if (file >= 0)
        H5Fclose(file);
    if (fapl >= 0)
        H5Pclose(fapl);
    free(names);
    free(shapes);
    return TL_EIO;
}

static tl_status read_run_id(const char *path, hid_t file, char id[TL_LOG_RUN_ID_SIZE]);

/* Rejects a save to the run's checkpoint path when the checkpoint there
 * belongs to another run, which wrote it after this one started (the check
 * at the start rejects one that existed then). This run's own checkpoints and
 * the one it resumed from carry its run id or the loaded one. */
static tl_status check_owner(const tl_trainer *tr, const char *path)
{
    struct stat sb;
    if (stat(path, &sb) != 0)
        return TL_OK;
    tl_hdf5_prepare();
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file < 0) {
        H5Eclear2(H5E_DEFAULT);
        return TL_OK; /* check_target found a thinklab checkpoint there a moment ago */
    }
    char id[TL_LOG_RUN_ID_SIZE];
    tl_status st = read_run_id(path, file, id);
    H5Fclose(file);
    if (st != TL_OK || !id[0] || strcmp(id, tr->run_id) == 0 ||
        strcmp(id, tr->checkpoint_run_id) == 0)
        return st;
    return tl_seterr(TL_ESTATE, "checkpoint '%s' now belongs to another run (run id %s), "
                                "which saved it after this run (run id %s) started, so this "
                                "run does not replace it: give each run its own checkpoint "
                                "path, or set checkpoint_overwrite = true",
                     path, id, tr->run_id);
}

/* Saves to path; own is true when path is the run's checkpoint path. */
static tl_status save_to(tl_trainer *tr, const char *path, bool own)
{
    /* A run killed after this save resumes from it, and continues its log
     * only if the log has every step up to it. A failed log does not stop
     * the save, because the weights matter more. A resume into that log is
     * then rejected for the missing steps. */
    if (tr->log && tl_log_flush(tr->log) != TL_OK) {
        fprintf(stderr, "thinklab: saving checkpoint '%s' although flushing run log '%s' "
                        "failed, so the log may lack steps before it: %s\n",
                path, tl_log_path(tr->log), tl_errmsg());
        tl_clearerr();
    }
    char *tmp = temp_path(path);
    if (!tmp)
        return TL_ENOMEM;

    tl_status st = check_target(path, tmp);
    if (st == TL_OK && own && !tr->cfg.checkpoint_overwrite)
        st = check_owner(tr, path);
    bool created = false;
    /* The lock on path.tmp lasts until after the rename, so that another
     * process saving to the same path cannot truncate or write the file
     * between this write and the rename, which would leave a damaged
     * checkpoint at path. */
    int lock_fd = -1;
    if (st == TL_OK) {
        int err = tl_lock_for_writing(tmp, &lock_fd);
        if (err == EAGAIN)
            st = tl_seterr(TL_ESTATE, "checkpoint '%s' is being saved by another process, "
                                      "which holds the lock on '%s', so this save stops and "
                                      "leaves the file to it: give each run its own "
                                      "checkpoint path", path, tmp);
        else if (err != 0)
            st = tl_seterr(TL_EIO, "checkpoint '%s': cannot create '%s': %s", path, tmp,
                           strerror(err));
        else
            created = true;
    }
    if (st == TL_OK)
        st = write_file(tr, tmp, lock_fd, path, &created);
    if (st != TL_OK && created) {
        struct stat sb;
        tl_seterr(st, "%s; %s", tl_errmsg(),
                  stat(path, &sb) == 0 ? "the previous checkpoint at that path is unchanged"
                                       : "no checkpoint was written");
    }
    if (st == TL_OK && rename(tmp, path) != 0)
        st = tl_seterr(TL_EIO, "checkpoint '%s': renaming '%s' over it failed; the previous "
                               "checkpoint is unchanged", path, tmp);
    /* Remove only the file this save created, never something the user made. */
    if (st != TL_OK && created)
        remove(tmp);
    if (lock_fd >= 0)
        close(lock_fd);
    free(tmp);
    if (st == TL_OK && own) {
        tr->last_checkpoint = tr->checkpoint_path;
        tr->last_checkpoint_step = tr->step;
    }
    return st;
}

/* Follows path when it is a symbolic link, as the run log does: the save then
 * replaces the file the link points to, and the link stays. Returns path
 * itself, or the link's target in a heap buffer stored in *target as well,
 * or NULL with a message for a dangling link or a loop. */
static const char *follow_link(const char *path, char **target)
{
    *target = NULL;
    struct stat sb;
    if (lstat(path, &sb) != 0 || !S_ISLNK(sb.st_mode))
        return path;
    if (tl_check_link_target(path, "checkpoint") != TL_OK)
        return NULL;
    *target = realpath(path, NULL);
    if (!*target)
        tl_seterr(TL_EIO, "checkpoint '%s': cannot follow the symbolic link: %s", path,
                  strerror(errno));
    return *target;
}

tl_status tl_trainer_save(tl_trainer *tr, const char *path)
{
    if (!tr || !path || !path[0])
        return tl_seterr(TL_EINVAL, "tl_trainer_save: trainer and path must be given");
    bool own = tr->checkpoint_path && strcmp(path, tr->checkpoint_path) == 0;
    char *target;
    const char *to = follow_link(path, &target);
    tl_status st = to ? save_to(tr, to, own) : tl_lasterr();
    free(target);
    return st;
}

/* ---- reading -------------------------------------------------------------- */

static herr_t read_attr(hid_t loc, const char *name, hid_t type, void *value)
{
    hid_t attr = H5Aopen(loc, name, H5P_DEFAULT);
    if (attr < 0)
        return -1;
    herr_t st = H5Aread(attr, type, value);
    H5Aclose(attr);
    return st;
}

/* Reads a scalar string dataset, fixed-length as thinklab writes it or
 * variable-length as h5py rewrites it, into a heap buffer. Returns NULL with
 * a message naming the checkpoint and the dataset. */
static char *read_text(const char *path, hid_t loc, const char *name)
{
    char call[96];
    snprintf(call, sizeof call, "opening dataset '%s'", name);
    hid_t dset = H5Dopen2(loc, name, H5P_DEFAULT);
    if (dset < 0) {
        h5_error(path, call);
        return NULL;
    }
    snprintf(call, sizeof call, "reading dataset '%s'", name);
    char *text = NULL;
    hid_t ftype = H5Dget_type(dset);
    hid_t mtype = H5Tcopy(H5T_C_S1);
    if (ftype < 0 || mtype < 0) {
        h5_error(path, call);
        goto out;
    }
    if (H5Tget_class(ftype) != H5T_STRING) {
        tl_seterr(TL_EFORMAT, "checkpoint '%s': dataset '%s' has an unexpected type (HDF5 type "
                              "class %d), not a string", path, name, (int)H5Tget_class(ftype));
        goto out;
    }
    /* Read in the file's character set, ASCII or UTF-8, so that no conversion
     * between the two is needed. */
    H5Tset_cset(mtype, H5Tget_cset(ftype));
    if (H5Tis_variable_str(ftype) > 0) {
        char *value = NULL;
        if (H5Tset_size(mtype, H5T_VARIABLE) >= 0 &&
            H5Dread(dset, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, &value) >= 0) {
            text = strdup(value ? value : "");
            if (!text)
                tl_seterr(TL_ENOMEM, "no memory for dataset '%s' of checkpoint '%s'", name, path);
            H5free_memory(value);
        } else {
            h5_error(path, call);
        }
        goto out;
    }
    size_t size = H5Tget_size(ftype);
    if (size > 0 && H5Tset_size(mtype, size) >= 0) {
        text = calloc(size + 1, 1);
        if (!text) {
            tl_seterr(TL_ENOMEM, "no memory for dataset '%s' of checkpoint '%s'", name, path);
        } else if (H5Dread(dset, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, text) < 0) {
            h5_error(path, call);
            free(text);
            text = NULL;
        }
    } else {
        h5_error(path, call);
    }

out:
    if (mtype >= 0)
        H5Tclose(mtype);
    if (ftype >= 0)
        H5Tclose(ftype);
    H5Dclose(dset);
    return text;
}

/* Reads the string attribute run_id, fixed-length as thinklab writes it,
 * into id; "" when the file has none. */
static tl_status read_run_id(const char *path, hid_t file, char id[TL_LOG_RUN_ID_SIZE])
{
    id[0] = '\0';
    htri_t has = H5Aexists(file, "run_id");
    if (has < 0) {
        h5_error(path, "H5Aexists(run_id)");
        return TL_EIO;
    }
    if (has == 0)
        return TL_OK;
    hid_t attr = H5Aopen(file, "run_id", H5P_DEFAULT);
    hid_t type = attr >= 0 ? H5Aget_type(attr) : -1;
    size_t size = type >= 0 ? H5Tget_size(type) : 0;
    bool ok = type >= 0 && H5Tget_class(type) == H5T_STRING && H5Tis_variable_str(type) == 0 &&
              size > 0 && size < TL_LOG_RUN_ID_SIZE;
    if (ok)
        ok = H5Aread(attr, type, id) >= 0;
    if (type >= 0)
        H5Tclose(type);
    if (attr >= 0)
        H5Aclose(attr);
    if (!ok) {
        H5Eclear2(H5E_DEFAULT);
        id[0] = '\0';
        return tl_seterr(TL_EFORMAT, "checkpoint '%s': attribute run_id is not a string of at "
                                     "most %d characters; the file is damaged", path,
                         TL_LOG_RUN_ID_SIZE - 1);
    }
    id[size] = '\0';
    return TL_OK;
}

/* Reads a 1-D dataset that must hold exactly n elements. */
static herr_t read_vector(hid_t loc, const char *name, hid_t mem_type, hsize_t n, void *out)
{
    hid_t dset = H5Dopen2(loc, name, H5P_DEFAULT);
    if (dset < 0)
        return -1;
    hid_t space = H5Dget_space(dset);
    hsize_t dims[2] = {0, 0};
    herr_t st = -1;
    if (space >= 0 && H5Sget_simple_extent_ndims(space) == 1 &&
        H5Sget_simple_extent_dims(space, dims, NULL) == 1 && dims[0] == n)
        st = H5Dread(dset, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out);
    if (space >= 0)
        H5Sclose(space);
    H5Dclose(dset);
    return st;
}

/* Reads arch/names and the (n, SHAPE_COLS) table arch/shapes into heap
 * buffers, which the caller frees, also after a failure. */
static tl_status read_arch(const char *path, hid_t file, char **names_out, int64_t **shapes_out,
                           size_t *n_out)
{
    tl_status st = TL_EIO;
    hid_t group = -1, dset = -1, space = -1;

    CK_H5(path, group = H5Gopen2(file, "arch", H5P_DEFAULT));
    *names_out = read_text(path, file, "arch/names");
    if (!*names_out)
        goto fail;
    CK_H5(path, dset = H5Dopen2(group, "shapes", H5P_DEFAULT));
    CK_H5(path, space = H5Dget_space(dset));
    hsize_t dims[2] = {0, 0};
    if (H5Sget_simple_extent_ndims(space) != 2 ||
        H5Sget_simple_extent_dims(space, dims, NULL) != 2 || dims[1] != SHAPE_COLS) {
        st = tl_seterr(TL_EFORMAT, "checkpoint '%s': arch/shapes is not an (n, %d) table; the "
                                   "file is damaged", path, SHAPE_COLS);
        goto out;
    }
    size_t n_file = (size_t)dims[0];
    int64_t *shapes = calloc(n_file ? n_file * SHAPE_COLS : 1, sizeof *shapes);
    *shapes_out = shapes;
    if (!shapes) {
        st = tl_seterr(TL_ENOMEM, "no memory for the checkpoint's shape table");
        goto out;
    }
    if (n_file)
        CK_H5(path, H5Dread(dset, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, shapes));
    *n_out = n_file;
    st = TL_OK;
    goto out;

fail:
    st = tl_lasterr() != TL_OK ? tl_lasterr() : TL_EIO;
out:
    if (space >= 0)
        H5Sclose(space);
    if (dset >= 0)
        H5Dclose(dset);
    if (group >= 0)
        H5Gclose(group);
    return st;
}

/* Compares the config_checksum attribute with config_json and the
 * architecture fingerprint as read from the file. Files written before the
 * attribute existed pass without the check. */
static tl_status check_config(const char *path, hid_t file, const char *names,
                              const int64_t *shapes, size_t n_params)
{
    htri_t has = H5Aexists(file, "config_checksum");
    if (has < 0) {
        h5_error(path, "H5Aexists(config_checksum)");
        return TL_EIO;
    }
    if (has == 0)
        return TL_OK;
    uint64_t stored = 0;
    if (read_attr(file, "config_checksum", H5T_NATIVE_UINT64, &stored) < 0) {
        h5_error(path, "reading config_checksum");
        return TL_EIO;
    }
    char *config = read_text(path, file, "config_json");
    if (!config)
        return tl_lasterr();
    bool same = config_checksum(config, names, shapes, n_params) == stored;
    free(config);
    if (!same)
        return tl_seterr(TL_EFORMAT, "checkpoint '%s': the configuration (config_json, "
                                     "arch/names or arch/shapes) does not match config_checksum; "
                                     "the file is damaged. Restore it from a copy or resume "
                                     "from an earlier checkpoint", path);
    return TL_OK;
}

/* Compares the fingerprint read by read_arch with the trainer's parameters
 * and names the first difference. Splits names into lines in place. */
static tl_status check_arch(const char *path, char *names, const int64_t *shapes, size_t n_file,
                            const tl_params *p)
{
    int64_t *mine = NULL;
    char *my_names = NULL;
    tl_status st = arch_describe(p, &my_names, &mine);
    if (st != TL_OK)
        return st;
    /* Walk both lists in order; the first differing name or shape is reported. */
    size_t n_mine = tl_params_count(p);
    char *file_name = names, *my_name = my_names;
    for (size_t i = 0; i < n_file && i < n_mine; i++) {
        char *fe = strchr(file_name, '\n'), *me = strchr(my_name, '\n');
        if (!fe || !me) {
            st = tl_seterr(TL_EFORMAT, "checkpoint '%s': arch/names lists fewer names than "
                                       "arch/shapes; the file is damaged", path);
            goto out;
        }
        *fe = '\0';
        *me = '\0';
        if (strcmp(file_name, my_name) != 0) {
            st = tl_seterr(TL_EINVAL, "checkpoint '%s' is for another architecture: parameter "
                                      "%zu is '%s' in the file but '%s' in this model",
                           path, i, file_name, my_name);
            goto out;
        }
        if (memcmp(shapes + i * SHAPE_COLS, mine + i * SHAPE_COLS,
                   SHAPE_COLS * sizeof *shapes) != 0) {
            char fs[96], ms[96];
            int fo = snprintf(fs, sizeof fs, "("), mo = snprintf(ms, sizeof ms, "(");
            int fnd = (int)shapes[i * SHAPE_COLS], mnd = (int)mine[i * SHAPE_COLS];
            for (int d = 0; d < fnd && d < TL_MAX_DIMS; d++)
                fo += snprintf(fs + fo, sizeof fs - (size_t)fo, "%s%lld", d ? ", " : "",
                               (long long)shapes[i * SHAPE_COLS + 1 + d]);
            for (int d = 0; d < mnd && d < TL_MAX_DIMS; d++)
                mo += snprintf(ms + mo, sizeof ms - (size_t)mo, "%s%lld", d ? ", " : "",
                               (long long)mine[i * SHAPE_COLS + 1 + d]);
            snprintf(fs + fo, sizeof fs - (size_t)fo, ")");
            snprintf(ms + mo, sizeof ms - (size_t)mo, ")");
            st = tl_seterr(TL_EINVAL, "checkpoint '%s' is for another architecture: parameter "
                                      "'%s' has shape %s in the file but %s in this model",
                           path, my_name, fs, ms);
            goto out;
        }
        file_name = fe + 1;
        my_name = me + 1;
    }
    if (n_file != n_mine) {
        st = tl_seterr(TL_EINVAL, "checkpoint '%s' is for another architecture: it holds %zu "
                                  "parameters, this model has %zu (first unmatched: '%.*s')",
                       path, n_file, n_mine,
                       (int)strcspn(n_file > n_mine ? file_name : my_name, "\n"),
                       n_file > n_mine ? file_name : my_name);
        goto out;
    }
    st = TL_OK;

out:
    free(mine);
    free(my_names);
    return st;
}

tl_status tl_trainer_load(tl_trainer *tr, const char *path)
{
    if (!tr || !path || !path[0])
        return tl_seterr(TL_EINVAL, "tl_trainer_load: trainer and path must be given");
    tl_params *p = tr->params;
    int64_t numel = tl_params_numel(p);
    float *data = NULL, *m = NULL, *v = NULL;
    char *names = NULL, *file_config = NULL;
    int64_t *shapes = NULL;
    size_t n_arch = 0;
    hid_t file = -1, group = -1;
    tl_status st = TL_EIO;

    /* The type check comes before any open, which blocks on a FIFO. */
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
        return tl_seterr(TL_EINVAL, "checkpoint '%s' is a directory, not a file; pass the "
                                    "checkpoint file itself", path);
    if (tl_check_existing_file(path, "checkpoint") != TL_OK)
        return tl_lasterr();
    FILE *probe = fopen(path, "rb");
    if (!probe)
        return tl_seterr(TL_ENOTFOUND, "checkpoint '%s' not found or not readable", path);
    fclose(probe);

    tl_hdf5_prepare();
    file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file < 0) {
        h5_error(path, "H5Fopen");
        return tl_seterr(TL_EFORMAT, "%s; the file is truncated, damaged or not a checkpoint",
                         tl_errmsg());
    }

    int32_t version = 0;
    if (read_attr(file, "thinklab_checkpoint_version", H5T_NATIVE_INT32, &version) < 0) {
        H5Eclear2(H5E_DEFAULT);
        st = tl_seterr(TL_EFORMAT, "checkpoint '%s' has no thinklab_checkpoint_version "
                                   "attribute: it is not a thinklab checkpoint", path);
        goto out;
    }
    if (version != TL_CHECKPOINT_FORMAT_VERSION) {
        st = tl_seterr(TL_EFORMAT, "checkpoint '%s' has format version %d, this thinklab reads "
                                   "version %d: convert it or use the matching thinklab",
                       path, (int)version, (int)TL_CHECKPOINT_FORMAT_VERSION);
        goto out;
    }
    /* The checksum comes before the comparison, so that a damaged name or
     * shape is reported as damage, not as another architecture. */
    st = read_arch(path, file, &names, &shapes, &n_arch);
    if (st == TL_OK)
        st = check_config(path, file, names, shapes, n_arch);
    if (st != TL_OK)
        goto out;
    /* The model settings come before the parameter list, because the first
     * setting that differs (a layer's plugin, the vocabulary size) is more
     * useful to the user than the first parameter that differs. Layers of
     * other plugins or options can also have the same parameter names and
     * shapes. */
    file_config = read_text(path, file, "config_json");
    if (!file_config) {
        st = tl_lasterr();
        goto out;
    }
    st = tl_checkpoint_check_model(path, file_config, tr->config_json);
    if (st == TL_OK)
        st = check_arch(path, names, shapes, n_arch, p);
    if (st != TL_OK)
        goto out;

    int64_t step = 0, drawn = 0, batch = 0, context = 0, file_numel = 0;
    uint64_t checksum = 0, rng[4];
    CK_H5(path, read_attr(file, "step", H5T_NATIVE_INT64, &step));
    CK_H5(path, read_attr(file, "batches_drawn", H5T_NATIVE_INT64, &drawn));
    CK_H5(path, read_attr(file, "batch_size", H5T_NATIVE_INT64, &batch));
    CK_H5(path, read_attr(file, "context", H5T_NATIVE_INT64, &context));
    CK_H5(path, read_attr(file, "numel", H5T_NATIVE_INT64, &file_numel));
    CK_H5(path, read_attr(file, "checksum", H5T_NATIVE_UINT64, &checksum));
    CK_H5(path, read_vector(file, "rng", H5T_NATIVE_UINT64, 4, rng));
    if (H5Aexists(file, "state_checksum") > 0) {
        uint64_t state = 0;
        CK_H5(path, read_attr(file, "state_checksum", H5T_NATIVE_UINT64, &state));
        if (state != state_checksum(rng, step, drawn)) {
            st = tl_seterr(TL_EFORMAT, "checkpoint '%s': the RNG state, step or batch count does "
                                       "not match its checksum; the file is damaged", path);
            goto out;
        }
    }
    char run_id[TL_LOG_RUN_ID_SIZE];
    st = read_run_id(path, file, run_id);
    if (st != TL_OK)
        goto out;
    double elapsed = 0.0;
    if (H5Aexists(file, "elapsed_s") > 0)
        CK_H5(path, read_attr(file, "elapsed_s", H5T_NATIVE_DOUBLE, &elapsed));
    double last_loss = NAN, last_norm = NAN;
    if (H5Aexists(file, "last_loss") > 0 && H5Aexists(file, "last_grad_norm") > 0) {
        CK_H5(path, read_attr(file, "last_loss", H5T_NATIVE_DOUBLE, &last_loss));
        CK_H5(path, read_attr(file, "last_grad_norm", H5T_NATIVE_DOUBLE, &last_norm));
    }
    /* Files from before data parallelism have no "world": one process. */
    int64_t file_world = 1;
    if (H5Aexists(file, "world") > 0)
        CK_H5(path, read_attr(file, "world", H5T_NATIVE_INT64, &file_world));
    /* Every rank draws the same global batch of world * batch_size windows
     * from one RNG, so the file continues under any rank count with the same
     * global batch: 2 ranks x 4 resume as 1 x 8 or 4 x 2. */
    if (file_world < 1 || batch < 1) {
        st = tl_seterr(TL_EFORMAT, "checkpoint '%s' records %lld ranks of batch_size %lld; both "
                                   "must be at least 1, so the file is damaged: resume from "
                                   "another checkpoint", path, (long long)file_world,
                       (long long)batch);
        goto out;
    }
    int64_t global = batch * file_world, this_global = tr->cfg.batch_size * tr->cfg.world;
    if (global != this_global || context != tr->cfg.context) {
        st = tl_seterr(TL_EINVAL, "checkpoint '%s' was trained with a global batch of %lld "
                                  "(%lld ranks x batch_size %lld) and context %lld, this trainer "
                                  "uses %lld (%d x %lld) and %lld: choose batch_size = %lld / "
                                  "ranks and context %lld",
                       path, (long long)global, (long long)file_world, (long long)batch,
                       (long long)context, (long long)this_global, tr->cfg.world,
                       (long long)tr->cfg.batch_size, (long long)tr->cfg.context,
                       (long long)global, (long long)context);
        goto out;
    }
    if (step > tr->cfg.steps) {
        st = tl_seterr(TL_EINVAL, "checkpoint '%s' is at step %lld, but this run has %lld steps; "
                                  "set steps to at least %lld",
                       path, (long long)step, (long long)tr->cfg.steps, (long long)step);
        goto out;
    }
    /* The log takes steps in increasing order only, so a trainer that has
     * logged a step cannot go back to it. */
    int64_t logged = tr->log ? tl_log_last_train_step(tr->log) : -1;
    if (step <= logged) {
        st = tl_seterr(TL_EINVAL, "checkpoint '%s' is at step %lld, but this trainer's run log "
                                  "'%s' already has steps up to %lld, which the trainer would "
                                  "log again: resume a new trainer from it (resume, or "
                                  "resume_path in C) into the same log, which drops those "
                                  "steps first, or load it into a trainer with a new log path",
                       path, (long long)step, tl_log_path(tr->log), (long long)logged);
        goto out;
    }
    if (file_numel != numel || step < 0 || drawn < 0) {
        st = tl_seterr(TL_EFORMAT, "checkpoint '%s': step %lld, batches_drawn %lld or numel "
                                   "%lld do not fit this run of %lld steps and %lld parameters",
                       path, (long long)step, (long long)drawn, (long long)file_numel,
                       (long long)tr->cfg.steps, (long long)numel);
        goto out;
    }

    size_t bytes = (size_t)(numel ? numel : 1) * sizeof(float);
    data = malloc(bytes);
    m = malloc(bytes);
    v = malloc(bytes);
    if (!data || !m || !v) {
        st = tl_seterr(TL_ENOMEM, "no memory to read checkpoint '%s' (%zu bytes)", path,
                       3 * bytes);
        goto out;
    }
    CK_H5(path, group = H5Gopen2(file, "params", H5P_DEFAULT));
    CK_H5(path, read_vector(group, "data", H5T_NATIVE_FLOAT, (hsize_t)numel, data));
    CK_H5(path, read_vector(group, "m", H5T_NATIVE_FLOAT, (hsize_t)numel, m));
    CK_H5(path, read_vector(group, "v", H5T_NATIVE_FLOAT, (hsize_t)numel, v));
    if (block_checksum(data, m, v, numel) != checksum) {
        st = tl_seterr(TL_EFORMAT, "checkpoint '%s': the parameter block does not match its "
                                   "checksum; the file is damaged", path);
        goto out;
    }

    /* Everything was read and checked: only now change the trainer. */
    memcpy(tl_params_data(p), data, (size_t)numel * sizeof(float));
    memcpy(tl_params_m(p), m, (size_t)numel * sizeof(float));
    memcpy(tl_params_v(p), v, (size_t)numel * sizeof(float));
    tl_params_zero_grad(p);
    memcpy(tr->rng.s, rng, sizeof rng);
    tr->sampler.batches_drawn = drawn;
    tr->step = step;
    tr->stats.step = step;
    tr->stats.tokens = step * tr->cfg.batch_size * tr->cfg.context * tr->cfg.world;
    /* Inside tl_trainer_run (a load from the callback), the time since the
     * run started no longer counts. */
    tr->elapsed_base = elapsed - (tr->running ? tl_train_now() - tr->run_start : 0.0);
    tr->stats.elapsed_s = elapsed;
    /* A save right after this load records the same last step. */
    tr->checkpoint_has_last_step = step > 0 && !isnan(last_loss) && !isnan(last_norm);
    tr->checkpoint_last_loss = last_loss;
    tr->checkpoint_last_grad_norm = last_norm;
    tr->stats_has_last_step = tr->checkpoint_has_last_step;
    if (tr->checkpoint_has_last_step) {
        tr->stats.loss = last_loss;
        tr->stats.grad_norm = last_norm;
    }
    snprintf(tr->checkpoint_run_id, sizeof tr->checkpoint_run_id, "%s", run_id);
    /* A trainer with a log keeps its id, which the log records. */
    if (!tr->log && run_id[0])
        snprintf(tr->run_id, sizeof tr->run_id, "%s", run_id);
    if (tr->cfg.rank == 0)
        tl_checkpoint_print_training_changes(path, file_config, tr->config_json);
    st = TL_OK;
    goto out;

fail:
    st = tl_seterr(TL_EFORMAT, "%s; the file is truncated, damaged or not a checkpoint",
                   tl_errmsg());
out:
    if (group >= 0)
        H5Gclose(group);
    if (file >= 0)
        H5Fclose(file);
    free(data);
    free(m);
    free(v);
    free(names);
    free(shapes);
    free(file_config);
    return st;
}
