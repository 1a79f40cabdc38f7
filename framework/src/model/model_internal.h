/* The model's private state, shared by the files under src/model/. */
#ifndef THINKLAB_MODEL_INTERNAL_H
#define THINKLAB_MODEL_INTERNAL_H

#include "thinklab/model.h"

typedef struct tl_model_layer {
    tl_plugin_lib *lib;
    const tl_plugin *plugin;
    void *state;
    tl_opt_table opts; /* resolved options; specs point into the loaded plugin */
} tl_model_layer;

/* Router scores one routing decision saw under top-k during calibration. */
typedef struct tl_calib_decision {
    float *scores;    /* every token's score, batches appended in order */
    size_t n, cap;    /* scores held and allocated */
    int64_t tokens;   /* tokens routed, B*T summed over batches */
    int64_t selected; /* tokens top-k chose, summed over batches */
    double ratio;     /* the decision's ratio in the first batch */
} tl_calib_decision;

/* Scores collected between tl_model_calibrate_begin() and _end(). */
typedef struct tl_calib {
    bool active;
    int batches;
    tl_calib_decision *decisions; /* n_layers * TL_STATS_MAX_STEPS, [l * MAX + i] */
} tl_calib;

struct tl_model {
    tl_model_config cfg; /* layers is NULL here: specs are consumed by tl_model_new */
    tl_block_config block;
    tl_params *params;
    tl_tensor *tok_emb, *pos_emb, *final_norm, *head; /* head == tok_emb when tied */
    int n_layers;
    tl_model_layer *layers;
    tl_tensor **hidden;  /* L + 1: embedding output, then each layer's output */
    double *layer_flops; /* forward FLOPs counted per layer in the last forward */
    double flops;        /* forward FLOPs of the whole last forward */
    int64_t tokens;      /* B*T of the last forward */
    tl_calib calib;
};

/* Frees the scores of a calibration in progress. */
void tl_model_calib_clear(tl_model *m);

/* tl_model_forward that leaves the model's per-call state alone (layer
 * outputs for tl_model_hidden, performed FLOPs), so that data-parallel shards
 * can run it at the same time on contexts of their own. args must not
 * request statistics: the layers keep one set. */
tl_status tl_model_forward_shard(tl_model *m, tl_ctx *ctx, tl_tensor *ids, tl_tensor *targets,
                                 const tl_layer_args *args, tl_model_output *out);

bool tl_model_tied(const tl_model_config *cfg);
/* The block configuration every layer receives; checks the model fields. */
tl_status tl_model_block_config(const tl_model_config *cfg, tl_block_config *out);

#endif
