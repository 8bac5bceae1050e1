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
from .dropout import mask_uniforms


def hidden_sizes_per_layer(hidden_size, num_layers=None):
    """The per-layer hidden sizes, a tuple of ints >= 1, of a ``hidden_size`` argument (an int
    for every layer, or a list/tuple of per-layer sizes) and ``num_layers`` (None: the list's
    length, or 1 for an int). A list whose length is not ``num_layers`` raises ValueError."""
    if isinstance(hidden_size, (list, tuple)):
        if len(hidden_size) == 0:
            raise ValueError("hidden_size must be an int or a non-empty list of ints, got []")
        sizes = tuple(check_int(h, f"hidden_size[{i}]", 1) for i, h in enumerate(hidden_size))
        if num_layers is not None and check_int(num_layers, "num_layers", 1) != len(sizes):
            raise ValueError(f"hidden_size lists {len(sizes)} layer sizes {list(sizes)} but "
                             f"num_layers is {num_layers}: give one size per layer (or leave "
                             "num_layers out)")
        return sizes
    size = check_int(hidden_size, "hidden_size", 1)
    return (size,) * (1 if num_layers is None else check_int(num_layers, "num_layers", 1))


class RecurrentLayer(Layer):
    """Common implementation of :class:`RNN`, :class:`GRU` and :class:`LSTM`.

    Parameters are named and shaped like PyTorch's (``weight_ih_l0``, ``bias_hh_l1_reverse``,
    ...), so ``load_state_dict({k: v.numpy() for k, v in torch_module.state_dict().items()})``
    reproduces a PyTorch model exactly.

    hidden_size: H, one int for every layer, or a list of per-layer sizes ``[H_0, H_1, ...]``
    (``num_layers`` then defaults to its length and must equal it). Layer l's input is layer
    l-1's output (D*H_{l-1} features), so ``weight_ih_l1`` has shape (G*H_1, D*H_0).

    forward(x, state=None, lengths=None, index=None) -> (y, state)
        x: (T, B, I), or (B, T, I) with batch_first. With ``index``, (T, B) int row numbers
        ((B, T) with batch_first), x is a (V, I) table and the input is ``x[index]``: an
        embedding lookup fused into the first layer, whose input projection, dW_ih and dx
        then run over the V table rows instead of the T*B tokens when V < T*B (see
        :func:`fastrnn.functional.recurrent_forward`). y: (T, B, D*H_last) (or batch first),
        D = 2 if bidirectional. state: h (L*D, B, H), or (h, c) for the LSTM; None means
        zeros. When the layers' sizes differ the states cannot stack into one array: h (and
        c) is then a list over layers of (D, B, H_l) arrays (the states of L one-layer
        PyTorch modules), e.g. ``([h0, h1], [c0, c1])`` for an LSTM. :meth:`zero_state`
        builds either form.
    backward(dy, dstate=None, state0_grad=True, input_grad=True) -> (dx, dstate0)
        dx like x (with ``index``: the (V, I) table's gradient). Backpropagates through the
        most recent pending training-mode forward (LIFO, see :class:`fastrnn.layers.Layer`: a
        layer applied to several steps or segments before backward gets each one's exact
        gradient) and accumulates into ``grads``. ``state0_grad=False``: the gradient at the
        initial state is not wanted (a detached carried-over state): each layer skips the
        products that only feed it, and dstate0 is None. ``input_grad=False``: the gradient
        at x is not wanted (raw input features, a frozen table): the first layer skips the
        product dG W_ih, and dx is None.

    ``device="cuda"`` (or ``.to("cuda")``) runs on the GPU with CuPy arrays (inputs given as
    numpy arrays are copied over); parameters are initialised on the host first, so a seed
    gives the same model on either device.

    ``batch_share`` (attribute; default None): ``(steps, batch, start)`` when the inputs are
    parts (T steps, columns ``[start:start + B]``) of a whole (steps, batch) batch held by
    several processes (data-parallel training): the dropout between layers then draws the
    whole batch's masks and applies this part, as :class:`fastrnn.layers.Dropout` does.
    """

    def __init__(self, cell, input_size, hidden_size, num_layers=None, bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, dtype=np.float32,
                 seed=None, recurrent_init="uniform", forget_bias=None, init_std=None,
                 device="cpu"):
        super().__init__()
        self.cell = get_cell(cell)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.input_size = check_int(input_size, "input_size", 1)
        self.hidden_sizes = hidden_sizes_per_layer(hidden_size, num_layers)
        self.num_layers = len(self.hidden_sizes)
        # The constructor's argument: an int when every layer has that size.
        self.hidden_size = (self.hidden_sizes[0] if self.uniform
                            else list(self.hidden_sizes))
        self.bias, self.batch_first, self.dropout = bool(bias), bool(batch_first), float(dropout)
        self.bidirectional = bool(bidirectional)
        self.num_directions = 2 if bidirectional else 1
        self.dtype = as_float_dtype(dtype)
        init_seed, dropout_seed = np.random.SeedSequence(seed).spawn(2)
        self._dropout_rng = np.random.default_rng(dropout_seed)
        self.batch_share = None
        self._init_params(np.random.default_rng(init_seed), recurrent_init, forget_bias, init_std)
        self.to(device)

    # ---- parameters -----------------------------------------------------------------------

    def _layer_keys(self, layer, direction):
        """Parameter names (weight_ih, weight_hh[, bias_ih, bias_hh]) of one layer/direction."""
        return param_names(layer, direction == 1, self.bias)

    @property
    def uniform(self):
        """True when every layer has the same hidden size (the state is then one array)."""
        return len(set(self.hidden_sizes)) == 1

    @property
    def output_size(self):
        """Features of the output: D * H of the last layer."""
        return self.num_directions * self.hidden_sizes[-1]

    def layer_input_size(self, layer):
        """Input features of ``layer``: input_size for layer 0, D*H_{l-1} above."""
        return self.input_size if layer == 0 else self.num_directions * self.hidden_sizes[layer - 1]

    def _init_params(self, rng, recurrent_init, forget_bias, init_std):
        for layer in range(self.num_layers):
            in_size = self.layer_input_size(layer)
            for d in range(self.num_directions):
                arrays = init_params(self.cell, rng, in_size, self.hidden_sizes[layer], self.bias,
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

    def skip_dropout_masks(self, steps, batch):
        """Move the dropout generator as a training-mode forward on a whole (steps, batch)
        batch does, computing nothing (a rank with no share of a batch keeps its generator in
        step with the others')."""
        if self.training and self.dropout > 0:
            for layer in range(self.num_layers - 1):
                features = self.num_directions * self.hidden_sizes[layer]
                self._dropout_rng.random((steps, batch, features))

    # ---- state helpers --------------------------------------------------------------------

    def state_shapes(self, batch_size):
        """Shapes of the arrays that make up h (and c alike): ``[(L*D, B, H)]`` when every
        layer has the same size, else ``[(D, B, H_0), (D, B, H_1), ...]``."""
        B, D = batch_size, self.num_directions
        if self.uniform:
            return [(self.num_layers * D, B, self.hidden_sizes[0])]
        return [(D, B, H) for H in self.hidden_sizes]

    def zero_state(self, batch_size):
        """A zero state for ``batch_size`` sequences in the format ``forward`` takes and
        returns (see the class docstring), on the layer's device."""
        xp = self.xp
        shapes = self.state_shapes(check_int(batch_size, "batch_size", 1))

        def part():
            arrays = [xp.zeros(shape, self.dtype) for shape in shapes]
            return arrays[0] if self.uniform else arrays
        return (part(), part()) if self.cell.has_cell_state else part()

    def _check_part(self, part, B, name):
        """One of h, c: a list, per layer*direction index, of (B, H_l) views."""
        shapes = self.state_shapes(B)
        if self.uniform:
            if isinstance(part, (tuple, list)):
                raise ValueError(f"{name} must be one array of shape {shapes[0]}, not a "
                                 f"{type(part).__name__}")
            part = check_array(part, name, shape=shapes[0], dtype=self.dtype, contiguous=False)
            return [part[i] for i in range(shapes[0][0])]
        if not isinstance(part, (tuple, list)) or len(part) != self.num_layers:
            raise ValueError(f"{name} must be a list of {self.num_layers} arrays, one per layer "
                             f"(the hidden sizes {list(self.hidden_sizes)} differ), shaped "
                             f"{shapes}")
        views = []
        for layer, (a, shape) in enumerate(zip(part, shapes)):
            a = check_array(a, f"{name}[{layer}]", shape=shape, dtype=self.dtype, contiguous=False)
            views.extend(a[d] for d in range(self.num_directions))
        return views

    def _check_state(self, state, B, name):
        """Return a list, per layer*direction index, of per-direction states (or None)."""
        if state is None:
            return [None] * (self.num_layers * self.num_directions)
        if self.cell.has_cell_state:
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise ValueError(f"{name} must be a tuple (h, c) for an LSTM")
            h = self._check_part(state[0], B, f"{name} h")
            c = self._check_part(state[1], B, f"{name} c")
            return list(zip(h, c))
        if self.uniform and isinstance(state, (tuple, list)):
            raise ValueError(f"{name} must be a single array h for {type(self).__name__}, not a tuple")
        return self._check_part(state, B, name)

    def _stack_states(self, states):
        """The per layer*direction states in the format of the class docstring."""
        xp, D = self.xp, self.num_directions

        def stack(arrays):
            if len(arrays) == 1:   # one layer, one direction: the array is the caller's alone
                return arrays[0][None]
            if self.uniform:
                return xp.stack(arrays)
            return [xp.stack(arrays[layer * D:(layer + 1) * D]) for layer in range(self.num_layers)]
        if self.cell.has_cell_state:
            return stack([s[0] for s in states]), stack([s[1] for s in states])
        return stack(states)

    def _on_device(self, a):
        """An array, or an (h, c) pair, on the layer's device (no copy when it is there
        already); None stays None."""
        if a is None:
            return None
        if isinstance(a, (tuple, list)):   # (h, c), or a list over layers
            return type(a)(self._on_device(v) for v in a)
        return to_device(a, self.device)

    # ---- forward / backward ---------------------------------------------------------------

    @forward_method
    def forward(self, x, state=None, lengths=None, index=None):
        x = self._on_device(x)
        if index is not None:
            if x.ndim != 2:
                raise ValueError(f"x must be a 2-D (V, input_size) table with index, got shape "
                                 f"{x.shape}")
            index = self._on_device(index)
            if index.ndim != 2:
                layout = "(B, T)" if self.batch_first else "(T, B)"
                raise ValueError(f"index must be 2-D {layout} row numbers of x, got shape "
                                 f"{index.shape}")
            if self.batch_first:
                index = index.T
        elif x.ndim != 3:
            layout = "(B, T, input_size)" if self.batch_first else "(T, B, input_size)"
            raise ValueError(f"x must be 3-D {layout}, got shape {x.shape}")
        elif self.batch_first:
            x = x.transpose(1, 0, 2)
        if x.dtype != self.dtype:
            raise TypeError(f"x must have dtype {self.dtype} (the layer's dtype), got {x.dtype}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"x must have {self.input_size} features (input_size), got {x.shape[-1]}")
        xp = self.xp
        x = xp.ascontiguousarray(x)
        T, B = (x.shape[:2] if index is None else index.shape)
        state = self._on_device(state)
        states = self._check_state(state, B, "state")
        D = self.num_directions

        workspaces, masks, final = [], [], []
        layer_input = x
        for layer in range(self.num_layers):
            H = self.hidden_sizes[layer]
            out = xp.empty((T, B, D * H), self.dtype)
            for d in range(D):
                _, st, ws = F.recurrent_forward(
                    self.cell.name, layer_input, *self._weights(layer, d),
                    state=states[layer * D + d], lengths=lengths, reverse=d == 1,
                    out=out[:, :, d * H:(d + 1) * H], index=index if layer == 0 else None)
                workspaces.append(ws)
                final.append(st)
            mask = None
            if self.training and self.dropout > 0 and layer < self.num_layers - 1:
                keep = 1.0 - self.dropout
                uniforms = mask_uniforms(self._dropout_rng, out.shape, np.float64, self.batch_share)
                mask = (uniforms < keep).astype(self.dtype) / self.dtype.type(keep)
                mask = to_device(mask, self.device)   # drawn on the host: the same masks on either device
                out = out * mask   # a new array: the kernels' workspace still needs the raw output
            masks.append(mask)
            layer_input = out
        self._save_for_backward((workspaces, masks, T, B, None if index is None else x.shape))
        y = layer_input.transpose(1, 0, 2) if self.batch_first else layer_input
        return y, self._stack_states(final)

    @backward_method
    def backward(self, dy, dstate=None, state0_grad=True, input_grad=True):
        workspaces, masks, T, B, table_shape = self._saved_for_backward()
        D, out_size = self.num_directions, self.output_size
        xp = self.xp
        if dy is not None:
            dy = self._on_device(dy)
            expected = (B, T, out_size) if self.batch_first else (T, B, out_size)
            dy = check_array(dy, "dy", shape=expected, dtype=self.dtype, contiguous=False)
            if self.batch_first:
                dy = xp.ascontiguousarray(dy.transpose(1, 0, 2))
        dstate = self._on_device(dstate)
        dstates = self._check_state(dstate, B, "dstate")

        dstate0 = [None] * (self.num_layers * D)
        for layer in reversed(range(self.num_layers)):
            H = self.hidden_sizes[layer]
            shape = (T, B, self.layer_input_size(layer))
            if layer == 0 and table_shape is not None:
                shape = table_shape
            # The gradient between two stacked layers lives only in this loop: a reused
            # buffer (F._scratch_zeros), handed back once the layer below has read it.
            if layer > 0:
                dx = F._scratch_zeros(shape, self.dtype, like=self.params["weight_hh_l0"])
            else:
                dx = xp.zeros(shape, self.dtype) if input_grad else None
            for d in range(D):
                idx = layer * D + d
                _, dstate0[idx], _ = F.recurrent_backward(
                    workspaces[idx], None if dy is None else dy[:, :, d * H:(d + 1) * H],
                    dstates[idx], grads=self._grads_of(layer, d), dx_out=dx,
                    state0_grad=state0_grad, input_grad=layer > 0 or input_grad)
            if layer > 0 and masks[layer - 1] is not None:
                dx *= masks[layer - 1]
            if layer < self.num_layers - 1:
                consumed = [dy]   # this layer's output gradient: the scratch of the layer above
                dy = None
                F._release_scratch(consumed)
            dy = dx
            del dx
        dx = dy   # None with input_grad=False
        if dx is not None and self.batch_first and table_shape is None:
            dx = dx.transpose(1, 0, 2)
        return dx, self._stack_states(dstate0) if state0_grad else None

    def __repr__(self):
        extra = ", bidirectional=True" if self.bidirectional else ""
        if self.device != "cpu":
            extra += f", device={self.device!r}"
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size!r}, "
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

    def __init__(self, input_size, hidden_size, num_layers=None, nonlinearity="tanh", **kwargs):
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(f"rnn_{nonlinearity}", input_size, hidden_size, num_layers, **kwargs)


class GRU(RecurrentLayer):
    """GRU with PyTorch's equations (gates r, z, n; ``b_hn`` inside the reset product)."""

    def __init__(self, input_size, hidden_size, num_layers=None, **kwargs):
        super().__init__("gru", input_size, hidden_size, num_layers, **kwargs)


class LSTM(RecurrentLayer):
    """LSTM with PyTorch's equations and gate order (i, f, g, o).

    ``forget_bias=1.0`` sets the forget-gate bias (on ``bias_ih``; ``bias_hh``'s is zeroed).
    """

    def __init__(self, input_size, hidden_size, num_layers=None, **kwargs):
        super().__init__("lstm", input_size, hidden_size, num_layers, **kwargs)
