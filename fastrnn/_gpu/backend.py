"""The CUDA kernels of kernels.cu, compiled with CuPy's RawModule once per device.

The engine that runs them is :mod:`fastrnn._engine` (:class:`~fastrnn._engine.cuda.CudaOps`),
the same driver as on the CPU; :func:`fastrnn.functional.recurrent_forward` dispatches CuPy
arrays to it. :func:`recurrent_forward`/:func:`recurrent_backward` here are that engine,
forced onto the GPU (NumPy inputs are copied over). Importing this module does not import
CuPy.
"""
from pathlib import Path

import numpy as np

from ..cells import CELLS
from .._engine.cuda import cuda_graphs_enabled, set_cuda_graphs  # noqa: F401 (re-exported)

KERNEL_SOURCE = Path(__file__).with_name("kernels.cu")
NVRTC_OPTIONS = ()
_KERNEL_NAMES = ("fr_forward_step", "fr_backward_step")
_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def kernel_name(which, dtype, kind):
    """The C++ name of one template instance, e.g. ``fr_forward_step<float, 3>``."""
    return f"{which}<{_CTYPES[np.dtype(dtype)]}, {int(kind)}>"


def all_kernel_names():
    """Every instance: each kernel, dtype and cell of the table (fastrnn/cells.py)."""
    return [kernel_name(w, dt, spec.kind) for w in _KERNEL_NAMES for dt in _CTYPES
            for spec in CELLS.values()]


_MODULES = {}


def _module(cp):
    dev = cp.cuda.runtime.getDevice()
    mod = _MODULES.get(dev)
    if mod is None:
        mod = cp.RawModule(code=KERNEL_SOURCE.read_text(), options=NVRTC_OPTIONS,
                           name_expressions=all_kernel_names())
        _MODULES[dev] = mod
    return mod


def get_function(cp, which, dtype, kind):
    """The compiled kernel ``which`` ("fr_forward_step"/"fr_backward_step") for one dtype and
    cell kind, on the current device."""
    return _module(cp).get_function(kernel_name(which, dtype, kind))


def recurrent_forward(cell, x, w_ih, w_hh, b_ih=None, b_hh=None, state=None, lengths=None,
                      reverse=False, out=None):
    """:func:`fastrnn.functional.recurrent_forward` on the GPU (GPUUnavailableError without
    CuPy or a device). Returns ``(y, state_T, workspace)``."""
    from .. import _engine
    return _engine.forward(_engine.cuda_ops(), cell, x, w_ih, w_hh, b_ih, b_hh, state,
                           lengths, reverse, out)


def recurrent_backward(ws, dy=None, dstate=None, grads=None, dx_out=None, state0_grad=True,
                       input_grad=True):
    """:func:`fastrnn.functional.recurrent_backward` (the workspace knows its device)."""
    from .. import _engine
    return _engine.backward(ws, dy, dstate, grads, dx_out, state0_grad, input_grad)
