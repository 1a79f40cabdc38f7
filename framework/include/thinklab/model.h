/* The language model: token embedding, a stack of plugin layers, final norm,
 * output head, and next-token cross-entropy plus the auxiliary routing loss.
 *
 * Parameter names: tok_emb (V, C); pos_emb (context, C) in GPT-2 style;
 * layers.<l>.<...> registered by each layer's plugin (for a block:
 * layers.3.attn.wq, layers.3.mlp.w1, ...; for routers: layers.3.router.1);
 * final_norm (C); head (V, C) when the head is not tied to tok_emb. */
#ifndef THINKLAB_MODEL_H
#define THINKLAB_MODEL_H

#include "thinklab/plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One layer: the plugin that builds it (a name or a path) and its settings. */
typedef struct tl_layer_spec {
    const char *plugin;
    const tl_opt_setting *options;
    int n_options;
} tl_layer_spec;

typedef struct tl_model_config {
    int64_t vocab;         /* V */
    int64_t d_model;       /* C */
    int n_head;            /* H */
    int64_t context;       /* maximum T; sizes pos_emb in GPT-2 style */
    int64_t d_ff;          /* MLP width; 0 picks the style's default */
    tl_block_style style;  /* LLaMA: RMSNorm, RoPE, SwiGLU; GPT-2: LayerNorm, pos_emb, GELU */
    float norm_eps;        /* 1e-5 */
    tl_rope_pairing rope;  /* LLaMA style only; GPT-2 uses no rotary embedding */
    float rope_base;       /* 10000 */
    float init_std;        /* 0.02 for embeddings, matrices and the head */
    bool scaled_init;      /* output projections at init_std / sqrt(2 * n_layers) */
    int tie_head;          /* -1: tied in GPT-2 style, untied in LLaMA style; 0 untied; 1 tied */
    float aux_weight;      /* lambda multiplying the sum of auxiliary routing losses; 0.01 */
    int n_layers;          /* L */
    /* L layer specs; NULL makes every layer a "transformer" with defaults. */
    const tl_layer_spec *layers;
} tl_model_config;

/* Defaults for style: eps 1e-5, interleaved RoPE with base 10000 (LLaMA),
 * init 0.02 with scaled output projections, head tied by style, lambda 0.01,
 * and n_layers transformer layers. */
tl_model_config tl_model_config_default(tl_block_style style, int64_t vocab, int64_t d_model,
                                        int n_head, int64_t context, int n_layers);

typedef struct tl_model tl_model;

/* Loads each layer's plugin, validates its options, registers every parameter
 * and initialises them from rng. Returns NULL with a message naming the layer
 * and the setting at fault. */
tl_model *tl_model_new(const tl_model_config *cfg, tl_rng *rng);
/* Destroys the layers, then unloads their plugins. */
void tl_model_free(tl_model *m);

const tl_model_config *tl_model_config_of(const tl_model *m);
tl_params *tl_model_params(tl_model *m);
int tl_model_n_layers(const tl_model *m);
/* Name of the plugin that built layer l (its descriptor's name). */
const char *tl_model_layer_plugin(const tl_model *m, int l);
/* Resolved options of layer l (defaults overridden by its settings), or NULL
 * for an invalid l. Valid while the model lives. */
const tl_opt_table *tl_model_layer_options(const tl_model *m, int l);

typedef struct tl_model_output {
    tl_tensor *logits;     /* (B, T, V) */
    tl_tensor *ce;         /* (1), mean next-token cross-entropy; NULL without targets */
    tl_tensor *aux;        /* (1), unweighted sum of auxiliary terms; NULL if none */
    int n_aux_terms;       /* routing decisions that added a term */
    tl_tensor *loss;       /* (1), ce + aux_weight * aux; NULL without targets */
    tl_tensor *token_loss; /* (B*T) per-token cross-entropy, no gradient */
} tl_model_output;

/* Runs the model on int32 ids (B, T), T <= context. targets (B, T) may be
 * NULL (logits only). args sets training mode, the routing override and
 * statistics; NULL means evaluation with configured routing and no
 * statistics. Layer outputs stay readable through tl_model_hidden() until
 * the context is reset. */
tl_status tl_model_forward(tl_model *m, tl_ctx *ctx, tl_tensor *ids, tl_tensor *targets,
                           const tl_layer_args *args, tl_model_output *out);

/* Output h_l (B, T, C) of layer l in the last forward, or the embedding
 * output for l = -1. After tl_backward its grad contains dL/dh_l per token. */
tl_tensor *tl_model_hidden(const tl_model *m, int l);

/* Routing statistics of layer l from the last forward that collected them
 * (n_steps 0 for layers without routing). */
tl_status tl_model_layer_stats(const tl_model *m, int l, tl_routing_stats *out);

/* Elastic inference: replaces the ratios of layer l (TL_EINVAL for layers
 * without ratios, or a wrong count). One ratio (n = 1) sets every routed
 * step of an ITT layer. */
tl_status tl_model_set_ratios(tl_model *m, int l, const double *ratios, int n);

/* ---- calibrated routing ---------------------------------------------------- */

/* Calibrated routing (TL_ROUTING_CALIBRATED in tl_layer_args.routing) chooses a
 * token when its router score is strictly greater than a fixed threshold theta
 * per (layer, routing decision), a rule that depends on the token alone and
 * therefore is causal. Calibration sets theta from top-k forwards over
 * training batches, so that evaluating with it separates the cost of a wrong
 * selected fraction from the gain top-k takes from later tokens.
 *
 * Quantile definition: for one decision, let v(1) <= ... <= v(M) be the M
 * scores of every token of every calibration batch, and K the number of those
 * tokens top-k chose (ceil(rho T) per sequence, so K / M is rho whenever rho T
 * is an integer). Then theta = v(M - K), the lower empirical (1 - K/M)
 * quantile (numpy's quantile(v, 1 - K/M, method="inverted_cdf")), so that
 * exactly K scores exceed it unless v(M - K) = v(M - K + 1). K = 0 (rho = 0)
 * gives theta = +INFINITY, K = M gives -INFINITY.
 *
 * Scores are what tl_routing_stats.scores holds: the gate s (sigmoid or tanh)
 * for itt, the raw logit for mod. Decisions of an itt step see the state that
 * earlier decisions produced, so only the first routed decision of the model
 * sees the same scores under calibrated routing as during calibration; later
 * decisions realise a fraction near, not equal to, rho.
 *
 * Thresholds are derived state and checkpoints do not hold them: calibrate
 * again after loading a model, after training it further, and after
 * tl_model_set_ratios() (a calibrated forward rejects thresholds calibrated at
 * other ratios, naming the layer and step). */

/* Starts a calibration: drops scores collected earlier. Existing thresholds
 * stay in force until tl_model_calibrate_end(). */
tl_status tl_model_calibrate_begin(tl_model *m);
/* Runs a top-k evaluation forward on ids (int32 (B, T)) with gradients
 * disabled, and appends the router scores of every routed decision. The
 * forward's tensors stay in ctx, so the caller may tl_ctx_reset(ctx)
 * between calls; the layers' routing statistics now describe this
 * forward. */
tl_status tl_model_calibrate_add(tl_model *m, tl_ctx *ctx, tl_tensor *ids);
/* Computes every threshold from the collected scores as defined above, sets
 * them in the layers, and frees the scores. Fails when no batch was added. */
tl_status tl_model_calibrate_end(tl_model *m);
/* Begin, add each of n_batches batches in ids, end. The batches' forwards
 * all stay in ctx; for more data than ctx should hold, call the three steps
 * with a tl_ctx_reset() between batches. */
tl_status tl_model_calibrate(tl_model *m, tl_ctx *ctx, tl_tensor *const *ids, int n_batches);

/* Writes the thresholds of layer l into out (up to max values, NAN for a
 * decision not calibrated) and its number of routing decisions into *n:
 * itt steps - 1, mod 1, 0 for layers without routing. out[i] belongs to
 * the decision that tl_routing_stats numbers steps[i]. */
tl_status tl_model_thresholds(const tl_model *m, int l, double *out, int max, int *n);

/* Parameters whose names start with "layers.<l>.", and all parameters. */
int64_t tl_model_layer_param_count(const tl_model *m, int l);
int64_t tl_model_param_count(const tl_model *m);

/* Nominal forward FLOPs per token for sequences of T tokens at the current
 * ratios under top-k routing: embeddings are free, then the layers, final
 * norm and head (2 per multiply-add). */
double tl_model_flops_per_token(const tl_model *m, int64_t T);
double tl_model_layer_flops_per_token(const tl_model *m, int l, int64_t T);
/* Forward FLOPs the ops counted in the last forward, per token, for the
 * whole model and for layer l; under causal routing this is what the
 * realised selection cost. */
double tl_model_flops_performed_per_token(const tl_model *m);
double tl_model_layer_flops_performed_per_token(const tl_model *m, int l);

/* ---- dense baselines ---------------------------------------------------------- */

/* Parameter count of cfg when every layer is a dense transformer block,
 * computed without building the model. */
int64_t tl_dense_param_count(const tl_model_config *cfg);

typedef enum tl_match_by { TL_MATCH_WIDTH, TL_MATCH_DEPTH, TL_MATCH_COUNT } tl_match_by;

/* Sizes a dense baseline: copies dense into out and changes d_model or
 * n_layers (chosen by by) so that tl_dense_param_count(out) is closest to
 * target. Widths are multiples of width_multiple, which must be a multiple
 * of 2 * n_head so that head sizes stay even; 0 picks 2 * n_head.
 * out->layers is set to NULL (all transformer layers). */
tl_status tl_dense_match(const tl_model_config *dense, int64_t target, tl_match_by by,
                         int64_t width_multiple, tl_model_config *out);

#ifdef __cplusplus
}
#endif
#endif
