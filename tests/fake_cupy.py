"""A NumPy stand-in for CuPy (tests only): runs the device code paths on machines without a GPU.

``install(monkeypatch)`` puts a module named "cupy" in ``sys.modules`` and makes
``fastrnn._gpu.require_gpu`` return it, so ``device="cuda"`` works everywhere:

* its arrays are :class:`DeviceArray`, a NumPy array whose type lives in module "cupy", so
  ``fastrnn._device.is_device_array`` / ``array_module_of`` treat them as CuPy arrays;
* like CuPy, it refuses what would fail on a real GPU: NumPy's non-ufunc functions called on
  device arrays (``np.vdot(d, d)``, ``np.zeros_like(d)``, ...: the code must use the array
  module) and arithmetic mixing device arrays with host arrays (``d * np.ones(3)``);
* ``cupy.asarray(host)`` copies to the "device", ``d.get()`` / ``cupy.asnumpy(d)`` copy back;
  host reads of device values are counted (``DeviceArray.syncs``);
* the engine's CUDA Ops are replaced by :class:`fastrnn._engine.reference.ReferenceOps` on
  this module: the same driver and step loop as on a GPU, with the gate math written in the
  array module instead of the CUDA kernels, run on the stand-in's arrays (so every array
  operation of the GPU path goes through the rules above).
"""
import sys
import types

import numpy as np

from fastrnn._engine.reference import ReferenceOps


class DeviceArray(np.ndarray):
    """A "CuPy" array: NumPy memory, CuPy's rules. ``DeviceArray.syncs`` counts the reads
    that would wait for the GPU (``get``, ``float``, ``int``, ``bool``, ``item``)."""

    syncs = 0

    def _sync(self):
        DeviceArray.syncs += 1
        return self.view(np.ndarray)

    def get(self):
        return np.array(self._sync(), copy=True)

    def __float__(self):
        return float(self._sync())

    def __int__(self):
        return int(self._sync())

    def __bool__(self):
        return bool(self._sync())

    def item(self, *args):
        return self._sync().item(*args)

    def __array_function__(self, func, types_, args, kwargs):
        raise TypeError(f"numpy.{func.__name__} called on a (stand-in) CuPy array: use the "
                        f"array module (cupy.{func.__name__})")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        out = kwargs.get("out", ())
        for a in inputs + tuple(out):
            if isinstance(a, np.ndarray) and not isinstance(a, DeviceArray) and a.ndim > 0:
                raise TypeError(f"{ufunc.__name__}: host (NumPy) array mixed with a device array")
        inputs = tuple(_host_view(a) for a in inputs)
        if out:
            kwargs["out"] = tuple(_host_view(a) for a in out)
        result = getattr(ufunc, method)(*inputs, **kwargs)
        return _wrap(result)


DeviceArray.__module__ = "cupy"   # what fastrnn._device.is_device_array looks at


def _host_view(a):
    return a.view(np.ndarray) if isinstance(a, DeviceArray) else a


def _unwrap(obj):
    if isinstance(obj, DeviceArray):
        return obj.view(np.ndarray)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unwrap(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _unwrap(v) for k, v in obj.items()}
    return obj


def _wrap(obj):
    if isinstance(obj, np.generic):   # CuPy returns 0-d device arrays, not host scalars
        obj = np.asarray(obj)
    if isinstance(obj, np.ndarray) and not isinstance(obj, DeviceArray):
        return obj.view(DeviceArray)
    if isinstance(obj, tuple):
        return tuple(_wrap(o) for o in obj)
    return obj


def _device_function(func):
    def call(*args, **kwargs):
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))
    call.__name__ = getattr(func, "__name__", "function")
    return call


class FakeCupy(types.ModuleType):
    ndarray = DeviceArray

    def __init__(self):
        super().__init__("cupy")
        self.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(
            getDeviceCount=lambda: 1, getDevice=lambda: 0))
        self.lib = types.SimpleNamespace(stride_tricks=types.SimpleNamespace(
            as_strided=_device_function(np.lib.stride_tricks.as_strided)))

    @staticmethod
    def asarray(a, dtype=None):
        if isinstance(a, DeviceArray):
            return a if dtype is None else a.astype(dtype, copy=False)
        return np.array(a, dtype=dtype, copy=True).view(DeviceArray)   # a host -> device copy

    @staticmethod
    def asnumpy(a):
        return a.get() if isinstance(a, DeviceArray) else np.asarray(a)

    @staticmethod
    def array(a, dtype=None, copy=True, order="K"):
        if isinstance(a, DeviceArray):
            return np.array(a.view(np.ndarray), dtype=dtype, copy=copy, order=order).view(DeviceArray)
        return np.array(a, dtype=dtype, copy=True, order=order).view(DeviceArray)

    def __getattr__(self, name):
        obj = getattr(np, name)
        if isinstance(obj, np.ufunc) or not callable(obj) or isinstance(obj, type):
            return obj   # ufuncs handle device arrays themselves (DeviceArray.__array_ufunc__)
        return _device_function(obj)


def install(monkeypatch):
    """Make ``device="cuda"`` use the stand-in for the rest of the test; returns the module."""
    from fastrnn import _engine, _gpu
    fake = FakeCupy()
    ops = ReferenceOps(fake)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(_gpu, "_import_cupy", lambda: fake)
    monkeypatch.setattr(_engine, "cuda_ops", lambda: ops)
    return fake
