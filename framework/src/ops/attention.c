/* Fused causal multi-head self-attention with rotary position embedding.
 *
 * q (B,Tq,C), k and v (B,Tk,C) with C = H*D; head h occupies columns
 * [h*D, (h+1)*D) of every row. The whole op is one graph node: the (Tq,Tk)
 * scores never become tensors. Work is split over (b,h) pairs, and each pair
 * writes only its own columns of the outputs and gradients, so the parallel
 * loops need no reductions and give the same bits for any thread count. */
#include <math.h>
#include <string.h>

#include "../internal.h"
#include "vmath.h"

/* Below this many multiply-adds (B*H*Tq*Tk*D) the op runs on one thread. */
enum { TL_ATTN_PARALLEL_WORK = 1 << 16 };

/* cos and sin of the RoPE angles. Row r contains the D/2 pair angles of one
 * position: pos * base^(-2i/D) for pair i. */
typedef struct tl_rope_table {
    float *cos, *sin;  /* (rows, D/2) */
    int32_t *q_row;    /* (B*Tq) table row of each query token */
    int32_t *k_row;    /* (B*Tk) table row of each key token */
} tl_rope_table;

/* What backward reads, kept in node->saved[0]. */
typedef struct tl_attn_saved {
    const float *qr, *kr;   /* rotated q (B,Tq,C) and k (B,Tk,C); q and k themselves without RoPE */
    const float *p;         /* softmax probabilities (B,H,Tq,Tk), 0 where masked or padded */
    const int32_t *extent;  /* (B,Tq) 1 + last visible key of each query, 0 when none */
    tl_rope_table rope;
    double visible;         /* visible (b, query, key) triples, for FLOP counts */
} tl_attn_saved;

/* The attention problem after validation. */
typedef struct tl_attn_dims {
    int64_t B, Tq, Tk, H, D, C;
    tl_rope_pairing pairing;
} tl_attn_dims;

static int32_t tl_pos_at(const int32_t *pos, int64_t b, int64_t T, int64_t i)
{
    return pos ? pos[b * T + i] : (int32_t)i;
}

/* ---- RoPE ------------------------------------------------------------------ */

/* Rotates each pair (a, b) of src by its angle into dst: (a cos - b sin, a sin + b cos).
 * dst and src may be the same row. */
static void tl_rope_rotate(float *dst, const float *src, const float *cs, const float *sn,
                           int64_t D, tl_rope_pairing pairing)
{
    int64_t half = D / 2;
    if (pairing == TL_ROPE_INTERLEAVED) {
        for (int64_t i = 0; i < half; i++) {
            float a = src[2 * i], b = src[2 * i + 1];
            dst[2 * i] = a * cs[i] - b * sn[i];
            dst[2 * i + 1] = a * sn[i] + b * cs[i];
        }
    } else {
        for (int64_t i = 0; i < half; i++) {
            float a = src[i], b = src[i + half];
            dst[i] = a * cs[i] - b * sn[i];
            dst[i + half] = a * sn[i] + b * cs[i];
        }
    }
}

/* Adds the gradient g of a rotated row, rotated back by the transposed
 * rotation, into dst. Without RoPE it adds g unchanged. */
static void tl_rope_unrotate_add(float *dst, const float *g, const float *cs, const float *sn,
                                 int64_t D, tl_rope_pairing pairing)
{
    int64_t half = D / 2;
    if (pairing == TL_ROPE_NONE) {
#pragma omp simd
        for (int64_t d = 0; d < D; d++)
            dst[d] += g[d];
    } else if (pairing == TL_ROPE_INTERLEAVED) {
        for (int64_t i = 0; i < half; i++) {
            float ga = g[2 * i], gb = g[2 * i + 1];
            dst[2 * i] += ga * cs[i] + gb * sn[i];
            dst[2 * i + 1] += gb * cs[i] - ga * sn[i];
        }
    } else {
        for (int64_t i = 0; i < half; i++) {
            float ga = g[i], gb = g[i + half];
            dst[i] += ga * cs[i] + gb * sn[i];
            dst[i + half] += gb * cs[i] - ga * sn[i];
        }
    }
}

/* Builds the cos/sin table. When every position is below the token count, the
 * table has one row per position 0..max, shared by all tokens at that
 * position. Otherwise (sparse, large positions) it has one row per token, so
 * its size never exceeds the token count. Angles are computed in double and
 * rounded once. */
static bool tl_rope_table_build(tl_ctx *ctx, tl_rope_table *t, const tl_attn_dims *dm,
                                const int32_t *q_pos, const int32_t *k_pos, double base)
{
    int64_t B = dm->B, Tq = dm->Tq, Tk = dm->Tk, half = dm->D / 2;
    int64_t tokens = B * (Tq + Tk);
    int64_t max_pos = 0;
    for (int64_t b = 0; b < B; b++) {
        for (int64_t i = 0; i < Tq; i++)
            if (tl_pos_at(q_pos, b, Tq, i) > max_pos)
                max_pos = tl_pos_at(q_pos, b, Tq, i);
        for (int64_t j = 0; j < Tk; j++)
            if (tl_pos_at(k_pos, b, Tk, j) > max_pos)
                max_pos = tl_pos_at(k_pos, b, Tk, j);
    }
    bool by_position = max_pos + 1 <= tokens;
    int64_t rows = by_position ? max_pos + 1 : tokens;

    t->q_row = tl_ctx_alloc(ctx, (size_t)(B * Tq) * sizeof(int32_t));
    t->k_row = tl_ctx_alloc(ctx, (size_t)(B * Tk) * sizeof(int32_t));
    int32_t *row_pos = tl_ctx_alloc(ctx, (size_t)rows * sizeof(int32_t));
    double *inv_freq = tl_ctx_alloc(ctx, (size_t)(half ? half : 1) * sizeof(double));
    t->cos = tl_ctx_alloc(ctx, (size_t)(rows * half) * sizeof(float));
    t->sin = tl_ctx_alloc(ctx, (size_t)(rows * half) * sizeof(float));
    if (!t->q_row || !t->k_row || !row_pos || !inv_freq || !t->cos || !t->sin)
        return false;

    for (int64_t b = 0; b < B; b++) {
        for (int64_t i = 0; i < Tq; i++) {
            int32_t p = tl_pos_at(q_pos, b, Tq, i);
            int64_t r = by_position ? p : b * Tq + i;
            t->q_row[b * Tq + i] = (int32_t)r;
            row_pos[r] = p;
        }
        for (int64_t j = 0; j < Tk; j++) {
            int32_t p = tl_pos_at(k_pos, b, Tk, j);
            int64_t r = by_position ? p : B * Tq + b * Tk + j;
            t->k_row[b * Tk + j] = (int32_t)r;
            row_pos[r] = p;
        }
    }
    if (by_position)
        for (int64_t r = 0; r < rows; r++)
            row_pos[r] = (int32_t)r; /* also fills positions no token uses */
    for (int64_t i = 0; i < half; i++)
        inv_freq[i] = pow(base, -2.0 * (double)i / (double)dm->D);
#pragma omp parallel for if (rows * half > 4096) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t i = 0; i < half; i++) {
            double angle = (double)row_pos[r] * inv_freq[i];
            t->cos[r * half + i] = (float)cos(angle);
            t->sin[r * half + i] = (float)sin(angle);
        }
    }
    return true;
}

/* ---- validation ------------------------------------------------------------- */

static bool tl_attn_check_index(const char *arg, const tl_tensor *t, int64_t B, int64_t T,
                                bool is_len)
{
    if (!tl_check_i32("attention", arg, t))
        return false;
    char buf[96];
    if (is_len && !(t->ndim == 1 && t->shape[0] == B)) {
        tl_seterr(TL_ESHAPE, "attention: %s is %s, expected (%lld) int32", arg,
                  tl_shape_str(t, buf, sizeof buf), (long long)B);
        return false;
    }
    if (!is_len && !(t->ndim == 2 && t->shape[0] == B && t->shape[1] == T)) {
        tl_seterr(TL_ESHAPE, "attention: %s is %s, expected (%lld, %lld) int32", arg,
                  tl_shape_str(t, buf, sizeof buf), (long long)B, (long long)T);
        return false;
    }
    const int32_t *x = tl_i32(t);
    for (int64_t n = 0; n < tl_numel(t); n++) {
        if (is_len && (x[n] < 0 || x[n] > T)) {
            tl_seterr(TL_EINVAL, "attention: %s[%lld] = %d is outside [0, %lld]; a length must not "
                                 "exceed the sequence dimension", arg, (long long)n, x[n],
                      (long long)T);
            return false;
        }
        if (!is_len && x[n] < 0) {
            tl_seterr(TL_EINVAL, "attention: %s[%lld][%lld] = %d is negative; positions are token "
                                 "indices from 0", arg, (long long)(n / T), (long long)(n % T), x[n]);
            return false;
        }
    }
    return true;
}

static bool tl_attn_check(const tl_tensor *q, const tl_tensor *k, const tl_tensor *v,
                          const tl_attention_opts *o, tl_attn_dims *dm)
{
    char sq[96], sk[96], sv[96];
    if (!o) {
        tl_seterr(TL_EINVAL, "attention: opts is NULL; pass a tl_attention_opts with n_head set");
        return false;
    }
    if (!tl_check_f32("attention", "q", q) || !tl_check_f32("attention", "k", k) ||
        !tl_check_f32("attention", "v", v))
        return false;
    if (q->ndim != 3 || k->ndim != 3 || !tl_same_shape(k, v) || q->shape[0] != k->shape[0] ||
        q->shape[2] != k->shape[2]) {
        tl_seterr(TL_ESHAPE, "attention: q %s, k %s, v %s do not fit; expected q (B, Tq, C) and "
                             "k, v (B, Tk, C)", tl_shape_str(q, sq, sizeof sq),
                  tl_shape_str(k, sk, sizeof sk), tl_shape_str(v, sv, sizeof sv));
        return false;
    }
    dm->B = q->shape[0];
    dm->Tq = q->shape[1];
    dm->Tk = k->shape[1];
    dm->C = q->shape[2];
    if (o->n_head <= 0 || dm->C == 0 || dm->C % o->n_head != 0) {
        tl_seterr(TL_EINVAL, "attention: n_head = %d does not divide C = %lld; set n_head to a "
                             "positive divisor of the model width", o->n_head, (long long)dm->C);
        return false;
    }
    dm->H = o->n_head;
    dm->D = dm->C / dm->H;
    dm->pairing = o->rope;
    if (o->rope != TL_ROPE_NONE && o->rope != TL_ROPE_INTERLEAVED && o->rope != TL_ROPE_HALF) {
        tl_seterr(TL_EINVAL, "attention: rope = %d is not a tl_rope_pairing", (int)o->rope);
        return false;
    }
    if (o->rope != TL_ROPE_NONE && (dm->D % 2 != 0 || !(o->rope_base > 0.0f))) {
        tl_seterr(TL_EINVAL, "attention: RoPE needs an even head size and a positive base, got "
                             "D = %lld and rope_base = %g", (long long)dm->D, (double)o->rope_base);
        return false;
    }
    if ((o->q_pos && !tl_attn_check_index("q_pos", o->q_pos, dm->B, dm->Tq, false)) ||
        (o->k_pos && !tl_attn_check_index("k_pos", o->k_pos, dm->B, dm->Tk, false)) ||
        (o->q_len && !tl_attn_check_index("q_len", o->q_len, dm->B, dm->Tq, true)) ||
        (o->k_len && !tl_attn_check_index("k_len", o->k_len, dm->B, dm->Tk, true)))
        return false;
    return true;
}

/* ---- forward ---------------------------------------------------------------- */

/* Fills mask (B,Tq,Tk) with 1 where query i sees key j (k_pos[j] <= q_pos[i],
 * j < k_len, i < q_len) and extent (B,Tq) with 1 + the last visible key.
 * Returns the number of visible triples. */
static double tl_attn_mask(const tl_attn_dims *dm, const tl_attention_opts *o, uint8_t *mask,
                           int32_t *extent, int64_t *row_visible)
{
    int64_t B = dm->B, Tq = dm->Tq, Tk = dm->Tk;
    const int32_t *q_pos = o->q_pos ? tl_i32(o->q_pos) : NULL;
    const int32_t *k_pos = o->k_pos ? tl_i32(o->k_pos) : NULL;
#pragma omp parallel for if (B * Tq * Tk > TL_ATTN_PARALLEL_WORK) schedule(static)
    for (int64_t n = 0; n < B * Tq; n++) {
        int64_t b = n / Tq, i = n % Tq;
        int64_t q_len = o->q_len ? tl_i32(o->q_len)[b] : Tq;
        int64_t k_len = o->k_len ? tl_i32(o->k_len)[b] : Tk;
        int32_t qp = tl_pos_at(q_pos, b, Tq, i);
        uint8_t *m = mask + n * Tk;
        int32_t last = 0;
        int64_t count = 0;
        for (int64_t j = 0; j < Tk; j++) {
            bool sees = i < q_len && j < k_len && tl_pos_at(k_pos, b, Tk, j) <= qp;
            m[j] = sees;
            if (sees) {
                last = (int32_t)(j + 1);
                count++;
            }
        }
        extent[n] = last;
        row_visible[n] = count;
    }
    double visible = 0.0;
    for (int64_t n = 0; n < B * Tq; n++)
        visible += (double)row_visible[n];
    return visible;
}

/* Computes one (b,h) pair of the forward: rotates its q and k columns, then
 * for every query row computes masked softmax(q k^T / sqrt(D)) and its product
 * with v. kt is this pair's (D,Tk) scratch for the transposed keys. p is its
 * (Tq,Tk) slice of the saved probabilities, or a (Tk) scratch row reused by
 * every query when nothing is saved (p_stride 0). */
static void tl_attn_forward_pair(const tl_attn_dims *dm, int64_t b, int64_t h, const float *q,
                                 const float *k, const float *v, float *qr, float *kr,
                                 const tl_rope_table *rope, const uint8_t *mask,
                                 const int32_t *extent, float *kt, float *p, int64_t p_stride,
                                 float *out)
{
    int64_t Tq = dm->Tq, Tk = dm->Tk, C = dm->C, D = dm->D, half = D / 2;
    float scale = 1.0f / sqrtf((float)D);

    if (dm->pairing != TL_ROPE_NONE) {
        for (int64_t i = 0; i < Tq; i++) {
            int64_t r = rope->q_row[b * Tq + i];
            tl_rope_rotate(qr + (b * Tq + i) * C + h * D, q + (b * Tq + i) * C + h * D,
                           rope->cos + r * half, rope->sin + r * half, D, dm->pairing);
        }
        for (int64_t j = 0; j < Tk; j++) {
            int64_t r = rope->k_row[b * Tk + j];
            tl_rope_rotate(kr + (b * Tk + j) * C + h * D, k + (b * Tk + j) * C + h * D,
                           rope->cos + r * half, rope->sin + r * half, D, dm->pairing);
        }
    }
    for (int64_t j = 0; j < Tk; j++) {
        const float *kj = kr + (b * Tk + j) * C + h * D;
        for (int64_t d = 0; d < D; d++)
            kt[d * Tk + j] = kj[d];
    }

    for (int64_t i = 0; i < Tq; i++) {
        float *o = out + (b * Tq + i) * C + h * D;
        float *pi = p + i * p_stride;
        int64_t e = extent[b * Tq + i];
        memset(o, 0, (size_t)D * sizeof(float));
        if (p_stride)
            memset(pi + e, 0, (size_t)(Tk - e) * sizeof(float));
        if (e == 0)
            continue; /* padded query, or no visible key: the output stays zero */

        /* Scores accumulate over d, four terms at a time (one load and
         * store of pi[j] per four products), vectorised over keys. */
        const float *qi = qr + (b * Tq + i) * C + h * D;
        for (int64_t j = 0; j < e; j++)
            pi[j] = 0.0f;
        int64_t d = 0;
        for (; d + 4 <= D; d += 4) {
            float q0 = qi[d], q1 = qi[d + 1], q2 = qi[d + 2], q3 = qi[d + 3];
            const float *k0 = kt + d * Tk, *k1 = k0 + Tk, *k2 = k1 + Tk, *k3 = k2 + Tk;
#pragma omp simd
            for (int64_t j = 0; j < e; j++)
                pi[j] += q0 * k0[j] + q1 * k1[j] + q2 * k2[j] + q3 * k3[j];
        }
        for (; d < D; d++) {
            float qd = qi[d];
            const float *ktd = kt + d * Tk;
#pragma omp simd
            for (int64_t j = 0; j < e; j++)
                pi[j] += qd * ktd[j];
        }
        const uint8_t *m = mask + (b * Tq + i) * Tk;
        float max = -INFINITY;
#pragma omp simd reduction(max : max)
        for (int64_t j = 0; j < e; j++) {
            float sj = m[j] ? pi[j] * scale : -INFINITY;
            pi[j] = sj;
            max = sj > max ? sj : max; /* not fmaxf, a library call on x86-64 */
        }
        /* Key e - 1 is visible, so max is finite and masked keys give
         * exp(-inf) = 0. */
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < e; j++) {
            float ej = tl_vexpf(pi[j] - max);
            pi[j] = ej;
            sum += ej;
        }
        float inv = 1.0f / sum; /* sum >= 1: the maximum contributes exp(0) */
#pragma omp simd
        for (int64_t j = 0; j < e; j++)
            pi[j] *= inv;
        /* o = sum_j p_j v_j, four keys per pass over o. */
        int64_t j = 0;
        for (; j + 4 <= e; j += 4) {
            float p0 = pi[j], p1 = pi[j + 1], p2 = pi[j + 2], p3 = pi[j + 3];
            const float *v0 = v + (b * Tk + j) * C + h * D, *v1 = v0 + C, *v2 = v1 + C,
                        *v3 = v2 + C;
#pragma omp simd
            for (int64_t dd = 0; dd < D; dd++)
                o[dd] += p0 * v0[dd] + p1 * v1[dd] + p2 * v2[dd] + p3 * v3[dd];
        }
        for (; j < e; j++) {
            float pij = pi[j];
            const float *vj = v + (b * Tk + j) * C + h * D;
#pragma omp simd
            for (int64_t dd = 0; dd < D; dd++)
                o[dd] += pij * vj[dd];
        }
    }
}

tl_tensor *tl_attention(tl_ctx *ctx, tl_tensor *q, tl_tensor *k, tl_tensor *v,
                        const tl_attention_opts *opts)
{
    if (TL_ANY_NULL3(q, k, v))
        return NULL;
    tl_attn_dims dm;
    if (!tl_attn_check(q, k, v, opts, &dm))
        return NULL;
    int64_t B = dm.B, Tq = dm.Tq, Tk = dm.Tk, H = dm.H, D = dm.D, C = dm.C;
    bool keep = tl_ctx_grad_enabled(ctx) &&
                (tl_requires_grad(q) || tl_requires_grad(k) || tl_requires_grad(v));

    tl_tensor *out = tl_new_like(ctx, q);
    tl_attn_saved *s = tl_ctx_alloc(ctx, sizeof *s);
    uint8_t *mask = tl_ctx_alloc(ctx, (size_t)(B * Tq * Tk));
    int32_t *extent = tl_ctx_alloc(ctx, (size_t)(B * Tq) * sizeof(int32_t));
    int64_t *row_visible = tl_ctx_alloc(ctx, (size_t)(B * Tq) * sizeof(int64_t));
    float *kt = tl_ctx_alloc(ctx, (size_t)(B * H * D * Tk) * sizeof(float));
    int64_t p_stride = keep ? Tk : 0;
    float *p = tl_ctx_alloc(ctx, (size_t)(keep ? B * H * Tq * Tk : B * H * Tk) * sizeof(float));
    if (!out || !s || !mask || !extent || !row_visible || !kt || !p)
        return NULL;
    memset(s, 0, sizeof *s);

    float *qr = tl_f32(q), *kr = tl_f32(k);
    if (dm.pairing != TL_ROPE_NONE) {
        qr = tl_ctx_alloc(ctx, (size_t)tl_numel(q) * sizeof(float));
        kr = tl_ctx_alloc(ctx, (size_t)tl_numel(k) * sizeof(float));
        if (!qr || !kr ||
            !tl_rope_table_build(ctx, &s->rope, &dm, opts->q_pos ? tl_i32(opts->q_pos) : NULL,
                                 opts->k_pos ? tl_i32(opts->k_pos) : NULL, opts->rope_base))
            return NULL;
    }
    s->visible = tl_attn_mask(&dm, opts, mask, extent, row_visible);

    const float *qd = tl_f32(q), *kd = tl_f32(k), *vd = tl_f32(v);
    float *od = tl_f32(out);
#pragma omp parallel for if (B * H * Tq * Tk * D > TL_ATTN_PARALLEL_WORK) schedule(static)
    for (int64_t bh = 0; bh < B * H; bh++) {
        int64_t b = bh / H, h = bh % H;
        float *p_pair = p + bh * (keep ? Tq * Tk : Tk);
        tl_attn_forward_pair(&dm, b, h, qd, kd, vd, qr, kr, &s->rope, mask, extent,
                             kt + bh * D * Tk, p_pair, p_stride, od);
    }

    /* Per visible (query, key) pair and head: 2D for the score, 2D for the
     * product with v, and 5 for scaling, max, exp, sum and normalising. RoPE
     * costs 6 per rotated pair, 3 per element of q and k. */
    double flops = s->visible * (double)H * (4.0 * (double)D + 5.0);
    if (dm.pairing != TL_ROPE_NONE)
        flops += 3.0 * (double)(B * (Tq + Tk) * C);
    tl_count_flops(ctx, TL_OP_ATTENTION, flops);

    tl_node *node = tl_record(ctx, TL_OP_ATTENTION, out, 3, (tl_tensor *[]){q, k, v});
    if (node) {
        s->qr = qr;
        s->kr = kr;
        s->p = p;
        s->extent = extent;
        node->saved[0] = s;
        node->ints[0] = H;
        node->ints[1] = dm.pairing;
    }
    return out;
}

/* ---- backward --------------------------------------------------------------- */

/* Queries per block of the backward: dv and dk rows are updated once per
 * block with four products each, instead of once per query. */
enum { TL_ATTN_QBLOCK = 4 };

/* Per-pair scratch of the backward, each an arena slice owned by one (b,h). */
typedef struct tl_attn_scratch {
    float *vt;   /* (D,Tk) transposed v */
    float *ds;   /* (TL_ATTN_QBLOCK,Tk) dP, then dS scaled by 1/sqrt(D), of one block */
    float *dqr;  /* (D) gradient of one rotated query row */
    float *dkr;  /* (Tk,D) gradient of the rotated keys */
    float *zero; /* (max(Tk,D)) zeros, standing in for the rows past Tq in the last block */
} tl_attn_scratch;

/* Computes one (b,h) pair of the backward. With S = Qr Kr^T / sqrt(D), P = softmax(S),
 * O = P V:  dV = P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(P * dP)),
 * dQr = dS Kr / sqrt(D), dKr = dS^T Qr / sqrt(D); dQr and dKr are then
 * rotated back into dq and dk. Masked and padded entries have P = 0 (the
 * forward saves zeros past each query's extent), so they contribute nothing
 * and a block of queries can run to its largest extent. dq, dk or dv may be
 * NULL when that input needs no gradient. */
static void tl_attn_backward_pair(const tl_attn_dims *dm, int64_t b, int64_t h,
                                  const tl_attn_saved *s, const float *v, const float *dout,
                                  float *dq, float *dk, float *dv, tl_attn_scratch w)
{
    int64_t Tq = dm->Tq, Tk = dm->Tk, C = dm->C, D = dm->D, H = dm->H, half = D / 2;
    float scale = 1.0f / sqrtf((float)D);
    const float *p = s->p + (b * H + h) * Tq * Tk;
    const tl_rope_table *rope = &s->rope;
    bool need_ds = dq || dk;
    int64_t e_max = 0;
    for (int64_t i = 0; i < Tq; i++)
        e_max = s->extent[b * Tq + i] > e_max ? s->extent[b * Tq + i] : e_max;

    if (need_ds)
        for (int64_t j = 0; j < e_max; j++)
            for (int64_t d = 0; d < D; d++)
                w.vt[d * Tk + j] = v[(b * Tk + j) * C + h * D + d];
    if (dk)
        memset(w.dkr, 0, (size_t)(Tk * D) * sizeof(float));

    enum { QB = TL_ATTN_QBLOCK };
    for (int64_t i0 = 0; i0 < Tq; i0 += QB) {
        /* Rows past Tq read zeros: their P, dO, dS and q are all 0. */
        const float *pr[QB], *dor[QB], *qr[QB];
        float *dsr[QB];
        int64_t er[QB], eb = 0;
        for (int64_t r = 0; r < QB; r++) {
            int64_t i = i0 + r;
            bool in = i < Tq;
            er[r] = in ? s->extent[b * Tq + i] : 0;
            eb = er[r] > eb ? er[r] : eb;
            pr[r] = in ? p + i * Tk : w.zero;
            dor[r] = in ? dout + (b * Tq + i) * C + h * D : w.zero;
            qr[r] = in ? s->qr + (b * Tq + i) * C + h * D : w.zero;
            dsr[r] = w.ds + r * Tk;
        }
        if (eb == 0)
            continue;

        if (dv) {
            for (int64_t j = 0; j < eb; j++) {
                float p0 = pr[0][j], p1 = pr[1][j], p2 = pr[2][j], p3 = pr[3][j];
                const float *g0 = dor[0], *g1 = dor[1], *g2 = dor[2], *g3 = dor[3];
                float *dvj = dv + (b * Tk + j) * C + h * D;
#pragma omp simd
                for (int64_t d = 0; d < D; d++)
                    dvj[d] += p0 * g0[d] + p1 * g1[d] + p2 * g2[d] + p3 * g3[d];
            }
        }
        if (!need_ds)
            continue;

        for (int64_t r = 0; r < QB; r++) {
            float *ds = dsr[r];
            const float *pi = pr[r], *doi = dor[r];
            for (int64_t j = 0; j < eb; j++)
                ds[j] = 0.0f;
            if (er[r] == 0)
                continue; /* P is 0, so dS is 0 */
            int64_t d = 0;
            for (; d + 4 <= D; d += 4) {
                float g0 = doi[d], g1 = doi[d + 1], g2 = doi[d + 2], g3 = doi[d + 3];
                const float *v0 = w.vt + d * Tk, *v1 = v0 + Tk, *v2 = v1 + Tk, *v3 = v2 + Tk;
#pragma omp simd
                for (int64_t j = 0; j < eb; j++)
                    ds[j] += g0 * v0[j] + g1 * v1[j] + g2 * v2[j] + g3 * v3[j];
            }
            for (; d < D; d++) {
                float g = doi[d];
                const float *vtd = w.vt + d * Tk;
#pragma omp simd
                for (int64_t j = 0; j < eb; j++)
                    ds[j] += g * vtd[j];
            }
            float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (int64_t j = 0; j < eb; j++)
                dot += pi[j] * ds[j];
#pragma omp simd
            for (int64_t j = 0; j < eb; j++)
                ds[j] = pi[j] * (ds[j] - dot) * scale;
        }

        if (dq) {
            for (int64_t r = 0; r < QB && i0 + r < Tq; r++) {
                int64_t i = i0 + r, e = er[r];
                if (e == 0)
                    continue;
                const float *ds = dsr[r];
                memset(w.dqr, 0, (size_t)D * sizeof(float));
                int64_t j = 0;
                for (; j + 4 <= e; j += 4) {
                    float g0 = ds[j], g1 = ds[j + 1], g2 = ds[j + 2], g3 = ds[j + 3];
                    const float *k0 = s->kr + (b * Tk + j) * C + h * D, *k1 = k0 + C,
                                *k2 = k1 + C, *k3 = k2 + C;
#pragma omp simd
                    for (int64_t d = 0; d < D; d++)
                        w.dqr[d] += g0 * k0[d] + g1 * k1[d] + g2 * k2[d] + g3 * k3[d];
                }
                for (; j < e; j++) {
                    float g = ds[j];
                    const float *kj = s->kr + (b * Tk + j) * C + h * D;
#pragma omp simd
                    for (int64_t d = 0; d < D; d++)
                        w.dqr[d] += g * kj[d];
                }
                int64_t rr = dm->pairing != TL_ROPE_NONE ? rope->q_row[b * Tq + i] : 0;
                tl_rope_unrotate_add(dq + (b * Tq + i) * C + h * D, w.dqr,
                                     rope->cos ? rope->cos + rr * half : NULL,
                                     rope->sin ? rope->sin + rr * half : NULL, D, dm->pairing);
            }
        }
        if (dk) {
            const float *q0 = qr[0], *q1 = qr[1], *q2 = qr[2], *q3 = qr[3];
            for (int64_t j = 0; j < eb; j++) {
                float g0 = dsr[0][j], g1 = dsr[1][j], g2 = dsr[2][j], g3 = dsr[3][j];
                float *dkj = w.dkr + j * D;
#pragma omp simd
                for (int64_t d = 0; d < D; d++)
                    dkj[d] += g0 * q0[d] + g1 * q1[d] + g2 * q2[d] + g3 * q3[d];
            }
        }
    }

    if (dk) {
        for (int64_t j = 0; j < e_max; j++) {
            int64_t r = dm->pairing != TL_ROPE_NONE ? rope->k_row[b * Tk + j] : 0;
            tl_rope_unrotate_add(dk + (b * Tk + j) * C + h * D, w.dkr + j * D,
                                 rope->cos ? rope->cos + r * half : NULL,
                                 rope->sin ? rope->sin + r * half : NULL, D, dm->pairing);
        }
    }
}

void tl_attention_backward(tl_ctx *ctx, tl_node *node)
{
    tl_tensor *q = node->in[0], *k = node->in[1], *v = node->in[2];
    const tl_attn_saved *s = node->saved[0];
    tl_attn_dims dm = {.B = q->shape[0], .Tq = q->shape[1], .Tk = k->shape[1], .C = q->shape[2],
                       .H = node->ints[0], .pairing = (tl_rope_pairing)node->ints[1]};
    dm.D = dm.C / dm.H;
    int64_t B = dm.B, Tq = dm.Tq, Tk = dm.Tk, H = dm.H, D = dm.D;

    float *dq = tl_grad(ctx, q), *dk = tl_grad(ctx, k), *dv = tl_grad(ctx, v);
    float *vt = tl_ctx_alloc(ctx, (size_t)(B * H * D * Tk) * sizeof(float));
    float *ds = tl_ctx_alloc(ctx, (size_t)(B * H * TL_ATTN_QBLOCK * Tk) * sizeof(float));
    float *dqr = tl_ctx_alloc(ctx, (size_t)(B * H * D) * sizeof(float));
    float *dkr = tl_ctx_alloc(ctx, (size_t)(B * H * Tk * D) * sizeof(float));
    int64_t n_zero = Tk > D ? Tk : D;
    float *zero = tl_ctx_alloc(ctx, (size_t)n_zero * sizeof(float));
    if (!vt || !ds || !dqr || !dkr || !zero)
        return; /* tl_backward detects the failed allocation and stops */
    memset(zero, 0, (size_t)n_zero * sizeof(float));

    const float *vd = tl_f32(v), *dout = node->out->grad;
#pragma omp parallel for if (B * H * Tq * Tk * D > TL_ATTN_PARALLEL_WORK) schedule(static)
    for (int64_t bh = 0; bh < B * H; bh++) {
        tl_attn_scratch w = {vt + bh * D * Tk, ds + bh * TL_ATTN_QBLOCK * Tk, dqr + bh * D,
                             dkr + bh * Tk * D, zero};
        tl_attn_backward_pair(&dm, bh / H, bh % H, s, vd, dout, dq, dk, dv, w);
    }

    /* Per visible pair and head: 2D for dP, 4 for dS, and 2D for each of dq,
     * dk and dv that is needed. Un-rotating and adding cost 4 per element of
     * dq and dk. */
    double per_pair = (dq || dk) ? 2.0 * (double)D + 4.0 : 0.0;
    per_pair += 2.0 * (double)D * ((dq != NULL) + (dk != NULL) + (dv != NULL));
    double flops = s->visible * (double)H * per_pair;
    if (dm.pairing != TL_ROPE_NONE)
        flops += 4.0 * (double)(B * dm.C) * ((dq ? (double)Tq : 0.0) + (dk ? (double)Tk : 0.0));
    tl_count_flops(ctx, TL_OP_ATTENTION, flops);
}
