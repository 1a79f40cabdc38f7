/* The tokenizer interface, and the char and byte kinds. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data_internal.h"

static const char *const tl_tokenizer_kind_names[] = {
    [TL_TOKENIZER_CHAR] = "char",
    [TL_TOKENIZER_BYTE] = "byte",
    [TL_TOKENIZER_BPE] = "bpe",
};
_Static_assert(sizeof(tl_tokenizer_kind_names) / sizeof(tl_tokenizer_kind_names[0]) ==
                   TL_TOKENIZER_KIND_COUNT,
               "every tokenizer kind needs a name");

const char *tl_tokenizer_kind_name(tl_tokenizer_kind kind)
{
    if ((unsigned)kind >= TL_TOKENIZER_KIND_COUNT)
        return "unknown";
    return tl_tokenizer_kind_names[kind];
}

void tl_tokens_free(tl_tokens *tokens)
{
    if (!tokens)
        return;
    free(tokens->ids);
    tokens->ids = NULL;
    tokens->n = 0;
}

const char *tl_byte_repr(unsigned char c, char *buf)
{
    switch (c) {
    case '\n': return strcpy(buf, "'\\n'");
    case '\t': return strcpy(buf, "'\\t'");
    case '\r': return strcpy(buf, "'\\r'");
    case '\'': return strcpy(buf, "'\\''");
    case '\\': return strcpy(buf, "'\\\\'");
    default: break;
    }
    if (c >= 0x20 && c < 0x7f)
        snprintf(buf, 8, "'%c'", c);
    else
        snprintf(buf, 8, "'\\x%02x'", c);
    return buf;
}

static tl_tokenizer *tl_tokenizer_alloc(tl_tokenizer_kind kind)
{
    tl_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok) {
        tl_seterr(TL_ENOMEM, "could not allocate a %s tokenizer", tl_tokenizer_kind_name(kind));
        return NULL;
    }
    tok->kind = kind;
    for (int b = 0; b < 256; b++) {
        tok->symbols[b] = (uint8_t)b;
        tok->byte_to_id[b] = (int16_t)b;
    }
    return tok;
}

tl_tokenizer *tl_tokenizer_byte_new(void)
{
    tl_tokenizer *tok = tl_tokenizer_alloc(TL_TOKENIZER_BYTE);
    if (tok)
        tok->vocab_size = 256;
    return tok;
}

tl_tokenizer *tl_tokenizer_char_new_multi(const char *const *texts, const size_t *lens, int n)
{
    if (n < 1 || !texts || !lens) {
        tl_seterr(TL_EINVAL, "a char tokenizer needs at least one text, got %d", n);
        return NULL;
    }
    bool seen[256] = {false};
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        const unsigned char *t = (const unsigned char *)texts[i];
        if (lens[i] > 0 && !t) {
            tl_seterr(TL_EINVAL, "text %d of the char vocabulary is NULL", i);
            return NULL;
        }
        for (size_t k = 0; k < lens[i]; k++)
            seen[t[k]] = true;
        total += lens[i];
    }
    if (total == 0) {
        tl_seterr(TL_EINVAL, "a char vocabulary built from empty text has no symbols: "
                             "pass the training text");
        return NULL;
    }

    tl_tokenizer *tok = tl_tokenizer_alloc(TL_TOKENIZER_CHAR);
    if (!tok)
        return NULL;
    int v = 0;
    for (int b = 0; b < 256; b++) {
        tok->byte_to_id[b] = seen[b] ? (int16_t)v : -1;
        if (seen[b])
            tok->symbols[v++] = (uint8_t)b;
    }
    tok->vocab_size = v;
    return tok;
}

tl_tokenizer *tl_tokenizer_char_new(const char *text, size_t len)
{
    return tl_tokenizer_char_new_multi(&text, &len, 1);
}

void tl_tokenizer_free(tl_tokenizer *tok)
{
    if (!tok)
        return;
    free(tok->merges);
    tl_pair_map_free(&tok->ranks);
    free(tok->expansion);
    free(tok->offsets);
    free(tok);
}

tl_tokenizer_kind tl_tokenizer_kind_of(const tl_tokenizer *tok) { return tok->kind; }

int tl_tokenizer_vocab_size(const tl_tokenizer *tok) { return tok->vocab_size; }

const char *tl_tokenizer_token_bytes(const tl_tokenizer *tok, int32_t id, size_t *len)
{
    if (id < 0 || id >= tok->vocab_size) {
        tl_seterr(TL_EINVAL, "token id %d is outside the %s vocabulary [0, %d)", (int)id,
                  tl_tokenizer_kind_name(tok->kind), tok->vocab_size);
        return NULL;
    }
    if (tok->kind == TL_TOKENIZER_BPE) {
        *len = (size_t)(tok->offsets[id + 1] - tok->offsets[id]);
        return tok->expansion + tok->offsets[id];
    }
    *len = 1;
    return (const char *)&tok->symbols[id];
}

static tl_status tl_char_encode(const tl_tokenizer *tok, const char *text, size_t len, tl_tokens *out)
{
    const unsigned char *t = (const unsigned char *)text;
    for (size_t i = 0; i < len; i++) {
        int id = tok->byte_to_id[t[i]];
        if (id < 0) {
            char repr[8];
            tl_tokens_free(out);
            return tl_seterr(TL_EINVAL,
                             "character %s (byte 0x%02x) at byte offset %zu is not in the char "
                             "vocabulary of %d symbols: build the vocabulary from every text "
                             "it encodes (from the corpus, which covers both splits) or use "
                             "the byte tokenizer",
                             tl_byte_repr(t[i], repr), t[i], i, tok->vocab_size);
        }
        out->ids[i] = id;
    }
    return TL_OK;
}

tl_status tl_tokenizer_encode(const tl_tokenizer *tok, const char *text, size_t len, tl_tokens *out)
{
    out->ids = NULL;
    out->n = 0;
    if (!tok || (!text && len > 0))
        return tl_seterr(TL_EINVAL, "tl_tokenizer_encode needs a tokenizer and text");
    if (tok->kind == TL_TOKENIZER_BPE)
        return tl_bpe_encode(tok, text, len, out);

    /* char and byte: one id per byte; +1 keeps malloc(0) out of the way. */
    out->ids = malloc((len + 1) * sizeof *out->ids);
    if (!out->ids)
        return tl_seterr(TL_ENOMEM, "could not allocate %zu token ids", len);
    out->n = (int64_t)len;
    return tl_char_encode(tok, text, len, out);
}

char *tl_tokenizer_decode(const tl_tokenizer *tok, const int32_t *ids, int64_t n, size_t *len)
{
    size_t total = 0;
    for (int64_t i = 0; i < n; i++) {
        size_t piece;
        if (!tl_tokenizer_token_bytes(tok, ids[i], &piece)) {
            tl_seterr(TL_EINVAL, "token id %d at position %lld is outside the %s vocabulary "
                                 "[0, %d): decode with the tokenizer the ids came from",
                      (int)ids[i], (long long)i, tl_tokenizer_kind_name(tok->kind), tok->vocab_size);
            return NULL;
        }
        total += piece;
    }
    char *text = malloc(total + 1);
    if (!text) {
        tl_seterr(TL_ENOMEM, "could not allocate %zu bytes of decoded text", total + 1);
        return NULL;
    }
    size_t at = 0;
    for (int64_t i = 0; i < n; i++) {
        size_t piece;
        const char *bytes = tl_tokenizer_token_bytes(tok, ids[i], &piece);
        memcpy(text + at, bytes, piece);
        at += piece;
    }
    text[at] = '\0';
    if (len)
        *len = at;
    return text;
}
