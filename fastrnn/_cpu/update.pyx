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
from cython cimport floating
from cython.parallel cimport prange
from libc.string cimport memset

from ._openmp cimport join_fork_guard
from ._parts cimport _element_threads, _share

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
