# Gate math: one definition per cell, in csrc/cells_impl.h (C, so that the loops over hidden
# units vectorise), shared by the training loops (recurrent.pyx) and generation
# (generate.pyx). This file only picks the float or double instance. The cell ids and gate
# counts are those of fastrnn/cells.py (checked by tests/test_cells.py).
# Sizes are int (each is at most G*H or the batch, checked to fit by the entry points); row
# strides are Py_ssize_t, and callers pass pointers already offset in 64-bit arithmetic.
from cython cimport floating

cdef extern from "cells.h" nogil:
    void fr_cell_forward_f(int kind, int H, int j0, int j1, float* g, const float* gh,
                           const float* b_hh, const float* h_prev, float* h,
                           const float* c_prev, float* c, float* hn)
    void fr_cell_forward_d(int kind, int H, int j0, int j1, double* g, const double* gh,
                           const double* b_hh, const double* h_prev, double* h,
                           const double* c_prev, double* c, double* hn)
    void fr_cell_backward_f(int kind, int H, int j0, int j1, float* g, float* hn,
                            const float* c_t, const float* c_prev, const float* h_prev,
                            float* dh, float* dc)
    void fr_cell_backward_d(int kind, int H, int j0, int j1, double* g, double* hn,
                            const double* c_t, const double* c_prev, const double* h_prev,
                            double* dh, double* dc)

    # Cell ids: defined in cells.h, which tests/test_cells.py checks against fastrnn/cells.py.
    enum:
        K_RNN_TANH "FR_K_RNN_TANH"
        K_RNN_RELU "FR_K_RNN_RELU"
        K_GRU "FR_K_GRU"
        K_LSTM "FR_K_LSTM"
        K_RNN_IDENTITY "FR_K_RNN_IDENTITY"


cdef inline int gate_count(int kind) noexcept nogil:
    """G: the number of gate blocks of H columns in the weights (CellSpec.gates)."""
    if kind == K_LSTM:
        return 4
    if kind == K_GRU:
        return 3
    return 1


cdef inline void cell_forward_row(int kind, int H, int j0, int j1, floating* g,
                                  const floating* gh, const floating* b_hh,
                                  const floating* h_prev, floating* h,
                                  const floating* c_prev, floating* c,
                                  floating* hn) noexcept nogil:
    """Fused gate forward for one batch row at one step, hidden units [j0, j1).

    g      (G*H)  in: x W_ih^T + b_ih. out: the activations backward needs
                  (LSTM i,f,g,o; GRU r,z,n; RNN h).
    gh     (G*H)  h_prev W_hh^T, without bias; b_hh (G*H) is added here.
    h_prev (H)    GRU only (read); h (H) out: h_t. Must not overlap h_prev.
    c_prev, c (H) LSTM: c_{t-1} in, c_t out (distinct arrays).
    hn     (H)    GRU only, out: W_hn h_prev + b_hn (the reset gate multiplies it).
    """
    if floating is float:
        fr_cell_forward_f(kind, H, j0, j1, g, gh, b_hh, h_prev, h, c_prev, c, hn)
    else:
        fr_cell_forward_d(kind, H, j0, j1, g, gh, b_hh, h_prev, h, c_prev, c, hn)


cdef inline void cell_backward_row(int kind, int H, int j0, int j1, floating* g, floating* hn,
                                   const floating* c_t, const floating* c_prev,
                                   const floating* h_prev, floating* dh,
                                   floating* dc) noexcept nogil:
    """Fused gate backward for one batch row at one step, hidden units [j0, j1).

    g     (G*H)  in: activations saved by forward. out: dL/d(recurrent pre-activations), dGh.
    hn    (H)    GRU only. in: W_hn h_prev + b_hn. out: dL/d(x-side n pre-activation).
    c_t, c_prev (H)  LSTM cell states at this step and the one before.
    h_prev (H)   GRU: the previous hidden state.
    dh    (H)    in: dL/dh_t. out: the part of dL/dh_{t-1} that bypasses W_hh (GRU: dh*z; else 0).
    dc    (H)    LSTM. in: dL/dc_t from later steps. out: dL/dc_{t-1}.
    """
    if floating is float:
        fr_cell_backward_f(kind, H, j0, j1, g, hn, c_t, c_prev, h_prev, dh, dc)
    else:
        fr_cell_backward_d(kind, H, j0, j1, g, hn, c_t, c_prev, h_prev, dh, dc)
