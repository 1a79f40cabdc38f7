/* Runs one decoder block for the PyTorch parity test (test_block_parity.py).
 *
 * Usage: block_parity_driver out=DIR [style=llama|gpt2] [C=32] [H=4] [B=2] [T=13]
 *        [Tk=T] [rope=interleaved|half|none] [call=forward|delta|cross]
 *        [positions=0|1] [lengths=0|1] [seed=1]
 *
 * Builds the block with deterministic weights, runs the call on a random input,
 * takes loss = sum(out * R) for a random R, runs backward and writes every
 * tensor involved to DIR as .npy: x (and xkv for call=cross), R, out, dx (and
 * dxkv), w_NAME and g_NAME for each parameter NAME, and q_pos, k_pos, q_len,
 * k_len when they were passed. Exits 0 on success, 2 on a usage error and 1
 * when the library fails. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "thinklab/block.h"
#include "thinklab/thinklab.h"

typedef struct driver_args {
    const char *out;
    tl_block_style style;
    int64_t C, B, T, Tk;
    int H;
    tl_rope_pairing rope;
    const char *call;
    int positions, lengths;
    uint64_t seed;
} driver_args;

static int usage(const char *reason)
{
    fprintf(stderr, "block_parity_driver: %s\n"
                    "usage: block_parity_driver out=DIR [style=llama|gpt2] [C=32] [H=4] "
                    "[B=2] [T=13] [Tk=T] [rope=interleaved|half|none] "
                    "[call=forward|delta|cross] [positions=0|1] [lengths=0|1] [seed=1]\n",
            reason);
    return 2;
}

static int parse_args(int argc, char **argv, driver_args *a)
{
    *a = (driver_args){NULL, TL_BLOCK_LLAMA, 32, 2, 13, 0, 4, TL_ROPE_INTERLEAVED, "forward",
                       0, 0, 1};
    for (int i = 1; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq)
            return usage("every argument must be key=value");
        *eq = '\0';
        const char *key = argv[i], *val = eq + 1;
        if (strcmp(key, "out") == 0)
            a->out = val;
        else if (strcmp(key, "style") == 0 && strcmp(val, "llama") == 0)
            a->style = TL_BLOCK_LLAMA;
        else if (strcmp(key, "style") == 0 && strcmp(val, "gpt2") == 0)
            a->style = TL_BLOCK_GPT2;
        else if (strcmp(key, "C") == 0)
            a->C = atoll(val);
        else if (strcmp(key, "H") == 0)
            a->H = atoi(val);
        else if (strcmp(key, "B") == 0)
            a->B = atoll(val);
        else if (strcmp(key, "T") == 0)
            a->T = atoll(val);
        else if (strcmp(key, "Tk") == 0)
            a->Tk = atoll(val);
        else if (strcmp(key, "rope") == 0 && strcmp(val, "interleaved") == 0)
            a->rope = TL_ROPE_INTERLEAVED;
        else if (strcmp(key, "rope") == 0 && strcmp(val, "half") == 0)
            a->rope = TL_ROPE_HALF;
        else if (strcmp(key, "rope") == 0 && strcmp(val, "none") == 0)
            a->rope = TL_ROPE_NONE;
        else if (strcmp(key, "call") == 0 && (strcmp(val, "forward") == 0 ||
                                              strcmp(val, "delta") == 0 ||
                                              strcmp(val, "cross") == 0))
            a->call = val;
        else if (strcmp(key, "positions") == 0)
            a->positions = atoi(val);
        else if (strcmp(key, "lengths") == 0)
            a->lengths = atoi(val);
        else if (strcmp(key, "seed") == 0)
            a->seed = strtoull(val, NULL, 10);
        else {
            fprintf(stderr, "block_parity_driver: invalid argument %s=%s\n", key, val);
            return usage("unknown key or value");
        }
    }
    if (!a->out)
        return usage("out=DIR is required");
    if (a->Tk == 0)
        a->Tk = a->T;
    if (a->B < 1 || a->T < 5 || a->Tk < a->T)
        return usage("B must be >= 1, T >= 5 and Tk >= T");
    return 0;
}

/* Writes a float32 or int32 array as a version 1.0 .npy file. */
static int write_npy(const char *dir, const char *name, const tl_tensor *t, const void *data)
{
    if (!data) {
        fprintf(stderr, "block_parity_driver: %s has no data (no gradient reached it)\n", name);
        return 1;
    }
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.npy", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "block_parity_driver: could not open %s: %s\n", path, strerror(errno));
        return 1;
    }
    char header[256];
    int n = snprintf(header, sizeof header, "{'descr': '%s', 'fortran_order': False, 'shape': (",
                     t->dtype == TL_F32 ? "<f4" : "<i4");
    for (int i = 0; i < t->ndim; i++)
        n += snprintf(header + n, sizeof header - (size_t)n, "%lld, ", (long long)t->shape[i]);
    n += snprintf(header + n, sizeof header - (size_t)n, "), }");
    /* Magic (6) + version (2) + length (2) + header, padded with spaces to a
     * multiple of 64 and ended by a newline. */
    int total = (10 + n + 1 + 63) / 64 * 64;
    int pad = total - 10 - n - 1;
    uint16_t len = (uint16_t)(n + pad + 1);
    fwrite("\x93NUMPY\x01\x00", 1, 8, f);
    unsigned char le[2] = {(unsigned char)(len & 0xff), (unsigned char)(len >> 8)};
    fwrite(le, 1, 2, f);
    fwrite(header, 1, (size_t)n, f);
    for (int i = 0; i < pad; i++)
        fputc(' ', f);
    fputc('\n', f);
    size_t count = (size_t)tl_numel(t);
    size_t wrote = fwrite(data, 4, count, f);
    if (fclose(f) != 0 || wrote != count) {
        fprintf(stderr, "block_parity_driver: failed to write %s\n", path);
        return 1;
    }
    return 0;
}

static tl_tensor *random_input(tl_ctx *ctx, tl_rng *rng, int64_t B, int64_t T, int64_t C)
{
    tl_tensor *x = tl_new3(ctx, B, T, C);
    for (int64_t i = 0; i < tl_numel(x); i++)
        tl_f32(x)[i] = tl_rng_normal(rng);
    tl_set_requires_grad(x, true);
    return x;
}

/* Sorted distinct positions: count of them drawn from [0, range) per sequence. */
static tl_tensor *random_positions(tl_ctx *ctx, tl_rng *rng, int64_t B, int64_t count,
                                   int64_t range)
{
    tl_tensor *pos = tl_new(ctx, TL_I32, 2, (int64_t[]){B, count});
    for (int64_t b = 0; b < B; b++) {
        /* Selection sampling keeps each position with the probability that
         * leaves exactly count of them, in ascending order. */
        int64_t need = count;
        for (int64_t p = 0, k = 0; p < range && need > 0; p++) {
            if ((int64_t)tl_rng_below(rng, (uint64_t)(range - p)) < need) {
                tl_i32(pos)[b * count + k++] = (int32_t)p;
                need--;
            }
        }
    }
    return pos;
}

static tl_tensor *consecutive_positions(tl_ctx *ctx, int64_t B, int64_t count)
{
    tl_tensor *pos = tl_new(ctx, TL_I32, 2, (int64_t[]){B, count});
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < count; t++)
            tl_i32(pos)[b * count + t] = (int32_t)t;
    return pos;
}

/* Lengths n, n - cut, n, n - cut, ... so that odd sequences carry padding. */
static tl_tensor *lengths_of(tl_ctx *ctx, int64_t B, int64_t n, int64_t cut)
{
    tl_tensor *len = tl_new(ctx, TL_I32, 1, (int64_t[]){B});
    for (int64_t b = 0; b < B; b++)
        tl_i32(len)[b] = (int32_t)(b % 2 ? n - cut : n);
    return len;
}

/* Replaces the block's N(0, 0.02^2) weights by larger ones, so that attention
 * is far from uniform and RoPE or masking errors change the output visibly:
 * matrices N(0, 1/fan_in), norm gains 1 + N(0, 0.1^2). */
static void fill_weights(const tl_params *p, tl_rng *rng)
{
    for (size_t i = 0; i < tl_params_count(p); i++) {
        tl_tensor *w = tl_params_at(p, i);
        int64_t n = tl_numel(w);
        if (w->ndim == 2) {
            float s = 1.0f / sqrtf((float)w->shape[1]);
            for (int64_t j = 0; j < n; j++)
                tl_f32(w)[j] = s * tl_rng_normal(rng);
        } else {
            for (int64_t j = 0; j < n; j++)
                tl_f32(w)[j] = 1.0f + 0.1f * tl_rng_normal(rng);
        }
    }
}

static int fail(const char *call_name)
{
    fprintf(stderr, "block_parity_driver: %s failed: %s\n", call_name, tl_errmsg());
    return 1;
}

int main(int argc, char **argv)
{
    driver_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc)
        return rc;

    tl_block_config cfg = tl_block_config_default(a.C, a.H);
    cfg.style = a.style;
    cfg.rope = a.rope;
    cfg.n_layers = 2;
    tl_params *p = tl_params_new();
    tl_block blk;
    tl_rng rng;
    tl_rng_seed(&rng, a.seed);
    if (tl_block_init(&blk, &cfg, p, "blk") != TL_OK)
        return fail("tl_block_init");
    if (tl_params_alloc(p, &rng) != TL_OK)
        return fail("tl_params_alloc");
    fill_weights(p, &rng);

    tl_ctx *ctx = tl_ctx_new(0);
    bool cross = strcmp(a.call, "cross") == 0;
    tl_tensor *x = random_input(ctx, &rng, a.B, a.T, a.C);
    tl_tensor *xkv = cross ? random_input(ctx, &rng, a.B, a.Tk, a.C) : NULL;

    tl_attention_opts opts = {0};
    if (a.positions) {
        /* Self-attention over a subset: queries and keys at the same sparse
         * positions. Cross: keys at 0..Tk-1, queries at a subset of them. */
        opts.q_pos = random_positions(ctx, &rng, a.B, a.T, cross ? a.Tk : 3 * a.T);
        opts.k_pos = cross ? consecutive_positions(ctx, a.B, a.Tk) : opts.q_pos;
    }
    if (a.lengths) {
        opts.q_len = lengths_of(ctx, a.B, a.T, 3);
        opts.k_len = cross ? lengths_of(ctx, a.B, a.Tk, 2) : opts.q_len;
    }

    tl_tensor *out;
    if (cross)
        out = tl_block_delta_cross(ctx, &blk, x, xkv, &opts);
    else if (strcmp(a.call, "delta") == 0)
        out = tl_block_delta(ctx, &blk, x, &opts);
    else
        out = tl_block_forward(ctx, &blk, x, &opts);
    if (!out)
        return fail(a.call);

    tl_tensor *r = tl_new(ctx, TL_F32, out->ndim, out->shape);
    for (int64_t i = 0; i < tl_numel(r); i++)
        tl_f32(r)[i] = tl_rng_normal(&rng);
    tl_params_zero_grad(p);
    if (tl_backward(ctx, tl_sum(ctx, tl_mul(ctx, out, r))) != TL_OK)
        return fail("tl_backward");

    int bad = 0;
    bad |= write_npy(a.out, "x", x, x->data);
    bad |= write_npy(a.out, "R", r, r->data);
    bad |= write_npy(a.out, "out", out, out->data);
    bad |= write_npy(a.out, "dx", x, tl_grad(ctx, x));
    if (cross) {
        bad |= write_npy(a.out, "xkv", xkv, xkv->data);
        bad |= write_npy(a.out, "dxkv", xkv, tl_grad(ctx, xkv));
    }
    const char *opt_names[4] = {"q_pos", "k_pos", "q_len", "k_len"};
    tl_tensor *opt_tensors[4] = {opts.q_pos, opts.k_pos, opts.q_len, opts.k_len};
    for (int i = 0; i < 4; i++)
        if (opt_tensors[i])
            bad |= write_npy(a.out, opt_names[i], opt_tensors[i], opt_tensors[i]->data);
    for (size_t i = 0; i < tl_params_count(p); i++) {
        tl_tensor *w = tl_params_at(p, i);
        char name[300];
        snprintf(name, sizeof name, "w_%s", w->name);
        bad |= write_npy(a.out, name, w, w->data);
        snprintf(name, sizeof name, "g_%s", w->name);
        bad |= write_npy(a.out, name, w, w->grad);
    }
    tl_ctx_free(ctx);
    tl_params_free(p);
    return bad;
}
