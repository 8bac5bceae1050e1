"""fastrnn inside PyTorch: drop-in ``LSTM``/``GRU``/``RNN`` modules and :func:`convert`.

::

    import fastrnn.torch as ft
    model = ft.convert(model)      # every nn.LSTM/GRU/RNN now runs on fastrnn's engine
    rnn = ft.LSTM(input_size, hidden_size, num_layers=2, batch_first=True, bidirectional=True)
    out, (h, c) = rnn(packed_or_padded_input, (h0, c0))

The modules subclass ``torch.nn.LSTM``/``GRU``/``RNN``: same constructor, parameters (names,
shapes, initialisation), ``state_dict`` and forward signature and return types; only
``forward`` differs. A ``PackedSequence`` runs as fastrnn's ``lengths`` on a padded batch in
the caller's order (packed semantics, no sort): its rows are scattered into the padded batch
(``index_copy_``) and the output's gathered back (the op ``fastrnn::gather_rows``, whose
backward is that scatter), by a row index made once per forward from its ``batch_sizes``
and ``sorted_indices``; the output carries the input's batch_sizes and indices. PyTorch's
autograd drives everything around the recurrence.

One layer in one direction is one call of the custom op ``fastrnn::recurrent_forward``
(:func:`fastrnn.functional.recurrent_forward` on zero-copy NumPy views of CPU tensors); its
backward is the op ``fastrnn::recurrent_backward``. The ops are functional: the forward
returns the activations the backward needs (the engine's workspace arrays) as extra outputs,
so autograd saves them like any tensor, backward may run more than once (``retain_graph``,
``gradcheck``) and ``opcheck`` holds. The engine's backward overwrites these buffers, so the
op runs it on copies; the modules' nodes, whose activations nobody else holds, let it
overwrite them instead (no copies) in an eager backward that frees the graph (no
``retain_graph``/``create_graph``).

This module imports torch; ``import fastrnn`` never imports it.
"""
from typing import Optional

import numpy as np
import torch
from torch.nn.utils.rnn import PackedSequence

from . import _engine
from ._engine import RecurrentWorkspace
from .cells import get_cell, param_names

__all__ = ["LSTM", "GRU", "RNN", "convert"]

_EMPTY_SHAPE = (0,)


def _numpy(t):
    """A NumPy view of a CPU tensor (zero copy when it is contiguous)."""
    return t.detach().contiguous().numpy()


def _optional_numpy(t):
    return None if t is None else _numpy(t)


def _as_tensor(a, like):
    """``a`` (a NumPy array, shared) as a tensor; an empty (0,) tensor of ``like``'s dtype
    for None (custom ops return tensors only)."""
    return like.new_empty(_EMPTY_SHAPE) if a is None else torch.from_numpy(a)


@torch.library.custom_op("fastrnn::recurrent_forward", mutates_args=(), device_types="cpu")
def recurrent_forward_op(x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor,
                         b_ih: Optional[torch.Tensor], b_hh: Optional[torch.Tensor],
                         h0: torch.Tensor, c0: Optional[torch.Tensor],
                         lengths: Optional[torch.Tensor], cell: str, reverse: bool
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                    torch.Tensor, torch.Tensor]:
    """One layer, one direction. x (T, B, I) time-major; h0, c0 (B, H); lengths (B,) int64.

    Returns ``(y (T, B, H), h_T, c_T, gates, hn, chist)``: c_T is empty (0,) unless the cell
    is an LSTM; gates (T*B, G*H), hn (GRU) and chist (LSTM) are the saved activations the
    backward op reads ((0,) when the cell has none).
    """
    spec = get_cell(cell)
    state = _numpy(h0) if c0 is None else (_numpy(h0), _numpy(c0))
    y, state_T, ws = _engine.forward(
        _engine.cpu_ops(), spec.name, _numpy(x), _numpy(w_ih), _numpy(w_hh),
        _optional_numpy(b_ih), _optional_numpy(b_hh), state, _optional_numpy(lengths), reverse)
    h_T, c_T = state_T if spec.has_cell_state else (state_T, None)
    _zero_unwritten_activations(ws)
    # ws.y is a row view of y: backward reads y back, so y is what we return and pass in.
    return (torch.from_numpy(y), torch.from_numpy(h_T), _as_tensor(c_T, x),
            torch.from_numpy(ws.gates), _as_tensor(ws.hn, x), _as_tensor(ws.chist, x))


def _zero_unwritten_activations(ws):
    """Zero the rows of the forward's activation buffers that the engine leaves unwritten
    with lengths, so that the op's outputs are a function of its inputs (opcheck compares
    them across runs); the backward never reads those rows. A batch the engine runs packed
    (see fastrnn._engine.packing) fills the first N rows (N real tokens) of gates/hn/chist;
    a smaller one fills gates at every row but hn/chist only at the steps within each
    sequence's length (time-space rows t*B + b with t < lengths[b])."""
    if ws.lengths is None:   # every sequence whole (the engine drops lengths == T): all written
        return
    min_batch = getattr(ws.ops, "packed_min_batch", None)
    if min_batch is not None and ws.B >= min_batch:
        tokens = int(ws.lengths.sum())
        for a in (ws.gates, ws.hn, ws.chist):
            if a is not None:
                a[tokens:] = 0
        return
    past_lengths = (np.arange(ws.T)[:, None] >= ws.lengths).reshape(-1)   # (T*B,) rows
    for a in (ws.hn, ws.chist):
        if a is not None:
            a[past_lengths] = 0


@recurrent_forward_op.register_fake
def _(x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, cell, reverse):
    spec = get_cell(cell)
    T, B, _ = x.shape
    H = w_hh.shape[1]
    gates = x.new_empty((T * B, spec.gates * H))
    hn = x.new_empty((T * B, H)) if spec.name == "gru" else x.new_empty(_EMPTY_SHAPE)
    chist = x.new_empty((T * B, H)) if spec.has_cell_state else x.new_empty(_EMPTY_SHAPE)
    c_T = x.new_empty((B, H)) if spec.has_cell_state else x.new_empty(_EMPTY_SHAPE)
    return x.new_empty((T, B, H)), x.new_empty((B, H)), c_T, gates, hn, chist


def _recurrent_backward(x, w_ih, w_hh, has_bias, h0, c0, lengths, y, gates, hn, chist, dy, dh,
                        dc, cell, reverse, input_grad, state0_grad, overwrite_saved):
    """The engine's backward of one layer and direction from the forward op's inputs and
    outputs; see :func:`recurrent_backward_op`. ``overwrite_saved``: the engine's backward
    turns the activation buffers gates/hn/chist into gradients in place; False runs it on
    copies of them, True on the tensors themselves (a backward that runs only once)."""
    spec = get_cell(cell)
    x_np = _numpy(x)
    T, B, I = x_np.shape
    saved = _numpy if overwrite_saved else (lambda t: _numpy(t).copy())
    ws = RecurrentWorkspace()
    ws.ops, ws.cell, ws.reverse, ws.T, ws.B = _engine.cpu_ops(), spec, bool(reverse), T, B
    ws.has_bias, ws.consumed = bool(has_bias), False
    ws.x, ws.w_ih, ws.w_hh = x_np.reshape(T * B, I), _numpy(w_ih), _numpy(w_hh)
    ws.lengths = None if lengths is None else np.ascontiguousarray(_numpy(lengths), np.int64)
    ws.h0 = _numpy(h0)
    ws.c0 = _optional_numpy(c0)
    ws.gates = saved(gates)
    ws.hn = saved(hn) if spec.name == "gru" else None
    ws.chist = saved(chist) if spec.has_cell_state else None
    ws.y = _numpy(y).reshape(T * B, -1)
    # dy and the state gradients as autograd gives them: None (zero), or any strides (the
    # engine walks a strided dy in place and copies only what it cannot walk).
    dy_np = None if dy is None else dy.detach().numpy()
    dh_np = None if dh is None else dh.detach().numpy()
    if spec.has_cell_state:
        dstate = None if dh is None and dc is None else (dh_np, _optional_numpy(dc))
    else:
        dstate = dh_np
    dx, dstate0, grads = _engine.backward(ws, dy_np, dstate, state0_grad=state0_grad,
                                          input_grad=input_grad)
    dh0, dc0 = dstate0 if spec.has_cell_state and state0_grad else (dstate0, None)
    return (_as_tensor(dx, x), torch.from_numpy(grads["weight_ih"]),
            torch.from_numpy(grads["weight_hh"]), _as_tensor(grads.get("bias_ih"), x),
            _as_tensor(grads.get("bias_hh"), x), _as_tensor(dh0, x), _as_tensor(dc0, x))


_BACKWARD_OUTPUTS = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                          torch.Tensor, torch.Tensor]


@torch.library.custom_op("fastrnn::recurrent_backward", mutates_args=(), device_types="cpu")
def recurrent_backward_op(x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, has_bias: bool,
                          h0: torch.Tensor, c0: Optional[torch.Tensor],
                          lengths: Optional[torch.Tensor], y: torch.Tensor, gates: torch.Tensor,
                          hn: torch.Tensor, chist: torch.Tensor, dy: Optional[torch.Tensor],
                          dh: Optional[torch.Tensor], dc: Optional[torch.Tensor], cell: str,
                          reverse: bool, input_grad: bool, state0_grad: bool
                          ) -> _BACKWARD_OUTPUTS:
    """Backward of :func:`recurrent_forward_op` from its inputs and saved outputs; dy (T, B,
    H), dh, dc (B, H) the gradients at y, h_T, c_T (None: zero). ``input_grad`` /
    ``state0_grad`` False: dx / dh0 and dc0 are not wanted (the engine skips the products
    that only feed them).

    Returns ``(dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0)``; the bias gradients are empty (0,)
    without biases, dc0 unless the cell is an LSTM, and dx, dh0, dc0 when not wanted. Leaves
    its inputs unchanged: the engine runs on copies of gates/hn/chist.
    """
    return _recurrent_backward(x, w_ih, w_hh, has_bias, h0, c0, lengths, y, gates, hn, chist,
                               dy, dh, dc, cell, reverse, input_grad, state0_grad,
                               overwrite_saved=False)


def _backward_fake(x, w_ih, w_hh, has_bias, h0, c0, lengths, y, gates, hn, chist, dy, dh, dc,
                   cell, reverse, input_grad, state0_grad):
    GH = w_hh.shape[0]

    def maybe(wanted, shape):
        return x.new_empty(shape if wanted else _EMPTY_SHAPE)
    return (maybe(input_grad, x.shape), w_ih.new_empty(w_ih.shape), w_hh.new_empty(w_hh.shape),
            maybe(has_bias, (GH,)), maybe(has_bias, (GH,)), maybe(state0_grad, h0.shape),
            maybe(state0_grad and get_cell(cell).has_cell_state, h0.shape))


recurrent_backward_op.register_fake(_backward_fake)


def _setup_context(ctx, inputs, output):
    x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, cell, reverse = inputs
    y, _, _, gates, hn, chist = output
    ctx.save_for_backward(x, w_ih, w_hh, h0, c0, lengths, y, gates, hn, chist)
    ctx.cell, ctx.reverse, ctx.has_bias = cell, reverse, (b_ih is not None, b_hh is not None)
    ctx.mark_non_differentiable(gates, hn, chist)
    # Unused outputs get None, not a tensor of zeros: the engine takes None as zero.
    ctx.set_materialize_grads(False)
    # Set by recurrent_layer, which drops the gates/hn/chist outputs: then only this node
    # holds them, and a backward that frees the graph may overwrite them.
    ctx.saved_activations_private = False


# What the running backward will do with its graph: private functions of torch's autograd
# engine (present in torch 2.x). Where a torch lacks them, every backward copies the saved
# activations (always correct, slower).
_graph_task_id = getattr(torch._C, "_current_graph_task_id", None)
_graph_task_keeps_graph = getattr(getattr(torch._C, "_autograd", None),
                                  "_get_current_graph_task_keep_graph", None)


def _may_overwrite_saved(ctx, gates):
    """Whether this backward may run the engine on the saved activations themselves: only
    recurrent_layer's nodes, in an eager backward (real tensors, inside the autograd
    engine) that frees the graph afterwards (no retain_graph/create_graph), so that nothing
    can read them again."""
    if _graph_task_id is None or _graph_task_keeps_graph is None:
        return False
    return (ctx.saved_activations_private and type(gates) is torch.Tensor
            and _graph_task_id() != -1 and not _graph_task_keeps_graph())


def _backward(ctx, dy, dh_T, dc_T, *_saved_grads):
    x, w_ih, w_hh, h0, c0, lengths, y, gates, hn, chist = ctx.saved_tensors
    # Only the gradients autograd will use: the input's (not for raw features) and the
    # initial state's (not for a default zero or detached state); the engine skips the
    # products that only feed the others.
    needs = ctx.needs_input_grad   # x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, ...
    input_grad, state0_grad = needs[0], needs[5] or needs[6]
    args = (x, w_ih, w_hh, any(ctx.has_bias), h0, c0, lengths, y, gates, hn, chist, dy, dh_T,
            dc_T if c0 is not None else None, ctx.cell, ctx.reverse, input_grad, state0_grad)
    if _may_overwrite_saved(ctx, gates):
        # Eager and the graph's last use of these tensors: the engine overwrites them in
        # place, a plain call (the dispatcher's handling of a mutating op costs more than
        # the call itself at small sizes), named like the op in profiles.
        with torch.profiler.record_function("fastrnn::recurrent_backward"):
            grads = _recurrent_backward(*args, overwrite_saved=True)
    else:
        grads = recurrent_backward_op(*args)
    dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0 = grads
    return (dx if input_grad else None, dw_ih, dw_hh, db_ih if ctx.has_bias[0] else None,
            db_hh if ctx.has_bias[1] else None, dh0 if state0_grad else None,
            dc0 if c0 is not None and state0_grad else None, None, None, None)


recurrent_forward_op.register_autograd(_backward, setup_context=_setup_context)


def recurrent_layer(cell, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse):
    """One layer in one direction through the custom op, differentiable.

    x (T, B, I) time-major; h0, c0 (B, H) (c0 only for the LSTM, else None); lengths (B,)
    int64 or None. Returns ``(y (T, B, H), h_T, c_T or None)``.
    """
    y, h_T, c_T, _, _, _ = recurrent_forward_op(x.contiguous(), w_ih, w_hh, b_ih, b_hh,
                                                h0.contiguous(),
                                                None if c0 is None else c0.contiguous(),
                                                lengths, cell, reverse)
    if isinstance(y.grad_fn, torch.autograd.function.BackwardCFunction):
        y.grad_fn.saved_activations_private = True   # the activations were dropped above
    return y, h_T, (c_T if c0 is not None else None)


_SUPPORTED_DTYPES = (torch.float32, torch.float64)


class _FastRNNMixin:
    """The forward shared by the three modules; ``_fastrnn_cell`` names the cell."""

    def _check_supported(self):
        if self.proj_size:
            raise ValueError(f"fastrnn.torch.{type(self).__name__} does not support proj_size "
                             f"(got proj_size={self.proj_size}); use torch.nn.LSTM for projections")
        for name, p in zip(self._flat_weights_names, self._flat_weights):
            if p is None:
                continue
            if p.device.type != "cpu":
                raise ValueError(f"fastrnn.torch.{type(self).__name__} runs on the CPU only: "
                                 f"parameter {name} is on device {p.device}")
            if p.dtype not in _SUPPORTED_DTYPES:
                raise TypeError(f"fastrnn.torch.{type(self).__name__} supports dtype float32 "
                                f"or float64, parameter {name} has {p.dtype}")

    @property
    def _fastrnn_cell(self):
        if self.mode == "RNN_TANH":
            return "rnn_tanh"
        if self.mode == "RNN_RELU":
            return "rnn_relu"
        return self.mode.lower()

    def forward(self, input, hx=None):
        """As ``torch.nn.{LSTM,GRU,RNN}.forward``: input (L, N, H_in) (or (N, L, H_in) when
        batch_first, (L, H_in) unbatched, or a PackedSequence); hx (D*num_layers, N, H_out)
        (a tuple (h_0, c_0) for the LSTM) or None. Returns ``(output, h_n)`` (``(output,
        (h_n, c_n))`` for the LSTM), output of the input's type."""
        self._check_supported()
        cell = self._fastrnn_cell
        is_lstm = cell == "lstm"
        dtype = self._flat_weights[0].dtype
        packed = isinstance(input, PackedSequence)
        unbatched = False
        if packed:
            _check_on_cpu(type(self), input.data, "input")
            rows, lengths = _packed_layout(input)
            x = _padded_from_packed(input.data, rows, input.batch_sizes.shape[0],
                                    lengths.shape[0])
        else:
            x, lengths = input, None
            if x.dim() not in (2, 3):
                raise ValueError(f"input must be 2-D (unbatched) or 3-D, got {x.dim()}-D "
                                 f"shape {tuple(x.shape)}")
            unbatched = x.dim() == 2
            if unbatched:
                x = x.unsqueeze(1)
            elif self.batch_first:
                x = x.transpose(0, 1)
        _check_on_cpu(type(self), x, "input")
        if x.dtype != dtype:
            raise TypeError(f"input must have the parameters' dtype {dtype}, got {x.dtype}")
        if x.shape[2] != self.input_size:
            raise ValueError(f"input must have {self.input_size} features (input_size), got "
                             f"{x.shape[2]}")
        T, B, _ = x.shape
        D = 2 if self.bidirectional else 1
        state_shape = (self.num_layers * D, B, self.hidden_size)
        h0, c0 = self._initial_state(hx, is_lstm, unbatched, state_shape, x)

        layer_input = x
        h_finals, c_finals = [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(D):
                k = layer * D + direction
                params = self._layer_params(layer, direction)
                y, h_T, c_T = recurrent_layer(cell, layer_input, *params, h0[k],
                                              None if c0 is None else c0[k], lengths,
                                              reverse=direction == 1)
                outputs.append(y)
                h_finals.append(h_T)
                c_finals.append(c_T)
            layer_input = outputs[0] if D == 1 else torch.cat(outputs, dim=2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = torch.nn.functional.dropout(layer_input, self.dropout, True)
        output = layer_input
        h_n = torch.stack(h_finals)
        c_n = torch.stack(c_finals) if is_lstm else None

        if packed:
            output = PackedSequence(_packed_from_padded(output, rows), input.batch_sizes,
                                    input.sorted_indices, input.unsorted_indices)
        elif unbatched:
            output, h_n = output.squeeze(1), h_n.squeeze(1)
            c_n = c_n.squeeze(1) if is_lstm else None
        elif self.batch_first:
            output = output.transpose(0, 1)
        return output, ((h_n, c_n) if is_lstm else h_n)

    def _layer_params(self, layer, direction):
        """(w_ih, w_hh, b_ih, b_hh) of one layer and direction; biases None without bias."""
        names = param_names(layer, bool(direction), self.bias)
        params = [getattr(self, name) for name in names]
        return tuple(params) if self.bias else (params[0], params[1], None, None)

    def _initial_state(self, hx, is_lstm, unbatched, state_shape, x):
        """(h0, c0) each (num_layers*D, B, H) in the caller's batch order (c0 None unless
        LSTM), zeros for hx=None."""
        if hx is None:
            zeros = x.new_zeros(state_shape)
            return zeros, (zeros if is_lstm else None)
        if is_lstm:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise ValueError("hx must be a tuple (h_0, c_0) for an LSTM")
            states = list(hx)
        else:
            if isinstance(hx, (tuple, list)):
                raise ValueError(f"hx must be a single tensor h_0 for {type(self).__name__}")
            states = [hx]
        names = ("h_0", "c_0")
        for i, s in enumerate(states):
            if unbatched:
                if s.dim() != 2:
                    raise ValueError(f"{names[i]} must be 2-D for unbatched input, got {s.dim()}-D")
                s = s.unsqueeze(1)
            if tuple(s.shape) != state_shape:
                raise ValueError(f"{names[i]} must have shape {state_shape}, got {tuple(s.shape)}")
            if s.dtype != x.dtype:
                raise TypeError(f"{names[i]} must have dtype {x.dtype}, got {s.dtype}")
            states[i] = s
        return states[0], (states[1] if is_lstm else None)


def _check_on_cpu(cls, t, name):
    if t.device.type != "cpu":
        raise ValueError(f"fastrnn.torch.{cls.__name__} runs on the CPU only: {name} is on "
                         f"device {t.device}")


def _packed_layout(packed):
    """Where the rows of a PackedSequence go in the padded batch, and the lengths.

    Packed row r is step t of the k-th sorted sequence (the k-th of the batch_sizes[t]
    sequences still running at t), which is sequence ``b = sorted_indices[k]`` of the
    caller's batch (k itself when sorted_indices is None, as pack_padded_sequence with
    enforce_sorted=True leaves it). Returns ``(rows, lengths)``: rows (N,) int64 holds
    ``t * B + b`` for each packed row, the row of the time-major (T, B, F) batch seen as
    (T*B, F); lengths (B,) int64 in the caller's order. T = len(batch_sizes), B =
    batch_sizes[0]. Computed in NumPy on the (small) index tensors: a few microseconds.
    """
    batch_sizes, sorted_indices = packed.batch_sizes, packed.sorted_indices
    if (batch_sizes.dim() != 1 or batch_sizes.shape[0] == 0 or batch_sizes.dtype != torch.int64
            or batch_sizes.device.type != "cpu"):
        raise ValueError(f"input.batch_sizes must be a non-empty 1-D int64 CPU tensor, got "
                         f"{batch_sizes.dtype} of shape {tuple(batch_sizes.shape)} on "
                         f"{batch_sizes.device}")
    sizes = batch_sizes.numpy()
    T, B = sizes.shape[0], int(sizes[0])
    if sizes[-1] < 1 or (sizes[1:] > sizes[:-1]).any():
        raise ValueError(f"input.batch_sizes must be positive and non-increasing (as "
                         f"pack_padded_sequence makes them), got {sizes.tolist()}")
    tokens = int(sizes.sum())
    if packed.data.dim() != 2 or packed.data.shape[0] != tokens:
        raise ValueError(f"input.data must be 2-D with one row per real step "
                         f"(sum(batch_sizes) = {tokens}), got shape {tuple(packed.data.shape)}")
    if sorted_indices is None:
        caller_index = np.arange(B)
    else:
        caller_index = sorted_indices.detach().cpu().numpy()
        if (caller_index.shape != (B,) or caller_index.dtype.kind not in "iu"
                or not np.array_equal(np.sort(caller_index), np.arange(B))):
            raise ValueError(f"input.sorted_indices must be a permutation of range({B}) "
                             f"(B = batch_sizes[0]), got {sorted_indices}")
    running = np.arange(B) < sizes[:, None]                        # (T, B), sorted order
    rows = (np.arange(T)[:, None] * B + caller_index)[running]     # in packed order
    lengths = np.empty(B, dtype=np.int64)
    lengths[caller_index] = running.sum(axis=0)
    return torch.from_numpy(rows.astype(np.int64, copy=False)), torch.from_numpy(lengths)


def _scatter_rows(src, rows, num_rows):
    """A (num_rows, F) tensor of zeros but for row ``rows[i]`` = ``src[i]`` (src (N, F), rows
    (N,) distinct). Differentiable by PyTorch: the gradient of src is one gather."""
    return src.new_zeros((num_rows, src.shape[1])).index_copy_(0, rows, src)


@torch.library.custom_op("fastrnn::gather_rows", mutates_args=(), device_types="cpu")
def gather_rows_op(src: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``src[rows]``: src (M, F), rows (N,) int64 distinct indices in [0, M). Returns (N, F).

    As ``src.index_select(0, rows)``, whose backward accumulates into zeros row by row
    (index_add_, slow on the CPU); here the rows are distinct, so the backward writes them
    (:func:`_scatter_rows`, one index_copy_): zero gradient at every other row."""
    return src.index_select(0, rows)


@gather_rows_op.register_fake
def _(src, rows):
    return src.new_empty((rows.shape[0], src.shape[1]))


def _save_rows(ctx, inputs, output):
    src, rows = inputs
    ctx.save_for_backward(rows)
    ctx.num_rows = src.shape[0]


def _gather_rows_backward(ctx, grad):
    rows, = ctx.saved_tensors
    return _scatter_rows(grad, rows, ctx.num_rows), None


gather_rows_op.register_autograd(_gather_rows_backward, setup_context=_save_rows)


def _padded_from_packed(data, rows, T, B):
    """The (T, B, F) zero-padded time-major batch of a PackedSequence's ``data`` (N, F): one
    scatter of its rows (:func:`_packed_layout`); the gradient of ``data`` is one gather."""
    return _scatter_rows(data, rows, T * B).view(T, B, data.shape[1])


def _packed_from_padded(output, rows):
    """The (N, F) packed data of a (T, B, F) time-major ``output``: one gather of ``rows``
    (:func:`_packed_layout`). Its gradient puts the rows back in zeros: padded positions
    get zero gradient."""
    T, B, F = output.shape
    return gather_rows_op(output.reshape(T * B, F), rows)


def _check_device(cls, kwargs):
    """Refuse a non-CPU ``device`` before torch allocates parameters there."""
    device = kwargs.get("device")
    if device is not None and torch.device(device).type != "cpu":
        raise ValueError(f"fastrnn.torch.{cls.__name__} runs on the CPU only, got "
                         f"device={device!r}")


class LSTM(_FastRNNMixin, torch.nn.LSTM):
    """``torch.nn.LSTM`` computed by fastrnn (same constructor, parameters and forward)."""

    def __init__(self, *args, **kwargs):
        _check_device(type(self), kwargs)
        super().__init__(*args, **kwargs)
        self._check_supported()   # proj_size, dtype


class GRU(_FastRNNMixin, torch.nn.GRU):
    """``torch.nn.GRU`` computed by fastrnn (same constructor, parameters and forward)."""

    def __init__(self, *args, **kwargs):
        _check_device(type(self), kwargs)
        super().__init__(*args, **kwargs)
        self._check_supported()   # proj_size, dtype


class RNN(_FastRNNMixin, torch.nn.RNN):
    """``torch.nn.RNN`` (tanh or relu) computed by fastrnn (same constructor, parameters and
    forward). torch.nn.RNN has no linear cell, so ``nonlinearity="identity"`` is refused:
    use ``fastrnn.RNN(..., nonlinearity="identity")``."""

    def __init__(self, *args, **kwargs):
        _check_device(type(self), kwargs)
        nonlinearity = kwargs.get("nonlinearity", args[3] if len(args) > 3 else "tanh")
        if nonlinearity == "identity":
            raise ValueError("fastrnn.torch.RNN mirrors torch.nn.RNN, which has no "
                             "nonlinearity='identity' (only 'tanh' or 'relu'); the linear cell "
                             "is fastrnn.RNN(..., nonlinearity='identity') outside PyTorch")
        super().__init__(*args, **kwargs)
        self._check_supported()   # proj_size, dtype


_TO_FASTRNN = {torch.nn.LSTM: LSTM, torch.nn.GRU: GRU, torch.nn.RNN: RNN}
_TO_TORCH = {v: k for k, v in _TO_FASTRNN.items()}


def _swap(module, target_cls):
    """A ``target_cls`` module with ``module``'s hyperparameters holding the very same
    Parameter objects (no copy) under the same names."""
    kwargs = dict(input_size=module.input_size, hidden_size=module.hidden_size,
                  num_layers=module.num_layers, bias=module.bias, batch_first=module.batch_first,
                  dropout=module.dropout, bidirectional=module.bidirectional,
                  dtype=module._flat_weights[0].dtype)
    if module.proj_size:
        kwargs["proj_size"] = module.proj_size
    if isinstance(module, torch.nn.RNN):
        kwargs["nonlinearity"] = module.nonlinearity
    new = target_cls(**kwargs)
    for name in module._flat_weights_names:
        setattr(new, name, getattr(module, name))   # RNNBase keeps _flat_weights in sync
    new.train(module.training)
    return new


def convert(module, inverse=False):
    """Replace every ``torch.nn.LSTM``/``GRU``/``RNN`` in the tree of ``module`` by the
    fastrnn module (``inverse=True``: back), in place, keeping the Parameter objects and
    their names. Returns the module (the replacement when ``module`` itself is recurrent)."""
    table = _TO_TORCH if inverse else _TO_FASTRNN
    target = table.get(type(module))
    if target is not None:
        return _swap(module, target)
    for name, child in module.named_children():
        replacement = convert(child, inverse)
        if replacement is not child:
            setattr(module, name, replacement)
    return module
