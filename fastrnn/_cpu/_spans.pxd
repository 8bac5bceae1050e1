# The bytes an array covers, and whether arrays that are written overlap others: shared by
# update.pyx (which passes may take a list of arrays) and arrays.pyx (the layers' checks
# that an output shares no memory with another argument).
cimport numpy as cnp
from libc.stdint cimport uintptr_t
from libc.stdlib cimport qsort


ctypedef struct Span:
    uintptr_t lo, hi      # [lo, hi): every byte an array's elements may touch
    int written


cdef inline Span span_of(cnp.ndarray a, int written) noexcept:
    """The smallest byte range holding every element of ``a`` (any strides, negative
    ones too); empty (lo == hi) for an array of no elements."""
    cdef Span s
    cdef Py_ssize_t d, extent
    cdef cnp.npy_intp* shape = cnp.PyArray_DIMS(a)
    cdef cnp.npy_intp* strides = cnp.PyArray_STRIDES(a)
    s.lo = s.hi = <uintptr_t>cnp.PyArray_DATA(a)
    s.written = written
    if cnp.PyArray_SIZE(a) == 0:
        return s
    s.hi += <uintptr_t>cnp.PyArray_ITEMSIZE(a)
    for d in range(cnp.PyArray_NDIM(a)):
        extent = (shape[d] - 1) * strides[d]
        if extent < 0:
            s.lo -= <uintptr_t>(-extent)
        else:
            s.hi += <uintptr_t>extent
    return s


cdef inline Span bytes_span(const void* data, Py_ssize_t nbytes, int written) noexcept nogil:
    """The span of ``nbytes`` contiguous bytes from ``data`` (a contiguous memoryview's:
    pass 0 bytes for one of no elements, whose data pointer is not to be read)."""
    cdef Span s
    s.lo = <uintptr_t>data
    s.hi = s.lo + <uintptr_t>nbytes
    s.written = written
    return s


cdef inline bint spans_meet(const Span* a, const Span* b) noexcept nogil:
    """Whether two spans share a byte (an empty span shares none)."""
    return a.lo < b.hi and b.lo < a.hi and a.lo < a.hi and b.lo < b.hi


cdef inline int _by_start(const void* a, const void* b) noexcept nogil:
    cdef uintptr_t x = (<const Span*>a).lo, y = (<const Span*>b).lo
    return (x > y) - (x < y)


cdef inline bint spans_apart(Span* spans, Py_ssize_t n) noexcept nogil:
    """No span that is written overlaps another span (sorts ``spans``; empty spans are
    left out by the callers)."""
    cdef uintptr_t end_any = 0, end_written = 0
    cdef Py_ssize_t i
    qsort(spans, n, sizeof(Span), _by_start)
    for i in range(n):
        # Any earlier span that overlaps span i starts at or before it and ends after its start.
        if spans[i].lo < (end_any if spans[i].written else end_written):
            return False
        end_any = max(end_any, spans[i].hi)
        if spans[i].written:
            end_written = max(end_written, spans[i].hi)
    return True
