"""Trainer(bptt_truncate=K): truncated BPTT in consecutive K-step windows of sentence batches,
against PyTorch running the same windows with the carried state detached."""
import numpy as np
import pytest

from fastrnn import LanguageModel, Trainer

from helpers import assert_close, torch_copy_of_model

V = 11
# Steps per sentence 7, 3, 5, 1, 6: with K = 3 the windows are [0, 3), [3, 6), [6, 7); the
# 3- and 1-step sentences end in the first window, the 5- and 6-step ones in the second (the
# 6-step one exactly at its end), so rows drop out of the carried state twice.
STEPS = (7, 3, 5, 1, 6)


def _sentences(rng):
    return [rng.integers(1, V, n + 1) for n in STEPS]


def _model(cell):
    return LanguageModel(V, embed_size=5, hidden_size=6, num_layers=2, cell=cell, seed=3,
                         dtype=np.float64)


def _one_step(model, sentences, **kwargs):
    """One SGD step with lr 1 on a single batch of all ``sentences`` in order; returns the
    trainer and each parameter's change (minus the clipped gradient)."""
    before = {k: v.copy() for k, v in model.params.items()}
    settings = dict(batch_size=len(sentences), shuffle=False, optimizer="sgd", lr=1.0,
                    clip=None, max_steps=1, progress=False)
    trainer = Trainer(model, sentences, **{**settings, **kwargs})
    trainer.fit()
    return trainer, {k: model.params[k] - before[k] for k in before}


def _torch_truncated(model, sentences, window, reduction):
    """The same truncated objective in PyTorch: the padded batch (padding id 0) in windows of
    ``window`` steps, each starting from the previous window's final state detached, every
    window's masked token losses summed, divided by the token count for "mean"; one backward.
    Returns (mean loss, {name: gradient})."""
    torch = pytest.importorskip("torch")
    emb, rnn, fc = torch_copy_of_model(model, torch.float64)
    T = max(len(s) - 1 for s in sentences)
    x = np.zeros((T, len(sentences)), np.int64)
    y = np.zeros_like(x)
    mask = np.zeros(x.shape)
    for b, s in enumerate(sentences):
        x[:len(s) - 1, b], y[:len(s) - 1, b], mask[:len(s) - 1, b] = s[:-1], s[1:], 1.0
    x, y, mask = map(torch.from_numpy, (x, y, mask))
    state, total = None, 0.0
    for start in range(0, T, window):
        if state is not None:   # the cut: the carried state is a constant
            state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
        out, state = rnn(emb(x[start:start + window]), state)
        token_losses = torch.nn.functional.cross_entropy(
            fc(out).reshape(-1, V), y[start:start + window].reshape(-1), reduction="none")
        total = total + (token_losses * mask[start:start + window].reshape(-1)).sum()
    n_tokens = mask.sum()
    objective = total / n_tokens if reduction == "mean" else total
    objective.backward()
    grads = {"embedding.weight": emb.weight.grad, "output.weight": fc.weight.grad,
             "output.bias": fc.bias.grad}
    grads.update({f"rnn.{k}": v.grad for k, v in rnn.named_parameters()})
    return (total / n_tokens).item(), {k: g.numpy() for k, g in grads.items()}


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("window", [1, 2, 3])
def test_truncated_gradient_matches_pytorch_with_detached_windows(cell, reduction, window, rng):
    sentences = _sentences(rng)
    model = _model(cell)
    ref_loss, ref_grads = _torch_truncated(model, sentences, window, reduction)
    trainer, change = _one_step(model, sentences, bptt_truncate=window, reduction=reduction)
    assert abs(trainer.history[-1]["train_loss"] - ref_loss) < 1e-12
    assert trainer.tokens == sum(STEPS)
    for name, grad in ref_grads.items():
        assert_close(-change[name], grad, 1e-10, name)


def test_truncation_changes_the_gradient_but_not_the_loss(rng):
    """The windows' forward values are the untruncated ones; only the gradient is cut."""
    sentences = _sentences(rng)
    full, full_change = _one_step(_model("lstm"), sentences)
    cut, cut_change = _one_step(_model("lstm"), sentences, bptt_truncate=2)
    assert abs(full.history[-1]["train_loss"] - cut.history[-1]["train_loss"]) < 1e-12
    assert relative(cut_change["rnn.weight_hh_l0"], full_change["rnn.weight_hh_l0"]) > 1e-3


def relative(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("window", [max(STEPS), 100])
def test_a_window_as_long_as_the_longest_sentence_is_untruncated_exactly(window, rng):
    sentences = _sentences(rng)
    _, full = _one_step(_model("lstm"), sentences)
    _, cut = _one_step(_model("lstm"), sentences, bptt_truncate=window)
    for name in full:
        np.testing.assert_array_equal(cut[name], full[name])


def test_clipping_applies_once_to_the_accumulated_gradient(rng):
    sentences = _sentences(rng)
    model = _model("lstm")
    _, ref_grads = _torch_truncated(model, sentences, 3, "mean")
    _, change = _one_step(model, sentences, bptt_truncate=3, clip=1e-3)
    norm = np.sqrt(sum(np.sum(g ** 2) for g in ref_grads.values()))
    assert norm > 1e-2
    for name, grad in ref_grads.items():   # torch's clip_grad_norm_: max_norm / (norm + 1e-6)
        assert_close(-change[name], grad * (1e-3 / (norm + 1e-6)), 1e-10, name)


def test_bptt_truncate_errors(rng):
    sentences = _sentences(rng)
    with pytest.raises(ValueError, match="bptt_truncate"):
        _one_step(_model("lstm"), sentences, bptt_truncate=0)
    with pytest.raises(TypeError, match="bptt_truncate"):
        _one_step(_model("lstm"), sentences, bptt_truncate=2.5)
    with pytest.raises(ValueError, match="bptt_truncate is for sentence mode.*seq_len"):
        Trainer(_model("lstm"), rng.integers(0, V, 200), batch_size=2, seq_len=5,
                bptt_truncate=3, max_steps=1)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_truncated_training_on_the_device_matches_the_cpu(cell, rng, monkeypatch):
    """device="cuda" code path (fake CuPy: NumPy memory, CuPy's rules): the carried state's
    rows are dropped on the device, and the run equals the CPU's."""
    import fake_cupy

    fake_cupy.install(monkeypatch)
    sentences = [rng.integers(1, V, n) for n in (9, 4, 7, 2, 8, 6, 5, 3)]
    params = []
    for device in ("cpu", "cuda"):
        model = LanguageModel(V, embed_size=5, hidden_size=6, num_layers=2, cell=cell, seed=3,
                              dropout=0.3, dtype=np.float64, device=device)
        Trainer(model, sentences, batch_size=4, bptt_truncate=2, optimizer="adam", lr=1e-2,
                max_steps=4, progress=False, seed=1).fit()
        params.append({k: p.get() if device == "cuda" else p for k, p in model.params.items()})
    for name, value in params[0].items():
        np.testing.assert_allclose(params[1][name], value, rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("kwargs, name", [
    (dict(schedule="plateau", lr_decay=2.0), "lr_decay"), (dict(schedule="step", lr_decay=-1.0), "lr_decay"),
    (dict(schedule="step", lr_step_epochs=0), "lr_step_epochs")])
def test_schedule_errors_name_the_trainer_argument(kwargs, name, rng):
    with pytest.raises(ValueError, match=f"^{name}: "):
        Trainer(_model("lstm"), rng.integers(0, V, 200), batch_size=2, seq_len=5, max_steps=1,
                **kwargs)
