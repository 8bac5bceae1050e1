"""CUDA Ops: the fused step kernels of ``fastrnn/_gpu/kernels.cu`` and cuBLAS GEMMs (CuPy).

The step loop, the input projection and the weight-gradient GEMMs are those of
:class:`~fastrnn._engine.reference.StepOps`; this class only launches the two step kernels
(one launch per step, all batch rows at once).

Optionally (``set_cuda_graphs(True)`` or FASTRNN_CUDA_GRAPHS=1) the per-step launches of a
sequence are captured in a CUDA graph and replayed when the same buffers come back (CuPy's
memory pool usually hands a training loop the same addresses each iteration). The first
sighting of a buffer set always runs the plain path; capture happens on the second, and
replay from then on. Any problem while capturing switches graphs off for the process.

Importing this module does not import CuPy; :func:`get_cuda_ops` does.
"""
import collections
import os
import warnings

import numpy as np

from .reference import StepOps

BLOCK = 256


class CudaOps(StepOps):
    """Launches the fused step kernels of kernels.cu (one launch per step)."""

    name = "cuda"

    def __init__(self, cp):
        super().__init__(cp)
        self._functions = {}

    def _function(self, which, dtype, kind):
        from .._gpu import backend as kernels
        key = (self.xp.cuda.runtime.getDevice(), which, np.dtype(dtype).char, kind)
        fn = self._functions.get(key)
        if fn is None:
            fn = kernels.get_function(self.xp, which, dtype, kind)
            self._functions[key] = fn
        return fn

    def run_loop(self, key, arrays, loop):
        kind, dtype = key[1], key[2]
        for which in ("fr_forward_step", "fr_backward_step"):   # no module loads while capturing
            self._function(which, dtype, kind)
        key = key + (self.xp.cuda.runtime.getDevice(),) + tuple(
            None if a is None else a.data.ptr for a in arrays)
        _GRAPHS.run(self.xp, key, loop)

    @staticmethod
    def _grid(B, H):
        return ((B * H + BLOCK - 1) // BLOCK,), (BLOCK,)

    def forward_step(self, kind, s, reverse, lengths, gates, gh, b_hh, h, c, hn, chist, y_rows):
        B, H = h.shape
        grid, block = self._grid(B, H)
        ldy = y_rows.strides[0] // y_rows.itemsize
        self._function("fr_forward_step", h.dtype, kind)(grid, block, (
            np.int32(s), np.int32(B), np.int32(H), np.int32(bool(reverse)), lengths, gates, gh,
            b_hh, h, h if c is None else c, gates if hn is None else hn,
            gates if chist is None else chist, y_rows, np.int64(ldy)))

    def backward_step(self, kind, s, reverse, lengths, gates, hn, chist, h0, c0, y_rows,
                      dy_rows, dh, dh_rec, dc, dgh):
        B, H = dh.shape
        grid, block = self._grid(B, H)
        ldy = y_rows.strides[0] // y_rows.itemsize
        lddy = 0 if dy_rows is None else dy_rows.strides[0] // dy_rows.itemsize
        self._function("fr_backward_step", dh.dtype, kind)(grid, block, (
            np.int32(s), np.int32(B), np.int32(H), np.int32(bool(reverse)), lengths, gates,
            gates if hn is None else hn, gates if chist is None else chist, h0,
            h0 if c0 is None else c0, y_rows, np.int64(ldy),
            y_rows if dy_rows is None else dy_rows, np.int64(lddy),
            np.int32(dy_rows is not None), dh, dh_rec, dh if dc is None else dc, dgh))


_OPS = None


def get_cuda_ops():
    """The process's CudaOps; GPUUnavailableError (a RuntimeError) without CuPy or a device."""
    global _OPS
    from .._gpu import require_gpu
    cp = require_gpu()
    if _OPS is None or _OPS.xp is not cp:
        _OPS = CudaOps(cp)
    return _OPS


# ---------------------------------------------------------------------------------------------
# Optional CUDA graphs for the per-step loops
# ---------------------------------------------------------------------------------------------

class _Graphs:
    def __init__(self):
        self.enabled = os.environ.get("FASTRNN_CUDA_GRAPHS") == "1"
        self.max_graphs = 16
        self.graphs = collections.OrderedDict()
        self.seen = collections.OrderedDict()
        self.streams = {}

    def clear(self):
        self.graphs.clear()
        self.seen.clear()

    def disable(self, why):
        if self.enabled:
            warnings.warn(f"fastrnn: CUDA graphs switched off ({why}); using plain launches",
                          RuntimeWarning, stacklevel=4)
        self.enabled = False
        self.clear()

    def run(self, cp, key, loop):
        """Run ``loop()`` (the launches of one sequence): plainly, or from a cached graph."""
        if not self.enabled or not hasattr(cp.cuda.Stream, "begin_capture"):
            loop()
            return
        graph = self.graphs.get(key)
        if graph is not None:
            self.graphs.move_to_end(key)
            graph.launch(stream=cp.cuda.get_current_stream())
            return
        loop()
        if key not in self.seen:      # capture only buffer sets that come back
            self.seen[key] = True
            while len(self.seen) > 4 * self.max_graphs:
                self.seen.popitem(last=False)
            return
        graph = self._capture(cp, loop)
        if graph is not None:
            self.graphs[key] = graph
            while len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last=False)

    def _capture(self, cp, loop):
        dev = cp.cuda.runtime.getDevice()
        stream = self.streams.get(dev)
        if stream is None:
            stream = self.streams[dev] = cp.cuda.Stream(non_blocking=True)
        allocations = []
        previous = cp.cuda.get_allocator()

        def guard(size):   # a buffer allocated while capturing would not outlive the capture
            allocations.append(size)
            return previous(size)

        graph = None
        cp.cuda.set_allocator(guard)
        try:
            with stream:
                stream.begin_capture()
                try:
                    loop()
                finally:
                    graph = stream.end_capture()
        except Exception as exc:   # capture not supported for something in the loop
            self.disable(f"capture failed: {type(exc).__name__}: {exc}")
            return None
        finally:
            cp.cuda.set_allocator(previous)
        if allocations:
            self.disable(f"{len(allocations)} allocation(s) during capture")
            return None
        return graph


_GRAPHS = _Graphs()


def set_cuda_graphs(enabled):
    """Turn CUDA-graph capture of the per-step loops on or off (off by default)."""
    _GRAPHS.enabled = bool(enabled)
    _GRAPHS.clear()


def cuda_graphs_enabled():
    return _GRAPHS.enabled
