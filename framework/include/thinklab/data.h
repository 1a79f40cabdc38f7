/* The data layer: tokenizers, text corpora and batch sampling.
 *
 * A tokenizer maps bytes of text to int32 token ids in [0, V) and back. Three
 * kinds share one interface:
 *   char  V = the sorted distinct bytes of the training text (65 for Tiny
 *         Shakespeare); a byte outside the vocabulary is an error.
 *   byte  V = 256, id = byte value; encodes any bytes.
 *   bpe   byte-level byte-pair encoding, V = 256 byte ids + one id per merge.
 * Every kind works on bytes, so UTF-8 sequences are never split specially and
 * decode(encode(text)) == text exactly.
 *
 * Batches are windows of T+1 consecutive tokens: the first T are the inputs and
 * the last T the targets, each stored row-major as (B,T) int32. Sampling takes
 * an explicit tl_rng owned by the trainer, so a checkpoint that saves the rng
 * words and tl_sampler.batches_drawn resumes the same batch sequence. */
#ifndef THINKLAB_DATA_H
#define THINKLAB_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "thinklab/rng.h"
#include "thinklab/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- tokenizers --------------------------------------------------------- */

typedef enum tl_tokenizer_kind {
    TL_TOKENIZER_CHAR,
    TL_TOKENIZER_BYTE,
    TL_TOKENIZER_BPE,
    TL_TOKENIZER_KIND_COUNT
} tl_tokenizer_kind;

/* Version of the text format written by tl_tokenizer_save() and
 * tl_tokenizer_to_string(); its first line is "thinklab-tokenizer <version>". */
enum { TL_TOKENIZER_FORMAT_VERSION = 1 };

typedef struct tl_tokenizer tl_tokenizer;

/* A heap array of token ids; release with tl_tokens_free(). */
typedef struct tl_tokens {
    int32_t *ids;
    int64_t n;
} tl_tokens;

void tl_tokens_free(tl_tokens *tokens);

/* Builds a char-level tokenizer whose vocabulary is the sorted distinct bytes
 * of text[0..len). Fails on empty text. */
tl_tokenizer *tl_tokenizer_char_new(const char *text, size_t len);
/* The same over the union of n texts, e.g. the train and validation splits. */
tl_tokenizer *tl_tokenizer_char_new_multi(const char *const *texts, const size_t *lens, int n);
tl_tokenizer *tl_tokenizer_byte_new(void);
/* Trains byte-level BPE on text[0..len) until the vocabulary has vocab_size
 * ids (256 bytes + vocab_size - 256 merges). Text is first cut into
 * pre-tokens (see tl_pretoken_end) and merges never cross a pre-token
 * boundary. Each step merges the most frequent adjacent pair; ties go to the
 * smallest (left, right) ids. Fails when the corpus runs out of pairs first. */
tl_tokenizer *tl_tokenizer_bpe_train(const char *text, size_t len, int vocab_size);
void tl_tokenizer_free(tl_tokenizer *tok);

tl_tokenizer_kind tl_tokenizer_kind_of(const tl_tokenizer *tok);
/* Returns "char", "byte" or "bpe". */
const char *tl_tokenizer_kind_name(tl_tokenizer_kind kind);
int tl_tokenizer_vocab_size(const tl_tokenizer *tok);
/* Returns the bytes that token id decodes to and stores their count in *len,
 * or NULL (with an error set) if id is outside [0, V). The bytes are not
 * NUL-terminated and stay valid while tok lives. */
const char *tl_tokenizer_token_bytes(const tl_tokenizer *tok, int32_t id, size_t *len);

/* Encodes text[0..len) into out->ids (heap, out->n ids). On failure out is
 * left empty; the char kind names the first byte outside its vocabulary. */
tl_status tl_tokenizer_encode(const tl_tokenizer *tok, const char *text, size_t len, tl_tokens *out);
/* Decodes ids[0..n) into a NUL-terminated heap string (release with free())
 * and stores its length, without the NUL, in *len when len is not NULL.
 * Returns NULL if an id is outside [0, V). */
char *tl_tokenizer_decode(const tl_tokenizer *tok, const int32_t *ids, int64_t n, size_t *len);

/* Serialises the tokenizer to a NUL-terminated heap string (release with
 * free()) in the same text format as the file, so that checkpoints can embed
 * it. */
char *tl_tokenizer_to_string(const tl_tokenizer *tok, size_t *len);
tl_tokenizer *tl_tokenizer_from_string(const char *text, size_t len);
/* Writes path through a temporary file and a rename, so a crash leaves either
 * the old file or the new one. Replaces only a missing path, an empty file
 * or a tokenizer file: any other file or a device fails with TL_EINVAL. */
tl_status tl_tokenizer_save(const tl_tokenizer *tok, const char *path);
tl_tokenizer *tl_tokenizer_load(const char *path);

/* Returns the end of the pre-token that starts at text[start], start < len.
 * Pre-tokens are runs of one class (letters and bytes >= 0x80, digits, other
 * visible bytes) or runs of whitespace; a single space before a word run
 * belongs to that word, as in GPT-2 ("a b" -> "a", " b"). */
size_t tl_pretoken_end(const char *text, size_t len, size_t start);

/* ---- corpora ------------------------------------------------------------ */

/* Fraction of the bytes that tl_corpus_load() keeps for validation when the
 * caller has no reason to pick another. */
#define TL_CORPUS_VAL_FRACTION 0.1

/* UTF-8 text split into a training part and a validation part. */
typedef struct tl_corpus {
    char *train;      /* NUL-terminated, train_len bytes before the NUL */
    size_t train_len;
    char *val;
    size_t val_len;
} tl_corpus;

/* Reads a whole file into a NUL-terminated heap buffer (release with free()).
 * Fails on a missing, unreadable or empty file and on invalid UTF-8. */
char *tl_text_read(const char *path, size_t *len);

/* Loads path and keeps the last val_fraction of its bytes, 0 < val_fraction < 1,
 * for validation: train = the first floor(len * (1 - val_fraction)) bytes,
 * moved forward to the next UTF-8 character boundary. */
tl_corpus *tl_corpus_load(const char *path, double val_fraction);
/* Loads the two splits from separate files. */
tl_corpus *tl_corpus_load_split(const char *train_path, const char *val_path);
void tl_corpus_free(tl_corpus *corpus);

/* Encodes both splits. On failure both outputs are left empty, with nothing
 * to free. */
tl_status tl_corpus_encode(const tl_corpus *corpus, const tl_tokenizer *tok, tl_tokens *train,
                           tl_tokens *val);

/* ---- batches ------------------------------------------------------------ */

/* Random training windows. With world ranks, every rank draws the same global
 * batch of world*batch windows from an rng in the same state, and rank r keeps
 * rows [r*batch, (r+1)*batch). So N ranks with batch b see exactly the rows of
 * one rank with batch N*b, and the rng advances alike on every rank. */
typedef struct tl_sampler {
    const int32_t *tokens; /* borrowed, n_tokens ids */
    int64_t n_tokens;
    int batch;             /* B, rows per rank */
    int context;           /* T */
    int rank, world;
    int64_t batches_drawn; /* save in checkpoints; restore by assignment */
} tl_sampler;

/* Checks the arguments: batch >= 1, context >= 1, 0 <= rank < world, and
 * context + 1 <= n_tokens. The tokens must outlive the sampler. */
tl_status tl_sampler_init(tl_sampler *s, const tl_tokens *tokens, int batch, int context, int rank,
                          int world);
/* Draws the next batch into inputs and targets, each (B,T) int32, using
 * world*B draws of tl_rng_below(rng, n_tokens - T) for the window starts. */
tl_status tl_sampler_next(tl_sampler *s, tl_rng *rng, int32_t *inputs, int32_t *targets);

/* Sequential evaluation over non-overlapping windows. Window k covers tokens
 * [k*T, k*T + T], so its targets are tokens k*T+1 .. k*T+T. The split has
 * (n_tokens - 1) / T full windows, and every token after the first is a target
 * in exactly one of them, except a shorter tail that is dropped. Each step
 * takes the next world*B windows, and rank r keeps rows [r*B, (r+1)*B). */
typedef struct tl_eval_iter {
    const int32_t *tokens;
    int64_t n_tokens;
    int batch, context, rank, world;
    int64_t n_windows;   /* full windows in the split */
    int64_t next_window; /* first window of the next global batch */
} tl_eval_iter;

/* max_batches > 0 limits the pass to that many global batches; 0 means all. */
tl_status tl_eval_iter_init(tl_eval_iter *it, const tl_tokens *tokens, int batch, int context,
                            int rank, int world, int64_t max_batches);
/* Fills up to B rows of inputs and targets, each (B,T), and stores the number
 * of rows filled in *rows. Returns 0 when the pass is over, 1 otherwise. The
 * last batch can give fewer than B rows, and 0 rows on some ranks, but every
 * rank gets the same number of calls that return 1. */
int tl_eval_iter_next(tl_eval_iter *it, int32_t *inputs, int32_t *targets, int *rows);
void tl_eval_iter_reset(tl_eval_iter *it);

#ifdef __cplusplus
}
#endif
#endif
