/* The run log a trainer writes, read back through the HDF5 C API. */
#define _POSIX_C_SOURCE 200809L /* strdup() */
#include <hdf5.h>
#include <math.h>
#include <string.h>

#include "train_util.h"

static tu_data D;

/* Dimensions of dataset name (at most 3); returns the rank or -1. */
static int dims_of(hid_t file, const char *name, hsize_t *dims)
{
    hid_t d = H5Dopen2(file, name, H5P_DEFAULT);
    if (d < 0)
        return -1;
    hid_t s = H5Dget_space(d);
    int rank = H5Sget_simple_extent_dims(s, dims, NULL);
    H5Sclose(s);
    H5Dclose(d);
    return rank;
}

static bool read_all(hid_t file, const char *name, hid_t type, void *out)
{
    hid_t d = H5Dopen2(file, name, H5P_DEFAULT);
    bool ok = d >= 0 && H5Dread(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out) >= 0;
    if (d >= 0)
        H5Dclose(d);
    return ok;
}

/* 20 steps of a model with an ITT layer, K = 5, evaluation every 10 steps. */
static void test_log_contents(void)
{
    enum { STEPS = 20, K = 5, ROWS = STEPS / K, T = 32, L = 2 };
    char path[512];
    tu_path(path, sizeof path, "train_log.h5");
    tl_model *m = tu_model(tl_tokenizer_vocab_size(D.tok), L, true, "causal", 31);
    tl_train_config c = tu_config(STEPS);
    c.log_path = path;
    c.log_overwrite = true;
    c.log_grads_every = K;
    c.eval_every = 10;
    c.eval_batches = 2;
    c.experiment_json = "{\"note\": \"itt routing causal\"}";
    tl_trainer *tr = tl_trainer_new(m, &D.data, &c);
    CHECK_MSG(tr != NULL, "%s", tl_errmsg());
    CHECK_MSG(tr && tl_trainer_run(tr) == TL_OK, "%s", tl_errmsg());
    double last_loss = tr ? tl_trainer_stats(tr)->loss : NAN;
    tl_trainer_free(tr);

    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    CHECK(f >= 0);
    if (f < 0) {
        tl_model_free(m);
        return;
    }
    hsize_t dims[3] = {0, 0, 0};

    /* /train: one row per step, steps 0..19, the last loss as reported. */
    CHECK(dims_of(f, "train/step", dims) == 1);
    CHECK(dims[0] == STEPS);
    int64_t steps[STEPS];
    double losses[STEPS];
    CHECK(read_all(f, "train/step", H5T_NATIVE_INT64, steps));
    CHECK(read_all(f, "train/loss", H5T_NATIVE_DOUBLE, losses));
    for (int i = 0; i < STEPS; i++) {
        CHECK(steps[i] == i);
        CHECK(isfinite(losses[i]));
    }
    CHECK(losses[STEPS - 1] == last_loss);

    /* /grad_norms: every K steps, one value per parameter. */
    size_t n_params = tl_params_count(tl_model_params(m));
    CHECK(dims_of(f, "grad_norms/values", dims) == 2);
    CHECK(dims[0] == ROWS);
    CHECK(dims[1] == n_params);
    int64_t gsteps[ROWS];
    CHECK(read_all(f, "grad_norms/step", H5T_NATIVE_INT64, gsteps));
    for (int r = 0; r < ROWS; r++)
        CHECK(gsteps[r] == r * K);

    /* /token_grads: (rows, L + 1, T) norms, all positive and finite. */
    CHECK(dims_of(f, "token_grads/norms", dims) == 3);
    CHECK(dims[0] == ROWS);
    CHECK(dims[1] == L + 1);
    CHECK(dims[2] == T);
    float norms[ROWS * (L + 1) * T], tlosses[ROWS * T];
    int32_t tokens[ROWS * T];
    CHECK(read_all(f, "token_grads/norms", H5T_NATIVE_FLOAT, norms));
    CHECK(read_all(f, "token_grads/losses", H5T_NATIVE_FLOAT, tlosses));
    CHECK(read_all(f, "token_grads/tokens", H5T_NATIVE_INT32, tokens));
    bool positive = true;
    for (int i = 0; i < ROWS * (L + 1) * T; i++)
        positive = positive && norms[i] > 0 && isfinite(norms[i]);
    CHECK(positive);
    for (int i = 0; i < ROWS * T; i++) {
        CHECK(tlosses[i] > 0);
        CHECK(tokens[i] >= 0);
        CHECK(tokens[i] < tl_tokenizer_vocab_size(D.tok));
    }

    /* /routing/layers.1: ITT x2 has one routed step; masks of T tokens. */
    CHECK(dims_of(f, "routing/layers.1/mask", dims) == 3);
    CHECK(dims[0] == ROWS);
    CHECK(dims[1] == 1);
    CHECK(dims[2] == T);
    double fraction[ROWS];
    CHECK(read_all(f, "routing/layers.1/fraction", H5T_NATIVE_DOUBLE, fraction));
    for (int r = 0; r < ROWS; r++) {
        CHECK(fraction[r] >= 0);
        CHECK(fraction[r] <= 1);
    }

    /* /eval: steps 10 and 20, each under top-k, causal and calibrated routing. */
    CHECK(dims_of(f, "eval/step", dims) == 1);
    CHECK(dims[0] == 6);
    int64_t esteps[6];
    double sel[6];
    char *modes[6] = {NULL};
    CHECK(read_all(f, "eval/step", H5T_NATIVE_INT64, esteps));
    CHECK(read_all(f, "eval/selected_fraction", H5T_NATIVE_DOUBLE, sel));
    hid_t str = H5Tcopy(H5T_C_S1);
    H5Tset_size(str, H5T_VARIABLE);
    H5Tset_cset(str, H5T_CSET_UTF8);
    CHECK(read_all(f, "eval/routing_mode", str, modes));
    const char *expect[3] = {"topk", "causal", "calibrated"};
    for (int i = 0; i < 6; i++) {
        CHECK(esteps[i] == (i < 3 ? 10 : 20));
        CHECK_MSG(modes[i] && strcmp(modes[i], expect[i % 3]) == 0, "row %d: %s", i,
                  modes[i] ? modes[i] : "(null)");
        CHECK(sel[i] >= 0);
        CHECK(sel[i] <= 1);
        H5free_memory(modes[i]);
    }
    H5Tclose(str);
    /* Top-k selects exactly ceil(0.5 * 32) = 16 of 32 tokens. */
    CHECK(sel[0] == 0.5);
    CHECK(sel[3] == 0.5);

    /* Routing scores are the sigmoid gates, so their logged mean lies in (0, 1). */
    double score_mean[ROWS];
    CHECK(read_all(f, "routing/layers.1/score_mean", H5T_NATIVE_DOUBLE, score_mean));
    for (int r = 0; r < ROWS; r++)
        CHECK_MSG(score_mean[r] > 0 && score_mean[r] < 1, "row %d: %g", r, score_mean[r]);

    /* /meta/config_json contains the trainer and model configuration. */
    hid_t d = H5Dopen2(f, "meta/config_json", H5P_DEFAULT);
    hid_t type = d >= 0 ? H5Dget_type(d) : -1;
    char *json = NULL;
    if (type >= 0 && H5Tis_variable_str(type) > 0) {
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, H5T_VARIABLE);
        H5Tset_cset(mt, H5T_CSET_UTF8);
        char *vlen = NULL;
        CHECK(H5Dread(d, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, &vlen) >= 0);
        json = vlen ? strdup(vlen) : NULL;
        H5free_memory(vlen);
        H5Tclose(mt);
    } else if (type >= 0) {
        size_t size = H5Tget_size(type);
        json = calloc(size + 1, 1);
        CHECK(H5Dread(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, json) >= 0);
    }
    CHECK(json != NULL);
    const char *expect_json[] = {
        "\"train\": {\"batch_size\": 8",
        "\"plugin\": \"itt\"",
        /* Resolved layer options: the settings given and the defaults. */
        "\"plugin\": \"itt\", \"options\": {\"steps\": 2, \"ratios\": [0.5",
        "\"routing\": \"causal\"",
        "\"rtc_add\": \"block\"",
        "\"experiment\": {\"note\": \"itt routing causal\"}}",
        "\"beta1\": 0.9, \"beta2\": 0.95, \"eps\": 1e-08",
        "\"plugins\": {\"transformer\": \"1.0\", \"itt\": \"1.0\"}",
    };
    for (size_t i = 0; json && i < sizeof expect_json / sizeof *expect_json; i++)
        CHECK_MSG(strstr(json, expect_json[i]) != NULL, "missing %s", expect_json[i]);
    free(json);
    if (type >= 0)
        H5Tclose(type);
    if (d >= 0)
        H5Dclose(d);
    H5Fclose(f);
    tl_model_free(m);
    remove(path);
}

/* A run with a log and default record settings (no gradient records) still
 * writes routing rows every log_routing_every = 10 steps: steps 0 and 10 of
 * 20, and no gradient records. */
static void test_routing_by_default(void)
{
    char path[512];
    tu_path(path, sizeof path, "train_log_routing.h5");
    tl_model *m = tu_model(tl_tokenizer_vocab_size(D.tok), 2, true, "causal", 33);
    tl_train_config c = tu_config(20);
    CHECK(c.log_grads_every == 0 && c.log_routing_every == 10);
    c.log_path = path;
    c.log_overwrite = true;
    tl_trainer *tr = tl_trainer_new(m, &D.data, &c);
    CHECK_MSG(tr && tl_trainer_run(tr) == TL_OK, "%s", tl_errmsg());
    tl_trainer_free(tr);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    CHECK(f >= 0);
    hsize_t dims[3] = {0, 0, 0};
    CHECK(f >= 0 && dims_of(f, "routing/layers.1/mask", dims) == 3);
    CHECK_MSG(dims[0] == 2, "routing rows: %llu, want 2", (unsigned long long)dims[0]);
    int64_t steps[2] = {-1, -1};
    CHECK(dims[0] == 2 && read_all(f, "routing/layers.1/step", H5T_NATIVE_INT64, steps));
    CHECK(steps[0] == 0 && steps[1] == 10);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    CHECK(f >= 0 && H5Lexists(f, "grad_norms", H5P_DEFAULT) <= 0);
    if (f >= 0)
        H5Fclose(f);
    tl_model_free(m);
    remove(path);
}

int main(void)
{
    tu_data_load(&D);
    tu_run("test_log_contents", test_log_contents);
    tu_run("test_routing_by_default", test_routing_by_default);
    tu_data_free(&D);
    return gc_finish("train_log");
}
