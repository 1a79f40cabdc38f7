/* The training loop: one step is reset, sample, forward, loss, backward,
 * reduce, clip and update; tl_trainer_run adds evaluation, logging,
 * checkpoints, progress output and the callback. */
#include <math.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "model/model_internal.h"
#include "ops/gemm.h"
#include "train/train_internal.h"

double tl_train_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double tl_train_elapsed(const tl_trainer *tr)
{
    return tr->elapsed_base + (tr->running ? tl_train_now() - tr->run_start : 0.0);
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Writes 32 random hex digits to id. The id only distinguishes runs, so it
 * comes from /dev/urandom and not from the seeded training RNG. Where that
 * device cannot be read, the clock and the process id are mixed instead. */
static void new_run_id(char id[TL_LOG_RUN_ID_SIZE])
{
    uint64_t bits[2] = {0, 0};
    FILE *f = fopen("/dev/urandom", "rb");
    bool ok = f && fread(bits, sizeof bits, 1, f) == 1;
    if (f)
        fclose(f);
    if (!ok) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t x = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
        x ^= (uint64_t)getpid() << 32;
        bits[0] = splitmix64(&x);
        bits[1] = splitmix64(&x);
    }
    snprintf(id, TL_LOG_RUN_ID_SIZE, "%016llx%016llx", (unsigned long long)bits[0],
             (unsigned long long)bits[1]);
}

static char *copy_string(const char *s)
{
    if (!s || !s[0])
        return NULL;
    return strdup(s);
}

/* Largest id in tokens, or -1 when empty. */
static int32_t max_token(const tl_tokens *t)
{
    int32_t top = -1;
    for (int64_t i = 0; i < t->n; i++)
        if (t->ids[i] > top)
            top = t->ids[i];
    return top;
}

static tl_status check_data(const tl_train_data *data, const tl_model_config *mc)
{
    if (!data->train || !data->train->ids)
        return tl_seterr(TL_EINVAL, "tl_trainer_new: training tokens are missing; encode the "
                                    "corpus with tl_corpus_encode() first");
    const tl_tokens *splits[2] = {data->train, data->val};
    const char *names[2] = {"training", "validation"};
    for (int s = 0; s < 2; s++) {
        if (!splits[s])
            continue;
        int32_t top = max_token(splits[s]);
        if (top >= mc->vocab)
            return tl_seterr(TL_EINVAL, "tl_trainer_new: the %s tokens contain id %d but the "
                                        "model's vocabulary has %lld ids; build the model with "
                                        "the tokenizer's vocabulary size", names[s], (int)top,
                             (long long)mc->vocab);
    }
    if (data->tokenizer && tl_tokenizer_vocab_size(data->tokenizer) > mc->vocab)
        return tl_seterr(TL_EINVAL, "tl_trainer_new: the tokenizer has %d ids but the model's "
                                    "vocabulary only %lld",
                         tl_tokenizer_vocab_size(data->tokenizer),
                         (long long)mc->vocab);
    return TL_OK;
}

static tl_status alloc_buffers(tl_trainer *tr)
{
    size_t bt = (size_t)(tr->cfg.batch_size * tr->cfg.context);
    size_t n_norm = (size_t)(tr->n_layers + 1) * (size_t)(tr->n_token_log ? tr->n_token_log : 1);
    tr->inputs = malloc(bt * sizeof *tr->inputs);
    tr->targets = malloc(bt * sizeof *tr->targets);
    tr->token_norms = malloc(n_norm * sizeof *tr->token_norms);
    tr->token_losses = malloc((size_t)(tr->n_token_log + 1) * sizeof *tr->token_losses);
    tr->token_ids = malloc((size_t)(tr->n_token_log + 1) * sizeof *tr->token_ids);
    tr->param_norms = malloc((tl_params_count(tr->params) + 1) * sizeof *tr->param_norms);
    tr->routing_ids = malloc((size_t)(tr->n_layers + 1) * sizeof *tr->routing_ids);
    tr->routing_scores = malloc(bt * sizeof *tr->routing_scores);
    if (!tr->inputs || !tr->targets || !tr->token_norms || !tr->token_losses || !tr->token_ids ||
        !tr->param_norms || !tr->routing_ids || !tr->routing_scores)
        return tl_seterr(TL_ENOMEM, "no memory for the trainer's batch buffers (B %lld, T %lld)",
                         (long long)tr->cfg.batch_size, (long long)tr->cfg.context);
    for (int l = 0; l <= tr->n_layers; l++)
        tr->routing_ids[l] = -1;
    for (size_t i = 0; i < bt; i++)
        tr->routing_scores[i] = NAN;
    return TL_OK;
}

/* True when a and b name the same file: the same text, or both exist and
 * share device and inode. */
static bool same_file(const char *a, const char *b)
{
    if (strcmp(a, b) == 0)
        return true;
    struct stat sa, sb;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

/* Rejects a checkpoint path that the first save would reject, so that a bad
 * path fails before training instead of losing the trained weights at the
 * end of the run. */
static tl_status check_checkpoint_path(const tl_trainer *tr)
{
    const char *ck = tr->checkpoint_path;
    if (!ck)
        return TL_OK;
    if (tr->log_path && same_file(ck, tr->log_path))
        return tl_seterr(TL_EINVAL, "the checkpoint path '%s' is also the log path; give the "
                                    "checkpoint and the log different paths", ck);
    tl_status st = tl_checkpoint_check_target(ck);
    if (st != TL_OK)
        return st;
    /* Every checkpoint stores the weights and the two AdamW moments as
     * float32, whatever the optimizer, so 12 bytes per parameter is a lower
     * bound of its size. */
    uint64_t need = 12 * (uint64_t)tl_params_numel(tr->params);
    uint64_t limit = tl_file_size_limit();
    if (need > limit)
        return tl_seterr(TL_EINVAL, "checkpoint '%s' needs at least %.2f MiB for the %lld "
                                    "parameters and their optimizer moments, above the "
                                    "process's file size limit (ulimit -f) of %.2f MiB, so "
                                    "the first save would fail: raise the limit or train "
                                    "without a checkpoint",
                         ck, (double)need / 1048576.0, (long long)tl_params_numel(tr->params),
                         (double)limit / 1048576.0);
    /* The target check passed, so a file at ck is a thinklab checkpoint. */
    struct stat sb;
    bool resumed_from_it = tr->resume_path && same_file(ck, tr->resume_path);
    if (stat(ck, &sb) == 0 && !tr->cfg.checkpoint_overwrite && !resumed_from_it)
        return tl_seterr(TL_EINVAL, "checkpoint '%s' already exists and this run would replace "
                                    "it: set resume = '%s' to continue that run, or "
                                    "checkpoint_overwrite = true to start over and replace it",
                         ck, ck);
    return TL_OK;
}

/* Decides what a resume does with a run log already at the log path. The
 * resumed run continues the log when the log's run id equals the
 * checkpoint's. Otherwise the resume is rejected, also with log_overwrite
 * set, so that it never erases a run's rows or mixes two runs in one log. */
static tl_status check_resumed_log(tl_trainer *tr)
{
    const char *log = tr->log_path, *ck = tr->resume_path;
    struct stat sb;
    if (!log || stat(log, &sb) != 0)
        return TL_OK;
    if (S_ISDIR(sb.st_mode))
        return tl_seterr(TL_EINVAL, "run log '%s' is a folder; give the resumed run a log file "
                                    "path such as '%s/run.h5'", log, log);
    if (tl_require_regular_file(log, "run log", sb.st_mode) != TL_OK)
        return tl_lasterr();
    /* A kill during a flush can leave a log that HDF5 cannot open or read.
     * Such a file is kept for inspection, since it still has the rows of
     * the interrupted run, and the resumed run needs another path. */
    if (!tl_log_is_run_log(log))
        return tl_seterr(TL_EINVAL, "cannot continue run log '%s' from checkpoint '%s': HDF5 "
                                    "cannot open the file as a thinklab run log, so it is "
                                    "damaged (a kill during a log flush can do this) or not a "
                                    "run log. Give the resumed run a new log path, because "
                                    "log_overwrite does not replace such a file", log, ck);
    char log_id[TL_LOG_RUN_ID_SIZE];
    tl_status st = tl_log_read_run_id(log, log_id, sizeof log_id);
    if (st != TL_OK) {
        char detail[1024];
        snprintf(detail, sizeof detail, "%s", tl_errmsg());
        return tl_seterr(TL_EINVAL, "cannot continue run log '%s' from checkpoint '%s' because "
                             "reading its run id failed, so the file is damaged: %s. Give the "
                             "resumed run a new log path", log, ck, detail);
    }
    if (!tr->checkpoint_run_id[0])
        return tl_seterr(TL_EINVAL, "run log '%s' already exists, and checkpoint '%s' has no "
                                    "run id (an older thinklab wrote it), so the resume cannot "
                                    "check that the log belongs to its run: give the resumed "
                                    "run a new log path", log, ck);
    if (!log_id[0])
        return tl_seterr(TL_EINVAL, "run log '%s' has no run id (an older thinklab wrote it), so "
                                    "the resume from checkpoint '%s' cannot check that the log "
                                    "belongs to its run: give the resumed run a new log path",
                         log, ck);
    if (strcmp(log_id, tr->checkpoint_run_id) != 0)
        return tl_seterr(TL_EINVAL, "run log '%s' belongs to run %s, but checkpoint '%s' to run "
                                    "%s, so resuming from step %lld would mix two runs in one "
                                    "log: give the resumed run a new log path",
                         log, log_id, ck, tr->checkpoint_run_id, (long long)tr->step);
    tr->append_log = true;
    return TL_OK;
}

tl_trainer *tl_trainer_new(tl_model *model, const tl_train_data *data, const tl_train_config *cfg)
{
    if (!model || !data || !cfg) {
        tl_seterr(TL_EINVAL, "tl_trainer_new: model, data and config must be given");
        return NULL;
    }
    tl_trainer *tr = calloc(1, sizeof *tr);
    if (!tr) {
        tl_seterr(TL_ENOMEM, "no memory for a trainer");
        return NULL;
    }
    tr->cfg = *cfg;
    tr->model = model;
    tr->data = *data;
    tr->params = tl_model_params(model);
    tr->n_layers = tl_model_n_layers(model);
    tr->log_path = copy_string(cfg->log_path);
    tr->checkpoint_path = copy_string(cfg->checkpoint_path);
    tr->resume_path = copy_string(cfg->resume_path);
    tr->experiment_json = copy_string(cfg->experiment_json);
    tr->cfg.log_path = tr->log_path;
    tr->cfg.checkpoint_path = tr->checkpoint_path;
    tr->cfg.resume_path = tr->resume_path;
    tr->cfg.experiment_json = tr->experiment_json;
    if ((cfg->log_path && cfg->log_path[0] && !tr->log_path) ||
        (cfg->checkpoint_path && cfg->checkpoint_path[0] && !tr->checkpoint_path) ||
        (cfg->resume_path && cfg->resume_path[0] && !tr->resume_path) ||
        (cfg->experiment_json && cfg->experiment_json[0] && !tr->experiment_json)) {
        tl_seterr(TL_ENOMEM, "no memory for the trainer's paths");
        goto fail;
    }
    if (tr->cfg.world == 0)
        tr->cfg.world = 1;
    if (tl_train_config_resolve(&tr->cfg) != TL_OK)
        goto fail;
    /* A bad THINKLAB_GEMM would fail the first product, after the run log
     * was created, which can replace an earlier run's log. */
    tl_gemm_kind gemm;
    if (tl_gemm_kind_get(&gemm) != TL_OK)
        goto fail;
    new_run_id(tr->run_id);
    if (tr->cfg.world < 1 || tr->cfg.rank < 0 || tr->cfg.rank >= tr->cfg.world) {
        tl_seterr(TL_EINVAL, "rank %d must lie in [0, world = %d)", tr->cfg.rank, tr->cfg.world);
        goto fail;
    }

    const tl_model_config *mc = tl_model_config_of(model);
    if (tr->cfg.context > mc->context) {
        tl_seterr(TL_EINVAL, "context %lld exceeds the model's maximum context %lld; lower it or "
                             "build the model with a longer context",
                  (long long)tr->cfg.context, (long long)mc->context);
        goto fail;
    }
    if (check_data(data, mc) != TL_OK)
        goto fail;

    tr->threads = tl_threads_set(tr->cfg.threads);

    tl_rng_seed(&tr->rng, tr->cfg.seed);
    if (tl_sampler_init(&tr->sampler, data->train, (int)tr->cfg.batch_size, (int)tr->cfg.context,
                        tr->cfg.rank, tr->cfg.world) != TL_OK)
        goto fail;
    tr->ctx = tl_ctx_new(0);
    if (!tr->ctx)
        goto fail;
    if (tr->cfg.shards && tr->threads > 1) {
        /* The largest shard count, at most one per thread, that splits the batch evenly. */
        int n = tr->threads;
        while (n > 1 && tr->cfg.batch_size % n != 0)
            n--;
        if (n > 1) {
            tr->shards = tl_shards_new(tr->params, n, 0);
            tr->shard_loss = calloc((size_t)n, sizeof *tr->shard_loss);
            if (!tr->shards || !tr->shard_loss) {
                if (tr->shards)
                    tl_seterr(TL_ENOMEM, "no memory for the per-shard losses");
                goto fail;
            }
        }
    }
    if (tr->cfg.rank == 0) {
        char desc[256], shards[96] = "";
        if (tr->shards) {
            long long per = (long long)(tr->cfg.batch_size / tl_shards_count(tr->shards));
            snprintf(shards, sizeof shards, "; %d data-parallel shards of %lld sequence%s",
                     tl_shards_count(tr->shards), per, per == 1 ? "" : "s");
        }
        fprintf(stderr, "thinklab: %s%s\n", tl_threads_describe(desc, sizeof desc), shards);
        if (tr->cfg.shards && tr->threads > 1 && !tr->shards) {
            /* No count from 2 to threads divides the batch, so name the
             * nearest batch sizes that give one shard per thread. */
            long long batch = (long long)tr->cfg.batch_size;
            long long multiple_below = batch / tr->threads * tr->threads;
            char sizes[64];
            if (multiple_below > 0)
                snprintf(sizes, sizeof sizes, "%lld or %lld", multiple_below,
                         multiple_below + tr->threads);
            else
                snprintf(sizes, sizeof sizes, "%d", tr->threads);
            fprintf(stderr, "thinklab: batch_size %lld does not split evenly over %d threads, so "
                            "data-parallel shards are off; batch_size %s would split into %d "
                            "shards\n", batch, tr->threads, sizes, tr->threads);
        }
    }

    tr->n_token_log = tr->cfg.log_token_seqs * tr->cfg.context;
    if (alloc_buffers(tr) != TL_OK || tl_train_config_text(tr) != TL_OK)
        goto fail;
    /* Only rank 0 saves checkpoints, so only rank 0 checks where they go. */
    if (tr->cfg.rank == 0 && check_checkpoint_path(tr) != TL_OK)
        goto fail;
    tr->stats = (tl_train_stats){
        .total = tr->cfg.steps, .eval_step = -1, .eval_loss = NAN, .eval_perplexity = NAN,
        .loss = NAN, .grad_norm = NAN,
    };
    tr->last_checkpoint_step = -1;
    if (tr->resume_path && tl_trainer_load(tr, tr->resume_path) != TL_OK)
        goto fail;
    if (tr->resume_path) {
        tr->last_checkpoint = tr->resume_path;
        tr->last_checkpoint_step = tr->step;
    }
    /* A finished run would return stats of no step, without loss or gradient norm. */
    if (tr->resume_path && tr->step >= tr->cfg.steps) {
        tl_seterr(TL_EINVAL, "checkpoint '%s' is already at step %lld = steps, so there is "
                             "nothing to resume; raise steps to continue training",
                  tr->resume_path, (long long)tr->step);
        goto fail;
    }
    if (tr->resume_path && tr->cfg.rank == 0 && check_resumed_log(tr) != TL_OK)
        goto fail;
    if (tr->log_path && tr->cfg.rank == 0 && tl_train_log_open(tr) != TL_OK)
        goto fail;

    tr->progress_in_place = isatty(STDERR_FILENO) != 0;
    return tr;

fail:
    tl_trainer_free(tr);
    return NULL;
}

void tl_trainer_free(tl_trainer *tr)
{
    if (!tr)
        return;
    if (tr->log) {
        /* Keep an earlier failure's message over what closing may report. */
        char message[1024];
        tl_status status = tl_lasterr();
        snprintf(message, sizeof message, "%s", tl_errmsg());
        tl_log_close(tr->log);
        if (status != TL_OK)
            tl_seterr(status, "%s", message);
    }
    tl_ctx_free(tr->ctx);
    tl_shards_free(tr->shards);
    free(tr->shard_loss);
    free(tr->inputs);
    free(tr->targets);
    free(tr->token_norms);
    free(tr->token_losses);
    free(tr->token_ids);
    free(tr->param_norms);
    free(tr->routing_ids);
    free(tr->routing_scores);
    free(tr->config_json);
    free(tr->log_path);
    free(tr->checkpoint_path);
    free(tr->resume_path);
    free(tr->experiment_json);
    free(tr);
}

const tl_train_stats *tl_trainer_stats(const tl_trainer *tr) { return &tr->stats; }
const tl_train_config *tl_trainer_config(const tl_trainer *tr) { return &tr->cfg; }
int64_t tl_trainer_step_index(const tl_trainer *tr) { return tr->step; }
tl_ctx *tl_trainer_ctx(tl_trainer *tr) { return tr->ctx; }
tl_log *tl_trainer_log(tl_trainer *tr) { return tr->log; }
tl_rng *tl_trainer_rng(tl_trainer *tr) { return &tr->rng; }

/* Gradient records are due every log_grads_every steps. Routing records are
 * due every log_routing_every steps and with every gradient record. Both count
 * on the step index before the update, step 0 included. */
static bool records_due(const tl_trainer *tr)
{
    return tr->log && tr->cfg.log_grads_every > 0 && tr->step % tr->cfg.log_grads_every == 0;
}

static bool routing_due(const tl_trainer *tr)
{
    return records_due(tr) || (tr->log && tr->cfg.log_routing_every > 0 &&
                               tr->step % tr->cfg.log_routing_every == 0);
}

/* Sets the error of a step that diverged, with the reason and the advice: a
 * lower learning rate, clipping, and where to start again. */
static tl_status diverged_because(const tl_trainer *tr, const char *reason, float lr)
{
    /* A run with a checkpoint path has nothing to resume from until its
     * first save. */
    char next[1100] = "train again";
    if (tr->last_checkpoint)
        /* NOTE: nothing checks that checkpoint's loss. When the loss grew
         * for several steps first, it may already hold diverging weights. */
        snprintf(next, sizeof next, "resume from the last checkpoint, '%s' of step %lld",
                 tr->last_checkpoint, (long long)tr->last_checkpoint_step);
    else if (tr->checkpoint_path)
        snprintf(next, sizeof next, "train again: no checkpoint was saved before step %lld",
                 (long long)tr->step);
    return tl_seterr(TL_ENUMERIC, "training diverged at step %lld: %s, so the parameters were "
                                  "not updated. Lower the learning rate (now %g)%s and %s",
                     (long long)tr->step, reason, (double)lr,
                     tr->cfg.clip_norm > 0 ? "" : " or set clip (clip_norm in C) above 0", next);
}

static tl_status diverged(const tl_trainer *tr, const char *quantity, double value, float lr)
{
    char reason[96];
    /* fabs: printf writes a NaN with its sign bit set as "-nan". */
    snprintf(reason, sizeof reason, "the %s is %g", quantity, isnan(value) ? fabs(value) : value);
    return diverged_because(tr, reason, lr);
}

/* Returns st, and for a forward pass that failed on a non-finite value (such
 * as a layer's router scores) sets the divergence error with that message as
 * the reason. */
static tl_status forward_failed(const tl_trainer *tr, tl_status st, float lr)
{
    if (st != TL_ENUMERIC)
        return st;
    char reason[512];
    snprintf(reason, sizeof reason, "%s", tl_errmsg()); /* tl_seterr overwrites it */
    return diverged_because(tr, reason, lr);
}

/* tl_shard_loss_fn: shard i of n runs the model on its rows of the batch and
 * records its losses for the trainer's statistics. */
static tl_tensor *train_shard_loss(tl_ctx *ctx, int shard, int n, void *user)
{
    tl_trainer *tr = user;
    int64_t rows = tr->cfg.batch_size / n, T = tr->cfg.context;
    int64_t off = (int64_t)shard * rows * T, shape[2] = {rows, T};
    tl_tensor *ids = tl_wrap(ctx, TL_I32, tr->inputs + off, 2, shape);
    tl_tensor *targets = tl_wrap(ctx, TL_I32, tr->targets + off, 2, shape);
    if (!ids || !targets)
        return NULL;
    tl_layer_args args = {.train = true, .routing = TL_ROUTING_DEFAULT};
    tl_model_output out;
    if (tl_model_forward_shard(tr->model, ctx, ids, targets, &args, &out) != TL_OK)
        return NULL;
    struct tl_train_shard_loss *sl = &tr->shard_loss[shard];
    sl->ce = tl_f32(out.ce)[0];
    sl->aux = out.aux ? tl_model_config_of(tr->model)->aux_weight * tl_f32(out.aux)[0] : 0.0;
    sl->done = true;
    return out.loss;
}

/* Forward and backward of the step's batch as data-parallel shards. The
 * shards hold equal rows, so the means of their mean losses are the batch
 * means, which go to *loss and *aux. */
static tl_status shards_forward_backward(tl_trainer *tr, float lr, double *loss, double *aux)
{
    int n = tl_shards_count(tr->shards);
    for (int i = 0; i < n; i++) {
        tl_ctx *c = tl_shards_ctx(tr->shards, i);
        tl_ctx_reset(c);
        tl_ctx_reset_flops(c);
        tr->shard_loss[i] = (struct tl_train_shard_loss){.ce = NAN};
    }
    tl_status st = tl_shards_backward(tr->shards, train_shard_loss, tr, NULL);
    double ce = 0.0, ax = 0.0;
    for (int i = 0; i < n; i++) {
        /* A non-finite loss stops its shard's backward; report it as the step
         * on one context does. */
        const struct tl_train_shard_loss *sl = &tr->shard_loss[i];
        if (sl->done && !isfinite(sl->ce))
            return diverged(tr, "loss", sl->ce, lr);
        if (sl->done && !isfinite(sl->aux))
            return diverged(tr, "auxiliary routing loss", sl->aux, lr);
        ce += sl->ce;
        ax += sl->aux;
    }
    if (st != TL_OK)
        return forward_failed(tr, st, lr);
    *loss = ce / n;
    *aux = ax / n;
    return TL_OK;
}

tl_status tl_trainer_step(tl_trainer *tr)
{
    if (tr->step >= tr->cfg.steps)
        return tl_seterr(TL_ESTATE, "tl_trainer_step: all %lld steps are done",
                         (long long)tr->cfg.steps);
    double t0 = tl_train_now();
    tl_ctx *ctx = tr->ctx;
    tl_ctx_reset(ctx);
    tl_ctx_reset_flops(ctx);
    tl_ctx_set_grad_enabled(ctx, true);
    tl_params_zero_grad(tr->params);

    tl_status st = tl_sampler_next(&tr->sampler, &tr->rng, tr->inputs, tr->targets);
    if (st != TL_OK)
        return st;
    int64_t shape[2] = {tr->cfg.batch_size, tr->cfg.context};
    tl_tensor *ids = tl_wrap(ctx, TL_I32, tr->inputs, 2, shape);
    tl_tensor *targets = tl_wrap(ctx, TL_I32, tr->targets, 2, shape);
    if (!ids || !targets)
        return tl_lasterr();

    bool records = records_due(tr), routing = routing_due(tr);
    float lr = tl_schedule_lr(&tr->cfg.schedule, tr->step);
    double loss = NAN, aux = 0.0;
    /* Steps that record gradients or routing statistics run on one context:
     * the records read the model's layer outputs and the layers' statistics,
     * which exist once. */
    bool sharded = tr->shards && !records && !routing;
    tl_model_output out;
    if (sharded) {
        st = shards_forward_backward(tr, lr, &loss, &aux);
        if (st != TL_OK)
            return st;
    } else {
        tl_layer_args args = {.train = true, .routing = TL_ROUTING_DEFAULT,
                              .collect_stats = routing};
        st = tl_model_forward(tr->model, ctx, ids, targets, &args, &out);
        if (st != TL_OK)
            return forward_failed(tr, st, lr);
        loss = tl_f32(out.ce)[0];
        aux = out.aux ? tl_model_config_of(tr->model)->aux_weight * tl_f32(out.aux)[0] : 0.0;
        if (!isfinite(loss))
            return diverged(tr, "loss", loss, lr);
        if (!isfinite(aux))
            return diverged(tr, "auxiliary routing loss", aux, lr);
        st = tl_backward(ctx, out.loss);
        if (st != TL_OK)
            return st;
    }
    /* Data parallelism averages the gradients of all ranks here, so that
     * logging, clipping and the update see the global gradient. */
    if (tr->cfg.reduce_grads) {
        st = tr->cfg.reduce_grads(tr->params, &loss, tr->cfg.reduce_user);
        if (st != TL_OK)
            return st;
    }
    if (records && (st = tl_train_log_gradients(tr, &out)) != TL_OK)
        return st;
    if (routing && (st = tl_train_log_routing(tr)) != TL_OK)
        return st;
    /* Clipping is folded into the update: the stored gradients stay as they
     * are, one pass over them fewer. */
    double norm = tl_grad_norm(tr->params);
    if (!isfinite(norm))
        return diverged(tr, "gradient norm", norm, lr);
    st = tl_optim_step_scaled(tr->params, &tr->cfg.optim, lr, tr->step + 1,
                              tl_clip_scale(norm, tr->cfg.clip_norm));
    if (st != TL_OK)
        return st;

    double dt = tl_train_now() - t0;
    int64_t tokens = tr->cfg.batch_size * tr->cfg.context * tr->cfg.world;
    double flops = sharded ? tl_shards_flops(tr->shards)
                           : tl_ctx_flops_forward(ctx) + tl_ctx_flops_backward(ctx);
    tr->step++;
    tl_train_stats *s = &tr->stats;
    s->step = tr->step;
    s->tokens += tokens;
    s->loss = loss;
    s->aux_loss = aux;
    s->lr = lr;
    s->grad_norm = norm;
    tr->stats_has_last_step = true;
    s->flops_per_step = flops;
    s->flops_total += flops;
    /* dt ends before the log record below, so a log flush does not count
     * as step time either. */
    tr->window_steps++;
    tr->window_step_s += dt;

    if (tr->log) {
        tl_log_train_record rec = {
            .step = tr->step - 1, .loss = loss, .lr = lr, .grad_norm = norm,
            .tokens_per_s = dt > 0 ? (double)tokens / dt : NAN, .flops = flops,
        };
        st = tl_log_train(tr->log, &rec);
        if (st != TL_OK)
            return st;
    }
    return TL_OK;
}

/* ---- run ------------------------------------------------------------------ */

/* Formats seconds as "1h02m", "3m05s" or "12s". */
static void format_duration(double sec, char *buf, size_t size)
{
    if (!isfinite(sec) || sec < 0) {
        snprintf(buf, size, "?");
        return;
    }
    long s = (long)(sec + 0.5);
    if (s >= 3600)
        snprintf(buf, size, "%ldh%02ldm", s / 3600, (s % 3600) / 60);
    else if (s >= 60)
        snprintf(buf, size, "%ldm%02lds", s / 60, s % 60);
    else
        snprintf(buf, size, "%lds", s);
}

/* Updates throughput, elapsed time and ETA, and starts a new window. The
 * throughput counts only the window's step times, so that evaluation,
 * calibration, checkpoints and callbacks between steps do not lower it. The
 * ETA is wall time: this tl_trainer_run's time per step so far, those pauses
 * included, times the steps left. The elapsed time adds the time before it
 * (elapsed_base). */
static void update_timing(tl_trainer *tr)
{
    tl_train_stats *s = &tr->stats;
    double step_s = tr->window_step_s;
    if (tr->window_steps > 0 && step_s > 0)
        s->tokens_per_s = (double)(tr->window_steps * tr->cfg.batch_size * tr->cfg.context *
                                   tr->cfg.world) / step_s;
    double run_s = tl_train_now() - tr->run_start;
    s->elapsed_s = tr->elapsed_base + run_s;
    int64_t done = s->step - tr->run_start_step;
    s->eta_s = done > 0 ? run_s / (double)done * (double)(s->total - s->step) : NAN;
    tr->window_step_s = 0.0;
    tr->window_steps = 0;
}

static void print_progress(tl_trainer *tr, bool final)
{
    const tl_train_stats *s = &tr->stats;
    char eta[32], line[256];
    format_duration(final ? s->elapsed_s : s->eta_s, eta, sizeof eta);
    int n = snprintf(line, sizeof line, "step %lld/%lld | loss %.4f | lr %.2e | %.0f tok/s | %s %s",
                     (long long)s->step, (long long)s->total, s->loss, s->lr, s->tokens_per_s,
                     final ? "elapsed" : "ETA", eta);
    if (s->eval_step >= 0 && n > 0 && (size_t)n < sizeof line)
        snprintf(line + n, sizeof line - (size_t)n, " | val %.4f", s->eval_loss);
    if (tr->progress_in_place) {
        /* \033[K clears what a longer previous line left behind. */
        fprintf(stderr, "\r%s\033[K%s", line, final ? "\n" : "");
        tr->progress_dirty = !final;
    } else {
        fprintf(stderr, "%s\n", line);
    }
    fflush(stderr);
}

/* Ends an in-place progress line so that the next output starts afresh. */
static void end_progress_line(tl_trainer *tr)
{
    if (tr->progress_dirty) {
        fputc('\n', stderr);
        tr->progress_dirty = false;
    }
}

tl_status tl_trainer_evaluate(tl_trainer *tr, tl_eval_routing routing, tl_eval_result *out)
{
    tl_eval_result res;
    tl_status st = tl_evaluate(tr->ctx, tr->model, &tr->data, tr->cfg.batch_size, tr->cfg.context,
                               tr->cfg.eval_batches, routing, &res);
    if (st != TL_OK)
        return st;
    if (routing == TL_EVAL_TOPK) {
        tr->stats.eval_step = tr->step;
        tr->stats.eval_loss = res.loss;
        tr->stats.eval_perplexity = res.perplexity;
    }
    if (tr->log) {
        tl_log_eval_record rec = {
            .step = tr->step, .split = "val", .loss = res.loss, .perplexity = res.perplexity,
            .bits_per_byte = res.bits_per_byte, .routing_mode = tl_eval_routing_name(routing),
            .selected_fraction = res.selected_fraction,
        };
        st = tl_log_eval(tr->log, &rec);
        if (st != TL_OK)
            return st;
    }
    if (out)
        *out = res;
    return TL_OK;
}

/* Evaluates under top-k and, when the model routes tokens, under the causal
 * threshold and under thresholds calibrated on training batches. The
 * calibration batches come from an RNG seeded by the seed and the step, so a
 * resumed run calibrates on the same batches as an uninterrupted one. */
static tl_status evaluate_all(tl_trainer *tr)
{
    tl_eval_result res;
    tl_status st = tl_trainer_evaluate(tr, TL_EVAL_TOPK, &res);
    if (st != TL_OK || isnan(res.selected_fraction))
        return st;
    st = tl_trainer_evaluate(tr, TL_EVAL_CAUSAL, NULL);
    if (st != TL_OK || tr->cfg.eval_calibration_batches == 0)
        return st;
    tl_rng rng;
    tl_rng_seed(&rng, tr->cfg.seed ^ ((uint64_t)tr->step * 0x9E3779B97F4A7C15ull));
    st = tl_calibrate_thresholds(tr->ctx, tr->model, &tr->data, tr->cfg.batch_size,
                                 tr->cfg.context, tr->cfg.eval_calibration_batches, &rng);
    if (st != TL_OK)
        return st;
    return tl_trainer_evaluate(tr, TL_EVAL_CALIBRATED, NULL);
}

static bool every(int64_t step, int64_t interval)
{
    return interval > 0 && step % interval == 0;
}

/* ---- stopping on a signal ------------------------------------------------ */

/* Written by signal handlers, so a lock-free atomic and a sig_atomic_t. */
static volatile sig_atomic_t tl_interrupt_signal;
static atomic_int tl_runs_interruptible;

void tl_train_interrupt(int signo) { tl_interrupt_signal = signo; }
int tl_train_interrupted(void) { return tl_interrupt_signal; }
void tl_train_interrupt_clear(void) { tl_interrupt_signal = 0; }
int tl_train_running(void) { return atomic_load(&tl_runs_interruptible); }

static const char *signal_name(int signo, char *buf, size_t size)
{
    switch (signo) {
    case SIGINT:
        return "SIGINT";
    case SIGTERM:
        return "SIGTERM";
    case SIGHUP:
        return "SIGHUP";
    default:
        snprintf(buf, size, "signal %d", signo);
        return buf;
    }
}

/* Finishes a run stopped by a recorded signal: saves the checkpoint at the
 * step reached unless it already contains that step, flushes the log, and sets
 * the message of TL_EINTR. */
static tl_status stop_on_signal(tl_trainer *tr, int64_t last_checkpoint)
{
    const tl_train_config *c = &tr->cfg;
    bool leader = c->rank == 0;
    bool trained = tr->step > tr->run_start_step;
    char buf[32];
    const char *sig = signal_name(tl_train_interrupted(), buf, sizeof buf);
    tl_status st = TL_OK;
    if (leader)
        end_progress_line(tr);
    if (leader && trained && tr->checkpoint_path && last_checkpoint != tr->step &&
        (st = tl_trainer_save(tr, tr->checkpoint_path)) != TL_OK)
        return tl_seterr(st, "stopping on %s after step %lld: %s", sig, (long long)tr->step,
                         tl_errmsg());
    if (tr->log && (st = tl_log_flush(tr->log)) != TL_OK)
        return tl_seterr(st, "stopping on %s after step %lld: %s", sig, (long long)tr->step,
                         tl_errmsg());
    if (!trained)
        return tl_seterr(TL_EINTR, "interrupted by %s before step %lld of %lld: this run "
                                   "trained no step",
                         sig, (long long)tr->step + 1, (long long)c->steps);
    char log_part[1024] = "", ckpt_part[1024] = "";
    if (tr->log)
        snprintf(log_part, sizeof log_part, "; the log '%s' contains every step up to there",
                 tr->log_path);
    if (tr->checkpoint_path)
        snprintf(ckpt_part, sizeof ckpt_part,
                 "; the checkpoint '%s' contains step %lld: continue with resume = '%s'",
                 tr->checkpoint_path, (long long)tr->step, tr->checkpoint_path);
    else
        snprintf(ckpt_part, sizeof ckpt_part, "; the run has no checkpoint path, so it cannot "
                                              "be resumed: set checkpoint to make later runs "
                                              "resumable");
    return tl_seterr(TL_EINTR, "interrupted by %s after step %lld of %lld%s%s", sig,
                     (long long)tr->step, (long long)c->steps, log_part, ckpt_part);
}

/* Saves the checkpoint after a failure that came after step tr->step had
 * finished, and adds the outcome to the failure's message, which the run
 * still returns. */
static void save_after_failure(tl_trainer *tr, tl_status failure)
{
    size_t len = strlen(tl_errmsg()) + 1;
    char *message = malloc(len); /* tl_seterr below overwrites the message it formats from */
    if (!message)
        return;
    memcpy(message, tl_errmsg(), len);
    if (tl_trainer_save(tr, tr->checkpoint_path) == TL_OK)
        tl_seterr(failure, "%s; the checkpoint '%s' contains step %lld: continue with "
                           "resume = '%s'",
                  message, tr->checkpoint_path, (long long)tr->step, tr->checkpoint_path);
    else
        tl_seterr(failure, "%s; saving the checkpoint at step %lld failed too: %s", message,
                  (long long)tr->step, tl_errmsg());
    free(message);
}

static tl_status run_steps(tl_trainer *tr, bool interruptible)
{
    const tl_train_config *c = &tr->cfg;
    bool leader = c->rank == 0;
    bool can_eval = tr->data.val != NULL;
    tr->run_start_step = tr->step;
    tr->window_step_s = 0.0;
    tr->window_steps = 0;
    int64_t last_eval = -1, last_checkpoint = tr->step;
    bool stop = false;
    bool step_done = false; /* a failure after the step finished, which a save may keep */
    tl_status st = TL_OK;

    while (tr->step < c->steps && !stop) {
        if (interruptible && tl_train_interrupted())
            return stop_on_signal(tr, last_checkpoint);
        st = tl_trainer_step(tr);
        if (st != TL_OK)
            break;
        bool last = tr->step == c->steps;
        bool progress = leader && c->progress_every > 0 &&
                        (every(tr->step, c->progress_every) || last);
        bool callback = c->callback && (every(tr->step, c->callback_every) || last);
        if (can_eval && every(tr->step, c->eval_every)) {
            if ((st = evaluate_all(tr)) != TL_OK) {
                step_done = true;
                break;
            }
            last_eval = tr->step;
        }
        if (leader && tr->checkpoint_path && every(tr->step, c->checkpoint_every)) {
            if ((st = tl_trainer_save(tr, tr->checkpoint_path)) != TL_OK)
                break;
            last_checkpoint = tr->step;
        }
        if (progress || callback)
            update_timing(tr);
        if (callback) {
            tl_clearerr();
            int r = c->callback(&tr->stats, c->callback_user);
            if (r < 0) {
                st = tl_lasterr() != TL_OK ? tl_lasterr()
                                           : tl_seterr(TL_ESTATE, "the training callback "
                                                                  "stopped the run at step %lld",
                                                       (long long)tr->step);
                step_done = true;
                break;
            }
            stop = r == TL_TRAIN_STOP;
        }
        /* The last step, and a step where the callback stops the run, get
         * the final line after the loop instead. */
        if (progress && !last && !stop)
            print_progress(tr, false);
    }
    if (st != TL_OK) {
        if (leader)
            end_progress_line(tr);
        /* A failed evaluation or callback comes after a finished step, whose
         * weights a checkpoint can keep. A failed step or save keeps the
         * last good checkpoint instead. */
        if (step_done && leader && tr->checkpoint_path && last_checkpoint != tr->step)
            save_after_failure(tr, st);
        return st;
    }

    if (can_eval && last_eval != tr->step && (st = evaluate_all(tr)) != TL_OK)
        return st;
    if (leader && tr->checkpoint_path && last_checkpoint != tr->step &&
        (st = tl_trainer_save(tr, tr->checkpoint_path)) != TL_OK)
        return st;
    if (leader && c->progress_every) {
        update_timing(tr);
        print_progress(tr, true);
    }
    if (tr->log && (st = tl_log_flush(tr->log)) != TL_OK)
        return st;
    return TL_OK;
}

tl_status tl_trainer_run(tl_trainer *tr)
{
    bool interruptible = tr->cfg.world <= 1;
    if (interruptible)
        atomic_fetch_add(&tl_runs_interruptible, 1);
    tr->run_start = tl_train_now();
    tr->running = true;
    tl_status st = run_steps(tr, interruptible);
    tr->elapsed_base += tl_train_now() - tr->run_start;
    tr->running = false;
    if (interruptible)
        atomic_fetch_sub(&tl_runs_interruptible, 1);
    return st;
}
