/* HDF5 helpers of the run log: error messages, growing datasets, attributes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "log_internal.h"

void tl_log_h5_error(const char *path, const char *call)
{
    char detail[TL_HDF5_DETAIL_SIZE];
    tl_seterr(TL_EIO, "run log '%s': %s failed: %s", path ? path : "?", call,
              tl_hdf5_error_detail(detail));
}

hid_t tl_log_str_type(void)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    if (t < 0)
        return t;
    if (H5Tset_size(t, H5T_VARIABLE) < 0 || H5Tset_cset(t, H5T_CSET_UTF8) < 0) {
        H5Tclose(t);
        return H5I_INVALID_HID;
    }
    return t;
}

/* File type, memory type and element size of each tl_log_type; strings are
 * built by tl_log_str_type(). */
static hid_t tl_log_file_type(tl_log_type type)
{
    switch (type) {
    case TL_LOG_F64: return H5T_IEEE_F64LE;
    case TL_LOG_F32: return H5T_IEEE_F32LE;
    case TL_LOG_I64: return H5T_STD_I64LE;
    case TL_LOG_I32: return H5T_STD_I32LE;
    case TL_LOG_I8: return H5T_STD_I8LE;
    case TL_LOG_U8: return H5T_STD_U8LE;
    default: return H5I_INVALID_HID;
    }
}

static hid_t tl_log_mem_type(tl_log_type type)
{
    switch (type) {
    case TL_LOG_F64: return H5T_NATIVE_DOUBLE;
    case TL_LOG_F32: return H5T_NATIVE_FLOAT;
    case TL_LOG_I64: return H5T_NATIVE_INT64;
    case TL_LOG_I32: return H5T_NATIVE_INT32;
    case TL_LOG_I8: return H5T_NATIVE_INT8;
    case TL_LOG_U8: return H5T_NATIVE_UINT8;
    default: return H5I_INVALID_HID;
    }
}

static size_t tl_log_elem_size(tl_log_type type)
{
    static const size_t sizes[] = {
        [TL_LOG_F64] = 8, [TL_LOG_F32] = 4, [TL_LOG_I64] = 8, [TL_LOG_I32] = 4,
        [TL_LOG_I8] = 1,  [TL_LOG_U8] = 1,  [TL_LOG_STR] = sizeof(char *),
    };
    _Static_assert(sizeof sizes / sizeof sizes[0] == TL_LOG_TYPE_COUNT,
                   "every tl_log_type needs a size");
    return sizes[type];
}

/* Chunks of about 64 KiB: large enough that a flush touches few chunks, small
 * enough that a short run does not allocate megabytes per dataset. */
enum { TL_LOG_CHUNK_BYTES = 64 * 1024, TL_LOG_CHUNK_ROWS_MAX = 4096 };

/* Rows per chunk for rows of row_bytes: about TL_LOG_CHUNK_BYTES, from 1 to
 * TL_LOG_CHUNK_ROWS_MAX. */
static size_t tl_log_chunk_rows(size_t row_bytes)
{
    size_t rows = TL_LOG_CHUNK_BYTES / (row_bytes ? row_bytes : 1);
    if (rows < 1)
        rows = 1;
    return rows > TL_LOG_CHUNK_ROWS_MAX ? TL_LOG_CHUNK_ROWS_MAX : rows;
}

tl_status tl_log_column_create(const char *path, tl_log_column *col, hid_t group,
                               const char *name, tl_log_type type, int row_rank,
                               const hsize_t *row_dims)
{
    memset(col, 0, sizeof *col);
    col->dset = H5I_INVALID_HID;
    col->mem_type = H5I_INVALID_HID;
    col->is_string = type == TL_LOG_STR;
    col->row_rank = row_rank;
    size_t row_elems = 1;
    for (int d = 0; d < row_rank; d++) {
        col->row_dims[d] = row_dims[d];
        row_elems *= (size_t)row_dims[d];
    }
    col->row_bytes = row_elems * tl_log_elem_size(type);

    hsize_t dims[3] = {0}, maxdims[3] = {H5S_UNLIMITED}, chunk[3] = {0};
    chunk[0] = tl_log_chunk_rows(col->row_bytes);
    for (int d = 0; d < row_rank; d++) {
        dims[d + 1] = maxdims[d + 1] = row_dims[d];
        /* HDF5 rejects zero-sized chunk dimensions, so an empty row still gets 1. */
        chunk[d + 1] = row_dims[d] ? row_dims[d] : 1;
    }

    hid_t space = H5I_INVALID_HID, dcpl = H5I_INVALID_HID, str = H5I_INVALID_HID;
    hid_t file_type = tl_log_file_type(type);
    if (col->is_string) {
        TL_H5(path, str = tl_log_str_type());
        file_type = str;
        TL_H5(path, col->mem_type = H5Tcopy(str));
    } else {
        TL_H5(path, col->mem_type = H5Tcopy(tl_log_mem_type(type)));
    }
    TL_H5(path, space = H5Screate_simple(row_rank + 1, dims, maxdims));
    TL_H5(path, dcpl = H5Pcreate(H5P_DATASET_CREATE));
    TL_H5(path, H5Pset_chunk(dcpl, row_rank + 1, chunk));
    TL_H5(path, col->dset = H5Dcreate2(group, name, file_type, space, H5P_DEFAULT, dcpl,
                                       H5P_DEFAULT));
    H5Pclose(dcpl);
    H5Sclose(space);
    if (str >= 0)
        H5Tclose(str);
    return TL_OK;

fail:
    /* The message of the first failure is kept, so these closes go unchecked. */
    if (dcpl >= 0)
        H5Pclose(dcpl);
    if (space >= 0)
        H5Sclose(space);
    if (str >= 0)
        H5Tclose(str);
    tl_log_column_close(col);
    return TL_EIO;
}

tl_status tl_log_column_open(const char *path, tl_log_column *col, hid_t group,
                             const char *name, tl_log_type type, int row_rank)
{
    memset(col, 0, sizeof *col);
    col->dset = H5I_INVALID_HID;
    col->mem_type = H5I_INVALID_HID;
    col->is_string = type == TL_LOG_STR;
    col->row_rank = row_rank;
    hid_t space = H5I_INVALID_HID;
    hsize_t dims[3] = {0, 0, 0};
    TL_H5(path, col->dset = H5Dopen2(group, name, H5P_DEFAULT));
    TL_H5(path, space = H5Dget_space(col->dset));
    int rank = H5Sget_simple_extent_ndims(space);
    if (rank != row_rank + 1) {
        H5Sclose(space);
        tl_log_column_close(col);
        return tl_seterr(TL_EFORMAT, "run log '%s': dataset '%s' has %d dimensions, expected "
                                     "%d; the file was not written by this thinklab",
                         path, name, rank, row_rank + 1);
    }
    TL_H5(path, H5Sget_simple_extent_dims(space, dims, NULL));
    H5Sclose(space);
    space = H5I_INVALID_HID;
    size_t row_elems = 1;
    for (int d = 0; d < row_rank; d++) {
        col->row_dims[d] = dims[d + 1];
        row_elems *= (size_t)dims[d + 1];
    }
    col->row_bytes = row_elems * tl_log_elem_size(type);
    col->rows_in_file = dims[0];
    if (col->is_string) {
        TL_H5(path, col->mem_type = tl_log_str_type());
    } else {
        TL_H5(path, col->mem_type = H5Tcopy(tl_log_mem_type(type)));
    }
    return TL_OK;

fail:
    if (space >= 0)
        H5Sclose(space);
    tl_log_column_close(col);
    return TL_EIO;
}

tl_status tl_log_columns_keep_before(const char *path, tl_log_column *const *cols, int n,
                                     int64_t limit, int64_t *dropped, int64_t *last_step)
{
    hsize_t rows = cols[0]->rows_in_file;
    for (int i = 1; i < n; i++)
        if (cols[i]->rows_in_file < rows)
            rows = cols[i]->rows_in_file;
    int64_t *steps = malloc((size_t)(cols[0]->rows_in_file ? cols[0]->rows_in_file : 1) *
                            sizeof *steps);
    if (!steps)
        return tl_seterr(TL_ENOMEM, "run log '%s': no memory for %llu step values", path,
                         (unsigned long long)cols[0]->rows_in_file);
    if (cols[0]->rows_in_file > 0)
        TL_H5(path, H5Dread(cols[0]->dset, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                            steps));
    /* Steps never decrease within a group, so the kept rows lead. */
    hsize_t keep = 0;
    while (keep < rows && steps[keep] < limit)
        keep++;
    *dropped = (int64_t)(cols[0]->rows_in_file - keep);
    *last_step = keep > 0 ? steps[keep - 1] : -1;
    free(steps);
    for (int i = 0; i < n; i++) {
        if (cols[i]->rows_in_file > keep) {
            cols[i]->rows_in_file = keep;
            cols[i]->trim = true;
        }
    }
    return TL_OK;

fail:
    free(steps);
    return TL_EIO;
}

void *tl_log_column_push(tl_log_column *col)
{
    if (col->n_pending == col->cap_pending) {
        size_t cap = col->cap_pending ? 2 * col->cap_pending : 16;
        unsigned char *grown = realloc(col->pending, cap * (col->row_bytes ? col->row_bytes : 1));
        if (!grown) {
            tl_seterr(TL_ENOMEM, "could not grow a run-log buffer to %zu rows of %zu bytes",
                      cap, col->row_bytes);
            return NULL;
        }
        col->pending = grown;
        col->cap_pending = cap;
    }
    unsigned char *row = col->pending + col->n_pending * col->row_bytes;
    memset(row, 0, col->row_bytes);
    col->n_pending++;
    return row;
}

tl_status tl_log_columns_push(tl_log_column *const *cols, void **rows, int n)
{
    for (int i = 0; i < n; i++) {
        rows[i] = tl_log_column_push(cols[i]);
        if (!rows[i]) {
            for (int j = 0; j < i; j++)
                cols[j]->n_pending--;
            return TL_ENOMEM;
        }
    }
    return TL_OK;
}

static void tl_log_column_drop_pending(tl_log_column *col)
{
    if (col->is_string)
        for (size_t i = 0; i < col->n_pending; i++)
            free(((char **)col->pending)[i]);
    col->n_pending = 0;
}

uint64_t tl_log_column_write_bytes(const tl_log_column *col)
{
    if (col->n_pending == 0)
        return 0;
    uint64_t bytes = (uint64_t)col->n_pending * col->row_bytes;
    if (col->is_string) {
        /* Each string goes to HDF5's global heap with a header of its own. */
        char *const *rows = (char *const *)col->pending;
        for (size_t i = 0; i < col->n_pending; i++)
            bytes += 32 + (rows[i] ? strlen(rows[i]) : 0);
    }
    /* The rows may start a chunk, which HDF5 allocates whole. */
    return bytes + (uint64_t)tl_log_chunk_rows(col->row_bytes) * col->row_bytes;
}

tl_status tl_log_column_write(const char *path, tl_log_column *col)
{
    if (col->n_pending == 0 && !col->trim)
        return TL_OK;
    int rank = col->row_rank + 1;
    hsize_t start[3] = {col->rows_in_file, 0, 0};
    hsize_t count[3] = {col->n_pending, col->row_dims[0], col->row_dims[1]};
    hsize_t extent[3] = {col->rows_in_file + col->n_pending, col->row_dims[0], col->row_dims[1]};
    hid_t fspace = H5I_INVALID_HID, mspace = H5I_INVALID_HID;

    TL_H5(path, H5Dset_extent(col->dset, extent));
    col->trim = false;
    if (col->n_pending == 0)
        return TL_OK;
    TL_H5(path, fspace = H5Dget_space(col->dset));
    TL_H5(path, H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, NULL, count, NULL));
    TL_H5(path, mspace = H5Screate_simple(rank, count, NULL));
    TL_H5(path, H5Dwrite(col->dset, col->mem_type, mspace, fspace, H5P_DEFAULT, col->pending));
    H5Sclose(mspace);
    H5Sclose(fspace);
    col->rows_in_file += col->n_pending;
    tl_log_column_drop_pending(col);
    return TL_OK;

fail:
    if (mspace >= 0)
        H5Sclose(mspace);
    if (fspace >= 0)
        H5Sclose(fspace);
    return TL_EIO;
}

void tl_log_column_close(tl_log_column *col)
{
    tl_log_column_drop_pending(col);
    free(col->pending);
    col->pending = NULL;
    col->cap_pending = 0;
    if (col->dset > 0)
        H5Dclose(col->dset);
    if (col->mem_type > 0)
        H5Tclose(col->mem_type);
    col->dset = H5I_INVALID_HID;
    col->mem_type = H5I_INVALID_HID;
}

/* Creates a scalar attribute of the given types and writes value. */
static tl_status tl_log_attr(const char *path, hid_t obj, const char *name, hid_t file_type,
                             hid_t mem_type, const void *value)
{
    hid_t space = H5I_INVALID_HID, attr = H5I_INVALID_HID;
    TL_H5(path, space = H5Screate(H5S_SCALAR));
    TL_H5(path, attr = H5Acreate2(obj, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT));
    TL_H5(path, H5Awrite(attr, mem_type, value));
    H5Aclose(attr);
    H5Sclose(space);
    return TL_OK;

fail:
    if (attr >= 0)
        H5Aclose(attr);
    if (space >= 0)
        H5Sclose(space);
    return TL_EIO;
}

tl_status tl_log_attr_i64(const char *path, hid_t obj, const char *name, int64_t value)
{
    return tl_log_attr(path, obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &value);
}

tl_status tl_log_attr_u64(const char *path, hid_t obj, const char *name, uint64_t value)
{
    return tl_log_attr(path, obj, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, &value);
}

tl_status tl_log_attr_f64(const char *path, hid_t obj, const char *name, double value)
{
    return tl_log_attr(path, obj, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &value);
}

tl_status tl_log_attr_str(const char *path, hid_t obj, const char *name, const char *value)
{
    hid_t str = H5I_INVALID_HID;
    TL_H5(path, str = tl_log_str_type());
    tl_status st = tl_log_attr(path, obj, name, str, str, &value);
    H5Tclose(str);
    return st;

fail:
    return TL_EIO;
}

/* Writes a dataset of strings with the given dataspace. */
static tl_status tl_log_string_dataset(const char *path, hid_t group, const char *name,
                                       hid_t space, size_t n, const char *const *values)
{
    hid_t str = H5I_INVALID_HID, dset = H5I_INVALID_HID;
    TL_H5(path, str = tl_log_str_type());
    TL_H5(path, dset = H5Dcreate2(group, name, str, space, H5P_DEFAULT, H5P_DEFAULT,
                                  H5P_DEFAULT));
    if (n > 0)
        TL_H5(path, H5Dwrite(dset, str, H5S_ALL, H5S_ALL, H5P_DEFAULT, values));
    H5Dclose(dset);
    H5Tclose(str);
    return TL_OK;

fail:
    if (dset >= 0)
        H5Dclose(dset);
    if (str >= 0)
        H5Tclose(str);
    return TL_EIO;
}

tl_status tl_log_strings(const char *path, hid_t group, const char *name, int64_t n,
                         const char *const *values)
{
    hsize_t dims[1] = {(hsize_t)n};
    hid_t space = H5I_INVALID_HID;
    TL_H5(path, space = H5Screate_simple(1, dims, NULL));
    tl_status st = tl_log_string_dataset(path, group, name, space, (size_t)n, values);
    H5Sclose(space);
    return st;

fail:
    return TL_EIO;
}

tl_status tl_log_string_scalar(const char *path, hid_t group, const char *name,
                               const char *value)
{
    hid_t space = H5I_INVALID_HID;
    TL_H5(path, space = H5Screate(H5S_SCALAR));
    tl_status st = tl_log_string_dataset(path, group, name, space, 1, &value);
    H5Sclose(space);
    return st;

fail:
    return TL_EIO;
}

char *tl_log_read_attr_str(const char *path, hid_t obj, const char *name)
{
    hid_t attr = H5I_INVALID_HID, type = H5I_INVALID_HID, mem = H5I_INVALID_HID;
    char *text = NULL;
    TL_H5(path, attr = H5Aopen(obj, name, H5P_DEFAULT));
    TL_H5(path, type = H5Aget_type(attr));
    if (H5Tget_class(type) != H5T_STRING) {
        tl_seterr(TL_EFORMAT, "run log '%s': attribute '%s' is not a string", path, name);
        goto out;
    }
    TL_H5(path, mem = H5Tcopy(H5T_C_S1));
    TL_H5(path, H5Tset_cset(mem, H5Tget_cset(type)));
    if (H5Tis_variable_str(type) > 0) {
        char *value = NULL;
        TL_H5(path, H5Tset_size(mem, H5T_VARIABLE));
        TL_H5(path, H5Aread(attr, mem, &value));
        text = strdup(value ? value : "");
        H5free_memory(value);
    } else {
        size_t size = H5Tget_size(type);
        TL_H5(path, H5Tset_size(mem, size));
        text = calloc(size + 1, 1);
        if (text && H5Aread(attr, mem, text) < 0) {
            tl_log_h5_error(path, "H5Aread(attr, mem, text)");
            free(text);
            text = NULL;
            goto out;
        }
    }
    if (!text)
        tl_seterr(TL_ENOMEM, "run log '%s': no memory for attribute '%s'", path, name);
    goto out;

fail:
    text = NULL;
out:
    if (mem >= 0)
        H5Tclose(mem);
    if (type >= 0)
        H5Tclose(type);
    if (attr >= 0)
        H5Aclose(attr);
    return text;
}

tl_status tl_log_f64_array(const char *path, hid_t group, const char *name, int64_t n,
                           const double *values)
{
    hsize_t dims[1] = {(hsize_t)n};
    hid_t space = H5I_INVALID_HID, dset = H5I_INVALID_HID;
    TL_H5(path, space = H5Screate_simple(1, dims, NULL));
    TL_H5(path, dset = H5Dcreate2(group, name, H5T_IEEE_F64LE, space, H5P_DEFAULT,
                                  H5P_DEFAULT, H5P_DEFAULT));
    if (n > 0)
        TL_H5(path, H5Dwrite(dset, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, values));
    H5Dclose(dset);
    H5Sclose(space);
    return TL_OK;

fail:
    if (dset >= 0)
        H5Dclose(dset);
    if (space >= 0)
        H5Sclose(space);
    return TL_EIO;
}
