"""Host buffers the CPU kernels use internally, kept between calls for reuse.

A training step asks for the same large internal buffers on every step: the saved gate
activations of each layer (T*B rows of G*H values, 8 MiB per layer for the character model
of ``fastrnn bench``), the LSTM cell states, the recurrent scratch. Allocated fresh, each
page of them is faulted in by the operating system on its first write, inside the kernel
that writes it: measured on the character model (2 threads), the input projections that
first write the gate buffers took 1.9 + 4.6 ms of a 35 ms step, and 1.1 + 2.7 ms writing
into buffers already touched. :class:`BufferCache` hands such buffers back to the next call
of the same shape.

Only buffers the engine made itself and nobody else references are kept: a caller that
still holds an array (a workspace attribute it read, a view) keeps it to itself, and the
cache holds at most ``max_bytes`` (LRU), so the memory it keeps between steps is bounded.
"""
import sys
import threading

import numpy as np

# What the CPU engine keeps at most between calls: the buffers of a few steps of the models
# of "Results" (the character model needs 21 MiB), not of arbitrarily large ones.
DEFAULT_MAX_BYTES = 128 * 2**20


class BufferCache:
    """Released NumPy buffers, reused by shape and dtype (thread-safe)."""

    def __init__(self, max_bytes=DEFAULT_MAX_BYTES):
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._free = []      # oldest first
        self._bytes = 0

    def empty(self, shape, dtype):
        """An uninitialised C-contiguous array of ``shape`` and ``dtype``: a released one of
        the same shape and dtype when there is one, else a new one."""
        shape, dtype = tuple(shape), np.dtype(dtype)
        with self._lock:
            for i in range(len(self._free) - 1, -1, -1):
                a = self._free[i]
                if a.shape == shape and a.dtype == dtype:
                    del self._free[i]
                    self._bytes -= a.nbytes
                    return a
        return np.empty(shape, dtype)

    def release(self, arrays):
        """Keep the arrays of the list ``arrays`` for reuse, emptying the list; each is kept
        only if it owns its memory and the list held the last reference to it (the caller
        drops its own first), so that no one can see it reused."""
        while arrays:
            a = arrays.pop()
            if (type(a) is np.ndarray and a.flags.owndata and a.flags.c_contiguous
                    and a.flags.writeable and a.nbytes <= self.max_bytes
                    and sys.getrefcount(a) == 2):   # `a` and getrefcount's argument
                with self._lock:
                    self._free.append(a)
                    self._bytes += a.nbytes
                    while self._bytes > self.max_bytes:
                        self._bytes -= self._free.pop(0).nbytes
            del a

    def clear(self):
        """Drop every kept buffer."""
        with self._lock:
            self._free.clear()
            self._bytes = 0

    @property
    def nbytes(self):
        """Bytes currently kept."""
        return self._bytes
