/* Loads the example plugin by name (through THINKLAB_PLUGIN_PATH), builds a
 * layer with scale = 0 and checks that it is the identity, then with
 * scale = 0.5 checks that backward reaches every parameter. Exits 0 on
 * success. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <thinklab/plugin.h>
#include <thinklab/thinklab.h>

static int run(double scale, int check_identity)
{
    tl_plugin_lib *lib = tl_plugin_open("example");
    if (!lib) {
        fprintf(stderr, "example_check: %s\n", tl_errmsg());
        return 1;
    }
    const tl_plugin *p = tl_plugin_desc(lib);
    tl_opt_setting set[] = {{"scale", tl_optv_float(scale)}, {"hidden", tl_optv_int(24)}};
    tl_opt_table opts;
    if (tl_plugin_options(p, set, 2, &opts) != TL_OK) {
        fprintf(stderr, "example_check: %s\n", tl_errmsg());
        return 1;
    }
    tl_layer_dims dims = {.block = tl_block_config_default(8, 2), .context = 16};
    tl_params *params = tl_params_new();
    void *state = p->create(&opts, &dims, params, "layers.0");
    tl_rng rng;
    tl_rng_seed(&rng, 3);
    if (!state || tl_params_alloc(params, &rng) != TL_OK) {
        fprintf(stderr, "example_check: %s\n", tl_errmsg());
        return 1;
    }
    tl_ctx *ctx = tl_ctx_new(1 << 20);
    tl_tensor *x = tl_new3(ctx, 2, 3, 8);
    for (int i = 0; i < 48; i++)
        tl_f32(x)[i] = tl_rng_normal(&rng);
    tl_layer_args args = {.train = true};
    tl_tensor *y = p->forward(ctx, state, x, &args);
    int bad = y == NULL;
    if (y && check_identity)
        bad = memcmp(y->data, x->data, 48 * sizeof(float)) != 0;
    if (y && !check_identity) {
        bad = tl_backward(ctx, tl_sum(ctx, y)) != TL_OK;
        double g = 0.0;
        for (size_t i = 0; i < tl_params_count(params); i++) {
            tl_tensor *t = tl_params_at(params, i);
            double s = 0.0;
            for (int64_t k = 0; k < tl_numel(t); k++)
                s += fabs(t->grad[k]);
            printf("example_check: |grad| of %s = %.4g\n", t->name, s);
            bad = bad || !(s > 0.0);
            g += s;
        }
    }
    printf("example_check: %s scale %g (%s)\n", bad ? "FAIL" : "ok", scale, tl_plugin_file(lib));
    tl_ctx_free(ctx);
    p->destroy(state);
    tl_params_free(params);
    tl_plugin_close(lib);
    return bad;
}

int main(void)
{
    int bad = run(0.0, 1);
    bad += run(0.5, 0);
    return bad ? 1 : 0;
}
