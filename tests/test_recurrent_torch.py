"""Outputs and every gradient against PyTorch's nn.RNN/GRU/LSTM loaded with the same weights
(the linear cell against a PyTorch loop under autograd: tests/torch_linear_rnn.py)."""
import itertools

import numpy as np
import pytest

import fastrnn
from helpers import assert_close

torch = pytest.importorskip("torch")
from torch_linear_rnn import LinearRNN  # noqa: E402

T, B, I, H = 6, 4, 5, 7
LENGTHS = np.array([2, 6, 5, 1])
RTOL = {np.float32: 1e-5, np.float64: 1e-10}
CELLS = ["rnn_tanh", "rnn_relu", "rnn_identity", "gru", "lstm"]


def make_pair(cell, num_layers, bidirectional, dtype, batch_first=False, bias=True):
    tdtype = torch.float32 if dtype == np.float32 else torch.float64
    kwargs = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
                  bias=bias)
    if cell.startswith("rnn"):
        nl = cell[4:]
        reference_class = LinearRNN if nl == "identity" else torch.nn.RNN
        reference = reference_class(I, H, nonlinearity=nl, dtype=tdtype, **kwargs)
        ours = fastrnn.RNN(I, H, nonlinearity=nl, dtype=dtype, **kwargs)
    else:
        reference = getattr(torch.nn, cell.upper())(I, H, dtype=tdtype, **kwargs)
        ours = getattr(fastrnn, cell.upper())(I, H, dtype=dtype, **kwargs)
    ours.load_state_dict({k: v.detach().numpy() for k, v in reference.state_dict().items()})
    return ours, reference


def run_torch(reference, x, state, lengths, dy, dstate, batch_first):
    xt = torch.tensor(x, requires_grad=True)
    is_lstm = isinstance(reference, torch.nn.LSTM)
    st = None
    leaves = []
    if state is not None:
        leaves = [torch.tensor(s, requires_grad=True) for s in (state if is_lstm else (state,))]
        st = tuple(leaves) if is_lstm else leaves[0]
    inp = xt
    if lengths is not None:
        inp = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths), batch_first=batch_first,
                                                      enforce_sorted=False)
    out, final = reference(inp, st)
    if lengths is not None:
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=batch_first,
                                                        total_length=x.shape[1 if batch_first else 0])
    finals = final if is_lstm else (final,)
    loss = (out * torch.tensor(dy)).sum()
    if dstate is not None:
        for f, d in zip(finals, dstate if is_lstm else (dstate,)):
            loss = loss + (f * torch.tensor(d)).sum()
    loss.backward()
    return (out.detach().numpy(), [f.detach().numpy() for f in finals], xt.grad.numpy(),
            [leaf.grad.numpy() for leaf in leaves],
            {k: p.grad.numpy() for k, p in reference.named_parameters()})


def compare(cell, num_layers, bidirectional, with_lengths, with_state, with_dstate, dtype,
            batch_first=False, bias=True, seed=0):
    rng = np.random.default_rng(seed)
    ours, reference = make_pair(cell, num_layers, bidirectional, dtype, batch_first, bias)
    D = 2 if bidirectional else 1
    x = rng.normal(size=(B, T, I) if batch_first else (T, B, I)).astype(dtype)
    lengths = LENGTHS if with_lengths else None
    state_shape = (num_layers * D, B, H)

    def random_state():
        if cell == "lstm":
            return tuple(rng.normal(size=state_shape).astype(dtype) for _ in range(2))
        return rng.normal(size=state_shape).astype(dtype)

    state = random_state() if with_state else None
    dstate = random_state() if with_dstate else None
    dy = rng.normal(size=(B, T, D * H) if batch_first else (T, B, D * H)).astype(dtype)

    y, final = ours.forward(x, state, lengths)
    dx, dstate0 = ours.backward(dy, dstate)
    ref_y, ref_final, ref_dx, ref_dstate0, ref_grads = run_torch(reference, x, state, lengths, dy,
                                                                 dstate, batch_first)
    rtol = RTOL[dtype]
    worst = assert_close(y, ref_y, rtol, "y")
    for k, (ours_f, ref_f) in enumerate(zip(final if cell == "lstm" else (final,), ref_final)):
        worst = max(worst, assert_close(ours_f, ref_f, rtol, f"final state {k}"))
    worst = max(worst, assert_close(dx, ref_dx, rtol, "dx"))
    for k, ref_d in enumerate(ref_dstate0):
        ours_d = dstate0[k] if cell == "lstm" else dstate0
        worst = max(worst, assert_close(ours_d, ref_d, rtol, f"dstate0 {k}"))
    assert set(ours.grads) == set(ref_grads)
    for name, ref_g in ref_grads.items():
        worst = max(worst, assert_close(ours.grads[name], ref_g, rtol, name))
    return worst


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (1, True), (2, False), (2, True)])
@pytest.mark.parametrize("with_lengths,with_state,with_dstate",
                         list(itertools.product([False, True], repeat=3)))
def test_matches_torch(cell, num_layers, bidirectional, with_lengths, with_state, with_dstate, dtype):
    compare(cell, num_layers, bidirectional, with_lengths, with_state, with_dstate, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional,with_lengths", [(False, False), (True, True)])
def test_batch_first_matches_torch(cell, bidirectional, with_lengths, dtype):
    compare(cell, 2, bidirectional, with_lengths, True, True, dtype, batch_first=True)


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_identity", "gru", "lstm"])
def test_without_bias_matches_torch(cell):
    compare(cell, 2, True, True, True, True, np.float64, bias=False)


def test_state_dict_loads_bit_for_bit():
    ours, reference = make_pair("lstm", 2, True, np.float32)
    for name, value in reference.state_dict().items():
        np.testing.assert_array_equal(ours.state_dict()[name], value.numpy())
        assert ours.params[name].dtype == np.float32
