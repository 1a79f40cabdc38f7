/* Parameter and FLOP counts, and sizing a dense baseline to a parameter
 * budget. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../internal.h"
#include "model_internal.h"

int64_t tl_model_layer_param_count(const tl_model *m, int l)
{
    char prefix[32];
    int len = snprintf(prefix, sizeof prefix, "layers.%d.", l);
    int64_t n = 0;
    for (size_t i = 0; i < tl_params_count(m->params); i++) {
        const tl_tensor *t = tl_params_at(m->params, i);
        if (strncmp(t->name, prefix, (size_t)len) == 0)
            n += tl_numel(t);
    }
    return n;
}

int64_t tl_model_param_count(const tl_model *m) { return tl_params_numel(m->params); }

double tl_model_layer_flops_per_token(const tl_model *m, int l, int64_t T)
{
    if (l < 0 || l >= m->n_layers)
        return 0.0;
    return m->layers[l].plugin->flops_per_token(m->layers[l].state, T);
}

/* Final norm (about 4 FLOPs per channel, an estimate) and the head matmul. */
static double tl_model_head_flops(const tl_model_config *cfg)
{
    return 4.0 * (double)cfg->d_model + 2.0 * (double)cfg->d_model * (double)cfg->vocab;
}

double tl_model_flops_per_token(const tl_model *m, int64_t T)
{
    double f = tl_model_head_flops(&m->cfg);
    if (m->pos_emb)
        f += (double)m->cfg.d_model; /* adding positions */
    for (int l = 0; l < m->n_layers; l++)
        f += tl_model_layer_flops_per_token(m, l, T);
    return f;
}

double tl_model_flops_performed_per_token(const tl_model *m)
{
    return m->tokens > 0 ? m->flops / (double)m->tokens : 0.0;
}

double tl_model_layer_flops_performed_per_token(const tl_model *m, int l)
{
    if (l < 0 || l >= m->n_layers || m->tokens <= 0)
        return 0.0;
    return m->layer_flops[l] / (double)m->tokens;
}

int64_t tl_dense_param_count(const tl_model_config *cfg)
{
    tl_block_config b;
    if (tl_model_block_config(cfg, &b) != TL_OK)
        return -1;
    int64_t V = cfg->vocab, C = cfg->d_model;
    int64_t n = V * C + C; /* tok_emb, final_norm */
    if (cfg->style == TL_BLOCK_GPT2)
        n += cfg->context * C;
    if (!tl_model_tied(cfg))
        n += V * C;
    return n + (int64_t)cfg->n_layers * tl_block_param_count(&b);
}

tl_status tl_dense_match(const tl_model_config *dense, int64_t target, tl_match_by by,
                         int64_t width_multiple, tl_model_config *out)
{
    if (target <= 0)
        return tl_seterr(TL_EINVAL, "dense match: target parameter count %lld must be positive",
                         (long long)target);
    if (dense->n_head < 1)
        return tl_seterr(TL_EINVAL, "dense match: n_head = %d must be positive", dense->n_head);
    int64_t step = width_multiple ? width_multiple : 2 * (int64_t)dense->n_head;
    if (step <= 0 || step % (2 * dense->n_head) != 0)
        return tl_seterr(TL_EINVAL, "dense match: width multiple %lld must be a positive "
                                    "multiple of 2 * n_head = %d",
                         (long long)step, 2 * dense->n_head);
    tl_model_config c = *dense;
    c.layers = NULL;
    int64_t best_err = -1;
    tl_model_config best = c;

    if (by == TL_MATCH_WIDTH) {
        /* The count grows with C (quadratically through the blocks), so scan
         * widths upward until it passes the target. */
        for (int64_t C = step;; C += step) {
            c.d_model = C;
            int64_t n = tl_dense_param_count(&c);
            if (n < 0)
                return tl_lasterr();
            int64_t err = llabs(n - target);
            if (best_err < 0 || err < best_err) {
                best_err = err;
                best = c;
            }
            if (n > target)
                break;
        }
    } else if (by == TL_MATCH_DEPTH) {
        for (int L = 1;; L++) {
            c.n_layers = L;
            int64_t n = tl_dense_param_count(&c);
            if (n < 0)
                return tl_lasterr();
            int64_t err = llabs(n - target);
            if (best_err < 0 || err < best_err) {
                best_err = err;
                best = c;
            }
            if (n > target || L >= 1 << 16)
                break;
        }
    } else {
        return tl_seterr(TL_EINVAL, "dense match: 'by' = %d is invalid; use TL_MATCH_WIDTH or "
                                    "TL_MATCH_DEPTH",
                         (int)by);
    }
    *out = best;
    return TL_OK;
}
