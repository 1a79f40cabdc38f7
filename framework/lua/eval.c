/* Evaluation, generation and the arena size check.
 *
 *   r = m:evaluate{data = ds, routing = "topk" | "causal" | "calibrated",
 *                  batch_size = 16, context = T, batches = 0}
 *   s = m:generate{prompt = "ROMEO:", max_tokens = 200, temperature = 0.8, top_k = 40,
 *                  seed = 1, tokenizer = tok} */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "thinklab/model.h"
#include "thinklab/train.h"
#include "tl_lua.h"

static const char *const routing_names[] = {"topk", "causal", "calibrated", NULL};

int tl_lua_opt_routing(lua_State *L, int t, const char *where, int def)
{
    return tl_lua_opt_enum(L, t, where, "routing", def, routing_names);
}

/* ---- arena estimate ------------------------------------------------------- */

/* Estimated arena bytes of one step on (B, T). Per token and per block pass
 * the arena contains about 12 C-wide and 4 F-wide activations plus the H
 * attention probabilities over T keys, doubled in training for their
 * gradients, and the logits take 3 V floats (logits, softmax, gradient). A
 * routed layer counts as many block passes as its FLOPs are multiples of a
 * dense block's. NOTE: an estimate from the shapes, not a measurement; it
 * serves to reject sizes that cannot fit at all. */
static double arena_estimate(tl_model *model, int64_t B, int64_t T, bool training)
{
    const tl_model_config *cfg = tl_model_config_of(model);
    double C = (double)cfg->d_model, V = (double)cfg->vocab, H = (double)cfg->n_head;
    double F = cfg->d_ff > 0 ? (double)cfg->d_ff
                             : (cfg->style == TL_BLOCK_GPT2 ? 4.0 * C : 8.0 * C / 3.0);
    double dense_flops = 2.0 * (4.0 * C * C + (cfg->style == TL_BLOCK_GPT2 ? 2.0 : 3.0) * C * F) +
                         4.0 * (double)T * C;
    double passes = 0.0;
    for (int l = 0; l < tl_model_n_layers(model); l++) {
        double p = tl_model_layer_flops_per_token(model, l, T) / dense_flops;
        passes += p < 1.0 ? 1.0 : p;
    }
    double per_pass = 12.0 * C + 4.0 * F + H * (double)T;
    double per_token = (training ? 2.0 : 1.0) * passes * per_pass + 3.0 * V + 4.0 * C;
    return 4.0 * (double)B * (double)T * per_token;
}

void tl_lua_check_memory(lua_State *L, const char *where, tl_model *model, int64_t B, int64_t T,
                         bool training)
{
    double need = arena_estimate(model, B, T, training);
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page <= 0)
        return; /* unknown: let the arena report a failed allocation */
    double have = (double)pages * (double)page;
    if (need > have)
        luaL_error(L, "%s: batch_size %I x context %I needs an estimated %f GiB of activations, "
                      "more than the %f GiB of memory of this machine: reduce batch_size or "
                      "context",
                   where, (lua_Integer)B, (lua_Integer)T, floor(need / 1073741824.0 * 10) / 10,
                   floor(have / 1073741824.0 * 10) / 10);
}

/* ---- evaluation ----------------------------------------------------------- */

/* Pushes an evaluation result as a table. */
void tl_lua_push_eval_result(lua_State *L, const tl_eval_result *r, const tl_tokenizer *tok)
{
    lua_createtable(L, 0, 10);
    lua_pushnumber(L, r->loss);
    lua_setfield(L, -2, "loss");
    lua_pushnumber(L, r->perplexity);
    lua_setfield(L, -2, "perplexity");
    lua_pushnumber(L, r->bits_per_token);
    lua_setfield(L, -2, "bits_per_token");
    if (!isnan(r->bits_per_byte)) {
        lua_pushnumber(L, r->bits_per_byte);
        lua_setfield(L, -2, "bits_per_byte");
    }
    /* A char token is one byte of text, so bits per char = bits per token;
     * for a byte tokenizer it equals bits per byte, and for BPE the unit is
     * undefined without a character count. */
    if (tok && tl_tokenizer_kind_of(tok) == TL_TOKENIZER_CHAR) {
        lua_pushnumber(L, r->bits_per_token);
        lua_setfield(L, -2, "bits_per_char");
    }
    lua_pushinteger(L, r->tokens);
    lua_setfield(L, -2, "tokens");
    lua_pushinteger(L, r->bytes);
    lua_setfield(L, -2, "bytes");
    if (!isnan(r->selected_fraction)) {
        lua_pushnumber(L, r->selected_fraction);
        lua_setfield(L, -2, "selected_fraction");
    }
    lua_pushstring(L, tl_eval_routing_name(r->routing));
    lua_setfield(L, -2, "routing");
}

/* Checks that a split of n tokens contains one window of context + 1 tokens. */
void tl_lua_check_split(lua_State *L, const char *where, const char *split, int64_t n,
                        int64_t context)
{
    if (n < context + 1)
        luaL_error(L, "%s: context %I needs at least %I tokens, but the %s split has %I: use a "
                      "shorter context or more text",
                   where, (lua_Integer)context, (lua_Integer)context + 1, split, (lua_Integer)n);
}

int tl_lua_model_evaluate(lua_State *L)
{
    static const char *const keys[] = {"data",     "routing", "batch_size", "context",
                                       "batches",  "calibration_batches",   "seed", NULL};
    const char *where = "model:evaluate";
    tl_lua_model *u = tl_lua_check_model(L, 1, where);
    tl_lua_check_table(L, 2, where);
    tl_lua_check_keys(L, 2, "evaluate", keys);
    lua_getfield(L, 2, "data");
    tl_lua_dataset *ds = tl_lua_check_dataset(L, -1, "evaluate.data");
    const tl_model_config *cfg = tl_model_config_of(u->m);
    int routing = tl_lua_opt_routing(L, 2, "evaluate", TL_EVAL_TOPK);
    int64_t B = tl_lua_opt_int(L, 2, "evaluate", "batch_size", 16, 1, 1 << 20);
    int64_t T = tl_lua_opt_int(L, 2, "evaluate", "context", cfg->context, 1, cfg->context);
    int64_t batches = tl_lua_opt_int(L, 2, "evaluate", "batches", 0, 0, INT64_MAX);
    int64_t cal = tl_lua_opt_int(L, 2, "evaluate", "calibration_batches", 8, 1, 1 << 20);
    int64_t seed = tl_lua_opt_int(L, 2, "evaluate", "seed", 1, 0, INT64_MAX);
    if ((int64_t)tl_tokenizer_vocab_size(ds->tok) > cfg->vocab)
        return luaL_error(L, "%s: the dataset's vocabulary (%d) is larger than the model's (%I)",
                          where, tl_tokenizer_vocab_size(ds->tok), (lua_Integer)cfg->vocab);
    tl_lua_check_split(L, where, "validation", ds->val.n, T);
    tl_lua_check_memory(L, where, u->m, B, T, false);

    tl_ctx *ctx = tl_lua_model_ctx(L, u);
    tl_train_data data = {.train = &ds->train, .val = &ds->val, .tokenizer = ds->tok};
    if (routing == TL_EVAL_CALIBRATED) {
        tl_lua_check_split(L, where, "training", ds->train.n, T);
        tl_rng rng;
        tl_rng_seed(&rng, (uint64_t)seed);
        if (tl_calibrate_thresholds(ctx, u->m, &data, B, T, cal, &rng) != TL_OK)
            return tl_lua_fail(L, "model:evaluate (calibrating thresholds)");
    }
    tl_eval_result r;
    if (tl_evaluate(ctx, u->m, &data, B, T, batches, (tl_eval_routing)routing, &r) != TL_OK)
        return tl_lua_fail(L, where);
    tl_lua_push_eval_result(L, &r, ds->tok);
    return 1;
}

/* ---- generation ----------------------------------------------------------- */

int tl_lua_model_generate(lua_State *L)
{
    static const char *const keys[] = {"prompt",    "max_tokens", "temperature", "top_k",
                                       "seed",      "tokenizer",  "context",     NULL};
    const char *where = "model:generate";
    tl_lua_model *u = tl_lua_check_model(L, 1, where);
    tl_lua_check_table(L, 2, where);
    lua_settop(L, 2);
    tl_lua_check_keys(L, 2, "generate", keys);
    const tl_model_config *cfg = tl_model_config_of(u->m);

    const tl_tokenizer *tok = u->tok;
    if (lua_getfield(L, 2, "tokenizer") != LUA_TNIL)
        tok = tl_lua_check_tokenizer(L, -1, "generate.tokenizer")->tok;
    lua_pop(L, 1); /* the argument table keeps it alive */

    int64_t max_tokens = tl_lua_opt_int(L, 2, "generate", "max_tokens", 100, 1, 1 << 24);
    double temperature = tl_lua_opt_num(L, 2, "generate", "temperature", 1.0, 0.0, 1e6);
    int64_t top_k = tl_lua_opt_int(L, 2, "generate", "top_k", 0, 0, cfg->vocab);
    int64_t seed = tl_lua_opt_int(L, 2, "generate", "seed", 1, 0, INT64_MAX);
    int64_t context = tl_lua_opt_int(L, 2, "generate", "context", 0, 0, cfg->context);

    /* The prompt: text (needs a tokenizer; returns text) or a list of ids
     * (returns ids). */
    int type = lua_getfield(L, 2, "prompt"); /* index 3 */
    int32_t *prompt = NULL;
    int64_t n_prompt = 0;
    bool text_mode = type == LUA_TSTRING;
    if (text_mode) {
        if (!tok)
            return luaL_error(L, "%s: a text prompt needs a tokenizer: pass generate.tokenizer "
                                 "or build the model with one",
                              where);
        size_t len;
        const char *text = lua_tolstring(L, 3, &len);
        tl_tokens *ids = tl_lua_tokens_new(L);
        if (tl_tokenizer_encode(tok, text, len, ids) != TL_OK)
            return tl_lua_fail(L, "generate.prompt");
        prompt = ids->ids;
        n_prompt = ids->n;
    } else if (type == LUA_TTABLE) {
        prompt = tl_lua_check_ids(L, 3, "generate.prompt", (int)cfg->vocab, &n_prompt);
    } else {
        return luaL_error(L, "generate.prompt must be a string or a list of token ids, got %s",
                          tl_lua_describe(L, 3));
    }
    if (n_prompt < 1)
        return luaL_error(L, "generate.prompt is empty: give at least one token");
    if (tok && tl_tokenizer_vocab_size(tok) > cfg->vocab)
        return luaL_error(L, "%s: the tokenizer's vocabulary (%d) is larger than the model's (%I)",
                          where, tl_tokenizer_vocab_size(tok), (lua_Integer)cfg->vocab);

    int32_t *out = tl_lua_alloc(L, (size_t)max_tokens * sizeof *out, where);
    tl_ctx *ctx = tl_lua_model_ctx(L, u);
    tl_generate_config gc = {.max_new_tokens = max_tokens,
                             .temperature = (float)temperature,
                             .top_k = (int)top_k};
    tl_rng rng;
    tl_rng_seed(&rng, (uint64_t)seed);
    if (tl_generate(ctx, u->m, prompt, n_prompt, &gc, context, &rng, out) != TL_OK)
        return tl_lua_fail(L, where);

    if (!text_mode || !tok) {
        lua_createtable(L, (int)max_tokens, 0);
        for (int64_t i = 0; i < max_tokens; i++) {
            lua_pushinteger(L, out[i]);
            lua_rawseti(L, -2, i + 1);
        }
        return 1;
    }
    size_t len;
    char **text = tl_lua_string_slot(L);
    *text = tl_tokenizer_decode(tok, out, max_tokens, &len);
    if (!*text)
        return tl_lua_fail(L, "generate (decoding)");
    lua_pushlstring(L, *text, len);
    return 1;
}
