# Sums over rows for the weight gradients (csrc/reduce.h): the bias gradients' column sums and
# the reduction of per-thread partial products. This file only picks the float or double
# instance.
from cython cimport floating

cdef extern from "reduce.h" nogil:
    void fr_add_column_sums_f(Py_ssize_t rows, Py_ssize_t c0, Py_ssize_t c1, const float* a,
                              Py_ssize_t lda, float* out, float* out2)
    void fr_add_column_sums_d(Py_ssize_t rows, Py_ssize_t c0, Py_ssize_t c1, const double* a,
                              Py_ssize_t lda, double* out, double* out2)
    void fr_add_parts_f(Py_ssize_t n, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t count,
                        const float* parts, float* out)
    void fr_add_parts_d(Py_ssize_t n, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t count,
                        const double* parts, double* out)


cdef inline void add_column_sums(Py_ssize_t rows, Py_ssize_t c0, Py_ssize_t c1,
                                 const floating* a, Py_ssize_t lda, floating* out,
                                 floating* out2) noexcept nogil:
    """out[j] += sum over rows of a[r, j] (rows in order), columns [c0, c1); the same
    additions into out2 too when it is not NULL."""
    if floating is float:
        fr_add_column_sums_f(rows, c0, c1, a, lda, out, out2)
    else:
        fr_add_column_sums_d(rows, c0, c1, a, lda, out, out2)


cdef inline void add_parts(Py_ssize_t n, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t count,
                           const floating* parts, floating* out) noexcept nogil:
    """out[i0:i1] += parts[0][i0:i1] + ... + parts[count - 1][i0:i1], in that order (the
    parts n elements apart)."""
    if floating is float:
        fr_add_parts_f(n, i0, i1, count, parts, out)
    else:
        fr_add_parts_d(n, i0, i1, count, parts, out)
