/* Comparison of a checkpoint's config_json with the trainer's own: the model
 * part must match, training settings may differ. Both texts come from the
 * same JSON writer (train_log.c and config.c), so values are compared as
 * their JSON text. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/train_internal.h"

enum { KEY_MAX = 256 };

/* One scalar of a JSON text under its path, e.g. "model.layers[1].options.steps". */
typedef struct flat_entry {
    char key[KEY_MAX];
    const char *value; /* points into the JSON text */
    int len;
} flat_entry;

typedef struct flat_json {
    flat_entry *items;
    size_t n, cap;
    bool failed; /* out of memory, a path too long or not JSON */
} flat_json;

static const char *skip_space(const char *p)
{
    while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r')
        p++;
    return p;
}

/* Returns the character after the string that starts at the quote p, or NULL. */
static const char *skip_string(const char *p)
{
    for (p++; *p && *p != '"'; p++)
        if (*p == '\\' && p[1])
            p++;
    return *p ? p + 1 : NULL;
}

static void add_entry(flat_json *f, const char *key, const char *value, int len)
{
    if (f->n == f->cap) {
        size_t cap = f->cap ? 2 * f->cap : 64;
        flat_entry *items = realloc(f->items, cap * sizeof *items);
        if (!items) {
            f->failed = true;
            return;
        }
        f->items = items;
        f->cap = cap;
    }
    flat_entry *e = &f->items[f->n++];
    snprintf(e->key, sizeof e->key, "%s", key);
    e->value = value;
    e->len = len;
}

/* Appends the scalars of the value at p under key (of length key_len) and
 * returns the character after the value, or NULL on text that is not JSON. */
static const char *flatten(flat_json *f, const char *p, char *key, size_t key_len)
{
    p = skip_space(p);
    if (*p == '{' || *p == '[') {
        bool object = *p == '{';
        char close = object ? '}' : ']';
        p = skip_space(p + 1);
        for (int index = 0; *p != close; index++) {
            int n;
            if (object) {
                const char *name = p, *end = *p == '"' ? skip_string(p) : NULL;
                if (!end)
                    return NULL;
                n = snprintf(key + key_len, KEY_MAX - key_len, "%s%.*s", key_len ? "." : "",
                             (int)(end - name - 2), name + 1);
                p = skip_space(end);
                if (*p != ':')
                    return NULL;
                p++;
            } else {
                n = snprintf(key + key_len, KEY_MAX - key_len, "[%d]", index);
            }
            if (n < 0 || (size_t)n >= KEY_MAX - key_len) {
                f->failed = true;
                return NULL;
            }
            p = flatten(f, p, key, key_len + (size_t)n);
            key[key_len] = '\0';
            if (!p)
                return NULL;
            p = skip_space(p);
            if (*p == ',')
                p = skip_space(p + 1);
            else if (*p != close)
                return NULL;
        }
        return p + 1;
    }
    const char *start = p;
    if (*p == '"') {
        p = skip_string(p);
        if (!p)
            return NULL;
    } else {
        while (*p && !strchr(",}] \n\t\r", *p))
            p++;
        if (p == start)
            return NULL;
    }
    add_entry(f, key, start, (int)(p - start));
    return p;
}

static bool flatten_text(flat_json *f, const char *text)
{
    char key[KEY_MAX] = "";
    *f = (flat_json){0};
    return flatten(f, text, key, 0) && !f->failed;
}

static const flat_entry *find_entry(const flat_json *f, const char *key)
{
    for (size_t i = 0; i < f->n; i++)
        if (strcmp(f->items[i].key, key) == 0)
            return &f->items[i];
    return NULL;
}

static bool has_prefix(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Model settings that do not describe the trained network: derived counts
 * and the initialisation, which the checkpoint's weights replace. */
static bool model_setting(const char *key)
{
    static const char *const skipped[] = {"model.flops_per_token", "model.parameters",
                                          "model.init_std", "model.scaled_init"};
    if (!has_prefix(key, "model."))
        return false;
    for (size_t i = 0; i < sizeof skipped / sizeof skipped[0]; i++)
        if (strcmp(key, skipped[i]) == 0)
            return false;
    return true;
}

static bool same_value(const flat_entry *a, const flat_entry *b)
{
    return a && b && a->len == b->len && memcmp(a->value, b->value, (size_t)a->len) == 0;
}

/* Returns the note that follows a key whose config_json name differs from
 * what a Lua script writes. Lua scripts count model.layers from 1 and
 * config_json counts them from 0. thinklab.model calls the vocabulary size
 * vocab_size. */
static const char *key_note(const char *key)
{
    if (strcmp(key, "model.vocab") == 0)
        return " (vocab_size in thinklab.model)";
    return strstr(key, "layers[") ? " (config_json counts layers from 0, as parameter names do)"
                                  : "";
}

/* Rejects the first model setting that differs, in the checkpoint's order,
 * then any model setting that only the trainer has. */
static tl_status compare_model(const char *path, const flat_json *file, const flat_json *mine)
{
    for (size_t i = 0; i < file->n; i++) {
        const flat_entry *a = &file->items[i];
        if (!model_setting(a->key))
            continue;
        const flat_entry *b = find_entry(mine, a->key);
        if (!b)
            return tl_seterr(TL_EINVAL, "checkpoint '%s' is for another model: %s%s is %.*s in "
                                        "the checkpoint but not set in this model; build the "
                                        "model with the checkpoint's settings",
                             path, a->key, key_note(a->key), a->len, a->value);
        if (!same_value(a, b))
            return tl_seterr(TL_EINVAL, "checkpoint '%s' is for another model: %s%s is %.*s in "
                                        "the checkpoint but %.*s in this model; build the model "
                                        "with the checkpoint's settings",
                             path, a->key, key_note(a->key), a->len, a->value, b->len,
                             b->value);
    }
    for (size_t i = 0; i < mine->n; i++) {
        const flat_entry *b = &mine->items[i];
        if (model_setting(b->key) && !find_entry(file, b->key))
            return tl_seterr(TL_EINVAL, "checkpoint '%s' is for another model: %s%s is %.*s in "
                                        "this model but not set in the checkpoint; build the "
                                        "model with the checkpoint's settings",
                             path, b->key, key_note(b->key), b->len, b->value);
    }
    return TL_OK;
}

/* Whether key names where the run writes, which a resumed run may change
 * without training differently. */
static bool output_path(const char *key)
{
    return strcmp(key, "train.log_path") == 0 || strcmp(key, "train.checkpoint_path") == 0;
}

/* Prints one line on stderr naming the training settings that differ. */
static void report_training_changes(const char *path, const flat_json *file,
                                    const flat_json *mine)
{
    size_t size = 0, at = 0;
    for (size_t i = 0; i < file->n; i++)
        size += strlen(file->items[i].key) + 2;
    char *names = malloc(size + 1);
    if (!names)
        return;
    names[0] = '\0';
    for (size_t i = 0; i < file->n; i++) {
        const flat_entry *a = &file->items[i];
        if (!has_prefix(a->key, "train.") || output_path(a->key))
            continue;
        if (same_value(a, find_entry(mine, a->key)))
            continue;
        at += (size_t)snprintf(names + at, size + 1 - at, "%s%s", at ? ", " : "",
                               a->key + strlen("train."));
    }
    if (at)
        fprintf(stderr, "thinklab: checkpoint '%s' was trained with other values of these "
                        "training settings, and this run uses its own: %s\n", path, names);
    free(names);
}

/* Rejects a checkpoint trained on another tokenizer, because its embedding
 * rows would belong to other text. Checkpoints and data without a tokenizer
 * entry pass. */
static tl_status compare_tokenizer(const char *path, const flat_json *file, const flat_json *mine)
{
    const flat_entry *a = find_entry(file, "tokenizer.fingerprint");
    const flat_entry *b = find_entry(mine, "tokenizer.fingerprint");
    if (!a || !b || same_value(a, b))
        return TL_OK;
    const flat_entry *kind_a = find_entry(file, "tokenizer.kind");
    const flat_entry *kind_b = find_entry(mine, "tokenizer.kind");
    const flat_entry *vocab_a = find_entry(file, "tokenizer.vocab");
    const flat_entry *vocab_b = find_entry(mine, "tokenizer.vocab");
    if (!kind_a || !kind_b || !vocab_a || !vocab_b)
        return tl_seterr(TL_EFORMAT, "checkpoint '%s': config_json has a tokenizer fingerprint "
                                     "without its kind and vocab; the file is damaged",
                         path);
    return tl_seterr(TL_EINVAL, "checkpoint '%s' was trained with another tokenizer (%.*s, %.*s "
                                "tokens, fingerprint %.*s) than this run's (%.*s, %.*s tokens, "
                                "fingerprint %.*s), so its token ids would decode to other text; "
                                "save the first run's tokenizer with tokenizer:save and load it "
                                "with thinklab.load_tokenizer, or build it from the same text",
                     path, kind_a->len, kind_a->value, vocab_a->len, vocab_a->value, a->len,
                     a->value, kind_b->len, kind_b->value, vocab_b->len, vocab_b->value, b->len,
                     b->value);
}

tl_status tl_checkpoint_check_model(const char *path, const char *file_json,
                                    const char *trainer_json)
{
    flat_json file = {0}, mine = {0};
    bool ok_file = flatten_text(&file, file_json);
    bool ok_mine = flatten_text(&mine, trainer_json);
    tl_status st = TL_OK;
    if (!ok_file)
        st = tl_seterr(TL_EFORMAT, "checkpoint '%s': config_json is not a JSON object of at most "
                                   "%d-character setting names; the file is damaged",
                       path, KEY_MAX - 1);
    else if (!ok_mine)
        st = tl_seterr(TL_ENOMEM, "no memory to compare the configuration with checkpoint '%s'",
                       path);
    else
        st = compare_model(path, &file, &mine);
    if (st == TL_OK && ok_file && ok_mine)
        st = compare_tokenizer(path, &file, &mine);
    free(file.items);
    free(mine.items);
    return st;
}

void tl_checkpoint_print_training_changes(const char *path, const char *file_json,
                                          const char *trainer_json)
{
    flat_json file = {0}, mine = {0};
    if (flatten_text(&file, file_json) && flatten_text(&mine, trainer_json))
        report_training_changes(path, &file, &mine);
    free(file.items);
    free(mine.items);
}
