/* Trainer: determinism, evaluation arithmetic, the arena's steady state, the
 * callback and configuration errors. */
#define _GNU_SOURCE /* dladdr(), dup() */
#include <dlfcn.h>
#include <unistd.h>
#include <math.h>
#include <string.h>

#include "train_util.h"

static tu_data D;

/* Counts heap allocations of the whole process, the framework's included,
 * while `counting` is set, by interposing glibc's allocator. OpenBLAS 0.3.21
 * allocates inside sgemm (7 times per step here), which thinklab cannot
 * avoid, so calls from libopenblas are not counted. Sanitizer builds
 * replace the allocator themselves, so the count is skipped there. */
#if defined(__SANITIZE_ADDRESS__)
#define COUNT_MALLOC 0
#else
#define COUNT_MALLOC 1
extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t size);
static long n_allocs;
static bool counting;

static void count_caller(void *caller)
{
    Dl_info info;
    if (!counting)
        return;
    bool openblas = dladdr(caller, &info) && info.dli_fname && strstr(info.dli_fname, "openblas");
    if (!openblas)
        n_allocs++;
}

void *malloc(size_t size)
{
    count_caller(__builtin_return_address(0));
    return __libc_malloc(size);
}

void *calloc(size_t n, size_t size)
{
    count_caller(__builtin_return_address(0));
    return __libc_calloc(n, size);
}

void *realloc(void *p, size_t size)
{
    count_caller(__builtin_return_address(0));
    return __libc_realloc(p, size);
}
#endif

/* Trains steps steps from model seed 3 with batch seed seed and returns a
 * heap copy of the parameter block [data | m | v]. */
static float *train_copy_shards(int64_t steps, uint64_t seed, bool shards, int64_t *n_out)
{
    tl_model *m = tu_model(tl_tokenizer_vocab_size(D.tok), 2, true, "causal", 3);
    tl_train_config c = tu_config(steps);
    c.seed = seed;
    c.shards = shards;
    tl_trainer *tr = tl_trainer_new(m, &D.data, &c);
    float *copy = NULL;
    if (tr && tl_trainer_run(tr) == TL_OK) {
        tl_params *p = tl_model_params(m);
        int64_t n = tl_params_numel(p);
        copy = malloc(3 * (size_t)n * sizeof *copy);
        memcpy(copy, tl_params_data(p), (size_t)n * sizeof *copy);
        memcpy(copy + n, tl_params_m(p), (size_t)n * sizeof *copy);
        memcpy(copy + 2 * n, tl_params_v(p), (size_t)n * sizeof *copy);
        *n_out = n;
    } else {
        fprintf(stderr, "training failed: %s\n", tl_errmsg());
    }
    tl_trainer_free(tr);
    tl_model_free(m);
    return copy;
}

static float *train_copy(int64_t steps, uint64_t seed, int64_t *n_out)
{
    return train_copy_shards(steps, seed, true, n_out);
}

/* The same training on 2 data-parallel shards and on one context: other
 * bits, since the gradients add up in another order (which shows the shards
 * ran), but the same parameters and moments to float rounding. Measured
 * 8e-6 relative to the largest entry after 6 steps; tolerance 1e-4. */
static void test_shards_match_one_context(void)
{
    int64_t n1 = 0, n2 = 0;
    float *a = train_copy_shards(6, 5, true, &n1), *b = train_copy_shards(6, 5, false, &n2);
    CHECK(a != NULL);
    CHECK(b != NULL);
    CHECK(n1 == n2);
    if (a && b && n1 == n2) {
        CHECK_MSG(memcmp(a, b, 3 * (size_t)n1 * sizeof *a) != 0,
                  "shards on and off gave the same bits: did the shards run?");
        for (int part = 0; part < 3; part++) {
            double worst = 0.0, scale = 0.0;
            for (int64_t j = part * n1; j < (part + 1) * n1; j++) {
                worst = fmax(worst, fabs((double)a[j] - b[j]));
                scale = fmax(scale, fabs((double)b[j]));
            }
            fprintf(stderr, "shards against one context, part %d: %.3g of %.3g\n", part, worst,
                    scale);
            CHECK_MSG(worst <= 1e-4 * scale, "part %d (data, m, v) differs by %.3g of %.3g", part,
                      worst, scale);
        }
    }
    free(a);
    free(b);
}

/* Same seeds and thread count give the same bits; another batch seed must
 * not, or the first comparison would prove nothing. */
static void test_determinism(void)
{
    int64_t n1 = 0, n2 = 0, n3 = 0;
    float *a = train_copy(8, 5, &n1), *b = train_copy(8, 5, &n2), *c = train_copy(8, 6, &n3);
    CHECK(a && b && c);
    CHECK(n1 == n2);
    CHECK(n1 == n3);
    if (a && b && c) {
        CHECK_MSG(memcmp(a, b, 3 * (size_t)n1 * sizeof *a) == 0, "same seed, different bits");
        CHECK_MSG(memcmp(a, c, 3 * (size_t)n1 * sizeof *a) != 0, "other seed, same bits");
    }
    free(a);
    free(b);
    free(c);
}

/* The evaluation loss equals the token-weighted mean of the model's own
 * cross-entropy over the same windows, and the derived numbers follow from
 * it exactly. */
static void test_eval_consistency(void)
{
    tl_model *m = tu_model(tl_tokenizer_vocab_size(D.tok), 2, true, "topk", 11);
    tl_ctx *ctx = tl_ctx_new(0);
    tl_eval_result r;
    CHECK_MSG(tl_evaluate(ctx, m, &D.data, 4, 32, 5, TL_EVAL_TOPK, &r) == TL_OK, "%s",
              tl_errmsg());

    /* Reference: windows k*T .. k*T+T of the validation tokens, 20 of them. */
    double total = 0.0;
    tl_ctx_set_grad_enabled(ctx, false);
    for (int64_t k = 0; k < 20; k++) {
        tl_ctx_reset(ctx);
        int64_t shape[2] = {1, 32};
        tl_tensor *ids = tl_wrap(ctx, TL_I32, D.val.ids + k * 32, 2, shape);
        tl_tensor *tgt = tl_wrap(ctx, TL_I32, D.val.ids + k * 32 + 1, 2, shape);
        tl_model_output mo;
        tl_layer_args args = {.routing = TL_ROUTING_TOPK};
        CHECK(tl_model_forward(m, ctx, ids, tgt, &args, &mo) == TL_OK);
        total += 32.0 * tl_f32(mo.ce)[0];
    }
    double ref = total / 640.0;
    CHECK(r.tokens == 640);
    /* Char tokens are one byte each. */
    CHECK(r.bytes == r.tokens);
    /* float32 means of 32 tokens against double sums: 1e-6 relative. */
    CHECK_MSG(fabs(r.loss - ref) <= 1e-6 * ref, "eval %.9f vs reference %.9f", r.loss, ref);
    /* Derived values are computed in double from the same total: 1e-12. */
    CHECK(fabs(r.perplexity - exp(r.loss)) <= 1e-12 * r.perplexity);
    CHECK(fabs(r.bits_per_token - r.loss / log(2.0)) <= 1e-12 * r.bits_per_token);
    CHECK(fabs(r.bits_per_byte - r.loss / log(2.0) * (double)r.tokens / (double)r.bytes) <=
          1e-12 * r.bits_per_byte);
    /* ITT x2 at ratio 0.5 under top-k selects exactly half of each sequence. */
    CHECK_MSG(fabs(r.selected_fraction - 0.5) < 1e-12, "fraction %g", r.selected_fraction);

    tl_eval_result causal;
    CHECK(tl_evaluate(ctx, m, &D.data, 4, 32, 5, TL_EVAL_CAUSAL, &causal) == TL_OK);
    fprintf(stderr, "untrained ITT: topk %.4f, causal %.4f at fraction %.3f\n", r.loss,
            causal.loss, causal.selected_fraction);
    CHECK(causal.selected_fraction >= 0.0);
    CHECK(causal.selected_fraction <= 1.0);
    CHECK(causal.routing == TL_EVAL_CAUSAL);

    /* Calibrated routing needs thresholds first; after calibrating on 4
     * training batches it selects near the trained ratio on validation text. */
    tl_eval_result cal;
    CHECK(tl_evaluate(ctx, m, &D.data, 4, 32, 5, TL_EVAL_CALIBRATED, &cal) != TL_OK);
    tl_rng rng;
    tl_rng_seed(&rng, 3);
    CHECK_MSG(tl_calibrate_thresholds(ctx, m, &D.data, 8, 32, 4, &rng) == TL_OK, "%s",
              tl_errmsg());
    double theta[4];
    int n_theta = 0;
    CHECK(tl_model_thresholds(m, 1, theta, 4, &n_theta) == TL_OK);
    CHECK(n_theta == 1);
    CHECK(isfinite(theta[0]));
    CHECK_MSG(tl_evaluate(ctx, m, &D.data, 4, 32, 5, TL_EVAL_CALIBRATED, &cal) == TL_OK, "%s",
              tl_errmsg());
    fprintf(stderr, "calibrated: loss %.4f at fraction %.3f (threshold %.5f)\n", cal.loss,
            cal.selected_fraction, theta[0]);
    /* Other text than the calibration batches: 0.15 around the ratio. */
    CHECK_MSG(fabs(cal.selected_fraction - 0.5) < 0.15, "fraction %g", cal.selected_fraction);
    CHECK(cal.routing == TL_EVAL_CALIBRATED);

    /* A dense model reports no routing fraction. */
    tl_model *dense = tu_model(tl_tokenizer_vocab_size(D.tok), 2, false, NULL, 11);
    CHECK(tl_evaluate(ctx, dense, &D.data, 4, 32, 2, TL_EVAL_TOPK, &r) == TL_OK);
    CHECK(isnan(r.selected_fraction));
    tl_model_free(dense);
    tl_ctx_free(ctx);
    tl_model_free(m);
}

/* After two warm-up steps a training step allocates nothing on the heap and
 * the arena grows by no block, evaluation included. */
static void test_arena_steady(void)
{
    tl_model *m = tu_model(tl_tokenizer_vocab_size(D.tok), 2, true, "causal", 13);
    tl_train_config c = tu_config(12);
    tl_trainer *tr = tl_trainer_new(m, &D.data, &c);
    CHECK(tr != NULL);
    if (!tr) {
        tl_model_free(m);
        return;
    }
    tl_ctx *ctx = tl_trainer_ctx(tr);
    CHECK(tl_trainer_step(tr) == TL_OK);
    CHECK(tl_trainer_step(tr) == TL_OK);
    size_t blocks = tl_ctx_arena_blocks(ctx), reserved = tl_ctx_arena_reserved(ctx);
    for (int s = 2; s < 12; s++) {
#if COUNT_MALLOC
        n_allocs = 0;
        counting = true;
#endif
        CHECK(tl_trainer_step(tr) == TL_OK);
#if COUNT_MALLOC
        counting = false;
        CHECK_MSG(n_allocs == 0, "step %d made %ld heap allocations", s, n_allocs);
#endif
        if (s == 6)
            CHECK(tl_trainer_evaluate(tr, TL_EVAL_TOPK, NULL) == TL_OK);
        CHECK_MSG(tl_ctx_arena_blocks(ctx) == blocks, "step %d: %zu blocks, first step %zu", s,
                  tl_ctx_arena_blocks(ctx), blocks);
        CHECK(tl_ctx_arena_reserved(ctx) == reserved);
    }
    tl_ctx_reset(ctx);
    CHECK(tl_ctx_arena_used(ctx) == 0);
    CHECK(tl_trainer_step(tr) == TL_ESTATE); /* all 12 steps done */
    tl_trainer_free(tr);
    tl_model_free(m);
}

typedef struct cb_state {
    int calls;
    int64_t last_step;
    int stop_at;
    bool fail;
    bool stats_ok;
} cb_state;

static int callback(const tl_train_stats *s, void *user)
{
    cb_state *st = user;
    st->calls++;
    st->last_step = s->step;
    st->stats_ok = st->stats_ok && s->total == 50 && isfinite(s->loss) && s->lr > 0 &&
                   s->grad_norm > 0 && s->tokens == s->step * 256 && s->elapsed_s >= 0;
    if (st->fail && s->step == 10) {
        tl_seterr(TL_EINVAL, "callback error at step 10");
        return -1;
    }
    return s->step == st->stop_at ? TL_TRAIN_STOP : TL_TRAIN_CONTINUE;
}

static void test_callback(void)
{
    tl_model *m = tu_model(tl_tokenizer_vocab_size(D.tok), 1, false, NULL, 17);
    tl_train_config c = tu_config(50);
    cb_state st = {.stop_at = 15, .stats_ok = true};
    c.callback = callback;
    c.callback_user = &st;
    c.callback_every = 5;
    tl_trainer *tr = tl_trainer_new(m, &D.data, &c);
    CHECK(tr != NULL);
    CHECK(tr && tl_trainer_run(tr) == TL_OK);
    CHECK_MSG(st.calls == 3 && st.last_step == 15, "%d calls, last step %lld", st.calls,
              (long long)st.last_step);
    CHECK(st.stats_ok);
    CHECK(tr && tl_trainer_step_index(tr) == 15);
    tl_trainer_free(tr);

    st = (cb_state){.stop_at = -1, .fail = true, .stats_ok = true};
    tr = tl_trainer_new(m, &D.data, &c);
    CHECK(tr && tl_trainer_run(tr) == TL_EINVAL);
    CHECK(strcmp(tl_errmsg(), "callback error at step 10") == 0);
    tl_trainer_free(tr);
    tl_model_free(m);
}

/* What the throughput test's callback collects over the run. */
typedef struct throughput_state {
    int64_t previous_step;  /* step of the previous callback */
    double step_s;          /* step time implied by tokens_per_s, summed over the windows */
    double elapsed_s;       /* elapsed_s of the latest callback */
    double max_eta_error;   /* largest |eta_s - elapsed_s per step * steps left|, relative */
    int windows;
    int bad_rates;          /* windows whose tokens_per_s is not finite and positive */
} throughput_state;

static int throughput_callback(const tl_train_stats *s, void *user)
{
    throughput_state *st = user;
    int64_t tokens = (s->step - st->previous_step) * 256; /* B 8 x T 32 per step */
    st->previous_step = s->step;
    st->elapsed_s = s->elapsed_s;
    st->windows++;
    if (!isfinite(s->tokens_per_s) || s->tokens_per_s <= 0) {
        st->bad_rates++;
        return TL_TRAIN_CONTINUE;
    }
    st->step_s += (double)tokens / s->tokens_per_s;
    double expected = s->elapsed_s / (double)s->step * (double)(s->total - s->step);
    double error = fabs(s->eta_s - expected) / fmax(expected, 1e-9);
    st->max_eta_error = fmax(st->max_eta_error, error);
    return TL_TRAIN_CONTINUE;
}

/* tokens_per_s counts step time only, and eta_s is wall time per step so far
 * times the steps left. An evaluation after every
 * second step runs 128 forward batches against the two steps' forward and
 * backward passes. On one thread of a 2-core AMD EPYC host under a load
 * average of 4, the evaluations took 22 to 37 times the step time, and a
 * window that timed them implied as much step time as elapsed time. The
 * check allows a factor of 4, so that load, which slows steps and
 * evaluations alike, does not fail it. */
static void test_throughput_excludes_eval(void)
{
    tl_model *m = tu_model(tl_tokenizer_vocab_size(D.tok), 1, false, NULL, 23);
    tl_train_config c = tu_config(6);
    c.eval_every = 2;
    c.eval_batches = 128;
    c.callback_every = 2;
    /* On 2 threads the steps would run as data-parallel shards and the
     * evaluations would not. On one thread both run their ops alike, so
     * machine load slows them alike. */
    c.threads = 1;
    throughput_state st = {0};
    c.callback = throughput_callback;
    c.callback_user = &st;
    /* Validation on the 64 kB training slice: the 8 kB validation slice
     * holds only 32 batches. */
    tl_train_data data = D.data;
    data.val = &D.train;

    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    tl_trainer *tr = tl_trainer_new(m, &data, &c);
    CHECK_MSG(tr != NULL, "%s", tl_errmsg());
    if (!tr) {
        tl_model_free(m);
        return;
    }
    CHECK_MSG(tl_trainer_run(tr) == TL_OK, "%s", tl_errmsg());
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double wall = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    fprintf(stderr, "throughput: step time %.4f s from tokens_per_s, elapsed %.4f s\n",
            st.step_s, st.elapsed_s);

    CHECK_MSG(st.windows == 3, "%d callbacks", st.windows);
    CHECK_MSG(st.bad_rates == 0, "%d windows without a positive rate", st.bad_rates);
    CHECK_MSG(st.step_s * 4.0 <= st.elapsed_s,
              "tokens_per_s implies %.4f s of step time in %.4f s elapsed, more than a quarter "
              "although the evaluations take most of the run, so the window counted them",
              st.step_s, st.elapsed_s);
    CHECK_MSG(st.max_eta_error < 1e-9, "eta_s differs from elapsed time per step times the "
              "steps left by %g", st.max_eta_error);
    CHECK_MSG(st.elapsed_s <= wall, "elapsed_s %.4f s exceeds the run's wall time %.4f s",
              st.elapsed_s, wall);
    tl_trainer_free(tr);
    tl_model_free(m);
}

/* Without a terminal, progress goes to stderr as one line per interval and
 * a final line with the elapsed time. */
static void test_progress_lines(void)
{
    char path[512];
    tu_path(path, sizeof path, "train_progress.txt");
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    FILE *capture = fopen(path, "w");
    CHECK(saved >= 0);
    CHECK(capture != NULL);
    if (saved < 0 || !capture)
        return;
    dup2(fileno(capture), STDERR_FILENO);

    tl_model *m = tu_model(tl_tokenizer_vocab_size(D.tok), 1, false, NULL, 19);
    tl_train_config c = tu_config(10);
    c.progress_every = 4;
    tl_trainer *tr = tl_trainer_new(m, &D.data, &c);
    tl_status st = tr ? tl_trainer_run(tr) : TL_EINVAL;
    tl_trainer_free(tr);
    tl_model_free(m);
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    fclose(capture);
    CHECK(st == TL_OK);

    FILE *in = fopen(path, "r");
    char line[512];
    int n_lines = 0;
    bool saw4 = false, saw8 = false, saw_final = false, saw_threads = false;
    while (in && fgets(line, sizeof line, in)) {
        n_lines++;
        saw_threads |= strncmp(line, "thinklab: threads 2", 19) == 0;
        saw4 |= strncmp(line, "step 4/10 | loss ", 17) == 0 && strstr(line, "ETA") != NULL;
        saw8 |= strncmp(line, "step 8/10 | loss ", 17) == 0;
        saw_final |= strncmp(line, "step 10/10 | loss ", 18) == 0 && strstr(line, "elapsed");
        CHECK_MSG(strchr(line, '\r') == NULL, "carriage return without a terminal: %s", line);
    }
    if (in)
        fclose(in);
    CHECK(saw_threads);
    CHECK(saw4);
    CHECK(saw8);
    CHECK(saw_final);
    CHECK_MSG(n_lines == 4, "%d lines", n_lines);
    remove(path);
}

static void test_config_errors(void)
{
    tl_train_config c = tu_config(10);
    c.batch_size = 0;
    CHECK(tl_train_config_resolve(&c) == TL_EINVAL);
    CHECK(strstr(tl_errmsg(), "batch_size") != NULL);
    c = tu_config(0);
    c.token_budget = 1000;
    CHECK(tl_train_config_resolve(&c) == TL_OK);
    CHECK(c.steps == 4); /* ceil(1000 / (8 * 32)) */
    CHECK(c.schedule.total == 4);

    char json[4096];
    c = tu_config(10);
    size_t need = tl_train_config_json(&c, json, sizeof json);
    CHECK(need < sizeof json);
    CHECK(strlen(json) == need);
    CHECK(strstr(json, "\"batch_size\": 8") != NULL);
    CHECK(strstr(json, "\"schedule\": {\"kind\": \"warmup_cosine\"") != NULL);
    char small[16];
    CHECK(tl_train_config_json(&c, small, sizeof small) == need);
    CHECK(strlen(small) == 15);
    c.experiment_json = "[1]";
    CHECK(tl_train_config_resolve(&c) == TL_EINVAL);
    CHECK(strstr(tl_errmsg(), "experiment_json") != NULL);
    c.experiment_json = "  ";
    CHECK(tl_train_config_resolve(&c) == TL_EINVAL);
    c.experiment_json = NULL;

    tl_model *m = tu_model(tl_tokenizer_vocab_size(D.tok), 1, false, NULL, 1);
    c.context = 64; /* the model's context is 32 */
    CHECK(tl_trainer_new(m, &D.data, &c) == NULL);
    CHECK(strstr(tl_errmsg(), "context 64") != NULL);
    tl_model_free(m);
    m = tu_model(20, 1, false, NULL, 1);
    c.context = 32;
    CHECK(tl_trainer_new(m, &D.data, &c) == NULL);
    CHECK(strstr(tl_errmsg(), "vocabulary") != NULL);
    tl_model_free(m);
}

int main(void)
{
    tu_data_load(&D);
    tu_run("test_config_errors", test_config_errors);
    tu_run("test_progress_lines", test_progress_lines);
    tu_run("test_eval_consistency", test_eval_consistency);
    tu_run("test_arena_steady", test_arena_steady);
    tu_run("test_callback", test_callback);
    tu_run("test_throughput_excludes_eval", test_throughput_excludes_eval);
    tu_run("test_determinism", test_determinism);
    tu_run("test_shards_match_one_context", test_shards_match_one_context);
    tu_data_free(&D);
    return gc_finish("train");
}
