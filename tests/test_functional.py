"""The functional kernels: API, thread-count independence, argument errors."""
import itertools

import numpy as np
import pytest

import fastrnn
from fastrnn import functional as F
from helpers import GATES, _state_arrays, gradient_check_error

T, B, I, H = 7, 5, 4, 6


def weights(cell, rng, dtype=np.float64, H=H, I=I, scale=0.5):
    """[w_ih, w_hh, b_ih, b_hh] of one layer of ``cell`` (H units, I inputs)."""
    G = GATES[cell]
    return [rng.normal(scale=scale, size=s).astype(dtype)
            for s in ((G * H, I), (G * H, H), (G * H,), (G * H,))]


@pytest.mark.parametrize("cell", list(GATES))
def test_named_functions_match_generic_and_finite_differences(cell, rng):
    forward = getattr(F, f"{cell}_forward")
    backward = getattr(F, f"{cell}_backward")
    w = weights(cell, rng)
    x = rng.normal(size=(T, B, I))
    dy = rng.normal(size=(T, B, H))
    y, state, ws = forward(x, *w, reverse=True, lengths=[7, 1, 3, 2, 5])
    y2, _, _ = F.recurrent_forward(cell, x, *w, reverse=True, lengths=[7, 1, 3, 2, 5])
    np.testing.assert_array_equal(y, y2)
    dx, dstate0, grads = backward(ws, dy)
    assert set(grads) == {"weight_ih", "weight_hh", "bias_ih", "bias_hh"}
    assert (dstate0[0] if cell == "lstm" else dstate0).shape == (B, H)

    def loss():
        return np.sum(forward(x, *w, reverse=True, lengths=[7, 1, 3, 2, 5])[0] * dy)

    assert gradient_check_error(loss, x, dx, rng) < 1e-6
    for k, name in enumerate(["weight_ih", "weight_hh", "bias_ih", "bias_hh"]):
        assert gradient_check_error(loss, w[k], grads[name], rng) < 1e-6


@pytest.mark.parametrize("cell", list(GATES))
def test_results_do_not_depend_on_thread_count(cell, rng):
    layer_cls = {"gru": fastrnn.GRU, "lstm": fastrnn.LSTM}.get(cell)
    kwargs = dict(num_layers=2, bidirectional=True, dtype=np.float64, seed=1)
    make = (lambda: layer_cls(I, H, **kwargs)) if layer_cls else \
        (lambda: fastrnn.RNN(I, H, nonlinearity=cell[4:], **kwargs))
    x = rng.normal(size=(T, 9, I))
    dy = rng.normal(size=(T, 9, 2 * H))
    lengths = rng.integers(1, T + 1, size=9)

    def run():
        layer = make()
        y, _ = layer.forward(x, lengths=lengths)
        dx, _ = layer.backward(dy)
        return y, dx, layer.grads

    (y1, dx1, g1), (y2, dx2, g2) = _with_1_and_2_threads(run)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(dx1, dx2)
    for name in g1:
        np.testing.assert_array_equal(g1[name], g2[name])


def test_non_contiguous_input_gives_the_same_result(rng):
    layer = fastrnn.GRU(I, H, dtype=np.float64, seed=0)
    x = rng.normal(size=(T, B, 2 * I))
    y_strided, h_strided = layer.forward(x[:, :, ::2])
    y_copy, h_copy = layer.forward(np.ascontiguousarray(x[:, :, ::2]))
    np.testing.assert_array_equal(y_strided, y_copy)
    np.testing.assert_array_equal(h_strided, h_copy)


def test_float32_default_and_dtype_mismatch():
    layer = fastrnn.LSTM(I, H)
    assert layer.params["weight_ih_l0"].dtype == np.float32
    with pytest.raises(TypeError, match="x must have dtype float32"):
        layer.forward(np.zeros((T, B, I)))
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        fastrnn.LSTM(I, H, dtype=np.int32)


def test_shape_errors_name_the_argument():
    layer = fastrnn.LSTM(I, H, num_layers=2, dtype=np.float64)
    with pytest.raises(ValueError, match=r"x must be 3-D \(T, B, input_size\)"):
        layer.forward(np.zeros((T, I)))
    with pytest.raises(ValueError, match="input_size"):
        layer.forward(np.zeros((T, B, I + 1)))
    with pytest.raises(ValueError, match=r"state h must have shape \(2, 5, 6\)"):
        layer.forward(np.zeros((T, B, I)), state=(np.zeros((1, B, H)), np.zeros((2, B, H))))
    with pytest.raises(ValueError, match="tuple"):
        layer.forward(np.zeros((T, B, I)), state=np.zeros((2, B, H)))
    with pytest.raises(ValueError, match=r"lengths must be in \[1, 7\]"):
        layer.forward(np.zeros((T, B, I)), lengths=[1, 2, 3, 4, 8])
    with pytest.raises(ValueError, match=r"lengths must be in \[1, 7\]"):
        layer.forward(np.zeros((T, B, I)), lengths=[0, 2, 3, 4, 5])
    with pytest.raises(ValueError, match=r"lengths must have shape \(5,\)"):
        layer.forward(np.zeros((T, B, I)), lengths=[1, 2])
    with pytest.raises(TypeError, match="lengths must hold integers"):
        layer.forward(np.zeros((T, B, I)), lengths=np.ones(B))
    layer.forward(np.zeros((T, B, I)))
    with pytest.raises(ValueError, match=r"dy must have shape \(7, 5, 6\)"):
        layer.backward(np.zeros((T, B, H + 1)))


def test_backward_without_forward_and_twice():
    layer = fastrnn.GRU(I, H, dtype=np.float64)
    with pytest.raises(ValueError, match="without a preceding forward"):
        layer.backward(np.zeros((T, B, H)))
    y, _ = layer.forward(np.zeros((T, B, I)))
    layer.backward(np.ones_like(y))
    with pytest.raises(ValueError, match="without a preceding forward"):
        layer.backward(np.ones_like(y))
    _, _, ws = F.gru_forward(np.zeros((T, B, I)), *weights("gru", np.random.default_rng(0)))
    F.gru_backward(ws, np.zeros((T, B, H)))
    with pytest.raises(ValueError, match="already consumed"):
        F.gru_backward(ws, np.zeros((T, B, H)))
    with pytest.raises(ValueError, match="from a gru forward"):
        F.lstm_backward(ws)


def test_functional_weight_errors(rng):
    w = weights("lstm", rng)
    x = rng.normal(size=(T, B, I))
    with pytest.raises(ValueError, match=r"w_hh must have shape \(4 \* H, H\)"):
        F.lstm_forward(x, w[0], w[1][:-1])
    with pytest.raises(ValueError, match=r"w_ih must have shape \(24, 4\)"):
        F.lstm_forward(x, w[0][:, :-1], w[1])
    with pytest.raises(TypeError, match="w_hh must have dtype float64"):
        F.lstm_forward(x, w[0], w[1].astype(np.float32))
    with pytest.raises(ValueError, match="cell must be one of"):
        F.recurrent_forward("lstmx", x, *w)
    with pytest.raises(ValueError, match="at least one step"):
        F.lstm_forward(x[:0], *w)


def test_gradients_accumulate_and_zero_grad(rng):
    layer = fastrnn.RNN(I, H, dtype=np.float64, seed=0)
    x = rng.normal(size=(T, B, I))
    dy = rng.normal(size=(T, B, H))
    layer.forward(x)
    layer.backward(dy)
    once = {k: v.copy() for k, v in layer.grads.items()}
    layer.forward(x)
    layer.backward(dy)
    for k in once:
        np.testing.assert_allclose(layer.grads[k], 2 * once[k], rtol=1e-12)
    layer.zero_grad()
    assert all(np.all(g == 0) for g in layer.grads.values())


def test_initialisers(rng):
    lstm = fastrnn.LSTM(I, H, forget_bias=1.0, dtype=np.float64, seed=0)
    b = lstm.params["bias_ih_l0"] + lstm.params["bias_hh_l0"]
    np.testing.assert_array_equal(b[H:2 * H], 1.0)
    default = fastrnn.LSTM(I, H, seed=0)
    assert np.abs(default.params["weight_hh_l0"]).max() <= 1 / np.sqrt(H)
    assert np.abs(default.params["weight_hh_l0"]).max() > 0.8 / np.sqrt(H)
    irnn = fastrnn.RNN(I, H, nonlinearity="relu", recurrent_init="identity", seed=0)
    np.testing.assert_array_equal(irnn.params["weight_hh_l0"], np.eye(H))
    # Keras IRNN: only W_hh changes (issue 12; it used to zero the biases and shrink W_ih too).
    plain = fastrnn.RNN(I, H, nonlinearity="relu", seed=0)
    for key in ("weight_ih_l0", "bias_ih_l0", "bias_hh_l0"):
        np.testing.assert_array_equal(irnn.params[key], plain.params[key])
    # Same seed, same model; another seed, another model.
    np.testing.assert_array_equal(fastrnn.GRU(I, H, seed=4).params["weight_ih_l0"],
                                  fastrnn.GRU(I, H, seed=4).params["weight_ih_l0"])
    assert not np.array_equal(fastrnn.GRU(I, H, seed=4).params["weight_ih_l0"],
                              fastrnn.GRU(I, H, seed=5).params["weight_ih_l0"])
    with pytest.raises(ValueError, match="forget_bias applies to LSTM only"):
        fastrnn.GRU(I, H, forget_bias=1.0)


def test_dropout_is_reproducible_and_off_in_eval(rng):
    x = rng.normal(size=(T, B, I)).astype(np.float32)
    a = fastrnn.LSTM(I, H, num_layers=2, dropout=0.5, seed=3)
    b = fastrnn.LSTM(I, H, num_layers=2, dropout=0.5, seed=3)
    ya, _ = a.forward(x)
    yb, _ = b.forward(x)
    np.testing.assert_array_equal(ya, yb)
    ya2, _ = a.forward(x)
    assert not np.array_equal(ya, ya2)     # a fresh mask each call
    a.eval()
    e1, _ = a.forward(x)
    e2, _ = a.forward(x)
    np.testing.assert_array_equal(e1, e2)


def test_stateful_chunks_equal_one_long_sequence(rng):
    layer = fastrnn.LSTM(I, H, num_layers=2, dtype=np.float64, seed=2)
    x = rng.normal(size=(2 * T, B, I))
    y_full, (h_full, c_full) = layer.forward(x)
    y1, state = layer.forward(x[:T])
    y2, (h2, c2) = layer.forward(x[T:], state)
    np.testing.assert_allclose(np.concatenate([y1, y2]), y_full, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(h2, h_full, rtol=1e-13, atol=1e-15)


def test_show_config_reports_threads_and_blas(capsys):
    fastrnn.show_config()
    out = capsys.readouterr().out
    assert "OpenMP" in out and "threads" in out and "BLAS" in out
    with pytest.raises(ValueError, match="positive int"):
        fastrnn.set_num_threads(0)


def test_show_config_says_when_openblas_coretype_overrides_the_cpu(capsys, monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    fastrnn.show_config()
    assert "OPENBLAS_CORETYPE=Haswell" in capsys.readouterr().out
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    fastrnn.show_config()
    assert "OPENBLAS_CORETYPE" not in capsys.readouterr().out


def test_show_config_says_which_gemm_runs_the_large_products(capsys):
    from fastrnn._cpu import dense
    fastrnn.show_config()
    out = capsys.readouterr().out
    if dense.own_gemm_active():
        assert "large products on fastrnn's AVX-512 kernel" in out
    dense._force_blas_gemm(True)
    try:
        assert not dense.own_gemm_active()
        fastrnn.show_config()
        assert "GEMM    BLAS" in capsys.readouterr().out
    finally:
        dense._force_blas_gemm(False)


def _with_threads(run, counts):
    """[run() on each thread count of ``counts``], restoring the default afterwards."""
    results = []
    try:
        for n in counts:
            fastrnn.set_num_threads(n)
            results.append(run())
    finally:
        fastrnn.set_num_threads(None)
    return results


def _with_1_and_2_threads(run):
    """[run() on 1 thread, run() on 2 threads], restoring the default afterwards."""
    return _with_threads(run, (1, 2))



def _forward_backward(cell, x, w, dy, lengths, reverse, dtype):
    y, state, ws = F.recurrent_forward(cell, x, *w, lengths=lengths, reverse=reverse)
    dx, dstate0, grads = F.recurrent_backward(ws, dy)
    return y, dx, grads


@pytest.mark.parametrize("cell", list(GATES))
@pytest.mark.parametrize("B", [1, 3, 8, 11])
def test_both_time_loop_splits_are_thread_count_independent(cell, B, rng):
    """B <= 8 takes the small-batch path (threads split the hidden units, one barrier per
    step), larger B the batch-slice path (threads split the batch, packed-weight GEMM).
    H = 70 gives the small-batch path two threads and a unit range that is not a whole
    number of vector blocks."""
    Hs, Is, Ts = 70, 5, 6
    w = weights(cell, rng, H=Hs, I=Is, scale=0.3)
    x = rng.normal(size=(Ts, B, Is))
    dy = rng.normal(size=(Ts, B, Hs))
    lengths = rng.integers(1, Ts + 1, size=B)
    for reverse in (False, True):
        (y1, dx1, g1), (y2, dx2, g2) = _with_1_and_2_threads(
            lambda: _forward_backward(cell, x, w, dy, lengths, reverse, np.float64))
        np.testing.assert_array_equal(y1, y2)
        np.testing.assert_array_equal(dx1, dx2)
        for name in g1:
            np.testing.assert_array_equal(g1[name], g2[name])


@pytest.mark.parametrize("cell", list(GATES))
@pytest.mark.parametrize("B", [9, 20, 33])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_batch_slices_give_the_same_bits_on_any_thread_count(cell, B, with_lengths, rng):
    """A batch above 8 runs the batch-slice loops (packed with lengths), each thread on a
    share of the rows with its own block of the per-step scratch (gh, hcat; without lengths
    dh and dc copied in and out). 1 to 5 threads (shares of 1 to 33 rows, and more threads
    than cores) must give the 1-thread bits, final states included."""
    Hs, Is, Ts = 70, 5, 6
    w = weights(cell, rng, H=Hs, I=Is, scale=0.3)
    x = rng.normal(size=(Ts, B, Is))
    dy = rng.normal(size=(Ts, B, Hs))
    h0 = rng.normal(size=(B, Hs))
    state0 = (h0, rng.normal(size=(B, Hs))) if cell == "lstm" else h0
    dstate = (rng.normal(size=(B, Hs)), rng.normal(size=(B, Hs))) if cell == "lstm" \
        else rng.normal(size=(B, Hs))
    lengths = rng.integers(1, Ts + 1, size=B) if with_lengths else None

    def run(reverse):
        y, state, ws = F.recurrent_forward(cell, x, *w, state0, lengths=lengths,
                                           reverse=reverse)
        dx, dstate0, grads = F.recurrent_backward(ws, dy, dstate)
        return [y, dx, *_state_arrays(state), *_state_arrays(dstate0), *grads.values()]

    for reverse in (False, True):
        expected, *others = _with_threads(lambda: run(reverse), (1, 2, 3, 5))
        for results in others:
            for got, want in zip(results, expected):
                np.testing.assert_array_equal(got, want)


def _assert_kernels_agree(kinds, cell, H, batches, dtype, rng):
    """Forward+backward of ``cell`` with the per-step kernels ``kinds`` allows (forced: see
    recurrent._force_kernels) and with the CPU's best ones ("best"), or for kinds ==
    "generic", against the AVX2 twins ("narrow"), for each batch size, with and without
    lengths, both directions: the same bits. The large products run on BLAS in both runs
    (the own GEMM goes with the AVX-512 kernels). Skips where the two would be the same code."""
    from fastrnn._cpu import recurrent
    other = "narrow" if kinds == "generic" else "best"
    if kinds == "generic" and not recurrent._has_narrow_twins():
        pytest.skip("no AVX2 on this CPU: only the generic kernels run")
    if kinds == "narrow":
        wide = recurrent._panel_width(dtype)
        recurrent._force_kernels("narrow")
        same = recurrent._panel_width(dtype) == wide
        recurrent._force_kernels("best")
        if same:
            pytest.skip("no AVX-512 on this CPU: only the 256-bit / generic kernels run")
    recurrent._force_blas_gemm(True)
    try:
        Is, Ts = 5, 6
        w = weights(cell, rng, dtype, H=H, I=Is, scale=0.3)
        for B in batches:
            x = rng.normal(size=(Ts, B, Is)).astype(dtype)
            dy = rng.normal(size=(Ts, B, H)).astype(dtype)
            for lengths, reverse in ((None, False), (rng.integers(1, Ts + 1, size=B), True)):
                recurrent._force_kernels(kinds)
                y1, dx1, g1 = _forward_backward(cell, x, w, dy, lengths, reverse, dtype)
                recurrent._force_kernels(other)
                y2, dx2, g2 = _forward_backward(cell, x, w, dy, lengths, reverse, dtype)
                np.testing.assert_array_equal(y1, y2)
                np.testing.assert_array_equal(dx1, dx2)
                for name in g1:
                    np.testing.assert_array_equal(g1[name], g2[name])
    finally:
        recurrent._force_kernels("best")
        recurrent._force_blas_gemm(False)


@pytest.mark.parametrize("cell", list(GATES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_avx512_and_256_bit_packed_gemms_agree_bitwise(cell, dtype, rng):
    """Where the CPU has AVX-512 the batch path's per-step GEMM runs a 512-bit micro-kernel
    (panels of 32 floats, tiles of up to 8 rows), elsewhere a 256-bit one (16 floats, up to 6
    rows). Both sum each element over k in order with one FMA per term, so they must agree to
    the bit. H = 37 leaves partial panels; B = 9, 23 give tiles of every height from 4 to 8."""
    _assert_kernels_agree("narrow", cell, 37, (9, 23), dtype, rng)


@pytest.mark.parametrize("cell", list(GATES))
@pytest.mark.parametrize("H", [37, 64, 70, 300])
def test_avx512_and_generic_small_batch_products_agree_bitwise(cell, H, rng):
    """The small-batch path's products (forward h_prev W_hh^T, backward dGh W_hh) run, in
    float32 on an AVX-512 CPU, intrinsics twins of the generic matrix-vector code
    (csrc/gemm_packed.h) that must sum in the same order: the same bits. H = 37 leaves a tail
    of 5 terms per dot product and a row count that is not a multiple of 4; 64 has no tail;
    70 gives two threads; 300 gives each thread 150 columns, so that the backward twin runs
    its blocks of several vectors (3 to 8, by batch) and then a masked tail. Batches 1, 3
    and 8 cover the rows the kernels take."""
    _assert_kernels_agree("narrow", cell, H, (1, 3, 8), np.float32, rng)


@pytest.mark.parametrize("cell", list(GATES))
@pytest.mark.parametrize("H", [37, 64, 70, 300])
def test_avx2_and_generic_small_batch_products_agree_bitwise(cell, H, rng):
    """On a CPU with AVX2 and without AVX-512 (or with the AVX-512 kernels turned off), the
    small-batch forward product h_prev W_hh^T runs, in float32, an intrinsics twin of the
    generic matrix-vector code (csrc/matvec_narrow.h) that must sum in the same order: the
    same bits. H = 37 leaves a tail of 5 terms per dot product and a row count that is not a
    multiple of 3; 64 has no tail; 70 and 300 give two threads. Batches 1, 3 and 8."""
    _assert_kernels_agree("generic", cell, H, (1, 3, 8), np.float32, rng)


@pytest.mark.parametrize("cell", list(GATES))
def test_small_batch_path_matches_batch_path(cell, rng):
    """The same 3 sequences alone (small-batch path) and inside a batch of 12 (batch path)."""
    Hs, Is, Ts = 40, 5, 6
    w = weights(cell, rng, H=Hs, I=Is, scale=0.3)
    x = rng.normal(size=(Ts, 12, Is))
    dy = rng.normal(size=(Ts, 12, Hs))
    lengths = rng.integers(1, Ts + 1, size=12)
    for reverse in (False, True):
        y_all, dx_all, _ = _forward_backward(cell, x, w, dy, lengths, reverse, np.float64)
        y3, dx3, _ = _forward_backward(cell, x[:, :3], w, dy[:, :3], lengths[:3], reverse,
                                       np.float64)
        np.testing.assert_allclose(y3, y_all[:, :3], rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(dx3, dx_all[:, :3], rtol=1e-12, atol=1e-13)


def test_float32_activations_match_float64():
    """The float32 sigmoid/tanh are polynomial approximations (csrc/activations.h): check
    them through an RNN step against float64 libm over a wide range of pre-activations."""
    a = np.linspace(-30, 30, 200001)
    for cell in ("rnn_tanh", "gru"):
        G = GATES[cell]
        # One step, input size 1, hidden 1: the pre-activations are x * w_ih.
        x = a.reshape(1, -1, 1)
        w = [np.ones((G, 1)), np.zeros((G, 1)), np.zeros(G), np.zeros(G)]
        y64 = F.recurrent_forward(cell, x, *w)[0]
        y32 = F.recurrent_forward(cell, x.astype(np.float32),
                                  *[v.astype(np.float32) for v in w])[0]
        np.testing.assert_allclose(y32, y64, rtol=2e-6, atol=2e-7)


@pytest.mark.parametrize("cell", list(GATES))
def test_long_sequences_split_weight_gradients_along_time(cell, rng):
    """With many more time-space rows than gate columns, weight_grads sums dW over parts of
    the rows (a K split); check it against PyTorch and across thread counts."""
    torch = pytest.importorskip("torch")
    Tl, Bl, Il, Hl = 40, 12, 4, 5          # T*B = 480 >= 16 * max(G*H, H, I)
    w = weights(cell, rng, H=Hl, I=Il)
    x = rng.normal(size=(Tl, Bl, Il))
    dy = rng.normal(size=(Tl, Bl, Hl))
    (y1, dx1, g1), (y2, dx2, g2) = _with_1_and_2_threads(
        lambda: _forward_backward(cell, x, w, dy, None, False, np.float64))
    for name in g1:
        np.testing.assert_array_equal(g1[name], g2[name])
    from torch_linear_rnn import LinearRNN   # torch.nn.RNN has no linear cell
    rnn_class = LinearRNN if cell == "rnn_identity" else torch.nn.RNN
    module = (rnn_class(Il, Hl, nonlinearity=cell[4:]) if cell.startswith("rnn")
              else {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell](Il, Hl)).double()
    with torch.no_grad():
        for p, v in zip((module.weight_ih_l0, module.weight_hh_l0, module.bias_ih_l0,
                         module.bias_hh_l0), w):
            p.copy_(torch.from_numpy(v))
    xt = torch.from_numpy(x).requires_grad_(True)
    yt, _ = module(xt)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(dx1, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    for name, p in (("weight_ih", module.weight_ih_l0), ("weight_hh", module.weight_hh_l0),
                    ("bias_ih", module.bias_ih_l0), ("bias_hh", module.bias_hh_l0)):
        np.testing.assert_allclose(g1[name], p.grad.numpy(), rtol=1e-10, atol=1e-11)


def _initial_state(cell, B, H, rng, dtype):
    h = rng.normal(size=(B, H)).astype(dtype)
    return (h, rng.normal(size=(B, H)).astype(dtype)) if cell == "lstm" else h


@pytest.mark.parametrize("cell", list(GATES))
@pytest.mark.parametrize("B", [3, 11])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_without_the_initial_state_gradient(cell, B, dtype, rng, monkeypatch):
    """state0_grad=False: dstate0 is None, dx and every weight gradient are the full
    backward's bits, and the loops really skip the first steps' product dGh W_hh: the dh they
    leave, plus that product, is the full backward's dh0. B = 3 takes the small-batch path,
    11 the batch slices (packed with lengths); both directions, with and without lengths, a
    given initial state and final-state gradient, 2 threads."""
    from fastrnn._engine.cpu import CpuOps
    Hs, Is, Ts = 70, 5, 6
    w = weights(cell, rng, dtype, H=Hs, I=Is, scale=0.3)
    x = rng.normal(size=(Ts, B, Is)).astype(dtype)
    dy = rng.normal(size=(Ts, B, Hs)).astype(dtype)
    state0 = _initial_state(cell, B, Hs, rng, dtype)
    dstate = _initial_state(cell, B, Hs, rng, dtype)
    left = []   # per backward: (dh the loop leaves, dGh of each sequence's first step)

    def spy(name, first_step_rows):
        loop = getattr(CpuOps, name)

        def spied(*args, **kwargs):
            loop(*args, **kwargs)
            left.append((args[13 if name == "backward_loop" else 12].copy(),
                         first_step_rows(args).copy()))
        monkeypatch.setattr(CpuOps, name, staticmethod(spied))
    spy("backward_loop", lambda args: args[15])             # dgh_first
    spy("backward_loop_packed", lambda args: args[7][:B])   # packed rows 0..B-1: step 0
    fastrnn.set_num_threads(2)
    try:
        for lengths, reverse in ((None, False), (None, True),
                                 (rng.integers(1, Ts + 1, size=B), False),
                                 (rng.integers(1, Ts + 1, size=B), True)):
            results = []
            for wanted in (True, False):
                _, _, ws = F.recurrent_forward(cell, x, *w, state=state0, lengths=lengths,
                                               reverse=reverse)
                results.append(F.recurrent_backward(ws, dy, dstate, state0_grad=wanted))
            (dx1, ds1, g1), (dx2, ds2, g2) = results
            assert ds2 is None and ds1 is not None
            np.testing.assert_array_equal(dx2, dx1)
            for name in g1:
                np.testing.assert_array_equal(g2[name], g1[name])
            (dh_full, _), (dh_partial, dgh_first) = left[-2:]
            tol = 1e-4 if dtype == np.float32 else 1e-12
            np.testing.assert_allclose(dh_partial + dgh_first @ w[1], dh_full, rtol=tol,
                                       atol=tol)
    finally:
        fastrnn.set_num_threads(None)


@pytest.mark.parametrize("cell", list(GATES))
@pytest.mark.parametrize("stand_in", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_without_the_input_gradient(cell, stand_in, dtype, rng, monkeypatch):
    """input_grad=False: dx is None, dstate0 and every weight gradient are the full
    backward's bits, and no dx product runs (the weight-gradient step gets no dx, the table
    lookup no table gradient). Every path: small batch (B 3), batch slices and packed with
    lengths (B 11), both directions, an index that projects the table (V 7 < T*B) or gathers
    the tokens' rows (V 80); the compiled kernels and the step-loop Ops (ReferenceOps)."""
    from fastrnn import _engine
    from fastrnn._engine import lookup
    from fastrnn._engine.cpu import CpuOps
    from fastrnn._engine.reference import ReferenceOps
    ops = ReferenceOps(np) if stand_in else CpuOps()   # own instances: the spies stay on them
    Hs, Is, Ts = 9, 5, 6
    w = weights(cell, rng, dtype, H=Hs, I=Is, scale=0.3)
    dx_args = []   # the dx of each weight-gradient call with an input side, or table lookup's

    def spy(owner, name, x_at, dx_at):
        original = getattr(owner, name)

        def spied(*args):
            if args[x_at] is not None:   # (a projected table's loop call has no input side)
                dx_args.append(args[dx_at])
            return original(*args)
        monkeypatch.setattr(owner, name, spied)
    spy(ops, "weight_grads", 4, 12)
    if hasattr(ops, "weight_grads_packed"):
        spy(ops, "weight_grads_packed", 1, 7)
    spy(lookup, "add_table_grads", 1, 4)
    fastrnn.set_num_threads(2)
    try:
        for B, V, lengths, reverse in itertools.product((3, 11), (None, 7, 80), (False, True),
                                                        (False, True)):
            index = None if V is None else rng.integers(0, V, size=(Ts, B))
            x = rng.normal(size=(Ts, B, Is) if V is None else (V, Is)).astype(dtype)
            lens = rng.integers(1, Ts + 1, size=B) if lengths else None
            dy = rng.normal(size=(Ts, B, Hs)).astype(dtype)
            state0 = _initial_state(cell, B, Hs, rng, dtype)
            dstate = _initial_state(cell, B, Hs, rng, dtype)
            results = []
            for wanted in (True, False):
                del dx_args[:]
                _, _, ws = _engine.forward(ops, cell, x, *w, state=state0, lengths=lens,
                                           reverse=reverse, index=index)
                results.append(F.recurrent_backward(ws, dy, dstate, input_grad=wanted))
                assert dx_args and all((a is not None) == wanted for a in dx_args), dx_args
            (dx1, ds1, g1), (dx2, ds2, g2) = results
            assert dx2 is None and dx1 is not None
            for a, b in zip(_state_arrays(ds2), _state_arrays(ds1)):
                np.testing.assert_array_equal(a, b)
            for name in g1:
                np.testing.assert_array_equal(g2[name], g1[name])
    finally:
        fastrnn.set_num_threads(None)


def test_dx_out_without_the_input_gradient_is_refused(rng):
    w = weights("gru", rng)
    _, _, ws = F.recurrent_forward("gru", rng.normal(size=(T, B, I)), *w)
    with pytest.raises(ValueError, match="dx_out was given with input_grad=False"):
        F.recurrent_backward(ws, np.ones((T, B, H)), dx_out=np.zeros((T, B, I)),
                             input_grad=False)
    dx, _, _ = F.recurrent_backward(ws, np.ones((T, B, H)))   # not consumed by the refusal
    assert dx.shape == (T, B, I)
