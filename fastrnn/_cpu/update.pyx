# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Fused optimizer updates: one pass over a parameter, its gradient and its buffers.

NumPy's Adam (fastrnn.optim) makes about ten passes over every parameter-sized array per
step; this loop does the same operations, in the same order and in the array's precision,
element by element, so its results are NumPy's bit for bit. (setup.py builds this module
with -ffp-contract=off: a fused multiply-add would round once where NumPy rounds twice.)
The elements are split among fastrnn's OpenMP threads; each element's result does not
depend on the split. The element loop itself is csrc/update.h, compiled per CPU (AVX-512,
AVX2, baseline) so that it runs on vectors (3.5x faster than the scalar loop Cython's
prange gave, on a 1 MiB float32 parameter).
"""
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.stdlib cimport free, malloc
from libc.string cimport memset

from ._openmp cimport join_fork_guard
from ._parts cimport MIN_PER_THREAD, _element_threads, _share
from ._spans cimport Span, span_of, spans_apart

cdef extern from "update.h" nogil:
    void fr_adam_update_f(Py_ssize_t i0, Py_ssize_t i1, float* param, const float* grad,
                          float* exp_avg, float* exp_avg_sq, float beta1, float one_minus_beta1,
                          float beta2, float one_minus_beta2, float sqrt_bias_correction2,
                          float eps, float step_size, int l2, float l2_decay, float param_scale)
    void fr_adam_update_d(Py_ssize_t i0, Py_ssize_t i1, double* param, const double* grad,
                          double* exp_avg, double* exp_avg_sq, double beta1,
                          double one_minus_beta1, double beta2, double one_minus_beta2,
                          double sqrt_bias_correction2, double eps, double step_size, int l2,
                          double l2_decay, double param_scale)
    double fr_sum_squares_f(Py_ssize_t n, const float* x)
    double fr_sum_squares_d(Py_ssize_t n, const double* x)
    void fr_scale_f(Py_ssize_t i0, Py_ssize_t i1, float* x, float scale)
    void fr_scale_d(Py_ssize_t i0, Py_ssize_t i1, double* x, double scale)

cnp.import_array()
join_fork_guard()

def adam_update(floating[::1] param not None, const floating[::1] grad not None,
                floating[::1] exp_avg not None, floating[::1] exp_avg_sq not None,
                floating beta1, floating one_minus_beta1, floating beta2,
                floating one_minus_beta2, floating sqrt_bias_correction2, floating eps,
                floating step_size, bint l2, floating l2_decay, floating param_scale,
                int num_threads=1):
    """One Adam step on flat (n,) arrays of one float dtype, in place; NumPy's order:

        param *= param_scale                  (AdamW's decoupled decay; skipped when 1)
        g = param * l2_decay + grad           (Adam's L2 term, with l2; else g = grad)
        exp_avg = exp_avg * beta1 + g * one_minus_beta1
        exp_avg_sq = exp_avg_sq * beta2 + (g * g) * one_minus_beta2
        param -= exp_avg / (sqrt(exp_avg_sq) / sqrt_bias_correction2 + eps) * step_size

    The caller (fastrnn.optim.Adam) checks that the four arrays do not overlap.
    """
    cdef Py_ssize_t n = param.shape[0], t, i0, i1
    cdef int nt
    if grad.shape[0] != n or exp_avg.shape[0] != n or exp_avg_sq.shape[0] != n:
        raise ValueError(f"grad, exp_avg and exp_avg_sq must have param's {n} elements, got "
                         f"{grad.shape[0]}, {exp_avg.shape[0]} and {exp_avg_sq.shape[0]}")
    if n == 0:
        return
    nt = _element_threads(n, num_threads)
    with nogil:
        # Thread t takes its _share of the elements: csrc/update.h's loop.
        for t in prange(nt, num_threads=nt, schedule="static"):
            i0 = _share(n, t, nt)
            i1 = _share(n, t + 1, nt)
            if floating is float:
                fr_adam_update_f(i0, i1, &param[0], &grad[0], &exp_avg[0], &exp_avg_sq[0],
                                 beta1, one_minus_beta1, beta2, one_minus_beta2,
                                 sqrt_bias_correction2, eps, step_size, l2, l2_decay,
                                 param_scale)
            else:
                fr_adam_update_d(i0, i1, &param[0], &grad[0], &exp_avg[0], &exp_avg_sq[0],
                                 beta1, one_minus_beta1, beta2, one_minus_beta2,
                                 sqrt_bias_correction2, eps, step_size, l2, l2_decay,
                                 param_scale)


def zero_fill(floating[::1] a not None, int num_threads=1):
    """a[:] = 0 for a flat (n,) array, split among the threads as adam_update splits n
    elements: each thread zeroes the part of a gradient it read in the last update (and that
    the weight-gradient products, which split rows the same way, write next), so the lines
    it writes are already in its core's cache. NumPy's fill, on one thread, waited on the
    other core's copies: the char model's zero_grad 0.24 ms."""
    cdef Py_ssize_t n = a.shape[0], t, i0
    cdef int nt = _element_threads(n, num_threads)
    with nogil:
        for t in prange(nt, num_threads=nt, schedule="static"):
            i0 = _share(n, t, nt)   # (n = 0: one thread, zero bytes)
            memset(&a[i0], 0, (_share(n, t + 1, nt) - i0) * sizeof(floating))


# ---------------------------------------------------------------------------------------------
# Passes over all of a model's gradients (or parameters) in one parallel region: one call
# and one fork/join of the threads per step instead of one per parameter, which on a small
# model cost more than the arithmetic (the fast.ai model's 7 Adam calls: 0.16 ms for 333 Ki
# elements, one call over the same elements 0.09 ms).
#
# The arrays come as lists. A call takes them only when each is a C-contiguous float32 or
# float64 ndarray (not a subclass), all of one dtype, the arrays of a group (a parameter,
# its gradient and its Adam buffers) of one size, those the call writes writeable, and no
# array the call writes overlaps any other array of the call: then every element's result
# is what the per-array calls give, whatever the order the threads take them in. Otherwise
# the call does nothing and returns False (None for sum_of_squares), and the caller takes
# its per-array path.
#
# Array i of n elements is shared by k = min(nt, n / MIN_PER_THREAD) threads (at least one)
# as adam_update and zero_fill share one array, so that a thread keeps updating, reading and
# zeroing the same part of a gradient from step to step (its lines stay in its core's
# cache). Arrays too small for all nt threads start at thread i % nt, so that a model's
# biases spread over the team.
# ---------------------------------------------------------------------------------------------

ctypedef struct Arrays:
    Py_ssize_t count      # arrays per role
    int roles             # roles per array (Adam: param, grad, exp_avg, exp_avg_sq)
    Py_ssize_t total      # elements over the count arrays
    bint is_double        # else float32
    Py_ssize_t* size      # (count,) elements of array i (all its roles)
    void** data           # (count * roles,) first element of role r of array i at i * roles + r


cdef void _free_arrays(Arrays* arr) noexcept:
    free(arr.size)
    free(arr.data)
    arr.size, arr.data = NULL, NULL


cdef bint _take_arrays(Arrays* arr, tuple lists, tuple written) except -1:
    """Fill ``arr`` from ``lists`` (one list per role, of equal lengths) if the call may take
    these arrays (see above); on False ``arr`` holds nothing to free. ``written``: whether
    the call writes each role."""
    cdef Py_ssize_t count, roles = len(lists), i, r, n_spans = 0, size
    cdef object a
    cdef cnp.ndarray array
    cdef int typenum = -1
    cdef Span* spans
    cdef bint ok = True
    count = len(lists[0])
    for r in range(roles):
        if len(lists[r]) != count:
            raise ValueError(f"the lists of arrays must have one length, got "
                             f"{[len(l) for l in lists]}")
    arr.count, arr.roles, arr.total = count, <int>roles, 0
    arr.size = <Py_ssize_t*>malloc(max(1, count) * sizeof(Py_ssize_t))
    arr.data = <void**>malloc(max(1, count * roles) * sizeof(void*))
    spans = <Span*>malloc(max(1, count * roles) * sizeof(Span))
    if arr.size == NULL or arr.data == NULL or spans == NULL:
        free(spans)
        _free_arrays(arr)
        raise MemoryError()
    try:
        for i in range(count):
            for r in range(roles):
                a = (<list>lists[r])[i]
                if not cnp.PyArray_CheckExact(a):
                    ok = False
                    break
                array = <cnp.ndarray>a
                size = cnp.PyArray_SIZE(array)
                if r == 0:
                    arr.size[i] = size
                    arr.total += size
                if typenum < 0:
                    typenum = cnp.PyArray_TYPE(array)
                if (cnp.PyArray_TYPE(array) != typenum or size != arr.size[i]
                        or not cnp.PyArray_IS_C_CONTIGUOUS(array)
                        or (written[r] and not cnp.PyArray_ISWRITEABLE(array))):
                    ok = False
                    break
                arr.data[i * roles + r] = cnp.PyArray_DATA(array)
                if size > 0:
                    spans[n_spans] = span_of(array, written[r])
                    n_spans += 1
            if not ok:
                break
        # (No arrays at all: nothing to do, and nothing refused.)
        ok = (ok and typenum in (-1, cnp.NPY_FLOAT32, cnp.NPY_FLOAT64)
              and spans_apart(spans, n_spans))
        arr.is_double = typenum == cnp.NPY_FLOAT64
    finally:
        free(spans)
    if not ok:
        _free_arrays(arr)
    return ok


cdef inline int _array_threads(Py_ssize_t n, int nt) noexcept nogil:
    """Threads that share an array of n elements in a pass whose team has nt."""
    return <int>min(<Py_ssize_t>nt, max(<Py_ssize_t>1, n // MIN_PER_THREAD))


cdef inline (Py_ssize_t, Py_ssize_t) _part_of(const Arrays* arr, Py_ssize_t i, int t,
                                            int nt) noexcept nogil:
    """Thread t's elements [i0, i1) of array i (empty when it has none): all nt threads share
    a large array in order, else _array_threads of them from thread i % nt on."""
    cdef Py_ssize_t n = arr.size[i]
    cdef int k = _array_threads(n, nt)
    cdef int first = 0 if k == nt else <int>(i % nt)
    cdef int j = (t - first + nt) % nt
    if j >= k:
        return 0, 0
    return _share(n, j, k), _share(n, j + 1, k)


cdef void _adam_thread(const Arrays* arr, int t, int nt, double beta1, double one_minus_beta1,
                       double beta2, double one_minus_beta2, double sqrt_bias_correction2,
                       double eps, double step_size, bint l2, double l2_decay,
                       double param_scale) noexcept nogil:
    """Thread t's parts of every array of one adam_update_arrays call."""
    cdef Py_ssize_t i, i0, i1
    cdef void** d
    for i in range(arr.count):
        i0, i1 = _part_of(arr, i, t, nt)
        if i1 <= i0:
            continue
        d = arr.data + i * arr.roles
        if arr.is_double:
            fr_adam_update_d(i0, i1, <double*>d[0], <const double*>d[1], <double*>d[2],
                             <double*>d[3], beta1, one_minus_beta1, beta2, one_minus_beta2,
                             sqrt_bias_correction2, eps, step_size, l2, l2_decay, param_scale)
        else:
            # The scalars rounded to float32, as adam_update's float32 arguments are.
            fr_adam_update_f(i0, i1, <float*>d[0], <const float*>d[1], <float*>d[2],
                             <float*>d[3], <float>beta1, <float>one_minus_beta1, <float>beta2,
                             <float>one_minus_beta2, <float>sqrt_bias_correction2,
                             <float>eps, <float>step_size, l2, <float>l2_decay,
                             <float>param_scale)


def adam_update_arrays(list params not None, list grads not None, list exp_avgs not None,
                       list exp_avg_sqs not None,
                       double beta1, double one_minus_beta1, double beta2,
                       double one_minus_beta2, double sqrt_bias_correction2, double eps,
                       double step_size, bint l2, double l2_decay, double param_scale,
                       int num_threads=1):
    """adam_update on every parameter of the lists (params[i] with grads[i], exp_avgs[i] and
    exp_avg_sqs[i], arrays of any shape) in one parallel pass, with the same scalars
    (rounded to the arrays' precision), element for element the same results. Returns
    False, having done nothing, when the arrays are not all ones it can take (see above)."""
    cdef Arrays arr
    cdef int nt, t
    if not _take_arrays(&arr, (params, grads, exp_avgs, exp_avg_sqs),
                        (True, False, True, True)):
        return False
    try:
        nt = _element_threads(arr.total, num_threads)
        with nogil:
            for t in prange(nt, num_threads=nt, schedule="static"):
                _adam_thread(&arr, t, nt, beta1, one_minus_beta1, beta2, one_minus_beta2,
                             sqrt_bias_correction2, eps, step_size, l2, l2_decay, param_scale)
    finally:
        _free_arrays(&arr)
    return True


cdef void _fill_thread(const Arrays* arr, int t, int nt, bint zero,
                       double scale) noexcept nogil:
    """Thread t's parts of every array: zeroed, or multiplied by scale."""
    cdef Py_ssize_t i, i0, i1
    for i in range(arr.count):
        i0, i1 = _part_of(arr, i, t, nt)
        if i1 <= i0:
            continue
        if arr.is_double:
            if zero:
                memset(<double*>arr.data[i] + i0, 0, (i1 - i0) * sizeof(double))
            else:
                fr_scale_d(i0, i1, <double*>arr.data[i], scale)
        else:
            if zero:
                memset(<float*>arr.data[i] + i0, 0, (i1 - i0) * sizeof(float))
            else:
                fr_scale_f(i0, i1, <float*>arr.data[i], <float>scale)


cdef bint _fill_arrays(list arrays, bint zero, double scale, int num_threads) except -1:
    cdef Arrays arr
    cdef int nt, t
    if not _take_arrays(&arr, (arrays,), (True,)):
        return False
    try:
        nt = _element_threads(arr.total, num_threads)
        with nogil:
            for t in prange(nt, num_threads=nt, schedule="static"):
                _fill_thread(&arr, t, nt, zero, scale)
    finally:
        _free_arrays(&arr)
    return True


def zero_arrays(list arrays not None, int num_threads=1):
    """a[...] = 0 for every array of the list in one parallel pass, each thread zeroing the
    parts it updates (see above). False, having done nothing, when the arrays are not all
    ones it can take."""
    return _fill_arrays(arrays, True, 0.0, num_threads)


def scale_arrays(list arrays not None, double scale, int num_threads=1):
    """a *= scale for every array of the list in one parallel pass, in the arrays' precision
    (NumPy's result for a Python float scale). False, having done nothing, when the arrays
    are not all ones it can take."""
    return _fill_arrays(arrays, False, scale, num_threads)


cdef enum:
    # Elements per partial sum of sum_of_squares: a thread count never changes which
    # elements are summed together, nor in what order.
    SQUARES_CHUNK = 1 << 13


cdef void _squares_thread(const Arrays* arr, const Py_ssize_t* first_chunk, Py_ssize_t c0,
                          Py_ssize_t c1, double* partial) noexcept nogil:
    """partial[c] for the chunks [c0, c1) (array i's chunks start at first_chunk[i])."""
    cdef Py_ssize_t i = 0, c, i0, n
    for c in range(c0, c1):
        while first_chunk[i + 1] <= c:
            i += 1
        i0 = (c - first_chunk[i]) * SQUARES_CHUNK
        n = min(<Py_ssize_t>SQUARES_CHUNK, arr.size[i] - i0)
        if arr.is_double:
            partial[c] = fr_sum_squares_d(n, <const double*>arr.data[i] + i0)
        else:
            partial[c] = fr_sum_squares_f(n, <const float*>arr.data[i] + i0)


def sum_of_squares(list arrays not None, int num_threads=1):
    """The sum of the squares of every element of every array of the list, as a float
    (float64 accumulation): each array in chunks of SQUARES_CHUNK elements summed in a fixed
    order (csrc/update.h), the chunks' sums added in order, so the result does not depend
    on the thread count. None when the arrays are not all ones it can take: float32 or
    float64 C-contiguous ndarrays of one dtype (only read: read-only and overlapping arrays
    are fine)."""
    cdef Arrays arr
    cdef Py_ssize_t i, c, chunks = 0
    cdef Py_ssize_t* first_chunk = NULL
    cdef double* partial = NULL
    cdef double total = 0.0
    cdef int nt, t
    if not _take_arrays(&arr, (arrays,), (False,)):
        return None
    try:
        first_chunk = <Py_ssize_t*>malloc((arr.count + 1) * sizeof(Py_ssize_t))
        if first_chunk == NULL:
            raise MemoryError()
        for i in range(arr.count):
            first_chunk[i] = chunks
            chunks += (arr.size[i] + SQUARES_CHUNK - 1) // SQUARES_CHUNK
        first_chunk[arr.count] = chunks
        partial = <double*>malloc(max(1, chunks) * sizeof(double))
        if partial == NULL:
            raise MemoryError()
        nt = _element_threads(arr.total, num_threads)
        with nogil:
            for t in prange(nt, num_threads=nt, schedule="static"):
                _squares_thread(&arr, first_chunk, _share(chunks, t, nt),
                                _share(chunks, t + 1, nt), partial)
            for c in range(chunks):
                total += partial[c]
    finally:
        free(partial)
        free(first_chunk)
        _free_arrays(&arr)
    return total
