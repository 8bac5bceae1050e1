"""PyTorch-compatible recurrent layers with explicit forward and backward: RNN, GRU, LSTM.

Multi-layer, bidirectional, variable lengths, dropout between layers. The layers only
arrange arrays; every step of every sequence runs in :mod:`fastrnn.functional`, which
dispatches on the array type: the compiled CPU kernels for NumPy arrays, the CUDA kernels
for CuPy arrays (``device="cuda"``), through one engine (same semantics).
"""
import numpy as np

from .. import functional as F
from .._device import to_device
from .._validation import as_float_dtype, check_array, check_int
from ..cells import get_cell, init_params, param_names
from .base import Layer, backward_method, forward_method


class RecurrentLayer(Layer):
    """Common implementation of :class:`RNN`, :class:`GRU` and :class:`LSTM`.

    Parameters are named and shaped like PyTorch's (``weight_ih_l0``, ``bias_hh_l1_reverse``,
    ...), so ``load_state_dict({k: v.numpy() for k, v in torch_module.state_dict().items()})``
    reproduces a PyTorch model exactly.

    forward(x, state=None, lengths=None) -> (y, state)
        x: (T, B, I), or (B, T, I) with batch_first. y: (T, B, D*H) (or batch first), D = 2 if
        bidirectional. state: h (L*D, B, H), or (h, c) for the LSTM; None means zeros.
    backward(dy, dstate=None) -> (dx, dstate0)
        Backpropagates through the most recent pending training-mode forward (LIFO, see
        :class:`fastrnn.layers.Layer`: a layer applied to several steps or segments before
        backward gets each one's exact gradient) and accumulates into ``grads``.

    ``device="cuda"`` (or ``.to("cuda")``) runs on the GPU with CuPy arrays (inputs given as
    numpy arrays are copied over); parameters are initialised on the host first, so a seed
    gives the same model on either device.
    """

    def __init__(self, cell, input_size, hidden_size, num_layers=1, bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, dtype=np.float32,
                 seed=None, recurrent_init="uniform", forget_bias=None, init_std=None,
                 device="cpu"):
        super().__init__()
        self.cell = get_cell(cell)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.input_size = check_int(input_size, "input_size", 1)
        self.hidden_size = check_int(hidden_size, "hidden_size", 1)
        self.num_layers = check_int(num_layers, "num_layers", 1)
        self.bias, self.batch_first, self.dropout = bool(bias), bool(batch_first), float(dropout)
        self.bidirectional = bool(bidirectional)
        self.num_directions = 2 if bidirectional else 1
        self.dtype = as_float_dtype(dtype)
        init_seed, dropout_seed = np.random.SeedSequence(seed).spawn(2)
        self._dropout_rng = np.random.default_rng(dropout_seed)
        self._init_params(np.random.default_rng(init_seed), recurrent_init, forget_bias, init_std)
        self.to(device)

    # ---- parameters -----------------------------------------------------------------------

    def _layer_keys(self, layer, direction):
        """Parameter names (weight_ih, weight_hh[, bias_ih, bias_hh]) of one layer/direction."""
        return param_names(layer, direction == 1, self.bias)

    def _init_params(self, rng, recurrent_init, forget_bias, init_std):
        for layer in range(self.num_layers):
            in_size = self.input_size if layer == 0 else self.hidden_size * self.num_directions
            for d in range(self.num_directions):
                arrays = init_params(self.cell, rng, in_size, self.hidden_size, self.bias,
                                     self.dtype, recurrent_init, forget_bias, init_std)
                for key, value in zip(self._layer_keys(layer, d), arrays):
                    self.params[key] = value
                    self.grads[key] = np.zeros_like(value)

    def _weights(self, layer, direction):
        keys = self._layer_keys(layer, direction)
        w = [self.params[k] for k in keys]
        return w if self.bias else w + [None, None]

    @property
    def all_weights(self):
        """``[weight_ih, weight_hh, bias_ih, bias_hh]`` (the layer's own arrays, on its
        device; the biases None when ``bias=False``) for each layer and direction, in the
        order ``l0, l0_reverse, l1, ...`` (as PyTorch's ``all_weights``, plus the None biases)."""
        return [self._weights(layer, d) for layer in range(self.num_layers)
                for d in range(self.num_directions)]

    def _grads_of(self, layer, direction):
        keys = self._layer_keys(layer, direction)
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        return {n: self.grads[k] for n, k in zip(names, keys)}

    def rng_state(self):
        """State of the dropout random generator (for exact resume)."""
        return self._dropout_rng.bit_generator.state

    def set_rng_state(self, state):
        self._dropout_rng.bit_generator.state = state

    # ---- state helpers --------------------------------------------------------------------

    def _state_shape(self, B):
        return (self.num_layers * self.num_directions, B, self.hidden_size)

    def _check_state(self, state, B, name):
        """Return a list, per layer*direction index, of per-direction states (or None)."""
        shape = self._state_shape(B)
        if state is None:
            return [None] * shape[0]
        if self.cell.has_cell_state:
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise ValueError(f"{name} must be a tuple (h, c) for an LSTM")
            h = check_array(state[0], f"{name} h", shape=shape, dtype=self.dtype, contiguous=False)
            c = check_array(state[1], f"{name} c", shape=shape, dtype=self.dtype, contiguous=False)
            return [(h[i], c[i]) for i in range(shape[0])]
        if isinstance(state, (tuple, list)):
            raise ValueError(f"{name} must be a single array h for {type(self).__name__}, not a tuple")
        h = check_array(state, name, shape=shape, dtype=self.dtype, contiguous=False)
        return [h[i] for i in range(shape[0])]

    def _stack_states(self, states):
        xp = self.xp
        if self.cell.has_cell_state:
            return xp.stack([s[0] for s in states]), xp.stack([s[1] for s in states])
        return xp.stack(states)

    def _on_device(self, a):
        """An array, or an (h, c) pair, on the layer's device (no copy when it is there
        already); None stays None."""
        if a is None:
            return None
        if isinstance(a, (tuple, list)):
            return type(a)(to_device(v, self.device) for v in a)
        return to_device(a, self.device)

    # ---- forward / backward ---------------------------------------------------------------

    @forward_method
    def forward(self, x, state=None, lengths=None):
        x = self._on_device(x)
        if x.ndim != 3:
            layout = "(B, T, input_size)" if self.batch_first else "(T, B, input_size)"
            raise ValueError(f"x must be 3-D {layout}, got shape {x.shape}")
        if x.dtype != self.dtype:
            raise TypeError(f"x must have dtype {self.dtype} (the layer's dtype), got {x.dtype}")
        if self.batch_first:
            x = x.transpose(1, 0, 2)
        if x.shape[2] != self.input_size:
            raise ValueError(f"x must have {self.input_size} features (input_size), got {x.shape[2]}")
        xp = self.xp
        x = xp.ascontiguousarray(x)
        T, B, _ = x.shape
        state = self._on_device(state)
        states = self._check_state(state, B, "state")
        H, D = self.hidden_size, self.num_directions

        workspaces, masks, final = [], [], []
        layer_input = x
        for layer in range(self.num_layers):
            out = xp.empty((T, B, D * H), self.dtype)
            for d in range(D):
                _, st, ws = F.recurrent_forward(
                    self.cell.name, layer_input, *self._weights(layer, d),
                    state=states[layer * D + d], lengths=lengths, reverse=d == 1,
                    out=out[:, :, d * H:(d + 1) * H])
                workspaces.append(ws)
                final.append(st)
            mask = None
            if self.training and self.dropout > 0 and layer < self.num_layers - 1:
                keep = 1.0 - self.dropout
                mask = (self._dropout_rng.random(out.shape) < keep).astype(self.dtype) / self.dtype.type(keep)
                mask = to_device(mask, self.device)   # drawn on the host: the same masks on either device
                out = out * mask   # a new array: the kernels' workspace still needs the raw output
            masks.append(mask)
            layer_input = out
        self._save_for_backward((workspaces, masks, T, B))
        y = layer_input.transpose(1, 0, 2) if self.batch_first else layer_input
        return y, self._stack_states(final)

    @backward_method
    def backward(self, dy, dstate=None):
        workspaces, masks, T, B = self._saved_for_backward()
        H, D = self.hidden_size, self.num_directions
        xp = self.xp
        if dy is not None:
            dy = self._on_device(dy)
            expected = (B, T, D * H) if self.batch_first else (T, B, D * H)
            dy = check_array(dy, "dy", shape=expected, dtype=self.dtype, contiguous=False)
            if self.batch_first:
                dy = xp.ascontiguousarray(dy.transpose(1, 0, 2))
        dstate = self._on_device(dstate)
        dstates = self._check_state(dstate, B, "dstate")

        dstate0 = [None] * (self.num_layers * D)
        for layer in reversed(range(self.num_layers)):
            in_size = self.input_size if layer == 0 else D * H
            dx = xp.zeros((T, B, in_size), self.dtype)
            for d in range(D):
                idx = layer * D + d
                _, dstate0[idx], _ = F.recurrent_backward(
                    workspaces[idx], None if dy is None else dy[:, :, d * H:(d + 1) * H],
                    dstates[idx], grads=self._grads_of(layer, d), dx_out=dx)
            if layer > 0 and masks[layer - 1] is not None:
                dx *= masks[layer - 1]
            dy = dx
        dx = dy.transpose(1, 0, 2) if self.batch_first else dy
        return dx, self._stack_states(dstate0)

    def __repr__(self):
        extra = ", bidirectional=True" if self.bidirectional else ""
        if self.device != "cpu":
            extra += f", device={self.device!r}"
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}, "
                f"num_layers={self.num_layers}{extra}, dtype={self.dtype})")


NONLINEARITIES = ("tanh", "relu", "identity")
"""fastrnn.RNN's activations; each names the cell ``rnn_<nonlinearity>`` of fastrnn/cells.py."""


class RNN(RecurrentLayer):
    """Elman RNN, ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``, act = tanh, relu or identity.

    ``nonlinearity``: "tanh" (cell "rnn_tanh"), "relu" ("rnn_relu") or "identity"
    ("rnn_identity": the linear recurrence ``h' = W_ih x + b_ih + W_hh h + b_hh`` of
    theano_lstm's default RNN; PyTorch has no such cell, so the PyTorch bridge refuses it).

    ``recurrent_init="identity"`` gives the IRNN initialisation for ReLU RNNs (W_hh = I, the
    rest as drawn; add ``init_std`` for small normal input weights and zero biases).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", **kwargs):
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(f"rnn_{nonlinearity}", input_size, hidden_size, num_layers, **kwargs)


class GRU(RecurrentLayer):
    """GRU with PyTorch's equations (gates r, z, n; ``b_hn`` inside the reset product)."""

    def __init__(self, input_size, hidden_size, num_layers=1, **kwargs):
        super().__init__("gru", input_size, hidden_size, num_layers, **kwargs)


class LSTM(RecurrentLayer):
    """LSTM with PyTorch's equations and gate order (i, f, g, o).

    ``forget_bias=1.0`` sets the forget-gate bias (on ``bias_ih``; ``bias_hh``'s is zeroed).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, **kwargs):
        super().__init__("lstm", input_size, hidden_size, num_layers, **kwargs)
