/* Body of cells.h: the gate math, included once per element type FR_REAL (suffix FR_SFX:
 * f or d). No include guard on purpose.
 *
 * Sizes (H, unit indices) are int: every one is at most G*H, which the entry points check to
 * fit an int. Pointers arrive already offset to their row by the caller, in 64-bit
 * arithmetic: a row index times a row stride passes 2^31 long before any one size does. */
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
        c[j] = f * c_prev[j] + i * n;
        gi[j] = i;
        gf[j] = f;
        gg[j] = n;
        go[j] = o;
    }
    /* A second pass for the activation that depends on the others (here tanh(c), below the
     * GRU's n): in one loop body the chain exp -> c -> tanh(c) is too long for the core to
     * overlap iterations, and the vectorised body runs out of registers. Same operations,
     * so the same bits; the gate math alone 22 % faster for the LSTM, 30 % for the GRU
     * (16 rows of H = 256, AVX-512, operands in L1). */
    for (int j = j0; j < j1; j++)
        h[j] = go[j] * TANH(c[j]);
}

FR_INLINE void FN(fr_gru_fwd)(int j0, int j1, REAL *restrict gr, REAL *restrict gz,
                              REAL *restrict gn, const REAL *restrict hr,
                              const REAL *restrict hz, const REAL *restrict hh,
                              const REAL *restrict br, const REAL *restrict bz,
                              const REAL *restrict bh, const REAL *restrict h_prev,
                              REAL *restrict hn, REAL *restrict h) {
    for (int j = j0; j < j1; j++) {
        gr[j] = SIGMOID(gr[j] + hr[j] + br[j]);
        gz[j] = SIGMOID(gz[j] + hz[j] + bz[j]);
        hn[j] = hh[j] + bh[j];   /* W_hn h + b_hn: r multiplies it */
    }
    for (int j = j0; j < j1; j++) {   /* a second pass, as for the LSTM's tanh(c) */
        REAL z = gz[j];
        REAL n = TANH(gn[j] + gr[j] * hn[j]);
        h[j] = (1 - z) * n + z * h_prev[j];
        gn[j] = n;
    }
}

/* The three Elman cells: kind picks act = relu, identity (linear recurrence) or tanh. */
FR_INLINE void FN(fr_rnn_fwd)(int j0, int j1, int kind, REAL *restrict g,
                                  const REAL *restrict gh, const REAL *restrict b,
                                  REAL *restrict h) {
    if (kind == FR_K_RNN_RELU) {
        for (int j = j0; j < j1; j++) {
            REAL a = g[j] + gh[j] + b[j];
            a = a < 0 ? 0 : a;
            g[j] = a;
            h[j] = a;
        }
    } else if (kind == FR_K_RNN_IDENTITY) {
        for (int j = j0; j < j1; j++) {
            REAL a = g[j] + gh[j] + b[j];
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
        FN(fr_rnn_fwd)(j0, j1, kind, g, gh, b_hh, h);
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

/* g holds act(a); the derivative is written in terms of it (relu: a > 0; tanh: 1 - h^2;
 * identity: 1). */
FR_INLINE void FN(fr_rnn_bwd)(int j0, int j1, int kind, REAL *restrict g,
                                  REAL *restrict dh) {
    if (kind == FR_K_RNN_IDENTITY) {
        for (int j = j0; j < j1; j++) {
            g[j] = dh[j];
            dh[j] = 0;
        }
        return;
    }
    int relu = kind == FR_K_RNN_RELU;
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
        FN(fr_rnn_bwd)(j0, j1, kind, g, dh);
}

#undef REAL
#undef FN
#undef SIGMOID
#undef TANH
