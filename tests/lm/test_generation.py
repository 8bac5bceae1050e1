"""Compiled generation loop: greedy against NumPy and PyTorch references, sampling
statistics and reproducibility, top-k / top-p / banned ids / stop tokens, validation."""
import numpy as np
import pytest

import fastrnn
from fastrnn.lm.generation import _generate_tokens, generate_tokens
from helpers import GATES

CELLS = ["lstm", "gru", "rnn_tanh", "rnn_relu", "rnn_identity"]


def make_model(cell, V=11, E=6, H=20, L=2, dtype=np.float64, seed=0, bias=True, scale=0.6):
    rng = np.random.default_rng(seed)
    G = GATES[cell]
    layers = []
    for l in range(L):
        i = E if l == 0 else H
        layers.append((
            (rng.standard_normal((G * H, i)) * scale).astype(dtype),
            (rng.standard_normal((G * H, H)) * scale).astype(dtype),
            (rng.standard_normal(G * H) * 0.3).astype(dtype) if bias else None,
            (rng.standard_normal(G * H) * 0.3).astype(dtype) if bias else None))
    emb = rng.standard_normal((V, E)).astype(dtype)
    out_w = (rng.standard_normal((V, H)) * 1.5).astype(dtype)
    out_b = (rng.standard_normal(V) * 0.5).astype(dtype)
    return layers, emb, out_w, out_b


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def np_step(cell, layers, x, h, c):
    """One step of the stacked cell in NumPy (float64). x (B, E); h, c (L, B, H), updated."""
    inp = x
    for l, (w_ih, w_hh, b_ih, b_hh) in enumerate(layers):
        H = w_hh.shape[1]
        b_ih = 0 if b_ih is None else b_ih
        b_hh = 0 if b_hh is None else b_hh
        gi = inp @ w_ih.T + b_ih
        gh = h[l] @ w_hh.T + b_hh
        if cell == "lstm":
            a = gi + gh
            i, f, g, o = (sigmoid(a[:, :H]), sigmoid(a[:, H:2 * H]), np.tanh(a[:, 2 * H:3 * H]),
                          sigmoid(a[:, 3 * H:]))
            c[l] = f * c[l] + i * g
            h[l] = o * np.tanh(c[l])
        elif cell == "gru":
            r = sigmoid(gi[:, :H] + gh[:, :H])
            z = sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
            n = np.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
            h[l] = (1 - z) * n + z * h[l]
        else:
            a = gi + gh
            h[l] = {"rnn_tanh": np.tanh, "rnn_relu": lambda v: np.maximum(v, 0),
                    "rnn_identity": lambda v: v}[cell](a)
        inp = h[l]


def np_greedy(cell, layers, emb, out_w, out_b, prime, n_tokens, h0=None, c0=None, stop_id=None):
    """Reference greedy loop, row by row. Returns tokens, lengths, h, c like the kernel."""
    layers = [tuple(None if a is None else np.asarray(a, np.float64) for a in lay) for lay in layers]
    emb, out_w, out_b = (np.asarray(a, np.float64) for a in (emb, out_w, out_b))
    B, P = prime.shape
    L, H = len(layers), layers[0][1].shape[1]
    tokens = np.full((B, n_tokens), -1, np.int64)
    lengths = np.zeros(B, np.int64)
    h_out = np.zeros((L, B, H))
    c_out = np.zeros((L, B, H))
    for b in range(B):
        h = np.zeros((L, 1, H)) if h0 is None else np.array(h0[:, b:b + 1], np.float64)
        c = np.zeros((L, 1, H)) if c0 is None else np.array(c0[:, b:b + 1], np.float64)
        for p in range(P):
            np_step(cell, layers, emb[prime[b, p]][None], h, c)
        for t in range(n_tokens):
            tok = int(np.argmax(h[-1, 0] @ out_w.T + out_b))
            tokens[b, t] = tok
            lengths[b] = t + 1
            if tok == stop_id or t == n_tokens - 1:
                break
            np_step(cell, layers, emb[tok][None], h, c)
        h_out[:, b] = h[:, 0]
        c_out[:, b] = c[:, 0]
    return tokens, lengths, h_out, c_out


def run(cell, model, prime, n, **kw):
    layers, emb, out_w, out_b = model
    return _generate_tokens(cell, layers, emb, out_w, out_b, prime, n, **kw)


@pytest.fixture(autouse=True)
def _restore_threads():
    yield
    fastrnn.set_num_threads(None)


# ---------------------------------------------------------------------------------------------
# Greedy against references
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("L", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_greedy_matches_numpy_reference(cell, L, dtype):
    model = make_model(cell, L=L, dtype=dtype, seed=L)
    rng = np.random.default_rng(5)
    B, P, N = 3, 4, 12
    prime = rng.integers(0, 11, (B, P))
    H = 20
    h0 = (rng.standard_normal((L, B, H)) * 0.5).astype(dtype)
    c0 = (rng.standard_normal((L, B, H)) * 0.5).astype(dtype)
    state = (h0, c0) if cell == "lstm" else h0
    ref_tok, ref_len, ref_h, ref_c = np_greedy(cell, *model, prime, N, h0=h0,
                                               c0=c0 if cell == "lstm" else None)
    # Relative to the state's scale: the linear cell's states grow large (~1e6 here).
    tol = (1e-10 if dtype == np.float64 else 2e-5) * max(1.0, np.abs(ref_h).max())
    rtol = 0
    for split in ("rows", "batch"):
        for table in (True, False):
            tokens, lengths, st = run(cell, model, prime, N, state=state, greedy=True,
                                      split=split, layer0_table=table)
            assert tokens.dtype == np.int64 and tokens.shape == (B, N)
            np.testing.assert_array_equal(tokens, ref_tok)
            np.testing.assert_array_equal(lengths, [N] * B)
            h = st[0] if cell == "lstm" else st
            assert h.dtype == dtype and h.shape == (L, B, H)
            np.testing.assert_allclose(h, ref_h, atol=tol, rtol=rtol)
            if cell == "lstm":
                np.testing.assert_allclose(st[1], ref_c, atol=tol, rtol=rtol)
    # the input state is not modified
    np.testing.assert_array_equal(h0, state[0] if cell == "lstm" else state)


def test_greedy_without_biases_and_large_hidden():
    # H = 70 is not a multiple of the 16-unit blocks the threads split.
    model = make_model("lstm", H=70, V=9, bias=False, seed=3, scale=0.3)
    model = (model[0], model[1], model[2], None)
    layers, emb, out_w, _ = model
    prime = np.array([[1, 2, 3], [4, 5, 6]])
    ref_tok, _, ref_h, ref_c = np_greedy("lstm", layers, emb, out_w, np.zeros(9), prime, 15)
    fastrnn.set_num_threads(2)
    for split in ("rows", "batch"):
        tokens, lengths, (h, c) = run("lstm", model, prime, 15, greedy=True, split=split)
        np.testing.assert_array_equal(tokens, ref_tok)
        np.testing.assert_allclose(h, ref_h, atol=1e-10)
        np.testing.assert_allclose(c, ref_c, atol=1e-10)


@pytest.mark.parametrize("cell", CELLS)
def test_greedy_matches_torch(cell):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    V, E, H, L = 13, 7, 24, 2
    from torch_linear_rnn import LinearRNN   # torch.nn.RNN has no linear cell
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU,
           "rnn_identity": LinearRNN}.get(cell, torch.nn.RNN)
    kwargs = {"nonlinearity": cell[4:]} if cell.startswith("rnn") else {}
    rnn = cls(E, H, L, **kwargs).double()
    emb = torch.nn.Embedding(V, E).double()
    fc = torch.nn.Linear(H, V).double()
    with torch.no_grad():
        fc.weight.mul_(4)
    layers = [tuple(getattr(rnn, f"{n}_l{l}").detach().numpy() for n in
                    ("weight_ih", "weight_hh", "bias_ih", "bias_hh")) for l in range(L)]
    B, P, N = 4, 3, 10
    prime = np.random.default_rng(1).integers(0, V, (B, P))
    tokens, lengths, st = generate_tokens(cell, layers, emb.weight.detach().numpy(),
                                          fc.weight.detach().numpy(), fc.bias.detach().numpy(),
                                          prime, N, greedy=True)
    with torch.no_grad():
        out, s = rnn(emb(torch.tensor(prime).T))
        seq = []
        for t in range(N):
            tok = fc(out[-1]).argmax(-1)
            seq.append(tok)
            if t < N - 1:
                out, s = rnn(emb(tok)[None], s)
    np.testing.assert_array_equal(tokens, torch.stack(seq, 1).numpy())
    if cell == "lstm":
        np.testing.assert_allclose(st[0], s[0].numpy(), atol=1e-10)
        np.testing.assert_allclose(st[1], s[1].numpy(), atol=1e-10)
    else:
        np.testing.assert_allclose(st, s.numpy(), atol=1e-10)


def test_final_state_continues_generation():
    model = make_model("gru", seed=7)
    prime = np.array([[3, 1], [0, 2]])
    full, _, st_full = run("gru", model, prime, 12, greedy=True)
    first, _, st = run("gru", model, prime, 5, greedy=True)
    rest, _, st2 = run("gru", model, first[:, -1:], 7, state=st, greedy=True)
    np.testing.assert_array_equal(np.concatenate([first, rest], 1), full)
    np.testing.assert_allclose(st2, st_full, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------

def test_seed_reproducible_and_thread_independent():
    model = make_model("lstm", H=40, seed=2, dtype=np.float32)
    prime = np.zeros((6, 2), np.int64)
    kw = dict(temperature=1.3, seed=123)
    fastrnn.set_num_threads(1)
    a, la, _ = run("lstm", model, prime, 40, **kw)
    b, lb, _ = run("lstm", model, prime, 40, **kw)
    np.testing.assert_array_equal(a, b)
    fastrnn.set_num_threads(2)
    for split in ("rows", "batch", None):
        c, _, _ = run("lstm", model, prime, 40, split=split, **kw)
        np.testing.assert_array_equal(a, c)
    d, _, _ = run("lstm", model, prime, 40, temperature=1.3, seed=124)
    assert not np.array_equal(a, d)
    # same prime, different uniforms per row: rows differ
    assert len({tuple(r) for r in a}) > 1


def _fixed_logits_model(logits, V):
    """A 1-layer RNN whose output logits are ``logits`` whatever the input: zero recurrent
    weights, so h = tanh(b) is constant; out_weight = 0, out_bias = logits."""
    H = 2
    layers = [(np.zeros((H, 3)), np.zeros((H, H)), np.full(H, 0.5), None)]
    return layers, np.ones((V, 3)), np.zeros((V, H)), np.asarray(logits, np.float64)


def _counts(logits, n=6000, **kw):
    V = len(logits)
    layers, emb, w, b = _fixed_logits_model(logits, V)
    tokens, _, _ = generate_tokens("rnn_tanh", layers, emb, w, b, np.zeros((n // 20, 1), np.int64),
                                   20, **kw)
    return np.bincount(tokens.ravel(), minlength=V), tokens


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_empirical_frequencies_match_softmax(temperature):
    logits = np.array([1.0, 0.0, -0.5, 2.0, 0.3, -2.0])
    counts, _ = _counts(logits, n=20000, temperature=temperature, seed=9)
    z = logits / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    expected = p * counts.sum()
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 25, (counts, expected)     # 5 dof: p(chi2 > 25) ~ 1e-4
    # and it is not uniform / not the untempered distribution when T != 1
    if temperature != 1.0:
        p1 = np.exp(logits - logits.max())
        p1 /= p1.sum()
        e1 = p1 * counts.sum()
        assert ((counts - e1) ** 2 / e1).sum() > 100


def test_top_k_one_equals_greedy_and_top_k_restricts():
    model = make_model("lstm", seed=4)
    prime = np.random.default_rng(0).integers(0, 11, (5, 3))
    g, _, gs = run("lstm", model, prime, 15, greedy=True)
    k1, _, ks = run("lstm", model, prime, 15, top_k=1, temperature=3.0, seed=1)
    np.testing.assert_array_equal(g, k1)
    np.testing.assert_allclose(ks[0], gs[0], atol=1e-12)
    logits = np.array([0.1, 3.0, -1.0, 2.5, 0.0, 2.0, -3.0, 1.0])
    counts, _ = _counts(logits, n=8000, top_k=3, temperature=4.0, seed=2)
    assert set(np.nonzero(counts)[0]) == {1, 3, 5}
    p = np.exp(logits[[1, 3, 5]] / 4.0)
    p /= p.sum()
    np.testing.assert_allclose(counts[[1, 3, 5]] / counts.sum(), p, atol=0.03)


def test_top_p_restricts_to_nucleus():
    logits = np.log(np.array([0.05, 0.4, 0.1, 0.3, 0.15]))
    # sorted: 0.4, 0.3, 0.15, 0.1, 0.05 -> reaching 0.8 needs {1, 3, 4}
    counts, _ = _counts(logits, n=8000, top_p=0.8, seed=3)
    assert set(np.nonzero(counts)[0]) == {1, 3, 4}
    np.testing.assert_allclose(counts[[1, 3, 4]] / counts.sum(),
                               np.array([0.4, 0.3, 0.15]) / 0.85, atol=0.03)
    counts, _ = _counts(logits, n=2000, top_p=0.39, seed=3)
    assert set(np.nonzero(counts)[0]) == {1}
    # top-k then top-p on the renormalised top-k mass: top-2 {0.4, 0.3}; 0.6 of 0.7 needs both
    counts, _ = _counts(logits, n=4000, top_k=2, top_p=0.6, seed=3)
    assert set(np.nonzero(counts)[0]) == {1, 3}


def test_banned_ids_never_emitted():
    logits = np.array([5.0, 4.0, 0.0, 0.0, -1.0])
    counts, _ = _counts(logits, n=4000, banned_ids=[0, 1], seed=5)
    assert counts[0] == 0 and counts[1] == 0 and counts[2:].sum() == 4000
    model = make_model("gru", seed=6)
    prime = np.zeros((4, 2), np.int64)
    g, _, _ = run("gru", model, prime, 20, greedy=True)
    top = np.bincount(g.ravel()).argmax()
    g2, _, _ = run("gru", model, prime, 20, greedy=True, banned_ids=[top])
    assert top not in g2
    s, _, _ = run("gru", model, prime, 20, seed=1, banned_ids=np.array([top, 3]), top_k=2)
    assert top not in s and 3 not in s


def test_stop_id_stops_rows_independently():
    model = make_model("lstm", V=6, seed=8, dtype=np.float64)
    B, N = 64, 30
    prime = np.random.default_rng(3).integers(0, 6, (B, 2))
    for split in ("rows", "batch"):
        fastrnn.set_num_threads(2)
        tokens, lengths, (h, c) = run("lstm", model, prime, N, seed=11, temperature=2.0,
                                      stop_id=2, split=split)
        free, _, _ = run("lstm", model, prime, N, seed=11, temperature=2.0, split=split)
        assert len(set(lengths.tolist())) > 2    # rows stop at different steps
        for b in range(B):
            n = lengths[b]
            stops = np.nonzero(free[b] == 2)[0]
            expected_len = stops[0] + 1 if len(stops) else N
            assert n == expected_len
            np.testing.assert_array_equal(tokens[b, :n], free[b, :n])
            assert (tokens[b, n:] == -1).all()
            assert (tokens[b, :n - 1] != 2).all()
        # final state = state after prime + tokens[:length - 1]: replay greedily-forced
        layers, emb, out_w, out_b = model
        for b in (0, int(np.argmin(lengths))):
            seq = np.concatenate([prime[b], tokens[b, :lengths[b] - 1]])
            hr = np.zeros((2, 1, 20))
            cr = np.zeros((2, 1, 20))
            for tok in seq:
                np_step("lstm", layers, emb[tok][None], hr, cr)
            np.testing.assert_allclose(h[:, b], hr[:, 0], atol=1e-10)
            np.testing.assert_allclose(c[:, b], cr[:, 0], atol=1e-10)


def test_greedy_stop_matches_reference():
    model = make_model("rnn_tanh", V=5, seed=12)
    prime = np.random.default_rng(4).integers(0, 5, (8, 3))
    ref_tok, ref_len, ref_h, _ = np_greedy("rnn_tanh", *model, prime, 10, stop_id=1)
    tokens, lengths, h = run("rnn_tanh", model, prime, 10, greedy=True, stop_id=1)
    np.testing.assert_array_equal(tokens, ref_tok)
    np.testing.assert_array_equal(lengths, ref_len)
    np.testing.assert_allclose(h, ref_h, atol=1e-10)


def test_batch_rows_with_same_prime_differ():
    model = make_model("gru", seed=13, dtype=np.float32)
    tokens, _, _ = run("gru", model, np.full((16, 3), 4), 25, seed=0, temperature=1.5)
    assert len({tuple(r) for r in tokens}) > 8


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------

def _args(cell="lstm", dtype=np.float64):
    layers, emb, out_w, out_b = make_model(cell, dtype=dtype)
    return dict(cell=cell, layers=layers, embedding=emb, out_weight=out_w, out_bias=out_b,
                prime=np.zeros((2, 3), np.int64), n_tokens=4)


def _replace_layer(layers, l, i, value):
    layers = [list(x) for x in layers]
    layers[l][i] = value
    return [tuple(x) for x in layers]


@pytest.mark.parametrize("change, exc, match", [
    (dict(cell="transformer"), ValueError, "cell must be one of"),
    (dict(layers=[]), ValueError, "layers must be a non-empty"),
    (dict(layers="abc"), ValueError, "layers must be a non-empty"),
    (dict(embedding=None), ValueError, r"layers\[0\] w_ih must have shape"),   # one-hot: (G*H, V)
    (dict(embedding=np.zeros((11, 6), np.int32)), TypeError, "embedding.dtype"),
    (dict(embedding=np.zeros(11)), ValueError, "embedding must be 2-D"),
    (dict(embedding=np.zeros((11, 6), np.float32)), TypeError, "w_hh must have dtype"),
    (dict(out_weight=np.zeros((10, 20))), ValueError, "out_weight must have shape"),
    (dict(out_weight=np.zeros((11, 20), np.float32)), TypeError, "out_weight must have dtype"),
    (dict(out_bias=np.zeros(12)), ValueError, "out_bias must have shape"),
    (dict(prime=None), ValueError, "prime is required"),
    (dict(prime=np.zeros(3, np.int64)), ValueError, "prime must be a 2-D"),
    (dict(prime=np.zeros((2, 0), np.int64)), ValueError, "prime must be a 2-D"),
    (dict(prime=np.zeros((2, 3))), TypeError, "prime must hold integer"),
    (dict(prime=np.array([[0, 11]])), ValueError, r"prime must hold token ids in \[0, 11\)"),
    (dict(prime=np.array([[-1, 0]])), ValueError, "prime must hold token ids"),
    (dict(n_tokens=0), ValueError, "n_tokens must be >= 1"),
    (dict(n_tokens=2.0), TypeError, "n_tokens must be an integer"),
    (dict(temperature=0), ValueError, "temperature must be"),
    (dict(temperature=-1.0), ValueError, "temperature must be"),
    (dict(temperature=float("nan")), ValueError, "temperature must be"),
    (dict(temperature="hot"), ValueError, "temperature must be"),
    (dict(top_k=-1), ValueError, "top_k must be >= 0"),
    (dict(top_k=1.5), TypeError, "top_k must be an integer"),
    (dict(top_p=0.0), ValueError, "top_p must be"),
    (dict(top_p=1.5), ValueError, "top_p must be"),
    (dict(greedy="yes"), TypeError, "greedy must be a bool"),
    (dict(stop_id=11), ValueError, "stop_id must be a token id"),
    (dict(stop_id=-1), ValueError, "stop_id must be a token id"),
    (dict(stop_id=1.0), TypeError, "stop_id must be an integer"),
    (dict(banned_ids=[11]), ValueError, "banned_ids must hold token ids"),
    (dict(banned_ids=[0.5]), TypeError, "banned_ids must hold integer"),
    (dict(banned_ids=list(range(11))), ValueError, "all 11 are banned"),
    (dict(banned_ids=object()), TypeError, "banned_ids must be a sequence"),
    (dict(seed="abc"), TypeError, "seed must be"),
    (dict(state=np.zeros((2, 2, 20))), ValueError, r"tuple \(h, c\)"),
    (dict(state=(np.zeros((2, 2, 20)), np.zeros((2, 2, 21)))), ValueError, "state c must have shape"),
    (dict(state=(np.zeros((1, 2, 20)), np.zeros((2, 2, 20)))), ValueError, "state h must have shape"),
    (dict(state=(np.zeros((2, 2, 20), np.float32), np.zeros((2, 2, 20)))), TypeError,
     "state h must have dtype"),
])
def test_validation_errors(change, exc, match):
    args = _args()
    args.update(change)
    with pytest.raises(exc, match=match):
        generate_tokens(**args)


def test_validation_errors_layers_and_state_for_other_cells():
    args = _args()
    lay = args["layers"]
    cases = [
        (_replace_layer(lay, 0, 0, np.zeros((80, 5))), ValueError, r"layers\[0\] w_ih must have shape"),
        (_replace_layer(lay, 1, 0, np.zeros((80, 6))), ValueError, r"layers\[1\] w_ih must have shape"),
        (_replace_layer(lay, 1, 1, np.zeros((80, 21))), ValueError, r"layers\[1\] w_hh must have shape"),
        (_replace_layer(lay, 0, 1, np.zeros((60, 20))), ValueError, r"layers\[0\] w_hh must have shape"),
        (_replace_layer(lay, 0, 2, np.zeros(79)), ValueError, r"layers\[0\] b_ih must have shape"),
        (_replace_layer(lay, 1, 3, np.zeros(80, np.float32)), TypeError, r"layers\[1\] b_hh must have dtype"),
        (_replace_layer(lay, 0, 1, None), ValueError, r"layers\[0\] w_hh is required"),
        ([lay[0][:3]], ValueError, r"layers\[0\] must be a tuple"),
    ]
    for layers, exc, match in cases:
        a = dict(args, layers=layers)
        with pytest.raises(exc, match=match):
            generate_tokens(**a)
    g = _args("gru")
    with pytest.raises(ValueError, match="single array h"):
        generate_tokens(**dict(g, state=(np.zeros((2, 2, 20)), np.zeros((2, 2, 20)))))
    with pytest.raises(ValueError, match=r"state must have shape \(2, 2, 20\)"):
        generate_tokens(**dict(g, state=np.zeros((2, 3, 20))))
    with pytest.raises(ValueError, match="split must be"):
        _generate_tokens(**dict(g, split="cols"))
    with pytest.raises(TypeError):   # the test hooks are not part of the public signature
        generate_tokens(**dict(g, split="rows"))


def test_valid_edge_arguments_accepted():
    args = _args("rnn_relu")
    tokens, lengths, h = generate_tokens(**dict(args, n_tokens=1, top_k=100, top_p=1.0,
                                                banned_ids=5, seed=np.random.default_rng(0)))
    assert tokens.shape == (2, 1) and (lengths == 1).all() and h.shape == (2, 2, 20)
    assert (tokens != 5).all()


def test_read_only_inputs_are_accepted():
    """Arrays loaded from files or broadcast views are read-only; generation must not write them."""
    rng = np.random.default_rng(5)
    V, E, H = 7, 3, 4
    layers = [(rng.normal(size=(4 * H, E)), rng.normal(size=(4 * H, H)),
               rng.normal(size=4 * H), rng.normal(size=4 * H))]
    emb, w_out, b_out = rng.normal(size=(V, E)), rng.normal(size=(V, H)), rng.normal(size=V)
    prime = np.broadcast_to(np.array([1, 2, 3]), (1, 3))
    for array in [emb, w_out, b_out, *layers[0]]:
        array.setflags(write=False)
    tokens, lengths, _ = generate_tokens("lstm", layers, emb, w_out, b_out, prime, 5, greedy=True)
    writable = [np.array(a) for a in (emb, w_out, b_out)]
    again, _, _ = generate_tokens("lstm", [tuple(np.array(a) for a in layers[0])], *writable,
                                  np.array(prime), 5, greedy=True)
    np.testing.assert_array_equal(tokens, again)
    assert lengths.tolist() == [5]
