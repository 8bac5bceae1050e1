"""Optional CuPy GPU backend (``pip install 'fastrnn[gpu]'``).

Importing this package does not import CuPy; :func:`require_gpu` does, on first use.
The CUDA kernels are kernels.cu, compiled by :mod:`fastrnn._gpu.backend`; the engine that
runs them is :mod:`fastrnn._engine` (the same driver as on the CPU), reached through
:mod:`fastrnn.functional` with CuPy arrays.
"""

CUPY_MISSING = "CuPy is not installed: pip install 'fastrnn[gpu]'"
NO_DEVICE = "no CUDA device found"


class GPUUnavailableError(RuntimeError):
    """"cuda" was asked for, but CuPy or a CUDA device is missing (the message says which).
    A RuntimeError, so existing ``except RuntimeError`` code keeps working; the CLI reports
    exactly this error as a one-line user error."""


def _import_cupy():
    import cupy
    return cupy


def require_gpu():
    """Return the cupy module, or raise :class:`GPUUnavailableError` (a RuntimeError) saying
    what is missing: CuPy itself, or a CUDA device."""
    try:
        cupy = _import_cupy()
    except ImportError as exc:
        raise GPUUnavailableError(CUPY_MISSING) from exc
    except Exception as exc:   # a broken install (e.g. missing CUDA libraries)
        raise GPUUnavailableError(f"CuPy failed to import ({type(exc).__name__}: {exc}); "
                           f"check the install: pip install 'fastrnn[gpu]'") from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:   # no driver, or the driver finds no device
        raise GPUUnavailableError(f"{NO_DEVICE} ({type(exc).__name__}: {exc})") from exc
    if count < 1:
        raise GPUUnavailableError(NO_DEVICE)
    return cupy


def gpu_available():
    """True if CuPy imports and a CUDA device is present. Never raises."""
    try:
        require_gpu()
        return True
    except Exception:
        return False
