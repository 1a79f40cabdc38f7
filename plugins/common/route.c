/* Token routing shared by the routed layers. */
#include "route.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "thinklab/ops.h"

tl_status tl_route_select(tl_ctx *ctx, tl_tensor *scores, bool causal, float threshold, int64_t k,
                          bool with_topk, tl_route *out)
{
    memset(out, 0, sizeof *out);
    if (!scores)
        return tl_lasterr();
    int64_t B = scores->shape[0], T = scores->shape[1];
    out->B = B;
    out->T = T;
    const float *s = tl_f32(scores);
    out->mask = tl_ctx_alloc(ctx, (size_t)(B * T));
    if (!out->mask)
        return tl_lasterr();
    memset(out->mask, 0, (size_t)(B * T));

    uint8_t *topk = NULL;
    if ((with_topk || !causal) && k > 0) {
        tl_tensor *chosen = tl_topk(ctx, scores, k);
        topk = tl_ctx_alloc(ctx, (size_t)(B * T));
        if (!chosen || !topk)
            return tl_lasterr();
        memset(topk, 0, (size_t)(B * T));
        for (int64_t b = 0; b < B; b++)
            for (int64_t j = 0; j < k; j++)
                topk[b * T + tl_i32(chosen)[b * k + j]] = 1;
    } else if (with_topk || !causal) {
        topk = tl_ctx_alloc(ctx, (size_t)(B * T));
        if (!topk)
            return tl_lasterr();
        memset(topk, 0, (size_t)(B * T));
    }
    out->topk = with_topk ? topk : NULL;

    if (causal) {
        for (int64_t i = 0; i < B * T; i++)
            out->mask[i] = s[i] > threshold;
    } else {
        memcpy(out->mask, topk, (size_t)(B * T));
    }
    /* Agreement of the threshold rule with top-k membership. Under top-k
     * with the auxiliary loss the mask is top-k itself, so the rule is
     * evaluated here rather than compared with the mask: it tells whether
     * the router would already pick the same tokens causally. */
    out->rule_agree = -1;
    if (with_topk) {
        out->rule_agree = 0;
        for (int64_t i = 0; i < B * T; i++)
            out->rule_agree += (uint8_t)(s[i] > threshold) == topk[i];
    }

    out->len = tl_new(ctx, TL_I32, 1, (int64_t[]){B});
    if (!out->len)
        return tl_lasterr();
    int64_t Kmax = 0;
    for (int64_t b = 0; b < B; b++) {
        int32_t n = 0;
        for (int64_t t = 0; t < T; t++)
            n += out->mask[b * T + t];
        tl_i32(out->len)[b] = n;
        out->selected += n;
        Kmax = n > Kmax ? n : Kmax;
    }
    out->Kmax = Kmax;
    out->all = out->selected == B * T;
    if (Kmax == 0)
        return TL_OK;

    out->idx = tl_new(ctx, TL_I32, 1, (int64_t[]){B * Kmax});
    out->pos = tl_new(ctx, TL_I32, 2, (int64_t[]){B, Kmax});
    if (!out->idx || !out->pos)
        return tl_lasterr();
    for (int64_t b = 0; b < B; b++) {
        int64_t j = 0;
        int32_t last = 0;
        for (int64_t t = 0; t < T; t++) {
            if (!out->mask[b * T + t])
                continue;
            tl_i32(out->idx)[b * Kmax + j] = (int32_t)(b * T + t);
            tl_i32(out->pos)[b * Kmax + j] = (int32_t)t;
            last = (int32_t)t;
            j++;
        }
        /* Padding keeps positions non-decreasing; the lengths mask it. */
        for (; j < Kmax; j++) {
            tl_i32(out->idx)[b * Kmax + j] = -1;
            tl_i32(out->pos)[b * Kmax + j] = last;
        }
    }
    return TL_OK;
}

tl_tensor *tl_route_gather(tl_ctx *ctx, const tl_route *r, tl_tensor *x)
{
    if (!x)
        return NULL;
    int64_t C = tl_cols(x);
    tl_tensor *flat = tl_reshape(ctx, x, 2, (int64_t[]){r->B * r->T, C});
    tl_tensor *rows = tl_gather_rows(ctx, flat, r->idx);
    return tl_reshape(ctx, rows, 3, (int64_t[]){r->B, r->Kmax, C});
}

tl_tensor *tl_route_scatter_add(tl_ctx *ctx, const tl_route *r, tl_tensor *base, tl_tensor *src)
{
    if (!base || !src)
        return NULL;
    int64_t C = tl_cols(base);
    tl_tensor *flat = tl_reshape(ctx, base, 2, (int64_t[]){r->B * r->T, C});
    tl_tensor *rows = tl_reshape(ctx, src, 2, (int64_t[]){r->B * r->Kmax, C});
    tl_tensor *sum = tl_scatter_add_rows(ctx, flat, r->idx, rows);
    return tl_reshape(ctx, sum, 3, (int64_t[]){r->B, r->T, C});
}

tl_attention_opts tl_route_attention(const tl_route *r)
{
    return (tl_attention_opts){.q_pos = r->pos, .k_pos = r->pos, .q_len = r->len, .k_len = r->len};
}

tl_tensor *tl_route_keep_mask(tl_ctx *ctx, const tl_route *r)
{
    tl_tensor *keep = tl_new3(ctx, r->B, r->T, 1);
    if (!keep)
        return NULL;
    for (int64_t i = 0; i < r->B * r->T; i++)
        tl_f32(keep)[i] = r->mask[i] ? 0.0f : 1.0f;
    return keep;
}

tl_status tl_route_add_aux(tl_ctx *ctx, const tl_route *r, tl_tensor *logits_detached,
                           tl_layer_args *args)
{
    if (!logits_detached)
        return tl_lasterr();
    int64_t n = r->B * r->T;
    tl_tensor *labels = tl_new1(ctx, n);
    if (!labels)
        return tl_lasterr();
    for (int64_t i = 0; i < n; i++)
        tl_f32(labels)[i] = r->topk ? (float)r->topk[i] : 0.0f;
    tl_tensor *flat = tl_reshape(ctx, logits_detached, 1, (int64_t[]){n});
    return tl_layer_args_add_aux(ctx, args, tl_bce_logits(ctx, flat, labels));
}

void tl_route_step_stats(tl_step_stats *s, const tl_route *r, const float *scores, double lo,
                         double hi)
{
    int64_t n = r->B * r->T;
    s->tokens = n;
    s->selected = r->selected;
    s->fraction = n ? (double)r->selected / (double)n : 0.0;
    s->skipped = r->selected == 0;

    double sum = 0.0, sq = 0.0, mn = INFINITY, mx = -INFINITY;
    for (int64_t i = 0; i < n; i++) {
        double v = scores ? scores[i] : 1.0;
        sum += v;
        mn = fmin(mn, v);
        mx = fmax(mx, v);
    }
    s->score_mean = n ? sum / (double)n : 0.0;
    for (int64_t i = 0; i < n; i++) {
        double d = (scores ? scores[i] : 1.0) - s->score_mean;
        sq += d * d;
    }
    s->score_std = n > 1 ? sqrt(sq / (double)n) : 0.0;

    if (lo == hi) {
        lo = n ? mn : 0.0;
        hi = n ? mx : 1.0;
        if (hi <= lo)
            hi = lo + 1.0;
    }
    s->hist_lo = lo;
    s->hist_hi = hi;
    memset(s->hist, 0, sizeof s->hist);
    for (int64_t i = 0; i < n; i++) {
        double v = scores ? scores[i] : 1.0;
        int bin = (int)floor((v - lo) / (hi - lo) * TL_STATS_BINS);
        bin = bin < 0 ? 0 : bin >= TL_STATS_BINS ? TL_STATS_BINS - 1 : bin;
        s->hist[bin]++;
    }

    s->topk_agreement = -1.0;
    if (r->rule_agree >= 0)
        s->topk_agreement = n ? (double)r->rule_agree / (double)n : 1.0;
}

tl_status tl_route_buffers_reserve(tl_route_buffers *buf, int n_steps, int64_t tokens)
{
    size_t need = (size_t)tokens;
    if (need > buf->capacity || n_steps > buf->n_steps) {
        int steps = n_steps > buf->n_steps ? n_steps : buf->n_steps;
        size_t cap = need > buf->capacity ? need : buf->capacity;
        uint8_t *m = realloc(buf->masks, (size_t)(steps ? steps : 1) * cap);
        if (!m)
            return tl_seterr(TL_ENOMEM, "could not allocate routing statistics for %zu tokens",
                             cap);
        buf->masks = m;
        int32_t *p = realloc(buf->passes, cap * sizeof *p);
        if (!p)
            return tl_seterr(TL_ENOMEM, "could not allocate routing statistics for %zu tokens",
                             cap);
        buf->passes = p;
        float *sc = realloc(buf->scores, (size_t)(steps ? steps : 1) * cap * sizeof *sc);
        if (!sc)
            return tl_seterr(TL_ENOMEM, "could not allocate routing statistics for %zu tokens",
                             cap);
        buf->scores = sc;
        buf->capacity = cap;
        buf->n_steps = steps;
    }
    memset(buf->masks, 0, (size_t)buf->n_steps * buf->capacity);
    for (size_t i = 0; i < need; i++)
        buf->passes[i] = 1;
    for (size_t i = 0; i < (size_t)buf->n_steps * buf->capacity; i++)
        buf->scores[i] = NAN;
    return TL_OK;
}

void tl_route_buffers_free(tl_route_buffers *buf)
{
    free(buf->masks);
    free(buf->passes);
    free(buf->scores);
    memset(buf, 0, sizeof *buf);
}

tl_status tl_route_threshold(const char *layer, int step, tl_routing routing,
                             float causal_threshold, const double *thresholds,
                             const double *calibrated_ratio, double ratio, int i, float *out)
{
    if (routing != TL_ROUTING_CALIBRATED) {
        *out = causal_threshold;
        return TL_OK;
    }
    if (isnan(thresholds[i]))
        return tl_seterr(TL_ESTATE, "%s step %d: calibrated routing needs a threshold and none is "
                                    "set; run tl_model_calibrate() on training batches first",
                         layer, step);
    if (calibrated_ratio[i] != ratio)
        return tl_seterr(TL_ESTATE, "%s step %d: the threshold was calibrated at ratio %g, but the "
                                    "ratio is now %g; run tl_model_calibrate() again",
                         layer, step, calibrated_ratio[i], ratio);
    /* Thresholds are order statistics of float scores, so the conversion is
     * exact (and keeps +-INFINITY). */
    *out = (float)thresholds[i];
    return TL_OK;
}

tl_status tl_route_set_thresholds(const char *layer, double *thresholds,
                                  double *calibrated_ratio, const double *ratios,
                                  int n_decisions, const double *values, int n)
{
    if (!values) {
        for (int i = 0; i < n_decisions; i++)
            thresholds[i] = NAN;
        return TL_OK;
    }
    if (n != n_decisions)
        return tl_seterr(TL_EINVAL, "%s: %d thresholds given, the layer has %d routing decisions",
                         layer, n, n_decisions);
    for (int i = 0; i < n; i++)
        if (isnan(values[i]))
            return tl_seterr(TL_EINVAL, "%s: threshold %d is NaN; give a number, or NULL to "
                                        "clear every threshold",
                             layer, i + 1);
    for (int i = 0; i < n; i++) {
        thresholds[i] = values[i];
        calibrated_ratio[i] = ratios[i];
    }
    return TL_OK;
}
