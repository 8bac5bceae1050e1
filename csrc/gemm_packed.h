/* The recurrent product of one step, h_prev W_hh^T (forward) or dGh W_hh (backward), for a
 * few rows of batch:
 *
 *   fr_matvec_rows / fr_matvec_cols_acc   small batch: read W_hh once per step for all rows
 *                                         (hand-written twins: the _best entry points);
 *   fr_pack_panels / fr_gemm_packed       larger batch: W_hh packed once per call into
 *                                         panels, then a register-tiled micro-kernel
 *                                         (AVX-512 or 256-bit: fr_panel_width).
 *
 * Each output element is summed over k in a fixed order whatever range of rows, columns or
 * panels a thread owns, which keeps results identical across thread counts. The body is in
 * gemm_packed_impl.h, included for float and double. Cython reaches these through
 * fastrnn/_cpu/_gemm_packed.pxd.
 */
#ifndef FASTRNN_GEMM_PACKED_H
#define FASTRNN_GEMM_PACKED_H
#include <stddef.h>
#include <string.h>
#include "compiler.h"

#define FR_BODY "gemm_packed_impl.h"
#include "instantiate.h"

#include "matvec_narrow.h"

/* ---- fr_matvec_rows_f on AVX-512 ----------------------------------------------------------
 * The generic fr_matvec_rows_f, as gcc vectorises it, keeps its 32 partial sums per row in
 * registers through the k loop but spills them to the stack for the final sum, and that
 * store-and-reload stalled the stream of W: measured at B=1, H=512, the forward step read
 * W_hh at 120 GB/s where a plain streaming read of the same bytes runs at 230. This twin
 * sums in registers. Its arithmetic is fr_dot's, term for term: lanes 0-15 and 16-31 of the
 * partial sums in two 512-bit vectors, one FMA per term in k order, the tail's terms FMA'd
 * one by one into lane 0, then the same tree (lane l += lane l + w, w = 16, 8, 4, 2, 1). So
 * it gives the generic code's bits (tested against it with _force_kernels). */
#if FR_HAVE_WIDE
#include <immintrin.h>

/* fr_dot's final tree over the 32 partial sums lo (lanes 0-15) and hi (lanes 16-31). */
FR_WIDE static inline float fr_dot_tree_wide(__m512 lo, __m512 hi) {
    __m512 s16 = _mm512_add_ps(lo, hi);                                       /* w = 16 */
    return fr_dot_tree8(_mm256_add_ps(_mm512_castps512_ps256(s16),
                                      _mm512_extractf32x8_ps(s16, 1)));       /* w = 8 */
}

/* Lane 0 of lo followed by the tail terms w[k] x[k], k in [k0, K), one FMA each. */
FR_WIDE static inline __m512 fr_dot_tail_wide(__m512 lo, int k0, int K, const float *w,
                                              const float *x) {
    if (k0 == K)
        return lo;
    float t = fr_dot_tail_terms(_mm512_cvtss_f32(lo), k0, K, w, x);
    return _mm512_mask_mov_ps(lo, 1, _mm512_set1_ps(t));
}

/* y[b][r] = W[r, :K] . x[b][:K], or y[b][r] += that with accumulate (generation, whose y
 * holds the bias). */
FR_WIDE static void fr_matvec_rows_wide_f(int r0, int r1, int K, const float *W, ptrdiff_t ldw,
                                          int nb, const float *const *x, float *const *y,
                                          int accumulate) {
    const int blocks = K / 32;
    int r = r0;
    for (; r + 4 <= r1; r += 4) {   /* four rows at a time: eight FMA chains in flight */
        const float *w0 = W + (ptrdiff_t)r * ldw, *w1 = w0 + ldw, *w2 = w1 + ldw,
                    *w3 = w2 + ldw;
        for (int b = 0; b < nb; b++) {
            const float *xb = x[b];
            __m512 lo0 = _mm512_setzero_ps(), hi0 = lo0, lo1 = lo0, hi1 = lo0, lo2 = lo0,
                   hi2 = lo0, lo3 = lo0, hi3 = lo0;
            for (int i = 0; i < blocks; i++) {
                int o = i * 32;
                __m512 xl = _mm512_loadu_ps(xb + o), xh = _mm512_loadu_ps(xb + o + 16);
                lo0 = _mm512_fmadd_ps(_mm512_loadu_ps(w0 + o), xl, lo0);
                hi0 = _mm512_fmadd_ps(_mm512_loadu_ps(w0 + o + 16), xh, hi0);
                lo1 = _mm512_fmadd_ps(_mm512_loadu_ps(w1 + o), xl, lo1);
                hi1 = _mm512_fmadd_ps(_mm512_loadu_ps(w1 + o + 16), xh, hi1);
                lo2 = _mm512_fmadd_ps(_mm512_loadu_ps(w2 + o), xl, lo2);
                hi2 = _mm512_fmadd_ps(_mm512_loadu_ps(w2 + o + 16), xh, hi2);
                lo3 = _mm512_fmadd_ps(_mm512_loadu_ps(w3 + o), xl, lo3);
                hi3 = _mm512_fmadd_ps(_mm512_loadu_ps(w3 + o + 16), xh, hi3);
            }
            float d0 = fr_dot_tree_wide(fr_dot_tail_wide(lo0, blocks * 32, K, w0, xb), hi0);
            float d1 = fr_dot_tree_wide(fr_dot_tail_wide(lo1, blocks * 32, K, w1, xb), hi1);
            float d2 = fr_dot_tree_wide(fr_dot_tail_wide(lo2, blocks * 32, K, w2, xb), hi2);
            float d3 = fr_dot_tree_wide(fr_dot_tail_wide(lo3, blocks * 32, K, w3, xb), hi3);
            float *yb = y[b] + r;
            yb[0] = accumulate ? yb[0] + d0 : d0;
            yb[1] = accumulate ? yb[1] + d1 : d1;
            yb[2] = accumulate ? yb[2] + d2 : d2;
            yb[3] = accumulate ? yb[3] + d3 : d3;
        }
    }
    for (; r < r1; r++) {
        const float *w0 = W + (ptrdiff_t)r * ldw;
        for (int b = 0; b < nb; b++) {
            __m512 lo = _mm512_setzero_ps(), hi = lo;
            for (int i = 0; i < blocks; i++) {
                int o = i * 32;
                lo = _mm512_fmadd_ps(_mm512_loadu_ps(w0 + o), _mm512_loadu_ps(x[b] + o), lo);
                hi = _mm512_fmadd_ps(_mm512_loadu_ps(w0 + o + 16),
                                     _mm512_loadu_ps(x[b] + o + 16), hi);
            }
            float d0 = fr_dot_tree_wide(fr_dot_tail_wide(lo, blocks * 32, K, w0, x[b]), hi);
            y[b][r] = accumulate ? y[b][r] + d0 : d0;
        }
    }
}
#endif

/* fr_matvec_rows_wide_f where the CPU has AVX-512, else fr_matvec_rows_narrow_f where it has
 * AVX2 (returns 0); returns 1, having done nothing, where neither runs (or a test asked for
 * the generic code): the caller then uses BLAS. For generation, whose products need not
 * match the training kernels' bits. */
static inline int fr_matvec_rows_acc_simd_f(int r0, int r1, int K, const float *W,
                                            ptrdiff_t ldw, int nb, const float *const *x,
                                            float *const *y, int accumulate) {
#if FR_HAVE_WIDE
    if (fr_wide_panels()) {
        fr_matvec_rows_wide_f(r0, r1, K, W, ldw, nb, x, y, accumulate);
        return 0;
    }
#endif
#if FR_HAVE_NARROW
    if (fr_narrow_twins()) {
        fr_matvec_rows_narrow_f(r0, r1, K, W, ldw, nb, x, y, accumulate);
        return 0;
    }
#endif
    return 1;
}

/* y[b][r] = W[r, :K] . x[b][:K] in float: the AVX-512 or AVX2 twin where the CPU has one (and
 * no test asked for the generic code: fr_set_kernel_cap), else the generic code. */
static inline void fr_matvec_rows_best_f(int r0, int r1, int K, const float *W, ptrdiff_t ldw,
                                         int nb, const float *const *x, float *const *y) {
    if (fr_matvec_rows_acc_simd_f(r0, r1, K, W, ldw, nb, x, y, 0) != 0)
        fr_matvec_rows_f(r0, r1, K, W, ldw, nb, x, y);
}

/* fr_matvec_cols_acc_f's AVX-512 twin (the backward product dGh W_hh of the small-batch
 * path): the same multiply-adds in the same order (each element of y gets k's terms one FMA
 * at a time, k ascending, from its value on entry). A block of JV vectors of 16 columns at a
 * time, for NB rows of y at once, each kept in a register across all k and stored once: W's
 * rows are read once per block of columns. (Storing y every four k, as the generic code
 * does, made the next loads of W wait on the store whenever their addresses matched in the
 * low 12 bits, 4K aliasing, which depends on where dh and W_hh happen to lie: whole
 * backward loops ran 5-10x slower in some processes, at B = 2-8, H = 128-512.) */
#if FR_HAVE_WIDE
/* Columns [j, j + 16 JV) of NB rows of y, over all k; m masks each vector's columns (all 16,
 * or the last few columns of the range, which come one vector at a time: JV = 1). */
FR_WIDE static inline __attribute__((always_inline)) void fr_cols_block_wide_f(
        const int NB, const int JV, int j, __mmask16 m, int K, const float *W, ptrdiff_t ldw,
        const float *const *d, float *const *y) {
    __m512 acc[8][8];
    for (int b = 0; b < NB; b++)
        for (int v = 0; v < JV; v++)
            acc[b][v] = _mm512_maskz_loadu_ps(m, y[b] + j + 16 * v);
    const float *w = W + j;
    for (int k = 0; k < K; k++, w += ldw) {
        __m512 wk[8];
        for (int v = 0; v < JV; v++)
            wk[v] = _mm512_maskz_loadu_ps(m, w + 16 * v);
        for (int b = 0; b < NB; b++) {
            const __m512 a = _mm512_set1_ps(d[b][k]);
            for (int v = 0; v < JV; v++)
                acc[b][v] = _mm512_fmadd_ps(a, wk[v], acc[b][v]);
        }
    }
    for (int b = 0; b < NB; b++)
        for (int v = 0; v < JV; v++)
            _mm512_mask_storeu_ps(y[b] + j + 16 * v, m, acc[b][v]);
}

/* All columns [j0, j1) of NB rows: whole blocks of JV vectors (NB * JV accumulators fit the
 * registers), then the rest a vector at a time, the last one masked. */
FR_WIDE static inline __attribute__((always_inline)) void fr_cols_rows_wide_f(
        const int NB, const int JV, int j0, int j1, int K, const float *W, ptrdiff_t ldw,
        const float *const *d, float *const *y) {
    int j = j0;
    for (; j + 16 * JV <= j1; j += 16 * JV)
        fr_cols_block_wide_f(NB, JV, j, (__mmask16)0xFFFF, K, W, ldw, d, y);
    for (; j < j1; j += 16)
        fr_cols_block_wide_f(NB, 1, j, j1 - j >= 16 ? (__mmask16)0xFFFF
                                                    : (__mmask16)((1u << (j1 - j)) - 1u),
                             K, W, ldw, d, y);
}

FR_WIDE static void fr_matvec_cols_acc_wide_f(int j0, int j1, int K, const float *W,
                                              ptrdiff_t ldw, int nb, const float *const *d,
                                              float *const *y) {
    for (int b0 = 0; b0 < nb; b0 += 8) {   /* rows in groups of up to 8 */
        const float *const *db = d + b0;
        float *const *yb = y + b0;
        switch (nb - b0 < 8 ? nb - b0 : 8) {   /* constant sizes: acc stays in registers */
            case 8: fr_cols_rows_wide_f(8, 3, j0, j1, K, W, ldw, db, yb); break;
            case 7: fr_cols_rows_wide_f(7, 3, j0, j1, K, W, ldw, db, yb); break;
            case 6: fr_cols_rows_wide_f(6, 4, j0, j1, K, W, ldw, db, yb); break;
            case 5: fr_cols_rows_wide_f(5, 4, j0, j1, K, W, ldw, db, yb); break;
            case 4: fr_cols_rows_wide_f(4, 5, j0, j1, K, W, ldw, db, yb); break;
            case 3: fr_cols_rows_wide_f(3, 6, j0, j1, K, W, ldw, db, yb); break;
            case 2: fr_cols_rows_wide_f(2, 8, j0, j1, K, W, ldw, db, yb); break;
            default: fr_cols_rows_wide_f(1, 8, j0, j1, K, W, ldw, db, yb); break;
        }
    }
}
#endif

/* y[b][j] += sum_k d[b][k] W[k, j] in float: the AVX-512 twin where the CPU has it (see
 * fr_matvec_rows_best_f), else the generic code. */
static inline void fr_matvec_cols_acc_best_f(int j0, int j1, int K, const float *W,
                                             ptrdiff_t ldw, int nb, const float *const *d,
                                             float *const *y) {
#if FR_HAVE_WIDE
    if (fr_wide_panels()) {
        fr_matvec_cols_acc_wide_f(j0, j1, K, W, ldw, nb, d, y);
        return;
    }
#endif
    fr_matvec_cols_acc_f(j0, j1, K, W, ldw, nb, d, y);
}

#endif
