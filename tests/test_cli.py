"""The ``fastrnn`` command line: a real (tiny) run end to end, and every user-error path."""
import json

import numpy as np
import pytest

from fastrnn import LanguageModel
from fastrnn.lm import checkpoint
from fastrnn.lm.cli import main
from helpers import cli_error_line as run_error, run_python

TINY = ["--embed", "8", "--hidden", "16", "--layers", "1", "--batch", "4", "--seq-len", "16",
        "--no-progress"]


@pytest.fixture
def trained(tmp_path, corpus):
    out = tmp_path / "model.npz"
    assert main(["train", str(corpus), "--max-steps", "30", "--eval-every", "10",
                 "--out", str(out), *TINY]) == 0
    return out


def test_train_sample_eval_info_round_trip(tmp_path, corpus, capsys):
    trained = tmp_path / "model.npz"
    assert main(["train", str(corpus), "--max-steps", "30", "--eval-every", "10",
                 "--out", str(trained), *TINY]) == 0
    out = capsys.readouterr().out
    assert out.count("val ") == 3 and "final validation loss" in out and "saved" in out
    model = LanguageModel.load(trained)
    assert model.config()["hidden_size"] == 16
    assert main(["sample", str(trained), "--prime", "the ", "--length", "40", "--seed", "3"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("the ")
    assert main(["sample", str(trained), "--prime", "the ", "--length", "40", "--seed", "3"]) == 0
    assert capsys.readouterr().out == first          # reproducible from the seed
    assert main(["sample", str(trained), "--num-samples", "2", "--greedy", "--length", "10"]) == 0
    assert capsys.readouterr().out.count("--- sample") == 2
    assert main(["eval", str(trained), str(corpus)]) == 0
    line = capsys.readouterr().out
    assert "nats/token" in line and "perplexity" in line
    assert main(["info", str(trained)]) == 0
    info = capsys.readouterr().out
    assert "step 30" in info and "char" in info


def test_word_level_training_reports_perplexity(tmp_path, corpus, capsys):
    out = tmp_path / "words.npz"
    assert main(["train", str(corpus), "--level", "word", "--max-vocab", "6", "--max-steps", "5",
                 "--eval-every", "5", "--out", str(out), *TINY]) == 0
    assert "perplexity" in capsys.readouterr().out
    vocab = LanguageModel.load(out).vocab
    assert len(vocab) == 6 and vocab.unk == "<unk>"


def test_resume_continues_from_the_checkpoint(tmp_path, corpus, capsys):
    out = tmp_path / "m.npz"
    common = ["train", str(corpus), "--out", str(out), "--eval-every", "100", *TINY]
    assert main(common + ["--max-steps", "12"]) == 0
    straight = LanguageModel.load(out)
    assert main(common + ["--max-steps", "6"]) == 0
    # A resumed run uses the checkpoint's settings; raise its step budget to 12 in the file.
    header, arrays = checkpoint.load(out, "language-model")
    header["extra"]["trainer"]["settings"]["max_steps"] = 12
    checkpoint.save(out, "language-model", {k: header[k] for k in ("config", "vocab", "extra")},
                    arrays)
    assert main(["train", str(corpus), "--resume", str(out), "--out", str(out), "--no-progress"]) == 0
    assert "resumed from" in capsys.readouterr().out
    resumed = LanguageModel.load(out)
    for name, param in straight.params.items():
        np.testing.assert_array_equal(resumed.params[name], param, err_msg=name)


def test_missing_file(capsys, tmp_path):
    assert "not found" in run_error(capsys, ["train", str(tmp_path / "nope.txt"), "--max-steps", "1"])


def test_empty_file(capsys, tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("  \n")
    assert "empty" in run_error(capsys, ["train", str(path), "--max-steps", "1"])


def test_binary_file(capsys, tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(range(256)) * 4)
    assert "not UTF-8 text" in run_error(capsys, ["train", str(path), "--max-steps", "1"])


def test_unknown_option(capsys, corpus):
    assert "--frobnicate" in run_error(capsys, ["train", str(corpus), "--frobnicate"])


def test_bad_option_value(capsys, corpus):
    assert "--lr" in run_error(capsys, ["train", str(corpus), "--lr", "-1"])


def test_corrupt_checkpoint(capsys, tmp_path):
    path = tmp_path / "model.npz"
    path.write_bytes(b"PK\x03\x04 definitely not a model")
    assert "not a readable fastrnn model" in run_error(capsys, ["sample", str(path)])


def test_checkpoint_from_another_version(capsys, tmp_path, trained):
    header, arrays = checkpoint.load(trained, "language-model")
    header.update(format_version=2, fastrnn_version="9.0")
    np.savez(trained, __header__=np.frombuffer(json.dumps(header).encode(), np.uint8), **arrays)
    line = run_error(capsys, ["info", str(trained)])
    assert "fastrnn 9.0" in line and "format 2" in line


def test_prime_outside_the_vocabulary(capsys, trained):
    capsys.readouterr()
    line = run_error(capsys, ["sample", str(trained), "--prime", "zebra"])
    assert "not in the model's vocabulary" in line and "'z'" in line


def test_missing_model_for_eval(capsys, tmp_path, corpus):
    assert "not found" in run_error(capsys, ["eval", str(tmp_path / "none.npz"), str(corpus)])


def test_resume_from_a_model_without_training_state(capsys, tmp_path, corpus):
    path = tmp_path / "plain.npz"
    LanguageModel(5, 4, 4, 1).save(path)
    assert "no training state" in run_error(capsys, ["train", str(corpus), "--resume", str(path)])


def test_python_dash_m_reports_errors_without_traceback(tmp_path):
    result = run_python(["-m", "fastrnn", "sample", str(tmp_path / "x.npz")], cwd=tmp_path,
                        capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == f"fastrnn: error: model file not found: {tmp_path / 'x.npz'}"
    assert main(["--version"]) == 0


def test_demo_trains_reports_the_entropy_gap_and_samples(capsys):
    assert main(["demo", "--time-limit", "1", "--sentences", "300", "--eval-every", "5",
                 "--hidden", "16"]) == 0
    out = capsys.readouterr().out
    assert "true entropy is 1.7743 nats/token" in out
    assert "gap" in out and "Samples" in out
    samples = out.split("Samples (temperature 1):\n")[1].rstrip("\n").splitlines()
    assert len(samples) == 5 and all(s.startswith("  ") for s in samples)


def test_bench_options_are_handed_to_the_benchmark_runner(monkeypatch):
    from pathlib import Path

    from fastrnn.lm.cli import load_benchmarks
    monkeypatch.chdir(Path(__file__).resolve().parents[1])   # fastrnn bench runs in a checkout
    benchmarks = load_benchmarks()
    received = []
    monkeypatch.setattr(benchmarks, "main", lambda argv: received.append(argv) or 0)
    assert main(["bench", "--repeat", "2", "--cases", "lm"]) == 0
    assert received == [["--repeat", "2", "--cases", "lm"]]
