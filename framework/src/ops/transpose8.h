/* An 8 x 8 float transpose through vector registers, for the copies that
 * turn rows into columns: attention's keys and values, and the transposed
 * right operands of gemm.c. */
#ifndef THINKLAB_OPS_TRANSPOSE8_H
#define THINKLAB_OPS_TRANSPOSE8_H

#include <stdint.h>
#include <string.h>

/* Eight floats, and the lane indices of a two-vector shuffle. GCC keeps both
 * in registers in every target version of the functions that inline this. */
typedef float tl_v8 __attribute__((vector_size(32)));
typedef int32_t tl_v8i __attribute__((vector_size(32)));

/* Transposes the 8 x 8 block at src (leading dimension ld) into dst (leading
 * dimension ldd) in three rounds of shuffles: pairs of rows, then pairs of
 * pairs within each 128-bit half, then the halves. */
__attribute__((always_inline)) static inline void tl_transpose8(float *dst, int64_t ldd,
                                                               const float *src, int64_t ld)
{
    tl_v8 r[8], t[8], u[8];
    for (int i = 0; i < 8; i++)
        memcpy(&r[i], src + i * ld, sizeof r[i]);
    const tl_v8i lo = {0, 8, 1, 9, 4, 12, 5, 13}, hi = {2, 10, 3, 11, 6, 14, 7, 15};
    const tl_v8i even = {0, 1, 8, 9, 4, 5, 12, 13}, odd = {2, 3, 10, 11, 6, 7, 14, 15};
    const tl_v8i first = {0, 1, 2, 3, 8, 9, 10, 11}, second = {4, 5, 6, 7, 12, 13, 14, 15};
    for (int i = 0; i < 8; i += 2) { /* t[i] = (r[i][0], r[i+1][0], r[i][1], r[i+1][1], ...) */
        t[i] = __builtin_shuffle(r[i], r[i + 1], lo);
        t[i + 1] = __builtin_shuffle(r[i], r[i + 1], hi);
    }
    for (int i = 0; i < 8; i += 4) { /* u[i + c]: columns c and c + 4 of rows i..i+3 */
        u[i] = __builtin_shuffle(t[i], t[i + 2], even);
        u[i + 1] = __builtin_shuffle(t[i], t[i + 2], odd);
        u[i + 2] = __builtin_shuffle(t[i + 1], t[i + 3], even);
        u[i + 3] = __builtin_shuffle(t[i + 1], t[i + 3], odd);
    }
    for (int c = 0; c < 4; c++) {
        tl_v8 col = __builtin_shuffle(u[c], u[c + 4], first);
        tl_v8 col4 = __builtin_shuffle(u[c], u[c + 4], second);
        memcpy(dst + c * ldd, &col, sizeof col);
        memcpy(dst + (c + 4) * ldd, &col4, sizeof col4);
    }
}

#endif
