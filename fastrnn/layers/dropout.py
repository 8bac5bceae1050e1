"""Inverted dropout with a private, checkpointable random stream."""
import copy

import numpy as np

from .._device import array_module_of, device_of, to_device
from .._validation import as_float_dtype
from .base import Layer, backward_method, forward_method


class Dropout(Layer):
    """Zeroes each element with probability ``p`` in training mode and scales survivors by
    ``1 / (1 - p)`` so the expected activation is unchanged; identity in eval mode.

    Works on any shape. The masks come from the layer's own ``np.random.default_rng(seed)``, so
    a run is reproducible from the seed, and ``rng_state()`` / ``set_rng_state()`` let a
    resumed run draw exactly the masks the uninterrupted run would have drawn.

    CuPy (GPU) inputs work too: the mask is drawn by the same host generator (so a GPU run
    uses exactly the masks of a CPU run with the same seed) and copied to the device.
    """

    def __init__(self, p=0.5, seed=None):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"p must be a probability in [0, 1), got {p!r}")
        self.p = float(p)
        self._rng = np.random.default_rng(seed)

    @forward_method
    def forward(self, x):
        """x: float32/float64 array of any shape. Returns an array of the same shape and dtype.

        Each training-mode call draws a new mask and keeps it for its own backward."""
        xp = array_module_of(x)
        x = xp.asarray(x)
        as_float_dtype(x.dtype, "x's dtype")
        if not self.training:
            return x
        if self.p == 0.0:
            self._save_for_backward((None, x.shape))
            return x
        keep = self._rng.random(x.shape, dtype=x.dtype) >= self.p
        scaled_mask = keep.astype(x.dtype)
        scaled_mask *= 1.0 / (1.0 - self.p)
        # Drawn on the host (the same masks on either device), then moved to x's device.
        scaled_mask = to_device(scaled_mask, device_of(x))
        self._save_for_backward((scaled_mask, x.shape))
        return x * scaled_mask

    @backward_method
    def backward(self, dy):
        """dy: the shape of the most recent pending forward's input (see base.Layer).
        Returns dx (dy through that forward's mask)."""
        scaled_mask, shape = self._saved_for_backward()
        dy = array_module_of(dy).asarray(dy)
        if dy.shape != shape:
            raise ValueError(f"dy must have shape {shape} (the forward's input), got {dy.shape}")
        return dy if scaled_mask is None else dy * scaled_mask

    def rng_state(self):
        """A copy of the mask generator's state (a plain dict, safe to pickle)."""
        return copy.deepcopy(self._rng.bit_generator.state)

    def set_rng_state(self, state):
        """Restore a state returned by :meth:`rng_state`."""
        self._rng.bit_generator.state = copy.deepcopy(state)
