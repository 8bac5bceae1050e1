/* Body of cells.h, included once per element type FR_REAL (suffix FR_SFX: f or d).
 * No include guard on purpose.
 *
 * Sizes (H, K, N, M, unit and panel indices) are int: every one is at most G*H or the batch,
 * which the entry points check to fit an int (BLAS takes int). Offsets into the big arrays
 * and leading dimensions are ptrdiff_t: a row index times a row stride passes 2^31 long
 * before any one size does. */
#define REAL FR_REAL
#define FN(name) FR_CAT(name, FR_SFX)
#define SIGMOID FN(fr_sigmoid)
#define TANH FN(fr_tanh)

/* ---- forward, one helper per cell ------------------------------------------------------
 * g* blocks: in x W_ih^T + b_ih, out the activations backward needs (in place per unit).
 * gh* / b*: the blocks of h_prev W_hh^T and of its bias.
 * Every array is its own restrict pointer, indexed by j only (no k * H + j, which -fwrapv
 * in Python's CFLAGS keeps gcc from treating as affine), so that gcc vectorises the loops. */

FR_INLINE void FN(fr_lstm_fwd)(int j0, int j1, REAL *restrict gi, REAL *restrict gf,
                               REAL *restrict gg, REAL *restrict go,
                               const REAL *restrict hi, const REAL *restrict hf,
                               const REAL *restrict hg, const REAL *restrict ho,
                               const REAL *restrict bi, const REAL *restrict bf,
                               const REAL *restrict bg, const REAL *restrict bo,
                               const REAL *restrict c_prev, REAL *restrict c,
                               REAL *restrict h) {
    for (int j = j0; j < j1; j++) {
        REAL i = SIGMOID(gi[j] + hi[j] + bi[j]);
        REAL f = SIGMOID(gf[j] + hf[j] + bf[j]);
        REAL n = TANH(gg[j] + hg[j] + bg[j]);
        REAL o = SIGMOID(go[j] + ho[j] + bo[j]);
        REAL ct = f * c_prev[j] + i * n;
        c[j] = ct;
        h[j] = o * TANH(ct);
        gi[j] = i;
        gf[j] = f;
        gg[j] = n;
        go[j] = o;
    }
}

FR_INLINE void FN(fr_gru_fwd)(int j0, int j1, REAL *restrict gr, REAL *restrict gz,
                              REAL *restrict gn, const REAL *restrict hr,
                              const REAL *restrict hz, const REAL *restrict hh,
                              const REAL *restrict br, const REAL *restrict bz,
                              const REAL *restrict bh, const REAL *restrict h_prev,
                              REAL *restrict hn, REAL *restrict h) {
    for (int j = j0; j < j1; j++) {
        REAL r = SIGMOID(gr[j] + hr[j] + br[j]);
        REAL z = SIGMOID(gz[j] + hz[j] + bz[j]);
        REAL hnj = hh[j] + bh[j];   /* W_hn h + b_hn: r multiplies it */
        REAL n = TANH(gn[j] + r * hnj);
        hn[j] = hnj;
        h[j] = (1 - z) * n + z * h_prev[j];
        gr[j] = r;
        gz[j] = z;
        gn[j] = n;
    }
}

FR_INLINE void FN(fr_rnn_fwd)(int j0, int j1, int relu, REAL *restrict g,
                                  const REAL *restrict gh, const REAL *restrict b,
                                  REAL *restrict h) {
    if (relu) {
        for (int j = j0; j < j1; j++) {
            REAL a = g[j] + gh[j] + b[j];
            a = a < 0 ? 0 : a;
            g[j] = a;
            h[j] = a;
        }
    } else {
        for (int j = j0; j < j1; j++) {
            REAL a = TANH(g[j] + gh[j] + b[j]);
            g[j] = a;
            h[j] = a;
        }
    }
}

/* Fused gate forward for one batch row at one step, units [j0, j1).
 *   g      (G*H) in: x W_ih^T + b_ih; out: activations (LSTM i,f,g,o; GRU r,z,n; RNN h).
 *   gh     (G*H) h_prev W_hh^T without bias; b_hh (G*H) is added here.
 *   h_prev (H)   GRU only (the others get it through gh); h (H) out: h_t.
 *   c_prev, c (H) LSTM: c_{t-1} in, c_t out.   hn (H) GRU out: W_hn h_prev + b_hn. */
FR_HOT static void FN(fr_cell_forward)(int kind, int H, int j0, int j1, REAL *g,
                                       const REAL *gh, const REAL *b_hh, const REAL *h_prev,
                                       REAL *h, const REAL *c_prev, REAL *c, REAL *hn) {
    if (kind == FR_K_LSTM)
        FN(fr_lstm_fwd)(j0, j1, g, g + H, g + 2 * H, g + 3 * H, gh, gh + H, gh + 2 * H,
                        gh + 3 * H, b_hh, b_hh + H, b_hh + 2 * H, b_hh + 3 * H, c_prev, c, h);
    else if (kind == FR_K_GRU)
        FN(fr_gru_fwd)(j0, j1, g, g + H, g + 2 * H, gh, gh + H, gh + 2 * H, b_hh, b_hh + H,
                       b_hh + 2 * H, h_prev, hn, h);
    else
        FN(fr_rnn_fwd)(j0, j1, kind == FR_K_RNN_RELU, g, gh, b_hh, h);
}

/* ---- backward ---------------------------------------------------------------------------- */

FR_INLINE void FN(fr_lstm_bwd)(int j0, int j1, REAL *restrict gi, REAL *restrict gf,
                                   REAL *restrict gg, REAL *restrict go,
                                   const REAL *restrict c_t, const REAL *restrict c_prev,
                                   REAL *restrict dh, REAL *restrict dc) {
    for (int j = j0; j < j1; j++) {
        REAL i = gi[j], f = gf[j], n = gg[j], o = go[j];
        REAL tc = TANH(c_t[j]);   /* recomputed: cheaper than a (T*B, H) buffer */
        REAL dct = dc[j] + dh[j] * o * (1 - tc * tc);
        gi[j] = dct * n * i * (1 - i);
        gf[j] = dct * c_prev[j] * f * (1 - f);
        gg[j] = dct * i * (1 - n * n);
        go[j] = dh[j] * tc * o * (1 - o);
        dc[j] = dct * f;
        dh[j] = 0;
    }
}

FR_INLINE void FN(fr_gru_bwd)(int j0, int j1, REAL *restrict gr, REAL *restrict gz,
                                  REAL *restrict gn, REAL *restrict hn,
                                  const REAL *restrict h_prev, REAL *restrict dh) {
    for (int j = j0; j < j1; j++) {
        REAL r = gr[j], z = gz[j], n = gn[j];
        REAL dn = dh[j] * (1 - z) * (1 - n * n);
        gr[j] = dn * hn[j] * r * (1 - r);
        gz[j] = dh[j] * (h_prev[j] - n) * z * (1 - z);
        gn[j] = dn * r;
        hn[j] = dn;
        dh[j] = dh[j] * z;
    }
}

FR_INLINE void FN(fr_rnn_bwd)(int j0, int j1, int relu, REAL *restrict g,
                                  REAL *restrict dh) {
    for (int j = j0; j < j1; j++) {
        REAL a = g[j];
        g[j] = relu ? (a > 0 ? dh[j] : 0) : dh[j] * (1 - a * a);
        dh[j] = 0;
    }
}

/* Fused gate backward for one batch row at one step, units [j0, j1).
 *   g   (G*H) in: activations saved by forward; out: dL/d(recurrent pre-activations), dGh.
 *   hn  (H)   GRU: in W_hn h_prev + b_hn; out: the x-side gradient of the n gate, which
 *             differs from the recurrent one by the reset gate factor.
 *   c_t, c_prev (H) LSTM cell states at this step and the one before.
 *   h_prev (H) GRU: the previous hidden state.
 *   dh  (H)   in: dL/dh_t; out: the part of dL/dh_{t-1} that bypasses W_hh (GRU dh*z; else 0).
 *   dc  (H)   LSTM: in dL/dc_t from later steps; out: dL/dc_{t-1}. */
FR_HOT static void FN(fr_cell_backward)(int kind, int H, int j0, int j1, REAL *g, REAL *hn,
                                        const REAL *c_t, const REAL *c_prev,
                                        const REAL *h_prev, REAL *dh, REAL *dc) {
    if (kind == FR_K_LSTM)
        FN(fr_lstm_bwd)(j0, j1, g, g + H, g + 2 * H, g + 3 * H, c_t, c_prev, dh, dc);
    else if (kind == FR_K_GRU)
        FN(fr_gru_bwd)(j0, j1, g, g + H, g + 2 * H, hn, h_prev, dh);
    else
        FN(fr_rnn_bwd)(j0, j1, kind == FR_K_RNN_RELU, g, dh);
}

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
#undef SIGMOID
#undef TANH
