/* The random number generator: xoshiro256** with an explicit state.
 *
 * Nothing in thinklab calls rand() or seeds from the clock: every random draw
 * takes a tl_rng, and checkpoints save and restore its four words. */
#ifndef THINKLAB_RNG_H
#define THINKLAB_RNG_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tl_rng {
    uint64_t s[4];
} tl_rng;

/* Expands seed into the state with splitmix64, as the xoshiro authors advise. */
void tl_rng_seed(tl_rng *rng, uint64_t seed);
uint64_t tl_rng_u64(tl_rng *rng);
/* Uniform in [0, 1) with 24 random bits. */
float tl_rng_uniform(tl_rng *rng);
/* Uniform integer in [0, n), without modulo bias. n must be positive. */
uint64_t tl_rng_below(tl_rng *rng, uint64_t n);
/* Standard normal by Box-Muller; keeps no cached second value, so the state is
 * only the four words. */
float tl_rng_normal(tl_rng *rng);

#ifdef __cplusplus
}
#endif
#endif
