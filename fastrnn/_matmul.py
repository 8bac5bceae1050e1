"""Dense products for the layers, on fastrnn's own threads.

Why not ``a @ b``: NumPy hands it to BLAS's thread pool, whose workers keep spinning for a
while after each call. In a training step the recurrent kernels run right after the dense
layers on fastrnn's OpenMP threads, and the spinning BLAS workers steal their cores (measured:
a character-model step took 230 ms with NumPy's threaded products, 105 ms with none). So the
dense products, like the recurrent ones, run with BLAS on one thread and the rows split
among fastrnn's threads. CuPy arrays and other layouts go to ``@``.
"""
import numpy as np

from . import threads
from ._validation import FLOAT_DTYPES, check_no_shared_memory, has_internal_overlap
from ._cpu import dense as _dense


def matmul(a, b, trans_a=False, trans_b=False, out=None, beta=0.0, bias=None):
    """``op(a) @ op(b) + beta * out`` (2-D); op transposes when asked. Returns ``out``.

    op(a) (m, k), op(b) (k, n); ``out`` (m, n), when given, must have a's dtype and share no
    memory with a or b. NumPy arrays of float32/float64 run on fastrnn's threads; ``out``
    then takes that path when it is a writeable C-contiguous ndarray, else the generic one.
    ``bias`` (n,), a's dtype, is added to every row (a not transposed, no ``out``): on the
    compiled path in the same pass that writes the product.
    """
    if bias is not None and (trans_a or out is not None):
        raise ValueError("matmul: bias goes with trans_a=False and no out")
    m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
    k_b, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if k_b != k:
        raise ValueError(f"matmul: op(a) is ({m}, {k}) but op(b) is ({k_b}, {n})")
    # Exact type: array subclasses (and device arrays) take the generic path.
    numpy_ab = type(a) is np.ndarray and type(b) is np.ndarray
    if out is not None:
        if out.shape != (m, n):
            raise ValueError(f"out must have shape ({m}, {n}), got {out.shape}")
        if out.dtype != a.dtype:
            raise TypeError(f"out must have dtype {a.dtype}, got {out.dtype}")
        if numpy_ab and type(out) is np.ndarray:   # device arrays: their own rules
            if has_internal_overlap(out):
                raise ValueError(f"out must not have elements that share memory, got strides "
                                 f"{out.strides}")
            check_no_shared_memory({"out": out}, {"a": a, "b": b})
    compiled = (numpy_ab and a.dtype == b.dtype and a.dtype in FLOAT_DTYPES
                and (out is None or (type(out) is np.ndarray and out.flags.c_contiguous
                                     and out.flags.writeable))
                and (bias is None or (type(bias) is np.ndarray and bias.dtype == a.dtype
                                      and bias.shape == (n,))))
    if not compiled:
        product = (a.T if trans_a else a) @ (b.T if trans_b else b)
        if bias is not None:
            product += bias
        if out is None:
            return product
        if beta == 0.0:
            out[...] = product
        else:
            out *= beta
            out += product
        return out
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    if not b.flags.c_contiguous:
        b = np.ascontiguousarray(b)
    if bias is not None and not bias.flags.c_contiguous:
        bias = np.ascontiguousarray(bias)
    if out is None:
        out, beta = np.empty((m, n), a.dtype), 0.0
    with threads.blas_single_threaded():
        _dense.parallel_gemm(trans_a, trans_b, a, b, out, beta, threads.get_num_threads(), bias)
    return out


def add_column_sums(a, out):
    """``out += a.sum(axis=0)`` for a (m, n), out (n,) (a bias gradient): NumPy float32/float64
    arrays of one dtype, a C-contiguous and out a writeable contiguous array, on fastrnn's
    threads (a's rows added into out in order); anything else through its own module. The
    word model's (700, 10000) output gradient: 1.7 ms through NumPy's one thread."""
    if (type(a) is np.ndarray and type(out) is np.ndarray and a.dtype == out.dtype
            and a.dtype in (np.float32, np.float64) and a.flags.c_contiguous
            and out.flags.c_contiguous and out.flags.writeable and a.ndim == 2):
        _dense.add_column_sums_to(a, out, threads.get_num_threads())
    else:
        out += a.sum(axis=0)
    return out
