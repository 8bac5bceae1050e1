/* Body of the packed GEMM for one vector width, included by gemm_packed_impl.h (itself once
 * per element type) with:
 *   FR_PANEL_KIND    name part: narrow or wide (fr_gemm_packed_narrow_f, ...)
 *   FR_PANEL_BYTES   bytes per vector: 32 (AVX2) or 64 (AVX-512)
 *   FR_PANEL_MR      most rows per register tile (2 * MR accumulators)
 *   FR_PANEL_TARGET  the functions' attributes (FR_HOT clones, or FR_WIDE)
 * and undefines them at the end. No include guard on purpose. */
#define PFN(name) FR_CAT(FR_CAT(name, FR_PANEL_KIND), FR_SFX)
typedef REAL PFN(fr_pvec) __attribute__((vector_size(FR_PANEL_BYTES)));
#define VEC PFN(fr_pvec)
#define NV ((int)(FR_PANEL_BYTES / sizeof(REAL)))
#define NR (2 * NV)
#define MR FR_PANEL_MR

/* Ask for the lines of one block of 8 k (8 * NR elements of Bp from offset `block`, short
 * of `end`) for writing. The scalar stores of the transposed pack below wait on each line in
 * turn when the other core still holds a copy: every thread reads all panels, so each line
 * of the last call's Bp is in both caches. Asked two blocks ahead, the lines come in
 * parallel: measured (C harness, two threads packing W_hh^T, H = 256) 34 -> 24 us when the
 * two cores share a cache, 165 -> 75 us when they do not. A plain read prefetch does not
 * help; where __builtin_prefetch(p, 1) cannot be PREFETCHW (the FR_HOT clones), it is that. */
FR_INLINE void PFN(fr_prefetch_block)(const REAL *Bp, ptrdiff_t block, ptrdiff_t end) {
    for (ptrdiff_t i = block; i < block + 8 * NR && i < end; i += 64 / (ptrdiff_t)sizeof(REAL))
        __builtin_prefetch(Bp + i, 1);
}

/* Panels [p0, p1) of Bp <- B(k, n) = trans ? W[n * ldw + k] : W[k * ldw + n], k < K, n < N. */
FR_PANEL_TARGET static void PFN(fr_pack_panels)(int K, int N, int p0, int p1, const REAL *W,
                                                ptrdiff_t ldw, int trans, REAL *Bp) {
    for (int p = p0; p < p1; p++) {
        REAL *dst = Bp + (ptrdiff_t)p * K * NR;
        int cols = N - p * NR < NR ? N - p * NR : NR;
        if (trans)   /* column c of the panel is row n = p * NR + c of W */
            /* In blocks of 8 k: a block's stores then stay in 8 lines per column pass, where
             * a whole row at a time spread them over the panel (K lines, past L1 at K = 512).
             * Measured for W_hh^T: 71 -> 45 us at H = 256, 544 -> 183 us at H = 512. */
            for (int k0 = 0; k0 < K; k0 += 8) {
                int kb = K - k0 < 8 ? K - k0 : 8;
                PFN(fr_prefetch_block)(Bp, ((ptrdiff_t)p * K + k0 + 16) * NR, (ptrdiff_t)p1 * K * NR);
                for (int c = 0; c < cols; c++) {
                    const REAL *src = W + (ptrdiff_t)(p * NR + c) * ldw + k0;
                    for (int k = 0; k < kb; k++)
                        dst[(ptrdiff_t)(k0 + k) * NR + c] = src[k];
                }
            }
        else
            for (int k = 0; k < K; k++) {
                const REAL *src = W + (ptrdiff_t)k * ldw + (ptrdiff_t)p * NR;
                for (int c = 0; c < cols; c++)
                    dst[(ptrdiff_t)k * NR + c] = src[c];
            }
        for (int k = 0; k < K; k++)   /* columns past N: zeros */
            for (int c = cols; c < NR; c++)
                dst[(ptrdiff_t)k * NR + c] = 0;
    }
}

/* C[:mr, :nc] (+)= A[:mr, :K] panel: an mr x NR tile of C kept in 2 * mr vector registers.
 * A[i, k] is A[i * lda + k * ska]: ska 1 for a row-major A, lda 1 for a transposed one. */
FR_INLINE void PFN(fr_tile)(int mr, int K, const REAL *A, ptrdiff_t lda, ptrdiff_t ska,
                            const REAL *panel, REAL *C, ptrdiff_t ldc, int nc, int accumulate,
                            const REAL *bias) {
    VEC acc[MR][2];
    for (int i = 0; i < mr; i++)
        acc[i][0] = acc[i][1] = (VEC){0};
    for (int k = 0; k < K; k++) {
        VEC b0, b1;
        memcpy(&b0, panel + (ptrdiff_t)k * NR, sizeof b0);
        memcpy(&b1, panel + (ptrdiff_t)k * NR + NV, sizeof b1);
        for (int i = 0; i < mr; i++) {
            REAL a = A[(ptrdiff_t)i * lda + (ptrdiff_t)k * ska];
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
        else if (bias)   /* the sum, then the bias: as C = bias; C += sum would round */
            for (int j = 0; j < nc; j++) c[j] = out[j] + bias[j];
        else
            for (int j = 0; j < nc; j++) c[j] = out[j];
    }
}

/* Columns [p0 * NR, min(p1 * NR, N)) of C for all M rows (panel range [p0, p1)). The rows
 * are cut into ceil(M / MR) tiles of nearly equal height (16 rows: 6, 5, 5 narrow; 8, 8
 * wide), so that no tile is left with too few accumulators to hide the FMA latency. */
FR_INLINE void PFN(fr_gemm_tiles)(int M, int N, int K, int p0, int p1, const REAL *A,
                                   ptrdiff_t lda, ptrdiff_t ska, const REAL *Bp, REAL *C,
                                   ptrdiff_t ldc, int accumulate, const REAL *bias) {
    int tiles = (M + MR - 1) / MR;
    for (int p = p0; p < p1; p++) {
        const REAL *panel = Bp + (ptrdiff_t)p * K * NR;
        int nc = N - p * NR < NR ? N - p * NR : NR;
        const REAL *pbias = bias ? bias + (ptrdiff_t)p * NR : NULL;
        int i = 0;
        for (int t = 0; t < tiles; t++) {
            int mr = M / tiles + (t < M % tiles);
            const REAL *a = A + (ptrdiff_t)i * lda;   /* row i of the tile */
            REAL *c = C + (ptrdiff_t)i * ldc + (ptrdiff_t)p * NR;
            switch (mr) {   /* constant mr: acc stays in registers */
#if MR >= 8
                case 8: PFN(fr_tile)(8, K, a, lda, ska, panel, c, ldc, nc, accumulate, pbias); break;
                case 7: PFN(fr_tile)(7, K, a, lda, ska, panel, c, ldc, nc, accumulate, pbias); break;
#endif
                case 6: PFN(fr_tile)(6, K, a, lda, ska, panel, c, ldc, nc, accumulate, pbias); break;
                case 5: PFN(fr_tile)(5, K, a, lda, ska, panel, c, ldc, nc, accumulate, pbias); break;
                case 4: PFN(fr_tile)(4, K, a, lda, ska, panel, c, ldc, nc, accumulate, pbias); break;
                case 3: PFN(fr_tile)(3, K, a, lda, ska, panel, c, ldc, nc, accumulate, pbias); break;
                case 2: PFN(fr_tile)(2, K, a, lda, ska, panel, c, ldc, nc, accumulate, pbias); break;
                default: PFN(fr_tile)(1, K, a, lda, ska, panel, c, ldc, nc, accumulate, pbias); break;
            }
            i += mr;
        }
    }
}

/* fr_gemm_tiles for a row-major A (row stride lda): the recurrent products. */
FR_PANEL_TARGET static void PFN(fr_gemm_packed)(int M, int N, int K, int p0, int p1,
                                                const REAL *A, ptrdiff_t lda, const REAL *Bp,
                                                REAL *C, ptrdiff_t ldc, int accumulate) {
    PFN(fr_gemm_tiles)(M, N, K, p0, p1, A, lda, 1, Bp, C, ldc, accumulate, NULL);
}

/* fr_gemm_packed writing C = A B + bias (bias: one value per column of C, added to every
 * row): gemm.h's input projections and dense layers, which would otherwise write the bias
 * into C and read it back. */
FR_PANEL_TARGET static void PFN(fr_gemm_packed_bias)(int M, int N, int K, int p0, int p1,
                                                     const REAL *A, ptrdiff_t lda,
                                                     const REAL *Bp, REAL *C, ptrdiff_t ldc,
                                                     const REAL *bias) {
    PFN(fr_gemm_tiles)(M, N, K, p0, p1, A, lda, 1, Bp, C, ldc, 0, bias);
}

/* fr_gemm_tiles for a transposed A: A[i, k] = At[k * ldat + i] (gemm.h's weight gradients,
 * whose A is a gradient stored token by token). */
FR_PANEL_TARGET static void PFN(fr_gemm_packed_at)(int M, int N, int K, int p0, int p1,
                                                   const REAL *At, ptrdiff_t ldat,
                                                   const REAL *Bp, REAL *C, ptrdiff_t ldc,
                                                   int accumulate) {
    PFN(fr_gemm_tiles)(M, N, K, p0, p1, At, 1, ldat, Bp, C, ldc, accumulate, NULL);
}

#undef PFN
#undef VEC
#undef NV
#undef NR
#undef MR
#undef FR_PANEL_KIND
#undef FR_PANEL_BYTES
#undef FR_PANEL_MR
#undef FR_PANEL_TARGET
