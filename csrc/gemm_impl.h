/* Body of gemm.h, included once per element type FR_REAL (suffix FR_SFX: f or d).
 * No include guard on purpose. */
#define REAL FR_REAL
#define FN(name) FR_CAT(name, FR_SFX)

/* C (m x n) = op(A) (m x k) op(B) (k x n) + beta C (+ bias), row-major, beta 0 or 1 (with
 * beta 0, C is only written). op(A)[i, k] = trans_a ? a[k * lda + i] : a[i * lda + k],
 * likewise B. bias (n values added to every row of C) only with beta 0 and A not
 * transposed; NULL for none. claim_c (with beta 0): take each block of C's lines with
 * fr_claim_rows (gemm.h) before its tiles write it. Returns 0 when done; nonzero when
 * declined (no AVX-512, a bias it does not take, or no memory for the packed blocks), having
 * touched nothing: the caller then runs BLAS. Sizes are at most INT_MAX (the entry points
 * check it). */
static int FN(fr_gemm)(int trans_a, int trans_b, int m, int n, int k, const REAL *a,
                       ptrdiff_t lda, const REAL *b, ptrdiff_t ldb, int beta, REAL *c,
                       ptrdiff_t ldc, const REAL *bias, int claim_c) {
    if (!fr_own_gemm() || (bias != NULL && (beta || trans_a)))
        return 1;
    if (m <= 0 || n <= 0)
        return 0;
    if (k <= 0) {   /* C = beta C (+ bias) */
        if (!beta)
            for (int i = 0; i < m; i++) {
                if (bias)
                    memcpy(c + (ptrdiff_t)i * ldc, bias, (size_t)n * sizeof(REAL));
                else
                    memset(c + (ptrdiff_t)i * ldc, 0, (size_t)n * sizeof(REAL));
            }
        return 0;
    }
    const int nr = FN(fr_panel_width)();
    const int kc_max = k < FR_GEMM_KC ? k : FR_GEMM_KC;
    const int nc_max = n < FR_GEMM_NC ? n : FR_GEMM_NC;
    const int panels_max = (nc_max + nr - 1) / nr;
    REAL *bp = (REAL *)aligned_alloc(64, ((size_t)panels_max * kc_max * nr * sizeof(REAL) + 63)
                                             / 64 * 64);
    /* A transposed A whose rows are a multiple of 4 KiB apart (a (T*B, 4H) gate gradient
     * with H a multiple of 256 floats) puts every k of a tile in the same L1 set, and its
     * block overflows the L2 sets it maps to: the tiles then run about 10 % slower (413
     * against 455 GFLOP/s on 2 threads, (512 x 2048)^T x (2048 x 256) per thread, dG just
     * evicted). Such blocks are copied, row by row, into ap with a padded stride first; the
     * tiles read the same values in the same order, so the results do not change. */
    const ptrdiff_t lap = FR_GEMM_MC + 64 / (ptrdiff_t)sizeof(REAL);
    REAL *ap = NULL;
    if (trans_a && (lda * (ptrdiff_t)sizeof(REAL)) % 4096 == 0) {
        ap = (REAL *)aligned_alloc(64, (size_t)kc_max * lap * sizeof(REAL));
        if (ap == NULL) {
            free(bp);
            return 1;
        }
    }
    if (bp == NULL) {
        free(ap);
        return 1;
    }
    /* Block starts are ptrdiff_t: start + block size may pass INT_MAX at the last block. */
    for (ptrdiff_t j0 = 0; j0 < n; j0 += FR_GEMM_NC) {
        int nc = n - j0 < FR_GEMM_NC ? (int)(n - j0) : FR_GEMM_NC;
        int panels = (nc + nr - 1) / nr;
        for (ptrdiff_t k0 = 0; k0 < k; k0 += FR_GEMM_KC) {
            int kc = k - k0 < FR_GEMM_KC ? (int)(k - k0) : FR_GEMM_KC;
            /* B(kk, jj) of this block: trans_b ? b[(j0 + jj) * ldb + k0 + kk]
             *                                  : b[(k0 + kk) * ldb + j0 + jj] */
            const REAL *bblock = trans_b ? b + j0 * ldb + k0 : b + k0 * ldb + j0;
            FN(fr_pack_panels)(nr, kc, nc, 0, panels, bblock, ldb, trans_b, bp);
            int accumulate = beta || k0 > 0;
            for (ptrdiff_t i0 = 0; i0 < m; i0 += FR_GEMM_MC) {
                int mc = m - i0 < FR_GEMM_MC ? (int)(m - i0) : FR_GEMM_MC;
                REAL *cblock = c + i0 * ldc + j0;
                if (claim_c && !accumulate)
                    fr_claim_rows(cblock, mc, (size_t)nc * sizeof(REAL),
                                  ldc * (ptrdiff_t)sizeof(REAL));
                if (trans_a && ap != NULL) {   /* copied: see ap above */
                    for (int r = 0; r < kc; r++)
                        memcpy(ap + r * lap, a + (k0 + r) * lda + i0, (size_t)mc * sizeof(REAL));
                    FN(fr_gemm_packed_at)(nr, mc, nc, kc, 0, panels, ap, lap, bp, cblock, ldc,
                                          accumulate);
                } else if (trans_a)   /* op(A)[i, k] = a[k * lda + i] */
                    FN(fr_gemm_packed_at)(nr, mc, nc, kc, 0, panels,
                                          a + k0 * lda + i0, lda, bp, cblock, ldc,
                                          accumulate);
                else if (bias && k0 == 0)   /* the first k block writes sum + bias */
                    FN(fr_gemm_packed_bias)(nr, mc, nc, kc, 0, panels,
                                            a + i0 * lda, lda, bp, cblock, ldc,
                                            bias + j0);
                else
                    FN(fr_gemm_packed)(nr, mc, nc, kc, 0, panels, a + i0 * lda + k0,
                                       lda, bp, cblock, ldc, accumulate);
            }
        }
    }
    free(bp);
    free(ap);
    return 0;
}

#undef REAL
#undef FN
