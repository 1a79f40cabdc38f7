/* Declarations shared by the data layer's source files; not installed. */
#ifndef THINKLAB_DATA_INTERNAL_H
#define THINKLAB_DATA_INTERNAL_H

#include <stdbool.h>

#include "thinklab/data.h"

/* Open-addressing map from a pair of token ids to an int32 value. */
typedef struct tl_pair_map {
    uint64_t *keys; /* left << 32 | right, or TL_PAIR_EMPTY */
    int32_t *values;
    size_t capacity; /* power of two */
    size_t count;
} tl_pair_map;

#define TL_PAIR_EMPTY UINT64_MAX

static inline uint64_t tl_pair_key(int32_t left, int32_t right)
{
    return ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
}

bool tl_pair_map_init(tl_pair_map *map, size_t expected);
void tl_pair_map_free(tl_pair_map *map);
/* Returns the value stored for key, or -1. */
int32_t tl_pair_map_get(const tl_pair_map *map, uint64_t key);
/* Stores value for key, replacing any earlier value. Returns false when out of
 * memory. */
bool tl_pair_map_put(tl_pair_map *map, uint64_t key, int32_t value);

struct tl_tokenizer {
    tl_tokenizer_kind kind;
    int vocab_size;

    /* char: symbols[id] is the byte of id; byte_to_id[b] is -1 outside the
     * vocabulary. */
    uint8_t symbols[256];
    int16_t byte_to_id[256];

    /* bpe: merge r joins merges[2r] and merges[2r+1] into id 256 + r, and
     * ranks maps (left, right) to r. Token id decodes to
     * expansion[offsets[id] .. offsets[id+1]). */
    int n_merges;
    int32_t *merges;
    tl_pair_map ranks;
    char *expansion;
    int64_t *offsets;
};

/* Allocates a BPE tokenizer from merges[0..2*n_merges) (copied), checking that
 * each merge joins ids defined before it and that no pair repeats. */
tl_tokenizer *tl_bpe_from_merges(const int32_t *merges, int n_merges);
tl_status tl_bpe_encode(const tl_tokenizer *tok, const char *text, size_t len, tl_tokens *out);

/* Reads the file at path into a NUL-terminated heap buffer and stores its
 * length in *len. file_kind names the file in messages ("tokenizer file"). */
char *tl_read_whole_file(const char *path, const char *file_kind, size_t *len);

/* Writes a printable form of byte c, such as 'a', '\n' or '\xc3', into buf
 * (at least 8 bytes) and returns buf. */
const char *tl_byte_repr(unsigned char c, char *buf);

#endif
