"""Step-loop Ops written in the array module: the shared skeleton of the GPU engine, and a
reference implementation of the gate math.

:class:`StepOps` runs the recurrence one step at a time, all batch rows at once: a GEMM for
the recurrent term, then one ``forward_step``/``backward_step`` call; the input projection
and the weight gradients are GEMMs over all steps. Subclasses supply the two step
functions: :class:`ReferenceOps` with the cells' equations in ``xp`` (NumPy or CuPy,
used by the tests), :class:`fastrnn._engine.cuda.CudaOps` with the fused CUDA kernels.
"""
import contextlib

import numpy as np

from ..cells import get_cell
from . import lookup

RNN_TANH, RNN_RELU, RNN_IDENTITY, GRU, LSTM = (
    get_cell(n).kind for n in ("rnn_tanh", "rnn_relu", "rnn_identity", "gru", "lstm"))


class StepOps:
    """Ops for any array module ``xp`` given the two per-step functions (see the module)."""

    name = "step"

    def __init__(self, xp):
        self.xp = xp

    def compute(self):
        return contextlib.nullcontext()

    def empty(self, shape, dtype):
        """An internal buffer: a new one (device array modules pool memory themselves)."""
        return self.xp.empty(shape, dtype=dtype)

    @staticmethod
    def release(arrays):
        """Nothing is kept (see empty)."""
        arrays.clear()

    def project_inputs(self, x, w_ih, b_ih, gates):
        self.xp.matmul(x, w_ih.T, out=gates)   # input projection, all steps at once
        gates += b_ih

    def _lengths(self, lengths, T, B):
        """Per-sequence lengths on the device (T for all when None) and the number of steps
        any sequence reaches."""
        host = np.full(B, T, np.int64) if lengths is None else lengths
        return self.xp.asarray(host), int(host.max())

    def run_loop(self, key, arrays, loop):
        """Run ``loop()``, the launches of one sequence (CudaOps may replay a CUDA graph)."""
        loop()

    def forward_loop(self, kind, reverse, T, B, w_hh, b_hh, h, c, lengths, gates, hn, chist, y,
                     table_rows=None):
        xp = self.xp
        if table_rows is not None:   # (table_gates, index): row r's input is table_gates[index[r]]
            self.gather_rows(table_rows[0], table_rows[1], gates)
        lens, steps = self._lengths(lengths, T, B)
        gh = xp.empty((B, w_hh.shape[0]), dtype=h.dtype)
        if steps < T:   # times no sequence reaches: zero output
            y[steps * B:] = 0

        def loop():
            for s in range(steps):
                xp.matmul(h, w_hh.T, out=gh)
                self.forward_step(kind, s, reverse, lens, gates, gh, b_hh, h, c, hn, chist, y)

        self.run_loop(("fwd", kind, h.dtype.char, reverse, T, B, h.shape[1], steps, y.strides[0]),
                      (lens, gates, gh, b_hh, w_hh, h, c, hn, chist, y), loop)

    def first_step_grads(self, T, B, reverse, lengths, gates):
        """The (B, G*H) buffer for dGh at each sequence's first step (the loop's per-step
        scratch here: a new one)."""
        return self.empty((B, gates.shape[1]), gates.dtype)

    def backward_loop(self, kind, reverse, T, B, w_hh, h0, c0, lengths, gates, hn, chist, y, dy,
                      dh, dc, dgh_first, table_grads=None, initial_dh=True):
        xp = self.xp
        lens, steps = self._lengths(lengths, T, B)
        dh_rec = xp.zeros_like(dh)
        if steps < T:   # times no sequence reaches take part in the GEMMs as zero rows
            gates[steps * B:] = 0
            if hn is not None:
                hn[steps * B:] = 0

        def loop():
            for s in range(steps - 1, -1, -1):
                self.backward_step(kind, s, reverse, lens, gates, hn, chist, h0, c0, y, dy, dh,
                                   dh_rec, dc, dgh_first)
                if s > 0 or initial_dh:
                    xp.matmul(dgh_first, w_hh, out=dh_rec)

        self.run_loop(("bwd", kind, dh.dtype.char, reverse, T, B, dh.shape[1], steps,
                       y.strides[0], None if dy is None else dy.strides[0]),
                      (lens, gates, hn, chist, h0, c0, y, dy, dh, dh_rec, dc, dgh_first, w_hh),
                      loop)
        if initial_dh:
            dh += dh_rec   # the W_hh path out of each sequence's first step
        if table_grads is not None:   # (per_row, index): each row's x-side dG into its table row
            per_row, index = table_grads
            per_row[...] = 0
            self.scatter_add_rows(per_row, index, lookup.x_side_gate_grads(xp, gates, hn))

    def gather_rows(self, src, index, out):
        """out[r] = src[index[r]]."""
        self.xp.take(src, index, axis=0, out=out)

    def scatter_add_rows(self, dst, index, rows):
        """dst[index[r]] += rows[r] for every r (a repeated index gets all its rows)."""
        self.xp.add.at(dst, index, rows)

    def weight_grads(self, kind, reverse, T, B, x, w_ih, h0, y, gates, hn, dgh_first, grads, dx):
        """GEMMs over all steps, as recurrent.pyx's weight_grads: ``gates`` holds dGh, ``hn``
        the GRU's x-side n-gate gradient; the previous hidden state of row (t, b) is y at t-1
        (t+1 in reverse), or h0 at each sequence's first step, where dGh is ``dgh_first``.
        x None (w_ih, dx None too): no input side, dW_ih and dx are left alone; dx None
        alone: dx is not wanted."""
        H = h0.shape[1]
        x_cols = 2 * H if kind == GRU else gates.shape[1]
        dw_ih, dw_hh = grads["weight_ih"], grads["weight_hh"]
        if T > 1:
            if reverse:   # row t pairs with y[t+1] (zero past the end, h0 handled below)
                dw_hh += gates[:(T - 1) * B].T @ y[B:]
            else:         # row t pairs with y[t-1]
                dw_hh += gates[B:].T @ y[:(T - 1) * B]
        dw_hh += dgh_first.T @ h0
        if x is not None:
            dw_ih[:x_cols] += gates[:, :x_cols].T @ x
            if hn is not None:
                dw_ih[2 * H:] += hn.T @ x
        if grads.get("bias_hh") is not None:
            grads["bias_hh"] += gates.sum(axis=0)
        if grads.get("bias_ih") is not None:
            db_ih = grads["bias_ih"]
            db_ih[:x_cols] += gates[:, :x_cols].sum(axis=0)
            if hn is not None:
                db_ih[2 * H:] += hn.sum(axis=0)
        if dx is not None:
            dx += gates[:, :x_cols] @ w_ih[:x_cols]
            if hn is not None:
                dx += hn @ w_ih[2 * H:]


def _split(a, G):
    H = a.shape[-1] // G
    return [a[..., k * H:(k + 1) * H] for k in range(G)]


class ReferenceOps(StepOps):
    """The per-step gate math of kernels.cu (and csrc/cells.h) in the array module: one call
    per step, all batch rows at once, the same arguments and in-place effects as the CUDA
    kernels. Slow; for tests and as the readable statement of the equations."""

    name = "reference"

    def __init__(self, xp=np):
        super().__init__(xp)

    def _sigmoid(self, v):
        return 1.0 / (1.0 + self.xp.exp(-v))

    def _rows_of_step(self, s, reverse, lengths, B):
        """Batch indices still running at step s, their time index and rows; rows of the
        sequences that have ended."""
        xp = self.xp
        active = s < lengths
        ended = xp.flatnonzero(~active)
        b = xp.flatnonzero(active)
        t = lengths[b] - 1 - s if reverse else xp.full(b.shape, s, dtype=np.int64)
        return b, t, t * B + b, ended

    def forward_step(self, kind, s, reverse, lengths, gates, gh, b_hh, h, c, hn, chist, y_rows):
        xp = self.xp
        B = h.shape[0]
        b, _, rows, ended = self._rows_of_step(s, reverse, lengths, B)
        y_rows[s * B + ended] = 0             # time s is past the end of these sequences
        pre = gates[rows]                     # x-projections of this step's rows
        rec = gh[b] + b_hh
        if kind == LSTM:
            xi, xf, xg, xo = _split(pre, 4)
            ri, rf, rg, ro = _split(rec, 4)
            gi, gf = self._sigmoid(xi + ri), self._sigmoid(xf + rf)
            gg, go = xp.tanh(xg + rg), self._sigmoid(xo + ro)
            c[b] = gf * c[b] + gi * gg
            h[b] = go * xp.tanh(c[b])
            gates[rows] = xp.concatenate([gi, gf, gg, go], axis=1)
            chist[rows] = c[b]
        elif kind == GRU:
            xr, xz, xn = _split(pre, 3)
            rr, rz, rn = _split(rec, 3)
            r, z = self._sigmoid(xr + rr), self._sigmoid(xz + rz)
            n = xp.tanh(xn + r * rn)
            hn[rows] = rn
            h[b] = (1 - z) * n + z * h[b]
            gates[rows] = xp.concatenate([r, z, n], axis=1)
        else:
            a = pre + rec
            if kind == RNN_TANH:
                a = xp.tanh(a)
            elif kind == RNN_RELU:
                a = xp.where(a < 0, 0, a)   # RNN_IDENTITY: a as it is
            gates[rows] = a
            h[b] = a
        y_rows[rows] = h[b]

    def backward_step(self, kind, s, reverse, lengths, gates, hn, chist, h0, c0, y_rows,
                      dy_rows, dh, dh_rec, dc, dgh):
        xp = self.xp
        B = dh.shape[0]
        b, t, rows, ended = self._rows_of_step(s, reverse, lengths, B)
        gates[s * B + ended] = 0
        dgh[ended] = 0
        if hn is not None:
            hn[s * B + ended] = 0
        prev_rows = (t + 1 if reverse else t - 1) * B + b
        d = dh[b] + dh_rec[b]
        if dy_rows is not None:
            d = d + dy_rows[rows]
        if s == 0:
            h_prev = h0[b]
            c_prev = c0[b] if c0 is not None else None
        else:
            h_prev = y_rows[prev_rows]
            c_prev = chist[prev_rows] if chist is not None else None
        g = gates[rows]
        if kind == LSTM:
            gi, gf, gg, go = _split(g, 4)
            tc = xp.tanh(chist[rows])
            dct = dc[b] + d * go * (1 - tc * tc)
            out = xp.concatenate([dct * gg * gi * (1 - gi), dct * c_prev * gf * (1 - gf),
                                  dct * gi * (1 - gg * gg), d * tc * go * (1 - go)], axis=1)
            dc[b] = dct * gf
            dh[b] = 0
        elif kind == GRU:
            r, z, n = _split(g, 3)
            dn = d * (1 - z) * (1 - n * n)
            out = xp.concatenate([dn * hn[rows] * r * (1 - r), d * (h_prev - n) * z * (1 - z),
                                  dn * r], axis=1)
            hn[rows] = dn
            dh[b] = d * z
        else:
            if kind == RNN_TANH:
                out = d * (1 - g * g)
            elif kind == RNN_RELU:
                out = xp.where(g > 0, d, 0)
            else:   # RNN_IDENTITY
                out = d
            dh[b] = 0
        gates[rows] = out
        dgh[b] = out

    def __repr__(self):
        return f"ReferenceOps({self.xp.__name__})"
