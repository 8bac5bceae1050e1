"""Thread settings: OpenMP threads for the kernels, and keeping BLAS out of their way.

The kernels split every GEMM across their own OpenMP threads and call BLAS single-threaded
on each share, so BLAS is limited to one thread while any kernel runs (one cached threadpoolctl
controller): two thread pools would oversubscribe the cores, and idle BLAS workers spin.
set_num_threads therefore sets every thread fastrnn uses.

BLAS's thread count is process-global, so the limit is reference counted: the first Python
thread to enter :func:`blas_single_threaded` saves BLAS's thread counts and sets 1, the last one
to leave restores them, and a nested entry in a thread that already holds the limit only bumps
a thread-local counter (no lock, no call into BLAS). Outer loops (a training step, a whole
generation) hold the limit once so that the kernel calls inside them pay almost nothing.
"""
import os
import sys
import threading

from ._cpu import openmp as _openmp
from ._version import __version__

_num_threads = None
_controller = None


def get_num_threads():
    """Threads the kernels use: set_num_threads's value, else OpenMP's default
    (which honours OMP_NUM_THREADS), else 1 in a build without OpenMP."""
    if _num_threads is not None:
        return _num_threads
    return max(1, _openmp.omp_max_threads())


def set_num_threads(n):
    """Use ``n`` threads in the kernels (``None`` restores the default)."""
    global _num_threads
    if n is not None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive int or None, got {n!r}")
        if not _openmp.openmp_enabled():
            n = 1
    _num_threads = n


def _threadpool_controller():
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController
        _controller = ThreadpoolController()
    return _controller


_blas_controllers = None


def _blas_libraries():
    """threadpoolctl's controllers of the BLAS libraries (of the cached controller)."""
    global _blas_controllers
    if _blas_controllers is None:
        _blas_controllers = _threadpool_controller().select(user_api="blas").lib_controllers
    return _blas_controllers


def _limit_blas():
    """Set every BLAS library to one thread; returns what restores them, ``[(library's
    controller, its thread count before), ...]``. (threadpoolctl's ``limit`` does the same
    and records every library's info first: an enter and exit took 17 µs, here about 8.)"""
    saved = [(lib, lib.num_threads) for lib in _blas_libraries()]
    for lib, _ in saved:
        _set_blas_threads(lib, 1)
    return saved


def _restore_blas(saved):
    for lib, num_threads in saved:
        _set_blas_threads(lib, num_threads)


def _set_blas_threads(lib, num_threads):
    # threadpoolctl (3.8 here) lets only one Python thread, the first to set it and while it
    # lives, change a pthreads OpenBLAS: from any other thread set_num_threads does nothing.
    # The limit here is shared by all threads under its own lock (_BlasLimit), so whichever
    # thread enters first or leaves last must be able to set it: call the library itself.
    getattr(lib, "_real_set_num_threads", lib.set_num_threads)(num_threads)


class _BlasLimit:
    """Reference-counted "BLAS on one thread" (see the module docstring).

    ``_depth`` counts the nesting in each Python thread; ``_holders`` counts the threads inside
    at least one block, under ``_lock``; ``_saved`` holds the thread counts to restore
    (_limit_blas), set while ``_holders > 0``.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._local = threading.local()
        self._holders = 0
        self._saved = None

    def __enter__(self):
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            with self._lock:
                if self._saved is None:
                    self._saved = _limit_blas()
                self._holders += 1
        self._local.depth = depth + 1
        return self

    def __exit__(self, *exc):
        depth = self._local.depth - 1
        self._local.depth = depth
        if depth == 0:
            with self._lock:
                self._holders -= 1
                if self._holders == 0:
                    saved, self._saved = self._saved, None
                    _restore_blas(saved)
        return False

    def _after_fork_in_child(self):
        # Only the forking thread lives on in the child: the other holders will never leave.
        # BLAS stays limited (the saved counts are kept) until this process's next outermost
        # block ends, which restores them.
        self._lock = threading.Lock()
        self._holders = 1 if getattr(self._local, "depth", 0) > 0 else 0


class _NoLimit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_blas_limit = _BlasLimit()
_no_limit = _NoLimit()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_blas_limit._after_fork_in_child)


def blas_single_threaded(active=True):
    """Context manager: BLAS on one thread inside the block when ``active``.

    Re-entrant and safe to use from several Python threads at once: the first entry in the
    process sets the limit, the last exit restores BLAS's original thread counts (also when
    the block raises). Nested entries cost a thread-local increment, so callers that run many
    kernels (a training step, generation) should hold it around the whole loop.
    """
    return _blas_limit if active else _no_limit


def show_config(file=None):
    """Print the build and run-time settings in use: OpenMP, thread counts, BLAS libraries."""
    import numpy
    import scipy
    out = file or sys.stdout
    print(f"fastrnn {__version__}", file=out)
    print(f"  python  {sys.version.split()[0]}, numpy {numpy.__version__}, scipy {scipy.__version__}",
          file=out)
    print(f"  OpenMP  {'enabled' if _openmp.openmp_enabled() else 'disabled (serial build)'}",
          file=out)
    print(f"  threads {get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')},"
          f" cpus {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()})",
          file=out)
    for lib in _threadpool_controller().info():
        if lib.get("user_api") == "blas":
            print(f"  BLAS    {lib.get('internal_api')} {lib.get('version')} "
                  f"({lib.get('num_threads')} threads, {lib.get('architecture', '?')}) "
                  f"{lib.get('filepath')}", file=out)
    from ._cpu import dense   # loaded by fastrnn anyway (dense layers)
    own_gemm = dense.own_gemm_active()
    gemm = ("large products on fastrnn's AVX-512 kernel (csrc/gemm.h), small ones on BLAS"
            if own_gemm else "BLAS for every product (the AVX-512 kernel is not in use)")
    print(f"  GEMM    {gemm}", file=out)
    if os.environ.get("OPENBLAS_CORETYPE"):   # overrides OpenBLAS's own choice of kernels
        unused = "; fastrnn's large products do not use OpenBLAS" if own_gemm else ""
        print(f"  OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']} (OpenBLAS uses that "
              f"core's kernels, whatever this CPU has{unused})", file=out)
