/* Script parameters: thinklab.params{defaults} merges the key=value overrides
 * of the command line into the defaults a script declares.
 *
 * Overrides are stored as raw text and converted by the type of the declared
 * default, so "lr=3e-4" becomes a number only where lr defaults to a number,
 * and a string default such as tag="7" stays a string. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tl_lua.h"

/* Converts text without a declared type: booleans, numbers, comma lists,
 * otherwise the string itself. Pushes the value. */
static void push_auto(lua_State *L, const char *text, size_t len, bool allow_list);

static void push_auto_scalar(lua_State *L, const char *text, size_t len)
{
    lua_pushlstring(L, text, len);
    const char *s = lua_tostring(L, -1);
    if (strcmp(s, "true") == 0 || strcmp(s, "false") == 0) {
        bool v = s[0] == 't';
        lua_pop(L, 1);
        lua_pushboolean(L, v);
        return;
    }
    if (len > 0 && lua_stringtonumber(L, s) != 0)
        lua_remove(L, -2); /* keep the number */
}

static void push_auto(lua_State *L, const char *text, size_t len, bool allow_list)
{
    if (!allow_list || !memchr(text, ',', len)) {
        push_auto_scalar(L, text, len);
        return;
    }
    lua_newtable(L);
    lua_Integer n = 0;
    const char *p = text, *end = text + len;
    while (p <= end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *stop = comma ? comma : end;
        push_auto_scalar(L, p, (size_t)(stop - p));
        lua_rawseti(L, -2, ++n);
        p = stop + 1;
    }
}

/* Pushes the parsed overrides table (a copy; empty when none were given). */
static int l_overrides(lua_State *L)
{
    lua_newtable(L);
    if (lua_getfield(L, LUA_REGISTRYINDEX, TL_LUA_OVERRIDES) != LUA_TTABLE) {
        lua_pop(L, 1);
        return 1;
    }
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        size_t len;
        const char *text = lua_tolstring(L, -1, &len);
        lua_pushvalue(L, -2);
        push_auto(L, text, len, true);
        lua_settable(L, -6);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return 1;
}

/* Pushes the sorted, comma-separated keys of the table at t. */
static void push_key_list(lua_State *L, int t)
{
    t = lua_absindex(L, t);
    lua_newtable(L);
    int list = lua_gettop(L);
    lua_Integer n = 0;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) == LUA_TSTRING) {
            lua_pushvalue(L, -1);
            lua_rawseti(L, -3, ++n);
        }
    }
    /* Insertion sort: the lists are short and this needs no table library. */
    for (lua_Integer i = 2; i <= n; i++) {
        for (lua_Integer j = i; j > 1; j--) {
            lua_rawgeti(L, -1, j - 1);
            lua_rawgeti(L, -2, j);
            int less = lua_compare(L, -1, -2, LUA_OPLT);
            if (less) {
                lua_rawseti(L, -3, j - 1);
                lua_rawseti(L, -2, j);
            } else {
                lua_pop(L, 2);
                break;
            }
        }
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, list, i);
        if (i > 1)
            luaL_addstring(&b, ", ");
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    lua_remove(L, -2);
}

/* Converts override text to the type of the default at index def and pushes
 * it; raises naming key on a mismatch. */
static void push_typed(lua_State *L, const char *key, const char *text, int def)
{
    def = lua_absindex(L, def);
    switch (lua_type(L, def)) {
    case LUA_TBOOLEAN:
        if (strcmp(text, "true") == 0 || strcmp(text, "false") == 0) {
            lua_pushboolean(L, text[0] == 't');
            return;
        }
        tl_lua_usage_error(L, "override %s=%s: %s must be true or false", key, text, key);
        return;
    case LUA_TNUMBER:
        if (*text && lua_stringtonumber(L, text) != 0) {
            /* Lua reads "inf" and "nan" as names, but 1e999 as infinity. An
             * integer default rejects it below. */
            if (!lua_isinteger(L, def) && !isfinite(lua_tonumber(L, -1)))
                tl_lua_usage_error(L, "override %s=%s: %s must be a finite number (default %s)",
                                   key, text, key, luaL_tolstring(L, def, NULL));
            if (lua_isinteger(L, def) && !lua_isinteger(L, -1)) {
                /* An integral float such as 1e3 is accepted for an integer. */
                lua_Number f = lua_tonumber(L, -1);
                if (!(f >= -9.2e18 && f <= 9.2e18) || f != floor(f))
                    tl_lua_usage_error(L, "override %s=%s: %s must be an integer (default %I)",
                                       key, text, key, lua_tointeger(L, def));
                lua_pop(L, 1);
                lua_pushinteger(L, (lua_Integer)f);
            }
            if (!lua_isinteger(L, def) && lua_isinteger(L, -1)) {
                /* A float default keeps its subtype: lr=1 gives 1.0. */
                lua_Number f = lua_tonumber(L, -1);
                lua_pop(L, 1);
                lua_pushnumber(L, f);
            }
            return;
        }
        /* Lua does not parse "nan" and "inf" as numbers, so they fail here too. */
        tl_lua_usage_error(L, "override %s=%s: %s must be %s (default %s)", key, text, key,
                           lua_isinteger(L, def) ? "an integer" : "a finite number",
                           luaL_tolstring(L, def, NULL));
        return;
    case LUA_TSTRING:
        lua_pushstring(L, text);
        return;
    case LUA_TTABLE: {
        /* A list: each element takes the type of the default's first element,
         * or is parsed on its own when the default list is empty. */
        lua_newtable(L);
        int list = lua_gettop(L);
        int has_proto = lua_rawgeti(L, def, 1) != LUA_TNIL;
        int proto = lua_gettop(L);
        lua_Integer n = 0;
        const char *p = text, *end = text + strlen(text);
        if (*text == '\0') {
            lua_pop(L, 1);
            return; /* "key=" sets an empty list */
        }
        while (p <= end) {
            const char *comma = memchr(p, ',', (size_t)(end - p));
            const char *stop = comma ? comma : end;
            lua_pushlstring(L, p, (size_t)(stop - p));
            const char *item = lua_tostring(L, -1);
            if (has_proto) {
                char elem_key[256];
                snprintf(elem_key, sizeof elem_key, "%s[%lld]", key, (long long)(n + 1));
                push_typed(L, elem_key, item, proto);
            } else {
                push_auto(L, item, strlen(item), false);
            }
            lua_remove(L, -2);
            lua_rawseti(L, list, ++n);
            p = stop + 1;
        }
        lua_settop(L, list);
        return;
    }
    default:
        luaL_error(L, "thinklab.params: default of '%s' is %s; defaults must be numbers, "
                      "booleans, strings or lists of them",
                   key, tl_lua_describe(L, def));
    }
}

/* thinklab.params(defaults) -> table. */
static int l_params(lua_State *L)
{
    tl_lua_check_table(L, 1, "thinklab.params");
    lua_settop(L, 1);
    lua_pushnil(L);
    while (lua_next(L, 1)) {
        if (lua_type(L, -2) != LUA_TSTRING)
            luaL_error(L, "thinklab.params: keys must be strings, got %s",
                       tl_lua_describe(L, -2));
        lua_pop(L, 1);
    }

    if (lua_getfield(L, LUA_REGISTRYINDEX, TL_LUA_OVERRIDES) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_newtable(L);
    }
    int over = 2;

    /* Reject overrides the script did not declare, listing the ones it did. */
    lua_pushnil(L);
    while (lua_next(L, over)) {
        lua_pop(L, 1);
        if (lua_getfield(L, 1, lua_tostring(L, -1)) == LUA_TNIL) {
            push_key_list(L, 1);
            tl_lua_usage_error(L, "unknown override '%s': this script declares: %s",
                               lua_tostring(L, -3), lua_tostring(L, -1));
        }
        lua_pop(L, 1);
    }

    lua_newtable(L);
    int out = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, 1)) {
        const char *key = lua_tostring(L, -2);
        if (lua_getfield(L, over, key) == LUA_TSTRING) {
            const char *text = lua_tostring(L, -1);
            push_typed(L, key, text, -2);
            lua_setfield(L, out, key);
            lua_pop(L, 2);
        } else {
            lua_pop(L, 1);
            /* Type-check the default itself so that a script cannot declare
             * a value the command line could not override. */
            int t = lua_type(L, -1);
            if (t == LUA_TFUNCTION || t == LUA_TUSERDATA || t == LUA_TTHREAD ||
                t == LUA_TLIGHTUSERDATA)
                luaL_error(L, "thinklab.params: default of '%s' is %s; defaults must be "
                              "numbers, booleans, strings or lists of them",
                           key, tl_lua_describe(L, -1));
            lua_setfield(L, out, key);
        }
    }
    lua_pushboolean(L, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, "thinklab.params_called");
    return 1;
}

void tl_lua_open_params(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"params", l_params},
        {"overrides", l_overrides},
        {NULL, NULL},
    };
    luaL_setfuncs(L, fns, 0);
}
