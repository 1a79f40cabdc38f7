/* A resumed run that continues its own run log: the continued log must equal
 * the log of an uninterrupted run, and logs of other runs, or without a run
 * id, must be rejected without a change. */
#define _POSIX_C_SOURCE 200809L /* strdup() */
#include <hdf5.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "train_util.h"

static tu_data D;

static tl_model *model(uint64_t seed)
{
    return tu_model(tl_tokenizer_vocab_size(D.tok), 2, true, "causal", seed);
}

/* Deletes attribute name of object obj ("." for the root) in file path. */
static void delete_attr(const char *path, const char *obj, const char *name)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    CHECK(f >= 0);
    if (f < 0)
        return;
    CHECK(H5Adelete_by_name(f, obj, name, H5P_DEFAULT) >= 0);
    H5Fclose(f);
}

/* A dataset read whole in its native type: rows along the first axis. */
typedef struct dataset {
    hsize_t rows;
    size_t bytes;
    unsigned char *data;
} dataset;

static dataset read_dataset(hid_t file, const char *name)
{
    dataset d = {0, 0, NULL};
    hid_t ds = H5Dopen2(file, name, H5P_DEFAULT);
    CHECK_MSG(ds >= 0, "dataset %s is missing", name);
    if (ds < 0)
        return d;
    hid_t ftype = H5Dget_type(ds), space = H5Dget_space(ds);
    hid_t mtype = H5Tget_native_type(ftype, H5T_DIR_ASCEND);
    hsize_t dims[3] = {0, 0, 0};
    int rank = H5Sget_simple_extent_dims(space, dims, NULL);
    size_t n = (size_t)H5Sget_simple_extent_npoints(space);
    d.rows = rank > 0 ? dims[0] : 1;
    d.bytes = n * H5Tget_size(mtype);
    d.data = malloc(d.bytes ? d.bytes : 1);
    CHECK(d.data && (n == 0 || H5Dread(ds, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, d.data) >= 0));
    H5Tclose(mtype);
    H5Tclose(ftype);
    H5Sclose(space);
    H5Dclose(ds);
    return d;
}

/* The int64 column name as a heap array of *n values. */
static int64_t *read_steps(hid_t file, const char *name, size_t *n)
{
    dataset d = read_dataset(file, name);
    *n = d.bytes / sizeof(int64_t);
    return (int64_t *)d.data;
}

/* Checks that dataset name has the same rows and the same bits in both logs. */
static void check_same_dataset(hid_t straight, hid_t continued, const char *name)
{
    dataset a = read_dataset(straight, name), b = read_dataset(continued, name);
    CHECK_MSG(a.rows == b.rows, "%s: %llu rows in the uninterrupted log, %llu in the continued "
              "one", name, (unsigned long long)a.rows, (unsigned long long)b.rows);
    CHECK_MSG(a.bytes == b.bytes && a.data && b.data && memcmp(a.data, b.data, a.bytes) == 0,
              "%s differs between the uninterrupted and the continued log", name);
    free(a.data);
    free(b.data);
}

/* Checks that the string column name has the same values in both logs. */
static void check_same_strings(hid_t straight, hid_t continued, const char *name)
{
    hid_t files[2] = {straight, continued};
    char **values[2] = {NULL, NULL};
    hsize_t rows[2] = {0, 0};
    hid_t str = H5Tcopy(H5T_C_S1);
    H5Tset_size(str, H5T_VARIABLE);
    H5Tset_cset(str, H5T_CSET_UTF8);
    for (int i = 0; i < 2; i++) {
        hid_t ds = H5Dopen2(files[i], name, H5P_DEFAULT);
        hid_t space = H5Dget_space(ds);
        H5Sget_simple_extent_dims(space, &rows[i], NULL);
        values[i] = calloc(rows[i] ? rows[i] : 1, sizeof *values[i]);
        CHECK(H5Dread(ds, str, H5S_ALL, H5S_ALL, H5P_DEFAULT, values[i]) >= 0);
        H5Sclose(space);
        H5Dclose(ds);
    }
    CHECK_MSG(rows[0] == rows[1], "%s: %llu rows against %llu", name,
              (unsigned long long)rows[0], (unsigned long long)rows[1]);
    for (hsize_t r = 0; r < rows[0] && r < rows[1]; r++)
        CHECK_MSG(values[0][r] && values[1][r] && strcmp(values[0][r], values[1][r]) == 0,
                  "%s row %llu: '%s' against '%s'", name, (unsigned long long)r,
                  values[0][r] ? values[0][r] : "", values[1][r] ? values[1][r] : "");
    for (int i = 0; i < 2; i++) {
        for (hsize_t r = 0; r < rows[i]; r++)
            H5free_memory(values[i][r]);
        free(values[i]);
    }
    H5Tclose(str);
}

/* The text of the scalar string dataset or the string attribute name. */
static char *read_text(hid_t file, const char *obj, const char *name, bool attribute)
{
    hid_t h = attribute ? H5Aopen_by_name(file, obj, name, H5P_DEFAULT, H5P_DEFAULT)
                        : H5Dopen2(file, name, H5P_DEFAULT);
    CHECK_MSG(h >= 0, "%s is missing", name);
    if (h < 0)
        return NULL;
    hid_t type = attribute ? H5Aget_type(h) : H5Dget_type(h);
    char *text = NULL;
    if (H5Tis_variable_str(type) > 0) {
        char *value = NULL;
        hid_t mem = H5Tcopy(H5T_C_S1);
        H5Tset_size(mem, H5T_VARIABLE);
        H5Tset_cset(mem, H5Tget_cset(type));
        herr_t st = attribute ? H5Aread(h, mem, &value)
                              : H5Dread(h, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, &value);
        text = st >= 0 && value ? strdup(value) : NULL;
        H5free_memory(value);
        H5Tclose(mem);
    } else {
        text = calloc(H5Tget_size(type) + 1, 1);
        herr_t st = attribute ? H5Aread(h, type, text)
                              : H5Dread(h, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, text);
        CHECK(st >= 0);
    }
    H5Tclose(type);
    if (attribute)
        H5Aclose(h);
    else
        H5Dclose(h);
    return text;
}

static char *run_id_of_checkpoint(const char *path)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    char *id = f >= 0 ? read_text(f, ".", "run_id", true) : NULL;
    if (f >= 0)
        H5Fclose(f);
    return id;
}

static double elapsed_of_checkpoint(const char *path)
{
    double elapsed = NAN;
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t a = f >= 0 ? H5Aopen(f, "elapsed_s", H5P_DEFAULT) : -1;
    CHECK(a >= 0);
    if (a >= 0) {
        CHECK(H5Aread(a, H5T_NATIVE_DOUBLE, &elapsed) >= 0);
        H5Aclose(a);
    }
    if (f >= 0)
        H5Fclose(f);
    return elapsed;
}

/* A run that crashes after step fail_at: at step keep_at, after that step's
 * save, the callback copies the checkpoint to keep, and the caller puts the
 * copy back after the run, because a failing callback's run saves its step. */
typedef struct crash_plan {
    int64_t keep_at, fail_at;
    const char *ck, *keep;
} crash_plan;

static int crash_at_step(const tl_train_stats *s, void *user)
{
    const crash_plan *plan = user;
    if (s->step == plan->keep_at)
        tu_copy_file(plan->ck, plan->keep);
    if (s->step != plan->fail_at)
        return TL_TRAIN_CONTINUE;
    tl_seterr(TL_ESTATE, "the test stopped the run at step %lld", (long long)s->step);
    return -1;
}

/* Settings of the three runs below: every record group of the log gets
 * rows, and the steps after the checkpoint have rows of each group. */
static tl_train_config logged_config(int64_t steps, const char *log)
{
    tl_train_config c = tu_config(steps);
    c.log_path = log;
    c.log_grads_every = 2;
    c.log_routing_every = 3;
    c.eval_every = 2;
    c.eval_batches = 2;
    c.eval_calibration_batches = 1;
    return c;
}

/* Every dataset of a step-indexed group of the log, except
 * /train/tokens_per_s, which measures time. */
static const char *const compared[] = {
    "train/step",          "train/loss",           "train/lr",
    "train/grad_norm",     "train/flops",          "eval/step",
    "eval/loss",           "eval/perplexity",      "eval/bits_per_byte",
    "eval/selected_fraction", "grad_norms/step",   "grad_norms/values",
    "token_grads/step",    "token_grads/norms",    "token_grads/tokens",
    "token_grads/losses",  "routing/layers.1/step", "routing/layers.1/fraction",
    "routing/layers.1/score_mean", "routing/layers.1/score_std",
    "routing/layers.1/topk_agreement", "routing/layers.1/histogram",
    "routing/layers.1/mask",
};

/* An uninterrupted run of N steps against a run that checkpoints at step S,
 * logs on to step M and stops, then resumes from the step-S checkpoint into
 * the same log and trains to N. The continued log must have each step once
 * and the rows of the uninterrupted log, bit for bit: the trainer is
 * deterministic at a fixed thread count. A second resume with more steps
 * appends after the first. */
static void test_continued_log_equals_straight(void)
{
    enum { S = 4, M = 7, N = 12, MORE = 14 };
    char straight[512], continued[512], ck[512];
    tu_path(straight, sizeof straight, "resume_log_straight.h5");
    tu_path(continued, sizeof continued, "resume_log_continued.h5");
    tu_path(ck, sizeof ck, "resume_log.ckpt.h5");
    remove(straight);
    remove(continued);
    remove(ck);

    tl_model *ma = model(41);
    tl_train_config c = logged_config(N, straight);
    tl_trainer *tr = tl_trainer_new(ma, &D.data, &c);
    CHECK_MSG(tr && tl_trainer_run(tr) == TL_OK, "%s", tl_errmsg());
    tl_trainer_free(tr);
    tl_model_free(ma);

    /* The interrupted run: a checkpoint at S only, rows up to step M. */
    char ck_at_s[600];
    snprintf(ck_at_s, sizeof ck_at_s, "%s.at_s", ck);
    tl_model *mb = model(41);
    crash_plan plan = {S, M, ck, ck_at_s};
    c = logged_config(N, continued);
    c.checkpoint_path = ck;
    c.checkpoint_every = S;
    c.callback = crash_at_step;
    c.callback_user = &plan;
    c.callback_every = 1;
    tr = tl_trainer_new(mb, &D.data, &c);
    CHECK(tr != NULL);
    tl_status st = tr ? tl_trainer_run(tr) : TL_OK;
    CHECK_MSG(st == TL_ESTATE, "the interrupted run returned %s: %s", tl_status_name(st),
              tl_errmsg());
    CHECK(tr != NULL);
    if (tr)
        CHECK(tl_trainer_step_index(tr) == M);
    tl_trainer_free(tr);
    tl_model_free(mb);
    tu_copy_file(ck_at_s, ck);
    remove(ck_at_s);
    hid_t f = H5Fopen(continued, H5F_ACC_RDONLY, H5P_DEFAULT);
    size_t n_before = 0;
    int64_t *before = f >= 0 ? read_steps(f, "train/step", &n_before) : NULL;
    CHECK_MSG(n_before == M, "the interrupted log has %zu training rows, want %d", n_before, M);
    free(before);
    if (f >= 0)
        H5Fclose(f);
    double ck_elapsed = elapsed_of_checkpoint(ck);
    CHECK_MSG(ck_elapsed > 0, "checkpoint elapsed_s is %g", ck_elapsed);

    /* The resume into the same log. Other initial weights: all state must
     * come from the checkpoint. */
    tl_model *mc = model(97);
    c = logged_config(N, continued);
    c.checkpoint_path = ck;
    c.checkpoint_every = S;
    c.resume_path = ck;
    tr = tl_trainer_new(mc, &D.data, &c);
    CHECK_MSG(tr != NULL, "the resume into its own log was rejected: %s", tl_errmsg());
    CHECK(tr != NULL);
    if (tr)
        CHECK(tl_trainer_step_index(tr) == S);
    CHECK_MSG(tr && tl_trainer_run(tr) == TL_OK, "%s", tl_errmsg());
    double elapsed = tr ? tl_trainer_stats(tr)->elapsed_s : NAN;
    CHECK_MSG(elapsed >= ck_elapsed, "elapsed_s %g after the resume, the checkpoint had %g",
              elapsed, ck_elapsed);
    tl_trainer_free(tr);

    hid_t fa = H5Fopen(straight, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t fb = H5Fopen(continued, H5F_ACC_RDONLY, H5P_DEFAULT);
    CHECK(fa >= 0);
    CHECK(fb >= 0);
    if (fa >= 0 && fb >= 0) {
        for (size_t i = 0; i < sizeof compared / sizeof compared[0]; i++)
            check_same_dataset(fa, fb, compared[i]);
        check_same_strings(fa, fb, "eval/routing_mode");
        check_same_strings(fa, fb, "eval/split");
        size_t n = 0;
        int64_t *steps = read_steps(fb, "train/step", &n);
        CHECK_MSG(n == N, "%zu training rows, want %d", n, N);
        for (size_t i = 0; steps && i < n; i++)
            CHECK_MSG(steps[i] == (int64_t)i, "training row %zu has step %lld", i,
                      (long long)steps[i]);
        free(steps);
        /* Sanity of the comparison: the groups have rows after the checkpoint. */
        int64_t *grads = read_steps(fb, "grad_norms/step", &n);
        CHECK_MSG(n == N / 2 && grads && grads[n - 1] == N - 2, "%zu gradient rows", n);
        free(grads);
        char *log_id = read_text(fb, "meta", "run_id", true);
        char *ck_id = run_id_of_checkpoint(ck);
        CHECK_MSG(log_id && ck_id && strlen(log_id) == 32 && strcmp(log_id, ck_id) == 0,
                  "run ids: log %s, checkpoint %s", log_id ? log_id : "(none)",
                  ck_id ? ck_id : "(none)");
        free(log_id);
        free(ck_id);
    }
    if (fa >= 0)
        H5Fclose(fa);
    if (fb >= 0)
        H5Fclose(fb);

    /* The checkpoint at N continues with more steps: the log gets steps N to
     * MORE - 1, the new step count and both resume steps. */
    c = logged_config(MORE, continued);
    c.resume_path = ck;
    tr = tl_trainer_new(mc, &D.data, &c);
    CHECK_MSG(tr != NULL, "the second resume was rejected: %s", tl_errmsg());
    CHECK(tr != NULL);
    if (tr)
        CHECK(tl_trainer_step_index(tr) == N);
    CHECK_MSG(tr && tl_trainer_run(tr) == TL_OK, "%s", tl_errmsg());
    tl_trainer_free(tr);
    tl_model_free(mc);
    fb = H5Fopen(continued, H5F_ACC_RDONLY, H5P_DEFAULT);
    CHECK(fb >= 0);
    if (fb >= 0) {
        size_t n = 0;
        int64_t *steps = read_steps(fb, "train/step", &n);
        CHECK_MSG(n == MORE, "%zu training rows after the second resume, want %d", n, MORE);
        for (size_t i = 0; steps && i < n; i++)
            CHECK(steps[i] == (int64_t)i);
        free(steps);
        int64_t resumed[2] = {-1, -1};
        hid_t a = H5Aopen_by_name(fb, "meta", "resumed_at_steps", H5P_DEFAULT, H5P_DEFAULT);
        hid_t space = a >= 0 ? H5Aget_space(a) : -1;
        CHECK(space >= 0);
        if (space >= 0) {
            CHECK(H5Sget_simple_extent_npoints(space) == 2);
            if (H5Sget_simple_extent_npoints(space) == 2)
                CHECK(H5Aread(a, H5T_NATIVE_INT64, resumed) >= 0);
        }
        CHECK_MSG(resumed[0] == S && resumed[1] == N, "resumed_at_steps %lld, %lld",
                  (long long)resumed[0], (long long)resumed[1]);
        if (space >= 0)
            H5Sclose(space);
        if (a >= 0)
            H5Aclose(a);
        char *json = read_text(fb, "meta", "meta/config_json", false);
        CHECK_MSG(json && strstr(json, "\"steps\": 14,") != NULL, "config_json: %s",
                  json ? json : "(none)");
        free(json);
        H5Fclose(fb);
    }
    remove(straight);
    remove(continued);
    remove(ck);
}

/* Expects tl_trainer_new to reject the configuration with a message that
 * contains every string of want, and the log at log_path to stay as it was
 * (compared with its copy keep). */
static void expect_rejected(tl_model *m, const tl_train_config *c, const char *keep,
                            const char *const *want, int n_want)
{
    tl_trainer *tr = tl_trainer_new(m, &D.data, c);
    CHECK_MSG(tr == NULL, "resume from '%s' into '%s' was accepted", c->resume_path,
              c->log_path);
    CHECK(tl_lasterr() == TL_EINVAL);
    for (int i = 0; i < n_want; i++)
        CHECK_MSG(strstr(tl_errmsg(), want[i]) != NULL, "missing \"%s\" in: %s", want[i],
                  tl_errmsg());
    tl_trainer_free(tr);
    CHECK_MSG(tu_files_equal(c->log_path, keep), "the rejected resume changed the log '%s'",
              c->log_path);
}

/* A resume is rejected when the log belongs to another run, also with
 * log_overwrite; when the log or the checkpoint has no run id; and when the
 * log lacks steps before the checkpoint. A new log path works in each case,
 * and the gradient-spike analysis stays once per log. */
static void test_rejected_logs(void)
{
    char log_x[512], log_y[512], ck_x[512], ck_old[512], log_old[512], keep[512], fresh[512];
    char ck_later[512];
    tu_path(log_x, sizeof log_x, "resume_reject_x.h5");
    tu_path(log_y, sizeof log_y, "resume_reject_y.h5");
    tu_path(ck_x, sizeof ck_x, "resume_reject_x.ckpt.h5");
    tu_path(ck_old, sizeof ck_old, "resume_reject_old.ckpt.h5");
    tu_path(ck_later, sizeof ck_later, "resume_reject_later.ckpt.h5");
    tu_path(log_old, sizeof log_old, "resume_reject_old.h5");
    tu_path(keep, sizeof keep, "resume_reject_keep.h5");
    tu_path(fresh, sizeof fresh, "resume_reject_fresh.h5");
    const char *paths[] = {log_x, log_y, ck_x, ck_old, ck_later, log_old, keep, fresh};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++)
        remove(paths[i]);

    /* Run X: 2 steps, a gradient-spike analysis and a checkpoint. Run Y: 1 step. */
    tl_model *m = model(43);
    tl_train_config c = tu_config(6);
    c.log_path = log_x;
    tl_trainer *tr = tl_trainer_new(m, &D.data, &c);
    CHECK_MSG(tr != NULL, "%s", tl_errmsg());
    CHECK(tr != NULL);
    if (tr)
        CHECK(tl_trainer_step(tr) == TL_OK);
    CHECK(tr != NULL);
    if (tr)
        CHECK(tl_trainer_step(tr) == TL_OK);
    tl_spike_config sc = {.n_sequences = 2, .seq_len = 16, .hard_quantile = 0.8,
                          .routing = TL_EVAL_TOPK, .step = 2};
    CHECK_MSG(tr && tl_spike_analysis(tl_trainer_ctx(tr), m, &D.data, &sc, tl_trainer_log(tr),
                                      NULL, NULL, NULL, NULL) == TL_OK, "%s", tl_errmsg());
    CHECK_MSG(tr && tl_trainer_save(tr, ck_x) == TL_OK, "%s", tl_errmsg());
    tl_trainer_free(tr);
    c.log_path = log_y;
    tr = tl_trainer_new(m, &D.data, &c);
    CHECK(tr != NULL);
    if (tr)
        CHECK(tl_trainer_step(tr) == TL_OK);
    tl_trainer_free(tr);
    char *id_x = run_id_of_checkpoint(ck_x);
    CHECK(id_x != NULL);

    /* Another run's log, also with log_overwrite. */
    tu_copy_file(log_y, keep);
    c.resume_path = ck_x;
    c.log_overwrite = true;
    const char *other[] = {log_y, ck_x, "belongs to run", id_x ? id_x : "?",
                           "give the resumed run a new log path"};
    expect_rejected(m, &c, keep, other, 5);
    c.log_overwrite = false;

    /* A checkpoint without a run id: rejected for the log, loadable for a new one. */
    tu_copy_file(ck_x, ck_old);
    delete_attr(ck_old, ".", "run_id");
    delete_attr(ck_old, ".", "elapsed_s");
    tu_copy_file(log_x, keep);
    c.resume_path = ck_old;
    c.log_path = log_x;
    const char *old_checkpoint[] = {ck_old, log_x, "has no run id", "new log path"};
    expect_rejected(m, &c, keep, old_checkpoint, 4);
    c.log_path = fresh;
    tr = tl_trainer_new(m, &D.data, &c);
    CHECK_MSG(tr != NULL, "an old checkpoint with a new log was rejected: %s", tl_errmsg());
    CHECK(tr != NULL);
    if (tr)
        CHECK(tl_trainer_step_index(tr) == 2);
    tl_trainer_free(tr);
    remove(fresh);

    /* A log without a run id. */
    tu_copy_file(log_x, log_old);
    delete_attr(log_old, "meta", "run_id");
    tu_copy_file(log_old, keep);
    c.resume_path = ck_x;
    c.log_path = log_old;
    const char *old_log[] = {log_old, ck_x, "has no run id", "new log path"};
    expect_rejected(m, &c, keep, old_log, 4);

    /* The run continues elsewhere to step 4: log_x lacks steps 2 and 3. */
    c.log_path = fresh;
    c.checkpoint_path = ck_later;
    c.steps = 4;
    tr = tl_trainer_new(m, &D.data, &c);
    CHECK_MSG(tr && tl_trainer_run(tr) == TL_OK, "%s", tl_errmsg());
    tl_trainer_free(tr);
    c.checkpoint_path = NULL;
    c.steps = 6;
    c.resume_path = ck_later;
    c.log_path = log_x;
    tu_copy_file(log_x, keep);
    const char *gap[] = {log_x, "training rows up to step 1 only", "steps 2 to 3",
                         "new log path"};
    expect_rejected(m, &c, keep, gap, 4);

    /* The run's own log continues; its analysis stays and cannot be written again. */
    c.resume_path = ck_x;
    tr = tl_trainer_new(m, &D.data, &c);
    CHECK_MSG(tr != NULL, "the resume into its own log was rejected: %s", tl_errmsg());
    tl_status st = tr ? tl_spike_analysis(tl_trainer_ctx(tr), m, &D.data, &sc,
                                          tl_trainer_log(tr), NULL, NULL, NULL, NULL)
                      : TL_OK;
    CHECK_MSG(st == TL_ESTATE, "a second analysis in the continued log returned %s",
              tl_status_name(st));
    CHECK_MSG(strstr(tl_errmsg(), "written before the run was resumed") != NULL, "%s",
              tl_errmsg());
    tl_trainer_free(tr);
    hid_t f = H5Fopen(log_x, H5F_ACC_RDONLY, H5P_DEFAULT);
    dataset rows = f >= 0 ? read_dataset(f, "analysis/gradient_spikes/step") : (dataset){0};
    CHECK_MSG(rows.rows == 2, "%llu gradient-spike rows, want 2", (unsigned long long)rows.rows);
    free(rows.data);
    if (f >= 0)
        H5Fclose(f);

    free(id_x);
    tl_model_free(m);
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++)
        remove(paths[i]);
}

/* A resume that the log's /token_grads cannot take (log_token_seqs raised)
 * is rejected with the log unchanged: the rows after the checkpoint stay and
 * /meta records no resume. With the old setting the resume continues and
 * records one. */
static void test_rejected_token_grads_shape(void)
{
    char log[512], ck[512], keep[512];
    tu_path(log, sizeof log, "resume_token_shape.h5");
    tu_path(ck, sizeof ck, "resume_token_shape.ckpt.h5");
    tu_path(keep, sizeof keep, "resume_token_shape_keep.h5");
    remove(log);
    remove(ck);

    /* Rows of steps 0 to 3 in the log, the checkpoint at step 2. */
    tl_model *m = model(45);
    tl_train_config c = logged_config(8, log);
    c.log_token_seqs = 1;
    tl_trainer *tr = tl_trainer_new(m, &D.data, &c);
    CHECK_MSG(tr != NULL, "%s", tl_errmsg());
    for (int s = 0; tr && s < 4; s++) {
        CHECK_MSG(tl_trainer_step(tr) == TL_OK, "%s", tl_errmsg());
        if (s == 1)
            CHECK_MSG(tl_trainer_save(tr, ck) == TL_OK, "%s", tl_errmsg());
    }
    tl_trainer_free(tr);
    tu_copy_file(log, keep);

    c.resume_path = ck;
    c.log_token_seqs = 2;
    const char *shape[] = {log, "32 token positions", "this run 2 and 64", "log_token_seqs",
                           "new log path"};
    expect_rejected(m, &c, keep, shape, 5);

    c.log_token_seqs = 1;
    tr = tl_trainer_new(m, &D.data, &c);
    CHECK_MSG(tr != NULL, "the resume with the log's log_token_seqs was rejected: %s",
              tl_errmsg());
    tl_trainer_free(tr);
    hid_t f = H5Fopen(log, H5F_ACC_RDONLY, H5P_DEFAULT);
    CHECK(f >= 0);
    if (f >= 0) {
        size_t n = 0;
        int64_t *steps = read_steps(f, "train/step", &n);
        CHECK_MSG(n == 2, "%zu training rows after the resume at step 2, want 2", n);
        free(steps);
        hid_t a = H5Aopen_by_name(f, "meta", "resumed_at_steps", H5P_DEFAULT, H5P_DEFAULT);
        hid_t space = a >= 0 ? H5Aget_space(a) : -1;
        int64_t resumed = -1;
        CHECK_MSG(space >= 0 && H5Sget_simple_extent_npoints(space) == 1,
                  "resumed_at_steps should list the one resume that ran");
        CHECK(a >= 0);
        if (a >= 0 && space >= 0 && H5Sget_simple_extent_npoints(space) == 1)
            CHECK(H5Aread(a, H5T_NATIVE_INT64, &resumed) >= 0);
        CHECK_MSG(resumed == 2, "resumed_at_steps lists %lld, want 2", (long long)resumed);
        if (space >= 0)
            H5Sclose(space);
        if (a >= 0)
            H5Aclose(a);
        H5Fclose(f);
    }
    tl_model_free(m);
    remove(log);
    remove(ck);
    remove(keep);
}

/* Writes an HDF5 file that passes as a run log (root thinklab_log_version)
 * but whose /meta run_id is an integer, so that reading the id fails. */
static void write_log_with_bad_run_id(const char *path)
{
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    CHECK(f >= 0);
    if (f < 0)
        return;
    hid_t space = H5Screate(H5S_SCALAR);
    int64_t version = TL_LOG_FORMAT_VERSION, id = 7;
    hid_t a = H5Acreate2(f, "thinklab_log_version", H5T_STD_I64LE, space, H5P_DEFAULT,
                         H5P_DEFAULT);
    CHECK(a >= 0 && H5Awrite(a, H5T_NATIVE_INT64, &version) >= 0);
    H5Aclose(a);
    hid_t g = H5Gcreate2(f, "meta", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    a = H5Acreate2(g, "run_id", H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
    CHECK(a >= 0 && H5Awrite(a, H5T_NATIVE_INT64, &id) >= 0);
    H5Aclose(a);
    H5Gclose(g);
    H5Sclose(space);
    H5Fclose(f);
}

/* A resume is rejected when its log path is a folder, a log cut short (as
 * a kill during a flush can leave it) or a log whose run id cannot be read.
 * The message names the cause and a new log path, also with log_overwrite,
 * and the file stays. */
static void test_rejected_damaged_logs(void)
{
    char log[512], ck[512], cut[512], bad_id[512], keep[512], folder[512];
    tu_path(log, sizeof log, "resume_damaged.h5");
    tu_path(ck, sizeof ck, "resume_damaged.ckpt.h5");
    tu_path(cut, sizeof cut, "resume_damaged_cut.h5");
    tu_path(bad_id, sizeof bad_id, "resume_damaged_id.h5");
    tu_path(keep, sizeof keep, "resume_damaged_keep.h5");
    tu_path(folder, sizeof folder, "resume_damaged_folder");
    const char *paths[] = {log, ck, cut, bad_id, keep};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++)
        remove(paths[i]);
    rmdir(folder);

    tl_model *m = model(47);
    tl_train_config c = tu_config(6);
    c.log_path = log;
    tl_trainer *tr = tl_trainer_new(m, &D.data, &c);
    CHECK_MSG(tr != NULL, "%s", tl_errmsg());
    CHECK(tr != NULL);
    if (tr)
        CHECK(tl_trainer_step(tr) == TL_OK);
    CHECK(tr != NULL);
    if (tr)
        CHECK(tl_trainer_step(tr) == TL_OK);
    CHECK_MSG(tr && tl_trainer_save(tr, ck) == TL_OK, "%s", tl_errmsg());
    tl_trainer_free(tr);

    /* The first 2 KiB of the log: its superblock, without most of its objects. */
    FILE *in = fopen(log, "rb"), *out = fopen(cut, "wb");
    CHECK(in && out);
    for (int i = 0, ch; in && out && i < 2048 && (ch = fgetc(in)) != EOF; i++)
        fputc(ch, out);
    if (in)
        fclose(in);
    if (out)
        fclose(out);
    tu_copy_file(cut, keep);
    c.resume_path = ck;
    c.log_path = cut;
    c.log_overwrite = true;
    const char *damaged[] = {cut, ck, "HDF5 cannot open the file as a thinklab run log",
                             "new log path"};
    expect_rejected(m, &c, keep, damaged, 4);

    write_log_with_bad_run_id(bad_id);
    tu_copy_file(bad_id, keep);
    c.log_path = bad_id;
    const char *unreadable[] = {bad_id, ck, "reading its run id failed", "new log path"};
    expect_rejected(m, &c, keep, unreadable, 4);

    CHECK(mkdir(folder, 0700) == 0);
    c.log_path = folder;
    tr = tl_trainer_new(m, &D.data, &c);
    CHECK_MSG(tr == NULL, "a resume into the folder '%s' was accepted", folder);
    CHECK(tl_lasterr() == TL_EINVAL);
    CHECK_MSG(strstr(tl_errmsg(), "is a folder") != NULL, "%s", tl_errmsg());
    CHECK_MSG(strstr(tl_errmsg(), "/run.h5") != NULL, "%s", tl_errmsg());
    tl_trainer_free(tr);
    CHECK(rmdir(folder) == 0);

    tl_model_free(m);
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++)
        remove(paths[i]);
}

/* tl_trainer_load on a trainer whose log has steps at or after the
 * checkpoint's step is rejected, and the trainer goes on from where it was,
 * so the log has each step once. Before any step, a load into a trainer
 * with a new log works and the log starts at the checkpoint's step. */
static void test_load_behind_log(void)
{
    char log[512], ck[512], fresh[512];
    tu_path(log, sizeof log, "load_behind.h5");
    tu_path(ck, sizeof ck, "load_behind.ckpt.h5");
    tu_path(fresh, sizeof fresh, "load_behind_fresh.h5");
    remove(log);
    remove(ck);
    remove(fresh);

    tl_model *m = model(49);
    tl_train_config c = tu_config(8);
    c.log_path = log;
    tl_trainer *tr = tl_trainer_new(m, &D.data, &c);
    CHECK_MSG(tr != NULL, "%s", tl_errmsg());
    for (int s = 0; tr && s < 4; s++) {
        CHECK_MSG(tl_trainer_step(tr) == TL_OK, "%s", tl_errmsg());
        if (s == 1)
            CHECK_MSG(tl_trainer_save(tr, ck) == TL_OK, "%s", tl_errmsg());
    }
    tl_status st = tr ? tl_trainer_load(tr, ck) : TL_OK;
    CHECK_MSG(st == TL_EINVAL, "the load behind the log returned %s", tl_status_name(st));
    const char *want[] = {ck, log, "at step 2", "steps up to 3", "new log path"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        CHECK_MSG(strstr(tl_errmsg(), want[i]) != NULL, "missing \"%s\" in: %s", want[i],
                  tl_errmsg());
    CHECK(tr != NULL);
    if (tr)
        CHECK(tl_trainer_step_index(tr) == 4);
    CHECK_MSG(tr && tl_trainer_step(tr) == TL_OK, "the step after the rejected load: %s",
              tl_errmsg());
    tl_trainer_free(tr);

    hid_t f = H5Fopen(log, H5F_ACC_RDONLY, H5P_DEFAULT);
    CHECK(f >= 0);
    size_t n = 0;
    int64_t *steps = f >= 0 ? read_steps(f, "train/step", &n) : NULL;
    CHECK_MSG(n == 5, "%zu training rows, want 5", n);
    for (size_t i = 0; steps && i < n; i++)
        CHECK_MSG(steps[i] == (int64_t)i, "training row %zu has step %lld", i,
                  (long long)steps[i]);
    free(steps);
    if (f >= 0)
        H5Fclose(f);

    c.log_path = fresh;
    tr = tl_trainer_new(m, &D.data, &c);
    CHECK_MSG(tr && tl_trainer_load(tr, ck) == TL_OK, "a load before the first step: %s",
              tl_errmsg());
    CHECK(tr != NULL);
    if (tr)
        CHECK(tl_trainer_step(tr) == TL_OK);
    tl_trainer_free(tr);
    f = H5Fopen(fresh, H5F_ACC_RDONLY, H5P_DEFAULT);
    steps = f >= 0 ? read_steps(f, "train/step", &n) : NULL;
    CHECK_MSG(n == 1 && steps && steps[0] == 2, "the new log has %zu rows, want step 2", n);
    free(steps);
    if (f >= 0)
        H5Fclose(f);

    tl_model_free(m);
    remove(log);
    remove(ck);
    remove(fresh);
}

/* Branch A logs steps 0 to 5 and checkpoints at steps 2 and 5. Branch B
 * resumes from step 2 with another learning rate into the same log and logs
 * steps 2 to 6. A resume from A's step-5 checkpoint into that log would join
 * B's steps 2 to 4 to A's weights, so it is rejected and the log stays as
 * it was. */
static void test_rejected_other_branch(void)
{
    char log[512], ck2[512], ck5[512], keep[512];
    tu_path(log, sizeof log, "resume_branch.h5");
    tu_path(ck2, sizeof ck2, "resume_branch_2.ckpt.h5");
    tu_path(ck5, sizeof ck5, "resume_branch_5.ckpt.h5");
    tu_path(keep, sizeof keep, "resume_branch_keep.h5");
    remove(log);
    remove(ck2);
    remove(ck5);

    tl_model *m = model(53);
    tl_train_config c = tu_config(10);
    c.log_path = log;
    tl_trainer *tr = tl_trainer_new(m, &D.data, &c);
    CHECK_MSG(tr != NULL, "%s", tl_errmsg());
    for (int s = 0; tr && s < 6; s++) {
        CHECK_MSG(tl_trainer_step(tr) == TL_OK, "%s", tl_errmsg());
        if (s == 1)
            CHECK_MSG(tl_trainer_save(tr, ck2) == TL_OK, "%s", tl_errmsg());
        if (s == 4)
            CHECK_MSG(tl_trainer_save(tr, ck5) == TL_OK, "%s", tl_errmsg());
    }
    tl_trainer_free(tr);

    c.resume_path = ck2;
    c.schedule.lr *= 2.0f;
    tr = tl_trainer_new(m, &D.data, &c);
    CHECK_MSG(tr != NULL, "branch B's resume: %s", tl_errmsg());
    for (int s = 0; tr && s < 5; s++)
        CHECK_MSG(tl_trainer_step(tr) == TL_OK, "%s", tl_errmsg());
    tl_trainer_free(tr);
    tu_copy_file(log, keep);

    c.resume_path = ck5;
    c.schedule.lr /= 2.0f;
    const char *want[] = {log, "at step 4", "another branch", "new log path"};
    expect_rejected(m, &c, keep, want, 4);

    tl_model_free(m);
    remove(log);
    remove(ck2);
    remove(ck5);
    remove(keep);
}

/* A resume into a log that a trainer of this process still writes is
 * rejected for that writer, not as a damaged log, and the writer goes on. */
static void test_resume_into_open_log(void)
{
    char log[512], ck[512];
    tu_path(log, sizeof log, "resume_open.h5");
    tu_path(ck, sizeof ck, "resume_open.ckpt.h5");
    remove(log);
    remove(ck);

    tl_model *m = model(51);
    tl_train_config c = tu_config(6);
    c.log_path = log;
    tl_trainer *writer = tl_trainer_new(m, &D.data, &c);
    CHECK_MSG(writer != NULL, "%s", tl_errmsg());
    CHECK(writer && tl_trainer_step(writer) == TL_OK);
    CHECK_MSG(writer && tl_trainer_save(writer, ck) == TL_OK, "%s", tl_errmsg());

    tl_model *m2 = model(51);
    c.resume_path = ck;
    tl_trainer *tr = tl_trainer_new(m2, &D.data, &c);
    CHECK_MSG(tr == NULL, "the resume into the open log '%s' was accepted", log);
    CHECK(tl_lasterr() == TL_ESTATE);
    CHECK_MSG(strstr(tl_errmsg(), "is being written by another open log") != NULL, "%s",
              tl_errmsg());
    CHECK_MSG(strstr(tl_errmsg(), "damaged") == NULL, "%s", tl_errmsg());
    tl_trainer_free(tr);

    CHECK_MSG(writer && tl_trainer_step(writer) == TL_OK, "%s", tl_errmsg());
    tl_trainer_free(writer);
    hid_t f = H5Fopen(log, H5F_ACC_RDONLY, H5P_DEFAULT);
    size_t n = 0;
    int64_t *steps = f >= 0 ? read_steps(f, "train/step", &n) : NULL;
    CHECK_MSG(n == 2, "%zu training rows, want 2", n);
    free(steps);
    if (f >= 0)
        H5Fclose(f);

    tl_model_free(m);
    tl_model_free(m2);
    remove(log);
    remove(ck);
}

int main(void)
{
    tu_data_load(&D);
    tu_run("test_continued_log_equals_straight", test_continued_log_equals_straight);
    tu_run("test_rejected_logs", test_rejected_logs);
    tu_run("test_rejected_token_grads_shape", test_rejected_token_grads_shape);
    tu_run("test_rejected_damaged_logs", test_rejected_damaged_logs);
    tu_run("test_load_behind_log", test_load_behind_log);
    tu_run("test_resume_into_open_log", test_resume_into_open_log);
    tu_run("test_rejected_other_branch", test_rejected_other_branch);
    tu_data_free(&D);
    return gc_finish("train_resume_log");
}
