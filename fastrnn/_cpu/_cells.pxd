# Gate math: one definition per cell, in csrc/cells_impl.h (C, so that the loops over hidden
# units vectorise), shared by the training loops (recurrent.pyx) and any other loop over
# steps. This file only picks the float or double instance. Cell ids match fastrnn/cells.py.
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
    void fr_matvec_rows_f(int r0, int r1, int K, const float* W, Py_ssize_t ldw, int nb,
                          const float* const* x, float* const* y)
    void fr_matvec_rows_d(int r0, int r1, int K, const double* W, Py_ssize_t ldw, int nb,
                          const double* const* x, double* const* y)
    void fr_matvec_cols_acc_f(int j0, int j1, int K, const float* W, Py_ssize_t ldw, int nb,
                              const float* const* d, float* const* y)
    void fr_matvec_cols_acc_d(int j0, int j1, int K, const double* W, Py_ssize_t ldw, int nb,
                              const double* const* d, double* const* y)
    void fr_pack_panels_f(int K, int N, int p0, int p1, const float* W, Py_ssize_t ldw, int trans, float* Bp)
    void fr_pack_panels_d(int K, int N, int p0, int p1, const double* W, Py_ssize_t ldw, int trans, double* Bp)
    void fr_gemm_packed_f(int M, int N, int K, int p0, int p1, const float* A, Py_ssize_t lda,
                          const float* Bp, float* C, Py_ssize_t ldc, int accumulate)
    void fr_gemm_packed_d(int M, int N, int K, int p0, int p1, const double* A, Py_ssize_t lda,
                          const double* Bp, double* C, Py_ssize_t ldc, int accumulate)
    int fr_panel_width_f()
    int fr_panel_width_d()

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


cdef inline void matvec_rows(int r0, int r1, int K, const floating* W, Py_ssize_t ldw, int nb,
                             const floating** x, floating** y) noexcept nogil:
    """y[b][r] = W[r, :K] . x[b] for rows r0 <= r < r1, b < nb (small-batch path)."""
    if floating is float:
        fr_matvec_rows_f(r0, r1, K, W, ldw, nb, x, y)
    else:
        fr_matvec_rows_d(r0, r1, K, W, ldw, nb, x, y)


cdef inline void matvec_cols_acc(int j0, int j1, int K, const floating* W, Py_ssize_t ldw, int nb,
                                 const floating** d, floating** y) noexcept nogil:
    """y[b][j] += sum_k d[b][k] W[k, j] for j0 <= j < j1, b < nb (small-batch path)."""
    if floating is float:
        fr_matvec_cols_acc_f(j0, j1, K, W, ldw, nb, d, y)
    else:
        fr_matvec_cols_acc_d(j0, j1, K, W, ldw, nb, d, y)


cdef inline int panel_width(floating dummy) noexcept nogil:
    """Columns per packed panel (NR): 16 floats or 8 doubles."""
    if floating is float:
        return fr_panel_width_f()
    else:
        return fr_panel_width_d()


cdef inline void pack_panels(int K, int N, int p0, int p1, const floating* W, Py_ssize_t ldw,
                             bint trans, floating* Bp) noexcept nogil:
    """Panels [p0, p1) of Bp <- B (K x N) in panels of panel_width columns (zero-padded);
    B = W^T if trans else W."""
    if floating is float:
        fr_pack_panels_f(K, N, p0, p1, W, ldw, trans, Bp)
    else:
        fr_pack_panels_d(K, N, p0, p1, W, ldw, trans, Bp)


cdef inline void gemm_packed(int M, int N, int K, int p0, int p1, const floating* A, Py_ssize_t lda,
                             const floating* Bp, floating* C, Py_ssize_t ldc,
                             bint accumulate) noexcept nogil:
    """C[:, panels p0..p1) (+)= A (M x K) @ B, with B packed by pack_panels."""
    if floating is float:
        fr_gemm_packed_f(M, N, K, p0, p1, A, lda, Bp, C, ldc, accumulate)
    else:
        fr_gemm_packed_d(M, N, K, p0, p1, A, lda, Bp, C, ldc, accumulate)
