"""Data-parallel training over MPI (fastrnn.lm.distributed): ``mpiexec -n 2`` on this machine
gives the parameters of one process (float64, within 1e-10) in stream and sentence mode, after
a resume, and from the command line; one rank's failure ends the job; without mpi4py the
command line says what to install. The MPI runs skip where mpi4py or mpiexec is absent
(``pip install "fastrnn[mpi]"`` brings both)."""
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastrnn
from fastrnn import LanguageModel
from fastrnn.lm.train import Trainer

from helpers import cli_error_line, run_python

WORKER = Path(__file__).resolve().parent / "mpi_worker.py"
TIMEOUT = 120   # seconds: a hang fails the test instead of the suite


def _mpiexec():
    """The mpiexec beside this Python (a venv's mpich wheel), else the one on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.is_file() else shutil.which("mpiexec")


needs_mpi = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or _mpiexec() is None,
    reason='needs mpi4py and mpiexec: pip install "fastrnn[mpi]"')


def _env():
    """The environment of a child that imports this process's fastrnn, one thread per rank."""
    return dict(os.environ, PYTHONPATH=str(Path(fastrnn.__file__).resolve().parents[1]),
                OMP_NUM_THREADS="1")


def _run(args, cwd, ranks=None):
    command = [sys.executable, *args]
    if ranks is not None:
        command = [_mpiexec(), "-n", str(ranks), *command]
    return subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=TIMEOUT)


def _worker(tmp_path, mode, ranks=None):
    out = tmp_path / f"{mode}.npz"
    result = _run([str(WORKER), mode, str(out)], tmp_path, ranks)
    assert result.returncode == 0, result.stderr
    with np.load(out) as f:
        return dict(f)


@needs_mpi
def test_two_ranks_give_one_process_parameters(tmp_path):
    distributed = _worker(tmp_path, "mpi", ranks=2)
    single = _worker(tmp_path, "single")
    assert float(distributed.pop("spread")) == 0.0   # the ranks hold identical parameters
    single.pop("spread")
    assert distributed.keys() == single.keys()
    for case in ("stream", "sentences", "truncated", "resumed"):
        keys = [k for k in single if k.startswith(case + "/")]
        assert len(keys) > 5, keys
        for key in keys:
            np.testing.assert_allclose(distributed[key], single[key], rtol=0, atol=1e-10,
                                       err_msg=key)
    # The resumed run is the uninterrupted one.
    for key in (k for k in single if k.startswith("stream/")):
        np.testing.assert_allclose(distributed["resumed/" + key[7:]], single[key], rtol=0,
                                   atol=1e-10, err_msg=key)


CORPUS = "".join(f"line {i} of a small corpus, with words {i * 7 % 13} and more.\n"
                 for i in range(150))
TRAIN_ARGS = ["--batch", "5", "--seq-len", "12", "--hidden", "9", "--embed", "4",
              "--layers", "2", "--eval-every", "2", "--dtype", "float64", "--no-progress",
              "--clip", "0.1", "--threads", "1"]


@needs_mpi
def test_command_line_two_ranks_and_resume(tmp_path):
    (tmp_path / "corpus.txt").write_text(CORPUS)
    train = ["-m", "fastrnn", "train", "corpus.txt", *TRAIN_ARGS]
    first = _run([*train, "--distributed", "--max-steps", "3", "--out", "d.npz"], tmp_path, 2)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("saved d.npz") == 1   # rank 0 alone prints
    resumed = _run(["-m", "fastrnn", "train", "corpus.txt", "--resume", "d.npz", "--distributed",
                    "--max-steps", "6", "--no-progress"], tmp_path, 2)
    assert resumed.returncode == 0, resumed.stderr
    single = _run([*train, "--max-steps", "6", "--out", "s.npz"], tmp_path)
    assert single.returncode == 0, single.stderr
    d, s = LanguageModel.load(tmp_path / "d.npz"), LanguageModel.load(tmp_path / "s.npz")
    for name, value in s.params.items():
        np.testing.assert_allclose(d.params[name], value, rtol=0, atol=1e-10, err_msg=name)


@needs_mpi
def test_one_rank_failing_ends_every_rank(tmp_path):
    result = _run([str(WORKER), "mpi", str(tmp_path / "x.npz"), "fail"], tmp_path, ranks=2)
    assert result.returncode != 0
    assert "error on rank 1 of 2: RuntimeError: deliberate failure" in result.stderr


@needs_mpi
def test_ranks_stop_together_on_the_time_limit_and_early_stopping(tmp_path):
    out = tmp_path / "stop.npz"
    result = _run([str(WORKER), "mpi", str(out), "stop"], tmp_path, ranks=2)
    assert result.returncode == 0, result.stderr
    counts = np.load(out)["counts"]   # (step, validations, stopped early) of each rank
    assert (counts == counts[0]).all(), counts


def test_distributed_without_mpi4py_says_what_to_install(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mpi4py", None)   # import mpi4py now fails
    (tmp_path / "corpus.txt").write_text(CORPUS)
    line = cli_error_line(capsys, ["train", str(tmp_path / "corpus.txt"), "--distributed",
                                   "--max-steps", "1"])
    assert "--distributed" in line and 'pip install "fastrnn[mpi]"' in line


def test_importing_fastrnn_never_imports_mpi4py(tmp_path):
    code = ("import sys, fastrnn, fastrnn.lm.train, fastrnn.lm.cli, fastrnn.lm.distributed; "
            "assert 'mpi4py' not in sys.modules, 'mpi4py imported'")
    result = run_python(["-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_distributed_refuses_what_it_cannot_do_exactly():
    ids = np.arange(200) % 7
    with pytest.raises(ValueError, match="distributed must be one of"):
        Trainer(LanguageModel(7, 4, 5), ids, batch_size=4, seq_len=5, max_steps=1,
                distributed="nccl")
    with pytest.raises(ValueError, match="dropout"):
        Trainer(LanguageModel(7, 4, 5, dropout=0.2), ids, batch_size=4, seq_len=5,
                max_steps=1, distributed="mpi")


@needs_mpi
def test_scaling_benchmark_runs_under_mpiexec(tmp_path):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "mpi_scaling.py"
    result = _run([str(script), "--threads", "1", "--steps", "1", "--warmup", "1", "--batch", "4",
                   "--seq-len", "5", "--hidden", "8", "--embed", "4"], tmp_path, ranks=2)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("2 rank(s) x 1 thread(s)") and "all-reduce of" in result.stdout
