/* Byte-level BPE training with incremental pair counts.
 *
 * The corpus is reduced to its unique pre-tokens ("words") with their
 * frequencies. Pair counts are kept over the words, weighted by frequency,
 * with a posting list of the words each pair occurs in. A merge rewrites only
 * the words on its pair's list and updates the counts of the pairs it touches,
 * and a max-heap with stale entries skipped on pop finds the next pair. */
#include <stdlib.h>
#include <string.h>

#include "data_internal.h"

/* ---- unique words ------------------------------------------------------- */

typedef struct tl_word_table {
    /* Hash slot i contains word index slot_word[i], or -1 when empty. */
    int32_t *slot_word;
    size_t capacity;
    /* Per word: offset of its first occurrence in the text and its length. */
    size_t *start;
    int32_t *len;
    int64_t *freq;
    int32_t count, word_capacity;
} tl_word_table;

static uint64_t tl_hash_bytes(const unsigned char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}

static void tl_word_table_free(tl_word_table *w)
{
    free(w->slot_word);
    free(w->start);
    free(w->len);
    free(w->freq);
}

static bool tl_word_table_grow_slots(tl_word_table *w, const unsigned char *text)
{
    size_t capacity = w->capacity ? 2 * w->capacity : 1u << 16;
    int32_t *slots = malloc(capacity * sizeof *slots);
    if (!slots)
        return false;
    for (size_t i = 0; i < capacity; i++)
        slots[i] = -1;
    for (int32_t k = 0; k < w->count; k++) {
        size_t i = tl_hash_bytes(text + w->start[k], (size_t)w->len[k]) & (capacity - 1);
        while (slots[i] >= 0)
            i = (i + 1) & (capacity - 1);
        slots[i] = k;
    }
    free(w->slot_word);
    w->slot_word = slots;
    w->capacity = capacity;
    return true;
}

static bool tl_word_table_add(tl_word_table *w, const unsigned char *text, size_t start, size_t n)
{
    if (2 * ((size_t)w->count + 1) > w->capacity && !tl_word_table_grow_slots(w, text))
        return false;
    size_t mask = w->capacity - 1;
    size_t i = tl_hash_bytes(text + start, n) & mask;
    for (; w->slot_word[i] >= 0; i = (i + 1) & mask) {
        int32_t k = w->slot_word[i];
        if ((size_t)w->len[k] == n && memcmp(text + w->start[k], text + start, n) == 0) {
            w->freq[k]++;
            return true;
        }
    }
    if (w->count == w->word_capacity) {
        int32_t cap = w->word_capacity ? 2 * w->word_capacity : 4096;
        size_t *s = realloc(w->start, (size_t)cap * sizeof *s);
        if (s)
            w->start = s;
        int32_t *l = realloc(w->len, (size_t)cap * sizeof *l);
        if (l)
            w->len = l;
        int64_t *f = realloc(w->freq, (size_t)cap * sizeof *f);
        if (f)
            w->freq = f;
        if (!s || !l || !f)
            return false;
        w->word_capacity = cap;
    }
    int32_t k = w->count++;
    w->start[k] = start;
    w->len[k] = (int32_t)n;
    w->freq[k] = 1;
    w->slot_word[i] = k;
    return true;
}

/* ---- pairs and the heap ------------------------------------------------- */

typedef struct tl_pair_stat {
    int32_t left, right;
    int64_t count;     /* occurrences over all words, weighted by frequency */
    int32_t *words;    /* posting list; may repeat a word or hold stale ones */
    int32_t n_words, cap_words;
    int32_t dirty_at;  /* merge step that last changed count, or -1 */
} tl_pair_stat;

typedef struct tl_heap_entry {
    int64_t count;
    int32_t left, right;
} tl_heap_entry;

typedef struct tl_bpe_trainer {
    tl_pair_map pair_id; /* (left, right) -> index into pairs */
    tl_pair_stat *pairs;
    int32_t n_pairs, cap_pairs;
    tl_heap_entry *heap;
    size_t heap_n, heap_cap;
    int32_t *dirty; /* pair indices changed in this merge step */
    size_t n_dirty, cap_dirty;
    bool oom;
} tl_bpe_trainer;

/* Orders by count, highest first, then by the smaller (left, right). */
static bool tl_heap_before(const tl_heap_entry *a, const tl_heap_entry *b)
{
    if (a->count != b->count)
        return a->count > b->count;
    if (a->left != b->left)
        return a->left < b->left;
    return a->right < b->right;
}

static void tl_heap_push(tl_bpe_trainer *tr, tl_heap_entry e)
{
    if (tr->heap_n == tr->heap_cap) {
        size_t cap = tr->heap_cap ? 2 * tr->heap_cap : 1u << 16;
        tl_heap_entry *h = realloc(tr->heap, cap * sizeof *h);
        if (!h) {
            tr->oom = true;
            return;
        }
        tr->heap = h;
        tr->heap_cap = cap;
    }
    size_t i = tr->heap_n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!tl_heap_before(&e, &tr->heap[parent]))
            break;
        tr->heap[i] = tr->heap[parent];
        i = parent;
    }
    tr->heap[i] = e;
}

static tl_heap_entry tl_heap_pop(tl_bpe_trainer *tr)
{
    tl_heap_entry top = tr->heap[0];
    tl_heap_entry last = tr->heap[--tr->heap_n];
    size_t n = tr->heap_n, i = 0;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= n)
            break;
        if (child + 1 < n && tl_heap_before(&tr->heap[child + 1], &tr->heap[child]))
            child++;
        if (!tl_heap_before(&tr->heap[child], &last))
            break;
        tr->heap[i] = tr->heap[child];
        i = child;
    }
    if (n > 0)
        tr->heap[i] = last;
    return top;
}

/* Returns the index of pair (left, right), creating it with count 0. */
static int32_t tl_pair_index(tl_bpe_trainer *tr, int32_t left, int32_t right)
{
    uint64_t key = tl_pair_key(left, right);
    int32_t p = tl_pair_map_get(&tr->pair_id, key);
    if (p >= 0)
        return p;
    if (tr->n_pairs == tr->cap_pairs) {
        int32_t cap = tr->cap_pairs ? 2 * tr->cap_pairs : 1 << 16;
        tl_pair_stat *grown = realloc(tr->pairs, (size_t)cap * sizeof *grown);
        if (!grown) {
            tr->oom = true;
            return -1;
        }
        tr->pairs = grown;
        tr->cap_pairs = cap;
    }
    p = tr->n_pairs;
    if (!tl_pair_map_put(&tr->pair_id, key, p)) {
        tr->oom = true;
        return -1;
    }
    tr->n_pairs++;
    tr->pairs[p] = (tl_pair_stat){.left = left, .right = right, .dirty_at = -1};
    return p;
}

static void tl_pair_add_word(tl_bpe_trainer *tr, tl_pair_stat *ps, int32_t word)
{
    if (ps->n_words > 0 && ps->words[ps->n_words - 1] == word)
        return;
    if (ps->n_words == ps->cap_words) {
        int32_t cap = ps->cap_words ? 2 * ps->cap_words : 4;
        int32_t *grown = realloc(ps->words, (size_t)cap * sizeof *grown);
        if (!grown) {
            tr->oom = true;
            return;
        }
        ps->words = grown;
        ps->cap_words = cap;
    }
    ps->words[ps->n_words++] = word;
}

/* Adds delta to the count of (left, right) and marks it changed in step. With
 * word >= 0 the word also joins the pair's posting list. */
static void tl_pair_change(tl_bpe_trainer *tr, int32_t left, int32_t right, int64_t delta,
                           int32_t word, int32_t step)
{
    int32_t p = tl_pair_index(tr, left, right);
    if (p < 0)
        return;
    tl_pair_stat *ps = &tr->pairs[p];
    ps->count += delta;
    if (word >= 0)
        tl_pair_add_word(tr, ps, word);
    if (ps->dirty_at == step)
        return;
    ps->dirty_at = step;
    if (tr->n_dirty == tr->cap_dirty) {
        size_t cap = tr->cap_dirty ? 2 * tr->cap_dirty : 1024;
        int32_t *grown = realloc(tr->dirty, cap * sizeof *grown);
        if (!grown) {
            tr->oom = true;
            return;
        }
        tr->dirty = grown;
        tr->cap_dirty = cap;
    }
    tr->dirty[tr->n_dirty++] = p;
}

/* Pushes the new counts of the pairs changed in this step. */
static void tl_flush_dirty(tl_bpe_trainer *tr)
{
    for (size_t i = 0; i < tr->n_dirty; i++) {
        tl_pair_stat *ps = &tr->pairs[tr->dirty[i]];
        if (ps->count > 0)
            tl_heap_push(tr, (tl_heap_entry){ps->count, ps->left, ps->right});
    }
    tr->n_dirty = 0;
}

static void tl_bpe_trainer_free(tl_bpe_trainer *tr)
{
    for (int32_t p = 0; p < tr->n_pairs; p++)
        free(tr->pairs[p].words);
    free(tr->pairs);
    tl_pair_map_free(&tr->pair_id);
    free(tr->heap);
    free(tr->dirty);
}

/* ---- training ----------------------------------------------------------- */

/* Joins every (left, right) in syms[0..n) into id from left to right, keeping
 * the pair counts in step, and returns the new length. */
static int32_t tl_merge_in_word(tl_bpe_trainer *tr, int32_t *syms, int32_t n, int32_t word,
                                int64_t freq, int32_t left, int32_t right, int32_t id, int32_t step)
{
    for (int32_t k = 0; k + 1 < n; k++)
        tl_pair_change(tr, syms[k], syms[k + 1], -freq, -1, step);
    int32_t w = 0;
    for (int32_t k = 0; k < n; k++) {
        if (k + 1 < n && syms[k] == left && syms[k + 1] == right) {
            syms[w++] = id;
            k++;
        } else {
            syms[w++] = syms[k];
        }
    }
    /* Pairs without the new id were already adjacent, so the word is on
     * their lists; only pairs with the new id need it added. */
    for (int32_t k = 0; k + 1 < w; k++) {
        bool is_new = syms[k] == id || syms[k + 1] == id;
        tl_pair_change(tr, syms[k], syms[k + 1], freq, is_new ? word : -1, step);
    }
    return w;
}

static bool tl_word_has_pair(const int32_t *syms, int32_t n, int32_t left, int32_t right)
{
    for (int32_t k = 0; k + 1 < n; k++)
        if (syms[k] == left && syms[k + 1] == right)
            return true;
    return false;
}

/* Runs n_merges merges over the words and writes them to merges[2r], [2r+1].
 * Returns the number done, fewer when the words run out of pairs. */
static int tl_bpe_run(tl_bpe_trainer *tr, const tl_word_table *words, int32_t *syms,
                      const size_t *offset, int32_t *len, int n_merges, int32_t *merges)
{
    int32_t *last_step = malloc(((size_t)words->count + 1) * sizeof *last_step);
    if (!last_step) {
        tr->oom = true;
        return 0;
    }
    for (int32_t k = 0; k < words->count; k++)
        last_step[k] = -1;

    int done = 0;
    while (done < n_merges && tr->heap_n > 0 && !tr->oom) {
        tl_heap_entry top = tl_heap_pop(tr);
        int32_t p = tl_pair_map_get(&tr->pair_id, tl_pair_key(top.left, top.right));
        if (tr->pairs[p].count != top.count || top.count <= 0)
            continue; /* stale: the count changed after this entry was pushed */

        int32_t step = done, id = 256 + done;
        merges[2 * step] = top.left;
        merges[2 * step + 1] = top.right;
        /* Take the list: the pair array may move while the words change. */
        int32_t *list = tr->pairs[p].words;
        int32_t n_list = tr->pairs[p].n_words;
        tr->pairs[p].words = NULL;
        tr->pairs[p].n_words = tr->pairs[p].cap_words = 0;
        for (int32_t i = 0; i < n_list; i++) {
            int32_t k = list[i];
            if (last_step[k] == step)
                continue;
            last_step[k] = step;
            int32_t *s = syms + offset[k];
            if (!tl_word_has_pair(s, len[k], top.left, top.right))
                continue;
            len[k] = tl_merge_in_word(tr, s, len[k], k, words->freq[k], top.left, top.right, id,
                                      step);
        }
        free(list);
        tl_flush_dirty(tr);
        done++;
    }
    free(last_step);
    return done;
}

tl_tokenizer *tl_tokenizer_bpe_train(const char *text, size_t len, int vocab_size)
{
    if (vocab_size < 256 || vocab_size > (1 << 24)) {
        tl_seterr(TL_EINVAL, "BPE vocab_size %d is out of range: use 256 (bytes only) to 16777216",
                  vocab_size);
        return NULL;
    }
    if (!text || len == 0) {
        tl_seterr(TL_EINVAL, "BPE training text is empty: pass the training split");
        return NULL;
    }
    const unsigned char *t = (const unsigned char *)text;
    int n_merges = vocab_size - 256;
    tl_word_table words = {0};
    tl_bpe_trainer tr = {0};
    int32_t *syms = NULL, *wlen = NULL, *merges = NULL;
    size_t *offset = NULL;
    tl_tokenizer *tok = NULL;

    for (size_t start = 0; start < len;) {
        size_t end = tl_pretoken_end(text, len, start);
        if (end - start > INT32_MAX || !tl_word_table_add(&words, t, start, end - start))
            goto oom;
        start = end;
    }

    /* Symbols of all words back to back; word k starts at offset[k]. */
    size_t total = 0;
    offset = malloc(((size_t)words.count + 1) * sizeof *offset);
    wlen = malloc(((size_t)words.count + 1) * sizeof *wlen);
    if (!offset || !wlen)
        goto oom;
    for (int32_t k = 0; k < words.count; k++) {
        offset[k] = total;
        wlen[k] = words.len[k];
        total += (size_t)words.len[k];
    }
    syms = malloc((total + 1) * sizeof *syms);
    merges = malloc((2 * (size_t)n_merges + 1) * sizeof *merges);
    if (!syms || !merges || !tl_pair_map_init(&tr.pair_id, 1u << 16))
        goto oom;
    for (int32_t k = 0; k < words.count; k++)
        for (int32_t i = 0; i < wlen[k]; i++)
            syms[offset[k] + (size_t)i] = t[words.start[k] + (size_t)i];

    for (int32_t k = 0; k < words.count; k++) {
        const int32_t *s = syms + offset[k];
        for (int32_t i = 0; i + 1 < wlen[k]; i++)
            tl_pair_change(&tr, s[i], s[i + 1], words.freq[k], k, 0);
    }
    tl_flush_dirty(&tr);
    if (tr.oom)
        goto oom;

    int done = tl_bpe_run(&tr, &words, syms, offset, wlen, n_merges, merges);
    if (tr.oom)
        goto oom;
    if (done < n_merges) {
        tl_seterr(TL_EINVAL, "BPE training ran out of pairs after %d merges (vocab size %d) of "
                             "the %d requested for vocab_size %d: the %zu-byte corpus is too "
                             "small, so use more text or a smaller vocab_size",
                  done, 256 + done, n_merges, vocab_size, len);
        goto out;
    }
    tok = tl_bpe_from_merges(merges, n_merges);
    goto out;

oom:
    tl_seterr(TL_ENOMEM, "out of memory while training BPE on %zu bytes", len);
out:
    tl_word_table_free(&words);
    tl_bpe_trainer_free(&tr);
    free(syms);
    free(wlen);
    free(offset);
    free(merges);
    return tok;
}
