/* Fused causal multi-head self-attention with rotary position embedding.
 *
 * q (B,Tq,C), k and v (B,Tk,C) with C = H*D; head h occupies columns
 * [h*D, (h+1)*D) of every row. The whole op is one graph node: the (Tq,Tk)
 * scores live in arena scratch and never become tensors. Work is split over
 * (b,h) pairs, and each pair's products run on strided views of its
 * columns (tl_small_gemm). Each pair writes only its own columns of the outputs and
 * gradients, so the parallel loops need no reductions and give the same bits
 * for any thread count. */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "../internal.h"
#include "smallgemm.h"
#include "transpose8.h"
#include "vmath.h"

/* Below this many multiply-adds (B*H*Tq*Tk*D) the op runs on one thread. */
enum { TL_ATTN_PARALLEL_WORK = 1 << 16 };
/* Queries per block of the products. Each block runs over keys up to its own
 * last visible one, so under a causal mask at T = 64 the products compute
 * 2560 of the 4096 scores (2080 visible) instead of all of them. On
 * thinklab-bench-ops (B 6, T 64, C 128, H 4; AVX2, one thread) forward plus
 * backward took 0.75 ms with one block of 64, 0.64 ms with 32, 0.60 ms with
 * 16 and 0.88 ms with 8. */
enum { TL_ATTN_ROW_BLOCK = 16 };

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
    double computed;        /* (b, query, key) scores the products compute (tl_attn_computed) */
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
 * rotation, into dst. */
static void tl_rope_unrotate_add(float *dst, const float *g, const float *cs, const float *sn,
                                 int64_t D, tl_rope_pairing pairing)
{
    int64_t half = D / 2;
    if (pairing == TL_ROPE_INTERLEAVED) {
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
        if (!k_pos) {
            /* Key j sits at position j: the visible keys are a prefix. */
            int64_t e = (int64_t)qp + 1 < k_len ? (int64_t)qp + 1 : k_len;
            if (i >= q_len)
                e = 0;
            memset(m, 1, (size_t)e);
            memset(m + e, 0, (size_t)(Tk - e));
            extent[n] = (int32_t)e;
            row_visible[n] = e;
            continue;
        }
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

/* Largest extent among queries [i0, i1) of one batch row, whose extents are
 * ext[0..Tq): products for those queries run over keys [0, that) only. */
static int64_t tl_attn_max_extent(const int32_t *ext, int64_t i0, int64_t i1)
{
    int64_t e_max = 0;
    for (int64_t i = i0; i < i1; i++)
        e_max = ext[i] > e_max ? ext[i] : e_max;
    return e_max;
}

/* Scores the products compute for one head: each block of TL_ATTN_ROW_BLOCK
 * queries runs over keys up to its largest extent, masked keys below that
 * included. */
static double tl_attn_computed(const int32_t *extent, int64_t B, int64_t Tq)
{
    double n = 0.0;
    for (int64_t b = 0; b < B; b++)
        for (int64_t i0 = 0; i0 < Tq; i0 += TL_ATTN_ROW_BLOCK) {
            int64_t i1 = i0 + TL_ATTN_ROW_BLOCK < Tq ? i0 + TL_ATTN_ROW_BLOCK : Tq;
            n += (double)((i1 - i0) * tl_attn_max_extent(extent + b * Tq, i0, i1));
        }
    return n;
}

/* Copies the (n, D) head block src (leading dimension ld) transposed into dst
 * (D, n), leading dimension n_dst. S = Qr Kr^T and dP = dO V^T then run as
 * plain products with the transposed keys or values, whose rows are the
 * contiguous right operand tl_small_gemm loads. Whole 8 x 8 blocks go through
 * registers. Element by element, with one store per row of dst, the copy took
 * most of the pair functions' own time in the GPT-2 step. */
__attribute__((always_inline)) static inline void tl_attn_transpose(float *restrict dst,
                                                                   int64_t n_dst,
                                                                   const float *restrict src,
                                                                   int64_t ld, int64_t n,
                                                                   int64_t D)
{
    int64_t n8 = n / 8 * 8, D8 = D / 8 * 8;
    for (int64_t j = 0; j < n8; j += 8)
        for (int64_t d = 0; d < D8; d += 8)
            tl_transpose8(dst + d * n_dst + j, n_dst, src + j * ld + d, ld);
    for (int64_t j = 0; j < n; j++) /* the columns past D8, and the rows past n8 */
        for (int64_t d = j < n8 ? D8 : 0; d < D; d++)
            dst[d * n_dst + j] = src[j * ld + d];
}

/* Masks, exponentiates and normalises one row pi of scores in place. e >= 1
 * is 1 + the row's last visible key and e_blk >= e the columns the product wrote.
 * When prefix is true the visible keys are exactly [0, e), and m is not read.
 * The loops run over w columns, e rounded up to whole groups of TL_VLANES
 * but not past e_blk, so that for the usual sizes they have no scalar tail.
 * Columns from e on are set to -inf and come out of exp as 0; columns from w
 * to Tk are zeroed. */
TL_MULTIVERSION
static void tl_attn_softmax_row(float *pi, const uint8_t *m, int64_t e, int64_t e_blk,
                                int64_t Tk, bool prefix)
{
    int64_t w = (e + TL_VLANES - 1) / TL_VLANES * TL_VLANES;
    w = w < e_blk ? w : e_blk;
    int64_t groups = w / TL_VLANES * TL_VLANES;
    float lane[TL_VLANES];
    for (int l = 0; l < TL_VLANES; l++)
        lane[l] = -INFINITY;
    for (int64_t j0 = 0; j0 < groups; j0 += TL_VLANES) {
        float *pj = pi + j0;
        int64_t left = e - j0; /* lanes below this are keys before e */
        if (prefix) {
#pragma omp simd
            for (int64_t l = 0; l < TL_VLANES; l++) {
                float sj = l < left ? pj[l] : -INFINITY;
                pj[l] = sj;
                lane[l] = sj > lane[l] ? sj : lane[l]; /* not fmaxf, a library call on x86-64 */
            }
        } else {
            for (int64_t l = 0; l < TL_VLANES; l++) {
                float sj = l < left && m[j0 + l] ? pj[l] : -INFINITY;
                pj[l] = sj;
                lane[l] = sj > lane[l] ? sj : lane[l];
            }
        }
    }
    for (int64_t j = groups; j < w; j++) {
        float sj = j < e && (prefix || m[j]) ? pi[j] : -INFINITY;
        pi[j] = sj;
        lane[j - groups] = sj > lane[j - groups] ? sj : lane[j - groups];
    }
    /* Key e - 1 is visible, so max is finite and masked keys give
     * exp(-inf) = 0. Every shifted score is <= 0. */
    float max = tl_vlanes_max(lane);
    for (int l = 0; l < TL_VLANES; l++)
        lane[l] = 0.0f;
    for (int64_t j0 = 0; j0 < groups; j0 += TL_VLANES) {
        float *pj = pi + j0;
#pragma omp simd
        for (int64_t l = 0; l < TL_VLANES; l++) {
            float ej = tl_vexpf_nonpos(pj[l] - max);
            pj[l] = ej;
            lane[l] += ej;
        }
    }
    for (int64_t j = groups; j < w; j++) {
        pi[j] = tl_vexpf_nonpos(pi[j] - max);
        lane[j - groups] += pi[j];
    }
    float inv = 1.0f / tl_vlanes_sum(lane); /* the sum is >= 1: the maximum gives exp(0) */
#pragma omp simd
    for (int64_t j = 0; j < w; j++)
        pi[j] *= inv;
    memset(pi + w, 0, (size_t)(Tk - w) * sizeof(float));
}

/* Returns the thread count for a loop over `pairs` (b,h) pairs doing `work`
 * multiply-adds: 1 below TL_ATTN_PARALLEL_WORK or where a new region would be
 * inactive (inside the shards), else the thread setting, at most one per
 * pair. The loops request this many and give each thread one scratch slot. */
static int tl_attn_threads(int64_t pairs, int64_t work)
{
    if (work <= TL_ATTN_PARALLEL_WORK || omp_get_active_level() >= omp_get_max_active_levels())
        return 1;
    int64_t t = omp_get_max_threads();
    return (int)(t < pairs ? t : pairs);
}

/* Computes one (b,h) pair of the forward: rotates its q and k columns, then,
 * for each block of TL_ATTN_ROW_BLOCK queries with largest extent e_blk,
 * S = Qr Kr^T / sqrt(D) and O = softmax(S) V as two products over keys
 * [0, e_blk), with the mask applied between them. Under a causal mask the
 * blocks skip most of the masked half of the scores. The head's rows are
 * strided views of q, k, v and out (leading dimension C), so nothing is
 * copied. p is the pair's (Tq,Tk) block of probabilities: zero where masked
 * or padded and past each query's extent, which backward relies on. */
TL_MULTIVERSION
static void tl_attn_forward_pair(const tl_attn_dims *dm, int64_t b, int64_t h, const float *q,
                                 const float *k, const float *v, float *qr, float *kr,
                                 const tl_rope_table *rope, const uint8_t *mask,
                                 const int32_t *extent, const int64_t *row_visible, float *p,
                                 float *kt, float *out)
{
    int64_t Tq = dm->Tq, Tk = dm->Tk, C = dm->C, D = dm->D, half = D / 2;
    float scale = 1.0f / sqrtf((float)D);
    float *o = out + b * Tq * C + h * D;
    const int32_t *ext = extent + b * Tq;
    int64_t e_max = tl_attn_max_extent(ext, 0, Tq);

    if (e_max == 0) {
        /* No query has a visible key: the outputs are zero. */
        for (int64_t i = 0; i < Tq; i++)
            memset(o + i * C, 0, (size_t)D * sizeof(float));
        memset(p, 0, (size_t)(Tq * Tk) * sizeof(float));
        return;
    }
    if (dm->pairing != TL_ROPE_NONE) {
        for (int64_t i = 0; i < Tq; i++) {
            int64_t r = rope->q_row[b * Tq + i];
            tl_rope_rotate(qr + (b * Tq + i) * C + h * D, q + (b * Tq + i) * C + h * D,
                           rope->cos + r * half, rope->sin + r * half, D, dm->pairing);
        }
        for (int64_t j = 0; j < e_max; j++) {
            int64_t r = rope->k_row[b * Tk + j];
            tl_rope_rotate(kr + (b * Tk + j) * C + h * D, k + (b * Tk + j) * C + h * D,
                           rope->cos + r * half, rope->sin + r * half, D, dm->pairing);
        }
    }
    const float *qb = qr + b * Tq * C + h * D, *kb = kr + b * Tk * C + h * D;
    const float *vb = v + b * Tk * C + h * D;
    tl_attn_transpose(kt, Tk, kb, C, e_max, D); /* kt (D, Tk): columns [0, e_max) */
    for (int64_t i0 = 0; i0 < Tq; i0 += TL_ATTN_ROW_BLOCK) {
        int64_t rows = Tq - i0 < TL_ATTN_ROW_BLOCK ? Tq - i0 : TL_ATTN_ROW_BLOCK;
        int64_t e_blk = tl_attn_max_extent(ext, i0, i0 + rows);
        float *pb = p + i0 * Tk, *ob = o + i0 * C;
        if (e_blk == 0) {
            for (int64_t i = 0; i < rows; i++)
                memset(ob + i * C, 0, (size_t)D * sizeof(float));
            memset(pb, 0, (size_t)(rows * Tk) * sizeof(float));
            continue;
        }
        tl_small_gemm(rows, e_blk, D, scale, qb + i0 * C, C, 1, kt, Tk, false, pb, Tk);
        for (int64_t i = i0; i < i0 + rows; i++) {
            float *pi = p + i * Tk;
            if (ext[i] == 0) /* padded query, or no visible key */
                memset(pi, 0, (size_t)Tk * sizeof(float));
            else
                tl_attn_softmax_row(pi, mask + (b * Tq + i) * Tk, ext[i], e_blk, Tk,
                                    row_visible[b * Tq + i] == ext[i]);
        }
        tl_small_gemm(rows, D, e_blk, 1.0f, pb, Tk, 1, vb, C, false, ob, C);
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

    tl_tensor *out = tl_new_like(ctx, q);
    tl_attn_saved *s = tl_ctx_alloc(ctx, sizeof *s);
    uint8_t *mask = tl_ctx_alloc(ctx, (size_t)(B * Tq * Tk));
    int32_t *extent = tl_ctx_alloc(ctx, (size_t)(B * Tq) * sizeof(int32_t));
    int64_t *row_visible = tl_ctx_alloc(ctx, (size_t)(B * Tq) * sizeof(int64_t));
    /* Probabilities (B,H,Tq,Tk), kept for backward; without a gradient they
     * are scratch all the same, since the products fill a whole pair at once. */
    float *p = tl_ctx_alloc(ctx, (size_t)(B * H * Tq * Tk) * sizeof(float));
    /* Transposed keys, scratch released below: one (D, Tk) slot per thread,
     * reused pair after pair, so that it stays in L1. */
    int threads = tl_attn_threads(B * H, B * H * Tq * Tk * D);
    size_t kt_bytes = (size_t)(threads * D * Tk) * sizeof(float);
    float *kt = tl_ctx_alloc_reuse(ctx, kt_bytes);
    if (!out || !s || !mask || !extent || !row_visible || !p || !kt)
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
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
    for (int64_t bh = 0; bh < B * H; bh++) {
        int64_t b = bh / H, h = bh % H;
        tl_attn_forward_pair(&dm, b, h, qd, kd, vd, qr, kr, &s->rope, mask, extent, row_visible,
                             p + bh * Tq * Tk, kt + omp_get_thread_num() * D * Tk, od);
    }
    tl_ctx_release(ctx, kt, kt_bytes);

    /* The products run over the computed scores (tl_attn_computed), masked
     * ones included: 2D each for the score and for the product with v.
     * Softmax costs 5 per visible score (scale, max, exp, sum, normalise).
     * RoPE costs 6 per rotated pair, 3 per element of q and k. */
    s->computed = tl_attn_computed(extent, B, Tq);
    double flops = (double)H * (s->computed * 4.0 * (double)D + s->visible * 5.0);
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

/* Scratch of the backward: the slot of the thread that runs the pair. */
typedef struct tl_attn_scratch {
    float *ds;  /* (Tq,Tk) dP, then dS */
    float *vt;  /* (D,Tk) the pair's values transposed */
    float *dqr; /* (Tq,D) gradient of the rotated queries; NULL without RoPE */
    float *dkr; /* (Tk,D) gradient of the rotated keys; NULL without RoPE */
} tl_attn_scratch;

/* Computes one (b,h) pair of the backward. With S = Qr Kr^T / sqrt(D), P = softmax(S),
 * O = P V:  dV = P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(P * dP)),
 * dQr = dS Kr / sqrt(D), dKr = dS^T Qr / sqrt(D). The four products run per
 * block of TL_ATTN_ROW_BLOCK queries, over the keys [0, e_blk) the
 * forward used for that block. Masked and padded entries have P = 0, so their
 * dS is 0 and they contribute nothing. Without RoPE dQr and dKr accumulate
 * straight into dq and dk; with it they go through scratch and are rotated
 * back. dq, dk or dv may be NULL when that input needs no gradient. */
TL_MULTIVERSION
static void tl_attn_backward_pair(const tl_attn_dims *dm, int64_t b, int64_t h,
                                  const tl_attn_saved *s, const float *v, const float *dout,
                                  float *dq, float *dk, float *dv, tl_attn_scratch w)
{
    int64_t Tq = dm->Tq, Tk = dm->Tk, C = dm->C, D = dm->D, H = dm->H, half = D / 2;
    float scale = 1.0f / sqrtf((float)D);
    const float *p = s->p + (b * H + h) * Tq * Tk;
    const tl_rope_table *rope = &s->rope;
    const int32_t *ext = s->extent + b * Tq;
    bool rotated = dm->pairing != TL_ROPE_NONE;
    int64_t e_max = tl_attn_max_extent(ext, 0, Tq);
    if (e_max == 0)
        return; /* P is 0 everywhere */
    const float *dob = dout + b * Tq * C + h * D, *vb = v + b * Tk * C + h * D;
    const float *qb = s->qr + b * Tq * C + h * D, *kb = s->kr + b * Tk * C + h * D;
    if (dq || dk)
        tl_attn_transpose(w.vt, Tk, vb, C, e_max, D);
    /* Blocks add their share of dKr: with RoPE into scratch zeroed here. */
    if (rotated && dk)
        memset(w.dkr, 0, (size_t)(e_max * D) * sizeof(float));

    for (int64_t i0 = 0; i0 < Tq; i0 += TL_ATTN_ROW_BLOCK) {
        int64_t rows = Tq - i0 < TL_ATTN_ROW_BLOCK ? Tq - i0 : TL_ATTN_ROW_BLOCK;
        int64_t e_blk = tl_attn_max_extent(ext, i0, i0 + rows);
        if (e_blk == 0) {
            if (rotated && dq) /* these queries' dQr is 0 */
                memset(w.dqr + i0 * D, 0, (size_t)(rows * D) * sizeof(float));
            continue;
        }
        const float *pb = p + i0 * Tk, *dobb = dob + i0 * C;
        if (dv) /* dV (e_blk, D) += P^T dO */
            tl_small_gemm(e_blk, D, rows, 1.0f, pb, 1, Tk, dobb, C, true, dv + b * Tk * C + h * D,
                          C);
        if (!dq && !dk)
            continue;

        float *ds = w.ds + i0 * Tk;
        tl_small_gemm(rows, e_blk, D, 1.0f, dobb, C, 1, w.vt, Tk, false, ds, Tk); /* dP */
        for (int64_t i = 0; i < rows; i++) {
            const float *pi = pb + i * Tk;
            float *dsi = ds + i * Tk;
            float dot = tl_vdot(pi, dsi, e_blk);
#pragma omp simd
            for (int64_t j = 0; j < e_blk; j++)
                dsi[j] = pi[j] * (dsi[j] - dot) * scale;
        }
        if (dq) {
            float *dst = rotated ? w.dqr + i0 * D : dq + (b * Tq + i0) * C + h * D;
            tl_small_gemm(rows, D, e_blk, 1.0f, ds, Tk, 1, kb, C, !rotated, dst, rotated ? D : C);
        }
        if (dk) {
            float *dst = rotated ? w.dkr : dk + b * Tk * C + h * D;
            tl_small_gemm(e_blk, D, rows, 1.0f, ds, 1, Tk, qb + i0 * C, C, true, dst,
                          rotated ? D : C);
        }
    }

    if (rotated && dq) {
        for (int64_t i = 0; i < Tq; i++) {
            int64_t r = rope->q_row[b * Tq + i];
            tl_rope_unrotate_add(dq + (b * Tq + i) * C + h * D, w.dqr + i * D,
                                 rope->cos + r * half, rope->sin + r * half, D, dm->pairing);
        }
    }
    if (rotated && dk) {
        for (int64_t j = 0; j < e_max; j++) {
            int64_t r = rope->k_row[b * Tk + j];
            tl_rope_unrotate_add(dk + (b * Tk + j) * C + h * D, w.dkr + j * D,
                                 rope->cos + r * half, rope->sin + r * half, D, dm->pairing);
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
    bool rotated = dm.pairing != TL_ROPE_NONE;

    float *dq = tl_grad(ctx, q), *dk = tl_grad(ctx, k), *dv = tl_grad(ctx, v);
    /* Scratch, released at the end for the next layer's backward: one slot
     * per thread, reused pair after pair. */
    int threads = tl_attn_threads(B * H, B * H * Tq * Tk * D);
    size_t ds_bytes = (size_t)(threads * Tq * Tk) * sizeof(float);
    size_t q_bytes = (size_t)(threads * Tq * D) * sizeof(float);
    size_t k_bytes = (size_t)(threads * Tk * D) * sizeof(float);
    float *ds = tl_ctx_alloc_reuse(ctx, ds_bytes);
    float *vt = tl_ctx_alloc_reuse(ctx, k_bytes);
    float *dqr = rotated ? tl_ctx_alloc_reuse(ctx, q_bytes) : NULL;
    float *dkr = rotated ? tl_ctx_alloc_reuse(ctx, k_bytes) : NULL;
    if (!ds || !vt || (rotated && (!dqr || !dkr)))
        return; /* tl_backward detects the failed allocation and stops */

    const float *vd = tl_f32(v), *dout = node->out->grad;
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
    for (int64_t bh = 0; bh < B * H; bh++) {
        int64_t t = omp_get_thread_num();
        tl_attn_scratch w = {ds + t * Tq * Tk, vt + t * D * Tk, rotated ? dqr + t * Tq * D : NULL,
                             rotated ? dkr + t * Tk * D : NULL};
        tl_attn_backward_pair(&dm, bh / H, bh % H, s, vd, dout, dq, dk, dv, w);
    }
    tl_ctx_release(ctx, ds, ds_bytes);
    tl_ctx_release(ctx, vt, k_bytes);
    if (rotated) {
        tl_ctx_release(ctx, dqr, q_bytes);
        tl_ctx_release(ctx, dkr, k_bytes);
    }

    /* Per computed score and head: 2D for dP and 2D for each of dq, dk and dv
     * that is needed, 4 for dS. Un-rotating and adding cost 4 per element of
     * dq and dk. */
    double per_score = (dq || dk) ? 2.0 * (double)D + 4.0 : 0.0;
    per_score += 2.0 * (double)D * ((dq != NULL) + (dk != NULL) + (dv != NULL));
    double flops = s->computed * (double)H * per_score;
    if (rotated)
        flops += 4.0 * (double)(B * dm.C) * ((dq ? (double)Tq : 0.0) + (dk ? (double)Tk : 0.0));
    tl_count_flops(ctx, TL_OP_ATTENTION, flops);
}
