/* bfloat16 weight storage for generation (opt-in: fastrnn.lm's generate(...,
 * weights="bfloat16")): a weight is kept as the upper 16 bits of its float32 (rounded to
 * nearest, ties to even) and widened back to float32 for a float32 multiply-add, so only the
 * weights lose precision (8 significant bits), the sums and states stay float32.
 *
 * Why: at batch 1 a generation step reads every weight once and is bound by moving them
 * from L3 (a char model's 3.1 MiB per token); half the bytes, and each core's share of a
 * model that size fits its own L2.
 */
#ifndef FASTRNN_BF16_H
#define FASTRNN_BF16_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "compiler.h"

typedef float fr_bf16_fvec __attribute__((vector_size(64)));      /* 16 floats */
typedef uint32_t fr_bf16_uvec __attribute__((vector_size(64)));   /* 16 pairs of weights */

/* float32 -> bfloat16, round to nearest even (finite inputs: the caller checks). */
static inline uint16_t fr_to_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

FR_INLINE float fr_from_bf16(uint16_t w) {
    uint32_t u = (uint32_t)w << 16;
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* Packed layout of a (rows, K) matrix for fr_matvec_bf16: groups of 16 rows; in a group,
 * for each pair of columns p (2p, 2p + 1), 16 32-bit lanes holding row r's two weights
 * (column 2p in the low half, 2p + 1 in the high half). Rows past `rows` and the column
 * past an odd K are zeros. Element count: */
static inline size_t fr_bf16_packed_size(int rows, int K) {
    return (size_t)((rows + 15) / 16) * (size_t)((K + 1) / 2) * 32;
}

/* Packs rows [0, rows) of W (row stride ldw floats), rounding each weight to bfloat16. */
static void fr_bf16_pack(int rows, int K, const float *W, ptrdiff_t ldw, uint16_t *dst) {
    int groups = (rows + 15) / 16, pairs = (K + 1) / 2;
    for (int g = 0; g < groups; g++)
        for (int p = 0; p < pairs; p++)
            for (int r = 0; r < 16; r++)
                for (int h = 0; h < 2; h++) {
                    int row = g * 16 + r, k = 2 * p + h;
                    dst[(((ptrdiff_t)g * pairs + p) * 16 + r) * 2 + h] =
                        row < rows && k < K ? fr_to_bf16(W[(ptrdiff_t)row * ldw + k]) : 0;
                }
}

/* 16 rows' weights of one column pair, widened: even column (low halves), odd (high). */
FR_INLINE void fr_bf16_widen(const uint16_t *w, fr_bf16_fvec *even, fr_bf16_fvec *odd) {
    fr_bf16_uvec u;
    memcpy(&u, w, sizeof u);
    fr_bf16_uvec ue = u << 16, uo = u & 0xffff0000u;
    memcpy(even, &ue, sizeof *even);
    memcpy(odd, &uo, sizeof *odd);
}

/* y[r] (+)= sum_k W[r, k] x[k] for r < rows, W packed by fr_bf16_pack. Each row's sum is
 * its even columns in order plus its odd columns in order (two accumulators), then added:
 * one fixed order whatever the group count. Four groups (64 rows) at a time keep eight
 * independent multiply-add chains in flight; no horizontal sums. */
FR_HOT static void fr_matvec_bf16_generic(int rows, int K, const uint16_t *restrict P,
                                          const float *restrict x, float *restrict y,
                                          int accumulate) {
    int groups = (rows + 15) / 16, pairs = (K + 1) / 2, full = K / 2;
    int g = 0;
    for (; g < groups; g += 4) {
        int n = groups - g < 4 ? groups - g : 4;
        fr_bf16_fvec e[4] = {{0}}, o[4] = {{0}};
        for (int p = 0; p < pairs; p++) {
            float x0 = x[2 * p], x1 = p < full ? x[2 * p + 1] : 0.0f;
            for (int q = 0; q < n; q++) {
                fr_bf16_fvec we, wo;
                fr_bf16_widen(P + (((ptrdiff_t)(g + q) * pairs + p) * 16) * 2, &we, &wo);
                e[q] += we * x0;
                o[q] += wo * x1;
            }
        }
        for (int q = 0; q < n; q++) {
            float s[16];
            fr_bf16_fvec t = e[q] + o[q];
            memcpy(s, &t, sizeof s);
            for (int r = 0; r < 16; r++) {
                int row = (g + q) * 16 + r;
                if (row < rows)
                    y[row] = accumulate ? y[row] + s[r] : s[r];
            }
        }
    }
}

#if FR_HAVE_NARROW
#include <immintrin.h>

/* fr_matvec_bf16_generic's AVX2 twin: the same FMAs in the same order (the generic code's
 * 512-bit vectors in halves), two groups (32 rows, eight accumulators) at a time, where
 * gcc's own splitting of the generic code kept its accumulators on the stack. A 1024 x 256
 * block on a Zen 3 core (/tmp harness): 188 us for the generic code (2.8 GB/s of weights),
 * 14 us for this twin. */
FR_NARROW static void fr_matvec_bf16_narrow(int rows, int K, const uint16_t *restrict P,
                                            const float *restrict x, float *restrict y,
                                            int accumulate) {
    const int groups = (rows + 15) / 16, pairs = (K + 1) / 2, full = K / 2;
    const __m256i high = _mm256_set1_epi32((int)0xffff0000u);
    for (int g = 0; g < groups; g += 2) {
        const int n = groups - g < 2 ? 1 : 2;
        __m256 e[2][2], o[2][2];   /* [group][rows 0-7, 8-15] */
        for (int q = 0; q < 2; q++)
            for (int h = 0; h < 2; h++)
                e[q][h] = o[q][h] = _mm256_setzero_ps();
        for (int p = 0; p < pairs; p++) {
            const __m256 x0 = _mm256_set1_ps(x[2 * p]),
                         x1 = _mm256_set1_ps(p < full ? x[2 * p + 1] : 0.0f);
            for (int q = 0; q < n; q++) {
                const uint16_t *w = P + (((ptrdiff_t)(g + q) * pairs + p) * 16) * 2;
                for (int h = 0; h < 2; h++) {
                    __m256i u = _mm256_loadu_si256((const __m256i *)(w + 16 * h));
                    __m256 we = _mm256_castsi256_ps(_mm256_slli_epi32(u, 16)),
                           wo = _mm256_castsi256_ps(_mm256_and_si256(u, high));
                    e[q][h] = _mm256_fmadd_ps(we, x0, e[q][h]);
                    o[q][h] = _mm256_fmadd_ps(wo, x1, o[q][h]);
                }
            }
        }
        for (int q = 0; q < n; q++)
            for (int h = 0; h < 2; h++) {
                float s[8];
                _mm256_storeu_ps(s, _mm256_add_ps(e[q][h], o[q][h]));
                for (int r = 0; r < 8; r++) {
                    int row = (g + q) * 16 + 8 * h + r;
                    if (row < rows)
                        y[row] = accumulate ? y[row] + s[r] : s[r];
                }
            }
    }
}
#endif

/* y[r] (+)= sum_k W[r, k] x[k]: the AVX2 twin where the CPU has AVX2 but not AVX-512 (or a
 * test asked for the narrow kernels: fr_set_kernel_cap), else the generic code, whose
 * AVX-512 clone keeps its accumulators in registers. */
static inline void fr_matvec_bf16(int rows, int K, const uint16_t *P, const float *x, float *y,
                                  int accumulate) {
#if FR_HAVE_NARROW
    if (fr_narrow_twins()) {
        fr_matvec_bf16_narrow(rows, K, P, x, y, accumulate);
        return;
    }
#endif
    fr_matvec_bf16_generic(rows, K, P, x, y, accumulate);
}

/* dst[i] = bfloat16 of src[i], i < n. */
static inline void fr_to_bf16_array(ptrdiff_t n, const float *src, uint16_t *dst) {
    for (ptrdiff_t i = 0; i < n; i++)
        dst[i] = fr_to_bf16(src[i]);
}

#endif
