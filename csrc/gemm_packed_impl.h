/* Body of gemm_packed.h, included once per element type FR_REAL (suffix FR_SFX: f or d).
 * No include guard on purpose.
 *
 * Sizes (K, N, M, row and panel indices) are int: every one is at most G*H or the batch,
 * which the entry points check to fit an int. Leading dimensions and offsets are ptrdiff_t. */
#define REAL FR_REAL
#define FN(name) FR_CAT(name, FR_SFX)

/* ---- small-batch matrix-vector products -------------------------------------------------
 * With a few rows of batch, BLAS GEMM spends its time packing W_hh on every step; these
 * read W_hh once per step instead, for all rows of the batch. Each output element is
 * computed by the same code whatever range of outputs a thread owns, so the results do not
 * depend on how the columns are split across threads. */

#define FR_LANES 32

/* An empty asm that takes v in and out of a register: the loop it is in is not vectorised
 * (gcc does not vectorise across asm), at no cost in the scalar code. */
#if defined(__GNUC__) && defined(__x86_64__)
#define FR_SCALAR_STEP(v) __asm__("" : "+x"(v))
#else
#define FR_SCALAR_STEP(v) ((void)0)
#endif

/* a . b with FR_LANES independent partial sums (vectorised, and off the FMA latency
 * chain), summed in a fixed order. The loops are written so that gcc vectorises them even
 * under -fwrapv (in Python's CFLAGS), which defeats its analysis of `k + LANES <= K`.
 * The last, partial block is summed into lane 0, one scalar multiply-add per term:
 * FR_SCALAR_STEP keeps gcc from vectorising that reduction, which it does on AVX-512 as an
 * in-order sum of rounded products (no FMA), so that the v4 clone gives the v3 clone's bits. */
FR_INLINE REAL FN(fr_dot)(int K, const REAL *restrict a, const REAL *restrict b) {
    REAL acc[FR_LANES] = {0};
    int blocks = K / FR_LANES;   /* a block count, not k + LANES <= K: see below */
    for (int i = 0; i < blocks; i++) {
        const REAL *restrict ai = a + i * FR_LANES, *restrict bi = b + i * FR_LANES;
        for (int l = 0; l < FR_LANES; l++)
            acc[l] += ai[l] * bi[l];
    }
    REAL tail = acc[0];
    for (int k = blocks * FR_LANES; k < K; k++) {
        tail += a[k] * b[k];
        FR_SCALAR_STEP(tail);
    }
    acc[0] = tail;
    for (int w = FR_LANES / 2; w > 0; w /= 2)
        for (int l = 0; l < w; l++)
            acc[l] += acc[l + w];
    return acc[0];
}

/* fr_dot of four rows of W with the same b: each row's partial sums are fr_dot's, formed in
 * the same order (so the same bits); interleaving four rows keeps four times as many
 * independent FMAs in flight (with 512-bit vectors one row has only two chains). */
FR_INLINE void FN(fr_dot4)(int K, const REAL *restrict a0, const REAL *restrict a1,
                           const REAL *restrict a2, const REAL *restrict a3,
                           const REAL *restrict b, REAL *restrict out) {
    REAL acc0[FR_LANES] = {0}, acc1[FR_LANES] = {0}, acc2[FR_LANES] = {0}, acc3[FR_LANES] = {0};
    int blocks = K / FR_LANES;
    for (int i = 0; i < blocks; i++) {
        int o = i * FR_LANES;
        for (int l = 0; l < FR_LANES; l++) {
            acc0[l] += a0[o + l] * b[o + l];
            acc1[l] += a1[o + l] * b[o + l];
            acc2[l] += a2[o + l] * b[o + l];
            acc3[l] += a3[o + l] * b[o + l];
        }
    }
    REAL t0 = acc0[0], t1 = acc1[0], t2 = acc2[0], t3 = acc3[0];
    for (int k = blocks * FR_LANES; k < K; k++) {   /* as in fr_dot */
        t0 += a0[k] * b[k];
        t1 += a1[k] * b[k];
        t2 += a2[k] * b[k];
        t3 += a3[k] * b[k];
        FR_SCALAR_STEP(t0);
        FR_SCALAR_STEP(t1);
        FR_SCALAR_STEP(t2);
        FR_SCALAR_STEP(t3);
    }
    acc0[0] = t0;
    acc1[0] = t1;
    acc2[0] = t2;
    acc3[0] = t3;
    for (int w = FR_LANES / 2; w > 0; w /= 2)
        for (int l = 0; l < w; l++) {
            acc0[l] += acc0[l + w];
            acc1[l] += acc1[l + w];
            acc2[l] += acc2[l + w];
            acc3[l] += acc3[l + w];
        }
    out[0] = acc0[0];
    out[1] = acc1[0];
    out[2] = acc2[0];
    out[3] = acc3[0];
}

/* y[b][r] = W[r, :K] . x[b][:K] for rows r in [r0, r1) of W (row stride ldw), b < nb. */
FR_HOT static void FN(fr_matvec_rows)(int r0, int r1, int K, const REAL *W, ptrdiff_t ldw, int nb,
                                      const REAL *const *x, REAL *const *y) {
    int r = r0;
    for (; r + 4 <= r1; r += 4) {
        const REAL *w = W + (ptrdiff_t)r * ldw;
        for (int b = 0; b < nb; b++) {
            REAL out[4];
            FN(fr_dot4)(K, w, w + ldw, w + 2 * ldw, w + 3 * ldw, x[b], out);
            for (int q = 0; q < 4; q++)
                y[b][r + q] = out[q];
        }
    }
    for (; r < r1; r++)
        for (int b = 0; b < nb; b++)
            y[b][r] = FN(fr_dot)(K, W + (ptrdiff_t)r * ldw, x[b]);
}

FR_INLINE void FN(fr_axpy)(int j0, int j1, REAL a, const REAL *restrict x,
                               REAL *restrict y) {
    for (int j = j0; j < j1; j++)
        y[j] += a * x[j];
}

/* fr_axpy of four rows of W in a row: y[j] += a0 x0[j], then a1 x1[j], ..., each term its own
 * multiply-add as in four fr_axpy calls (the same bits), with y[j] loaded and stored once. */
FR_INLINE void FN(fr_axpy4)(int j0, int j1, REAL a0, REAL a1, REAL a2, REAL a3,
                            const REAL *restrict x0, const REAL *restrict x1,
                            const REAL *restrict x2, const REAL *restrict x3,
                            REAL *restrict y) {
    for (int j = j0; j < j1; j++) {
        REAL v = y[j];
        v += a0 * x0[j];
        v += a1 * x1[j];
        v += a2 * x2[j];
        v += a3 * x3[j];
        y[j] = v;
    }
}

/* y[b][j] += sum_k d[b][k] W[k, j] for columns j in [j0, j1), k < K, b < nb: the
 * transposed product, accumulated over k in order for every element. */
FR_HOT static void FN(fr_matvec_cols_acc)(int j0, int j1, int K, const REAL *W, ptrdiff_t ldw,
                                          int nb, const REAL *const *d, REAL *const *y) {
    int k = 0;
    for (; k + 4 <= K; k += 4) {
        const REAL *w = W + (ptrdiff_t)k * ldw;
        for (int b = 0; b < nb; b++)
            FN(fr_axpy4)(j0, j1, d[b][k], d[b][k + 1], d[b][k + 2], d[b][k + 3], w, w + ldw,
                         w + 2 * ldw, w + 3 * ldw, y[b]);
    }
    for (; k < K; k++)
        for (int b = 0; b < nb; b++)
            FN(fr_axpy)(j0, j1, d[b][k], W + (ptrdiff_t)k * ldw, y[b]);
}

/* ---- the per-step recurrent GEMM on pre-packed weights ----------------------------------
 * C (M x N) = A (M x K) B (K x N) [+ C], with B = W_hh or its transpose packed once per
 * sequence into panels of NR columns (K x NR each, contiguous, zero-padded). BLAS would
 * re-pack all of W_hh on every step of every thread (a fifth of the time of a training
 * step); here each step only streams the packed panels. Two micro-kernels, each a copy of
 * gemm_panels_impl.h: "narrow" (256-bit vectors, NR = 16 floats, tiles of up to 6 rows in 12
 * registers; the FR_HOT clones) and "wide" (AVX-512, NR = 32 floats, tiles of up to 8 rows
 * in 16 of its 32 registers), used when the CPU has AVX-512 (compiler.h). Both sum every
 * element over k in order with one FMA per term, so they give the same bits, and results
 * do not depend on how rows or panels are split across threads.
 *
 * The caller asks fr_panel_width once per call and passes it to fr_pack_panels and
 * fr_gemm_packed: the panel layout is the width's, and a call uses one width throughout. */

#define FR_PANEL_KIND narrow
#define FR_PANEL_BYTES 32
#define FR_PANEL_MR 6
#define FR_PANEL_TARGET FR_HOT
#include "gemm_panels_impl.h"

#if FR_HAVE_WIDE
#define FR_PANEL_KIND wide
#define FR_PANEL_BYTES 64
#define FR_PANEL_MR 8
#define FR_PANEL_TARGET FR_WIDE
#include "gemm_panels_impl.h"
#endif

#define FR_NARROW_NR ((int)(2 * 32 / sizeof(REAL)))
#define FR_WIDE_NR ((int)(2 * 64 / sizeof(REAL)))

/* Calls NAME_wide_SFX ARGS when the panel width nr is the wide kernel's, else
 * NAME_narrow_SFX ARGS: the one dispatch of the entry points below. */
#if FR_HAVE_WIDE
#define FR_BY_WIDTH(nr, name, args) \
    ((nr) == FR_WIDE_NR ? FR_CAT(FR_CAT(name, wide), FR_SFX) args \
                        : FR_CAT(FR_CAT(name, narrow), FR_SFX) args)
#else
#define FR_BY_WIDTH(nr, name, args) FR_CAT(FR_CAT(name, narrow), FR_SFX) args
#endif

/* Columns per packed panel for this process: the wide kernel's where the CPU has AVX-512
 * (unless a test turned it off: fr_set_narrow_panels), else the narrow one's. */
static inline int FN(fr_panel_width)(void) {
    return fr_wide_panels() ? FR_WIDE_NR : FR_NARROW_NR;
}

/* Panels [p0, p1) of Bp <- B(k, n) = trans ? W[n * ldw + k] : W[k * ldw + n], k < K, n < N,
 * in panels of nr (from fr_panel_width) columns. */
static void FN(fr_pack_panels)(int nr, int K, int N, int p0, int p1, const REAL *W,
                               ptrdiff_t ldw, int trans, REAL *Bp) {
    FR_BY_WIDTH(nr, fr_pack_panels, (K, N, p0, p1, W, ldw, trans, Bp));
}

/* Columns [p0 * nr, min(p1 * nr, N)) of C (+)= A B for all M rows, on panels packed by
 * fr_pack_panels with the same nr. */
static void FN(fr_gemm_packed)(int nr, int M, int N, int K, int p0, int p1, const REAL *A,
                               ptrdiff_t lda, const REAL *Bp, REAL *C, ptrdiff_t ldc,
                               int accumulate) {
    FR_BY_WIDTH(nr, fr_gemm_packed, (M, N, K, p0, p1, A, lda, Bp, C, ldc, accumulate));
}

/* C = A B + bias over panels [p0, p1) (see fr_gemm_packed_bias_*). */
static void FN(fr_gemm_packed_bias)(int nr, int M, int N, int K, int p0, int p1, const REAL *A,
                                    ptrdiff_t lda, const REAL *Bp, REAL *C, ptrdiff_t ldc,
                                    const REAL *bias) {
    FR_BY_WIDTH(nr, fr_gemm_packed_bias, (M, N, K, p0, p1, A, lda, Bp, C, ldc, bias));
}

/* fr_gemm_packed with a transposed A: A[i, k] = At[k * ldat + i] (see gemm.h). */
static void FN(fr_gemm_packed_at)(int nr, int M, int N, int K, int p0, int p1, const REAL *At,
                                  ptrdiff_t ldat, const REAL *Bp, REAL *C, ptrdiff_t ldc,
                                  int accumulate) {
    FR_BY_WIDTH(nr, fr_gemm_packed_at, (M, N, K, p0, p1, At, ldat, Bp, C, ldc, accumulate));
}

#undef FR_BY_WIDTH
#undef FR_NARROW_NR
#undef FR_WIDE_NR

#undef REAL
#undef FN
