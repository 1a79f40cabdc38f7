/* Shared set-up for the trainer tests: a character-level slice of Tiny
 * Shakespeare and small models built from the layer plugins. */
#ifndef THINKLAB_TEST_TRAIN_UTIL_H
#define THINKLAB_TEST_TRAIN_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gradcheck.h"
#include "thinklab/data.h"
#include "thinklab/model.h"
#include "thinklab/train.h"

#ifndef TL_SOURCE_DIR
#error "TL_SOURCE_DIR must name the source tree (set in tests/train.cmake)"
#endif
#ifndef TL_BINARY_DIR
#error "TL_BINARY_DIR must name the build tree (set in tests/train.cmake)"
#endif

/* Bytes of Tiny Shakespeare used for training and for validation. */
enum { TU_TRAIN_BYTES = 64 * 1024, TU_VAL_BYTES = 8 * 1024 };

typedef struct tu_data {
    char *text;
    tl_tokenizer *tok;
    tl_tokens train, val;
    tl_train_data data;
} tu_data;

/* Loads the first TU_TRAIN_BYTES + TU_VAL_BYTES bytes of the corpus with a
 * char tokenizer over both. Exits the test on failure. */
static inline void tu_data_load(tu_data *d)
{
    size_t len = 0;
    memset(d, 0, sizeof *d);
    d->text = tl_text_read(TL_SOURCE_DIR "/experiments/data/tinyshakespeare.txt", &len);
    if (!d->text || len < TU_TRAIN_BYTES + TU_VAL_BYTES) {
        fprintf(stderr, "cannot read Tiny Shakespeare: %s\n", tl_errmsg());
        exit(1);
    }
    d->tok = tl_tokenizer_char_new(d->text, TU_TRAIN_BYTES + TU_VAL_BYTES);
    if (!d->tok ||
        tl_tokenizer_encode(d->tok, d->text, TU_TRAIN_BYTES, &d->train) != TL_OK ||
        tl_tokenizer_encode(d->tok, d->text + TU_TRAIN_BYTES, TU_VAL_BYTES, &d->val) != TL_OK) {
        fprintf(stderr, "cannot encode Tiny Shakespeare: %s\n", tl_errmsg());
        exit(1);
    }
    d->data = (tl_train_data){.train = &d->train, .val = &d->val, .tokenizer = d->tok};
}

static inline void tu_data_free(tu_data *d)
{
    tl_tokens_free(&d->train);
    tl_tokens_free(&d->val);
    tl_tokenizer_free(d->tok);
    free(d->text);
}

/* A LLaMA-style model of width 32, 2 heads and context 32. With routed set,
 * layer 1 is ITT x2 (ratio 0.5, routing as given), otherwise both layers are
 * transformers. Exits the test on failure. */
static inline tl_model *tu_model(int64_t vocab, int n_layers, bool routed, const char *routing,
                          uint64_t seed)
{
    static tl_opt_setting itt_settings[2];
    static tl_layer_spec specs[8];
    tl_model_config mc = tl_model_config_default(TL_BLOCK_LLAMA, vocab, 32, 2, 32, n_layers);
    if (routed) {
        itt_settings[0] = (tl_opt_setting){"steps", tl_optv_int(2)};
        itt_settings[1] = (tl_opt_setting){"routing", tl_optv_string(routing)};
        for (int l = 0; l < n_layers && l < 8; l++)
            specs[l] = (tl_layer_spec){.plugin = "transformer"};
        specs[1] = (tl_layer_spec){.plugin = "itt", .options = itt_settings, .n_options = 2};
        mc.layers = specs;
    }
    tl_rng rng;
    tl_rng_seed(&rng, seed);
    tl_model *m = tl_model_new(&mc, &rng);
    if (!m) {
        fprintf(stderr, "cannot build the test model: %s\n", tl_errmsg());
        exit(1);
    }
    return m;
}

/* A short run: B 8, T 32, constant-free warm-up cosine from 3e-3, no
 * progress output. */
static inline tl_train_config tu_config(int64_t steps)
{
    tl_train_config c = tl_train_config_default();
    c.batch_size = 8;
    c.context = 32;
    c.steps = steps;
    c.schedule.lr = 3e-3f;
    c.schedule.min_lr = 3e-4f;
    c.schedule.warmup = steps / 10;
    c.eval_every = 0;
    c.eval_batches = 8;
    c.threads = 2;
    c.progress_every = 0;
    return c;
}

/* Path of scratch file name in the tests build folder. */
static inline void tu_path(char *buf, size_t size, const char *name)
{
    snprintf(buf, size, "%s/%s", TL_BINARY_DIR, name);
}

/* True when files a and b both open and have the same bytes. */
static inline bool tu_files_equal(const char *a, const char *b)
{
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    bool same = fa && fb;
    while (same) {
        int ca = fgetc(fa), cb = fgetc(fb);
        same = ca == cb;
        if (ca == EOF || cb == EOF)
            break;
    }
    if (fa)
        fclose(fa);
    if (fb)
        fclose(fb);
    return same;
}

/* Copies file from to to, byte for byte. */
static inline void tu_copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    int ch;
    while (in && out && (ch = fgetc(in)) != EOF)
        fputc(ch, out);
    if (in)
        fclose(in);
    if (out)
        fclose(out);
}

/* Runs test and prints its wall time, to keep each suite's budget visible. */
static inline void tu_run(const char *name, void (*test)(void))
{
    struct timespec t0, t1;
    timespec_get(&t0, TIME_UTC);
    test();
    timespec_get(&t1, TIME_UTC);
    fprintf(stderr, "%s: %.2f s\n", name,
            (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
}

#endif
