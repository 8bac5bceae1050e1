"""Thread settings: OpenMP threads for the kernels, and keeping BLAS out of their way.

The kernels split every GEMM across their own OpenMP threads and call BLAS single-threaded
on each share, so BLAS is limited to one thread for the duration of each forward and
backward call (one cached threadpoolctl controller): two thread pools would oversubscribe
the cores, and idle BLAS workers spin. set_num_threads therefore sets every thread fastrnn
uses.
"""
import contextlib
import os
import sys

from ._cpu import recurrent as _kernels

_num_threads = None
_controller = None


def get_num_threads():
    """Threads the kernels use: set_num_threads's value, else OpenMP's default
    (which honours OMP_NUM_THREADS), else 1 in a build without OpenMP."""
    if _num_threads is not None:
        return _num_threads
    return max(1, _kernels.omp_max_threads())


def set_num_threads(n):
    """Use ``n`` threads in the kernels (``None`` restores the default)."""
    global _num_threads
    if n is not None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive int or None, got {n!r}")
        if not _kernels.openmp_enabled():
            n = 1
    _num_threads = n


def _threadpool_controller():
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController
        _controller = ThreadpoolController()
    return _controller


@contextlib.contextmanager
def blas_single_threaded(active=True):
    """Limit BLAS to one thread inside the block when ``active``."""
    if not active:
        yield
        return
    with _threadpool_controller().limit(limits=1, user_api="blas"):
        yield


def show_config(file=None):
    """Print the build and run-time settings in use: OpenMP, thread counts, BLAS libraries."""
    import numpy
    import scipy
    from . import __version__
    out = file or sys.stdout
    print(f"fastrnn {__version__}", file=out)
    print(f"  python  {sys.version.split()[0]}, numpy {numpy.__version__}, scipy {scipy.__version__}",
          file=out)
    print(f"  OpenMP  {'enabled' if _kernels.openmp_enabled() else 'disabled (serial build)'}",
          file=out)
    print(f"  threads {get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')},"
          f" cpus {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()})",
          file=out)
    for lib in _threadpool_controller().info():
        if lib.get("user_api") == "blas":
            print(f"  BLAS    {lib.get('internal_api')} {lib.get('version')} "
                  f"({lib.get('num_threads')} threads, {lib.get('architecture', '?')}) "
                  f"{lib.get('filepath')}", file=out)
