# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""A GEMM for the dense layers (embedding projections, the output layer), and the column
sums of their bias gradients, run on fastrnn's OpenMP threads like the large GEMMs of the
recurrent layers (recurrent.project_inputs), so that a training step never wakes BLAS's own
thread pool."""
from cython cimport floating
from cython.parallel cimport parallel, threadid

import numpy as np

from ._blas cimport fr_own_gemm, fr_set_blas_gemm, gemm, gemm_bias
from ._checks cimport _blas_int
from ._openmp cimport fr_omp_team_size, fr_team_threads, join_fork_guard
from ._parts cimport (GEMM_COLUMN_SPLIT_ROWS, _element_threads, _gemm_parts, _share,
                     _split_at)
from ._reduce cimport add_column_sums

join_fork_guard()



def own_gemm_active():
    """Whether this module's large products run on csrc/gemm.h's AVX-512 GEMM (the CPU has
    AVX-512 and no test forced BLAS) rather than on BLAS."""
    return bool(fr_own_gemm())


def _force_blas_gemm(bint forced):
    """Private, for tests: this module's products on BLAS even where the CPU has AVX-512
    (see recurrent._force_blas_gemm)."""
    fr_set_blas_gemm(forced)


def parallel_gemm(bint trans_a, bint trans_b, const floating[:, ::1] a not None,
                  const floating[:, ::1] b not None, floating[:, ::1] c not None,
                  floating beta, int num_threads=1, const floating[::1] bias=None,
                  bint by_shape=True):
    """c (m, n) = op(a) @ op(b) + beta * c, or op(a) @ op(b) + bias with bias (n,) (a not
    transposed, beta 0), the rows of c split into max(2, num_threads) parts shared among the
    OpenMP threads, each running csrc/gemm.h's GEMM or BLAS on its parts (the caller keeps
    BLAS single-threaded). c with fewer than GEMM_COLUMN_SPLIT_ROWS rows (_parts.pxd) is split
    by its columns instead, as the input projection is; ``by_shape=False`` keeps the row
    split for any shape (the time loops' split of their batch, which
    benchmarks/blas_floor.py reproduces)."""
    cdef Py_ssize_t m = c.shape[0], n = c.shape[1], k = a.shape[0] if trans_a else a.shape[1]
    cdef Py_ssize_t lda = a.shape[1], ldb = b.shape[1], r0, r1, p
    cdef int tid, nth
    cdef int nt = fr_team_threads(num_threads)
    cdef Py_ssize_t parts = _gemm_parts(num_threads)
    cdef const floating* a_rows
    cdef const floating* b_cols
    if (a.shape[1] if trans_a else a.shape[0]) != m:
        raise ValueError(f"a has {a.shape[1] if trans_a else a.shape[0]} rows of op(a), "
                         f"c has {m}")
    if (b.shape[1] if trans_b else b.shape[0]) != k or (b.shape[0] if trans_b else b.shape[1]) != n:
        raise ValueError(f"op(b) must have shape ({k}, {n}), got "
                         f"({b.shape[1] if trans_b else b.shape[0]}, "
                         f"{b.shape[0] if trans_b else b.shape[1]})")
    for size, what in ((m, "the rows of c"), (n, "the columns of c"), (k, "the inner dimension"),
                       (lda, "the row length of a"), (ldb, "the row length of b")):
        _blas_int(size, what)
    cdef const floating* bias_ptr = NULL
    if bias is not None:
        if trans_a or beta != 0:
            raise ValueError("a bias goes with a not transposed and beta 0")
        if bias.shape[0] != n:
            raise ValueError(f"bias must have {n} entries (the columns of c), got {bias.shape[0]}")
        if n > 0:
            bias_ptr = &bias[0]
    if m == 0 or n == 0:
        return
    # A few rows split by rows had every part read all of op(b): the output layer's
    # dW = dlogits^T y (V x H) read all of y. By columns, 2 threads: the small model's
    # (86 x 256, k 512) 0.21 -> 0.17 ms, the char model's (65 x 256, k 2048) 0.74 -> 0.57 ms.
    cdef bint by_columns = by_shape and m < GEMM_COLUMN_SPLIT_ROWS
    with nogil, parallel(num_threads=nt):
        tid, nth = threadid(), fr_omp_team_size()
        for p in range(_share(parts, tid, nth), _share(parts, tid + 1, nth)):
            if by_columns:
                r0 = _split_at(n, p, parts)
                r1 = _split_at(n, p + 1, parts)
                if r1 > r0:
                    b_cols = &b[r0, 0] if trans_b else &b[0, r0]
                    if bias_ptr != NULL:
                        gemm_bias(trans_b, m, r1 - r0, k, &a[0, 0], lda, b_cols, ldb,
                                  bias_ptr + r0, &c[0, r0], n, False)
                    else:
                        gemm(trans_a, trans_b, m, r1 - r0, k, <floating>1, &a[0, 0], lda,
                             b_cols, ldb, beta, &c[0, r0], n)
                continue
            r0 = _split_at(m, p, parts)
            r1 = _split_at(m, p + 1, parts)
            if r1 > r0:
                # Rows r0..r1 of op(a): rows of a, or columns of a when it is transposed.
                a_rows = &a[0, r0] if trans_a else &a[r0, 0]
                if bias_ptr != NULL:
                    gemm_bias(trans_b, r1 - r0, n, k, a_rows, lda, &b[0, 0], ldb, bias_ptr,
                              &c[r0, 0], n, False)
                else:
                    gemm(trans_a, trans_b, r1 - r0, n, k, <floating>1, a_rows, lda, &b[0, 0],
                         ldb, beta, &c[r0, 0], n)


def add_column_sums_to(const floating[:, ::1] a not None, floating[::1] out not None,
                       int num_threads=1):
    """out (n,) += the sum of a's (m, n) rows, added row after row into out (as the recurrent
    layers sum their bias gradients), the columns split among the OpenMP threads. out must
    not share memory with a."""
    cdef Py_ssize_t m = a.shape[0], n = a.shape[1]
    cdef Py_ssize_t c0, c1
    cdef int tid, nth
    cdef int nt = _element_threads(m * n, num_threads)
    if out.shape[0] != n:
        raise ValueError(f"out must have {n} entries (the columns of a), got {out.shape[0]}")
    if np.may_share_memory(np.asarray(out), np.asarray(a)):
        raise ValueError("out must not share memory with a")
    if m == 0 or n == 0:
        return
    with nogil, parallel(num_threads=nt):
        tid, nth = threadid(), fr_omp_team_size()
        c0 = _split_at(n, tid, nth)
        c1 = _split_at(n, tid + 1, nth)
        if c1 > c0:
            add_column_sums(m, c0, c1, &a[0, 0], n, &out[0], NULL)
