"""The device-independent driver of one recurrent layer in one direction.

Everything here is written against ``ops.xp`` (numpy or cupy) and the primitives of an Ops
object (see :mod:`fastrnn._engine`), so the CPU and the GPU run the very same checks,
workspace handling and state logic:

    ops.compute()                  context held around the kernels (CPU: BLAS on one thread)
    ops.empty(shape, dtype)        an internal buffer (gates, hn, chist, dgh_first) ...
    ops.release(arrays)            ... handed back in a list once consumed (CPU: kept for
                                   the next call, see buffers.py)
    ops.project_inputs(x, w_ih, b_ih, gates)             gates = x W_ih^T + b_ih, all steps
    ops.forward_loop(kind, reverse, T, B, w_hh, b_hh, h, c, lengths, gates, hn, chist, y,
                     table_rows=None)      (table_gates, index): row r's projected input is
                                           table_gates[index[r]] instead of gates' row r
    ops.first_step_grads(T, B, reverse, lengths, gates)   the (B, G*H) dgh_first of
                                   backward_loop (CPU without lengths: gates' own rows)
    ops.backward_loop(kind, reverse, T, B, w_hh, h0, c0, lengths, gates, hn, chist, y, dy,
                      dh, dc, dgh_first, table_grads=None, initial_dh=True)
                                   (per_row, index): per_row[v] = the sum of the x-side
                                   gate gradients of the rows r with index[r] = v;
                                   initial_dh False: dL/dh0 not wanted (dh left partial)
    ops.weight_grads(kind, reverse, T, B, x, w_ih, h0, y, gates, hn, dgh_first, grads, dx)
                                   (x, w_ih, dx None: no input side, dW_ih untouched)
    ops.gather_rows(src, index, out)          out[r] = src[index[r]]
    ops.scatter_add_rows(dst, index, rows)    dst[index[r]] += rows[r], r in order

An Ops whose ``packed_min_batch`` is an int also runs batches of at least that many
sequences with lengths packed (:mod:`.packing`), so that their cost follows the real tokens:

    ops.forward_loop_packed(kind, T, B, lengths, packing, w_hh, b_hh, h, c, gates, hn, chist, y,
                            table_rows=None)
    ops.backward_loop_packed(kind, T, B, packing, w_hh, h0, c0, gates, hn, chist, y, dy, dh, dc,
                             table_grads=None, initial_dh=True)
    ops.weight_grads_packed(kind, x, w_ih, h_prev, gates, hn, grads, dx)

with the states in the packing's sorted order and gates/hn/chist in its packed rows.
``lengths`` is always a validated host (NumPy) int64 array or None; ``y``/``dy`` are
(T*B, H) row views (:func:`row_view`). The semantics of each primitive are those of the
matching function of ``fastrnn/_cpu/recurrent.pyx``.
"""
import threading

import numpy as np

from .._device import array_module_of, is_device_array
from .._validation import (as_float_dtype, check_array, check_no_shared_memory,
                           check_output_buffer)
from ..cells import get_cell
from . import lookup
from . import packing as _packing


class RecurrentWorkspace:
    """Opaque record of one forward pass, consumed by :func:`recurrent_backward`."""

    # x: the (T*B, I) input rows, or with index (T*B,) the (V, I) table whose rows they are
    # (project_table: the forward projected the table rows, see lookup.py).
    __slots__ = ("ops", "cell", "reverse", "T", "B", "x", "index", "project_table", "w_ih",
                 "w_hh", "has_bias", "h0", "c0", "lengths", "gates", "hn", "chist", "y",
                 "consumed")

    def __init__(self):
        self.index, self.project_table = None, False   # the input is x itself

    def __repr__(self):
        return (f"RecurrentWorkspace(cell={self.cell.name!r}, T={self.T}, B={self.B}, "
                f"reverse={self.reverse}, consumed={self.consumed})")


def row_view(a):
    """View a (T, B, F) array (numpy or cupy) as (T*B, F) rows the kernels can walk, without
    copying; None when its layout does not allow that.

    The kernels address row r at ``base + r * ld`` with an integer leading dimension ``ld``
    in elements and read each row as one block, as BLAS does: so the (T, B) axes must merge,
    the row stride must be positive, a whole number of elements and at least a row long
    (rows do not overlap), the last axis contiguous and the data aligned. Anything else (a
    negative stride, a field of a structured array) is computed in a fresh buffer instead.
    """
    T, B, F = a.shape
    if T > 1 and B > 1 and a.strides[0] != a.strides[1] * B:
        return None   # the (T, B) axes do not merge: a reshape would copy
    rows = a.reshape(T * B, F)
    itemsize = rows.itemsize
    row_stride = rows.strides[0] if rows.shape[0] > 1 else F * itemsize
    if (F > 1 and rows.strides[1] != itemsize) or not getattr(rows.flags, "aligned", True):
        return None
    if row_stride <= 0 or row_stride % itemsize or row_stride < F * itemsize:
        return None
    if rows.strides != (row_stride, itemsize):   # give it a leading dimension BLAS accepts
        rows = array_module_of(a).lib.stride_tricks.as_strided(
            rows, shape=rows.shape, strides=(row_stride, itemsize))
    return rows


def _consume(ws):
    """Mark ``ws`` consumed, atomically: of several concurrent backwards exactly one runs."""
    with _consume_lock:
        if ws.consumed:
            raise ValueError("ws was already consumed by an earlier backward; run forward again")
        ws.consumed = True


_consume_lock = threading.Lock()


def check_lengths(lengths, T, B):
    """Validated host copy of ``lengths`` (int64, (B,), values in [1, T]), or None."""
    if lengths is None:
        return None
    if is_device_array(lengths):   # B integers: the host decides the loop bounds
        lengths = lengths.get()
    arr = np.asarray(lengths)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"lengths must hold integers, got dtype {arr.dtype}")
    if arr.shape != (B,):
        raise ValueError(f"lengths must have shape ({B},) (one per sequence), got {arr.shape}")
    if B and (arr.min() < 1 or arr.max() > T):
        raise ValueError(f"lengths must be in [1, {T}] (T = {T} steps), got values in "
                         f"[{arr.min()}, {arr.max()}]")
    return np.ascontiguousarray(arr, dtype=np.int64)


def split_state(cell, state, name):
    """``(h, c)`` of a state argument (c None for cells without a cell state)."""
    if cell.has_cell_state:
        if state is None:
            return None, None
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise ValueError(f"{name} must be a tuple (h, c) for an LSTM, got {type(state).__name__}")
        return state[0], state[1]
    if isinstance(state, (tuple, list)):
        raise ValueError(f"{name} must be a single array h for a {cell.name} cell, not a tuple")
    return state, None


def _state_array(a, name, B, H, dtype, xp):
    """A fresh contiguous (B, H) copy in ``xp`` (the kernels update states in place), zeros
    for None."""
    if a is None:
        return xp.zeros((B, H), dtype=dtype)
    a = check_array(a, name, ndim=2, shape=(B, H), dtype=dtype, contiguous=False)
    return xp.array(a, dtype=dtype, order="C", copy=True)


def _state_pair(cell, state, name, B, H, dtype, xp):
    h0, c0 = split_state(cell, state, name)
    h = _state_array(h0, f"{name} h", B, H, dtype, xp)
    c = _state_array(c0, f"{name} c", B, H, dtype, xp) if cell.has_cell_state else None
    return h, c


def new_weight_grads(ws, xp=None):
    """Zeroed gradient arrays for the weights (and biases) of a forward's workspace, in its
    array module (``xp`` overrides it)."""
    xp = ws.ops.xp if xp is None else xp
    # zeros, not zeros_like: NumPy's zeros_like writes every element, zeros takes pages the
    # operating system has already zeroed where it can (calloc).
    grads = {"weight_ih": xp.zeros(ws.w_ih.shape, ws.w_ih.dtype),
             "weight_hh": xp.zeros(ws.w_hh.shape, ws.w_hh.dtype)}
    if ws.has_bias:
        GH = ws.w_hh.shape[0]
        grads["bias_ih"] = xp.zeros(GH, ws.w_hh.dtype)
        grads["bias_hh"] = xp.zeros(GH, ws.w_hh.dtype)
    return grads


def _check_on_device(xp, a, name):
    """``a`` itself when it lives in ``xp``'s memory, else TypeError naming it."""
    if a is not None and array_module_of(a) is not xp:
        raise TypeError(f"{name} must be a {xp.__name__}.ndarray on x's device, got "
                        f"{type(a).__module__}.{type(a).__qualname__}")
    return a


def check_layer_args(xp, cell, x, w_ih, w_hh, b_ih, b_hh, table=False):
    """Check the arguments of a one-layer forward in the array module ``xp``.

    ``x`` is moved to ``xp`` (a NumPy batch for the GPU is copied over); weights and biases
    must already live there. ``table``: x is a (V, I) table of input rows (an ``index``
    picks them), not a (T, B, I) batch. Returns ``(spec, x, w_ih, w_hh, b_ih, b_hh,
    has_bias)`` with missing biases replaced by zeros.
    """
    spec = get_cell(cell)
    x = xp.asarray(x)
    dtype = as_float_dtype(x.dtype, "x.dtype")
    x = check_array(x, "x", ndim=2 if table else 3)
    I = x.shape[-1]
    if min(x.shape) < 1:
        what = "row" if table else "step, sequence"
        raise ValueError(f"x must have at least one {what} and feature, got shape {x.shape}")
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
    for name, a in (("w_ih", w_ih), ("w_hh", w_hh), ("b_ih", b_ih), ("b_hh", b_hh)):
        _check_on_device(xp, a, name)
    return spec, x, w_ih, w_hh, b_ih, b_hh, has_bias


def forward(ops, cell, x, w_ih, w_hh, b_ih=None, b_hh=None, state=None, lengths=None,
            reverse=False, out=None, index=None):
    """:func:`fastrnn.functional.recurrent_forward` on the device of ``ops``."""
    xp = ops.xp
    spec, x, w_ih, w_hh, b_ih, b_hh, has_bias = check_layer_args(xp, cell, x, w_ih, w_hh, b_ih,
                                                                 b_hh, table=index is not None)
    dtype = x.dtype
    if index is None:
        T, B, _ = x.shape
    else:
        index = lookup.check_index(xp, index, x.shape[0])
        T, B = index.shape
    GH, H = w_hh.shape
    h, c = _state_pair(spec, state, "state", B, H, dtype, xp)
    lens = _loop_lengths(check_lengths(lengths, T, B), T)
    if out is None:
        out = xp.empty((T, B, H), dtype=dtype)
    else:
        check_output_buffer(out, "out", (T, B, H), dtype, contiguous=False, xp=xp)
        check_no_shared_memory({"out": out}, {"x": x, "w_ih": w_ih, "w_hh": w_hh,
                                              "b_ih": b_ih, "b_hh": b_hh})
    y_rows = row_view(out)
    copy_back = y_rows is None
    if copy_back:   # the kernels write into a fresh buffer, copied into out at the end
        y_rows = xp.empty((T * B, H), dtype=dtype)

    ws = RecurrentWorkspace()
    ws.ops, ws.cell, ws.reverse, ws.T, ws.B = ops, spec, bool(reverse), T, B
    ws.has_bias, ws.consumed = has_bias, False
    ws.x = x if index is not None else x.reshape(T * B, x.shape[2])
    ws.index = index.reshape(T * B) if index is not None else None
    ws.project_table = index is not None and lookup.projects_table(x.shape[0], T * B)
    ws.w_ih, ws.w_hh, ws.lengths = w_ih, w_hh, lens
    ws.h0 = h.copy()
    ws.c0 = c.copy() if c is not None else None
    ws.gates = ops.empty((T * B, GH), dtype)
    ws.hn = ops.empty((T * B, H), dtype) if spec.name == "gru" else None
    ws.chist = ops.empty((T * B, H), dtype) if spec.has_cell_state else None
    ws.y = y_rows   # the workspace keeps the buffer the kernels wrote

    packing = _packing_for(ops, lens, B, ws.reverse)
    if packing is None:
        with ops.compute():
            projected = []
            table_index = _project_inputs(ws, b_ih, ws.gates, None, projected)
            ops.forward_loop(spec.kind, ws.reverse, T, B, w_hh, b_hh, h, c, lens, ws.gates,
                             ws.hn, ws.chist, ws.y,
                             (projected[0], table_index) if projected else None)
            ops.release(projected)
    else:
        _forward_packed(ws, packing, spec, b_ih, b_hh, h, c)
    if copy_back:
        out[...] = y_rows.reshape(T, B, H)
    return out, ((h, c) if spec.has_cell_state else h), ws


def _loop_lengths(lens, T):
    """The lengths the loops get: None when every sequence is whole (the plain loops compute
    the same, faster). Forward and backward both apply it, so that a workspace rebuilt from
    the caller's lengths (fastrnn.torch, fastrnn.jax) takes the same path as its forward."""
    return None if lens is not None and lens.min() == T else lens


def _packing_for(ops, lens, B, reverse):
    """The :class:`.packing.Packing` of a batch with lengths that ``ops`` runs packed, else
    None (no lengths, an Ops without packed loops, or a batch below its packed_min_batch)."""
    min_batch = getattr(ops, "packed_min_batch", None)
    if lens is None or min_batch is None or B < min_batch:
        return None
    return _packing.plan(lens, B, reverse)


def _forward_packed(ws, packing, spec, b_ih, b_hh, h, c):
    """forward's kernels on a packed batch: the input projection of the real tokens only
    (gathered into packed order), the packed loop writing y in time space, and the final
    states put back in the caller's order."""
    ops, order, rows = ws.ops, packing.order, packing.rows
    h_sorted = h[order]
    c_sorted = c[order] if c is not None else None
    with ops.compute():
        projected = []
        table_index = _project_inputs(ws, b_ih, ws.gates[:rows], packing.src, projected)
        ops.forward_loop_packed(spec.kind, ws.T, ws.B, ws.lengths, packing, ws.w_hh, b_hh,
                                h_sorted, c_sorted, ws.gates, ws.hn, ws.chist, ws.y,
                                (projected[0], table_index) if projected else None)
        ops.release(projected)
    h[order] = h_sorted
    if c is not None:
        c[order] = c_sorted


def _project_inputs(ws, b_ih, gates, src, projected):
    """gates = x W_ih^T + b_ih for the input rows ``src`` (time-space row numbers, in the
    order of gates' rows; None: all T*B in time order); returns None. With a projected
    table, gates is left alone: the table's projection is appended to the list
    ``projected`` (the caller's to hand back with ops.release after the loop) and each
    gates row's table row returned, for the forward loop's ``table_rows``."""
    if ws.project_table:
        projected.append(lookup.project_table(ws.ops, ws.x, ws.w_ih, b_ih))
        return _x_rows(ws, src)
    ws.ops.project_inputs(_input_rows(ws, src), ws.w_ih, b_ih, gates)
    return None


def _x_rows(ws, src):
    """The rows of ws.x that hold the input of time-space rows ``src`` (None: all T*B in
    time order), in that order: through the index when x is a table. None when they are x's
    own rows in order (no index, src None)."""
    if ws.index is None:
        return src
    return ws.index if src is None else ws.index[src]


def _input_rows(ws, src):
    """The layer's input rows ``src`` (time-space row numbers; None: all T*B in time order):
    forward projects them, backward pairs them with dGh. Gathered into a new array unless
    they are x itself."""
    x_rows = _x_rows(ws, src)
    if x_rows is None:
        return ws.x
    rows = ws.ops.xp.empty((x_rows.shape[0], ws.x.shape[1]), ws.x.dtype)
    ws.ops.gather_rows(ws.x, x_rows, rows)
    return rows


def _backward_packed(ws, dy_rows, dh, dc, grads, dx_out, state0_grad, input_grad):
    """backward's kernels on a packed batch (see _forward_packed). The packing is made again
    from ws.lengths, which _check_saved has validated. Returns (grads, dx_out); dx_out is
    None without ``input_grad``."""
    ops, spec, T, B = ws.ops, ws.cell, ws.T, ws.B
    xp = ops.xp
    packing = _packing.plan(ws.lengths, B, ws.reverse)
    order, rows = packing.order, packing.rows
    GH, H = ws.w_hh.shape
    I = ws.x.shape[1]
    h0 = ws.h0[order]
    c0 = ws.c0[order] if ws.c0 is not None else None
    dh_sorted = dh[order]
    dc_sorted = dc[order] if dc is not None else None
    gates = ws.gates[:rows]
    hn = ws.hn[:rows] if ws.hn is not None else None
    x_rows = _x_rows(ws, packing.src)   # each packed row's row of x
    per_row = _table_grads_buffer(ws)
    with ops.compute():
        ops.backward_loop_packed(spec.kind, T, B, packing, ws.w_hh, h0, c0, ws.gates, ws.hn,
                                 ws.chist, ws.y, dy_rows, dh_sorted, dc_sorted,
                                 None if per_row is None else (per_row, x_rows), state0_grad)
        if grads is None:
            grads = new_weight_grads(ws)
        if dx_out is None and input_grad:
            dx_out = xp.zeros(_dx_shape(ws), dtype=ws.w_hh.dtype)
        # Each real token's previous hidden state: h0 at the first steps (packed rows 0..B-1),
        # else the same sequence's output one step earlier.
        h_prev = xp.empty((rows, H), dtype=ws.w_hh.dtype)
        h_prev[:B] = h0
        ops.gather_rows(ws.y, packing.prev_src, h_prev[B:])
        if ws.project_table:
            ops.weight_grads_packed(spec.kind, None, None, h_prev, gates, hn, grads, None)
            lookup.add_table_grads(per_row, ws.x, ws.w_ih, grads, dx_out)
        else:
            x_packed = _input_rows(ws, packing.src)
            dx_packed = xp.zeros((rows, I), dtype=ws.w_hh.dtype) if input_grad else None
            ops.weight_grads_packed(spec.kind, x_packed, ws.w_ih, h_prev, gates, hn, grads,
                                    dx_packed)
            del x_packed
            if input_grad:   # src holds each time-space row once (an index may repeat
                # table rows: summed)
                ops.scatter_add_rows(dx_out.reshape(-1, I), x_rows, dx_packed)
        del h_prev
    released = [per_row]   # the list holds the last reference (buffers.py)
    del per_row
    ops.release(released)
    if state0_grad:   # else dh is partial and backward returns no dstate0
        dh[order] = dh_sorted
        if dc is not None:
            dc[order] = dc_sorted
    return grads, dx_out


def backward(ws, dy=None, dstate=None, grads=None, dx_out=None, state0_grad=True,
             input_grad=True):
    """:func:`fastrnn.functional.recurrent_backward` on the device of the forward."""
    if not isinstance(ws, RecurrentWorkspace):
        raise TypeError(f"ws must be the workspace returned by recurrent_forward, got {type(ws).__name__}")
    if ws.consumed:   # early, friendly; the authoritative check is _consume below
        raise ValueError("ws was already consumed by an earlier backward; run forward again")
    ops, spec, T, B = ws.ops, ws.cell, ws.T, ws.B
    xp = ops.xp
    # Only fields that backward never clears are read before the workspace is consumed.
    dtype = ws.w_hh.dtype
    GH, H = ws.w_hh.shape
    I = ws.x.shape[1]
    dy_rows = None
    if dy is not None:
        dy = check_array(xp.asarray(dy), "dy", ndim=3, shape=(T, B, H), dtype=dtype,
                         contiguous=False)
        dy_rows = row_view(dy)
        if dy_rows is None:   # a layout the kernels cannot walk: copy once
            dy_rows = row_view(xp.array(dy, order="C", copy=True))
    dh, dc = _state_pair(spec, dstate, "dstate", B, H, dtype, xp)
    if grads is not None:
        _check_grads(grads, ws.has_bias, GH, H, I, dtype, xp)
    if dx_out is not None:
        if not input_grad:
            raise ValueError("dx_out was given with input_grad=False: no dx is computed to "
                             "accumulate into it")
        check_output_buffer(dx_out, "dx_out", _dx_shape(ws), dtype, xp=xp)
    outputs = {"dx_out": dx_out}
    outputs.update((f"grads[{k!r}]", v) for k, v in (grads or {}).items())
    check_no_shared_memory(outputs, {"x": ws.x, "w_ih": ws.w_ih, "w_hh": ws.w_hh,
                                     "the forward's out": ws.y, "dy": dy_rows})

    _consume(ws)
    gates, hn, chist = ws.gates, ws.hn, ws.chist
    _check_saved(ws, xp, spec, GH, H, I, dtype, gates, hn, chist)
    packing = _packing_for(ops, _loop_lengths(ws.lengths, T), B, ws.reverse)
    if packing is not None:
        del gates, hn, chist
        grads, dx_out = _backward_packed(ws, dy_rows, dh, dc, grads, dx_out, state0_grad,
                                         input_grad)
        _release_saved(ws)
        return dx_out, _initial_state_grad(spec, dh, dc, state0_grad), grads
    dgh_first = ops.first_step_grads(T, B, ws.reverse, _loop_lengths(ws.lengths, T), gates)
    per_row = _table_grads_buffer(ws)
    with ops.compute():
        ops.backward_loop(spec.kind, ws.reverse, T, B, ws.w_hh, ws.h0, ws.c0,
                          _loop_lengths(ws.lengths, T),
                          gates, hn, chist, ws.y, dy_rows, dh, dc, dgh_first,
                          None if per_row is None else (per_row, ws.index), state0_grad)
        # Outputs are allocated only now, after the loop has freed its packed copy of W_hh,
        # so that the two never coexist (peak memory).
        if grads is None:
            grads = new_weight_grads(ws)
        if dx_out is None and input_grad:
            dx_out = xp.zeros(_dx_shape(ws), dtype=dtype)
        scratch = [dgh_first]
        if ws.project_table:
            ops.weight_grads(spec.kind, ws.reverse, T, B, None, None, ws.h0, ws.y, gates, hn,
                             dgh_first, grads, None)
            lookup.add_table_grads(per_row, ws.x, ws.w_ih, grads, dx_out)
            scratch.append(per_row)
        elif ws.index is None or not input_grad:
            ops.weight_grads(spec.kind, ws.reverse, T, B, _input_rows(ws, None), ws.w_ih,
                             ws.h0, ws.y, gates, hn, dgh_first, grads,
                             None if dx_out is None else dx_out.reshape(T * B, I))
        else:   # the tokens' rows gathered again, their dx scattered into the table's rows
            dx_rows = ops.empty((T * B, I), dtype)
            dx_rows.fill(0)
            ops.weight_grads(spec.kind, ws.reverse, T, B, _input_rows(ws, None), ws.w_ih,
                             ws.h0, ws.y, gates, hn, dgh_first, grads, dx_rows)
            ops.scatter_add_rows(dx_out, ws.index, dx_rows)
            scratch.append(dx_rows)
            del dx_rows
    del gates, hn, chist, dgh_first, per_row
    _release_saved(ws, scratch)
    return dx_out, _initial_state_grad(spec, dh, dc, state0_grad), grads


def _initial_state_grad(spec, dh, dc, wanted):
    """backward's dstate0: (dh, dc) or dh; None when not wanted (the loops then skip the
    product that completes dh, so it is not the gradient)."""
    if not wanted:
        return None
    return (dh, dc) if spec.has_cell_state else dh


def _table_grads_buffer(ws):
    """With a projected table: the buffer (V, G*H) the backward loop sums each table row's
    x-side gate gradients into (an internal one, released by the caller); else None."""
    if not ws.project_table:
        return None
    return ws.ops.empty((ws.x.shape[0], ws.w_hh.shape[0]), ws.w_hh.dtype)


def _dx_shape(ws):
    """The shape of backward's dx: x's, (T, B, I) or the (V, I) table's."""
    return ws.x.shape if ws.index is not None else (ws.T, ws.B, ws.x.shape[1])


def _release_saved(ws, scratch=None):
    """The saved activations are now gradients: drop the workspace's big buffers early and
    hand them (and the list ``scratch``, holding the caller's last references to its own
    buffers) back to its Ops for reuse."""
    released = [ws.gates, ws.hn, ws.chist]
    ws.gates = ws.hn = ws.chist = None
    if scratch:
        released += scratch
        scratch.clear()
    ws.ops.release(released)


def _check_grads(grads, has_bias, GH, H, I, dtype, xp):
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
        check_output_buffer(grads[key], f"grads[{key!r}]", shape, dtype, xp=xp)


def _check_saved(ws, xp, spec, GH, H, I, dtype, gates, hn, chist):
    """The workspace must hold what its forward saved: its attributes are reachable from
    Python, and a replaced one must not lead the kernels out of bounds."""
    rows, B = ws.T * ws.B, ws.B
    x_shape = (rows, I) if ws.index is None else (ws.x.shape[0], I)
    expected = {"gates": (gates, (rows, GH)), "x": (ws.x, x_shape), "w_ih": (ws.w_ih, (GH, I)),
                "index": (ws.index, None if ws.index is None else (rows,)),
                "h0": (ws.h0, (B, H)), "y": (ws.y, (rows, H)),
                "c0": (ws.c0, (B, H) if spec.has_cell_state else None),
                "hn": (hn, (rows, H) if spec.name == "gru" else None),
                "chist": (chist, (rows, H) if spec.has_cell_state else None)}
    for name, (a, shape) in expected.items():
        if shape is None:
            ok = a is None
        else:
            ok = (type(a) is xp.ndarray and a.shape == shape
                  and a.dtype == (np.int64 if name == "index" else dtype)
                  and (a.flags.c_contiguous or name == "y"))
        if not ok:
            raise ValueError(f"ws.{name} is not the array its forward saved; run forward again")
    lengths = ws.lengths
    if lengths is not None and not (type(lengths) is np.ndarray and lengths.shape == (B,)
                                    and lengths.dtype == np.int64 and lengths.flags.c_contiguous
                                    and lengths.min() >= 1 and lengths.max() <= ws.T):
        raise ValueError("ws.lengths is not the array its forward saved; run forward again")
    if row_view(ws.y.reshape(ws.T, B, H)) is None:
        raise ValueError("ws.y is not the array its forward saved; run forward again")
