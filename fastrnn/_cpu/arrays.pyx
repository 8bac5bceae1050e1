# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Facts about NumPy arrays that the argument checks ask on every call, found in C: which
arrays' byte ranges meet (whether two may share memory), and an integer array's smallest
and largest values (whether token ids are in range).

The checks run a few dozen times per training step. In Python they cost the small model's
step about 0.1 ms (a NumPy call per pair of arrays, two reductions per id array); here each
check is one call.
"""
cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport free, malloc

from ._spans cimport Span, span_of, spans_meet

cnp.import_array()


def meeting_pairs(list arrays, Py_ssize_t n_written):
    """The pairs ``(i, j)``, ``i < n_written`` and ``i < j``, of ``arrays`` whose byte
    ranges meet (only those can share memory), in the order of i, then j. None when an
    entry is not exactly a ``numpy.ndarray`` (a subclass or a device array): the caller
    then asks about every pair itself.

    Arrays of no elements meet nothing.
    """
    cdef Py_ssize_t n = len(arrays), i, j
    cdef Span* spans
    cdef list pairs = []
    n_written = max(0, min(n_written, n))
    for i in range(n):
        if not cnp.PyArray_CheckExact(arrays[i]):
            return None
    spans = <Span*>malloc(max(1, n) * sizeof(Span))
    if spans == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            spans[i] = span_of(<cnp.ndarray>arrays[i], i < n_written)
        for i in range(n_written):
            for j in range(i + 1, n):
                if spans_meet(&spans[i], &spans[j]):
                    pairs.append((i, j))
    finally:
        free(spans)
    return pairs


ctypedef fused id_int:
    int32_t
    int64_t


cdef (int64_t, int64_t) _min_max(const id_int* p, Py_ssize_t n) noexcept nogil:
    """Smallest and largest of p[0..n), n >= 1."""
    cdef int64_t lo = p[0], hi = p[0], v
    cdef Py_ssize_t i
    for i in range(1, n):
        v = p[i]
        lo = v if v < lo else lo
        hi = v if v > hi else hi
    return lo, hi


def int_range(a):
    """``(a.min(), a.max())`` as Python ints, in one pass, for a C-contiguous int64 or
    int32 ``numpy.ndarray`` (exactly that type) with at least one element; None for any
    other array (the caller asks NumPy)."""
    cdef cnp.ndarray arr
    cdef Py_ssize_t n
    cdef int64_t lo, hi
    if not cnp.PyArray_CheckExact(a):
        return None
    arr = <cnp.ndarray>a
    n = cnp.PyArray_SIZE(arr)
    if n == 0 or not cnp.PyArray_IS_C_CONTIGUOUS(arr) or not cnp.PyArray_ISNOTSWAPPED(arr):
        return None
    if cnp.PyArray_TYPE(arr) == cnp.NPY_INT64:
        with nogil:
            lo, hi = _min_max(<const int64_t*>cnp.PyArray_DATA(arr), n)
    elif cnp.PyArray_TYPE(arr) == cnp.NPY_INT32:
        with nogil:
            lo, hi = _min_max(<const int32_t*>cnp.PyArray_DATA(arr), n)
    else:
        return None
    return lo, hi
