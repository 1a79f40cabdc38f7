/* Models as Lua userdata: construction from a table, layer patterns,
 * parameter counts, summaries, dense baselines and elastic ratios.
 *
 *   m = thinklab.model{vocab_size = V | tokenizer = tok, d_model = C, n_head = H,
 *                      context = T, style = "llama" | "gpt2", seed = 1,
 *                      n_layers = L | layers = {{plugin = "itt", steps = 4}, ...}, ...}
 *   layers = thinklab.pattern{n = 8, default = {plugin = "transformer"},
 *                             odd = {plugin = "itt", steps = 4}}
 *
 * Generation and evaluation live in eval.c; both use the context the model
 * userdata owns. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "thinklab/dist.h"
#include "thinklab/model.h"
#include "tl_lua.h"

static const char *const style_names[] = {"llama", "gpt2", NULL};
static const char *const rope_names[] = {"none", "interleaved", "half", NULL};

static const char *const model_keys[] = {
    "vocab_size", "tokenizer", "d_model",  "n_head",     "context",     "style",
    "n_layers",   "layers",    "d_ff",     "norm_eps",   "rope",        "rope_base",
    "init_std",   "scaled_init", "tie_head", "aux_weight", "seed",      NULL,
};

tl_lua_model *tl_lua_check_model(lua_State *L, int idx, const char *where)
{
    tl_lua_model *u = luaL_testudata(L, idx, TL_LUA_MODEL);
    if (!u)
        luaL_error(L, "%s must be a model (from thinklab.model), got %s", where,
                   tl_lua_describe(L, idx));
    if (!u->m)
        luaL_error(L, "%s: the model was closed", where);
    return u;
}

static void model_release(tl_lua_model *u)
{
    tl_ctx_free(u->ctx);
    tl_tokenizer_free(u->tok);
    tl_model_free(u->m);
    free(u->has_ratios);
    u->ctx = NULL;
    u->tok = NULL;
    u->m = NULL;
    u->has_ratios = NULL;
}

/* At collection the trainers that use the model are unreachable too; Lua
 * finalizes them first because they were created later, and any left in the
 * list are closed here. */
static int model_gc(lua_State *L)
{
    tl_lua_model *u = luaL_checkudata(L, 1, TL_LUA_MODEL);
    tl_lua_close_trainers(L, u->trainers, true, "model");
    model_release(u);
    return 0;
}

static int model_close(lua_State *L)
{
    tl_lua_model *u = luaL_checkudata(L, 1, TL_LUA_MODEL);
    tl_lua_close_trainers(L, u->trainers, true, "model:close");
    model_release(u);
    return 0;
}

tl_ctx *tl_lua_model_ctx(lua_State *L, tl_lua_model *u)
{
    if (!u->ctx) {
        u->ctx = tl_ctx_new(0);
        if (!u->ctx)
            tl_lua_fail(L, "creating the model's evaluation context");
    }
    return u->ctx;
}

/* ---- layer options: Lua values to tl_opt_value ---------------------------- */

/* Converts the value on top of the stack; raises naming where.key. */
static tl_opt_value opt_from_lua(lua_State *L, const char *where, const char *key)
{
    switch (lua_type(L, -1)) {
    case LUA_TBOOLEAN:
        return tl_optv_bool(lua_toboolean(L, -1));
    case LUA_TNUMBER:
        if (lua_isinteger(L, -1))
            return tl_optv_int(lua_tointeger(L, -1));
        if (!isfinite(lua_tonumber(L, -1)))
            luaL_error(L, "%s.%s must be finite, got %s", where, key, tl_lua_describe(L, -1));
        return tl_optv_float(lua_tonumber(L, -1));
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, -1, &len);
        if (len >= TL_OPT_STRING_MAX)
            luaL_error(L, "%s.%s is %d bytes long; option strings hold at most %d", where, key,
                       (int)len, TL_OPT_STRING_MAX - 1);
        return tl_optv_string(s);
    }
    case LUA_TTABLE: {
        double values[TL_OPT_LIST_MAX];
        lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
        if (n > TL_OPT_LIST_MAX)
            luaL_error(L, "%s.%s has %I entries; a list option holds at most %d", where, key, n,
                       TL_OPT_LIST_MAX);
        for (lua_Integer i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, i);
            if (lua_type(L, -1) != LUA_TNUMBER || !isfinite(lua_tonumber(L, -1)))
                luaL_error(L, "%s.%s[%I] must be a finite number, got %s", where, key, i,
                           tl_lua_describe(L, -1));
            values[i - 1] = lua_tonumber(L, -1);
            lua_pop(L, 1);
        }
        return tl_optv_list((int)n, values);
    }
    default:
        luaL_error(L, "%s.%s must be a boolean, number, string or list of numbers, got %s",
                   where, key, tl_lua_describe(L, -1));
    }
    return tl_optv_bool(false); /* not reached */
}

/* Fills spec from the layer table at idx: plugin name and settings in a
 * box-owned array (pushed). Keys point into strings the table keeps alive. */
static void layer_spec_from_lua(lua_State *L, int idx, const char *where, tl_layer_spec *spec)
{
    idx = lua_absindex(L, idx);
    if (lua_type(L, idx) != LUA_TTABLE)
        luaL_error(L, "%s must be a table such as {plugin = \"transformer\"}, got %s", where,
                   tl_lua_describe(L, idx));
    spec->plugin = tl_lua_opt_str(L, idx, where, "plugin", NULL);
    if (!spec->plugin)
        luaL_error(L, "%s.plugin is required (a plugin name such as \"transformer\", or a path)",
                   where);
    int n = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "%s: option names must be strings, got %s", where,
                       tl_lua_describe(L, -1));
        n++;
    }
    tl_opt_setting *settings = tl_lua_alloc(L, (size_t)n * sizeof *settings, where);
    int i = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        const char *key = lua_tostring(L, -2);
        if (strcmp(key, "plugin") != 0) {
            settings[i].key = key;
            settings[i].value = opt_from_lua(L, where, key);
            i++;
        }
        lua_pop(L, 1);
    }
    spec->options = settings;
    spec->n_options = i;
}

/* Opens the plugin of spec and validates its settings, so that the error
 * names the Lua key; records whether the layer takes routing ratios. */
static void layer_validate(lua_State *L, const char *where, const tl_layer_spec *spec,
                           bool *has_ratios)
{
    struct tl_lua_box *box = tl_lua_box_new(L);
    tl_plugin_lib *lib = tl_plugin_open(spec->plugin);
    if (!lib)
        luaL_error(L, "%s: %s", where, tl_errmsg());
    tl_lua_box_set(box, lib, (tl_lua_free_fn)tl_plugin_close);
    const tl_plugin *plugin = tl_plugin_desc(lib);
    tl_opt_table *table = tl_lua_alloc(L, sizeof *table, where);
    if (tl_plugin_options(plugin, spec->options, spec->n_options, table) != TL_OK)
        luaL_error(L, "%s (plugin '%s'): %s", where, spec->plugin, tl_errmsg());
    *has_ratios = plugin->set_ratios != NULL;
    lua_pop(L, 1); /* the table buffer; freed by the collector */
    tl_lua_box_release(box);
    lua_pop(L, 1);
}

/* ---- thinklab.model{...} -------------------------------------------------- */

static int l_model(lua_State *L)
{
    const char *where = "model";
    tl_lua_check_table(L, 1, "thinklab.model");
    lua_settop(L, 1);
    tl_lua_check_keys(L, 1, where, model_keys);

    /* Vocabulary: from vocab_size, or from a tokenizer (copied into the
     * model for generation). */
    tl_lua_tokenizer *tok = NULL;
    if (lua_getfield(L, 1, "tokenizer") != LUA_TNIL)
        tok = tl_lua_check_tokenizer(L, -1, "model.tokenizer");
    lua_pop(L, 1);
    int64_t vocab = tl_lua_opt_int(L, 1, where, "vocab_size", 0, 1, INT32_MAX);
    if (tok && vocab && vocab != tl_tokenizer_vocab_size(tok->tok))
        return luaL_error(L, "model.vocab_size %I differs from the tokenizer's vocabulary %d: "
                             "give only one of them",
                          (lua_Integer)vocab, tl_tokenizer_vocab_size(tok->tok));
    if (tok)
        vocab = tl_tokenizer_vocab_size(tok->tok);
    if (!vocab)
        return luaL_error(L, "model needs vocab_size (a positive integer) or tokenizer");

    int64_t d_model = tl_lua_req_int(L, 1, where, "d_model", 1, 1 << 20);
    int64_t n_head = tl_lua_req_int(L, 1, where, "n_head", 1, 4096);
    int64_t context = tl_lua_req_int(L, 1, where, "context", 1, 1 << 24);
    if (d_model % n_head != 0)
        return luaL_error(L, "model.d_model %I must be divisible by model.n_head %I",
                          (lua_Integer)d_model, (lua_Integer)n_head);
    int style = tl_lua_opt_enum(L, 1, where, "style", TL_BLOCK_LLAMA, style_names);

    /* Layers: a list of specs, or n_layers plain transformer layers. */
    int has_layers = lua_getfield(L, 1, "layers") != LUA_TNIL;
    int layers_idx = lua_gettop(L);
    int64_t n_layers;
    if (has_layers) {
        if (lua_type(L, layers_idx) != LUA_TTABLE)
            return luaL_error(L, "model.layers must be a list of layer tables, got %s",
                              tl_lua_describe(L, layers_idx));
        n_layers = (int64_t)lua_rawlen(L, layers_idx);
        if (n_layers < 1)
            return luaL_error(L, "model.layers is empty: give at least one layer");
        if (n_layers > 4096)
            return luaL_error(L, "model.layers has %I entries; at most 4096 are supported",
                              (lua_Integer)n_layers);
        int64_t declared = tl_lua_opt_int(L, 1, where, "n_layers", n_layers, 1, 4096);
        if (declared != n_layers)
            return luaL_error(L, "model.n_layers %I differs from the %I entries of model.layers",
                              (lua_Integer)declared, (lua_Integer)n_layers);
    } else {
        n_layers = tl_lua_req_int(L, 1, where, "n_layers", 1, 4096);
    }

    tl_model_config cfg = tl_model_config_default((tl_block_style)style, vocab, d_model,
                                                  (int)n_head, context, (int)n_layers);
    cfg.d_ff = tl_lua_opt_int(L, 1, where, "d_ff", 0, 0, 1 << 24);
    cfg.norm_eps = (float)tl_lua_opt_num(L, 1, where, "norm_eps", cfg.norm_eps, 1e-12, 1.0);
    int rope = tl_lua_opt_enum(L, 1, where, "rope", (int)cfg.rope, rope_names);
    if (style == TL_BLOCK_GPT2 && rope != TL_ROPE_NONE) {
        if (lua_getfield(L, 1, "rope") != LUA_TNIL)
            return luaL_error(L, "model.rope applies to style \"llama\"; the GPT-2 style uses "
                                 "learned positions");
        lua_pop(L, 1);
    }
    cfg.rope = (tl_rope_pairing)rope;
    cfg.rope_base = (float)tl_lua_opt_num(L, 1, where, "rope_base", cfg.rope_base, 1.0, 1e12);
    cfg.init_std = (float)tl_lua_opt_num(L, 1, where, "init_std", cfg.init_std, 0.0, 10.0);
    cfg.scaled_init = tl_lua_opt_bool(L, 1, where, "scaled_init", cfg.scaled_init);
    if (lua_getfield(L, 1, "tie_head") != LUA_TNIL)
        cfg.tie_head = tl_lua_opt_bool(L, 1, where, "tie_head", false) ? 1 : 0;
    lua_pop(L, 1);
    cfg.aux_weight = (float)tl_lua_opt_num(L, 1, where, "aux_weight", cfg.aux_weight, 0.0, 1e6);
    int64_t seed = tl_lua_opt_int(L, 1, where, "seed", 1, 0, INT64_MAX);

    /* Layer specs and their validation against each plugin's schema. */
    tl_layer_spec *specs = NULL;
    bool *has_ratios = tl_lua_alloc(L, (size_t)n_layers * sizeof *has_ratios, where);
    if (has_layers) {
        luaL_checkstack(L, (int)(3 * n_layers + 20), "model.layers");
        specs = tl_lua_alloc(L, (size_t)n_layers * sizeof *specs, where);
        for (int64_t l = 0; l < n_layers; l++) {
            char lw[64];
            /* Layers are numbered from 0 in messages, as in parameter names
             * ("layers.3"), and the Lua list index is given beside it. */
            snprintf(lw, sizeof lw, "model.layers[%lld] (layer %lld)", (long long)l + 1,
                     (long long)l);
            lua_rawgeti(L, layers_idx, l + 1);
            layer_spec_from_lua(L, -1, lw, &specs[l]);
            layer_validate(L, lw, &specs[l], &has_ratios[l]);
            /* The spec's settings box stays on the stack until the model is built. */
        }
    } else {
        tl_layer_spec plain = {.plugin = "transformer", .options = NULL, .n_options = 0};
        bool ratios = false;
        layer_validate(L, "model (n_layers transformer layers)", &plain, &ratios);
    }
    cfg.layers = specs;

    tl_lua_model *u = lua_newuserdatauv(L, sizeof *u, 1);
    memset(u, 0, sizeof *u);
    luaL_setmetatable(L, TL_LUA_MODEL);
    u->seed = (uint64_t)seed;
    tl_rng rng;
    tl_rng_seed(&rng, (uint64_t)seed);
    u->m = tl_model_new(&cfg, &rng);
    if (!u->m)
        return tl_lua_fail(L, "model");
    u->n_layers = (int)n_layers;
    u->has_ratios = calloc((size_t)n_layers, sizeof *u->has_ratios);
    if (!u->has_ratios) {
        model_release(u);
        return luaL_error(L, "model: out of memory");
    }
    memcpy(u->has_ratios, has_ratios, (size_t)n_layers * sizeof *has_ratios);
    if (tok) {
        u->tok = tl_lua_tokenizer_clone(tok->tok);
        if (!u->tok) {
            model_release(u);
            return tl_lua_fail(L, "model.tokenizer");
        }
    }
    /* Tell the collector about the C memory behind this small userdata
     * (weights, gradients and two AdamW moments, 16 bytes per parameter),
     * so that models dropped in a loop are collected in time. */
    lua_gc(L, LUA_GCSTEP, (int)(tl_model_param_count(u->m) * 16 / 1024 + 1));
    /* Keep the layer specs (as given) for summaries. */
    if (has_layers)
        lua_pushvalue(L, layers_idx);
    else
        lua_pushnil(L);
    lua_setiuservalue(L, -2, 1);
    return 1;
}

/* ---- thinklab.pattern{...} ------------------------------------------------ */

/* Pushes a shallow copy of the table at idx (list values are copied too, so
 * that layers never share a ratios table). */
static void push_copy(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    lua_newtable(L);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pushvalue(L, -2);
        if (lua_type(L, -2) == LUA_TTABLE) {
            push_copy(L, -2); /* dst, key, value, key, copy */
            lua_remove(L, -3);
        } else {
            lua_insert(L, -2);
        }
        lua_settable(L, -4);
    }
}

/* thinklab.pattern{n, default, odd, even, at = {[l] = spec}} -> list of n
 * layer tables. Layers count from 0, so odd = layers 1, 3, 5, ...; an entry
 * of at overrides odd and even, which override default. */
static int l_pattern(lua_State *L)
{
    static const char *const keys[] = {"n", "default", "odd", "even", "at", NULL};
    const char *where = "pattern";
    tl_lua_check_table(L, 1, "thinklab.pattern");
    lua_settop(L, 1);
    tl_lua_check_keys(L, 1, where, keys);
    int64_t n = tl_lua_req_int(L, 1, where, "n", 1, 4096);
    const char *names[3] = {"default", "odd", "even"};
    for (int k = 0; k < 3; k++) {
        int t = lua_getfield(L, 1, names[k]);
        if (t != LUA_TNIL && t != LUA_TTABLE)
            return luaL_error(L, "pattern.%s must be a layer table such as {plugin = \"itt\"}, "
                                 "got %s",
                              names[k], tl_lua_describe(L, -1));
    } /* stack: 2 default, 3 odd, 4 even */
    if (lua_isnil(L, 2))
        return luaL_error(L, "pattern.default is required (the layer used where odd, even and "
                             "at do not apply)");
    int t = lua_getfield(L, 1, "at"); /* 5 */
    if (t != LUA_TNIL && t != LUA_TTABLE)
        return luaL_error(L, "pattern.at must be a table {[layer] = {...}}, got %s",
                          tl_lua_describe(L, 5));
    if (t == LUA_TTABLE) {
        lua_pushnil(L);
        while (lua_next(L, 5)) {
            int isint = 0;
            lua_Integer l = lua_tointegerx(L, -2, &isint);
            if (lua_type(L, -2) != LUA_TNUMBER || !isint || l < 0 || l >= n)
                return luaL_error(L, "pattern.at: key %s is not a layer index in [0, %I)",
                                  tl_lua_describe(L, -2), (lua_Integer)n);
            if (lua_type(L, -1) != LUA_TTABLE)
                return luaL_error(L, "pattern.at[%I] must be a layer table, got %s", l,
                                  tl_lua_describe(L, -1));
            lua_pop(L, 1);
        }
    }

    lua_createtable(L, (int)n, 0);
    for (int64_t l = 0; l < n; l++) {
        int src = 2;
        if (l % 2 == 1 && !lua_isnil(L, 3))
            src = 3;
        if (l % 2 == 0 && !lua_isnil(L, 4))
            src = 4;
        if (lua_istable(L, 5) && lua_rawgeti(L, 5, l) != LUA_TNIL) {
            push_copy(L, -1);
            lua_remove(L, -2);
        } else {
            if (lua_istable(L, 5))
                lua_pop(L, 1);
            push_copy(L, src);
        }
        lua_rawseti(L, -2, l + 1);
    }
    return 1;
}

/* ---- methods -------------------------------------------------------------- */

static int model_param_count(lua_State *L)
{
    tl_lua_model *u = tl_lua_check_model(L, 1, "model:param_count");
    lua_pushinteger(L, tl_model_param_count(u->m));
    return 1;
}

static int model_n_layers(lua_State *L)
{
    tl_lua_model *u = tl_lua_check_model(L, 1, "model:n_layers");
    lua_pushinteger(L, tl_model_n_layers(u->m));
    return 1;
}

/* Pushes the configuration of cfg as a table that thinklab.model accepts. */
static void push_config(lua_State *L, const tl_model_config *cfg, uint64_t seed)
{
    lua_newtable(L);
    lua_pushinteger(L, cfg->vocab);
    lua_setfield(L, -2, "vocab_size");
    lua_pushinteger(L, cfg->d_model);
    lua_setfield(L, -2, "d_model");
    lua_pushinteger(L, cfg->n_head);
    lua_setfield(L, -2, "n_head");
    lua_pushinteger(L, cfg->context);
    lua_setfield(L, -2, "context");
    lua_pushinteger(L, cfg->d_ff);
    lua_setfield(L, -2, "d_ff");
    lua_pushstring(L, style_names[cfg->style]);
    lua_setfield(L, -2, "style");
    lua_pushinteger(L, cfg->n_layers);
    lua_setfield(L, -2, "n_layers");
    lua_pushnumber(L, cfg->norm_eps);
    lua_setfield(L, -2, "norm_eps");
    if (cfg->style == TL_BLOCK_LLAMA) {
        lua_pushstring(L, rope_names[cfg->rope]);
        lua_setfield(L, -2, "rope");
    }
    lua_pushnumber(L, cfg->rope_base);
    lua_setfield(L, -2, "rope_base");
    lua_pushnumber(L, cfg->init_std);
    lua_setfield(L, -2, "init_std");
    lua_pushboolean(L, cfg->scaled_init);
    lua_setfield(L, -2, "scaled_init");
    if (cfg->tie_head >= 0) {
        lua_pushboolean(L, cfg->tie_head != 0);
        lua_setfield(L, -2, "tie_head");
    }
    lua_pushnumber(L, cfg->aux_weight);
    lua_setfield(L, -2, "aux_weight");
    lua_pushinteger(L, (lua_Integer)seed);
    lua_setfield(L, -2, "seed");
}

/* model:config() -> table (layers as given, or n_layers transformers). */
static int model_config(lua_State *L)
{
    tl_lua_model *u = tl_lua_check_model(L, 1, "model:config");
    push_config(L, tl_model_config_of(u->m), u->seed);
    if (lua_getiuservalue(L, 1, 1) == LUA_TTABLE)
        lua_setfield(L, -2, "layers");
    else
        lua_pop(L, 1);
    return 1;
}

/* model:summary{context = T, print = true} -> table; prints one line per
 * layer with its plugin, parameters and forward FLOPs per token. */
static int model_summary(lua_State *L)
{
    static const char *const keys[] = {"context", "print", NULL};
    tl_lua_model *u = tl_lua_check_model(L, 1, "model:summary");
    const tl_model_config *cfg = tl_model_config_of(u->m);
    int64_t T = cfg->context;
    bool print = true;
    if (!lua_isnoneornil(L, 2)) {
        tl_lua_check_table(L, 2, "model:summary");
        tl_lua_check_keys(L, 2, "model:summary", keys);
        T = tl_lua_opt_int(L, 2, "model:summary", "context", T, 1, cfg->context);
        print = tl_lua_opt_bool(L, 2, "model:summary", "print", true);
    }
    int L_ = tl_model_n_layers(u->m);
    int64_t total = tl_model_param_count(u->m);
    double flops = tl_model_flops_per_token(u->m, T);

    lua_newtable(L);
    lua_pushinteger(L, total);
    lua_setfield(L, -2, "params");
    lua_pushnumber(L, flops);
    lua_setfield(L, -2, "flops_per_token");
    lua_pushinteger(L, T);
    lua_setfield(L, -2, "context");
    push_config(L, cfg, u->seed);
    lua_setfield(L, -2, "config");
    lua_createtable(L, L_, 0);
    int64_t layer_params = 0;
    for (int l = 0; l < L_; l++) {
        lua_createtable(L, 0, 4);
        lua_pushinteger(L, l);
        lua_setfield(L, -2, "index");
        lua_pushstring(L, tl_model_layer_plugin(u->m, l));
        lua_setfield(L, -2, "plugin");
        int64_t p = tl_model_layer_param_count(u->m, l);
        layer_params += p;
        lua_pushinteger(L, p);
        lua_setfield(L, -2, "params");
        lua_pushnumber(L, tl_model_layer_flops_per_token(u->m, l, T));
        lua_setfield(L, -2, "flops_per_token");
        lua_rawseti(L, -2, l + 1);
    }
    lua_setfield(L, -2, "layers");
    lua_pushinteger(L, total - layer_params);
    lua_setfield(L, -2, "embedding_params");

    if (print && tl_dist_rank() == 0) { /* under MPI, rank 0 prints for all */
        printf("model: %s style, vocab %lld, d_model %lld, %d heads, context %lld, %d layers\n",
               style_names[cfg->style], (long long)cfg->vocab, (long long)cfg->d_model,
               cfg->n_head, (long long)cfg->context, L_);
        printf("  %5s  %-14s %12s %16s\n", "layer", "plugin", "params", "MFLOP/token");
        for (int l = 0; l < L_; l++)
            printf("  %5d  %-14s %12lld %16.3f\n", l, tl_model_layer_plugin(u->m, l),
                   (long long)tl_model_layer_param_count(u->m, l),
                   tl_model_layer_flops_per_token(u->m, l, T) / 1e6);
        printf("  %5s  %-14s %12lld\n", "", "embed+head", (long long)(total - layer_params));
        printf("  %5s  %-14s %12lld %16.3f   (forward, T = %lld)\n", "", "total",
               (long long)total, flops / 1e6, (long long)T);
        fflush(stdout);
    }
    return 1;
}

/* model:set_ratios{ratios = {...}, layer = l} sets the routing ratios of
 * layer l, or of every routed layer when layer is omitted. One ratio, as
 * {0.7} or a plain 0.7, sets every routed step of every layer it reaches. */
static int model_set_ratios(lua_State *L)
{
    static const char *const keys[] = {"ratios", "layer", NULL};
    const char *where = "model:set_ratios";
    tl_lua_model *u = tl_lua_check_model(L, 1, where);
    tl_lua_check_table(L, 2, where);
    tl_lua_check_keys(L, 2, where, keys);
    int n_layers = tl_model_n_layers(u->m);
    int64_t layer = tl_lua_opt_int(L, 2, where, "layer", -1, 0, n_layers - 1);
    if (lua_getfield(L, 2, "ratios") == LUA_TNUMBER) {
        lua_createtable(L, 1, 0); /* a plain number is a list of one */
        lua_rotate(L, -2, 1);
        lua_rawseti(L, -2, 1);
    }
    if (lua_type(L, -1) != LUA_TTABLE)
        return luaL_error(L, "%s.ratios must be a number or a list of numbers in [0, 1], got %s",
                          where, tl_lua_describe(L, -1));
    double ratios[TL_OPT_LIST_MAX];
    lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
    if (n < 1 || n > TL_OPT_LIST_MAX)
        return luaL_error(L, "%s.ratios must have 1 to %d entries, got %I", where,
                          TL_OPT_LIST_MAX, n);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        double r = lua_tonumber(L, -1);
        if (lua_type(L, -1) != LUA_TNUMBER || !(r >= 0.0 && r <= 1.0))
            return luaL_error(L, "%s.ratios[%I] must be a number in [0, 1], got %s", where, i,
                              tl_lua_describe(L, -1));
        ratios[i - 1] = r;
        lua_pop(L, 1);
    }
    int changed = 0;
    for (int l = 0; l < n_layers; l++) {
        if (layer >= 0 && l != layer)
            continue;
        if (!u->has_ratios[l]) {
            if (layer >= 0)
                return luaL_error(L, "%s: layer %d (plugin '%s') has no routing ratios", where,
                                  l, tl_model_layer_plugin(u->m, l));
            continue;
        }
        if (tl_model_set_ratios(u->m, l, ratios, (int)n) != TL_OK)
            return luaL_error(L, "%s: layer %d: %s", where, l, tl_errmsg());
        changed++;
    }
    if (changed == 0)
        return luaL_error(L, "%s: the model has no layer with routing ratios", where);
    lua_pushinteger(L, changed);
    return 1;
}

static int model_tokenizer(lua_State *L)
{
    tl_lua_model *u = tl_lua_check_model(L, 1, "model:tokenizer");
    if (!u->tok)
        lua_pushnil(L);
    else
        tl_lua_push_tokenizer_clone(L, u->tok);
    return 1;
}

static int model_tostring(lua_State *L)
{
    tl_lua_model *u = luaL_checkudata(L, 1, TL_LUA_MODEL);
    if (!u->m) {
        lua_pushliteral(L, "thinklab model (closed)");
        return 1;
    }
    const tl_model_config *cfg = tl_model_config_of(u->m);
    lua_pushfstring(L, "thinklab model (%s, %d layers, d_model %I, %I parameters)",
                    style_names[cfg->style], cfg->n_layers, (lua_Integer)cfg->d_model,
                    (lua_Integer)tl_model_param_count(u->m));
    return 1;
}

/* thinklab.dense_baseline{model = m, by = "width" | "depth", width_multiple = 0}
 * -> config table for thinklab.model, its parameter count. The baseline has
 * the model's shape with every layer a transformer, resized so that its
 * parameter count is closest to the model's. */
static int l_dense_baseline(lua_State *L)
{
    static const char *const keys[] = {"model", "by", "width_multiple", "params", NULL};
    static const char *const by_names[] = {"width", "depth", NULL};
    const char *where = "dense_baseline";
    tl_lua_check_table(L, 1, "thinklab.dense_baseline");
    tl_lua_check_keys(L, 1, where, keys);
    lua_getfield(L, 1, "model");
    tl_lua_model *u = tl_lua_check_model(L, -1, "dense_baseline.model");
    int by = tl_lua_opt_enum(L, 1, where, "by", TL_MATCH_WIDTH, by_names);
    int64_t multiple = tl_lua_opt_int(L, 1, where, "width_multiple", 0, 0, 1 << 20);
    int64_t target =
        tl_lua_opt_int(L, 1, where, "params", tl_model_param_count(u->m), 1, INT64_MAX);
    tl_model_config out;
    if (tl_dense_match(tl_model_config_of(u->m), target, (tl_match_by)by, multiple, &out) !=
        TL_OK)
        return tl_lua_fail(L, where);
    push_config(L, &out, u->seed);
    lua_pushinteger(L, tl_dense_param_count(&out));
    return 2;
}

void tl_lua_open_model(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"param_count", model_param_count},
        {"n_layers", model_n_layers},
        {"config", model_config},
        {"summary", model_summary},
        {"set_ratios", model_set_ratios},
        {"tokenizer", model_tokenizer},
        {"evaluate", tl_lua_model_evaluate},
        {"generate", tl_lua_model_generate},
        {NULL, NULL},
    };
    tl_lua_new_class(L, TL_LUA_MODEL, methods, model_gc, model_close, model_tostring);
    static const luaL_Reg fns[] = {
        {"model", l_model},
        {"pattern", l_pattern},
        {"dense_baseline", l_dense_baseline},
        {NULL, NULL},
    };
    luaL_setfuncs(L, fns, 0);
}
