"""Data-parallel training over MPI (fastrnn.lm.distributed): ``mpiexec -n 2`` on this machine
gives the parameters of one process (float64, within 1e-10) in stream and sentence mode, after
a resume, with and without dropout (whose checkpoint also resumes in one process), and from the
command line; one rank's failure ends the job; without mpi4py the command line says what to
install. The MPI runs skip where mpi4py or mpiexec is absent (``pip install "fastrnn[mpi]"``
brings both); the dropout hook they use (``LanguageModel.batch_part``) is tested without MPI."""
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
    for case in ("stream", "sentences", "truncated", "resumed",
                 "stream+dropout", "sentences+dropout", "resumed+dropout"):
        keys = [k for k in single if k.startswith(case + "/")]
        assert len(keys) > 5, keys
        for key in keys:
            np.testing.assert_allclose(distributed[key], single[key], rtol=0, atol=1e-10,
                                       err_msg=key)
    for suffix in ("", "+dropout"):
        # The resumed run is the uninterrupted one.
        stream = f"stream{suffix}/"
        for key in (k for k in single if k.startswith(stream)):
            np.testing.assert_allclose(distributed[f"resumed{suffix}/" + key[len(stream):]],
                                       single[key], rtol=0, atol=1e-10, err_msg=key)
    # Dropout changed the runs (so the "+dropout" cases test the masks).
    for case in ("stream", "sentences"):
        change = single[f"{case}+dropout/output.weight"] - single[f"{case}/output.weight"]
        assert np.abs(change).max() > 1e-3, case


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
def test_command_line_dropout_checkpoint_of_two_ranks_resumes_in_one_process(tmp_path):
    # The checkpoint holds one process's dropout generators: it resumes on any number of ranks.
    (tmp_path / "corpus.txt").write_text(CORPUS)
    train = ["-m", "fastrnn", "train", "corpus.txt", *TRAIN_ARGS, "--dropout", "0.3"]
    first = _run([*train, "--distributed", "--max-steps", "3", "--out", "d.npz"], tmp_path, 2)
    assert first.returncode == 0, first.stderr
    resumed = _run(["-m", "fastrnn", "train", "corpus.txt", "--resume", "d.npz",
                    "--max-steps", "6", "--no-progress"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    single = _run([*train, "--max-steps", "6", "--out", "s.npz"], tmp_path)
    assert single.returncode == 0, single.stderr
    d, s = LanguageModel.load(tmp_path / "d.npz"), LanguageModel.load(tmp_path / "s.npz")
    assert s.dropout == 0.3
    for name, value in s.params.items():
        np.testing.assert_allclose(d.params[name], value, rtol=0, atol=1e-10, err_msg=name)


def _parts_model(one_hot=False, dtype=np.float64):
    return LanguageModel(9, embed_size=None if one_hot else 4, hidden_size=[5, 6, 3],
                         cell="gru", dropout=0.4, one_hot=one_hot, dtype=dtype, seed=5)


@pytest.mark.parametrize("one_hot, dtype", [(False, np.float64), (True, np.float32)])
def test_batch_parts_apply_the_whole_batchs_dropout_masks(one_hot, dtype):
    # No MPI: one model on the whole batch, and one per part of it (columns [lo:hi], fewer
    # steps for the sentence-like last part) under model.batch_part, give the same logits and
    # end with the same dropout generators; a model with no part skips the masks.
    rng = np.random.default_rng(1)
    steps, batch = 6, 7
    x = rng.integers(0, 9, (steps, batch))
    whole = _parts_model(one_hot, dtype)
    logits, _ = whole.logits(x)
    atol = 1e-12 if dtype == np.float64 else 1e-5
    for lo, hi, t in ((0, 3, steps), (3, 4, steps), (4, 7, 4)):
        part = _parts_model(one_hot, dtype)
        with part.batch_part((steps, batch, lo)):
            part_logits, _ = part.logits(x[:t, lo:hi])
        np.testing.assert_allclose(part_logits, logits[:t, lo:hi], rtol=0, atol=atol)
        assert part.rng_state() == whole.rng_state()
        assert part.input_dropout.batch_share is None and part.rnn.batch_share is None
        # Whole batches again after the with block: the next masks are one process's.
        again = _parts_model(one_hot, dtype)
        again.logits(x)
        np.testing.assert_array_equal(part.logits(x)[0], again.logits(x)[0])
    none = _parts_model(one_hot, dtype)
    none.skip_dropout_masks(steps, batch)
    assert none.rng_state() == whole.rng_state()
    none.eval()   # eval forwards draw no masks, so neither does skipping in eval mode
    none.skip_dropout_masks(steps, batch)
    assert none.rng_state() == whole.rng_state()


def test_recurrent_layer_batch_share_bidirectional():
    # The recurrent layer alone (bidirectional: D * H features per mask): parts of a batch
    # give the whole batch's outputs and gradients, and skipping keeps the generator in step.
    rng = np.random.default_rng(2)
    steps, batch = 5, 4
    x = rng.normal(size=(steps, batch, 3))
    dy = rng.normal(size=(steps, batch, 2 * 6))

    def layer():
        return fastrnn.LSTM(3, [4, 5, 6], bidirectional=True, dropout=0.5, dtype=np.float64,
                            seed=7)
    whole = layer()
    y, _ = whole.forward(x)
    dx, _ = whole.backward(dy)
    grads = {k: np.zeros_like(g) for k, g in whole.grads.items()}
    for lo, hi in ((0, 1), (1, 4)):
        part = layer()
        part.batch_share = (steps, batch, lo)
        y_part, _ = part.forward(x[:, lo:hi])
        dx_part, _ = part.backward(dy[:, lo:hi])
        np.testing.assert_allclose(y_part, y[:, lo:hi], rtol=0, atol=1e-12)
        np.testing.assert_allclose(dx_part, dx[:, lo:hi], rtol=0, atol=1e-12)
        assert part.rng_state() == whole.rng_state()
        for k in grads:
            grads[k] += part.grads[k]
    for k, g in grads.items():
        np.testing.assert_allclose(g, whole.grads[k], rtol=0, atol=1e-12, err_msg=k)
    skipped = layer()
    skipped.skip_dropout_masks(steps, batch)
    assert skipped.rng_state() == whole.rng_state()


def test_batch_part_refuses_what_is_not_part_of_the_batch():
    model = _parts_model()
    x = np.zeros((3, 2), dtype=np.int64)
    for share, message in (((3, 2), "share must be None or"), ((0, 2, 0), "share steps"),
                           ((3, 2, 3), "share start")):
        with pytest.raises(ValueError, match=message):
            with model.batch_part(share):
                pass
    with pytest.raises(ValueError, match="not part of the"):
        with model.batch_part((3, 3, 2)):   # columns 2:4 of 3
            model.logits(x)
    with pytest.raises(ValueError, match="not part of the"):
        with model.batch_part((2, 2, 0)):   # 3 steps of 2
            model.logits(x)
    assert model.rnn.batch_share is None   # restored after an error too


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
    sentences = [ids[:9], ids[3:12]]
    with pytest.raises(ValueError, match="bptt_truncate needs dropout=0"):
        Trainer(LanguageModel(7, 4, 5, dropout=0.2), sentences, batch_size=2, max_steps=1,
                bptt_truncate=3, distributed="mpi")


@needs_mpi
def test_scaling_benchmark_runs_under_mpiexec(tmp_path):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "mpi_scaling.py"
    result = _run([str(script), "--threads", "1", "--steps", "1", "--warmup", "1", "--batch", "4",
                   "--seq-len", "5", "--hidden", "8", "--embed", "4"], tmp_path, ranks=2)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("2 rank(s) x 1 thread(s)") and "all-reduce of" in result.stdout
