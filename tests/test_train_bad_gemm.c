/* A bad THINKLAB_GEMM value stops the trainer before it creates its run log:
 * an earlier run's log at the same path keeps its bytes, even with
 * log_overwrite set. The setting is read once per process, so this test sets
 * it before any product runs. */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include <stdlib.h>

#include "thinklab/log.h"
#include "train_util.h"

/* Writes a run log at path with a few training rows, as an earlier run
 * leaves it. */
static void write_earlier_log(const char *path)
{
    tl_log_meta meta = {.config_json = "{}", .seed = 1, .threads = 1, .flush_every = 2,
                        .overwrite = true};
    tl_log *log = tl_log_create(path, &meta);
    CHECK_MSG(log != NULL, "cannot create '%s': %s", path, tl_errmsg());
    if (!log)
        return;
    for (int s = 0; s < 3; s++) {
        tl_log_train_record rec = {.step = s, .loss = 4.0 - s, .lr = 1e-3, .grad_norm = 1.0,
                                   .tokens_per_s = 100.0, .flops = 1e6};
        CHECK(tl_log_train(log, &rec) == TL_OK);
    }
    CHECK(tl_log_close(log) == TL_OK);
}

int main(void)
{
    setenv("THINKLAB_GEMM", "fast", 1);
    tu_data D;
    tu_data_load(&D);
    char log[512], log_keep[512];
    tu_path(log, sizeof log, "bad_gemm_run.h5");
    tu_path(log_keep, sizeof log_keep, "bad_gemm_run_keep.h5");
    write_earlier_log(log);
    tu_copy_file(log, log_keep);

    tl_model *m = tu_model(tl_tokenizer_vocab_size(D.tok), 2, false, NULL, 3);
    tl_train_config c = tu_config(4);
    c.log_path = log;
    c.log_overwrite = true;
    tl_trainer *tr = tl_trainer_new(m, &D.data, &c);
    CHECK(tr == NULL);
    const char *msg = tl_errmsg();
    printf("message: %s\n", msg);
    CHECK_MSG(strstr(msg, "THINKLAB_GEMM='fast' is invalid") != NULL, "%s", msg);
    CHECK_MSG(strstr(msg, "'openblas'") != NULL, "%s", msg);
    CHECK_MSG(tu_files_equal(log, log_keep), "the run log '%s' changed", log);

    tl_trainer_free(tr);
    tl_model_free(m);
    tu_data_free(&D);
    remove(log);
    remove(log_keep);
    return gc_finish("train with a bad THINKLAB_GEMM");
}
