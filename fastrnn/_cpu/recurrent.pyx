# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled forward and BPTT for one layer and one direction of a tanh/ReLU RNN, GRU or LSTM.

Arrays are flattened to 2-D with row ``r = t * B + b`` ("time space"). The time loop walks
*steps* s = 0..T-1; for batch row b with length L_b, step s is time ``t = s`` forward, or
``t = L_b - 1 - s`` in reverse, and steps ``s >= L_b`` leave the state untouched. All buffers
are indexed in time space so that the weight gradients are plain GEMMs over all rows.

The three stages are separate calls so that the Python side can limit BLAS to one thread
around the OpenMP loop only, and let the large GEMMs before and after it use every core:

    project_inputs  gates = x @ W_ih^T + b_ih              one GEMM over all steps
    forward_loop    per step: Gh = h @ W_hh^T (BLAS), fused gates -> h, c, y, saved activations
    backward_loop   per step: fused gate backward -> dG ; dh = dG @ W_hh (BLAS)
    weight_grads    dW_ih, dW_hh, db, dx: GEMMs over all steps

Threads: each OpenMP thread owns a contiguous slice of the batch for the whole sequence and
runs its own small GEMM per step, so no synchronisation is needed inside the loop and results
do not depend on the thread count.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t
from libc.string cimport memcpy, memset

from ._blas cimport gemm
from ._cells cimport K_GRU, K_LSTM, cell_backward_row, cell_forward_row, gate_count
from ._openmp cimport fr_openmp_enabled, fr_omp_max_threads


def openmp_enabled():
    """True when the extension was compiled with OpenMP."""
    return bool(fr_openmp_enabled())


def omp_max_threads():
    """OpenMP's default thread count (honours OMP_NUM_THREADS); 1 without OpenMP."""
    return fr_omp_max_threads()


# ---------------------------------------------------------------------------------------------
# Time loops over one thread's slice of the batch, rows [b0, b1).
# ---------------------------------------------------------------------------------------------

cdef inline int _length(const int64_t* lengths, int b, int T) noexcept nogil:
    return T if lengths == NULL else <int>lengths[b]


cdef inline int _time_of_step(int s, int length, bint reverse) noexcept nogil:
    return length - 1 - s if reverse else s


cdef int _slice_steps(const int64_t* lengths, int b0, int b1, int T) noexcept nogil:
    """Steps this slice needs: the longest sequence in it."""
    cdef int b, steps = 0
    if lengths == NULL:
        return T
    for b in range(b0, b1):
        if lengths[b] > steps:
            steps = <int>lengths[b]
    return steps


cdef void _forward_slice(int kind, int T, int B, int H, int b0, int b1, bint reverse,
                         const int64_t* lengths, floating* gates, floating* hn,
                         floating* chist, floating* y, int ldy,
                         const floating* w_hh, const floating* b_hh,
                         floating* h, floating* c, floating* gh) noexcept nogil:
    cdef int GH = gate_count(kind) * H
    cdef int s, b, t, row, length
    cdef int steps = _slice_steps(lengths, b0, b1, T)
    # Outputs past a sequence's end are zero (PyTorch's packed-sequence semantics).
    for b in range(b0, b1):
        for t in range(_length(lengths, b, T), T):
            memset(y + (t * B + b) * ldy, 0, H * sizeof(floating))
    for s in range(steps):
        gemm(False, True, b1 - b0, GH, H, <floating>1, h + b0 * H, H, w_hh, H,
             <floating>0, gh + b0 * GH, GH)
        for b in range(b0, b1):
            length = _length(lengths, b, T)
            if s >= length:
                continue
            row = _time_of_step(s, length, reverse) * B + b
            cell_forward_row(kind, H, gates + row * GH, gh + b * GH, b_hh, h + b * H,
                             c + b * H if c != NULL else NULL,
                             hn + row * H if hn != NULL else NULL)
            memcpy(y + row * ldy, h + b * H, H * sizeof(floating))
            if chist != NULL:
                memcpy(chist + row * H, c + b * H, H * sizeof(floating))


cdef void _backward_slice(int kind, int T, int B, int H, int b0, int b1, bint reverse,
                          const int64_t* lengths, floating* gates, floating* hn,
                          const floating* chist, const floating* y, int ldy,
                          const floating* dy, int lddy,
                          const floating* w_hh, const floating* h0, const floating* c0,
                          floating* dh, floating* dc, floating* dgh) noexcept nogil:
    cdef int GH = gate_count(kind) * H
    cdef int s, b, t, j, row, prev_row, length
    cdef int steps = _slice_steps(lengths, b0, b1, T)
    cdef const floating* h_prev
    cdef const floating* c_prev
    cdef floating* dh_row
    # Rows past a sequence's end take part in the weight-gradient GEMMs: make them zero.
    for b in range(b0, b1):
        for t in range(_length(lengths, b, T), T):
            memset(gates + (t * B + b) * GH, 0, GH * sizeof(floating))
            if hn != NULL:
                memset(hn + (t * B + b) * H, 0, H * sizeof(floating))
    for s in range(steps - 1, -1, -1):
        for b in range(b0, b1):
            length = _length(lengths, b, T)
            if s >= length:
                memset(dgh + b * GH, 0, GH * sizeof(floating))
                continue
            t = _time_of_step(s, length, reverse)
            row = t * B + b
            if s == 0:
                h_prev = h0 + b * H
                c_prev = c0 + b * H if c0 != NULL else NULL
            else:
                prev_row = (t + 1 if reverse else t - 1) * B + b
                h_prev = y + prev_row * ldy
                c_prev = chist + prev_row * H if chist != NULL else NULL
            dh_row = dh + b * H
            if dy != NULL:
                for j in range(H):
                    dh_row[j] += dy[row * lddy + j]
            cell_backward_row(kind, H, gates + row * GH, hn + row * H if hn != NULL else NULL,
                              chist + row * H if chist != NULL else NULL, c_prev, h_prev,
                              dh_row, dc + b * H if dc != NULL else NULL, dgh + b * GH)
        gemm(False, False, b1 - b0, H, GH, <floating>1, dgh + b0 * GH, GH, w_hh, H,
             <floating>1, dh + b0 * H, H)


cdef inline int _threads_for(int B, int num_threads) noexcept nogil:
    if num_threads < 1:
        num_threads = 1
    return B if B < num_threads else num_threads


# ---------------------------------------------------------------------------------------------
# Entry points. Shapes are checked by fastrnn.functional before these are called.
# ---------------------------------------------------------------------------------------------

def project_inputs(const floating[:, ::1] x, const floating[:, ::1] w_ih, const floating[::1] b_ih,
                   floating[:, ::1] gates):
    """gates (T*B, G*H) = x (T*B, I) @ w_ih^T (I, G*H) + b_ih, as one GEMM with the bias fused."""
    cdef int rows = gates.shape[0], GH = gates.shape[1], I = x.shape[1], r
    with nogil:
        for r in range(rows):
            memcpy(&gates[r, 0], &b_ih[0], GH * sizeof(floating))
        gemm(False, True, rows, GH, I, <floating>1, &x[0, 0], I, &w_ih[0, 0], I,
             <floating>1, &gates[0, 0], GH)


def forward_loop(int kind, bint reverse, int T, int B,
                 const floating[:, ::1] w_hh, const floating[::1] b_hh,
                 floating[:, ::1] h, floating[:, ::1] c, const int64_t[::1] lengths,
                 floating[:, ::1] gates, floating[:, ::1] hn, floating[:, ::1] chist,
                 floating[:, :] y, floating[:, ::1] gh, int num_threads):
    """Run the recurrence over all steps.

    h, c   (B, H)     in: initial state, out: final state (c: LSTM only, else None).
    gates  (T*B, G*H) in: projected inputs, out: saved activations.
    hn     (T*B, H)   GRU only (else None), out: W_hn h_prev + b_hn per step.
    chist  (T*B, H)   LSTM only (else None), out: c_t per step.
    y      (T*B, H)   out: h_t per step (zero past each length); rows may be strided, the
                      last axis must be contiguous (checked by the caller).
    gh     (B, G*H)   scratch.
    """
    cdef int H = h.shape[1], ldy = y.strides[0] // sizeof(floating)
    cdef int nt = _threads_for(B, num_threads), tid, b0, b1
    cdef const int64_t* lens = &lengths[0] if lengths is not None else NULL
    cdef floating* c_ptr = &c[0, 0] if c is not None else NULL
    cdef floating* hn_ptr = &hn[0, 0] if hn is not None else NULL
    cdef floating* chist_ptr = &chist[0, 0] if chist is not None else NULL
    with nogil:
        for tid in prange(nt, num_threads=nt, schedule='static', chunksize=1):
            b0 = tid * B // nt
            b1 = (tid + 1) * B // nt
            _forward_slice(kind, T, B, H, b0, b1, reverse, lens, &gates[0, 0], hn_ptr,
                           chist_ptr, &y[0, 0], ldy, &w_hh[0, 0], &b_hh[0],
                           &h[0, 0], c_ptr, &gh[0, 0])


def backward_loop(int kind, bint reverse, int T, int B,
                  const floating[:, ::1] w_hh, const floating[:, ::1] h0,
                  const floating[:, ::1] c0, const int64_t[::1] lengths,
                  floating[:, ::1] gates, floating[:, ::1] hn, const floating[:, ::1] chist,
                  const floating[:, :] y, const floating[:, :] dy,
                  floating[:, ::1] dh, floating[:, ::1] dc, floating[:, ::1] dgh,
                  int num_threads):
    """Backpropagate through all steps, consuming the forward workspace.

    dy     (T*B, H)   gradient at the outputs, rows may be strided; None for no output gradient.
    dh, dc (B, H)     in: gradient at the final state, out: gradient at the initial state.
    gates  (T*B, G*H) in: activations, out: dGh (recurrent-side pre-activation gradients).
    hn     (T*B, H)   GRU: in W_hn h + b_hn, out: x-side gradient of the n gate.
    dgh    (B, G*H)   out: dGh of each row's first step (pairs with h0 in dW_hh).
    """
    cdef int H = h0.shape[1], ldy = y.strides[0] // sizeof(floating)
    cdef int lddy = dy.strides[0] // sizeof(floating) if dy is not None else 0
    cdef int nt = _threads_for(B, num_threads), tid, b0, b1
    cdef const int64_t* lens = &lengths[0] if lengths is not None else NULL
    cdef const floating* c0_ptr = &c0[0, 0] if c0 is not None else NULL
    cdef floating* dc_ptr = &dc[0, 0] if dc is not None else NULL
    cdef floating* hn_ptr = &hn[0, 0] if hn is not None else NULL
    cdef const floating* chist_ptr = &chist[0, 0] if chist is not None else NULL
    cdef const floating* dy_ptr = &dy[0, 0] if dy is not None else NULL
    with nogil:
        for tid in prange(nt, num_threads=nt, schedule='static', chunksize=1):
            b0 = tid * B // nt
            b1 = (tid + 1) * B // nt
            _backward_slice(kind, T, B, H, b0, b1, reverse, lens, &gates[0, 0], hn_ptr,
                            chist_ptr, &y[0, 0], ldy, dy_ptr, lddy, &w_hh[0, 0],
                            &h0[0, 0], c0_ptr, &dh[0, 0], dc_ptr, &dgh[0, 0])


cdef void _add_column_sums(int rows, int cols, const floating* a, int lda,
                           floating* out) noexcept nogil:
    cdef int r, j
    for r in range(rows):
        for j in range(cols):
            out[j] += a[r * lda + j]


def weight_grads(int kind, bint reverse, int T, int B,
                 const floating[:, ::1] x, const floating[:, ::1] w_ih,
                 const floating[:, ::1] h0, const floating[:, :] y,
                 const floating[:, ::1] gates, const floating[:, ::1] hn,
                 const floating[:, ::1] dgh_first,
                 floating[:, ::1] dw_ih, floating[:, ::1] dw_hh,
                 floating[::1] db_ih, floating[::1] db_hh, floating[:, ::1] dx):
    """Accumulate the parameter and input gradients with GEMMs over all steps.

    gates (T*B, G*H) holds dGh from backward_loop. The x side uses the same values except,
    for the GRU, the n gate, whose x-side gradient is in hn (T*B, H).
    The previous hidden state of row (t, b) is y at t-1 (forward) or t+1 (reverse), or h0 at
    each sequence's first step; dgh_first holds dGh at those first steps.
    db_ih / db_hh / dx may be None to skip them.
    """
    cdef int TB = T * B, GH = gates.shape[1], H = h0.shape[1], I = x.shape[1]
    cdef int ldy = y.strides[0] // sizeof(floating)
    cdef int x_cols = 2 * H if kind == K_GRU else GH   # gate columns shared by both sides
    cdef const floating* g = &gates[0, 0]
    cdef const floating* y_prev
    cdef const floating* g_with_prev
    if reverse:
        g_with_prev = g                 # rows t = 0..T-2 pair with y[t+1]
        y_prev = &y[0, 0] + B * ldy
    else:
        g_with_prev = g + B * GH        # rows t = 1..T-1 pair with y[t-1]
        y_prev = &y[0, 0]
    with nogil:
        # Recurrent side.
        gemm(True, False, GH, H, (T - 1) * B, <floating>1, g_with_prev, GH, y_prev, ldy,
             <floating>1, &dw_hh[0, 0], H)
        gemm(True, False, GH, H, B, <floating>1, &dgh_first[0, 0], GH, &h0[0, 0], H,
             <floating>1, &dw_hh[0, 0], H)
        # Input side.
        gemm(True, False, x_cols, I, TB, <floating>1, g, GH, &x[0, 0], I,
             <floating>1, &dw_ih[0, 0], I)
        if kind == K_GRU:
            gemm(True, False, H, I, TB, <floating>1, &hn[0, 0], H, &x[0, 0], I,
                 <floating>1, &dw_ih[2 * H, 0], I)
    if db_hh is not None:
        with nogil:
            _add_column_sums(TB, GH, g, GH, &db_hh[0])
    if db_ih is not None:
        with nogil:
            _add_column_sums(TB, x_cols, g, GH, &db_ih[0])
            if kind == K_GRU:
                _add_column_sums(TB, H, &hn[0, 0], H, &db_ih[2 * H])
    if dx is not None:
        with nogil:
            gemm(False, False, TB, I, x_cols, <floating>1, g, GH, &w_ih[0, 0], I,
                 <floating>1, &dx[0, 0], I)
            if kind == K_GRU:
                gemm(False, False, TB, I, H, <floating>1, &hn[0, 0], H, &w_ih[2 * H, 0], I,
                     <floating>1, &dx[0, 0], I)
