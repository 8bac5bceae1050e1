"""The one recurrent engine (fastrnn._engine), parametrised over the Ops available here.

* "cpu": the compiled kernels (NumPy arrays);
* "reference": the GPU step loop (StepOps) with the gate math in NumPy;
* "fake-cupy": the same on the NumPy stand-in for CuPy (tests/fake_cupy.py), reached
  through fastrnn.functional's dispatch on the array type, exactly as a CuPy array is.

Each runs the same driver, so each gets the same answers (against the CPU kernels, float64)
and the same refusals of bad buffers and workspaces.
"""
import itertools

import numpy as np
import pytest

import fake_cupy
from fastrnn import _engine
from fastrnn import functional as F
from fastrnn._engine.cpu import CpuOps
from fastrnn._engine.driver import row_view
from fastrnn._engine.reference import ReferenceOps
from helpers import assert_close, run_python
from test_gpu_backend_cpu import GATES, LENGTHS, RTOL, B, H, I, T, _flat, state_like


class Device:
    """One Ops under test: how to move arrays there and back, and the forward to call."""

    def __init__(self, name, xp, ops):
        self.name, self.xp, self.ops = name, xp, ops

    def put(self, a):
        if a is None or isinstance(a, (list, int)):
            return a
        if isinstance(a, tuple):
            return tuple(self.put(v) for v in a)
        return self.xp.asarray(a) if self.xp is not np else a

    def host(self, a):
        if isinstance(a, tuple):
            return tuple(self.host(v) for v in a)
        return a.get() if hasattr(a, "get") and not isinstance(a, dict) else a

    def forward(self, cell, x, w, **kwargs):
        if self.name == "fake-cupy":   # the public API, dispatching on the array type
            return F.recurrent_forward(cell, self.put(x), *self.put(tuple(w)), **kwargs)
        return _engine.forward(self.ops, cell, x, *w, **kwargs)


@pytest.fixture(params=["cpu", "reference", "fake-cupy"])
def device(request, monkeypatch):
    if request.param == "cpu":
        return Device("cpu", np, CpuOps())
    if request.param == "reference":
        return Device("reference", np, ReferenceOps(np))
    cupy = fake_cupy.install(monkeypatch)
    return Device("fake-cupy", cupy, _engine.cuda_ops())


def weights(cell, rng, bias=True):
    G = GATES[cell]
    w = [rng.normal(scale=0.5, size=s) for s in ((G * H, I), (G * H, H))]
    return w + ([rng.normal(scale=0.5, size=(G * H,)) for _ in range(2)] if bias else [None, None])


@pytest.mark.parametrize("cell,reverse,lengths,bias", [
    (c, r, n, b) for c, r, n, b in itertools.product(GATES, (False, True), (None, LENGTHS),
                                                      (True, False))])
def test_every_ops_matches_the_cpu_kernels(device, cell, reverse, lengths, bias, rng):
    x, w = rng.normal(size=(T, B, I)), weights(cell, rng, bias)
    state, dstate = state_like(cell, rng), state_like(cell, rng)
    dy = rng.normal(size=(T, B, H))
    y_ref, st_ref, ws_ref = F.recurrent_forward(cell, x, *w, state=state, lengths=lengths,
                                                reverse=reverse)
    dx_ref, ds_ref, g_ref = F.recurrent_backward(ws_ref, dy, dstate)

    y, st, ws = device.forward(cell, x, w, state=device.put(state), lengths=lengths,
                               reverse=reverse)
    assert ws.ops is device.ops
    assert type(y) is device.xp.ndarray
    dx, ds, g = F.recurrent_backward(ws, device.put(dy), device.put(dstate))
    assert type(dx) is device.xp.ndarray
    assert_close(device.host(y), y_ref, RTOL, "y")
    assert_close(device.host(dx), dx_ref, RTOL, "dx")
    for a, b in zip(_flat(device.host(st)) + _flat(device.host(ds)), _flat(st_ref) + _flat(ds_ref)):
        assert_close(a, b, RTOL, "states")
    assert set(g) == set(g_ref)
    for name in g_ref:
        assert type(g[name]) is device.xp.ndarray
        assert_close(device.host(g[name]), g_ref[name], RTOL, name)


@pytest.mark.parametrize("cell,reverse,lengths", [
    (c, r, n) for c, r, n in itertools.product(GATES, (False, True), (None, LENGTHS))])
def test_every_ops_skips_the_initial_state_gradient_when_asked(device, cell, reverse, lengths,
                                                               rng, monkeypatch):
    """state0_grad=False on every Ops: dstate0 None, dx and the weight gradients equal to the
    full backward's on the same Ops, and the loop skips the first steps' product dGh W_hh
    (the dh it leaves plus that product is the full dh0)."""
    x, w = rng.normal(size=(T, B, I)), weights(cell, rng)
    state, dstate = state_like(cell, rng), state_like(cell, rng)
    dy = rng.normal(size=(T, B, H))
    left = []
    loop = device.ops.backward_loop

    def spied(*args, **kwargs):
        loop(*args, **kwargs)
        left.append((device.host(args[13]).copy(), device.host(args[15]).copy()))
    monkeypatch.setattr(device.ops, "backward_loop", spied)
    products = {True: 0, False: 0}
    if device.name != "cpu":
        matmul = device.xp.matmul

        def counting(a, b, out=None):
            if out is not None and out.shape == (B, H):
                products[wanted] += 1
            return matmul(a, b, out=out)
        monkeypatch.setattr(device.xp, "matmul", counting)
    results = []
    for wanted in (True, False):
        _, _, ws = device.forward(cell, x, w, state=device.put(state), lengths=lengths,
                                  reverse=reverse)
        dx, ds, g = F.recurrent_backward(ws, device.put(dy), device.put(dstate),
                                         state0_grad=wanted)
        results.append((device.host(dx), ds, {k: device.host(v) for k, v in g.items()}))
    (dx1, ds1, g1), (dx2, ds2, g2) = results
    assert ds2 is None and ds1 is not None
    np.testing.assert_array_equal(dx2, dx1)
    for name in g1:
        np.testing.assert_array_equal(g2[name], g1[name])
    (dh_full, _), (dh_partial, dgh_first) = left
    assert_close(dh_partial + dgh_first @ w[1], dh_full, RTOL, "dh0")
    if device.name != "cpu":   # the step loop: one product dGh W_hh (out (B, H)) fewer
        assert products[False] == products[True] - 1, products


@pytest.mark.parametrize("layout", ["half of a bidirectional output", "reversed time",
                                    "every other feature"])
def test_out_views_are_written_exactly_on_every_ops(device, layout, rng):
    """A walkable view is written in place, any other view through a copy (on the GPU too)."""
    x, w = rng.normal(size=(T, B, I)), weights("gru", rng)
    y_ref, _, ws_ref = F.recurrent_forward("gru", x, *w, lengths=LENGTHS)
    base = device.put(np.full((T, B, 2 * H), 7.0))
    out = {"half of a bidirectional output": base[:, :, H:],
           "reversed time": base[::-1, :, :H],
           "every other feature": base[:, :, ::2]}[layout]
    y, _, ws = device.forward("gru", x, w, lengths=LENGTHS, out=out)
    assert y is out
    assert_close(device.host(out), y_ref, RTOL, "y")
    dy = np.ones((T, B, H))
    dx_ref, _, _ = F.recurrent_backward(ws_ref, dy)
    dx, _, _ = F.recurrent_backward(ws, device.put(dy))
    assert_close(device.host(dx), dx_ref, RTOL, "dx")


def test_bad_buffers_are_refused_on_every_ops(device, rng):
    """The checks of issue 9 (aliased or overlapping out, caller grads and dx_out) hold on
    every device: the driver that runs them is the same."""
    xp, w = device.xp, weights("lstm", rng)
    big = device.put(rng.normal(size=T * B * (I + H)))
    x = big[:T * B * I].reshape(T, B, I)
    with pytest.raises(ValueError, match="out must not share memory with x"):
        device.forward("lstm", x, w, out=big[2:2 + T * B * H].reshape(T, B, H))
    repeated = xp.lib.stride_tricks.as_strided(device.put(np.zeros((B, H))), shape=(T, B, H),
                                               strides=(0, H * 8, 8))
    with pytest.raises(ValueError, match="out must not have elements that share memory"):
        device.forward("lstm", x, w, out=repeated)
    with pytest.raises(TypeError, match=f"out must be a {xp.__name__}.ndarray"):
        device.forward("lstm", x, w, out=[[[0.0] * H] * B] * T)
    with pytest.raises(TypeError, match="out must have dtype float64"):
        device.forward("lstm", x, w, out=device.put(np.zeros((T, B, H), np.float32)))

    def backward(**kwargs):
        _, _, ws = device.forward("lstm", x, w)
        return F.recurrent_backward(ws, device.put(np.ones((T, B, H))), **kwargs)

    def grads():
        return {k: device.put(np.zeros_like(v)) for k, v in
                zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), w)}

    bad = grads()
    del bad["bias_hh"]
    with pytest.raises(ValueError, match=r"grads is missing \['bias_hh'\]"):
        backward(grads=bad)
    bad = grads()
    bad["weight_hh"] = bad["weight_hh"].astype(np.float32)
    with pytest.raises(TypeError, match=r"grads\['weight_hh'\] must have dtype float64"):
        backward(grads=bad)
    bad = grads()
    bad["bias_hh"] = bad["bias_ih"]
    with pytest.raises(ValueError, match="must not share memory"):
        backward(grads=bad)
    with pytest.raises(ValueError, match="dx_out must be C-contiguous"):
        backward(dx_out=device.put(np.zeros((T, B, 2 * I)))[:, :, ::2])
    with pytest.raises(ValueError, match=r"grads\['weight_ih'\] must not share memory with x"):
        backward(grads={**grads(), "weight_ih": big.reshape(-1)[:w[0].size].reshape(w[0].shape)})
    dx, _, g = backward(grads=grads())   # the refusals left nothing half-done
    assert type(dx) is xp.ndarray and set(g) == {"weight_ih", "weight_hh", "bias_ih", "bias_hh"}


def test_workspace_is_consumed_once_and_checked_on_every_ops(device, rng):
    x, w = rng.normal(size=(T, B, I)), weights("gru", rng)
    dy = device.put(np.ones((T, B, H)))
    _, _, ws = device.forward("gru", x, w, lengths=LENGTHS)
    F.recurrent_backward(ws, dy)
    with pytest.raises(ValueError, match="already consumed"):
        F.recurrent_backward(ws, dy)
    _, _, ws = device.forward("gru", x, w)
    ws.gates = ws.gates[:-1]
    with pytest.raises(ValueError, match="ws.gates is not the array its forward saved"):
        F.recurrent_backward(ws, dy)
    _, _, ws = device.forward("gru", x, w, lengths=LENGTHS)
    ws.lengths = np.array([9, 9, 9])
    with pytest.raises(ValueError, match="ws.lengths is not the array its forward saved"):
        F.recurrent_backward(ws, dy)


def test_functional_dispatches_on_the_array_type(monkeypatch, rng):
    cupy = fake_cupy.install(monkeypatch)
    x, w = rng.normal(size=(T, B, I)), weights("rnn_tanh", rng)
    _, _, ws = F.rnn_tanh_forward(x, *w)
    assert ws.ops is _engine.cpu_ops()
    y, h, ws = F.rnn_tanh_forward(cupy.asarray(x), *(cupy.asarray(a) for a in w))
    assert ws.ops is _engine.cuda_ops() and type(y) is cupy.ndarray and type(h) is cupy.ndarray
    with pytest.raises(TypeError, match="w_hh must be a cupy.ndarray on x's device"):
        F.rnn_tanh_forward(cupy.asarray(x), cupy.asarray(w[0]), w[1])


def test_row_view_merges_time_and_batch_without_copying():
    a = np.zeros((T, B, 2 * H))
    rows = row_view(a[:, :, H:])
    assert rows.shape == (T * B, H) and rows.strides == (2 * H * 8, 8)
    assert np.shares_memory(rows, a)
    assert row_view(a[::-1]) is None            # negative row stride
    assert row_view(a.transpose(1, 0, 2)) is None   # (T, B) axes do not merge
    assert row_view(a[:, :, ::2]) is None       # last axis not contiguous
    one = row_view(np.zeros((1, 1, H)))
    assert one.strides == (H * 8, 8)            # a leading dimension BLAS accepts


def test_importing_the_engine_does_not_import_cupy(tmp_path):
    code = ("import sys, fastrnn._engine, fastrnn._engine.cuda, fastrnn._engine.reference, "
            "fastrnn._device; assert 'cupy' not in sys.modules")
    run_python(["-c", code], cwd=tmp_path, check=True)
