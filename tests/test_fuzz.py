"""Fuzz the functional kernels against a float64 NumPy reference (issue 9).

Hypothesis draws the cell, dtype, shapes (B around 8/9, where the kernels switch from
splitting columns to splitting rows), lengths, direction, biases, initial states, thread
counts and the memory layout of x, out and dy (strided and negatively strided views,
batch-first transposes, fields of structured arrays), and checks y, the final state, dx,
the initial-state gradient and every weight gradient against a direct transcription of
PyTorch's equations. A few seconds in CI; FASTRNN_FUZZ_EXAMPLES=<n> runs n examples.
"""
import os

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fastrnn  # noqa: E402
from fastrnn import functional as F  # noqa: E402
from helpers import GATES  # noqa: E402

EXAMPLES = int(os.environ.get("FASTRNN_FUZZ_EXAMPLES", "40"))


# ---- reference: PyTorch's equations, one step at a time, float64 ---------------------------

def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _step(cell, xg, h, c, w_hh, b_hh):
    """One step for the active rows. xg: x @ w_ih.T + b_ih. Returns (h', c', saved)."""
    gh = h @ w_hh.T + b_hh
    if cell.startswith("rnn"):
        pre = xg + gh
        act = {"rnn_tanh": np.tanh, "rnn_relu": lambda a: np.maximum(a, 0.0),
               "rnn_identity": lambda a: a}[cell]
        h_new = act(pre)
        return h_new, None, (pre, h_new)
    if cell == "gru":
        (xr, xz, xn), (hr, hz, hn) = np.split(xg, 3, axis=1), np.split(gh, 3, axis=1)
        r, z = _sigmoid(xr + hr), _sigmoid(xz + hz)
        n = np.tanh(xn + r * hn)
        return (1 - z) * n + z * h, None, (r, z, n, hn)
    i, f, g, o = np.split(xg + gh, 4, axis=1)
    i, f, g, o = _sigmoid(i), _sigmoid(f), np.tanh(g), _sigmoid(o)
    c_new = f * c + i * g
    return o * np.tanh(c_new), c_new, (i, f, g, o, c_new)


def _step_backward(cell, saved, h, c, dh, dc):
    """Gradients of one step: (d x-side pre-activations, d h-side pre-activations, dh_prev
    without the W_hh term, dc_prev)."""
    if cell.startswith("rnn"):
        pre, h_new = saved
        d = dh * {"rnn_tanh": 1 - h_new ** 2, "rnn_relu": pre > 0, "rnn_identity": 1.0}[cell]
        return d, d, 0.0, None
    if cell == "gru":
        r, z, n, hn = saved
        dn = dh * (1 - z) * (1 - n ** 2)
        dr = dn * hn * r * (1 - r)
        dz = dh * (h - n) * z * (1 - z)
        return (np.concatenate([dr, dz, dn], axis=1), np.concatenate([dr, dz, dn * r], axis=1),
                dh * z, None)
    i, f, g, o, c_new = saved
    tc = np.tanh(c_new)
    dc_total = dc + dh * o * (1 - tc ** 2)
    d = np.concatenate([dc_total * g * i * (1 - i), dc_total * c * f * (1 - f),
                        dc_total * i * (1 - g ** 2), dh * tc * o * (1 - o)], axis=1)
    return d, d, 0.0, dc_total * f


def reference(cell, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, dy, dh_T, dc_T):
    """Forward and backward in float64. Returns y, h_T, c_T, dx, dh0, dc0, grads."""
    T, B, _ = x.shape
    H = w_hh.shape[1]
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    h, c = h0.copy(), c0.copy()
    y = np.zeros((T, B, H))
    tape = []
    for s in range(T):
        rows = np.flatnonzero(s < lengths)
        t = lengths[rows] - 1 - s if reverse else np.full(rows.size, s)
        xg = x[t, rows] @ w_ih.T + b_ih
        h_new, c_new, saved = _step(cell, xg, h[rows], c[rows], w_hh, b_hh)
        tape.append((rows, t, h[rows].copy(), c[rows].copy(), saved))
        h[rows] = h_new
        if c_new is not None:
            c[rows] = c_new
        y[t, rows] = h_new
    h_T, c_T = h.copy(), c.copy()
    dx = np.zeros_like(x)
    grads = {"weight_ih": np.zeros_like(w_ih), "weight_hh": np.zeros_like(w_hh),
             "bias_ih": np.zeros_like(b_ih), "bias_hh": np.zeros_like(b_hh)}
    dh, dc = dh_T.copy(), dc_T.copy()
    for rows, t, h_prev, c_prev, saved in reversed(tape):
        d_x, d_h, dh_direct, dc_prev = _step_backward(cell, saved, h_prev, c_prev,
                                                      dh[rows] + dy[t, rows], dc[rows])
        grads["weight_ih"] += d_x.T @ x[t, rows]
        grads["bias_ih"] += d_x.sum(axis=0)
        grads["weight_hh"] += d_h.T @ h_prev
        grads["bias_hh"] += d_h.sum(axis=0)
        dx[t, rows] += d_x @ w_ih
        dh[rows] = dh_direct + d_h @ w_hh
        if dc_prev is not None:
            dc[rows] = dc_prev
    return y, h_T, c_T, dx, dh, dc, grads


# ---- layouts -----------------------------------------------------------------------------

LAYOUTS = ["contiguous", "reversed time", "reversed batch", "reversed features",
           "batch-first transpose", "slice of wider", "structured field"]


def in_layout(a, layout):
    """A view with a's values in the given memory layout."""
    T, B, F_ = a.shape
    if layout == "contiguous":
        view = np.empty_like(a)
    elif layout == "reversed time":
        view = np.empty_like(a)[::-1]
    elif layout == "reversed batch":
        view = np.empty_like(a)[:, ::-1]
    elif layout == "reversed features":
        view = np.empty_like(a)[:, :, ::-1]
    elif layout == "batch-first transpose":
        view = np.empty((B, T, F_), a.dtype).transpose(1, 0, 2)
    elif layout == "slice of wider":
        view = np.empty((T, B, 2 * F_ + 1), a.dtype)[:, :, F_ + 1:]
    else:
        rec = np.zeros((T, B), np.dtype([("pad", "u1"), ("v", a.dtype, (F_,))]))
        view = rec["v"]
    view[...] = a
    return view


@st.composite
def cases(draw):
    cell = draw(st.sampled_from(list(GATES)))
    T = draw(st.integers(1, 5))
    B = draw(st.sampled_from([1, 2, 3, 7, 8, 9, 10, 16, 17]))
    return dict(
        cell=cell, T=T, B=B, I=draw(st.integers(1, 6)), H=draw(st.integers(1, 7)),
        dtype=draw(st.sampled_from([np.float32, np.float64])),
        lengths=draw(st.none() | st.lists(st.integers(1, T), min_size=B, max_size=B)),
        reverse=draw(st.booleans()), bias=draw(st.booleans()), state=draw(st.booleans()),
        dstate=draw(st.booleans()), with_dy=draw(st.booleans() | st.just(True)),
        threads=draw(st.sampled_from([1, 2, 3])),
        x_layout=draw(st.sampled_from(LAYOUTS)),
        out_layout=draw(st.sampled_from([None] + LAYOUTS)),
        dy_layout=draw(st.sampled_from(LAYOUTS)),
        seed=draw(st.integers(0, 2 ** 31 - 1)))


@settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 40,
          suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_functional_matches_float64_reference(case):
    cell, T, B, I, H, dtype = (case[k] for k in ("cell", "T", "B", "I", "H", "dtype"))
    rng = np.random.default_rng(case["seed"])
    G = GATES[cell]
    w_ih, w_hh = (rng.normal(scale=0.5, size=s).astype(dtype) for s in ((G * H, I), (G * H, H)))
    b_ih, b_hh = ((rng.normal(scale=0.5, size=G * H).astype(dtype) for _ in range(2))
                  if case["bias"] else (None, None))
    x = rng.normal(size=(T, B, I)).astype(dtype)
    h0, c0, dh_T, dc_T, dy = (rng.normal(size=s).astype(dtype)
                              for s in ((B, H), (B, H), (B, H), (B, H), (T, B, H)))
    lstm = cell == "lstm"
    state = ((h0, c0) if lstm else h0) if case["state"] else None
    dstate = ((dh_T, dc_T) if lstm else dh_T) if case["dstate"] else None
    if not case["state"]:
        h0, c0 = np.zeros_like(h0), np.zeros_like(c0)
    if not case["dstate"]:
        dh_T, dc_T = np.zeros_like(dh_T), np.zeros_like(dc_T)
    if not lstm:
        c0, dc_T = np.zeros_like(c0), np.zeros_like(dc_T)
    if not case["with_dy"]:
        dy = np.zeros_like(dy)
    out = None if case["out_layout"] is None else in_layout(np.zeros((T, B, H), dtype), case["out_layout"])

    previous = fastrnn.get_num_threads()
    fastrnn.set_num_threads(case["threads"])
    try:
        y, state_T, ws = F.recurrent_forward(cell, in_layout(x, case["x_layout"]), w_ih, w_hh,
                                             b_ih, b_hh, state=state, lengths=case["lengths"],
                                             reverse=case["reverse"], out=out)
        dx, dstate0, grads = F.recurrent_backward(
            ws, in_layout(dy, case["dy_layout"]) if case["with_dy"] else None, dstate)
    finally:
        fastrnn.set_num_threads(previous)

    f64 = lambda a: np.zeros(G * H) if a is None else a.astype(np.float64)  # noqa: E731
    ref = reference(cell, x.astype(np.float64), f64(w_ih), f64(w_hh), f64(b_ih), f64(b_hh),
                    f64(h0), f64(c0), case["lengths"], case["reverse"], f64(dy), f64(dh_T),
                    f64(dc_T))
    y_ref, h_ref, c_ref, dx_ref, dh0_ref, dc0_ref, grads_ref = ref
    h_T, c_T = state_T if lstm else (state_T, None)
    dh0, dc0 = dstate0 if lstm else (dstate0, None)
    tol = dict(rtol=1e-9, atol=1e-10) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-4)
    if out is not None:
        assert y is out
    checks = [("y", y, y_ref), ("h_T", h_T, h_ref), ("dx", dx, dx_ref), ("dh0", dh0, dh0_ref)]
    if lstm:
        checks += [("c_T", c_T, c_ref), ("dc0", dc0, dc0_ref)]
    for name in grads:
        checks.append((name, grads[name], grads_ref[name]))
    assert set(grads) == ({"weight_ih", "weight_hh", "bias_ih", "bias_hh"} if case["bias"]
                          else {"weight_ih", "weight_hh"})
    for name, got, want in checks:
        assert got.dtype == dtype, name
        np.testing.assert_allclose(got, want, err_msg=f"{name} {case}", **tol)
