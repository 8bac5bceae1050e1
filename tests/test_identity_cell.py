"""The linear cell "rnn_identity" (fastrnn.RNN(nonlinearity="identity"), theano_lstm's default
RNN) through the layer, the language model, its files, generation and the CLI. Its gradients
and PyTorch parity are in the cell tables of test_recurrent_gradcheck, test_recurrent_torch,
test_engine, test_functional, test_fuzz, lm/test_lm and lm/test_generation."""
import numpy as np
import pytest

import fastrnn
from fastrnn import CharVocab, LanguageModel
from fastrnn.lm.cli import main
from helpers import cli_error_line


def numpy_linear_rnn(x, params, num_layers, bidirectional, lengths):
    """A hand loop: h_t = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh per layer and direction, each
    sequence walked over its own length (reverse from its last step), zero output past it."""
    T, B, _ = x.shape
    out = x
    for layer in range(num_layers):
        halves = []
        for reverse in ((False, True) if bidirectional else (False,)):
            suffix = f"_l{layer}" + ("_reverse" if reverse else "")
            w_ih, w_hh, b_ih, b_hh = (params[n + suffix] for n in
                                      ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            y = np.zeros((T, B, w_hh.shape[1]))
            for b in range(B):
                h = np.zeros(w_hh.shape[1])
                for t in (reversed(range(lengths[b])) if reverse else range(lengths[b])):
                    h = w_ih @ out[t, b] + b_ih + w_hh @ h + b_hh
                    y[t, b] = h
            halves.append(y)
        out = np.concatenate(halves, axis=2)
    return out


@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
def test_layer_is_the_linear_recurrence(num_layers, bidirectional, rng):
    layer = fastrnn.RNN(3, 5, num_layers=num_layers, nonlinearity="identity",
                        bidirectional=bidirectional, dtype=np.float64, seed=2)
    assert layer.cell.name == "rnn_identity" and layer.nonlinearity == "identity"
    x = rng.normal(scale=3.0, size=(6, 3, 3))
    lengths = np.array([6, 2, 4])
    y, _ = layer.forward(x, lengths=lengths)
    expected = numpy_linear_rnn(x, layer.params, num_layers, bidirectional, lengths)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    # Not tanh or relu: values past +-1 and below 0 come through unchanged.
    assert y.max() > 1 and y.min() < -1


def test_functional_names_and_bad_nonlinearity():
    import fastrnn.functional as F

    assert F.rnn_identity_forward.__name__ == "rnn_identity_forward"
    with pytest.raises(ValueError, match="nonlinearity must be one of .*'identity'"):
        fastrnn.RNN(3, 4, nonlinearity="linear")


def test_language_model_save_load_and_generation_equal_step_by_step_forward(tmp_path, rng):
    vocab = CharVocab.build("abcdefgh\n")
    model = LanguageModel(vocab=vocab, embed_size=5, hidden_size=7, num_layers=2,
                          cell="rnn_identity", dtype=np.float64, seed=4)
    path = tmp_path / "linear.npz"
    model.save(path)
    loaded = LanguageModel.load(path)
    assert loaded.cell.name == "rnn_identity" and loaded.config() == model.config()
    for name, value in model.params.items():
        np.testing.assert_array_equal(loaded.params[name], value)
    x = rng.integers(0, len(vocab), (5, 2))
    np.testing.assert_array_equal(loaded.logits(x)[0], model.logits(x)[0])

    # Greedy generation (compiled loop) equals feeding the model one token at a time.
    prime = np.array([1, 4, 2])
    tokens, lengths = model.generate_ids(prime, 8, greedy=True)
    logits, state = model.logits(prime[:, None])
    expected = []
    for _ in range(8):
        tok = int(np.argmax(logits[-1, 0]))
        expected.append(tok)
        logits, state = model.logits(np.array([[tok]]), state)
    np.testing.assert_array_equal(tokens[0], expected)
    assert lengths[0] == 8


def test_cli_trains_and_samples_the_linear_cell(tmp_path, corpus, capsys):
    out = tmp_path / "model.npz"
    assert main(["train", str(corpus), "--cell", "rnn_identity", "--max-steps", "10",
                 "--eval-every", "5", "--out", str(out), "--embed", "8", "--hidden", "16",
                 "--layers", "1", "--batch", "4", "--seq-len", "16", "--no-progress"]) == 0
    assert LanguageModel.load(out).cell.name == "rnn_identity"
    capsys.readouterr()
    assert main(["sample", str(out), "--prime", "the ", "--length", "20", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("the ")
    line = cli_error_line(capsys, ["train", str(corpus), "--cell", "rnn_linear"])
    assert "rnn_identity" in line
