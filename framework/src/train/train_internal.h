/* State of a trainer and helpers shared by the files of src/train. */
#ifndef THINKLAB_TRAIN_INTERNAL_H
#define THINKLAB_TRAIN_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "thinklab/data.h"
#include "thinklab/thinklab.h"
#include "thinklab/log.h"
#include "thinklab/model.h"
#include "thinklab/shards.h"
#include "thinklab/train.h"

/* ---- JSON writer ---------------------------------------------------------- */

/* Writes into buf[0..size) and counts in len the bytes the full text needs,
 * so a caller can size the buffer from a first pass. */
typedef struct tl_json {
    char *buf;
    size_t size, len;
    bool first; /* no member written yet in the current object */
} tl_json;

void tl_json_init(tl_json *j, char *buf, size_t size);
/* Opens an object as the value of key, or as an array element or the top
 * value when key is NULL. */
void tl_json_begin(tl_json *j, const char *key);
void tl_json_end(tl_json *j);
void tl_json_begin_array(tl_json *j, const char *key);
void tl_json_end_array(tl_json *j);
void tl_json_string(tl_json *j, const char *s);
void tl_json_key_string(tl_json *j, const char *key, const char *s);
void tl_json_key_int(tl_json *j, const char *key, int64_t v);
void tl_json_key_uint(tl_json *j, const char *key, uint64_t v);
void tl_json_key_double(tl_json *j, const char *key, double v);
void tl_json_key_float(tl_json *j, const char *key, float v);
void tl_json_key_bool(tl_json *j, const char *key, bool v);
void tl_json_key_raw(tl_json *j, const char *key, const char *json);

void tl_train_config_json_into(tl_json *j, const char *key, const tl_train_config *c);

/* ---- trainer -------------------------------------------------------------- */

struct tl_trainer {
    tl_train_config cfg; /* resolved; its strings point at the copies below */
    char *log_path, *checkpoint_path, *resume_path, *experiment_json;
    tl_model *model;
    tl_params *params;
    tl_train_data data;
    tl_ctx *ctx;
    tl_log *log;
    tl_rng rng;          /* batch sampling */
    tl_sampler sampler;
    int threads;         /* in force */
    /* Data-parallel shards of the batch, NULL when a step runs on ctx alone
     * (one thread, shards off, or no shard count that divides the batch). */
    tl_shards *shards;
    struct tl_train_shard_loss {
        double ce, aux; /* the shard's mean cross-entropy and weighted auxiliary loss */
        bool done;      /* its forward finished, so ce and aux are set */
    } *shard_loss;       /* one per shard */

    /* Identifier of the training run, written to the log's /meta and to
     * checkpoints: 32 hex digits, new for a fresh trainer, the checkpoint's
     * after a resume or a load into a trainer without a log. */
    char run_id[TL_LOG_RUN_ID_SIZE];
    /* run_id of the checkpoint last loaded, "" when it had none or none was
     * loaded. */
    char checkpoint_run_id[TL_LOG_RUN_ID_SIZE];
    bool append_log;     /* log_path contains this run's log, which the resumed run continues */
    /* Loss and gradient norm that the run of the checkpoint last loaded
     * logged for its last step. checkpoint_has_last_step is false when the
     * file predates them or is at step 0. */
    bool checkpoint_has_last_step;
    double checkpoint_last_loss, checkpoint_last_grad_norm;
    /* stats.loss and stats.grad_norm are those of step `step` - 1: set by a
     * step, and by a load of a checkpoint that records them. */
    bool stats_has_last_step;

    int64_t step;        /* optimizer steps completed */
    /* The newest checkpoint file of this run, the resumed one or a save to
     * checkpoint_path, and its step; NULL and -1 before there is one. */
    const char *last_checkpoint;
    int64_t last_checkpoint_step;
    tl_train_stats stats;
    char *config_json;   /* trainer and model configuration, written to logs and checkpoints */

    /* Per-step buffers, allocated once. */
    int32_t *inputs, *targets; /* (B, T) */
    int n_layers;
    int64_t n_token_log;       /* tokens whose per-layer gradient norms are logged */
    float *token_norms;        /* (n_layers + 1, n_token_log) */
    float *token_losses;       /* (n_token_log) */
    int32_t *token_ids;        /* (n_token_log) */
    double *param_norms;       /* one per parameter */
    int *routing_ids;          /* log id per layer, -1 for layers without routing */
    float *routing_scores;     /* (B*T) NaN, logged for a layer that reports no scores */

    /* Progress and timing. */
    double run_start;         /* monotonic seconds at the start of tl_trainer_run */
    /* Wall seconds of training before the current tl_trainer_run: those of
     * earlier calls, and after a load those the checkpoint recorded. */
    double elapsed_base;
    bool running;             /* inside tl_trainer_run */
    int64_t run_start_step;   /* step at the start of tl_trainer_run (above 0 on resume) */
    double window_step_s;     /* summed step times (dt of tl_trainer_step) of the window */
    int64_t window_steps;     /* steps run within the current window */
    bool progress_in_place;   /* stderr is a terminal: rewrite one line with \r */
    bool progress_dirty;      /* an in-place line is on screen without its newline */
};

/* Monotonic clock in seconds. */
double tl_train_now(void);
/* Wall seconds of training so far, across resumes (see elapsed_base). */
double tl_train_elapsed(const tl_trainer *tr);

/* Checks that a checkpoint can be saved at path: its folder exists, path is
 * missing or a thinklab checkpoint, and path.tmp is missing or a file. */
tl_status tl_checkpoint_check_target(const char *path);

/* Compares the model part of a checkpoint's config_json with the trainer's
 * and rejects the first setting that differs, naming it and both values. */
tl_status tl_checkpoint_check_model(const char *path, const char *file_json,
                                    const char *trainer_json);
/* Prints one line on stderr naming the training settings that differ from
 * the checkpoint's, which a resume may change; nothing when none differ. */
void tl_checkpoint_print_training_changes(const char *path, const char *file_json,
                                          const char *trainer_json);

/* Fills tr->config_json with the trainer and model configuration. */
tl_status tl_train_config_text(tl_trainer *tr);
/* Creates the log and writes its metadata. */
tl_status tl_train_log_open(tl_trainer *tr);
/* Logs the per-parameter and per-token gradients of the step just run
 * (called after backward, before clipping). */
tl_status tl_train_log_gradients(tl_trainer *tr, const tl_model_output *out);
/* Logs the routing statistics of every routed layer. */
tl_status tl_train_log_routing(tl_trainer *tr);

/* Bytes the target tokens decode to; 0 without a tokenizer. */
int64_t tl_train_target_bytes(const tl_tokenizer *tok, const int32_t *targets, int64_t n);

#endif
