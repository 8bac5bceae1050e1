# Argument checks of the compiled entry points (recurrent.pyx, dense.pyx, generate.pyx). The
# Python layer checks user input with better messages; these keep a bad buffer (a tampered
# workspace, a direct call) from reaching a kernel that would read or write past it.
from libc.limits cimport INT_MAX


cdef inline int _blas_int(Py_ssize_t n, str what) except -1:
    """n, which some entry point passes to BLAS as a size or leading dimension, must fit a C int."""
    if n > INT_MAX:
        raise ValueError(f"{what} is {n}, more than BLAS can take ({INT_MAX}, the largest C "
                         f"int): split the problem (shorter sequences or a smaller batch)")
    return 0


cdef inline int _check_shape(str name, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t want_rows,
                             Py_ssize_t want_cols) except -1:
    if rows != want_rows or cols != want_cols:
        raise ValueError(f"{name} must have shape ({want_rows}, {want_cols}), got ({rows}, {cols})")
    return 0


cdef inline int _check_len(str name, Py_ssize_t n, Py_ssize_t want) except -1:
    if n != want:
        raise ValueError(f"{name} must have shape ({want},), got ({n},)")
    return 0


cdef inline Py_ssize_t _row_stride(str name, Py_ssize_t stride, Py_ssize_t col_stride,
                                   Py_ssize_t itemsize, Py_ssize_t rows,
                                   Py_ssize_t cols) except -1:
    """Row stride in elements of a (rows, cols) array whose rows may be strided but whose
    elements within a row are contiguous (col_stride == itemsize): a positive whole number of
    elements, at least cols (rows must not overlap), and fitting BLAS."""
    if col_stride != itemsize and cols > 1:
        raise ValueError(f"{name} rows must be contiguous")
    if rows <= 1:
        return max(cols, 1)   # never used to step; BLAS wants at least the row length
    if stride % itemsize != 0 or stride // itemsize < cols:
        raise ValueError(f"{name} rows must be a positive whole number of elements apart and "
                         f"not overlap (row stride >= {cols} elements), got a row stride of "
                         f"{stride} bytes")
    _blas_int(stride // itemsize, f"the row stride of {name}")
    return stride // itemsize
