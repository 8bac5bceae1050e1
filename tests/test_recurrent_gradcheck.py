"""Every cell's BPTT against central finite differences, in float64."""
import itertools

import numpy as np
import pytest

import fastrnn
from helpers import _state_arrays, gradient_check_error, recurrent_layer_gradient_errors

LAYERS = {"rnn_tanh": lambda **k: fastrnn.RNN(nonlinearity="tanh", **k),
          "rnn_relu": lambda **k: fastrnn.RNN(nonlinearity="relu", **k),
          "rnn_identity": lambda **k: fastrnn.RNN(nonlinearity="identity", **k),
          "gru": lambda **k: fastrnn.GRU(**k),
          "lstm": lambda **k: fastrnn.LSTM(**k)}
T, B, I, H = 5, 3, 3, 4
LENGTHS = np.array([3, 5, 1])


def _random_state(layer, rng):
    shape = (layer.num_layers * layer.num_directions, B, H)
    if layer.cell.has_cell_state:
        return rng.normal(size=shape), rng.normal(size=shape)
    return rng.normal(size=shape)


@pytest.mark.parametrize("cell", list(LAYERS))
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (1, True), (2, False), (2, True)])
@pytest.mark.parametrize("with_lengths,with_state,with_dstate",
                         [c for c in itertools.product([False, True], repeat=3)])
def test_gradients_match_finite_differences(cell, num_layers, bidirectional, with_lengths,
                                            with_state, with_dstate):
    rng = np.random.default_rng(7)
    layer = LAYERS[cell](input_size=I, hidden_size=H, num_layers=num_layers,
                         bidirectional=bidirectional, dtype=np.float64, seed=3)
    x = rng.normal(size=(T, B, I))
    lengths = LENGTHS if with_lengths else None
    state = _random_state(layer, rng) if with_state else None
    dy = rng.normal(size=(T, B, layer.num_directions * H))
    dstate = _random_state(layer, rng) if with_dstate else None

    errors, dx = recurrent_layer_gradient_errors(layer, x, state, lengths, dy, dstate, rng)
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-6, f"{worst}: relative error {errors[worst]:.2e}"
    # Padded outputs carry no gradient into the inputs past each length.
    if with_lengths:
        for b, n in enumerate(LENGTHS):
            assert np.all(dx[n:, b] == 0)


@pytest.mark.parametrize("cell", list(LAYERS))
def test_dropout_gradients_match_finite_differences(cell):
    rng = np.random.default_rng(11)
    layer = LAYERS[cell](input_size=I, hidden_size=H, num_layers=3, dropout=0.4,
                         dtype=np.float64, seed=5)
    x = rng.normal(size=(T, B, I))
    dy = rng.normal(size=(T, B, H))
    rng_state = layer.rng_state()

    def loss():
        layer.set_rng_state(rng_state)   # the same dropout masks on every evaluation
        y, _ = layer.forward(x)
        return np.sum(y * dy)

    loss()
    dx, _ = layer.backward(dy)
    assert gradient_check_error(loss, x, dx, rng, samples=20) < 1e-6
    name = "weight_ih_l1"
    layer.zero_grad()
    loss()
    layer.backward(dy)
    assert gradient_check_error(loss, layer.params[name], layer.grads[name], rng) < 1e-6


def _backward_wanted_and_not(layer, x, state, lengths, dy, dstate, flag):
    """Forward + backward of ``layer`` with the backward keyword ``flag`` True, then False:
    [(dx, dstate0, grads)] * 2, after checking that every parameter gradient has the same
    bits both ways."""
    runs = []
    for wanted in (True, False):
        layer.zero_grad()
        layer.forward(x, state, lengths=lengths)
        dx, dstate0 = layer.backward(dy, dstate, **{flag: wanted})
        runs.append((dx, dstate0, {k: v.copy() for k, v in layer.grads.items()}))
    (_, _, g1), (_, _, g2) = runs
    assert set(g1) == set(g2)
    for name in g1:
        np.testing.assert_array_equal(g2[name], g1[name])
    return runs


@pytest.mark.parametrize("cell", list(LAYERS))
@pytest.mark.parametrize("with_lengths", [False, True])
def test_layer_backward_without_the_initial_state_gradient(cell, with_lengths):
    """RecurrentLayer.backward(..., state0_grad=False), stacked and bidirectional: dstate0 is
    None, dx and every parameter gradient the bits of the full backward."""
    rng = np.random.default_rng(8)
    layer = LAYERS[cell](input_size=I, hidden_size=H, num_layers=2, bidirectional=True,
                         dtype=np.float64, seed=3)
    x = rng.normal(size=(T, B, I))
    lengths = LENGTHS if with_lengths else None
    state, dstate = _random_state(layer, rng), _random_state(layer, rng)
    dy = rng.normal(size=(T, B, 2 * H))
    (dx1, ds1, g1), (dx2, ds2, g2) = _backward_wanted_and_not(
        layer, x, state, lengths, dy, dstate, "state0_grad")
    assert ds1 is not None and ds2 is None
    np.testing.assert_array_equal(dx2, dx1)


@pytest.mark.parametrize("cell", list(LAYERS))
@pytest.mark.parametrize("with_lengths, batch_first", [(False, False), (True, True)])
def test_layer_backward_without_the_input_gradient(cell, with_lengths, batch_first, monkeypatch):
    """RecurrentLayer.backward(..., input_grad=False), stacked and bidirectional: dx is None,
    dstate0 and every parameter gradient the bits of the full backward, and only the first
    layer is told to skip its dx (the second's is the first's output gradient)."""
    from fastrnn import functional as F
    rng = np.random.default_rng(9)
    layer = LAYERS[cell](input_size=I, hidden_size=H, num_layers=2, bidirectional=True,
                         batch_first=batch_first, dtype=np.float64, seed=3)
    x = rng.normal(size=(B, T, I) if batch_first else (T, B, I))
    lengths = LENGTHS if with_lengths else None
    state, dstate = _random_state(layer, rng), _random_state(layer, rng)
    dy = rng.normal(size=x.shape[:2] + (2 * H,))
    told = []
    backward = F.recurrent_backward

    def spy(*args, input_grad=True, **kwargs):
        told.append(input_grad)
        return backward(*args, input_grad=input_grad, **kwargs)
    monkeypatch.setattr(F, "recurrent_backward", spy)
    (dx1, ds1, _), (dx2, ds2, _) = _backward_wanted_and_not(
        layer, x, state, lengths, dy, dstate, "input_grad")
    assert dx1.shape == x.shape and dx2 is None
    for a, b in zip(_state_arrays(ds2), _state_arrays(ds1)):
        np.testing.assert_array_equal(a, b)
    assert told == [True] * 4 + [True] * 2 + [False] * 2   # top layer first, 2 directions
