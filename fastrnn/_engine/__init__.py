"""One recurrent engine for every device.

:mod:`.driver` holds everything that does not depend on the device: argument checks, the
workspace, state handling, buffer validation, the atomic consume of a workspace. It is
written against an *Ops* object that supplies the primitives for one device and its array
module ``ops.xp``:

* :class:`.cpu.CpuOps`: the Cython kernels of ``fastrnn._cpu`` (NumPy arrays);
* :class:`.cuda.CudaOps`: the CUDA step kernels of ``fastrnn/_gpu/kernels.cu`` and cuBLAS
  GEMMs through CuPy (CuPy arrays);
* :class:`.reference.ReferenceOps`: the same step loop with the gate math written in the
  array module (any of the two; the tests run it, and CudaOps reuses its GEMMs).

:func:`ops_for` picks the Ops for an array; importing this package never imports CuPy.
"""
from .._device import is_device_array
from .driver import RecurrentWorkspace, backward, check_layer_args, forward, new_weight_grads

__all__ = ["RecurrentWorkspace", "backward", "check_layer_args", "cpu_ops", "cuda_ops",
           "forward", "new_weight_grads", "ops_for"]

_CPU_OPS = None


def cpu_ops():
    """The Ops of the compiled CPU kernels (one shared instance)."""
    global _CPU_OPS
    if _CPU_OPS is None:
        from .cpu import CpuOps
        _CPU_OPS = CpuOps()
    return _CPU_OPS


def cuda_ops():
    """The Ops of the CUDA kernels; GPUUnavailableError (a RuntimeError) without CuPy or a
    device."""
    from .cuda import get_cuda_ops
    return get_cuda_ops()


def ops_for(a):
    """The Ops for the device ``a`` lives on: CUDA for a CuPy array, else the CPU's."""
    return cuda_ops() if is_device_array(a) else cpu_ops()
