"""Inverted dropout with a private, checkpointable random stream."""
import copy

import numpy as np

from .._device import array_module_of, device_of, to_device
from .._validation import as_float_dtype, check_int
from .base import Layer, backward_method, forward_method


def check_batch_share(share, name="batch_share"):
    """``share`` (None, or ``(steps, batch, start)``) as None or a tuple of ints, or a
    ValueError naming ``name``: steps >= 1, batch >= 1 and 0 <= start <= batch."""
    if share is None:
        return None
    if not isinstance(share, (tuple, list)) or len(share) != 3:
        raise ValueError(f"{name} must be None or (steps, batch, start), got {share!r}")
    steps = check_int(share[0], f"{name} steps", 1)
    batch = check_int(share[1], f"{name} batch", 1)
    start = check_int(share[2], f"{name} start", 0)
    if start > batch:
        raise ValueError(f"{name} start ({start}) must be at most batch ({batch})")
    return steps, batch, start


def mask_uniforms(rng, shape, dtype, batch_share):
    """Uniform [0, 1) numbers from ``rng`` for a dropout mask of ``shape``:
    ``rng.random(shape, dtype=dtype)``.

    With ``batch_share`` = ``(steps, batch, start)``, ``shape`` is time-major (T, B, ...) and
    the batch is rows ``[:T]`` and columns ``[start:start + B]`` of a whole (steps, batch, ...)
    batch (a rank's share in data-parallel training): the whole batch's numbers are drawn,
    exactly as one process holding it draws them (so ``rng`` moves as that process's does),
    and this part of them is returned.
    """
    if batch_share is None:
        return rng.random(shape, dtype=dtype)
    steps, batch, start = check_batch_share(batch_share)
    if len(shape) < 2 or shape[0] > steps or start + shape[1] > batch:
        raise ValueError(f"an input of shape {tuple(shape)} is not part of the (steps, batch) = "
                         f"({steps}, {batch}) batch of batch_share={batch_share}: the layer "
                         f"needs time-major (T, B, ...) inputs with T <= {steps} and "
                         f"start + B <= {batch}")
    whole = rng.random((steps, batch, *shape[2:]), dtype=dtype)
    return whole[:shape[0], start:start + shape[1]]


class Dropout(Layer):
    """Zeroes each element with probability ``p`` in training mode and scales survivors by
    ``1 / (1 - p)`` so the expected activation is unchanged; identity in eval mode.

    Works on any shape. The masks come from the layer's own ``np.random.default_rng(seed)``, so
    a run is reproducible from the seed, and ``rng_state()`` / ``set_rng_state()`` let a
    resumed run draw exactly the masks the uninterrupted run would have drawn.

    CuPy (GPU) inputs work too: the mask is drawn by the same host generator (so a GPU run
    uses exactly the masks of a CPU run with the same seed) and copied to the device.

    ``batch_share`` (attribute; default None): ``(steps, batch, start)`` when the inputs are
    time-major (T, B, ...) parts, rows ``[:T]`` and columns ``[start:start + B]``, of a whole
    (steps, batch, ...) batch held by several processes (data-parallel training): each
    forward then draws the whole batch's mask and applies its part, so the processes together
    apply one process's masks and their generators stay in step (see :func:`mask_uniforms`).
    """

    def __init__(self, p=0.5, seed=None):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"p must be a probability in [0, 1), got {p!r}")
        self.p = float(p)
        self._rng = np.random.default_rng(seed)
        self.batch_share = None

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
        keep = mask_uniforms(self._rng, x.shape, x.dtype, self.batch_share) >= self.p
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

    def skip_masks(self, shape, dtype):
        """Move the generator as a training-mode forward on an input of ``shape`` (the whole
        batch's, ``batch_share`` aside) and ``dtype`` does, computing nothing (a rank with no
        share of a batch keeps its generator in step with the others')."""
        if self.training and self.p > 0.0:
            self._rng.random(shape, dtype=as_float_dtype(dtype, "dtype"))

    def rng_state(self):
        """A copy of the mask generator's state (a plain dict, safe to pickle)."""
        return copy.deepcopy(self._rng.bit_generator.state)

    def set_rng_state(self, state):
        """Restore a state returned by :meth:`rng_state`."""
        self._rng.bit_generator.state = copy.deepcopy(state)
