/* Byte-level BPE: pre-tokens, the pair map, and encoding by merge rank. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "data_internal.h"

/* ---- pair map ----------------------------------------------------------- */

static size_t tl_pair_slot(uint64_t key, size_t mask)
{
    /* Fibonacci hashing spreads keys whose low bits are all alike. */
    return (size_t)((key * 0x9e3779b97f4a7c15ULL) >> 17) & mask;
}

bool tl_pair_map_init(tl_pair_map *map, size_t expected)
{
    size_t capacity = 64;
    while (capacity < 2 * expected)
        capacity *= 2;
    map->keys = malloc(capacity * sizeof *map->keys);
    map->values = malloc(capacity * sizeof *map->values);
    map->capacity = capacity;
    map->count = 0;
    if (!map->keys || !map->values) {
        tl_pair_map_free(map);
        return false;
    }
    for (size_t i = 0; i < capacity; i++)
        map->keys[i] = TL_PAIR_EMPTY;
    return true;
}

void tl_pair_map_free(tl_pair_map *map)
{
    free(map->keys);
    free(map->values);
    map->keys = NULL;
    map->values = NULL;
    map->capacity = map->count = 0;
}

int32_t tl_pair_map_get(const tl_pair_map *map, uint64_t key)
{
    if (map->capacity == 0)
        return -1;
    size_t mask = map->capacity - 1;
    for (size_t i = tl_pair_slot(key, mask);; i = (i + 1) & mask) {
        if (map->keys[i] == key)
            return map->values[i];
        if (map->keys[i] == TL_PAIR_EMPTY)
            return -1;
    }
}

bool tl_pair_map_put(tl_pair_map *map, uint64_t key, int32_t value)
{
    /* Keep the load at most one half so probes stay short. */
    if (2 * (map->count + 1) > map->capacity) {
        tl_pair_map bigger;
        if (!tl_pair_map_init(&bigger, map->capacity))
            return false;
        for (size_t i = 0; i < map->capacity; i++)
            if (map->keys[i] != TL_PAIR_EMPTY)
                tl_pair_map_put(&bigger, map->keys[i], map->values[i]);
        tl_pair_map_free(map);
        *map = bigger;
    }
    size_t mask = map->capacity - 1;
    size_t i = tl_pair_slot(key, mask);
    while (map->keys[i] != TL_PAIR_EMPTY && map->keys[i] != key)
        i = (i + 1) & mask;
    if (map->keys[i] == TL_PAIR_EMPTY)
        map->count++;
    map->keys[i] = key;
    map->values[i] = value;
    return true;
}

/* ---- pre-tokens --------------------------------------------------------- */

enum { TL_CLASS_SPACE, TL_CLASS_LETTER, TL_CLASS_DIGIT, TL_CLASS_OTHER };

static int tl_byte_class(unsigned char c)
{
    if (c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\v' || c == '\f')
        return TL_CLASS_SPACE;
    /* Bytes of multi-byte UTF-8 characters count as letters, so accented
     * words stay whole. */
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80)
        return TL_CLASS_LETTER;
    if (c >= '0' && c <= '9')
        return TL_CLASS_DIGIT;
    return TL_CLASS_OTHER;
}

static size_t tl_class_run_end(const unsigned char *t, size_t len, size_t i)
{
    int cls = tl_byte_class(t[i]);
    while (i < len && tl_byte_class(t[i]) == cls)
        i++;
    return i;
}

size_t tl_pretoken_end(const char *text, size_t len, size_t start)
{
    const unsigned char *t = (const unsigned char *)text;
    if (tl_byte_class(t[start]) != TL_CLASS_SPACE)
        return tl_class_run_end(t, len, start);

    size_t end = tl_class_run_end(t, len, start);
    if (end == len || t[end - 1] != ' ')
        return end;
    /* A space right before a word goes with the word: alone, it starts the
     * word's pre-token; after other whitespace, the run stops before it. */
    if (end - 1 > start)
        return end - 1;
    return tl_class_run_end(t, len, end);
}

/* ---- tokenizer from merges ---------------------------------------------- */

tl_tokenizer *tl_bpe_from_merges(const int32_t *merges, int n_merges)
{
    if (n_merges < 0 || n_merges > INT_MAX - 256) {
        tl_seterr(TL_EINVAL, "BPE merge count %d is out of range", n_merges);
        return NULL;
    }
    for (int r = 0; r < n_merges; r++) {
        int32_t left = merges[2 * r], right = merges[2 * r + 1];
        if (left < 0 || right < 0 || left >= 256 + r || right >= 256 + r) {
            tl_seterr(TL_EFORMAT, "BPE merge %d joins ids %d and %d, but only ids below %d "
                                  "exist before it: the merge list is corrupt",
                      r, (int)left, (int)right, 256 + r);
            return NULL;
        }
    }

    tl_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok) {
        tl_seterr(TL_ENOMEM, "could not allocate a bpe tokenizer");
        return NULL;
    }
    tok->kind = TL_TOKENIZER_BPE;
    tok->vocab_size = 256 + n_merges;
    tok->n_merges = n_merges;
    tok->merges = malloc((2 * (size_t)n_merges + 1) * sizeof *tok->merges);
    tok->offsets = malloc(((size_t)tok->vocab_size + 1) * sizeof *tok->offsets);
    if (!tok->merges || !tok->offsets || !tl_pair_map_init(&tok->ranks, (size_t)n_merges)) {
        tl_tokenizer_free(tok);
        tl_seterr(TL_ENOMEM, "could not allocate a bpe tokenizer with %d merges", n_merges);
        return NULL;
    }
    memcpy(tok->merges, merges, 2 * (size_t)n_merges * sizeof *merges);
    for (int b = 0; b < 256; b++) {
        tok->symbols[b] = (uint8_t)b;
        tok->byte_to_id[b] = (int16_t)b;
    }

    /* Expansion lengths first, then the bytes. */
    tok->offsets[0] = 0;
    for (int id = 0; id < tok->vocab_size; id++) {
        int64_t piece = 1;
        if (id >= 256) {
            const int32_t *m = &merges[2 * (id - 256)];
            piece = (tok->offsets[m[0] + 1] - tok->offsets[m[0]]) +
                    (tok->offsets[m[1] + 1] - tok->offsets[m[1]]);
        }
        tok->offsets[id + 1] = tok->offsets[id] + piece;
    }
    tok->expansion = malloc((size_t)tok->offsets[tok->vocab_size] + 1);
    if (!tok->expansion) {
        tl_tokenizer_free(tok);
        tl_seterr(TL_ENOMEM, "could not allocate the bpe token table");
        return NULL;
    }
    for (int id = 0; id < tok->vocab_size; id++) {
        char *dst = tok->expansion + tok->offsets[id];
        if (id < 256) {
            *dst = (char)id;
            continue;
        }
        const int32_t *m = &merges[2 * (id - 256)];
        size_t left_len = (size_t)(tok->offsets[m[0] + 1] - tok->offsets[m[0]]);
        size_t right_len = (size_t)(tok->offsets[m[1] + 1] - tok->offsets[m[1]]);
        memcpy(dst, tok->expansion + tok->offsets[m[0]], left_len);
        memcpy(dst + left_len, tok->expansion + tok->offsets[m[1]], right_len);
    }

    for (int r = 0; r < n_merges; r++) {
        uint64_t key = tl_pair_key(merges[2 * r], merges[2 * r + 1]);
        if (tl_pair_map_get(&tok->ranks, key) >= 0) {
            tl_seterr(TL_EFORMAT, "BPE merge %d repeats the pair (%d, %d) of merge %d: the merge "
                                  "list is corrupt",
                      r, (int)merges[2 * r], (int)merges[2 * r + 1],
                      (int)tl_pair_map_get(&tok->ranks, key));
            tl_tokenizer_free(tok);
            return NULL;
        }
        if (!tl_pair_map_put(&tok->ranks, key, r)) {
            tl_tokenizer_free(tok);
            tl_seterr(TL_ENOMEM, "could not allocate the bpe merge table");
            return NULL;
        }
    }
    return tok;
}

/* ---- encoding ----------------------------------------------------------- */

/* Applies merges to ids[0..n) in rank order and returns the new length: each
 * pass finds the lowest-ranked adjacent pair and joins all its occurrences
 * from left to right, as training did.
 * NOTE: a pass costs O(n), so a pre-token of n bytes costs O(n^2) at worst.
 * Pre-tokens are single words or whitespace runs, short in ordinary text, but
 * a long run without whitespace (minified data, say) encodes slowly. */
static size_t tl_bpe_merge_word(const tl_tokenizer *tok, int32_t *ids, size_t n)
{
    while (n >= 2) {
        int32_t best = INT32_MAX;
        for (size_t k = 0; k + 1 < n; k++) {
            int32_t rank = tl_pair_map_get(&tok->ranks, tl_pair_key(ids[k], ids[k + 1]));
            if (rank >= 0 && rank < best)
                best = rank;
        }
        if (best == INT32_MAX)
            break;
        int32_t left = tok->merges[2 * best], right = tok->merges[2 * best + 1];
        size_t w = 0;
        for (size_t k = 0; k < n; k++) {
            if (k + 1 < n && ids[k] == left && ids[k + 1] == right) {
                ids[w++] = 256 + best;
                k++;
            } else {
                ids[w++] = ids[k];
            }
        }
        n = w;
    }
    return n;
}

tl_status tl_bpe_encode(const tl_tokenizer *tok, const char *text, size_t len, tl_tokens *out)
{
    /* BPE never yields more ids than bytes, so one byte-sized buffer serves;
     * it is shrunk at the end. */
    int32_t *ids = malloc((len + 1) * sizeof *ids);
    if (!ids)
        return tl_seterr(TL_ENOMEM, "could not allocate %zu token ids", len);
    const unsigned char *t = (const unsigned char *)text;
    size_t n = 0;
    for (size_t start = 0; start < len;) {
        size_t end = tl_pretoken_end(text, len, start);
        for (size_t k = start; k < end; k++)
            ids[n + k - start] = t[k];
        n += tl_bpe_merge_word(tok, ids + n, end - start);
        start = end;
    }
    int32_t *shrunk = realloc(ids, (n + 1) * sizeof *ids);
    out->ids = shrunk ? shrunk : ids;
    out->n = (int64_t)n;
    return TL_OK;
}
