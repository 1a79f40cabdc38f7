/* luaopen_thinklab and the module-wide functions: version, threads, rank. */
#define _GNU_SOURCE /* dladdr */
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>

#include "thinklab/dist.h"
#include "thinklab/thinklab.h"
#include "tl_lua.h"

/* thinklab.threads([n]) -> count in force. n = 0 picks every available core. */
static int l_threads(lua_State *L)
{
    if (!lua_isnoneornil(L, 1)) {
        int isint = 0;
        lua_Integer n = lua_tointegerx(L, 1, &isint);
        if (!isint || n < 0 || n > 4096)
            return luaL_error(L, "thinklab.threads: n must be an integer in [0, 4096] "
                                 "(0 = every available core), got %s",
                              tl_lua_describe(L, 1));
        /* Ranks on one machine share its cores. */
        lua_pushinteger(L, tl_threads_set(tl_dist_threads((int)n)));
        return 1;
    }
    lua_pushinteger(L, tl_threads_get());
    return 1;
}

/* thinklab.threads_info() -> "threads 2 of 2 cores (OpenBLAS ..., openmp)". */
static int l_threads_info(lua_State *L)
{
    char buf[256];
    lua_pushstring(L, tl_threads_describe(buf, sizeof buf));
    return 1;
}

/* thinklab.rank() and thinklab.world_size(): this process's MPI rank and the
 * rank count under `mpirun thinklab run`, 0 and 1 otherwise. */
static int l_rank(lua_State *L)
{
    lua_pushinteger(L, tl_dist_rank());
    return 1;
}

static int l_world_size(lua_State *L)
{
    lua_pushinteger(L, tl_dist_world());
    return 1;
}

/* thinklab.interrupted(): "SIGINT", "SIGTERM" or "SIGHUP" once the thinklab command
 * has received that signal during a run, else nil. A script that catches
 * errors with pcall checks it to stop instead of starting the next run. */
static int l_interrupted(lua_State *L)
{
    int signo = tl_train_interrupted();
    if (signo == 0)
        lua_pushnil(L);
    else if (signo == SIGINT)
        lua_pushliteral(L, "SIGINT");
    else if (signo == SIGTERM)
        lua_pushliteral(L, "SIGTERM");
    else if (signo == SIGHUP)
        lua_pushliteral(L, "SIGHUP");
    else
        lua_pushfstring(L, "signal %d", signo);
    return 1;
}

void tl_lua_open_core(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"threads", l_threads},
        {"threads_info", l_threads_info},
        {"rank", l_rank},
        {"world_size", l_world_size},
        {"interrupted", l_interrupted},
        {NULL, NULL},
    };
    luaL_setfuncs(L, fns, 0);
    lua_pushstring(L, TL_VERSION_STRING);
    lua_setfield(L, -2, "version");
}

int luaopen_thinklab(lua_State *L)
{
    luaL_checkversion(L);

    /* lua_close() unloads C modules, and with this one the OpenMP runtime,
     * whose worker threads stay parked between parallel regions: unloading
     * it under them crashes the interpreter at exit. Pin the module. */
    static const char anchor; /* any object inside this module */
    Dl_info self;
    if (dladdr(&anchor, &self) && self.dli_fname)
        dlopen(self.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);

    lua_newtable(L);
    tl_lua_open_core(L);
    tl_lua_open_params(L);
    tl_lua_open_data(L);
    tl_lua_open_model(L);
    tl_lua_open_train(L);
    tl_lua_open_plugins(L);
    return 1;
}
