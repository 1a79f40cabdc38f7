/* Gradient-spike analysis: per-layer norms of the attention weight gradients
 * for single held-out sequences, labelled easy or hard. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "thinklab/linalg.h"
#include "train/train_internal.h"

static const char *const MATRICES[TL_LOG_SPIKE_MATRICES] = {"wq", "wk", "wv", "wo"};

static int compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Quantile q of sorted[0..n) with linear interpolation between order
 * statistics (numpy's default). */
static double quantile_sorted(const double *sorted, int64_t n, double q)
{
    double pos = q * (double)(n - 1);
    int64_t lo = (int64_t)floor(pos);
    int64_t hi = lo + 1 < n ? lo + 1 : lo;
    return sorted[lo] + (pos - (double)lo) * (sorted[hi] - sorted[lo]);
}

/* Loss of one sequence on its answer positions, the correctness of their
 * argmax predictions, and backward. */
static tl_status sequence_backward(tl_ctx *ctx, tl_model *model, int32_t *inputs, int32_t *targets,
                                   const tl_spike_config *cfg, double *loss, int *correct)
{
    int64_t T = cfg->seq_len, V = tl_model_config_of(model)->vocab;
    int64_t shape[2] = {1, T};
    tl_tensor *ids = tl_wrap(ctx, TL_I32, inputs, 2, shape);
    tl_tensor *tgt = tl_wrap(ctx, TL_I32, targets, 1, &T);
    tl_tensor *mask = tl_new1(ctx, T);
    if (!ids || !tgt || !mask)
        return tl_lasterr();
    int64_t answer_from = cfg->answer_tokens > 0 ? T - cfg->answer_tokens : 0;
    for (int64_t i = 0; i < T; i++)
        tl_f32(mask)[i] = i >= answer_from ? 1.0f : 0.0f;

    tl_layer_args args = {
        .train = false,
        .routing = cfg->routing == TL_EVAL_CAUSAL       ? TL_ROUTING_CAUSAL
                   : cfg->routing == TL_EVAL_CALIBRATED ? TL_ROUTING_CALIBRATED
                                                        : TL_ROUTING_TOPK,
    };
    tl_model_output mo;
    tl_status st = tl_model_forward(model, ctx, ids, NULL, &args, &mo);
    if (st != TL_OK)
        return st;
    int64_t flat[2] = {T, V};
    tl_tensor *logits = tl_reshape(ctx, mo.logits, 2, flat);
    tl_tensor *ce = tl_cross_entropy(ctx, logits, tgt, mask, NULL);
    if (!ce)
        return tl_lasterr();
    *loss = tl_f32(ce)[0];

    *correct = 1;
    const float *lg = tl_f32(mo.logits);
    for (int64_t i = answer_from; i < T; i++) {
        const float *row = lg + i * V;
        int64_t best = 0;
        for (int64_t v = 1; v < V; v++)
            if (row[v] > row[best])
                best = v;
        if (best != targets[i])
            *correct = 0;
    }
    return tl_backward(ctx, ce);
}

/* Norms of layer l's four attention gradients; NaN for a matrix the layer
 * does not have. */
static tl_status layer_norms(tl_params *p, int l, double *nuc, double *fro, double *msv)
{
    for (int k = 0; k < TL_LOG_SPIKE_MATRICES; k++) {
        char name[64];
        snprintf(name, sizeof name, "layers.%d.attn.%s", l, MATRICES[k]);
        tl_tensor *w = tl_params_find(p, name);
        if (!w || w->ndim != 2 || !w->grad) {
            nuc[k] = fro[k] = msv[k] = NAN;
            continue;
        }
        tl_status st = tl_matrix_norms(w->grad, w->shape[0], w->shape[1], &nuc[k], &fro[k],
                                       &msv[k]);
        if (st != TL_OK)
            return st;
    }
    return TL_OK;
}

tl_status tl_spike_analysis(tl_ctx *ctx, tl_model *model, const tl_train_data *data,
                            const tl_spike_config *cfg, tl_log *log, double *nuclear,
                            double *frobenius, double *max_sv, tl_spike_sequence *seqs)
{
    if (!ctx || !model || !data || !cfg)
        return tl_seterr(TL_EINVAL, "tl_spike_analysis: ctx, model, data and cfg must be given");
    if (!data->val || !data->val->ids)
        return tl_seterr(TL_EINVAL, "tl_spike_analysis: held-out sequences come from the "
                                    "validation split, which is missing");
    const tl_model_config *mc = tl_model_config_of(model);
    if (cfg->n_sequences < 1 || cfg->seq_len < 1 || cfg->seq_len > mc->context ||
        cfg->answer_tokens < 0 || cfg->answer_tokens > cfg->seq_len)
        return tl_seterr(TL_EINVAL, "tl_spike_analysis: need n_sequences >= 1 (got %lld), "
                                    "seq_len in [1, %lld] (got %lld) and answer_tokens in "
                                    "[0, seq_len] (got %lld)", (long long)cfg->n_sequences,
                         (long long)mc->context, (long long)cfg->seq_len,
                         (long long)cfg->answer_tokens);
    if (!(cfg->hard_quantile >= 0 && cfg->hard_quantile <= 1))
        return tl_seterr(TL_EINVAL, "tl_spike_analysis: hard_quantile %g must lie in [0, 1]",
                         cfg->hard_quantile);
    double easy_q = cfg->easy_quantile == 0 ? cfg->hard_quantile : cfg->easy_quantile;
    if (!(easy_q >= 0 && easy_q <= cfg->hard_quantile))
        return tl_seterr(TL_EINVAL, "tl_spike_analysis: easy_quantile %g must lie in [0, "
                                    "hard_quantile %g]; 0 takes hard_quantile",
                         cfg->easy_quantile, cfg->hard_quantile);
    if ((unsigned)cfg->routing >= TL_EVAL_ROUTING_COUNT)
        return tl_seterr(TL_EINVAL, "tl_spike_analysis: routing mode %d is unknown",
                         (int)cfg->routing);

    tl_eval_iter it;
    tl_status st = tl_eval_iter_init(&it, data->val, 1, (int)cfg->seq_len, 0, 1,
                                     cfg->n_sequences);
    if (st != TL_OK)
        return st;
    if (it.n_windows < cfg->n_sequences)
        return tl_seterr(TL_EINVAL, "tl_spike_analysis: the validation split holds %lld "
                                    "sequences of %lld tokens, fewer than n_sequences %lld",
                         (long long)it.n_windows, (long long)cfg->seq_len,
                         (long long)cfg->n_sequences);

    int L = tl_model_n_layers(model);
    int64_t M = cfg->n_sequences;
    size_t cells = (size_t)M * (size_t)L * TL_LOG_SPIKE_MATRICES;
    double *nuc = malloc(cells * sizeof *nuc), *fro = malloc(cells * sizeof *fro);
    double *msv = malloc(cells * sizeof *msv), *losses = malloc((size_t)M * sizeof *losses);
    double *sorted = malloc((size_t)M * sizeof *sorted);
    int *correct = malloc((size_t)M * sizeof *correct);
    int32_t *inputs = malloc((size_t)cfg->seq_len * sizeof *inputs);
    int32_t *targets = malloc((size_t)cfg->seq_len * sizeof *targets);
    if (!nuc || !fro || !msv || !losses || !sorted || !correct || !inputs || !targets) {
        st = tl_seterr(TL_ENOMEM, "no memory for the gradient-spike analysis of %lld sequences",
                       (long long)M);
        goto out;
    }

    tl_params *p = tl_model_params(model);
    bool grad_was = tl_ctx_grad_enabled(ctx);
    tl_ctx_set_grad_enabled(ctx, true);
    for (int64_t s = 0; s < M && st == TL_OK; s++) {
        int rows = 0;
        if (!tl_eval_iter_next(&it, inputs, targets, &rows) || rows != 1) {
            st = tl_seterr(TL_ESTATE, "tl_spike_analysis: the validation iterator ended at "
                                      "sequence %lld", (long long)s);
            break;
        }
        tl_ctx_reset(ctx);
        tl_params_zero_grad(p);
        st = sequence_backward(ctx, model, inputs, targets, cfg, &losses[s], &correct[s]);
        for (int l = 0; l < L && st == TL_OK; l++) {
            size_t at = ((size_t)s * (size_t)L + (size_t)l) * TL_LOG_SPIKE_MATRICES;
            st = layer_norms(p, l, nuc + at, fro + at, msv + at);
        }
    }
    tl_ctx_reset(ctx);
    tl_params_zero_grad(p);
    tl_ctx_set_grad_enabled(ctx, grad_was);
    if (st != TL_OK)
        goto out;

    memcpy(sorted, losses, (size_t)M * sizeof *sorted);
    qsort(sorted, (size_t)M, sizeof *sorted, compare_double);
    double hard_from = quantile_sorted(sorted, M, cfg->hard_quantile);
    double easy_to = quantile_sorted(sorted, M, easy_q);

    if (log) {
        st = tl_log_spikes_init(log, L, easy_q, cfg->hard_quantile);
        for (int64_t s = 0; s < M && st == TL_OK; s++) {
            size_t at = (size_t)s * (size_t)L * TL_LOG_SPIKE_MATRICES;
            tl_log_spike_record rec = {
                .step = cfg->step, .sequence = s, .loss = losses[s], .correct = correct[s],
                .nuclear = nuc + at, .frobenius = fro + at, .max_sv = msv + at,
            };
            st = tl_log_spike(log, &rec);
        }
        if (st == TL_OK)
            st = tl_log_flush(log);
        if (st != TL_OK)
            goto out;
    }
    if (nuclear)
        memcpy(nuclear, nuc, cells * sizeof *nuc);
    if (frobenius)
        memcpy(frobenius, fro, cells * sizeof *fro);
    if (max_sv)
        memcpy(max_sv, msv, cells * sizeof *msv);
    for (int64_t s = 0; seqs && s < M; s++)
        seqs[s] = (tl_spike_sequence){
            /* As label_by_loss: easy at or below easy_to, hard at or above
             * hard_from unless easy. */
            .loss = losses[s], .correct = correct[s],
            .hard = losses[s] > easy_to && losses[s] >= hard_from, .easy = losses[s] <= easy_to,
        };

out:
    free(nuc);
    free(fro);
    free(msv);
    free(losses);
    free(sorted);
    free(correct);
    free(inputs);
    free(targets);
    return st;
}
