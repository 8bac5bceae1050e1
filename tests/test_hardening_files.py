"""Hostile and damaged model files, atomic writes, all-or-nothing resume (issue 9: 5, 6, 14-16).

The hostile files are built by hand in tmp_path: crafted JSON headers, deeply nested JSON,
huge declared sizes, a .npy instead of a .npz, complex parameters, zip bombs. Loading must
refuse each with a CheckpointError (a ValueError) before building a model or decompressing
anything.
"""
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from fastrnn import LanguageModel, Trainer
from fastrnn.lm import checkpoint
from fastrnn.lm.checkpoint import CheckpointError
from fastrnn.cells import CELLS
from fastrnn.lm.model import parameter_shapes
from fastrnn.lm.text import CharVocab, WordVocab
from fastrnn.lm.text.vocab import load_vocab


def small_model(**kwargs):
    settings = dict(vocab_size=7, embed_size=4, hidden_size=5, num_layers=2, cell="lstm", seed=1)
    settings.update(kwargs)
    return LanguageModel(**settings)


def raw_save(path, header, arrays):
    """Write a .npz the way an attacker would: any header, any arrays, no checks."""
    encoded = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    np.savez(path, __header__=encoded, **arrays)


def saved_parts(path):
    """(header, arrays) of a good file, to tamper with."""
    return checkpoint.load(path, "language-model")


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "m.npz"
    small_model().save(path)
    return path


# ---- item 6: parameters of the wrong dtype or shape ----------------------------------------

@pytest.mark.parametrize("bad, words", [
    (lambda a: a.astype(np.complex128), ["complex128"]),
    (lambda a: a.astype(np.complex64), ["complex64"]),
    (lambda a: a.astype(np.float16), ["float16", "expected float32"]),
    (lambda a: a.astype(np.float64), ["float64", "expected float32"]),
    (lambda a: a.astype(">f4"), [">f4"]),
    (lambda a: a[:, :2].copy(), ["shape (20, 2)", "expected (20, 5)"]),
])
def test_parameters_of_another_dtype_or_shape_are_refused_naming_the_key(model_file, bad, words):
    header, arrays = saved_parts(model_file)
    arrays["params/rnn.weight_hh_l0"] = bad(arrays["params/rnn.weight_hh_l0"])
    raw_save(model_file, header, arrays)
    with pytest.raises(CheckpointError) as info:
        LanguageModel.load(model_file)
    message = str(info.value)
    assert "params/rnn.weight_hh_l0" in message
    for word in words:
        assert word in message


def test_object_array_in_a_file_is_refused(model_file):
    header, arrays = saved_parts(model_file)
    arrays["params/output.bias"] = np.array([object()] * 7)
    raw_save(model_file, header, arrays)   # np.savez pickles it
    with pytest.raises(CheckpointError, match="params/output.bias.*dtype object"):
        LanguageModel.load(model_file)


# ---- item 14: bounded declarations, nothing built or decompressed before the checks --------

def _refuse_construction(monkeypatch):
    def no_init(self, *args, **kwargs):
        raise AssertionError("a model was built before the file was checked")
    monkeypatch.setattr(LanguageModel, "__init__", no_init)


@pytest.mark.parametrize("key, value, words", [
    ("hidden_size", 2**20, ["hidden_size", "1,048,576", "65,536"]),
    ("vocab_size", 10**9, ["vocab_size", "2,097,152"]),
    ("num_layers", 10**6, ["num_layers", "256"]),
    ("embed_size", -3, ["embed_size", ">= 1"]),
    ("dtype", "complex128", ["dtype"]),
    ("cell", "transformer", ["cell"]),
])
def test_header_declaring_huge_or_bad_sizes_is_refused_before_building(
        model_file, monkeypatch, key, value, words):
    header, arrays = saved_parts(model_file)
    header["config"][key] = value
    raw_save(model_file, header, arrays)
    _refuse_construction(monkeypatch)
    with pytest.raises(CheckpointError) as info:
        LanguageModel.load(model_file)
    for word in words:
        assert word in str(info.value)


def test_total_parameter_count_is_bounded(model_file, monkeypatch):
    header, arrays = saved_parts(model_file)
    header["config"].update(hidden_size=2**16, embed_size=2**16, num_layers=200, vocab_size=10)
    raw_save(model_file, header, arrays)
    _refuse_construction(monkeypatch)
    with pytest.raises(CheckpointError, match="parameters, more than the 4,294,967,296"):
        LanguageModel.load(model_file)


def test_header_without_its_arrays_builds_nothing(model_file, monkeypatch):
    """The audit's 553-byte file: a header declaring a large model and no arrays at all."""
    header, _ = saved_parts(model_file)
    header["config"].update(vocab_size=50_000, embed_size=4096, hidden_size=4096, num_layers=4)
    header["vocab"] = None
    raw_save(model_file, header, {})
    assert os.path.getsize(model_file) < 2000
    _refuse_construction(monkeypatch)
    with pytest.raises(CheckpointError, match="damaged.*missing.*params/embedding.weight"):
        LanguageModel.load(model_file)


def test_vocabulary_must_match_the_declared_size(model_file):
    header, arrays = saved_parts(model_file)
    header["config"]["vocab_size"] = 7
    header["vocab"] = CharVocab.build("abc").to_dict()
    raw_save(model_file, header, arrays)
    with pytest.raises(CheckpointError, match="vocab_size=7 tokens"):
        LanguageModel.load(model_file)


class _ReadCounter:
    """Counts the bytes read from zip members (decompressed or not)."""

    def __init__(self, monkeypatch):
        self.total = 0
        original = zipfile.ZipExtFile.read

        def counting_read(stream, n=-1):
            data = original(stream, n)
            self.total += len(data)
            return data
        monkeypatch.setattr(zipfile.ZipExtFile, "read", counting_read)


def _write_zip_bomb(path, header, member="extra/bomb", megabytes=32):
    """A valid fastrnn header plus one deflated member inflating to ``megabytes`` MiB of
    zeros (a few tens of KiB on disk), written without holding it in memory."""
    encoded = np.frombuffer(json.dumps(header).encode(), np.uint8)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("__header__.npy", "w") as f:
            np.lib.format.write_array(f, encoded)
        n = megabytes * 2**20 // 8
        with zf.open(f"{member}.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": "<f8", "fortran_order": False, "shape": (n,)})
            chunk = bytes(2**20)
            for _ in range(megabytes):
                f.write(chunk)


def test_zip_bomb_is_refused_before_decompressing(model_file, monkeypatch):
    header, _ = saved_parts(model_file)
    header["extra"] = {"bomb": {"__array__": "extra/bomb"}}
    bomb = model_file.with_name("bomb.npz")
    _write_zip_bomb(bomb, header)
    assert os.path.getsize(bomb) < 2**20
    counter = _ReadCounter(monkeypatch)
    with pytest.raises(CheckpointError, match="compressed"):
        checkpoint.load(bomb, "language-model")
    with pytest.raises(CheckpointError, match="compressed"):
        LanguageModel.load(bomb)
    assert counter.total < 2**16   # at most the .npy headers, never the 32 MiB


def test_member_whose_npy_header_declares_more_than_it_holds_is_refused(tmp_path, monkeypatch):
    """A stored member whose .npy header declares 2**40 float64 but holds 8 bytes."""
    path = tmp_path / "liar.npz"
    header = {"format": "fastrnn", "format_version": 1, "kind": "language-model"}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        with zf.open("__header__.npy", "w") as f:
            np.lib.format.write_array(f, np.frombuffer(json.dumps(header).encode(), np.uint8))
        with zf.open("extra/x.npy", "w") as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": "<f8", "fortran_order": False, "shape": (2**40,)})
            f.write(bytes(8))
    counter = _ReadCounter(monkeypatch)
    with pytest.raises(CheckpointError, match="extra/x.*declares shape"):
        checkpoint.load(path, "language-model")
    assert counter.total < 2**16


# ---- item 15: files that used to escape as TypeError / RecursionError ----------------------

def test_deeply_nested_json_header_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "deep.npz"
    depth = 100_000
    text = '{"format": "fastrnn", "format_version": 1, "kind": "language-model", "x": ' \
        + "[" * depth + "]" * depth + "}"
    np.savez(path, __header__=np.frombuffer(text.encode(), np.uint8))
    with pytest.raises(CheckpointError, match="nests deeper"):
        LanguageModel.load(path)
    # Within what the parser takes, yet deeper than any fastrnn header: refused too.
    text = '{"format": "fastrnn", "format_version": 1, "kind": "language-model", "x": ' \
        + "[" * 200 + "]" * 200 + "}"
    np.savez(path, __header__=np.frombuffer(text.encode(), np.uint8))
    with pytest.raises(CheckpointError, match="deeper than 32"):
        LanguageModel.load(path)


def test_npy_file_given_as_a_model_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "weights.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(CheckpointError, match="single NumPy .npy array"):
        LanguageModel.load(path)


def test_header_that_is_not_an_object_or_has_a_bad_config_is_refused(model_file):
    header, arrays = saved_parts(model_file)
    for config in ([1, 2], {"vocab_size": 7}, dict(header["config"], extra_key=1),
                   dict(header["config"], tie_weights="yes")):
        raw_save(model_file, dict(header, config=config), arrays)
        with pytest.raises(CheckpointError, match="damaged.*config"):
            LanguageModel.load(model_file)


# ---- item 15: Trainer.load_checkpoint is all or nothing ------------------------------------

def _ids():
    return np.tile(np.arange(7), 60)


def _trainer(model, **kwargs):
    settings = dict(batch_size=3, seq_len=5, max_steps=4, progress=False, eval_every=100)
    settings.update(kwargs)
    return Trainer(model, _ids(), **settings)


def _set(path, value):
    """A mutation of the trainer state: put ``value`` at the key path ``path``."""
    def mutate(state):
        node = state
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return mutate


MALFORMED_STATES = {
    "state not a dict": lambda s: s.clear() or s.update(step=None),
    "optimizer a list": _set(["optimizer"], [1, 2]),
    "optimizer state a list": _set(["optimizer", "state"], []),
    "buffer wrong shape": _set(["optimizer", "state", "rnn.weight_hh_l0", "exp_avg"],
                               {"__array__": "extra/trainer/carry/0"}),
    "lr a string": _set(["optimizer", "lr"], "fast"),
    "step negative": _set(["step"], -1),
    "step a string": _set(["step"], "4"),
    "history not a list": _set(["history"], 5),
    "history record a list": _set(["history"], [[1]]),
    "batcher beyond the data": _set(["batcher"], {"epoch": 0, "position": 10**9}),
    "batcher a string": _set(["batcher"], "start"),
    "rng garbage": _set(["rng", "rnn"], {"bit_generator": "PCG64", "state": "x"}),
    "rng missing": _set(["rng"], {}),
    "carry of the wrong shape": _set(["carry"], [{"__array__": "extra/trainer/carry/0"}]),
    "mode unknown": _set(["mode"], "chaos"),
    "stopped_early not a bool": _set(["stopped_early"], "no"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED_STATES))
def test_load_checkpoint_with_a_malformed_state_changes_nothing(tmp_path, name):
    path = tmp_path / "ckpt.npz"
    _trainer(small_model(), checkpoint_path=path).fit()
    header, arrays = saved_parts(path)
    MALFORMED_STATES[name](header["extra"]["trainer"])
    checkpoint.save(path, "language-model", {k: header[k] for k in ("config", "vocab", "extra")},
                    arrays)
    model = small_model(seed=5)
    trainer = _trainer(model)
    before = {k: v.copy() for k, v in model.params.items()}
    optimizer_before = trainer.optimizer.state_dict()
    with pytest.raises(ValueError, match="malformed training state|trainer state"):
        trainer.load_checkpoint(path)
    for key, value in before.items():
        assert model.params[key].tobytes() == value.tobytes(), key
    assert trainer.step == 0 and trainer.history == [] and trainer.carry is None
    after = trainer.optimizer.state_dict()
    for pname, buffers in optimizer_before["state"].items():
        for key, buf in buffers.items():
            assert after["state"][pname][key].tobytes() == buf.tobytes()


def test_load_state_dict_with_a_malformed_state_changes_nothing(tmp_path):
    trainer = _trainer(small_model())
    trainer.fit()
    state = trainer.state_dict()
    fresh = _trainer(small_model(seed=3))
    bad = dict(state, batcher={"epoch": 0, "position": 10**9})
    buffers_before = {k: {b: v.copy() for b, v in bufs.items()}
                      for k, bufs in fresh.optimizer.state.items()}
    with pytest.raises(ValueError, match="position"):
        fresh.load_state_dict(bad)
    assert fresh.step == 0
    for k, bufs in buffers_before.items():
        for b, v in bufs.items():
            np.testing.assert_array_equal(fresh.optimizer.state[k][b], v)
    fresh.load_state_dict(state)   # the good state still applies
    assert fresh.step == trainer.step


# ---- item 16: refuse at save time what the loader refuses; atomic vocab; temp files --------

@pytest.mark.parametrize("value, words", [
    (np.array([{"a": 1}], dtype=object), ["extra/bad", "object"]),
    (np.array([1 + 2j]), ["extra/bad", "complex128"]),
    (np.array(["text"]), ["extra/bad", "<U4"]),
])
def test_save_refuses_arrays_the_loader_refuses_and_keeps_the_old_file(model_file, value, words):
    before = model_file.read_bytes()
    with pytest.raises(TypeError) as info:
        small_model().save(model_file, extra={"bad": value})
    for word in words:
        assert word in str(info.value)
    assert model_file.read_bytes() == before
    assert sorted(p.name for p in model_file.parent.iterdir()) == [model_file.name]


def test_save_refuses_a_header_that_is_not_json(model_file):
    with pytest.raises(TypeError, match="JSON"):
        small_model().save(model_file, extra={"bad": {1, 2}})


def test_vocab_save_is_atomic(tmp_path):
    path = tmp_path / "vocab.json"
    good = WordVocab.build("a b c\n")
    good.save(path)
    before = path.read_bytes()
    unencodable = CharVocab(["a", "\ud800"])   # a lone surrogate has no UTF-8 encoding
    with pytest.raises(UnicodeEncodeError):
        unencodable.save(path)
    assert path.read_bytes() == before
    assert load_vocab(path).tokens == good.tokens
    assert [p.name for p in tmp_path.iterdir()] == ["vocab.json"]


def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_save_removes_stale_temp_files_of_the_same_target_only(tmp_path):
    target = tmp_path / "m.npz"
    dead = _dead_pid()
    stale = tmp_path / f"m.npz.{dead}.0123456789abcdef.tmp"
    stale.write_bytes(b"half a model")
    keep = {
        # another target's leftovers, a live process's save in flight, look-alikes
        tmp_path / f"other.npz.{dead}.0123456789abcdef.tmp": b"x",
        tmp_path / f"m.npz.{os.getppid()}.0123456789abcdef.tmp": b"x",
        tmp_path / f"xm.npz.{dead}.0123456789abcdef.tmp": b"x",
        tmp_path / f"m.npz.{dead}.0123456789abcdef.tmp.bak": b"x",
        tmp_path / f"m.npz.{dead}.NOTHEX6789abcdef.tmp": b"x",
        tmp_path / "m.npz.bak": b"x",
    }
    for path, data in keep.items():
        path.write_bytes(data)
    outside = tmp_path / "sub"
    outside.mkdir()
    victim = outside / "victim"
    victim.write_bytes(b"precious")
    link = tmp_path / f"m.npz.{dead}.fedcba9876543210.tmp"
    link.symlink_to(victim)
    small_model().save(target)
    assert not stale.exists()
    for path in keep:
        assert path.exists(), path.name
    assert link.is_symlink() and victim.read_bytes() == b"precious"
    LanguageModel.load(target)


def test_temp_file_is_named_after_its_target_and_removed_on_interrupt(model_file, monkeypatch):
    seen = []

    def interrupted_savez(f, **arrays):
        seen.extend(os.listdir(model_file.parent))
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.np, "savez", interrupted_savez)
    with pytest.raises(KeyboardInterrupt):
        small_model().save(model_file)
    temp = [name for name in seen if name != model_file.name]
    assert len(temp) == 1
    assert checkpoint._temp_pattern(model_file.name).fullmatch(temp[0])
    assert temp[0].startswith(f"m.npz.{os.getpid()}.")
    assert sorted(os.listdir(model_file.parent)) == [model_file.name]


# ---- item 5: lowercase at character level --------------------------------------------------

def test_char_vocab_lowercase_is_applied_and_saved(tmp_path):
    vocab = CharVocab.build("Hello World\n", lowercase=True)
    assert "H" not in vocab.tokens and "W" not in vocab.tokens
    np.testing.assert_array_equal(vocab.encode("HELLO"), vocab.encode("hello"))
    assert vocab.unknown_tokens("HeLLo") == set()
    model = LanguageModel(vocab=vocab, embed_size=4, hidden_size=4, num_layers=1)
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = LanguageModel.load(path).vocab
    assert loaded.lowercase is True
    np.testing.assert_array_equal(loaded.encode("WORLD"), vocab.encode("world"))
    assert CharVocab.build("Hi").lowercase is False
    assert CharVocab.from_dict({"kind": "char", "tokens": ["a"]}).lowercase is False


def test_word_vocab_lowercase_still_round_trips():
    vocab = WordVocab.build("The cat\nthe dog\n", lowercase=True)
    again = WordVocab.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert again.lowercase and again.encode("THE CAT").tolist() == vocab.encode("the cat").tolist()


# ---- the shapes the loader expects are the model's -----------------------------------------

@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize("tie", [False, True])
def test_parameter_shapes_match_the_built_model(cell, tie):
    model = LanguageModel(11, embed_size=6, hidden_size=6, num_layers=3, cell=cell,
                          tie_weights=tie)
    assert parameter_shapes(model.config()) == {k: v.shape for k, v in model.params.items()}
