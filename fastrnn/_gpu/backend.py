"""CuPy backend: :func:`recurrent_forward` / :func:`recurrent_backward` on the GPU.

Same signatures and semantics as :mod:`fastrnn.functional` (lengths, reverse direction,
initial and final state gradients), on CuPy arrays::

    y, state, ws = recurrent_forward("lstm", x, w_ih, w_hh, b_ih, b_hh, state=(h0, c0))
    dx, dstate0, grads = recurrent_backward(ws, dy, dstate=(dh_T, dc_T))

Work per layer and direction:
    forward   gates = x W_ih^T + b_ih                          one cuBLAS GEMM, all steps
              per step: gh = h W_hh^T (cuBLAS), fused gate kernel -> h, c, y, activations
    backward  per step: fused gate kernel -> dGh; dh_rec = dGh W_hh (cuBLAS)
              dW_ih, dW_hh, db, dx                            GEMMs over all steps

The control flow is written against an array module ``xp`` and a kernel object ``ops`` so
that it runs unchanged with NumPy and NumPy reference kernels (tests/gpu_reference_ops.py),
which is how it is checked against the CPU engine on machines without a GPU.

Optionally (``set_cuda_graphs(True)`` or FASTRNN_CUDA_GRAPHS=1) the per-step launches of a
sequence are captured in a CUDA graph and replayed when the same buffers come back (CuPy's
memory pool usually hands a training loop the same addresses each iteration). The first
sighting of a buffer set always runs the plain path; capture happens on the second, and
replay from then on. Any problem while capturing switches graphs off for the process.
"""
import collections
import os
import warnings
from pathlib import Path

import numpy as np

from .. import functional as _F
from .._device import is_device_array
from .._validation import check_array
from . import require_gpu

KERNEL_SOURCE = Path(__file__).with_name("kernels.cu")
NVRTC_OPTIONS = ()
BLOCK = 256
_KERNEL_NAMES = ("fr_forward_step", "fr_backward_step")
_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def kernel_name(which, dtype, kind):
    """The C++ name of one template instance, e.g. ``fr_forward_step<float, 3>``."""
    return f"{which}<{_CTYPES[np.dtype(dtype)]}, {int(kind)}>"


def all_kernel_names():
    return [kernel_name(w, dt, k) for w in _KERNEL_NAMES for dt in _CTYPES for k in range(4)]


# ---------------------------------------------------------------------------------------------
# Kernels (compiled once per device at first use)
# ---------------------------------------------------------------------------------------------

_MODULES = {}


def _module(cp):
    dev = cp.cuda.runtime.getDevice()
    mod = _MODULES.get(dev)
    if mod is None:
        mod = cp.RawModule(code=KERNEL_SOURCE.read_text(), options=NVRTC_OPTIONS,
                           name_expressions=all_kernel_names())
        _MODULES[dev] = mod
    return mod


class CudaOps:
    """Launches the fused step kernels of kernels.cu (one launch per step)."""

    def __init__(self, cp):
        self.cp = cp
        self._functions = {}

    def _function(self, which, dtype, kind):
        key = (self.cp.cuda.runtime.getDevice(), which, np.dtype(dtype).char, kind)
        fn = self._functions.get(key)
        if fn is None:
            fn = _module(self.cp).get_function(kernel_name(which, dtype, kind))
            self._functions[key] = fn
        return fn

    def prepare(self, kind, dtype):
        """Load both kernels before a CUDA-graph capture (no module loads while capturing)."""
        for which in _KERNEL_NAMES:
            self._function(which, dtype, kind)

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


def _ptr(a):
    return None if a is None else a.data.ptr


# ---------------------------------------------------------------------------------------------
# Array-module generic implementation
# ---------------------------------------------------------------------------------------------

class GpuRecurrentWorkspace:
    """Opaque record of one GPU forward pass, consumed by :func:`recurrent_backward`."""

    __slots__ = ("cell", "reverse", "T", "B", "steps", "x", "w_ih", "w_hh", "has_bias", "h0",
                 "c0", "lengths", "gates", "hn", "chist", "y", "consumed")

    def __repr__(self):
        return (f"GpuRecurrentWorkspace(cell={self.cell.name!r}, T={self.T}, B={self.B}, "
                f"reverse={self.reverse}, consumed={self.consumed})")


def _rows(xp, a, name):
    """(T, B, F) -> (T*B, F) view; rows may be strided, the last axis must be contiguous."""
    T, B, Fdim = a.shape
    rows = a.reshape(T * B, Fdim)   # a view when the (T, B) axes merge, else a copy
    if rows.strides[1] != a.itemsize or _data_ptr(rows) != _data_ptr(a) or \
            (isinstance(a, np.ndarray) and not np.shares_memory(rows, a)):
        raise ValueError(f"{name} must be a (T, B, F) array whose (T, B) axes can be merged "
                         f"without a copy and whose last axis is contiguous")
    return rows


def _data_ptr(a):
    return a.ctypes.data if isinstance(a, np.ndarray) else a.data.ptr


def _host_lengths(lengths, T, B):
    if lengths is not None and is_device_array(lengths):
        lengths = lengths.get()
    return _F._check_lengths(lengths, T, B)


def forward_impl(xp, ops, cell, x, w_ih, w_hh, b_ih=None, b_hh=None, state=None,
                 lengths=None, reverse=False, out=None):
    spec, x, w_ih, w_hh, b_ih, b_hh, has_bias = _F.check_layer_args(xp, cell, x, w_ih, w_hh,
                                                                     b_ih, b_hh)
    dtype = x.dtype
    T, B, I = x.shape
    GH, H = w_hh.shape
    h0, c0 = _F._split_state(spec, state, "state")
    h = _F._state_array(h0, "state h", B, H, dtype, xp)
    c = _F._state_array(c0, "state c", B, H, dtype, xp) if spec.has_cell_state else None
    lens = _host_lengths(lengths, T, B)
    steps = T if lens is None else int(lens.max())
    if out is None:
        out = xp.empty((T, B, H), dtype=dtype)
    elif out.shape != (T, B, H) or out.dtype != dtype or type(out) is not type(x):
        raise ValueError(f"out must be a ({T}, {B}, {H}) {dtype} array on x's device, got "
                         f"{out.shape} {out.dtype}")

    ws = GpuRecurrentWorkspace()
    ws.cell, ws.reverse, ws.T, ws.B, ws.steps = spec, bool(reverse), T, B, steps
    ws.has_bias, ws.consumed = has_bias, False
    ws.x, ws.w_ih, ws.w_hh = x.reshape(T * B, I), w_ih, w_hh
    ws.lengths = xp.asarray(np.full(B, T, np.int64) if lens is None else lens)
    ws.h0 = h.copy()
    ws.c0 = c.copy() if c is not None else None
    ws.gates = xp.empty((T * B, GH), dtype=dtype)
    ws.hn = xp.empty((T * B, H), dtype=dtype) if spec.name == "gru" else None
    ws.chist = xp.empty((T * B, H), dtype=dtype) if spec.has_cell_state else None
    ws.y = _rows(xp, out, "out")

    xp.matmul(ws.x, w_ih.T, out=ws.gates)          # input projection, all steps at once
    ws.gates += b_ih
    gh = xp.empty((B, GH), dtype=dtype)
    if steps < T:   # times no sequence reaches: zero output
        ws.y[steps * B:] = 0

    def loop():
        for s in range(steps):
            xp.matmul(h, w_hh.T, out=gh)
            ops.forward_step(spec.kind, s, ws.reverse, ws.lengths, ws.gates, gh, b_hh, h, c,
                             ws.hn, ws.chist, ws.y)

    if xp is np:
        loop()
    else:
        ops.prepare(spec.kind, dtype)
        key = ("fwd", xp.cuda.runtime.getDevice(), spec.kind, dtype.char, ws.reverse, T, B, H,
               steps, ws.y.strides[0]) + tuple(_ptr(a) for a in (
                   ws.lengths, ws.gates, gh, b_hh, w_hh, h, c, ws.hn, ws.chist, ws.y))
        _GRAPHS.run(xp, key, loop)
    return out, ((h, c) if spec.has_cell_state else h), ws


def backward_impl(xp, ops, ws, dy=None, dstate=None, grads=None, dx_out=None):
    if not isinstance(ws, GpuRecurrentWorkspace):
        raise TypeError(f"ws must be the workspace returned by the GPU recurrent_forward, got "
                        f"{type(ws).__name__}")
    if ws.consumed:
        raise ValueError("ws was already consumed by an earlier backward; run forward again")
    spec, T, B, steps = ws.cell, ws.T, ws.B, ws.steps
    dtype = ws.gates.dtype
    GH, H = ws.w_hh.shape
    I = ws.x.shape[1]
    dy_rows = None
    if dy is not None:
        dy = check_array(xp.asarray(dy), "dy", ndim=3, shape=(T, B, H), dtype=dtype,
                         contiguous=False)
        try:
            dy_rows = _rows(xp, dy, "dy")
        except ValueError:
            dy_rows = _rows(xp, xp.ascontiguousarray(dy), "dy")
    dh0, dc0 = _F._split_state(spec, dstate, "dstate")
    dh = _F._state_array(dh0, "dstate h", B, H, dtype, xp)
    dc = _F._state_array(dc0, "dstate c", B, H, dtype, xp) if spec.has_cell_state else None

    if grads is None:
        grads = _F.new_weight_grads(ws, xp)
    if dx_out is None:
        dx_out = xp.zeros((T, B, I), dtype=dtype)
    elif dx_out.shape != (T, B, I) or dx_out.dtype != dtype or not dx_out.flags.c_contiguous \
            or type(dx_out) is not type(ws.x):
        raise ValueError(f"dx_out must be a C-contiguous ({T}, {B}, {I}) {dtype} array on the "
                         f"forward's device")

    ws.consumed = True
    g, hn, w_hh = ws.gates, ws.hn, ws.w_hh
    dgh = xp.empty((B, GH), dtype)
    dh_rec = xp.zeros((B, H), dtype)
    if steps < T:   # times no sequence reaches take part in the GEMMs below as zero rows
        g[steps * B:] = 0
        if hn is not None:
            hn[steps * B:] = 0

    def loop():
        for s in range(steps - 1, -1, -1):
            ops.backward_step(spec.kind, s, ws.reverse, ws.lengths, g, hn, ws.chist, ws.h0,
                              ws.c0, ws.y, dy_rows, dh, dh_rec, dc, dgh)
            xp.matmul(dgh, w_hh, out=dh_rec)

    if xp is np:
        loop()
    else:
        ops.prepare(spec.kind, dtype)
        key = ("bwd", xp.cuda.runtime.getDevice(), spec.kind, dtype.char, ws.reverse, T, B, H,
               steps, ws.y.strides[0], None if dy_rows is None else dy_rows.strides[0]) + \
            tuple(_ptr(a) for a in (ws.lengths, g, hn, ws.chist, ws.h0, ws.c0, ws.y, dy_rows,
                                    dh, dh_rec, dc, dgh, w_hh))
        _GRAPHS.run(xp, key, loop)
    dh += dh_rec   # the W_hh path out of each sequence's first step

    # Weight and input gradients: GEMMs over all steps (see recurrent.pyx weight_grads).
    x_cols = 2 * H if spec.name == "gru" else GH
    dw_ih, dw_hh = grads["weight_ih"], grads["weight_hh"]
    if T > 1:
        if ws.reverse:   # row t pairs with y[t+1] (zero past the end, h0 handled below)
            dw_hh += g[:(T - 1) * B].T @ ws.y[B:]
        else:            # row t pairs with y[t-1]
            dw_hh += g[B:].T @ ws.y[:(T - 1) * B]
    dw_hh += dgh.T @ ws.h0
    dw_ih[:x_cols] += g[:, :x_cols].T @ ws.x
    if hn is not None:
        dw_ih[2 * H:] += hn.T @ ws.x
    if grads.get("bias_hh") is not None:
        grads["bias_hh"] += g.sum(axis=0)
    if grads.get("bias_ih") is not None:
        db_ih = grads["bias_ih"]
        db_ih[:x_cols] += g[:, :x_cols].sum(axis=0)
        if hn is not None:
            db_ih[2 * H:] += hn.sum(axis=0)
    dx_rows = dx_out.reshape(T * B, I)
    dx_rows += g[:, :x_cols] @ ws.w_ih[:x_cols]
    if hn is not None:
        dx_rows += hn @ ws.w_ih[2 * H:]
    ws.gates = ws.hn = ws.chist = None
    return dx_out, ((dh, dc) if spec.has_cell_state else dh), grads


# ---------------------------------------------------------------------------------------------
# Public entry points (CuPy)
# ---------------------------------------------------------------------------------------------

_OPS = None


def _cuda():
    global _OPS
    cp = require_gpu()
    if _OPS is None:
        _OPS = CudaOps(cp)
    return cp, _OPS


def recurrent_forward(cell, x, w_ih, w_hh, b_ih=None, b_hh=None, state=None, lengths=None,
                      reverse=False, out=None):
    """GPU :func:`fastrnn.functional.recurrent_forward` (CuPy arrays in and out; lengths may
    be a list, NumPy or CuPy array). Returns ``(y, state_T, workspace)``."""
    cp, ops = _cuda()
    return forward_impl(cp, ops, cell, x, w_ih, w_hh, b_ih, b_hh, state, lengths, reverse, out)


def recurrent_backward(ws, dy=None, dstate=None, grads=None, dx_out=None):
    """GPU :func:`fastrnn.functional.recurrent_backward`. Returns ``(dx, dstate0, grads)``."""
    cp, ops = _cuda()
    return backward_impl(cp, ops, ws, dy, dstate, grads, dx_out)
