"""LanguageModel: gradients, PyTorch parity, evaluation, files."""
import math
import os

import numpy as np
import pytest

from fastrnn import CharVocab, CheckpointError, LanguageModel, WordVocab
from fastrnn.lm import checkpoint

from helpers import assert_close, assert_model_gradients_match, torch_copy_of_model

CELLS = ["lstm", "gru", "rnn_tanh", "rnn_relu", "rnn_identity"]


def small_model(cell="lstm", tie=False, dtype=np.float64, **kwargs):
    size = 6 if tie else 5
    return LanguageModel(11, embed_size=size, hidden_size=6, num_layers=2, cell=cell,
                         tie_weights=tie, seed=3, dtype=dtype, **kwargs)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("use_lengths", [False, True])
def test_every_parameter_gradient_matches_finite_differences(cell, tie, use_lengths, rng):
    model = small_model(cell, tie)
    x = rng.integers(0, 11, (7, 3))
    y = rng.integers(0, 11, (7, 3))
    lengths = np.array([7, 2, 5]) if use_lengths else None
    state = model.initial_state(3)
    state = tuple(rng.normal(0, 0.5, s.shape) for s in state) if cell == "lstm" \
        else rng.normal(0, 0.5, state.shape)

    def loss():
        return model.forward(x, y, state, lengths)[0]

    assert_model_gradients_match(model, loss, rng)


def test_padded_steps_do_not_change_the_loss(rng):
    model = small_model()
    x = rng.integers(0, 11, (6, 2))
    y = rng.integers(0, 11, (6, 2))
    lengths = np.array([6, 3])
    loss, _ = model.forward(x, y, None, lengths)
    x2, y2 = x.copy(), y.copy()
    x2[3:, 1] = 0
    y2[3:, 1] = 7
    assert model.forward(x2, y2, None, lengths)[0] == loss
    assert model.loss.n_tokens == 9


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("tie", [False, True])
def test_loss_and_gradients_match_pytorch(cell, tie, rng):
    torch = pytest.importorskip("torch")
    model = small_model(cell, tie)
    from torch_linear_rnn import LinearRNN   # torch.nn.RNN has no linear cell
    rnn_class = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU,
                 "rnn_identity": LinearRNN}.get(cell, torch.nn.RNN)
    extra = {"nonlinearity": cell[4:]} if cell.startswith("rnn") else {}
    emb = torch.nn.Embedding(11, model.embed_size).double()
    rnn = rnn_class(model.embed_size, 6, 2, **extra).double()
    fc = torch.nn.Linear(6, 11).double()
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(model.params["embedding.weight"]))
        for k, v in rnn.named_parameters():
            v.copy_(torch.from_numpy(model.params[f"rnn.{k}"]))
        fc.bias.copy_(torch.from_numpy(model.params["output.bias"]))
        if tie:
            fc.weight = emb.weight
        else:
            fc.weight.copy_(torch.from_numpy(model.params["output.weight"]))
    x = rng.integers(0, 11, (8, 4))
    y = rng.integers(0, 11, (8, 4))
    loss, _ = model.forward(x, y)
    model.zero_grad()
    model.backward()
    out, _ = rnn(emb(torch.from_numpy(x)))
    logits = fc(out)
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), torch.from_numpy(y).reshape(-1))
    ref.backward()
    assert abs(loss - ref.item()) < 1e-12
    assert_close(model.grads["embedding.weight"], emb.weight.grad.numpy(), 1e-10, "embedding")
    for k, v in rnn.named_parameters():
        assert_close(model.grads[f"rnn.{k}"], v.grad.numpy(), 1e-10, k)
    assert_close(model.grads["output.bias"], fc.bias.grad.numpy(), 1e-10, "bias")
    if not tie:
        assert_close(model.grads["output.weight"], fc.weight.grad.numpy(), 1e-10, "fc")


@pytest.mark.parametrize("use_lengths", [False, True])
def test_float32_step_matches_pytorch_with_the_loss_written_into_the_logits(use_lengths, rng):
    """float32 runs the compiled loss, which writes its gradient into the model's own logits
    (overwrite_logits): two steps in a row (the second reusing the first's freed memory)
    must each give PyTorch's loss, and the gradients must add up to twice PyTorch's."""
    torch = pytest.importorskip("torch")
    model = small_model(dtype=np.float32)
    emb, rnn, fc = torch_copy_of_model(model, torch.float32)
    x = rng.integers(0, 11, (8, 4))
    y = rng.integers(0, 11, (8, 4))
    lengths = np.array([8, 3, 6, 1]) if use_lengths else None
    model.zero_grad()
    losses = []
    for _ in range(2):
        losses.append(model.forward(x, y, None, lengths)[0])
        model.backward()
    out, _ = rnn(emb(torch.from_numpy(x)))
    token_loss = torch.nn.functional.cross_entropy(fc(out).reshape(-1, 11),
                                                   torch.from_numpy(y).reshape(-1),
                                                   reduction="none")
    real = np.arange(8)[:, None] < (lengths if use_lengths else np.full(4, 8))   # (T, B)
    weights = torch.from_numpy(real).reshape(-1)
    ref = (token_loss * weights).sum() / weights.sum()
    (2 * ref).backward()
    for loss in losses:
        assert loss == pytest.approx(ref.item(), rel=1e-5)
    assert_close(model.grads["embedding.weight"], emb.weight.grad.numpy(), 1e-4, "embedding")
    for k, v in rnn.named_parameters():
        assert_close(model.grads[f"rnn.{k}"], v.grad.numpy(), 1e-4, k)
    assert_close(model.grads["output.weight"], fc.weight.grad.numpy(), 1e-4, "fc")
    assert_close(model.grads["output.bias"], fc.bias.grad.numpy(), 1e-4, "bias")


def test_tied_model_has_one_shared_matrix():
    model = small_model(tie=True)
    assert "output.weight" not in model.params
    assert model.output.weight is model.params["embedding.weight"]
    assert model.num_params() == sum(p.size for p in model.params.values())


def test_dropout_is_reproducible_and_off_in_eval_mode(rng):
    x = rng.integers(0, 11, (6, 3))
    y = rng.integers(0, 11, (6, 3))
    a, b = small_model(dropout=0.5), small_model(dropout=0.5)
    assert a.forward(x, y)[0] == b.forward(x, y)[0]
    assert a.forward(x, y)[0] != a.forward(x, y)[0]   # fresh masks each call
    a.eval()
    first = a.forward(x, y)[0]
    assert a.forward(x, y)[0] == first
    plain = small_model(dropout=0.0)
    assert plain.eval().forward(x, y)[0] == first


def test_evaluate_is_the_mean_loss_over_the_stream(rng):
    model = small_model()
    ids = rng.integers(0, 11, 101)
    # One stream, one window: plain forward over the whole sequence.
    expected, _ = model.forward(ids[:-1, None], ids[1:, None])
    assert math.isclose(model.evaluate(ids, batch_size=1, seq_len=1000), expected, rel_tol=1e-12)
    # Windows with carried state give the same answer as one long window.
    assert math.isclose(model.evaluate(ids, batch_size=1, seq_len=7), expected, rel_tol=1e-12)
    # Parallel streams: each is scored from a zero state.
    parts = ids[:100].reshape(4, 25)
    losses = [model.forward(p[:-1, None], p[1:, None])[0] for p in parts]
    assert math.isclose(model.evaluate(ids[:100], batch_size=4, seq_len=10), np.mean(losses),
                        rel_tol=1e-12)
    assert model.training


def test_evaluate_rejects_bad_ids():
    model = small_model()
    with pytest.raises(ValueError, match="ids"):
        model.evaluate(np.array([1]))
    with pytest.raises(ValueError, match=r"\[0, 11\)"):
        model.evaluate(np.array([1, 2, 11]))


def test_forward_rejects_bad_input(rng):
    model = small_model()
    with pytest.raises(ValueError, match="x must be 2-D"):
        model.forward(np.zeros(5, int), np.zeros(5, int))
    with pytest.raises(ValueError, match="y must have the shape"):
        model.forward(np.zeros((5, 2), int), np.zeros((4, 2), int))
    with pytest.raises(ValueError, match="x"):
        model.forward(np.full((5, 2), 12), np.zeros((5, 2), int))


@pytest.mark.parametrize("kwargs, match", [
    ({"vocab_size": 0}, "vocab_size"),
    ({"vocab_size": 5, "cell": "tree"}, "cell"),
    ({"vocab_size": 5, "dropout": 1.0}, "dropout"),
    ({"vocab_size": 5, "embed_size": 4, "hidden_size": 8, "tie_weights": True}, "tie_weights"),
    ({}, "vocab_size or vocab"),
])
def test_constructor_rejects_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        LanguageModel(**kwargs)


def test_save_and_load_round_trip_with_vocab(tmp_path):
    vocab = CharVocab.build("hello world\n")
    model = LanguageModel(vocab=vocab, embed_size=4, hidden_size=5, num_layers=2, cell="gru",
                          dropout=0.1, seed=9)
    path = tmp_path / "m.npz"
    model.save(path, extra={"note": "x", "arr": np.arange(3.0)})
    loaded, extra = LanguageModel.load(path, with_extra=True)
    assert loaded.config() == model.config()
    assert loaded.vocab.tokens == vocab.tokens
    for k, v in model.params.items():
        np.testing.assert_array_equal(loaded.params[k], v)
    assert extra["note"] == "x"
    np.testing.assert_array_equal(extra["arr"], np.arange(3.0))
    assert list(tmp_path.iterdir()) == [path]   # no temporary files left behind


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    model = small_model()
    path = tmp_path / "m.npz"
    model.save(path)
    before = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        model.save(path)
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]


def test_load_reports_missing_corrupt_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        LanguageModel.load(tmp_path / "none.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip file at all")
    with pytest.raises(CheckpointError, match="not a readable fastrnn model"):
        LanguageModel.load(garbage)
    model = small_model()
    good = tmp_path / "good.npz"
    model.save(good)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: os.path.getsize(good) // 2])
    with pytest.raises(CheckpointError):
        LanguageModel.load(truncated)
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.zeros(3))
    with pytest.raises(CheckpointError, match="no header"):
        LanguageModel.load(plain)
    with pytest.raises(CheckpointError, match="directory"):
        LanguageModel.load(tmp_path)


def test_load_rejects_another_format_version_and_kind(tmp_path):
    path = tmp_path / "future.npz"
    checkpoint.save(path, "language-model", {}, {})
    header, arrays = checkpoint.load(path, "language-model")
    header["format_version"] = 99
    import json
    np.savez(path, __header__=np.frombuffer(json.dumps(header).encode(), np.uint8))
    with pytest.raises(CheckpointError, match="format 99.*reads format 1"):
        LanguageModel.load(path)
    other = tmp_path / "other.npz"
    checkpoint.save(other, "something-else", {}, {})
    with pytest.raises(CheckpointError, match="expected a 'language-model'"):
        LanguageModel.load(other)


def test_load_rejects_a_damaged_model(tmp_path):
    model = small_model()
    path = tmp_path / "m.npz"
    model.save(path)
    header, arrays = checkpoint.load(path, "language-model")
    del arrays["params/rnn.weight_hh_l1"]
    checkpoint.save(path, "language-model", {k: v for k, v in header.items()
                                             if k in ("config", "vocab", "extra")}, arrays)
    with pytest.raises(CheckpointError, match="damaged.*weight_hh_l1"):
        LanguageModel.load(path)


def test_word_model_prime_and_generation_arguments_are_checked():
    vocab = WordVocab.build("a b c .\nb c a .\n")
    model = LanguageModel(vocab=vocab, embed_size=4, hidden_size=4, num_layers=1)
    with pytest.raises(ValueError, match="not in the model's vocabulary: 'zebra'"):
        model.generate(5, prime="a zebra")
    with pytest.raises(ValueError, match="stop token"):
        model.generate(5, stop="nope")
    with pytest.raises(ValueError, match="no vocabulary"):
        LanguageModel(5, 4, 4, 1).generate(3)
