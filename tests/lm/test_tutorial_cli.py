"""Issue 12: the Trainer options of the tutorials on the command line."""
import pytest

from fastrnn.lm.cli import main
from helpers import cli_error_line as run_error

TINY = ["--embed", "8", "--hidden", "16", "--layers", "1", "--batch", "4", "--seq-len", "16",
        "--no-progress"]


def test_optimizer_options_clip_mode_and_reduction_flags(tmp_path, corpus, capsys, built):
    out = tmp_path / "m.npz"
    argv = ["train", str(corpus), "--optimizer", "adadelta", "--optimizer-option", "rho=0.95",
            "--optimizer-option", "eps=1e-6", "--clip-mode", "value", "--clip", "1",
            "--reduction", "sum", "--out", str(out), *TINY]
    assert main([*argv, "--max-steps", "3"]) == 0
    _, kwargs, trainer = built[-1]
    assert (trainer.optimizer.rho, trainer.optimizer.eps) == (0.95, 1e-6)
    assert (trainer.clip_mode, trainer.reduction, trainer.clip) == ("value", "sum", 1.0)
    # Saved with the run: a resume keeps them, and refuses another value.
    assert main(["train", str(corpus), "--resume", str(out), "--max-steps", "5", "--no-progress"]) == 0
    _, kwargs, trainer = built[-1]
    assert kwargs["optimizer_options"] == {"rho": 0.95, "eps": 1e-6}
    assert (trainer.clip_mode, trainer.reduction, trainer.step) == ("value", "sum", 5)
    capsys.readouterr()
    line = run_error(capsys, ["train", str(corpus), "--resume", str(out), "--max-steps", "6",
                              "--reduction", "mean", "--no-progress"])
    assert "--reduction" in line and "does not match the checkpoint" in line
    line = run_error(capsys, ["train", str(corpus), "--optimizer", "adam", "--optimizer-option",
                              "rho=0.9", "--max-steps", "1", "--out", str(tmp_path / "x.npz"), *TINY])
    assert "optimizer_options" in line and "adam takes" in line


@pytest.mark.parametrize("bad", [["--optimizer-option", "rho"], ["--optimizer-option", "=1"],
                                 ["--clip-mode", "global"], ["--reduction", "none"]])
def test_bad_flags_are_one_line_errors(bad, tmp_path, corpus, capsys):
    run_error(capsys, ["train", str(corpus), *bad, "--max-steps", "1",
                       "--out", str(tmp_path / "x.npz"), *TINY])
