/* Token routing shared by the routed layers (itt, mod): choosing tokens per
 * sequence, packing them into (B, K, C) with padding, scattering results
 * back, the auxiliary router loss, and routing statistics. */
#ifndef THINKLAB_PLUGIN_ROUTE_H
#define THINKLAB_PLUGIN_ROUTE_H

#include "thinklab/plugin.h"

/* The tokens chosen in one routing decision. Sequence b keeps len[b] tokens
 * in ascending position order, packed into rows [0, len[b]) of a (Kmax, C)
 * slab; rows past len[b] are padding (idx -1). */
typedef struct tl_route {
    int64_t B, T, Kmax;
    int64_t selected;   /* sum of len over the batch */
    bool all;           /* every token of every sequence is chosen */
    tl_tensor *idx;     /* int32 (B*Kmax): row b*T + t of the flattened input, or -1 */
    tl_tensor *pos;     /* int32 (B, Kmax): original positions; padding repeats the last */
    tl_tensor *len;     /* int32 (B) */
    uint8_t *mask;      /* (B*T), 1 where chosen; arena memory */
    uint8_t *topk;      /* (B*T), top-k membership at the configured ratio, or NULL */
    /* Tokens whose threshold decision (score > threshold) equals their top-k
     * membership; -1 when top-k membership was not recorded. */
    int64_t rule_agree;
} tl_route;

/* Chooses tokens from gate scores (B, T). Top-k routing takes the k
 * highest per sequence; causal routing (also used for calibrated routing)
 * takes each token whose gate exceeds threshold, a decision that depends on
 * that token alone. with_topk also records top-k membership at k (for the
 * auxiliary labels) and how many tokens the threshold rule, applied to the
 * scores, puts on the same side as top-k, under either mode. */
tl_status tl_route_select(tl_ctx *ctx, tl_tensor *scores, bool causal, float threshold, int64_t k,
                          bool with_topk, tl_route *out);

/* x (B, T, C) rows at the route -> (B, Kmax, C), zero rows for padding. */
tl_tensor *tl_route_gather(tl_ctx *ctx, const tl_route *r, tl_tensor *x);
/* base (B, T, C) plus src (B, Kmax, C) added at the route's rows. */
tl_tensor *tl_route_scatter_add(tl_ctx *ctx, const tl_route *r, tl_tensor *base, tl_tensor *src);
/* Attention options for a block over the packed tokens: their original
 * positions for RoPE and the mask, and per-sequence lengths. */
tl_attention_opts tl_route_attention(const tl_route *r);
/* Float (B, T, 1) column: 0 at chosen tokens, 1 elsewhere. */
tl_tensor *tl_route_keep_mask(tl_ctx *ctx, const tl_route *r);

/* Mean BCE between logits (B*T) recomputed from a stop-gradient copy of the
 * router input and the top-k labels of r; the caller passes
 * linear(detach(x), w). Adds it to args. */
tl_status tl_route_add_aux(tl_ctx *ctx, const tl_route *r, tl_tensor *logits_detached,
                           tl_layer_args *args);

/* Fills the score statistics, counts and agreement of one step. scores are
 * B*T values; lo and hi give the histogram range (lo == hi picks the
 * observed range). */
void tl_route_step_stats(tl_step_stats *s, const tl_route *r, const float *scores, double lo,
                         double hi);

/* Host buffers for the per-token statistics of up to n_steps decisions. */
typedef struct tl_route_buffers {
    uint8_t *masks;       /* (n_steps, B, T) */
    int32_t *passes;      /* (B, T) */
    float *scores;        /* (n_steps, B, T), NAN until a step records its scores */
    size_t capacity;      /* B*T the buffers hold per step */
    int n_steps;
} tl_route_buffers;

/* Grows the buffers to n_steps decisions of tokens each, then clears masks,
 * sets passes to 1 and scores to NAN. */
tl_status tl_route_buffers_reserve(tl_route_buffers *buf, int n_steps, int64_t tokens);
void tl_route_buffers_free(tl_route_buffers *buf);

/* The threshold a routing mode compares scores against for decision i:
 * causal_threshold under causal routing, thresholds[i] under calibrated
 * routing. Fails under calibrated routing when thresholds[i] is NAN (never
 * calibrated) or calibrated_ratio[i] differs from ratio; layer names the
 * layer kind and step the decision in the message. */
tl_status tl_route_threshold(const char *layer, int step, tl_routing routing,
                             float causal_threshold, const double *thresholds,
                             const double *calibrated_ratio, double ratio, int i, float *out);

/* Validates n thresholds for a layer of n_decisions decisions and copies them
 * into thresholds, recording ratios into calibrated_ratio; NULL values clears
 * every threshold to NAN. */
tl_status tl_route_set_thresholds(const char *layer, double *thresholds,
                                  double *calibrated_ratio, const double *ratios,
                                  int n_decisions, const double *values, int n);

#endif
