# One typed, row-major GEMM over SciPy's BLAS, callable without the GIL.
#
# Everything in fastrnn is row-major (C order). A row-major product C = op(A) op(B) is the
# column-major product C^T = op(B)^T op(A)^T, so we swap the operands once, here, and the
# kernels never think about Fortran order.
from scipy.linalg.cython_blas cimport sgemm, dgemm
from cython cimport floating


cdef inline void gemm(bint trans_a, bint trans_b, int m, int n, int k,
                      floating alpha, const floating* a, int lda,
                      const floating* b, int ldb,
                      floating beta, floating* c, int ldc) noexcept nogil:
    """C[m, n] = alpha * op(A)[m, k] @ op(B)[k, n] + beta * C, all row-major.

    lda/ldb/ldc are row strides in elements. With m, n or k zero this is a no-op
    (or a scaling by beta), as BLAS defines it.
    """
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    if m <= 0 or n <= 0:
        return
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*>b, &ldb, <float*>a, &lda, &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*>b, &ldb, <double*>a, &lda, &beta, c, &ldc)


from scipy.linalg.cython_blas cimport sgemv, dgemv


cdef inline void gemv(bint trans_a, int m, int n, floating alpha, const floating* a, int lda,
                      const floating* x, floating beta, floating* y) noexcept nogil:
    """y = alpha * op(A) @ x + beta * y with A (m, n) row-major (lda its row stride).

    op(A) = A (y has m entries, x n) or A^T (y has n, x m). Unit strides for x and y.
    """
    # Row-major A (m, n) is column-major A^T (n, m): A @ x is a transposed product there.
    cdef char t = b'N' if trans_a else b'T'
    cdef int one = 1
    if m <= 0 or n <= 0:
        return
    if floating is float:
        sgemv(&t, &n, &m, &alpha, <float*>a, &lda, <float*>x, &one, &beta, y, &one)
    else:
        dgemv(&t, &n, &m, &alpha, <double*>a, &lda, <double*>x, &one, &beta, y, &one)
