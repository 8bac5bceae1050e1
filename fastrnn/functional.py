"""Functional recurrent kernels: one layer, one direction, a whole sequence, plain arrays.

This is the layer to embed in other training code::

    y, state, ws = recurrent_forward("lstm", x, w_ih, w_hh, b_ih, b_hh, state=(h0, c0))
    dx, dstate0, grads = recurrent_backward(ws, dy, dstate=(dh_T, dc_T))

``lstm_forward``/``gru_forward``/``rnn_tanh_forward``/``rnn_relu_forward`` (and the matching
``*_backward``) are the same with the cell fixed. Shapes (time-major):

    x (T, B, I)   w_ih (G*H, I)   w_hh (G*H, H)   b_ih, b_hh (G*H,)   G = 1 RNN, 3 GRU, 4 LSTM
    state  h (B, H), or (h, c) for the LSTM; None means zeros
    lengths (B,) ints in [1, T], any order: PyTorch packed-sequence semantics on a padded batch
    y (T, B, H): zero past each sequence's length; state: each sequence's state at its last step

The workspace returned by forward holds what backward needs; backward consumes it (once).
"""
import threading

import numpy as np

from . import threads
from ._cpu import recurrent as _kernels
from ._validation import (as_float_dtype, check_array, check_no_shared_memory,
                          check_output_buffer)
from .cells import get_cell


class RecurrentWorkspace:
    """Opaque record of one forward pass, consumed by :func:`recurrent_backward`."""

    __slots__ = ("cell", "reverse", "T", "B", "x", "w_ih", "w_hh", "has_bias", "h0", "c0",
                 "lengths", "gates", "hn", "chist", "y", "consumed")

    def __repr__(self):
        return (f"RecurrentWorkspace(cell={self.cell.name!r}, T={self.T}, B={self.B}, "
                f"reverse={self.reverse}, consumed={self.consumed})")


def _rows(a):
    """View a (T, B, F) numpy array as (T*B, F) rows the kernels can walk, without copying;
    None when its layout does not allow that.

    The kernels address row r at ``base + r * ld`` with an integer leading dimension ``ld``
    in elements and read each row as one block, as BLAS does: so the row stride must be
    positive, a whole number of elements and at least a row long (rows do not overlap), the
    last axis contiguous and the data aligned. Anything else (a negative stride, a field of
    a structured array) is computed in a fresh buffer instead.
    """
    try:
        rows = np.reshape(a, (a.shape[0] * a.shape[1], a.shape[2]), copy=False)
    except ValueError:
        return None
    row_stride = rows.strides[0] if rows.shape[0] > 1 else rows.shape[1] * rows.itemsize
    if (rows.shape[1] > 1 and rows.strides[1] != rows.itemsize) or not rows.flags.aligned:
        return None
    if row_stride <= 0 or row_stride % rows.itemsize or row_stride < rows.shape[1] * rows.itemsize:
        return None
    if rows.strides[0] != row_stride:   # a single row: give it a leading dimension BLAS accepts
        rows = np.lib.stride_tricks.as_strided(rows, strides=(row_stride, rows.itemsize))
    return rows


def _consume(ws):
    """Mark ``ws`` consumed, atomically: of several concurrent backwards exactly one runs."""
    with _consume_lock:
        if ws.consumed:
            raise ValueError("ws was already consumed by an earlier backward; run forward again")
        ws.consumed = True


_consume_lock = threading.Lock()


def _check_lengths(lengths, T, B):
    if lengths is None:
        return None
    arr = np.asarray(lengths)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"lengths must hold integers, got dtype {arr.dtype}")
    if arr.shape != (B,):
        raise ValueError(f"lengths must have shape ({B},) (one per sequence), got {arr.shape}")
    if B and (arr.min() < 1 or arr.max() > T):
        raise ValueError(f"lengths must be in [1, {T}] (T = {T} steps), got values in "
                         f"[{arr.min()}, {arr.max()}]")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _split_state(cell, state, name):
    if cell.has_cell_state:
        if state is None:
            return None, None
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise ValueError(f"{name} must be a tuple (h, c) for an LSTM, got {type(state).__name__}")
        return state[0], state[1]
    if isinstance(state, (tuple, list)):
        raise ValueError(f"{name} must be a single array h for a {cell.name} cell, not a tuple")
    return state, None


def _state_array(a, name, B, H, dtype, xp=np):
    """A fresh contiguous (B, H) copy (the kernels update states in place), zeros for None.
    ``xp``: the array module (numpy, or cupy for the GPU engine)."""
    if a is None:
        return xp.zeros((B, H), dtype=dtype)
    a = check_array(a, name, ndim=2, shape=(B, H), dtype=dtype, contiguous=False)
    return xp.array(a, dtype=dtype, order="C", copy=True)


def new_weight_grads(ws, xp=np):
    """Zeroed gradient arrays for the weights (and biases) of a forward's workspace."""
    grads = {"weight_ih": xp.zeros_like(ws.w_ih), "weight_hh": xp.zeros_like(ws.w_hh)}
    if ws.has_bias:
        GH = ws.w_hh.shape[0]
        grads["bias_ih"] = xp.zeros(GH, ws.w_hh.dtype)
        grads["bias_hh"] = xp.zeros(GH, ws.w_hh.dtype)
    return grads


def check_layer_args(xp, cell, x, w_ih, w_hh, b_ih, b_hh):
    """Check the arguments of a one-layer forward (shared by the CPU and GPU engines).

    ``xp`` is the array module (numpy or cupy). Returns ``(spec, x, w_ih, w_hh, b_ih, b_hh,
    has_bias)`` with missing biases replaced by zeros.
    """
    spec = get_cell(cell)
    x = xp.asarray(x)
    dtype = as_float_dtype(x.dtype, "x.dtype")
    x = check_array(x, "x", ndim=3)
    T, B, I = x.shape
    if T < 1 or B < 1 or I < 1:
        raise ValueError(f"x must have at least one step, sequence and feature, got shape {x.shape}")
    w_hh = check_array(w_hh, "w_hh", ndim=2, dtype=dtype)
    GH, H = w_hh.shape
    if H < 1:   # as the layers (hidden_size >= 1): an empty output is a mistake, not a model
        raise ValueError(f"w_hh must have shape ({spec.gates} * H, H) with H >= 1, got {w_hh.shape}")
    if GH != spec.gates * H:
        raise ValueError(f"w_hh must have shape ({spec.gates} * H, H) for a {spec.name} cell, "
                         f"got {w_hh.shape}")
    w_ih = check_array(w_ih, "w_ih", shape=(GH, I), dtype=dtype)
    has_bias = b_ih is not None or b_hh is not None
    b_ih = xp.zeros(GH, dtype) if b_ih is None else check_array(b_ih, "b_ih", shape=(GH,), dtype=dtype)
    b_hh = xp.zeros(GH, dtype) if b_hh is None else check_array(b_hh, "b_hh", shape=(GH,), dtype=dtype)
    return spec, x, w_ih, w_hh, b_ih, b_hh, has_bias


def recurrent_forward(cell, x, w_ih, w_hh, b_ih=None, b_hh=None, state=None, lengths=None,
                      reverse=False, out=None):
    """Run one recurrent layer in one direction over a whole sequence.

    cell: "rnn_tanh", "rnn_relu", "gru" or "lstm". x: (T, B, I) float32 or float64; weights
    and state must have x's dtype. ``reverse=True`` walks each sequence from its own last
    step. ``out`` is an optional (T, B, H) numpy array of x's dtype to write y into: any
    writeable view (such as one half of a bidirectional output, or a reversed one) whose
    elements overlap neither each other nor x, the weights or the biases. The kernels write
    straight into it when its rows can be walked with a positive leading dimension (then
    backward reads y back from it: leave it unchanged until then), else into a fresh buffer
    that is then copied into ``out``.

    Returns ``(y, state_T, workspace)``; state_T is h_T (B, H), or (h_T, c_T) for the LSTM.
    """
    spec, x, w_ih, w_hh, b_ih, b_hh, has_bias = check_layer_args(np, cell, x, w_ih, w_hh, b_ih, b_hh)
    dtype = x.dtype
    T, B, _ = x.shape
    GH, H = w_hh.shape
    h0, c0 = _split_state(spec, state, "state")
    h = _state_array(h0, "state h", B, H, dtype)
    c = _state_array(c0, "state c", B, H, dtype) if spec.has_cell_state else None
    lens = _check_lengths(lengths, T, B)
    if out is None:
        out = np.empty((T, B, H), dtype=dtype)
    else:
        check_output_buffer(out, "out", (T, B, H), dtype, contiguous=False)
        check_no_shared_memory({"out": out}, {"x": x, "w_ih": w_ih, "w_hh": w_hh,
                                              "b_ih": b_ih, "b_hh": b_hh})
    y_rows = _rows(out)
    copy_back = y_rows is None
    if copy_back:   # the kernels write into a fresh buffer, copied into out at the end
        y_rows = np.empty((T * B, H), dtype=dtype)

    ws = RecurrentWorkspace()
    ws.cell, ws.reverse, ws.T, ws.B, ws.has_bias, ws.consumed = spec, bool(reverse), T, B, has_bias, False
    ws.x, ws.w_ih, ws.w_hh, ws.lengths = x.reshape(T * B, x.shape[2]), w_ih, w_hh, lens
    ws.h0 = h.copy()
    ws.c0 = c.copy() if c is not None else None
    ws.gates = np.empty((T * B, GH), dtype=dtype)
    ws.hn = np.empty((T * B, H), dtype=dtype) if spec.name == "gru" else None
    ws.chist = np.empty((T * B, H), dtype=dtype) if spec.has_cell_state else None
    ws.y = y_rows   # the workspace keeps the buffer the kernels wrote

    nt = threads.get_num_threads()
    # Every GEMM is split over fastrnn's own OpenMP threads, with BLAS on one thread (see
    # threads.py).
    with threads.blas_single_threaded():
        _kernels.project_inputs(ws.x, w_ih, b_ih, ws.gates, nt)
        _kernels.forward_loop(spec.kind, ws.reverse, T, B, w_hh, b_hh, h, c, lens, ws.gates,
                              ws.hn, ws.chist, ws.y, np.empty((B, GH), dtype), nt)
    if copy_back:
        out[...] = y_rows.reshape(T, B, H)
    return out, ((h, c) if spec.has_cell_state else h), ws


def recurrent_backward(ws, dy=None, dstate=None, grads=None, dx_out=None):
    """Backpropagate through the forward pass recorded in ``ws``.

    dy: (T, B, H) gradient at the outputs, or None. dstate: gradient at the final state,
    shaped like the state (None means zeros).

    ``grads`` may be a dict with exactly "weight_ih" (G*H, I), "weight_hh" (G*H, H) (and
    "bias_ih", "bias_hh" (G*H,) when the forward had biases) to accumulate into; by default
    new ones are returned. ``dx_out`` may be a (T, B, I) array to accumulate dx into. These
    must be writeable C-contiguous numpy arrays of the forward's dtype, sharing no memory
    with each other, x, the weights, the forward's ``out`` or dy.

    A workspace is consumed by its first backward; another backward on it (also one running
    at the same time in another thread) raises ValueError.

    Returns ``(dx, dstate0, grads)``: dx (T, B, I), the gradient at the initial state
    (shaped like it), and the parameter gradients.
    """
    if not isinstance(ws, RecurrentWorkspace):
        raise TypeError(f"ws must be the workspace returned by recurrent_forward, got {type(ws).__name__}")
    if ws.consumed:   # early, friendly; the authoritative check is _consume below
        raise ValueError("ws was already consumed by an earlier backward; run forward again")
    spec, T, B = ws.cell, ws.T, ws.B
    # Only fields that backward never clears are read before the workspace is consumed.
    dtype = ws.w_hh.dtype
    GH, H = ws.w_hh.shape
    I = ws.x.shape[1]
    dy_rows = None
    if dy is not None:
        dy = check_array(dy, "dy", ndim=3, shape=(T, B, H), dtype=dtype, contiguous=False)
        dy_rows = _rows(dy)
        if dy_rows is None:   # a layout the kernels cannot walk: copy once
            dy_rows = _rows(np.array(dy, order="C", copy=True))
    dh0, dc0 = _split_state(spec, dstate, "dstate")
    dh = _state_array(dh0, "dstate h", B, H, dtype)
    dc = _state_array(dc0, "dstate c", B, H, dtype) if spec.has_cell_state else None
    if grads is not None:
        _check_grads(grads, ws.has_bias, GH, H, I, dtype)
    if dx_out is not None:
        check_output_buffer(dx_out, "dx_out", (T, B, I), dtype)
    outputs = {"dx_out": dx_out}
    outputs.update((f"grads[{k!r}]", v) for k, v in (grads or {}).items())
    check_no_shared_memory(outputs, {"x": ws.x, "w_ih": ws.w_ih, "w_hh": ws.w_hh,
                                     "the forward's out": ws.y, "dy": dy_rows})

    _consume(ws)
    gates, hn, chist = ws.gates, ws.hn, ws.chist
    _check_saved(ws, spec, GH, H, I, dtype, gates, hn, chist)
    dgh_first = np.empty((B, GH), dtype)
    nt = threads.get_num_threads()
    with threads.blas_single_threaded():
        _kernels.backward_loop(spec.kind, ws.reverse, T, B, ws.w_hh, ws.h0, ws.c0, ws.lengths,
                               gates, hn, chist, ws.y, dy_rows, dh, dc, dgh_first, nt)
        # Outputs are allocated only now, after the loop has freed its packed copy of W_hh,
        # so that the two never coexist (peak memory).
        if grads is None:
            grads = new_weight_grads(ws)
        if dx_out is None:
            dx_out = np.zeros((T, B, I), dtype=dtype)
        _kernels.weight_grads(spec.kind, ws.reverse, T, B, ws.x, ws.w_ih, ws.h0, ws.y, gates,
                              hn, dgh_first, grads["weight_ih"], grads["weight_hh"],
                              grads.get("bias_ih"), grads.get("bias_hh"),
                              dx_out.reshape(T * B, I), nt)
    # The saved activations are now gradients; drop the big buffers early.
    ws.gates = ws.hn = ws.chist = None
    return dx_out, ((dh, dc) if spec.has_cell_state else dh), grads


def _check_grads(grads, has_bias, GH, H, I, dtype):
    """Check a caller's gradient dict: exactly the expected keys, each a buffer the kernels
    can accumulate into."""
    if not isinstance(grads, dict):
        raise TypeError(f"grads must be a dict of arrays, got {type(grads).__name__}")
    shapes = {"weight_ih": (GH, I), "weight_hh": (GH, H)}
    if has_bias:
        shapes.update(bias_ih=(GH,), bias_hh=(GH,))
    missing = [k for k in shapes if k not in grads]
    if missing:
        raise ValueError(f"grads is missing {missing}: it must have exactly the keys "
                         f"{list(shapes)}" + ("" if has_bias else " (the forward had no biases)"))
    extra = [k for k in grads if k not in shapes]
    if extra:
        raise ValueError(f"grads has unexpected keys {extra}: it must have exactly the keys "
                         f"{list(shapes)}" + ("" if has_bias else " (the forward had no biases)"))
    for key, shape in shapes.items():
        check_output_buffer(grads[key], f"grads[{key!r}]", shape, dtype)


def _check_saved(ws, spec, GH, H, I, dtype, gates, hn, chist):
    """The workspace must hold what its forward saved: its attributes are reachable from
    Python, and a replaced one must not lead the kernels out of bounds."""
    rows, B = ws.T * ws.B, ws.B
    expected = {"gates": (gates, (rows, GH)), "x": (ws.x, (rows, I)), "w_ih": (ws.w_ih, (GH, I)),
                "h0": (ws.h0, (B, H)), "y": (ws.y, (rows, H)),
                "c0": (ws.c0, (B, H) if spec.has_cell_state else None),
                "hn": (hn, (rows, H) if spec.name == "gru" else None),
                "chist": (chist, (rows, H) if spec.has_cell_state else None)}
    for name, (a, shape) in expected.items():
        if shape is None:
            ok = a is None
        else:
            ok = (type(a) is np.ndarray and a.shape == shape and a.dtype == dtype
                  and (a.flags.c_contiguous or name == "y"))
        if not ok:
            raise ValueError(f"ws.{name} is not the array its forward saved; run forward again")
    lengths = ws.lengths
    if lengths is not None and not (type(lengths) is np.ndarray and lengths.shape == (B,)
                                    and lengths.dtype == np.int64 and lengths.flags.c_contiguous
                                    and lengths.min() >= 1 and lengths.max() <= ws.T):
        raise ValueError("ws.lengths is not the array its forward saved; run forward again")
    if _rows(ws.y.reshape(ws.T, B, H)) is None:
        raise ValueError("ws.y is not the array its forward saved; run forward again")


def _bind(cell):
    def forward(x, w_ih, w_hh, b_ih=None, b_hh=None, state=None, lengths=None, reverse=False,
                out=None):
        return recurrent_forward(cell, x, w_ih, w_hh, b_ih, b_hh, state, lengths, reverse, out)

    def backward(ws, dy=None, dstate=None, grads=None, dx_out=None):
        if ws.cell.name != cell:
            raise ValueError(f"ws comes from a {ws.cell.name} forward, not {cell}")
        return recurrent_backward(ws, dy, dstate, grads, dx_out)

    forward.__name__, backward.__name__ = f"{cell}_forward", f"{cell}_backward"
    forward.__doc__ = f"recurrent_forward with cell={cell!r}; see its docstring."
    backward.__doc__ = f"recurrent_backward for a {cell} workspace; see its docstring."
    return forward, backward


lstm_forward, lstm_backward = _bind("lstm")
gru_forward, gru_backward = _bind("gru")
rnn_tanh_forward, rnn_tanh_backward = _bind("rnn_tanh")
rnn_relu_forward, rnn_relu_backward = _bind("rnn_relu")
