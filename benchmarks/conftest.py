"""pytest-benchmark suite: fastrnn against PyTorch, case by case.

    pytest benchmarks --benchmark-group-by=group     # measure, fastrnn and torch side by side
    pytest benchmarks --benchmark-disable            # run every case once (CI smoke test)

Threads: FASTRNN_BENCH_THREADS (default 2) for fastrnn, its BLAS and torch alike.

This directory has no __init__.py on purpose: pytest then puts benchmarks/ (not the checkout)
on sys.path, so ``import fastrnn`` finds the same fastrnn as ``pytest tests`` does (the
installed one, or the in-place build) and never a checkout's unbuilt source tree.
"""
import os

import pytest

from fastrnn_bench import thread_settings


def bench_threads():
    return int(os.environ.get("FASTRNN_BENCH_THREADS", "2"))


@pytest.fixture(scope="session", autouse=True)
def threads():
    """The thread count of the whole session (set for fastrnn, BLAS and torch)."""
    count = bench_threads()
    with thread_settings(count):
        yield count


def _run_benchmark(benchmark, fn, rounds=5):
    """Time fn with a warm-up call and ``rounds`` single calls (these calls take tens of
    ms to seconds, so calibration loops would only make the suite slow). With
    --benchmark-disable pytest-benchmark calls fn once."""
    if benchmark.disabled:
        return benchmark(fn)
    return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)


@pytest.fixture
def run_benchmark():
    return _run_benchmark
