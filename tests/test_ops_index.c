/* Gradient checks, forward values, index errors and determinism for
 * embedding, gather_rows and scatter_add_rows. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"

static tl_tensor *fwd_embedding(tl_ctx *ctx, tl_tensor **in, void *u) { return tl_embedding(ctx, in[0], in[1]); }
static tl_tensor *fwd_gather(tl_ctx *ctx, tl_tensor **in, void *u) { return tl_gather_rows(ctx, in[0], in[1]); }
static tl_tensor *fwd_scatter(tl_ctx *ctx, tl_tensor **in, void *u)
{
    return tl_scatter_add_rows(ctx, in[0], in[1], in[2]);
}

/* scatter(base, idx, src) + scatter(base^2, idx, src^2), and the embedding of
 * w plus the square of a gather of w by the same ids, each second term
 * recorded after the op under test (in separate statements, since C leaves
 * the order of argument evaluation open): backward reaches that op with the
 * gradients already non-zero, so a backward that overwrote would fail. */
static tl_tensor *fwd_scatter_accumulate(tl_ctx *ctx, tl_tensor **in, void *u)
{
    tl_tensor *s = tl_scatter_add_rows(ctx, in[0], in[1], in[2]);
    tl_tensor *base_sq = tl_mul(ctx, in[0], in[0]);
    tl_tensor *src_sq = tl_mul(ctx, in[2], in[2]);
    tl_tensor *t = tl_scatter_add_rows(ctx, base_sq, in[1], src_sq);
    return tl_add(ctx, s, t);
}
static tl_tensor *fwd_embedding_accumulate(tl_ctx *ctx, tl_tensor **in, void *u)
{
    tl_tensor *e = tl_embedding(ctx, in[0], in[1]);
    tl_tensor *flat = tl_reshape(ctx, in[1], 1, (int64_t[]){tl_numel(in[1])});
    tl_tensor *g = tl_gather_rows(ctx, in[0], flat);
    tl_tensor *gg = tl_mul(ctx, g, g);
    tl_tensor *e2 = tl_reshape(ctx, e, 2, (int64_t[]){tl_numel(in[1]), in[0]->shape[1]});
    return tl_add(ctx, e2, gg);
}

/* These ops copy or add rows, so L is linear in every input and only float32
 * rounding of L over 2h = 0.02 remains (measured at most 5e-6). */
static const gc_options TOL = {.step = 1e-2, .atol = 1e-3, .rtol = 1e-3};
/* The accumulation checks add a squared term; L is then quadratic, for which
 * the central difference is still exact, and rounding stays at most 3e-5. */

enum { V = 11, C = 13, N = 9, M = 8 };

static void check_rows_equal(const float *got, const float *want, int64_t n, const char *what)
{
    bool same = true;
    for (int64_t j = 0; j < n; j++)
        same = same && got[j] == want[j];
    CHECK_MSG(same, "%s", what);
}

int main(void)
{
    tl_rng rng;
    tl_rng_seed(&rng, 3);
    static float w[V * C], x[N * C], base[N * C], src[M * C];
    gc_randn(&rng, w, V * C, 1.0f);
    gc_randn(&rng, x, N * C, 1.0f);
    gc_randn(&rng, base, N * C, 1.0f);
    gc_randn(&rng, src, M * C, 1.0f);
    /* Repeated ids 3 and 0, and the last row V-1. */
    int32_t ids[2 * 5] = {3, 0, 10, 3, 7, 0, 3, 1, 9, 4};
    /* -1 padding, repeated rows 2 and 5, first and last rows. */
    int32_t idx[M] = {2, -1, 5, 2, 0, 8, -1, 5};

    gc_input emb[2] = {{TL_F32, 2, {V, C}, w, true}, {TL_I32, 2, {2, 5}, ids, false}};
    gc_check("embedding repeated ids", fwd_embedding, NULL, emb, 2, TOL);
    gc_input gat[2] = {{TL_F32, 2, {N, C}, x, true}, {TL_I32, 1, {M}, idx, false}};
    gc_check("gather_rows padding and repeats", fwd_gather, NULL, gat, 2, TOL);
    gc_input sca[3] = {{TL_F32, 2, {N, C}, base, true}, {TL_I32, 1, {M}, idx, false},
                       {TL_F32, 2, {M, C}, src, true}};
    gc_check("scatter_add_rows padding and repeats", fwd_scatter, NULL, sca, 3, TOL);
    gc_check("scatter_add_rows accumulates", fwd_scatter_accumulate, NULL, sca, 3, TOL);
    gc_check("embedding and gather accumulate", fwd_embedding_accumulate, NULL, emb, 2, TOL);

    tl_ctx *ctx = tl_ctx_new(0);

    /* Forward values: copies are exact, and the scatter sums follow the index order. */
    {
        tl_tensor *wt = tl_wrap(ctx, TL_F32, w, 2, (int64_t[]){V, C});
        tl_tensor *it = tl_wrap(ctx, TL_I32, ids, 2, (int64_t[]){2, 5});
        tl_tensor *e = tl_embedding(ctx, wt, it);
        CHECK_MSG(e != NULL, "%s", tl_errmsg());
        if (e) {
            CHECK(e->ndim == 3 && e->shape[0] == 2 && e->shape[1] == 5 && e->shape[2] == C);
            for (int n = 0; n < 10; n++)
                check_rows_equal(tl_f32(e) + n * C, w + ids[n] * C, C, "embedding row copy");
        }

        tl_tensor *xt = tl_wrap(ctx, TL_F32, x, 2, (int64_t[]){N, C});
        tl_tensor *xi = tl_wrap(ctx, TL_I32, idx, 1, (int64_t[]){M});
        tl_tensor *g = tl_gather_rows(ctx, xt, xi);
        CHECK_MSG(g != NULL, "%s", tl_errmsg());
        if (g) {
            CHECK(g->ndim == 2 && g->shape[0] == M && g->shape[1] == C);
            static const float zero[C];
            for (int m = 0; m < M; m++)
                check_rows_equal(tl_f32(g) + m * C, idx[m] < 0 ? zero : x + idx[m] * C, C,
                                 "gather row copy or zero row");
        }

        tl_tensor *bt = tl_wrap(ctx, TL_F32, base, 2, (int64_t[]){N, C});
        tl_tensor *st = tl_wrap(ctx, TL_F32, src, 2, (int64_t[]){M, C});
        float keep = base[0];
        tl_tensor *s = tl_scatter_add_rows(ctx, bt, xi, st);
        CHECK_MSG(s != NULL, "%s", tl_errmsg());
        CHECK(base[0] == keep);
        if (s) {
            /* Row 2 gets src rows 0 and 3, row 5 gets 2 and 7, row 0 gets 4,
             * row 8 gets 5; rows 1, 3, 4, 6, 7 are untouched. */
            float want[N * C];
            memcpy(want, base, sizeof want);
            for (int j = 0; j < C; j++) {
                want[2 * C + j] = (base[2 * C + j] + src[0 * C + j]) + src[3 * C + j];
                want[5 * C + j] = (base[5 * C + j] + src[2 * C + j]) + src[7 * C + j];
                want[0 * C + j] = base[0 * C + j] + src[4 * C + j];
                want[8 * C + j] = base[8 * C + j] + src[5 * C + j];
            }
            check_rows_equal(tl_f32(s), want, N * C, "scatter_add_rows sums");
        }
    }

    /* Hand-computed: gather rows {1, -1, 1} of [[1,2],[3,4]] is [[3,4],[0,0],[3,4]]. */
    {
        float p[4] = {1, 2, 3, 4};
        int32_t q[3] = {1, -1, 1};
        tl_tensor *g = tl_gather_rows(ctx, tl_wrap(ctx, TL_F32, p, 2, (int64_t[]){2, 2}),
                                      tl_wrap(ctx, TL_I32, q, 1, (int64_t[]){3}));
        float want[6] = {3, 4, 0, 0, 3, 4};
        CHECK(g != NULL);
        if (g)
            check_rows_equal(tl_f32(g), want, 6, "gather hand-computed");
    }

    /* Index and shape errors name the bad value and the limit. */
    {
        tl_tensor *wt = tl_wrap(ctx, TL_F32, w, 2, (int64_t[]){V, C});
        int32_t bad_ids[3] = {1, V, 2};
        tl_tensor *bi = tl_wrap(ctx, TL_I32, bad_ids, 1, (int64_t[]){3});
        CHECK(tl_embedding(ctx, wt, bi) == NULL);
        CHECK(tl_lasterr() == TL_EINVAL);
        CHECK_MSG(strstr(tl_errmsg(), "ids[1] = 11") && strstr(tl_errmsg(), "V = 11"), "%s",
                  tl_errmsg());
        bad_ids[1] = -1;
        CHECK(tl_embedding(ctx, wt, bi) == NULL);
        CHECK_MSG(strstr(tl_errmsg(), "ids[1] = -1") != NULL, "%s", tl_errmsg());
        tl_tensor *fi = tl_wrap(ctx, TL_F32, w, 1, (int64_t[]){3});
        CHECK(tl_embedding(ctx, wt, fi) == NULL);
        CHECK_MSG(strstr(tl_errmsg(), "int32") != NULL, "%s", tl_errmsg());

        tl_tensor *xt = tl_wrap(ctx, TL_F32, x, 2, (int64_t[]){N, C});
        int32_t bad_idx[2] = {0, N};
        tl_tensor *bx = tl_wrap(ctx, TL_I32, bad_idx, 1, (int64_t[]){2});
        CHECK(tl_gather_rows(ctx, xt, bx) == NULL);
        CHECK_MSG(strstr(tl_errmsg(), "idx[1] = 9") && strstr(tl_errmsg(), "N = 9"), "%s",
                  tl_errmsg());
        bad_idx[1] = -2;
        CHECK(tl_gather_rows(ctx, xt, bx) == NULL);
        CHECK_MSG(strstr(tl_errmsg(), "idx[1] = -2") != NULL, "%s", tl_errmsg());

        tl_tensor *bt = tl_wrap(ctx, TL_F32, base, 2, (int64_t[]){N, C});
        tl_tensor *xi = tl_wrap(ctx, TL_I32, idx, 1, (int64_t[]){M});
        tl_tensor *short_src = tl_wrap(ctx, TL_F32, src, 2, (int64_t[]){M, C - 1});
        CHECK(tl_scatter_add_rows(ctx, bt, xi, short_src) == NULL);
        CHECK(tl_lasterr() == TL_ESHAPE);
        CHECK_MSG(strstr(tl_errmsg(), "(8, 12) f32") && strstr(tl_errmsg(), "(8, 13)"), "%s",
                  tl_errmsg());
        bad_idx[1] = N + 4;
        tl_tensor *two_src = tl_wrap(ctx, TL_F32, src, 2, (int64_t[]){2, C});
        CHECK(tl_scatter_add_rows(ctx, bt, bx, two_src) == NULL);
        CHECK_MSG(strstr(tl_errmsg(), "idx[1] = 13") != NULL, "%s", tl_errmsg());

        tl_tensor *x3 = tl_wrap(ctx, TL_F32, x, 3, (int64_t[]){1, N, C});
        CHECK(tl_gather_rows(ctx, x3, xi) == NULL);
        CHECK_MSG(strstr(tl_errmsg(), "2-D") != NULL, "%s", tl_errmsg());
    }

    /* Large enough for the parallel path: the weight gradient of an embedding
     * with many repeated ids equals a serial sum in id order, bit for bit. */
    {
        enum { BV = 50, BC = 200, BN = 1000 };
        float *bw = malloc(sizeof(float) * BV * BC), *dy = malloc(sizeof(float) * BN * BC);
        float *want = calloc(BV * BC, sizeof(float));
        int32_t *bid = malloc(sizeof(int32_t) * BN);
        gc_randn(&rng, bw, BV * BC, 1.0f);
        gc_randn(&rng, dy, BN * BC, 1.0f);
        for (int n = 0; n < BN; n++)
            bid[n] = (int32_t)tl_rng_below(&rng, BV);
        for (int n = 0; n < BN; n++)
            for (int j = 0; j < BC; j++)
                want[bid[n] * BC + j] += dy[n * BC + j];

        tl_ctx_reset(ctx);
        tl_tensor *wt = tl_new(ctx, TL_F32, 2, (int64_t[]){BV, BC});
        memcpy(wt->data, bw, sizeof(float) * BV * BC);
        tl_set_requires_grad(wt, true);
        tl_tensor *it = tl_wrap(ctx, TL_I32, bid, 1, (int64_t[]){BN});
        tl_tensor *rt = tl_wrap(ctx, TL_F32, dy, 2, (int64_t[]){BN, BC});
        tl_tensor *l = tl_sum(ctx, tl_mul(ctx, tl_embedding(ctx, wt, it), rt));
        CHECK(tl_backward(ctx, l) == TL_OK);
        CHECK(wt->grad != NULL);
        if (wt->grad)
            check_rows_equal(wt->grad, want, BV * BC, "parallel embedding backward vs serial sum");
        free(bw);
        free(dy);
        free(want);
        free(bid);
    }

    tl_ctx_free(ctx);
    return gc_finish("ops index");
}
