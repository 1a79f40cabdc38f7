/* Training loop, evaluation, checkpoints, text generation and the
 * gradient-spike analysis.
 *
 * One training step resets the context's arena and samples a batch of token
 * windows (B, T+1) from the training split. It then runs forward, the
 * cross-entropy plus the model's auxiliary routing losses, backward, the
 * optional gradient-reduction hook, clipping, and an optimizer step at the
 * schedule's learning rate. After the first steps the loop allocates nothing
 * on the heap (OpenBLAS's own sgemm buffers aside): activations live in the
 * arena and tl_trainer_new() allocates every per-step buffer.
 *
 * A checkpoint is an HDF5 file with everything needed to continue bit for bit
 * at the same thread count. It stores the weights and the optimizer moments m
 * and v, which is the parameter block without its gradients (zero between
 * steps). It also stores the step (the schedule position), the RNG state, the
 * data position, the configuration as JSON and the architecture fingerprint
 * (parameter names and shapes). */
#ifndef THINKLAB_TRAIN_H
#define THINKLAB_TRAIN_H

#include <stdbool.h>
#include <stdint.h>

#include "thinklab/data.h"
#include "thinklab/log.h"
#include "thinklab/optim.h"
#include "thinklab/params.h"
#include "thinklab/rng.h"
#include "thinklab/status.h"
#include "thinklab/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Defined in model.h. This header does not include it: thinklab.h includes
 * this header, and model.h would bring plugin.h and block.h into every
 * framework source, where block.h's tl_block clashes with context.c's. */
typedef struct tl_model tl_model;

/* Token streams a trainer reads, borrowed: they must outlive every trainer
 * and call that uses them. */
typedef struct tl_train_data {
    const tl_tokens *train;
    const tl_tokens *val;            /* NULL: no evaluation */
    /* Converts losses to bits per byte through each target token's byte
     * length; NULL leaves bits_per_byte NaN. */
    const tl_tokenizer *tokenizer;
} tl_train_data;

/* Value of the root attribute "thinklab_checkpoint_version". */
enum { TL_CHECKPOINT_FORMAT_VERSION = 1 };

/* ---- statistics handed to the callback ------------------------------------ */

typedef struct tl_train_stats {
    int64_t step;          /* optimizer steps completed */
    int64_t total;         /* steps of the whole run */
    int64_t tokens;        /* training tokens seen by all ranks, B*T*world per step */
    double loss;           /* cross-entropy of the last step, nats per token */
    double aux_loss;       /* aux_weight times the routing loss of the last step (0 if none) */
    double lr;             /* learning rate of the last step */
    double grad_norm;      /* global gradient norm of the last step, before clipping */
    double tokens_per_s;   /* training tokens per second of step time since the previous
                              callback or progress line; time spent between steps
                              (evaluation, checkpoints, callbacks) is not counted */
    double flops_per_step; /* forward + backward FLOPs of the last step */
    double flops_total;    /* FLOPs of all steps of this process so far */
    double elapsed_s;      /* wall seconds of tl_trainer_run so far, earlier calls
                              included; after a resume it continues from the time the
                              checkpoint recorded */
    double eta_s;          /* estimated wall seconds to the last step: the wall time per
                              step of this tl_trainer_run so far, evaluations and
                              checkpoints included, times the steps left; NaN before
                              the first step */
    int64_t eval_step;     /* step of the last evaluation, -1 if none yet */
    double eval_loss;      /* validation loss of the last evaluation; NaN if none */
    double eval_perplexity;
} tl_train_stats;

/* Values a callback returns. A negative return aborts the run: the callback
 * sets the message with tl_seterr() first (the Lua binding stores the Lua
 * error there) and tl_trainer_run() returns TL_ESTATE unless the callback set
 * another status. A run with a checkpoint path first saves the finished step
 * there, as it does after a failed evaluation, and adds to the message how to
 * resume. */
enum { TL_TRAIN_CONTINUE = 0, TL_TRAIN_STOP = 1 };
typedef int (*tl_train_callback_fn)(const tl_train_stats *stats, void *user);

/* Hook between backward and clipping that turns this process's gradients
 * into the average over all processes (data parallelism). It receives the
 * parameter store, whose flat gradient block tl_params_grads() holds
 * tl_params_numel() floats, and the step's loss, which it may replace by the
 * average. NULL (the default) means one process. */
typedef tl_status (*tl_train_reduce_fn)(tl_params *params, double *loss, void *user);

/* ---- configuration -------------------------------------------------------- */

typedef struct tl_train_config {
    int64_t batch_size;       /* B sequences per step */
    int64_t context;          /* T tokens per sequence (inputs; targets are shifted by one) */
    int64_t steps;            /* total optimizer steps; 0 derives them from token_budget */
    int64_t token_budget;     /* when steps is 0: steps = ceil(token_budget / (B*T*world)) */
    tl_optim_config optim;
    /* lr, min_lr, warmup and kind are used; total is overwritten with steps. */
    tl_schedule schedule;
    double clip_norm;         /* maximum global gradient norm; 0 disables clipping */
    int64_t eval_every;       /* steps between evaluations; 0 evaluates only at the end */
    int64_t eval_batches;     /* validation batches of (B, T) per evaluation; 0 = the whole split */
    /* Training batches whose top-k router scores calibrate the thresholds of
     * the calibrated evaluation of a routed model; 0 skips that evaluation.
     * They are drawn from an RNG of their own, so evaluating does not change
     * the training batches. */
    int64_t eval_calibration_batches;
    uint64_t seed;            /* seeds batch sampling (parameters are seeded by the model) */
    int threads;              /* applied with tl_threads_set() at tl_trainer_new; 0 = all cores */
    /* With 2 or more threads, run forward and backward as data-parallel
     * shards (thinklab/shards.h), one per thread, on the steps that record no
     * gradients or routing statistics. The shard count is the largest one up
     * to threads that divides batch_size, and with none from 2 up the shards
     * are off, which a start-up line reports. Layers used with shards must
     * leave their state alone in forward unless collect_stats is set, as the
     * framework's plugins do. On by default. */
    bool shards;

    const char *log_path;     /* HDF5 run log; NULL or "" for none */
    bool log_overwrite;       /* replace an existing log file */
    int log_flush_every;      /* training steps between log flushes; 0 = the log's default */
    /* K: steps between gradient records (per-parameter norms, per-token
     * per-layer norms) and routing records; 0 = none. */
    int64_t log_grads_every;
    /* Steps between routing records (per-token router scores and selection
     * masks of routed layers) when a log is open, besides those that come
     * with the gradient records; 0 = only those (10). */
    int64_t log_routing_every;
    int64_t log_token_seqs;   /* sequences of the batch whose per-token gradients are logged (1) */

    const char *checkpoint_path; /* NULL or "" for none */
    int64_t checkpoint_every;    /* steps between checkpoints; 0 = only at the end */
    /* Allow replacing a thinklab checkpoint that already exists at
     * checkpoint_path. Without it tl_trainer_new rejects such a file unless
     * resume_path names the same file. */
    bool checkpoint_overwrite;
    /* Checkpoint that tl_trainer_new loads with tl_trainer_load, so the run
     * continues from it; NULL or "" for none. When log_path contains a run
     * log, the resumed run continues it if the log's run id equals the
     * checkpoint's (see tl_log_append). Otherwise tl_trainer_new fails, also
     * with log_overwrite. */
    const char *resume_path;

    int64_t progress_every;   /* steps between progress lines on stderr; 0 = no progress output */

    /* A JSON object stored under "experiment" in the configuration text of
     * logs and checkpoints, e.g. the experiment's full settings including
     * every layer option; NULL for none. It must start with '{' and end
     * with '}'. */
    const char *experiment_json;

    tl_train_callback_fn callback; /* invoked every callback_every steps and at the end */
    void *callback_user;
    int64_t callback_every;

    /* Data parallelism: this process's rank among world processes (0 and 1
     * for one process; world 0 counts as 1). Each rank samples its own rows
     * of the global batch; only rank 0 logs, checkpoints and prints. */
    int rank, world;
    tl_train_reduce_fn reduce_grads; /* NULL: single process */
    void *reduce_user;
} tl_train_config;

/* Returns the defaults: B 16, T 128, 1000 steps, AdamW defaults, warm-up
 * cosine lr 3e-4 with warm-up 100 and floor 3e-5, clip 1.0. Evaluation every
 * 200 steps over 20 batches with 4 calibration batches. Seed 1, threads 0,
 * shards on, K 0, one logged sequence, progress every 10 steps, callback
 * every step. */
tl_train_config tl_train_config_default(void);

/* Checks every field (the message names the field and the fix) and fills
 * steps from token_budget and schedule.total from steps. */
tl_status tl_train_config_resolve(tl_train_config *cfg);

/* Writes cfg as a JSON object into buf (NUL-terminated). Returns the length
 * that the full text needs, excluding the NUL, as snprintf does; the text is
 * truncated when that is >= size. */
size_t tl_train_config_json(const tl_train_config *cfg, char *buf, size_t size);

/* ---- the trainer ---------------------------------------------------------- */

typedef struct tl_trainer tl_trainer;

/* Creates a trainer for model on data. Copies and resolves cfg (strings are
 * copied), applies the thread count and prints it on stderr, allocates every
 * per-step buffer, loads cfg->resume_path when set, and creates the log when
 * cfg->log_path is set. On rank 0 it first rejects a checkpoint_path that a
 * save would reject, one equal to the log path, and an existing checkpoint
 * there (see checkpoint_overwrite). The model and the token streams must
 * outlive the trainer, but *data is copied. Returns NULL with a message. */
tl_trainer *tl_trainer_new(tl_model *model, const tl_train_data *data, const tl_train_config *cfg);
/* Closes the log and frees the trainer (not the model or the data). NULL is
 * a no-op. */
void tl_trainer_free(tl_trainer *tr);

/* Runs one training step. A NaN or infinite loss or gradient norm returns
 * TL_ENUMERIC with a message naming the step and the value, before the
 * optimizer touches the parameters. */
tl_status tl_trainer_step(tl_trainer *tr);

/* Trains until the last step or until the callback requests a stop,
 * evaluating, logging, checkpointing and printing progress as configured.
 * Returns TL_OK after a requested stop too. On a NaN or infinity it stops,
 * writes no checkpoint (the last good one stays), and returns TL_ENUMERIC.
 * After tl_train_interrupt() it stops as described there and returns
 * TL_EINTR. */
tl_status tl_trainer_run(tl_trainer *tr);

/* ---- stopping on a signal ------------------------------------------------ */

/* Records that signal signo (SIGINT, SIGTERM) arrived. Every
 * single-process tl_trainer_run() then stops before its next step: it writes
 * its checkpoint, when it has one, at the step reached, flushes its log and
 * returns TL_EINTR with a message naming the signal, the step and the files.
 * It skips the final evaluation. A run over several MPI ranks does not check
 * the signal, because its ranks could stop at different steps. The signal
 * stays recorded, so later runs stop at once, until
 * tl_train_interrupt_clear(). Async-signal-safe: a signal handler may call
 * it. */
void tl_train_interrupt(int signo);
/* Returns the signal recorded by tl_train_interrupt(), or 0. */
int tl_train_interrupted(void);
void tl_train_interrupt_clear(void);
/* Returns the number of single-process tl_trainer_run() calls in progress,
 * which stop on a recorded signal. A handler that finds none should end the
 * process instead. Async-signal-safe. */
int tl_train_running(void);

/* Statistics after the last completed step. */
const tl_train_stats *tl_trainer_stats(const tl_trainer *tr);
const tl_train_config *tl_trainer_config(const tl_trainer *tr);
int64_t tl_trainer_step_index(const tl_trainer *tr); /* steps completed */
tl_ctx *tl_trainer_ctx(tl_trainer *tr);
tl_log *tl_trainer_log(tl_trainer *tr); /* NULL without a log */
tl_rng *tl_trainer_rng(tl_trainer *tr); /* batch-sampling RNG */

/* Flushes the trainer's log, so that the log contains every step the
 * checkpoint has, then writes a checkpoint to path (path.tmp first, then
 * rename()). On failure the file previously at path is untouched, and the
 * message states whether one exists. The file is built in memory before it
 * is written, so a save briefly needs memory for one more copy of the
 * weights and both moments. */
tl_status tl_trainer_save(tl_trainer *tr, const char *path);

/* Restores a checkpoint written by tl_trainer_save into a trainer built with
 * the same architecture. Rejects, with a message naming the file and the
 * difference: another format version, another parameter count, name or shape
 * (the first difference is named), another model setting in config_json
 * (the sizes, or a layer's plugin or option), another tokenizer (by a hash
 * of its token list, when the checkpoint and the data both have one),
 * another global batch (batch_size x world) or context, and a file that is
 * missing, truncated or not a checkpoint. Training settings may differ:
 * rank 0 names those on one line on stderr. The rank count may differ: a
 * file written by 2 ranks of batch_size 4 continues under 1 rank of 8. A
 * trainer without a log takes the checkpoint's run id, so that its logs and
 * checkpoints belong to the checkpoint's run. A trainer with a log keeps its
 * own, and rejects a checkpoint at or before the last step that its log has.
 * On failure the trainer's state is unchanged. */
tl_status tl_trainer_load(tl_trainer *tr, const char *path);

/* ---- evaluation ----------------------------------------------------------- */

/* Routing of ITT and MoD layers during an evaluation. */
typedef enum tl_eval_routing {
    TL_EVAL_TOPK,       /* per-sequence top-k with the configured ratios */
    TL_EVAL_CAUSAL,     /* threshold on each token's own gate */
    TL_EVAL_CALIBRATED, /* per (layer, step) thresholds set by tl_calibrate_thresholds() */
    TL_EVAL_ROUTING_COUNT
} tl_eval_routing;

/* Returns "topk", "causal" or "calibrated". */
const char *tl_eval_routing_name(tl_eval_routing mode);

typedef struct tl_eval_result {
    double loss;              /* mean cross-entropy, nats per token */
    double perplexity;        /* exp(loss) */
    double bits_per_token;    /* loss / ln 2 */
    double bits_per_byte;     /* total loss / (ln 2 * bytes of the evaluated text) */
    int64_t tokens;           /* predicted tokens */
    int64_t bytes;            /* bytes of text those tokens decode to */
    double selected_fraction; /* realised fraction of routing decisions that selected
                                 a token; NaN for a model without routed layers */
    tl_eval_routing routing;
} tl_eval_result;

/* Evaluates model on the validation split of data in (B, T) batches: at most
 * n_batches of them (0 = all), in order from the split's start, with gradients
 * off and routing overridden for these calls only. Uses ctx's arena and
 * resets it before each batch. */
tl_status tl_evaluate(tl_ctx *ctx, tl_model *model, const tl_train_data *data, int64_t batch_size,
                      int64_t context, int64_t n_batches, tl_eval_routing routing,
                      tl_eval_result *out);

/* Evaluates with tl_evaluate under the trainer's batch shape and eval_batches,
 * and writes an /eval row, whose step is the number of steps completed, to
 * the log when there is one. out may be NULL. Calibrated routing needs
 * tl_calibrate_thresholds() first. tl_trainer_run() evaluates a routed model
 * under all three modes, a dense one under top-k only. */
tl_status tl_trainer_evaluate(tl_trainer *tr, tl_eval_routing routing, tl_eval_result *out);

/* Draws n_batches training batches of (batch_size, context) with rng and
 * sets, for every routed (layer, step), the threshold of calibrated routing
 * to the (1 - ratio) quantile of the scores seen under top-k
 * (tl_model_calibrate_begin/add/end, whose comment defines the quantile).
 * Uses ctx's arena and resets it per batch. */
tl_status tl_calibrate_thresholds(tl_ctx *ctx, tl_model *model, const tl_train_data *data,
                                  int64_t batch_size, int64_t context, int64_t n_batches,
                                  tl_rng *rng);

/* ---- generation ----------------------------------------------------------- */

typedef struct tl_generate_config {
    int64_t max_new_tokens;
    float temperature;  /* 0 picks the most likely token (greedy) */
    int top_k;          /* sample among the top_k most likely tokens; 0 = all */
} tl_generate_config;

/* Continues prompt (n_prompt ids, at least one) by cfg->max_new_tokens ids
 * written to out, drawing with rng. Routing is always causal. Each new token
 * recomputes the forward pass over the last context ids (the model's maximum
 * context when context is 0). Uses ctx's arena and resets it per token. */
tl_status tl_generate(tl_ctx *ctx, tl_model *model, const int32_t *prompt, int64_t n_prompt,
                      const tl_generate_config *cfg, int64_t context, tl_rng *rng,
                      int32_t *out);

/* ---- gradient-spike analysis ---------------------------------------------- */

typedef struct tl_spike_config {
    int64_t n_sequences;    /* M held-out sequences, taken in order from the validation split */
    int64_t seq_len;        /* tokens per sequence (inputs) */
    int64_t answer_tokens;  /* loss on the last k tokens only; 0 = the whole sequence */
    double hard_quantile;   /* sequences with loss above this quantile are hard (0.8: top 20%) */
    /* Sequences with loss at most this quantile are easy, in [0, hard_quantile].
     * 0 takes hard_quantile, so that every sequence that is not hard is easy,
     * as the method labels them; e.g. 0.5 leaves the middle unlabelled. */
    double easy_quantile;
    tl_eval_routing routing;
    int64_t step;           /* training step of the weights, stored with each record */
} tl_spike_config;

/* One sequence's result. The three matrices are (n_layers, 4), matrices in
 * the order wq, wk, wv, wo, as in tl_log_spike_record. */
typedef struct tl_spike_sequence {
    double loss;
    int correct;  /* 1 when the argmax prediction of every answer token is right */
    /* Labels as the log's label_by_loss gives them: hard when the loss is at
     * least the hard_quantile of all sequences' losses and the sequence is
     * not easy. */
    bool hard;
    bool easy;    /* loss at most the easy quantile (never both easy and hard) */
} tl_spike_sequence;

/* For each of cfg->n_sequences sequences, batch size 1: forward, loss on the
 * sequence or its answer tokens, backward, then the nuclear norm, Frobenius
 * norm and largest singular value of the gradient of every layer's wq, wk,
 * wv and wo. Gradients are zeroed before each sequence and after the last.
 * Writes /analysis/gradient_spikes in log when log is not NULL. nuclear,
 * frobenius and max_sv, when not NULL, receive (n_sequences, n_layers, 4)
 * doubles; seqs, when not NULL, n_sequences entries. n_layers is the model's
 * layer count. */
tl_status tl_spike_analysis(tl_ctx *ctx, tl_model *model, const tl_train_data *data,
                            const tl_spike_config *cfg, tl_log *log, double *nuclear,
                            double *frobenius, double *max_sv, tl_spike_sequence *seqs);

#ifdef __cplusplus
}
#endif
#endif
