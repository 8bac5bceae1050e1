"""The benchmarks live in the checkout's benchmarks/, not in the installed package, and
`fastrnn bench` finds them there (issue 10). No timing assertions."""
import contextlib
import importlib.util
import sys
import types
from pathlib import Path

import pytest

import fastrnn
import fake_cupy
from fastrnn.lm.cli import load_benchmarks, main
from helpers import cli_error_line, run_python

REPO = Path(__file__).resolve().parents[1]
benchmarks = load_benchmarks(REPO)


def test_the_package_holds_no_benchmark_code():
    assert importlib.util.find_spec("fastrnn.benchmarks") is None
    assert importlib.util.find_spec("fastrnn._gpu.bench") is None
    package = Path(fastrnn.__file__).resolve().parent
    assert [p.name for p in package.rglob("*.py") if "bench" in p.name] == []
    assert Path(benchmarks.__file__).resolve().parent == REPO / "benchmarks"


# ---- how `fastrnn bench` finds the harness -------------------------------------------------

@pytest.fixture
def received(monkeypatch):
    """Record the options `fastrnn bench` hands to the harness instead of running it."""
    calls = []
    monkeypatch.setattr(benchmarks, "main", lambda argv: calls.append(argv) or 0)
    return calls


def test_bench_finds_the_checkout_from_a_subdirectory(monkeypatch, received):
    monkeypatch.chdir(REPO / "tests")
    assert main(["bench", "--quick", "--cases", "lm"]) == 0
    assert received == [["--quick", "--cases", "lm"]]


@pytest.mark.parametrize("form", ["--from DIR", "--from=DIR", "--from DIR/benchmarks"])
def test_bench_from_names_the_checkout(monkeypatch, tmp_path, received, form):
    monkeypatch.chdir(tmp_path)
    option = form.replace("DIR", str(REPO)).split(" ")
    assert main(["bench", "--quick", *option, "--threads", "1"]) == 0
    assert received == [["--quick", "--threads", "1"]]


def test_bench_outside_a_checkout_is_one_line_and_exit_2(monkeypatch, tmp_path, capsys, received):
    monkeypatch.chdir(tmp_path)
    line = cli_error_line(capsys, ["bench", "--quick"])
    assert "source checkout" in line and "--from DIR" in line and str(tmp_path) in line
    line = cli_error_line(capsys, ["bench", "--from", str(tmp_path)])
    assert line.startswith(f"fastrnn: error: --from {tmp_path}: expected a fastrnn source checkout")
    assert "expected one argument" in cli_error_line(capsys, ["bench", "--from"])
    assert received == []


def test_bench_help_outside_a_checkout_explains(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: fastrnn bench [--from DIR]") and "source checkout" in out


def test_bench_in_a_fresh_process(tmp_path):
    """The real import path: only benchmarks/ goes on sys.path, the harness's help runs."""
    result = run_python(["-m", "fastrnn", "bench"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    result = run_python(["-m", "fastrnn", "bench", "--from", str(REPO), "--help"], cwd=tmp_path,
                        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--cases" in result.stdout and "gpu-graphs" in result.stdout


# ---- the GPU cases run on the one timer and table (NumPy stand-in for CuPy) ------------------

@pytest.fixture
def gpu_bench(monkeypatch):
    fake = fake_cupy.install(monkeypatch)
    # What the GPU cases use beyond the stand-in: a stream to wait for and the device's name.
    monkeypatch.setattr(fake.cuda, "get_current_stream",
                        lambda: types.SimpleNamespace(synchronize=lambda: None), raising=False)
    monkeypatch.setattr(fake.cuda.runtime, "getDeviceProperties",
                        lambda device: {"name": b"Stand-in GPU"}, raising=False)
    import fastrnn_bench_gpu
    monkeypatch.setattr(fastrnn_bench_gpu, "GEMM_N", 64)
    monkeypatch.setattr(benchmarks, "thread_settings", _no_thread_settings)
    return fastrnn_bench_gpu


def test_gpu_cases_use_the_shared_timer_rows_and_table(gpu_bench):
    cases = gpu_bench.gpu_cases([("lstm", 2, 3, 4, 5), ("gru", 2, 3, 4, 5)])
    assert [c.name for c in cases] == ["gpu-lstm-forward+backward-B2T3I4H5",
                                       "gpu-gru-forward+backward-B2T3I4H5"]
    assert all(c.device == "cuda" and c.warmup == gpu_bench.WARMUP for c in cases)
    assert cases[0].flops == benchmarks.kernel_flops("lstm", "forward+backward", 2, 3, 4, 5)
    cpu_case = benchmarks.kernel_cases(cells=["gru"], sizes=[(2, 3, 4, 5)], modes=["forward"])
    rows = benchmarks.run_kernel_benchmarks(cases + cpu_case, threads=1, quick=True)
    gpu_rows, cpu_row = rows[:2], rows[2]
    for row in gpu_rows:
        assert row["device"] == "cuda" and row["fastrnn_s"] > 0
        assert row["gemm_label"] == "cupy sgemm 64^3 on Stand-in GPU"
        assert row["fastrnn_peak_bytes"] is None and row["torch_peak_bytes"] is None
        if not benchmarks.torch_available():
            assert row["torch_note"] == benchmarks.TORCH_MISSING
        elif row["torch_s"] is None:
            assert row["torch_note"] == gpu_bench.TORCH_NO_CUDA
    cpu_labels = (benchmarks.CPU_GEMM_LABEL, benchmarks.OWN_GEMM_LABEL)
    assert cpu_row["device"] == "cpu" and cpu_row["gemm_label"] in cpu_labels
    table = benchmarks.format_table(rows)
    assert "gpu-lstm-forward+backward-B2T3I4H5" in table
    assert "large-GEMM rate (cupy sgemm 64^3 on Stand-in GPU)" in table
    assert f"large-GEMM rate ({cpu_row['gemm_label']})" in table


def test_gpu_graph_cases_are_named_apart(gpu_bench):
    (case,) = gpu_bench.gpu_cases([("gru", 2, 3, 4, 5)], cuda_graphs=True)
    assert case.name.endswith("-graphs") and case.params["cuda_graphs"] is True
    assert set(benchmarks.CASE_SETS) == {"kernels", "lm", "torch", "jax", "varlen", "gpu",
                                       "gpu-graphs"}


def test_gpu_cases_without_cupy_are_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "cupy", None)   # "import cupy" fails
    assert benchmarks.main(["--cases", "gpu", "--quick"]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        "fastrnn bench: error: --cases gpu: CuPy is not installed: pip install 'fastrnn[gpu]'"]
    assert captured.out == ""


@contextlib.contextmanager
def _no_thread_settings(threads):
    yield
