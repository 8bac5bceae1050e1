"""Devices and array modules: numpy for "cpu", CuPy for "cuda".

Nothing here imports CuPy unless a "cuda" device is asked for, so ``import fastrnn`` never
does. Arrays are recognised as CuPy arrays by their type's module, without importing CuPy.
"""
import numpy as np

DEVICES = ("cpu", "cuda")


def normalize_device(device):
    """Return "cpu" or "cuda" for ``device`` (a string; "cuda:0" is not supported: CuPy's
    current device is used), raising ValueError otherwise."""
    if type(device) is str and device in DEVICES:   # the usual case, asked many times a step
        return device
    name = str(device).lower() if isinstance(device, str) else None
    if name not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    return name


def is_device_array(a):
    """True if ``a`` is a CuPy array (checked without importing CuPy)."""
    # NumPy arrays first: a training step asks this about a hundred times.
    return type(a) is not np.ndarray and type(a).__module__.split(".", 1)[0] == "cupy"


def array_module_of(a):
    """numpy, or the cupy module when ``a`` is a CuPy array."""
    if type(a) is np.ndarray:
        return np
    if is_device_array(a):
        import cupy
        return cupy
    return np


def get_array_module(device):
    """numpy for "cpu"; cupy for "cuda" (RuntimeError naming what is missing otherwise)."""
    if normalize_device(device) == "cpu":
        return np
    from ._gpu import require_gpu
    return require_gpu()


def device_of(a):
    """"cuda" for a CuPy array, "cpu" for anything else."""
    return "cuda" if is_device_array(a) else "cpu"


def to_device(a, device):
    """``a`` as an array on ``device``: no copy when it is already there (numpy inputs go
    through ``np.asarray``, exactly as the CPU code always did)."""
    if type(a) is np.ndarray and device == "cpu":   # the usual case
        return a
    device = normalize_device(device)
    if device == "cpu":
        return a.get() if is_device_array(a) else np.asarray(a)
    xp = get_array_module(device)
    return xp.asarray(a)
