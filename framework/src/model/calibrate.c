/* Calibrated routing: collecting router scores under top-k and turning them
 * into one fixed threshold per (layer, routing decision). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../internal.h"
#include "model_internal.h"

/* Whether layer l takes thresholds (the plugin implements the pair). */
static bool tl_layer_calibratable(const tl_model *m, int l)
{
    return m->layers[l].plugin->set_thresholds != NULL;
}

void tl_model_calib_clear(tl_model *m)
{
    tl_calib *c = &m->calib;
    if (c->decisions)
        for (int i = 0; i < m->n_layers * TL_STATS_MAX_STEPS; i++)
            free(c->decisions[i].scores);
    free(c->decisions);
    memset(c, 0, sizeof *c);
}

tl_status tl_model_calibrate_begin(tl_model *m)
{
    tl_model_calib_clear(m);
    size_t n = (size_t)(m->n_layers ? m->n_layers : 1) * TL_STATS_MAX_STEPS;
    m->calib.decisions = calloc(n, sizeof *m->calib.decisions);
    if (!m->calib.decisions)
        return tl_seterr(TL_ENOMEM, "could not allocate calibration state for %d layers",
                         m->n_layers);
    m->calib.active = true;
    return TL_OK;
}

/* Appends n scores to d, growing its buffer geometrically. */
static tl_status tl_calib_append(tl_calib_decision *d, const float *scores, size_t n)
{
    if (d->n + n > d->cap) {
        size_t cap = d->cap ? d->cap : 1024;
        while (cap < d->n + n)
            cap *= 2;
        float *grown = realloc(d->scores, cap * sizeof *grown);
        if (!grown)
            return tl_seterr(TL_ENOMEM, "could not hold %zu calibration scores", cap);
        d->scores = grown;
        d->cap = cap;
    }
    memcpy(d->scores + d->n, scores, n * sizeof *scores);
    d->n += n;
    return TL_OK;
}

/* Appends the scores and counts of layer l's last forward. */
static tl_status tl_calib_collect(tl_model *m, int l)
{
    const tl_model_layer *layer = &m->layers[l];
    const char *name = layer->plugin->header.name;
    tl_routing_stats rs;
    tl_status st = layer->plugin->stats(layer->state, &rs);
    if (st != TL_OK)
        return st;
    double unused[TL_STATS_MAX_STEPS];
    int n_decisions = layer->plugin->thresholds(layer->state, unused, TL_STATS_MAX_STEPS);
    if (rs.n_steps != n_decisions || n_decisions > TL_STATS_MAX_STEPS || (n_decisions && !rs.scores))
        return tl_seterr(TL_EFORMAT, "layer %d (plugin '%s') reported %d routing decisions in "
                                     "its statistics but has %d thresholds, or no scores: fix "
                                     "the plugin",
                         l, name, rs.n_steps, n_decisions);
    size_t tokens = (size_t)(rs.B * rs.T);
    for (int i = 0; i < rs.n_steps; i++) {
        const tl_step_stats *s = &rs.steps[i];
        tl_calib_decision *d = &m->calib.decisions[l * TL_STATS_MAX_STEPS + i];
        if (m->calib.batches == 0)
            d->ratio = s->ratio;
        else if (s->ratio != d->ratio)
            return tl_seterr(TL_ESTATE, "layer %d (plugin '%s') step %d: the ratio changed from "
                                        "%g to %g during calibration; set ratios before "
                                        "tl_model_calibrate_begin()",
                             l, name, s->step, d->ratio, s->ratio);
        d->tokens += s->tokens;
        d->selected += s->selected;
        /* With ratio 0 the router did not run; K = 0 makes theta +INFINITY
         * whatever the scores. */
        if (s->ratio > 0.0) {
            st = tl_calib_append(d, rs.scores + (size_t)i * tokens, tokens);
            if (st != TL_OK)
                return st;
        }
    }
    return TL_OK;
}

tl_status tl_model_calibrate_add(tl_model *m, tl_ctx *ctx, tl_tensor *ids)
{
    if (!m->calib.active)
        return tl_seterr(TL_ESTATE, "tl_model_calibrate_add: no calibration in progress; call "
                                    "tl_model_calibrate_begin() first");
    bool grad_was = tl_ctx_grad_enabled(ctx);
    tl_ctx_set_grad_enabled(ctx, false);
    tl_layer_args args = {.train = false, .routing = TL_ROUTING_TOPK, .collect_stats = true};
    tl_model_output out;
    tl_status st = tl_model_forward(m, ctx, ids, NULL, &args, &out);
    tl_ctx_set_grad_enabled(ctx, grad_was);
    if (st != TL_OK)
        return st;
    for (int l = 0; l < m->n_layers; l++) {
        if (!tl_layer_calibratable(m, l))
            continue;
        st = tl_calib_collect(m, l);
        if (st != TL_OK)
            return st;
    }
    m->calib.batches++;
    return TL_OK;
}

static int tl_float_cmp(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* theta = v(M - K) of the sorted scores (1-based), +INFINITY for K = 0 and
 * -INFINITY for K = M; see model.h. Sorts d->scores in place. */
static tl_status tl_calib_threshold(tl_calib_decision *d, int l, int i, double *theta)
{
    int64_t K = d->selected;
    if (K == 0) {
        *theta = INFINITY;
        return TL_OK;
    }
    int64_t M = (int64_t)d->n;
    if (M != d->tokens || K > M)
        return tl_seterr(TL_EFORMAT, "layer %d step %d: %lld scores for %lld tokens with %lld "
                                     "selected; the plugin's statistics are inconsistent",
                         l, i + 1, (long long)M, (long long)d->tokens, (long long)K);
    if (K == M) {
        *theta = -INFINITY;
        return TL_OK;
    }
    for (int64_t j = 0; j < M; j++)
        if (isnan(d->scores[j]))
            return tl_seterr(TL_EINVAL, "layer %d step %d: a router score is NaN; the "
                                        "model's weights or inputs are not finite",
                             l, i + 1);
    qsort(d->scores, (size_t)M, sizeof *d->scores, tl_float_cmp);
    *theta = d->scores[M - K - 1];
    return TL_OK;
}

tl_status tl_model_calibrate_end(tl_model *m)
{
    if (!m->calib.active)
        return tl_seterr(TL_ESTATE, "tl_model_calibrate_end: no calibration in progress; call "
                                    "tl_model_calibrate_begin() first");
    if (m->calib.batches == 0) {
        tl_model_calib_clear(m);
        return tl_seterr(TL_EINVAL, "tl_model_calibrate_end: no batch was added; call "
                                    "tl_model_calibrate_add() with training batches first");
    }
    tl_status st = TL_OK;
    for (int l = 0; l < m->n_layers && st == TL_OK; l++) {
        if (!tl_layer_calibratable(m, l))
            continue;
        const tl_model_layer *layer = &m->layers[l];
        double theta[TL_STATS_MAX_STEPS];
        int n = layer->plugin->thresholds(layer->state, theta, TL_STATS_MAX_STEPS);
        for (int i = 0; i < n && st == TL_OK; i++)
            st = tl_calib_threshold(&m->calib.decisions[l * TL_STATS_MAX_STEPS + i], l, i,
                                    &theta[i]);
        if (st == TL_OK)
            st = layer->plugin->set_thresholds(layer->state, theta, n);
    }
    tl_model_calib_clear(m);
    return st;
}

tl_status tl_model_calibrate(tl_model *m, tl_ctx *ctx, tl_tensor *const *ids, int n_batches)
{
    if (n_batches < 1 || !ids)
        return tl_seterr(TL_EINVAL, "tl_model_calibrate: n_batches = %d; give at least one "
                                    "batch of training ids",
                         n_batches);
    tl_status st = tl_model_calibrate_begin(m);
    for (int b = 0; b < n_batches && st == TL_OK; b++)
        st = tl_model_calibrate_add(m, ctx, ids[b]);
    if (st != TL_OK) {
        tl_model_calib_clear(m);
        return st;
    }
    return tl_model_calibrate_end(m);
}

tl_status tl_model_thresholds(const tl_model *m, int l, double *out, int max, int *n)
{
    if (l < 0 || l >= m->n_layers)
        return tl_seterr(TL_EINVAL, "layer %d does not exist; the model has %d layers", l,
                         m->n_layers);
    *n = 0;
    if (!tl_layer_calibratable(m, l))
        return TL_OK;
    const tl_model_layer *layer = &m->layers[l];
    *n = layer->plugin->thresholds(layer->state, out, max);
    return TL_OK;
}
