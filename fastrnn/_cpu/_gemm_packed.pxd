# The recurrent product of one step for a few rows of batch (csrc/gemm_packed.h): matrix-vector
# kernels for the small-batch path, W_hh packed into panels plus a register-tiled micro-kernel
# for the batch-slice path. This file only picks the float or double instance.
# Sizes are int (at most G*H or the batch, checked to fit by the entry points); leading
# dimensions are Py_ssize_t.
from cython cimport floating

cdef extern from "gemm_packed.h" nogil:
    void fr_matvec_rows_f(int r0, int r1, int K, const float* W, Py_ssize_t ldw, int nb,
                          const float* const* x, float* const* y)
    void fr_matvec_rows_best_f(int r0, int r1, int K, const float* W, Py_ssize_t ldw, int nb,
                               const float* const* x, float* const* y)
    int fr_matvec_rows_acc_simd_f(int r0, int r1, int K, const float* W, Py_ssize_t ldw,
                                  int nb, const float* const* x, float* const* y,
                                  int accumulate)
    void fr_matvec_rows_d(int r0, int r1, int K, const double* W, Py_ssize_t ldw, int nb,
                          const double* const* x, double* const* y)
    void fr_matvec_cols_acc_f(int j0, int j1, int K, const float* W, Py_ssize_t ldw, int nb,
                              const float* const* d, float* const* y)
    void fr_matvec_cols_acc_best_f(int j0, int j1, int K, const float* W, Py_ssize_t ldw,
                                   int nb, const float* const* d, float* const* y)
    void fr_matvec_cols_acc_d(int j0, int j1, int K, const double* W, Py_ssize_t ldw, int nb,
                              const double* const* d, double* const* y)
    void fr_pack_panels_f(int nr, int K, int N, int p0, int p1, const float* W, Py_ssize_t ldw, int trans, float* Bp)
    void fr_pack_panels_d(int nr, int K, int N, int p0, int p1, const double* W, Py_ssize_t ldw, int trans, double* Bp)
    void fr_gemm_packed_f(int nr, int M, int N, int K, int p0, int p1, const float* A, Py_ssize_t lda,
                          const float* Bp, float* C, Py_ssize_t ldc, int accumulate)
    void fr_gemm_packed_d(int nr, int M, int N, int K, int p0, int p1, const double* A, Py_ssize_t lda,
                          const double* Bp, double* C, Py_ssize_t ldc, int accumulate)
    int fr_panel_width_f()
    int fr_panel_width_d()
    void fr_set_kernel_cap(int cap)
    int fr_cpu_has_narrow()


cdef inline void matvec_rows(int r0, int r1, int K, const floating* W, Py_ssize_t ldw, int nb,
                             const floating** x, floating** y) noexcept nogil:
    """y[b][r] = W[r, :K] . x[b] for rows r0 <= r < r1, b < nb (small-batch path)."""
    if floating is float:
        fr_matvec_rows_best_f(r0, r1, K, W, ldw, nb, x, y)
    else:
        fr_matvec_rows_d(r0, r1, K, W, ldw, nb, x, y)


cdef inline void matvec_cols_acc(int j0, int j1, int K, const floating* W, Py_ssize_t ldw, int nb,
                                 const floating** d, floating** y) noexcept nogil:
    """y[b][j] += sum_k d[b][k] W[k, j] for j0 <= j < j1, b < nb (small-batch path)."""
    if floating is float:
        fr_matvec_cols_acc_best_f(j0, j1, K, W, ldw, nb, d, y)
    else:
        fr_matvec_cols_acc_d(j0, j1, K, W, ldw, nb, d, y)


cdef inline int panel_width(floating dummy) noexcept nogil:
    """Columns per packed panel (NR): 32 floats or 16 doubles where the CPU has AVX-512 (the
    wide micro-kernel), else 16 floats or 8 doubles. Ask once per call and pass the answer
    to pack_panels and gemm_packed."""
    if floating is float:
        return fr_panel_width_f()
    else:
        return fr_panel_width_d()


cdef inline void pack_panels(int nr, int K, int N, int p0, int p1, const floating* W,
                             Py_ssize_t ldw, bint trans, floating* Bp) noexcept nogil:
    """Panels [p0, p1) of Bp <- B (K x N) in panels of nr = panel_width columns
    (zero-padded); B = W^T if trans else W."""
    if floating is float:
        fr_pack_panels_f(nr, K, N, p0, p1, W, ldw, trans, Bp)
    else:
        fr_pack_panels_d(nr, K, N, p0, p1, W, ldw, trans, Bp)


cdef inline void gemm_packed(int nr, int M, int N, int K, int p0, int p1, const floating* A,
                             Py_ssize_t lda, const floating* Bp, floating* C, Py_ssize_t ldc,
                             bint accumulate) noexcept nogil:
    """C[:, panels p0..p1) (+)= A (M x K) @ B, with B packed by pack_panels with the same nr."""
    if floating is float:
        fr_gemm_packed_f(nr, M, N, K, p0, p1, A, lda, Bp, C, ldc, accumulate)
    else:
        fr_gemm_packed_d(nr, M, N, K, p0, p1, A, lda, Bp, C, ldc, accumulate)
