/* The HDF5 run log read back through the HDF5 C API (and h5py, h5dump when
 * installed), a writer killed with SIGKILL, a flush without room, HDF5 error
 * details, and tl_matrix_norms. */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "gradcheck.h"
#include "internal.h"

static char dir[64];

static void path_in_dir(char *out, size_t size, const char *name)
{
    snprintf(out, size, "%s/%s", dir, name);
}

static tl_log_meta test_meta(int flush_every)
{
    static const char *const names[] = {"itt", "mod"};
    static const char *const versions[] = {"0.1.0", "0.2.3"};
    tl_log_meta meta = {
        .config_json = "{\"model\": {\"layers\": 2}, \"seed\": 7}",
        .n_plugins = 2,
        .plugin_names = names,
        .plugin_versions = versions,
        .seed = 7,
        .threads = 2,
        .flush_every = flush_every,
    };
    return meta;
}

/* ---- reading helpers: each returns false (and the caller's CHECK fails) on error ---- */

static hid_t open_read(const char *path)
{
    return H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
}

/* Returns the dimensions of dataset name (rank up to 3), or -1 if missing. */
static int dims_of(hid_t file, const char *name, hsize_t *dims)
{
    hid_t d = H5Dopen2(file, name, H5P_DEFAULT);
    if (d < 0)
        return -1;
    hid_t s = H5Dget_space(d);
    int rank = H5Sget_simple_extent_ndims(s);
    H5Sget_simple_extent_dims(s, dims, NULL);
    H5Sclose(s);
    H5Dclose(d);
    return rank;
}

static int64_t rows_of(hid_t file, const char *name)
{
    hsize_t dims[3] = {0};
    return dims_of(file, name, dims) < 0 ? -1 : (int64_t)dims[0];
}

static bool read_all(hid_t file, const char *name, hid_t mem_type, void *buf)
{
    hid_t d = H5Dopen2(file, name, H5P_DEFAULT);
    if (d < 0)
        return false;
    herr_t r = H5Dread(d, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
    H5Dclose(d);
    return r >= 0;
}

static hid_t str_type(void)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    return t;
}

/* Reads n variable-length strings; the caller frees each with H5free_memory. */
static bool read_strings(hid_t file, const char *name, char **out)
{
    hid_t t = str_type();
    bool ok = read_all(file, name, t, out);
    H5Tclose(t);
    return ok;
}

static bool attr_read(hid_t file, const char *object, const char *name, hid_t mem_type,
                      void *out)
{
    hid_t a = H5Aopen_by_name(file, object, name, H5P_DEFAULT, H5P_DEFAULT);
    if (a < 0)
        return false;
    herr_t r = H5Aread(a, mem_type, out);
    H5Aclose(a);
    return r >= 0;
}

/* Checks that dataset name is chunked with an unlimited first dimension. */
static void check_growable(hid_t file, const char *name)
{
    hid_t d = H5Dopen2(file, name, H5P_DEFAULT);
    CHECK_MSG(d >= 0, "%s missing", name);
    if (d < 0)
        return;
    hid_t plist = H5Dget_create_plist(d);
    CHECK_MSG(H5Pget_layout(plist) == H5D_CHUNKED, "%s is not chunked", name);
    hid_t s = H5Dget_space(d);
    hsize_t dims[3], maxdims[3];
    H5Sget_simple_extent_dims(s, dims, maxdims);
    CHECK_MSG(maxdims[0] == H5S_UNLIMITED, "%s has a limited first dimension", name);
    H5Sclose(s);
    H5Pclose(plist);
    H5Dclose(d);
}

/* Runs a shell command and returns its first output line parsed as an integer,
 * or -1 if it fails. */
static long run_for_number(const char *command)
{
    FILE *p = popen(command, "r");
    if (!p)
        return -1;
    long value = -1;
    if (fscanf(p, "%ld", &value) != 1)
        value = -1;
    int status = pclose(p);
    return status == 0 ? value : -1;
}

static bool have_h5py(void)
{
    char command[512];
    snprintf(command, sizeof command, "'%s' -c 'import h5py; print(1)' 2>/dev/null",
             TL_TEST_PYTHON);
    return TL_TEST_PYTHON[0] && run_for_number(command) == 1;
}

/* Returns len(/train/step) as h5py reads it after checking the format
 * version, or -1. h5py runs with its default file locking. */
static long h5py_train_rows(const char *path)
{
    char command[1024];
    snprintf(command, sizeof command,
             "'%s' -c \"import h5py, sys\n"
             "f = h5py.File(sys.argv[1], 'r')\n"
             "assert f.attrs['thinklab_log_version'] == 1\n"
             "print(len(f['train/step']))\" '%s'",
             TL_TEST_PYTHON, path);
    return run_for_number(command);
}

/* ---- a writer killed with SIGKILL ---- */

enum { KILL_FLUSH_EVERY = 10, KILL_STEPS = 37 };

/* Child: logs KILL_STEPS steps (flushing after 10, 20, 30), reports the
 * flushed row count on fd, then waits to be killed. */
static void kill_child(const char *path, int fd)
{
    tl_log_meta meta = test_meta(KILL_FLUSH_EVERY);
    tl_log *log = tl_log_create(path, &meta);
    if (!log)
        _exit(2);
    tl_log_token_grads_init(log, 1, 3);
    for (int s = 0; s < KILL_STEPS; s++) {
        float norms[6] = {(float)s, 1, 2, 3, 4, 5};
        int32_t tokens[3] = {s, s + 1, s + 2};
        float losses[3] = {0.5f, 0.25f, NAN};
        if (tl_log_token_grads(log, s, norms, tokens, losses) != TL_OK)
            _exit(3);
        tl_log_train_record rec = {.step = s, .loss = 10.0 - 0.1 * s, .lr = 1e-3};
        if (tl_log_train(log, &rec) != TL_OK)
            _exit(4);
    }
    long flushed = (long)tl_log_train_rows_flushed(log);
    if (write(fd, &flushed, sizeof flushed) != (ssize_t)sizeof flushed)
        _exit(5);
    for (;;)
        pause();
}

static void check_train_prefix(const char *path, long expected, const char *when)
{
    hid_t f = open_read(path);
    CHECK_MSG(f >= 0, "%s: the log does not open from C", when);
    if (f < 0)
        return;
    int version = 0;
    CHECK(attr_read(f, "/", "thinklab_log_version", H5T_NATIVE_INT, &version));
    CHECK(version == TL_LOG_FORMAT_VERSION);
    int64_t rows = rows_of(f, "/train/step");
    CHECK_MSG(rows == expected, "%s: %lld rows in /train/step, expected %ld", when,
              (long long)rows, expected);
    CHECK_MSG(rows_of(f, "/token_grads/step") == expected, "%s: /token_grads rows differ", when);
    if (rows == expected && expected > 0) {
        int64_t *steps = malloc((size_t)rows * sizeof *steps);
        double *loss = malloc((size_t)rows * sizeof *loss);
        CHECK(read_all(f, "/train/step", H5T_NATIVE_INT64, steps));
        CHECK(read_all(f, "/train/loss", H5T_NATIVE_DOUBLE, loss));
        for (int64_t s = 0; s < rows; s++) {
            CHECK(steps[s] == s);
            /* Stored as double and read as double: bit-exact. */
            CHECK(loss[s] == 10.0 - 0.1 * (double)s);
        }
        free(steps);
        free(loss);
    }
    H5Fclose(f);
}

static void test_sigkill(void)
{
    char path[128];
    path_in_dir(path, sizeof path, "killed.h5");
    int fds[2];
    CHECK(pipe(fds) == 0);
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        kill_child(path, fds[1]);
    }
    close(fds[1]);
    long flushed = -1;
    ssize_t got = read(fds[0], &flushed, sizeof flushed);
    close(fds[0]);
    CHECK_MSG(got == (ssize_t)sizeof flushed, "the writer child died before reporting");
    /* 37 steps with a flush every 10 leave 30 in the file. */
    CHECK(flushed == 30);

    /* Readers while the writer is alive, after its last flush. */
    check_train_prefix(path, flushed, "writer alive");
    bool h5py = have_h5py();
    if (h5py) {
        long rows = h5py_train_rows(path);
        CHECK_MSG(rows == flushed, "h5py with the writer alive read %ld rows, expected %ld",
                  rows, flushed);
    } else {
        printf("note: h5py does not import under '%s'; Python reads not checked\n",
               TL_TEST_PYTHON);
    }

    kill(pid, SIGKILL);
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == SIGKILL);

    check_train_prefix(path, flushed, "after SIGKILL");
    if (h5py) {
        long rows = h5py_train_rows(path);
        CHECK_MSG(rows == flushed, "h5py after SIGKILL read %ld rows, expected %ld", rows,
                  flushed);
    }
}

/* ---- every record kind, read back ---- */

enum { RT_STEPS = 11, RT_PARAMS = 3, RT_LAYERS = 2, RT_TOKENS = 5, RT_SEQS = 5 };

static void write_round_trip(const char *path)
{
    tl_log_meta meta = test_meta(4);
    tl_log *log = tl_log_create(path, &meta);
    CHECK_MSG(log != NULL, "create failed: %s", tl_errmsg());
    if (!log)
        return;

    const char *const param_names[RT_PARAMS] = {"embed.weight", "layers.0.wq", "head.weight"};
    CHECK(tl_log_grad_norms_init(log, RT_PARAMS, param_names) == TL_OK);
    CHECK(tl_log_token_grads_init(log, RT_LAYERS, RT_TOKENS) == TL_OK);
    tl_log_routing_spec itt = {.name = "layers.1.itt", .kind = "itt", .n_steps = 3,
                               .n_mask_tokens = 4, .n_bins = 4, .score_min = 0, .score_max = 1};
    tl_log_routing_spec mod = {.name = "layers.3.mod", .kind = "mod", .n_steps = 1,
                               .n_mask_tokens = 2, .n_bins = 2, .score_min = -1, .score_max = 1};
    int itt_id = tl_log_routing_register(log, &itt);
    int mod_id = tl_log_routing_register(log, &mod);
    CHECK(itt_id == 0);
    CHECK(mod_id == 1);
    CHECK(tl_log_spikes_init(log, RT_LAYERS, 0.25, 0.75) == TL_OK);

    for (int s = 0; s < RT_STEPS; s++) {
        tl_log_train_record rec = {.step = 100 + s, .loss = 3.0 + s, .lr = 1e-4 * s,
                                   .grad_norm = 0.5 * s, .tokens_per_s = 1000.0 + s,
                                   .flops = 1e12 + s};
        if (s % 5 == 0) {
            double norms[RT_PARAMS] = {s + 0.1, s + 0.2, s + 0.3};
            CHECK(tl_log_grad_norms(log, 100 + s, norms) == TL_OK);
            float tg[(RT_LAYERS + 1) * RT_TOKENS];
            for (int i = 0; i < (RT_LAYERS + 1) * RT_TOKENS; i++)
                tg[i] = (float)(s * 100 + i);
            int32_t tokens[RT_TOKENS] = {s, 1, 2, 3, 4};
            float losses[RT_TOKENS] = {1.5f, 2.5f, 3.5f, 4.5f, NAN};
            CHECK(tl_log_token_grads(log, 100 + s, tg, tokens, losses) == TL_OK);

            /* ITT step 0 and 2 only; step 1 stays NaN. Scores 0.1, 0.3, 0.6,
             * 0.9, 1.2 (clamped into the last bin), selected 1 0 1 1 0. */
            float scores[5] = {0.1f, 0.3f, 0.6f, 0.9f, 1.2f};
            uint8_t sel[5] = {1, 0, 1, 1, 0};
            tl_log_routing_record r0 = {.step = 100 + s, .routed_step = 0, .n_scores = 5,
                                        .scores = scores, .selected = sel,
                                        .topk_agreement = NAN};
            tl_log_routing_record r2 = r0;
            r2.routed_step = 2;
            r2.topk_agreement = 0.75;
            CHECK(tl_log_routing(log, itt_id, &r2) == TL_OK);
            CHECK(tl_log_routing(log, itt_id, &r0) == TL_OK);
            float mscores[2] = {-2.0f, 0.5f};
            uint8_t msel[2] = {0, 1};
            tl_log_routing_record m = {.step = 100 + s, .routed_step = 0, .n_scores = 2,
                                       .scores = mscores, .selected = msel,
                                       .topk_agreement = NAN};
            CHECK(tl_log_routing(log, mod_id, &m) == TL_OK);
        }
        CHECK(tl_log_train(log, &rec) == TL_OK);
    }
    /* Flushes happen after steps 4 and 8 (flush_every 4): 8 rows are on disk. */
    CHECK(tl_log_train_rows_flushed(log) == 8);

    tl_log_eval_record e0 = {.step = 104, .split = "val", .loss = 2.0, .perplexity = exp(2.0),
                             .bits_per_byte = 0.9, .routing_mode = "topk",
                             .selected_fraction = 0.5};
    tl_log_eval_record e1 = {.step = 110, .split = "test-ünï", .loss = 1.5,
                             .perplexity = exp(1.5), .bits_per_byte = NAN,
                             .routing_mode = "causal", .selected_fraction = 0.48};
    CHECK(tl_log_eval(log, &e0) == TL_OK);
    CHECK(tl_log_eval(log, &e1) == TL_OK);

    static const double seq_loss[RT_SEQS] = {1.0, 3.0, 2.0, 5.0, 4.0};
    static const int correct[RT_SEQS] = {1, 0, -1, 0, 1};
    for (int q = 0; q < RT_SEQS; q++) {
        double nuc[RT_LAYERS * 4], fro[RT_LAYERS * 4], msv[RT_LAYERS * 4];
        for (int i = 0; i < RT_LAYERS * 4; i++) {
            nuc[i] = 10 * q + i;
            fro[i] = 100 * q + i;
            msv[i] = 1000 * q + i;
        }
        tl_log_spike_record rec = {.step = 110, .sequence = 40 + q, .loss = seq_loss[q],
                                   .correct = correct[q], .nuclear = nuc, .frobenius = fro,
                                   .max_sv = msv};
        CHECK(tl_log_spike(log, &rec) == TL_OK);
    }
    CHECK(tl_log_close(log) == TL_OK);
}

static void check_meta(hid_t f)
{
    char *config[1] = {NULL}, *names[2] = {NULL}, *versions[2] = {NULL};
    CHECK(read_strings(f, "/meta/config_json", config));
    CHECK(config[0] && strcmp(config[0], "{\"model\": {\"layers\": 2}, \"seed\": 7}") == 0);
    CHECK(read_strings(f, "/meta/plugin_names", names));
    CHECK(read_strings(f, "/meta/plugin_versions", versions));
    CHECK(names[1] && strcmp(names[1], "mod") == 0);
    CHECK(versions[1] && strcmp(versions[1], "0.2.3") == 0);
    H5free_memory(config[0]);
    for (int i = 0; i < 2; i++) {
        H5free_memory(names[i]);
        H5free_memory(versions[i]);
    }

    uint64_t seed = 0;
    int threads = 0, version = 0, flush_every = 0;
    CHECK(attr_read(f, "/meta", "seed", H5T_NATIVE_UINT64, &seed));
    CHECK(seed == 7);
    CHECK(attr_read(f, "/meta", "threads", H5T_NATIVE_INT, &threads));
    CHECK(threads == 2);
    CHECK(attr_read(f, "/meta", "flush_every", H5T_NATIVE_INT, &flush_every));
    CHECK(flush_every == 4);
    CHECK(attr_read(f, "/", "thinklab_log_version", H5T_NATIVE_INT, &version));
    CHECK(version == 1);
    hid_t t = str_type();
    char *tl_version = NULL, *start = NULL;
    CHECK(attr_read(f, "/meta", "thinklab_version", t, &tl_version));
    CHECK(tl_version && strcmp(tl_version, TL_VERSION_STRING) == 0);
    CHECK(attr_read(f, "/meta", "start_time", t, &start));
    /* ISO 8601 UTC, e.g. 2025-01-31T12:00:00Z: 20 characters ending in Z. */
    CHECK(start && strlen(start) == 20 && start[10] == 'T' && start[19] == 'Z');
    H5free_memory(tl_version);
    H5free_memory(start);
    H5Tclose(t);
}

static void check_train_and_norms(hid_t f)
{
    int64_t steps[RT_STEPS];
    double flops[RT_STEPS], lr[RT_STEPS];
    CHECK(rows_of(f, "/train/step") == RT_STEPS);
    CHECK(read_all(f, "/train/step", H5T_NATIVE_INT64, steps));
    CHECK(read_all(f, "/train/flops", H5T_NATIVE_DOUBLE, flops));
    CHECK(read_all(f, "/train/lr", H5T_NATIVE_DOUBLE, lr));
    for (int s = 0; s < RT_STEPS; s++) {
        CHECK(steps[s] == 100 + s);
        CHECK(flops[s] == 1e12 + s);
        CHECK(lr[s] == 1e-4 * s);
    }
    const char *growing[] = {"/train/loss", "/train/grad_norm", "/train/tokens_per_s",
                             "/grad_norms/values", "/token_grads/norms", "/eval/split",
                             "/routing/layers.1.itt/mask", "/analysis/gradient_spikes/nuclear",
                             "/analysis/gradient_spikes/label_by_loss"};
    for (size_t i = 0; i < sizeof growing / sizeof growing[0]; i++)
        check_growable(f, growing[i]);

    /* Grad norms at steps 100, 105, 110. */
    hsize_t dims[3];
    CHECK(dims_of(f, "/grad_norms/values", dims) == 2 && dims[0] == 3 && dims[1] == RT_PARAMS);
    double gn[3 * RT_PARAMS];
    int64_t gstep[3];
    CHECK(read_all(f, "/grad_norms/values", H5T_NATIVE_DOUBLE, gn));
    CHECK(read_all(f, "/grad_norms/step", H5T_NATIVE_INT64, gstep));
    CHECK(gstep[2] == 110 && gn[2 * RT_PARAMS + 1] == 10.2);
    char *names[RT_PARAMS] = {NULL};
    CHECK(read_strings(f, "/grad_norms/names", names));
    CHECK(names[1] && strcmp(names[1], "layers.0.wq") == 0);
    for (int i = 0; i < RT_PARAMS; i++)
        H5free_memory(names[i]);

    CHECK(dims_of(f, "/token_grads/norms", dims) == 3 && dims[0] == 3 &&
          dims[1] == RT_LAYERS + 1 && dims[2] == RT_TOKENS);
    float tg[3 * (RT_LAYERS + 1) * RT_TOKENS], losses[3 * RT_TOKENS];
    int32_t tokens[3 * RT_TOKENS];
    CHECK(read_all(f, "/token_grads/norms", H5T_NATIVE_FLOAT, tg));
    CHECK(read_all(f, "/token_grads/tokens", H5T_NATIVE_INT32, tokens));
    CHECK(read_all(f, "/token_grads/losses", H5T_NATIVE_FLOAT, losses));
    /* Row 1 is step 105: norms[l][i] = 500 + l*T + i. */
    CHECK(tg[(RT_LAYERS + 1) * RT_TOKENS + 2 * RT_TOKENS + 3] == 500.0f + 2 * RT_TOKENS + 3);
    CHECK(tokens[RT_TOKENS] == 5);
    CHECK(losses[RT_TOKENS + 1] == 2.5f && isnan(losses[RT_TOKENS + 4]));
    int n_layers = 0;
    CHECK(attr_read(f, "/token_grads", "n_layers", H5T_NATIVE_INT, &n_layers) &&
          n_layers == RT_LAYERS);
}

static void check_routing(hid_t f)
{
    const char *g = "/routing/layers.1.itt";
    char name[128];
    snprintf(name, sizeof name, "%s/fraction", g);
    hsize_t dims[3];
    CHECK(dims_of(f, name, dims) == 2 && dims[0] == 3 && dims[1] == 3);
    double frac[9], mean[9], std[9], agree[9], edges[5];
    int64_t hist[3 * 3 * 4];
    uint8_t mask[3 * 3 * 4];
    CHECK(read_all(f, name, H5T_NATIVE_DOUBLE, frac));
    snprintf(name, sizeof name, "%s/score_mean", g);
    CHECK(read_all(f, name, H5T_NATIVE_DOUBLE, mean));
    snprintf(name, sizeof name, "%s/score_std", g);
    CHECK(read_all(f, name, H5T_NATIVE_DOUBLE, std));
    snprintf(name, sizeof name, "%s/topk_agreement", g);
    CHECK(read_all(f, name, H5T_NATIVE_DOUBLE, agree));
    snprintf(name, sizeof name, "%s/histogram", g);
    CHECK(read_all(f, name, H5T_NATIVE_INT64, hist));
    snprintf(name, sizeof name, "%s/mask", g);
    CHECK(read_all(f, name, H5T_NATIVE_UINT8, mask));
    snprintf(name, sizeof name, "%s/bin_edges", g);
    CHECK(read_all(f, name, H5T_NATIVE_DOUBLE, edges));
    CHECK(edges[0] == 0.0 && edges[2] == 0.5 && edges[4] == 1.0);

    /* Reference statistics of the float32 scores, computed in double. */
    const float scores[5] = {0.1f, 0.3f, 0.6f, 0.9f, 1.2f};
    double ref_mean = 0, ref_var = 0;
    for (int i = 0; i < 5; i++)
        ref_mean += scores[i] / 5.0;
    for (int i = 0; i < 5; i++)
        ref_var += (scores[i] - ref_mean) * (scores[i] - ref_mean) / 5.0;
    for (int row = 0; row < 3; row++) {
        double *fr = frac + 3 * row;
        CHECK(fr[0] == 0.6);
        CHECK(isnan(fr[1]));
        CHECK(fr[2] == 0.6);
        /* Summation order differs from the reference: 1e-12 absolute. */
        CHECK(fabs(mean[3 * row] - ref_mean) < 1e-12);
        CHECK(fabs(std[3 * row + 2] - sqrt(ref_var)) < 1e-12);
        CHECK(isnan(agree[3 * row]));
        CHECK(agree[3 * row + 2] == 0.75);
        int64_t *h0 = hist + row * 12;
        /* Bins [0,.25) [.25,.5) [.5,.75) [.75,1]: 0.1 | 0.3 | 0.6 | 0.9, 1.2 clamped. */
        CHECK(h0[0] == 1);
        CHECK(h0[1] == 1);
        CHECK(h0[2] == 1);
        CHECK(h0[3] == 2);
        CHECK(hist[row * 12 + 4] == 0 && hist[row * 12 + 8 + 3] == 2);
        uint8_t *m = mask + row * 12;
        CHECK(m[0] == 1 && m[1] == 0 && m[2] == 1 && m[3] == 1);
        CHECK(m[4] == 0 && m[5] == 0 && m[6] == 0 && m[7] == 0);
        CHECK(m[8] == 1 && m[11] == 1);
    }

    int64_t mhist[3 * 2];
    CHECK(read_all(f, "/routing/layers.3.mod/histogram", H5T_NATIVE_INT64, mhist));
    /* -2.0 clamps into bin [-1, 0), 0.5 falls into [0, 1]. */
    CHECK(mhist[0] == 1 && mhist[1] == 1);
    char *kind = NULL;
    hid_t t = str_type();
    CHECK(attr_read(f, "/routing/layers.3.mod", "kind", t, &kind) && kind &&
          strcmp(kind, "mod") == 0);
    H5free_memory(kind);
    H5Tclose(t);
}

static void check_eval_and_spikes(hid_t f)
{
    char *split[2] = {NULL}, *mode[2] = {NULL};
    double ppl[2], bpb[2];
    CHECK(rows_of(f, "/eval/step") == 2);
    CHECK(read_strings(f, "/eval/split", split));
    CHECK(read_strings(f, "/eval/routing_mode", mode));
    CHECK(read_all(f, "/eval/perplexity", H5T_NATIVE_DOUBLE, ppl));
    CHECK(read_all(f, "/eval/bits_per_byte", H5T_NATIVE_DOUBLE, bpb));
    CHECK(split[1] && strcmp(split[1], "test-ünï") == 0);
    CHECK(mode[0] && strcmp(mode[0], "topk") == 0);
    CHECK(ppl[1] == exp(1.5));
    CHECK(bpb[0] == 0.9);
    CHECK(isnan(bpb[1]));
    for (int i = 0; i < 2; i++) {
        H5free_memory(split[i]);
        H5free_memory(mode[i]);
    }

    const char *g = "/analysis/gradient_spikes";
    hsize_t dims[3];
    CHECK(dims_of(f, "/analysis/gradient_spikes/max_sv", dims) == 3 && dims[0] == RT_SEQS &&
          dims[1] == RT_LAYERS && dims[2] == 4);
    double msv[RT_SEQS * RT_LAYERS * 4];
    int8_t by_loss[RT_SEQS], by_answer[RT_SEQS];
    CHECK(read_all(f, "/analysis/gradient_spikes/max_sv", H5T_NATIVE_DOUBLE, msv));
    CHECK(msv[3 * RT_LAYERS * 4 + 1 * 4 + 3] == 3000 + 7);
    CHECK(read_all(f, "/analysis/gradient_spikes/label_by_loss", H5T_NATIVE_INT8, by_loss));
    CHECK(read_all(f, "/analysis/gradient_spikes/label_by_answer", H5T_NATIVE_INT8, by_answer));
    /* Losses 1 3 2 5 4: numpy.quantile gives 2 at 0.25 and 4 at 0.75, so
     * 1, 2 are easy, 4, 5 hard and 3 unlabelled. */
    static const int8_t want_loss[RT_SEQS] = {0, -1, 0, 1, 1};
    static const int8_t want_answer[RT_SEQS] = {0, 1, -1, 1, 0};
    for (int q = 0; q < RT_SEQS; q++) {
        CHECK_MSG(by_loss[q] == want_loss[q], "label_by_loss[%d] = %d", q, by_loss[q]);
        CHECK(by_answer[q] == want_answer[q]);
    }
    double easy = 0, hard = 0;
    CHECK(attr_read(f, g, "easy_threshold", H5T_NATIVE_DOUBLE, &easy));
    CHECK(easy == 2.0);
    CHECK(attr_read(f, g, "hard_threshold", H5T_NATIVE_DOUBLE, &hard));
    CHECK(hard == 4.0);
    char *matrices[4] = {NULL};
    CHECK(read_strings(f, "/analysis/gradient_spikes/matrices", matrices));
    CHECK(matrices[3] && strcmp(matrices[3], "wo") == 0);
    for (int i = 0; i < 4; i++)
        H5free_memory(matrices[i]);
}

static void test_round_trip(void)
{
    char path[128];
    path_in_dir(path, sizeof path, "round_trip.h5");
    write_round_trip(path);
    hid_t f = open_read(path);
    CHECK_MSG(f >= 0, "round-trip log does not open");
    if (f < 0)
        return;
    check_meta(f);
    check_train_and_norms(f);
    check_routing(f);
    check_eval_and_spikes(f);
    H5Fclose(f);

    if (TL_TEST_H5DUMP[0]) {
        char command[512];
        snprintf(command, sizeof command, "'%s' -H '%s' >/dev/null 2>&1", TL_TEST_H5DUMP, path);
        CHECK_MSG(system(command) == 0, "h5dump -H failed on %s", path);
    } else {
        printf("note: h5dump not found; h5dump check skipped\n");
    }
}

/* ---- growth over many flushes and chunks ---- */

static void test_growth(void)
{
    char path[128];
    path_in_dir(path, sizeof path, "growth.h5");
    tl_log_meta meta = test_meta(997);
    tl_log *log = tl_log_create(path, &meta);
    CHECK(log != NULL);
    if (!log)
        return;
    /* 10000 steps at 997 per flush: 10 flushes plus close, and more than two
     * 4096-row chunks of int64 steps. */
    enum { N = 10000 };
    for (int s = 0; s < N; s++) {
        tl_log_train_record rec = {.step = s, .loss = 1.0 / (s + 1)};
        CHECK(tl_log_train(log, &rec) == TL_OK);
        if (s == 997 * 3)
            CHECK(tl_log_train_rows_flushed(log) == 997 * 3);
    }
    CHECK(tl_log_train_rows_flushed(log) == 997 * 10);
    /* tl_log_flush with nothing new buffered still succeeds. */
    CHECK(tl_log_flush(log) == TL_OK);
    CHECK(tl_log_flush(log) == TL_OK);
    CHECK(tl_log_close(log) == TL_OK);

    hid_t f = open_read(path);
    CHECK(f >= 0);
    if (f < 0)
        return;
    CHECK(rows_of(f, "/train/step") == N);
    int64_t *steps = malloc(N * sizeof *steps);
    double *loss = malloc(N * sizeof *loss);
    CHECK(read_all(f, "/train/step", H5T_NATIVE_INT64, steps));
    CHECK(read_all(f, "/train/loss", H5T_NATIVE_DOUBLE, loss));
    int bad = 0;
    for (int s = 0; s < N; s++)
        bad += steps[s] != s || loss[s] != 1.0 / (s + 1);
    CHECK_MSG(bad == 0, "%d of %d rows differ after growth", bad, N);
    free(steps);
    free(loss);
    H5Fclose(f);
}

/* A flush that would pass the file size limit is rejected before it writes,
 * so the file keeps the rows of the earlier flush and stays readable. */
static void test_no_room(void)
{
    char path[128];
    path_in_dir(path, sizeof path, "no_room.h5");
    tl_log_meta meta = test_meta(10000);
    tl_log *log = tl_log_create(path, &meta);
    CHECK(log != NULL);
    if (!log)
        return;
    for (int s = 0; s < 100; s++) {
        tl_log_train_record rec = {.step = s, .loss = 1.0};
        CHECK(tl_log_train(log, &rec) == TL_OK);
    }
    CHECK(tl_log_flush(log) == TL_OK);

    struct stat st;
    CHECK(stat(path, &st) == 0);
    struct rlimit saved, lim;
    CHECK(getrlimit(RLIMIT_FSIZE, &saved) == 0);
    lim = saved;
    lim.rlim_cur = (rlim_t)st.st_size; /* the next write that grows the file fails */
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    /* More rows than one chunk takes, so the flush must grow the file. */
    for (int s = 100; s < 5100; s++) {
        tl_log_train_record rec = {.step = s, .loss = 1.0};
        CHECK(tl_log_train(log, &rec) == TL_OK);
    }
    CHECK(tl_log_flush(log) == TL_EIO);
    const char *msg = tl_errmsg();
    CHECK_MSG(strstr(msg, "below the process's file size limit") != NULL, "message: %s", msg);
    CHECK_MSG(strstr(msg, "MiB of room is left") != NULL, "message: %s", msg);
    CHECK_MSG(strstr(msg, "the log keeps the 100 training steps flushed before") != NULL,
              "message: %s", msg);
    tl_log_close(log);
    CHECK(setrlimit(RLIMIT_FSIZE, &saved) == 0);
    signal(SIGXFSZ, old_handler);

    hid_t f = open_read(path);
    CHECK(f >= 0);
    if (f < 0)
        return;
    CHECK(rows_of(f, "/train/step") == 100);
    H5Fclose(f);
}

/* An HDF5 error description that spans lines (a failed write has one) comes
 * out on one line, as the message of every HDF5 failure does. */
static void test_error_detail_one_line(void)
{
    H5Epush2(H5E_DEFAULT, __FILE__, "test_func", __LINE__, H5E_ERR_CLS, H5E_IO, H5E_WRITEERROR,
             "file write failed: time = now\n, errno = 27");
    char text[TL_HDF5_DETAIL_SIZE];
    const char *detail = tl_hdf5_error_detail(text);
    CHECK_MSG(strcmp(detail, "file write failed: time = now , errno = 27 (in test_func)") == 0,
              "detail: %s", detail);
    CHECK(strcmp(tl_hdf5_error_detail(text), "no HDF5 error detail") == 0);
}

/* ---- grad norms computed from a parameter store ---- */

static void test_grad_norms_params(void)
{
    char path[128];
    path_in_dir(path, sizeof path, "params.h5");
    tl_params *p = tl_params_new();
    tl_params_add(p, "a", 2, (int64_t[]){2, 2}, TL_INIT_ZEROS, 0, 0);
    tl_params_add(p, "b", 1, (int64_t[]){3}, TL_INIT_ZEROS, 0, 0);
    tl_rng rng;
    tl_rng_seed(&rng, 1);
    CHECK(tl_params_alloc(p, &rng) == TL_OK);
    float *g = tl_params_grads(p);
    /* a's gradient (3, 4, 0, 0) has norm 5; b's (1, 2, 2) norm 3. */
    float values[7] = {3, 4, 0, 0, 1, 2, 2};
    memcpy(g, values, sizeof values);

    tl_log_meta meta = test_meta(0);
    tl_log *log = tl_log_create(path, &meta);
    CHECK(log != NULL);
    if (!log) {
        tl_params_free(p);
        return;
    }
    CHECK(tl_log_grad_norms_params(log, 1, p) == TL_OK);
    CHECK(tl_log_grad_norms_params(log, 2, p) == TL_OK);
    CHECK(tl_log_close(log) == TL_OK);
    tl_params_free(p);

    hid_t f = open_read(path);
    CHECK(f >= 0);
    if (f < 0)
        return;
    double gn[4];
    CHECK(read_all(f, "/grad_norms/values", H5T_NATIVE_DOUBLE, gn));
    CHECK(gn[0] == 5.0);
    CHECK(gn[1] == 3.0);
    CHECK(gn[2] == 5.0);
    char *names[2] = {NULL};
    CHECK(read_strings(f, "/grad_norms/names", names));
    CHECK(names[0] && strcmp(names[0], "a") == 0 && names[1] && strcmp(names[1], "b") == 0);
    H5free_memory(names[0]);
    H5free_memory(names[1]);
    int flush_every = 0;
    CHECK(attr_read(f, "/meta", "flush_every", H5T_NATIVE_INT, &flush_every));
    CHECK(flush_every == TL_LOG_FLUSH_EVERY_DEFAULT);
    H5Fclose(f);
}

/* ---- errors ---- */

/* Runs tl_log_create with stderr redirected to a file and returns how many
 * bytes were printed, to show HDF5's automatic error printing is off. */
static long create_quietly(const char *path, tl_log **out)
{
    char capture[128];
    path_in_dir(capture, sizeof capture, "stderr.txt");
    fflush(stderr);
    int saved = dup(2);
    int fd = open(capture, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(fd, 2);
    close(fd);
    tl_log_meta meta = test_meta(0);
    *out = tl_log_create(path, &meta);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    struct stat st;
    return stat(capture, &st) == 0 ? (long)st.st_size : -1;
}

static void test_errors(void)
{
    char path[160];
    /* A missing folder is named before HDF5 runs. */
    path_in_dir(path, sizeof path, "no_such_dir/run.h5");
    tl_log *log = NULL;
    long printed = create_quietly(path, &log);
    CHECK(log == NULL);
    CHECK(tl_lasterr() == TL_ENOTFOUND);
    char folder[160];
    path_in_dir(folder, sizeof folder, "no_such_dir");
    char expected[512];
    snprintf(expected, sizeof expected, "cannot create run log '%s': folder '%s' does not exist; "
             "create it or choose another path", path, folder);
    CHECK_MSG(strstr(tl_errmsg(), expected) != NULL, "message lacks \"%s\": %s", expected,
              tl_errmsg());
    CHECK_MSG(printed == 0, "printed %ld bytes to stderr", printed);

    /* A file name longer than the file system allows fails before HDF5
     * opens anything, with the system's reason and nothing printed. */
    char long_name[300], long_path[512];
    memset(long_name, 'a', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    path_in_dir(long_path, sizeof long_path, long_name);
    printed = create_quietly(long_path, &log);
    CHECK(log == NULL);
    CHECK(tl_lasterr() == TL_EIO);
    CHECK_MSG(strstr(tl_errmsg(), long_path) != NULL, "message lacks the path: %s", tl_errmsg());
    CHECK_MSG(strstr(tl_errmsg(), strerror(ENAMETOOLONG)) != NULL, "message lacks the reason: %s",
              tl_errmsg());
    CHECK_MSG(strstr(tl_errmsg(), "choose another path") != NULL, "message lacks the fix: %s",
              tl_errmsg());
    CHECK_MSG(printed == 0, "printed %ld bytes to stderr", printed);

    /* A directory in place of the file. */
    char sub[160];
    path_in_dir(sub, sizeof sub, "a_directory");
    CHECK(mkdir(sub, 0700) == 0);
    tl_log_meta meta = test_meta(0);
    /* A folder is named as one with or without overwrite, which could not
     * replace it. */
    for (int overwrite = 0; overwrite <= 1; overwrite++) {
        meta.overwrite = overwrite;
        CHECK(tl_log_create(sub, &meta) == NULL);
        CHECK_MSG(strstr(tl_errmsg(), sub) != NULL, "%s", tl_errmsg());
        CHECK_MSG(strstr(tl_errmsg(), "is a folder; give a file path such as") != NULL, "%s",
                  tl_errmsg());
        CHECK_MSG(strstr(tl_errmsg(), "log_overwrite") == NULL, "%s", tl_errmsg());
    }
    meta.overwrite = true;
    rmdir(sub);

    /* An existing log is not replaced unless overwrite is set. */
    path_in_dir(path, sizeof path, "round_trip.h5");
    meta.overwrite = false;
    CHECK(tl_log_create(path, &meta) == NULL);
    CHECK(strstr(tl_errmsg(), "already exists") != NULL && strstr(tl_errmsg(), path) != NULL);

    /* overwrite replaces only a thinklab run log, never another file. */
    path_in_dir(path, sizeof path, "notes.txt");
    FILE *notes = fopen(path, "w");
    CHECK(notes != NULL);
    if (notes) {
        fputs("my notes\n", notes);
        fclose(notes);
    }
    meta.overwrite = true;
    CHECK(tl_log_create(path, &meta) == NULL);
    CHECK_MSG(strstr(tl_errmsg(), "not a thinklab run log") && strstr(tl_errmsg(), path),
              "%s", tl_errmsg());
    char kept[32] = {0};
    notes = fopen(path, "r");
    CHECK(notes && fgets(kept, sizeof kept, notes) && strcmp(kept, "my notes\n") == 0);
    if (notes)
        fclose(notes);
    remove(path);

    meta.config_json = NULL;
    path_in_dir(path, sizeof path, "no_config.h5");
    CHECK(tl_log_create(path, &meta) == NULL && tl_lasterr() == TL_EINVAL);
    CHECK(access(path, F_OK) != 0);

    meta = test_meta(0);
    path_in_dir(path, sizeof path, "misuse.h5");
    log = tl_log_create(path, &meta);
    CHECK(log != NULL);
    if (!log)
        return;
    tl_log_train_record rec = {.step = 5};
    CHECK(tl_log_train(log, &rec) == TL_OK);
    CHECK(tl_log_train(log, &rec) == TL_EINVAL);
    CHECK(strstr(tl_errmsg(), "steps must increase") != NULL);
    CHECK(tl_log_grad_norms(log, 5, (double[]){1.0}) == TL_ESTATE);
    CHECK(tl_log_token_grads(log, 5, (float[]){1}, (int32_t[]){1}, (float[]){1}) == TL_ESTATE);
    tl_log_routing_spec bad = {.name = "a/b", .kind = "itt", .n_steps = 1, .n_bins = 1,
                               .score_min = 0, .score_max = 1};
    CHECK(tl_log_routing_register(log, &bad) == -1 && strstr(tl_errmsg(), "a/b") != NULL);
    bad.name = "ok";
    bad.score_max = 0;
    CHECK(tl_log_routing_register(log, &bad) == -1);
    bad.score_max = 1;
    bad.n_mask_tokens = 3;
    int id = tl_log_routing_register(log, &bad);
    CHECK(id == 0);
    CHECK(tl_log_routing_register(log, &bad) == -1 &&
          strstr(tl_errmsg(), "already registered") != NULL);
    float scores[2] = {0.5f, 0.5f};
    uint8_t sel[2] = {1, 0};
    tl_log_routing_record r = {.step = 5, .routed_step = 0, .n_scores = 2, .scores = scores,
                               .selected = sel, .topk_agreement = NAN};
    CHECK(tl_log_routing(log, id, &r) == TL_EINVAL); /* fewer scores than mask tokens */
    r.routed_step = 1;
    CHECK(tl_log_routing(log, id, &r) == TL_EINVAL);
    CHECK(tl_log_routing(log, 7, &r) == TL_EINVAL);
    CHECK(tl_log_spike(log, &(tl_log_spike_record){.loss = 1}) == TL_ESTATE);
    CHECK(tl_log_spikes_init(log, 1, 0.8, 0.2) == TL_EINVAL);
    CHECK(tl_log_close(log) == TL_OK);
    CHECK(tl_log_close(NULL) == TL_OK);
}

/* ---- matrix norms ---- */

static void check_norms(const char *label, const float *a, int64_t rows, int64_t cols,
                        double nuclear, double frobenius, double max_sv, double rtol)
{
    double n = -1, f = -1, m = -1;
    tl_status st = tl_matrix_norms(a, rows, cols, &n, &f, &m);
    CHECK_MSG(st == TL_OK, "%s: %s", label, tl_errmsg());
    CHECK_MSG(fabs(n - nuclear) <= rtol * nuclear, "%s: nuclear %.9g, expected %.9g", label, n,
              nuclear);
    CHECK_MSG(fabs(f - frobenius) <= rtol * frobenius, "%s: Frobenius %.9g, expected %.9g", label,
              f, frobenius);
    CHECK_MSG(fabs(m - max_sv) <= rtol * max_sv, "%s: max singular value %.9g, expected %.9g",
              label, m, max_sv);
}

/* Compares with numpy.linalg.svd in float64 on a random 37 x 23 matrix. */
static void check_norms_numpy(void)
{
    enum { R = 37, C = 23 };
    float a[R * C], at[C * R];
    tl_rng rng;
    tl_rng_seed(&rng, 3);
    gc_randn(&rng, a, R * C, 1.0f);
    for (int i = 0; i < R; i++)
        for (int j = 0; j < C; j++)
            at[j * R + i] = a[i * C + j];

    double n1, f1, m1, n2, f2, m2;
    CHECK(tl_matrix_norms(a, R, C, &n1, &f1, &m1) == TL_OK);
    CHECK(tl_matrix_norms(at, C, R, &n2, &f2, &m2) == TL_OK);
    /* a and a^T have the same singular values; float32 SVD error is about
     * 1e-6 relative, so 1e-5 leaves room. */
    CHECK(fabs(n1 - n2) <= 1e-5 * n1 && fabs(m1 - m2) <= 1e-5 * m1 && fabs(f1 - f2) <= 1e-12 * f1);

    char path[128];
    path_in_dir(path, sizeof path, "matrix.f32");
    FILE *out = fopen(path, "wb");
    CHECK(out != NULL);
    if (!out)
        return;
    fwrite(a, sizeof a[0], R * C, out);
    fclose(out);
    char command[1024];
    snprintf(command, sizeof command,
             "'%s' -c \"import numpy as np, sys\n"
             "a = np.fromfile(sys.argv[1], dtype=np.float32).reshape(%d, %d).astype(np.float64)\n"
             "s = np.linalg.svd(a, compute_uv=False)\n"
             "print('%%.0f %%.0f %%.0f' %% (s.sum() * 1e9, np.sqrt((a * a).sum()) * 1e9, s[0] * 1e9))\" "
             "'%s' 2>/dev/null",
             TL_TEST_PYTHON, R, C, path);
    FILE *p = popen(command, "r");
    double ref[3];
    bool got = p && fscanf(p, "%lf %lf %lf", &ref[0], &ref[1], &ref[2]) == 3;
    if (p)
        pclose(p);
    if (!got) {
        printf("note: numpy does not run under '%s'; numpy comparison skipped\n", TL_TEST_PYTHON);
        return;
    }
    /* float32 singular values against float64 ones: 1e-5 relative. */
    check_norms("random 37x23 vs numpy", a, R, C, ref[0] * 1e-9, ref[1] * 1e-9, ref[2] * 1e-9,
                1e-5);
}

static void test_matrix_norms(void)
{
    /* Singular values of a diagonal matrix are the absolute diagonal entries:
     * 3, 2, 1, 0.5. Exact up to float32 rounding of the output: 1e-6. */
    float d[4 * 4] = {0};
    d[0] = 3.0f;
    d[5] = -2.0f;
    d[10] = 1.0f;
    d[15] = 0.5f;
    check_norms("diagonal 4x4", d, 4, 4, 6.5, sqrt(14.25), 3.0, 1e-6);

    /* A 3x5 matrix with diagonal 2, -4, 1 and zeros elsewhere. */
    float w[3 * 5] = {0};
    w[0] = 2.0f;
    w[6] = -4.0f;
    w[12] = 1.0f;
    check_norms("diagonal 3x5", w, 3, 5, 7.0, sqrt(21.0), 4.0, 1e-6);
    check_norms("diagonal 5x3 (transposed)", (float[]){2, 0, 0, 0, -4, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0},
                5, 3, 7.0, sqrt(21.0), 4.0, 1e-6);

    /* u v^T with |u| = |v| = 3 has one singular value 9, so all three norms
     * are 9; float32 rounding of the 12 products allows 1e-6 relative. */
    const float u[3] = {1, 2, 2}, v[4] = {2, 0, -1, 2};
    float r1[3 * 4];
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 4; j++)
            r1[i * 4 + j] = u[i] * v[j];
    check_norms("rank one 3x4", r1, 3, 4, 9.0, 9.0, 9.0, 1e-6);

    check_norms_numpy();

    double n = -1, f = -1, m = -1;
    CHECK(tl_matrix_norms(NULL, 0, 5, &n, &f, &m) == TL_OK && n == 0 && f == 0 && m == 0);
    float bad[4] = {1, NAN, 0, 1};
    CHECK(tl_matrix_norms(bad, 2, 2, &n, &f, &m) == TL_ENUMERIC);
    CHECK(strstr(tl_errmsg(), "entry 1") != NULL);
    CHECK(tl_matrix_norms(bad, -1, 2, &n, &f, &m) == TL_EINVAL);
    CHECK(tl_matrix_norms(bad, (int64_t)1 << 32, 2, &n, &f, &m) == TL_EINVAL);
}

/* Writes one routing record of layer id at step with every score equal to
 * score, all tokens selected. */
static void log_routing_step(tl_log *log, int id, int64_t step, float score)
{
    float scores[2] = {score, score};
    uint8_t selected[2] = {1, 1};
    tl_log_routing_record rec = {.step = step, .routed_step = 0, .n_scores = 2,
                                 .scores = scores, .selected = selected, .topk_agreement = NAN};
    CHECK_MSG(tl_log_routing(log, id, &rec) == TL_OK, "%s", tl_errmsg());
}

/* tl_log_append on a log whose last flush was cut short: /train/loss has
 * fewer rows than /train/step, as after a crash during a flush. The kept
 * rows stop at the shortest dataset, the run id and the missing steps are
 * checked, and a continued routing layer keeps the bin edges in the file. */
static void test_append_after_partial_flush(void)
{
    enum { STEPS = 10, CUT = 7 };
    char path[160];
    path_in_dir(path, sizeof path, "append.h5");
    tl_log_meta meta = test_meta(100);
    meta.run_id = "run-a";
    tl_log *log = tl_log_create(path, &meta);
    CHECK_MSG(log != NULL, "%s", tl_errmsg());
    if (!log)
        return;
    tl_log_routing_spec spec = {.name = "layers.1", .kind = "mod", .n_steps = 1,
                                .n_mask_tokens = 2, .n_bins = 2, .score_min = -1,
                                .score_max = 1};
    CHECK(tl_log_routing_register(log, &spec) == 0);
    for (int s = 0; s < STEPS; s++) {
        tl_log_train_record rec = {.step = s, .loss = 3.0 - 0.1 * s};
        CHECK(tl_log_train(log, &rec) == TL_OK);
        log_routing_step(log, 0, s, -0.5f);
    }
    tl_log_eval_record eval = {.step = 5, .split = "val", .loss = 2.5, .routing_mode = "topk"};
    CHECK(tl_log_eval(log, &eval) == TL_OK);
    eval.step = 10;
    CHECK(tl_log_eval(log, &eval) == TL_OK);
    CHECK(tl_log_close(log) == TL_OK);

    char start_before[32] = "", start_after[32] = "";
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    CHECK(f >= 0);
    hid_t d = H5Dopen2(f, "train/loss", H5P_DEFAULT);
    hsize_t cut[1] = {CUT};
    CHECK(d >= 0);
    CHECK(H5Dset_extent(d, cut) >= 0);
    H5Dclose(d);
    char *text = NULL;
    hid_t str = str_type();
    CHECK(attr_read(f, "meta", "start_time", str, &text));
    snprintf(start_before, sizeof start_before, "%s", text ? text : "");
    H5free_memory(text);
    H5Fclose(f);

    char dropped[256] = "unset";
    meta.run_id = "run-b";
    CHECK(tl_log_append(path, &meta, CUT, dropped, sizeof dropped) == NULL);
    CHECK_MSG(strstr(tl_errmsg(), "belongs to run run-a, not to run run-b") != NULL, "%s",
              tl_errmsg());
    meta.run_id = NULL;
    CHECK(tl_log_append(path, &meta, CUT, dropped, sizeof dropped) == NULL);
    CHECK_MSG(strstr(tl_errmsg(), "meta->run_id is required") != NULL, "%s", tl_errmsg());
    meta.run_id = "run-a";
    CHECK(tl_log_append(path, &meta, STEPS - 1, dropped, sizeof dropped) == NULL);
    CHECK_MSG(strstr(tl_errmsg(), "training rows up to step 6 only") != NULL, "%s",
              tl_errmsg());

    meta.threads = 3;
    log = tl_log_append(path, &meta, CUT, dropped, sizeof dropped);
    CHECK_MSG(log != NULL, "%s", tl_errmsg());
    if (!log) {
        H5Tclose(str);
        return;
    }
    CHECK_MSG(strcmp(dropped, "train 3, eval 1, routing/layers.1 3") == 0, "dropped: %s",
              dropped);

    /* Another shape is rejected. The same shape continues the group, whose
     * edges [-1, 0, 1] bin a score of 0.5 into bin 1, where the spec's
     * range [0, 4] would put it into bin 0. */
    tl_log_routing_spec wider = spec;
    wider.n_bins = 3;
    CHECK(tl_log_routing_register(log, &wider) == -1);
    CHECK_MSG(strstr(tl_errmsg(), "has kind mod, 1 routed steps, masks of 2 tokens and 2 bins")
              != NULL, "%s", tl_errmsg());
    spec.score_min = 0;
    spec.score_max = 4;
    CHECK(tl_log_routing_register(log, &spec) == 0);
    tl_log_train_record old = {.step = CUT - 1};
    CHECK(tl_log_train(log, &old) == TL_EINVAL);
    tl_log_train_record next = {.step = CUT, .loss = 1.0};
    CHECK(tl_log_train(log, &next) == TL_OK);
    log_routing_step(log, 0, CUT, 0.5f);
    CHECK(tl_log_close(log) == TL_OK);

    f = open_read(path);
    CHECK(f >= 0);
    const char *train[] = {"train/step", "train/loss", "train/lr", "train/grad_norm",
                           "train/tokens_per_s", "train/flops"};
    for (size_t i = 0; i < sizeof train / sizeof train[0]; i++)
        CHECK_MSG(rows_of(f, train[i]) == CUT + 1, "%s: %lld rows", train[i],
                  (long long)rows_of(f, train[i]));
    int64_t steps[CUT + 1];
    CHECK(read_all(f, "train/step", H5T_NATIVE_INT64, steps));
    for (int s = 0; s <= CUT; s++)
        CHECK(steps[s] == s);
    CHECK(rows_of(f, "eval/step") == 1);
    CHECK(rows_of(f, "routing/layers.1/step") == CUT + 1);
    int64_t histogram[(CUT + 1) * 2];
    CHECK(read_all(f, "routing/layers.1/histogram", H5T_NATIVE_INT64, histogram));
    CHECK_MSG(histogram[2 * CUT] == 0 && histogram[2 * CUT + 1] == 2, "bins %lld %lld",
              (long long)histogram[2 * CUT], (long long)histogram[2 * CUT + 1]);
    int64_t resumed[1] = {-1}, threads = 0;
    CHECK(attr_read(f, "meta", "resumed_at_steps", H5T_NATIVE_INT64, resumed));
    CHECK(resumed[0] == CUT);
    CHECK(attr_read(f, "meta", "threads", H5T_NATIVE_INT64, &threads));
    CHECK(threads == 3);
    text = NULL;
    CHECK(attr_read(f, "meta", "start_time", str, &text));
    snprintf(start_after, sizeof start_after, "%s", text ? text : "");
    H5free_memory(text);
    CHECK_MSG(strcmp(start_before, start_after) == 0, "start_time %s became %s", start_before,
              start_after);
    text = NULL;
    CHECK(attr_read(f, "meta", "run_id", str, &text));
    CHECK(text != NULL);
    CHECK(text && strcmp(text, "run-a") == 0);
    H5free_memory(text);
    H5Tclose(str);
    if (f >= 0)
        H5Fclose(f);
}

/* A second writer of a log that a writer has open, a resume or an
 * overwriting run, is rejected, and the first writer goes on unharmed. The
 * lock is a Linux open-file-description lock, so one process can test it. */
static void test_second_writer(void)
{
#ifdef __linux__
    char path[160];
    path_in_dir(path, sizeof path, "locked.h5");
    tl_log_meta meta = test_meta(100);
    meta.run_id = "run-a";
    tl_log *log = tl_log_create(path, &meta);
    CHECK_MSG(log != NULL, "%s", tl_errmsg());
    if (!log)
        return;
    tl_log_train_record rec = {.step = 0, .loss = 2.0};
    CHECK(tl_log_train(log, &rec) == TL_OK);
    CHECK(tl_log_flush(log) == TL_OK);

    CHECK(tl_log_append(path, &meta, 1, NULL, 0) == NULL);
    CHECK(tl_lasterr() == TL_ESTATE);
    CHECK_MSG(strstr(tl_errmsg(), "is being written by another open log") != NULL, "%s",
              tl_errmsg());
    meta.overwrite = true;
    CHECK(tl_log_create(path, &meta) == NULL);
    CHECK(tl_lasterr() == TL_ESTATE);
    CHECK_MSG(strstr(tl_errmsg(), "is being written by another open log") != NULL, "%s",
              tl_errmsg());

    rec.step = 1;
    CHECK(tl_log_train(log, &rec) == TL_OK);
    CHECK(tl_log_close(log) == TL_OK);
    hid_t f = open_read(path);
    CHECK(f >= 0);
    CHECK_MSG(f >= 0 && rows_of(f, "train/step") == 2, "%lld training rows, want 2",
              f >= 0 ? (long long)rows_of(f, "train/step") : -1LL);
    if (f >= 0)
        H5Fclose(f);

    /* Closing the log releases the lock. */
    meta.overwrite = false;
    log = tl_log_append(path, &meta, 2, NULL, 0);
    CHECK_MSG(log != NULL, "the append after close failed: %s", tl_errmsg());
    CHECK(tl_log_close(log) == TL_OK);
#endif
}

static void remove_dir(void)
{
    const char *files[] = {"killed.h5", "round_trip.h5", "growth.h5", "params.h5",
                           "misuse.h5", "stderr.txt", "matrix.f32", "append.h5", "locked.h5",
                           "no_room.h5"};
    char path[160];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        path_in_dir(path, sizeof path, files[i]);
        unlink(path);
    }
    rmdir(dir);
}

int main(void)
{
    snprintf(dir, sizeof dir, "/tmp/tl_test_log_XXXXXX");
    if (!mkdtemp(dir)) {
        fprintf(stderr, "could not create a temporary directory: %s\n", strerror(errno));
        return 1;
    }
    /* The SIGKILL test forks first, before this process opens any HDF5 file. */
    test_sigkill();
    test_round_trip();
    test_growth();
    test_no_room();
    test_error_detail_one_line();
    test_grad_norms_params();
    test_errors();
    test_append_after_partial_flush();
    test_second_writer();
    test_matrix_norms();
    if (gc_failures == 0)
        remove_dir();
    else
        printf("files kept in %s\n", dir);
    return gc_finish("run log");
}
