/* The thinklab command: runs experiment scripts and lists plugins.
 *
 *   thinklab run script.lua [key=value ...]
 *   thinklab plugins
 *   thinklab threads
 *   thinklab --version | --help
 *
 * A script gets the module as the global `thinklab` and through
 * require "thinklab". The key=value overrides reach it through
 * thinklab.params{defaults}. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "thinklab/dist.h"
#include "thinklab/thinklab.h"
#include "tl_lua.h"

static const char usage[] =
    "usage: thinklab COMMAND [ARGS]\n"
    "\n"
    "commands:\n"
    "  run SCRIPT [KEY=VALUE ...]  run a Lua experiment script; each KEY=VALUE overrides\n"
    "                              a parameter the script declares with thinklab.params{...}\n"
    "                              (numbers, true/false, strings, comma-separated lists)\n"
    "  plugins                     list the layer plugins found, with every option, its\n"
    "                              type, default, range and description\n"
    "  threads                     print the thread count and the OpenBLAS build in use\n"
    "  --version                   print the thinklab version\n"
    "  --help                      print this help\n"
    "\n"
    "environment:\n"
    "  THINKLAB_PLUGIN_PATH        extra colon-separated folders searched for plugins\n"
    "  THINKLAB_MPI_DETERMINISTIC  1: under mpirun, reduce gradients in rank order\n"
    "                              (also THINKLAB_MPI_BUCKET_BYTES, _TIMEOUT, _CHECK_EVERY)\n"
    "\n"
    "Scripts run with every available core unless they call thinklab.threads(n) or\n"
    "pass threads = n to the trainer. 'mpirun -np N thinklab run SCRIPT' trains one\n"
    "model data-parallel on N ranks, each with its share of this machine's cores.\n";

/* Message handler for lua_pcall: appends a traceback to the error message,
 * unless it is the message last raised by tl_lua_plain_error. Comparing the
 * message, not a flag, keeps the traceback of a later error when a script
 * caught the plain one with pcall. */
static int traceback_handler(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, TL_LUA_PLAIN_ERROR);
    bool plain = lua_rawequal(L, 1, -1);
    lua_pop(L, 1);
    if (plain)
        return 1;
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            return 1;
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

/* Opens a state with the standard libraries and the module. Returns NULL
 * when Lua cannot allocate its state. */
static lua_State *open_state(void)
{
    lua_State *L = luaL_newstate();
    if (!L)
        return NULL;
    luaL_openlibs(L);
    luaL_requiref(L, "thinklab", luaopen_thinklab, 1); /* also sets package.loaded */
    lua_pop(L, 1);
    return L;
}

/* Runs f(L) under lua_pcall with the traceback handler; prints the error. */
static int protected_call(lua_State *L, lua_CFunction f, void *ud)
{
    lua_pushcfunction(L, traceback_handler);
    lua_pushcfunction(L, f);
    lua_pushlightuserdata(L, ud);
    int rc = lua_pcall(L, 1, 0, -3);
    if (rc != LUA_OK) {
        fprintf(stderr, "thinklab: %s\n", lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return rc;
}

/* SIGINT, SIGTERM and SIGHUP during a training run: the run stops before its
 * next step, writes its checkpoint and flushes its log (tl_train_interrupt),
 * so rows and weights computed before the signal survive. The handler is
 * reset on its first call, so a second signal ends the process at once.
 * Outside a run the signal ends the process as it would without a handler. */
static void on_stop_signal(int signo)
{
    if (tl_train_running() == 0) {
        signal(signo, SIG_DFL);
        raise(signo);
        return;
    }
    /* Ctrl-C also ends a pipe's reader, such as tee: from here on a write
     * to the pipe fails with EPIPE instead of killing the process before
     * it saves. */
    struct sigaction ignore;
    memset(&ignore, 0, sizeof ignore);
    ignore.sa_handler = SIG_IGN;
    sigemptyset(&ignore.sa_mask);
    sigaction(SIGPIPE, &ignore, NULL);
    tl_train_interrupt(signo);
    static const char note[] = "\nthinklab: stopping before the next training step to save "
                               "the run's checkpoint and log, where it has them; send the "
                               "signal again to quit at once\n";
    ssize_t written = write(STDERR_FILENO, note, sizeof note - 1);
    (void)written;
}

static void catch_stop_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND | SA_RESTART;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
}

struct run_args {
    const char *script;
    int n_overrides;
    char **overrides;
};

/* print on ranks other than 0 under MPI: every rank runs the same script,
 * and one copy of its output is what a user reads. */
static int quiet_print(lua_State *L)
{
    (void)L;
    return 0;
}

/* Protected body of `thinklab run`. */
static int run_script(lua_State *L)
{
    struct run_args *a = lua_touserdata(L, 1);

    lua_newtable(L);
    for (int i = 0; i < a->n_overrides; i++) {
        const char *kv = a->overrides[i];
        const char *eq = strchr(kv, '=');
        if (!eq || eq == kv) {
            lua_pushfstring(L, "argument '%s' is not KEY=VALUE", kv);
            return tl_lua_plain_error(L);
        }
        lua_pushlstring(L, kv, (size_t)(eq - kv));
        lua_pushvalue(L, -1);
        if (lua_rawget(L, -3) != LUA_TNIL) {
            lua_pushfstring(L, "override '%s' given twice", lua_tostring(L, -2));
            return tl_lua_plain_error(L);
        }
        lua_pop(L, 1);
        lua_pushstring(L, eq + 1);
        lua_rawset(L, -3);
    }
    lua_setfield(L, LUA_REGISTRYINDEX, TL_LUA_OVERRIDES);

    /* arg as the stock interpreter sets it: arg[0] is the script. */
    lua_createtable(L, a->n_overrides, 1);
    lua_pushstring(L, a->script);
    lua_rawseti(L, -2, 0);
    for (int i = 0; i < a->n_overrides; i++) {
        lua_pushstring(L, a->overrides[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setglobal(L, "arg");
    if (tl_dist_rank() != 0) {
        lua_pushcfunction(L, quiet_print);
        lua_setglobal(L, "print");
    }

    /* A syntax error comes back as "script:line: message" without a
     * traceback, which is all there is to say about it. */
    if (luaL_loadfile(L, a->script) != LUA_OK)
        return tl_lua_plain_error(L);
    lua_call(L, 0, 0); /* runtime errors reach the outer traceback handler */

    if (a->n_overrides > 0 &&
        lua_getfield(L, LUA_REGISTRYINDEX, "thinklab.params_called") == LUA_TNIL) {
        lua_pushfstring(L, "%s ignored the overrides given: it never called "
                           "thinklab.params{...}",
                        a->script);
        return tl_lua_plain_error(L);
    }
    return 0;
}

/* Protected body of `thinklab plugins`: prints through the module's
 * thinklab.print_plugins so that the listing has one implementation. */
static int list_plugins(lua_State *L)
{
    lua_getglobal(L, "thinklab");
    lua_getfield(L, -1, "print_plugins");
    lua_call(L, 0, 0);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0) {
        printf("thinklab %s (%s)\n", TL_VERSION_STRING, LUA_RELEASE);
        return 0;
    }
    if (strcmp(argv[1], "threads") == 0) {
        char buf[256];
        printf("%s\n", tl_threads_describe(buf, sizeof buf));
        return 0;
    }

    int rc;
    lua_State *L = open_state();
    if (!L) {
        fprintf(stderr, "thinklab: cannot create the Lua state: out of memory\n");
        return 1;
    }
    if (strcmp(argv[1], "run") == 0) {
        if (argc < 3) {
            fprintf(stderr, "thinklab run: missing SCRIPT\n\n%s", usage);
            lua_close(L);
            return 2;
        }
        /* Under mpirun every rank runs the script, and its trainers average
         * their gradients over all ranks. */
        if (tl_dist_init(&argc, &argv) != TL_OK) {
            fprintf(stderr, "thinklab: %s\n", tl_errmsg());
            lua_close(L);
            tl_dist_finalize(true);
            return 1;
        }
        if (tl_dist_local_world() > 1)
            tl_threads_set(tl_dist_threads(0));
        /* Ranks of one MPI job could stop at different steps and leave the
         * others waiting in a reduction, so there a signal ends the process. */
        if (tl_dist_world() <= 1)
            catch_stop_signals();
        struct run_args a = {argv[2], argc - 3, argv + 3};
        rc = protected_call(L, run_script, &a);
    } else if (strcmp(argv[1], "plugins") == 0) {
        rc = protected_call(L, list_plugins, NULL);
    } else {
        fprintf(stderr, "thinklab: unknown command '%s'\n\n%s", argv[1], usage);
        lua_close(L);
        return 2;
    }
    lua_close(L);
    tl_dist_finalize(rc != LUA_OK); /* a failed rank ends the others too */
    if (rc != LUA_OK && tl_train_interrupted())
        return 128 + tl_train_interrupted(); /* the shell's status for a signal */
    return rc == LUA_OK ? 0 : 1;
}
