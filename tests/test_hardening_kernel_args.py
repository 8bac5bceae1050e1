"""The compiled entry points never dereference a None or undersized buffer (issue 9, item 10).

A workspace is a plain object: a caller can replace its arrays (``ws.chist = None``). The
kernels used to take ``&x[0, 0]`` of whatever they got and crash; now every required buffer
is declared ``not None`` and every shape is checked against the others.
"""
import numpy as np
import pytest

from fastrnn import functional as F
from fastrnn._cpu import dense as _dense
from fastrnn._cpu import generate as _gen
from fastrnn._cpu import recurrent as _kernels
from helpers import GATES

T, B, I, H = 4, 3, 5, 6


def _forward(cell, rng, lengths=None, batch=B):
    G = GATES[cell]
    x = rng.standard_normal((T, batch, I))
    y, _, ws = F.recurrent_forward(cell, x, rng.standard_normal((G * H, I)),
                                   rng.standard_normal((G * H, H)), lengths=lengths)
    return y, ws


@pytest.mark.parametrize("batch", [B, 12], ids=["columns-path", "batch-path"])
@pytest.mark.parametrize("cell, field, value, error", [
    ("lstm", "chist", None, TypeError),
    ("lstm", "c0", None, TypeError),
    ("gru", "hn", None, TypeError),
    ("lstm", "h0", None, TypeError),
    ("lstm", "y", None, TypeError),
    ("lstm", "gates", np.zeros((1, 4 * H)), ValueError),
    ("lstm", "chist", np.zeros((1, H)), ValueError),
    ("gru", "hn", np.zeros((T * B - 1, H)), ValueError),
    ("rnn_tanh", "y", np.zeros((2, H)), ValueError),
    ("rnn_tanh", "h0", np.zeros((B, H + 1)), ValueError),
    ("lstm", "lengths", np.array([T + 5] * 12, dtype=np.int64), ValueError),
    ("lstm", "lengths", np.array([1], dtype=np.int64), ValueError),
])
def test_tampered_workspace_gives_a_clean_error(rng, batch, cell, field, value, error):
    y, ws = _forward(cell, rng, batch=batch)
    if field in ("h0",) and value is not None:
        value = np.zeros((batch, H + 1))
    if field == "lengths" and value.shape[0] == 12:
        value = value[:batch].copy()
    setattr(ws, field, value)
    # functional's own workspace check (ValueError) or, past it, the kernel's (TypeError for
    # None): either way a clean error, never a crash.
    with pytest.raises((TypeError, ValueError)):
        F.recurrent_backward(ws, np.ones_like(y))


def test_kernel_entry_points_refuse_none(rng):
    """Direct calls: every array the kernels read or write must be given."""
    y, ws = _forward("lstm", rng)
    dh, dc, dgh = np.zeros((B, H)), np.zeros((B, H)), np.zeros((B, 4 * H))
    args = dict(w_hh=ws.w_hh, h0=ws.h0, c0=ws.c0, lengths=None, gates=ws.gates, hn=None,
                chist=ws.chist, y=ws.y, dy=None, dh=dh, dc=dc, dgh=dgh)
    for name in ("gates", "w_hh", "h0", "y", "dh", "dgh", "chist", "c0", "dc"):
        bad = dict(args, **{name: None})
        with pytest.raises(TypeError):
            _kernels.backward_loop(3, False, T, B, *bad.values(), 1)
    # Per-token buffers one row short (the functional layer checks first; the kernel again).
    for name, short in (("gates", ws.gates[:-1]), ("chist", ws.chist[:-1])):
        bad = dict(args, **{name: np.ascontiguousarray(short)})
        with pytest.raises(ValueError, match=name):
            _kernels.backward_loop(3, False, T, B, *bad.values(), 1)
    # x None means no input side: then w_ih and dw_ih must be None too. (The float64
    # version is named: with x None, Cython's dispatch would pick float32's.)
    with pytest.raises(TypeError, match="no input side"):
        _kernels.weight_grads["double"](3, False, T, B, None, ws.w_ih, ws.h0, ws.y, ws.gates,
                                        None, dgh, np.zeros_like(ws.w_ih),
                                        np.zeros_like(ws.w_hh), None, None, None, 1)
    with pytest.raises(TypeError, match="w_ih and dw_ih"):
        _kernels.weight_grads(3, False, T, B, ws.x, None, ws.h0, ws.y, ws.gates, None, dgh,
                              np.zeros_like(ws.w_ih), np.zeros_like(ws.w_hh), None, None, None,
                              1)
    with pytest.raises(ValueError, match="dw_ih"):
        _kernels.weight_grads(3, False, T, B, ws.x, ws.w_ih, ws.h0, ws.y, ws.gates, None,
                              dgh, np.zeros((1, 1)), np.zeros_like(ws.w_hh), None, None,
                              None, 1)
    with pytest.raises(ValueError, match="gates"):
        _kernels.project_inputs(ws.x, ws.w_ih, np.zeros(4 * H), np.zeros((T * B - 1, 4 * H)))
    with pytest.raises(ValueError, match="op\\(b\\)"):
        _dense.parallel_gemm(False, False, np.ones((3, 4)), np.ones((2, 5)), np.zeros((3, 5)),
                               0.0)
    with pytest.raises(TypeError):
        _dense.parallel_gemm(False, False, np.ones((3, 4)), None, np.zeros((3, 5)), 0.0)


def _generate_args(rng, V=7, E=4, L=2, Bg=2, P=3, n_tokens=5):
    G = 4
    layers = [(rng.standard_normal((G * H, E if l == 0 else H)), rng.standard_normal((G * H, H)),
               np.zeros(G * H), np.zeros(G * H)) for l in range(L)]
    return dict(kind=3, embedding=rng.standard_normal((V, E)),
                w_ih=[l[0] for l in layers], w_hh=[l[1] for l in layers],
                b_ih=[l[2] for l in layers], b_hh=[l[3] for l in layers], table=None,
                out_w=rng.standard_normal((V, H)), out_b=np.zeros(V),
                prime=np.zeros((Bg, P), dtype=np.int64), n_tokens=n_tokens,
                uniforms=rng.random((n_tokens, Bg)), h=list(np.zeros((L, Bg, H))),
                c=list(np.zeros((L, Bg, H))), temperature=1.0, top_k=0, top_p=1.0, greedy=False,
                stop_id=-1, banned=np.zeros(V, dtype=np.uint8), num_threads=1,
                split_rows=True)


def test_generate_loop_checks_its_buffers(rng):
    good = _generate_args(rng)
    tokens, lengths = _gen.generate_loop(**good)
    assert tokens.shape == (2, 5)
    for name, value, error in [("c", None, TypeError), ("uniforms", None, TypeError),
                               ("embedding", None, (TypeError, ValueError)), ("banned", None, TypeError),
                               ("out_w", np.zeros((7, H + 1)), ValueError),
                               ("uniforms", np.zeros((2, 2)), ValueError),
                               ("prime", np.full((2, 3), 7, dtype=np.int64), ValueError),
                               ("w_hh", good["w_hh"][:1], ValueError),
                               ("table", np.zeros((7, 3)), ValueError)]:
        with pytest.raises(error):
            _gen.generate_loop(**dict(good, **{name: value}))


def test_output_rows_with_strided_elements_are_refused():
    """The kernels walk each row of y/dy as one contiguous block: other layouts are refused
    at the compiled entry point (functional copies such buffers before it gets there)."""
    T_, B_, H_ = 3, 9, 4
    strided = np.zeros((T_ * B_, 2 * H_))[:, ::2]
    with pytest.raises(ValueError, match="rows must be contiguous"):
        _kernels.forward_loop(0, False, T_, B_, np.zeros((H_, H_)), np.zeros(H_),
                              np.zeros((B_, H_)), None, None, np.zeros((T_ * B_, H_)), None,
                              None, strided, 1)
