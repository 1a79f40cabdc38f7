/* Deliberately broken plugins for the loader tests, one per compile
 * definition: BAD_ABI (built for the next ABI version), BAD_SIZE (a
 * tl_tensor size that differs from the library's), BAD_NO_ENTRY (no entry
 * symbol), BAD_DEFAULT (an option whose default is outside its range),
 * BAD_OPTION_NAME (an option without a name). Two load and then fail:
 * BAD_SILENT_CREATE (create returns NULL without a message) and
 * BAD_FLAT_FORWARD (forward returns y of another shape than x). */
#include <stdlib.h>

#include "thinklab/ops.h"
#include "thinklab/plugin.h"

static void *bad_create(const tl_opt_table *opts, const tl_layer_dims *dims, tl_params *params,
                        const char *prefix)
{
#if defined(BAD_FLAT_FORWARD)
    static int state;
    return &state;
#else
    return NULL;
#endif
}

static tl_tensor *bad_forward(tl_ctx *ctx, void *state, tl_tensor *x, tl_layer_args *args)
{
#if defined(BAD_FLAT_FORWARD)
    return tl_reshape(ctx, x, 2, (int64_t[]){x->shape[0] * x->shape[1], x->shape[2]});
#else
    return x;
#endif
}

static double bad_flops(const void *state, int64_t T) { return 0.0; }
static void bad_destroy(void *state) {}

#if defined(BAD_ABI)
#define BAD_NAME "abi_mismatch"
#elif defined(BAD_SIZE)
#define BAD_NAME "size_mismatch"
#elif defined(BAD_DEFAULT)
#define BAD_NAME "bad_default"
#elif defined(BAD_OPTION_NAME)
#define BAD_NAME "no_option_name"
#elif defined(BAD_SILENT_CREATE)
#define BAD_NAME "silent_create"
#elif defined(BAD_FLAT_FORWARD)
#define BAD_NAME "flat_forward"
#else
#define BAD_NAME "no_entry"
#endif

static const tl_opt_spec bad_options[] = {
    {.name = "width", .type = TL_OPT_INT, .def = {.type = TL_OPT_INT, .i = 4}, .min = 1, .max = 8},
#if defined(BAD_DEFAULT)
    {.name = "scale", .type = TL_OPT_FLOAT, .def = {.type = TL_OPT_FLOAT, .f = 50.0}, .min = 0,
     .max = 10},
#elif defined(BAD_OPTION_NAME)
    {.name = NULL, .type = TL_OPT_BOOL, .def = {.type = TL_OPT_BOOL}},
#endif
};

static tl_plugin bad_plugin = {
    .header = TL_PLUGIN_HEADER_INIT(BAD_NAME),
    .description = "broken on purpose",
    .version = "0",
    .options = bad_options,
    .n_options = sizeof bad_options / sizeof bad_options[0],
    .create = bad_create,
    .forward = bad_forward,
    .flops_per_token = bad_flops,
    .destroy = bad_destroy,
};

#if defined(BAD_NO_ENTRY)
/* Exported under another name, so the entry symbol is missing. */
__attribute__((visibility("default"))) const tl_plugin *tl_plugin_entry_misspelled(void);
const tl_plugin *tl_plugin_entry_misspelled(void) { return &bad_plugin; }
#else
__attribute__((visibility("default"))) const tl_plugin *tl_plugin_entry(void);
const tl_plugin *tl_plugin_entry(void)
{
#if defined(BAD_ABI)
    bad_plugin.header.abi_version = TL_PLUGIN_ABI_VERSION + 1;
#elif defined(BAD_SIZE)
    bad_plugin.header.size_tensor = (uint32_t)sizeof(tl_tensor) + 8;
#endif
    return &bad_plugin;
}
#endif
