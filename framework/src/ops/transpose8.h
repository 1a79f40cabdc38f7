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
 * pairs within each 128-bit half, then the halves. Named vectors, not
 * arrays: GCC kept arrays of vectors on the stack, filled each row with two
 * 16-byte stores and read it back with one 32-byte load, which the CPU
 * cannot forward from the stores. Packing a transposed 128 x 512 operand
 * for gemm.c took 22.4 us that way and 7.5 us this way, on the AMD Zen 3
 * host of framework/bench/BENCHMARKS.md. */
__attribute__((always_inline)) static inline void tl_transpose8(float *dst, int64_t ldd,
                                                               const float *src, int64_t ld)
{
    const tl_v8i lo = {0, 8, 1, 9, 4, 12, 5, 13}, hi = {2, 10, 3, 11, 6, 14, 7, 15};
    const tl_v8i even = {0, 1, 8, 9, 4, 5, 12, 13}, odd = {2, 3, 10, 11, 6, 7, 14, 15};
    const tl_v8i first = {0, 1, 2, 3, 8, 9, 10, 11}, second = {4, 5, 6, 7, 12, 13, 14, 15};
    tl_v8 r0, r1, r2, r3, r4, r5, r6, r7;
    memcpy(&r0, src, sizeof r0);
    memcpy(&r1, src + ld, sizeof r1);
    memcpy(&r2, src + 2 * ld, sizeof r2);
    memcpy(&r3, src + 3 * ld, sizeof r3);
    memcpy(&r4, src + 4 * ld, sizeof r4);
    memcpy(&r5, src + 5 * ld, sizeof r5);
    memcpy(&r6, src + 6 * ld, sizeof r6);
    memcpy(&r7, src + 7 * ld, sizeof r7);
    /* t0 interleaves elements 0, 1, 4, 5 of r0 and r1, and t1 elements 2, 3,
     * 6, 7. The other pairs of rows are the same. */
    tl_v8 t0 = __builtin_shuffle(r0, r1, lo), t1 = __builtin_shuffle(r0, r1, hi);
    tl_v8 t2 = __builtin_shuffle(r2, r3, lo), t3 = __builtin_shuffle(r2, r3, hi);
    tl_v8 t4 = __builtin_shuffle(r4, r5, lo), t5 = __builtin_shuffle(r4, r5, hi);
    tl_v8 t6 = __builtin_shuffle(r6, r7, lo), t7 = __builtin_shuffle(r6, r7, hi);
    /* uC is columns C and C + 4 of rows 0-3, and uC+4 those of rows 4-7. */
    tl_v8 u0 = __builtin_shuffle(t0, t2, even), u1 = __builtin_shuffle(t0, t2, odd);
    tl_v8 u2 = __builtin_shuffle(t1, t3, even), u3 = __builtin_shuffle(t1, t3, odd);
    tl_v8 u4 = __builtin_shuffle(t4, t6, even), u5 = __builtin_shuffle(t4, t6, odd);
    tl_v8 u6 = __builtin_shuffle(t5, t7, even), u7 = __builtin_shuffle(t5, t7, odd);
    tl_v8 c0 = __builtin_shuffle(u0, u4, first), c4 = __builtin_shuffle(u0, u4, second);
    tl_v8 c1 = __builtin_shuffle(u1, u5, first), c5 = __builtin_shuffle(u1, u5, second);
    tl_v8 c2 = __builtin_shuffle(u2, u6, first), c6 = __builtin_shuffle(u2, u6, second);
    tl_v8 c3 = __builtin_shuffle(u3, u7, first), c7 = __builtin_shuffle(u3, u7, second);
    memcpy(dst, &c0, sizeof c0);
    memcpy(dst + ldd, &c1, sizeof c1);
    memcpy(dst + 2 * ldd, &c2, sizeof c2);
    memcpy(dst + 3 * ldd, &c3, sizeof c3);
    memcpy(dst + 4 * ldd, &c4, sizeof c4);
    memcpy(dst + 5 * ldd, &c5, sizeof c5);
    memcpy(dst + 6 * ldd, &c6, sizeof c6);
    memcpy(dst + 7 * ldd, &c7, sizeof c7);
}

#endif
