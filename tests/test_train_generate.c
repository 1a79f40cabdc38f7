/* Generation (determinism, greedy and top-k, causal routing, long prompts)
 * and the gradient-spike analysis. */
#include <math.h>
#include <string.h>

#include "thinklab/linalg.h"
#include "train_util.h"

static tu_data D;

/* Logits (T, V) of the model on ids[0..T) under routing, copied to out. */
static void forward_logits(tl_ctx *ctx, tl_model *m, const int32_t *ids, int64_t T,
                           tl_routing routing, float *out)
{
    tl_ctx_reset(ctx);
    tl_ctx_set_grad_enabled(ctx, false);
    int64_t shape[2] = {1, T};
    tl_tensor *x = tl_wrap(ctx, TL_I32, (void *)ids, 2, shape);
    tl_layer_args args = {.routing = routing};
    tl_model_output mo;
    CHECK(tl_model_forward(m, ctx, x, NULL, &args, &mo) == TL_OK);
    memcpy(out, tl_f32(mo.logits), (size_t)(T * tl_model_config_of(m)->vocab) * sizeof *out);
}

static int32_t argmax(const float *row, int64_t V)
{
    int32_t best = 0;
    for (int64_t v = 1; v < V; v++)
        if (row[v] > row[best])
            best = (int32_t)v;
    return best;
}

static void test_generate_deterministic(void)
{
    tl_model *m = tu_model(tl_tokenizer_vocab_size(D.tok), 2, true, "causal", 21);
    tl_ctx *ctx = tl_ctx_new(0);
    const int32_t *prompt = D.val.ids;
    tl_generate_config g = {.max_new_tokens = 24, .temperature = 1.0f, .top_k = 0};
    int32_t a[24], b[24], c[24];
    tl_rng r1, r2, r3;
    tl_rng_seed(&r1, 1);
    tl_rng_seed(&r2, 1);
    tl_rng_seed(&r3, 2);
    CHECK_MSG(tl_generate(ctx, m, prompt, 8, &g, 0, &r1, a) == TL_OK, "%s", tl_errmsg());
    CHECK(tl_generate(ctx, m, prompt, 8, &g, 0, &r2, b) == TL_OK);
    CHECK(tl_generate(ctx, m, prompt, 8, &g, 0, &r3, c) == TL_OK);
    CHECK(memcmp(a, b, sizeof a) == 0);
    /* An untrained model samples nearly uniformly over 60 ids: two seeds
     * agreeing on 24 draws would have probability about 60^-24. */
    CHECK(memcmp(a, c, sizeof a) != 0);
    int V = tl_tokenizer_vocab_size(D.tok);
    for (int i = 0; i < 24; i++)
        CHECK(a[i] >= 0 && a[i] < V);

    /* Greedy, and top-1 at any temperature, pick the argmax of the causal
     * forward over prompt + generated ids. */
    tl_generate_config greedy = {.max_new_tokens = 6, .temperature = 0.0f};
    tl_generate_config top1 = {.max_new_tokens = 6, .temperature = 2.0f, .top_k = 1};
    int32_t gr[6], t1[6];
    CHECK(tl_generate(ctx, m, prompt, 8, &greedy, 0, &r1, gr) == TL_OK);
    CHECK(tl_generate(ctx, m, prompt, 8, &top1, 0, &r1, t1) == TL_OK);
    CHECK(memcmp(gr, t1, sizeof gr) == 0);
    int32_t seq[14];
    memcpy(seq, prompt, 8 * sizeof *seq);
    memcpy(seq + 8, gr, 6 * sizeof *seq);
    float *logits = malloc((size_t)(14 * V) * sizeof *logits);
    forward_logits(ctx, m, seq, 14, TL_ROUTING_CAUSAL, logits);
    for (int i = 0; i < 6; i++)
        CHECK_MSG(gr[i] == argmax(logits + (7 + i) * V, V), "greedy token %d", i);

    /* A prompt longer than the context (32) keeps its last 32 ids. */
    int32_t long_out[3], short_out[3];
    tl_generate_config g3 = greedy;
    g3.max_new_tokens = 3;
    CHECK(tl_generate(ctx, m, D.val.ids, 40, &g3, 0, &r1, long_out) == TL_OK);
    CHECK(tl_generate(ctx, m, D.val.ids + 8, 32, &g3, 0, &r1, short_out) == TL_OK);
    CHECK(memcmp(long_out, short_out, sizeof long_out) == 0);

    CHECK(tl_generate(ctx, m, prompt, 0, &g, 0, &r1, a) == TL_EINVAL);
    free(logits);
    tl_ctx_free(ctx);
    tl_model_free(m);
}

/* Under causal routing, the logits at position i do not depend on later
 * tokens: a forward over the prefix x[0..i] gives the same last row as the
 * full sequence's row i. Per-sequence top-k fails this for some prefix,
 * which shows the check can fail. */
static void test_causal_routing(void)
{
    tl_model *m = tu_model(tl_tokenizer_vocab_size(D.tok), 2, true, "causal", 23);
    /* Router vectors of N(0, 0.02) give gates near 0.5; larger ones make the
     * top-k choice of a prefix differ from the full sequence's clearly. */
    tl_params *p = tl_model_params(m);
    tl_rng rng;
    tl_rng_seed(&rng, 4);
    for (size_t i = 0; i < tl_params_count(p); i++)
        if (strstr(tl_params_at(p, i)->name, "router"))
            for (int64_t k = 0; k < tl_numel(tl_params_at(p, i)); k++)
                tl_f32(tl_params_at(p, i))[k] = tl_rng_normal(&rng);

    tl_ctx *ctx = tl_ctx_new(0);
    int64_t V = tl_tokenizer_vocab_size(D.tok), T = 32;
    float *full = malloc((size_t)(T * V) * sizeof *full);
    float *part = malloc((size_t)(T * V) * sizeof *part);
    double worst_causal = 0.0, worst_topk = 0.0;
    for (int r = 0; r < 2; r++) {
        tl_routing routing = r == 0 ? TL_ROUTING_CAUSAL : TL_ROUTING_TOPK;
        double *worst = r == 0 ? &worst_causal : &worst_topk;
        forward_logits(ctx, m, D.val.ids, T, routing, full);
        for (int64_t n = 1; n <= T; n++) {
            forward_logits(ctx, m, D.val.ids, n, routing, part);
            for (int64_t v = 0; v < V; v++) {
                double d = fabs((double)part[(n - 1) * V + v] - (double)full[(n - 1) * V + v]);
                if (d > *worst)
                    *worst = d;
            }
        }
    }
    fprintf(stderr, "prefix vs full logits: causal max diff %.3g, top-k %.3g\n", worst_causal,
            worst_topk);
    /* sgemm over fewer rows may round differently: 1e-4 absolute on logits
     * of order 1. A leak changes a whole block's output instead. */
    CHECK_MSG(worst_causal <= 1e-4, "causal routing leaks: %g", worst_causal);
    CHECK_MSG(worst_topk > 1e-2, "top-k routing showed no dependence on later tokens: %g",
              worst_topk);
    free(full);
    free(part);
    tl_ctx_free(ctx);
    tl_model_free(m);
}

/* Norms of the gradient of layer l's wq after one sequence, computed by hand. */
static void manual_norms(tl_model *m, const int32_t *window, int64_t T, int64_t answer, int l,
                         double *nuc, double *fro, double *msv)
{
    tl_ctx *ctx = tl_ctx_new(0);
    tl_params_zero_grad(tl_model_params(m));
    int64_t shape[2] = {1, T}, V = tl_model_config_of(m)->vocab, flat[2] = {T, V};
    tl_tensor *x = tl_wrap(ctx, TL_I32, (void *)window, 2, shape);
    tl_tensor *y = tl_wrap(ctx, TL_I32, (void *)(window + 1), 1, &T);
    tl_tensor *mask = tl_zeros(ctx, TL_F32, 1, &T);
    for (int64_t i = T - answer; i < T; i++)
        tl_f32(mask)[i] = 1.0f;
    tl_layer_args args = {.routing = TL_ROUTING_TOPK};
    tl_model_output mo;
    CHECK(tl_model_forward(m, ctx, x, NULL, &args, &mo) == TL_OK);
    tl_tensor *loss = tl_cross_entropy(ctx, tl_reshape(ctx, mo.logits, 2, flat), y, mask, NULL);
    CHECK(loss && tl_backward(ctx, loss) == TL_OK);
    char name[64];
    snprintf(name, sizeof name, "layers.%d.attn.wq", l);
    tl_tensor *w = tl_params_find(tl_model_params(m), name);
    CHECK(w && tl_matrix_norms(w->grad, w->shape[0], w->shape[1], nuc, fro, msv) == TL_OK);
    tl_params_zero_grad(tl_model_params(m));
    tl_ctx_free(ctx);
}

static void test_spike_analysis(void)
{
    enum { M = 10, L = 2, T = 32, K = 4 };
    tl_model *m = tu_model(tl_tokenizer_vocab_size(D.tok), L, false, NULL, 25);
    tl_train_config c = tu_config(40);
    tl_trainer *tr = tl_trainer_new(m, &D.data, &c);
    CHECK(tr && tl_trainer_run(tr) == TL_OK);
    tl_trainer_free(tr);

    char path[512];
    tu_path(path, sizeof path, "train_spikes_log.h5");
    tl_log_meta meta = {.config_json = "{}", .overwrite = true};
    tl_log *log = tl_log_create(path, &meta);
    CHECK_MSG(log != NULL, "%s", tl_errmsg());

    tl_ctx *ctx = tl_ctx_new(0);
    tl_spike_config sc = {.n_sequences = M, .seq_len = T, .answer_tokens = K,
                          .hard_quantile = 0.8, .routing = TL_EVAL_TOPK, .step = 40};
    double nuc[M * L * 4], fro[M * L * 4], msv[M * L * 4];
    tl_spike_sequence seqs[M];
    CHECK_MSG(tl_spike_analysis(ctx, m, &D.data, &sc, log, nuc, fro, msv, seqs) == TL_OK, "%s",
              tl_errmsg());

    int hard = 0, easy = 0, correct_known = 0;
    for (int s = 0; s < M; s++) {
        hard += seqs[s].hard;
        easy += seqs[s].easy;
        CHECK(!(seqs[s].hard && seqs[s].easy));
        correct_known += seqs[s].correct == 0 || seqs[s].correct == 1;
        CHECK(isfinite(seqs[s].loss) && seqs[s].loss > 0);
        for (int k = 0; k < L * 4; k++) {
            int at = s * L * 4 + k;
            /* ||A||_* >= ||A||_F >= ||A||_2 > 0; float32 singular values
             * against a double Frobenius sum: 1e-5 relative slack. */
            CHECK(msv[at] > 0);
            CHECK_MSG(fro[at] >= msv[at] * (1 - 1e-5) && nuc[at] >= fro[at] * (1 - 1e-5),
                      "sequence %d matrix %d: %g %g %g", s, k, nuc[at], fro[at], msv[at]);
        }
    }
    /* Quantile 0.8 of 10 losses lies between the 8th and 9th: 2 are above. */
    CHECK_MSG(hard == 2, "%d hard sequences", hard);
    /* easy_quantile 0 takes hard_quantile: every sequence that is not hard is easy. */
    CHECK_MSG(easy == M - 2, "%d easy sequences", easy);
    CHECK(correct_known == M);
    fprintf(stderr, "spikes: seq 0 loss %.3f, wq nuclear %.4g (layer 0) %.4g (layer 1)\n",
            seqs[0].loss, nuc[0], nuc[4]);

    /* Sequence 3 alone gives the same wq norms as inside the analysis, so
     * the gradients were zeroed between sequences. */
    double n3, f3, m3;
    manual_norms(m, D.val.ids + 3 * T, T, K, 1, &n3, &f3, &m3);
    int at = 3 * L * 4 + 1 * 4 + 0;
    CHECK_MSG(n3 == nuc[at] && f3 == fro[at] && m3 == msv[at], "sequence 3: %g vs %g", n3,
              nuc[at]);
    /* And the analysis leaves every gradient at zero. */
    const float *g = tl_params_grads(tl_model_params(m));
    bool zero = true;
    for (int64_t i = 0; i < tl_params_numel(tl_model_params(m)); i++)
        zero = zero && g[i] == 0.0f;
    CHECK(zero);

    CHECK(tl_log_close(log) == TL_OK);
    tl_ctx_free(ctx);
    tl_model_free(m);
    remove(path);
}

int main(void)
{
    tu_data_load(&D);
    tu_run("test_generate_deterministic", test_generate_deterministic);
    tu_run("test_causal_routing", test_causal_routing);
    tu_run("test_spike_analysis", test_spike_analysis);
    tu_data_free(&D);
    return gc_finish("train_generate");
}
