/* Training from Lua: the step loop runs in C (tl_trainer_run) and calls back
 * into Lua every callback_every steps through lua_pcall, so a Lua error in
 * the callback stops the run cleanly and comes back as the message of a
 * failed trainer:run().
 *
 *   tr = thinklab.trainer{model = m, data = ds, batch_size = 16, context = 128,
 *                         steps = 1000 | tokens = n, optimizer = {...}, schedule = {...},
 *                         clip = 1.0, eval_every = 200, eval_batches = 20, seed = 1,
 *                         threads = 0, callback = fn, callback_every = 10, log = path,
 *                         checkpoint = path, checkpoint_every = 0,
 *                         checkpoint_overwrite = false, progress_every = 10}
 *   stats = tr:run();  tr:save(path);  tr:load(path);  tr:evaluate{routing = "causal"}
 *   r = tr:gradient_spikes{sequences = 64, seq_len = 64, answer_tokens = 8}
 *   stats, tr = thinklab.train{... same keys ..., resume = path} */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "thinklab/dist.h"
#include "thinklab/model.h"
#include "thinklab/threads.h"
#include "thinklab/train.h"
#include "tl_lua.h"

typedef struct tl_lua_trainer {
    tl_trainer *tr;          /* NULL once closed */
    tl_lua_model *model;     /* kept alive by uservalue 2 */
    tl_lua_dataset *data;    /* kept alive by uservalue 3 */
    lua_State *L;            /* the state running tr:run(), for the callback */
    int callback_ref;        /* registry reference to the callback during a run */
    bool running;
    struct tl_lua_trainer *next_model, *next_data; /* the model's and dataset's lists */
} tl_lua_trainer;

enum { UV_CALLBACK = 1, UV_MODEL = 2, UV_DATA = 3, UV_COUNT = 3 };

static const char *const trainer_keys[] = {
    "model",        "data",           "batch_size",    "context",       "steps",
    "tokens",       "optimizer",      "schedule",      "clip",          "eval_every",
    "eval_batches", "seed",           "threads",       "shards",        "callback",
    "callback_every",
    "log",          "log_overwrite",  "log_flush_every", "log_grads_every", "log_token_seqs",
    "log_routing_every",
    "checkpoint",   "checkpoint_every", "checkpoint_overwrite", "progress_every", "resume",
    "name",
    NULL,
};

/* Removes u from a model's list (by_model) or a dataset's list. */
static void unlink_trainer(tl_lua_trainer **head, tl_lua_trainer *u, bool by_model)
{
    for (tl_lua_trainer **p = head; *p; p = by_model ? &(*p)->next_model : &(*p)->next_data) {
        if (*p == u) {
            *p = by_model ? u->next_model : u->next_data;
            return;
        }
    }
}

/* Frees the C trainer and leaves the model's and dataset's lists. Their
 * userdata are alive: each closes its trainers before freeing itself. */
static void trainer_release(tl_lua_trainer *u)
{
    if (!u->tr)
        return;
    tl_trainer_free(u->tr);
    u->tr = NULL;
    unlink_trainer(&u->model->trainers, u, true);
    unlink_trainer(&u->data->trainers, u, false);
}

void tl_lua_close_trainers(lua_State *L, struct tl_lua_trainer *head, bool by_model,
                           const char *where)
{
    for (tl_lua_trainer *t = head; t; t = by_model ? t->next_model : t->next_data)
        if (t->running)
            luaL_error(L, "%s: a trainer using it is running; return false from the callback "
                          "to stop it first",
                       where);
    while (head) {
        tl_lua_trainer *next = by_model ? head->next_model : head->next_data;
        trainer_release(head);
        head = next;
    }
}

static int trainer_gc(lua_State *L)
{
    tl_lua_trainer *u = luaL_checkudata(L, 1, TL_LUA_TRAINER);
    if (!u->running)
        trainer_release(u);
    return 0;
}

static int trainer_close(lua_State *L)
{
    tl_lua_trainer *u = luaL_checkudata(L, 1, TL_LUA_TRAINER);
    if (u->running)
        return luaL_error(L, "trainer:close: the trainer is running; return false from the "
                             "callback to stop it");
    trainer_release(u);
    return 0;
}

static tl_lua_trainer *check_trainer(lua_State *L, int idx, const char *where)
{
    tl_lua_trainer *u = luaL_testudata(L, idx, TL_LUA_TRAINER);
    if (!u)
        luaL_error(L, "%s needs a trainer (from thinklab.trainer), got %s", where,
                   tl_lua_describe(L, idx));
    if (!u->tr)
        luaL_error(L, "%s: the trainer was closed", where);
    if (u->running)
        luaL_error(L, "%s: the trainer is running; call this from outside the callback (use "
                      "model:evaluate inside it)",
                   where);
    return u;
}

/* ---- configuration from Lua ----------------------------------------------- */

static void read_optimizer(lua_State *L, int t, tl_train_config *cfg)
{
    static const char *const keys[] = {"kind",         "lr",       "beta1", "beta2", "eps",
                                       "weight_decay", "momentum", NULL};
    static const char *const kinds[] = {"adamw", "sgd", NULL};
    const char *w = "trainer.optimizer";
    if (lua_getfield(L, t, "optimizer") == LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    if (!lua_istable(L, -1))
        luaL_error(L, "%s must be a table such as {kind = \"adamw\", lr = 3e-4}, got %s", w,
                   tl_lua_describe(L, -1));
    tl_lua_check_keys(L, -1, w, keys);
    cfg->optim.kind = (tl_optim_kind)tl_lua_opt_enum(L, -1, w, "kind", cfg->optim.kind, kinds);
    cfg->schedule.lr = (float)tl_lua_opt_num(L, -1, w, "lr", cfg->schedule.lr, 0.0, 1e3);
    cfg->optim.beta1 = (float)tl_lua_opt_num(L, -1, w, "beta1", cfg->optim.beta1, 0.0, 0.999999);
    cfg->optim.beta2 = (float)tl_lua_opt_num(L, -1, w, "beta2", cfg->optim.beta2, 0.0, 0.999999);
    cfg->optim.eps = (float)tl_lua_opt_num(L, -1, w, "eps", cfg->optim.eps, 1e-30, 1.0);
    cfg->optim.weight_decay =
        (float)tl_lua_opt_num(L, -1, w, "weight_decay", cfg->optim.weight_decay, 0.0, 1e3);
    cfg->optim.momentum =
        (float)tl_lua_opt_num(L, -1, w, "momentum", cfg->optim.momentum, 0.0, 0.999999);
    lua_pop(L, 1);
}

/* Reads trainer.schedule into cfg and returns whether the table sets min_lr. */
static bool read_schedule(lua_State *L, int t, tl_train_config *cfg)
{
    static const char *const keys[] = {"kind", "warmup", "min_lr", NULL};
    static const char *const kinds[] = {"constant", "cosine", NULL};
    const char *w = "trainer.schedule";
    if (lua_getfield(L, t, "schedule") == LUA_TNIL) {
        lua_pop(L, 1);
        return false;
    }
    if (!lua_istable(L, -1))
        luaL_error(L, "%s must be a table such as {kind = \"cosine\", warmup = 100}, got %s", w,
                   tl_lua_describe(L, -1));
    tl_lua_check_keys(L, -1, w, keys);
    cfg->schedule.kind =
        (tl_schedule_kind)tl_lua_opt_enum(L, -1, w, "kind", cfg->schedule.kind, kinds);
    cfg->schedule.warmup = tl_lua_opt_int(L, -1, w, "warmup", cfg->schedule.warmup, 0, INT64_MAX);
    bool has_min_lr = lua_getfield(L, -1, "min_lr") != LUA_TNIL;
    lua_pop(L, 1);
    cfg->schedule.min_lr =
        (float)tl_lua_opt_num(L, -1, w, "min_lr", cfg->schedule.min_lr, 0.0, 1e3);
    lua_pop(L, 1);
    return has_min_lr;
}

/* Reads the trainer table at t into cfg. Strings point into the table. */
static void read_config(lua_State *L, int t, const tl_model_config *mcfg, tl_train_config *cfg)
{
    const char *w = "trainer";
    *cfg = tl_train_config_default();
    cfg->batch_size = tl_lua_opt_int(L, t, w, "batch_size", cfg->batch_size, 1, INT32_MAX);
    cfg->context = tl_lua_opt_int(L, t, w, "context", mcfg->context, 1, INT32_MAX);
    if (cfg->context > mcfg->context)
        luaL_error(L, "trainer.context %I is longer than the model's context %I: build the "
                      "model with context >= %I",
                   (lua_Integer)cfg->context, (lua_Integer)mcfg->context,
                   (lua_Integer)cfg->context);
    int has_steps = lua_getfield(L, t, "steps") != LUA_TNIL;
    int has_tokens = lua_getfield(L, t, "tokens") != LUA_TNIL;
    lua_pop(L, 2);
    if (has_steps && has_tokens)
        luaL_error(L, "trainer: give steps or tokens (a token budget), not both");
    cfg->steps = tl_lua_opt_int(L, t, w, "steps", has_tokens ? 0 : cfg->steps, 1, INT64_MAX);
    cfg->token_budget = tl_lua_opt_int(L, t, w, "tokens", 0, 1, INT64_MAX);
    read_optimizer(L, t, cfg);
    /* Without an explicit warm-up, a run warms up over a tenth of its steps,
     * at most the library's 100, so the warm-up grows with the run. */
    int64_t per_step = cfg->batch_size * cfg->context * tl_dist_world(); /* all ranks */
    int64_t steps = cfg->steps ? cfg->steps
                               : (cfg->token_budget + per_step - 1) / per_step;
    if (cfg->schedule.warmup > steps / 10)
        cfg->schedule.warmup = steps / 10;
    bool has_min_lr = read_schedule(L, t, cfg);
    if (cfg->schedule.warmup >= steps)
        luaL_error(L, "trainer.schedule.warmup %I must be less than the %I training steps",
                   (lua_Integer)cfg->schedule.warmup, (lua_Integer)steps);
    if (cfg->schedule.min_lr > cfg->schedule.lr) {
        /* %g of the float values prints what a script would type (3e-05). */
        char lr[32], min_lr[32];
        snprintf(lr, sizeof lr, "%g", (double)cfg->schedule.lr);
        snprintf(min_lr, sizeof min_lr, "%g", (double)cfg->schedule.min_lr);
        if (has_min_lr)
            luaL_error(L, "trainer.schedule.min_lr %s is above trainer.optimizer.lr %s; lower "
                          "min_lr or raise lr",
                       min_lr, lr);
        luaL_error(L, "trainer.optimizer.lr %s is below trainer.schedule.min_lr, the schedule's "
                      "floor, which defaults to %s; set schedule = {min_lr = %s} or lower in the "
                      "trainer",
                   lr, min_lr, lr);
    }
    cfg->clip_norm = tl_lua_opt_num(L, t, w, "clip", cfg->clip_norm, 0.0, DBL_MAX);
    cfg->eval_every = tl_lua_opt_int(L, t, w, "eval_every", cfg->eval_every, 0, INT64_MAX);
    cfg->eval_batches = tl_lua_opt_int(L, t, w, "eval_batches", cfg->eval_batches, 0, INT64_MAX);
    cfg->seed = (uint64_t)tl_lua_opt_int(L, t, w, "seed", (int64_t)cfg->seed, 0, INT64_MAX);
    /* The default keeps the count in force, e.g. from thinklab.threads(n).
     * Ranks on one machine are held to their share of its cores. */
    cfg->threads = tl_dist_threads(
        (int)tl_lua_opt_int(L, t, w, "threads", tl_threads_get(), 0, 4096));
    cfg->shards = tl_lua_opt_bool(L, t, w, "shards", cfg->shards);
    cfg->callback_every = tl_lua_opt_int(L, t, w, "callback_every", 10, 1, INT64_MAX);
    cfg->log_path = tl_lua_opt_str(L, t, w, "log", NULL);
    cfg->log_overwrite = tl_lua_opt_bool(L, t, w, "log_overwrite", false);
    cfg->log_flush_every = (int)tl_lua_opt_int(L, t, w, "log_flush_every", 0, 0, INT32_MAX);
    cfg->log_grads_every = tl_lua_opt_int(L, t, w, "log_grads_every", 0, 0, INT64_MAX);
    cfg->log_routing_every = tl_lua_opt_int(L, t, w, "log_routing_every",
                                            cfg->log_routing_every, 0, INT64_MAX);
    cfg->log_token_seqs =
        tl_lua_opt_int(L, t, w, "log_token_seqs", cfg->log_token_seqs, 0, INT64_MAX);
    if (cfg->log_token_seqs > cfg->batch_size)
        luaL_error(L, "%s.log_token_seqs %I is more than batch_size %I: it counts sequences of "
                      "each batch; give at most %I",
                   w, (lua_Integer)cfg->log_token_seqs, (lua_Integer)cfg->batch_size,
                   (lua_Integer)cfg->batch_size);
    cfg->checkpoint_path = tl_lua_opt_str(L, t, w, "checkpoint", NULL);
    cfg->checkpoint_every = tl_lua_opt_int(L, t, w, "checkpoint_every", 0, 0, INT64_MAX);
    cfg->checkpoint_overwrite = tl_lua_opt_bool(L, t, w, "checkpoint_overwrite", false);
    /* thinklab.trainer has rejected resume already, so only thinklab.train
     * gets here with it. */
    cfg->resume_path = tl_lua_opt_str(L, t, w, "resume", NULL);
    cfg->progress_every =
        tl_lua_opt_int(L, t, w, "progress_every", cfg->progress_every, 0, INT64_MAX);
    /* name = "run" becomes {"name": "run"} under "experiment" in the log's
     * configuration, where analysis/tllog.py run_name() looks. The text
     * lives on the Lua stack until the trainer has copied it. */
    const char *name = tl_lua_opt_str(L, t, w, "name", NULL);
    if (name) {
        luaL_Buffer b;
        luaL_buffinit(L, &b);
        luaL_addstring(&b, "{\"name\": \"");
        for (const unsigned char *c = (const unsigned char *)name; *c; c++) {
            if (*c == '"' || *c == '\\') {
                luaL_addchar(&b, '\\');
                luaL_addchar(&b, (char)*c);
            } else if (*c < 0x20) {
                char esc[8];
                snprintf(esc, sizeof esc, "\\u%04x", *c);
                luaL_addstring(&b, esc);
            } else {
                luaL_addchar(&b, (char)*c);
            }
        }
        luaL_addstring(&b, "\"}");
        luaL_pushresult(&b);
        cfg->experiment_json = lua_tostring(L, -1);
    }
    /* Under `mpirun thinklab run` each rank trains on its rows of the global
     * batch and the gradients are averaged over all ranks. */
    cfg->rank = tl_dist_rank();
    cfg->world = tl_dist_world();
    if (cfg->world > 1) {
        cfg->reduce_grads = tl_dist_reduce_grads;
        cfg->reduce_user = tl_dist_default_reducer();
    }
}

/* ---- the callback --------------------------------------------------------- */

static void set_num(lua_State *L, const char *key, double v)
{
    if (isnan(v))
        return; /* absent rather than NaN: "if stats.eval_loss then" reads naturally */
    lua_pushnumber(L, v);
    lua_setfield(L, -2, key);
}

static void set_int(lua_State *L, const char *key, int64_t v)
{
    lua_pushinteger(L, v);
    lua_setfield(L, -2, key);
}

static void push_stats(lua_State *L, const tl_train_stats *s)
{
    lua_createtable(L, 0, 16);
    set_int(L, "step", s->step);
    set_int(L, "total", s->total);
    set_int(L, "tokens", s->tokens);
    set_num(L, "loss", s->loss);
    set_num(L, "aux_loss", s->aux_loss);
    set_num(L, "lr", s->lr);
    set_num(L, "grad_norm", s->grad_norm);
    set_num(L, "tokens_per_s", s->tokens_per_s);
    set_num(L, "flops_per_step", s->flops_per_step);
    set_num(L, "flops_total", s->flops_total);
    set_num(L, "elapsed_s", s->elapsed_s);
    set_num(L, "eta_s", s->eta_s);
    if (s->eval_step >= 0) {
        set_int(L, "eval_step", s->eval_step);
        set_num(L, "eval_loss", s->eval_loss);
        set_num(L, "eval_perplexity", s->eval_perplexity);
    }
}

/* Message handler: the error message plus a traceback of the callback. */
static int callback_traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (!msg)
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    luaL_traceback(L, L, msg, 1);
    return 1;
}

/* Protected part of the callback: callback(stats) -> continue? */
static int callback_body(lua_State *L)
{
    tl_lua_trainer *u = lua_touserdata(L, 1);
    const tl_train_stats *s = lua_touserdata(L, 2);
    lua_rawgeti(L, LUA_REGISTRYINDEX, u->callback_ref);
    push_stats(L, s);
    lua_call(L, 1, 1);
    /* false or "stop" ends the run early, and nil or true continues. Any
     * other value, such as "Stop" or "halt", is a mistake that would
     * otherwise let the run go on. */
    int type = lua_type(L, -1);
    bool stop = (type == LUA_TBOOLEAN && !lua_toboolean(L, -1)) ||
                (type == LUA_TSTRING && strcmp(lua_tostring(L, -1), "stop") == 0);
    if (!stop && type != LUA_TNIL && type != LUA_TBOOLEAN)
        return luaL_error(L, "the callback returned %s; return false or \"stop\" to end the "
                             "run, or nothing (or true) to continue",
                          tl_lua_describe(L, -1));
    lua_pushboolean(L, stop);
    return 1;
}

static int train_callback(const tl_train_stats *stats, void *user)
{
    tl_lua_trainer *u = user;
    lua_State *L = u->L;
    int top = lua_gettop(L);
    if (!lua_checkstack(L, 8)) {
        tl_seterr(TL_ENOMEM, "training callback at step %lld: no Lua stack space",
                  (long long)stats->step);
        return -1;
    }
    lua_pushcfunction(L, callback_traceback);
    lua_pushcfunction(L, callback_body);
    lua_pushlightuserdata(L, u);
    lua_pushlightuserdata(L, (void *)stats);
    int rc = lua_pcall(L, 2, 1, top + 1);
    if (rc != LUA_OK) {
        const char *msg = lua_tostring(L, -1);
        tl_seterr(TL_ESTATE, "the callback failed at step %lld: %s", (long long)stats->step,
                  msg ? msg : "(no message)");
        lua_settop(L, top);
        return -1;
    }
    bool stop = lua_toboolean(L, -1);
    lua_settop(L, top);
    return stop ? TL_TRAIN_STOP : TL_TRAIN_CONTINUE;
}

/* ---- construction ---------------------------------------------------------- */

/* Builds a trainer from the table at index t and pushes it. */
static tl_lua_trainer *trainer_create(lua_State *L, int t)
{
    const char *w = "trainer";
    t = lua_absindex(L, t);
    tl_lua_check_keys(L, t, w, trainer_keys);

    lua_getfield(L, t, "model");
    int model_idx = lua_gettop(L);
    tl_lua_model *model = tl_lua_check_model(L, model_idx, "trainer.model");
    lua_getfield(L, t, "data");
    int data_idx = lua_gettop(L);
    tl_lua_dataset *data = tl_lua_check_dataset(L, data_idx, "trainer.data");
    int cb_type = lua_getfield(L, t, "callback");
    int cb_idx = lua_gettop(L);
    if (cb_type != LUA_TNIL && cb_type != LUA_TFUNCTION)
        luaL_error(L, "trainer.callback must be a function(stats), got %s",
                   tl_lua_describe(L, cb_idx));

    const tl_model_config *mcfg = tl_model_config_of(model->m);
    tl_train_config cfg;
    read_config(L, t, mcfg, &cfg);

    int vocab = tl_tokenizer_vocab_size(data->tok);
    if (vocab > mcfg->vocab)
        luaL_error(L, "trainer: the dataset's vocabulary (%d) is larger than the model's "
                      "vocab_size (%I): build the model with tokenizer = the dataset's tokenizer",
                   vocab, (lua_Integer)mcfg->vocab);
    tl_lua_check_split(L, w, "training", data->train.n, cfg.context);
    /* The trainer evaluates at the end of every run. */
    tl_lua_check_split(L, w, "validation", data->val.n, cfg.context);
    tl_lua_check_memory(L, w, model->m, cfg.batch_size, cfg.context, true);

    tl_lua_trainer *u = lua_newuserdatauv(L, sizeof *u, UV_COUNT);
    memset(u, 0, sizeof *u);
    u->callback_ref = LUA_NOREF;
    luaL_setmetatable(L, TL_LUA_TRAINER);
    lua_pushvalue(L, cb_idx);
    lua_setiuservalue(L, -2, UV_CALLBACK);
    lua_pushvalue(L, model_idx);
    lua_setiuservalue(L, -2, UV_MODEL);
    lua_pushvalue(L, data_idx);
    lua_setiuservalue(L, -2, UV_DATA);

    if (cb_type == LUA_TFUNCTION) {
        cfg.callback = train_callback;
        cfg.callback_user = u;
    }
    tl_train_data td = {.train = &data->train, .val = &data->val, .tokenizer = data->tok};
    u->tr = tl_trainer_new(model->m, &td, &cfg);
    if (!u->tr)
        tl_lua_fail(L, w);
    u->model = model;
    u->data = data;
    u->next_model = model->trainers;
    model->trainers = u;
    u->next_data = data->trainers;
    data->trainers = u;
    lua_replace(L, model_idx); /* the trainer takes the first slot it used */
    lua_settop(L, model_idx);
    return u;
}

static int l_trainer(lua_State *L)
{
    tl_lua_check_table(L, 1, "thinklab.trainer");
    lua_settop(L, 1);
    if (lua_getfield(L, 1, "resume") != LUA_TNIL)
        return luaL_error(L, "trainer.resume belongs to thinklab.train; with a trainer call "
                             "trainer:load(path)");
    lua_pop(L, 1);
    trainer_create(L, 1);
    return 1;
}

/* ---- methods --------------------------------------------------------------- */

static int trainer_run(lua_State *L)
{
    tl_lua_trainer *u = check_trainer(L, 1, "trainer:run");
    if (lua_getiuservalue(L, 1, UV_CALLBACK) == LUA_TFUNCTION) {
        u->callback_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    } else {
        lua_pop(L, 1);
    }
    u->L = L;
    u->running = true;
    tl_status st = tl_trainer_run(u->tr);
    u->running = false;
    u->L = NULL;
    luaL_unref(L, LUA_REGISTRYINDEX, u->callback_ref);
    u->callback_ref = LUA_NOREF;
    if (st == TL_EINTR) {
        /* The message already names the step and the files; a traceback
         * would bury it. */
        lua_pushstring(L, tl_errmsg());
        return tl_lua_plain_error(L);
    }
    if (st != TL_OK)
        return tl_lua_fail(L, "trainer:run");
    push_stats(L, tl_trainer_stats(u->tr));
    return 1;
}

/* trainer:step() -> loss of the step. */
static int trainer_step(lua_State *L)
{
    tl_lua_trainer *u = check_trainer(L, 1, "trainer:step");
    if (tl_trainer_step(u->tr) != TL_OK)
        return tl_lua_fail(L, "trainer:step");
    lua_pushnumber(L, tl_trainer_stats(u->tr)->loss);
    return 1;
}

static int trainer_stats(lua_State *L)
{
    tl_lua_trainer *u = check_trainer(L, 1, "trainer:stats");
    push_stats(L, tl_trainer_stats(u->tr));
    return 1;
}

static int trainer_step_index(lua_State *L)
{
    tl_lua_trainer *u = check_trainer(L, 1, "trainer:step_index");
    lua_pushinteger(L, tl_trainer_step_index(u->tr));
    return 1;
}

/* trainer:config() -> the resolved configuration (steps derived from a
 * token budget, the warm-up actually used, ...). */
static int trainer_config(lua_State *L)
{
    tl_lua_trainer *u = check_trainer(L, 1, "trainer:config");
    const tl_train_config *c = tl_trainer_config(u->tr);
    static const char *const optim_names[] = {"adamw", "sgd"};
    static const char *const schedule_names[] = {"constant", "cosine"};
    lua_createtable(L, 0, 16);
    set_int(L, "batch_size", c->batch_size);
    set_int(L, "context", c->context);
    set_int(L, "steps", c->steps);
    if (c->token_budget > 0)
        set_int(L, "tokens", c->token_budget);
    set_num(L, "clip", c->clip_norm);
    set_int(L, "eval_every", c->eval_every);
    set_int(L, "eval_batches", c->eval_batches);
    set_int(L, "seed", (int64_t)c->seed);
    set_int(L, "threads", c->threads);
    lua_pushboolean(L, c->shards);
    lua_setfield(L, -2, "shards");
    set_int(L, "callback_every", c->callback_every);
    set_int(L, "progress_every", c->progress_every);
    set_int(L, "checkpoint_every", c->checkpoint_every);
    lua_pushboolean(L, c->checkpoint_overwrite);
    lua_setfield(L, -2, "checkpoint_overwrite");
    lua_createtable(L, 0, 7);
    lua_pushstring(L, optim_names[c->optim.kind]);
    lua_setfield(L, -2, "kind");
    set_num(L, "lr", c->schedule.lr);
    set_num(L, "beta1", c->optim.beta1);
    set_num(L, "beta2", c->optim.beta2);
    set_num(L, "eps", c->optim.eps);
    set_num(L, "weight_decay", c->optim.weight_decay);
    set_num(L, "momentum", c->optim.momentum);
    lua_setfield(L, -2, "optimizer");
    lua_createtable(L, 0, 3);
    lua_pushstring(L, schedule_names[c->schedule.kind]);
    lua_setfield(L, -2, "kind");
    set_int(L, "warmup", c->schedule.warmup);
    set_num(L, "min_lr", c->schedule.min_lr);
    lua_setfield(L, -2, "schedule");
    return 1;
}

static int trainer_save(lua_State *L)
{
    tl_lua_trainer *u = check_trainer(L, 1, "trainer:save");
    const char *path = luaL_checkstring(L, 2);
    if (tl_trainer_save(u->tr, path) != TL_OK)
        return tl_lua_fail(L, "trainer:save");
    return 0;
}

static int trainer_load(lua_State *L)
{
    tl_lua_trainer *u = check_trainer(L, 1, "trainer:load");
    const char *path = luaL_checkstring(L, 2);
    if (tl_trainer_load(u->tr, path) != TL_OK)
        return tl_lua_fail(L, "trainer:load");
    lua_pushinteger(L, tl_trainer_step_index(u->tr));
    return 1;
}

static tl_train_data trainer_data(const tl_lua_trainer *u)
{
    return (tl_train_data){.train = &u->data->train, .val = &u->data->val,
                           .tokenizer = u->data->tok};
}

/* Sets the calibrated thresholds from n_batches training batches of the
 * trainer's shape, drawn from an RNG of their own (seed and step, as the
 * trainer's own evaluations do), so the training batches do not change.
 * Reads calibration_batches from the options table at t (0: none). */
static void trainer_calibrate(lua_State *L, tl_lua_trainer *u, int t, const char *where)
{
    const tl_train_config *c = tl_trainer_config(u->tr);
    int64_t def = c->eval_calibration_batches > 0 ? c->eval_calibration_batches : 4;
    int64_t n = t ? tl_lua_opt_int(L, t, where, "calibration_batches", def, 1, 1 << 20) : def;
    tl_rng rng;
    tl_rng_seed(&rng, c->seed ^ ((uint64_t)tl_trainer_step_index(u->tr) * 0x9E3779B97F4A7C15ull));
    tl_train_data td = trainer_data(u);
    if (tl_calibrate_thresholds(tl_trainer_ctx(u->tr), u->model->m, &td, c->batch_size,
                                c->context, n, &rng) != TL_OK)
        tl_lua_fail(L, where);
}

/* trainer:evaluate{routing = "topk" | "causal" | "calibrated",
 * calibration_batches = n} -> result table; logs an /eval row. Calibrated
 * routing first calibrates the thresholds on n training batches (default:
 * the trainer's eval_calibration_batches, or 4). */
static int trainer_evaluate(lua_State *L)
{
    static const char *const keys[] = {"routing", "calibration_batches", NULL};
    const char *where = "trainer:evaluate";
    tl_lua_trainer *u = check_trainer(L, 1, where);
    int routing = TL_EVAL_TOPK;
    if (!lua_isnoneornil(L, 2)) {
        tl_lua_check_table(L, 2, where);
        tl_lua_check_keys(L, 2, where, keys);
        routing = tl_lua_opt_routing(L, 2, where, TL_EVAL_TOPK);
    }
    if (routing == TL_EVAL_CALIBRATED)
        trainer_calibrate(L, u, lua_istable(L, 2) ? 2 : 0, where);
    tl_eval_result r;
    if (tl_trainer_evaluate(u->tr, (tl_eval_routing)routing, &r) != TL_OK)
        return tl_lua_fail(L, "trainer:evaluate");
    tl_lua_push_eval_result(L, &r, u->data->tok);
    return 1;
}

/* trainer:gradient_spikes{sequences = M, seq_len = T, answer_tokens = k,
 *     hard_quantile = 0.8, easy_quantile = q, routing = "topk", norms = false,
 *     calibration_batches = n}
 *   -> {sequences = {{loss =, correct =, hard =, easy =}, ...}, n_layers = L,
 *       and with norms = true nuclear, frobenius, max_sv: [sequence][layer][matrix],
 *       matrices in the order wq, wk, wv, wo}
 * Runs tl_spike_analysis with the trainer's weights on the first M
 * validation sequences and writes /analysis/gradient_spikes into the
 * trainer's log (one analysis per log: a second call fails there, so run
 * it from a trainer without a log). Hard = loss at or above the hard_quantile (0.8: the highest
 * 20%); easy = loss at most easy_quantile, which defaults to hard_quantile so
 * that every sequence not hard is easy, as the method labels them. */
static int trainer_gradient_spikes(lua_State *L)
{
    static const char *const keys[] = {"sequences", "seq_len",  "answer_tokens",
                                       "hard_quantile", "easy_quantile", "routing",
                                       "norms", "calibration_batches", NULL};
    const char *where = "trainer:gradient_spikes";
    tl_lua_trainer *u = check_trainer(L, 1, where);
    if (lua_isnoneornil(L, 2)) {
        lua_settop(L, 1);
        lua_newtable(L);
    }
    tl_lua_check_table(L, 2, where);
    tl_lua_check_keys(L, 2, where, keys);
    const tl_train_config *c = tl_trainer_config(u->tr);
    tl_spike_config cfg = {0};
    cfg.n_sequences = tl_lua_opt_int(L, 2, where, "sequences", 32, 1, 1 << 24);
    cfg.seq_len = tl_lua_opt_int(L, 2, where, "seq_len", c->context, 1,
                                 tl_model_config_of(u->model->m)->context);
    cfg.answer_tokens = tl_lua_opt_int(L, 2, where, "answer_tokens", 0, 0, cfg.seq_len);
    cfg.hard_quantile = tl_lua_opt_num(L, 2, where, "hard_quantile", 0.8, 0.0, 1.0);
    cfg.easy_quantile =
        tl_lua_opt_num(L, 2, where, "easy_quantile", cfg.hard_quantile, 0.0, cfg.hard_quantile);
    /* 0 would mean "take hard_quantile" in C; a Lua 0 asks for the minimum
     * alone, which the smallest positive quantile gives. */
    if (cfg.easy_quantile == 0.0)
        cfg.easy_quantile = DBL_MIN;
    cfg.routing = (tl_eval_routing)tl_lua_opt_routing(L, 2, where, TL_EVAL_TOPK);
    cfg.step = tl_trainer_step_index(u->tr);
    bool norms = tl_lua_opt_bool(L, 2, where, "norms", false);
    if (cfg.routing == TL_EVAL_CALIBRATED)
        trainer_calibrate(L, u, 2, where);

    int n_layers = tl_model_n_layers(u->model->m);
    size_t cells = (size_t)cfg.n_sequences * (size_t)n_layers * TL_LOG_SPIKE_MATRICES;
    /* Lua-owned scratch, freed by the collector even when an error unwinds. */
    double *buf = lua_newuserdatauv(L, (3 * cells + 1) * sizeof *buf, 0);
    tl_spike_sequence *seqs =
        lua_newuserdatauv(L, (size_t)cfg.n_sequences * sizeof *seqs, 0);
    tl_train_data td = trainer_data(u);
    if (tl_spike_analysis(tl_trainer_ctx(u->tr), u->model->m, &td, &cfg, tl_trainer_log(u->tr),
                          buf, buf + cells, buf + 2 * cells, seqs) != TL_OK)
        return tl_lua_fail(L, where);

    lua_createtable(L, 0, 6);
    lua_createtable(L, (int)cfg.n_sequences, 0);
    for (int64_t s = 0; s < cfg.n_sequences; s++) {
        lua_createtable(L, 0, 4);
        lua_pushnumber(L, seqs[s].loss);
        lua_setfield(L, -2, "loss");
        lua_pushinteger(L, seqs[s].correct);
        lua_setfield(L, -2, "correct");
        lua_pushboolean(L, seqs[s].hard);
        lua_setfield(L, -2, "hard");
        lua_pushboolean(L, seqs[s].easy);
        lua_setfield(L, -2, "easy");
        lua_rawseti(L, -2, s + 1);
    }
    lua_setfield(L, -2, "sequences");
    set_int(L, "n_layers", n_layers);
    static const char *const kinds[] = {"nuclear", "frobenius", "max_sv"};
    for (int k = 0; norms && k < 3; k++) {
        const double *v = buf + (size_t)k * cells;
        lua_createtable(L, (int)cfg.n_sequences, 0);
        for (int64_t s = 0; s < cfg.n_sequences; s++) {
            lua_createtable(L, n_layers, 0);
            for (int l = 0; l < n_layers; l++) {
                lua_createtable(L, TL_LOG_SPIKE_MATRICES, 0);
                for (int j = 0; j < TL_LOG_SPIKE_MATRICES; j++) {
                    lua_pushnumber(L, *v++);
                    lua_rawseti(L, -2, j + 1);
                }
                lua_rawseti(L, -2, l + 1);
            }
            lua_rawseti(L, -2, s + 1);
        }
        lua_setfield(L, -2, kinds[k]);
    }
    return 1;
}

static int trainer_tostring(lua_State *L)
{
    tl_lua_trainer *u = luaL_checkudata(L, 1, TL_LUA_TRAINER);
    if (!u->tr)
        lua_pushliteral(L, "thinklab trainer (closed)");
    else
        lua_pushfstring(L, "thinklab trainer (step %I of %I)",
                        (lua_Integer)tl_trainer_step_index(u->tr),
                        (lua_Integer)tl_trainer_config(u->tr)->steps);
    return 1;
}

/* thinklab.train{... trainer keys ..., resume = path} -> final stats, trainer. */
static int l_train(lua_State *L)
{
    tl_lua_check_table(L, 1, "thinklab.train");
    lua_settop(L, 1);
    trainer_create(L, 1); /* index 2; tl_trainer_new loads resume */
    lua_pushcfunction(L, trainer_run);
    lua_pushvalue(L, 2);
    lua_call(L, 1, 1);
    lua_pushvalue(L, 2);
    return 2;
}

void tl_lua_open_train(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"run", trainer_run},
        {"step", trainer_step},
        {"stats", trainer_stats},
        {"step_index", trainer_step_index},
        {"config", trainer_config},
        {"save", trainer_save},
        {"load", trainer_load},
        {"evaluate", trainer_evaluate},
        {"gradient_spikes", trainer_gradient_spikes},
        {NULL, NULL},
    };
    tl_lua_new_class(L, TL_LUA_TRAINER, methods, trainer_gc, trainer_close, trainer_tostring);
    static const luaL_Reg fns[] = {
        {"trainer", l_trainer},
        {"train", l_train},
        {NULL, NULL},
    };
    luaL_setfuncs(L, fns, 0);
}
