"""Functional recurrent kernels: one layer, one direction, a whole sequence, plain arrays.

This is the layer to embed in other training code::

    y, state, ws = recurrent_forward("lstm", x, w_ih, w_hh, b_ih, b_hh, state=(h0, c0))
    dx, dstate0, grads = recurrent_backward(ws, dy, dstate=(dh_T, dc_T))

``lstm_forward``/``gru_forward``/``rnn_tanh_forward``/``rnn_relu_forward`` and
``rnn_identity_forward`` (the linear recurrence ``h' = W_ih x + b_ih + W_hh h + b_hh``), and
the matching ``*_backward``, are the same with the cell fixed. Shapes (time-major):

    x (T, B, I)   w_ih (G*H, I)   w_hh (G*H, H)   b_ih, b_hh (G*H,)   G = 1 RNN, 3 GRU, 4 LSTM
    state  h (B, H), or (h, c) for the LSTM; None means zeros
    lengths (B,) ints in [1, T], any order: PyTorch packed-sequence semantics on a padded batch
    y (T, B, H): zero past each sequence's length; state: each sequence's state at its last step

The workspace returned by forward holds what backward needs; backward consumes it (once).

NumPy arrays run on the compiled CPU kernels, CuPy arrays on the CUDA kernels: one engine
(:mod:`fastrnn._engine`) with the same checks and semantics on both.
"""
from . import _engine
from ._engine import RecurrentWorkspace, check_layer_args, new_weight_grads  # noqa: F401


def recurrent_forward(cell, x, w_ih, w_hh, b_ih=None, b_hh=None, state=None, lengths=None,
                      reverse=False, out=None, index=None):
    """Run one recurrent layer in one direction over a whole sequence.

    cell: "rnn_tanh", "rnn_relu", "rnn_identity", "gru" or "lstm". x: (T, B, I) float32 or
    float64; weights and state must have x's dtype. A CuPy ``x`` runs on the GPU (weights and biases must be
    CuPy arrays too; states, ``lengths`` and ``dy`` may be either), anything else on the CPU.
    ``reverse=True`` walks each sequence from its own last step. ``out`` is an optional
    (T, B, H) array (of x's array type) of x's dtype to write y into: any
    writeable view (such as one half of a bidirectional output, or a reversed one) whose
    elements overlap neither each other nor x, the weights or the biases. The kernels write
    straight into it when its rows can be walked with a positive leading dimension (then
    backward reads y back from it: leave it unchanged until then), else into a fresh buffer
    that is then copied into ``out``.

    ``index``: (T, B) int row numbers of x, which is then a (V, I) table: the layer's input
    is ``x[index]`` (an embedding lookup fused into the layer; backward's dx is then the
    table's gradient, (V, I)). With fewer table rows than tokens (V < T*B: a character
    vocabulary) the input projection runs once per table row instead of once per token, and
    so do dW_ih and dx; otherwise the tokens' rows are gathered and projected.

    Returns ``(y, state_T, workspace)``; state_T is h_T (B, H), or (h_T, c_T) for the LSTM.
    """
    return _engine.forward(_engine.ops_for(x), cell, x, w_ih, w_hh, b_ih, b_hh, state,
                           lengths, reverse, out, index)


def recurrent_backward(ws, dy=None, dstate=None, grads=None, dx_out=None, state0_grad=True,
                       input_grad=True):
    """Backpropagate through the forward pass recorded in ``ws`` (on the forward's device).

    dy: (T, B, H) gradient at the outputs, or None. dstate: gradient at the final state,
    shaped like the state (None means zeros).

    ``grads`` may be a dict with exactly "weight_ih" (G*H, I), "weight_hh" (G*H, H) (and
    "bias_ih", "bias_hh" (G*H,) when the forward had biases) to accumulate into; by default
    new ones are returned. ``dx_out`` may be a (T, B, I) array ((V, I) with an ``index``) to
    accumulate dx into. These must be writeable C-contiguous arrays of the forward's array
    type and dtype, sharing no memory with each other, x, the weights, the forward's ``out``
    or dy.

    A workspace is consumed by its first backward; another backward on it (also one running
    at the same time in another thread) raises ValueError.

    ``state0_grad=False`` says the gradient at the initial state is not wanted (a state
    carried over from the previous batch and detached, as in truncated BPTT): the product
    dGh W_hh of each sequence's first step, which only feeds it, is skipped (1/T of the
    backward's recurrent products), and dstate0 is returned as None. Everything else is
    the same, to the bit.

    ``input_grad=False`` says the gradient at x is not wanted (the first layer of a model
    fed raw features, or a frozen embedding table): the product dG W_ih that only feeds it
    is skipped (for I = H, a sixth of the layer's forward + backward GEMM work), dx is
    returned as None, and ``dx_out`` must not be given. The parameter gradients are the
    same, to the bit.

    Returns ``(dx, dstate0, grads)``: dx (T, B, I) (with an ``index``: the table's, (V, I);
    None with ``input_grad=False``), the gradient at the initial state (shaped like it; None
    with ``state0_grad=False``), and the parameter gradients.
    """
    return _engine.backward(ws, dy, dstate, grads, dx_out, state0_grad, input_grad)


def _scratch_zeros(shape, dtype, like):
    """Zeros on ``like``'s device for a buffer that lives only inside one step of a layer (the
    gradient between two stacked layers): from the engine's buffer cache, whose reused pages
    are already mapped, instead of fresh memory. Hand it back with :func:`_release_scratch`."""
    a = _engine.ops_for(like).empty(shape, dtype)
    a.fill(0)
    return a


def _release_scratch(arrays):
    """Hand back the buffers of :func:`_scratch_zeros` in the list ``arrays``, which holds the
    caller's last references to them (emptied)."""
    if arrays:
        _engine.ops_for(arrays[0]).release(arrays)


def _bind(cell):
    def forward(x, w_ih, w_hh, b_ih=None, b_hh=None, state=None, lengths=None, reverse=False,
                out=None, index=None):
        return recurrent_forward(cell, x, w_ih, w_hh, b_ih, b_hh, state, lengths, reverse, out,
                                 index)

    def backward(ws, dy=None, dstate=None, grads=None, dx_out=None, state0_grad=True,
                 input_grad=True):
        if ws.cell.name != cell:
            raise ValueError(f"ws comes from a {ws.cell.name} forward, not {cell}")
        return recurrent_backward(ws, dy, dstate, grads, dx_out, state0_grad, input_grad)

    forward.__name__, backward.__name__ = f"{cell}_forward", f"{cell}_backward"
    forward.__doc__ = f"recurrent_forward with cell={cell!r}; see its docstring."
    backward.__doc__ = f"recurrent_backward for a {cell} workspace; see its docstring."
    return forward, backward


lstm_forward, lstm_backward = _bind("lstm")
gru_forward, gru_backward = _bind("gru")
rnn_tanh_forward, rnn_tanh_backward = _bind("rnn_tanh")
rnn_relu_forward, rnn_relu_backward = _bind("rnn_relu")
rnn_identity_forward, rnn_identity_backward = _bind("rnn_identity")
