"""Kernel cases: one recurrent layer, forward and forward+backward, fastrnn vs torch.

Cases come from fastrnn.benchmarks.kernel_cases (the same list `fastrnn bench` runs): every
cell x (B, T, I, H) x mode, same weights, dtype and thread count for both libraries. The two
benchmarks of a case share a group, so --benchmark-group-by=group shows them side by side.
"""
import pytest

from conftest import bench_threads, run_benchmark
from fastrnn.benchmarks import kernel_cases, torch_available

CASES = kernel_cases()


def _extra_info(benchmark, case, library):
    benchmark.group = case.group
    benchmark.extra_info.update(case.params, library=library, flops=case.flops,
                                threads=bench_threads())


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fastrnn(benchmark, case):
    _extra_info(benchmark, case, "fastrnn")
    run_benchmark(benchmark, case.make_fastrnn())


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_torch(benchmark, case):
    if not torch_available():
        pytest.skip("torch is not installed")
    _extra_info(benchmark, case, "torch")
    run_benchmark(benchmark, case.make_torch())
