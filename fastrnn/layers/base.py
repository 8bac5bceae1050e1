"""The small contract every fastrnn layer follows.

A layer owns ``params`` and ``grads``: dicts of numpy arrays with the same keys and shapes.
``forward`` caches what ``backward`` needs; ``backward`` returns the input gradient and
*accumulates* into ``grads`` (like PyTorch), so ``zero_grad()`` must be called between steps.

``device`` is "cpu" (numpy arrays) or "cuda" (CuPy arrays, ``pip install 'fastrnn[gpu]'``);
``to(device)`` moves every array in ``params`` and ``grads``.
"""
import numpy as np

from .._device import get_array_module, normalize_device, to_device


class Layer:
    def __init__(self):
        self.params = {}
        self.grads = {}
        self.training = True
        self.device = "cpu"

    @property
    def xp(self):
        """The array module of the layer's device: numpy, or cupy for "cuda"."""
        return np if self.device == "cpu" else get_array_module(self.device)

    def to(self, device):
        """Move every parameter and gradient to ``device`` ("cpu" or "cuda"); returns self.
        Arrays already there are kept as they are (no copy)."""
        device = normalize_device(device)
        if device != "cpu":
            get_array_module(device)   # a clear RuntimeError when CuPy or the GPU is missing
        for arrays in (self.params, self.grads):
            for key, value in arrays.items():
                arrays[key] = to_device(value, device)
        self.device = device
        return self

    def zero_grad(self):
        for g in self.grads.values():
            g[...] = 0

    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def state_dict(self):
        """Copies of the parameters, keyed by PyTorch-style names."""
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, state, strict=True):
        """Copy arrays (anything ``np.asarray`` takes, or CuPy arrays) into the parameters,
        checking names and shapes."""
        state = dict(state)
        missing = [k for k in self.params if k not in state]
        unexpected = [k for k in state if k not in self.params]
        if strict and (missing or unexpected):
            raise KeyError(f"state_dict mismatch: missing {missing}, unexpected {unexpected}")
        for k, p in self.params.items():
            if k not in state:
                continue
            v = to_device(state[k], self.device)
            if v.shape != p.shape:
                raise ValueError(f"state_dict[{k!r}] must have shape {p.shape}, got {v.shape}")
            p[...] = v
        return self
