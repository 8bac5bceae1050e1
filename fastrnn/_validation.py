"""Argument checking shared by every layer and kernel entry point.

Errors name the argument and what was expected, so a user never has to read a traceback
into compiled code to find out what was wrong.
"""
import numpy as np

from ._device import array_module_of

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def as_float_dtype(dtype, name="dtype"):
    """Return ``np.dtype(dtype)`` if it is float32 or float64, else raise TypeError."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"{name} must be float32 or float64, got {dtype!r}") from exc
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {dt}")
    return dt


def check_array(x, name, ndim=None, dtype=None, shape=None, contiguous=True):
    """Validate ``x`` and return it as a numpy array (a CuPy array stays a CuPy array).

    ``shape`` may hold ``None`` for any size. With ``dtype`` given, the array must already have
    that dtype (we never cast silently: a float64 batch into a float32 model is a user error).
    ``contiguous=True`` returns a C-contiguous array (copying a strided view if needed).
    """
    if x is None:
        raise ValueError(f"{name} is required, got None")
    xp = array_module_of(x)
    arr = xp.asarray(x)
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D{_shape_hint(shape)}, got shape {arr.shape}")
    if shape is not None:
        if len(shape) != arr.ndim or any(s is not None and s != a for s, a in zip(shape, arr.shape)):
            raise ValueError(f"{name} must have shape {_fmt_shape(shape)}, got {arr.shape}")
    if dtype is not None and arr.dtype != np.dtype(dtype):
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got {arr.dtype}")
    if contiguous:
        arr = xp.ascontiguousarray(arr)
    return arr


def check_int(value, name, minimum):
    """Return ``value`` as an int if it is an integer (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)



def check_token_ids(ids, name, vocab_size):
    """Validate an integer array of token ids in ``[0, vocab_size)``; return it as int64
    (a CuPy array stays a CuPy array)."""
    xp = array_module_of(ids)
    arr = xp.asarray(ids)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer token ids, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
        raise ValueError(
            f"{name} must hold token ids in [0, {vocab_size}), got values in "
            f"[{arr.min()}, {arr.max()}]")
    return xp.ascontiguousarray(arr, dtype=np.int64)


def _fmt_shape(shape):
    return "(" + ", ".join("?" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _shape_hint(shape):
    return "" if shape is None else f" {_fmt_shape(shape)}"
