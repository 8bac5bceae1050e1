"""NumPy stand-ins for the fused step kernels of fastrnn/_gpu/kernels.cu (tests only).

Same arguments and in-place effects as ``fastrnn._gpu.backend.CudaOps``: one call per step,
all batch rows at once, the same per-cell equations, so that the GPU backend's control
flow (step/time mapping, lengths, reverse, state gradients, weight-gradient GEMMs) can run
with ``xp = numpy`` and be checked against the CPU engine on machines without a GPU.
"""
import numpy as np

from fastrnn.cells import CELLS

# Cell ids (the kernels' `kind`) and gate counts by id, from the one table (fastrnn/cells.py).
RNN_TANH, RNN_RELU, GRU, LSTM = (CELLS[name].kind for name in ("rnn_tanh", "rnn_relu", "gru", "lstm"))
GATES = {spec.kind: spec.gates for spec in CELLS.values()}


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _split(a, G):
    H = a.shape[-1] // G
    return [a[..., k * H:(k + 1) * H] for k in range(G)]


class ReferenceOps:
    def prepare(self, kind, dtype):
        pass

    def forward_step(self, kind, s, reverse, lengths, gates, gh, b_hh, h, c, hn, chist, y_rows):
        B, H = h.shape
        lengths = np.asarray(lengths)
        active = s < lengths
        ended = np.flatnonzero(~active)
        y_rows[s * B + ended] = 0             # time s is past the end of these sequences
        b = np.flatnonzero(active)
        t = np.where(reverse, lengths[b] - 1 - s, s)
        rows = t * B + b
        pre = gates[rows]                     # x-projections of this step's rows
        rec = gh[b] + b_hh
        if kind == LSTM:
            xi, xf, xg, xo = _split(pre, 4)
            ri, rf, rg, ro = _split(rec, 4)
            gi, gf, gg, go = _sigmoid(xi + ri), _sigmoid(xf + rf), np.tanh(xg + rg), _sigmoid(xo + ro)
            c[b] = gf * c[b] + gi * gg
            h[b] = go * np.tanh(c[b])
            gates[rows] = np.concatenate([gi, gf, gg, go], axis=1)
            chist[rows] = c[b]
        elif kind == GRU:
            xr, xz, xn = _split(pre, 3)
            rr, rz, rn = _split(rec, 3)
            r, z = _sigmoid(xr + rr), _sigmoid(xz + rz)
            n = np.tanh(xn + r * rn)
            hn[rows] = rn
            h[b] = (1 - z) * n + z * h[b]
            gates[rows] = np.concatenate([r, z, n], axis=1)
        else:
            a = pre + rec
            a = np.tanh(a) if kind == RNN_TANH else np.where(a < 0, 0, a)
            gates[rows] = a
            h[b] = a
        y_rows[rows] = h[b]

    def backward_step(self, kind, s, reverse, lengths, gates, hn, chist, h0, c0, y_rows,
                      dy_rows, dh, dh_rec, dc, dgh):
        B, H = dh.shape
        G = GATES[kind]
        lengths = np.asarray(lengths)
        active = s < lengths
        ended = np.flatnonzero(~active)
        gates[s * B + ended] = 0
        dgh[ended] = 0
        if hn is not None:
            hn[s * B + ended] = 0
        b = np.flatnonzero(active)
        t = np.where(reverse, lengths[b] - 1 - s, s)
        rows = t * B + b
        prev_rows = np.where(reverse, t + 1, t - 1) * B + b
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
            tc = np.tanh(chist[rows])
            dct = dc[b] + d * go * (1 - tc * tc)
            out = np.concatenate([dct * gg * gi * (1 - gi), dct * c_prev * gf * (1 - gf),
                                  dct * gi * (1 - gg * gg), d * tc * go * (1 - go)], axis=1)
            dc[b] = dct * gf
            dh[b] = 0
        elif kind == GRU:
            r, z, n = _split(g, 3)
            dn = d * (1 - z) * (1 - n * n)
            out = np.concatenate([dn * hn[rows] * r * (1 - r), d * (h_prev - n) * z * (1 - z),
                                  dn * r], axis=1)
            hn[rows] = dn
            dh[b] = d * z
        else:
            out = d * (1 - g * g) if kind == RNN_TANH else np.where(g > 0, d, 0)
            dh[b] = 0
        assert out.shape[1] == G * H
        gates[rows] = out
        dgh[b] = out
