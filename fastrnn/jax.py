"""fastrnn inside JAX: ``lstm``, ``gru`` and ``rnn`` as differentiable JAX functions.

::

    import jax, fastrnn.jax as fj
    params = fj.init_params("lstm", I, H, num_layers=2, bidirectional=True)
    # or a PyTorch module's: {k: jnp.asarray(v.numpy()) for k, v in lstm.state_dict().items()}
    y, (h_n, c_n) = fj.lstm(params, x, lengths=lengths)          # x (T, B, I)
    grads = jax.jit(jax.grad(loss))(params, x)                      # loss calls fj.lstm

``params`` is a dict of arrays named as PyTorch's ``state_dict`` of the matching
``torch.nn.LSTM``/``GRU``/``RNN`` (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``,
``bias_hh_l0``, ``..._l0_reverse``, ``..._l1``, ...), with PyTorch's shapes and gate order.
The number of layers, the directions and whether there are biases are read from the keys;
the keys must be exactly those of such a module. Semantics are PyTorch's: ``h0`` of shape
(num_layers * D, B, H) (a pair ``(h_0, c_0)`` for the LSTM, None for zeros), ``lengths``
gives packed-sequence semantics on a padded batch (any order; y is zero past each length,
the final state is each sequence's state at its last step), no dropout between layers.

One layer in one direction is one :func:`jax.custom_vjp` whose forward and backward each run
fastrnn's compiled CPU kernels (the engine behind :mod:`fastrnn.functional`) through
:func:`jax.pure_callback`. The forward returns the activations the backward needs (the
engine's workspace arrays) as residuals, so ``jax.jit``, ``jax.grad`` (repeatedly, also of
the same forward) and ``jax.vjp`` work. The rule sees symbolic zeros: the backward computes
no dx for an x that is not differentiated, no dh0/dc0 for an initial state that is not, and
takes an unused output's zero cotangent as "zero" without an array of zeros. Under
``jax.vmap`` each kernel call runs once per mapped element (``vmap_method="sequential"``):
correct, but put the mapped axis into the batch instead where speed matters. Forward-mode
differentiation (``jax.jvp``, ``jacfwd``) is not available (a custom_vjp has no JVP rule).
CPU only; float32, or float64 with ``jax_enable_x64``.

Every argument is checked when the function is traced, before any kernel runs, and errors
name the argument or parameter key. The one thing a trace cannot see is the values of
``lengths`` under ``jit``: they are checked when the kernel runs, and a value outside
[1, T] fails the computation with the engine's error (never a silent result).

This module imports jax; ``import fastrnn`` never imports it.
"""
import dataclasses
import functools
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from . import _engine
from ._engine import RecurrentWorkspace
from ._validation import FLOAT_DTYPES, as_float_dtype, check_int
from .cells import get_cell, init_params as _init_layer_params, param_names

__all__ = ["lstm", "gru", "rnn", "init_params"]


# ---- one layer, one direction: the custom_vjp over the compiled kernels ---------------------

def _shape_dtype(shape, dtype):
    return jax.ShapeDtypeStruct(tuple(shape), dtype)


def _host(a):
    """A NumPy view of a callback argument (None stays None)."""
    return None if a is None else np.asarray(a)


def _forward_on_host(cell, reverse, x, w_ih, w_hh, biases, h0, c0, lengths):
    """The engine's forward on NumPy views. Returns the layer's outputs and the saved
    activations: ``(y, h_T, c_T, gates, hn, chist)`` (None where the cell has none)."""
    spec = get_cell(cell)
    b_ih, b_hh = (_host(b) for b in biases) if biases else (None, None)
    state = _host(h0) if c0 is None else (_host(h0), _host(c0))
    y, state_T, ws = _engine.forward(_engine.cpu_ops(), spec.name, _host(x), _host(w_ih),
                                     _host(w_hh), b_ih, b_hh, state, _host(lengths), reverse)
    h_T, c_T = state_T if spec.has_cell_state else (state_T, None)
    # ws.y is a row view of y: backward reads y back, so y is what we save.
    return y, h_T, c_T, ws.gates, ws.hn, ws.chist


def _backward_on_host(cell, reverse, has_bias, wanted, x, w_ih, w_hh, h0, c0, lengths, y,
                      gates, hn, chist, dy, dh, dc):
    """The engine's backward from the forward's inputs and saved activations; dy, dh, dc None
    for zero. Returns ``(dx, dw_ih, dw_hh, (db_ih, db_hh) or (), dh0, dc0 or None)``, with
    None for dx / dh0 and dc0 where ``wanted`` (a :class:`_Wanted`) says so."""
    spec = get_cell(cell)
    x = np.asarray(x)
    T, B, I = x.shape
    # The engine's backward consumes a workspace and overwrites its activation buffers:
    # rebuild one around copies, as a JAX buffer must not change (and backward may run twice).
    ws = RecurrentWorkspace()
    ws.ops, ws.cell, ws.reverse, ws.T, ws.B = _engine.cpu_ops(), spec, bool(reverse), T, B
    ws.has_bias, ws.consumed = bool(has_bias), False
    ws.x, ws.w_ih, ws.w_hh = x.reshape(T * B, I), np.asarray(w_ih), np.asarray(w_hh)
    ws.lengths = None if lengths is None else np.ascontiguousarray(lengths, np.int64)
    ws.h0 = np.asarray(h0)
    ws.c0 = _host(c0)
    ws.gates = np.array(gates)
    ws.hn = np.array(hn) if spec.name == "gru" else None
    ws.chist = np.array(chist) if spec.has_cell_state else None
    ws.y = np.asarray(y).reshape(T * B, -1)
    dstate = _host(dh) if dc is None else (_host(dh), _host(dc))
    dx, dstate0, grads = _engine.backward(ws, _host(dy), dstate, state0_grad=wanted.state0,
                                          input_grad=wanted.input)
    dh0, dc0 = dstate0 if spec.has_cell_state and wanted.state0 else (dstate0, None)
    bias_grads = (grads["bias_ih"], grads["bias_hh"]) if has_bias else ()
    return dx, grads["weight_ih"], grads["weight_hh"], bias_grads, dh0, dc0


def _forward_shapes(cell, x, w_hh):
    spec = get_cell(cell)
    T, B, _ = x.shape
    GH, H = w_hh.shape
    rows, dtype = T * B, x.dtype
    state = _shape_dtype((B, H), dtype)
    return (_shape_dtype((T, B, H), dtype), state,
            state if spec.has_cell_state else None,
            _shape_dtype((rows, GH), dtype),
            _shape_dtype((rows, H), dtype) if spec.name == "gru" else None,
            _shape_dtype((rows, H), dtype) if spec.has_cell_state else None)


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class _Wanted:
    """Which input gradients a layer's backward computes: dx (``input``) and dh0, dc0
    (``state0``), known when the forward is traced (a static part of its residuals)."""
    input: bool
    state0: bool


def _forward(cell, reverse, x, w_ih, w_hh, biases, h0, c0, lengths):
    """The forward's callback: ``((y, h_T, c_T), saved activations (gates, hn, chist))``."""
    y, h_T, c_T, gates, hn, chist = jax.pure_callback(
        functools.partial(_forward_on_host, cell, reverse), _forward_shapes(cell, x, w_hh),
        x, w_ih, w_hh, biases, h0, c0, lengths, vmap_method="sequential")
    return (y, h_T, c_T), (gates, hn, chist)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _layer(cell, reverse, x, w_ih, w_hh, biases, h0, c0, lengths):
    """One layer in one direction. x (T, B, I) time-major; biases () or (b_ih, b_hh); h0, c0
    (B, H) (c0 None unless LSTM); lengths (B,) ints or None. Returns (y, h_T, c_T or None)."""
    return _forward(cell, reverse, x, w_ih, w_hh, biases, h0, c0, lengths)[0]


def _layer_fwd(cell, reverse, x, w_ih, w_hh, biases, h0, c0, lengths):
    # symbolic_zeros (defvjp below): each array argument comes as a CustomVJPPrimal, whose
    # ``perturbed`` says whether it is differentiated. Raw features (x not a function of
    # what is differentiated) and a default or constant initial state are not: the backward
    # then skips the products that only feed their gradients.
    wanted = _Wanted(input=x.perturbed,
                     state0=h0.perturbed or (c0 is not None and c0.perturbed))
    x, w_ih, w_hh, biases, h0, c0, lengths = jax.tree_util.tree_map(
        lambda primal: primal.value, (x, w_ih, w_hh, biases, h0, c0, lengths))
    outputs, (gates, hn, chist) = _forward(cell, reverse, x, w_ih, w_hh, biases, h0, c0, lengths)
    y = outputs[0]
    return outputs, (x, w_ih, w_hh, biases, h0, c0, lengths, y, gates, hn, chist, wanted)


def _layer_bwd(cell, reverse, residuals, cotangents):
    x, w_ih, w_hh, biases, h0, c0, lengths, y, gates, hn, chist, wanted = residuals
    # An output no loss depends on has a symbolic zero cotangent: None, which the engine
    # takes as zero without reading an array of zeros.
    dy, dh, dc = (None if isinstance(ct, SymbolicZero) else ct for ct in cotangents)
    shapes = (_shape_dtype(x.shape, x.dtype) if wanted.input else None,
              _shape_dtype(w_ih.shape, x.dtype), _shape_dtype(w_hh.shape, x.dtype),
              tuple(_shape_dtype(b.shape, x.dtype) for b in biases),
              _shape_dtype(h0.shape, x.dtype) if wanted.state0 else None,
              None if c0 is None or not wanted.state0 else _shape_dtype(c0.shape, x.dtype))
    dx, dw_ih, dw_hh, dbiases, dh0, dc0 = jax.pure_callback(
        functools.partial(_backward_on_host, cell, reverse, bool(biases), wanted), shapes,
        x, w_ih, w_hh, h0, c0, lengths, y, gates, hn, chist, dy, dh, dc,
        vmap_method="sequential")
    # None: a zero cotangent (x, h0, c0 not differentiated; lengths are integers)
    return dx, dw_ih, dw_hh, dbiases, dh0, dc0, None


_layer.defvjp(_layer_fwd, _layer_bwd, symbolic_zeros=True)


# ---- parameters -----------------------------------------------------------------------------

def init_params(cell, input_size, hidden_size, *, num_layers=1, bidirectional=False, bias=True,
                dtype=np.float32, seed=0):
    """A fresh params dict for :func:`lstm`/:func:`gru`/:func:`rnn`: PyTorch's names, shapes
    and initialisation (every array from U(-1/sqrt(H), 1/sqrt(H))), as JAX arrays.

    cell: "lstm", "gru", "rnn_tanh" or "rnn_relu". ``seed``: an int or a NumPy Generator
    (the arrays are drawn in PyTorch's parameter order, as :mod:`fastrnn.cells` does).
    """
    spec = get_cell(cell)
    dtype = _check_float_dtype(as_float_dtype(dtype, "dtype"), "dtype")
    input_size = check_int(input_size, "input_size", 1)
    hidden_size = check_int(hidden_size, "hidden_size", 1)
    num_layers = check_int(num_layers, "num_layers", 1)
    rng = np.random.default_rng(seed)
    D = 2 if bidirectional else 1
    params = {}
    for layer in range(num_layers):
        for direction in range(D):
            arrays = _init_layer_params(spec, rng, input_size if layer == 0 else D * hidden_size,
                                        hidden_size, bias, dtype)
            names = param_names(layer, bool(direction), bias)
            params.update((k, jnp.asarray(a)) for k, a in zip(names, arrays))
    return params


# ---- the multi-layer, bidirectional front end ----------------------------------------------

def _dtype_of(a, name):
    """The dtype of an array-like as given (before JAX could cast it), or TypeError."""
    dtype = getattr(a, "dtype", None)
    if dtype is None:
        raise TypeError(f"{name} must be an array, got {type(a).__name__}")
    return np.dtype(dtype)


def _as_jax(a, name, shape, dtype):
    """``a`` as a JAX array after checking its shape and dtype as given (never cast)."""
    got = _dtype_of(a, name)
    if got != dtype:
        raise TypeError(f"{name} must have dtype {dtype} (x's dtype), got {got}")
    if tuple(np.shape(a)) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(np.shape(a))}")
    return jnp.asarray(a)


def _check_float_dtype(dtype, name):
    """float64 only where JAX keeps it (it casts to float32 without jax_enable_x64)."""
    if dtype == np.float64 and not jax.config.jax_enable_x64:
        raise TypeError(f"{name} is float64 but JAX would compute in float32: enable float64 "
                        "with jax.config.update('jax_enable_x64', True)")
    return dtype


def _check_x(x):
    dtype = _dtype_of(x, "x")
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"x must have dtype float32 or float64, got {dtype}")
    _check_float_dtype(dtype, "x")
    if np.ndim(x) != 3:
        raise ValueError(f"x must be 3-D, (T, B, I) (or (B, T, I) with batch_first), got shape "
                         f"{tuple(np.shape(x))}")
    if 0 in np.shape(x):
        raise ValueError(f"x must have at least one step, sequence and feature, got shape "
                         f"{tuple(np.shape(x))}")
    return dtype


_PARAM_KEY = re.compile(r"(weight_ih|weight_hh|bias_ih|bias_hh)_l(\d+)(_reverse)?")


def _structure(params, num_layers, bidirectional):
    """(num_layers, D, has_bias) of a params dict: read from its keys, checked against the
    given ``num_layers``/``bidirectional``, and the keys must be exactly PyTorch's."""
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict of arrays named as PyTorch's state_dict "
                        f"(weight_ih_l0, ...), got {type(params).__name__}")
    layers = [_PARAM_KEY.fullmatch(k) if isinstance(k, str) else None for k in params]
    if not any(layers):
        raise KeyError("params has none of PyTorch's recurrent parameter names (weight_ih_l0, "
                       "weight_hh_l0, bias_ih_l0, bias_hh_l0, ...), got keys "
                       f"{sorted(map(str, params))}")
    if num_layers is None:
        num_layers = 1 + max(int(m.group(2)) for m in layers if m)
    elif isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be an integer >= 1 or None, got {num_layers!r}")
    if bidirectional is None:
        bidirectional = any(m and m.group(3) for m in layers)
    has_bias = any(m and m.group(1).startswith("bias") for m in layers)
    D = 2 if bidirectional else 1
    expected = [name for layer in range(num_layers) for direction in range(D)
                for name in param_names(layer, bool(direction), has_bias)]
    missing = [k for k in expected if k not in params]
    if missing:
        raise KeyError(f"params is missing {missing} (a {num_layers}-layer "
                       f"{'bidirectional ' if bidirectional else ''}network"
                       f"{' with biases' if has_bias else ''})")
    extra = sorted(str(k) for k in params if k not in set(expected))
    if extra:
        raise ValueError(f"params has unexpected keys {extra} (a {num_layers}-layer "
                       f"{'bidirectional ' if bidirectional else ''}network"
                       f"{' with biases' if has_bias else ''} has exactly {expected})")
    return num_layers, D, has_bias


def _initial_state(h0, is_lstm, shape, dtype):
    """(h_0, c_0) as JAX arrays of ``shape`` (c_0 None unless LSTM); zeros for None."""
    if h0 is None:
        zeros = jnp.zeros(shape, dtype)
        return zeros, (zeros if is_lstm else None)
    if is_lstm:
        if not isinstance(h0, (tuple, list)) or len(h0) != 2:
            raise TypeError(f"h0 must be a pair (h_0, c_0) for an LSTM, got "
                            f"{type(h0).__name__}")
        return _as_jax(h0[0], "h0[0] (h_0)", shape, dtype), _as_jax(h0[1], "h0[1] (c_0)",
                                                                     shape, dtype)
    if isinstance(h0, (tuple, list)):
        raise TypeError("h0 must be a single array h_0 (not a tuple) for a GRU or RNN")
    return _as_jax(h0, "h0", shape, dtype), None


def _check_lengths(lengths, T, B):
    """``lengths`` as a JAX integer array of shape (B,); its values are checked here when
    they are known (outside jit) and by the kernels otherwise."""
    if lengths is None:
        return None
    dtype = _dtype_of(lengths, "lengths")
    if dtype.kind not in "iu":
        raise TypeError(f"lengths must hold integers, got dtype {dtype}")
    if tuple(np.shape(lengths)) != (B,):
        raise ValueError(f"lengths must have shape ({B},) (one per sequence), got "
                         f"{tuple(np.shape(lengths))}")
    try:
        values = np.asarray(lengths)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        values = None   # traced: the engine checks the values inside the callback
    if values is not None and (values.min() < 1 or values.max() > T):
        raise ValueError(f"lengths must be in [1, {T}] (T = {T} steps), got values in "
                         f"[{values.min()}, {values.max()}]")
    return jnp.asarray(lengths)


def _run(cell, params, x, h0, lengths, batch_first, num_layers, bidirectional):
    spec = get_cell(cell)
    dtype = _check_x(x)
    num_layers, D, has_bias = _structure(params, num_layers, bidirectional)
    x = jnp.asarray(x)
    if batch_first:
        x = jnp.swapaxes(x, 0, 1)
    T, B, input_size = x.shape
    w_hh0 = params["weight_hh_l0"]
    if np.ndim(w_hh0) != 2 or np.shape(w_hh0)[1] < 1:
        raise ValueError(f"params['weight_hh_l0'] must have shape ({spec.gates} * H, H), got "
                         f"{tuple(np.shape(w_hh0))}")
    H = np.shape(w_hh0)[1]
    GH = spec.gates * H
    h_0, c_0 = _initial_state(h0, spec.has_cell_state, (num_layers * D, B, H), dtype)
    lengths = _check_lengths(lengths, T, B)

    layer_input = x
    h_finals, c_finals = [], []
    for layer in range(num_layers):
        in_size = input_size if layer == 0 else D * H
        outputs = []
        for direction in range(D):
            names = param_names(layer, bool(direction), has_bias)
            shapes = [(GH, in_size), (GH, H), (GH,), (GH,)]
            w_ih, w_hh, *biases = [_as_jax(params[k], f"params[{k!r}]", s, dtype)
                                   for k, s in zip(names, shapes)]
            k = layer * D + direction
            y, h_T, c_T = _layer(spec.name, direction == 1, layer_input, w_ih, w_hh,
                                 tuple(biases), h_0[k], None if c_0 is None else c_0[k],
                                 lengths)
            outputs.append(y)
            h_finals.append(h_T)
            c_finals.append(c_T)
        layer_input = outputs[0] if D == 1 else jnp.concatenate(outputs, axis=2)
    y = jnp.swapaxes(layer_input, 0, 1) if batch_first else layer_input
    h_n = jnp.stack(h_finals)
    if spec.has_cell_state:
        return y, (h_n, jnp.stack(c_finals))
    return y, h_n


_SIGNATURE_DOC = """

    params: dict of arrays with PyTorch's names and shapes (``weight_ih_l{k}`` (G*H, I_k),
    ``weight_hh_l{k}`` (G*H, H), optional ``bias_ih_l{k}``/``bias_hh_l{k}`` (G*H,), and
    ``..._reverse`` for the second direction; I_0 = I, I_k = D*H after). ``num_layers`` and
    ``bidirectional`` are read from the keys unless given (then the keys must match them).
    x: (T, B, I) float32 or float64 (float64 needs ``jax_enable_x64``), (B, T, I) with
    ``batch_first``; every parameter and state must have x's dtype (nothing is cast).
    lengths: (B,) integers in [1, T], any order, or None (every sequence has T steps).
    """


def lstm(params, x, h0=None, lengths=None, *, batch_first=False, num_layers=None,
         bidirectional=None):
    """``torch.nn.LSTM``'s forward as a differentiable JAX function.

    h0: a pair (h_0, c_0), each (num_layers * D, B, H), or None for zeros. Returns
    ``(y, (h_n, c_n))``: y (T, B, D*H) ((B, T, D*H) with batch_first), h_n and c_n
    (num_layers * D, B, H)."""
    return _run("lstm", params, x, h0, lengths, batch_first, num_layers, bidirectional)


def gru(params, x, h0=None, lengths=None, *, batch_first=False, num_layers=None,
        bidirectional=None):
    """``torch.nn.GRU``'s forward as a differentiable JAX function.

    h0: (num_layers * D, B, H) or None for zeros. Returns ``(y, h_n)``: y (T, B, D*H)
    ((B, T, D*H) with batch_first), h_n (num_layers * D, B, H)."""
    return _run("gru", params, x, h0, lengths, batch_first, num_layers, bidirectional)


def rnn(params, x, h0=None, lengths=None, *, nonlinearity="tanh", batch_first=False,
        num_layers=None, bidirectional=None):
    """``torch.nn.RNN``'s forward (``nonlinearity`` "tanh" or "relu") as a differentiable JAX
    function.

    h0: (num_layers * D, B, H) or None for zeros. Returns ``(y, h_n)``: y (T, B, D*H)
    ((B, T, D*H) with batch_first), h_n (num_layers * D, B, H)."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    return _run(f"rnn_{nonlinearity}", params, x, h0, lengths, batch_first, num_layers,
                bidirectional)


for _fn in (lstm, gru, rnn):
    _fn.__doc__ += _SIGNATURE_DOC
