"""fastrnn.jax: outputs, final states and every gradient against PyTorch with the same
weights and against float64 central differences through jax.grad, eager and under jit;
vmap; clear errors for bad arguments."""
import numpy as np
import pytest

from helpers import assert_close, gradient_check_error, run_python, spy_engine_backward

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
fj = pytest.importorskip("fastrnn.jax")

KINDS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
I, H, B, T = 3, 4, 4, 7
LENGTHS = np.array([3, 7, 1, 5])   # unsorted
TOL = {np.float64: 1e-10, np.float32: 1e-5}


@pytest.fixture(autouse=True)
def float64_enabled():
    """float64 in JAX for this module's tests only."""
    saved = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", saved)


def make_params(kind, dtype=np.float64, num_layers=2, bidirectional=True, bias=True, seed=0):
    """fj.init_params as writable NumPy arrays (the finite differences perturb them)."""
    params = fj.init_params(kind, I, H, num_layers=num_layers, bidirectional=bidirectional,
                            bias=bias, dtype=dtype, seed=seed)
    return {k: np.array(v) for k, v in params.items()}


def call(kind, params, x, h0=None, lengths=None, **kwargs):
    if kind.startswith("rnn"):
        return fj.rnn(params, x, h0, lengths, nonlinearity=kind[4:], **kwargs)
    return getattr(fj, kind)(params, x, h0, lengths, **kwargs)


def finals_of(final):
    return list(final) if isinstance(final, tuple) else [final]


def make_inputs(kind, dtype=np.float64, num_layers=2, D=2, batch_first=True, seed=1):
    """x, h0 (a pair for the LSTM) and the random weights of the loss."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(dtype)
    state = (num_layers * D, B, H)
    h0 = rng.standard_normal(state).astype(dtype)
    if kind == "lstm":
        h0 = (h0, rng.standard_normal(state).astype(dtype))
    out_weight = rng.standard_normal(x.shape[:2] + (D * H,)).astype(dtype)
    state_weights = [rng.standard_normal(state).astype(dtype) for _ in range(2)]
    return x, h0, out_weight, state_weights


def make_loss(kind, lengths, loss_on, out_weight, state_weights, **kwargs):
    """loss(params, x, h0) -> (scalar, (y, finals)): weighted sums of y and/or final states."""
    def loss(params, x, h0):
        y, final = call(kind, params, x, h0, lengths, **kwargs)
        finals = finals_of(final)
        total = 0.0
        if "out" in loss_on:
            total = total + (y * out_weight).sum()
        if "state" in loss_on:
            total = total + sum((f * w).sum() for f, w in zip(finals, state_weights))
        return total, (y, finals)
    return loss


# ---- PyTorch with the same weights ----------------------------------------------------------

def torch_reference(kind, params, x, h0, lengths, loss_on, out_weight, state_weights, dtype,
                    batch_first=True, num_layers=2, bidirectional=True, bias=True):
    """(loss, y, finals, param grads, dx, dh0 list) from torch.nn with the same weights."""
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    kwargs = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
                  bias=bias, dtype=tdtype)
    if kind.startswith("rnn"):
        module = torch.nn.RNN(I, H, nonlinearity=kind[4:], **kwargs)
    else:
        module = getattr(torch.nn, kind.upper())(I, H, **kwargs)
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in params.items()})
    xt = torch.from_numpy(x).requires_grad_(True)
    states = [torch.from_numpy(s).requires_grad_(True) for s in finals_of(h0)]
    hx = tuple(states) if kind == "lstm" else states[0]
    inp = xt
    if lengths is not None:
        inp = pack_padded_sequence(xt, torch.from_numpy(lengths), batch_first=batch_first,
                                   enforce_sorted=False)
    y, final = module(inp, hx)
    if lengths is not None:
        y, _ = pad_packed_sequence(y, batch_first=batch_first, total_length=T)
    finals = finals_of(final)
    loss = 0.0
    if "out" in loss_on:
        loss = loss + (y * torch.from_numpy(out_weight)).sum()
    if "state" in loss_on:
        loss = loss + sum((f * torch.from_numpy(w)).sum() for f, w in zip(finals, state_weights))
    loss.backward()
    grads = {k: p.grad.numpy() for k, p in module.named_parameters()}
    return (loss.item(), y.detach().numpy(), [f.detach().numpy() for f in finals], grads,
            xt.grad.numpy(), [s.grad.numpy() for s in states])


def assert_matches_torch(got, expected, tol):
    (value, (y, finals)), (d_params, dx, dh0) = got
    t_value, t_y, t_finals, t_grads, t_dx, t_dh0 = expected
    assert_close(value, t_value, tol, "loss")
    assert_close(y, t_y, tol, "y")
    for g, e in zip(finals, t_finals):
        assert_close(g, e, tol, "final state")
    assert set(d_params) == set(t_grads)
    for name in t_grads:
        assert_close(d_params[name], t_grads[name], tol, f"grad of {name}")
    assert_close(dx, t_dx, tol, "grad of x")
    for g, e in zip(finals_of(dh0), t_dh0):
        assert_close(g, e, tol, "grad of h0")


def value_and_grads(loss, jit):
    fn = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
    return jax.jit(fn) if jit else fn


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("with_lengths, loss_on", [
    (True, ("out",)), (True, ("out", "state")), (False, ("state",)), (False, ("out", "state"))])
def test_two_layer_bidirectional_matches_pytorch_float64(kind, jit, with_lengths, loss_on):
    params = make_params(kind)
    x, h0, out_weight, state_weights = make_inputs(kind)
    lengths = LENGTHS if with_lengths else None
    loss = make_loss(kind, lengths, loss_on, out_weight, state_weights, batch_first=True)
    got = value_and_grads(loss, jit)(params, x, h0)
    expected = torch_reference(kind, params, x, h0, lengths, loss_on, out_weight,
                               state_weights, np.float64)
    assert_matches_torch(got, expected, TOL[np.float64])


@pytest.mark.parametrize("kind", KINDS)
def test_float32_time_major_matches_pytorch(kind):
    params = make_params(kind, np.float32)
    x, h0, out_weight, state_weights = make_inputs(kind, np.float32, batch_first=False)
    loss = make_loss(kind, LENGTHS, ("out", "state"), out_weight, state_weights)
    got = value_and_grads(loss, jit=True)(params, x, h0)
    assert got[1][1].dtype == np.float32
    expected = torch_reference(kind, params, x, h0, LENGTHS, ("out", "state"), out_weight,
                               state_weights, np.float32, batch_first=False)
    assert_matches_torch(got, expected, TOL[np.float32])


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_one_layer_without_bias_and_without_h0_matches_pytorch(kind):
    params = make_params(kind, num_layers=1, bidirectional=False, bias=False)
    x, h0, out_weight, state_weights = make_inputs(kind, num_layers=1, D=1, batch_first=False)
    zeros = jax.tree_util.tree_map(np.zeros_like, h0)
    loss = make_loss(kind, LENGTHS, ("out", "state"), out_weight, state_weights)
    (value, (y, finals)), (d_params, dx, _) = value_and_grads(
        lambda p, x, h0: loss(p, x, None), jit=True)(params, x, h0)
    expected = torch_reference(kind, params, x, zeros, LENGTHS, ("out", "state"), out_weight,
                               state_weights, np.float64, batch_first=False, num_layers=1,
                               bidirectional=False, bias=False)
    got = ((value, (y, finals)), (d_params, dx, tuple(expected[5])))   # no h0: its grads unused
    assert_matches_torch(got, expected, 1e-10)


# ---- float64 central differences (no PyTorch needed) ---------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_gradients_match_central_differences(kind, jit, rng):
    params = make_params(kind)
    x, h0, out_weight, state_weights = make_inputs(kind)
    loss = make_loss(kind, LENGTHS, ("out", "state"), out_weight, state_weights,
                     batch_first=True)
    _, (d_params, dx, dh0) = value_and_grads(loss, jit)(params, x, h0)
    # The differences evaluate the loss under jit (the same kernels, and an eager call of
    # every pure_callback costs ~100 ms); the gradients above are the eager or jitted ones.
    value = jax.jit(lambda *a: loss(*a)[0])

    def loss_now():   # reads the arrays that gradient_check_error perturbs in place
        return float(value(params, x, h0))

    arrays = [(name, params[name], d_params[name]) for name in params]
    arrays += [("x", x, dx)] + [(f"h0[{i}]", s, d) for i, (s, d) in
                                enumerate(zip(finals_of(h0), finals_of(dh0)))]
    for name, array, analytic in arrays:
        err = gradient_check_error(loss_now, array, analytic, rng, samples=6)
        assert err < 1e-7, f"{name}: {err:.2e}"


@pytest.mark.parametrize("kind", KINDS)
def test_check_grads(kind):
    """jax.test_util.check_grads (reverse mode: the VJP against numerical JVPs)."""
    from jax.test_util import check_grads
    params = make_params(kind, num_layers=1)
    x, h0, _, _ = make_inputs(kind, num_layers=1, batch_first=False)
    check_grads(lambda p, x, h0: call(kind, p, x, h0, LENGTHS, bidirectional=True),
                (params, x, h0), order=1, modes=["rev"], eps=1e-6)


def test_backward_runs_twice_on_one_forward():
    params = make_params("lstm")
    x, h0, _, _ = make_inputs("lstm")
    (y, _), vjp = jax.vjp(lambda p: fj.lstm(p, x, h0, LENGTHS, batch_first=True), params)
    cotangent = (jnp.ones_like(y), (jnp.ones((4, B, H)), jnp.ones((4, B, H))))
    first, second = vjp(cotangent)[0], vjp(cotangent)[0]
    for name in params:
        np.testing.assert_array_equal(first[name], second[name])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("loss_on", [("out",), ("state",)])
def test_only_the_differentiated_inputs_get_gradients(kind, jit, loss_on, monkeypatch):
    """jax.grad with respect to the parameters only (x a constant, h0 given but not
    differentiated): the engine is told (input_grad / state0_grad False) and skips their
    products, and an output no loss uses reaches it as None (a symbolic zero), not as an
    array of zeros. The parameter gradients are the bits of the gradient with respect to
    params, x and h0."""
    params = make_params(kind)
    x, h0, out_weight, state_weights = make_inputs(kind)
    loss = make_loss(kind, LENGTHS, loss_on, out_weight, state_weights, batch_first=True)
    told = spy_engine_backward(monkeypatch)
    runs = []
    for argnums in ((0, 1, 2), 0):
        del told[:]
        fn = jax.grad(lambda *a: loss(*a)[0], argnums=argnums)
        fn = jax.jit(fn) if jit else fn
        grads = fn(params, x, h0)
        runs.append((grads[0] if isinstance(argnums, tuple) else grads, list(told)))
    (all_grads, all_told), (param_grads, param_told) = runs
    for name in params:
        np.testing.assert_array_equal(param_grads[name], all_grads[name])
    # Top layer first, two directions each: only the first layer may skip dx.
    no_dy, no_dstate = "out" not in loss_on, "state" not in loss_on
    assert all_told == [(True, True, no_dy, no_dstate)] * 2 + [(True, True, False, no_dstate)] * 2
    assert param_told == ([(True, False, no_dy, no_dstate)] * 2
                          + [(False, False, False, no_dstate)] * 2)


def test_wanted_grads_benchmark_runs_the_jax_bridge(monkeypatch, capsys):
    import importlib
    from pathlib import Path
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    bench = importlib.import_module("bridge_wanted_grads")
    times = bench.alternating_step_times(2, 3, 4, 5, rounds=2, threads=1, bridge="jax")
    assert len(times[True]) == len(times[False]) == 2
    bench.main(["--bridge", "jax", "--size", "2", "3", "4", "5", "--rounds", "1"])
    assert "jax: LSTM" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_vmap_equals_a_loop(kind):
    params = make_params(kind)
    rng = np.random.default_rng(3)
    xs = rng.standard_normal((3, T, B, I))
    lengths = np.stack([LENGTHS, LENGTHS[::-1], np.full(B, T)])

    def loss(params, x, lengths):
        y, final = call(kind, params, x, None, lengths)
        return (y ** 2).sum() + sum((f ** 3).sum() for f in finals_of(final))

    mapped = jax.jit(jax.vmap(jax.value_and_grad(loss), in_axes=(None, 0, 0)))(params, xs,
                                                                              lengths)
    for n in range(3):
        value, grads = jax.value_and_grad(loss)(params, xs[n], lengths[n])
        assert_close(mapped[0][n], value, 1e-12, "vmapped loss")
        for name in params:
            assert_close(mapped[1][name][n], grads[name], 1e-12, f"vmapped grad of {name}")


# ---- errors ---------------------------------------------------------------------------------

def test_bad_params_are_named():
    params = make_params("lstm")
    x, h0, _, _ = make_inputs("lstm", batch_first=False)
    with pytest.raises(TypeError, match="params must be a dict"):
        fj.lstm([params], x)
    with pytest.raises(KeyError, match="none of PyTorch's"):
        fj.lstm({"w": params["weight_ih_l0"]}, x)
    missing = dict(params)
    del missing["weight_hh_l1_reverse"]
    with pytest.raises(KeyError, match=r"params is missing \[.weight_hh_l1_reverse.\]"):
        fj.lstm(missing, x)
    with pytest.raises(ValueError, match="unexpected keys.*'proj'"):
        fj.lstm({**params, "proj": params["bias_ih_l0"]}, x)
    with pytest.raises(KeyError, match=r"params is missing \[.weight_ih_l2"):
        fj.lstm(params, x, num_layers=3)
    with pytest.raises(ValueError, match="unexpected keys.*reverse"):
        fj.lstm(params, x, bidirectional=False)
    wrong_shape = {**params, "weight_ih_l1": params["weight_ih_l1"][:, :H]}
    with pytest.raises(ValueError, match=r"params\['weight_ih_l1'\] must have shape \(16, 8\)"):
        fj.lstm(wrong_shape, x)
    wrong_dtype = {**params, "bias_hh_l0": params["bias_hh_l0"].astype(np.float32)}
    with pytest.raises(TypeError, match=r"params\['bias_hh_l0'\] must have dtype float64"):
        fj.lstm(wrong_dtype, x)
    with pytest.raises(TypeError, match=r"params\['weight_hh_l0'\] must be an array"):
        fj.lstm({**params, "weight_hh_l0": params["weight_hh_l0"].tolist()}, x)
    with pytest.raises(ValueError, match=r"params\['weight_ih_l0'\] must have shape \(12, 3\)"):
        fj.gru(params, x)   # LSTM weights (4H rows) in a GRU


def test_bad_inputs_are_named():
    params = make_params("lstm")
    x, (h_0, c_0), _, _ = make_inputs("lstm", batch_first=False)
    with pytest.raises(ValueError, match="x must be 3-D"):
        fj.lstm(params, x[0])
    with pytest.raises(TypeError, match="x must have dtype float32 or float64"):
        fj.lstm(params, x.astype(np.int32))
    with pytest.raises(TypeError, match=r"weight_ih_l0'\] must have dtype float32"):
        fj.lstm(params, x.astype(np.float32))
    with pytest.raises(TypeError, match=r"h0 must be a pair \(h_0, c_0\)"):
        fj.lstm(params, x, h_0)
    with pytest.raises(ValueError, match=r"h0\[1\] \(c_0\) must have shape \(4, 4, 4\)"):
        fj.lstm(params, x, (h_0, c_0[:2]))
    with pytest.raises(TypeError, match="h0 must be a single array"):
        fj.gru(make_params("gru"), x, (h_0, c_0))
    with pytest.raises(ValueError, match=r"lengths must have shape \(4,\)"):
        fj.lstm(params, x, lengths=LENGTHS[:2])
    with pytest.raises(TypeError, match="lengths must hold integers"):
        fj.lstm(params, x, lengths=LENGTHS.astype(np.float64))
    with pytest.raises(ValueError, match=r"lengths must be in \[1, 7\]"):
        fj.lstm(params, x, lengths=LENGTHS + 1)
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu'"):
        fj.rnn(make_params("rnn_tanh"), x, nonlinearity="sigmoid")


def test_lengths_out_of_range_under_jit_fail_the_computation():
    """Traced lengths are checked by the kernels: an error, never a result."""
    params = make_params("gru")
    x = np.random.default_rng(0).standard_normal((T, B, I))
    run = jax.jit(lambda lengths: fj.gru(params, x, lengths=lengths)[0])
    run(LENGTHS).block_until_ready()
    with pytest.raises(Exception, match=r"lengths must be in \[1, 7\]"):
        run(LENGTHS * 0).block_until_ready()


def test_float64_without_x64_is_refused():
    params = make_params("gru")
    jax.config.update("jax_enable_x64", False)   # the fixture restores it
    x = np.zeros((T, B, I))
    with pytest.raises(TypeError, match="x is float64.*jax_enable_x64"):
        fj.gru(params, x)
    with pytest.raises(TypeError, match="dtype is float64.*jax_enable_x64"):
        fj.init_params("gru", I, H, dtype=np.float64)


@pytest.mark.parametrize("kind", KINDS)
def test_init_params_is_pytorchs_layout(kind):
    """The names and shapes of torch.nn's state_dict, PyTorch's init range, the dtype."""
    torch = pytest.importorskip("torch")
    params = fj.init_params(kind, I, H, num_layers=2, bidirectional=True, dtype=np.float32,
                            seed=4)
    if kind.startswith("rnn"):
        module = torch.nn.RNN(I, H, num_layers=2, bidirectional=True, nonlinearity=kind[4:])
    else:
        module = getattr(torch.nn, kind.upper())(I, H, num_layers=2, bidirectional=True)
    expected = module.state_dict()
    assert list(params) == list(expected)
    for name, value in params.items():
        assert value.shape == tuple(expected[name].shape) and value.dtype == np.float32, name
        assert float(abs(value).max()) <= 1 / np.sqrt(H)
    assert not np.array_equal(params["weight_hh_l0"], params["weight_hh_l0_reverse"])
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in params.items()})
    no_bias = fj.init_params(kind, I, H, bias=False)
    assert list(no_bias) == ["weight_ih_l0", "weight_hh_l0"]


def test_init_params_bad_arguments_are_named():
    with pytest.raises(ValueError, match="cell must be one of"):
        fj.init_params("transformer", I, H)
    with pytest.raises(ValueError, match="hidden_size must be >= 1"):
        fj.init_params("gru", I, 0)
    with pytest.raises(TypeError, match="num_layers must be an integer"):
        fj.init_params("gru", I, H, num_layers=1.5)
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        fj.init_params("gru", I, H, dtype=np.int32)


def test_import_fastrnn_does_not_import_jax(tmp_path):
    code = "import sys, fastrnn; print('jax' in sys.modules)"
    out = run_python(["-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
