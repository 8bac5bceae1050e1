# One typed, row-major GEMM over SciPy's BLAS, callable without the GIL.
#
# Everything in fastrnn is row-major (C order). A row-major product C = op(A) op(B) is the
# column-major product C^T = op(B)^T op(A)^T, so we swap the operands once, here, and the
# kernels never think about Fortran order.
#
# Sizes and leading dimensions are Py_ssize_t at the call sites (all index arithmetic in the
# kernels is 64-bit); SciPy's BLAS takes C int, so they are narrowed here. Every entry point
# checks first that the dimensions it can pass here fit an int (recurrent.pyx: _blas_int).
#
# Large products run on fastrnn's own AVX-512 packed GEMM where the CPU has AVX-512
# (csrc/gemm.h says why); everything else, and every CPU without AVX-512, on BLAS.
from scipy.linalg.cython_blas cimport sgemm, dgemm
from cython cimport floating
from libc.string cimport memcpy

cdef extern from "gemm.h" nogil:
    int fr_gemm_f(int trans_a, int trans_b, int m, int n, int k, const float* a, Py_ssize_t lda,
                  const float* b, Py_ssize_t ldb, int beta, float* c, Py_ssize_t ldc,
                  const float* bias, int claim_c)
    int fr_gemm_d(int trans_a, int trans_b, int m, int n, int k, const double* a,
                  Py_ssize_t lda, const double* b, Py_ssize_t ldb, int beta, double* c,
                  Py_ssize_t ldc, const double* bias, int claim_c)
    void fr_set_blas_gemm(int forced)
    void fr_claim_rows(void* c, int rows, size_t row_bytes, Py_ssize_t ld_bytes)
    int fr_own_gemm()
    enum:
        GEMM_KC "FR_GEMM_KC"   # rows of k summed per block: fr_gemm adds the blocks to C in order

cdef enum:
    # Below these sizes BLAS runs the product: packing B into panels (k * n copies) would
    # cost more than the few rows gain, and narrow products waste most of a 32-column panel.
    OWN_GEMM_MIN_ROWS = 32
    OWN_GEMM_MIN_COLS = 16


cdef inline void gemm(bint trans_a, bint trans_b, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                      floating alpha, const floating* a, Py_ssize_t lda,
                      const floating* b, Py_ssize_t ldb,
                      floating beta, floating* c, Py_ssize_t ldc) noexcept nogil:
    """C[m, n] = alpha * op(A)[m, k] @ op(B)[k, n] + beta * C, all row-major.

    lda/ldb/ldc are row strides in elements. With m, n or k zero this is a no-op
    (or a scaling by beta), as BLAS defines it. Every argument must fit a C int.
    """
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    cdef int im = <int>m, in_ = <int>n, ik = <int>k
    cdef int ilda = <int>lda, ildb = <int>ldb, ildc = <int>ldc
    if m <= 0 or n <= 0:
        return
    if (alpha == 1 and (beta == 0 or beta == 1) and m >= OWN_GEMM_MIN_ROWS
            and n >= OWN_GEMM_MIN_COLS):
        if floating is float:
            if fr_gemm_f(trans_a, trans_b, im, in_, ik, a, lda, b, ldb, beta == 1, c, ldc,
                         NULL, False) == 0:
                return
        else:
            if fr_gemm_d(trans_a, trans_b, im, in_, ik, a, lda, b, ldb, beta == 1, c, ldc,
                         NULL, False) == 0:
                return
    if floating is float:
        sgemm(&tb, &ta, &in_, &im, &ik, &alpha, <float*>b, &ildb, <float*>a, &ilda, &beta, c, &ildc)
    else:
        dgemm(&tb, &ta, &in_, &im, &ik, &alpha, <double*>b, &ildb, <double*>a, &ilda, &beta, c, &ildc)



cdef inline void gemm_bias(bint trans_b, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                           const floating* a, Py_ssize_t lda, const floating* b,
                           Py_ssize_t ldb, const floating* bias, floating* c,
                           Py_ssize_t ldc, bint claim_c) noexcept nogil:
    """C[m, n] = A[m, k] @ op(B)[k, n] + bias (bias[n] added to every row), row-major.

    One pass over C on fastrnn's own GEMM (the tiles add the bias as they store); on BLAS,
    the bias is copied into C's rows first and the product added (the same bits: the sum
    plus the bias either way). claim_c: C's lines were last read by another thread, so the
    own GEMM takes them whole before writing (csrc/gemm.h: fr_claim_rows). Every argument
    must fit a C int."""
    cdef Py_ssize_t i
    if m <= 0 or n <= 0:
        return
    if m >= OWN_GEMM_MIN_ROWS and n >= OWN_GEMM_MIN_COLS:
        if floating is float:
            if fr_gemm_f(False, trans_b, <int>m, <int>n, <int>k, a, lda, b, ldb, 0, c, ldc,
                         bias, claim_c) == 0:
                return
        else:
            if fr_gemm_d(False, trans_b, <int>m, <int>n, <int>k, a, lda, b, ldb, 0, c, ldc,
                         bias, claim_c) == 0:
                return
    for i in range(m):
        memcpy(c + i * ldc, bias, n * sizeof(floating))
    gemm(False, trans_b, m, n, k, <floating>1, a, lda, b, ldb, <floating>1, c, ldc)


from scipy.linalg.cython_blas cimport sgemv, dgemv


cdef inline void gemv(bint trans_a, Py_ssize_t m, Py_ssize_t n, floating alpha, const floating* a,
                      Py_ssize_t lda, const floating* x, floating beta, floating* y) noexcept nogil:
    """y = alpha * op(A) @ x + beta * y with A (m, n) row-major (lda its row stride).

    op(A) = A (y has m entries, x n) or A^T (y has n, x m). Unit strides for x and y.
    Every argument must fit a C int.
    """
    # Row-major A (m, n) is column-major A^T (n, m): A @ x is a transposed product there.
    cdef char t = b'N' if trans_a else b'T'
    cdef int one = 1, im = <int>m, in_ = <int>n, ilda = <int>lda
    if m <= 0 or n <= 0:
        return
    if floating is float:
        sgemv(&t, &in_, &im, &alpha, <float*>a, &ilda, <float*>x, &one, &beta, y, &one)
    else:
        dgemv(&t, &in_, &im, &alpha, <double*>a, &ilda, <double*>x, &one, &beta, y, &one)
