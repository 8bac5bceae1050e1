# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled forward and BPTT for one layer and one direction of a tanh/ReLU RNN, GRU or LSTM.

Arrays are flattened to 2-D with row ``r = t * B + b`` ("time space"). The time loop walks
*steps* s = 0..T-1; for batch row b with length L_b, step s is time ``t = s`` forward, or
``t = L_b - 1 - s`` in reverse, and steps ``s >= L_b`` leave the state untouched. All buffers
are indexed in time space so that the weight gradients are plain GEMMs over all rows.

Four stages, each one OpenMP parallel region:

    project_inputs  gates = x @ W_ih^T + b_ih              one GEMM over all steps
    forward_loop    per step: Gh = h @ W_hh^T, fused gates -> h_t (into y), c_t, activations
    backward_loop   per step: fused gate backward -> dGh (into gates) ; dh += dGh @ W_hh
    weight_grads    dW_ih, dW_hh, db, dx: GEMMs over all steps

The large GEMMs of project_inputs and weight_grads are cut into max(2, threads) parts
shared among fastrnn's OpenMP threads, each calling single-threaded BLAS (the caller limits
BLAS to one thread): one pool of threads for the whole call, because BLAS worker
threads spinning next to the time loop's threads would steal their cores.

The time loops split the work in one of two ways:

* batch > SMALL_BATCH: each thread owns a contiguous slice of the batch for the whole
  sequence and multiplies it by W_hh per step with a small GEMM on weights packed once per
  call (csrc/cells_impl.h, fr_gemm_packed: BLAS would re-pack W_hh on every step). No
  synchronisation inside the loop.
* batch <= SMALL_BATCH (batch 1, generation): each thread owns a block of hidden units of
  every row, computes its gate columns with matrix-vector kernels that stream W_hh once per
  step, and the threads meet at one barrier per step.

Either way each output element of the loops is computed by the same sequence of operations
whatever the thread count; with the GEMM parts above, results are identical for 1 and 2
threads (tested bitwise in float64).
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport parallel, threadid
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from ._blas cimport gemm
from ._cells cimport (K_GRU, K_LSTM, cell_backward_row, cell_forward_row, gate_count,
                      gemm_packed, matvec_cols_acc, matvec_rows, pack_panels, panel_width)
from ._openmp cimport fr_omp_barrier, fr_omp_team_size, fr_openmp_enabled, fr_omp_max_threads


def openmp_enabled():
    """True when the extension was compiled with OpenMP."""
    return bool(fr_openmp_enabled())


def omp_max_threads():
    """OpenMP's default thread count (honours OMP_NUM_THREADS); 1 without OpenMP."""
    return fr_omp_max_threads()


# ---------------------------------------------------------------------------------------------
# Helpers shared by both ways of splitting the work.
# ---------------------------------------------------------------------------------------------

cdef enum:
    # Up to this many sequences the loops split the hidden units across threads and use the
    # matvec kernels of csrc/cells_impl.h; above it, each thread takes a slice of the batch
    # and calls BLAS GEMM per step. With a few rows, GEMM spends most of its time packing
    # W_hh on every step, while the matvecs stream it once.
    SMALL_BATCH = 8
    # Thread column ranges start at multiples of this, so that each hidden unit goes through
    # the same (vector or tail) code whatever the thread count.
    COL_ALIGN = 16
    # The large GEMMs (input projection, weight gradients) are cut into
    # max(GEMM_MIN_PARTS, threads) parts, and threads take whole parts. BLAS's result for an
    # element can depend on the shape of the call (small-matrix kernels), so a part count
    # that does not change between 1 and 2 threads keeps those results identical; with more
    # threads the parts (and the last bits) change. Few parts because each part re-packs
    # the whole of the other GEMM operand (4 parts cost 25% more than 2 on the weight
    # gradients of a 256-unit RNN).
    GEMM_MIN_PARTS = 2


cdef inline int _length(const int64_t* lengths, int b, int T) noexcept nogil:
    return T if lengths == NULL else <int>lengths[b]


cdef inline int _time_of_step(int s, int length, bint reverse) noexcept nogil:
    return length - 1 - s if reverse else s


cdef inline int _prev_time(int t, bint reverse) noexcept nogil:
    return t + 1 if reverse else t - 1


cdef int _slice_steps(const int64_t* lengths, int b0, int b1, int T) noexcept nogil:
    """Steps this slice needs: the longest sequence in it."""
    cdef int b, steps = 0
    if lengths == NULL:
        return T
    for b in range(b0, b1):
        if lengths[b] > steps:
            steps = <int>lengths[b]
    return steps


cdef inline int _split_at(int n, int k, int nt) noexcept nogil:
    """Start of part k of n items split into nt near-equal parts, in whole blocks of
    COL_ALIGN items (so that each item goes through the same vector or tail code whatever
    the thread count, and GEMM shares are whole tiles). Part k is [_split_at(n, k, nt),
    _split_at(n, k + 1, nt)). A function returning values rather than writing through
    pointers, because in a Cython parallel block only assigned variables are private."""
    cdef int blocks = (n + COL_ALIGN - 1) // COL_ALIGN
    return min(n, (k * blocks // nt) * COL_ALIGN)


cdef void _zero_past_lengths(const int64_t* lengths, int T, int B, int b0, int b1,
                             floating* a, int lda, int cols) noexcept nogil:
    """Zero rows (t, b) with t >= length[b] of a time-space array."""
    cdef int b, t
    if lengths == NULL:
        return
    for b in range(b0, b1):
        for t in range(_length(lengths, b, T), T):
            memset(a + <int64_t>(t * B + b) * lda, 0, cols * sizeof(floating))


# ---------------------------------------------------------------------------------------------
# Forward. The state is never copied per step: step s reads h_{t-1} from y's previous row
# (or h0) and writes h_t straight into y; the LSTM cell state likewise lives in chist.
# ---------------------------------------------------------------------------------------------

cdef void _forward_batch_slice(int kind, int T, int B, int H, int b0, int b1, bint reverse,
                               const int64_t* lengths, floating* gates, floating* hn,
                               floating* chist, floating* y, int ldy, const floating* b_hh,
                               const floating* h0, const floating* c0,
                               floating* gh, floating* hcat,
                               const floating* w_packed) noexcept nogil:
    """One thread's slice of the batch, rows [b0, b1): a GEMM for the slice per step, on
    W_hh^T packed once (w_packed)."""
    cdef int GH = gate_count(kind) * H, NR = panel_width(<floating>0)
    cdef int s, b, t, row, prev, length, lda
    cdef int steps = _slice_steps(lengths, b0, b1, T)
    cdef const floating* a
    cdef const floating* h_prev
    cdef const floating* c_prev
    _zero_past_lengths(lengths, T, B, b0, b1, y, ldy, H)
    for s in range(steps):
        # The slice's previous hidden states as one matrix: y's previous rows when every
        # sequence is at the same time (no lengths), else gathered into hcat.
        if s == 0:
            a, lda = h0 + b0 * H, H
        elif lengths == NULL:
            a, lda = y + (_prev_time(_time_of_step(s, T, reverse), reverse) * B + b0) * ldy, ldy
        else:
            for b in range(b0, b1):
                length = _length(lengths, b, T)
                if s < length:
                    prev = _prev_time(_time_of_step(s, length, reverse), reverse) * B + b
                    memcpy(hcat + b * H, y + prev * ldy, H * sizeof(floating))
            a, lda = hcat + b0 * H, H
        gemm_packed(b1 - b0, GH, H, 0, (GH + NR - 1) // NR, a, lda, w_packed,
                    gh + b0 * GH, GH, False)
        for b in range(b0, b1):
            length = _length(lengths, b, T)
            if s >= length:
                continue
            t = _time_of_step(s, length, reverse)
            row = t * B + b
            prev = _prev_time(t, reverse) * B + b
            h_prev = h0 + b * H if s == 0 else y + prev * ldy
            c_prev = NULL
            if kind == K_LSTM:
                c_prev = c0 + b * H if s == 0 else chist + prev * H
            cell_forward_row(kind, H, 0, H, gates + row * GH, gh + b * GH, b_hh, h_prev,
                             y + row * ldy, c_prev,
                             chist + row * H if kind == K_LSTM else NULL,
                             hn + row * H if kind == K_GRU else NULL)


cdef void _forward_columns(int kind, int T, int B, int H, int j0, int j1, bint reverse,
                           const int64_t* lengths, floating* gates, floating* hn,
                           floating* chist, floating* y, int ldy,
                           const floating* w_hh, const floating* b_hh,
                           const floating* h0, const floating* c0,
                           floating* gh) noexcept nogil:
    """Small batch (B <= SMALL_BATCH): this thread owns hidden units [j0, j1) of every row.

    It computes its own gate columns of gh (rows k*H + j of W_hh) and then the gate math for
    its units, which needs no other thread's columns; one barrier per step makes the whole
    h_t visible before the next step's matvec reads it."""
    cdef int G = gate_count(kind), GH = G * H
    cdef int s, b, k, t, row, prev, length, n
    cdef int steps = _slice_steps(lengths, 0, B, T)
    cdef const floating* xs[SMALL_BATCH]
    cdef floating* ys[SMALL_BATCH]
    cdef int active[SMALL_BATCH]
    for s in range(steps):
        n = 0
        for b in range(B):
            length = _length(lengths, b, T)
            if s < length:
                t = _time_of_step(s, length, reverse)
                xs[n] = h0 + b * H if s == 0 else y + (_prev_time(t, reverse) * B + b) * ldy
                ys[n] = gh + b * GH
                active[n] = b
                n += 1
        for k in range(G):
            matvec_rows(k * H + j0, k * H + j1, H, w_hh, H, n, xs, ys)
        for k in range(n):
            b = active[k]
            length = _length(lengths, b, T)
            t = _time_of_step(s, length, reverse)
            row = t * B + b
            prev = _prev_time(t, reverse) * B + b
            cell_forward_row(kind, H, j0, j1, gates + row * GH, gh + b * GH, b_hh, xs[k],
                             y + row * ldy,
                             (c0 + b * H if s == 0 else chist + prev * H) if kind == K_LSTM else NULL,
                             chist + row * H if kind == K_LSTM else NULL,
                             hn + row * H if kind == K_GRU else NULL)
        fr_omp_barrier()


# ---------------------------------------------------------------------------------------------
# Backward. dGh of step t overwrites the activations in gates' row t, and that row is the
# operand of the dh GEMM/matvec, so nothing is copied per step when all sequences are aligned.
# ---------------------------------------------------------------------------------------------

cdef void _backward_batch_slice(int kind, int T, int B, int H, int b0, int b1, bint reverse,
                                const int64_t* lengths, floating* gates, floating* hn,
                                const floating* chist, const floating* y, int ldy,
                                const floating* dy, int lddy,
                                const floating* w_packed, const floating* h0,
                                const floating* c0, floating* dh, floating* dc,
                                floating* dgh) noexcept nogil:
    """One thread's slice of the batch, rows [b0, b1): dh += dGh W_hh per step, with W_hh
    packed once (w_packed)."""
    cdef int GH = gate_count(kind) * H, NR = panel_width(<floating>0)
    cdef int s, b, t, j, row, prev, length
    cdef int steps = _slice_steps(lengths, b0, b1, T)
    cdef const floating* d
    cdef floating* dh_row
    # Rows past a sequence's end take part in the weight-gradient GEMMs: make them zero.
    _zero_past_lengths(lengths, T, B, b0, b1, gates, GH, GH)
    if kind == K_GRU:
        _zero_past_lengths(lengths, T, B, b0, b1, hn, H, H)
    for s in range(steps - 1, -1, -1):
        for b in range(b0, b1):
            length = _length(lengths, b, T)
            if s >= length:
                memset(dgh + b * GH, 0, GH * sizeof(floating))   # lengths only
                continue
            t = _time_of_step(s, length, reverse)
            row = t * B + b
            prev = _prev_time(t, reverse) * B + b
            dh_row = dh + b * H
            if dy != NULL:
                for j in range(H):
                    dh_row[j] += dy[row * lddy + j]
            cell_backward_row(kind, H, 0, H, gates + row * GH,
                              hn + row * H if kind == K_GRU else NULL,
                              chist + row * H if kind == K_LSTM else NULL,
                              (c0 + b * H if s == 0 else chist + prev * H) if kind == K_LSTM else NULL,
                              h0 + b * H if s == 0 else y + prev * ldy,
                              dh_row, dc + b * H if kind == K_LSTM else NULL)
            if lengths != NULL:
                memcpy(dgh + b * GH, gates + row * GH, GH * sizeof(floating))
        if lengths == NULL:
            d = gates + (_time_of_step(s, T, reverse) * B + b0) * GH
        else:
            d = dgh + b0 * GH
        gemm_packed(b1 - b0, H, GH, 0, (H + NR - 1) // NR, d, GH, w_packed,
                    dh + b0 * H, H, True)


cdef void _backward_columns(int kind, int T, int B, int H, int j0, int j1, bint reverse,
                            const int64_t* lengths, floating* gates, floating* hn,
                            const floating* chist, const floating* y, int ldy,
                            const floating* dy, int lddy,
                            const floating* w_hh, const floating* h0, const floating* c0,
                            floating* dh, floating* dc) noexcept nogil:
    """Small batch: this thread owns hidden units [j0, j1). The gate backward of its units
    fills its columns of dGh; after a barrier every thread has all of dGh and adds
    dGh W_hh[:, j0:j1] to its own units of dh. The next step writes another row of gates, so
    one barrier per step is enough."""
    cdef int GH = gate_count(kind) * H
    cdef int s, b, t, j, row, prev, length, n
    cdef int steps = _slice_steps(lengths, 0, B, T)
    cdef const floating* ds[SMALL_BATCH]
    cdef floating* ys[SMALL_BATCH]
    cdef floating* dh_row
    for s in range(steps - 1, -1, -1):
        n = 0
        for b in range(B):
            length = _length(lengths, b, T)
            if s >= length:
                continue
            t = _time_of_step(s, length, reverse)
            row = t * B + b
            prev = _prev_time(t, reverse) * B + b
            dh_row = dh + b * H
            if dy != NULL:
                for j in range(j0, j1):
                    dh_row[j] += dy[row * lddy + j]
            cell_backward_row(kind, H, j0, j1, gates + row * GH,
                              hn + row * H if kind == K_GRU else NULL,
                              chist + row * H if kind == K_LSTM else NULL,
                              (c0 + b * H if s == 0 else chist + prev * H) if kind == K_LSTM else NULL,
                              h0 + b * H if s == 0 else y + prev * ldy,
                              dh_row, dc + b * H if kind == K_LSTM else NULL)
            ds[n] = gates + row * GH
            ys[n] = dh_row
            n += 1
        fr_omp_barrier()
        matvec_cols_acc(j0, j1, GH, w_hh, H, n, ds, ys)


cdef inline int _threads_for(int B, int H, int num_threads) noexcept nogil:
    """Threads to use: one per batch slice (at most B), or per column block of at least
    2 * COL_ALIGN hidden units on the small-batch path."""
    if num_threads < 1:
        num_threads = 1
    if B <= SMALL_BATCH:
        return max(1, min(num_threads, H // (2 * COL_ALIGN)))
    return B if B < num_threads else num_threads


def uses_column_split(int B):
    """True when a batch of B sequences takes the small-batch path (threads split the
    hidden units, no BLAS inside the loop); False when threads split the batch and each
    calls single-threaded BLAS per step."""
    return B <= SMALL_BATCH


cdef void _final_states(int kind, int T, int B, int H, bint reverse, const int64_t* lengths,
                        const floating* y, int ldy, const floating* chist,
                        floating* h, floating* c) noexcept nogil:
    """h, c <- each sequence's state at its last step (time length-1, or 0 in reverse)."""
    cdef int b, length, row
    for b in range(B):
        length = _length(lengths, b, T)
        row = _time_of_step(length - 1, length, reverse) * B + b
        memcpy(h + b * H, y + row * ldy, H * sizeof(floating))
        if kind == K_LSTM:
            memcpy(c + b * H, chist + row * H, H * sizeof(floating))


# ---------------------------------------------------------------------------------------------
# Entry points. Shapes are checked by fastrnn.functional before these are called.
# ---------------------------------------------------------------------------------------------

def project_inputs(const floating[:, ::1] x, const floating[:, ::1] w_ih, const floating[::1] b_ih,
                   floating[:, ::1] gates, int num_threads=1):
    """gates (T*B, G*H) = x (T*B, I) @ w_ih^T (I, G*H) + b_ih, as one GEMM with the bias fused.

    The rows are cut into max(GEMM_MIN_PARTS, num_threads) parts shared among the OpenMP threads, each calling BLAS
    on its parts: the caller keeps BLAS single-threaded, so that the process has one pool of
    threads (BLAS workers spinning next to the time loop's threads would steal its cores)."""
    cdef int rows = gates.shape[0], GH = gates.shape[1], I = x.shape[1], r, tid, nth, p, r0, r1
    cdef int nt = max(1, num_threads), parts = max(GEMM_MIN_PARTS, nt)
    with nogil, parallel(num_threads=nt):
        tid, nth = threadid(), fr_omp_team_size()
        for p in range(tid * parts // nth, (tid + 1) * parts // nth):
            r0 = _split_at(rows, p, parts)
            r1 = _split_at(rows, p + 1, parts)
            for r in range(r0, r1):
                memcpy(&gates[r, 0], &b_ih[0], GH * sizeof(floating))
            if r1 > r0:
                gemm(False, True, r1 - r0, GH, I, <floating>1, &x[r0, 0], I, &w_ih[0, 0], I,
                     <floating>1, &gates[r0, 0], GH)


def parallel_gemm(bint trans_a, bint trans_b, const floating[:, ::1] a,
                  const floating[:, ::1] b, floating[:, ::1] c, floating beta,
                  int num_threads=1):
    """c (m, n) = op(a) @ op(b) + beta * c, the rows of c split into parts shared among the
    OpenMP threads like project_inputs (the caller keeps BLAS single-threaded). Used for the
    dense layers, so a training step never wakes BLAS's own thread pool."""
    cdef int m = c.shape[0], n = c.shape[1], k = a.shape[0] if trans_a else a.shape[1]
    cdef int lda = a.shape[1], ldb = b.shape[1], tid, nth, p, r0, r1
    cdef int nt = max(1, num_threads), parts = max(GEMM_MIN_PARTS, nt)
    cdef const floating* a_rows
    with nogil, parallel(num_threads=nt):
        tid, nth = threadid(), fr_omp_team_size()
        for p in range(tid * parts // nth, (tid + 1) * parts // nth):
            r0 = _split_at(m, p, parts)
            r1 = _split_at(m, p + 1, parts)
            if r1 > r0:
                # Rows r0..r1 of op(a): rows of a, or columns of a when it is transposed.
                a_rows = &a[0, r0] if trans_a else &a[r0, 0]
                gemm(trans_a, trans_b, r1 - r0, n, k, <floating>1, a_rows, lda, &b[0, 0], ldb,
                     beta, &c[r0, 0], n)


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
    cdef int nt = _threads_for(B, H, num_threads), tid, nth, b0, b1, j0, j1
    cdef bint columns = B <= SMALL_BATCH
    cdef const int64_t* lens = &lengths[0] if lengths is not None else NULL
    cdef floating* h0 = &h[0, 0]
    cdef floating* c0 = &c[0, 0] if c is not None else NULL
    cdef floating* hn_ptr = &hn[0, 0] if hn is not None else NULL
    cdef floating* chist_ptr = &chist[0, 0] if chist is not None else NULL
    cdef floating* hcat = NULL
    cdef floating* w_packed = NULL
    cdef int NR = panel_width(<floating>0), panels = (gates.shape[1] + NR - 1) // NR
    if kind == K_LSTM and (c is None or chist is None):
        raise ValueError("the LSTM needs c and chist")
    if kind == K_GRU and hn is None:
        raise ValueError("the GRU needs hn")
    if not columns:
        w_packed = <floating*>malloc(<size_t>panels * NR * H * sizeof(floating))
        if lens != NULL:
            hcat = <floating*>malloc(B * H * sizeof(floating))
        if w_packed == NULL or (lens != NULL and hcat == NULL):
            free(w_packed)
            free(hcat)
            raise MemoryError()
    try:
        with nogil:
            if columns:
                _zero_past_lengths(lens, T, B, 0, B, &y[0, 0], ldy, H)
                with parallel(num_threads=nt):
                    # Partition by the team actually running (OpenMP may give fewer threads).
                    tid, nth = threadid(), fr_omp_team_size()
                    j0 = _split_at(H, tid, nth)
                    j1 = _split_at(H, tid + 1, nth)
                    _forward_columns(kind, T, B, H, j0, j1, reverse, lens, &gates[0, 0],
                                     hn_ptr, chist_ptr, &y[0, 0], ldy, &w_hh[0, 0], &b_hh[0],
                                     h0, c0, &gh[0, 0])
            else:
                with parallel(num_threads=nt):
                    tid, nth = threadid(), fr_omp_team_size()
                    # Pack W_hh^T once, each thread a share of the panels, then all use it.
                    pack_panels(H, gates.shape[1], tid * panels // nth,
                                (tid + 1) * panels // nth, &w_hh[0, 0], H, True, w_packed)
                    fr_omp_barrier()
                    b0 = tid * B // nth
                    b1 = (tid + 1) * B // nth
                    _forward_batch_slice(kind, T, B, H, b0, b1, reverse, lens, &gates[0, 0],
                                         hn_ptr, chist_ptr, &y[0, 0], ldy, &b_hh[0], h0, c0,
                                         &gh[0, 0], hcat, w_packed)
            # h, c held the initial state until now.
            _final_states(kind, T, B, H, reverse, lens, &y[0, 0], ldy, chist_ptr, h0, c0)
    finally:
        free(hcat)
        free(w_packed)


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
    cdef int H = h0.shape[1], ldy = y.strides[0] // sizeof(floating), GH = gates.shape[1]
    cdef int lddy = dy.strides[0] // sizeof(floating) if dy is not None else 0
    cdef int nt = _threads_for(B, H, num_threads), tid, nth, b0, b1, j0, j1, b, length
    cdef const int64_t* lens = &lengths[0] if lengths is not None else NULL
    cdef const floating* c0_ptr = &c0[0, 0] if c0 is not None else NULL
    cdef floating* dc_ptr = &dc[0, 0] if dc is not None else NULL
    cdef floating* hn_ptr = &hn[0, 0] if hn is not None else NULL
    cdef const floating* chist_ptr = &chist[0, 0] if chist is not None else NULL
    cdef const floating* dy_ptr = &dy[0, 0] if dy is not None else NULL
    cdef floating* w_packed = NULL
    cdef int NR = panel_width(<floating>0), panels = (H + NR - 1) // NR
    if B > SMALL_BATCH:
        w_packed = <floating*>malloc(<size_t>panels * NR * GH * sizeof(floating))
        if w_packed == NULL:
            raise MemoryError()
    with nogil:
        if B <= SMALL_BATCH:
            _zero_past_lengths(lens, T, B, 0, B, &gates[0, 0], GH, GH)
            if kind == K_GRU:
                _zero_past_lengths(lens, T, B, 0, B, hn_ptr, H, H)
            with parallel(num_threads=nt):
                tid, nth = threadid(), fr_omp_team_size()
                j0 = _split_at(H, tid, nth)
                j1 = _split_at(H, tid + 1, nth)
                _backward_columns(kind, T, B, H, j0, j1, reverse, lens, &gates[0, 0], hn_ptr,
                                  chist_ptr, &y[0, 0], ldy, dy_ptr, lddy, &w_hh[0, 0],
                                  &h0[0, 0], c0_ptr, &dh[0, 0], dc_ptr)
        else:
            with parallel(num_threads=nt):
                tid, nth = threadid(), fr_omp_team_size()
                # Pack W_hh once, each thread a share of the panels, then all use it.
                pack_panels(GH, H, tid * panels // nth, (tid + 1) * panels // nth, &w_hh[0, 0],
                            H, False, w_packed)
                fr_omp_barrier()
                b0 = tid * B // nth
                b1 = (tid + 1) * B // nth
                _backward_batch_slice(kind, T, B, H, b0, b1, reverse, lens, &gates[0, 0],
                                      hn_ptr, chist_ptr, &y[0, 0], ldy, dy_ptr, lddy,
                                      w_packed, &h0[0, 0], c0_ptr, &dh[0, 0], dc_ptr,
                                      &dgh[0, 0])
        free(w_packed)
        # dGh at each sequence's first step, which pairs with h0 in dW_hh.
        for b in range(B):
            length = _length(lens, b, T)
            memcpy(&dgh[b, 0], &gates[0, 0] + (_time_of_step(0, length, reverse) * B + b) * GH,
                   GH * sizeof(floating))


cdef void _add_column_sums(int rows, int c0, int c1, const floating* a, int lda,
                           floating* out) noexcept nogil:
    """out[j] += sum over rows of a[r, j], for columns [c0, c1)."""
    cdef int r, j
    for r in range(rows):
        for j in range(c0, c1):
            out[j] += a[r * lda + j]


cdef void _weight_grads_part(int kind, bint reverse, int T, int B, int H, int I, int GH,
                             int part, int parts, const floating* x, const floating* w_ih,
                             const floating* h0, const floating* y, int ldy,
                             const floating* g, const floating* hn,
                             const floating* dgh_first, floating* dw_ih, floating* dw_hh,
                             floating* db_ih, floating* db_hh, floating* dx,
                             floating* tmp_ih, floating* tmp_hh) noexcept nogil:
    """Part ``part`` of ``parts`` of weight_grads.

    dW_ih, dW_hh: when tmp_ih / tmp_hh are given (K split), this part sums over its share of
    the time-space rows, part 0 into dW itself and part p > 0 into tmp_*[p - 1] (summed into
    dW afterwards); else it computes rows [lo, hi) of dW over all rows. db, dx: rows [lo, hi)
    of the output (gate columns of db; time-space rows of dx). Parts write disjoint memory."""
    cdef int TB = T * B, lo, hi, k0, k1
    cdef int x_cols = 2 * H if kind == K_GRU else GH   # gate columns shared by both sides
    cdef const floating* y_prev
    cdef const floating* g_with_prev
    cdef floating* c_hh = dw_hh
    cdef floating* c_ih = dw_ih
    cdef floating beta = 1
    if reverse:
        g_with_prev = g                 # rows t = 0..T-2 pair with y[t+1]
        y_prev = y + B * ldy
    else:
        g_with_prev = g + B * GH        # rows t = 1..T-1 pair with y[t-1]
        y_prev = y
    if tmp_hh != NULL:
        # dW_hh += dGh^T h_prev over this part's rows: a K split, so that each part packs
        # only its share of both operands (an M split re-packs all of h_prev per part).
        if part > 0:
            c_hh, c_ih, beta = tmp_hh + (part - 1) * GH * H, tmp_ih + (part - 1) * GH * I, 0
        k0, k1 = _split_at((T - 1) * B, part, parts), _split_at((T - 1) * B, part + 1, parts)
        gemm(True, False, GH, H, k1 - k0, <floating>1, g_with_prev + k0 * GH, GH,
             y_prev + k0 * ldy, ldy, beta, c_hh, H)
        if part == 0:
            gemm(True, False, GH, H, B, <floating>1, dgh_first, GH, h0, H, <floating>1, dw_hh, H)
        k0, k1 = _split_at(TB, part, parts), _split_at(TB, part + 1, parts)
        gemm(True, False, x_cols, I, k1 - k0, <floating>1, g + k0 * GH, GH, x + k0 * I, I,
             beta, c_ih, I)
        if kind == K_GRU:
            gemm(True, False, H, I, k1 - k0, <floating>1, hn + k0 * H, H, x + k0 * I, I,
                 beta, c_ih + 2 * H * I, I)
    else:
        # dW_hh[lo:hi] += dGh[:, lo:hi]^T h_prev.
        lo, hi = _split_at(GH, part, parts), _split_at(GH, part + 1, parts)
        if hi > lo:
            gemm(True, False, hi - lo, H, (T - 1) * B, <floating>1, g_with_prev + lo, GH,
                 y_prev, ldy, <floating>1, dw_hh + lo * H, H)
            gemm(True, False, hi - lo, H, B, <floating>1, dgh_first + lo, GH, h0, H,
                 <floating>1, dw_hh + lo * H, H)
        # Input side: the same dGh columns, except the GRU's n gate, whose gradient is in hn.
        lo, hi = _split_at(x_cols, part, parts), _split_at(x_cols, part + 1, parts)
        if hi > lo:
            gemm(True, False, hi - lo, I, TB, <floating>1, g + lo, GH, x, I,
                 <floating>1, dw_ih + lo * I, I)
        if kind == K_GRU:
            lo, hi = _split_at(H, part, parts), _split_at(H, part + 1, parts)
            if hi > lo:
                gemm(True, False, hi - lo, I, TB, <floating>1, hn + lo, H, x, I,
                     <floating>1, dw_ih + (2 * H + lo) * I, I)
    # Biases: column sums of the same gradients.
    lo, hi = _split_at(GH, part, parts), _split_at(GH, part + 1, parts)
    if db_hh != NULL and hi > lo:
        _add_column_sums(TB, lo, hi, g, GH, db_hh)
    lo, hi = _split_at(x_cols, part, parts), _split_at(x_cols, part + 1, parts)
    if db_ih != NULL and hi > lo:
        _add_column_sums(TB, lo, hi, g, GH, db_ih)
    if kind == K_GRU and db_ih != NULL:
        lo, hi = _split_at(H, part, parts), _split_at(H, part + 1, parts)
        if hi > lo:
            _add_column_sums(TB, lo, hi, hn, H, db_ih + 2 * H)
    # dx[lo:hi] += dG[lo:hi] W_ih.
    if dx != NULL:
        lo, hi = _split_at(TB, part, parts), _split_at(TB, part + 1, parts)
        if hi > lo:
            gemm(False, False, hi - lo, I, x_cols, <floating>1, g + lo * GH, GH, w_ih, I,
                 <floating>1, dx + lo * I, I)
            if kind == K_GRU:
                gemm(False, False, hi - lo, I, H, <floating>1, hn + lo * H, H, w_ih + 2 * H * I,
                     I, <floating>1, dx + lo * I, I)


cdef void _add_parts(int n, int lo, int hi, int parts, const floating* tmp,
                     floating* out) noexcept nogil:
    """out[lo:hi] += tmp[0][lo:hi] + ... + tmp[parts - 2][lo:hi], in that order."""
    cdef int q, i
    for q in range(parts - 1):
        for i in range(lo, hi):
            out[i] += tmp[<int64_t>q * n + i]


def weight_grads(int kind, bint reverse, int T, int B,
                 const floating[:, ::1] x, const floating[:, ::1] w_ih,
                 const floating[:, ::1] h0, const floating[:, :] y,
                 const floating[:, ::1] gates, const floating[:, ::1] hn,
                 const floating[:, ::1] dgh_first,
                 floating[:, ::1] dw_ih, floating[:, ::1] dw_hh,
                 floating[::1] db_ih, floating[::1] db_hh, floating[:, ::1] dx,
                 int num_threads=1):
    """Accumulate the parameter and input gradients with GEMMs over all steps.

    gates (T*B, G*H) holds dGh from backward_loop. The x side uses the same values except,
    for the GRU, the n gate, whose x-side gradient is in hn (T*B, H).
    The previous hidden state of row (t, b) is y at t-1 (forward) or t+1 (reverse), or h0 at
    each sequence's first step; dgh_first holds dGh at those first steps.
    db_ih / db_hh / dx may be None to skip them.
    The outputs are cut into max(GEMM_MIN_PARTS, num_threads) parts shared among the OpenMP threads, each calling
    single-threaded BLAS on its parts (see project_inputs).
    """
    cdef int GH = gates.shape[1], H = h0.shape[1], I = x.shape[1], tid, nth, p
    cdef int ldy = y.strides[0] // sizeof(floating), nt = max(1, num_threads)
    cdef int parts = max(GEMM_MIN_PARTS, nt)
    cdef floating[::1] tmp_view
    cdef const floating* hn_ptr = &hn[0, 0] if hn is not None else NULL
    cdef floating* db_ih_ptr = &db_ih[0] if db_ih is not None else NULL
    cdef floating* db_hh_ptr = &db_hh[0] if db_hh is not None else NULL
    cdef floating* dx_ptr = &dx[0, 0] if dx is not None else NULL
    cdef floating* tmp_ih = NULL
    cdef floating* tmp_hh = NULL
    # Split dW's GEMMs along the rows summed over (K) when there are many more of them than
    # gate columns: then re-packing the long operand per part would cost more than the
    # (parts - 1) small partial results, which are allocated through numpy so that they
    # show in memory measurements.
    if T * B >= 16 * max(GH, max(H, I)):
        tmp = np.empty((parts - 1) * GH * (H + I), dtype=np.float32 if floating is float else np.float64)
        tmp_view = tmp
        tmp_hh = &tmp_view[0]
        tmp_ih = tmp_hh + (parts - 1) * GH * H
    with nogil, parallel(num_threads=nt):
        tid, nth = threadid(), fr_omp_team_size()
        for p in range(tid * parts // nth, (tid + 1) * parts // nth):
            _weight_grads_part(kind, reverse, T, B, H, I, GH, p, parts, &x[0, 0], &w_ih[0, 0],
                               &h0[0, 0], &y[0, 0], ldy, &gates[0, 0], hn_ptr,
                               &dgh_first[0, 0], &dw_ih[0, 0], &dw_hh[0, 0], db_ih_ptr,
                               db_hh_ptr, dx_ptr, tmp_ih, tmp_hh)
        if tmp_hh != NULL:
            fr_omp_barrier()
            _add_parts(GH * H, _split_at(GH * H, tid, nth), _split_at(GH * H, tid + 1, nth),
                       parts, tmp_hh, &dw_hh[0, 0])
            _add_parts(GH * I, _split_at(GH * I, tid, nth), _split_at(GH * I, tid + 1, nth),
                       parts, tmp_ih, &dw_ih[0, 0])
