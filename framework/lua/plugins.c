/* Plugin listing: thinklab.plugins() returns every plugin found with its
 * option schema; thinklab.print_plugins() prints the same for people. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "thinklab/plugin.h"
#include "tl_lua.h"

/* Pushes an option value as a Lua value. */
static void push_opt_value(lua_State *L, const tl_opt_value *v)
{
    switch (v->type) {
    case TL_OPT_BOOL:
        lua_pushboolean(L, v->b);
        return;
    case TL_OPT_INT:
        lua_pushinteger(L, v->i);
        return;
    case TL_OPT_FLOAT:
        lua_pushnumber(L, v->f);
        return;
    case TL_OPT_STRING:
    case TL_OPT_ENUM:
        lua_pushstring(L, v->s);
        return;
    case TL_OPT_FLOAT_LIST:
        lua_createtable(L, v->n, 0);
        for (int i = 0; i < v->n && i < TL_OPT_LIST_MAX; i++) {
            lua_pushnumber(L, v->list[i]);
            lua_rawseti(L, -2, i + 1);
        }
        return;
    default:
        lua_pushnil(L);
    }
}

/* Pushes {name, description, version, file, options = {{name, type, default,
 * min, max, choices, doc}, ...}} for plugin. */
static void push_plugin(lua_State *L, const tl_plugin *p, const char *file)
{
    lua_createtable(L, 0, 5);
    lua_pushstring(L, p->header.name);
    lua_setfield(L, -2, "name");
    lua_pushstring(L, p->description ? p->description : "");
    lua_setfield(L, -2, "description");
    lua_pushstring(L, p->version ? p->version : "");
    lua_setfield(L, -2, "version");
    lua_pushstring(L, file);
    lua_setfield(L, -2, "file");
    lua_createtable(L, p->n_options, 0);
    for (int i = 0; i < p->n_options; i++) {
        const tl_opt_spec *s = &p->options[i];
        lua_createtable(L, 0, 7);
        lua_pushstring(L, s->name);
        lua_setfield(L, -2, "name");
        lua_pushstring(L, tl_opt_type_name(s->type));
        lua_setfield(L, -2, "type");
        push_opt_value(L, &s->def);
        lua_setfield(L, -2, "default");
        if (s->type == TL_OPT_INT || s->type == TL_OPT_FLOAT || s->type == TL_OPT_FLOAT_LIST) {
            lua_pushnumber(L, s->min);
            lua_setfield(L, -2, "min");
            lua_pushnumber(L, s->max);
            lua_setfield(L, -2, "max");
        }
        if (s->type == TL_OPT_ENUM) {
            lua_newtable(L);
            for (int c = 0; c < TL_OPT_CHOICES_MAX && s->choices[c]; c++) {
                lua_pushstring(L, s->choices[c]);
                lua_rawseti(L, -2, c + 1);
            }
            lua_setfield(L, -2, "choices");
        }
        lua_pushstring(L, s->doc ? s->doc : "");
        lua_setfield(L, -2, "doc");
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "options");
}

static void closedir_fn(void *d) { closedir(d); }
static void plugin_close_fn(void *p) { tl_plugin_close(p); }

/* thinklab.plugins() -> list of plugin tables, in search order; a name found
 * in two folders is listed once, from the first. Files that fail to load are
 * listed in a second result, {{file, error}, ...}. */
static int l_plugins(lua_State *L)
{
    char path[4096];
    size_t need = tl_plugin_search_path(path, sizeof path);
    if (need >= sizeof path)
        return luaL_error(L, "thinklab.plugins: the plugin search path is %d bytes long; at "
                             "most %d are supported",
                          (int)need, (int)sizeof path - 1);
    lua_newtable(L); /* 1: result list */
    lua_newtable(L); /* 2: failures */
    lua_newtable(L); /* 3: names seen */
    int base = lua_gettop(L) - 2;
    lua_Integer n = 0, n_failed = 0;
    char *save = NULL;
    for (char *dir = strtok_r(path, ":", &save); dir; dir = strtok_r(NULL, ":", &save)) {
        struct tl_lua_box *dbox = tl_lua_box_new(L);
        DIR *d = opendir(dir);
        if (!d) {
            lua_pop(L, 1);
            continue; /* a missing folder in the search path has no plugins */
        }
        tl_lua_box_set(dbox, d, closedir_fn);
        /* Names sorted per folder for a stable listing. */
        lua_newtable(L);
        lua_Integer n_files = 0;
        for (struct dirent *e = readdir(d); e; e = readdir(d)) {
            size_t len = strlen(e->d_name), slen = strlen(TL_PLUGIN_SUFFIX);
            if (len <= slen || strcmp(e->d_name + len - slen, TL_PLUGIN_SUFFIX) != 0)
                continue;
            lua_pushfstring(L, "%s/%s", dir, e->d_name);
            lua_rawseti(L, -2, ++n_files);
        }
        tl_lua_box_release(dbox);
        lua_getglobal(L, "table");
        if (lua_istable(L, -1)) {
            lua_getfield(L, -1, "sort");
            lua_pushvalue(L, -3);
            lua_call(L, 1, 0);
        }
        lua_pop(L, 1);
        for (lua_Integer i = 1; i <= n_files; i++) {
            lua_rawgeti(L, -1, i);
            const char *file = lua_tostring(L, -1);
            struct tl_lua_box *pbox = tl_lua_box_new(L);
            tl_plugin_lib *lib = tl_plugin_open(file);
            if (!lib) {
                lua_createtable(L, 0, 2);
                lua_pushvalue(L, -3);
                lua_setfield(L, -2, "file");
                lua_pushstring(L, tl_errmsg());
                lua_setfield(L, -2, "error");
                lua_rawseti(L, base + 1, ++n_failed);
                lua_pop(L, 2);
                continue;
            }
            tl_lua_box_set(pbox, lib, plugin_close_fn);
            const tl_plugin *p = tl_plugin_desc(lib);
            if (lua_getfield(L, base + 2, p->header.name) == LUA_TNIL) {
                push_plugin(L, p, tl_plugin_file(lib));
                lua_rawseti(L, base, ++n);
                lua_pushboolean(L, 1);
                lua_setfield(L, base + 2, p->header.name);
            }
            lua_pop(L, 1);
            tl_lua_box_release(pbox);
            lua_pop(L, 2);
        }
        lua_pop(L, 2); /* file list, directory box */
    }
    lua_pop(L, 1);
    return 2;
}

/* thinklab.print_plugins() prints every plugin and option on stdout and
 * returns the number of plugins loaded. */
static int l_print_plugins(lua_State *L)
{
    int n = tl_plugins_print(stdout);
    fflush(stdout);
    lua_pushinteger(L, n);
    return 1;
}

static int l_plugin_path(lua_State *L)
{
    char path[4096];
    tl_plugin_search_path(path, sizeof path);
    lua_pushstring(L, path);
    return 1;
}

void tl_lua_open_plugins(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"plugins", l_plugins},
        {"print_plugins", l_print_plugins},
        {"plugin_path", l_plugin_path},
        {NULL, NULL},
    };
    luaL_setfuncs(L, fns, 0);
}
