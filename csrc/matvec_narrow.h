/* The AVX2 twin (FR_NARROW) of the small-batch forward product in float, fr_matvec_rows_f,
 * for CPUs without AVX-512.
 *
 * Why: gcc's own vectorisation of the generic code (gemm_packed_impl.h) keeps fr_dot4's
 * 4 x 32 partial sums in sixteen 256-bit registers, all there are, so it spills them.
 * Measured on a Zen 3 core (/tmp harness, W 2048 x 512, the B = 1 LSTM's W_hh): 129 us per
 * product (32 GB/s of W) for the generic code, 92 us for this twin; 56 against 30 us at
 * 1024 x 256. The backward's fr_matvec_cols_acc_f has no twin here: on that core a twin
 * holding y in registers across k ran no faster than the generic code (74-79 us at 2048 x
 * 512, against 112 us without blocking k).
 *
 * The twin does the generic code's arithmetic, term for term (fr_dot's 32 lanes, its tail
 * FMA'd one by one into lane 0, its tree), so it gives the bits of the generic code's
 * x86-64-v3 clone, which is what such a CPU ran before (tested against it with
 * _force_kernels). Included by gemm_packed.h, before its AVX-512 twins (which share
 * fr_dot_tree8: every CPU with AVX-512 has AVX2, and gcc inlines the x86-64-v3 helper into
 * their x86-64-v4 code).
 */
#ifndef FASTRNN_MATVEC_NARROW_H
#define FASTRNN_MATVEC_NARROW_H
#if FR_HAVE_NARROW
#include <immintrin.h>
#include <stddef.h>

/* The last steps of fr_dot's tree (w = 4, 2, 1) over lanes 0-7 of its partial sums; the
 * AVX-512 twin's tree ends with it too (gemm_packed.h). */
FR_NARROW static inline __attribute__((always_inline)) float fr_dot_tree8(__m256 s8) {
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));                          /* w = 2 */
    __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));                      /* w = 1 */
    return _mm_cvtss_f32(s1);
}

/* fr_dot's tree over its 32 partial sums, lanes 0-7, 8-15, 16-23 and 24-31. */
FR_NARROW static inline float fr_dot_tree_narrow(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
    return fr_dot_tree8(_mm256_add_ps(_mm256_add_ps(a0, a2), _mm256_add_ps(a1, a3)));
}

/* fr_dot's tail: lane 0 of its partial sums plus the terms w[k] x[k], k in [k0, K), one FMA
 * each in k order (shared with the AVX-512 twin, like fr_dot_tree8). */
FR_INLINE float fr_dot_tail_terms(float lane0, int k0, int K, const float *w, const float *x) {
    for (int k = k0; k < K; k++)
        lane0 = __builtin_fmaf(w[k], x[k], lane0);
    return lane0;
}

/* Lanes 0-7 with the tail terms FMA'd into lane 0. */
FR_NARROW static inline __m256 fr_dot_tail_narrow(__m256 a0, int k0, int K, const float *w,
                                                  const float *x) {
    if (k0 == K)
        return a0;
    float t = fr_dot_tail_terms(_mm256_cvtss_f32(a0), k0, K, w, x);
    return _mm256_blend_ps(a0, _mm256_set1_ps(t), 1);
}

/* One block of 32 columns of rows w0 (acc p), w1 (q) and w2 (s) at offset o: each 8-column
 * slice of x is loaded once and used by three FMAs (twelve accumulators, one x register). */
#define FR_NARROW_DOT_SLICE(v)                                                       \
    do {                                                                             \
        __m256 xv = _mm256_loadu_ps(xb + o + 8 * (v));                               \
        p##v = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + o + 8 * (v)), xv, p##v);         \
        q##v = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + o + 8 * (v)), xv, q##v);         \
        s##v = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + o + 8 * (v)), xv, s##v);         \
    } while (0)

/* y[b][r] = W[r, :K] . x[b][:K], or y[b][r] += that with accumulate (generation, whose y
 * holds the bias), for rows r in [r0, r1), b < nb: three rows at a time (twelve FMA chains
 * in flight), the last one or two rows as a third row repeated (computed, not stored). */
FR_NARROW static void fr_matvec_rows_narrow_f(int r0, int r1, int K, const float *W,
                                              ptrdiff_t ldw, int nb, const float *const *x,
                                              float *const *y, int accumulate) {
    const int blocks = K / 32;
    for (int r = r0; r < r1; r += 3) {
        const int n = r1 - r < 3 ? r1 - r : 3;
        const float *w0 = W + (ptrdiff_t)r * ldw, *w1 = n > 1 ? w0 + ldw : w0,
                    *w2 = n > 2 ? w1 + ldw : w1;
        for (int b = 0; b < nb; b++) {
            const float *xb = x[b];
            __m256 p0 = _mm256_setzero_ps(), p1 = p0, p2 = p0, p3 = p0;
            __m256 q0 = p0, q1 = p0, q2 = p0, q3 = p0, s0 = p0, s1 = p0, s2 = p0, s3 = p0;
            for (int i = 0; i < blocks; i++) {
                const int o = i * 32;
                FR_NARROW_DOT_SLICE(0);
                FR_NARROW_DOT_SLICE(1);
                FR_NARROW_DOT_SLICE(2);
                FR_NARROW_DOT_SLICE(3);
            }
            const int k0 = blocks * 32;
            float d[3] = {fr_dot_tree_narrow(fr_dot_tail_narrow(p0, k0, K, w0, xb), p1, p2, p3),
                          fr_dot_tree_narrow(fr_dot_tail_narrow(q0, k0, K, w1, xb), q1, q2, q3),
                          fr_dot_tree_narrow(fr_dot_tail_narrow(s0, k0, K, w2, xb), s1, s2, s3)};
            float *yb = y[b] + r;
            for (int q = 0; q < n; q++)
                yb[q] = accumulate ? yb[q] + d[q] : d[q];
        }
    }
}
#undef FR_NARROW_DOT_SLICE

#endif
#endif
