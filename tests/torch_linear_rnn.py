"""The PyTorch reference for fastrnn's linear cell "rnn_identity".

torch.nn.RNN has no ``nonlinearity="identity"``, so :class:`LinearRNN` is torch.nn.RNN's
interface (constructor, parameter names and shapes, ``forward(input, hx)`` on padded or packed
input, time-major or batch_first) with ``h_t = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh``,
written as a plain per-sequence loop that autograd differentiates. It is deliberately naive
(one sequence and one step at a time), so that it shares nothing with the kernels it checks.
Import it only after ``pytest.importorskip("torch")``.
"""
import math

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence


class LinearRNN(torch.nn.Module):
    """torch.nn.RNN with act = identity (no dropout). Shapes as torch.nn.RNN's."""

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="identity",
                 bias=True, batch_first=False, bidirectional=False, dtype=None):
        super().__init__()
        assert nonlinearity == "identity", nonlinearity
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.bidirectional = bias, batch_first, bidirectional
        self.num_directions = 2 if bidirectional else 1
        bound = 1.0 / math.sqrt(hidden_size)
        for layer in range(num_layers):
            in_size = input_size if layer == 0 else self.num_directions * hidden_size
            for direction in range(self.num_directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                shapes = {"weight_ih": (hidden_size, in_size), "weight_hh": (hidden_size, hidden_size)}
                if bias:
                    shapes.update(bias_ih=(hidden_size,), bias_hh=(hidden_size,))
                for name, shape in shapes.items():
                    param = torch.nn.Parameter(torch.empty(shape, dtype=dtype))
                    torch.nn.init.uniform_(param, -bound, bound)
                    self.register_parameter(name + suffix, param)

    def _weights(self, layer, direction):
        suffix = f"_l{layer}" + ("_reverse" if direction else "")
        w_ih, w_hh = getattr(self, "weight_ih" + suffix), getattr(self, "weight_hh" + suffix)
        if self.bias:
            return w_ih, w_hh, getattr(self, "bias_ih" + suffix), getattr(self, "bias_hh" + suffix)
        return w_ih, w_hh, 0, 0

    def forward(self, input, hx=None):
        packed = isinstance(input, PackedSequence)
        if packed:
            x, lengths = pad_packed_sequence(input)   # (T, B, I) in the caller's order
            lengths = [int(n) for n in lengths]
        else:
            x = input.transpose(0, 1) if self.batch_first else input
            lengths = [x.shape[0]] * x.shape[1]
        T, B, _ = x.shape
        H, D = self.hidden_size, self.num_directions
        if hx is None:
            hx = x.new_zeros((self.num_layers * D, B, H))
        layer_input, finals = x, []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(D):
                w_ih, w_hh, b_ih, b_hh = self._weights(layer, direction)
                columns = []
                for b in range(B):
                    n = lengths[b]
                    h = hx[layer * D + direction, b]
                    ys = [x.new_zeros(H)] * T   # zero past the sequence's end
                    for t in (range(n - 1, -1, -1) if direction else range(n)):
                        h = layer_input[t, b] @ w_ih.T + b_ih + h @ w_hh.T + b_hh
                        ys[t] = h
                    columns.append(torch.stack(ys))
                    finals.append(h)
                outputs.append(torch.stack(columns, 1))
            layer_input = torch.cat(outputs, 2)
        h_n = torch.stack(finals).reshape(self.num_layers * D, B, H)
        if packed:
            return pack_padded_sequence(layer_input, torch.tensor(lengths),
                                        enforce_sorted=False), h_n
        return (layer_input.transpose(0, 1) if self.batch_first else layer_input), h_n
