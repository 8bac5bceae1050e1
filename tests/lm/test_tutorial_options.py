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

from helpers import gradient_check_error  # noqa: E402


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

    loss()
    model.zero_grad()
    model.backward()
    analytic = {k: g.copy() for k, g in model.grads.items()}
    for name, param in model.params.items():
        err = gradient_check_error(loss, param, analytic[name], rng)
        assert err < 1e-6, f"{name}: {err:.2e}"


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
