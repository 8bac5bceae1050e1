"""CPU Ops: the compiled kernels of ``fastrnn/_cpu/recurrent.pyx`` on NumPy arrays.

Each primitive is one call into Cython (GIL released, OpenMP inside); every GEMM is split
over fastrnn's own threads with BLAS on one thread (see :mod:`fastrnn.threads`).
"""
import numpy as np

from .. import threads
from .._cpu import recurrent as _kernels
from .._cpu import update as _update
from .buffers import BufferCache

# The kernels' internal buffers (saved activations, scratch), kept between calls: see
# buffers.py. One cache for the process, shared by all threads.
_BUFFERS = BufferCache()


class CpuOps:
    name = "cpu"
    xp = np

    @staticmethod
    def compute():
        return threads.blas_single_threaded()

    @staticmethod
    def empty(shape, dtype):
        """An internal buffer (see buffers.py): possibly one released by an earlier call."""
        return _BUFFERS.empty(shape, dtype)

    @staticmethod
    def release(arrays):
        """Hand the internal buffers in the list ``arrays`` back for reuse (the list holds
        the caller's last references)."""
        _BUFFERS.release(arrays)

    @staticmethod
    def project_inputs(x, w_ih, b_ih, gates):
        _kernels.project_inputs(x, w_ih, b_ih, gates, threads.get_num_threads())

    @staticmethod
    def forward_loop(kind, reverse, T, B, w_hh, b_hh, h, c, lengths, gates, hn, chist, y,
                     table_rows=None):
        table_gates, table_index = _pair(table_rows)
        _kernels.forward_loop(kind, reverse, T, B, w_hh, b_hh, h, c, lengths, gates, hn, chist,
                              y, threads.get_num_threads(), table_gates, table_index)

    @staticmethod
    def backward_loop(kind, reverse, T, B, w_hh, h0, c0, lengths, gates, hn, chist, y, dy,
                      dh, dc, dgh_first, table_grads=None, initial_dh=True):
        per_row, index = _pair(table_grads)
        _kernels.backward_loop(kind, reverse, T, B, w_hh, h0, c0, lengths, gates, hn, chist, y,
                               dy, dh, dc, dgh_first, threads.get_num_threads(), per_row, index,
                               initial_dh)

    @staticmethod
    def first_step_grads(T, B, reverse, lengths, gates):
        """The (B, G*H) buffer for dGh at each sequence's first step: without lengths, gates'
        own rows of that step (the backward loop leaves them there), else a new one."""
        if lengths is None:
            first = (T - 1) * B if reverse else 0
            return gates[first:first + B]
        return _BUFFERS.empty((B, gates.shape[1]), gates.dtype)

    @staticmethod
    def weight_grads(kind, reverse, T, B, x, w_ih, h0, y, gates, hn, dgh_first, grads, dx):
        """x None: no input side (w_ih and dx None; dW_ih not touched, db_ih still summed)."""
        kernel = _typed(_kernels.weight_grads, gates)
        kernel(kind, reverse, T, B, x, w_ih, h0, y, gates, hn, dgh_first,
               None if x is None else grads["weight_ih"], grads["weight_hh"],
               grads.get("bias_ih"), grads.get("bias_hh"), dx, threads.get_num_threads())

    # Batches of at least this many sequences with lengths run packed (driver.py).
    packed_min_batch = _kernels.PACKED_MIN_BATCH

    @staticmethod
    def forward_loop_packed(kind, T, B, lengths, packing, w_hh, b_hh, h, c, gates, hn, chist,
                            y, table_rows=None):
        table_gates, table_index = _pair(table_rows)
        _kernels.forward_loop_packed(kind, T, B, lengths, packing.counts, packing.src, w_hh,
                                     b_hh, h, c, gates, hn, chist, y,
                                     threads.get_num_threads(), table_gates, table_index)

    @staticmethod
    def backward_loop_packed(kind, T, B, packing, w_hh, h0, c0, gates, hn, chist, y, dy, dh, dc,
                             table_grads=None, initial_dh=True):
        per_row, index = _pair(table_grads)
        _kernels.backward_loop_packed(kind, T, B, packing.counts, packing.src, w_hh, h0, c0,
                                      gates, hn, chist, y, dy, dh, dc, threads.get_num_threads(),
                                      per_row, index, initial_dh)

    @staticmethod
    def weight_grads_packed(kind, x, w_ih, h_prev, gates, hn, grads, dx):
        """x None: no input side, as weight_grads."""
        kernel = _typed(_kernels.weight_grads_packed, gates)
        kernel(kind, x, w_ih, h_prev, gates, hn, None if x is None else grads["weight_ih"],
               grads["weight_hh"], grads.get("bias_ih"), grads.get("bias_hh"), dx,
               threads.get_num_threads())

    @staticmethod
    def gather_rows(src, index, out):
        """out[r] = src[index[r]] (packed rows from time space), on fastrnn's threads."""
        _kernels.gather_rows(src, index, out, threads.get_num_threads())

    @staticmethod
    def scatter_add_rows(dst, index, rows):
        """dst[index[r]] += rows[r], r in order (a repeated index sums its rows in that
        order), on fastrnn's threads."""
        _kernels.scatter_add_rows(dst, index, rows, threads.get_num_threads())

    def __repr__(self):
        return "CpuOps()"


def _pair(table_and_index):
    """The loops' optional (table, index) argument as the kernels take it: two arrays, or
    None twice."""
    return (None, None) if table_and_index is None else table_and_index


def _typed(kernel, like):
    """The version of a fused-type (float32 / float64) kernel for ``like``'s dtype: chosen
    from the arguments, Cython would take float32's whenever the first array is None."""
    return kernel["double" if like.dtype == np.float64 else "float"]


def zero_arrays(arrays):
    """``a[...] = 0`` for each array of the iterable ``arrays`` (gradients, between steps).
    C-contiguous float32/float64 NumPy arrays are zeroed on fastrnn's threads, each taking
    the share of the elements it updated in the last optimizer step: all in one pass
    (update.zero_arrays) where it takes them all, else one by one (update.zero_fill);
    anything else (CuPy arrays, views with gaps) through its own module."""
    arrays = list(arrays)
    if _update.zero_arrays(arrays, threads.get_num_threads()):
        return
    for a in arrays:
        if (type(a) is np.ndarray and a.flags.c_contiguous and a.flags.writeable
                and a.dtype in (np.float32, np.float64)):
            _update.zero_fill(a.reshape(-1), threads.get_num_threads())
        else:
            a[...] = 0
