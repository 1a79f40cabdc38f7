/* Layer plugins: the ABI between libthinklab and the shared objects under
 * plugins/, and the loader that finds, checks and configures them.
 *
 * A plugin is a shared object that exports one function, tl_plugin_entry,
 * returning a constant tl_plugin descriptor. The descriptor starts with a
 * tl_plugin_header holding the ABI version and the sizes of the structs and
 * scalar types the plugin was compiled with; the loader rejects a plugin whose
 * header differs from the library's, so a stale build fails with a message
 * instead of reading a struct with another layout.
 *
 * A layer built by a plugin registers its parameters in the model's tl_params
 * under a prefix such as "layers.3", and computes its forward pass from
 * framework ops, so autograd covers it without plugin-side backward code. */
#ifndef THINKLAB_PLUGIN_H
#define THINKLAB_PLUGIN_H

#include <stdint.h>
#include <stdio.h>

#include "thinklab/block.h"
#include "thinklab/params.h"
#include "thinklab/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Raised whenever a struct below changes layout or meaning. */
#define TL_PLUGIN_ABI_VERSION 2
#define TL_PLUGIN_ENTRY_SYMBOL "tl_plugin_entry"
/* File name of a plugin called name: name + this suffix. */
#define TL_PLUGIN_SUFFIX ".so"

enum {
    TL_OPT_STRING_MAX = 64, /* bytes of a string or enum value, NUL included */
    TL_OPT_LIST_MAX = 16,   /* entries of a float list */
    TL_OPT_CHOICES_MAX = 8, /* allowed strings of an enum option */
    TL_PLUGIN_MAX_OPTIONS = 32,
};

/* ---- options ------------------------------------------------------------- */

typedef enum tl_opt_type {
    TL_OPT_BOOL,
    TL_OPT_INT,
    TL_OPT_FLOAT,
    TL_OPT_STRING,
    TL_OPT_FLOAT_LIST,
    TL_OPT_ENUM, /* a string from the spec's choices */
    TL_OPT_TYPE_COUNT
} tl_opt_type;

/* Returns "bool", "int", "float", "string", "float list" or "enum". */
const char *tl_opt_type_name(tl_opt_type type);

/* A typed option value. Only the member that matches type is meaningful. */
typedef struct tl_opt_value {
    tl_opt_type type;
    bool b;
    int64_t i;
    double f;
    char s[TL_OPT_STRING_MAX]; /* TL_OPT_STRING and TL_OPT_ENUM */
    int n;                     /* entries used in list */
    double list[TL_OPT_LIST_MAX];
} tl_opt_value;

/* One option a plugin accepts. For int and float options, and for every entry
 * of a float list, the value must lie in [min, max]. An enum value must be one
 * of choices (unused entries NULL). */
typedef struct tl_opt_spec {
    const char *name;
    tl_opt_type type;
    tl_opt_value def;
    double min, max;
    const char *choices[TL_OPT_CHOICES_MAX];
    const char *doc; /* one line: what the option sets, and its unit */
} tl_opt_spec;

/* A key/value setting as a configuration supplies it. */
typedef struct tl_opt_setting {
    const char *key;
    tl_opt_value value;
} tl_opt_setting;

/* Value constructors for settings. Strings longer than TL_OPT_STRING_MAX - 1
 * bytes are truncated (and then fail validation as unknown choices); lists
 * longer than TL_OPT_LIST_MAX keep n so that validation rejects them. */
tl_opt_value tl_optv_bool(bool b);
tl_opt_value tl_optv_int(int64_t i);
tl_opt_value tl_optv_float(double f);
tl_opt_value tl_optv_string(const char *s);
tl_opt_value tl_optv_list(int n, const double *values);

/* Every option of one plugin, resolved: defaults overridden by the settings
 * that passed validation. */
typedef struct tl_opt_table {
    const char *plugin; /* plugin name, for messages */
    const tl_opt_spec *specs;
    int n;
    tl_opt_value values[TL_PLUGIN_MAX_OPTIONS];
    bool set[TL_PLUGIN_MAX_OPTIONS]; /* given by a setting rather than defaulted */
} tl_opt_table;

/* Accessors for a plugin's create(). An unknown name or a type that differs
 * from the spec is a bug in the plugin: the accessor then returns false, 0,
 * "" or an empty list. */
bool tl_opt_bool(const tl_opt_table *t, const char *name);
int64_t tl_opt_int(const tl_opt_table *t, const char *name);
double tl_opt_float(const tl_opt_table *t, const char *name);
const char *tl_opt_string(const tl_opt_table *t, const char *name);
/* Returns the number of entries and points *values at them. */
int tl_opt_list(const tl_opt_table *t, const char *name, const double **values);
/* Index of an enum value in the spec's choices, or -1. */
int tl_opt_choice(const tl_opt_table *t, const char *name);
bool tl_opt_is_set(const tl_opt_table *t, const char *name);

/* ---- layer interface ------------------------------------------------------ */

/* What a layer needs to know about the model it sits in. */
typedef struct tl_layer_dims {
    tl_block_config block; /* model style, widths, norm, RoPE and initialisation */
    int layer_index;       /* l, counting from 0 */
    int64_t context;       /* maximum sequence length T */
} tl_layer_dims;

typedef enum tl_routing {
    TL_ROUTING_DEFAULT,  /* the layer's configured mode */
    TL_ROUTING_TOPK,     /* per-sequence top-k, no auxiliary loss */
    TL_ROUTING_TOPK_AUX, /* top-k plus the auxiliary router loss */
    TL_ROUTING_CAUSAL,   /* per-token threshold plus the auxiliary router loss */
    /* Per-token threshold that calibration fixes for each routing decision
     * (see set_thresholds), so causal like TL_ROUTING_CAUSAL. It is an
     * evaluation rule: it adds no auxiliary loss and is no configuration
     * choice. */
    TL_ROUTING_CALIBRATED,
    TL_ROUTING_COUNT
} tl_routing;

/* Per-call arguments of a layer's forward. */
typedef struct tl_layer_args {
    bool train;          /* auxiliary losses are added only in training */
    tl_routing routing;  /* override of the configured routing mode */
    bool collect_stats;  /* fill the routing statistics of this call */
    /* Running sum, shape (1), of the unweighted auxiliary terms: each routing
     * decision (one per layer and step) adds the mean BCE over its tokens. NULL
     * until the first term; the model multiplies the sum by its weight. */
    tl_tensor *aux_loss;
    int n_aux_terms;
} tl_layer_args;

/* Adds term (shape (1)) to args->aux_loss. Returns TL_OK or the op's error. */
tl_status tl_layer_args_add_aux(tl_ctx *ctx, tl_layer_args *args, tl_tensor *term);

enum { TL_STATS_MAX_STEPS = 16, TL_STATS_BINS = 20 };

/* One routing decision: a thinking step of ITT, or the single choice of MoD. */
typedef struct tl_step_stats {
    int step;             /* ITT: t in 1..N-1; MoD: 1 */
    double ratio;         /* configured ratio or capacity */
    bool skipped;         /* no token of any sequence was processed */
    int64_t tokens;       /* B*T */
    int64_t selected;     /* tokens processed, over the batch */
    double fraction;      /* selected / tokens */
    /* Mean, standard deviation and histogram of the router scores of all
     * tokens: the gate s for ITT (sigmoid or tanh), the raw logit for MoD. The
     * histogram has TL_STATS_BINS equal bins over [hist_lo, hist_hi]. */
    double score_mean, score_std;
    double hist_lo, hist_hi;
    int64_t hist[TL_STATS_BINS];
    /* Causal, calibrated or top-k-with-aux routing: fraction of tokens
     * whose threshold decision (gate > 0.5 for a sigmoid, > 0 for tanh and
     * for MoD's logit, the calibrated threshold under calibrated routing)
     * equals their top-k membership at the configured ratio. Under top-k
     * with the aux loss it tells how well the router has learnt the causal
     * rule. -1 under plain top-k routing. */
    double topk_agreement;
} tl_step_stats;

/* Routing statistics of a layer's last forward with collect_stats set. */
typedef struct tl_routing_stats {
    int n_steps; /* 0 for layers without routing */
    tl_step_stats steps[TL_STATS_MAX_STEPS];
    int64_t B, T;
    /* Owned by the layer, valid until its next forward: selection masks
     * (n_steps, B, T) with 1 where the token was processed, and the number of
     * block passes each token received (B, T), the full pass included. NULL for
     * layers without routing. */
    const uint8_t *masks;
    const int32_t *token_passes;
    /* Owned by the layer like masks: the router score of every token at each
     * decision (n_steps, B, T), on the scale of the histogram above, which is
     * the scale thresholds compare against. A row is NAN where the router did
     * not run (ratio 0). NULL for layers without routing. */
    const float *scores;
} tl_routing_stats;

/* Fixed start of every descriptor. Its first two fields never move. */
typedef struct tl_plugin_header {
    uint32_t abi_version;
    uint32_t header_size;
    const char *name;
    uint32_t size_plugin, size_tensor, size_opt_value, size_opt_spec, size_opt_table;
    uint32_t size_layer_dims, size_layer_args, size_routing_stats, size_block_config;
    uint32_t size_float, size_double, size_int, size_long, size_pointer, size_bool;
} tl_plugin_header;

typedef struct tl_plugin {
    tl_plugin_header header;
    const char *description; /* one line */
    const char *version;
    const tl_opt_spec *options;
    int n_options;
    /* Builds a layer from validated options: registers its parameters in
     * params under prefix (before tl_params_alloc). Returns the layer state,
     * or NULL with a message. */
    void *(*create)(const tl_opt_table *opts, const tl_layer_dims *dims, tl_params *params,
                    const char *prefix);
    /* y (B, T, C) for x (B, T, C), built from framework ops. The model
     * rejects a y of another shape or dtype, naming this layer. The trainer
     * runs it on several threads at once, each with its own ctx and rows of
     * the batch (data-parallel shards), unless args->collect_stats is set:
     * without it, forward must not write to state. */
    tl_tensor *(*forward)(tl_ctx *ctx, void *state, tl_tensor *x, tl_layer_args *args);
    /* Optional (NULL for layers without routing). */
    tl_status (*stats)(const void *state, tl_routing_stats *out);
    /* Optional: replaces the per-step ratios (elastic inference); n must match
     * the layer's routed steps. */
    tl_status (*set_ratios)(void *state, const double *ratios, int n);
    /* Optional pair for TL_ROUTING_CALIBRATED: both NULL, or both set along
     * with stats. set_thresholds fixes one threshold per routing decision,
     * numbered as the steps of tl_routing_stats, and n must equal the layer's
     * decision count. A token is then chosen when its score (as in
     * tl_routing_stats.scores) is strictly greater than the threshold, so
     * -INFINITY chooses every token and +INFINITY none. The layer records its
     * current ratios with the thresholds and rejects a calibrated forward
     * after they change. Passing thresholds NULL clears them. */
    tl_status (*set_thresholds)(void *state, const double *thresholds, int n);
    /* Writes up to max thresholds into out (NAN for a decision without one)
     * and returns the layer's number of routing decisions. */
    int (*thresholds)(const void *state, double *out, int max);
    /* Forward FLOPs per token for sequences of T tokens at the current ratios
     * under top-k routing (2 per multiply-add). */
    double (*flops_per_token)(const void *state, int64_t T);
    void (*destroy)(void *state);
} tl_plugin;

#define TL_PLUGIN_HEADER_INIT(plugin_name)                                                       \
    {                                                                                            \
        .abi_version = TL_PLUGIN_ABI_VERSION, .header_size = sizeof(tl_plugin_header),           \
        .name = (plugin_name), .size_plugin = sizeof(tl_plugin), .size_tensor = sizeof(tl_tensor), \
        .size_opt_value = sizeof(tl_opt_value), .size_opt_spec = sizeof(tl_opt_spec),           \
        .size_opt_table = sizeof(tl_opt_table), .size_layer_dims = sizeof(tl_layer_dims),       \
        .size_layer_args = sizeof(tl_layer_args),                                                \
        .size_routing_stats = sizeof(tl_routing_stats),                                          \
        .size_block_config = sizeof(tl_block_config), .size_float = sizeof(float),               \
        .size_double = sizeof(double), .size_int = sizeof(int), .size_long = sizeof(long),       \
        .size_pointer = sizeof(void *), .size_bool = sizeof(bool),                               \
    }

typedef const tl_plugin *(*tl_plugin_entry_fn)(void);

/* Defines the entry function that returns descriptor (a tl_plugin object). */
#define TL_PLUGIN_EXPORT(descriptor)                                                             \
    __attribute__((visibility("default"))) const tl_plugin *tl_plugin_entry(void);               \
    __attribute__((visibility("default"))) const tl_plugin *tl_plugin_entry(void)                \
    {                                                                                            \
        return &(descriptor);                                                                    \
    }

/* ---- loader --------------------------------------------------------------- */

/* A loaded plugin. The shared object stays mapped until tl_plugin_close(),
 * which must come after every layer it created is destroyed. */
typedef struct tl_plugin_lib tl_plugin_lib;

/* Opens a plugin by name or by path. A value containing '/' is a path to the
 * shared object. A name is looked up as name.so in, in order: the build's
 * plugin folder and the configured install folder when libthinklab runs from
 * the build tree, or thinklab/plugins beside an installed libthinklab, then
 * each folder of the colon-separated THINKLAB_PLUGIN_PATH. Returns NULL with a message naming
 * the value and the fix when the file is missing, is not a shared object,
 * is shorter than its ELF headers state, lacks the entry symbol, was built
 * for another ABI or struct layout, or has an invalid option table. An
 * invalid table has an option without a name or declared twice, an unknown
 * type, an empty range, an enum without choices, or a default that fails
 * its own check. */
tl_plugin_lib *tl_plugin_open(const char *name_or_path);
void tl_plugin_close(tl_plugin_lib *lib);
const tl_plugin *tl_plugin_desc(const tl_plugin_lib *lib);
/* File the plugin was loaded from. */
const char *tl_plugin_file(const tl_plugin_lib *lib);

/* Writes the folders searched for plugins by name into buf, in search order,
 * separated by ':'. Returns the length the full list needs (as snprintf). */
size_t tl_plugin_search_path(char *buf, size_t size);

/* Validates settings against the plugin's option schema and fills out with
 * every option: defaults, overridden by the settings. Rejects an unknown key
 * (listing the valid ones), a value of the wrong type (an int is accepted
 * where a float is expected, and in float lists), an int or float outside
 * [min, max], and an enum string outside its choices. */
tl_status tl_plugin_options(const tl_plugin *plugin, const tl_opt_setting *settings, int n,
                            tl_opt_table *out);

/* Writes value as a configuration would spell it: true, 4, 0.5, "topk",
 * {0.5, 0.5}. Returns buf. */
char *tl_opt_value_str(const tl_opt_value *value, char *buf, size_t size);

/* Prints every plugin found in the search folders with its description,
 * version, file, and each option with type, default, allowed values and doc.
 * A file that fails to load is listed with the reason. Returns the number of
 * plugins loaded. */
int tl_plugins_print(FILE *out);

#ifdef __cplusplus
}
#endif
#endif
