"""The table of cells: ids, gate counts, PyTorch parameter names, shapes and initialisers.

Equations (PyTorch's, gate order as in its weight layout):

RNN    h' = act(W_ih x + b_ih + W_hh h + b_hh),  act = tanh, relu or identity (the linear
       recurrence of theano_lstm's default RNN; PyTorch has no such cell)
GRU    r  = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
       z  = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
       n  = tanh(W_in x + b_in + r * (W_hn h + b_hn))
       h' = (1 - z) * n + z * h
LSTM   i, f, o = sigmoid(.), g = tanh(.)   of  W_ih x + b_ih + W_hh h + b_hh  split in (i, f, g, o)
       c' = f * c + i * g
       h' = o * tanh(c')

This module is the one table of cells. The compiled kernels need the ids and gate counts as
C constants: csrc/cells.h (with gate_count in fastrnn/_cpu/_cells.pxd) and
fastrnn/_gpu/kernels.cu keep copies, which tests/test_cells.py checks against CELLS. The gate
math itself lives once per device: csrc/cells_impl.h (reached from Cython through
fastrnn/_cpu/_cells.pxd) and fastrnn/_gpu/kernels.cu.
"""
from dataclasses import dataclass
import math
import numbers

import numpy as np


@dataclass(frozen=True)
class CellSpec:
    name: str            # "rnn_tanh", "rnn_relu", "rnn_identity", "gru", "lstm"
    kind: int            # the kernels' cell id (FR_K_* in csrc/cells.h, FR_* in kernels.cu)
    gates: int           # G: weight_ih has shape (G * hidden, input)
    has_cell_state: bool  # LSTM carries (h, c); the others h only


CELLS = {
    "rnn_tanh": CellSpec("rnn_tanh", 0, 1, False),
    "rnn_relu": CellSpec("rnn_relu", 1, 1, False),
    "gru": CellSpec("gru", 2, 3, False),
    "lstm": CellSpec("lstm", 3, 4, True),
    # Added after the others: ids are compiled into the kernels, so they are never reused.
    "rnn_identity": CellSpec("rnn_identity", 4, 1, False),
}


def get_cell(name):
    """Look up a cell by name (a CellSpec of the table is returned as it is), raising
    ValueError with the valid names otherwise."""
    if isinstance(name, CellSpec) and CELLS.get(name.name) == name:
        return name
    try:
        return CELLS[name]
    except (KeyError, TypeError):
        raise ValueError(f"cell must be one of {sorted(CELLS)}, got {name!r}") from None


def param_names(layer, reverse, bias=True):
    """PyTorch's parameter names for one layer and direction, e.g. ``weight_ih_l1_reverse``."""
    suffix = f"_l{layer}" + ("_reverse" if reverse else "")
    names = [f"weight_ih{suffix}", f"weight_hh{suffix}"]
    if bias:
        names += [f"bias_ih{suffix}", f"bias_hh{suffix}"]
    return names


def param_shapes(cell, input_size, hidden_size, bias=True):
    """Shapes of (weight_ih, weight_hh[, bias_ih, bias_hh]) for one layer and direction."""
    gh = cell.gates * hidden_size
    shapes = [(gh, input_size), (gh, hidden_size)]
    if bias:
        shapes += [(gh,), (gh,)]
    return shapes


RECURRENT_INITS = ("uniform", "identity")
"""Ways to initialise W_hh: PyTorch's uniform, or the identity (IRNN)."""


def init_params(cell, rng, input_size, hidden_size, bias=True, dtype=np.float32,
                recurrent_init="uniform", forget_bias=None, init_std=None):
    """Fresh (weight_ih, weight_hh[, bias_ih, bias_hh]) for one layer and direction.

    Every array is drawn from PyTorch's U(-1/sqrt(H), 1/sqrt(H)), in this order, from ``rng``
    (a numpy Generator). Then, each changing only what it names:

    * ``init_std=σ``: the two weights are redrawn from N(0, σ²) (weight_ih first) and the
      biases are zero (the tutorials' "small normal" initialisation, e.g. σ = 0.01).
    * ``recurrent_init="identity"``: W_hh = I (Keras IRNN, Le, Jaitly & Hinton 2015). Nothing
      else changes: W_ih and the biases keep their draw. (Before issue 12 it also drew W_ih
      from N(0, 1e-3²) and zeroed the biases; ask for that with ``init_std``.)
    * ``forget_bias`` (LSTM only): the forget gate's bias, all of it on bias_ih (the two
      biases add up; bias_hh's forget part is zeroed).
    """
    cell = get_cell(cell)
    if recurrent_init not in RECURRENT_INITS:
        raise ValueError(f"recurrent_init must be one of {RECURRENT_INITS}, got {recurrent_init!r}")
    if forget_bias is not None and cell.name != "lstm":
        raise ValueError("forget_bias applies to LSTM only")
    check_init_std(init_std)
    H = hidden_size
    bound = 1.0 / np.sqrt(H)
    arrays = [rng.uniform(-bound, bound, shape).astype(dtype)
              for shape in param_shapes(cell, input_size, H, bias)]
    if init_std is not None:
        for w in arrays[:2]:
            w[...] = rng.normal(0.0, init_std, w.shape)
        for b in arrays[2:]:
            b[...] = 0
    if recurrent_init == "identity":
        arrays[1][...] = np.eye(*arrays[1].shape, dtype=dtype)
    if forget_bias is not None and bias:
        arrays[2][H:2 * H] = forget_bias
        arrays[3][H:2 * H] = 0
    return arrays


def check_init_std(init_std):
    """``init_std`` must be None or a finite real number > 0 (ValueError/TypeError otherwise)."""
    if init_std is None:
        return None
    if isinstance(init_std, bool) or not isinstance(init_std, numbers.Real):
        raise TypeError(f"init_std must be a real number or None, got {init_std!r}")
    if not (math.isfinite(init_std) and init_std > 0):
        raise ValueError(f"init_std must be a finite number > 0, got {init_std!r}")
    return float(init_std)
