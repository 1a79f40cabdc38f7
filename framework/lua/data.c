/* Tokenizers, corpora and encoded datasets as Lua userdata.
 *
 *   tok = thinklab.tokenizer{kind = "char" | "byte" | "bpe", corpus = c | text = s,
 *                            vocab_size = n (bpe)}
 *   tok = thinklab.load_tokenizer(path);  tok:save(path)
 *   c   = thinklab.corpus{path = p, val_fraction = 0.1, max_bytes = n}
 *       | thinklab.corpus{train_path = p, val_path = q}
 *   ds  = c:encode(tok)       -- or thinklab.dataset{corpus = c, tokenizer = tok}
 *
 * Every userdata is created empty (its pointer NULL, so __gc and __close do
 * nothing) and the C object is attached right after the C call succeeds. */
#include <float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "thinklab/data.h"
#include "tl_lua.h"

/* ---- tokenizer ---------------------------------------------------------- */

static tl_lua_tokenizer *tokenizer_push_empty(lua_State *L)
{
    tl_lua_tokenizer *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->tok = NULL;
    luaL_setmetatable(L, TL_LUA_TOKENIZER);
    return u;
}

tl_lua_tokenizer *tl_lua_check_tokenizer(lua_State *L, int idx, const char *where)
{
    tl_lua_tokenizer *u = luaL_testudata(L, idx, TL_LUA_TOKENIZER);
    if (!u)
        luaL_error(L, "%s must be a tokenizer (from thinklab.tokenizer), got %s", where,
                   tl_lua_describe(L, idx));
    if (!u->tok)
        luaL_error(L, "%s: the tokenizer was closed", where);
    return u;
}

tl_tokenizer *tl_lua_tokenizer_clone(const tl_tokenizer *tok)
{
    size_t len;
    char *text = tl_tokenizer_to_string(tok, &len);
    if (!text)
        return NULL;
    tl_tokenizer *copy = tl_tokenizer_from_string(text, len);
    free(text);
    return copy;
}

void tl_lua_push_tokenizer_clone(lua_State *L, const tl_tokenizer *tok)
{
    tl_lua_tokenizer *u = tokenizer_push_empty(L);
    u->tok = tl_lua_tokenizer_clone(tok);
    if (!u->tok)
        tl_lua_fail(L, "copying the tokenizer");
}

static int tokenizer_gc(lua_State *L)
{
    tl_lua_tokenizer *u = luaL_checkudata(L, 1, TL_LUA_TOKENIZER);
    tl_tokenizer_free(u->tok);
    u->tok = NULL;
    return 0;
}

static int tokenizer_tostring(lua_State *L)
{
    tl_lua_tokenizer *u = luaL_checkudata(L, 1, TL_LUA_TOKENIZER);
    if (!u->tok)
        lua_pushliteral(L, "thinklab tokenizer (closed)");
    else
        lua_pushfstring(L, "thinklab tokenizer (%s, vocabulary %d)",
                        tl_tokenizer_kind_name(tl_tokenizer_kind_of(u->tok)),
                        tl_tokenizer_vocab_size(u->tok));
    return 1;
}

static int tokenizer_vocab_size(lua_State *L)
{
    tl_lua_tokenizer *u = tl_lua_check_tokenizer(L, 1, "tokenizer:vocab_size");
    lua_pushinteger(L, tl_tokenizer_vocab_size(u->tok));
    return 1;
}

static int tokenizer_kind(lua_State *L)
{
    tl_lua_tokenizer *u = tl_lua_check_tokenizer(L, 1, "tokenizer:kind");
    lua_pushstring(L, tl_tokenizer_kind_name(tl_tokenizer_kind_of(u->tok)));
    return 1;
}

/* tok:encode(text) -> list of ids (0-based ids, the ids the model takes). */
static int tokenizer_encode(lua_State *L)
{
    tl_lua_tokenizer *u = tl_lua_check_tokenizer(L, 1, "tokenizer:encode");
    size_t len;
    const char *text = luaL_checklstring(L, 2, &len);
    tl_tokens *ids = tl_lua_tokens_new(L);
    if (tl_tokenizer_encode(u->tok, text, len, ids) != TL_OK)
        return tl_lua_fail(L, "tokenizer:encode");
    lua_createtable(L, (int)(ids->n < INT32_MAX ? ids->n : 0), 0);
    for (int64_t i = 0; i < ids->n; i++) {
        lua_pushinteger(L, ids->ids[i]);
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

/* Reads a Lua list of ids into a box-owned int32 buffer pushed on the stack. */
int32_t *tl_lua_check_ids(lua_State *L, int idx, const char *where, int vocab, int64_t *n)
{
    idx = lua_absindex(L, idx);
    if (lua_type(L, idx) != LUA_TTABLE)
        luaL_error(L, "%s must be a list of token ids, got %s", where, tl_lua_describe(L, idx));
    lua_Integer len = (lua_Integer)lua_rawlen(L, idx);
    int32_t *ids = tl_lua_alloc(L, (size_t)len * sizeof *ids, where);
    for (lua_Integer i = 1; i <= len; i++) {
        lua_rawgeti(L, idx, i);
        int isint = 0;
        lua_Integer v = lua_tointegerx(L, -1, &isint);
        if (!isint || v < 0 || v >= vocab)
            luaL_error(L, "%s[%I] must be a token id in [0, %d), got %s", where, i, vocab,
                       tl_lua_describe(L, -1));
        ids[i - 1] = (int32_t)v;
        lua_pop(L, 1);
    }
    *n = len;
    return ids;
}

static int tokenizer_decode(lua_State *L)
{
    tl_lua_tokenizer *u = tl_lua_check_tokenizer(L, 1, "tokenizer:decode");
    int64_t n;
    int32_t *ids =
        tl_lua_check_ids(L, 2, "tokenizer:decode ids", tl_tokenizer_vocab_size(u->tok), &n);
    size_t len;
    char **text = tl_lua_string_slot(L);
    *text = tl_tokenizer_decode(u->tok, ids, n, &len);
    if (!*text)
        return tl_lua_fail(L, "tokenizer:decode");
    lua_pushlstring(L, *text, len);
    return 1;
}

static int tokenizer_save(lua_State *L)
{
    tl_lua_tokenizer *u = tl_lua_check_tokenizer(L, 1, "tokenizer:save");
    const char *path = luaL_checkstring(L, 2);
    if (tl_tokenizer_save(u->tok, path) != TL_OK)
        return tl_lua_fail(L, "tokenizer:save");
    return 0;
}

/* Texts a tokenizer is built from: text = s, or corpus = c (training split
 * for BPE; both splits for char, so validation text never contains a byte
 * outside the vocabulary). */
static void tokenizer_texts(lua_State *L, const char *where, const char **texts, size_t *lens,
                            int *n, bool both_splits)
{
    *n = 0;
    int has_text = lua_getfield(L, 1, "text") != LUA_TNIL;
    lua_pop(L, 1);
    int has_corpus = lua_getfield(L, 1, "corpus") != LUA_TNIL;
    if (has_text == has_corpus)
        luaL_error(L, "%s needs exactly one of text (a string) or corpus (from "
                      "thinklab.corpus)",
                   where);
    if (has_corpus) {
        char key[128];
        snprintf(key, sizeof key, "%s.corpus", where);
        tl_lua_corpus *c = tl_lua_check_corpus(L, -1, key);
        texts[0] = c->c->train;
        lens[0] = c->c->train_len;
        *n = 1;
        if (both_splits) {
            texts[1] = c->c->val;
            lens[1] = c->c->val_len;
            *n = 2;
        }
        lua_pop(L, 1); /* the table keeps the corpus alive */
        return;
    }
    lua_pop(L, 1);
    lua_getfield(L, 1, "text");
    if (lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "%s.text must be a string, got %s", where, tl_lua_describe(L, -1));
    texts[0] = lua_tolstring(L, -1, &lens[0]);
    *n = 1;
    lua_pop(L, 1);
}

static const char *const tokenizer_kinds[] = {"char", "byte", "bpe", NULL};

/* thinklab.tokenizer{kind, text | corpus, vocab_size}. */
static int l_tokenizer(lua_State *L)
{
    static const char *const keys[] = {"kind", "text", "corpus", "vocab_size", NULL};
    const char *where = "thinklab.tokenizer";
    tl_lua_check_table(L, 1, where);
    tl_lua_check_keys(L, 1, where, keys);
    int kind = tl_lua_opt_enum(L, 1, where, "kind", -1, tokenizer_kinds);
    if (kind < 0)
        return luaL_error(L, "%s.kind is required: \"char\", \"byte\" or \"bpe\"", where);

    const char *texts[2] = {NULL, NULL};
    size_t lens[2] = {0, 0};
    int n_texts = 0;
    int64_t vocab = 0;
    if (kind == TL_TOKENIZER_BPE) {
        vocab = tl_lua_req_int(L, 1, where, "vocab_size", 257, 1 << 20);
        tokenizer_texts(L, where, texts, lens, &n_texts, false);
    } else if (kind == TL_TOKENIZER_CHAR) {
        if (lua_getfield(L, 1, "vocab_size") != LUA_TNIL)
            return luaL_error(L, "%s.vocab_size applies to bpe only: a char vocabulary is the "
                                 "distinct bytes of its text",
                              where);
        lua_pop(L, 1);
        tokenizer_texts(L, where, texts, lens, &n_texts, true);
    } else {
        if (lua_getfield(L, 1, "vocab_size") != LUA_TNIL &&
            !(lua_isinteger(L, -1) && lua_tointeger(L, -1) == 256))
            return luaL_error(L, "%s.vocab_size of a byte tokenizer is always 256, got %s",
                              where, tl_lua_describe(L, -1));
        lua_pop(L, 1);
    }

    tl_lua_tokenizer *u = tokenizer_push_empty(L);
    if (kind == TL_TOKENIZER_CHAR)
        u->tok = tl_tokenizer_char_new_multi(texts, lens, n_texts);
    else if (kind == TL_TOKENIZER_BYTE)
        u->tok = tl_tokenizer_byte_new();
    else
        u->tok = tl_tokenizer_bpe_train(texts[0], lens[0], (int)vocab);
    if (!u->tok)
        return tl_lua_fail(L, where);
    return 1;
}

static int l_load_tokenizer(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    tl_lua_tokenizer *u = tokenizer_push_empty(L);
    u->tok = tl_tokenizer_load(path);
    if (!u->tok)
        return tl_lua_fail(L, "thinklab.load_tokenizer");
    return 1;
}

/* ---- corpus ------------------------------------------------------------- */

tl_lua_corpus *tl_lua_check_corpus(lua_State *L, int idx, const char *where)
{
    tl_lua_corpus *u = luaL_testudata(L, idx, TL_LUA_CORPUS);
    if (!u)
        luaL_error(L, "%s must be a corpus (from thinklab.corpus), got %s", where,
                   tl_lua_describe(L, idx));
    if (!u->c)
        luaL_error(L, "%s: the corpus was closed", where);
    return u;
}

static int corpus_gc(lua_State *L)
{
    tl_lua_corpus *u = luaL_checkudata(L, 1, TL_LUA_CORPUS);
    tl_corpus_free(u->c);
    u->c = NULL;
    return 0;
}

static int corpus_tostring(lua_State *L)
{
    tl_lua_corpus *u = luaL_checkudata(L, 1, TL_LUA_CORPUS);
    if (!u->c)
        lua_pushliteral(L, "thinklab corpus (closed)");
    else
        lua_pushfstring(L, "thinklab corpus '%s' (train %I bytes, val %I bytes)", u->name,
                        (lua_Integer)u->c->train_len, (lua_Integer)u->c->val_len);
    return 1;
}

static int corpus_train_text(lua_State *L)
{
    tl_lua_corpus *u = tl_lua_check_corpus(L, 1, "corpus:train_text");
    lua_pushlstring(L, u->c->train, u->c->train_len);
    return 1;
}

static int corpus_val_text(lua_State *L)
{
    tl_lua_corpus *u = tl_lua_check_corpus(L, 1, "corpus:val_text");
    lua_pushlstring(L, u->c->val, u->c->val_len);
    return 1;
}

/* corpus:sizes() -> train bytes, validation bytes. */
static int corpus_sizes(lua_State *L)
{
    tl_lua_corpus *u = tl_lua_check_corpus(L, 1, "corpus:sizes");
    lua_pushinteger(L, (lua_Integer)u->c->train_len);
    lua_pushinteger(L, (lua_Integer)u->c->val_len);
    return 2;
}

/* Splits text[0..len) as tl_corpus_load does: the first floor(len * (1 -
 * val_fraction)) bytes, moved forward to a UTF-8 character boundary, train.
 * Takes ownership of nothing; returns NULL with a message. */
static tl_corpus *corpus_split(const char *text, size_t len, double val_fraction,
                               const char *name)
{
    size_t cut = (size_t)((double)len * (1.0 - val_fraction));
    while (cut < len && ((unsigned char)text[cut] & 0xc0) == 0x80)
        cut++;
    if (cut == 0 || cut == len) {
        tl_seterr(TL_EINVAL, "splitting the %zu bytes of '%s' with validation fraction %g "
                             "leaves the %s split empty: use more text or another fraction",
                  len, name, val_fraction, cut == 0 ? "training" : "validation");
        return NULL;
    }
    tl_corpus *c = calloc(1, sizeof *c);
    if (!c) {
        tl_seterr(TL_ENOMEM, "could not allocate a corpus");
        return NULL;
    }
    c->train = malloc(cut + 1);
    c->val = malloc(len - cut + 1);
    if (!c->train || !c->val) {
        tl_corpus_free(c);
        tl_seterr(TL_ENOMEM, "could not allocate the %zu-byte corpus '%s'", len, name);
        return NULL;
    }
    memcpy(c->train, text, cut);
    c->train[cut] = '\0';
    c->train_len = cut;
    memcpy(c->val, text + cut, len - cut);
    c->val[len - cut] = '\0';
    c->val_len = len - cut;
    return c;
}

/* Loads path, keeps its first max_bytes bytes (cut back to a UTF-8 boundary)
 * and splits them. */
static tl_corpus *corpus_load_prefix(const char *path, int64_t max_bytes, double val_fraction)
{
    size_t len;
    char *text = tl_text_read(path, &len);
    if (!text)
        return NULL;
    if ((uint64_t)max_bytes < len) {
        len = (size_t)max_bytes;
        while (len > 0 && ((unsigned char)text[len] & 0xc0) == 0x80)
            len--;
    }
    tl_corpus *c = corpus_split(text, len, val_fraction, path);
    free(text);
    return c;
}

/* thinklab.corpus{path, val_fraction, max_bytes} or {train_path, val_path}. */
static int l_corpus(lua_State *L)
{
    static const char *const keys[] = {"path", "val_fraction", "max_bytes", "train_path",
                                       "val_path", NULL};
    const char *where = "thinklab.corpus";
    if (lua_type(L, 1) == LUA_TSTRING) { /* thinklab.corpus "file.txt" */
        lua_createtable(L, 0, 1);
        lua_pushvalue(L, 1);
        lua_setfield(L, -2, "path");
        lua_replace(L, 1);
    }
    tl_lua_check_table(L, 1, where);
    tl_lua_check_keys(L, 1, where, keys);
    const char *path = tl_lua_opt_str(L, 1, where, "path", NULL);
    const char *train_path = tl_lua_opt_str(L, 1, where, "train_path", NULL);
    const char *val_path = tl_lua_opt_str(L, 1, where, "val_path", NULL);
    /* Any finite value passes here, so that the check below reports the open
     * interval (0, 1) that the split accepts. */
    double val_fraction = tl_lua_opt_num(L, 1, where, "val_fraction", TL_CORPUS_VAL_FRACTION,
                                         -DBL_MAX, DBL_MAX);
    int64_t max_bytes = tl_lua_opt_int(L, 1, where, "max_bytes", 0, 1, INT64_MAX);
    if (path && (train_path || val_path))
        return luaL_error(L, "%s: give either path (one file, split by val_fraction) or "
                             "train_path and val_path, not both",
                          where);
    if (!path && !(train_path && val_path))
        return luaL_error(L, "%s needs path, or both train_path and val_path", where);
    if (val_fraction <= 0.0 || val_fraction >= 1.0)
        return luaL_error(L, "%s.val_fraction must be in (0, 1), got %f", where, val_fraction);
    if (!path && max_bytes > 0)
        return luaL_error(L, "%s.max_bytes applies to a single path", where);

    tl_lua_corpus *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->c = NULL;
    snprintf(u->name, sizeof u->name, "%s", path ? path : train_path);
    luaL_setmetatable(L, TL_LUA_CORPUS);
    if (path && max_bytes > 0)
        u->c = corpus_load_prefix(path, max_bytes, val_fraction);
    else if (path)
        u->c = tl_corpus_load(path, val_fraction);
    else
        u->c = tl_corpus_load_split(train_path, val_path);
    if (!u->c)
        return tl_lua_fail(L, where);
    return 1;
}

/* ---- dataset: both splits encoded by one tokenizer ------------------------ */

tl_lua_dataset *tl_lua_check_dataset(lua_State *L, int idx, const char *where)
{
    tl_lua_dataset *u = luaL_testudata(L, idx, TL_LUA_DATASET);
    if (!u)
        luaL_error(L, "%s must be a dataset (from corpus:encode(tokenizer)), got %s", where,
                   tl_lua_describe(L, idx));
    if (!u->tok)
        luaL_error(L, "%s: the dataset was closed", where);
    return u;
}

static void dataset_release(tl_lua_dataset *u)
{
    tl_tokens_free(&u->train);
    tl_tokens_free(&u->val);
    tl_tokenizer_free(u->tok);
    u->tok = NULL;
}

/* At collection the trainers that borrow the tokens are unreachable too; Lua
 * finalizes them first because they were created later, and any left in the
 * list are closed here. */
static int dataset_gc(lua_State *L)
{
    tl_lua_dataset *u = luaL_checkudata(L, 1, TL_LUA_DATASET);
    tl_lua_close_trainers(L, u->trainers, false, "dataset");
    dataset_release(u);
    return 0;
}

static int dataset_close(lua_State *L)
{
    tl_lua_dataset *u = luaL_checkudata(L, 1, TL_LUA_DATASET);
    tl_lua_close_trainers(L, u->trainers, false, "dataset:close");
    dataset_release(u);
    return 0;
}

static int dataset_tostring(lua_State *L)
{
    tl_lua_dataset *u = luaL_checkudata(L, 1, TL_LUA_DATASET);
    if (!u->tok)
        lua_pushliteral(L, "thinklab dataset (closed)");
    else
        lua_pushfstring(L, "thinklab dataset (%s tokenizer, vocabulary %d; train %I tokens, "
                           "val %I tokens)",
                        tl_tokenizer_kind_name(tl_tokenizer_kind_of(u->tok)),
                        tl_tokenizer_vocab_size(u->tok), (lua_Integer)u->train.n,
                        (lua_Integer)u->val.n);
    return 1;
}

/* ds:sizes() -> training tokens, validation tokens. */
static int dataset_sizes(lua_State *L)
{
    tl_lua_dataset *u = tl_lua_check_dataset(L, 1, "dataset:sizes");
    lua_pushinteger(L, (lua_Integer)u->train.n);
    lua_pushinteger(L, (lua_Integer)u->val.n);
    return 2;
}

static int dataset_tokenizer(lua_State *L)
{
    tl_lua_dataset *u = tl_lua_check_dataset(L, 1, "dataset:tokenizer");
    tl_lua_push_tokenizer_clone(L, u->tok);
    return 1;
}

/* Encodes corpus at index ci with tokenizer at ti; pushes the dataset. */
static int dataset_make(lua_State *L, int ci, int ti, const char *where)
{
    char key[128];
    snprintf(key, sizeof key, "%s corpus", where);
    tl_lua_corpus *c = tl_lua_check_corpus(L, ci, key);
    snprintf(key, sizeof key, "%s tokenizer", where);
    tl_lua_tokenizer *t = tl_lua_check_tokenizer(L, ti, key);

    tl_lua_dataset *u = lua_newuserdatauv(L, sizeof *u, 0);
    memset(u, 0, sizeof *u);
    luaL_setmetatable(L, TL_LUA_DATASET);
    tl_tokens train = {0}, val = {0};
    if (tl_corpus_encode(c->c, t->tok, &train, &val) != TL_OK)
        return luaL_error(L, "%s: cannot encode corpus '%s' with the %s tokenizer: %s", where,
                          c->name, tl_tokenizer_kind_name(tl_tokenizer_kind_of(t->tok)),
                          tl_errmsg());
    u->train = train;
    u->val = val;
    u->train_bytes = (int64_t)c->c->train_len;
    u->val_bytes = (int64_t)c->c->val_len;
    u->tok = tl_lua_tokenizer_clone(t->tok);
    if (!u->tok) {
        dataset_release(u);
        return tl_lua_fail(L, where);
    }
    return 1;
}

static int corpus_encode(lua_State *L)
{
    return dataset_make(L, 1, 2, "corpus:encode");
}

static int l_dataset(lua_State *L)
{
    static const char *const keys[] = {"corpus", "tokenizer", NULL};
    tl_lua_check_table(L, 1, "thinklab.dataset");
    tl_lua_check_keys(L, 1, "thinklab.dataset", keys);
    lua_getfield(L, 1, "corpus");
    lua_getfield(L, 1, "tokenizer");
    return dataset_make(L, 2, 3, "thinklab.dataset");
}

/* ---- registration ------------------------------------------------------- */

void tl_lua_new_class(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction gc,
                      lua_CFunction close, lua_CFunction tostring)
{
    luaL_newmetatable(L, name);
    lua_pushcfunction(L, gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, tostring);
    lua_setfield(L, -2, "__tostring");
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_pushcfunction(L, close);
    lua_setfield(L, -2, "close");
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}

void tl_lua_open_data(lua_State *L)
{
    static const luaL_Reg tokenizer_methods[] = {
        {"vocab_size", tokenizer_vocab_size}, {"kind", tokenizer_kind},
        {"encode", tokenizer_encode},         {"decode", tokenizer_decode},
        {"save", tokenizer_save},             {NULL, NULL},
    };
    static const luaL_Reg corpus_methods[] = {
        {"train_text", corpus_train_text},
        {"val_text", corpus_val_text},
        {"sizes", corpus_sizes},
        {"encode", corpus_encode},
        {NULL, NULL},
    };
    static const luaL_Reg dataset_methods[] = {
        {"sizes", dataset_sizes},
        {"tokenizer", dataset_tokenizer},
        {NULL, NULL},
    };
    tl_lua_new_class(L, TL_LUA_TOKENIZER, tokenizer_methods, tokenizer_gc, tokenizer_gc,
                     tokenizer_tostring);
    tl_lua_new_class(L, TL_LUA_CORPUS, corpus_methods, corpus_gc, corpus_gc, corpus_tostring);
    tl_lua_new_class(L, TL_LUA_DATASET, dataset_methods, dataset_gc, dataset_close,
                     dataset_tostring);

    static const luaL_Reg fns[] = {
        {"tokenizer", l_tokenizer},
        {"load_tokenizer", l_load_tokenizer},
        {"corpus", l_corpus},
        {"dataset", l_dataset},
        {NULL, NULL},
    };
    luaL_setfuncs(L, fns, 0);
}
