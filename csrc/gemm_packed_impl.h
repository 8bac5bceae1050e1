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

/* a . b with FR_LANES independent partial sums (vectorised, and off the FMA latency
 * chain), summed in a fixed order. The loops are written so that gcc vectorises them even
 * under -fwrapv (in Python's CFLAGS), which defeats its analysis of `k + LANES <= K`. */
FR_INLINE REAL FN(fr_dot)(int K, const REAL *restrict a, const REAL *restrict b) {
    REAL acc[FR_LANES] = {0};
    int blocks = K / FR_LANES;   /* a block count, not k + LANES <= K: see below */
    for (int i = 0; i < blocks; i++) {
        const REAL *restrict ai = a + i * FR_LANES, *restrict bi = b + i * FR_LANES;
        for (int l = 0; l < FR_LANES; l++)
            acc[l] += ai[l] * bi[l];
    }
    for (int k = blocks * FR_LANES; k < K; k++)
        acc[0] += a[k] * b[k];
    for (int w = FR_LANES / 2; w > 0; w /= 2)
        for (int l = 0; l < w; l++)
            acc[l] += acc[l + w];
    return acc[0];
}

/* y[b][r] = W[r, :K] . x[b][:K] for rows r in [r0, r1) of W (row stride ldw), b < nb. */
FR_HOT static void FN(fr_matvec_rows)(int r0, int r1, int K, const REAL *W, ptrdiff_t ldw, int nb,
                                      const REAL *const *x, REAL *const *y) {
    for (int r = r0; r < r1; r++)
        for (int b = 0; b < nb; b++)
            y[b][r] = FN(fr_dot)(K, W + (ptrdiff_t)r * ldw, x[b]);
}

FR_INLINE void FN(fr_axpy)(int j0, int j1, REAL a, const REAL *restrict x,
                               REAL *restrict y) {
    for (int j = j0; j < j1; j++)
        y[j] += a * x[j];
}

/* y[b][j] += sum_k d[b][k] W[k, j] for columns j in [j0, j1), k < K, b < nb: the
 * transposed product, accumulated over k in order for every element. */
FR_HOT static void FN(fr_matvec_cols_acc)(int j0, int j1, int K, const REAL *W, ptrdiff_t ldw,
                                          int nb, const REAL *const *d, REAL *const *y) {
    for (int k = 0; k < K; k++)
        for (int b = 0; b < nb; b++)
            FN(fr_axpy)(j0, j1, d[b][k], W + (ptrdiff_t)k * ldw, y[b]);
}

/* ---- the per-step recurrent GEMM on pre-packed weights ----------------------------------
 * C (M x N) = A (M x K) B (K x N) [+ C], with B = W_hh or its transpose packed once per
 * sequence into panels of FR_NR(REAL) columns (K x NR each, contiguous, zero-padded). BLAS
 * would re-pack all of W_hh on every step of every thread (a fifth of the time of a
 * training step); here each step only streams the packed panels. The micro-kernel keeps a
 * 6 x NR tile of C in 12 vector registers; each element is summed over k in order, so
 * results do not depend on how rows or panels are split across threads. */

typedef REAL FN(fr_vec) __attribute__((vector_size(32)));
#define VEC FN(fr_vec)
#define NV ((int)(32 / sizeof(REAL)))
#define NR (2 * NV)
#define MR 6

/* Panels [p0, p1) of Bp <- B(k, n) = trans ? W[n * ldw + k] : W[k * ldw + n], k < K, n < N. */
FR_HOT static void FN(fr_pack_panels)(int K, int N, int p0, int p1, const REAL *W, ptrdiff_t ldw,
                                      int trans, REAL *Bp) {
    for (int p = p0; p < p1; p++) {
        REAL *dst = Bp + (ptrdiff_t)p * K * NR;
        for (int k = 0; k < K; k++)
            for (int c = 0; c < NR; c++) {
                int n = p * NR + c;
                dst[(ptrdiff_t)k * NR + c] = n >= N ? 0
                    : trans ? W[(ptrdiff_t)n * ldw + k] : W[(ptrdiff_t)k * ldw + n];
            }
    }
}

FR_INLINE void FN(fr_tile)(int mr, int K, const REAL *A, ptrdiff_t lda, const REAL *panel,
                           REAL *C, ptrdiff_t ldc, int nc, int accumulate) {
    VEC acc[MR][2];
    for (int i = 0; i < mr; i++)
        acc[i][0] = acc[i][1] = (VEC){0};
    for (int k = 0; k < K; k++) {
        VEC b0, b1;
        memcpy(&b0, panel + (ptrdiff_t)k * NR, sizeof b0);
        memcpy(&b1, panel + (ptrdiff_t)k * NR + NV, sizeof b1);
        for (int i = 0; i < mr; i++) {
            REAL a = A[(ptrdiff_t)i * lda + k];
            acc[i][0] += a * b0;
            acc[i][1] += a * b1;
        }
    }
    for (int i = 0; i < mr; i++) {
        REAL *c = C + (ptrdiff_t)i * ldc;
        REAL out[NR];
        memcpy(out, &acc[i][0], sizeof acc[i][0]);
        memcpy(out + NV, &acc[i][1], sizeof acc[i][1]);
        if (accumulate)
            for (int j = 0; j < nc; j++) c[j] += out[j];
        else
            for (int j = 0; j < nc; j++) c[j] = out[j];
    }
}

/* Columns [p0 * NR, min(p1 * NR, N)) of C for all M rows (panel range [p0, p1)). */
FR_HOT static void FN(fr_gemm_packed)(int M, int N, int K, int p0, int p1, const REAL *A,
                                      ptrdiff_t lda, const REAL *Bp, REAL *C, ptrdiff_t ldc,
                                      int accumulate) {
    for (int p = p0; p < p1; p++) {
        const REAL *panel = Bp + (ptrdiff_t)p * K * NR;
        int nc = N - p * NR < NR ? N - p * NR : NR;
        for (int i = 0; i < M; i += MR) {
            const REAL *a = A + (ptrdiff_t)i * lda;
            REAL *c = C + (ptrdiff_t)i * ldc + (ptrdiff_t)p * NR;
            switch (M - i < MR ? M - i : MR) {   /* constant mr: acc stays in registers */
                case 6: FN(fr_tile)(6, K, a, lda, panel, c, ldc, nc, accumulate); break;
                case 5: FN(fr_tile)(5, K, a, lda, panel, c, ldc, nc, accumulate); break;
                case 4: FN(fr_tile)(4, K, a, lda, panel, c, ldc, nc, accumulate); break;
                case 3: FN(fr_tile)(3, K, a, lda, panel, c, ldc, nc, accumulate); break;
                case 2: FN(fr_tile)(2, K, a, lda, panel, c, ldc, nc, accumulate); break;
                default: FN(fr_tile)(1, K, a, lda, panel, c, ldc, nc, accumulate); break;
            }
        }
    }
}

static inline int FN(fr_panel_width)(void) { return NR; }

#undef VEC
#undef NV
#undef NR
#undef MR

#undef REAL
#undef FN
