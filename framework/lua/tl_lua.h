/* Internals shared by the files of the Lua module.
 *
 * Memory rule: a Lua error is a longjmp, so no function here may raise one
 * while it owns a C allocation that only a local variable points to. Every
 * C object is owned by a userdata (created empty, then filled), or by a
 * tl_lua_box, whose __gc and __close free it; failures of C calls are turned
 * into Lua errors only after the C side has freed what it owned. */
#ifndef TL_LUA_H
#define TL_LUA_H

#include <stdbool.h>
#include <stdint.h>

#include <lauxlib.h>
#include <lua.h>

#include "thinklab/data.h"

/* Metatable names of the module's userdata types. */
#define TL_LUA_BOX "thinklab.box"
#define TL_LUA_TOKENIZER "thinklab.tokenizer"
#define TL_LUA_CORPUS "thinklab.corpus"
#define TL_LUA_DATASET "thinklab.dataset"
#define TL_LUA_MODEL "thinklab.model"
#define TL_LUA_TRAINER "thinklab.trainer"

/* Registry key of the table of raw command-line overrides (key -> text). */
#define TL_LUA_OVERRIDES "thinklab.overrides"

/* Opens the module: returns the table on the stack. */
int luaopen_thinklab(lua_State *L);

/* ---- boxes: a userdata owning one C pointer and its free function ---- */

typedef void (*tl_lua_free_fn)(void *);

/* Pushes an empty box (pointer NULL) and returns it. Attach with
 * tl_lua_box_set() right after the allocation, before anything can raise. */
struct tl_lua_box *tl_lua_box_new(lua_State *L);
void tl_lua_box_set(struct tl_lua_box *box, void *ptr, tl_lua_free_fn fn);
/* Frees the owned pointer now (the box stays, empty). */
void tl_lua_box_release(struct tl_lua_box *box);
/* Detaches and returns the pointer; the box no longer frees it. */
void *tl_lua_box_take(struct tl_lua_box *box);
void *tl_lua_box_get(struct tl_lua_box *box);

/* Pushes a new malloc'ed buffer of size bytes owned by a box on the stack
 * and returns it (zeroed). Raises "out of memory" naming what. */
void *tl_lua_alloc(lua_State *L, size_t size, const char *what);

/* Pushes a box owning an empty heap tl_tokens and returns it: encode into
 * it, and the collector frees the ids whatever raises later. */
tl_tokens *tl_lua_tokens_new(lua_State *L);
/* Pushes a box owning a slot for one malloc'ed string (initially NULL),
 * freed with the box: store a C function's returned string in it at once. */
char **tl_lua_string_slot(lua_State *L);

/* ---- errors ---- */

/* Raises a Lua error "<what>: <tl_errmsg()>". Call only after freeing. */
int tl_lua_fail(lua_State *L, const char *what);

/* Registry key of the message of the last error raised as complete for the
 * user (a bad command-line value): the thinklab command prints that message
 * without a traceback. */
#define TL_LUA_PLAIN_ERROR "thinklab.plain_error"

/* Raises the message on top of the stack as such an error. */
int tl_lua_plain_error(lua_State *L);
/* Formats "<script:line:> <message>" like luaL_error and raises it as such
 * an error. */
int tl_lua_usage_error(lua_State *L, const char *fmt, ...);

/* ---- table fields: each check names the key, e.g. "model.d_model" ---- */

/* Checks that argument arg is a table; where names it ("thinklab.model"). */
void tl_lua_check_table(lua_State *L, int arg, const char *where);

/* Rejects keys of the table at index t that are not in valid (NULL-ended),
 * listing the valid ones. */
void tl_lua_check_keys(lua_State *L, int t, const char *where, const char *const *valid);

/* Field getters. Each returns the default when the field is nil, and raises
 * "<where>.<key> must be ..., got ..." on a wrong type or range. */
int64_t tl_lua_opt_int(lua_State *L, int t, const char *where, const char *key, int64_t def,
                       int64_t min, int64_t max);
double tl_lua_opt_num(lua_State *L, int t, const char *where, const char *key, double def,
                      double min, double max);
bool tl_lua_opt_bool(lua_State *L, int t, const char *where, const char *key, bool def);
/* Returns a string that stays valid while the table is alive, or def. */
const char *tl_lua_opt_str(lua_State *L, int t, const char *where, const char *key,
                           const char *def);
/* Like tl_lua_opt_str, but the value must be one of choices (NULL-ended);
 * returns its index, or def_index when the field is nil. */
int tl_lua_opt_enum(lua_State *L, int t, const char *where, const char *key, int def_index,
                    const char *const *choices);
/* Raises when the field is nil. */
int64_t tl_lua_req_int(lua_State *L, int t, const char *where, const char *key, int64_t min,
                       int64_t max);

/* Describes the value at idx for messages: "-3", "'abc'", "a table", "nil". */
const char *tl_lua_describe(lua_State *L, int idx);

/* ---- data userdata (data.c) ---- */

typedef struct tl_lua_tokenizer {
    tl_tokenizer *tok; /* NULL once closed */
} tl_lua_tokenizer;

typedef struct tl_lua_corpus {
    tl_corpus *c; /* NULL once closed */
    char name[256]; /* file name, for messages */
} tl_lua_corpus;

struct tl_lua_trainer;

/* Both splits of a corpus encoded by one tokenizer, which the dataset owns a
 * copy of. Trainers borrow the token arrays, so closing the dataset closes
 * the trainers listed in trainers first. */
typedef struct tl_lua_dataset {
    tl_tokenizer *tok; /* NULL once closed */
    tl_tokens train, val;
    int64_t train_bytes, val_bytes;
    struct tl_lua_trainer *trainers; /* trainers using this dataset, linked by next_data */
} tl_lua_dataset;

tl_lua_tokenizer *tl_lua_check_tokenizer(lua_State *L, int idx, const char *where);
tl_lua_corpus *tl_lua_check_corpus(lua_State *L, int idx, const char *where);
tl_lua_dataset *tl_lua_check_dataset(lua_State *L, int idx, const char *where);
/* Returns a copy made through the text format, or NULL with a message. */
tl_tokenizer *tl_lua_tokenizer_clone(const tl_tokenizer *tok);
/* Pushes a new tokenizer userdata holding a copy of tok. */
void tl_lua_push_tokenizer_clone(lua_State *L, const tl_tokenizer *tok);
/* Reads the Lua list of ids at idx into a box-owned buffer (pushed). */
int32_t *tl_lua_check_ids(lua_State *L, int idx, const char *where, int vocab, int64_t *n);

/* ---- model userdata (model.c, eval.c) ---- */

typedef struct tl_model tl_model;
typedef struct tl_ctx tl_ctx;

typedef struct tl_lua_model {
    tl_model *m;       /* NULL once closed */
    tl_ctx *ctx;       /* arena for evaluation and generation, created on first use */
    tl_tokenizer *tok; /* copy of the tokenizer given at construction, or NULL */
    bool *has_ratios;  /* per layer: the plugin takes routing ratios */
    int n_layers;
    struct tl_lua_trainer *trainers; /* trainers using this model, linked by next_model */
    uint64_t seed;     /* parameter initialisation seed */
} tl_lua_model;

tl_lua_model *tl_lua_check_model(lua_State *L, int idx, const char *where);
/* Returns the model's evaluation context, creating it on first use. */
tl_ctx *tl_lua_model_ctx(lua_State *L, tl_lua_model *u);
int tl_lua_model_evaluate(lua_State *L);
int tl_lua_model_generate(lua_State *L);

/* Closes every trainer of the list (by_model: the model's list, linked by
 * next_model; otherwise a dataset's). Raises, closing none, while one runs. */
void tl_lua_close_trainers(lua_State *L, struct tl_lua_trainer *head, bool by_model,
                           const char *where);

/* Raises when training or evaluating model with batch (B, T) would need an
 * estimated arena larger than the machine's physical memory. */
void tl_lua_check_memory(lua_State *L, const char *where, tl_model *model, int64_t B, int64_t T,
                         bool training);

typedef struct tl_eval_result tl_eval_result;
/* Pushes an evaluation result table; tok (may be NULL) decides whether
 * bits_per_char is given. */
void tl_lua_push_eval_result(lua_State *L, const tl_eval_result *r, const tl_tokenizer *tok);
/* Raises unless a split of n tokens contains one window of context + 1 tokens. */
void tl_lua_check_split(lua_State *L, const char *where, const char *split, int64_t n,
                        int64_t context);

/* Parses routing = "topk" | "causal" | "calibrated" from the table at t. */
int tl_lua_opt_routing(lua_State *L, int t, const char *where, int def);

/* Registers metatable name with methods (plus close), __gc = gc, __close =
 * close and __tostring. */
void tl_lua_new_class(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction gc,
                      lua_CFunction close, lua_CFunction tostring);

/* ---- parts of the module, each adding its functions to the table on top ---- */

void tl_lua_open_core(lua_State *L);
void tl_lua_open_params(lua_State *L);
void tl_lua_open_data(lua_State *L);
void tl_lua_open_model(lua_State *L);
void tl_lua_open_train(lua_State *L);
void tl_lua_open_plugins(lua_State *L);

#endif
