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
