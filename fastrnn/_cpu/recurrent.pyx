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

All index arithmetic is 64-bit (Py_ssize_t): a row index times a row stride passes 2^31
elements at sizes that fit in memory (T=513, B=256, H=4096 LSTM). Sizes that reach BLAS, which
takes C int, are checked by each entry point (_blas_int), as are the shapes of every buffer
the kernels touch (the kernels trust nothing they are given).
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport parallel, threadid
from libc.limits cimport INT_MAX
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from ._blas cimport gemm
from ._cells cimport (K_GRU, K_LSTM, cell_backward_row, cell_forward_row, gate_count,
                      gemm_packed, matvec_cols_acc, matvec_rows, pack_panels, panel_width)
from ._openmp cimport (fr_forked_child, fr_install_fork_guard, fr_omp_barrier,
                       fr_omp_max_threads, fr_omp_team_size, fr_openmp_enabled,
                       fr_team_threads)

fr_install_fork_guard()


def openmp_enabled():
    """True when the extension was compiled with OpenMP."""
    return bool(fr_openmp_enabled())


def omp_max_threads():
    """OpenMP's default thread count (honours OMP_NUM_THREADS); 1 without OpenMP."""
    return fr_omp_max_threads()


def in_forked_child():
    """True in a process made by fork() after this module was imported: there the kernels
    run on one thread (libgomp cannot start a team after fork; see _openmp.pxd), with the
    work split as for the requested thread count, so results do not change."""
    return bool(fr_forked_child())


# ---------------------------------------------------------------------------------------------
# Argument checks of the entry points. The Python layer checks user input with better
# messages; these keep a bad buffer (a tampered workspace, a direct call) from reaching a
# kernel that would read or write past it.
# ---------------------------------------------------------------------------------------------

cdef int _blas_int(Py_ssize_t n, str what) except -1:
    """n, which some entry point passes to BLAS as a size or leading dimension, must fit a C int."""
    if n > INT_MAX:
        raise ValueError(f"{what} is {n}, more than BLAS can take ({INT_MAX}, the largest C "
                         f"int): split the problem (shorter sequences or a smaller batch)")
    return 0


cdef int _check_shape(str name, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t want_rows,
                      Py_ssize_t want_cols) except -1:
    if rows != want_rows or cols != want_cols:
        raise ValueError(f"{name} must have shape ({want_rows}, {want_cols}), got ({rows}, {cols})")
    return 0


cdef int _check_len(str name, Py_ssize_t n, Py_ssize_t want) except -1:
    if n != want:
        raise ValueError(f"{name} must have shape ({want},), got ({n},)")
    return 0


cdef Py_ssize_t _row_stride(str name, Py_ssize_t stride, Py_ssize_t itemsize, Py_ssize_t rows,
                            Py_ssize_t cols) except -1:
    """Row stride in elements of a (rows, cols) array whose rows may be strided: a positive
    whole number of elements, at least cols (rows must not overlap), and fitting BLAS."""
    if rows <= 1:
        return max(cols, 1)   # never used to step; BLAS wants at least the row length
    if stride % itemsize != 0 or stride // itemsize < cols:
        raise ValueError(f"{name} rows must be a positive whole number of elements apart and "
                         f"not overlap (row stride >= {cols} elements), got a row stride of "
                         f"{stride} bytes")
    _blas_int(stride // itemsize, f"the row stride of {name}")
    return stride // itemsize


cdef int _check_dims(Py_ssize_t T, Py_ssize_t B, Py_ssize_t H, Py_ssize_t GH) except -1:
    """T, B >= 1, H >= 1, and the sizes the kernels hand to BLAS (or keep as C int) fit."""
    if T < 1 or B < 1 or H < 1:
        raise ValueError(f"T, B and H must be >= 1, got T={T}, B={B}, H={H}")
    _blas_int(GH, "G*H (gate columns)")
    _blas_int(B, "the batch size B")
    if T > (<Py_ssize_t>1 << 62) // B:
        raise ValueError(f"T*B overflows: T={T}, B={B}")
    _blas_int(T * B, "T*B (time-space rows)")
    return 0


cdef int _check_lengths(const int64_t[::1] lengths, Py_ssize_t T, Py_ssize_t B) except -1:
    cdef Py_ssize_t b
    if lengths is None:
        return 0
    _check_len("lengths", lengths.shape[0], B)
    for b in range(B):
        if lengths[b] < 1 or lengths[b] > T:
            raise ValueError(f"lengths must be in [1, {T}], got {lengths[b]} at {b}")
    return 0


def _time_space_offset(Py_ssize_t t, Py_ssize_t B, Py_ssize_t b, Py_ssize_t ld):
    """Private, for tests: the element offset the kernels use for row (t, b) of a time-space
    array with row stride ld (_row_at(_row(t, B, b), ld))."""
    return _row_at(_row(t, B, b), ld)


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


cdef inline Py_ssize_t _row(Py_ssize_t t, Py_ssize_t B, Py_ssize_t b) noexcept nogil:
    """Time-space row of sequence b at time t."""
    return t * B + b


cdef inline Py_ssize_t _row_at(Py_ssize_t row, Py_ssize_t ld) noexcept nogil:
    """Element offset of a row in an array with row stride ld (64-bit: this is the product
    that passes 2^31 first)."""
    return row * ld


cdef inline Py_ssize_t _length(const int64_t* lengths, Py_ssize_t b, Py_ssize_t T) noexcept nogil:
    return T if lengths == NULL else <Py_ssize_t>lengths[b]


cdef inline Py_ssize_t _time_of_step(Py_ssize_t s, Py_ssize_t length, bint reverse) noexcept nogil:
    return length - 1 - s if reverse else s


cdef inline Py_ssize_t _prev_time(Py_ssize_t t, bint reverse) noexcept nogil:
    return t + 1 if reverse else t - 1


cdef Py_ssize_t _slice_steps(const int64_t* lengths, Py_ssize_t b0, Py_ssize_t b1,
                             Py_ssize_t T) noexcept nogil:
    """Steps this slice needs: the longest sequence in it."""
    cdef Py_ssize_t b, steps = 0
    if lengths == NULL:
        return T
    for b in range(b0, b1):
        if lengths[b] > steps:
            steps = <Py_ssize_t>lengths[b]
    return steps


cdef inline Py_ssize_t _split_at(Py_ssize_t n, Py_ssize_t k, Py_ssize_t nt) noexcept nogil:
    """Start of part k of n items split into nt near-equal parts, in whole blocks of
    COL_ALIGN items (so that each item goes through the same vector or tail code whatever
    the thread count, and GEMM shares are whole tiles). Part k is [_split_at(n, k, nt),
    _split_at(n, k + 1, nt)). A function returning values rather than writing through
    pointers, because in a Cython parallel block only assigned variables are private."""
    cdef Py_ssize_t blocks = (n + COL_ALIGN - 1) // COL_ALIGN
    return min(n, (k * blocks // nt) * COL_ALIGN)


cdef void _zero_past_lengths(const int64_t* lengths, Py_ssize_t T, Py_ssize_t B, Py_ssize_t b0,
                             Py_ssize_t b1, floating* a, Py_ssize_t lda,
                             Py_ssize_t cols) noexcept nogil:
    """Zero rows (t, b) with t >= length[b] of a time-space array."""
    cdef Py_ssize_t b, t
    if lengths == NULL:
        return
    for b in range(b0, b1):
        for t in range(_length(lengths, b, T), T):
            memset(a + _row_at(_row(t, B, b), lda), 0, cols * sizeof(floating))


# ---------------------------------------------------------------------------------------------
# Forward. The state is never copied per step: step s reads h_{t-1} from y's previous row
# (or h0) and writes h_t straight into y; the LSTM cell state likewise lives in chist.
# ---------------------------------------------------------------------------------------------

cdef void _forward_batch_slice(int kind, Py_ssize_t T, Py_ssize_t B, Py_ssize_t H,
                               Py_ssize_t b0, Py_ssize_t b1, bint reverse,
                               const int64_t* lengths, floating* gates, floating* hn,
                               floating* chist, floating* y, Py_ssize_t ldy,
                               const floating* b_hh, const floating* h0, const floating* c0,
                               floating* gh, floating* hcat,
                               const floating* w_packed) noexcept nogil:
    """One thread's slice of the batch, rows [b0, b1): a GEMM for the slice per step, on
    W_hh^T packed once (w_packed)."""
    cdef Py_ssize_t GH = gate_count(kind) * H, NR = panel_width(<floating>0)
    cdef Py_ssize_t s, b, t, row, prev, length, lda
    cdef Py_ssize_t steps = _slice_steps(lengths, b0, b1, T)
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
            a, lda = y + _row_at(_row(_prev_time(_time_of_step(s, T, reverse), reverse), B, b0), ldy), ldy
        else:
            for b in range(b0, b1):
                length = _length(lengths, b, T)
                if s < length:
                    prev = _row(_prev_time(_time_of_step(s, length, reverse), reverse), B, b)
                    memcpy(hcat + b * H, y + _row_at(prev, ldy), H * sizeof(floating))
            a, lda = hcat + b0 * H, H
        gemm_packed(b1 - b0, GH, H, 0, (GH + NR - 1) // NR, a, lda, w_packed,
                    gh + b0 * GH, GH, False)
        for b in range(b0, b1):
            length = _length(lengths, b, T)
            if s >= length:
                continue
            t = _time_of_step(s, length, reverse)
            row = _row(t, B, b)
            prev = _row(_prev_time(t, reverse), B, b)
            h_prev = h0 + b * H if s == 0 else y + _row_at(prev, ldy)
            c_prev = NULL
            if kind == K_LSTM:
                c_prev = c0 + b * H if s == 0 else chist + _row_at(prev, H)
            cell_forward_row(kind, H, 0, H, gates + _row_at(row, GH), gh + b * GH, b_hh, h_prev,
                             y + _row_at(row, ldy), c_prev,
                             chist + _row_at(row, H) if kind == K_LSTM else NULL,
                             hn + _row_at(row, H) if kind == K_GRU else NULL)


cdef void _forward_columns(int kind, Py_ssize_t T, Py_ssize_t B, Py_ssize_t H, Py_ssize_t j0,
                           Py_ssize_t j1, bint reverse, const int64_t* lengths,
                           floating* gates, floating* hn, floating* chist, floating* y,
                           Py_ssize_t ldy, const floating* w_hh, const floating* b_hh,
                           const floating* h0, const floating* c0,
                           floating* gh) noexcept nogil:
    """Small batch (B <= SMALL_BATCH): this thread owns hidden units [j0, j1) of every row.

    It computes its own gate columns of gh (rows k*H + j of W_hh) and then the gate math for
    its units, which needs no other thread's columns; one barrier per step makes the whole
    h_t visible before the next step's matvec reads it."""
    cdef Py_ssize_t G = gate_count(kind), GH = G * H
    cdef Py_ssize_t s, b, k, t, row, prev, length
    cdef int n
    cdef Py_ssize_t steps = _slice_steps(lengths, 0, B, T)
    cdef const floating* xs[SMALL_BATCH]
    cdef floating* ys[SMALL_BATCH]
    cdef Py_ssize_t active[SMALL_BATCH]
    for s in range(steps):
        n = 0
        for b in range(B):
            length = _length(lengths, b, T)
            if s < length:
                t = _time_of_step(s, length, reverse)
                xs[n] = h0 + b * H if s == 0 else y + _row_at(_row(_prev_time(t, reverse), B, b), ldy)
                ys[n] = gh + b * GH
                active[n] = b
                n += 1
        for k in range(G):
            matvec_rows(k * H + j0, k * H + j1, H, w_hh, H, n, xs, ys)
        for k in range(n):
            b = active[k]
            length = _length(lengths, b, T)
            t = _time_of_step(s, length, reverse)
            row = _row(t, B, b)
            prev = _row(_prev_time(t, reverse), B, b)
            cell_forward_row(kind, H, j0, j1, gates + _row_at(row, GH), gh + b * GH, b_hh, xs[k],
                             y + _row_at(row, ldy),
                             (c0 + b * H if s == 0 else chist + _row_at(prev, H)) if kind == K_LSTM else NULL,
                             chist + _row_at(row, H) if kind == K_LSTM else NULL,
                             hn + _row_at(row, H) if kind == K_GRU else NULL)
        fr_omp_barrier()


# ---------------------------------------------------------------------------------------------
# Backward. dGh of step t overwrites the activations in gates' row t, and that row is the
# operand of the dh GEMM/matvec, so nothing is copied per step when all sequences are aligned.
# ---------------------------------------------------------------------------------------------

cdef void _backward_batch_slice(int kind, Py_ssize_t T, Py_ssize_t B, Py_ssize_t H,
                                Py_ssize_t b0, Py_ssize_t b1, bint reverse,
                                const int64_t* lengths, floating* gates, floating* hn,
                                const floating* chist, const floating* y, Py_ssize_t ldy,
                                const floating* dy, Py_ssize_t lddy,
                                const floating* w_packed, const floating* h0,
                                const floating* c0, floating* dh, floating* dc,
                                floating* dgh) noexcept nogil:
    """One thread's slice of the batch, rows [b0, b1): dh += dGh W_hh per step, with W_hh
    packed once (w_packed)."""
    cdef Py_ssize_t GH = gate_count(kind) * H, NR = panel_width(<floating>0)
    cdef Py_ssize_t s, b, t, j, row, prev, length
    cdef Py_ssize_t steps = _slice_steps(lengths, b0, b1, T)
    cdef const floating* d
    cdef const floating* dy_row
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
            row = _row(t, B, b)
            prev = _row(_prev_time(t, reverse), B, b)
            dh_row = dh + b * H
            if dy != NULL:
                dy_row = dy + _row_at(row, lddy)
                for j in range(H):
                    dh_row[j] += dy_row[j]
            cell_backward_row(kind, H, 0, H, gates + _row_at(row, GH),
                              hn + _row_at(row, H) if kind == K_GRU else NULL,
                              chist + _row_at(row, H) if kind == K_LSTM else NULL,
                              (c0 + b * H if s == 0 else chist + _row_at(prev, H)) if kind == K_LSTM else NULL,
                              h0 + b * H if s == 0 else y + _row_at(prev, ldy),
                              dh_row, dc + b * H if kind == K_LSTM else NULL)
            if lengths != NULL:
                memcpy(dgh + b * GH, gates + _row_at(row, GH), GH * sizeof(floating))
        if lengths == NULL:
            d = gates + _row_at(_row(_time_of_step(s, T, reverse), B, b0), GH)
        else:
            d = dgh + b0 * GH
        gemm_packed(b1 - b0, H, GH, 0, (H + NR - 1) // NR, d, GH, w_packed,
                    dh + b0 * H, H, True)


cdef void _backward_columns(int kind, Py_ssize_t T, Py_ssize_t B, Py_ssize_t H, Py_ssize_t j0,
                            Py_ssize_t j1, bint reverse, const int64_t* lengths,
                            floating* gates, floating* hn, const floating* chist,
                            const floating* y, Py_ssize_t ldy, const floating* dy,
                            Py_ssize_t lddy, const floating* w_hh, const floating* h0,
                            const floating* c0, floating* dh, floating* dc) noexcept nogil:
    """Small batch: this thread owns hidden units [j0, j1). The gate backward of its units
    fills its columns of dGh; after a barrier every thread has all of dGh and adds
    dGh W_hh[:, j0:j1] to its own units of dh. The next step writes another row of gates, so
    one barrier per step is enough."""
    cdef Py_ssize_t GH = gate_count(kind) * H
    cdef Py_ssize_t s, b, t, j, row, prev, length
    cdef int n
    cdef Py_ssize_t steps = _slice_steps(lengths, 0, B, T)
    cdef const floating* ds[SMALL_BATCH]
    cdef floating* ys[SMALL_BATCH]
    cdef const floating* dy_row
    cdef floating* dh_row
    for s in range(steps - 1, -1, -1):
        n = 0
        for b in range(B):
            length = _length(lengths, b, T)
            if s >= length:
                continue
            t = _time_of_step(s, length, reverse)
            row = _row(t, B, b)
            prev = _row(_prev_time(t, reverse), B, b)
            dh_row = dh + b * H
            if dy != NULL:
                dy_row = dy + _row_at(row, lddy)
                for j in range(j0, j1):
                    dh_row[j] += dy_row[j]
            cell_backward_row(kind, H, j0, j1, gates + _row_at(row, GH),
                              hn + _row_at(row, H) if kind == K_GRU else NULL,
                              chist + _row_at(row, H) if kind == K_LSTM else NULL,
                              (c0 + b * H if s == 0 else chist + _row_at(prev, H)) if kind == K_LSTM else NULL,
                              h0 + b * H if s == 0 else y + _row_at(prev, ldy),
                              dh_row, dc + b * H if kind == K_LSTM else NULL)
            ds[n] = gates + _row_at(row, GH)
            ys[n] = dh_row
            n += 1
        fr_omp_barrier()
        matvec_cols_acc(j0, j1, GH, w_hh, H, n, ds, ys)


cdef inline int _threads_for(Py_ssize_t B, Py_ssize_t H, int num_threads) noexcept nogil:
    """Threads to use: one per batch slice (at most B), or per column block of at least
    2 * COL_ALIGN hidden units on the small-batch path (1 in a forked child)."""
    cdef int nt = fr_team_threads(num_threads)
    if B <= SMALL_BATCH:
        return <int>max(1, min(nt, H // (2 * COL_ALIGN)))
    return <int>B if B < nt else nt


def uses_column_split(Py_ssize_t B):
    """True when a batch of B sequences takes the small-batch path (threads split the
    hidden units, no BLAS inside the loop); False when threads split the batch and each
    calls single-threaded BLAS per step."""
    return B <= SMALL_BATCH


cdef void _final_states(int kind, Py_ssize_t T, Py_ssize_t B, Py_ssize_t H, bint reverse,
                        const int64_t* lengths, const floating* y, Py_ssize_t ldy,
                        const floating* chist, floating* h, floating* c) noexcept nogil:
    """h, c <- each sequence's state at its last step (time length-1, or 0 in reverse)."""
    cdef Py_ssize_t b, length, row
    for b in range(B):
        length = _length(lengths, b, T)
        row = _row(_time_of_step(length - 1, length, reverse), B, b)
        memcpy(h + b * H, y + _row_at(row, ldy), H * sizeof(floating))
        if kind == K_LSTM:
            memcpy(c + b * H, chist + _row_at(row, H), H * sizeof(floating))


# ---------------------------------------------------------------------------------------------
# Entry points. Shapes are checked by fastrnn.functional before these are called, and again
# here against each other (nothing the kernels index is taken on trust).
# ---------------------------------------------------------------------------------------------

def project_inputs(const floating[:, ::1] x not None, const floating[:, ::1] w_ih not None,
                   const floating[::1] b_ih not None, floating[:, ::1] gates not None,
                   int num_threads=1):
    """gates (T*B, G*H) = x (T*B, I) @ w_ih^T (I, G*H) + b_ih, as one GEMM with the bias fused.

    The rows are cut into max(GEMM_MIN_PARTS, num_threads) parts shared among the OpenMP threads, each calling BLAS
    on its parts: the caller keeps BLAS single-threaded, so that the process has one pool of
    threads (BLAS workers spinning next to the time loop's threads would steal its cores)."""
    cdef Py_ssize_t rows = x.shape[0], GH = w_ih.shape[0], I = x.shape[1], r, r0, r1
    cdef int tid, nth, p
    cdef int nt = fr_team_threads(num_threads), parts = max(GEMM_MIN_PARTS, num_threads)
    _check_shape("w_ih", w_ih.shape[0], w_ih.shape[1], GH, I)
    _check_shape("gates", gates.shape[0], gates.shape[1], rows, GH)
    _check_len("b_ih", b_ih.shape[0], GH)
    if I < 1:
        raise ValueError(f"x must have at least one column, got shape ({rows}, {I})")
    for n, what in ((rows, "the number of rows T*B"), (GH, "G*H"), (I, "the input size I")):
        _blas_int(n, what)
    if rows == 0 or GH == 0:
        return
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


def parallel_gemm(bint trans_a, bint trans_b, const floating[:, ::1] a not None,
                  const floating[:, ::1] b not None, floating[:, ::1] c not None,
                  floating beta, int num_threads=1):
    """c (m, n) = op(a) @ op(b) + beta * c, the rows of c split into parts shared among the
    OpenMP threads like project_inputs (the caller keeps BLAS single-threaded). Used for the
    dense layers, so a training step never wakes BLAS's own thread pool."""
    cdef Py_ssize_t m = c.shape[0], n = c.shape[1], k = a.shape[0] if trans_a else a.shape[1]
    cdef Py_ssize_t lda = a.shape[1], ldb = b.shape[1], r0, r1
    cdef int tid, nth, p
    cdef int nt = fr_team_threads(num_threads), parts = max(GEMM_MIN_PARTS, num_threads)
    cdef const floating* a_rows
    if (a.shape[1] if trans_a else a.shape[0]) != m:
        raise ValueError(f"a has {a.shape[1] if trans_a else a.shape[0]} rows of op(a), "
                         f"c has {m}")
    if (b.shape[1] if trans_b else b.shape[0]) != k or (b.shape[0] if trans_b else b.shape[1]) != n:
        raise ValueError(f"op(b) must have shape ({k}, {n}), got "
                         f"({b.shape[1] if trans_b else b.shape[0]}, "
                         f"{b.shape[0] if trans_b else b.shape[1]})")
    for size, what in ((m, "the rows of c"), (n, "the columns of c"), (k, "the inner dimension"),
                       (lda, "the row length of a"), (ldb, "the row length of b")):
        _blas_int(size, what)
    if m == 0 or n == 0:
        return
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


def forward_loop(int kind, bint reverse, Py_ssize_t T, Py_ssize_t B,
                 const floating[:, ::1] w_hh not None, const floating[::1] b_hh not None,
                 floating[:, ::1] h not None, floating[:, ::1] c, const int64_t[::1] lengths,
                 floating[:, ::1] gates not None, floating[:, ::1] hn, floating[:, ::1] chist,
                 floating[:, :] y not None, floating[:, ::1] gh not None, int num_threads):
    """Run the recurrence over all steps.

    h, c   (B, H)     in: initial state, out: final state (c: LSTM only, else None).
    gates  (T*B, G*H) in: projected inputs, out: saved activations.
    hn     (T*B, H)   GRU only (else None), out: W_hn h_prev + b_hn per step.
    chist  (T*B, H)   LSTM only (else None), out: c_t per step.
    y      (T*B, H)   out: h_t per step (zero past each length); rows may be strided, the
                      last axis must be contiguous (checked by the caller).
    gh     (B, G*H)   scratch.
    """
    cdef Py_ssize_t H = h.shape[1], GH = gate_count(kind) * H, ldy
    cdef int nt = _threads_for(B, H, num_threads), tid, nth
    cdef Py_ssize_t b0, b1, j0, j1
    cdef bint columns = B <= SMALL_BATCH
    cdef const int64_t* lens = &lengths[0] if lengths is not None else NULL
    cdef floating* h0
    cdef floating* c0 = NULL
    cdef floating* hn_ptr = NULL
    cdef floating* chist_ptr = NULL
    cdef floating* hcat = NULL
    cdef floating* w_packed = NULL
    cdef Py_ssize_t NR = panel_width(<floating>0), panels = (GH + NR - 1) // NR
    _check_dims(T, B, H, GH)
    _check_shape("h", h.shape[0], h.shape[1], B, H)
    _check_shape("w_hh", w_hh.shape[0], w_hh.shape[1], GH, H)
    _check_len("b_hh", b_hh.shape[0], GH)
    _check_shape("gates", gates.shape[0], gates.shape[1], T * B, GH)
    _check_shape("y", y.shape[0], y.shape[1], T * B, H)
    _check_shape("gh", gh.shape[0], gh.shape[1], B, GH)
    _check_lengths(lengths, T, B)
    ldy = _row_stride("y (the output rows, out=)", y.strides[0], sizeof(floating), T * B, H)
    if y.strides[1] != sizeof(floating):
        raise ValueError("y rows must be contiguous")
    if kind == K_LSTM:
        if c is None or chist is None:
            raise TypeError("the LSTM needs c and chist, got None")
        _check_shape("c", c.shape[0], c.shape[1], B, H)
        _check_shape("chist", chist.shape[0], chist.shape[1], T * B, H)
        c0, chist_ptr = &c[0, 0], &chist[0, 0]
    if kind == K_GRU:
        if hn is None:
            raise TypeError("the GRU needs hn, got None")
        _check_shape("hn", hn.shape[0], hn.shape[1], T * B, H)
        hn_ptr = &hn[0, 0]
    h0 = &h[0, 0]
    if not columns:
        w_packed = <floating*>malloc(<size_t>(panels * NR * H) * sizeof(floating))
        if lens != NULL:
            hcat = <floating*>malloc(<size_t>(B * H) * sizeof(floating))
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
                    pack_panels(H, GH, tid * panels // nth, (tid + 1) * panels // nth,
                                &w_hh[0, 0], H, True, w_packed)
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


def backward_loop(int kind, bint reverse, Py_ssize_t T, Py_ssize_t B,
                  const floating[:, ::1] w_hh not None, const floating[:, ::1] h0 not None,
                  const floating[:, ::1] c0, const int64_t[::1] lengths,
                  floating[:, ::1] gates not None, floating[:, ::1] hn,
                  const floating[:, ::1] chist, const floating[:, :] y not None,
                  const floating[:, :] dy, floating[:, ::1] dh not None, floating[:, ::1] dc,
                  floating[:, ::1] dgh not None, int num_threads):
    """Backpropagate through all steps, consuming the forward workspace.

    dy     (T*B, H)   gradient at the outputs, rows may be strided; None for no output gradient.
    dh, dc (B, H)     in: gradient at the final state, out: gradient at the initial state.
    gates  (T*B, G*H) in: activations, out: dGh (recurrent-side pre-activation gradients).
    hn     (T*B, H)   GRU: in W_hn h + b_hn, out: x-side gradient of the n gate.
    chist  (T*B, H)   LSTM: the cell states of forward.  c0 (B, H): LSTM initial cell state.
    dgh    (B, G*H)   out: dGh of each row's first step (pairs with h0 in dW_hh).
    """
    cdef Py_ssize_t H = h0.shape[1], GH = gate_count(kind) * H, ldy, lddy = 0
    cdef int nt = _threads_for(B, H, num_threads), tid, nth
    cdef Py_ssize_t b0, b1, j0, j1, b, length
    cdef const int64_t* lens = &lengths[0] if lengths is not None else NULL
    cdef const floating* c0_ptr = NULL
    cdef floating* dc_ptr = NULL
    cdef floating* hn_ptr = NULL
    cdef const floating* chist_ptr = NULL
    cdef const floating* dy_ptr = NULL
    cdef floating* w_packed = NULL
    cdef Py_ssize_t NR = panel_width(<floating>0), panels = (H + NR - 1) // NR
    _check_dims(T, B, H, GH)
    _check_shape("w_hh", w_hh.shape[0], w_hh.shape[1], GH, H)
    _check_shape("h0", h0.shape[0], h0.shape[1], B, H)
    _check_shape("gates", gates.shape[0], gates.shape[1], T * B, GH)
    _check_shape("y", y.shape[0], y.shape[1], T * B, H)
    _check_shape("dh", dh.shape[0], dh.shape[1], B, H)
    _check_shape("dgh", dgh.shape[0], dgh.shape[1], B, GH)
    _check_lengths(lengths, T, B)
    ldy = _row_stride("y (the output rows, out=)", y.strides[0], sizeof(floating), T * B, H)
    if y.strides[1] != sizeof(floating):
        raise ValueError("y rows must be contiguous")
    if dy is not None:
        _check_shape("dy", dy.shape[0], dy.shape[1], T * B, H)
        if dy.strides[1] != sizeof(floating):
            raise ValueError("dy rows must be contiguous")
        lddy = _row_stride("dy (the output gradient rows)", dy.strides[0], sizeof(floating), T * B, H)
        dy_ptr = &dy[0, 0]
    if kind == K_LSTM:
        if c0 is None or chist is None or dc is None:
            raise TypeError("the LSTM needs c0, chist and dc, got None")
        _check_shape("c0", c0.shape[0], c0.shape[1], B, H)
        _check_shape("chist", chist.shape[0], chist.shape[1], T * B, H)
        _check_shape("dc", dc.shape[0], dc.shape[1], B, H)
        c0_ptr, chist_ptr, dc_ptr = &c0[0, 0], &chist[0, 0], &dc[0, 0]
    if kind == K_GRU:
        if hn is None:
            raise TypeError("the GRU needs hn, got None")
        _check_shape("hn", hn.shape[0], hn.shape[1], T * B, H)
        hn_ptr = &hn[0, 0]
    if B > SMALL_BATCH:
        w_packed = <floating*>malloc(<size_t>(panels * NR * GH) * sizeof(floating))
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
            memcpy(&dgh[b, 0], &gates[0, 0] + _row_at(_row(_time_of_step(0, length, reverse), B, b), GH),
                   GH * sizeof(floating))


cdef void _add_column_sums(Py_ssize_t rows, Py_ssize_t c0, Py_ssize_t c1, const floating* a,
                           Py_ssize_t lda, floating* out) noexcept nogil:
    """out[j] += sum over rows of a[r, j], for columns [c0, c1)."""
    cdef Py_ssize_t r, j
    cdef const floating* a_row
    for r in range(rows):
        a_row = a + _row_at(r, lda)
        for j in range(c0, c1):
            out[j] += a_row[j]


cdef void _weight_grads_part(int kind, bint reverse, Py_ssize_t T, Py_ssize_t B, Py_ssize_t H,
                             Py_ssize_t I, Py_ssize_t GH, Py_ssize_t part, Py_ssize_t parts,
                             const floating* x, const floating* w_ih,
                             const floating* h0, const floating* y, Py_ssize_t ldy,
                             const floating* g, const floating* hn,
                             const floating* dgh_first, floating* dw_ih, floating* dw_hh,
                             floating* db_ih, floating* db_hh, floating* dx,
                             floating* tmp_ih, floating* tmp_hh) noexcept nogil:
    """Part ``part`` of ``parts`` of weight_grads.

    dW_ih, dW_hh: when tmp_ih / tmp_hh are given (K split), this part sums over its share of
    the time-space rows, part 0 into dW itself and part p > 0 into tmp_*[p - 1] (summed into
    dW afterwards); else it computes rows [lo, hi) of dW over all rows. db, dx: rows [lo, hi)
    of the output (gate columns of db; time-space rows of dx). Parts write disjoint memory."""
    cdef Py_ssize_t TB = T * B, lo, hi, k0, k1
    cdef Py_ssize_t x_cols = 2 * H if kind == K_GRU else GH   # gate columns shared by both sides
    cdef const floating* y_prev
    cdef const floating* g_with_prev
    cdef floating* c_hh = dw_hh
    cdef floating* c_ih = dw_ih
    cdef floating beta = 1
    if reverse:
        g_with_prev = g                 # rows t = 0..T-2 pair with y[t+1]
        y_prev = y + _row_at(B, ldy)
    else:
        g_with_prev = g + _row_at(B, GH)   # rows t = 1..T-1 pair with y[t-1]
        y_prev = y
    if tmp_hh != NULL:
        # dW_hh += dGh^T h_prev over this part's rows: a K split, so that each part packs
        # only its share of both operands (an M split re-packs all of h_prev per part).
        if part > 0:
            c_hh, c_ih, beta = tmp_hh + (part - 1) * GH * H, tmp_ih + (part - 1) * GH * I, 0
        k0, k1 = _split_at((T - 1) * B, part, parts), _split_at((T - 1) * B, part + 1, parts)
        gemm(True, False, GH, H, k1 - k0, <floating>1, g_with_prev + _row_at(k0, GH), GH,
             y_prev + _row_at(k0, ldy), ldy, beta, c_hh, H)
        if part == 0:
            gemm(True, False, GH, H, B, <floating>1, dgh_first, GH, h0, H, <floating>1, dw_hh, H)
        k0, k1 = _split_at(TB, part, parts), _split_at(TB, part + 1, parts)
        gemm(True, False, x_cols, I, k1 - k0, <floating>1, g + _row_at(k0, GH), GH,
             x + _row_at(k0, I), I, beta, c_ih, I)
        if kind == K_GRU:
            gemm(True, False, H, I, k1 - k0, <floating>1, hn + _row_at(k0, H), H,
                 x + _row_at(k0, I), I, beta, c_ih + 2 * H * I, I)
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
            gemm(False, False, hi - lo, I, x_cols, <floating>1, g + _row_at(lo, GH), GH, w_ih, I,
                 <floating>1, dx + _row_at(lo, I), I)
            if kind == K_GRU:
                gemm(False, False, hi - lo, I, H, <floating>1, hn + _row_at(lo, H), H,
                     w_ih + 2 * H * I, I, <floating>1, dx + _row_at(lo, I), I)


cdef void _add_parts(Py_ssize_t n, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t parts,
                     const floating* tmp, floating* out) noexcept nogil:
    """out[lo:hi] += tmp[0][lo:hi] + ... + tmp[parts - 2][lo:hi], in that order."""
    cdef Py_ssize_t q, i
    for q in range(parts - 1):
        for i in range(lo, hi):
            out[i] += tmp[q * n + i]


def weight_grads(int kind, bint reverse, Py_ssize_t T, Py_ssize_t B,
                 const floating[:, ::1] x not None, const floating[:, ::1] w_ih not None,
                 const floating[:, ::1] h0 not None, const floating[:, :] y not None,
                 const floating[:, ::1] gates not None, const floating[:, ::1] hn,
                 const floating[:, ::1] dgh_first not None,
                 floating[:, ::1] dw_ih not None, floating[:, ::1] dw_hh not None,
                 floating[::1] db_ih, floating[::1] db_hh, floating[:, ::1] dx,
                 int num_threads=1):
    """Accumulate the parameter and input gradients with GEMMs over all steps.

    gates (T*B, G*H) holds dGh from backward_loop. The x side uses the same values except,
    for the GRU, the n gate, whose x-side gradient is in hn (T*B, H).
    The previous hidden state of row (t, b) is y at t-1 (forward) or t+1 (reverse), or h0 at
    each sequence's first step; dgh_first holds dGh at those first steps.
    x (T*B, I), w_ih and dw_ih (G*H, I), h0 (B, H), dw_hh (G*H, H), db_* (G*H,), dx (T*B, I).
    db_ih / db_hh / dx may be None to skip them.
    The outputs are cut into max(GEMM_MIN_PARTS, num_threads) parts shared among the OpenMP threads, each calling
    single-threaded BLAS on its parts (see project_inputs).
    """
    cdef Py_ssize_t H = h0.shape[1], GH = gate_count(kind) * H, I = x.shape[1], ldy, p
    cdef int tid, nth
    cdef int nt = fr_team_threads(num_threads)
    cdef Py_ssize_t parts = max(GEMM_MIN_PARTS, num_threads)
    cdef floating[::1] tmp_view
    cdef const floating* hn_ptr = NULL
    cdef floating* db_ih_ptr = NULL
    cdef floating* db_hh_ptr = NULL
    cdef floating* dx_ptr = NULL
    cdef floating* tmp_ih = NULL
    cdef floating* tmp_hh = NULL
    _check_dims(T, B, H, GH)
    if I < 1:
        raise ValueError(f"x must have at least one column, got shape ({x.shape[0]}, {I})")
    _blas_int(I, "the input size I")
    _check_shape("x", x.shape[0], x.shape[1], T * B, I)
    _check_shape("w_ih", w_ih.shape[0], w_ih.shape[1], GH, I)
    _check_shape("h0", h0.shape[0], h0.shape[1], B, H)
    _check_shape("y", y.shape[0], y.shape[1], T * B, H)
    _check_shape("gates", gates.shape[0], gates.shape[1], T * B, GH)
    _check_shape("dgh_first", dgh_first.shape[0], dgh_first.shape[1], B, GH)
    _check_shape("dw_ih", dw_ih.shape[0], dw_ih.shape[1], GH, I)
    _check_shape("dw_hh", dw_hh.shape[0], dw_hh.shape[1], GH, H)
    ldy = _row_stride("y (the output rows, out=)", y.strides[0], sizeof(floating), T * B, H)
    if y.strides[1] != sizeof(floating):
        raise ValueError("y rows must be contiguous")
    if kind == K_GRU:
        if hn is None:
            raise TypeError("the GRU needs hn, got None")
        _check_shape("hn", hn.shape[0], hn.shape[1], T * B, H)
        hn_ptr = &hn[0, 0]
    if db_ih is not None:
        _check_len("db_ih", db_ih.shape[0], GH)
        db_ih_ptr = &db_ih[0]
    if db_hh is not None:
        _check_len("db_hh", db_hh.shape[0], GH)
        db_hh_ptr = &db_hh[0]
    if dx is not None:
        _check_shape("dx", dx.shape[0], dx.shape[1], T * B, I)
        dx_ptr = &dx[0, 0]
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
