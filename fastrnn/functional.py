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
import numpy as np

from . import threads
from ._cpu import recurrent as _kernels
from ._validation import as_float_dtype, check_array
from .cells import get_cell


class RecurrentWorkspace:
    """Opaque record of one forward pass, consumed by :func:`recurrent_backward`."""

    __slots__ = ("cell", "reverse", "T", "B", "x", "w_ih", "w_hh", "has_bias", "h0", "c0",
                 "lengths", "gates", "hn", "chist", "y", "consumed")

    def __repr__(self):
        return (f"RecurrentWorkspace(cell={self.cell.name!r}, T={self.T}, B={self.B}, "
                f"reverse={self.reverse}, consumed={self.consumed})")


def _rows(a, name):
    """View a (T, B, F) array as (T*B, F) rows without copying (rows may be strided, the
    last axis must be contiguous: the kernels read each row as one block)."""
    try:
        rows = np.reshape(a, (a.shape[0] * a.shape[1], a.shape[2]), copy=False)
    except ValueError:
        rows = None
    if rows is None or rows.strides[1] != a.itemsize:
        raise ValueError(f"{name} must be a (T, B, F) array whose (T, B) axes can be merged "
                         f"without a copy and whose last axis is contiguous")
    return rows


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
    step. ``out`` is an optional (T, B, H) array to write y into (it may be a strided view,
    such as one half of a bidirectional output).

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
    elif out.shape != (T, B, H) or out.dtype != dtype:
        raise ValueError(f"out must be a ({T}, {B}, {H}) {dtype} array, got {out.shape} {out.dtype}")

    ws = RecurrentWorkspace()
    ws.cell, ws.reverse, ws.T, ws.B, ws.has_bias, ws.consumed = spec, bool(reverse), T, B, has_bias, False
    ws.x, ws.w_ih, ws.w_hh, ws.lengths = _rows(x, "x"), w_ih, w_hh, lens
    ws.h0 = h.copy()
    ws.c0 = c.copy() if c is not None else None
    ws.gates = np.empty((T * B, GH), dtype=dtype)
    ws.hn = np.empty((T * B, H), dtype=dtype) if spec.name == "gru" else None
    ws.chist = np.empty((T * B, H), dtype=dtype) if spec.has_cell_state else None
    ws.y = _rows(out, "out")

    nt = threads.get_num_threads()
    # Every GEMM is split over fastrnn's own OpenMP threads, with BLAS on one thread (see
    # threads.py).
    with threads.blas_single_threaded():
        _kernels.project_inputs(ws.x, w_ih, b_ih, ws.gates, nt)
        _kernels.forward_loop(spec.kind, ws.reverse, T, B, w_hh, b_hh, h, c, lens, ws.gates,
                              ws.hn, ws.chist, ws.y, np.empty((B, GH), dtype), nt)
    return out, ((h, c) if spec.has_cell_state else h), ws


def recurrent_backward(ws, dy=None, dstate=None, grads=None, dx_out=None):
    """Backpropagate through the forward pass recorded in ``ws``.

    dy: (T, B, H) gradient at the outputs, or None. dstate: gradient at the final state,
    shaped like the state (None means zeros).

    ``grads`` may be a dict with "weight_ih", "weight_hh" (and "bias_ih", "bias_hh" when the
    forward had biases) arrays to accumulate into; by default new ones are returned.
    ``dx_out`` may be a (T, B, I) array to accumulate dx into.

    Returns ``(dx, dstate0, grads)``: dx (T, B, I), the gradient at the initial state
    (shaped like it), and the parameter gradients.
    """
    if not isinstance(ws, RecurrentWorkspace):
        raise TypeError(f"ws must be the workspace returned by recurrent_forward, got {type(ws).__name__}")
    if ws.consumed:
        raise ValueError("ws was already consumed by an earlier backward; run forward again")
    spec, T, B = ws.cell, ws.T, ws.B
    dtype = ws.gates.dtype
    GH, H = ws.w_hh.shape
    I = ws.x.shape[1]
    dy_rows = None
    if dy is not None:
        dy = check_array(dy, "dy", ndim=3, shape=(T, B, H), dtype=dtype, contiguous=False)
        try:
            dy_rows = _rows(dy, "dy")
        except ValueError:   # a layout the kernels cannot walk: copy once
            dy_rows = _rows(np.ascontiguousarray(dy), "dy")
    dh0, dc0 = _split_state(spec, dstate, "dstate")
    dh = _state_array(dh0, "dstate h", B, H, dtype)
    dc = _state_array(dc0, "dstate c", B, H, dtype) if spec.has_cell_state else None

    if dx_out is not None and (dx_out.shape != (T, B, I) or dx_out.dtype != dtype
                               or not dx_out.flags.c_contiguous):
        raise ValueError(f"dx_out must be a C-contiguous ({T}, {B}, {I}) {dtype} array")

    ws.consumed = True
    dgh_first = np.empty((B, GH), dtype)
    nt = threads.get_num_threads()
    with threads.blas_single_threaded():
        _kernels.backward_loop(spec.kind, ws.reverse, T, B, ws.w_hh, ws.h0, ws.c0, ws.lengths,
                               ws.gates, ws.hn, ws.chist, ws.y, dy_rows, dh, dc, dgh_first, nt)
        # Outputs are allocated only now, after the loop has freed its packed copy of W_hh,
        # so that the two never coexist (peak memory).
        if grads is None:
            grads = new_weight_grads(ws)
        if dx_out is None:
            dx_out = np.zeros((T, B, I), dtype=dtype)
        _kernels.weight_grads(spec.kind, ws.reverse, T, B, ws.x, ws.w_ih, ws.h0, ws.y, ws.gates,
                              ws.hn, dgh_first, grads["weight_ih"], grads["weight_hh"],
                              grads.get("bias_ih"), grads.get("bias_hh"),
                              dx_out.reshape(T * B, I), nt)
    # The saved activations are now gradients; drop the big buffers early.
    ws.gates = ws.hn = ws.chist = None
    return dx_out, ((dh, dc) if spec.has_cell_state else dh), grads


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
