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
  call (csrc/gemm_packed.h, fr_gemm_packed: BLAS would re-pack W_hh on every step). No
  synchronisation inside the loop.
* batch <= SMALL_BATCH (batch 1, generation): each thread owns a block of hidden units of
  every row, computes its gate columns with matrix-vector kernels that stream W_hh once per
  step, and the threads meet at one barrier per step.

A batch above SMALL_BATCH with lengths runs packed instead (forward_loop_packed,
backward_loop_packed, weight_grads_packed; the section at the end of this file): its
sequences sorted by length and only their real tokens projected, stepped and summed, so
that its cost follows the real tokens rather than T * B.

Either way each output element of the loops is computed by the same sequence of operations
whatever the thread count; with the GEMM parts above, results are identical for 1 and 2
threads (tested bitwise in float64).

The nogil helpers get a call's sizes as one LoopShape (kind, T, B, H, reverse, lengths) and
its buffers as one LoopBuffers (GradBuffers for weight_grads); the row-level gate steps
(_forward_row, _backward_row) are shared by both ways of splitting the work. How parts are
cut (_split_at, _share) and rows addressed (_row, _row_at) is in _parts.pxd, shared with
dense.pyx and generate.pyx.

All index arithmetic is 64-bit (Py_ssize_t): a row index times a row stride passes 2^31
elements at sizes that fit in memory (T=513, B=256, H=4096 LSTM). Sizes that reach BLAS, which
takes C int, are checked by each entry point (_blas_int), as are the shapes of every buffer
the kernels touch (the kernels trust nothing they are given).
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport parallel, prange, threadid
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from ._blas cimport GEMM_KC, fr_claim_rows, fr_set_blas_gemm, gemm, gemm_bias
from ._cells cimport (K_GRU, K_LSTM, K_RNN_IDENTITY, K_RNN_RELU, K_RNN_TANH, cell_backward_row,
                      cell_forward_row, gate_count)
from ._checks cimport _blas_int, _check_len, _check_shape, _row_stride
from ._gemm_packed cimport (fr_cpu_has_narrow, fr_set_kernel_cap, gemm_packed, matvec_cols_acc,
                            matvec_rows, pack_panels, panel_width)
from ._openmp cimport fr_omp_barrier, fr_omp_team_size, fr_team_threads, join_fork_guard
from ._parts cimport (COL_ALIGN, GEMM_COLUMN_SPLIT_ROWS, _gemm_parts, _row, _row_at, _share,
                     _split_at)
from ._reduce cimport add_column_sums, add_parts

join_fork_guard()

# The cell ids and gate counts this module was compiled with (csrc/cells.h), for the test
# that checks them against fastrnn/cells.py.
CELL_IDS = {"rnn_tanh": K_RNN_TANH, "rnn_relu": K_RNN_RELU, "gru": K_GRU, "lstm": K_LSTM,
            "rnn_identity": K_RNN_IDENTITY}
CELL_GATES = {kind: gate_count(kind) for kind in CELL_IDS.values()}


# ---------------------------------------------------------------------------------------------
# Argument checks of the entry points (the common ones are in _checks.pxd).
# ---------------------------------------------------------------------------------------------

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


cdef int _check_row_index(str name, str verb, const int64_t[::1] index,
                          Py_ssize_t rows) except -1:
    """Every value of ``index`` (row numbers into an array of ``rows`` rows) is in [0, rows)."""
    cdef Py_ssize_t r, i
    for r in range(index.shape[0]):
        i = index[r]
        if i < 0 or i >= rows:
            raise ValueError(f"{name} must {verb} in [0, {rows}), got {i} at {r}")
    return 0


_KERNEL_CAPS = {"best": 0, "narrow": 1, "generic": 2}


def _force_kernels(str kinds):
    """Private, for tests: which hand-written per-step kernels this module's calls may use,
    so that each stays tested on a CPU that would pick another. "best": the CPU's; "narrow":
    none of the AVX-512 ones (the packed GEMM's 256-bit micro-kernel, the AVX2 twins of the
    batch-1 products); "generic": not the AVX2 twins either (the compiler-vectorised code).
    Takes effect from the next call; not for use while calls run."""
    fr_set_kernel_cap(_KERNEL_CAPS[kinds])


def _has_narrow_twins():
    """Private, for tests: whether this CPU runs the AVX2 twins (csrc/matvec_narrow.h)."""
    return bool(fr_cpu_has_narrow())


def _force_blas_gemm(bint forced):
    """Private, for tests: run this module's large products (input projections, weight
    gradients) on BLAS even where the CPU has AVX-512 (forced=True; csrc/gemm.h), or go back
    (False), so that both stay tested on an AVX-512 machine. Not for use while calls run."""
    fr_set_blas_gemm(forced)


def _panel_width(dtype):
    """Private, for tests: the columns per packed panel the next call will use (32 float32
    on the AVX-512 micro-kernel, 16 on the 256-bit one; half that for float64)."""
    return panel_width(<float>0) if np.dtype(dtype) == np.float32 else panel_width(<double>0)


def _time_space_offset(Py_ssize_t t, Py_ssize_t B, Py_ssize_t b, Py_ssize_t ld):
    """Private, for tests: the element offset the kernels use for row (t, b) of a time-space
    array with row stride ld (_row_at(_row(t, B, b), ld))."""
    return _row_at(_row(t, B, b), ld)


# ---------------------------------------------------------------------------------------------
# Helpers shared by both ways of splitting the work.
# ---------------------------------------------------------------------------------------------

cdef enum:
    # Up to this many sequences the loops split the hidden units across threads and use the
    # matvec kernels of csrc/gemm_packed.h; above it, each thread takes a slice of the batch
    # and multiplies it by W_hh per step with the packed GEMM. With a few rows, a GEMM
    # spends most of its time on packing, while the matvecs stream W_hh once.
    SMALL_BATCH = 8

# Above this batch size a batch with lengths runs packed (forward_loop_packed and friends).
PACKED_MIN_BATCH = SMALL_BATCH + 1

cdef enum:
    # Bytes between two threads' blocks of the per-step scratch rows of the batch slices (gh
    # and hcat in the forward, dh and dc in the backward) and of the packed forward (gh and
    # hcat); see _thread_rows. Each thread rewrites its rows at every step; packed side by
    # side, each core's prefetchers, running off the end of its own block, pulled the first
    # lines of the other's, and that core then had to take them back before its next write.
    # LSTM (32, 64, 128, 256), 2 threads, loops with the rows apart by 0 / 4 / 16 / 64 KiB of
    # gh (a quarter as much of dh, one run): forward 2.94 / 2.86 / 2.83 / 2.77 ms, backward
    # 2.65 / 2.62 / 2.57 / 2.50 ms; 128 and 256 KiB the same as 64 within 0.01 ms. (Laying
    # out the saved gates, cell states and outputs by thread as well gained only another
    # 0.02-0.06 ms per loop, in a test build: each of their rows is written once per call.)
    # The gaps are never touched.
    THREAD_ROWS_GAP = 65536


cdef void* _thread_rows(int nt, Py_ssize_t B, Py_ssize_t cols, size_t itemsize) noexcept nogil:
    """malloc'd scratch of B rows of ``cols`` items for nt threads that each own a slice of
    the rows: thread k's block starts k * THREAD_ROWS_GAP bytes further on (see
    _with_thread_rows). NULL when out of memory; free() it."""
    return malloc(<size_t>(B * cols) * itemsize + <size_t>(nt - 1) * THREAD_ROWS_GAP)


cdef inline void* _thread_block(void* rows, int k) noexcept nogil:
    """Thread k's block of _thread_rows scratch (where its row 0 would be: its row b is
    b * cols items further on), or NULL for NULL."""
    return NULL if rows == NULL else <void*>(<char*>rows + <Py_ssize_t>k * THREAD_ROWS_GAP)


cdef inline void _copy_rows(void* dst, const void* src, Py_ssize_t b0, Py_ssize_t b1,
                            size_t row_bytes) noexcept nogil:
    """Rows [b0, b1) of row_bytes each from src to dst (both indexed from row 0); nothing
    when dst is NULL."""
    if dst != NULL:
        memcpy(<char*>dst + b0 * row_bytes, <const char*>src + b0 * row_bytes,
               <size_t>(b1 - b0) * row_bytes)


ctypedef struct LoopShape:
    # What the step loops know of a call besides its buffers.
    int kind                   # cell id (_cells.pxd)
    Py_ssize_t T, B, H, GH     # steps, sequences, hidden units, gate columns G*H
    bint reverse               # walk each sequence from its last step to its first
    const int64_t* lengths     # (B,) steps of each sequence, or NULL: all have T


ctypedef struct LoopBuffers:
    # The buffers of one forward_loop or backward_loop call, all of the call's float type:
    # void* because a struct cannot have a fused type; the helpers cast them back.
    # Time space (T*B rows):
    void* gates                # (G*H) forward: in projected inputs, out activations;
                               #       backward: out dGh
    const void* table_gates    # forward, or NULL: (V, G*H) projected table rows, and row r's
    const int64_t* table_index #   projected input is table_gates[table_index[r]], copied
                               #   into gates' row r as its step starts (_take_table_row)
    void* table_grads          # backward, or NULL: (V, G*H) where row r's x-side gate
                               #   gradient is added, into table row table_index[r]
                               #   (_add_table_grad; batch slices: a table per thread)
    void* hn                   # (H) GRU: W_hn h_prev + b_hn; backward out: its x-side grad
    void* chist                # (H) LSTM: c_t
    void* y                    # (H) h_t, rows ldy elements apart
    Py_ssize_t ldy
    const void* dy             # backward: (H) output gradients, rows lddy apart, or NULL
    Py_ssize_t lddy
    # Per sequence (B rows):
    void* h0                   # (H) initial h; forward: the final h on return
    void* c0                   # (H) LSTM initial c; forward: the final c on return
    void* dh                   # backward: (H) in dL/dh_T, out dL/dh0 (with initial_dh)
    bint initial_dh            # backward: dL/dh0 wanted; else the product of each sequence's
                               #   first step, dGh W_hh, is skipped and dh is left partial
    void* dc                   # backward: (H) LSTM, in dL/dc_T, out dL/dc0
    void* dgh                  # backward: (G*H) dGh at each sequence's first step
    void* gh                   # forward: (G*H) scratch for h_prev W_hh^T
    void* hcat                 # forward, batch slices with lengths: (H) gathered h_prev
    # (Each thread of the batch-slice loops runs on its own copy of the struct, whose gh,
    # hcat, dh and dc point at its block of _thread_rows scratch.)
    # Weights:
    const void* w_hh           # (G*H, H)
    const void* w_packed       # batch slices: W_hh^T (forward) or W_hh (backward), packed
    int nr                     # ... in panels of nr columns (panel_width, asked once per call)
    const void* b_hh           # (G*H,)
    # Unused pointers are NULL (hn unless GRU; chist, c0, dc unless LSTM; ...).


cdef inline Py_ssize_t _length(const LoopShape* sh, Py_ssize_t b) noexcept nogil:
    return sh.T if sh.lengths == NULL else <Py_ssize_t>sh.lengths[b]


cdef inline Py_ssize_t _time_of_step(Py_ssize_t s, Py_ssize_t length, bint reverse) noexcept nogil:
    return length - 1 - s if reverse else s


cdef inline Py_ssize_t _prev_time(Py_ssize_t t, bint reverse) noexcept nogil:
    return t + 1 if reverse else t - 1


cdef Py_ssize_t _slice_steps(const LoopShape* sh, Py_ssize_t b0, Py_ssize_t b1) noexcept nogil:
    """Steps this slice needs: the longest sequence in it."""
    cdef Py_ssize_t b, steps = 0
    if sh.lengths == NULL:
        return sh.T
    for b in range(b0, b1):
        if sh.lengths[b] > steps:
            steps = <Py_ssize_t>sh.lengths[b]
    return steps


cdef void _zero_past_lengths(const LoopShape* sh, Py_ssize_t b0, Py_ssize_t b1, floating* a,
                             Py_ssize_t lda, Py_ssize_t cols) noexcept nogil:
    """Zero rows (t, b) with t >= length[b] of a time-space array."""
    cdef Py_ssize_t b, t
    if sh.lengths == NULL:
        return
    for b in range(b0, b1):
        for t in range(_length(sh, b), sh.T):
            memset(a + _row_at(_row(t, sh.B, b), lda), 0, cols * sizeof(floating))


cdef inline const floating* _h_prev(const LoopShape* sh, const LoopBuffers* buf, Py_ssize_t s,
                                    Py_ssize_t t, Py_ssize_t b, floating zero) noexcept nogil:
    """h_{t-1} of sequence b at step s (time t): h0 at its first step, else y's previous row.
    (``zero`` only picks the float type.)"""
    if s == 0:
        return <const floating*>buf.h0 + b * sh.H
    return <const floating*>buf.y + _row_at(_row(_prev_time(t, sh.reverse), sh.B, b), buf.ldy)


cdef inline const floating* _c_prev(const LoopShape* sh, const LoopBuffers* buf, Py_ssize_t s,
                                    Py_ssize_t t, Py_ssize_t b, floating zero) noexcept nogil:
    """LSTM: c_{t-1} of sequence b at step s (time t): c0 or chist's previous row. NULL for
    the other cells."""
    if sh.kind != K_LSTM:
        return NULL
    if s == 0:
        return <const floating*>buf.c0 + b * sh.H
    return <const floating*>buf.chist + _row_at(_row(_prev_time(t, sh.reverse), sh.B, b), sh.H)


cdef inline floating* _row_or_null(void* a, bint used, Py_ssize_t row, Py_ssize_t ld,
                                   floating zero) noexcept nogil:
    """Row ``row`` of a time-space array with row stride ld, or NULL when it is not used."""
    return <floating*>a + _row_at(row, ld) if used else NULL


# ---------------------------------------------------------------------------------------------
# Forward. The state is never copied per step: step s reads h_{t-1} from y's previous row
# (or h0) and writes h_t straight into y; the LSTM cell state likewise lives in chist.
# ---------------------------------------------------------------------------------------------

cdef inline floating* _take_table_row(const LoopBuffers* buf, int kind, Py_ssize_t H,
                                      Py_ssize_t row, Py_ssize_t j0, Py_ssize_t j1,
                                      floating zero) noexcept nogil:
    """gates' row ``row``, holding its projected input for units [j0, j1) of every gate: with
    a projected table (buf.table_gates), copied in from the row's table row first. Copied by
    the thread that is about to use it, while the step's other operands are in its cache
    (a separate gather before the loop, by other threads, took 4x as long per row)."""
    cdef Py_ssize_t GH = gate_count(kind) * H, k
    cdef floating* g = <floating*>buf.gates + _row_at(row, GH)
    cdef const floating* src
    if buf.table_gates != NULL:
        src = <const floating*>buf.table_gates + _row_at(buf.table_index[row], GH)
        if j0 == 0 and j1 == H:
            memcpy(g, src, GH * sizeof(floating))
        else:
            for k in range(gate_count(kind)):
                memcpy(g + k * H + j0, src + k * H + j0, (j1 - j0) * sizeof(floating))
    return g


cdef inline void _claim_gate_rows(const LoopBuffers* buf, Py_ssize_t row0, Py_ssize_t rows,
                                  Py_ssize_t GH, floating zero) noexcept nogil:
    """Take gates' rows [row0, row0 + rows) into this core's cache before _take_table_row
    writes them (csrc/gemm.h: fr_claim_rows): the weight gradients of the last backward read
    them on both cores. The small-model step's forward loop took 0.87 ms without, 0.83 with
    (the input projection claims the rows it writes in the same way)."""
    fr_claim_rows(<floating*>buf.gates + _row_at(row0, GH), <int>rows, GH * sizeof(floating),
                  GH * sizeof(floating))


cdef inline void _forward_row(const LoopShape* sh, const LoopBuffers* buf, Py_ssize_t s,
                              Py_ssize_t b, Py_ssize_t j0, Py_ssize_t j1,
                              floating zero) noexcept nogil:
    """Gate forward of sequence b at step s (< its length), hidden units [j0, j1), with its
    h_prev W_hh^T already in gh's row b."""
    cdef Py_ssize_t H = sh.H, GH = sh.GH
    cdef Py_ssize_t t = _time_of_step(s, _length(sh, b), sh.reverse)
    cdef Py_ssize_t row = _row(t, sh.B, b)
    cell_forward_row(sh.kind, H, j0, j1, _take_table_row(buf, sh.kind, H, row, j0, j1, zero),
                     <floating*>buf.gh + b * GH, <const floating*>buf.b_hh,
                     _h_prev(sh, buf, s, t, b, zero), <floating*>buf.y + _row_at(row, buf.ldy),
                     _c_prev(sh, buf, s, t, b, zero),
                     _row_or_null(buf.chist, sh.kind == K_LSTM, row, H, zero),
                     _row_or_null(buf.hn, sh.kind == K_GRU, row, H, zero))


cdef void _forward_batch_slice(const LoopShape* sh, const LoopBuffers* buf, Py_ssize_t b0,
                               Py_ssize_t b1, floating zero) noexcept nogil:
    """One thread's slice of the batch, rows [b0, b1): a GEMM for the slice per step, on
    W_hh^T packed once (buf.w_packed)."""
    cdef Py_ssize_t H = sh.H, GH = sh.GH, NR = buf.nr, ldy = buf.ldy
    cdef Py_ssize_t s, b, t, length, lda
    cdef Py_ssize_t steps = _slice_steps(sh, b0, b1)
    cdef floating* y = <floating*>buf.y
    cdef floating* hcat = <floating*>buf.hcat
    cdef const floating* a
    _zero_past_lengths(sh, b0, b1, y, ldy, H)
    for s in range(steps):
        # The slice's previous hidden states as one matrix: y's previous rows when every
        # sequence is at the same time (no lengths), else gathered into hcat.
        if s == 0 or sh.lengths == NULL:
            a = _h_prev(sh, buf, s, _time_of_step(s, sh.T, sh.reverse), b0, zero)
            lda = H if s == 0 else ldy
        else:
            for b in range(b0, b1):
                length = _length(sh, b)
                if s < length:
                    t = _time_of_step(s, length, sh.reverse)
                    memcpy(hcat + b * H, _h_prev(sh, buf, s, t, b, zero), H * sizeof(floating))
            a, lda = hcat + b0 * H, H
        gemm_packed(buf.nr, b1 - b0, GH, H, 0, (GH + NR - 1) // NR, a, lda,
                    <const floating*>buf.w_packed, <floating*>buf.gh + b0 * GH, GH, False)
        if buf.table_gates != NULL and sh.lengths == NULL:
            _claim_gate_rows(buf, _row(_time_of_step(s, sh.T, sh.reverse), sh.B, b0), b1 - b0,
                             GH, zero)
        for b in range(b0, b1):
            if s < _length(sh, b):
                _forward_row(sh, buf, s, b, 0, H, zero)


cdef void _forward_columns(const LoopShape* sh, const LoopBuffers* buf, Py_ssize_t j0,
                           Py_ssize_t j1, floating zero) noexcept nogil:
    """Small batch (B <= SMALL_BATCH): this thread owns hidden units [j0, j1) of every row.

    It computes its own gate columns of gh (rows k*H + j of W_hh) and then the gate math for
    its units, which needs no other thread's columns; one barrier per step makes the whole
    h_t visible before the next step's matvec reads it."""
    cdef Py_ssize_t H = sh.H, GH = sh.GH, G = gate_count(sh.kind)
    cdef Py_ssize_t s, b, k, length
    cdef int n
    cdef Py_ssize_t steps = _slice_steps(sh, 0, sh.B)
    cdef const floating* xs[SMALL_BATCH]
    cdef floating* ys[SMALL_BATCH]
    cdef Py_ssize_t active[SMALL_BATCH]
    for s in range(steps):
        n = 0
        for b in range(sh.B):
            length = _length(sh, b)
            if s < length:
                xs[n] = _h_prev(sh, buf, s, _time_of_step(s, length, sh.reverse), b, zero)
                ys[n] = <floating*>buf.gh + b * GH
                active[n] = b
                n += 1
        for k in range(G):
            matvec_rows(k * H + j0, k * H + j1, H, <const floating*>buf.w_hh, H, n, xs, ys)
        for k in range(n):
            _forward_row(sh, buf, s, active[k], j0, j1, zero)
        fr_omp_barrier()


cdef void _final_states(const LoopShape* sh, const LoopBuffers* buf, floating zero) noexcept nogil:
    """h0, c0 <- each sequence's state at its last step (time length-1, or 0 in reverse)."""
    cdef Py_ssize_t b, length, row, H = sh.H
    for b in range(sh.B):
        length = _length(sh, b)
        row = _row(_time_of_step(length - 1, length, sh.reverse), sh.B, b)
        memcpy(<floating*>buf.h0 + b * H, <floating*>buf.y + _row_at(row, buf.ldy),
               H * sizeof(floating))
        if sh.kind == K_LSTM:
            memcpy(<floating*>buf.c0 + b * H, <floating*>buf.chist + _row_at(row, H),
                   H * sizeof(floating))


# ---------------------------------------------------------------------------------------------
# Backward. dGh of step t overwrites the activations in gates' row t, and that row is the
# operand of the dh GEMM/matvec, so nothing is copied per step when all sequences are aligned.
# ---------------------------------------------------------------------------------------------

cdef inline floating* _backward_row(const LoopShape* sh, const LoopBuffers* buf, Py_ssize_t s,
                                    Py_ssize_t b, Py_ssize_t j0, Py_ssize_t j1,
                                    floating zero) noexcept nogil:
    """Gate backward of sequence b at step s (< its length), hidden units [j0, j1): adds the
    output gradient to dh's row b, then turns that row's activations into dGh. Returns the
    row of gates that now holds dGh."""
    cdef Py_ssize_t H = sh.H, j
    cdef Py_ssize_t t = _time_of_step(s, _length(sh, b), sh.reverse)
    cdef Py_ssize_t row = _row(t, sh.B, b)
    cdef floating* dh_row = <floating*>buf.dh + b * H
    cdef const floating* dy_row
    cdef floating* g = <floating*>buf.gates + _row_at(row, sh.GH)
    if buf.dy != NULL:
        dy_row = <const floating*>buf.dy + _row_at(row, buf.lddy)
        for j in range(j0, j1):
            dh_row[j] += dy_row[j]
    cell_backward_row(sh.kind, H, j0, j1, g, _row_or_null(buf.hn, sh.kind == K_GRU, row, H, zero),
                      _row_or_null(buf.chist, sh.kind == K_LSTM, row, H, zero),
                      _c_prev(sh, buf, s, t, b, zero), _h_prev(sh, buf, s, t, b, zero),
                      dh_row, <floating*>buf.dc + b * H if sh.kind == K_LSTM else NULL)
    _add_table_grad(buf, sh.kind, H, row, j0, j1, g, zero)
    return g


cdef inline void _add_table_grad(const LoopBuffers* buf, int kind, Py_ssize_t H,
                                 Py_ssize_t row, Py_ssize_t j0, Py_ssize_t j1,
                                 const floating* g, floating zero) noexcept nogil:
    """Add gates row ``row``'s x-side gate gradient, units [j0, j1) of each gate, into its
    table row of buf.table_grads (when set): dGh ``g`` itself, but for the GRU's n gate,
    whose x side is in hn. Done here, while the row is in this core's cache: a scatter of
    all rows after the loop read half of them from the other core (small-model step, 2
    threads: 0.08 ms)."""
    cdef Py_ssize_t G = gate_count(kind), k
    cdef floating* dst
    cdef const floating* src
    if buf.table_grads == NULL:
        return
    dst = <floating*>buf.table_grads + _row_at(buf.table_index[row], G * H)
    for k in range(G):
        if kind == K_GRU and k == 2:
            src = <const floating*>buf.hn + _row_at(row, H)
        else:
            src = g + k * H
        add_parts(0, j0, j1, 1, src, dst + k * H)   # the compiled, vectorised row add


cdef void _backward_batch_slice(const LoopShape* sh, const LoopBuffers* buf, Py_ssize_t b0,
                                Py_ssize_t b1, floating zero) noexcept nogil:
    """One thread's slice of the batch, rows [b0, b1): dh += dGh W_hh per step, with W_hh
    packed once (buf.w_packed)."""
    cdef Py_ssize_t H = sh.H, GH = sh.GH, NR = buf.nr
    cdef Py_ssize_t s, b
    cdef Py_ssize_t steps = _slice_steps(sh, b0, b1)
    cdef floating* gates = <floating*>buf.gates
    cdef floating* dgh = <floating*>buf.dgh
    cdef const floating* d
    cdef floating* g
    # Rows past a sequence's end take part in the weight-gradient GEMMs: make them zero.
    _zero_past_lengths(sh, b0, b1, gates, GH, GH)
    if sh.kind == K_GRU:
        _zero_past_lengths(sh, b0, b1, <floating*>buf.hn, H, H)
    for s in range(steps - 1, -1, -1):
        for b in range(b0, b1):
            if s >= _length(sh, b):
                memset(dgh + b * GH, 0, GH * sizeof(floating))   # lengths only
                continue
            g = _backward_row(sh, buf, s, b, 0, H, zero)
            if sh.lengths != NULL:
                memcpy(dgh + b * GH, g, GH * sizeof(floating))
        if s == 0 and not buf.initial_dh:
            break
        if sh.lengths == NULL:
            d = gates + _row_at(_row(_time_of_step(s, sh.T, sh.reverse), sh.B, b0), GH)
        else:
            d = dgh + b0 * GH
        gemm_packed(buf.nr, b1 - b0, H, GH, 0, (H + NR - 1) // NR, d, GH,
                    <const floating*>buf.w_packed, <floating*>buf.dh + b0 * H, H, True)


cdef void _backward_columns(const LoopShape* sh, const LoopBuffers* buf, Py_ssize_t j0,
                            Py_ssize_t j1, floating zero) noexcept nogil:
    """Small batch: this thread owns hidden units [j0, j1). The gate backward of its units
    fills its columns of dGh; after a barrier every thread has all of dGh and adds
    dGh W_hh[:, j0:j1] to its own units of dh. The next step writes another row of gates, so
    one barrier per step is enough."""
    cdef Py_ssize_t s, b
    cdef int n
    cdef Py_ssize_t steps = _slice_steps(sh, 0, sh.B)
    cdef const floating* ds[SMALL_BATCH]
    cdef floating* ys[SMALL_BATCH]
    for s in range(steps - 1, -1, -1):
        n = 0
        for b in range(sh.B):
            if s >= _length(sh, b):
                continue
            ds[n] = _backward_row(sh, buf, s, b, j0, j1, zero)
            ys[n] = <floating*>buf.dh + b * sh.H
            n += 1
        fr_omp_barrier()
        if s > 0 or buf.initial_dh:
            matvec_cols_acc(j0, j1, sh.GH, <const floating*>buf.w_hh, sh.H, n, ds, ys)


cdef inline int _threads_for(Py_ssize_t B, Py_ssize_t H, int num_threads) noexcept nogil:
    """Threads to use: one per batch slice (at most B), or per column block of at least
    2 * COL_ALIGN hidden units on the small-batch path (1 in a forked child)."""
    cdef int nt = fr_team_threads(num_threads)
    if B <= SMALL_BATCH:
        return <int>max(1, min(nt, H // (2 * COL_ALIGN)))
    return <int>B if B < nt else nt


cdef LoopShape _loop_shape(int kind, Py_ssize_t T, Py_ssize_t B, Py_ssize_t H, bint reverse,
                           const int64_t[::1] lengths):
    cdef LoopShape sh
    sh.kind, sh.T, sh.B, sh.H, sh.GH, sh.reverse = kind, T, B, H, gate_count(kind) * H, reverse
    sh.lengths = &lengths[0] if lengths is not None else NULL
    return sh


cdef LoopBuffers _no_buffers() noexcept:
    """A LoopBuffers with every pointer NULL; the entry points fill in what their cell uses."""
    cdef LoopBuffers buf
    memset(&buf, 0, sizeof(buf))
    return buf


cdef inline LoopBuffers _with_thread_rows(const LoopBuffers* buf, int k, void* gh, void* hcat,
                                          void* dh, void* dc) noexcept nogil:
    """A copy of *buf for thread k, whose gh, hcat, dh and dc point at its blocks of the
    _thread_rows scratch given (THREAD_ROWS_GAP); a NULL scratch leaves buf's pointer."""
    cdef LoopBuffers own = buf[0]
    if gh != NULL:
        own.gh = _thread_block(gh, k)
    if hcat != NULL:
        own.hcat = _thread_block(hcat, k)
    if dh != NULL:
        own.dh = _thread_block(dh, k)
    if dc != NULL:
        own.dc = _thread_block(dc, k)
    return own


# ---------------------------------------------------------------------------------------------
# Entry points. Shapes are checked by fastrnn.functional before these are called, and again
# here against each other (nothing the kernels index is taken on trust).
# ---------------------------------------------------------------------------------------------

def project_inputs(const floating[:, ::1] x not None, const floating[:, ::1] w_ih not None,
                   const floating[::1] b_ih not None, floating[:, ::1] gates not None,
                   int num_threads=1):
    """gates (T*B, G*H) = x (T*B, I) @ w_ih^T (I, G*H) + b_ih, as one GEMM with the bias fused.

    The rows are cut into max(2, num_threads) parts (_parts.pxd: GEMM_MIN_PARTS) shared among
    the OpenMP threads, each calling BLAS on its parts: the caller keeps BLAS single-threaded,
    so that the process has one pool of threads (BLAS workers spinning next to the time
    loop's threads would steal its cores).

    gates was last read by the previous call's weight gradients, which split its columns
    between the threads while this splits its rows: so the product claims its lines before
    writing them (gemm_bias's claim_c). LSTM (32, 64, 128, 256), 2 threads, with the cores
    apart: 1.50 -> 1.24 ms inside the layer (1.13 -> 1.16 ms called alone, on lines it
    wrote itself)."""
    cdef Py_ssize_t rows = x.shape[0], GH = w_ih.shape[0], I = x.shape[1], r, r0, r1
    cdef int tid, nth, p
    cdef int nt = fr_team_threads(num_threads), parts = _gemm_parts(num_threads)
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
        for p in range(_share(parts, tid, nth), _share(parts, tid + 1, nth)):
            if rows < GEMM_COLUMN_SPLIT_ROWS:   # parts of the gate columns (rows of W_ih)
                r0 = _split_at(GH, p, parts)
                r1 = _split_at(GH, p + 1, parts)
                if r1 > r0:
                    gemm_bias(True, rows, r1 - r0, I, &x[0, 0], I, &w_ih[r0, 0], I, &b_ih[r0],
                              &gates[0, r0], GH, True)
                continue
            r0 = _split_at(rows, p, parts)
            r1 = _split_at(rows, p + 1, parts)
            if r1 > r0:
                gemm_bias(True, r1 - r0, GH, I, &x[r0, 0], I, &w_ih[0, 0], I, &b_ih[0],
                          &gates[r0, 0], GH, True)


def forward_loop(int kind, bint reverse, Py_ssize_t T, Py_ssize_t B,
                 const floating[:, ::1] w_hh not None, const floating[::1] b_hh not None,
                 floating[:, ::1] h not None, floating[:, ::1] c, const int64_t[::1] lengths,
                 floating[:, ::1] gates not None, floating[:, ::1] hn, floating[:, ::1] chist,
                 floating[:, :] y not None, int num_threads,
                 const floating[:, ::1] table_gates=None, const int64_t[::1] table_index=None):
    """Run the recurrence over all steps.

    h, c   (B, H)     in: initial state, out: final state (c: LSTM only, else None).
    gates  (T*B, G*H) in: projected inputs, out: saved activations.
    table_gates (V, G*H), table_index (T*B,): or the projected input of row r is
                      table_gates[table_index[r]] (gates' rows are then only written).
    hn     (T*B, H)   GRU only (else None), out: W_hn h_prev + b_hn per step.
    chist  (T*B, H)   LSTM only (else None), out: c_t per step.
    y      (T*B, H)   out: h_t per step (zero past each length); rows may be strided, the
                      last axis must be contiguous (checked by the caller).
    """
    cdef Py_ssize_t H = h.shape[1], GH = gate_count(kind) * H
    cdef int nt = _threads_for(B, H, num_threads), tid, nth
    cdef Py_ssize_t b0, b1, j0, j1
    cdef bint columns = B <= SMALL_BATCH
    cdef LoopShape sh
    cdef LoopBuffers buf, own
    cdef floating* w_packed = NULL
    cdef void* hcat = NULL
    cdef void* gh = NULL
    cdef Py_ssize_t NR = panel_width(<floating>0), panels = (GH + NR - 1) // NR
    _check_dims(T, B, H, GH)
    buf = _no_buffers()
    _bind_forward_buffers(&buf, kind, T, B, H, GH, T * B, False, w_hh, b_hh, h, c, gates, hn,
                          chist, y, table_gates, table_index)
    _check_lengths(lengths, T, B)
    sh = _loop_shape(kind, T, B, H, reverse, lengths)
    # Scratch: gh (B, G*H) each step's h_prev W_hh^T; hcat (B, H) the gathered h_prev of
    # batch slices with lengths. The column split shares gh's rows among the threads.
    gh = _thread_rows(1 if columns else nt, B, GH, sizeof(floating))
    if not columns:
        w_packed = <floating*>malloc(<size_t>(panels * NR * H) * sizeof(floating))
        if sh.lengths != NULL:
            hcat = _thread_rows(nt, B, H, sizeof(floating))
    if gh == NULL or (not columns and (w_packed == NULL
                                       or (sh.lengths != NULL and hcat == NULL))):
        free(gh)
        free(w_packed)
        free(hcat)
        raise MemoryError()
    buf.w_packed, buf.nr, buf.gh = w_packed, NR, gh
    try:
        with nogil:
            if columns:
                _zero_past_lengths(&sh, 0, B, &y[0, 0], buf.ldy, H)
                with parallel(num_threads=nt):
                    # Partition by the team actually running (OpenMP may give fewer threads).
                    tid, nth = threadid(), fr_omp_team_size()
                    j0 = _split_at(H, tid, nth)
                    j1 = _split_at(H, tid + 1, nth)
                    _forward_columns(&sh, &buf, j0, j1, <floating>0)
            else:
                with parallel(num_threads=nt):
                    tid, nth = threadid(), fr_omp_team_size()
                    # Pack W_hh^T once, each thread a share of the panels, then all use it.
                    pack_panels(buf.nr, H, GH, _share(panels, tid, nth), _share(panels, tid + 1, nth),
                                &w_hh[0, 0], H, True, w_packed)
                    fr_omp_barrier()
                    b0 = _share(B, tid, nth)
                    b1 = _share(B, tid + 1, nth)
                    own = _with_thread_rows(&buf, tid, gh, hcat, NULL, NULL)
                    _forward_batch_slice(&sh, &own, b0, b1, <floating>0)
            # h, c held the initial state until now.
            _final_states(&sh, &buf, <floating>0)
    finally:
        free(gh)
        free(hcat)
        free(w_packed)


cdef int _bind_table_grads(LoopBuffers* buf, Py_ssize_t rows, Py_ssize_t GH,
                           floating[:, ::1] table_grads, const int64_t[::1] table_index,
                           gates, hn, bint per_thread, int nt, void** extra) except -1:
    """Check the backward loops' table_grads (V, G*H) and table_index (rows,) (both None, or
    both given with values in [0, V)) and point ``buf`` at them. ``per_thread``: threads
    add rows into tables of their own, the caller's and (nt - 1) more allocated into
    ``*extra`` (the caller frees it), summed by _sum_table_grads."""
    if not _check_table("table_grads", table_grads, table_index, rows, GH, gates, hn):
        return 0
    buf.table_grads, buf.table_index = &table_grads[0, 0], &table_index[0]
    if per_thread and nt > 1:
        extra[0] = malloc(<size_t>((nt - 1) * table_grads.shape[0] * GH) * sizeof(floating))
        if extra[0] == NULL:
            raise MemoryError()
    return 0


cdef inline void* _thread_table(const LoopBuffers* buf, Py_ssize_t size, void* extra, int tid,
                                floating zero) noexcept nogil:
    """Thread tid's table of per_thread table gradients (``size`` elements), zeroed: the
    caller's for thread 0, else its block of ``extra``."""
    cdef floating* table = <floating*>buf.table_grads if tid == 0 else \
        <floating*>extra + (tid - 1) * size
    memset(table, 0, size * sizeof(floating))
    return table


cdef inline void _sum_table_grads(const LoopBuffers* buf, Py_ssize_t size, const void* extra,
                                  int tid, int nth, floating zero) noexcept nogil:
    """After a barrier: the caller's table += the other threads' (elements split between
    the threads)."""
    if nth > 1:
        add_parts(size, _split_at(size, tid, nth), _split_at(size, tid + 1, nth), nth - 1,
                  <const floating*>extra, <floating*>buf.table_grads)


cdef void _zero_table_columns(const LoopBuffers* buf, Py_ssize_t V, int kind, Py_ssize_t H,
                              Py_ssize_t j0, Py_ssize_t j1, floating zero) noexcept nogil:
    """Zero units [j0, j1) of each gate in every row of buf.table_grads (small batch: each
    thread owns its units' columns of the table)."""
    cdef Py_ssize_t v, k, G = gate_count(kind)
    for v in range(V):
        for k in range(G):
            memset(<floating*>buf.table_grads + _row_at(v, G * H) + k * H + j0, 0,
                   (j1 - j0) * sizeof(floating))


def backward_loop(int kind, bint reverse, Py_ssize_t T, Py_ssize_t B,
                  const floating[:, ::1] w_hh not None, const floating[:, ::1] h0 not None,
                  const floating[:, ::1] c0, const int64_t[::1] lengths,
                  floating[:, ::1] gates not None, floating[:, ::1] hn,
                  const floating[:, ::1] chist, const floating[:, :] y not None,
                  const floating[:, :] dy, floating[:, ::1] dh not None, floating[:, ::1] dc,
                  floating[:, ::1] dgh not None, int num_threads,
                  floating[:, ::1] table_grads=None, const int64_t[::1] table_index=None,
                  bint initial_dh=True):
    """Backpropagate through all steps, consuming the forward workspace.

    dy     (T*B, H)   gradient at the outputs, rows may be strided; None for no output gradient.
    dh, dc (B, H)     in: gradient at the final state, out: gradient at the initial state.
    gates  (T*B, G*H) in: activations, out: dGh (recurrent-side pre-activation gradients).
    hn     (T*B, H)   GRU: in W_hn h + b_hn, out: x-side gradient of the n gate.
    chist  (T*B, H)   LSTM: the cell states of forward.  c0 (B, H): LSTM initial cell state.
    dgh    (B, G*H)   out: dGh of each row's first step (pairs with h0 in dW_hh); without
                      lengths it may be gates' own rows of that step (then left as they are).
    table_grads (V, G*H), table_index (T*B,): or None, None; out: table_grads[v] = the sum
                      of the x-side gate gradients (dGh; the GRU's n gate: hn) of the rows r
                      with table_index[r] = v (an input x = table[index]: see lookup.py).
    initial_dh        False when dL/dh0 is not wanted: the product dGh W_hh of each
                      sequence's first step is skipped, and dh's out value is partial
                      (not a gradient); dc's out value is still dL/dc0.
    """
    cdef Py_ssize_t H = h0.shape[1], GH = gate_count(kind) * H
    cdef int nt = _threads_for(B, H, num_threads), tid, nth
    cdef Py_ssize_t b0, b1, j0, j1, b, length
    cdef floating* first
    cdef Py_ssize_t table_size = 0 if table_grads is None else table_grads.shape[0] * GH
    cdef LoopShape sh
    cdef LoopBuffers buf, own
    cdef floating* w_packed = NULL
    cdef void* dh_rows = NULL
    cdef void* dc_rows = NULL
    cdef void* tables = NULL
    cdef Py_ssize_t NR = panel_width(<floating>0), panels = (H + NR - 1) // NR
    _check_dims(T, B, H, GH)
    buf = _no_buffers()
    _bind_backward_buffers(&buf, kind, T, B, H, GH, T * B, False, w_hh, h0, c0, gates, hn,
                           chist, y, dy, dh, dc)
    _check_shape("dgh", dgh.shape[0], dgh.shape[1], B, GH)
    _check_lengths(lengths, T, B)
    _bind_table_grads(&buf, T * B, GH, table_grads, table_index, gates, hn, B > SMALL_BATCH,
                      nt, &tables)
    sh = _loop_shape(kind, T, B, H, reverse, lengths)
    buf.dgh = &dgh[0, 0]
    buf.initial_dh = initial_dh
    if B > SMALL_BATCH:
        # The batch slices run on copies of dh and dc with each thread's rows apart
        # (THREAD_ROWS_GAP); c0 is None except for the LSTM.
        w_packed = <floating*>malloc(<size_t>(panels * NR * GH) * sizeof(floating))
        dh_rows = _thread_rows(nt, B, H, sizeof(floating))
        if kind == K_LSTM:
            dc_rows = _thread_rows(nt, B, H, sizeof(floating))
        if w_packed == NULL or dh_rows == NULL or (kind == K_LSTM and dc_rows == NULL):
            free(w_packed)
            free(dh_rows)
            free(dc_rows)
            free(tables)
            raise MemoryError()
    buf.w_packed, buf.nr = w_packed, NR
    with nogil:
        if B <= SMALL_BATCH:
            _zero_past_lengths(&sh, 0, B, &gates[0, 0], GH, GH)
            if kind == K_GRU:
                _zero_past_lengths(&sh, 0, B, <floating*>buf.hn, H, H)
            with parallel(num_threads=nt):
                tid, nth = threadid(), fr_omp_team_size()
                j0 = _split_at(H, tid, nth)
                j1 = _split_at(H, tid + 1, nth)
                if buf.table_grads != NULL:   # each thread its units' columns of the table
                    _zero_table_columns(&buf, table_grads.shape[0], kind, H, j0, j1,
                                        <floating>0)
                _backward_columns(&sh, &buf, j0, j1, <floating>0)
        else:
            with parallel(num_threads=nt):
                tid, nth = threadid(), fr_omp_team_size()
                # Pack W_hh once, each thread a share of the panels, then all use it.
                pack_panels(buf.nr, GH, H, _share(panels, tid, nth), _share(panels, tid + 1, nth),
                            &w_hh[0, 0], H, False, w_packed)
                fr_omp_barrier()
                b0 = _share(B, tid, nth)
                b1 = _share(B, tid + 1, nth)
                # The slice's rows of dh and dc (LSTM) in, run, out.
                own = _with_thread_rows(&buf, tid, NULL, NULL, dh_rows, dc_rows)
                if buf.table_grads != NULL:
                    own.table_grads = _thread_table(&buf, table_size, tables, tid, <floating>0)
                _copy_rows(own.dh, buf.dh, b0, b1, H * sizeof(floating))
                _copy_rows(own.dc, buf.dc, b0, b1, H * sizeof(floating))
                _backward_batch_slice(&sh, &own, b0, b1, <floating>0)
                _copy_rows(buf.dh, own.dh, b0, b1, H * sizeof(floating))
                _copy_rows(buf.dc, own.dc, b0, b1, H * sizeof(floating))
                if buf.table_grads != NULL:
                    fr_omp_barrier()
                    _sum_table_grads(&buf, table_size, tables, tid, nth, <floating>0)
        free(w_packed)
        free(dh_rows)
        free(dc_rows)
        free(tables)
        # dGh at each sequence's first step, which pairs with h0 in dW_hh (unless dgh is
        # those very rows of gates: CpuOps.first_step_grads without lengths).
        for b in range(B):
            length = _length(&sh, b)
            first = &gates[0, 0] + _row_at(_row(_time_of_step(0, length, reverse), B, b), GH)
            if <floating*>&dgh[b, 0] != first:
                memcpy(&dgh[b, 0], first, GH * sizeof(floating))


ctypedef struct GradBuffers:
    # weight_grads' operands and outputs, all of the call's float type (void*: see LoopBuffers).
    Py_ssize_t rows            # rows of x, g, hn and dx: T*B, or the real tokens when packed
    const void* x              # (rows, I)
    const void* w_ih           # (G*H, I)
    const void* g              # (rows, G*H) dGh from backward_loop
    const void* hn             # (rows, H) GRU: the x-side gradient of the n gate; else NULL
    # dW_hh = g_paired^T y_paired over paired_rows rows (y_paired rows ldy elements apart)
    # + dgh_first^T h0 over first_rows rows (0: none).
    const void* g_paired
    const void* y_paired
    Py_ssize_t ldy
    Py_ssize_t paired_rows
    const void* h0             # (first_rows, H)
    const void* dgh_first      # (first_rows, G*H) dGh at each sequence's first step
    Py_ssize_t first_rows
    void* dw_ih                # (G*H, I)
    void* dw_hh                # (G*H, H)
    void* db_ih                # (G*H,) or NULL to skip
    void* db_hh                # (G*H,) or NULL to skip
    void* dx                   # (T*B, I) or NULL to skip
    void* tmp_ih               # K split: (parts - 1) partial dW_ih, else NULL
    void* tmp_hh               # K split: (parts - 1) partial dW_hh, else NULL


cdef void _bias_sums(int kind, Py_ssize_t H, Py_ssize_t GH, Py_ssize_t x_cols, Py_ssize_t r0,
                     Py_ssize_t r1, Py_ssize_t part, Py_ssize_t parts, const floating* g,
                     const floating* hn, floating* db_ih, floating* db_hh) noexcept nogil:
    """db_hh, db_ih (NULL: skipped) += the column sums of dG over rows [r0, r1), this part's
    columns. The same columns serve both but the GRU's n gate, whose x side is in hn; where
    they are the same, one pass over them serves both."""
    cdef Py_ssize_t lo = _split_at(GH, part, parts), hi = _split_at(GH, part + 1, parts)
    g = g + _row_at(r0, GH)
    if hn != NULL:
        hn = hn + _row_at(r0, H)
    if db_hh != NULL and db_ih != NULL and x_cols == GH:
        if hi > lo:
            add_column_sums(r1 - r0, lo, hi, g, GH, db_hh, db_ih)
        return
    if db_hh != NULL and hi > lo:
        add_column_sums(r1 - r0, lo, hi, g, GH, db_hh, NULL)
    lo, hi = _split_at(x_cols, part, parts), _split_at(x_cols, part + 1, parts)
    if db_ih != NULL and hi > lo:
        add_column_sums(r1 - r0, lo, hi, g, GH, db_ih, NULL)
    if kind == K_GRU and db_ih != NULL:
        lo, hi = _split_at(H, part, parts), _split_at(H, part + 1, parts)
        if hi > lo:
            add_column_sums(r1 - r0, lo, hi, hn, H, db_ih + 2 * H, NULL)


cdef void _weight_grads_part(const LoopShape* sh, Py_ssize_t I, const GradBuffers* gb,
                             Py_ssize_t part, Py_ssize_t parts, floating zero) noexcept nogil:
    """Part ``part`` of ``parts`` of weight_grads.

    dW_ih, dW_hh: when tmp_ih / tmp_hh are given (K split), this part sums over its share of
    the time-space rows, part 0 into dW itself and part p > 0 into tmp_*[p - 1] (summed into
    dW afterwards); else it computes rows [lo, hi) of dW over all rows. db, dx: rows [lo, hi)
    of the output (gate columns of db; time-space rows of dx). Parts write disjoint memory."""
    cdef int kind = sh.kind
    cdef Py_ssize_t H = sh.H, GH = sh.GH, ldy = gb.ldy
    cdef Py_ssize_t first_rows = gb.first_rows, paired_rows = gb.paired_rows
    cdef const floating* x = <const floating*>gb.x
    cdef const floating* w_ih = <const floating*>gb.w_ih
    cdef const floating* h0 = <const floating*>gb.h0
    cdef const floating* g = <const floating*>gb.g
    cdef const floating* hn = <const floating*>gb.hn
    cdef const floating* dgh_first = <const floating*>gb.dgh_first
    cdef floating* dw_ih = <floating*>gb.dw_ih
    cdef floating* dw_hh = <floating*>gb.dw_hh
    cdef floating* db_ih = <floating*>gb.db_ih
    cdef floating* db_hh = <floating*>gb.db_hh
    cdef floating* dx = <floating*>gb.dx
    cdef floating* tmp_ih = <floating*>gb.tmp_ih
    cdef floating* tmp_hh = <floating*>gb.tmp_hh
    cdef Py_ssize_t TB = gb.rows, lo, hi, k0, k1, r0, r1, xlo, xhi, nlo, nhi
    cdef Py_ssize_t x_cols = 2 * H if kind == K_GRU else GH   # gate columns shared by both sides
    cdef const floating* y_prev = <const floating*>gb.y_paired
    cdef const floating* g_with_prev = <const floating*>gb.g_paired
    cdef floating* c_hh = dw_hh
    cdef floating* c_ih = dw_ih
    cdef floating beta = 1
    if tmp_hh != NULL:
        # dW_hh += dGh^T h_prev over this part's rows: a K split, so that each part packs
        # only its share of both operands (an M split re-packs all of h_prev per part).
        if part > 0:
            c_hh, c_ih, beta = tmp_hh + (part - 1) * GH * H, tmp_ih + (part - 1) * GH * I, 0
        k0, k1 = _split_at(paired_rows, part, parts), _split_at(paired_rows, part + 1, parts)
        gemm(True, False, GH, H, k1 - k0, <floating>1, g_with_prev + _row_at(k0, GH), GH,
             y_prev + _row_at(k0, ldy), ldy, beta, c_hh, H)
        if part == 0 and first_rows > 0:
            gemm(True, False, GH, H, first_rows, <floating>1, dgh_first, GH, h0, H,
                 <floating>1, dw_hh, H)
        k0, k1 = _split_at(TB, part, parts), _split_at(TB, part + 1, parts)
        gemm(True, False, x_cols, I, k1 - k0, <floating>1, g + _row_at(k0, GH), GH,
             x + _row_at(k0, I), I, beta, c_ih, I)
        if kind == K_GRU:
            gemm(True, False, H, I, k1 - k0, <floating>1, hn + _row_at(k0, H), H,
                 x + _row_at(k0, I), I, beta, c_ih + 2 * H * I, I)
        _bias_sums(kind, H, GH, x_cols, 0, TB, part, parts, g, hn, db_ih, db_hh)
    else:
        # This part's gate columns of dW (and db) over all rows, in blocks of GEMM_KC rows:
        # the block of dG that the dW_hh product reads is still in L2 for the dW_ih product
        # and the bias sums (one pass over dG from memory instead of three). The own GEMM
        # adds its K blocks of GEMM_KC rows to C in order anyway, so its results are those
        # of one call over all rows (BLAS, which blocks K its own way, may round otherwise).
        # The part's columns: [lo, hi) of dW_hh's (all gates); [xlo, xhi) of dW_ih's that
        # share dGh's columns (all but the GRU's n gate); [nlo, nhi) of the GRU's n gate,
        # whose x-side gradient is in hn.
        lo, hi = _split_at(GH, part, parts), _split_at(GH, part + 1, parts)
        xlo, xhi = _split_at(x_cols, part, parts), _split_at(x_cols, part + 1, parts)
        nlo, nhi = _split_at(H, part, parts), _split_at(H, part + 1, parts)
        r0 = 0
        while r0 < TB:
            r1 = min(r0 + <Py_ssize_t>GEMM_KC, TB)
            # dW_hh[lo:hi] += dGh[:, lo:hi]^T h_prev over the paired rows of this block.
            if hi > lo and r0 < paired_rows:
                gemm(True, False, hi - lo, H, min(r1, paired_rows) - r0, <floating>1,
                     g_with_prev + _row_at(r0, GH) + lo, GH, y_prev + _row_at(r0, ldy), ldy,
                     <floating>1, dw_hh + lo * H, H)
            if xhi > xlo:
                gemm(True, False, xhi - xlo, I, r1 - r0, <floating>1,
                     g + _row_at(r0, GH) + xlo, GH, x + _row_at(r0, I), I, <floating>1,
                     dw_ih + xlo * I, I)
            if kind == K_GRU and nhi > nlo:
                gemm(True, False, nhi - nlo, I, r1 - r0, <floating>1,
                     hn + _row_at(r0, H) + nlo, H, x + _row_at(r0, I), I, <floating>1,
                     dw_ih + (2 * H + nlo) * I, I)
            _bias_sums(kind, H, GH, x_cols, r0, r1, part, parts, g, hn, db_ih, db_hh)
            r0 = r1
        # Each sequence's first step pairs with h0.
        if hi > lo and first_rows > 0:
            gemm(True, False, hi - lo, H, first_rows, <floating>1, dgh_first + lo, GH, h0,
                 H, <floating>1, dw_hh + lo * H, H)
    # dx[:, lo:hi] += dG W_ih[:, lo:hi] for a few rows (see GEMM_COLUMN_SPLIT_ROWS).
    if dx != NULL and TB < GEMM_COLUMN_SPLIT_ROWS:
        lo, hi = _split_at(I, part, parts), _split_at(I, part + 1, parts)
        if hi > lo:
            gemm(False, False, TB, hi - lo, x_cols, <floating>1, g, GH, w_ih + lo, I,
                 <floating>1, dx + lo, I)
            if kind == K_GRU:
                gemm(False, False, TB, hi - lo, H, <floating>1, hn, H, w_ih + 2 * H * I + lo,
                     I, <floating>1, dx + lo, I)
    # dx[lo:hi] += dG[lo:hi] W_ih.
    elif dx != NULL:
        lo, hi = _split_at(TB, part, parts), _split_at(TB, part + 1, parts)
        if hi > lo:
            gemm(False, False, hi - lo, I, x_cols, <floating>1, g + _row_at(lo, GH), GH, w_ih, I,
                 <floating>1, dx + _row_at(lo, I), I)
            if kind == K_GRU:
                gemm(False, False, hi - lo, I, H, <floating>1, hn + _row_at(lo, H), H,
                     w_ih + 2 * H * I, I, <floating>1, dx + _row_at(lo, I), I)


cdef int _bind_grad_buffers(GradBuffers* gb, int kind, Py_ssize_t rows, Py_ssize_t H,
                            Py_ssize_t GH, Py_ssize_t I, const floating[:, ::1] x,
                            const floating[:, ::1] w_ih, const floating[:, ::1] gates,
                            const floating[:, ::1] hn, floating[:, ::1] dw_ih,
                            floating[:, ::1] dw_hh, floating[::1] db_ih, floating[::1] db_hh,
                            floating[:, ::1] dx) except -1:
    """Check the operands and outputs weight_grads and weight_grads_packed share (``rows``
    tokens: T*B, or the real ones packed; x's rows are the caller's to check) and point
    ``gb`` at them; db_ih, db_hh and dx may be None (skipped). x None (then I is 0): no input
    side, w_ih, dw_ih and dx must be None too (db_ih is still summed)."""
    if x is None:
        if w_ih is not None or dw_ih is not None or dx is not None:
            raise TypeError("without x, w_ih, dw_ih and dx must be None too (no input side)")
    else:
        if w_ih is None or dw_ih is None:
            raise TypeError("w_ih and dw_ih must be arrays when x is given, got None")
        _check_shape("w_ih", w_ih.shape[0], w_ih.shape[1], GH, I)
        _check_shape("dw_ih", dw_ih.shape[0], dw_ih.shape[1], GH, I)
        gb.x, gb.w_ih, gb.dw_ih = &x[0, 0], &w_ih[0, 0], &dw_ih[0, 0]
    _check_shape("gates", gates.shape[0], gates.shape[1], rows, GH)
    _check_shape("dw_hh", dw_hh.shape[0], dw_hh.shape[1], GH, H)
    if kind == K_GRU:
        if hn is None:
            raise TypeError("the GRU needs hn, got None")
        _check_shape("hn", hn.shape[0], hn.shape[1], rows, H)
        gb.hn = &hn[0, 0]
    if db_ih is not None:
        _check_len("db_ih", db_ih.shape[0], GH)
        gb.db_ih = &db_ih[0]
    if db_hh is not None:
        _check_len("db_hh", db_hh.shape[0], GH)
        gb.db_hh = &db_hh[0]
    if dx is not None:
        _check_shape("dx", dx.shape[0], dx.shape[1], rows, I)
        gb.dx = &dx[0, 0]
    gb.rows, gb.g, gb.dw_hh = rows, &gates[0, 0], &dw_hh[0, 0]
    return 0


cdef Py_ssize_t _input_size(x, Py_ssize_t rows) except -1:
    """I, the columns of weight_grads' x (rows ``rows``), or 0 for x None (no input side)."""
    if x is None:
        return 0
    if x.shape[1] < 1:
        raise ValueError(f"x must have at least one column, got shape ({x.shape[0]}, {x.shape[1]})")
    _blas_int(x.shape[1], "the input size I")
    _check_shape("x", x.shape[0], x.shape[1], rows, x.shape[1])
    return x.shape[1]


def weight_grads(int kind, bint reverse, Py_ssize_t T, Py_ssize_t B,
                 const floating[:, ::1] x, const floating[:, ::1] w_ih,
                 const floating[:, ::1] h0 not None, const floating[:, :] y not None,
                 const floating[:, ::1] gates not None, const floating[:, ::1] hn,
                 const floating[:, ::1] dgh_first not None,
                 floating[:, ::1] dw_ih, floating[:, ::1] dw_hh not None,
                 floating[::1] db_ih, floating[::1] db_hh, floating[:, ::1] dx,
                 int num_threads=1):
    """Accumulate the parameter and input gradients with GEMMs over all steps.

    gates (T*B, G*H) holds dGh from backward_loop. The x side uses the same values except,
    for the GRU, the n gate, whose x-side gradient is in hn (T*B, H).
    The previous hidden state of row (t, b) is y at t-1 (forward) or t+1 (reverse), or h0 at
    each sequence's first step; dgh_first holds dGh at those first steps.
    x (T*B, I), w_ih and dw_ih (G*H, I), h0 (B, H), dw_hh (G*H, H), db_* (G*H,), dx (T*B, I).
    db_ih / db_hh / dx may be None to skip them; x, w_ih, dw_ih and dx all None skip the
    input side (dW_ih and dx: the caller derives them from the x-side gate gradient).
    The outputs are cut into max(2, num_threads) parts shared among the OpenMP threads, each
    calling single-threaded BLAS on its parts (see project_inputs).
    """
    cdef Py_ssize_t H = h0.shape[1], GH = gate_count(kind) * H
    cdef Py_ssize_t I = _input_size(x, T * B)
    cdef LoopShape sh
    cdef GradBuffers gb
    memset(&gb, 0, sizeof(gb))
    _check_dims(T, B, H, GH)
    _check_shape("h0", h0.shape[0], h0.shape[1], B, H)
    _check_shape("y", y.shape[0], y.shape[1], T * B, H)
    _check_shape("dgh_first", dgh_first.shape[0], dgh_first.shape[1], B, GH)
    _bind_grad_buffers(&gb, kind, T * B, H, GH, I, x, w_ih, gates, hn, dw_ih, dw_hh, db_ih,
                       db_hh, dx)
    gb.ldy = _row_stride("y (the output rows, out=)", y.strides[0], y.strides[1],
                          sizeof(floating), T * B, H)
    sh = _loop_shape(kind, T, B, H, reverse, None)
    # Row (t, b) pairs with y at t-1 (forward) or t+1 (reverse): rows t = 1..T-1 with y's
    # rows 0..T-2, or rows 0..T-2 with y's rows 1..T-1; each first step with h0.
    gb.paired_rows = (T - 1) * B
    gb.g_paired = &gates[0, 0] if reverse else &gates[0, 0] + _row_at(B, GH)
    gb.y_paired = &y[0, 0] + _row_at(B, gb.ldy) if reverse else &y[0, 0]
    gb.h0, gb.dgh_first, gb.first_rows = &h0[0, 0], &dgh_first[0, 0], B
    _run_weight_grads(&sh, I, &gb, num_threads, &dw_hh[0, 0], <floating*>gb.dw_ih)


cdef int _run_weight_grads(const LoopShape* sh, Py_ssize_t I, GradBuffers* gb, int num_threads,
                           floating* dw_hh, floating* dw_ih) except -1:
    """The parallel part of weight_grads and weight_grads_packed, on checked buffers."""
    cdef int tid, nth
    cdef int nt = fr_team_threads(num_threads)
    cdef Py_ssize_t p, GH = sh.GH, H = sh.H, parts = _gemm_parts(num_threads)
    cdef floating[::1] tmp_view
    cdef floating* tmp_hh = NULL
    # Split dW's GEMMs along the rows summed over (K) when there are many more of them than
    # gate columns: then re-packing the long operand per part would cost more than the
    # (parts - 1) small partial results, which are allocated through numpy so that they
    # show in memory measurements.
    if gb.rows >= 16 * max(GH, max(H, I)):
        tmp = np.empty((parts - 1) * GH * (H + I), dtype=np.float32 if floating is float else np.float64)
        tmp_view = tmp
        tmp_hh = &tmp_view[0]
        gb.tmp_hh, gb.tmp_ih = tmp_hh, tmp_hh + (parts - 1) * GH * H
    with nogil, parallel(num_threads=nt):
        tid, nth = threadid(), fr_omp_team_size()
        for p in range(_share(parts, tid, nth), _share(parts, tid + 1, nth)):
            _weight_grads_part(sh, I, gb, p, parts, <floating>0)
        if tmp_hh != NULL:
            fr_omp_barrier()
            add_parts(GH * H, _split_at(GH * H, tid, nth), _split_at(GH * H, tid + 1, nth),
                      parts - 1, tmp_hh, dw_hh)
            add_parts(GH * I, _split_at(GH * I, tid, nth), _split_at(GH * I, tid + 1, nth),
                      parts - 1, <floating*>gb.tmp_ih, dw_ih)
    return 0


# ---------------------------------------------------------------------------------------------
# Packed variable-length batches (batch > SMALL_BATCH with lengths): the cost follows the
# real tokens.
#
# The caller (fastrnn/_engine/packing.py) sorts the sequences by decreasing length and lays
# their real tokens out step by step, as PyTorch's PackedSequence does: packed row
# starts[s] + k is step s of the k-th longest sequence, and step s has counts[s] rows (the
# sequences longer than s, a prefix of the sorted order). gates, hn and chist use packed
# rows 0..N-1 of their buffers; y and dy stay in time space, row src[r] of packed row r, so
# that the layer's output is written where the caller reads it. At each step thread k of nt
# takes the _share k of the active sequences, a contiguous block of the step's rows, so
# that each step is one small GEMM of exactly the active rows and the shares stay balanced
# however the lengths are spread. The shares change only where some sequence ends (counts
# changes): one barrier there, none in between. (Owning the sequences k, k + nt, ... for
# good needed no barrier at all, but then the two cores streamed through alternate 4 KiB
# rows, and the prefetchers of each pulled in the other's rows: measured on the varlen
# case (LSTM and GRU, B 32, T 200, H 256, 2 threads) the backward loop took 12-14 % longer
# and the forward 3-6 %.)
#
# Each row goes through the same operations as in the time-space loops above (gemm_packed
# sums each element in a fixed order whatever its rows, see csrc/gemm_packed.h), so h_t, c_t,
# dh and dc come out identical; the weight gradients are sums over the real rows only.
# ---------------------------------------------------------------------------------------------

ctypedef struct PackedShape:
    int kind                   # cell id (_cells.pxd)
    Py_ssize_t B, H, GH        # sequences, hidden units, gate columns
    Py_ssize_t steps           # the longest length
    const int64_t* counts      # (steps,) rows of each step: non-increasing, counts[0] == B
    const int64_t* starts      # (steps,) first packed row of each step
    const int64_t* src         # (N,) time-space row of each packed row (for y and dy)


cdef inline const floating* _packed_h_prev(const PackedShape* ps, const LoopBuffers* buf,
                                           Py_ssize_t s, Py_ssize_t b,
                                           floating zero) noexcept nogil:
    """h_prev of sorted sequence b at step s: h0's row b at its first step, else its y row
    of step s - 1."""
    if s == 0:
        return <const floating*>buf.h0 + b * ps.H
    return <const floating*>buf.y + _row_at(<Py_ssize_t>ps.src[ps.starts[s - 1] + b], buf.ldy)


cdef inline const floating* _packed_c_prev(const PackedShape* ps, const LoopBuffers* buf,
                                           Py_ssize_t s, Py_ssize_t b,
                                           floating zero) noexcept nogil:
    """LSTM: c_prev of sorted sequence b at step s (c0 or chist's packed row of step s - 1);
    NULL for the other cells."""
    if ps.kind != K_LSTM:
        return NULL
    if s == 0:
        return <const floating*>buf.c0 + b * ps.H
    return <const floating*>buf.chist + _row_at(ps.starts[s - 1] + b, ps.H)


cdef void _forward_packed_share(const PackedShape* ps, const LoopBuffers* buf, Py_ssize_t k,
                                Py_ssize_t nt, floating zero) noexcept nogil:
    """Thread k of nt: per step, gather the h_prev of its share [b0, b1) of the active
    sequences into hcat, one GEMM with W_hh^T packed once (buf.w_packed) into gh, then the
    gate math per row."""
    cdef Py_ssize_t H = ps.H, GH = ps.GH, NR = buf.nr
    cdef Py_ssize_t s, m, b, b0, b1, row
    cdef floating* hcat = <floating*>buf.hcat
    for s in range(ps.steps):
        if s > 0 and ps.counts[s] != ps.counts[s - 1]:
            fr_omp_barrier()   # the shares move: step s - 1 must be done everywhere
        b0 = _share(ps.counts[s], k, nt)
        b1 = _share(ps.counts[s], k + 1, nt)
        m = b1 - b0
        for b in range(b0, b1):
            memcpy(hcat + b * H, _packed_h_prev(ps, buf, s, b, zero), H * sizeof(floating))
        if m > 0:
            gemm_packed(buf.nr, <int>m, GH, H, 0, (GH + NR - 1) // NR, hcat + b0 * H, H,
                        <const floating*>buf.w_packed, <floating*>buf.gh + b0 * GH, GH, False)
            if buf.table_gates != NULL:
                _claim_gate_rows(buf, ps.starts[s] + b0, m, GH, zero)
        for b in range(b0, b1):
            row = ps.starts[s] + b
            cell_forward_row(ps.kind, H, 0, H, _take_table_row(buf, ps.kind, H, row, 0, H, zero),
                             <floating*>buf.gh + b * GH, <const floating*>buf.b_hh,
                             _packed_h_prev(ps, buf, s, b, zero),
                             <floating*>buf.y + _row_at(<Py_ssize_t>ps.src[row], buf.ldy),
                             _packed_c_prev(ps, buf, s, b, zero),
                             _row_or_null(buf.chist, ps.kind == K_LSTM, row, H, zero),
                             _row_or_null(buf.hn, ps.kind == K_GRU, row, H, zero))


cdef void _backward_packed_share(const PackedShape* ps, const LoopBuffers* buf, Py_ssize_t k,
                                 Py_ssize_t nt, floating zero) noexcept nogil:
    """Thread k of nt, from the last step down: the gate backward of its share [b0, b1) of
    the active sequences turns their gates rows into dGh, contiguous in the packed step,
    the operand of dh += dGh W_hh (W_hh packed once, buf.w_packed)."""
    cdef Py_ssize_t H = ps.H, GH = ps.GH, NR = buf.nr
    cdef Py_ssize_t s, m, b, b0, b1, row, i
    cdef floating* dh_row
    cdef const floating* dy_row
    for s in range(ps.steps - 1, -1, -1):
        if s + 1 < ps.steps and ps.counts[s] != ps.counts[s + 1]:
            fr_omp_barrier()   # the shares move: step s + 1 must be done everywhere
        b0 = _share(ps.counts[s], k, nt)
        b1 = _share(ps.counts[s], k + 1, nt)
        m = b1 - b0
        if m == 0:
            continue
        for b in range(b0, b1):
            row = ps.starts[s] + b
            dh_row = <floating*>buf.dh + b * H
            if buf.dy != NULL:
                dy_row = <const floating*>buf.dy + _row_at(<Py_ssize_t>ps.src[row], buf.lddy)
                for i in range(H):
                    dh_row[i] += dy_row[i]
            cell_backward_row(ps.kind, H, 0, H, <floating*>buf.gates + _row_at(row, GH),
                              _row_or_null(buf.hn, ps.kind == K_GRU, row, H, zero),
                              _row_or_null(buf.chist, ps.kind == K_LSTM, row, H, zero),
                              _packed_c_prev(ps, buf, s, b, zero),
                              _packed_h_prev(ps, buf, s, b, zero), dh_row,
                              <floating*>buf.dc + b * H if ps.kind == K_LSTM else NULL)
            _add_table_grad(buf, ps.kind, H, row, 0, H,
                            <floating*>buf.gates + _row_at(row, GH), zero)
        if s == 0 and not buf.initial_dh:
            break
        gemm_packed(buf.nr, <int>m, H, GH, 0, (H + NR - 1) // NR,
                    <floating*>buf.gates + _row_at(ps.starts[s] + b0, GH), GH,
                    <const floating*>buf.w_packed, <floating*>buf.dh + b0 * H, H, True)


cdef object _packed_shape(int kind, Py_ssize_t T, Py_ssize_t B, Py_ssize_t H,
                          const int64_t[::1] counts, const int64_t[::1] src, PackedShape* ps):
    """Check a packing against the call's sizes and fill ``ps``. Returns the numpy array
    that holds ps.starts (keep it alive while ps is used)."""
    cdef Py_ssize_t s, steps = counts.shape[0], N = 0, TB = T * B
    cdef int64_t[::1] starts_view
    if steps < 1 or steps > T:
        raise ValueError(f"counts must have between 1 and T={T} steps, got {steps}")
    for s in range(steps):
        if counts[s] < 1 or counts[s] > (B if s == 0 else counts[s - 1]):
            raise ValueError(f"counts must be non-increasing in [1, B={B}], got {counts[s]} "
                             f"at step {s}")
        N += counts[s]
    if counts[0] != B:
        raise ValueError(f"counts[0] must be B={B} (every sequence has a first step), got "
                         f"{counts[0]}")
    _check_len("src", src.shape[0], N)
    _check_row_index("src", "hold time-space rows", src, TB)
    starts = np.empty(steps, dtype=np.int64)
    starts_view = starts
    N = 0
    for s in range(steps):
        starts_view[s] = N
        N += counts[s]
    ps.kind, ps.B, ps.H, ps.GH, ps.steps = kind, B, H, gate_count(kind) * H, steps
    ps.counts, ps.starts, ps.src = &counts[0], &starts_view[0], &src[0]
    return starts


cdef int _check_packed_rows(str name, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t N,
                            Py_ssize_t want_cols) except -1:
    """A buffer whose first N rows hold the packed tokens."""
    if rows < N or cols != want_cols:
        raise ValueError(f"{name} must have at least {N} rows (the real tokens) of {want_cols} "
                         f"columns, got ({rows}, {cols})")
    return 0


cdef int _check_step_rows(str name, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t want_rows,
                          Py_ssize_t want_cols, bint packed) except -1:
    """A per-token buffer: exactly want_rows (T*B) rows in time space, at least want_rows
    (the real tokens) packed."""
    if packed:
        return _check_packed_rows(name, rows, cols, want_rows, want_cols)
    return _check_shape(name, rows, cols, want_rows, want_cols)


cdef int _check_table(str name, table, const int64_t[::1] table_index, Py_ssize_t rows,
                      Py_ssize_t GH, gates, hn) except -1:
    """A loop's (V, G*H) table of rows ``name`` and its table_index: both None (returns 0),
    or both given, one index for each of the ``rows`` rows, each in [0, V), the table
    sharing no memory with the gates or hn the loop writes and reads with it (returns 1)."""
    if (table is None) != (table_index is None):
        raise TypeError(f"{name} and table_index go together: give both or neither")
    if table is None:
        return 0
    for other_name, other in (("gates", gates), ("hn", hn)):
        if other is not None and np.may_share_memory(np.asarray(table), np.asarray(other)):
            raise ValueError(f"{name} must not share memory with {other_name}")
    _check_len("table_index", table_index.shape[0], rows)
    if table.shape[1] != GH or table.shape[0] < 1:
        raise ValueError(f"{name} must have shape (V >= 1, {GH}), got "
                         f"({table.shape[0]}, {table.shape[1]})")
    _check_row_index("table_index", "be", table_index, table.shape[0])
    return 1


cdef int _bind_forward_buffers(LoopBuffers* buf, int kind, Py_ssize_t T, Py_ssize_t B,
                               Py_ssize_t H, Py_ssize_t GH, Py_ssize_t rows, bint packed,
                               const floating[:, ::1] w_hh, const floating[::1] b_hh,
                               floating[:, ::1] h, floating[:, ::1] c, floating[:, ::1] gates,
                               floating[:, ::1] hn, floating[:, ::1] chist,
                               floating[:, :] y, const floating[:, ::1] table_gates,
                               const int64_t[::1] table_index) except -1:
    """Check the arguments forward_loop and forward_loop_packed share and point ``buf`` at
    them. gates, hn and chist have one row per token: ``rows`` = T*B in time space, or at
    least ``rows`` (the real tokens) when ``packed``; y is time space either way.
    table_gates and table_index: both None, or (V, G*H) and (rows,) values in [0, V)."""
    _check_shape("h", h.shape[0], h.shape[1], B, H)
    _check_shape("w_hh", w_hh.shape[0], w_hh.shape[1], GH, H)
    _check_len("b_hh", b_hh.shape[0], GH)
    _check_step_rows("gates", gates.shape[0], gates.shape[1], rows, GH, packed)
    _check_shape("y", y.shape[0], y.shape[1], T * B, H)
    buf.ldy = _row_stride("y (the output rows, out=)", y.strides[0], y.strides[1],
                          sizeof(floating), T * B, H)
    if kind == K_LSTM:
        if c is None or chist is None:
            raise TypeError("the LSTM needs c and chist, got None")
        _check_shape("c", c.shape[0], c.shape[1], B, H)
        _check_step_rows("chist", chist.shape[0], chist.shape[1], rows, H, packed)
        buf.c0, buf.chist = &c[0, 0], &chist[0, 0]
    if kind == K_GRU:
        if hn is None:
            raise TypeError("the GRU needs hn, got None")
        _check_step_rows("hn", hn.shape[0], hn.shape[1], rows, H, packed)
        buf.hn = &hn[0, 0]
    if _check_table("table_gates", table_gates, table_index, rows, GH, gates, hn):
        buf.table_gates, buf.table_index = &table_gates[0, 0], &table_index[0]
    buf.gates, buf.y, buf.h0 = &gates[0, 0], &y[0, 0], &h[0, 0]
    buf.w_hh, buf.b_hh = <void*>&w_hh[0, 0], <void*>&b_hh[0]
    return 0


cdef int _bind_backward_buffers(LoopBuffers* buf, int kind, Py_ssize_t T, Py_ssize_t B,
                                Py_ssize_t H, Py_ssize_t GH, Py_ssize_t rows, bint packed,
                                const floating[:, ::1] w_hh, const floating[:, ::1] h0,
                                const floating[:, ::1] c0, floating[:, ::1] gates,
                                floating[:, ::1] hn, const floating[:, ::1] chist,
                                const floating[:, :] y, const floating[:, :] dy,
                                floating[:, ::1] dh, floating[:, ::1] dc) except -1:
    """Check the arguments backward_loop and backward_loop_packed share and point ``buf`` at
    them. gates, hn and chist have one row per token: ``rows`` = T*B in time space, or at
    least ``rows`` (the real tokens) when ``packed``; y and dy are time space either way."""
    _check_shape("w_hh", w_hh.shape[0], w_hh.shape[1], GH, H)
    _check_shape("h0", h0.shape[0], h0.shape[1], B, H)
    _check_step_rows("gates", gates.shape[0], gates.shape[1], rows, GH, packed)
    _check_shape("y", y.shape[0], y.shape[1], T * B, H)
    _check_shape("dh", dh.shape[0], dh.shape[1], B, H)
    buf.ldy = _row_stride("y (the output rows, out=)", y.strides[0], y.strides[1],
                          sizeof(floating), T * B, H)
    if dy is not None:
        _check_shape("dy", dy.shape[0], dy.shape[1], T * B, H)
        buf.lddy = _row_stride("dy (the output gradient rows)", dy.strides[0], dy.strides[1],
                               sizeof(floating), T * B, H)
        buf.dy = &dy[0, 0]
    if kind == K_LSTM:
        if c0 is None or chist is None or dc is None:
            raise TypeError("the LSTM needs c0, chist and dc, got None")
        _check_shape("c0", c0.shape[0], c0.shape[1], B, H)
        _check_step_rows("chist", chist.shape[0], chist.shape[1], rows, H, packed)
        _check_shape("dc", dc.shape[0], dc.shape[1], B, H)
        buf.c0, buf.chist, buf.dc = <void*>&c0[0, 0], <void*>&chist[0, 0], &dc[0, 0]
    if kind == K_GRU:
        if hn is None:
            raise TypeError("the GRU needs hn, got None")
        _check_step_rows("hn", hn.shape[0], hn.shape[1], rows, H, packed)
        buf.hn = &hn[0, 0]
    # Backward reads y, h0, c0 and chist only; they are stored as void* because the struct
    # serves both loops.
    buf.gates, buf.y, buf.h0 = &gates[0, 0], <void*>&y[0, 0], <void*>&h0[0, 0]
    buf.dh, buf.w_hh = &dh[0, 0], <void*>&w_hh[0, 0]
    return 0


def forward_loop_packed(int kind, Py_ssize_t T, Py_ssize_t B, const int64_t[::1] lengths not None,
                        const int64_t[::1] counts not None, const int64_t[::1] src not None,
                        const floating[:, ::1] w_hh not None, const floating[::1] b_hh not None,
                        floating[:, ::1] h not None, floating[:, ::1] c,
                        floating[:, ::1] gates not None, floating[:, ::1] hn,
                        floating[:, ::1] chist, floating[:, :] y not None,
                        int num_threads, const floating[:, ::1] table_gates=None,
                        const int64_t[::1] table_index=None):
    """forward_loop on a packed batch (see the section comment above).

    lengths (B,)      each sequence's length, in the caller's order (y is zeroed past them).
    counts  (steps,)  rows of each packed step; src (N,): time-space row of each packed row.
    h, c    (B, H)    in the sorted order: in the initial state, out the final state.
    gates   (>= N, G*H) in: projected inputs of the packed rows, out: saved activations.
    table_gates, table_index (N,): as in forward_loop, table_index per packed row.
    hn, chist (>= N, H) GRU / LSTM only, as in forward_loop, packed rows.
    y       (T*B, H)  out: h_t in time space (zero past each length), rows may be strided.
    """
    cdef Py_ssize_t H = h.shape[1], GH = gate_count(kind) * H, N, s, b, row
    cdef int nt = _threads_for(B, H, num_threads), tid, nth
    cdef PackedShape ps
    cdef LoopShape sh
    cdef LoopBuffers buf, own
    cdef floating* w_packed = NULL
    cdef void* hcat = NULL
    cdef void* gh = NULL
    cdef Py_ssize_t NR = panel_width(<floating>0), panels = (GH + NR - 1) // NR
    _check_dims(T, B, H, GH)
    _check_lengths(lengths, T, B)
    starts = _packed_shape(kind, T, B, H, counts, src, &ps)
    N = src.shape[0]
    buf = _no_buffers()
    _bind_forward_buffers(&buf, kind, T, B, H, GH, N, True, w_hh, b_hh, h, c, gates, hn, chist,
                          y, table_gates, table_index)
    sh = _loop_shape(kind, T, B, H, False, lengths)
    w_packed = <floating*>malloc(<size_t>(panels * NR * H) * sizeof(floating))
    # Per-step scratch, each thread's rows apart (THREAD_ROWS_GAP): a thread writes and reads
    # its rows of a step itself, so they may move with its share from step to step.
    hcat = _thread_rows(nt, B, H, sizeof(floating))
    gh = _thread_rows(nt, B, GH, sizeof(floating))   # h_prev W_hh^T
    if w_packed == NULL or hcat == NULL or gh == NULL:
        free(w_packed)
        free(hcat)
        free(gh)
        raise MemoryError()
    buf.w_packed, buf.nr = w_packed, NR
    try:
        with nogil:
            with parallel(num_threads=nt):
                tid, nth = threadid(), fr_omp_team_size()
                _zero_past_lengths(&sh, _share(B, tid, nth), _share(B, tid + 1, nth),
                                   &y[0, 0], buf.ldy, H)
                pack_panels(buf.nr, H, GH, _share(panels, tid, nth),
                            _share(panels, tid + 1, nth), &w_hh[0, 0], H, True, w_packed)
                fr_omp_barrier()
                own = _with_thread_rows(&buf, tid, gh, hcat, NULL, NULL)
                _forward_packed_share(&ps, &own, tid, nth, <floating>0)
            # h, c <- each sequence's state at its last step: sorted sequences
            # counts[s + 1] <= b < counts[s] end at step s.
            for s in range(ps.steps):
                for b in range(ps.counts[s + 1] if s + 1 < ps.steps else 0, ps.counts[s]):
                    row = ps.starts[s] + b
                    memcpy(&h[b, 0], &y[0, 0] + _row_at(<Py_ssize_t>ps.src[row], buf.ldy),
                           H * sizeof(floating))
                    if kind == K_LSTM:
                        memcpy(&c[b, 0], &chist[0, 0] + _row_at(row, H), H * sizeof(floating))
    finally:
        free(gh)
        free(hcat)
        free(w_packed)


def backward_loop_packed(int kind, Py_ssize_t T, Py_ssize_t B, const int64_t[::1] counts not None,
                         const int64_t[::1] src not None, const floating[:, ::1] w_hh not None,
                         const floating[:, ::1] h0 not None, const floating[:, ::1] c0,
                         floating[:, ::1] gates not None, floating[:, ::1] hn,
                         const floating[:, ::1] chist, const floating[:, :] y not None,
                         const floating[:, :] dy, floating[:, ::1] dh not None,
                         floating[:, ::1] dc, int num_threads,
                         floating[:, ::1] table_grads=None, const int64_t[::1] table_index=None,
                         bint initial_dh=True):
    """backward_loop on a packed batch (see forward_loop_packed for the layout).

    h0, c0, dh, dc (B, H) in the sorted order; dh, dc in: gradient at the final state, out:
    gradient at the initial state. gates (>= N, G*H) in: activations, out: dGh of the packed
    rows; hn (GRU) in: W_hn h + b_hn, out: the n gate's x-side gradient. y and dy (T*B, H)
    in time space (dy None for no output gradient). dGh of each sequence's first step is
    packed row b (step 0), so no dgh_first is returned.
    table_grads, table_index (N,): as in backward_loop, table_index per packed row.
    initial_dh: as in backward_loop.
    """
    cdef Py_ssize_t H = h0.shape[1], GH = gate_count(kind) * H, N
    cdef int nt = _threads_for(B, H, num_threads), tid, nth
    cdef Py_ssize_t table_size = 0 if table_grads is None else table_grads.shape[0] * GH
    cdef PackedShape ps
    cdef LoopBuffers buf, own
    cdef floating* w_packed = NULL
    cdef void* tables = NULL
    cdef Py_ssize_t NR = panel_width(<floating>0), panels = (H + NR - 1) // NR
    _check_dims(T, B, H, GH)
    starts = _packed_shape(kind, T, B, H, counts, src, &ps)
    N = src.shape[0]
    buf = _no_buffers()
    _bind_backward_buffers(&buf, kind, T, B, H, GH, N, True, w_hh, h0, c0, gates, hn, chist,
                           y, dy, dh, dc)
    _bind_table_grads(&buf, N, GH, table_grads, table_index, gates, hn, True, nt, &tables)
    buf.initial_dh = initial_dh
    w_packed = <floating*>malloc(<size_t>(panels * NR * GH) * sizeof(floating))
    if w_packed == NULL:
        free(tables)
        raise MemoryError()
    buf.w_packed, buf.nr = w_packed, NR
    with nogil:
        with parallel(num_threads=nt):
            tid, nth = threadid(), fr_omp_team_size()
            pack_panels(buf.nr, GH, H, _share(panels, tid, nth), _share(panels, tid + 1, nth),
                        &w_hh[0, 0], H, False, w_packed)
            own = buf
            if buf.table_grads != NULL:
                own.table_grads = _thread_table(&buf, table_size, tables, tid, <floating>0)
            fr_omp_barrier()
            _backward_packed_share(&ps, &own, tid, nth, <floating>0)
            if buf.table_grads != NULL:
                fr_omp_barrier()
                _sum_table_grads(&buf, table_size, tables, tid, nth, <floating>0)
        free(w_packed)
        free(tables)


def weight_grads_packed(int kind, const floating[:, ::1] x, const floating[:, ::1] w_ih,
                        const floating[:, ::1] h_prev not None,
                        const floating[:, ::1] gates not None, const floating[:, ::1] hn,
                        floating[:, ::1] dw_ih, floating[:, ::1] dw_hh not None,
                        floating[::1] db_ih, floating[::1] db_hh, floating[:, ::1] dx,
                        int num_threads=1):
    """weight_grads over the N real tokens of a packed batch: x, h_prev (each row's previous
    hidden state), gates (dGh), hn (GRU) and dx all have N rows, packed; dW_hh = dGh^T h_prev
    and dW_ih = dGh^T x in one GEMM each. db_* and dx may be None to skip them; x, w_ih, dw_ih
    and dx all None skip the input side (see weight_grads)."""
    cdef Py_ssize_t N = gates.shape[0], H = h_prev.shape[1]
    cdef Py_ssize_t GH = gate_count(kind) * H
    cdef Py_ssize_t I = _input_size(x, N)
    cdef LoopShape sh
    cdef GradBuffers gb
    memset(&gb, 0, sizeof(gb))
    _check_dims(1, N, H, GH)
    _check_shape("h_prev", h_prev.shape[0], h_prev.shape[1], N, H)
    _bind_grad_buffers(&gb, kind, N, H, GH, I, x, w_ih, gates, hn, dw_ih, dw_hh, db_ih, db_hh,
                       dx)
    sh = _loop_shape(kind, 1, N, H, False, None)
    gb.paired_rows, gb.g_paired, gb.y_paired, gb.ldy = N, &gates[0, 0], &h_prev[0, 0], H
    gb.first_rows = 0
    _run_weight_grads(&sh, I, &gb, num_threads, &dw_hh[0, 0], <floating*>gb.dw_ih)


cdef int _check_row_move(str packed_name, packed, Py_ssize_t n, Py_ssize_t F, str table_name,
                         table, const int64_t[::1] index, Py_ssize_t table_rows) except -1:
    """The operands of gather_rows and scatter_add_rows: ``packed`` (n, F) holds one row per
    index, ``index`` row numbers of ``table`` (table_rows rows). No two of them share memory:
    one of packed and table is written while the other is read, and a write into the index
    would move later rows out of the range checked here."""
    _check_shape(packed_name, packed.shape[0], packed.shape[1], n, F)
    if np.may_share_memory(np.asarray(packed), np.asarray(table)):
        raise ValueError(f"{packed_name} must not share memory with {table_name}")
    for name, a in ((packed_name, packed), (table_name, table)):
        if np.may_share_memory(np.asarray(index), np.asarray(a)):
            raise ValueError(f"index must not share memory with {name}")
    _check_row_index("index", "be", index, table_rows)
    return 0


def gather_rows(const floating[:, :] src not None, const int64_t[::1] index not None,
                floating[:, ::1] out not None, int num_threads=1):
    """out[r] = src[index[r]] for every row r of out: a packed batch's rows gathered from time
    space (the layer's input, each token's previous output), split among the threads (NumPy's
    take copies on one thread).

    src (rows, F), its rows may be strided; index (n,) values in [0, rows); out (n, F)."""
    cdef Py_ssize_t n = index.shape[0], rows = src.shape[0], F = src.shape[1], r, i
    cdef Py_ssize_t ld = _row_stride("src", src.strides[0], src.strides[1], sizeof(floating),
                                     rows, F)
    cdef int nt = fr_team_threads(num_threads)
    _check_row_move("out", out, n, F, "src", src, index, rows)
    if n == 0 or F == 0:
        return
    cdef const floating* s = &src[0, 0]
    with nogil:
        for r in prange(n, num_threads=nt, schedule="static"):
            i = index[r]
            memcpy(&out[r, 0], s + i * ld, F * sizeof(floating))


def scatter_add_rows(floating[:, ::1] dst not None, const int64_t[::1] index not None,
                     const floating[:, ::1] rows not None, int num_threads=1):
    """dst[index[r]] += rows[r] for r = 0, 1, ..., n - 1 in turn: a packed batch's dx added
    back into time space, an embedding's gradient into its table. A repeated index gets its
    rows added in that order. Each thread owns a range of dst's rows and adds the rows that
    go there (whole rows: splitting the columns instead was slower than one thread), so
    the results do not depend on the thread count.

    index (n,) values in [0, m); dst (m, F), rows (n, F)."""
    cdef Py_ssize_t n = index.shape[0], m = dst.shape[0], F = dst.shape[1], r, i, j, lo, hi
    cdef int nt = fr_team_threads(num_threads), tid, nth
    cdef floating* d
    cdef const floating* a
    _check_row_move("rows", rows, n, F, "dst", dst, index, m)
    if n == 0 or F == 0:
        return
    with nogil, parallel(num_threads=nt):
        tid, nth = threadid(), fr_omp_team_size()
        lo, hi = _share(m, tid, nth), _share(m, tid + 1, nth)
        for r in range(n):
            i = index[r]
            if lo <= i < hi:
                d = &dst[i, 0]
                a = &rows[r, 0]
                for j in range(F):
                    d[j] = d[j] + a[j]
