"""Trainer(loss_on="last") and model.evaluate(loss_on="last"): sequence-to-one training, the
loss on each sentence's last predicted token only; and trainer.last_loss."""
import numpy as np
import pytest

from fastrnn import LanguageModel, Trainer

from helpers import gradient_check_error

V = 11
STEPS = (7, 3, 5, 1, 6)   # predicted tokens per sentence (the sentences have one id more)


def _sentences(rng):
    return [rng.integers(1, V, n + 1) for n in STEPS]


def _model(cell="lstm"):
    return LanguageModel(V, embed_size=5, hidden_size=6, num_layers=2, cell=cell, seed=3,
                         dtype=np.float64)


def _last_token_losses(model, sentences):
    """Each sentence's -log p(last id | the ones before), by hand: the sentence alone from
    a zero state, softmax of the last step's logits in NumPy."""
    was_training = model.training
    model.eval()
    losses = []
    for s in sentences:
        logits, _ = model.logits(s[:-1, None])
        last = np.asarray(logits)[-1, 0]
        losses.append(np.log(np.exp(last - last.max()).sum()) + last.max() - last[s[-1]])
    model.train(was_training)
    return np.array(losses)


def _one_step(model, sentences, **kwargs):
    """One SGD step with lr 1, no clipping, on a single batch of all ``sentences`` in order;
    returns the trainer and each parameter's change (minus the gradient)."""
    before = {k: v.copy() for k, v in model.params.items()}
    settings = dict(batch_size=len(sentences), shuffle=False, optimizer="sgd", lr=1.0,
                    clip=None, max_steps=1, progress=False, loss_on="last")
    trainer = Trainer(model, sentences, **{**settings, **kwargs})
    trainer.fit()
    return trainer, {k: model.params[k] - before[k] for k in before}


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("window", [None, 2, 3])
def test_step_gradient_matches_finite_differences_of_the_last_token_losses(
        cell, reduction, window, rng):
    """The update is minus the gradient of the mean (or sum) over sentences of each one's
    last-token loss, by float64 central differences of that objective computed by hand.
    With bptt_truncate (a cut gradient, see the next tests) the loss value is still exact."""
    sentences = _sentences(rng)
    model = _model(cell)
    start = {k: v.copy() for k, v in model.params.items()}

    def objective():
        losses = _last_token_losses(model, sentences)
        return losses.mean() if reduction == "mean" else losses.sum()

    expected_loss = _last_token_losses(model, sentences).mean()
    trainer, change = _one_step(model, sentences, reduction=reduction, bptt_truncate=window)
    assert trainer.last_loss == pytest.approx(expected_loss, rel=1e-12)
    assert trainer.history[-1]["train_loss"] == pytest.approx(expected_loss, rel=1e-12)
    if window is not None:
        return
    model.load_state_dict(start)
    for name, param in model.params.items():
        err = gradient_check_error(objective, param, -change[name], rng)
        assert err < 1e-6, f"{name}: {err:.2e}"


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_step_equals_forward_with_the_last_step_mask_by_hand(reduction, rng):
    sentences = _sentences(rng)
    model = _model()
    start = {k: v.copy() for k, v in model.params.items()}
    T = max(STEPS)
    x = np.zeros((T, len(STEPS)), np.int64)
    y = np.zeros_like(x)
    for b, s in enumerate(sentences):
        x[:len(s) - 1, b], y[:len(s) - 1, b] = s[:-1], s[1:]
    lengths = np.array(STEPS)
    mask = np.zeros((T, len(STEPS)))
    mask[lengths - 1, np.arange(len(STEPS))] = 1.0
    loss, _ = model.forward(x, y, None, lengths, mask=mask)
    model.zero_grad()
    model.backward(len(STEPS) if reduction == "sum" else 1.0)
    by_hand = {k: g.copy() for k, g in model.grads.items()}
    model.load_state_dict(start)
    trainer, change = _one_step(model, sentences, reduction=reduction)
    assert trainer.last_loss == pytest.approx(loss, rel=1e-12)
    for name, grad in by_hand.items():
        np.testing.assert_allclose(-change[name], grad, rtol=1e-10, atol=1e-14, err_msg=name)


def test_truncated_windows_see_the_last_token_only(rng):
    """With bptt_truncate the last token's gradient flows back to the start of its window:
    equal to the gradient of the last window alone run from the carried (constant) state."""
    sentences = [rng.integers(1, V, 8)]   # 7 predicted tokens; K = 3: windows 0-2, 3-5, 6
    model = _model()
    start = {k: v.copy() for k, v in model.params.items()}
    s = sentences[0]
    model.eval()
    _, state = model.logits(s[:6, None])   # the state entering the last window
    model.train()
    loss, _ = model.forward(s[6:7, None], s[7:8, None], state)
    model.zero_grad()
    model.backward()
    by_hand = {k: g.copy() for k, g in model.grads.items()}
    model.load_state_dict(start)
    trainer, change = _one_step(model, sentences, bptt_truncate=3)
    assert trainer.last_loss == pytest.approx(loss, rel=1e-12)
    for name, grad in by_hand.items():
        np.testing.assert_allclose(-change[name], grad, rtol=1e-10, atol=1e-14, err_msg=name)


def test_evaluate_last_is_the_mean_of_the_last_token_losses(rng):
    sentences = _sentences(rng) + [np.array([3])]   # a 1-id sentence predicts nothing
    model = _model()
    expected = _last_token_losses(model, sentences[:-1]).mean()
    for batch_size in (1, 2, 16):
        assert model.evaluate(sentences, batch_size=batch_size, loss_on="last") == \
            pytest.approx(expected, rel=1e-12)
    assert model.evaluate(sentences, loss_on="all") == pytest.approx(model.evaluate(sentences))


def test_validation_uses_the_last_token_rule(rng):
    sentences = _sentences(rng)
    model = _model()
    trainer = Trainer(model, sentences, sentences[:3], batch_size=2, loss_on="last", max_steps=2,
                      shuffle=False, progress=False)
    history = trainer.fit()
    assert history[-1]["val_loss"] == pytest.approx(
        _last_token_losses(model, sentences[:3]).mean(), rel=1e-12)
    assert trainer.tokens == sum(STEPS[:4])   # tokens read, not the 4 counted in the loss


def test_last_loss_is_each_steps_loss(rng):
    sentences = _sentences(rng)
    seen = []
    trainer = Trainer(_model(), sentences, batch_size=2, max_steps=4, progress=False,
                      callback=lambda step, t: seen.append((step, t.last_loss)))
    assert trainer.last_loss is None
    returned = []
    original = trainer.train_step
    trainer.train_step = lambda batch: returned.append(original(batch)) or returned[-1]
    trainer.fit()
    assert [s for s, _ in seen] == [1, 2, 3, 4]
    assert [loss for _, loss in seen] == returned


def test_loss_on_errors(rng):
    sentences = _sentences(rng)
    model = _model()
    with pytest.raises(ValueError, match="loss_on must be one of"):
        Trainer(model, sentences, loss_on="first", max_steps=1)
    with pytest.raises(ValueError, match="loss_on='last' is for sentence mode"):
        Trainer(model, np.concatenate(sentences), batch_size=2, seq_len=4, loss_on="last",
                max_steps=1)
    with pytest.raises(ValueError, match="val_ids must be a list of sentences with loss_on='last'"):
        Trainer(model, sentences, np.concatenate(sentences), loss_on="last", max_steps=1)
    with pytest.raises(ValueError, match="loss_on='last' is not supported with distributed"):
        Trainer(model, sentences, loss_on="last", max_steps=1, distributed="mpi")
    with pytest.raises(ValueError, match="loss_on must be one of"):
        model.evaluate(sentences, loss_on="middle")
    with pytest.raises(ValueError, match="loss_on='last' needs ids as a list of sentences"):
        model.evaluate(np.concatenate(sentences), loss_on="last")
