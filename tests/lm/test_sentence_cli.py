"""Issue 12: the command line's sentence mode (--sentences, --bos, --eos, --unk)."""
import numpy as np
import pytest

from fastrnn.lm import LanguageModel
from fastrnn.lm.cli import main
from helpers import cli_error_line as run_error

TINY = ["--embed", "8", "--hidden", "16", "--layers", "1", "--batch", "4", "--no-progress"]
SPECIALS = ["--bos", "SENTENCE_START", "--eos", "SENTENCE_END", "--unk", "UNKNOWN_TOKEN"]


@pytest.fixture
def prose(tmp_path):
    """Sentences that run across lines, cut by text_to_sentences's rule."""
    path = tmp_path / "prose.txt"
    sentences = ["The cat sat on the mat.", "A dog ran home!", "Did the cat see it?",
                 "The dog sat\non the log."]
    path.write_text(" ".join(sentences * 10) + "\n", encoding="utf-8")
    return path


def test_sentence_mode_trains_on_wrapped_sentences_and_resumes(tmp_path, prose, capsys,
                                                               built):
    out = tmp_path / "m.npz"
    argv = ["train", "--level", "word", "--sentences", str(prose), "--lowercase", *SPECIALS,
            "--out", str(out), *TINY]
    assert main([*argv, "--max-steps", "3"]) == 0
    printed = capsys.readouterr().out
    assert "36 training and 4 validation sentences" in printed
    assert "found 16 unique tokens; least frequent kept: '!' (9 times)" in printed
    (model, train_data, val_data), _, trainer = built[-1]
    vocab = model.vocab
    assert (vocab.bos, vocab.eos, vocab.unk) == ("SENTENCE_START", "SENTENCE_END", "UNKNOWN_TOKEN")
    assert vocab.lowercase and vocab.has("the") and not vocab.has("The")
    assert trainer.mode == "sentences" and isinstance(val_data, list) and len(val_data) == 4
    # The first sentence, exactly: bos, its words (lower-cased, "sat\\non" joined), eos.
    assert [vocab.id_to_token(i) for i in train_data[0]] == [
        "SENTENCE_START", "the", "cat", "sat", "on", "the", "mat", ".", "SENTENCE_END"]
    assert [vocab.id_to_token(i) for i in train_data[3]][2:5] == ["dog", "sat", "on"]
    assert all(s[0] == vocab.bos_id and s[-1] == vocab.eos_id and
               np.sum(s == vocab.eos_id) == 1 for s in train_data + val_data)
    assert "val_loss" in trainer.history[-1]
    # Resume keeps sentence mode and the special tokens; changing one is refused.
    assert main(["train", str(prose), "--resume", str(out), "--max-steps", "5",
                 "--no-progress"]) == 0
    (_, resumed_data, _), _, trainer = built[-1]
    assert trainer.mode == "sentences" and trainer.step == 5
    assert all(np.array_equal(a, b) for a, b in zip(resumed_data, train_data))
    capsys.readouterr()
    line = run_error(capsys, ["train", str(prose), "--resume", str(out), "--max-steps", "6",
                              "--bos", "<s>", "--no-progress"])
    assert "--bos <s> does not match the checkpoint ('SENTENCE_START')" in line


def test_sentence_mode_by_lines_and_default_specials(tmp_path, corpus, capsys, built):
    out = tmp_path / "m.npz"
    assert main(["train", "--level", "word", "--sentence-lines", str(corpus),
                 "--val-fraction", "0.25", "--max-steps", "2", "--out", str(out), *TINY]) == 0
    (model, train_data, val_data), _, _ = built[-1]
    vocab = model.vocab
    assert (vocab.bos, vocab.eos, vocab.unk) == ("<s>", "</s>", "<unk>")
    assert (len(train_data), len(val_data)) == (60, 20)
    assert [vocab.id_to_token(i) for i in train_data[1]] == [
        "<s>", "the", "dog", "sat", "on", "the", "log", ".", "</s>"]


def test_sample_from_a_sentence_model_starts_at_bos_and_stops_at_eos(tmp_path, prose, capsys,
                                                                       monkeypatch):
    out = tmp_path / "m.npz"
    assert main(["train", str(prose), "--level", "word", "--sentences", *SPECIALS,
                 "--max-steps", "2", "--out", str(out), *TINY]) == 0
    calls = []
    real = LanguageModel.generate_ids

    def spy(self, prime_ids, n_tokens, **kwargs):
        tokens, lengths = real(self, prime_ids, n_tokens, **kwargs)
        calls.append((prime_ids, kwargs, tokens, lengths))
        return tokens, lengths

    monkeypatch.setattr(LanguageModel, "generate_ids", spy)
    capsys.readouterr()
    assert main(["sample", str(out), "--num-samples", "4", "--length", "50", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    prime_ids, kwargs, tokens, lengths = calls[-1]
    vocab = LanguageModel.load(out).vocab
    assert prime_ids.tolist() == [vocab.bos_id]
    assert kwargs["stop_id"] == vocab.eos_id
    assert set(kwargs["banned_ids"]) == {vocab.unk_id, vocab.bos_id}
    for row, n in zip(tokens, lengths):
        assert vocab.bos_id not in row[:n].tolist() and vocab.unk_id not in row[:n].tolist()
        assert n == 50 or row[n - 1] == vocab.eos_id
    assert "SENTENCE_START" not in printed and "SENTENCE_END" not in printed
    assert main(["sample", str(out), "--prime", "The cat", "--length", "5", "--seed", "1"]) == 0
    prime_ids = calls[-1][0]
    assert [vocab.id_to_token(i) for i in prime_ids] == ["SENTENCE_START", "The", "cat"]
    assert capsys.readouterr().out.startswith("The cat")
    line = run_error(capsys, ["sample", str(out), "--prime", "zebra"])
    assert "not in the model's vocabulary" in line and "'zebra'" in line
    line = run_error(capsys, ["sample", str(out), "--stop", "zebra"])
    assert "stop token 'zebra' is not in the vocabulary" in line
    # --min-length suppresses the model's eos (the default stop token of a sentence model).
    assert main(["sample", str(out), "--num-samples", "8", "--length", "12", "--seed", "2",
                 "--min-length", "6"]) == 0
    kwargs, tokens, lengths = calls[-1][1:]
    assert kwargs["min_length"] == 6 and kwargs["stop_id"] == vocab.eos_id
    for row, n in zip(tokens, lengths):
        assert n >= 7 and vocab.eos_id not in row[:6].tolist()


@pytest.mark.parametrize("options, message", [
    (["--sentences"], "--sentences needs --level word"),
    (["--level", "char", "--unk", "?"], "--unk: special tokens need --level word"),
    (["--level", "word", "--bos", "<s>"], "--bos needs --sentences"),
    (["--level", "word", "--sentences", "--bos", "X", "--eos", "X"],
     "--unk, --eos and --bos must be different tokens"),
    (["--level", "word", "--sentences", "--eos", "END OF"], "--eos must be one token"),
    (["--level", "word", "--sentences", "--val-fraction", "0.01"],
     "text has 40 sentences: too few to hold out --val-fraction 0.01"),
    (["--level", "word", "--sentences", "--sentence-lines"], "not allowed with argument"),
])
def test_sentence_mode_errors_are_one_line(options, message, tmp_path, prose, capsys):
    line = run_error(capsys, ["train", str(prose), *options, "--max-steps", "1",
                              "--out", str(tmp_path / "x.npz"), *TINY])
    assert message in line
    assert not (tmp_path / "x.npz").exists()


def test_eval_scores_a_sentence_model_sentence_by_sentence(tmp_path, prose, capsys):
    out = tmp_path / "m.npz"
    assert main(["train", str(prose), "--level", "word", "--sentences", "--max-steps", "2",
                 "--out", str(out), *TINY]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), str(prose)]) == 0
    printed = capsys.readouterr().out
    model = LanguageModel.load(out)
    vocab = model.vocab
    from fastrnn.lm.text import text_to_sentences
    wrapped = [np.concatenate([[vocab.bos_id], vocab.encode(s), [vocab.eos_id]])
               for s in text_to_sentences(prose.read_text())]
    expected = model.evaluate(wrapped)
    n_tokens = sum(len(s) - 1 for s in wrapped)
    assert f"{n_tokens:,} tokens, {expected:.4f} nats/token" in printed


def test_resuming_a_checkpoint_from_before_sentence_mode(tmp_path, corpus, capsys):
    """Checkpoints written before --sentences/--bos/--eos/--unk existed resume as word runs
    with their vocabulary's special tokens (which the options may repeat)."""
    out = tmp_path / "m.npz"
    assert main(["train", str(corpus), "--level", "word", "--max-steps", "2",
                 "--out", str(out), *TINY]) == 0
    model, extra = LanguageModel.load(out, with_extra=True)
    for key in ("sentences", "bos", "eos", "unk"):
        del extra["trainer"]["settings"][key]
    model.save(out, extra=extra)
    assert main(["train", str(corpus), "--resume", str(out), "--max-steps", "4",
                 "--unk", "<unk>", "--eos", "</s>", "--no-progress"]) == 0
    capsys.readouterr()
    line = run_error(capsys, ["train", str(corpus), "--resume", str(out), "--max-steps", "6",
                              "--sentences", "--no-progress"])
    assert "--sentences text does not match the checkpoint (None)" in line
