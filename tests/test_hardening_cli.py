"""The CLI around files (issue 9: 4, 5, 13, 15): resume settings, --lowercase, hostile
checkpoints, and one-line errors (exit code 2, no traceback) for every bad file."""
import json

import numpy as np
import pytest

from fastrnn import LanguageModel
from fastrnn.lm import checkpoint
from fastrnn.lm.cli import main
from fastrnn.lm.text import CharVocab
from test_cli import TINY, run_error

KIND = "language-model"


def train(corpus, out, *options):
    return main(["train", str(corpus), "--out", str(out), "--eval-every", "100", *TINY, *options])


def rewrite(path, mutate):
    """Load a checkpoint, let ``mutate(header)`` change it, save it back."""
    header, arrays = checkpoint.load(path, KIND)
    mutate(header)
    checkpoint.save(path, KIND, {k: header[k] for k in ("config", "vocab", "extra")}, arrays)


def assert_same_params(path_a, path_b):
    a, b = LanguageModel.load(path_a), LanguageModel.load(path_b)
    for name, param in a.params.items():
        np.testing.assert_array_equal(b.params[name], param, err_msg=name)


@pytest.fixture
def straight(tmp_path, corpus):
    """A run of 12 steps without interruption."""
    out = tmp_path / "straight.npz"
    assert train(corpus, out, "--max-steps", "12") == 0
    return out


# ---- item 4: new limits on the command line win ---------------------------------------------

def test_resume_with_a_larger_max_steps_trains_to_that_total(tmp_path, corpus, capsys, straight):
    out = tmp_path / "m.npz"
    assert train(corpus, out, "--max-steps", "6") == 0
    capsys.readouterr()
    assert main(["train", str(corpus), "--resume", str(out), "--max-steps", "12",
                 "--no-progress"]) == 0          # --out defaults to the resumed file
    printed = capsys.readouterr().out
    assert "resumed from" in printed and "at step 6" in printed and f"saved {out}" in printed
    assert_same_params(straight, out)
    assert LanguageModel.load(out, with_extra=True)[1]["trainer"]["step"] == 12
    # The new limit is saved: resuming again without options has nothing left to do.
    line = run_error(capsys, ["train", str(corpus), "--resume", str(out), "--no-progress"])
    assert "--max-steps 12" in line and "larger --max-steps" in line


def test_rerunning_the_same_command_with_resume_is_accepted(tmp_path, corpus, straight):
    out = tmp_path / "m.npz"
    command = ["--max-steps", "6", "--level", "char", "--seed", "0", "--lr", "0.002"]
    assert train(corpus, out, *command) == 0
    assert train(corpus, out, *command[2:], "--resume", str(out), "--max-steps", "12") == 0
    assert_same_params(straight, out)


def test_resume_that_has_reached_its_limit_is_an_error(tmp_path, corpus, capsys):
    out = tmp_path / "m.npz"
    assert train(corpus, out, "--max-steps", "6") == 0
    before = out.read_bytes()
    capsys.readouterr()
    line = run_error(capsys, ["train", str(corpus), "--resume", str(out), "--max-steps", "6"])
    assert "already run 6 steps" in line and "larger --max-steps" in line
    assert out.read_bytes() == before


def test_other_limits_given_on_resume_replace_the_saved_ones(tmp_path, corpus, capsys):
    out = tmp_path / "m.npz"
    assert train(corpus, out, "--max-steps", "4", "--patience", "1") == 0
    assert main(["train", str(corpus), "--resume", str(out), "--max-steps", "7",
                 "--eval-every", "2", "--checkpoint-every", "3", "--patience", "5",
                 "--no-progress"]) == 0
    settings = LanguageModel.load(out, with_extra=True)[1]["trainer"]["settings"]
    assert (settings["max_steps"], settings["eval_every"], settings["checkpoint_every"],
            settings["patience"]) == (7, 2, 3, 5)
    assert "step      6" in capsys.readouterr().out   # validated at the new cadence


@pytest.mark.parametrize("option", [
    ["--hidden", "32"], ["--layers", "2"], ["--cell", "gru"], ["--embed", "4"],
    ["--dtype", "float64"], ["--tie-weights"], ["--dropout", "0.5"],
])
def test_resume_cannot_change_the_model_shape(tmp_path, corpus, capsys, option):
    out = tmp_path / "m.npz"
    assert train(corpus, out, "--max-steps", "2") == 0
    capsys.readouterr()
    line = run_error(capsys, ["train", str(corpus), "--resume", str(out), "--max-steps", "4",
                              *option])
    assert option[0] in line and "cannot change on resume" in line


@pytest.mark.parametrize("option", [
    ["--batch", "8"], ["--seq-len", "8"], ["--lr", "0.1"], ["--optimizer", "sgd"],
    ["--seed", "3"], ["--level", "word"], ["--val-fraction", "0.2"], ["--lowercase"],
    ["--schedule", "step"], ["--clip", "1"],
])
def test_resume_rejects_settings_that_differ_from_the_checkpoint(tmp_path, corpus, capsys, option):
    out = tmp_path / "m.npz"
    assert train(corpus, out, "--max-steps", "2") == 0
    capsys.readouterr()
    line = run_error(capsys, ["train", str(corpus), "--resume", str(out), "--max-steps", "4",
                              *option])
    assert option[0] in line and "does not match the checkpoint" in line


# ---- item 13: nothing from the checkpoint decides a path; settings are validated -------------

def test_checkpoint_settings_cannot_redirect_the_output(tmp_path, corpus, capsys):
    out = tmp_path / "m.npz"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    assert train(corpus, out, "--max-steps", "4") == 0

    def hostile(header):
        header["extra"]["trainer"]["settings"].update(
            out=str(victim), resume=str(victim), file=str(victim), func=None, max_steps=6)
    rewrite(out, hostile)
    elsewhere = tmp_path / "continued.npz"
    assert main(["train", str(corpus), "--resume", str(out), "--out", str(elsewhere),
                 "--no-progress"]) == 0
    assert victim.read_text() == "precious"
    assert f"saved {elsewhere}" in capsys.readouterr().out
    settings = LanguageModel.load(elsewhere, with_extra=True)[1]["trainer"]["settings"]
    assert "out" not in settings and "file" not in settings and settings["max_steps"] == 6


@pytest.mark.parametrize("key, value", [
    ("batch", "32"), ("batch", -1), ("batch", True), ("lr", "fast"), ("lr", float("inf")),
    ("seq_len", 2.5), ("optimizer", "os.system"), ("val_fraction", 2), ("level", ["char"]),
    ("seed", -1), ("max_steps", 0), ("schedule", "never"),
])
def test_invalid_checkpoint_settings_are_one_line_errors(tmp_path, corpus, capsys, key, value):
    out = tmp_path / "m.npz"
    assert train(corpus, out, "--max-steps", "2") == 0
    rewrite(out, lambda h: h["extra"]["trainer"]["settings"].update({key: value}))
    capsys.readouterr()
    line = run_error(capsys, ["train", str(corpus), "--resume", str(out), "--max-steps", "4"])
    assert f"setting {key!r}" in line


def test_missing_required_setting_is_a_one_line_error(tmp_path, corpus, capsys):
    out = tmp_path / "m.npz"
    assert train(corpus, out, "--max-steps", "2") == 0
    rewrite(out, lambda h: h["extra"]["trainer"]["settings"].pop("batch"))
    capsys.readouterr()
    assert "lack 'batch'" in run_error(
        capsys, ["train", str(corpus), "--resume", str(out), "--max-steps", "4"])


# ---- item 5: --lowercase at character level ---------------------------------------------------

def test_lowercase_at_character_level(tmp_path, capsys):
    corpus = tmp_path / "shouty.txt"
    corpus.write_text("The Cat Sat On The Mat.\nTHE DOG SAT ON THE LOG.\n" * 30)
    out = tmp_path / "m.npz"
    assert train(corpus, out, "--max-steps", "3", "--lowercase") == 0
    vocab = LanguageModel.load(out).vocab
    assert vocab.lowercase and not any(t.isupper() for t in vocab.tokens)
    capsys.readouterr()
    assert main(["sample", str(out), "--prime", "THE ", "--length", "5", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("THE ")
    assert main(["eval", str(out), str(corpus)]) == 0
    assert "not in the vocabulary" not in capsys.readouterr().out
    plain = tmp_path / "plain.npz"
    assert train(corpus, plain, "--max-steps", "1") == 0
    assert "T" in LanguageModel.load(plain).vocab.tokens


# ---- item 15: one line and exit code 2 for every bad file --------------------------------------

@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "m.npz"
    LanguageModel(7, 4, 5, 1).save(path)
    return path


def _npy(path):
    with open(path, "wb") as f:   # np.save(path) would append ".npy" to the name
        np.save(f, np.zeros(3))
    return path


def _deep(path):
    text = '{"format": "fastrnn", "format_version": 1, "kind": "language-model", "x": ' \
        + "[" * 50_000 + "]" * 50_000 + "}"
    np.savez(path, __header__=np.frombuffer(text.encode(), np.uint8))
    return path


def _huge(path):
    LanguageModel(7, 4, 5, 1).save(path)
    rewrite(path, lambda h: h["config"].update(vocab_size=60_000, embed_size=60_000,
                                               hidden_size=60_000, num_layers=8))
    return path


def _complex(path):
    LanguageModel(7, 4, 5, 1).save(path)
    header, arrays = checkpoint.load(path, KIND)
    arrays["params/output.bias"] = arrays["params/output.bias"] * 1j
    np.savez(path, __header__=np.frombuffer(json.dumps(header).encode(), np.uint8), **arrays)
    return path


def _bad_trainer(path):
    model = LanguageModel(vocab=CharVocab.build("the cat"), embed_size=4, hidden_size=5,
                          num_layers=1)
    model.save(path, extra={"trainer": {"step": "many", "history": 3}})
    return path


@pytest.mark.parametrize("make, words", [
    (_npy, ".npy array"), (_deep, "nests deeper"), (_huge, "more than"),
    (_complex, "complex"), (_bad_trainer, "malformed training state"),
])
@pytest.mark.parametrize("command", ["info", "sample", "resume"])
def test_hostile_files_are_one_line_errors(tmp_path, corpus, capsys, make, words, command):
    path = make(tmp_path / "hostile.npz")
    if command == "resume":
        argv = ["train", str(corpus), "--resume", str(path), "--max-steps", "3"]
    else:
        argv = [command, str(path)]
    if make is _bad_trainer and command == "sample":
        assert main(argv) == 0   # sampling does not read the training state
        return
    assert words in run_error(capsys, argv)


def test_memory_error_is_a_one_line_error(monkeypatch, capsys, model_file):
    def out_of_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 9.0 GiB for an array")
    monkeypatch.setattr(LanguageModel, "load", out_of_memory)
    line = run_error(capsys, ["sample", str(model_file)])
    assert "not enough memory" in line and "9.0 GiB" in line


def test_resuming_a_checkpoint_without_vocabulary_is_a_one_line_error(tmp_path, corpus, capsys):
    from fastrnn import Trainer
    path = tmp_path / "api.npz"
    Trainer(LanguageModel(7, 4, 5, 1), np.tile(np.arange(7), 30), batch_size=2, seq_len=4,
            max_steps=2, progress=False, checkpoint_path=path).fit()
    line = run_error(capsys, ["train", str(corpus), "--resume", str(path), "--max-steps", "4"])
    assert "without a vocabulary" in line
