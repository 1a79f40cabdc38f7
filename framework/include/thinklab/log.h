/* The run log: one HDF5 file per run, read by the Python analysis scripts.
 *
 * analysis/LOG_FORMAT.md documents every group and dataset of the file; it is
 * the contract between this writer and the readers.
 *
 * Every append is buffered in memory. Once flush_every training steps are
 * buffered, tl_log_train() writes the buffered records of every kind to the
 * file. tl_log_flush() does the same on request, and tl_log_close() at the end. Each flush extends the datasets, writes the rows and ends with
 * one H5Fflush, so after a flush returns the file on disk is complete up to
 * that point: another process may open it read-only, and a writer killed by
 * SIGKILL between flushes leaves a file that opens and holds every flushed row.
 *
 * The writer disables HDF5 file locking on its own handle, so a reader does
 * not need HDF5_USE_FILE_LOCKING=FALSE to open the file while the run goes on.
 * On Linux the writer holds a lock of its own instead, which readers do not
 * take: tl_log_append() and an overwriting tl_log_create() fail while
 * another open log writes the file, because two writers damage it.
 * tl_log_create() also turns off HDF5's automatic error printing for the
 * process: failures come back only as tl_errmsg() messages that name the
 * failing HDF5 call.
 *
 * A log is not thread-safe, and the serial HDF5 build is not either: call the
 * log from one thread at a time. */
#ifndef THINKLAB_LOG_H
#define THINKLAB_LOG_H

#include <stdbool.h>
#include <stdint.h>

#include "thinklab/params.h"
#include "thinklab/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Value of the root attribute "thinklab_log_version"; readers check it. */
enum { TL_LOG_FORMAT_VERSION = 1 };
/* Training steps between flushes when tl_log_meta.flush_every is 0. */
enum { TL_LOG_FLUSH_EVERY_DEFAULT = 50 };
/* Matrices of one attention layer in /analysis/gradient_spikes: wq, wk, wv, wo. */
enum { TL_LOG_SPIKE_MATRICES = 4 };
/* Bytes of a run id with its terminating NUL: at most 63 characters. */
enum { TL_LOG_RUN_ID_SIZE = 64 };

typedef struct tl_log tl_log;

typedef struct tl_log_meta {
    const char *config_json;            /* full resolved configuration as JSON text */
    int n_plugins;
    const char *const *plugin_names;    /* n_plugins entries */
    const char *const *plugin_versions; /* n_plugins entries */
    uint64_t seed;
    int threads;
    int flush_every;                    /* training steps between flushes; 0 = 50 */
    bool overwrite;                     /* replace an existing file instead of failing */
    /* Identifier of the training run, stored as /meta run_id so that a
     * resumed run can check that the log is its own; NULL or "" stores
     * none. At most TL_LOG_RUN_ID_SIZE - 1 characters. */
    const char *run_id;
} tl_log_meta;

/* True if path is an HDF5 file whose root carries thinklab_log_version.
 * Turns off HDF5's automatic error printing, as tl_log_create() does. */
bool tl_log_is_run_log(const char *path);

/* Creates the log file at path (in place, without a temporary file, since
 * the run extends it as it goes), writes /meta and flushes. Fails with TL_EIO if
 * path exists and meta->overwrite is false, or if the file cannot be
 * created. */
tl_log *tl_log_create(const char *path, const tl_log_meta *meta);

/* Reads /meta run_id of the run log at path into id (size bytes). A log
 * written before run ids existed has none, and id becomes "". Fails when path
 * is not a thinklab run log or the id does not fit. */
tl_status tl_log_read_run_id(const char *path, char *id, size_t size);

/* Opens the run log at path to continue the run that wrote it, after that
 * run was resumed from a checkpoint taken after `step` completed optimizer
 * steps. meta->run_id must equal the log's run_id; meta->overwrite is
 * ignored.
 *
 * Rows that the resumed run writes again are removed first. These are the
 * /train, /grad_norms, /token_grads and /routing rows whose step is `step`
 * or later, because their step counts the steps before the one they record.
 * /eval rows go when their step, which counts completed steps, is later
 * than `step`. /analysis/gradient_spikes stays as it is, and a later
 * tl_log_spikes_init() on the log fails, because a log contains one
 * analysis.
 *
 * Fails without removing rows or changing /meta when the log's run id
 * differs from meta->run_id or is missing, and when the kept /train rows end
 * before step - 1, because the continued log would lack the steps between.
 *
 * /meta gets the new configuration: config_json, the plugin lists, seed,
 * threads, versions and flush_every are replaced, start_time stays, and
 * `step` is appended to the int64 attribute resumed_at_steps. When dropped
 * is not NULL it receives the groups that lost rows with their counts, such
 * as "train 12, eval 3, routing/layers.1 2", or "" when none did.
 *
 * The rows go and /meta changes at the first flush (tl_log_flush(), a
 * tl_log_train() that fills flush_every steps, or tl_log_close()). Until
 * then the file is as it was, so a log that fails before, such as on a
 * tl_log_token_grads_init() of another shape, closes unchanged.
 *
 * Existing /grad_norms, /token_grads and /routing/<layer> groups take the
 * new rows once tl_log_grad_norms_init(), tl_log_token_grads_init() and
 * tl_log_routing_register() are called with their shapes. */
tl_log *tl_log_append(const char *path, const tl_log_meta *meta, int64_t step, char *dropped,
                      size_t dropped_size);

/* Checks that the /train row of `step` in a log opened by tl_log_append()
 * has the given loss and gradient norm, bit for bit: the values the
 * checkpoint recorded for its last step. A log that another branch of the
 * run continued after the checkpoint (a resume from an earlier checkpoint
 * into the same log) has other values there. On a mismatch, or without that
 * row, the log is marked failed, so that closing it leaves the file as it
 * was. */
tl_status tl_log_check_train_row(tl_log *log, int64_t step, double loss, double grad_norm);

/* Writes every buffered record and calls H5Fflush once. */
tl_status tl_log_flush(tl_log *log);

/* Flushes, closes the file and frees log. Returns the first failure; log is
 * freed either way. NULL is a no-op. */
tl_status tl_log_close(tl_log *log);

const char *tl_log_path(const tl_log *log);

/* Rows of /train/step in the file, i.e. training steps written by flushes. */
int64_t tl_log_train_rows_flushed(const tl_log *log);

/* The last step given to tl_log_train(), buffered or in the file, or -1
 * when the log has no /train row. */
int64_t tl_log_last_train_step(const tl_log *log);

/* One row of /train. */
typedef struct tl_log_train_record {
    int64_t step;
    double loss;         /* mean cross-entropy of the step, nats per token */
    double lr;
    double grad_norm;    /* global L2 norm of all gradients, before clipping */
    double tokens_per_s; /* training throughput over this step */
    double flops;        /* FLOPs of this step, forward plus backward */
} tl_log_train_record;

/* Buffers one training step; flushes when flush_every steps are buffered.
 * Steps must increase. */
tl_status tl_log_train(tl_log *log, const tl_log_train_record *rec);

/* Stores the parameter names of /grad_norms once; call before
 * tl_log_grad_norms(). On a log opened by tl_log_append() that has
 * /grad_norms, checks that n_params and names match the stored ones. A
 * mismatch marks the log failed, so that closing it writes nothing more. */
tl_status tl_log_grad_norms_init(tl_log *log, int64_t n_params, const char *const *names);
/* Buffers one row of per-parameter gradient L2 norms (n_params values). */
tl_status tl_log_grad_norms(tl_log *log, int64_t step, const double *norms);
/* Computes the L2 norm of every parameter's gradient in double and buffers
 * them. The first call registers the parameter names in store order; a later
 * call with another parameter count fails. */
tl_status tl_log_grad_norms_params(tl_log *log, int64_t step, const tl_params *params);

/* Sets the shape of /token_grads: n_layers decoder layers, so n_layers + 1
 * residual states h_0..h_L, and n_tokens logged token positions. On a log
 * opened by tl_log_append() that has /token_grads, checks that the shape
 * matches the stored one. A mismatch marks the log failed, so that closing
 * it writes nothing more. */
tl_status tl_log_token_grads_init(tl_log *log, int n_layers, int64_t n_tokens);
/* Buffers one logged step. norms is (n_layers + 1, n_tokens): norms[l][i] =
 * ||dL/dh_l[i]||_2, where h_0 is the embedding output and h_l the output of
 * layer l. tokens and losses have n_tokens entries; losses[i] is the loss at
 * position i, whose target is the next token (NaN where there is none). */
tl_status tl_log_token_grads(tl_log *log, int64_t step, const float *norms,
                             const int32_t *tokens, const float *losses);

/* A routed layer (ITT or MoD) registered under /routing/<name>. */
typedef struct tl_log_routing_spec {
    const char *name;      /* group name: non-empty, no '/', unique */
    const char *kind;      /* layer kind, e.g. "itt" or "mod" */
    int n_steps;           /* routed steps of the layer: N-1 for ITT xN, 1 for MoD */
    int64_t n_mask_tokens; /* leading token positions whose selection mask is stored */
    int n_bins;            /* score histogram bins over [score_min, score_max] */
    double score_min, score_max;
} tl_log_routing_spec;

/* Registers a routed layer and returns its id (>= 0), or -1 with a message.
 * On a log opened by tl_log_append(), a layer whose group exists continues
 * it: kind, n_steps, n_mask_tokens and n_bins must match the group's, and
 * the group's bin edges stay in force over score_min and score_max. */
int tl_log_routing_register(tl_log *log, const tl_log_routing_spec *spec);

/* The routing decision of one routed step of one training step. */
typedef struct tl_log_routing_record {
    int64_t step;
    int routed_step;          /* 0 .. n_steps-1 */
    int64_t n_scores;         /* tokens scored, at least n_mask_tokens */
    const float *scores;      /* n_scores router scores */
    const uint8_t *selected;  /* n_scores flags, 1 = the token went through the block */
    double topk_agreement;    /* causal, calibrated or topk_aux routing: fraction of
                                 tokens whose threshold decision equals their top-k
                                 membership; NaN under plain top-k */
} tl_log_routing_record;

/* Buffers one routed step. Records of one training step fill one row; a
 * record with a larger step starts the next row, a smaller step fails. */
tl_status tl_log_routing(tl_log *log, int id, const tl_log_routing_record *rec);

/* One row of /eval. */
typedef struct tl_log_eval_record {
    int64_t step;
    const char *split;        /* e.g. "val" */
    double loss;              /* nats per token */
    double perplexity;
    double bits_per_byte;     /* total loss / (ln 2 * bytes of text); NaN if unknown */
    const char *routing_mode; /* e.g. "topk", "causal", "none" */
    double selected_fraction; /* realised fraction of tokens routed; NaN if no router */
} tl_log_eval_record;

tl_status tl_log_eval(tl_log *log, const tl_log_eval_record *rec);

/* Creates /analysis/gradient_spikes for n_layers attention layers. A sequence
 * is labelled easy when its loss is at most the easy_quantile of all logged
 * losses and hard when at least the hard_quantile (0 <= easy <= hard <= 1). */
tl_status tl_log_spikes_init(tl_log *log, int n_layers, double easy_quantile,
                             double hard_quantile);

/* One sequence of the gradient-spike analysis. */
typedef struct tl_log_spike_record {
    int64_t step;          /* training step of the weights */
    int64_t sequence;      /* index of the sequence in its data set */
    double loss;           /* sequence loss, nats per token; must be finite */
    int correct;           /* answer correctness: 1 correct, 0 wrong, -1 unknown */
    /* Each (n_layers, TL_LOG_SPIKE_MATRICES), matrices in the order wq, wk, wv, wo. */
    const double *nuclear;
    const double *frobenius;
    const double *max_sv;
} tl_log_spike_record;

tl_status tl_log_spike(tl_log *log, const tl_log_spike_record *rec);

#ifdef __cplusplus
}
#endif
#endif
