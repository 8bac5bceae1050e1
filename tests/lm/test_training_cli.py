"""Issue 12: schedule, validation-file, truncation and demo flags; --log and fastrnn plot."""
import builtins
import json

import numpy as np
import pytest

from fastrnn import LanguageModel
from fastrnn.lm import curves
from fastrnn.lm.cli import main
from helpers import cli_error_line as run_error

TINY = ["--embed", "8", "--hidden", "16", "--layers", "1", "--batch", "4", "--seq-len", "16",
        "--no-progress"]


def test_step_schedule_flags_reach_the_trainer_and_are_kept_on_resume(tmp_path, corpus, capsys,
                                                                        built):
    out = tmp_path / "m.npz"
    argv = ["train", str(corpus), "--schedule", "step", "--lr-decay", "0.25",
            "--lr-step-epochs", "2", "--lr", "0.1", "--out", str(out), *TINY]
    assert main([*argv, "--epochs", "2"]) == 0
    trainer = built[-1][2]
    assert (trainer.schedule.gamma, trainer.schedule.step_size) == (0.25, 2)
    assert trainer.optimizer.lr == pytest.approx(0.1 * 0.25)   # decayed once, after epoch 2
    assert main(["train", str(corpus), "--resume", str(out), "--epochs", "4",
                 "--no-progress"]) == 0
    trainer = built[-1][2]
    assert (trainer.schedule.gamma, trainer.schedule.step_size) == (0.25, 2)
    assert trainer.optimizer.lr == pytest.approx(0.1 * 0.25 ** 2)
    capsys.readouterr()
    for flag, value in (("--lr-decay", "0.5"), ("--lr-step-epochs", "1")):
        line = run_error(capsys, ["train", str(corpus), "--resume", str(out), "--epochs", "5",
                                  flag, value, "--no-progress"])
        assert flag in line and "does not match the checkpoint" in line


@pytest.mark.parametrize("bad, flag", [
    (["--lr-decay", "0"], "--lr-decay"), (["--lr-decay", "1.5"], "--lr-decay"),
    (["--lr-decay", "0.5"], "--lr-decay"),                       # no schedule
    (["--schedule", "plateau", "--lr-step-epochs", "2"], "--lr-step-epochs"),
    (["--lr-step-epochs", "0"], "--lr-step-epochs"),
    (["--bptt-truncate", "0"], "--bptt-truncate"),
    (["--bptt-truncate", "4"], "--seq-len"),                     # stream mode: seq_len truncates
    (["--loss-on", "last"], "--loss-on last applies to sentence mode"),
    (["--loss-on", "first"], "--loss-on"),
    (["--val-file", "missing.txt"], "missing.txt"),
    (["--val-fraction", "0.2", "--val-file", "v.txt"], "--val-file"),
])
def test_bad_training_flags_are_one_line_errors(bad, flag, tmp_path, corpus, capsys,
                                                monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = run_error(capsys, ["train", str(corpus), *bad, "--max-steps", "1",
                              "--out", str(tmp_path / "x.npz"), *TINY])
    assert flag in line


def test_val_file_validates_on_that_text_with_the_training_vocabulary(tmp_path, corpus, capsys,
                                                                      built):
    val = tmp_path / "val.txt"
    val.write_text("the cat sat on the log.\nthe zebra!\n", encoding="utf-8")  # z b r ! unknown
    out = tmp_path / "m.npz"
    assert main(["train", str(corpus), "--val-file", str(val), "--max-steps", "2",
                 "--out", str(out), *TINY]) == 0
    args, kwargs, trainer = built[-1]
    model = trainer.model
    text = corpus.read_text(encoding="utf-8")
    np.testing.assert_array_equal(args[1], model.vocab.encode(text))   # all of it trains
    np.testing.assert_array_equal(args[2], model.vocab.encode(val.read_text(encoding="utf-8")))
    assert (args[2] == model.vocab.unk_id).sum() == 4
    assert trainer.history[-1]["val_loss"] == pytest.approx(model.evaluate(args[2]))
    # Saved with the run (as an absolute path), and given again on resume (never read from
    # the checkpoint): a resume validates on the same file.
    capsys.readouterr()
    line = run_error(capsys, ["train", str(corpus), "--resume", str(out), "--max-steps", "3",
                              "--no-progress"])
    assert "give --val-file again" in line
    assert main(["train", str(corpus), "--resume", str(out), "--max-steps", "3",
                 "--val-file", str(val), "--no-progress"]) == 0
    np.testing.assert_array_equal(built[-1][0][2], args[2])
    capsys.readouterr()
    other = tmp_path / "other.txt"
    other.write_text("the mat.\n", encoding="utf-8")
    line = run_error(capsys, ["train", str(corpus), "--resume", str(out), "--max-steps", "4",
                              "--val-file", str(other), "--no-progress"])
    assert "--val-file" in line and "does not match the checkpoint" in line
    empty = tmp_path / "empty.txt"
    empty.write_text("a", encoding="utf-8")
    line = run_error(capsys, ["train", str(corpus), "--val-file", str(empty), "--max-steps", "1",
                              "--out", str(tmp_path / "y.npz"), *TINY])
    assert "--val-file" in line and "at least 2 tokens" in line


def test_demo_max_steps_trains_exactly_that_many_steps(capsys, built):
    assert main(["demo", "--max-steps", "3", "--sentences", "200", "--hidden", "8",
                 "--batch", "4", "--seq-len", "8", "--eval-every", "2"]) == 0
    trainer = built[-1][2]
    assert (trainer.step, trainer.max_steps, trainer.time_limit) == (3, 3, None)
    assert "3 steps of training" in capsys.readouterr().out
    assert main(["demo", "--max-steps", "2", "--time-limit", "30", "--sentences", "200",
                 "--hidden", "8", "--batch", "4", "--seq-len", "8"]) == 0
    assert (built[-1][2].max_steps, built[-1][2].time_limit) == (2, 30.0)
    capsys.readouterr()
    assert "--max-steps" in run_error(capsys, ["demo", "--max-steps", "0"])


# ---- --log and fastrnn plot -------------------------------------------------------------------

def test_log_holds_every_validation_record_and_a_resume_appends(tmp_path, corpus, capsys):
    out, log = tmp_path / "m.npz", tmp_path / "run.jsonl"
    argv = ["train", str(corpus), "--eval-every", "2", "--out", str(out), "--log", str(log), *TINY]
    assert main([*argv, "--max-steps", "5"]) == 0
    first = curves.read_log(log)
    assert [r["step"] for r in first] == [2, 4, 5]
    assert main(["train", str(corpus), "--resume", str(out), "--max-steps", "8",
                 "--log", str(log), "--no-progress"]) == 0
    _, extra = LanguageModel.load(out, with_extra=True)
    history = extra["trainer"]["history"]
    assert curves.read_log(log) == history
    assert [r["step"] for r in history] == [2, 4, 5, 6, 8]
    assert all(line.endswith("}") for line in log.read_text().splitlines())
    capsys.readouterr()
    # A new run refuses a log that holds another run's records (never mixes two runs).
    line = run_error(capsys, [*argv, "--max-steps", "1", "--out", str(tmp_path / "n.npz")])
    assert "--log" in line and "already holds records" in line


def _write_log(path, steps, losses):
    path.write_text("".join(json.dumps({"step": s, "epoch": 0, "tokens": 10 * s,
                                        "train_seconds": 0.5 * s, "train_loss": v + 0.1,
                                        "val_loss": v}) + "\n" for s, v in zip(steps, losses)))
    return path


def test_plot_draws_one_curve_per_log(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    a = _write_log(tmp_path / "a.jsonl", [1, 2, 3], [3.0, 2.0, 1.5])
    b = _write_log(tmp_path / "b.jsonl", [1, 2], [3.1, 2.5])
    out = tmp_path / "curves.png"
    assert main(["plot", str(a), str(b), "-o", str(out), "--x", "tokens", "--y", "train_loss"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out
    assert main(["plot", str(a), "-o", str(tmp_path / "c.svg")]) == 0
    assert b"<svg" in (tmp_path / "c.svg").read_bytes()[:500]
    assert not list(tmp_path.glob("*.tmp"))


def test_plot_labels_each_curve_with_its_file_and_the_axes(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    a = _write_log(tmp_path / "a.jsonl", [1, 2, 3], [3.0, 2.0, 1.5])
    b = _write_log(tmp_path / "b.jsonl", [1, 2], [3.1, 2.5])
    drawn = []
    real_savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: drawn.append(self) or
                        real_savefig(self, *a, **k))
    curves.plot_logs([a, b], tmp_path / "c.png", x="train_seconds", y="val_loss")
    axes = drawn[0].axes[0]
    assert [line.get_label() for line in axes.get_lines()] == ["a.jsonl", "b.jsonl"]
    np.testing.assert_array_equal(axes.get_lines()[0].get_xdata(), [0.5, 1.0, 1.5])
    np.testing.assert_array_equal(axes.get_lines()[1].get_ydata(), [3.1, 2.5])
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("training time (s)",
                                                      "validation loss (nats/token)")


def test_plot_errors_are_one_line(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    good = _write_log(tmp_path / "good.jsonl", [1, 2], [3.0, 2.0])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1, "val_loss": 2.0}\n\n{"step": 2, "val_loss": \n')
    out = tmp_path / "c.png"
    line = run_error(capsys, ["plot", str(good), str(bad), "-o", str(out)])
    assert "bad.jsonl line 3" in line and "not valid JSON" in line
    bad.write_text("[1, 2]\n")
    assert "bad.jsonl line 1" in run_error(capsys, ["plot", str(bad), "-o", str(out)])
    line = run_error(capsys, ["plot", str(good), "-o", str(out), "--y", "val_perplexity"])
    assert "good.jsonl" in line and "val_perplexity" in line
    assert "missing.jsonl" in run_error(capsys, ["plot", str(tmp_path / "missing.jsonl"),
                                                 "-o", str(out)])
    assert ".png" in run_error(capsys, ["plot", str(good), "-o", str(tmp_path / "c.txt")])
    assert "--x" in run_error(capsys, ["plot", str(good), "-o", str(out), "--x", "lr"])
    assert "-o" in run_error(capsys, ["plot", str(good)])
    assert not out.exists()


def test_plot_without_matplotlib_says_what_to_install(tmp_path, capsys, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    good = _write_log(tmp_path / "good.jsonl", [1, 2], [3.0, 2.0])
    line = run_error(capsys, ["plot", str(good), "-o", str(tmp_path / "c.png")])
    assert line == 'fastrnn: error: plotting needs matplotlib: pip install "fastrnn[plot]"'
    assert not (tmp_path / "c.png").exists()


def test_json_lines_log_flushes_each_record(tmp_path):
    path = tmp_path / "run.jsonl"
    with curves.JsonLinesLog(path) as log:
        log({"step": 1, "val_loss": 2.5})
        assert curves.read_log(path) == [{"step": 1, "val_loss": 2.5}]   # before closing
        log({"step": 2, "train_loss": float("nan")})
        assert [r["step"] for r in curves.read_log(path)] == [1, 2]
    with curves.JsonLinesLog(path) as log:   # appends
        log({"step": 3})
    assert [r["step"] for r in curves.read_log(path)] == [1, 2, 3]


def test_a_resume_drops_records_logged_after_the_checkpoint_and_a_torn_line(tmp_path, corpus,
                                                                            capsys):
    out, log = tmp_path / "m.npz", tmp_path / "run.jsonl"
    assert main(["train", str(corpus), "--eval-every", "2", "--max-steps", "4", "--out", str(out),
                 "--log", str(log), *TINY]) == 0
    # The interrupted run logged step 6 after its last checkpoint (4), then died mid-line.
    with open(log, "a") as f:
        f.write(json.dumps({"step": 6, "val_loss": 9.0}) + '\n{"step": 8, "val_l')
    assert main(["train", str(corpus), "--resume", str(out), "--max-steps", "6",
                 "--log", str(log), "--no-progress"]) == 0
    assert "dropped 2 record(s) after step 4" in capsys.readouterr().out
    _, extra = LanguageModel.load(out, with_extra=True)
    assert curves.read_log(log) == extra["trainer"]["history"]
    assert [r["step"] for r in curves.read_log(log)] == [2, 4, 6]
    with open(log, "a") as f:
        f.write("not json\n")
    line = run_error(capsys, ["train", str(corpus), "--resume", str(out), "--max-steps", "8",
                              "--log", str(log), "--no-progress"])
    assert "run.jsonl line 4" in line


@pytest.mark.parametrize("key, bad, good", [
    ("lr_decay", 1.0, 0.5), ("lr_decay", "0.5", 0.1), ("lr_step_epochs", 0, 3),
    ("bptt_truncate", 0, 8), ("bptt_truncate", 2.5, None), ("val_file", 3, "/data/val.txt"),
    ("val_file", "", None), ("loss_on", "first", "last"), ("loss_on", None, "all")])
def test_saved_settings_of_the_new_options_are_checked(key, bad, good):
    """A checkpoint's settings are never trusted: the new options get their flags' rules."""
    from fastrnn.lm.checkpoint import CheckpointError
    from fastrnn.lm.cli import _check_saved_setting

    with pytest.raises(CheckpointError, match=key):
        _check_saved_setting(key, bad)
    assert _check_saved_setting(key, good) == good


# ---- sentence mode ------------------------------------------------------------------------------

def test_bptt_truncate_and_val_file_in_sentence_mode(tmp_path, capsys, built):
    text = tmp_path / "prose.txt"
    text.write_text("The cat sat on the mat by the door of the old house. A dog ran home! "
                    "Did the cat see the dog run home?\n" * 8, encoding="utf-8")
    val = tmp_path / "val.txt"
    val.write_text("The dog sat on the log. A zebra ran!\n", encoding="utf-8")
    out = tmp_path / "m.npz"
    argv = ["train", str(text), "--level", "word", "--sentences", "--bptt-truncate", "4",
            "--val-file", str(val), "--out", str(out), "--eval-every", "2", *TINY]
    assert main([*argv, "--max-steps", "2"]) == 0
    args, kwargs, trainer = built[-1]
    vocab = trainer.model.vocab
    assert trainer.bptt_truncate == 4 and kwargs["bptt_truncate"] == 4
    assert len(args[1]) == 24                                  # every training sentence
    expected = [np.concatenate([[vocab.bos_id], vocab.encode(s), [vocab.eos_id]])
                for s in ("The dog sat on the log.", "A zebra ran!")]
    assert len(args[2]) == 2
    for got, want in zip(args[2], expected):                  # the file's sentences, wrapped
        np.testing.assert_array_equal(got, want)
    assert vocab.unk_id in args[2][1]                          # "zebra" is unknown
    assert main(["train", str(text), "--level", "word", "--sentences", "--resume", str(out),
                 "--val-file", str(val), "--max-steps", "3", "--no-progress"]) == 0
    assert built[-1][2].bptt_truncate == 4 and built[-1][2].step == 3
    capsys.readouterr()
    line = run_error(capsys, ["train", str(text), "--level", "word", "--sentences", "--resume",
                              str(out), "--val-file", str(val), "--bptt-truncate", "8",
                              "--max-steps", "4", "--no-progress"])
    assert "--bptt-truncate" in line and "does not match the checkpoint" in line
    empty = tmp_path / "empty.txt"
    empty.write_text("\n", encoding="utf-8")
    line = run_error(capsys, ["train", str(text), "--level", "word", "--sentences", "--val-file",
                              str(empty), "--max-steps", "1", "--out", str(tmp_path / "n.npz"),
                              *TINY])
    assert "empty.txt" in line and "empty" in line


def test_loss_on_last_in_sentence_mode_is_saved_and_kept_on_resume(tmp_path, capsys, built):
    text = tmp_path / "prose.txt"
    text.write_text("The cat sat on the mat. A dog ran home! Did the cat see it?\n" * 8,
                    encoding="utf-8")
    out = tmp_path / "m.npz"
    argv = ["train", str(text), "--level", "word", "--sentences", "--loss-on", "last",
            "--out", str(out), *TINY]
    assert main([*argv, "--max-steps", "2"]) == 0
    args, kwargs, trainer = built[-1]
    assert kwargs["loss_on"] == "last" and trainer.loss_on == "last"
    assert main(["train", str(text), "--resume", str(out), "--max-steps", "3",
                 "--no-progress"]) == 0
    assert built[-1][2].loss_on == "last" and built[-1][2].step == 3
    capsys.readouterr()
    line = run_error(capsys, ["train", str(text), "--resume", str(out), "--loss-on", "all",
                              "--max-steps", "4", "--no-progress"])
    assert "--loss-on all does not match the checkpoint ('last')" in line


# ---- the tutorials' model options --------------------------------------------------------------

def test_init_options_and_freeze_reach_the_model_and_are_kept_on_resume(tmp_path, corpus, capsys,
                                                                       built):
    out = tmp_path / "m.npz"
    argv = ["train", str(corpus), "--cell", "rnn_relu", "--init-std", "0.01", "--recurrent-init",
            "identity", "--freeze", "embedding.weight", "--out", str(out), *TINY]
    assert main([*argv, "--max-steps", "2"]) == 0
    model = built[-1][2].model
    config = model.config()
    assert (config["init_std"], config["recurrent_init"]) == (0.01, "identity")
    # Two Adam steps of lr 2e-3 from W_hh = I.
    np.testing.assert_allclose(model.params["rnn.weight_hh_l0"], np.eye(16), atol=5e-3)
    fresh = LanguageModel(vocab=model.vocab, embed_size=8, hidden_size=16, num_layers=1,
                          cell="rnn_relu", init_std=0.01, recurrent_init="identity")
    # Frozen: the embedding is still its initial value after two Adam steps.
    np.testing.assert_array_equal(model.params["embedding.weight"],
                                  fresh.params["embedding.weight"])
    assert not np.array_equal(model.params["output.weight"], fresh.params["output.weight"])
    assert main(["train", str(corpus), "--resume", str(out), "--max-steps", "3",
                 "--no-progress"]) == 0
    resumed = built[-1][2].model
    assert resumed.frozen == {"embedding.weight"}
    np.testing.assert_array_equal(resumed.params["embedding.weight"],
                                  fresh.params["embedding.weight"])
    capsys.readouterr()
    line = run_error(capsys, ["train", str(corpus), "--resume", str(out), "--init-std", "0.02",
                              "--max-steps", "4", "--no-progress"])
    assert "--init-std 0.02 does not match the checkpoint's model (0.01)" in line
    assert main(["train", str(corpus), "--forget-bias", "1.0", "--max-steps", "1",
                 "--out", str(tmp_path / "f.npz"), *TINY]) == 0
    model = built[-1][2].model
    assert model.config()["forget_bias"] == 1.0
    # Gates i, f, g, o: f is the second; one Adam step of lr 2e-3 from 1.
    np.testing.assert_allclose(model.params["rnn.bias_ih_l0"][16:32], 1.0, atol=2.5e-3)


@pytest.mark.parametrize("bad, message", [
    (["--freeze", "nope"], "--freeze nope: no such parameter"),
    (["--recurrent-init", "orthogonal"], "--recurrent-init"),
    (["--init-std", "0"], "--init-std"),
    (["--forget-bias", "1", "--cell", "gru"], "forget_bias"),
])
def test_bad_model_options_are_one_line_errors(bad, message, tmp_path, corpus, capsys):
    line = run_error(capsys, ["train", str(corpus), *bad, "--max-steps", "1",
                              "--out", str(tmp_path / "x.npz"), *TINY])
    assert message in line
