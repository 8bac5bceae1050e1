# How the kernels cut their work into parts and find their rows; shared by recurrent.pyx,
# dense.pyx and generate.pyx, so that every kernel splits the same way.
#
# Every helper returns a value instead of writing through pointers: in a Cython parallel
# block only assigned variables are private to a thread.
from ._openmp cimport fr_team_threads

cdef enum:
    # Column (and row) ranges of a part start at multiples of this, so that each item goes
    # through the same (vector or tail) code whatever the thread count, and GEMM shares are
    # whole tiles.
    COL_ALIGN = 16
    # The large GEMMs (input projection, weight gradients, dense layers) are cut into
    # max(GEMM_MIN_PARTS, threads) parts, and threads take whole parts. BLAS's result for an
    # element can depend on the shape of the call (small-matrix kernels), so a part count
    # that does not change between 1 and 2 threads keeps those results identical; with more
    # threads the parts (and the last bits) change. Few parts because each part re-packs
    # the whole of the other GEMM operand (4 parts cost 25% more than 2 on the weight
    # gradients of a 256-unit RNN).
    GEMM_MIN_PARTS = 2
    # A large GEMM with fewer rows than this splits its columns into the parts instead: each
    # part then packs only its share of the (large) right operand, which a row split would
    # have every part pack whole (the input projection and dx at batch 1: 4 MiB of W_ih per
    # part; the dense layers' products, dense.parallel_gemm: the output layer's dW, V x H).
    # Chosen by shape, never by thread count, so results stay thread-count independent.
    GEMM_COLUMN_SPLIT_ROWS = 128
    # Below this many elements per thread, another thread costs more than it saves in a
    # pass over an array (a parallel region costs a few microseconds). Measured on float32
    # arrays that stay in cache between steps, as a model's parameters do (2 threads
    # against 1; benchmarks/adam_threads.py): 16 Ki elements 0.75x, 64 Ki 1.3x, 256 Ki (the
    # char model's W_hh) 1.8x, 1 Mi 2.6x.
    MIN_PER_THREAD = 1 << 15


cdef inline Py_ssize_t _split_at(Py_ssize_t n, Py_ssize_t k, Py_ssize_t nt) noexcept nogil:
    """Start of part k of n items split into nt near-equal parts, in whole blocks of
    COL_ALIGN items. Part k is [_split_at(n, k, nt), _split_at(n, k + 1, nt))."""
    cdef Py_ssize_t blocks = (n + COL_ALIGN - 1) // COL_ALIGN
    return min(n, (k * blocks // nt) * COL_ALIGN)


cdef inline Py_ssize_t _share(Py_ssize_t n, Py_ssize_t k, Py_ssize_t nt) noexcept nogil:
    """Start of thread k's share of n whole items (parts, panels, batch rows) among nt
    threads: thread k takes [_share(n, k, nt), _share(n, k + 1, nt))."""
    return k * n // nt


cdef inline Py_ssize_t _gemm_parts(int num_threads) noexcept nogil:
    """Parts a large GEMM is cut into for num_threads threads (see GEMM_MIN_PARTS)."""
    return max(GEMM_MIN_PARTS, num_threads)


cdef inline Py_ssize_t _row(Py_ssize_t t, Py_ssize_t B, Py_ssize_t b) noexcept nogil:
    """Time-space row of sequence b at time t."""
    return t * B + b


cdef inline Py_ssize_t _row_at(Py_ssize_t row, Py_ssize_t ld) noexcept nogil:
    """Element offset of a row in an array with row stride ld (64-bit: this is the product
    that passes 2^31 first)."""
    return row * ld


cdef inline int _element_threads(Py_ssize_t n, int num_threads) noexcept nogil:
    """Threads for a pass over n elements: at most num_threads, each with at least
    MIN_PER_THREAD of them (at least one thread). Every pass over a gradient asks this
    (update.pyx), so that each thread's _share of it is the same in all of them."""
    return fr_team_threads(min(num_threads, max(1, n // MIN_PER_THREAD)))
