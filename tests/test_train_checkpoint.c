/* Checkpoints: bit-exact resume, rejected files, failed saves and diverged
 * runs that must leave the previous checkpoint intact. */
#define _POSIX_C_SOURCE 200809L /* truncate() */
#include <errno.h>
#include <hdf5.h>
#include <math.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "train/train_internal.h"
#include "train_util.h"

static tu_data D;

static tl_model *model(uint64_t seed)
{
    return tu_model(tl_tokenizer_vocab_size(D.tok), 2, true, "causal", seed);
}

/* Heap copy of [data | m | v]. */
static float *block_copy(tl_model *m, int64_t *n_out)
{
    tl_params *p = tl_model_params(m);
    int64_t n = tl_params_numel(p);
    float *c = malloc(3 * (size_t)n * sizeof *c);
    memcpy(c, tl_params_data(p), (size_t)n * sizeof *c);
    memcpy(c + n, tl_params_m(p), (size_t)n * sizeof *c);
    memcpy(c + 2 * n, tl_params_v(p), (size_t)n * sizeof *c);
    *n_out = n;
    return c;
}

/* N steps straight versus N/2, save, load into a fresh trainer and model
 * (other initial weights), N/2 more: every parameter and moment must have
 * the same bits, and so must the next batch drawn. */
static void test_resume_bit_exact(void)
{
    enum { N = 12 };
    char path[512];
    tu_path(path, sizeof path, "train_resume.h5");
    remove(path);

    tl_model *ma = model(3);
    tl_train_config c = tu_config(N);
    c.eval_every = 5; /* evaluation in between must not disturb the state */
    c.eval_batches = 2;
    tl_trainer *a = tl_trainer_new(ma, &D.data, &c);
    CHECK(a && tl_trainer_run(a) == TL_OK);

    tl_model *mb = model(3);
    c.checkpoint_path = path;
    tl_trainer *b = tl_trainer_new(mb, &D.data, &c);
    for (int s = 0; b && s < N / 2; s++)
        CHECK(tl_trainer_step(b) == TL_OK);
    CHECK_MSG(b && tl_trainer_save(b, path) == TL_OK, "%s", tl_errmsg());
    tl_trainer_free(b);
    tl_model_free(mb);

    tl_model *mc = model(99); /* other initial weights: all must come from the file */
    c.resume_path = path;
    tl_trainer *r = tl_trainer_new(mc, &D.data, &c);
    CHECK_MSG(r != NULL, "%s", tl_errmsg());
    CHECK(r && tl_trainer_step_index(r) == N / 2);
    CHECK(r && tl_trainer_run(r) == TL_OK);
    CHECK(r && tl_trainer_step_index(r) == N);

    int64_t n1 = 0, n2 = 0;
    float *x = block_copy(ma, &n1), *y = block_copy(mc, &n2);
    CHECK(n1 == n2);
    CHECK_MSG(n1 == n2 && memcmp(x, y, 3 * (size_t)n1 * sizeof *x) == 0,
              "resumed parameters or moments differ from the straight run");
    CHECK(memcmp(tl_trainer_rng(a)->s, tl_trainer_rng(r)->s, sizeof(tl_rng)) == 0);
    free(x);
    free(y);
    tl_trainer_free(a);
    tl_trainer_free(r);
    tl_model_free(ma);
    tl_model_free(mc);
}

/* Sets the root attribute thinklab_checkpoint_version of path to version. */
static void set_version(const char *path, int32_t version)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t a = H5Aopen(f, "thinklab_checkpoint_version", H5P_DEFAULT);
    CHECK(f >= 0 && a >= 0 && H5Awrite(a, H5T_NATIVE_INT32, &version) >= 0);
    H5Aclose(a);
    H5Fclose(f);
}

/* Sets the int64 root attribute name of path to value. */
static void set_int64_attr(const char *path, const char *name, int64_t value)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t a = f >= 0 ? H5Aopen(f, name, H5P_DEFAULT) : -1;
    CHECK(f >= 0);
    CHECK(a >= 0);
    if (a >= 0) {
        CHECK(H5Awrite(a, H5T_NATIVE_INT64, &value) >= 0);
        H5Aclose(a);
    }
    if (f >= 0)
        H5Fclose(f);
}

/* Overwrites the rng dataset of path with other values, as a damaged file
 * would have them. */
static void set_rng(const char *path)
{
    uint64_t rng[4] = {1, 2, 3, 4};
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t d = H5Dopen2(f, "rng", H5P_DEFAULT);
    CHECK(f >= 0);
    CHECK(d >= 0);
    CHECK(H5Dwrite(d, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, rng) >= 0);
    H5Dclose(d);
    H5Fclose(f);
}

static void test_rejections(void)
{
    char path[512], other[512];
    tu_path(path, sizeof path, "train_reject.h5");
    tu_path(other, sizeof other, "train_reject_other.h5");
    tl_model *m = model(5);
    tl_train_config c = tu_config(10);
    tl_trainer *tr = tl_trainer_new(m, &D.data, &c);
    CHECK(tr && tl_trainer_step(tr) == TL_OK && tl_trainer_save(tr, path) == TL_OK);
    int64_t n = 0;
    float *before = block_copy(m, &n);

    /* Another architecture: three layers instead of two. The message names
     * the model setting, not the first parameter that differs. */
    tl_model *deep = tu_model(tl_tokenizer_vocab_size(D.tok), 3, true, "causal", 5);
    tl_trainer *td = tl_trainer_new(deep, &D.data, &c);
    CHECK(td && tl_trainer_step(td) == TL_OK && tl_trainer_save(td, other) == TL_OK);
    CHECK(tl_trainer_load(tr, other) == TL_EINVAL);
    CHECK_MSG(strstr(tl_errmsg(), "is for another model: model.n_layers is 3 in the checkpoint "
                                  "but 2 in this model"),
              "%s", tl_errmsg());
    tl_trainer_free(td);
    tl_model_free(deep);

    /* Another width, which also changes the shape of every parameter. */
    tl_model_config wc = tl_model_config_default(TL_BLOCK_LLAMA, tl_tokenizer_vocab_size(D.tok),
                                                 16, 2, 32, 2);
    tl_rng rng;
    tl_rng_seed(&rng, 1);
    tl_model *narrow = tl_model_new(&wc, &rng);
    tl_trainer *tn = tl_trainer_new(narrow, &D.data, &c);
    CHECK(tn && tl_trainer_save(tn, other) == TL_OK);
    CHECK(tl_trainer_load(tr, other) == TL_EINVAL);
    CHECK_MSG(strstr(tl_errmsg(), "model.d_model is 16 in the checkpoint but 32 in this model"),
              "%s", tl_errmsg());
    tl_trainer_free(tn);
    tl_model_free(narrow);

    /* Another format version. */
    tu_copy_file(path, other);
    set_version(other, TL_CHECKPOINT_FORMAT_VERSION + 1);
    CHECK(tl_trainer_load(tr, other) == TL_EFORMAT);
    CHECK_MSG(strstr(tl_errmsg(), "format version 2") != NULL, "%s", tl_errmsg());

    /* Truncated: half of the file. */
    struct stat sb;
    CHECK(stat(path, &sb) == 0);
    tu_copy_file(path, other);
    CHECK(truncate(other, sb.st_size / 2) == 0);
    CHECK(tl_trainer_load(tr, other) == TL_EFORMAT);
    CHECK_MSG(strstr(tl_errmsg(), "truncated") != NULL, "%s", tl_errmsg());

    /* Damaged: one byte of the parameter block flipped near the end, where
     * the float data lies, is caught by the checksum or by HDF5. */
    tu_copy_file(path, other);
    FILE *f = fopen(other, "r+b");
    CHECK(f && fseek(f, sb.st_size - 64, SEEK_SET) == 0);
    int byte = f ? fgetc(f) : 0;
    if (f) {
        fseek(f, sb.st_size - 64, SEEK_SET);
        fputc(byte ^ 0x5a, f);
        fclose(f);
    }
    CHECK(tl_trainer_load(tr, other) == TL_EFORMAT);
    CHECK_MSG(strstr(tl_errmsg(), "damaged") != NULL, "%s", tl_errmsg());

    /* Damaged sampling state: the parameters check out, the RNG does not. */
    tu_copy_file(path, other);
    set_rng(other);
    CHECK(tl_trainer_load(tr, other) == TL_EFORMAT);
    CHECK_MSG(strstr(tl_errmsg(), "RNG state") != NULL, "%s", tl_errmsg());

    /* Not a checkpoint at all, and a missing file. */
    f = fopen(other, "wb");
    fputs("not hdf5\n", f);
    fclose(f);
    CHECK(tl_trainer_load(tr, other) == TL_EFORMAT);
    /* The message names the path and the reason (it came out blank when the
     * previous message was formatted into itself). */
    CHECK_MSG(strstr(tl_errmsg(), other) && strstr(tl_errmsg(), "not a checkpoint") &&
                  strstr(tl_errmsg(), "H5Fopen"),
              "%s", tl_errmsg());

    /* Saving over a file that is not a checkpoint is refused and keeps it. */
    CHECK(tl_trainer_save(tr, other) == TL_EINVAL);
    CHECK_MSG(strstr(tl_errmsg(), other) && strstr(tl_errmsg(), "not a thinklab checkpoint"),
              "%s", tl_errmsg());
    char kept[32] = {0};
    f = fopen(other, "rb");
    CHECK(f && fgets(kept, sizeof kept, f) && strcmp(kept, "not hdf5\n") == 0);
    if (f)
        fclose(f);

    remove(other);
    CHECK(tl_trainer_load(tr, other) == TL_ENOTFOUND);
    CHECK(strstr(tl_errmsg(), "not found") != NULL);
    /* A directory opens with fopen on Linux; it gets its own message. */
    CHECK(tl_trainer_load(tr, ".") == TL_EINVAL);
    CHECK_MSG(strstr(tl_errmsg(), "is a directory"), "message: %s", tl_errmsg());

    /* Every rejection left the trainer's state alone. */
    int64_t n2 = 0;
    float *after = block_copy(m, &n2);
    CHECK(memcmp(before, after, 3 * (size_t)n * sizeof *before) == 0);
    CHECK(tl_trainer_step_index(tr) == 1);
    free(before);
    free(after);
    tl_trainer_free(tr);
    tl_model_free(m);
    remove(path);
}

/* Flips the lowest bit of byte `at` of the stored value of dataset name in
 * path, as a damaged disk would. The dataset must have contiguous storage. */
static void flip_dataset_byte(const char *path, const char *name, long at)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t d = f >= 0 ? H5Dopen2(f, name, H5P_DEFAULT) : -1;
    haddr_t offset = d >= 0 ? H5Dget_offset(d) : HADDR_UNDEF;
    hsize_t size = d >= 0 ? H5Dget_storage_size(d) : 0;
    CHECK_MSG(offset != HADDR_UNDEF, "%s has no contiguous storage in %s", name, path);
    CHECK_MSG((hsize_t)at < size, "%s has %llu stored bytes, so byte %ld does not exist", name,
              (unsigned long long)size, at);
    if (d >= 0)
        H5Dclose(d);
    if (f >= 0)
        H5Fclose(f);
    if (offset == HADDR_UNDEF || (hsize_t)at >= size)
        return;

    FILE *fp = fopen(path, "r+b");
    CHECK(fp != NULL);
    if (!fp)
        return;
    CHECK(fseek(fp, (long)offset + at, SEEK_SET) == 0);
    int byte = fgetc(fp);
    CHECK(byte != EOF);
    CHECK(fseek(fp, (long)offset + at, SEEK_SET) == 0);
    CHECK(fputc(byte ^ 0x01, fp) != EOF);
    fclose(fp);
}

static void delete_attr(const char *path, const char *name)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    CHECK(f >= 0);
    CHECK(H5Adelete(f, name) >= 0);
    H5Fclose(f);
}

/* A damaged configuration or architecture fingerprint is reported as damage
 * and leaves the trainer alone. A file without config_checksum, as written
 * before it existed, loads without the check. */
static void test_config_checksum(void)
{
    char path[512], other[512];
    tu_path(path, sizeof path, "train_config_sum.h5");
    tu_path(other, sizeof other, "train_config_sum_other.h5");
    tl_model *m = model(11);
    tl_train_config c = tu_config(10);
    tl_trainer *tr = tl_trainer_new(m, &D.data, &c);
    CHECK_MSG(tr != NULL, "%s", tl_errmsg());
    if (!tr) {
        tl_model_free(m);
        return;
    }
    CHECK(tl_trainer_step(tr) == TL_OK);
    CHECK_MSG(tl_trainer_save(tr, path) == TL_OK, "%s", tl_errmsg());
    CHECK(tl_trainer_step(tr) == TL_OK); /* the trainer now differs from the file */
    int64_t n = 0;
    float *before = block_copy(m, &n);
    char want[700];
    snprintf(want, sizeof want, "checkpoint '%s': the configuration (config_json, arch/names or "
                                "arch/shapes) does not match config_checksum; the file is "
                                "damaged. Restore it from a copy",
             other);

    /* One byte of config_json, which the loader reads for the checksum
     * alone. */
    tu_copy_file(path, other);
    flip_dataset_byte(other, "config_json", 10);
    CHECK(tl_trainer_load(tr, other) == TL_EFORMAT);
    CHECK_MSG(strstr(tl_errmsg(), want), "%s", tl_errmsg());

    /* One byte of a parameter name: damage, not another architecture. */
    tu_copy_file(path, other);
    flip_dataset_byte(other, "arch/names", 2);
    CHECK(tl_trainer_load(tr, other) == TL_EFORMAT);
    CHECK_MSG(strstr(tl_errmsg(), want), "%s", tl_errmsg());

    int64_t n2 = 0;
    float *after = block_copy(m, &n2);
    CHECK(n == n2);
    CHECK_MSG(n == n2 && memcmp(before, after, 3 * (size_t)n * sizeof *before) == 0,
              "a rejected load changed the parameters or moments");
    CHECK(tl_trainer_step_index(tr) == 2);
    free(after);

    /* A rank count of 0 is damage, not another batch layout to suggest. */
    tu_copy_file(path, other);
    set_int64_attr(other, "world", 0);
    CHECK(tl_trainer_load(tr, other) == TL_EFORMAT);
    CHECK_MSG(strstr(tl_errmsg(), "records 0 ranks of batch_size") != NULL, "%s", tl_errmsg());
    CHECK_MSG(strstr(tl_errmsg(), "the file is damaged") != NULL, "%s", tl_errmsg());

    /* Without the attribute, the comparison of the model settings still
     * finds a config_json damaged into text that is not JSON. */
    tu_copy_file(path, other);
    delete_attr(other, "config_checksum");
    flip_dataset_byte(other, "config_json", 10);
    CHECK(tl_trainer_load(tr, other) == TL_EFORMAT);
    CHECK_MSG(strstr(tl_errmsg(), "config_json is not a JSON object"), "%s", tl_errmsg());
    CHECK(tl_trainer_step_index(tr) == 2);

    free(before);
    tl_trainer_free(tr);
    tl_model_free(m);
    remove(path);
    remove(other);
}

/* A save that cannot create path.tmp fails and keeps the old checkpoint. */
static void test_failed_save_keeps_previous(void)
{
    char path[512], tmp[600], keep[512];
    tu_path(path, sizeof path, "train_failsave.h5");
    tu_path(keep, sizeof keep, "train_failsave_keep.h5");
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    rmdir(tmp);
    tl_model *m = model(7);
    tl_train_config c = tu_config(10);
    tl_trainer *tr = tl_trainer_new(m, &D.data, &c);
    CHECK(tr && tl_trainer_step(tr) == TL_OK && tl_trainer_save(tr, path) == TL_OK);
    tu_copy_file(path, keep);
    CHECK(tl_trainer_step(tr) == TL_OK);
    CHECK(mkdir(tmp, 0700) == 0); /* a folder where the temporary file should go */
    CHECK(tl_trainer_save(tr, path) == TL_EIO);
    CHECK_MSG(strstr(tl_errmsg(), path) != NULL, "%s", tl_errmsg());
    CHECK(tu_files_equal(path, keep));
    struct stat sb;
    CHECK_MSG(stat(tmp, &sb) == 0 && S_ISDIR(sb.st_mode), "the failed save removed the "
                                                           "user's folder '%s'", tmp);
    rmdir(tmp);

    /* A write that fails half way, as on a full disk: a file size limit
     * makes write() fail with EFBIG once the file reaches 64 KiB. */
    struct rlimit before;
    CHECK(getrlimit(RLIMIT_FSIZE, &before) == 0);
    void (*xfsz)(int) = signal(SIGXFSZ, SIG_IGN);
    struct rlimit small = {64 * 1024, before.rlim_max};
    CHECK(setrlimit(RLIMIT_FSIZE, &small) == 0);
    tl_status st = tl_trainer_save(tr, path);
    CHECK(setrlimit(RLIMIT_FSIZE, &before) == 0);
    signal(SIGXFSZ, xfsz);
    CHECK_MSG(st == TL_EIO, "save returned %s: %s", tl_status_name(st), tl_errmsg());
    CHECK_MSG(strstr(tl_errmsg(), strerror(EFBIG)) != NULL, "%s", tl_errmsg());
    CHECK_MSG(strstr(tl_errmsg(), "the previous checkpoint at that path is unchanged") != NULL,
              "%s", tl_errmsg());
    CHECK(tu_files_equal(path, keep));
    CHECK_MSG(stat(tmp, &sb) != 0, "the failed save left '%s' behind", tmp);

    tl_trainer_free(tr);
    tl_model_free(m);
    remove(path);
    remove(keep);
}

/* A save while another open file holds the lock on path.tmp, as another
 * process saving to the same path does, stops with a message and leaves both
 * that file and the checkpoint as they were. */
static void test_locked_temp_file(void)
{
    char path[512], tmp[600], keep[512];
    tu_path(path, sizeof path, "train_locked.h5");
    tu_path(keep, sizeof keep, "train_locked_keep.h5");
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    remove(path);
    remove(tmp);
    tl_model *m = model(7);
    tl_train_config c = tu_config(10);
    tl_trainer *tr = tl_trainer_new(m, &D.data, &c);
    CHECK(tr != NULL);
    if (!tr) {
        tl_model_free(m);
        return;
    }
    CHECK(tl_trainer_step(tr) == TL_OK);
    CHECK(tl_trainer_save(tr, path) == TL_OK);
    tu_copy_file(path, keep);

    int other = -1;
    CHECK(tl_lock_for_writing(tmp, &other) == 0);
    const char partial[] = "half of another process's checkpoint";
    CHECK(write(other, partial, sizeof partial) == (ssize_t)sizeof partial);
    CHECK(tl_trainer_step(tr) == TL_OK);
    tl_status st = tl_trainer_save(tr, path);
    CHECK_MSG(st == TL_ESTATE, "save returned %s: %s", tl_status_name(st), tl_errmsg());
    CHECK_MSG(strstr(tl_errmsg(), "is being saved by another process") != NULL, "%s",
              tl_errmsg());
    CHECK_MSG(strstr(tl_errmsg(), "give each run its own checkpoint path") != NULL, "%s",
              tl_errmsg());
    CHECK(tu_files_equal(path, keep));
    struct stat sb;
    CHECK_MSG(stat(tmp, &sb) == 0 && sb.st_size == (off_t)sizeof partial,
              "the refused save changed or removed '%s'", tmp);

    /* Once the other writer is gone, the next save takes the file over. */
    close(other);
    CHECK_MSG(tl_trainer_save(tr, path) == TL_OK, "%s", tl_errmsg());
    CHECK_MSG(stat(tmp, &sb) != 0, "the save left '%s' behind", tmp);
    CHECK(!tu_files_equal(path, keep));

    tl_trainer_free(tr);
    tl_model_free(m);
    remove(path);
    remove(keep);
}

/* Writes text to path, replacing it. */
static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

/* A path.tmp left as a symbolic link or as a hard link to another file: the
 * save replaces the link and leaves the file it pointed to unchanged. */
static void test_stale_temp_link(void)
{
    char path[512], tmp[600], victim[512], keep[512];
    tu_path(path, sizeof path, "train_temp_link.h5");
    tu_path(victim, sizeof victim, "train_temp_link_victim.txt");
    tu_path(keep, sizeof keep, "train_temp_link_keep.txt");
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    remove(path);
    remove(tmp);
    write_text(victim, "a file the save must not touch\n");
    tu_copy_file(victim, keep);
    tl_model *m = model(7);
    tl_train_config c = tu_config(10);
    tl_trainer *tr = tl_trainer_new(m, &D.data, &c);
    CHECK(tr != NULL);
    CHECK(tr == NULL || tl_trainer_step(tr) == TL_OK);

    CHECK(symlink(victim, tmp) == 0);
    CHECK_MSG(tr && tl_trainer_save(tr, path) == TL_OK, "%s", tl_errmsg());
    CHECK_MSG(tu_files_equal(victim, keep), "the save wrote through the link '%s'", tmp);
    struct stat sb;
    CHECK_MSG(lstat(path, &sb) == 0 && S_ISREG(sb.st_mode), "'%s' is not a regular file", path);
    CHECK_MSG(lstat(tmp, &sb) != 0, "the save left '%s' behind", tmp);

    CHECK(link(victim, tmp) == 0);
    CHECK_MSG(tr && tl_trainer_save(tr, path) == TL_OK, "%s", tl_errmsg());
    CHECK_MSG(tu_files_equal(victim, keep), "the save wrote into the hard link '%s'", tmp);
    CHECK_MSG(stat(victim, &sb) == 0 && sb.st_nlink == 1, "the hard link '%s' is left", tmp);

    tl_trainer_free(tr);
    tl_model_free(m);
    remove(path);
    remove(tmp);
    remove(victim);
    remove(keep);
}

/* A checkpoint path that is a symbolic link: the save replaces the file it
 * points to and keeps the link, as a run log's link is written through. A
 * dangling link is rejected with its target named. */
static void test_checkpoint_link(void)
{
    char real[512], link_path[512], keep[512];
    tu_path(real, sizeof real, "train_link_target.h5");
    tu_path(link_path, sizeof link_path, "train_link.h5");
    tu_path(keep, sizeof keep, "train_link_keep.h5");
    remove(real);
    remove(link_path);
    tl_model *m = model(7);
    tl_train_config c = tu_config(10);
    tl_trainer *tr = tl_trainer_new(m, &D.data, &c);
    CHECK(tr != NULL);
    CHECK(tr == NULL || tl_trainer_step(tr) == TL_OK);
    CHECK_MSG(tr && tl_trainer_save(tr, real) == TL_OK, "%s", tl_errmsg());
    tu_copy_file(real, keep);
    CHECK(symlink(real, link_path) == 0);
    CHECK(tr != NULL);
    CHECK(tr == NULL || tl_trainer_step(tr) == TL_OK);
    CHECK_MSG(tr && tl_trainer_save(tr, link_path) == TL_OK, "%s", tl_errmsg());
    struct stat sb;
    CHECK_MSG(lstat(link_path, &sb) == 0 && S_ISLNK(sb.st_mode), "the save replaced the link");
    CHECK_MSG(!tu_files_equal(real, keep), "the save did not reach the link's target");

    remove(real);
    tl_status st = tr ? tl_trainer_save(tr, link_path) : TL_OK;
    CHECK_MSG(st == TL_ENOTFOUND, "save returned %s: %s", tl_status_name(st), tl_errmsg());
    CHECK_MSG(strstr(tl_errmsg(), "is a symbolic link to") != NULL, "%s", tl_errmsg());
    CHECK_MSG(lstat(link_path, &sb) == 0 && S_ISLNK(sb.st_mode), "the failed save removed the link");
    tl_trainer_free(tr);
    tl_model_free(m);
    remove(link_path);
    remove(keep);
}

/* Two runs started with the same checkpoint path before either saved: the
 * first to save owns the path, and the other's saves stop with a message
 * instead of replacing it. */
static void test_checkpoint_taken_by_other_run(void)
{
    char path[512], keep[512];
    tu_path(path, sizeof path, "train_two_runs.h5");
    tu_path(keep, sizeof keep, "train_two_runs_keep.h5");
    remove(path);
    tl_model *ma = model(7), *mb = model(7);
    tl_train_config c = tu_config(10);
    c.checkpoint_path = path;
    tl_trainer *a = tl_trainer_new(ma, &D.data, &c);
    tl_trainer *b = tl_trainer_new(mb, &D.data, &c);
    CHECK_MSG(a && b, "%s", tl_errmsg());
    if (a && b) {
        CHECK(tl_trainer_step(b) == TL_OK);
        CHECK_MSG(tl_trainer_save(b, path) == TL_OK, "%s", tl_errmsg());
        tu_copy_file(path, keep);
        CHECK(tl_trainer_step(a) == TL_OK);
        tl_status st = tl_trainer_save(a, path);
        CHECK_MSG(st == TL_ESTATE, "save returned %s: %s", tl_status_name(st), tl_errmsg());
        CHECK_MSG(strstr(tl_errmsg(), "now belongs to another run") != NULL, "%s", tl_errmsg());
        CHECK_MSG(strstr(tl_errmsg(), "give each run its own checkpoint path") != NULL, "%s",
                  tl_errmsg());
        CHECK(tu_files_equal(path, keep));
        CHECK(tl_trainer_step(b) == TL_OK);
        CHECK_MSG(tl_trainer_save(b, path) == TL_OK, "the owner's next save failed: %s",
                  tl_errmsg());
    }
    tl_trainer_free(a);
    tl_trainer_free(b);
    tl_model_free(ma);
    tl_model_free(mb);
    remove(path);
    remove(keep);
}

/* Fails the run at step *user. */
static int fail_at(const tl_train_stats *stats, void *user)
{
    if (stats->step != *(const int64_t *)user)
        return TL_TRAIN_CONTINUE;
    tl_seterr(TL_ESTATE, "the callback failed at step %lld", (long long)stats->step);
    return -1;
}

/* A run whose callback fails after a finished step saves that step to its
 * checkpoint path, and its message adds how to continue to the callback's. */
static void test_failed_callback_saves(void)
{
    char path[512];
    tu_path(path, sizeof path, "train_callback_fails.h5");
    remove(path);
    int64_t at = 6;
    tl_model *m = model(7);
    tl_train_config c = tu_config(20);
    c.checkpoint_path = path;
    c.callback = fail_at;
    c.callback_user = &at;
    c.callback_every = 1;
    tl_trainer *tr = tl_trainer_new(m, &D.data, &c);
    tl_status st = tr ? tl_trainer_run(tr) : TL_OK;
    CHECK_MSG(st == TL_ESTATE, "run returned %s: %s", tl_status_name(st), tl_errmsg());
    CHECK_MSG(strstr(tl_errmsg(), "the callback failed at step 6") != NULL, "%s", tl_errmsg());
    char want[700];
    snprintf(want, sizeof want, "the checkpoint '%s' contains step 6: continue with resume",
             path);
    CHECK_MSG(strstr(tl_errmsg(), want) != NULL, "%s", tl_errmsg());
    tl_trainer_free(tr);

    c.checkpoint_path = NULL;
    c.resume_path = path;
    c.callback = NULL;
    tr = tl_trainer_new(m, &D.data, &c);
    CHECK_MSG(tr != NULL, "%s", tl_errmsg());
    CHECK(tr == NULL || tl_trainer_step_index(tr) == 6);
    tl_trainer_free(tr);
    tl_model_free(m);
    remove(path);
}

/* A learning rate of 1e6 makes the loss or gradient non-finite within a few
 * steps: the run stops with a message naming the step and suggesting a lower
 * learning rate, and the checkpoint of the last good interval stays. */
static void test_divergence(void)
{
    char path[512], keep[512];
    tu_path(path, sizeof path, "train_nan.h5");
    tu_path(keep, sizeof keep, "train_nan_keep.h5");
    remove(path);
    tl_model *m = tu_model(tl_tokenizer_vocab_size(D.tok), 2, false, NULL, 9);
    tl_train_config c = tu_config(200);
    c.schedule.kind = TL_SCHEDULE_CONSTANT;
    c.schedule.lr = 3e-3f;
    c.schedule.min_lr = 0.0f;
    c.checkpoint_path = path;
    c.checkpoint_every = 2;
    c.clip_norm = 0.0;
    tl_trainer *tr = tl_trainer_new(m, &D.data, &c);
    for (int s = 0; tr && s < 2; s++)
        CHECK(tl_trainer_step(tr) == TL_OK);
    CHECK(tr && tl_trainer_save(tr, path) == TL_OK);
    tu_copy_file(path, keep);
    tl_trainer_free(tr);

    c.schedule.lr = 1e6f;
    c.schedule.min_lr = 1e6f;
    c.checkpoint_every = 0; /* only the final checkpoint, which a failed run skips */
    c.resume_path = path;
    tr = tl_trainer_new(m, &D.data, &c);
    CHECK_MSG(tr != NULL, "%s", tl_errmsg());
    tl_status st = tr ? tl_trainer_run(tr) : TL_OK;
    CHECK_MSG(st == TL_ENUMERIC, "run returned %s: %s", tl_status_name(st), tl_errmsg());
    const char *msg = tl_errmsg();
    fprintf(stderr, "divergence message: %s\n", msg);
    CHECK(strstr(msg, "diverged at step") != NULL);
    CHECK(strstr(msg, "Lower the learning rate") != NULL);
    CHECK(strstr(msg, "nan") != NULL || strstr(msg, "inf") != NULL);
    CHECK_MSG(strstr(msg, "-nan") == NULL, "%s", msg);
    /* clip is the Lua key, clip_norm the C field; the message names both. */
    CHECK_MSG(strstr(msg, "set clip (clip_norm in C) above 0") != NULL, "%s", msg);
    CHECK_MSG(strstr(msg, "resume from the last checkpoint") != NULL, "%s", msg);
    char expect[600];
    snprintf(expect, sizeof expect, "'%s' of step 2", path);
    CHECK_MSG(strstr(msg, expect) != NULL, "%s", msg);
    CHECK(tr && tl_trainer_step_index(tr) < 200);
    CHECK_MSG(tu_files_equal(path, keep), "the diverged run changed the checkpoint");
    tl_trainer_free(tr);

    /* A checkpoint path whose first save is still to come offers nothing to
     * resume from. */
    remove(path);
    c.resume_path = NULL;
    c.checkpoint_every = 100;
    tl_model *early = tu_model(tl_tokenizer_vocab_size(D.tok), 2, false, NULL, 9);
    tr = tl_trainer_new(early, &D.data, &c);
    CHECK_MSG(tr != NULL, "%s", tl_errmsg());
    st = tr ? tl_trainer_run(tr) : TL_OK;
    CHECK_MSG(st == TL_ENUMERIC, "run returned %s: %s", tl_status_name(st), tl_errmsg());
    msg = tl_errmsg();
    CHECK_MSG(strstr(msg, "train again: no checkpoint was saved before step") != NULL, "%s", msg);
    CHECK_MSG(strstr(msg, "resume") == NULL, "%s", msg);
    tl_trainer_free(tr);
    tl_model_free(early);

    /* Without a checkpoint path there is no checkpoint to resume from. */
    c.checkpoint_path = NULL;
    c.resume_path = NULL;
    tl_model *fresh = tu_model(tl_tokenizer_vocab_size(D.tok), 2, false, NULL, 9);
    tr = tl_trainer_new(fresh, &D.data, &c);
    st = tr ? tl_trainer_run(tr) : TL_OK;
    CHECK_MSG(st == TL_ENUMERIC, "run returned %s: %s", tl_status_name(st), tl_errmsg());
    msg = tl_errmsg();
    CHECK_MSG(strstr(msg, "diverged at step") != NULL, "%s", msg);
    CHECK_MSG(strstr(msg, "checkpoint") == NULL, "%s", msg);
    tl_trainer_free(tr);
    tl_model_free(fresh);

    /* A router whose scores turn NaN fails the forward pass itself, before
     * there is a loss: the message is still the divergence message, with the
     * layer's own words in it. */
    tl_model *routed = tu_model(tl_tokenizer_vocab_size(D.tok), 2, true, "topk", 14);
    tr = tl_trainer_new(routed, &D.data, &c);
    st = tr ? tl_trainer_run(tr) : TL_OK;
    CHECK_MSG(st == TL_ENUMERIC, "run returned %s: %s", tl_status_name(st), tl_errmsg());
    msg = tl_errmsg();
    fprintf(stderr, "routed divergence message: %s\n", msg);
    CHECK_MSG(strstr(msg, "diverged at step") != NULL, "%s", msg);
    CHECK_MSG(strstr(msg, "Lower the learning rate (now") != NULL, "%s", msg);
    tl_trainer_free(tr);
    tl_model_free(routed);
    tl_model_free(m);
    remove(path);
    remove(keep);
}

/* Records SIGINT at step 10, as the thinklab command's handler does. */
static int interrupt_at_10(const tl_train_stats *stats, void *user)
{
    (void)user;
    if (stats->step == 10)
        tl_train_interrupt(SIGINT);
    return TL_TRAIN_CONTINUE;
}

/* Number of rows of /train/step in the log at path, or -1. */
static long long log_rows(const char *path)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0)
        return -1;
    hid_t d = H5Dopen2(f, "/train/step", H5P_DEFAULT);
    hsize_t dims[1] = {0};
    long long rows = -1;
    if (d >= 0) {
        hid_t space = H5Dget_space(d);
        if (H5Sget_simple_extent_dims(space, dims, NULL) == 1)
            rows = (long long)dims[0];
        H5Sclose(space);
        H5Dclose(d);
    }
    H5Fclose(f);
    return rows;
}

/* A signal stops the run before its next step with the checkpoint written
 * and every logged row flushed, although neither interval was reached. */
static void test_interrupt_keeps_work(void)
{
    char ckpt[512], log[512];
    tu_path(ckpt, sizeof ckpt, "train_interrupt.ckpt.h5");
    tu_path(log, sizeof log, "train_interrupt.h5");
    remove(ckpt);
    remove(log);
    tl_model *m = model(17);
    tl_train_config c = tu_config(40);
    c.checkpoint_path = ckpt;
    c.checkpoint_every = 30;
    c.log_path = log;
    c.log_flush_every = 30;
    c.callback = interrupt_at_10;
    c.callback_every = 1;
    tl_trainer *tr = tl_trainer_new(m, &D.data, &c);
    CHECK_MSG(tr != NULL, "%s", tl_errmsg());
    tl_status st = tr ? tl_trainer_run(tr) : TL_OK;
    CHECK_MSG(st == TL_EINTR, "run returned %s: %s", tl_status_name(st), tl_errmsg());
    const char *msg = tl_errmsg();
    CHECK_MSG(strstr(msg, "interrupted by SIGINT after step 10 of 40") != NULL, "%s", msg);
    CHECK_MSG(strstr(msg, "contains every step up to there") != NULL, "%s", msg);
    CHECK_MSG(strstr(msg, "contains step 10: continue with resume") != NULL, "%s", msg);
    CHECK(tr != NULL);
    if (tr)
        CHECK(tl_trainer_step_index(tr) == 10);
    CHECK(tl_train_running() == 0);
    tl_trainer_free(tr);
    CHECK_MSG(log_rows(log) == 10, "log has %lld rows", log_rows(log));

    /* The signal stays recorded: the next run stops before its first step. */
    c.callback = NULL;
    c.checkpoint_path = NULL;
    c.log_path = NULL;
    c.resume_path = ckpt;
    tr = tl_trainer_new(m, &D.data, &c);
    CHECK_MSG(tr != NULL, "%s", tl_errmsg());
    CHECK(tr != NULL);
    if (tr)
        CHECK(tl_trainer_step_index(tr) == 10);
    st = tr ? tl_trainer_run(tr) : TL_OK;
    CHECK_MSG(st == TL_EINTR, "run returned %s: %s", tl_status_name(st), tl_errmsg());
    CHECK_MSG(strstr(tl_errmsg(), "before step 11 of 40: this run trained no step") != NULL,
              "%s", tl_errmsg());
    CHECK(tr != NULL);
    if (tr)
        CHECK(tl_trainer_step_index(tr) == 10);

    tl_train_interrupt_clear();
    CHECK(tl_train_interrupted() == 0);
    st = tr ? tl_trainer_run(tr) : TL_OK;
    CHECK_MSG(st == TL_OK, "run returned %s: %s", tl_status_name(st), tl_errmsg());
    CHECK(tr != NULL);
    if (tr)
        CHECK(tl_trainer_step_index(tr) == 40);
    tl_trainer_free(tr);

    /* Without a checkpoint path the message states that the run cannot be
     * resumed and how to make the next one resumable. */
    tl_model *plain = model(17);
    c = tu_config(40);
    c.callback = interrupt_at_10;
    c.callback_every = 1;
    tr = tl_trainer_new(plain, &D.data, &c);
    st = tr ? tl_trainer_run(tr) : TL_OK;
    CHECK_MSG(st == TL_EINTR, "run returned %s: %s", tl_status_name(st), tl_errmsg());
    CHECK_MSG(strstr(tl_errmsg(), "no checkpoint path, so it cannot be resumed: set "
                                  "checkpoint") != NULL, "%s", tl_errmsg());
    tl_train_interrupt_clear();
    tl_trainer_free(tr);
    tl_model_free(plain);
    tl_model_free(m);
    remove(ckpt);
    remove(log);
}

/* Steps beyond the run, and a save into a missing folder, get messages that
 * name the path and the fix. */
static void test_step_and_folder_messages(void)
{
    char path[512], want[1200];
    tu_path(path, sizeof path, "train_steps.h5");
    remove(path);
    tl_model *m = model(9);
    tl_train_config c = tu_config(5);
    tl_trainer *tr = tl_trainer_new(m, &D.data, &c);
    for (int s = 0; s < 3 && tr; s++)
        CHECK(tl_trainer_step(tr) == TL_OK);
    CHECK(tr && tl_trainer_save(tr, path) == TL_OK);
    tl_train_config short_c = tu_config(2);
    tl_trainer *ts = tl_trainer_new(m, &D.data, &short_c);
    CHECK(ts && tl_trainer_load(ts, path) == TL_EINVAL);
    snprintf(want, sizeof want, "checkpoint '%s' is at step 3, but this run has 2 steps; set "
                                "steps to at least 3", path);
    CHECK_MSG(strstr(tl_errmsg(), want), "%s", tl_errmsg());
    tl_trainer_free(ts);

    char nodir[600];
    tu_path(nodir, sizeof nodir, "no_such_folder/ck.h5");
    CHECK(tl_trainer_save(tr, nodir) == TL_ENOTFOUND);
    snprintf(want, sizeof want, "cannot create checkpoint '%s': folder '", nodir);
    CHECK_MSG(strncmp(tl_errmsg(), want, strlen(want)) == 0 &&
                  strstr(tl_errmsg(), "no_such_folder' does not exist; create it"),
              "%s", tl_errmsg());
    tl_trainer_free(tr);
    tl_model_free(m);
    remove(path);
}

/* Checkpoint paths that the first save would reject fail when the trainer
 * is created, before any step: a missing folder, a file that is not a
 * checkpoint, a folder, and the log's own path. */
static void test_bad_path_at_creation(void)
{
    char nodir[512], garbage[512], folder[512], log[512];
    tu_path(nodir, sizeof nodir, "no_such_folder/ck.h5");
    tu_path(garbage, sizeof garbage, "train_badpath_garbage.h5");
    tu_path(folder, sizeof folder, "train_badpath_folder");
    tu_path(log, sizeof log, "train_badpath_log.h5");
    FILE *f = fopen(garbage, "wb");
    CHECK(f != NULL);
    if (f) {
        fputs("not a checkpoint", f);
        fclose(f);
    }
    rmdir(folder);
    CHECK(mkdir(folder, 0700) == 0);
    remove(log);

    tl_model *m = model(5);
    struct {
        const char *path, *log, *message;
        tl_status status;
    } cases[] = {
        {nodir, NULL, "no_such_folder' does not exist; create it", TL_ENOTFOUND},
        {garbage, NULL, "exists and is not a thinklab checkpoint", TL_EINVAL},
        {folder, NULL, "is a folder; give a file path", TL_EINVAL},
        {log, log, "is also the log path", TL_EINVAL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tl_train_config c = tu_config(5);
        c.checkpoint_path = cases[i].path;
        c.log_path = cases[i].log;
        tl_trainer *tr = tl_trainer_new(m, &D.data, &c);
        CHECK_MSG(tr == NULL, "checkpoint '%s' was accepted", cases[i].path);
        CHECK_MSG(tl_lasterr() == cases[i].status, "%s: %s", tl_status_name(tl_lasterr()),
                  tl_errmsg());
        CHECK_MSG(strstr(tl_errmsg(), cases[i].path) != NULL, "%s", tl_errmsg());
        CHECK_MSG(strstr(tl_errmsg(), cases[i].message) != NULL, "%s", tl_errmsg());
        tl_trainer_free(tr);
    }
    struct stat sb;
    CHECK_MSG(stat(log, &sb) != 0, "the rejected trainer created the log '%s'", log);
    tl_model_free(m);
    remove(garbage);
    rmdir(folder);
    remove(log);
}

/* Replaces the fixed-length string dataset config_json of path by a
 * variable-length UTF-8 string of the same text, as h5py writes a Python
 * str, or by an int32 when as_int. */
static void rewrite_config_json(const char *path, bool as_int)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t d = H5Dopen2(f, "config_json", H5P_DEFAULT);
    hid_t t = H5Dget_type(d);
    size_t n = H5Tget_size(t);
    char *text = calloc(n + 1, 1);
    hid_t fixed = H5Tcopy(H5T_C_S1);
    H5Tset_size(fixed, n);
    CHECK(f >= 0);
    CHECK(d >= 0);
    CHECK(H5Dread(d, fixed, H5S_ALL, H5S_ALL, H5P_DEFAULT, text) >= 0);
    H5Tclose(fixed);
    H5Tclose(t);
    H5Dclose(d);
    CHECK(H5Ldelete(f, "config_json", H5P_DEFAULT) >= 0);

    hid_t space = H5Screate(H5S_SCALAR);
    hid_t vlen = H5Tcopy(H5T_C_S1);
    H5Tset_size(vlen, H5T_VARIABLE);
    H5Tset_cset(vlen, H5T_CSET_UTF8);
    hid_t type = as_int ? H5T_STD_I32LE : vlen;
    d = H5Dcreate2(f, "config_json", type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    CHECK(d >= 0);
    const char *value = text;
    int32_t number = 7;
    if (as_int)
        CHECK(H5Dwrite(d, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, &number) >= 0);
    else
        CHECK(H5Dwrite(d, vlen, H5S_ALL, H5S_ALL, H5P_DEFAULT, &value) >= 0);
    H5Dclose(d);
    H5Tclose(vlen);
    H5Sclose(space);
    H5Fclose(f);
    free(text);
}

/* config_json loads as a variable-length string too, and a dataset of
 * another type is named in the message. */
static void test_config_json_types(void)
{
    char path[512];
    tu_path(path, sizeof path, "train_config_types.h5");
    remove(path);
    tl_model *m = model(13);
    tl_train_config c = tu_config(4);
    tl_trainer *tr = tl_trainer_new(m, &D.data, &c);
    CHECK(tr && tl_trainer_step(tr) == TL_OK);
    CHECK_MSG(tr && tl_trainer_save(tr, path) == TL_OK, "%s", tl_errmsg());
    tl_trainer_free(tr);

    rewrite_config_json(path, false);
    tr = tl_trainer_new(m, &D.data, &c);
    tl_status st = tr ? tl_trainer_load(tr, path) : TL_ENOMEM;
    CHECK_MSG(st == TL_OK, "variable-length config_json: %s", tl_errmsg());
    CHECK(tr && tl_trainer_step_index(tr) == 1);

    tl_trainer_free(tr);
    tr = tl_trainer_new(m, &D.data, &c);
    CHECK(tr && tl_trainer_step(tr) == TL_OK);
    CHECK_MSG(tr && tl_trainer_save(tr, path) == TL_OK, "%s", tl_errmsg());
    rewrite_config_json(path, true);
    st = tr ? tl_trainer_load(tr, path) : TL_OK;
    CHECK_MSG(st == TL_EFORMAT, "load returned %s: %s", tl_status_name(st), tl_errmsg());
    CHECK_MSG(strstr(tl_errmsg(), "dataset 'config_json' has an unexpected type"), "%s",
              tl_errmsg());
    tl_trainer_free(tr);
    tl_model_free(m);
    remove(path);
}

/* A new run rejects a thinklab checkpoint already at its checkpoint path,
 * unless it resumes from that file or checkpoint_overwrite is set. */
static void test_existing_checkpoint(void)
{
    char path[512];
    tu_path(path, sizeof path, "train_existing.h5");
    remove(path);
    tl_model *m = model(6);
    tl_train_config c = tu_config(4);
    tl_trainer *tr = tl_trainer_new(m, &D.data, &c);
    CHECK(tr && tl_trainer_step(tr) == TL_OK);
    CHECK_MSG(tr && tl_trainer_save(tr, path) == TL_OK, "%s", tl_errmsg());
    tl_trainer_free(tr);

    c.checkpoint_path = path;
    tr = tl_trainer_new(m, &D.data, &c);
    CHECK_MSG(tr == NULL, "a new run accepted the existing checkpoint '%s'", path);
    CHECK(tl_lasterr() == TL_EINVAL);
    CHECK_MSG(strstr(tl_errmsg(), path) != NULL, "%s", tl_errmsg());
    CHECK_MSG(strstr(tl_errmsg(), "set resume") != NULL, "%s", tl_errmsg());
    CHECK_MSG(strstr(tl_errmsg(), "checkpoint_overwrite = true") != NULL, "%s", tl_errmsg());
    tl_trainer_free(tr);

    c.resume_path = path;
    tr = tl_trainer_new(m, &D.data, &c);
    CHECK_MSG(tr != NULL, "resuming from the checkpoint path was rejected: %s", tl_errmsg());
    CHECK(tr && tl_trainer_step_index(tr) == 1);
    tl_trainer_free(tr);

    c.resume_path = NULL;
    c.checkpoint_overwrite = true;
    tr = tl_trainer_new(m, &D.data, &c);
    CHECK_MSG(tr != NULL, "checkpoint_overwrite was rejected: %s", tl_errmsg());
    CHECK(tr && tl_trainer_step_index(tr) == 0);
    tl_trainer_free(tr);
    tl_model_free(m);
    remove(path);
}

/* A checkpoint whose layers have the same parameter names and shapes but
 * other options is rejected with the setting and both values. A resume of a
 * finished run is rejected, one with other training settings is not. */
static void test_other_layer_options(void)
{
    char path[512];
    tu_path(path, sizeof path, "train_other_options.h5");
    remove(path);
    tl_model *causal = model(12);
    tl_train_config c = tu_config(4);
    tl_trainer *tr = tl_trainer_new(causal, &D.data, &c);
    CHECK(tr && tl_trainer_step(tr) == TL_OK);
    CHECK_MSG(tr && tl_trainer_save(tr, path) == TL_OK, "%s", tl_errmsg());
    tl_trainer_free(tr);

    tl_model *topk = tu_model(tl_tokenizer_vocab_size(D.tok), 2, true, "topk", 12);
    tr = tl_trainer_new(topk, &D.data, &c);
    CHECK_MSG(tr != NULL, "%s", tl_errmsg());
    tl_status st = tr ? tl_trainer_load(tr, path) : TL_OK;
    CHECK_MSG(st == TL_EINVAL, "load returned %s: %s", tl_status_name(st), tl_errmsg());
    const char *want = "model.layers[1].options.routing (config_json counts layers from 0, as "
                       "parameter names do) is \"causal\" in the checkpoint but \"topk\" in "
                       "this model";
    CHECK_MSG(strstr(tl_errmsg(), want) != NULL, "%s", tl_errmsg());
    CHECK(tr && tl_trainer_step_index(tr) == 0);
    tl_trainer_free(tr);

    /* A run that already finished cannot be resumed without more steps. */
    c = tu_config(1);
    c.resume_path = path;
    tr = tl_trainer_new(causal, &D.data, &c);
    CHECK_MSG(tr == NULL, "a finished run was resumed");
    CHECK(tl_lasterr() == TL_EINVAL);
    CHECK_MSG(strstr(tl_errmsg(), "is already at step 1 = steps"), "%s", tl_errmsg());
    CHECK_MSG(strstr(tl_errmsg(), "raise steps to continue training"), "%s", tl_errmsg());
    tl_trainer_free(tr);

    /* Training settings may change: more steps and another learning rate. */
    c = tu_config(8);
    c.schedule.lr = 1e-3f;
    c.resume_path = path;
    tr = tl_trainer_new(causal, &D.data, &c);
    CHECK_MSG(tr != NULL, "%s", tl_errmsg());
    CHECK(tr && tl_trainer_step_index(tr) == 1);
    tl_trainer_free(tr);
    tl_model_free(causal);
    tl_model_free(topk);
    remove(path);
}

/* The model-setting message gives the Lua name of a config_json key that
 * differs from it. */
static void test_model_key_names(void)
{
    const char *file = "{\"model\": {\"vocab\": 65, \"d_model\": 32}}";
    const char *mine = "{\"model\": {\"vocab\": 256, \"d_model\": 32}}";
    CHECK(tl_checkpoint_check_model("ck.h5", file, mine) == TL_EINVAL);
    CHECK_MSG(strstr(tl_errmsg(), "model.vocab (vocab_size in thinklab.model) is 65 in the "
                                  "checkpoint but 256 in this model"),
              "%s", tl_errmsg());
}

int main(void)
{
    tu_data_load(&D);
    tu_run("test_resume_bit_exact", test_resume_bit_exact);
    tu_run("test_rejections", test_rejections);
    tu_run("test_config_checksum", test_config_checksum);
    tu_run("test_failed_save_keeps_previous", test_failed_save_keeps_previous);
    tu_run("test_locked_temp_file", test_locked_temp_file);
    tu_run("test_stale_temp_link", test_stale_temp_link);
    tu_run("test_checkpoint_link", test_checkpoint_link);
    tu_run("test_checkpoint_taken_by_other_run", test_checkpoint_taken_by_other_run);
    tu_run("test_failed_callback_saves", test_failed_callback_saves);
    tu_run("test_step_and_folder_messages", test_step_and_folder_messages);
    tu_run("test_divergence", test_divergence);
    tu_run("test_bad_path_at_creation", test_bad_path_at_creation);
    tu_run("test_existing_checkpoint", test_existing_checkpoint);
    tu_run("test_other_layer_options", test_other_layer_options);
    tu_run("test_config_json_types", test_config_json_types);
    tu_run("test_model_key_names", test_model_key_names);
    tu_run("test_interrupt_keeps_work", test_interrupt_keeps_work);
    tu_data_free(&D);
    return gc_finish("train_checkpoint");
}
