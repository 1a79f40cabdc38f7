#define _POSIX_C_SOURCE 200809L /* mkstemp, mkdtemp, setenv */
/* Plugin loader: search, every load error and its message, option
 * validation, and the listing of all plugins. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "plugin_util.h"
#include "thinklab/model.h"

#define HAS(msg, part) CHECK_MSG(strstr((msg), (part)) != NULL, "message \"%s\" lacks \"%s\"", (msg), (part))

static void check_open_errors(void)
{
    /* A name found nowhere: the message lists the folders tried. */
    CHECK(tl_plugin_open("no_such_layer") == NULL);
    CHECK(tl_lasterr() == TL_ENOTFOUND);
    HAS(tl_errmsg(), "plugin 'no_such_layer' not found");
    HAS(tl_errmsg(), "THINKLAB_PLUGIN_PATH");
    HAS(tl_errmsg(), TL_TEST_PLUGIN_DIR "/no_such_layer.so");

    /* A file name without a folder is neither a path nor a name to search. */
    CHECK(tl_plugin_open("itt.so") == NULL);
    CHECK(tl_lasterr() == TL_EINVAL);
    HAS(tl_errmsg(), "plugin 'itt.so' is a file name without a folder: give the path './itt.so'");
    HAS(tl_errmsg(), "or the name 'itt' to search the plugin folders");

    CHECK(tl_plugin_open("/nonexistent/dir/itt.so") == NULL);
    CHECK(tl_lasterr() == TL_ENOTFOUND);
    HAS(tl_errmsg(), "/nonexistent/dir/itt.so not found");

    /* A folder given where the .so file belongs. */
    CHECK(tl_plugin_open(TL_TEST_PLUGIN_DIR) == NULL);
    CHECK(tl_lasterr() == TL_EINVAL);
    HAS(tl_errmsg(), "plugin path '" TL_TEST_PLUGIN_DIR "' is a directory; give the .so file");

    /* A file that is not a shared object. */
    char fake[] = "/tmp/tl_fake_pluginXXXXXX";
    int fd = mkstemp(fake);
    CHECK(fd >= 0);
    if (fd >= 0) {
        CHECK(write(fd, "not an ELF file\n", 16) == 16);
        close(fd);
        CHECK(tl_plugin_open(fake) == NULL);
        CHECK(tl_lasterr() == TL_EFORMAT);
        HAS(tl_errmsg(), "is not a shared object");
        HAS(tl_errmsg(), fake);
        unlink(fake);
    }

    /* A plugin cut short, as by an interrupted copy. dlopen would map its
     * segments past the end of the file and die of SIGBUS. */
    char cut[] = "/tmp/tl_cut_pluginXXXXXX";
    fd = mkstemp(cut);
    CHECK(fd >= 0);
    FILE *whole = fopen(TL_TEST_PLUGIN_DIR "/transformer.so", "rb");
    CHECK(whole != NULL);
    if (fd >= 0 && whole) {
        char head[4096];
        CHECK(fread(head, 1, sizeof head, whole) == sizeof head);
        CHECK(write(fd, head, sizeof head) == (ssize_t)sizeof head);
        close(fd);
        CHECK(tl_plugin_open(cut) == NULL);
        CHECK(tl_lasterr() == TL_EFORMAT);
        HAS(tl_errmsg(), "is truncated: it has 4096 bytes");
        HAS(tl_errmsg(), "rebuild the plugin or copy it again");
        HAS(tl_errmsg(), cut);
        unlink(cut);
    }
    if (whole)
        fclose(whole);

    CHECK(tl_plugin_open(TL_TEST_BAD_PLUGIN_DIR "/no_entry.so") == NULL);
    CHECK(tl_lasterr() == TL_ENOTFOUND);
    HAS(tl_errmsg(), "exports no symbol 'tl_plugin_entry'");

    char expect[128];
    CHECK(tl_plugin_open(TL_TEST_BAD_PLUGIN_DIR "/abi_mismatch.so") == NULL);
    CHECK(tl_lasterr() == TL_EABI);
    snprintf(expect, sizeof expect, "built for ABI %d, this thinklab is ABI %d: rebuild the plugin",
             TL_PLUGIN_ABI_VERSION + 1, TL_PLUGIN_ABI_VERSION);
    HAS(tl_errmsg(), "plugin 'abi_mismatch'");
    HAS(tl_errmsg(), expect);

    /* Mistakes in the option table fail at load, not at the first lookup. */
    CHECK(tl_plugin_open(TL_TEST_BAD_PLUGIN_DIR "/bad_default.so") == NULL);
    CHECK(tl_lasterr() == TL_EFORMAT);
    HAS(tl_errmsg(), "plugin 'bad_default'");
    HAS(tl_errmsg(), "has an invalid option table");
    HAS(tl_errmsg(), "option 'scale' = 50 is outside [0, 10]; fix the plugin");
    CHECK(tl_plugin_open(TL_TEST_BAD_PLUGIN_DIR "/no_option_name.so") == NULL);
    CHECK(tl_lasterr() == TL_EFORMAT);
    HAS(tl_errmsg(), "option 2 has no name; fix the plugin");

    CHECK(tl_plugin_open(TL_TEST_BAD_PLUGIN_DIR "/size_mismatch.so") == NULL);
    CHECK(tl_lasterr() == TL_EABI);
    snprintf(expect, sizeof expect, "sizeof(tl_tensor) = %zu, this thinklab has %zu",
             sizeof(tl_tensor) + 8, sizeof(tl_tensor));
    HAS(tl_errmsg(), expect);
}

static void check_search_path(void)
{
    /* By name through THINKLAB_PLUGIN_PATH, after the build folder. */
    setenv("THINKLAB_PLUGIN_PATH", "/nonexistent:" TL_TEST_BAD_PLUGIN_DIR, 1);
    char path[4096];
    tl_plugin_search_path(path, sizeof path);
    HAS(path, TL_TEST_PLUGIN_DIR);
    HAS(path, ":/nonexistent:" TL_TEST_BAD_PLUGIN_DIR);
    CHECK(strstr(path, TL_TEST_PLUGIN_DIR) < strstr(path, TL_TEST_BAD_PLUGIN_DIR));
    CHECK(tl_plugin_open("abi_mismatch") == NULL);
    CHECK(tl_lasterr() == TL_EABI);

    tl_plugin_lib *lib = tl_plugin_open("itt");
    CHECK(lib != NULL);
    if (lib) {
        CHECK(strcmp(tl_plugin_desc(lib)->header.name, "itt") == 0);
        HAS(tl_plugin_file(lib), TL_TEST_PLUGIN_DIR "/itt.so");
        tl_plugin_close(lib);
    }
    unsetenv("THINKLAB_PLUGIN_PATH");
}

static void check_options(void)
{
    tl_plugin_lib *lib = tl_plugin_open(TL_TEST_PLUGIN_DIR "/itt.so");
    CHECK(lib != NULL);
    if (!lib)
        return;
    const tl_plugin *p = tl_plugin_desc(lib);
    tl_opt_table t;

    /* Defaults. */
    CHECK(tl_plugin_options(p, NULL, 0, &t) == TL_OK);
    const double *v;
    CHECK(tl_opt_int(&t, "steps") == 4);
    CHECK(tl_opt_list(&t, "ratios", &v) == 3 && v[0] == 0.5 && v[1] == 0.5 && v[2] == 0.5);
    CHECK(strcmp(tl_opt_string(&t, "routing"), "topk") == 0);
    CHECK(tl_opt_choice(&t, "context") == 0);
    CHECK(!tl_opt_is_set(&t, "steps"));

    /* Accepted conversions: an int where a float is expected, one float for a list. */
    tl_opt_setting ok[] = {{"phi_step_init", tl_optv_int(2)}, {"alpha", tl_optv_float(0.5)},
                           {"routing", tl_optv_string("causal")}};
    CHECK(tl_plugin_options(p, ok, 3, &t) == TL_OK);
    CHECK(tl_opt_float(&t, "phi_step_init") == 2.0);
    CHECK(tl_opt_list(&t, "alpha", &v) == 1 && v[0] == 0.5);
    CHECK(tl_opt_choice(&t, "routing") == 2);
    CHECK(tl_opt_is_set(&t, "routing"));

    tl_opt_setting unknown[] = {{"ratio", tl_optv_float(0.5)}};
    CHECK(tl_plugin_options(p, unknown, 1, &t) == TL_EINVAL);
    HAS(tl_errmsg(), "plugin 'itt' has no option 'ratio'; valid options: steps, ratios, alpha");

    tl_opt_setting wrong_type[] = {{"steps", tl_optv_string("four")}};
    CHECK(tl_plugin_options(p, wrong_type, 1, &t) == TL_EINVAL);
    HAS(tl_errmsg(), "option 'steps' expects type int, got string \"four\"");

    tl_opt_setting float_for_int[] = {{"steps", tl_optv_float(2.5)}};
    CHECK(tl_plugin_options(p, float_for_int, 1, &t) == TL_EINVAL);
    HAS(tl_errmsg(), "expects type int, got float 2.5");

    tl_opt_setting range[] = {{"steps", tl_optv_int(0)}};
    CHECK(tl_plugin_options(p, range, 1, &t) == TL_EINVAL);
    HAS(tl_errmsg(), "option 'steps' = 0 is outside [1, 16]");

    tl_opt_setting wide[] = {{"d_ff", tl_optv_int(2000000)}};
    CHECK(tl_plugin_options(p, wide, 1, &t) == TL_EINVAL);
    HAS(tl_errmsg(), "option 'd_ff' = 2000000 is outside [0, 1048576]");

    double bad_list[] = {0.5, 1.5, 0.5};
    tl_opt_setting list_range[] = {{"ratios", tl_optv_list(3, bad_list)}};
    CHECK(tl_plugin_options(p, list_range, 1, &t) == TL_EINVAL);
    HAS(tl_errmsg(), "option 'ratios' entry 2 = 1.5 is outside [0, 1]");

    tl_opt_setting choice[] = {{"routing", tl_optv_string("threshold")}};
    CHECK(tl_plugin_options(p, choice, 1, &t) == TL_EINVAL);
    HAS(tl_errmsg(), "option 'routing' = \"threshold\" is not one of \"topk\", \"topk_aux\", \"causal\"");

    tl_opt_setting twice[] = {{"steps", tl_optv_int(2)}, {"steps", tl_optv_int(3)}};
    CHECK(tl_plugin_options(p, twice, 2, &t) == TL_EINVAL);
    HAS(tl_errmsg(), "option 'steps' is set twice");

    /* A ratio list whose length fits neither N-1 nor 1 fails in create. */
    double two[] = {0.5, 0.5};
    tl_opt_setting mismatch[] = {{"ratios", tl_optv_list(2, two)}};
    CHECK(tl_plugin_options(p, mismatch, 1, &t) == TL_OK);
    tl_layer_dims dims = {.block = tl_block_config_default(8, 2), .context = 8};
    tl_block_config_resolve(&dims.block);
    tl_params *params = tl_params_new();
    CHECK(p->create(&t, &dims, params, "layers.0") == NULL);
    HAS(tl_errmsg(), "option 'ratios' has 2 values but steps = 4 needs 3");
    tl_params_free(params);
    tl_plugin_close(lib);
}

static void check_model_errors(void)
{
    tl_opt_setting bad[] = {{"capacity", tl_optv_float(2.0)}};
    tl_layer_spec layers[] = {{"transformer", NULL, 0}, {"mod", bad, 1}};
    tl_model_config cfg = tl_model_config_default(TL_BLOCK_LLAMA, 16, 8, 2, 8, 2);
    cfg.layers = layers;
    tl_rng rng;
    tl_rng_seed(&rng, 1);
    CHECK(tl_model_new(&cfg, &rng) == NULL);
    HAS(tl_errmsg(), "layer 1: plugin 'mod' option 'capacity' = 2 is outside [0, 1]");

    tl_layer_spec missing[] = {{"transformer", NULL, 0}, {"itt_v2", NULL, 0}};
    cfg.layers = missing;
    CHECK(tl_model_new(&cfg, &rng) == NULL);
    HAS(tl_errmsg(), "layer 1: plugin 'itt_v2' not found");

    /* A create that fails without a message gets one that names the
     * plugin, not an empty or stale reason. */
    tl_layer_spec silent[] = {{"transformer", NULL, 0},
                              {TL_TEST_BAD_PLUGIN_DIR "/silent_create.so", NULL, 0}};
    cfg.layers = silent;
    tl_seterr(TL_EIO, "an earlier, unrelated failure");
    CHECK(tl_model_new(&cfg, &rng) == NULL);
    HAS(tl_errmsg(), "layer 1 (plugin 'silent_create'): the plugin failed without a message");
    CHECK_MSG(strstr(tl_errmsg(), "unrelated") == NULL, "%s", tl_errmsg());

    /* A forward that changes the shape is blamed, not the layer after it. */
    tl_layer_spec flat[] = {{TL_TEST_BAD_PLUGIN_DIR "/flat_forward.so", NULL, 0},
                            {"transformer", NULL, 0}};
    cfg.layers = flat;
    tl_model *m = tl_model_new(&cfg, &rng);
    CHECK_MSG(m != NULL, "%s", tl_errmsg());
    tl_ctx *ctx = tl_ctx_new(0);
    tl_tensor *ids = tl_new(ctx, TL_I32, 2, (int64_t[]){2, 4});
    for (int i = 0; ids && i < 8; i++)
        tl_i32(ids)[i] = i;
    tl_model_output out;
    CHECK(m && ids && tl_model_forward(m, ctx, ids, NULL, NULL, &out) == TL_ESHAPE);
    HAS(tl_errmsg(), "layer 0 (plugin 'flat_forward'): forward returned y of shape (8, 8) f32, "
                     "but y must have the shape of x, (2, 4, 8) f32");
    tl_ctx_free(ctx);
    tl_model_free(m);
}

/* Reads what tl_plugins_print writes into a string the caller frees. */
static char *listing_text(int *n_loaded)
{
    FILE *f = tmpfile();
    CHECK(f != NULL);
    if (!f)
        return NULL;
    *n_loaded = tl_plugins_print(f);
    long size = ftell(f);
    rewind(f);
    char *text = calloc(1, (size_t)size + 1);
    CHECK(text != NULL);
    if (text)
        CHECK(fread(text, 1, (size_t)size, f) == (size_t)size);
    fclose(f);
    return text;
}

static void check_listing(void)
{
    int n = 0;
    char *text = listing_text(&n);
    CHECK(n >= 4);
    if (!text)
        return;
    HAS(text, "plugin search path, in order:");
    HAS(text, "transformer 1.0");
    HAS(text, "loop 1.0");
    HAS(text, "mod 1.0");
    HAS(text, "itt 1.0");
    HAS(text, "ratios");
    HAS(text, "float list default {0.5, 0.5, 0.5}, range [0, 1]");
    HAS(text, "d_ff             int        default 0, range [0, 1048576]");
    HAS(text, "routing          enum       default \"topk\", one of topk, topk_aux, causal");
    HAS(text, "capacity");
    free(text);
}

/* Checks a folder with more plugin files than one listing takes: the listing
 * states where it stops and still reports why each listed file failed to load. */
static void check_listing_limit(void)
{
    char dir[] = "/tmp/tl_plugin_listXXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char path[256];
    for (int i = 0; i < 257; i++) {
        snprintf(path, sizeof path, "%s/p%03d.so", dir, i);
        FILE *f = fopen(path, "w");
        CHECK(f != NULL);
        if (f)
            fclose(f);
    }
    setenv("THINKLAB_PLUGIN_PATH", dir, 1);
    int n = 0;
    char *text = listing_text(&n);
    unsetenv("THINKLAB_PLUGIN_PATH");
    char expect[512];
    snprintf(expect, sizeof expect, "%s contains more than 256 plugins; only 256 of them are listed",
             dir);
    if (text) {
        HAS(text, expect);
        HAS(text, "not loaded");
    }
    free(text);
    for (int i = 0; i < 257; i++) {
        snprintf(path, sizeof path, "%s/p%03d.so", dir, i);
        remove(path);
    }
    rmdir(dir);
}

int main(void)
{
    unsetenv("THINKLAB_PLUGIN_PATH");
    check_open_errors();
    check_search_path();
    check_options();
    check_model_errors();
    check_listing();
    check_listing_limit();
    return gc_finish("plugin loader");
}
