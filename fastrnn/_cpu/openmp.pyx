# cython: language_level=3
"""What the compiled kernels know about OpenMP: whether they were built with it, its default
thread count, and whether this process is a fork in which they run on one thread.

A module of its own because these describe the build and the process, not any one kernel
(fastrnn.threads asks them), and because it is the first kernel module fastrnn imports: the
kernel modules ask it whether they were first imported in a forked child (_openmp.pxd).
"""
from ._openmp cimport fr_forked_child, fr_install_fork_guard, fr_omp_max_threads, fr_openmp_enabled

fr_install_fork_guard()


def openmp_enabled():
    """True when the extension was compiled with OpenMP."""
    return bool(fr_openmp_enabled())


def omp_max_threads():
    """OpenMP's default thread count (honours OMP_NUM_THREADS); 1 without OpenMP."""
    return fr_omp_max_threads()


def in_forked_child():
    """True in a process made by fork() after fastrnn was imported: there the kernels run on
    one thread (libgomp cannot start a team after fork; see _openmp.pxd), with the work split
    as for the requested thread count, so results do not change."""
    return bool(fr_forked_child())
