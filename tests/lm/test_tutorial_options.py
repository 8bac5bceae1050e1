"""Issue 12: the classic tutorials' options on LanguageModel and Trainer."""
import numpy as np
import pytest

from fastrnn import LanguageModel


def test_init_std_draws_every_weight_normal_and_zeroes_biases():
    model = LanguageModel(vocab_size=400, embed_size=300, hidden_size=200, num_layers=2,
                          init_std=0.01, dtype=np.float64, seed=3)
    for name, value in model.params.items():
        if "bias" in name:
            assert not value.any(), name
        else:
            assert abs(value.mean()) < 2e-4 and abs(value.std() - 0.01) < 3e-4, name
    again = LanguageModel(vocab_size=400, embed_size=300, hidden_size=200, num_layers=2,
                          init_std=0.01, dtype=np.float64, seed=3)
    for name in model.params:
        np.testing.assert_array_equal(model.params[name], again.params[name])


def test_identity_and_forget_bias_change_only_what_they_name(tmp_path):
    base = LanguageModel(vocab_size=11, embed_size=5, hidden_size=6, num_layers=2, seed=1)
    irnn = LanguageModel(vocab_size=11, embed_size=5, hidden_size=6, num_layers=2, seed=1,
                         recurrent_init="identity", forget_bias=1.0)
    for name, value in irnn.params.items():
        if "weight_hh" in name:
            np.testing.assert_array_equal(value, np.eye(24, 6))
        elif "rnn.bias" in name:
            forget = (np.ones(6) if "bias_ih" in name else np.zeros(6))
            np.testing.assert_array_equal(value[6:12], forget)
            np.testing.assert_array_equal(np.delete(value, range(6, 12)),
                                          np.delete(base.params[name], range(6, 12)))
        else:
            np.testing.assert_array_equal(value, base.params[name])
    path = tmp_path / "m.npz"
    irnn.save(path)
    loaded = LanguageModel.load(path)
    assert loaded.config() == irnn.config()
    assert loaded.config()["forget_bias"] == 1.0 and loaded.config()["recurrent_init"] == "identity"


def test_init_option_errors():
    with pytest.raises(ValueError, match="forget_bias applies to LSTM only"):
        LanguageModel(vocab_size=5, cell="gru", forget_bias=1.0)
    with pytest.raises(ValueError, match="recurrent_init"):
        LanguageModel(vocab_size=5, recurrent_init="orthogonal")
    with pytest.raises(ValueError, match="init_std"):
        LanguageModel(vocab_size=5, init_std=0.0)
    with pytest.raises(ValueError, match="forget_bias"):
        LanguageModel(vocab_size=5, forget_bias=float("nan"))


# ---- loss mask ----------------------------------------------------------------------------

from helpers import assert_model_gradients_match  # noqa: E402


def _fd_model(cell="lstm"):
    return LanguageModel(11, embed_size=5, hidden_size=6, num_layers=2, cell=cell, seed=3,
                         dtype=np.float64)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("kind", ["last_step", "weights"])
def test_mask_gradients_match_finite_differences(cell, kind, rng):
    model = _fd_model(cell)
    x = rng.integers(0, 11, (7, 3))
    y = rng.integers(0, 11, (7, 3))
    lengths = np.array([7, 4, 6])
    if kind == "last_step":   # sequence-to-one: the loss of each sequence's last real step
        mask = np.zeros((7, 3), bool)
        mask[lengths - 1, np.arange(3)] = True
    else:
        mask = rng.uniform(0, 2, (7, 3))
        mask[0, 1] = 0

    def loss():
        return model.forward(x, y, None, lengths, mask=mask)[0]

    assert_model_gradients_match(model, loss, rng)


def test_mask_value_is_the_weighted_mean_of_token_losses(rng):
    model = _fd_model()
    model.eval()
    x = rng.integers(0, 11, (5, 2))
    y = rng.integers(0, 11, (5, 2))
    logits, _ = model.logits(x)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    token_loss = -np.take_along_axis(logp, y[..., None], -1)[..., 0]
    lengths = np.array([5, 3])
    mask = rng.uniform(0, 1, (5, 2))
    weights = mask * (np.arange(5)[:, None] < lengths)
    loss, _ = model.forward(x, y, None, lengths, mask=mask)
    np.testing.assert_allclose(loss, (token_loss * weights).sum() / weights.sum(), rtol=1e-12)
    assert model.loss.n_tokens == 8
    last = np.zeros((5, 2))
    last[-1] = 1
    np.testing.assert_allclose(model.forward(x, y, mask=last)[0], token_loss[-1].mean(), rtol=1e-12)


def test_mask_errors(rng):
    model = _fd_model()
    x = rng.integers(0, 11, (5, 2))
    with pytest.raises(ValueError, match="mask must have the shape"):
        model.forward(x, x, mask=np.ones((5, 3)))
    with pytest.raises(ValueError, match="mask"):
        model.forward(x, x, mask=-np.ones((5, 2)))
    with pytest.raises(ValueError, match="mask"):
        model.forward(x, x, mask=np.full((5, 2), np.nan))


# ---- freezing -----------------------------------------------------------------------------

from fastrnn import optim  # noqa: E402


@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
def test_every_optimizer_leaves_a_frozen_parameter_unchanged(name, rng):
    model = LanguageModel(11, embed_size=6, hidden_size=6, num_layers=1, tie_weights=True,
                          seed=2, dtype=np.float64)
    kwargs = {"lr": 0.1, "weight_decay": 0.01}
    if name in ("sgd", "rmsprop"):
        kwargs["momentum"] = 0.9
    opt = optim.OPTIMIZERS[name](model.params, model.grads, frozen=model.frozen, **kwargs)
    model.freeze("embedding.weight")   # after the optimizer: the set is shared
    before = {k: v.copy() for k, v in model.params.items()}
    x = rng.integers(0, 11, (5, 2))
    for step in range(3):
        model.forward(x, x)
        model.zero_grad()
        model.backward()
        assert model.grads["embedding.weight"].any()   # computed, then ignored
        opt.step()
    for key, value in model.params.items():
        if key == "embedding.weight":
            np.testing.assert_array_equal(value, before[key])
        else:
            assert not np.array_equal(value, before[key]), key
    model.unfreeze("embedding.weight")
    model.forward(x, x)
    model.zero_grad()
    model.backward()
    opt.step()
    assert not np.array_equal(model.params["embedding.weight"], before["embedding.weight"])
    with pytest.raises(KeyError, match="no parameter named"):
        model.freeze("embedding")
    with pytest.raises(KeyError, match="no parameter named"):
        optim.OPTIMIZERS[name](model.params, model.grads, frozen={"nope"}, **kwargs)


def test_trainer_honours_freeze_and_clips_only_trainable(rng):
    from fastrnn import Trainer

    model = LanguageModel(11, embed_size=5, hidden_size=6, num_layers=1, seed=2)
    model.freeze("rnn.weight_hh_l0")
    before = model.params["rnn.weight_hh_l0"].copy()
    trainer = Trainer(model, rng.integers(0, 11, 400), batch_size=4, seq_len=8,
                      optimizer="sgd", lr=0.5, clip=1e-3, max_steps=3, progress=False)
    trainer.fit()
    np.testing.assert_array_equal(model.params["rnn.weight_hh_l0"], before)


# ---- Trainer options ----------------------------------------------------------------------

def _trainer(model, data, **kwargs):
    from fastrnn import Trainer

    defaults = dict(batch_size=4, seq_len=8, optimizer="sgd", lr=1.0, max_steps=1, progress=False)
    return Trainer(model, data, **{**defaults, **kwargs})


def _lm(**kwargs):
    return LanguageModel(11, embed_size=5, hidden_size=6, num_layers=1, seed=2,
                         dtype=np.float64, **kwargs)


def test_optimizer_options_reach_the_optimizer(rng):
    data = rng.integers(0, 11, 300)
    opt = _trainer(_lm(), data, optimizer="adadelta", optimizer_options={"rho": 0.95, "eps": 1e-6}).optimizer
    assert (type(opt).__name__, opt.rho, opt.eps) == ("Adadelta", 0.95, 1e-6)
    assert _trainer(_lm(), data, optimizer="adam", optimizer_options={"betas": [0.8, 0.9]}).optimizer.betas == (0.8, 0.9)
    opt = _trainer(_lm(), data, momentum=0.9, optimizer_options={"nesterov": True}).optimizer
    assert opt.nesterov and opt.momentum == 0.9
    with pytest.raises(ValueError, match="adam takes"):
        _trainer(_lm(), data, optimizer="adam", optimizer_options={"rho": 0.9})
    with pytest.raises(ValueError, match="may not set"):
        _trainer(_lm(), data, optimizer_options={"frozen": ()})


@pytest.mark.parametrize("mode", ["norm", "param_norm", "value"])
def test_clip_modes_bound_the_sgd_step(mode, rng):
    data = rng.integers(0, 11, 300)
    model = _lm()
    before = {k: v.copy() for k, v in model.params.items()}
    _trainer(model, data, clip=1e-3, clip_mode=mode).fit()   # SGD lr 1: step = -clipped grad
    steps = {k: model.params[k] - before[k] for k in before}
    norms = {k: np.linalg.norm(d) for k, d in steps.items()}
    total = np.sqrt(sum(n ** 2 for n in norms.values()))
    if mode == "norm":
        np.testing.assert_allclose(total, 1e-3, rtol=1e-4)   # torch's max_norm / (norm + 1e-6)
    elif mode == "param_norm":
        np.testing.assert_allclose(list(norms.values()), 1e-3, rtol=1e-2)  # each on its own
        assert total > 2e-3
    else:
        biggest = max(np.abs(d).max() for d in steps.values())
        np.testing.assert_allclose(biggest, 1e-3, rtol=1e-9)
        assert total > 1.1e-3   # not a norm clip
    with pytest.raises(ValueError, match="clip_mode"):
        _trainer(_lm(), data, clip_mode="global")


def test_summed_loss_gives_n_tokens_times_the_mean_gradient(rng):
    data = rng.integers(0, 11, 300)
    mean_model, sum_model, start = _lm(), _lm(), _lm()
    _trainer(mean_model, data, clip=None, lr=0.01).fit()
    trainer = _trainer(sum_model, data, clip=None, lr=0.01, reduction="sum")
    trainer.fit()
    n_tokens = trainer.tokens
    assert n_tokens == 32
    for k, v in start.params.items():
        np.testing.assert_allclose(sum_model.params[k] - v, n_tokens * (mean_model.params[k] - v),
                                   rtol=1e-7, atol=1e-14)
    with pytest.raises(ValueError, match="reduction"):
        _trainer(_lm(), data, reduction="none")


def test_no_shuffle_keeps_sentence_order_and_callback_runs_every_step(rng):
    sentences = [rng.integers(0, 11, n) for n in (5, 7, 4, 6, 8, 3)]
    seen = []

    def callback(step, trainer):
        seen.append((step, trainer.optimizer.lr))
        if step == 2:
            trainer.optimizer.lr = 0.5   # change the lr mid-run, as the tutorials do

    trainer = _trainer(_lm(), sentences, batch_size=2, shuffle=False, callback=callback,
                       max_steps=6, optimizer="sgd", lr=0.1)
    batches = []
    original = trainer.train_step
    trainer.train_step = lambda batch: batches.append(batch[0].copy()) or original(batch)
    trainer.fit()
    assert seen == [(1, 0.1), (2, 0.1), (3, 0.5), (4, 0.5), (5, 0.5), (6, 0.5)]
    for i, x in enumerate(batches):   # epoch after epoch, the sentences in their order
        first = sentences[(2 * i) % 6]
        np.testing.assert_array_equal(x[:len(first) - 1, 0], first[:-1])
    trainer.max_steps = 8             # continue the run with more steps
    trainer.fit()
    assert trainer.step == 8 and seen[-1][0] == 8
    with pytest.raises(TypeError, match="callback"):
        _trainer(_lm(), sentences, callback=3)
