# Gate math: one definition per cell, shared by the training loops (recurrent.pyx) and the
# generation loop (generate.pyx). Cell ids match fastrnn/cells.py.
from libc.string cimport memcpy
from cython cimport floating

cdef extern from "activations.h" nogil:
    float fr_sigmoidf(float x)
    double fr_sigmoid(double x)
    float fr_tanhf(float x)
    double fr_tanh(double x)

cdef enum:
    K_RNN_TANH = 0
    K_RNN_RELU = 1
    K_GRU = 2
    K_LSTM = 3


cdef inline int gate_count(int kind) noexcept nogil:
    """G: the number of gate blocks of H columns in the weights."""
    if kind == K_LSTM:
        return 4
    if kind == K_GRU:
        return 3
    return 1


cdef inline floating sigmoid(floating x) noexcept nogil:
    if floating is float:
        return fr_sigmoidf(x)
    else:
        return fr_sigmoid(x)


cdef inline floating tanh_(floating x) noexcept nogil:
    if floating is float:
        return fr_tanhf(x)
    else:
        return fr_tanh(x)


cdef inline void cell_forward_row(int kind, int H, floating* g, const floating* gh,
                                  const floating* b_hh, floating* h, floating* c,
                                  floating* hn) noexcept nogil:
    """Fused gate forward for one batch row at one step.

    g     (G*H)  in: x W_ih^T + b_ih.  out: the activations backward needs
                 (LSTM i,f,g,o; GRU r,z,n; RNN h).
    gh    (G*H)  h_prev W_hh^T, without bias; b_hh (G*H) is added here.
    h     (H)    in: h_prev, out: h_t.       c (H): LSTM cell state, in c_prev, out c_t.
    hn    (H)    GRU only, out: W_hn h_prev + b_hn (the reset gate multiplies it).
    """
    cdef int j
    cdef floating gi, gf, gg, go, r, z, n, a
    if kind == K_LSTM:
        for j in range(H):
            gi = sigmoid(g[j] + gh[j] + b_hh[j])
            gf = sigmoid(g[H + j] + gh[H + j] + b_hh[H + j])
            gg = tanh_(g[2 * H + j] + gh[2 * H + j] + b_hh[2 * H + j])
            go = sigmoid(g[3 * H + j] + gh[3 * H + j] + b_hh[3 * H + j])
            c[j] = gf * c[j] + gi * gg
            h[j] = go * tanh_(c[j])
            g[j] = gi
            g[H + j] = gf
            g[2 * H + j] = gg
            g[3 * H + j] = go
    elif kind == K_GRU:
        for j in range(H):
            r = sigmoid(g[j] + gh[j] + b_hh[j])
            z = sigmoid(g[H + j] + gh[H + j] + b_hh[H + j])
            hn[j] = gh[2 * H + j] + b_hh[2 * H + j]
            n = tanh_(g[2 * H + j] + r * hn[j])
            h[j] = (1 - z) * n + z * h[j]
            g[j] = r
            g[H + j] = z
            g[2 * H + j] = n
    else:
        for j in range(H):
            a = g[j] + gh[j] + b_hh[j]
            if kind == K_RNN_TANH:
                a = tanh_(a)
            elif a < 0:
                a = 0
            g[j] = a
            h[j] = a


cdef inline void cell_backward_row(int kind, int H, floating* g, floating* hn,
                                   const floating* c_t, const floating* c_prev,
                                   const floating* h_prev, floating* dh, floating* dc,
                                   floating* dgh) noexcept nogil:
    """Fused gate backward for one batch row at one step.

    g     (G*H)  in: activations saved by forward. out: dL/d(recurrent pre-activations), dGh.
    hn    (H)    GRU only. in: W_hn h_prev + b_hn. out: dL/d(x-side n pre-activation), which
                 differs from the recurrent one by the reset gate factor.
    c_t, c_prev (H)  LSTM cell states at this step and the one before.
    h_prev (H)   GRU: the previous hidden state.
    dh    (H)    in: dL/dh_t. out: the part of dL/dh_{t-1} that bypasses W_hh (GRU: dh*z; else 0).
    dc    (H)    LSTM. in: dL/dc_t from later steps. out: dL/dc_{t-1}.
    dgh   (G*H)  out: a copy of dGh, contiguous per batch for the per-step GEMM.
    """
    cdef int j
    cdef floating gi, gf, gg, go, tc, dct, r, z, n, dn, a
    if kind == K_LSTM:
        for j in range(H):
            gi = g[j]
            gf = g[H + j]
            gg = g[2 * H + j]
            go = g[3 * H + j]
            tc = tanh_(c_t[j])
            dct = dc[j] + dh[j] * go * (1 - tc * tc)
            g[j] = dct * gg * gi * (1 - gi)
            g[H + j] = dct * c_prev[j] * gf * (1 - gf)
            g[2 * H + j] = dct * gi * (1 - gg * gg)
            g[3 * H + j] = dh[j] * tc * go * (1 - go)
            dc[j] = dct * gf
            dh[j] = 0
    elif kind == K_GRU:
        for j in range(H):
            r = g[j]
            z = g[H + j]
            n = g[2 * H + j]
            dn = dh[j] * (1 - z) * (1 - n * n)
            g[j] = dn * hn[j] * r * (1 - r)
            g[H + j] = dh[j] * (h_prev[j] - n) * z * (1 - z)
            g[2 * H + j] = dn * r
            hn[j] = dn
            dh[j] = dh[j] * z
    else:
        for j in range(H):
            a = g[j]
            if kind == K_RNN_TANH:
                g[j] = dh[j] * (1 - a * a)
            else:
                g[j] = dh[j] if a > 0 else 0
            dh[j] = 0
    memcpy(dgh, g, gate_count(kind) * H * sizeof(floating))
