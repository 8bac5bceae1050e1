"""pytest-benchmark suite: fastrnn against PyTorch, case by case.

    pytest bench --benchmark-group-by=group          # measure, fastrnn and torch side by side
    pytest bench --benchmark-disable                 # run every case once (CI smoke test)

Threads: FASTRNN_BENCH_THREADS (default 2) for fastrnn, its BLAS and torch alike.
"""
import os

import pytest

from fastrnn.benchmarks import thread_settings


def bench_threads():
    return int(os.environ.get("FASTRNN_BENCH_THREADS", "2"))


@pytest.fixture(scope="session", autouse=True)
def _bench_threads():
    with thread_settings(bench_threads()):
        yield


def run_benchmark(benchmark, fn, rounds=5):
    """Time fn with a warm-up call and ``rounds`` single calls (these calls take tens of
    ms to seconds, so calibration loops would only make the suite slow). With
    --benchmark-disable pytest-benchmark calls fn once."""
    if benchmark.disabled:
        return benchmark(fn)
    return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)
