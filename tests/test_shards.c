/* Data-parallel shards: gradients equal to one whole-batch backward, the same
 * bits on every run, accumulation, and errors that name the shard. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "internal.h"
#include "thinklab/block.h"

enum { V = 11, T = 6, C = 16, H = 2, LAYERS = 2, BATCH = 12 };

/* A small LLaMA-style model. The head is a flat parameter reshaped to (V, C)
 * on every forward, so gradients also reach a parameter through a view. */
typedef struct model {
    tl_params *params;
    tl_tensor *embed, *norm, *head_flat;
    tl_block blocks[LAYERS];
    int32_t ids[BATCH * T], targets[BATCH * T];
} model;

static void model_init(model *m)
{
    m->params = tl_params_new();
    m->embed = tl_params_add(m->params, "embed", 2, (int64_t[]){V, C}, TL_INIT_NORMAL, 0.5f,
                             TL_PARAM_DECAY);
    tl_block_config cfg = tl_block_config_default(C, H);
    cfg.n_layers = LAYERS;
    for (int l = 0; l < LAYERS; l++) {
        char prefix[16];
        snprintf(prefix, sizeof prefix, "layers.%d", l);
        CHECK(tl_block_init(&m->blocks[l], &cfg, m->params, prefix) == TL_OK);
    }
    m->norm = tl_params_add(m->params, "norm", 1, (int64_t[]){C}, TL_INIT_CONST, 1.0f, 0);
    m->head_flat = tl_params_add(m->params, "head", 1, (int64_t[]){V * C}, TL_INIT_NORMAL, 0.3f,
                                 TL_PARAM_DECAY);
    tl_rng rng;
    tl_rng_seed(&rng, 7);
    CHECK(tl_params_alloc(m->params, &rng) == TL_OK);
    for (int i = 0; i < BATCH * T; i++) {
        m->ids[i] = (int32_t)tl_rng_below(&rng, V);
        m->targets[i] = (int32_t)tl_rng_below(&rng, V);
    }
}

/* Mean cross-entropy over sequences [first, first + rows). */
static tl_tensor *model_loss(tl_ctx *ctx, model *m, int64_t first, int64_t rows)
{
    int64_t bt[2] = {rows, T}, n[1] = {rows * T};
    tl_tensor *ids = tl_wrap(ctx, TL_I32, m->ids + first * T, 2, bt);
    tl_tensor *targets = tl_wrap(ctx, TL_I32, m->targets + first * T, 1, n);
    tl_tensor *x = tl_embedding(ctx, m->embed, ids);
    for (int l = 0; l < LAYERS; l++)
        x = tl_block_forward(ctx, &m->blocks[l], x, NULL);
    x = tl_rmsnorm(ctx, x, m->norm, 1e-6f);
    tl_tensor *head = tl_reshape(ctx, m->head_flat, 2, (int64_t[]){V, C});
    tl_tensor *logits = tl_linear(ctx, tl_reshape(ctx, x, 2, (int64_t[]){rows * T, C}), head);
    return tl_cross_entropy(ctx, logits, targets, NULL, NULL);
}

static tl_tensor *shard_loss(tl_ctx *ctx, int shard, int n, void *user)
{
    int64_t rows = BATCH / n;
    return model_loss(ctx, user, shard * rows, rows);
}

/* Fails on shard 1 with a message of its own. */
static tl_tensor *failing_loss(tl_ctx *ctx, int shard, int n, void *user)
{
    if (shard == 1) {
        tl_seterr(TL_ESHAPE, "deliberate failure in the test");
        return NULL;
    }
    return shard_loss(ctx, shard, n, user);
}

/* Returns an int32 scalar instead of a float32 loss. */
static tl_tensor *int_loss(tl_ctx *ctx, int shard, int n, void *user)
{
    return tl_zeros(ctx, TL_I32, 1, (int64_t[]){1});
}

/* Largest |a - b| / max(1e-3, |b|) over the gradients. */
static double max_rel_diff(const float *a, const float *b, int64_t n)
{
    double worst = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]) / fmax(1e-3, fabs((double)b[i]));
        worst = d > worst ? d : worst;
    }
    return worst;
}

static void check_against_whole_batch(void)
{
    model m;
    model_init(&m);
    int64_t numel = tl_params_numel(m.params);
    float *ref = malloc((size_t)numel * sizeof(float));
    float *first = malloc((size_t)numel * sizeof(float));

    tl_ctx *ctx = tl_ctx_new(0);
    tl_params_zero_grad(m.params);
    tl_tensor *loss = model_loss(ctx, &m, 0, BATCH);
    CHECK(loss != NULL);
    CHECK(tl_backward(ctx, loss) == TL_OK);
    double ref_loss = loss ? tl_f32(loss)[0] : NAN;
    memcpy(ref, tl_params_grads(m.params), (size_t)numel * sizeof(float));
    tl_ctx_free(ctx);

    for (int n = 2; n <= 4; n++) {
        tl_shards *s = tl_shards_new(m.params, n, 0);
        CHECK(s != NULL);
        if (!s)
            continue;
        CHECK(tl_shards_count(s) == n);
        CHECK(isnan(tl_shards_grad_norm(s)));
        for (int run = 0; run < 2; run++) {
            double l = NAN;
            tl_params_zero_grad(m.params);
            CHECK_MSG(tl_shards_backward(s, shard_loss, &m, &l) == TL_OK, "%s", tl_errmsg());
            /* Float sums in another order: the means of n shard means equal
             * the batch mean to rounding. */
            CHECK_MSG(fabs(l - ref_loss) <= 1e-6 * fabs(ref_loss),
                      "%d shards: loss %.9g, whole batch %.9g", n, l, ref_loss);
            /* Tolerance 1e-5 relative: each gradient is a sum of n partial
             * sums instead of one; measured about 1e-6. */
            double diff = max_rel_diff(tl_params_grads(m.params), ref, numel);
            CHECK_MSG(diff <= 1e-5, "%d shards: gradients differ from the whole batch by %.3g "
                                    "(relative)", n, diff);
            /* The norm computed while summing adds the squares in another
             * order than tl_grad_norm, in double. */
            double norm = tl_grad_norm(m.params);
            CHECK_MSG(fabs(tl_shards_grad_norm(s) - norm) <= 1e-12 * norm,
                      "%d shards: norm %.17g, tl_grad_norm %.17g", n, tl_shards_grad_norm(s),
                      norm);
            if (run == 0)
                memcpy(first, tl_params_grads(m.params), (size_t)numel * sizeof(float));
            else
                CHECK_MSG(memcmp(first, tl_params_grads(m.params),
                                 (size_t)numel * sizeof(float)) == 0,
                          "%d shards: two runs gave different bits", n);
            tl_shards_reset(s);
        }
        /* Without zeroing, a second step adds to the store's gradients. The
         * sums round differently from 2 x the first (measured 1.6e-6). */
        CHECK(tl_shards_backward(s, shard_loss, &m, NULL) == TL_OK);
        tl_shards_reset(s);
        double twice = 0.0;
        const float *g = tl_params_grads(m.params);
        for (int64_t i = 0; i < numel; i++)
            twice = fmax(twice, fabs((double)g[i] - 2.0 * first[i]) /
                                    fmax(1e-3, fabs(2.0 * first[i])));
        CHECK_MSG(twice <= 1e-5, "%d shards: a second backward did not add (%.3g)", n, twice);
        CHECK(tl_shards_flops(s) > 0.0);
        tl_shards_free(s);
    }
    free(ref);
    free(first);
    tl_params_free(m.params);
}

/* A redirected context leaves the store's gradients alone and puts every
 * parameter gradient, the one reached through a view included, in its
 * buffer. */
static void check_redirect(void)
{
    model m;
    model_init(&m);
    int64_t numel = tl_params_numel(m.params);
    float *ref = malloc((size_t)numel * sizeof(float));
    float *buf = calloc((size_t)numel, sizeof(float));
    tl_ctx *ctx = tl_ctx_new(0);
    tl_params_zero_grad(m.params);
    CHECK(tl_backward(ctx, model_loss(ctx, &m, 0, BATCH)) == TL_OK);
    memcpy(ref, tl_params_grads(m.params), (size_t)numel * sizeof(float));

    tl_ctx_reset(ctx);
    tl_params_zero_grad(m.params);
    tl_ctx_redirect_grads(ctx, m.params, buf);
    CHECK(tl_backward(ctx, model_loss(ctx, &m, 0, BATCH)) == TL_OK);
    int64_t touched = 0;
    for (int64_t i = 0; i < numel; i++)
        touched += tl_params_grads(m.params)[i] != 0.0f;
    CHECK_MSG(touched == 0, "%lld store gradients written through a redirected context",
              (long long)touched);
    CHECK(memcmp(buf, ref, (size_t)numel * sizeof(float)) == 0);
    tl_ctx_free(ctx);
    free(ref);
    free(buf);
    tl_params_free(m.params);
}

static void check_errors(void)
{
    model m;
    model_init(&m);
    tl_shards *s = tl_shards_new(m.params, 2, 0);
    CHECK(s != NULL);
    if (s) {
        tl_params_zero_grad(m.params);
        tl_status st = tl_shards_backward(s, failing_loss, &m, NULL);
        CHECK(st == TL_ESHAPE);
        CHECK(isnan(tl_shards_grad_norm(s)));
        CHECK_MSG(strstr(tl_errmsg(), "shard 1 of 2"), "message: %s", tl_errmsg());
        CHECK_MSG(strstr(tl_errmsg(), "deliberate"), "message: %s", tl_errmsg());
        CHECK(tl_shards_backward(s, NULL, &m, NULL) == TL_EINVAL);
        CHECK(tl_shards_backward(NULL, shard_loss, &m, NULL) == TL_EINVAL);
        tl_shards_reset(s);
        CHECK(tl_shards_backward(s, int_loss, &m, NULL) == TL_ESHAPE);
        CHECK_MSG(strstr(tl_errmsg(), "got int32"), "message: %s", tl_errmsg());
        tl_shards_reset(s);

        /* The failed step leaves no gradient in shard 1's buffer: a good
         * step afterwards matches a fresh shard set. */
        tl_params_zero_grad(m.params);
        CHECK(tl_shards_backward(s, shard_loss, &m, NULL) == TL_OK);
        int64_t numel = tl_params_numel(m.params);
        float *after = malloc((size_t)numel * sizeof(float));
        memcpy(after, tl_params_grads(m.params), (size_t)numel * sizeof(float));
        tl_shards *fresh = tl_shards_new(m.params, 2, 0);
        tl_params_zero_grad(m.params);
        CHECK(fresh != NULL);
        CHECK(!fresh || tl_shards_backward(fresh, shard_loss, &m, NULL) == TL_OK);
        CHECK(memcmp(after, tl_params_grads(m.params), (size_t)numel * sizeof(float)) == 0);
        free(after);
        tl_shards_free(fresh);
        tl_shards_free(s);
    }

    CHECK(tl_shards_new(m.params, -1, 0) == NULL);
    CHECK_MSG(strstr(tl_errmsg(), "count -1"), "message: %s", tl_errmsg());
    tl_params *empty = tl_params_new();
    tl_params_add(empty, "w", 1, (int64_t[]){4}, TL_INIT_ZEROS, 0.0f, 0);
    CHECK(tl_shards_new(empty, 2, 0) == NULL);
    CHECK_MSG(strstr(tl_errmsg(), "tl_params_alloc"), "message: %s", tl_errmsg());
    tl_params_free(empty);
    tl_params_free(m.params);
}

int main(void)
{
    tl_threads_set(2);
    check_redirect();
    check_against_whole_batch();
    check_errors();
    return gc_finish("shards");
}
