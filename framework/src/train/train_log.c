/* The trainer's side of the run log: metadata, gradient records and routing
 * records. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model_internal.h"
#include "train/train_internal.h"

static void layer_options_json(tl_json *j, const tl_opt_table *t);

/* Distinct plugins of the model's layers, in first-use order. */
typedef struct plugin_list {
    int n;
    const char *names[64];
    const char *versions[64];
} plugin_list;

static void collect_plugins(const tl_model *model, plugin_list *out)
{
    out->n = 0;
    for (int l = 0; l < model->n_layers; l++) {
        const tl_plugin *plugin = model->layers[l].plugin;
        bool seen = false;
        for (int i = 0; i < out->n && !seen; i++)
            seen = strcmp(out->names[i], plugin->header.name) == 0;
        if (seen || out->n == 64)
            continue;
        out->names[out->n] = plugin->header.name;
        out->versions[out->n] = plugin->version ? plugin->version : "unknown";
        out->n++;
    }
}

static const char *style_name(tl_block_style s)
{
    switch (s) {
    case TL_BLOCK_LLAMA: return "llama";
    case TL_BLOCK_GPT2: return "gpt2";
    default: return "unknown";
    }
}

static const char *rope_name(tl_rope_pairing r)
{
    switch (r) {
    case TL_ROPE_NONE: return "none";
    case TL_ROPE_INTERLEAVED: return "interleaved";
    default: return "half";
    }
}

static void model_json(tl_json *j, const tl_model *model, int64_t T)
{
    const tl_model_config *mc = tl_model_config_of(model);
    tl_json_begin(j, "model");
    tl_json_key_int(j, "vocab", mc->vocab);
    tl_json_key_int(j, "d_model", mc->d_model);
    tl_json_key_int(j, "n_head", mc->n_head);
    tl_json_key_int(j, "context", mc->context);
    tl_json_key_int(j, "d_ff", mc->d_ff);
    tl_json_key_string(j, "style", style_name(mc->style));
    tl_json_key_float(j, "norm_eps", mc->norm_eps);
    tl_json_key_string(j, "rope", rope_name(mc->rope));
    tl_json_key_float(j, "rope_base", mc->rope_base);
    tl_json_key_float(j, "init_std", mc->init_std);
    tl_json_key_bool(j, "scaled_init", mc->scaled_init);
    tl_json_key_int(j, "tie_head", mc->tie_head);
    tl_json_key_float(j, "aux_weight", mc->aux_weight);
    tl_json_key_int(j, "n_layers", mc->n_layers);
    tl_json_key_int(j, "parameters", tl_model_param_count(model));
    /* Nominal forward FLOPs per token at the trainer's context T (routed
     * steps at their configured ratios). */
    tl_json_key_double(j, "flops_per_token", tl_model_flops_per_token(model, T));

    /* Every layer's plugin with all of its resolved options, defaults
     * included, so that the log alone tells what was trained. */
    tl_json_begin_array(j, "layers");
    for (int l = 0; l < mc->n_layers; l++) {
        tl_json_begin(j, NULL);
        tl_json_key_string(j, "plugin", tl_model_layer_plugin(model, l));
        layer_options_json(j, tl_model_layer_options(model, l));
        tl_json_end(j);
    }
    tl_json_end_array(j);
    tl_json_end(j);
}

/* Writes "options": {name: value, ...} for one layer's resolved options. */
static void layer_options_json(tl_json *j, const tl_opt_table *t)
{
    tl_json_begin(j, "options");
    for (int i = 0; t && i < t->n; i++) {
        const char *name = t->specs[i].name;
        const tl_opt_value *v = &t->values[i];
        switch (v->type) {
        case TL_OPT_BOOL: tl_json_key_bool(j, name, v->b); break;
        case TL_OPT_INT: tl_json_key_int(j, name, v->i); break;
        case TL_OPT_FLOAT: tl_json_key_double(j, name, v->f); break;
        case TL_OPT_STRING:
        case TL_OPT_ENUM: tl_json_key_string(j, name, v->s); break;
        case TL_OPT_FLOAT_LIST: {
            char list[TL_OPT_LIST_MAX * 32 + 4];
            size_t n = 0;
            n += (size_t)snprintf(list + n, sizeof list - n, "[");
            for (int k = 0; k < v->n && n < sizeof list; k++)
                n += (size_t)snprintf(list + n, sizeof list - n, "%s%.17g", k ? ", " : "", v->list[k]);
            if (n < sizeof list)
                snprintf(list + n, sizeof list - n, "]");
            tl_json_key_raw(j, name, list);
            break;
        }
        case TL_OPT_TYPE_COUNT: break;
        }
    }
    tl_json_end(j);
}

/* FNV-1a over the tokenizer's text form, which lists every token, so two
 * tokenizers with one fingerprint map text to the same ids. Writes "" when
 * the data has no tokenizer. */
static tl_status tokenizer_fingerprint(const tl_tokenizer *tok, char *out, size_t size)
{
    out[0] = '\0';
    if (!tok)
        return TL_OK;
    size_t len = 0;
    char *text = tl_tokenizer_to_string(tok, &len);
    if (!text)
        return tl_lasterr() != TL_OK ? tl_lasterr()
                                     : tl_seterr(TL_ENOMEM, "no memory for the tokenizer's text");
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)text[i];
        h *= 1099511628211ull;
    }
    free(text);
    snprintf(out, size, "%016llx", (unsigned long long)h);
    return TL_OK;
}

/* The trainer's full configuration: {"train": ..., "model": ..., "tokenizer":
 * {kind, vocab, fingerprint} when the data has one, "plugins": {name:
 * version}, "seed", "threads", "version"}. */
static size_t run_json(const tl_trainer *tr, const plugin_list *plugins, const char *fingerprint,
                       char *buf, size_t size)
{
    tl_json j;
    tl_json_init(&j, buf, size);
    tl_json_begin(&j, NULL);
    tl_train_config_json_into(&j, "train", &tr->cfg);
    model_json(&j, tr->model, tr->cfg.context);
    if (fingerprint[0]) {
        const tl_tokenizer *tok = tr->data.tokenizer;
        tl_json_begin(&j, "tokenizer");
        tl_json_key_string(&j, "kind", tl_tokenizer_kind_name(tl_tokenizer_kind_of(tok)));
        tl_json_key_int(&j, "vocab", tl_tokenizer_vocab_size(tok));
        tl_json_key_string(&j, "fingerprint", fingerprint);
        tl_json_end(&j);
    }
    tl_json_begin(&j, "plugins");
    for (int i = 0; i < plugins->n; i++)
        tl_json_key_string(&j, plugins->names[i], plugins->versions[i]);
    tl_json_end(&j);
    tl_json_key_uint(&j, "seed", tr->cfg.seed);
    tl_json_key_int(&j, "threads", tr->threads);
    tl_json_key_string(&j, "thinklab_version", TL_VERSION_STRING);
    if (tr->experiment_json)
        tl_json_key_raw(&j, "experiment", tr->experiment_json);
    tl_json_end(&j);
    return j.len;
}

tl_status tl_train_config_text(tl_trainer *tr)
{
    plugin_list plugins;
    collect_plugins(tr->model, &plugins);
    char fingerprint[32];
    tl_status st = tokenizer_fingerprint(tr->data.tokenizer, fingerprint, sizeof fingerprint);
    if (st != TL_OK)
        return st;
    size_t need = run_json(tr, &plugins, fingerprint, NULL, 0) + 1;
    tr->config_json = malloc(need);
    if (!tr->config_json)
        return tl_seterr(TL_ENOMEM, "no memory for the %zu-byte configuration text", need);
    run_json(tr, &plugins, fingerprint, tr->config_json, need);
    return TL_OK;
}

tl_status tl_train_log_open(tl_trainer *tr)
{
    plugin_list plugins;
    collect_plugins(tr->model, &plugins);
    tl_log_meta meta = {
        .config_json = tr->config_json,
        .n_plugins = plugins.n,
        .plugin_names = plugins.names,
        .plugin_versions = plugins.versions,
        .seed = tr->cfg.seed,
        .threads = tr->threads,
        .flush_every = tr->cfg.log_flush_every,
        .overwrite = tr->cfg.log_overwrite,
        .run_id = tr->run_id,
    };
    char dropped[512] = "";
    if (tr->append_log) {
        tr->log = tl_log_append(tr->cfg.log_path, &meta, tr->step, dropped, sizeof dropped);
        if (!tr->log)
            return tl_lasterr();
    } else {
        tr->log = tl_log_create(tr->cfg.log_path, &meta);
        if (!tr->log)
            return tl_lasterr();
    }
    /* A continued log must have the checkpoint's last step as its run
     * logged it. Other values mean that another branch of the run wrote the
     * rows after the checkpoint. */
    if (tr->append_log && tr->checkpoint_has_last_step) {
        tl_status st = tl_log_check_train_row(tr->log, tr->step - 1, tr->checkpoint_last_loss,
                                              tr->checkpoint_last_grad_norm);
        if (st != TL_OK)
            return st;
    }
    /* A continued log whose groups cannot take this run's records fails
     * here, before its first flush changes the file. /token_grads comes
     * first because its shape depends on log_token_seqs, which a resume may
     * change. The parameter names come from the checkpoint's model. */
    if (tr->cfg.log_grads_every > 0 && tr->n_token_log > 0) {
        tl_status st = tl_log_token_grads_init(tr->log, tr->n_layers, tr->n_token_log);
        if (st != TL_OK)
            return st;
    }
    if (tr->cfg.log_grads_every > 0) {
        const tl_params *p = tr->params;
        size_t n = tl_params_count(p);
        const char **names = malloc((n ? n : 1) * sizeof *names);
        if (!names)
            return tl_seterr(TL_ENOMEM, "no memory for %zu parameter names", n);
        for (size_t i = 0; i < n; i++)
            names[i] = tl_params_at(p, i)->name;
        tl_status st = tl_log_grad_norms_init(tr->log, (int64_t)n, names);
        free(names);
        if (st != TL_OK)
            return st;
    }
    if (tr->append_log)
        fprintf(stderr, "thinklab: continuing run log '%s' at step %lld; %s%s\n",
                tr->cfg.log_path, (long long)tr->step,
                dropped[0] ? "removed the rows of later steps, which this run logs again: "
                           : "no rows of later steps to remove",
                dropped);
    else if (tr->resume_path && tr->step > 0)
        fprintf(stderr, "thinklab: run log '%s' is new and starts after step %lld, the "
                        "checkpoint's; the steps before are not in it\n",
                tr->cfg.log_path, (long long)tr->step);
    return TL_OK;
}

tl_status tl_train_log_gradients(tl_trainer *tr, const tl_model_output *out)
{
    const tl_params *p = tr->params;
    const float *grads = tl_params_grads(p);
    for (size_t i = 0; i < tl_params_count(p); i++) {
        const float *g = grads + tl_params_offset(p, i);
        int64_t n = tl_numel(tl_params_at(p, i));
        double sum = 0.0;
        for (int64_t k = 0; k < n; k++)
            sum += (double)g[k] * (double)g[k];
        tr->param_norms[i] = sqrt(sum);
    }
    tl_status st = tl_log_grad_norms(tr->log, tr->step, tr->param_norms);
    if (st != TL_OK || tr->n_token_log == 0)
        return st;

    /* Rows 0..n_token_log of the batch are the first log_token_seqs
     * sequences, flattened. h_0 is the embedding output, h_l layer l-1's. */
    int64_t C = tl_model_config_of(tr->model)->d_model;
    for (int l = 0; l <= tr->n_layers; l++) {
        tl_tensor *h = tl_model_hidden(tr->model, l - 1);
        float *row = tr->token_norms + (size_t)l * (size_t)tr->n_token_log;
        for (int64_t i = 0; i < tr->n_token_log; i++) {
            if (!h || !h->grad) {
                row[i] = 0.0f;
                continue;
            }
            const float *g = h->grad + i * C;
            double sum = 0.0;
            for (int64_t c = 0; c < C; c++)
                sum += (double)g[c] * (double)g[c];
            row[i] = (float)sqrt(sum);
        }
    }
    const float *token_loss = tl_f32(out->token_loss);
    for (int64_t i = 0; i < tr->n_token_log; i++) {
        tr->token_ids[i] = tr->inputs[i];
        tr->token_losses[i] = token_loss[i];
    }
    return tl_log_token_grads(tr->log, tr->step, tr->token_norms, tr->token_ids,
                              tr->token_losses);
}

/* Registers every routed layer on first use, from its statistics. */
static tl_status register_routed(tl_trainer *tr, int l, const tl_routing_stats *rs)
{
    char name[32];
    snprintf(name, sizeof name, "layers.%d", l);
    tl_log_routing_spec spec = {
        .name = name,
        .kind = tl_model_layer_plugin(tr->model, l),
        .n_steps = rs->n_steps,
        .n_mask_tokens = tr->cfg.context,
        .n_bins = TL_STATS_BINS,
        .score_min = rs->steps[0].hist_lo,
        .score_max = rs->steps[0].hist_hi > rs->steps[0].hist_lo ? rs->steps[0].hist_hi
                                                                  : rs->steps[0].hist_lo + 1.0,
    };
    int id = tl_log_routing_register(tr->log, &spec);
    if (id < 0)
        return tl_lasterr();
    tr->routing_ids[l] = id;
    return TL_OK;
}

tl_status tl_train_log_routing(tl_trainer *tr)
{
    for (int l = 0; l < tr->n_layers; l++) {
        tl_routing_stats rs;
        tl_status st = tl_model_layer_stats(tr->model, l, &rs);
        if (st != TL_OK)
            return st;
        int64_t n = rs.B * rs.T;
        if (rs.n_steps == 0 || !rs.masks)
            continue;
        if (n > tr->cfg.batch_size * tr->cfg.context)
            return tl_seterr(TL_ESHAPE, "routing statistics of layer %d cover %lld tokens, more "
                                        "than the batch's %lld", l, (long long)n,
                             (long long)(tr->cfg.batch_size * tr->cfg.context));
        if (tr->routing_ids[l] < 0 && (st = register_routed(tr, l, &rs)) != TL_OK)
            return st;
        for (int t = 0; t < rs.n_steps; t++) {
            tl_log_routing_record rec = {
                .step = tr->step,
                .routed_step = t,
                .n_scores = n,
                .scores = rs.scores ? rs.scores + (size_t)t * (size_t)n : tr->routing_scores,
                .selected = rs.masks + (size_t)t * (size_t)n,
                .topk_agreement = rs.steps[t].topk_agreement >= 0 ? rs.steps[t].topk_agreement
                                                                   : NAN,
            };
            st = tl_log_routing(tr->log, tr->routing_ids[l], &rec);
            if (st != TL_OK)
                return st;
        }
    }
    return TL_OK;
}
