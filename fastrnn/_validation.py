"""Argument checking shared by every layer and kernel entry point.

Errors name the argument and what was expected, so a user never has to read a traceback
into compiled code to find out what was wrong.
"""
import numpy as np

from ._cpu import arrays as _arrays
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
    if type(x) is np.ndarray:   # the usual case (a few dozen calls a training step)
        xp, arr = np, x
    else:
        xp = array_module_of(x)
        arr = xp.asarray(x)
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D{_shape_hint(shape)}, got shape {arr.shape}")
    if shape is not None:
        if len(shape) != arr.ndim:
            raise ValueError(f"{name} must have shape {_fmt_shape(shape)}, got {arr.shape}")
        for want, got in zip(shape, arr.shape):
            if want is not None and want != got:
                raise ValueError(f"{name} must have shape {_fmt_shape(shape)}, got {arr.shape}")
    if dtype is not None and arr.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got {arr.dtype}")
    if contiguous:
        if arr.ndim == 0 or not arr.flags.c_contiguous:   # (0-d: made 1-d, as NumPy does)
            arr = xp.ascontiguousarray(arr)
        if xp is np and not arr.flags.aligned:   # e.g. a field of a packed structured array
            arr = arr.copy()
    return arr


def check_output_buffer(out, name, shape, dtype, contiguous=True, xp=np):
    """Validate a caller-supplied array that a kernel will write into; return it unchanged.

    It must be a plain ``xp.ndarray`` (``xp``: numpy, or cupy for a GPU kernel; subclasses
    such as masked arrays carry meaning the kernels would ignore) of exactly ``shape`` and
    ``dtype``, writeable, C-contiguous when ``contiguous``, and no two of its elements may
    share memory (then no value could be written exactly). Wrong type or dtype: TypeError;
    anything else: ValueError.
    """
    if type(out) is not xp.ndarray:
        raise TypeError(f"{name} must be a {xp.__name__}.ndarray, got {type(out).__module__}."
                        f"{type(out).__qualname__}")
    shape = tuple(shape)
    if out.shape != shape:
        raise ValueError(f"{name} must have shape {_fmt_shape(shape)}, got {out.shape}")
    if out.dtype != np.dtype(dtype):
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got {out.dtype}")
    if not getattr(out.flags, "writeable", True):   # CuPy arrays are always writeable
        raise ValueError(f"{name} must be writeable (it receives the result), got a read-only array")
    if contiguous and not out.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous, got strides {out.strides}")
    if has_internal_overlap(out):
        raise ValueError(f"{name} must not have elements that share memory, got shape "
                         f"{out.shape} with strides {out.strides}")
    return out


def has_internal_overlap(a):
    """True when two elements of the array ``a`` (numpy or cupy: only its shape and strides
    are read) share a byte of memory."""
    if a.size <= 1 or a.flags.c_contiguous or a.flags.f_contiguous:
        return False   # (the usual case: in C or Fortran order every element has its bytes)
    # Cheap sufficient test: each axis (by increasing stride) steps past everything the
    # smaller axes span. Holds for every C/F-ordered view, slice and transpose.
    extent = a.itemsize
    for stride, n in sorted((abs(s), n) for s, n in zip(a.strides, a.shape) if n > 1):
        if stride < extent:
            break
        extent += stride * (n - 1)
    else:
        return False
    # Unusual layout (interleaved or really overlapping): compare every element's offset.
    offsets = np.zeros((), np.int64)
    for s, n in zip(a.strides, a.shape):
        offsets = np.add.outer(offsets, np.arange(n, dtype=np.int64) * s)
    offsets = np.sort(offsets.ravel())
    return bool(np.any(np.diff(offsets) < a.itemsize))


def check_no_shared_memory(outputs, inputs):
    """Raise ValueError if an output array shares memory with another output or an input.

    ``outputs`` and ``inputs`` map argument names to arrays (numpy or cupy; ``None`` entries
    are skipped): a kernel reading an array while writing an aliased one gives wrong numbers.
    """
    named = [(k, v) for k, v in outputs.items() if v is not None]
    n_outputs = len(named)
    named += [(k, v) for k, v in inputs.items() if v is not None]
    # NumPy arrays: only the pairs whose byte ranges meet can share memory, found in one
    # compiled call; other arrays (CuPy, subclasses): every pair.
    pairs = _arrays.meeting_pairs([v for _, v in named], n_outputs)
    if pairs is None:
        pairs = ((i, j) for i in range(n_outputs) for j in range(i + 1, len(named)))
    for i, j in pairs:
        if _shares_memory(named[i][1], named[j][1]):
            raise ValueError(f"{named[i][0]} must not share memory with {named[j][0]}")


def _shares_memory(a, b):
    """Whether ``a`` and ``b`` share memory: exact where affordable, True when undecided
    (refuse rather than risk it). Arrays of different array modules never do."""
    if type(a) is np.ndarray and type(b) is np.ndarray:   # the common case, asked ~50 times
        xp = np                                           # a training step
    else:
        xp = array_module_of(a)
        if array_module_of(b) is not xp:
            return False
    if not xp.may_share_memory(a, b):
        return False   # address ranges apart (cheap bounds check)
    if xp is not np:
        return bool(xp.shares_memory(a, b))   # CuPy's exact test (on the device)
    try:
        return bool(np.shares_memory(a, b, max_work=100_000))
    except np.exceptions.TooHardError:
        return True


def check_int(value, name, minimum):
    """Return ``value`` as an int if it is an integer (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_nonnegative_ints(values, name):
    """Validate a 1-D host array of non-negative integers (ids or lengths); return it as int64."""
    arr = check_array(values, name, ndim=1)
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.min() < 0:
        raise ValueError(f"{name} must hold non-negative integers, got {arr.min()}")
    return arr.astype(np.int64, copy=False)


def check_token_ids(ids, name, vocab_size):
    """Validate an integer array of token ids in ``[0, vocab_size)``; return it as int64
    (a CuPy array stays a CuPy array)."""
    xp = array_module_of(ids)
    arr = xp.asarray(ids)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer token ids, got dtype {arr.dtype}")
    if arr.size:
        # One compiled pass for a contiguous int64/int32 NumPy array, else two reductions.
        low_high = _arrays.int_range(arr)
        low, high = (arr.min(), arr.max()) if low_high is None else low_high
        if low < 0 or high >= vocab_size:
            raise ValueError(f"{name} must hold token ids in [0, {vocab_size}), got values in "
                             f"[{low}, {high}]")
    return xp.ascontiguousarray(arr, dtype=np.int64)


def _fmt_shape(shape):
    return "(" + ", ".join("?" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _shape_hint(shape):
    return "" if shape is None else f" {_fmt_shape(shape)}"
