/* Fused attention: finite-difference gradients for q, k and v under every RoPE
 * pairing, with position subsets, padding, Tq != Tk and sequences longer than
 * one block of queries; the forward against a
 * naive double-precision reference; causality; padding; one graph node; FLOP
 * count; same bits on one and two threads. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "internal.h"

/* One attention problem: shapes, options and optional int32 position and
 * length arrays (NULL = default). */
typedef struct attn_case {
    int64_t B, Tq, Tk, H, D;
    tl_rope_pairing rope;
    float base;
    const int32_t *q_pos, *k_pos; /* (B,Tq), (B,Tk) */
    const int32_t *q_len, *k_len; /* (B) */
} attn_case;

static tl_attention_opts case_opts(tl_ctx *ctx, const attn_case *c)
{
    tl_attention_opts o = {.n_head = (int)c->H, .rope = c->rope, .rope_base = c->base};
    if (c->q_pos)
        o.q_pos = tl_wrap(ctx, TL_I32, (void *)c->q_pos, 2, (int64_t[]){c->B, c->Tq});
    if (c->k_pos)
        o.k_pos = tl_wrap(ctx, TL_I32, (void *)c->k_pos, 2, (int64_t[]){c->B, c->Tk});
    if (c->q_len)
        o.q_len = tl_wrap(ctx, TL_I32, (void *)c->q_len, 1, (int64_t[]){c->B});
    if (c->k_len)
        o.k_len = tl_wrap(ctx, TL_I32, (void *)c->k_len, 1, (int64_t[]){c->B});
    return o;
}

static tl_tensor *fwd_attention(tl_ctx *ctx, tl_tensor **in, void *user)
{
    tl_attention_opts o = case_opts(ctx, user);
    return tl_attention(ctx, in[0], in[1], in[2], &o);
}

/* Rotates one head row in double, as the documentation of tl_attention_opts
 * defines RoPE: pair i turns by pos * base^(-2i/D). */
static void ref_rope(double *x, int64_t D, tl_rope_pairing rope, double base, int32_t pos)
{
    for (int64_t i = 0; i < D / 2 && rope != TL_ROPE_NONE; i++) {
        double angle = pos * pow(base, -2.0 * (double)i / (double)D);
        int64_t ia = rope == TL_ROPE_INTERLEAVED ? 2 * i : i;
        int64_t ib = rope == TL_ROPE_INTERLEAVED ? 2 * i + 1 : i + D / 2;
        double a = x[ia], b = x[ib];
        x[ia] = a * cos(angle) - b * sin(angle);
        x[ib] = a * sin(angle) + b * cos(angle);
    }
}

/* Naive attention in double with explicit (Tq,Tk) scores, mask and softmax. */
static void ref_attention(const attn_case *c, const float *q, const float *k, const float *v,
                          double *out)
{
    int64_t C = c->H * c->D, D = c->D;
    double *qi = malloc((size_t)D * sizeof(double));
    double *kj = malloc((size_t)D * sizeof(double));
    double *score = malloc((size_t)c->Tk * sizeof(double));
    bool *seen = malloc((size_t)c->Tk * sizeof(bool));
    for (int64_t b = 0; b < c->B; b++) {
        int64_t q_len = c->q_len ? c->q_len[b] : c->Tq, k_len = c->k_len ? c->k_len[b] : c->Tk;
        for (int64_t h = 0; h < c->H; h++) {
            for (int64_t i = 0; i < c->Tq; i++) {
                double *o = out + (b * c->Tq + i) * C + h * D;
                int32_t qp = c->q_pos ? c->q_pos[b * c->Tq + i] : (int32_t)i;
                for (int64_t d = 0; d < D; d++) {
                    o[d] = 0.0;
                    qi[d] = q[(b * c->Tq + i) * C + h * D + d];
                }
                ref_rope(qi, D, c->rope, c->base, qp);
                double max = -INFINITY;
                for (int64_t j = 0; j < c->Tk; j++) {
                    int32_t kp = c->k_pos ? c->k_pos[b * c->Tk + j] : (int32_t)j;
                    seen[j] = i < q_len && j < k_len && kp <= qp;
                    for (int64_t d = 0; d < D; d++)
                        kj[d] = k[(b * c->Tk + j) * C + h * D + d];
                    ref_rope(kj, D, c->rope, c->base, kp);
                    score[j] = 0.0;
                    for (int64_t d = 0; d < D; d++)
                        score[j] += qi[d] * kj[d] / sqrt((double)D);
                    if (seen[j] && score[j] > max)
                        max = score[j];
                }
                double sum = 0.0;
                for (int64_t j = 0; j < c->Tk; j++)
                    sum += seen[j] ? exp(score[j] - max) : 0.0;
                for (int64_t j = 0; j < c->Tk; j++) {
                    if (!seen[j])
                        continue;
                    double p = exp(score[j] - max) / sum;
                    for (int64_t d = 0; d < D; d++)
                        o[d] += p * v[(b * c->Tk + j) * C + h * D + d];
                }
            }
        }
    }
    free(qi);
    free(kj);
    free(score);
    free(seen);
}

typedef struct attn_data {
    float *q, *k, *v;
} attn_data;

static attn_data data_new(tl_rng *rng, const attn_case *c)
{
    int64_t C = c->H * c->D;
    attn_data a = {malloc((size_t)(c->B * c->Tq * C) * sizeof(float)),
                   malloc((size_t)(c->B * c->Tk * C) * sizeof(float)),
                   malloc((size_t)(c->B * c->Tk * C) * sizeof(float))};
    gc_randn(rng, a.q, c->B * c->Tq * C, 1.0f);
    gc_randn(rng, a.k, c->B * c->Tk * C, 1.0f);
    gc_randn(rng, a.v, c->B * c->Tk * C, 1.0f);
    return a;
}

static void data_free(attn_data a)
{
    free(a.q);
    free(a.k);
    free(a.v);
}

/* Attention is smooth and its inputs are O(1): float32 forwards with h = 1e-2
 * give central differences good to about 5e-5 absolute (measured 4e-5 at most). */
static const gc_options TOL = {.step = 1e-2, .atol = 2e-4, .rtol = 2e-3};

/* Gradient check of q, k and v (each as diff selects) and the forward against
 * the reference. The reference tolerance 2e-5 covers float32 rounding of
 * D-term dot products, exp and the RoPE angles at positions up to 5000. */
static void check_case(tl_rng *rng, const char *label, attn_case c, bool dq, bool dk, bool dv)
{
    attn_data a = data_new(rng, &c);
    int64_t C = c.H * c.D;
    gc_input in[3] = {{TL_F32, 3, {c.B, c.Tq, C}, a.q, dq},
                      {TL_F32, 3, {c.B, c.Tk, C}, a.k, dk},
                      {TL_F32, 3, {c.B, c.Tk, C}, a.v, dv}};
    gc_check(label, fwd_attention, &c, in, 3, TOL);

    tl_ctx *ctx = tl_ctx_new(1 << 20);
    tl_tensor *t[3];
    for (int i = 0; i < 3; i++)
        t[i] = tl_wrap(ctx, TL_F32, in[i].data, 3, in[i].shape);
    tl_tensor *out = fwd_attention(ctx, t, &c);
    double *ref = malloc((size_t)(c.B * c.Tq * C) * sizeof(double));
    ref_attention(&c, a.q, a.k, a.v, ref);
    double worst = 0.0;
    for (int64_t n = 0; out && n < c.B * c.Tq * C; n++)
        worst = fmax(worst, fabs(tl_f32(out)[n] - ref[n]));
    CHECK_MSG(out && worst < 2e-5, "%s: forward differs from the reference by %.3g", label, worst);
    free(ref);
    tl_ctx_free(ctx);
    data_free(a);
}

/* Perturbs key/value token j of sequence 0 and checks that outputs of queries
 * whose position is below k_pos[j] keep the same bits, and that the query at
 * that position changes. */
static void check_causality(tl_rng *rng, attn_case c, int64_t j)
{
    attn_data a = data_new(rng, &c);
    int64_t C = c.H * c.D;
    tl_ctx *ctx = tl_ctx_new(1 << 20);
    int64_t qs[3] = {c.B, c.Tq, C}, ks[3] = {c.B, c.Tk, C};
    tl_tensor *t[3] = {tl_wrap(ctx, TL_F32, a.q, 3, qs), tl_wrap(ctx, TL_F32, a.k, 3, ks),
                       tl_wrap(ctx, TL_F32, a.v, 3, ks)};
    tl_tensor *before = fwd_attention(ctx, t, &c);
    for (int64_t d = 0; d < C; d++) {
        a.k[j * C + d] += 0.5f;
        a.v[j * C + d] -= 0.5f;
    }
    tl_tensor *after = fwd_attention(ctx, t, &c);
    int32_t kp = c.k_pos ? c.k_pos[j] : (int32_t)j;
    int earlier_changed = 0, same_changed = 0;
    for (int64_t i = 0; i < c.Tq; i++) {
        int32_t qp = c.q_pos ? c.q_pos[i] : (int32_t)i;
        bool differs = memcmp(tl_f32(before) + i * C, tl_f32(after) + i * C, (size_t)C * 4) != 0;
        if (qp < kp)
            earlier_changed += differs;
        if (qp == kp)
            same_changed += differs;
    }
    CHECK_MSG(earlier_changed == 0, "%d earlier queries changed after perturbing key %lld",
              earlier_changed, (long long)j);
    CHECK_MSG(same_changed == 1, "the query at the perturbed key's position did not change");
    /* Other sequences never see this key. */
    CHECK(c.B < 2 || memcmp(tl_f32(before) + c.Tq * C, tl_f32(after) + c.Tq * C,
                            (size_t)((c.B - 1) * c.Tq * C) * 4) == 0);
    tl_ctx_free(ctx);
    data_free(a);
}

/* Padded query rows output exact zeros and get zero gradient; keys at or past
 * k_len get zero gradient and do not change any output. */
static void check_padding(tl_rng *rng)
{
    static const int32_t q_len[2] = {4, 7}, k_len[2] = {7, 3};
    attn_case c = {2, 7, 7, 2, 4, TL_ROPE_HALF, 10000.0f, NULL, NULL, q_len, k_len};
    attn_data a = data_new(rng, &c);
    int64_t C = c.H * c.D, T = 7;
    tl_ctx *ctx = tl_ctx_new(1 << 20);
    int64_t shape[3] = {2, T, C};
    tl_tensor *t[3] = {tl_wrap(ctx, TL_F32, a.q, 3, shape), tl_wrap(ctx, TL_F32, a.k, 3, shape),
                       tl_wrap(ctx, TL_F32, a.v, 3, shape)};
    for (int i = 0; i < 3; i++)
        tl_set_requires_grad(t[i], true);
    tl_tensor *out = fwd_attention(ctx, t, &c);
    float *before = malloc((size_t)(2 * T * C) * sizeof(float));
    memcpy(before, tl_f32(out), (size_t)(2 * T * C) * sizeof(float));
    CHECK(tl_backward(ctx, tl_sum(ctx, out)) == TL_OK);

    int bad_out = 0, bad_dq = 0, bad_dkv = 0;
    for (int64_t b = 0; b < 2; b++) {
        for (int64_t i = q_len[b]; i < T; i++)
            for (int64_t d = 0; d < C; d++) {
                bad_out += tl_f32(out)[(b * T + i) * C + d] != 0.0f;
                bad_dq += t[0]->grad[(b * T + i) * C + d] != 0.0f;
            }
        for (int64_t j = k_len[b]; j < T; j++)
            for (int64_t d = 0; d < C; d++)
                bad_dkv += (t[1]->grad[(b * T + j) * C + d] != 0.0f) +
                           (t[2]->grad[(b * T + j) * C + d] != 0.0f);
    }
    CHECK_MSG(bad_out == 0, "%d padded query outputs are not zero", bad_out);
    CHECK_MSG(bad_dq == 0, "%d padded query gradients are not zero", bad_dq);
    CHECK_MSG(bad_dkv == 0, "%d padded key or value gradients are not zero", bad_dkv);

    /* Changing a padded key and value of sequence 1 (k_len 3) changes nothing. */
    tl_ctx_reset(ctx);
    for (int64_t d = 0; d < C; d++) {
        a.k[(T + 5) * C + d] = 100.0f;
        a.v[(T + 5) * C + d] = -100.0f;
    }
    t[0] = tl_wrap(ctx, TL_F32, a.q, 3, shape);
    t[1] = tl_wrap(ctx, TL_F32, a.k, 3, shape);
    t[2] = tl_wrap(ctx, TL_F32, a.v, 3, shape);
    out = fwd_attention(ctx, t, &c);
    CHECK(memcmp(before, tl_f32(out), (size_t)(2 * T * C) * sizeof(float)) == 0);
    free(before);
    tl_ctx_free(ctx);
    data_free(a);
}

/* A query that sees no key outputs zeros and passes no gradient. */
static void check_no_visible_key(tl_rng *rng)
{
    static const int32_t q_pos[3] = {0, 2, 4}, k_pos[3] = {1, 2, 3};
    attn_case c = {1, 3, 3, 1, 4, TL_ROPE_INTERLEAVED, 10000.0f, q_pos, k_pos, NULL, NULL};
    attn_data a = data_new(rng, &c);
    tl_ctx *ctx = tl_ctx_new(1 << 20);
    tl_tensor *t[3] = {tl_wrap(ctx, TL_F32, a.q, 3, (int64_t[]){1, 3, 4}),
                       tl_wrap(ctx, TL_F32, a.k, 3, (int64_t[]){1, 3, 4}),
                       tl_wrap(ctx, TL_F32, a.v, 3, (int64_t[]){1, 3, 4})};
    for (int i = 0; i < 3; i++)
        tl_set_requires_grad(t[i], true);
    tl_tensor *out = fwd_attention(ctx, t, &c);
    CHECK(tl_backward(ctx, tl_sum(ctx, out)) == TL_OK);
    int nonzero = 0;
    for (int d = 0; d < 4; d++)
        nonzero += (tl_f32(out)[d] != 0.0f) + (t[0]->grad[d] != 0.0f);
    CHECK_MSG(nonzero == 0, "query 0 sees no key but has %d non-zero output or gradient values",
              nonzero);
    /* Query 1 (position 2) sees keys at positions 1 and 2 only. */
    CHECK(fabsf(tl_f32(out)[4]) > 0.0f);
    tl_ctx_free(ctx);
    data_free(a);
}

/* One node for the whole op, the FLOP count of the documented formula, and
 * errors that name the bad value. */
static void check_node_flops_errors(void)
{
    tl_ctx *ctx = tl_ctx_new(1 << 20);
    float buf[3 * 2];
    for (int i = 0; i < 6; i++)
        buf[i] = 0.1f * (float)i;
    tl_tensor *x = tl_wrap(ctx, TL_F32, buf, 3, (int64_t[]){1, 3, 2});
    tl_set_requires_grad(x, true);
    tl_attention_opts o = {.n_head = 1, .rope = TL_ROPE_NONE};
    tl_ctx_reset_flops(ctx);
    tl_tensor *out = tl_attention(ctx, x, x, x, &o);
    CHECK(out && out->node);
    CHECK(out && out->node && out->node->op == TL_OP_ATTENTION);
    CHECK(out && out->node && out->node->prev == NULL); /* no node for the scores */
    /* The products compute all 3 x 3 scores (Tq x e_max), 4D = 8 FLOPs each
     * at D = 2; softmax costs 5 per visible score, of which there are 6. */
    CHECK_MSG(tl_ctx_flops_forward(ctx) == 72.0 + 30.0, "forward FLOPs %g, expected 102",
              tl_ctx_flops_forward(ctx));
    CHECK(tl_backward(ctx, tl_sum(ctx, out)) == TL_OK);
    /* The attention node: 9 scores * (2D + 4 + 3 * 2D) = 9 * 20; then sum:
     * 6 elements. */
    CHECK_MSG(tl_ctx_flops_backward(ctx) == 180.0 + 6.0, "backward FLOPs %g, expected 186",
              tl_ctx_flops_backward(ctx));

    /* 37 queries in blocks of 16, 16 and 5 rows over their largest extents
     * 16, 32 and 37: 16 * 16 + 16 * 32 + 5 * 37 = 953 computed scores, of
     * which 37 * 38 / 2 = 703 are visible. */
    tl_ctx_reset(ctx);
    float *buf37 = calloc(37 * 2, sizeof(float));
    tl_tensor *x37 = tl_wrap(ctx, TL_F32, buf37, 3, (int64_t[]){1, 37, 2});
    tl_set_requires_grad(x37, true);
    tl_ctx_reset_flops(ctx);
    CHECK(tl_attention(ctx, x37, x37, x37, &o) != NULL);
    CHECK_MSG(tl_ctx_flops_forward(ctx) == 953.0 * 8.0 + 703.0 * 5.0,
              "forward FLOPs %g over 37 tokens, expected %g", tl_ctx_flops_forward(ctx),
              953.0 * 8.0 + 703.0 * 5.0);
    free(buf37);

    tl_ctx_reset(ctx);
    x = tl_wrap(ctx, TL_F32, buf, 3, (int64_t[]){1, 2, 3});
    o.n_head = 2;
    CHECK(tl_attention(ctx, x, x, x, &o) == NULL);
    CHECK(strstr(tl_errmsg(), "n_head = 2") != NULL);
    o.n_head = 1;
    o.rope = TL_ROPE_HALF;
    o.rope_base = 10000.0f;
    CHECK(tl_attention(ctx, x, x, x, &o) == NULL);
    CHECK(strstr(tl_errmsg(), "D = 3") != NULL);
    o.rope = TL_ROPE_NONE;
    int32_t len = 3;
    o.k_len = tl_wrap(ctx, TL_I32, &len, 1, (int64_t[]){1});
    CHECK(tl_attention(ctx, x, x, x, &o) == NULL);
    CHECK(strstr(tl_errmsg(), "k_len[0] = 3") != NULL);
    o.k_len = NULL;
    int32_t pos[2] = {0, -1};
    o.q_pos = tl_wrap(ctx, TL_I32, pos, 2, (int64_t[]){1, 2});
    CHECK(tl_attention(ctx, x, x, x, &o) == NULL);
    CHECK(strstr(tl_errmsg(), "q_pos[0][1] = -1") != NULL);
    o.q_pos = NULL;
    tl_tensor *kbad = tl_wrap(ctx, TL_F32, buf, 3, (int64_t[]){1, 3, 2});
    CHECK(tl_attention(ctx, x, kbad, kbad, &o) == NULL);
    CHECK(tl_lasterr() == TL_ESHAPE);
    CHECK(tl_attention(ctx, x, NULL, x, &o) == NULL);
    CHECK(tl_attention(ctx, x, x, x, NULL) == NULL);
    tl_ctx_free(ctx);
}

/* Forward output and gradients at a size above the parallel threshold must be
 * the same bits on one and on two threads. */
static void check_threads_same_bits(tl_rng *rng)
{
    attn_case c = {2, 64, 64, 4, 32, TL_ROPE_INTERLEAVED, 10000.0f, NULL, NULL, NULL, NULL};
    attn_data a = data_new(rng, &c);
    int64_t n = 2 * 64 * 128;
    float *res[2][4];
    for (int run = 0; run < 2; run++) {
        tl_threads_set(run + 1);
        tl_ctx *ctx = tl_ctx_new(0);
        int64_t shape[3] = {2, 64, 128};
        tl_tensor *t[3] = {tl_wrap(ctx, TL_F32, a.q, 3, shape), tl_wrap(ctx, TL_F32, a.k, 3, shape),
                           tl_wrap(ctx, TL_F32, a.v, 3, shape)};
        for (int i = 0; i < 3; i++)
            tl_set_requires_grad(t[i], true);
        tl_tensor *out = fwd_attention(ctx, t, &c);
        tl_tensor *w = tl_wrap(ctx, TL_F32, a.q, 3, shape); /* a fixed non-uniform weight */
        CHECK(tl_backward(ctx, tl_sum(ctx, tl_mul(ctx, out, w))) == TL_OK);
        const float *src[4] = {tl_f32(out), t[0]->grad, t[1]->grad, t[2]->grad};
        for (int i = 0; i < 4; i++) {
            res[run][i] = malloc((size_t)n * sizeof(float));
            memcpy(res[run][i], src[i], (size_t)n * sizeof(float));
        }
        tl_ctx_free(ctx);
    }
    for (int i = 0; i < 4; i++) {
        CHECK_MSG(memcmp(res[0][i], res[1][i], (size_t)n * sizeof(float)) == 0,
                  "result %d differs between 1 and 2 threads", i);
        free(res[0][i]);
        free(res[1][i]);
    }
    tl_threads_set(0);
    data_free(a);
}

int main(void)
{
    tl_rng rng;
    tl_rng_seed(&rng, 7);

    /* Odd sizes under every pairing. */
    static const char *names[3] = {"attention rope none", "attention rope interleaved",
                                   "attention rope half"};
    for (int r = 0; r < 3; r++) {
        attn_case c = {2, 7, 7, 3, 4, (tl_rope_pairing)r, 10000.0f, NULL, NULL, NULL, NULL};
        check_case(&rng, names[r], c, true, true, true);
    }
    /* A small base turns every pair by a large angle. */
    attn_case small_base = {2, 7, 7, 3, 4, TL_ROPE_HALF, 10.0f, NULL, NULL, NULL, NULL};
    check_case(&rng, "attention rope base 10", small_base, true, true, true);

    /* Selected-token subsets with their original positions. */
    static const int32_t sub_pos[8] = {0, 3, 4, 9, 1, 2, 5, 6};
    for (int r = 1; r < 3; r++) {
        attn_case c = {2, 4, 4, 3, 4, (tl_rope_pairing)r, 10000.0f, sub_pos, sub_pos, NULL, NULL};
        check_case(&rng, r == 1 ? "attention positions interleaved" : "attention positions half",
                   c, true, true, true);
    }
    /* Positions far beyond the token count use a per-token RoPE table. */
    static const int32_t far_pos[4] = {0, 100, 1000, 5000};
    attn_case far = {1, 4, 4, 2, 4, TL_ROPE_INTERLEAVED, 10000.0f, far_pos, far_pos, NULL, NULL};
    check_case(&rng, "attention far positions", far, true, true, true);

    /* Padding on both sides, with different query and key lengths. */
    static const int32_t q_len[2] = {5, 7}, k_len[2] = {7, 3};
    attn_case pad = {2, 7, 7, 3, 4, TL_ROPE_INTERLEAVED, 10000.0f, NULL, NULL, q_len, k_len};
    check_case(&rng, "attention padding", pad, true, true, true);

    /* Queries are a subset, keys are all tokens. */
    static const int32_t q_sub[8] = {1, 3, 4, 6, 0, 2, 5, 6};
    attn_case sub = {2, 4, 7, 3, 4, TL_ROPE_HALF, 10000.0f, q_sub, NULL, NULL, NULL};
    check_case(&rng, "attention Tq 4 Tk 7", sub, true, true, true);

    /* Only some inputs need a gradient. */
    attn_case plain = {2, 5, 5, 2, 4, TL_ROPE_INTERLEAVED, 10000.0f, NULL, NULL, NULL, NULL};
    check_case(&rng, "attention grad v only", plain, false, false, true);
    check_case(&rng, "attention grad q k only", plain, true, true, false);

    attn_case causal = {2, 7, 7, 3, 4, TL_ROPE_INTERLEAVED, 10000.0f, NULL, NULL, NULL, NULL};
    check_causality(&rng, causal, 4);
    check_causality(&rng, causal, 0);
    attn_case causal_sub = {1, 4, 4, 3, 4, TL_ROPE_HALF, 10000.0f, sub_pos, sub_pos, NULL, NULL};
    check_causality(&rng, causal_sub, 2);

    /* Sequences longer than one block of 16 queries, where each block runs
     * over keys up to its own extent: causal, padded on both sides, and with
     * positions out of order. Out of order, the visible keys are no prefix
     * and the blocks' extents do not increase. */
    attn_case blocks = {1, 37, 37, 2, 4, TL_ROPE_NONE, 10000.0f, NULL, NULL, NULL, NULL};
    check_case(&rng, "attention 37 tokens", blocks, true, true, true);
    static const int32_t long_q_len[2] = {35, 20}, long_k_len[2] = {18, 35};
    attn_case long_pad = {2, 35, 35, 2, 4, TL_ROPE_HALF, 10000.0f, NULL, NULL, long_q_len,
                          long_k_len};
    check_case(&rng, "attention 35 tokens padded", long_pad, true, true, true);
    static int32_t shuffled[34];
    for (int i = 0; i < 34; i++)
        shuffled[i] = (int32_t)((i * 13) % 34); /* 13 is coprime with 34: a permutation */
    attn_case scrambled = {1, 34, 34, 2, 4, TL_ROPE_INTERLEAVED, 10000.0f, shuffled, shuffled,
                           NULL, NULL};
    check_case(&rng, "attention 34 tokens out of order", scrambled, true, true, true);
    check_causality(&rng, blocks, 20);

    /* Head sizes of 8 and more, where the keys and values are transposed in
     * blocks of 8 x 8: whole blocks only (D 16, 24 tokens), and blocks with
     * rows and columns left over (D 12, 37 tokens). */
    attn_case wide = {1, 24, 24, 1, 16, TL_ROPE_NONE, 10000.0f, NULL, NULL, NULL, NULL};
    check_case(&rng, "attention head size 16", wide, true, true, true);
    attn_case wide_odd = {1, 37, 37, 2, 12, TL_ROPE_HALF, 10000.0f, NULL, NULL, NULL, NULL};
    check_case(&rng, "attention head size 12, 37 tokens", wide_odd, true, true, true);

    check_padding(&rng);
    check_no_visible_key(&rng);
    check_node_flops_errors();
    check_threads_same_bits(&rng);
    return gc_finish("ops attention");
}
