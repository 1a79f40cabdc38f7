/* xoshiro256** 1.0 (Blackman and Vigna, 2018), seeded through splitmix64. */
#include <math.h>

#include "thinklab/rng.h"

static uint64_t tl_splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void tl_rng_seed(tl_rng *rng, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        rng->s[i] = tl_splitmix64(&seed);
}

static inline uint64_t tl_rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t tl_rng_u64(tl_rng *rng)
{
    uint64_t *s = rng->s;
    uint64_t result = tl_rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = tl_rotl(s[3], 45);
    return result;
}

float tl_rng_uniform(tl_rng *rng) { return (float)(tl_rng_u64(rng) >> 40) * (1.0f / 16777216.0f); }

uint64_t tl_rng_below(tl_rng *rng, uint64_t n)
{
    /* Rejection sampling: drop draws from the incomplete last block of size n. */
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do
        x = tl_rng_u64(rng);
    while (x >= limit);
    return x % n;
}

float tl_rng_normal(tl_rng *rng)
{
    /* u1 in (0, 1] keeps log() finite. */
    double u1 = ((double)(tl_rng_u64(rng) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
    double u2 = (double)(tl_rng_u64(rng) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}
