"""A layer's input given as rows of a table (``index=``): the embedding lookup fused into the
first recurrent layer (fastrnn/_engine/lookup.py).

Both ways the engine runs it, projecting the table's rows (V < T*B) or gathering the tokens'
rows (V >= T*B), are checked against the same layer on ``x = table[index]``, on the compiled
CPU kernels and on the GPU backend's step loop (ReferenceOps), with and without lengths (B
above the packed-batch threshold runs packed), then against finite differences in float64;
then the layers and the language model that use it, and the bad inputs.
"""
import itertools

import numpy as np
import pytest

import fastrnn
from fastrnn import _engine
from fastrnn import functional as F
from fastrnn._cpu import recurrent as _kernels
from fastrnn._engine.reference import ReferenceOps
from fastrnn.lm.model import LanguageModel
from helpers import GATES, assert_close, gradient_check_error

T, I, H = 5, 3, 4
RTOL = 1e-12


def _weights(cell, rng):
    G = GATES[cell]
    return [rng.normal(scale=0.5, size=s) for s in ((G * H, I), (G * H, H), (G * H,), (G * H,))]


def _state(cell, rng, B):
    if cell == "lstm":
        return rng.normal(size=(B, H)), rng.normal(size=(B, H))
    return rng.normal(size=(B, H))


def _flat(state):
    return list(state) if isinstance(state, tuple) else [state]


def _run(ops, cell, x, w, state, lengths, reverse, dy, dstate, index=None):
    y, final, ws = _engine.forward(ops, cell, x, *w, state=state, lengths=lengths,
                                   reverse=reverse, index=index)
    dx, dstate0, grads = _engine.backward(ws, dy, dstate)
    return y, _flat(final), dx, _flat(dstate0), grads, ws


@pytest.mark.parametrize("cell,V,B,lengths,reverse,stand_in", [
    (cell, V, B, lengths, reverse, stand_in)
    for cell, (V, B), lengths, reverse, stand_in in itertools.product(
        GATES, ((7, 5), (7, 12), (80, 12)), (False, True), (False, True), (False, True))])
def test_index_gives_what_the_gathered_rows_give(cell, V, B, lengths, reverse, stand_in, rng):
    """y, the final state, dstate0 and dW/db as on x = table[index]; dx is the table's
    gradient, each token's dx added into its row. V 7 projects the table (fewer rows than
    the T*B tokens), V 80 gathers the tokens' rows; B 12 with lengths runs packed."""
    ops = ReferenceOps(np) if stand_in else _engine.cpu_ops()
    table = rng.normal(size=(V, I))
    index = rng.integers(0, V, size=(T, B))
    w = _weights(cell, rng)
    lens = rng.integers(1, T + 1, size=B) if lengths else None
    state, dstate = _state(cell, rng, B), _state(cell, rng, B)
    dy = rng.normal(size=(T, B, H))
    y, st, dx, ds, grads, _ = _run(ops, cell, table[index], w, state, lens, reverse, dy, dstate)
    y2, st2, dtable, ds2, grads2, ws = _run(ops, cell, table, w, state, lens, reverse, dy,
                                            dstate, index=index)
    assert ws.project_table == (V < T * B)
    assert dtable.shape == (V, I)
    expected = np.zeros((V, I))
    np.add.at(expected, index.reshape(-1), dx.reshape(-1, I))
    assert_close(y2, y, RTOL, "y")
    assert_close(dtable, expected, RTOL, "dtable")
    for a, b in zip(st2 + ds2, st + ds):
        assert_close(a, b, RTOL, "states")
    assert set(grads2) == set(grads)
    for name in grads:
        assert_close(grads2[name], grads[name], RTOL, name)


@pytest.mark.parametrize("cell,V,lengths", [
    (cell, V, lengths) for cell in GATES for V in (6, 80) for lengths in (False, True)])
def test_index_gradients_match_finite_differences(cell, V, lengths, rng):
    """float64 central differences of sum(y dy) + sum(h_T dh) with respect to the table,
    W_ih and b_ih, through the index (B 12: packed with lengths)."""
    B = 12
    table = rng.normal(size=(V, I))
    index = rng.integers(0, V, size=(T, B))
    w = _weights(cell, rng)
    lens = rng.integers(1, T + 1, size=B) if lengths else None
    dy = rng.normal(size=(T, B, H))
    dstate = _state(cell, rng, B)

    def loss():
        y, final, _ = F.recurrent_forward(cell, table, *w, lengths=lens, index=index)
        return np.sum(y * dy) + sum(np.sum(f * d) for f, d in zip(_flat(final), _flat(dstate)))

    _, _, ws = F.recurrent_forward(cell, table, *w, lengths=lens, index=index)
    dtable, _, grads = F.recurrent_backward(ws, dy, dstate)
    for name, array, analytic in (("table", table, dtable), ("w_ih", w[0], grads["weight_ih"]),
                                  ("b_ih", w[2], grads["bias_ih"])):
        err = gradient_check_error(loss, array, analytic, rng)
        assert err < 1e-7, f"{name}: {err:.2e}"


def test_weight_grads_without_an_input_side_leave_dw_ih_alone(rng):
    """The kernel's x None: dW_hh and both biases as with x, dW_ih untouched, no dx."""
    B = 6
    x, w = rng.normal(size=(T, B, I)), _weights("lstm", rng)
    _, _, ws = F.recurrent_forward("lstm", x, *w)
    dy = rng.normal(size=(T, B, H))
    _, _, full = F.recurrent_backward(ws, dy)
    _, _, ws = F.recurrent_forward("lstm", x, *w)
    grads = {k: np.zeros_like(v) for k, v in full.items()}
    grads["weight_ih"][...] = 7.0
    monkey = _engine.cpu_ops()
    original = monkey.weight_grads

    def without_input(kind, reverse, T_, B_, x_, w_ih, h0, y, gates, hn, dgh_first, g, dx):
        original(kind, reverse, T_, B_, None, None, h0, y, gates, hn, dgh_first, g, None)
    try:
        type(monkey).weight_grads = staticmethod(without_input)
        F.recurrent_backward(ws, dy, grads=grads)
    finally:
        type(monkey).weight_grads = staticmethod(original)
    assert np.all(grads["weight_ih"] == 7.0)
    for name in ("weight_hh", "bias_ih", "bias_hh"):
        np.testing.assert_array_equal(grads[name], full[name])


@pytest.mark.parametrize("cell,num_layers,bidirectional,batch_first,stand_in", [
    ("lstm", 2, True, False, False), ("gru", 2, False, True, False),
    ("rnn_tanh", 1, True, True, False), ("lstm", 2, True, True, True),
    ("gru", 1, False, False, True)])
def test_layer_with_index(cell, num_layers, bidirectional, batch_first, stand_in, monkeypatch,
                          rng):
    """RecurrentLayer.forward(table, index=...) against forward(table[index]), stacked,
    bidirectional and batch first, on the CPU kernels and on the GPU backend's loop."""
    if stand_in:
        monkeypatch.setattr(_engine, "cpu_ops", lambda: ReferenceOps(np))
    V, B = 9, 7
    D = 2 if bidirectional else 1

    def make():
        kwargs = dict(num_layers=num_layers, bidirectional=bidirectional, dtype=np.float64,
                      seed=3, batch_first=batch_first)
        if cell.startswith("rnn"):
            return fastrnn.RNN(I, H, nonlinearity=cell[4:], **kwargs)
        return getattr(fastrnn, cell.upper())(I, H, **kwargs)

    table = rng.normal(size=(V, I))
    index = rng.integers(0, V, size=(B, T) if batch_first else (T, B))
    lengths = rng.integers(1, T + 1, size=B)
    dy = rng.normal(size=(B, T, D * H) if batch_first else (T, B, D * H))
    plain, fused = make(), make()
    y, _ = plain.forward(table[index], lengths=lengths)
    dx, _ = plain.backward(dy)
    y2, _ = fused.forward(table, lengths=lengths, index=index)
    dtable, _ = fused.backward(dy)
    expected = np.zeros((V, I))
    np.add.at(expected, index.reshape(-1), dx.reshape(-1, I))
    assert_close(y2, y, RTOL, "y")
    assert_close(dtable, expected, RTOL, "dtable")
    for name in plain.grads:
        assert_close(fused.grads[name], plain.grads[name], RTOL, name)


def _lm(dropout=0.0):
    return LanguageModel(11, 6, 8, 2, dropout=dropout, seed=1, dtype=np.float64)


@pytest.mark.parametrize("T_, B_", [(9, 4), (2, 3)])   # 36 tokens > V 11; 6 < 11
def test_language_model_looks_the_rows_up_in_the_rnn(T_, B_, monkeypatch, rng):
    """Without dropout the model hands the ids and the embedding table to the rnn: the same
    loss and gradients as through the Embedding layer, whose forward is not called."""
    x, y = rng.integers(0, 11, size=(2, T_, B_))
    through_layers = _lm()
    monkeypatch.setattr(through_layers, "_lookup_in_rnn", lambda tokens: False)
    fused = _lm()
    calls = []
    monkeypatch.setattr(fused.embedding, "forward", lambda ids: calls.append(ids))
    results = []
    for model in (through_layers, fused):
        loss, _ = model.forward(x, y)
        model.backward()
        results.append((loss, model.grads))
    assert not calls
    (loss, grads), (loss2, grads2) = results
    assert abs(loss2 - loss) <= 1e-12 * abs(loss)
    for name in grads:
        assert_close(grads2[name], grads[name], RTOL, name)


@pytest.mark.parametrize("T_, B_, looks_up", [(9, 4, True), (2, 3, False)])
def test_one_hot_model_looks_up_the_identity(T_, B_, looks_up, monkeypatch, rng):
    """One-hot inputs are rows of the (V, V) identity: looked up in the rnn while that table
    is no larger than the batch's one-hot vectors (V 11 <= 36 tokens, not 6), with the loss
    and gradients of the OneHot layer's path."""
    x, y = rng.integers(0, 11, size=(2, T_, B_))
    through_layers = LanguageModel(11, None, 8, 2, one_hot=True, seed=1, dtype=np.float64)
    monkeypatch.setattr(through_layers, "_lookup_in_rnn", lambda tokens: False)
    model = LanguageModel(11, None, 8, 2, one_hot=True, seed=1, dtype=np.float64)
    calls = []
    original = model.embedding.forward
    monkeypatch.setattr(model.embedding, "forward", lambda ids: calls.append(1) or original(ids))
    results = []
    for m in (through_layers, model):
        loss, _ = m.forward(x, y)
        m.backward()
        results.append((loss, m.grads))
    assert bool(calls) != looks_up
    (loss, grads), (loss2, grads2) = results
    assert abs(loss2 - loss) <= 1e-12 * abs(loss)
    assert set(grads2) == set(grads) and "embedding.weight" not in grads
    for name in grads:
        assert_close(grads2[name], grads[name], RTOL, name)


def test_language_model_with_dropout_looks_up_in_eval_only(rng):
    """Training with dropout on the embeddings goes through the Embedding and Dropout layers
    (each token's row is masked differently); evaluation, without dropout, looks the rows up
    in the rnn and gives the loss the layers give."""
    x, y = rng.integers(0, 11, size=(2, 9, 4))
    model = _lm(dropout=0.3)
    model.forward(x, y)
    assert model.embedding.num_pending == 1 and model.input_dropout.num_pending == 1
    model.backward()
    assert np.abs(model.grads["embedding.weight"]).sum() > 0
    model.eval()
    assert model._lookup_in_rnn(x.size)
    fused, _ = model.forward(x, y)
    model._lookup_in_rnn = lambda tokens: False
    plain, _ = model.forward(x, y)
    assert abs(fused - plain) <= 1e-12 * abs(plain)


def test_bad_index_is_refused(rng):
    table, w = rng.normal(size=(4, I)), _weights("gru", rng)
    index = rng.integers(0, 4, size=(T, 3))
    cases = [(index + 4, ValueError, r"index must hold token ids in \[0, 4\)"),
             (index.astype(float), TypeError, "index must hold integer"),
             (index.reshape(-1), ValueError, r"index must be \(T, B\)"),
             (index[:, :0], ValueError, r"index must be \(T, B\)")]
    for bad, error, match in cases:
        with pytest.raises(error, match=match):
            F.recurrent_forward("gru", table, *w, index=bad)
    with pytest.raises(ValueError, match="x must be 2-D"):
        F.recurrent_forward("gru", table[index], *w, index=index)
    _, _, ws = F.recurrent_forward("gru", table, *w, index=index)
    with pytest.raises(ValueError, match="dx_out"):
        F.recurrent_backward(ws, np.ones((T, 3, H)), dx_out=np.zeros((T, 3, I)))
    layer = fastrnn.GRU(I, H, dtype=np.float64)
    with pytest.raises(ValueError, match="2-D"):
        layer.forward(table[index], index=index)
    with pytest.raises(ValueError, match="index must be 2-D"):
        layer.forward(table, index=index.reshape(-1))


def _assert_table_args_checked(loop, name, table, index):
    """``loop(table, table_index)`` refuses one without the other, an index per row short,
    an index past the table's 4 rows and a table of the wrong width."""
    with pytest.raises(TypeError, match="together"):
        loop(table, None)
    with pytest.raises(ValueError, match="table_index"):
        loop(table, index[:-1])
    with pytest.raises(ValueError, match=r"table_index must be in \[0, 4\)"):
        loop(table, index + 4)
    with pytest.raises(ValueError, match=f"{name} must have shape"):
        loop(np.zeros((4, table.shape[1] + 1)), index)


def test_forward_loop_checks_its_table_rows(rng):
    """The kernel's table_gates / table_index (the projected table the loop copies each
    row's input from): both or neither, one index per row, each a row of the table."""
    B, G = 3, GATES["lstm"]
    x, w = rng.normal(size=(T, B, I)), _weights("lstm", rng)
    _, _, ws = F.recurrent_forward("lstm", x, *w)
    h, c = np.zeros((B, H)), np.zeros((B, H))
    table = np.zeros((4, G * H))

    def loop(table_gates, table_index):
        _kernels.forward_loop(3, False, T, B, w[1], w[3], h, c, None, ws.gates, None, ws.chist,
                              ws.y, 1, table_gates, table_index)
    index = np.zeros(T * B, np.int64)
    _assert_table_args_checked(loop, "table_gates", table, index)
    with pytest.raises(ValueError, match="table_gates must not share memory with gates"):
        loop(ws.gates[:4], index)   # rows the loop writes while it reads the table
    w[3][...] = 0
    loop(table, index)
    # Every gate's input 0 and the state 0: i, f, o = 1/2, g = 0, so c and h stay 0.
    assert np.all(ws.y == 0)


@pytest.mark.parametrize("B", [3, 12])   # the small-batch columns and the batch slices
def test_backward_loop_checks_its_table_grads(B, rng):
    """The kernel's table_grads / table_index (where each row's x-side gate gradient is
    summed): both or neither, one index per row, each a row of the table; the sums are the
    scatter of dGh's rows."""
    G = GATES["lstm"]
    x, w = rng.normal(size=(T, B, I)), _weights("lstm", rng)
    dy = rng.normal(size=(T, B, H))
    index = rng.integers(0, 4, size=T * B)

    def loop(table_grads, table_index, inside_gates=False):
        _, _, ws = F.recurrent_forward("lstm", x, *w)
        if inside_gates:   # rows the loop reads while it writes the table
            table_grads = ws.gates[:4]
        _kernels.backward_loop(3, False, T, B, w[1], ws.h0, ws.c0, None, ws.gates, None,
                               ws.chist, ws.y, dy.reshape(T * B, H), np.zeros((B, H)),
                               np.zeros((B, H)), np.zeros((B, G * H)), 2, table_grads,
                               table_index)
        return ws.gates
    table = np.full((4, G * H), np.nan)
    _assert_table_args_checked(loop, "table_grads", table, index)
    with pytest.raises(ValueError, match="table_grads must not share memory with gates"):
        loop(None, index, inside_gates=True)
    dgh = loop(table, index)   # overwritten, NaN and all
    expected = np.zeros_like(table)
    np.add.at(expected, index, dgh)
    assert_close(table, expected, RTOL, "table_grads")


@pytest.mark.parametrize("one_hot", [False, True])
def test_language_model_forwards_taking_both_ways_backpropagate_in_order(one_hot, rng):
    """Two forwards, one through the layers (V 11 > 6 tokens with one-hot inputs; for an
    embedding the RNN gathers the rows), one looked up in the RNN (36 tokens), then two
    backwards (last in, first out): each backward takes the way its own forward took, and
    the gradients are those of each forward and backward in turn."""
    xa, ya = rng.integers(0, 11, size=(2, 2, 3))
    xb, yb = rng.integers(0, 11, size=(2, 9, 4))

    def make():
        return LanguageModel(11, None if one_hot else 6, 8, 2, one_hot=one_hot, seed=1,
                             dtype=np.float64)
    reference, model = make(), make()
    for x, y in ((xa, ya), (xb, yb)):
        reference.forward(x, y)
        reference.backward()
    model.forward(xa, ya)
    model.forward(xb, yb)
    model.backward()
    model.backward()
    assert model.num_pending == 0
    for name in reference.grads:
        assert_close(model.grads[name], reference.grads[name], RTOL, name)
