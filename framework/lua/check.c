/* Boxes that own C memory, and table-field checks whose messages name the key. */
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "thinklab/data.h"
#include "thinklab/status.h"
#include "tl_lua.h"

struct tl_lua_box {
    void *ptr;
    tl_lua_free_fn fn;
};

static int box_gc(lua_State *L)
{
    tl_lua_box_release(luaL_checkudata(L, 1, TL_LUA_BOX));
    return 0;
}

struct tl_lua_box *tl_lua_box_new(lua_State *L)
{
    struct tl_lua_box *box = lua_newuserdatauv(L, sizeof *box, 0);
    box->ptr = NULL;
    box->fn = NULL;
    if (luaL_newmetatable(L, TL_LUA_BOX)) {
        lua_pushcfunction(L, box_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, box_gc);
        lua_setfield(L, -2, "__close");
    }
    lua_setmetatable(L, -2);
    return box;
}

void tl_lua_box_set(struct tl_lua_box *box, void *ptr, tl_lua_free_fn fn)
{
    box->ptr = ptr;
    box->fn = fn;
}

void tl_lua_box_release(struct tl_lua_box *box)
{
    if (box->ptr && box->fn)
        box->fn(box->ptr);
    box->ptr = NULL;
    box->fn = NULL;
}

void *tl_lua_box_take(struct tl_lua_box *box)
{
    void *p = box->ptr;
    box->ptr = NULL;
    box->fn = NULL;
    return p;
}

void *tl_lua_box_get(struct tl_lua_box *box) { return box->ptr; }

void *tl_lua_alloc(lua_State *L, size_t size, const char *what)
{
    struct tl_lua_box *box = tl_lua_box_new(L);
    void *p = calloc(1, size ? size : 1);
    if (!p)
        luaL_error(L, "out of memory: %s needs %zu bytes", what, size);
    tl_lua_box_set(box, p, free);
    return p;
}

static void string_slot_free(void *p)
{
    char **slot = p;
    free(*slot);
    free(slot);
}

static void tokens_box_free(void *p)
{
    tl_tokens_free(p);
    free(p);
}

tl_tokens *tl_lua_tokens_new(lua_State *L)
{
    struct tl_lua_box *box = tl_lua_box_new(L);
    tl_tokens *t = calloc(1, sizeof *t);
    if (!t)
        luaL_error(L, "out of memory: a token list");
    tl_lua_box_set(box, t, tokens_box_free);
    return t;
}

char **tl_lua_string_slot(lua_State *L)
{
    struct tl_lua_box *box = tl_lua_box_new(L);
    char **slot = calloc(1, sizeof *slot);
    if (!slot)
        luaL_error(L, "out of memory: a string slot");
    tl_lua_box_set(box, slot, string_slot_free);
    return slot;
}

int tl_lua_fail(lua_State *L, const char *what)
{
    const char *msg = tl_errmsg();
    return luaL_error(L, "%s: %s", what, msg && *msg ? msg : "failed without a message");
}

int tl_lua_plain_error(lua_State *L)
{
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, TL_LUA_PLAIN_ERROR);
    return lua_error(L);
}

int tl_lua_usage_error(lua_State *L, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    luaL_where(L, 1);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    lua_concat(L, 2);
    return tl_lua_plain_error(L);
}

const char *tl_lua_describe(lua_State *L, int idx)
{
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        return "nil";
    case LUA_TNUMBER:
        /* Lua prints 0/0 as "-nan" on x86, a sign that means nothing here. */
        if (!lua_isinteger(L, idx) && isnan(lua_tonumber(L, idx)))
            return lua_pushstring(L, "nan");
        return luaL_tolstring(L, idx, NULL); /* leaves the string on the stack */
    case LUA_TBOOLEAN:
        return luaL_tolstring(L, idx, NULL);
    case LUA_TSTRING:
        return lua_pushfstring(L, "'%s'", lua_tostring(L, idx));
    default:
        return lua_pushfstring(L, "a %s", luaL_typename(L, idx));
    }
}

void tl_lua_check_table(lua_State *L, int arg, const char *where)
{
    if (lua_type(L, arg) != LUA_TTABLE)
        luaL_error(L, "%s expects a table of options, got %s", where, tl_lua_describe(L, arg));
}

void tl_lua_check_keys(lua_State *L, int t, const char *where, const char *const *valid)
{
    t = lua_absindex(L, t);
    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_pop(L, 1);
        bool known = false;
        if (lua_type(L, -1) == LUA_TSTRING) {
            const char *k = lua_tostring(L, -1);
            for (int i = 0; valid[i]; i++)
                if (strcmp(k, valid[i]) == 0)
                    known = true;
        }
        if (!known) {
            luaL_Buffer b;
            const char *key = tl_lua_describe(L, -1);
            luaL_buffinit(L, &b);
            for (int i = 0; valid[i]; i++) {
                if (i)
                    luaL_addstring(&b, ", ");
                luaL_addstring(&b, valid[i]);
            }
            luaL_pushresult(&b);
            luaL_error(L, "%s: unknown key %s; valid keys are: %s", where, key,
                       lua_tostring(L, -1));
        }
    }
}

/* Pushes v formatted as %g (Lua's %f prints 14 significant digits) and
 * returns it. */
static const char *number_text(lua_State *L, double v)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%g", v);
    return lua_pushstring(L, buf);
}

/* Pushes t[key] and returns its type. */
static int field(lua_State *L, int t, const char *key)
{
    return lua_getfield(L, t, key);
}

int64_t tl_lua_opt_int(lua_State *L, int t, const char *where, const char *key, int64_t def,
                       int64_t min, int64_t max)
{
    t = lua_absindex(L, t);
    if (field(L, t, key) == LUA_TNIL) {
        lua_pop(L, 1);
        return def;
    }
    int isint = 0;
    lua_Integer v = lua_tointegerx(L, -1, &isint);
    if (!isint || lua_type(L, -1) != LUA_TNUMBER) {
        const char *kind = min == 1 ? "a positive integer"
                           : min == 0 ? "a non-negative integer"
                                      : "an integer";
        luaL_error(L, "%s.%s must be %s, got %s", where, key, kind, tl_lua_describe(L, -1));
    }
    if (v < min) {
        const char *got = tl_lua_describe(L, -1);
        if (min == 1)
            luaL_error(L, "%s.%s must be a positive integer, got %s", where, key, got);
        if (min == 0)
            luaL_error(L, "%s.%s must be a non-negative integer, got %s", where, key, got);
        luaL_error(L, "%s.%s must be an integer >= %I, got %s", where, key, (lua_Integer)min,
                   got);
    }
    if (v > max)
        luaL_error(L, "%s.%s must be at most %I, got %s", where, key, (lua_Integer)max,
                   tl_lua_describe(L, -1));
    lua_pop(L, 1);
    return v;
}

int64_t tl_lua_req_int(lua_State *L, int t, const char *where, const char *key, int64_t min,
                       int64_t max)
{
    t = lua_absindex(L, t);
    if (field(L, t, key) == LUA_TNIL)
        luaL_error(L, "%s.%s is required (an integer)", where, key);
    lua_pop(L, 1);
    return tl_lua_opt_int(L, t, where, key, 0, min, max);
}

double tl_lua_opt_num(lua_State *L, int t, const char *where, const char *key, double def,
                      double min, double max)
{
    t = lua_absindex(L, t);
    if (field(L, t, key) == LUA_TNIL) {
        lua_pop(L, 1);
        return def;
    }
    double v = lua_tonumber(L, -1);
    if (lua_type(L, -1) != LUA_TNUMBER || !isfinite(v))
        luaL_error(L, "%s.%s must be a finite number, got %s", where, key,
                   tl_lua_describe(L, -1));
    if (v < min || v > max) {
        const char *got = tl_lua_describe(L, -1);
        if (max >= DBL_MAX)
            luaL_error(L, "%s.%s must be >= %s, got %s", where, key, number_text(L, min), got);
        luaL_error(L, "%s.%s must be in [%s, %s], got %s", where, key, number_text(L, min),
                   number_text(L, max), got);
    }
    lua_pop(L, 1);
    return v;
}

bool tl_lua_opt_bool(lua_State *L, int t, const char *where, const char *key, bool def)
{
    t = lua_absindex(L, t);
    int type = field(L, t, key);
    if (type == LUA_TNIL) {
        lua_pop(L, 1);
        return def;
    }
    if (type != LUA_TBOOLEAN)
        luaL_error(L, "%s.%s must be a boolean, got %s", where, key, tl_lua_describe(L, -1));
    bool v = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

const char *tl_lua_opt_str(lua_State *L, int t, const char *where, const char *key,
                           const char *def)
{
    t = lua_absindex(L, t);
    int type = field(L, t, key);
    if (type == LUA_TNIL) {
        lua_pop(L, 1);
        return def;
    }
    if (type != LUA_TSTRING)
        luaL_error(L, "%s.%s must be a string, got %s", where, key, tl_lua_describe(L, -1));
    /* The table keeps the string alive. */
    const char *s = lua_tostring(L, -1);
    lua_pop(L, 1);
    return s;
}

int tl_lua_opt_enum(lua_State *L, int t, const char *where, const char *key, int def_index,
                    const char *const *choices)
{
    const char *s = tl_lua_opt_str(L, t, where, key, NULL);
    if (!s)
        return def_index;
    for (int i = 0; choices[i]; i++)
        if (strcmp(s, choices[i]) == 0)
            return i;
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 0; choices[i]; i++) {
        if (i)
            luaL_addstring(&b, ", ");
        luaL_addchar(&b, '"');
        luaL_addstring(&b, choices[i]);
        luaL_addchar(&b, '"');
    }
    luaL_pushresult(&b);
    return luaL_error(L, "%s.%s must be one of %s, got '%s'", where, key, lua_tostring(L, -1),
                      s);
}
