"""Fused softmax + cross-entropy over the last axis, with an optional token mask."""
import numpy as np

from .._device import array_module_of, device_of, to_device
from .._softmax import softmax_cross_entropy_rows
from .._validation import as_float_dtype, check_int, check_nonnegative_ints, check_token_ids
from .base import Layer, backward_method, forward_method

REDUCTIONS = ("mean", "sum")


def length_mask(lengths, T):
    """Boolean ``(T, B)`` loss mask of padded sequences, True where step ``t < lengths[b]``
    (a real, unpadded step). ``lengths``: (B,) non-negative integers (host array)."""
    lengths = check_nonnegative_ints(lengths, "lengths")
    T = check_int(T, "T", 0)
    return np.arange(T)[:, None] < lengths[None, :]


class SoftmaxCrossEntropy(Layer):
    """Cross-entropy (nats) of integer targets under ``softmax(logits)``.

    ``forward(logits (..., V), targets (...), mask (...) or None) -> float`` and
    ``backward(scale) -> dlogits (..., V)``. Typical shapes: (N, V) or (T, B, V).

    Numerically stable (max subtraction, log-sum-exp) and fused: no one-hot matrix and no
    log-softmax matrix are built; the only (N, V) buffer is the softmax itself, which a
    training-mode forward writes as the gradient already (``backward`` returns it, scaled
    when asked), into the logits' own memory with ``overwrite_logits=True``. The mask is
    boolean or real weights >= 0 (each position's loss is multiplied by its weight); masked
    positions (weight 0/False) contribute nothing to the loss or to ``n_tokens`` and get
    exactly zero gradient; with every position masked the loss is 0 and the gradient is zero
    (no 0/0). Every target must be a valid id, masked ones included.

    ``reduction="mean"`` divides the weighted sum by the sum of the weights (the number of
    unmasked tokens for a 0/1 mask), ``"sum"`` does not divide.

    Works on CuPy (GPU) logits too; targets and mask are then moved to the GPU.

    A layer without parameters: in training mode each forward keeps that gradient for its own
    backward (LIFO, see :class:`fastrnn.layers.Layer`); in eval mode nothing is kept, so
    scoring many batches holds no (N, V) buffers.
    """

    def __init__(self, reduction="mean"):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction
        self.n_tokens = 0

    @forward_method
    def forward(self, logits, targets, mask=None, overwrite_logits=False):
        """Return the loss as a Python float; ``self.n_tokens`` is the number of unmasked tokens
        (of this call). ``overwrite_logits=True``: the caller has no further use for
        ``logits``, whose memory may then hold the softmax (float32 NumPy logits, C-contiguous:
        one (N, V) buffer less at the step's peak)."""
        xp, device = array_module_of(logits), device_of(logits)
        logits = xp.asarray(logits)
        as_float_dtype(logits.dtype, "logits' dtype")
        if logits.ndim < 2:
            raise ValueError(f"logits must have shape (..., V) with at least 2 dims, got {logits.shape}")
        leading_shape, vocab_size = logits.shape[:-1], logits.shape[-1]
        targets = to_device(targets, device)
        if targets.shape != leading_shape:
            raise ValueError(
                f"targets must have shape {leading_shape} (logits without V), got {targets.shape}")
        targets = check_token_ids(targets, "targets", vocab_size).reshape(-1)
        weights = None if mask is None else self._mask_weights(to_device(mask, device), leading_shape,
                                                               logits.dtype)

        if weights is None:
            n_tokens = weight_sum = targets.size
        else:
            n_tokens = int(xp.count_nonzero(weights))
            weight_sum = float(weights.sum(dtype=np.float64))
        denominator = self._denominator(weight_sum)
        # In training the kernel writes the gradient of this loss (scale 1) in the pass that
        # computes the softmax: backward then has nothing left to do at scale 1 (a
        # word-level step's 700 x 10000 logits: its pass took 1.4 ms).
        grad_scale = None
        if self.training:
            grad_scale = xp.full(targets.size, 1.0 / denominator, dtype=logits.dtype) \
                if weights is None else weights * (1.0 / denominator)
        probs, token_loss = softmax_cross_entropy_rows(logits.reshape(-1, vocab_size),
                                                       targets, xp, grad_scale,
                                                       overwrite_logits)
        total = token_loss.sum() if weights is None else token_loss @ weights
        self.n_tokens = n_tokens
        self._save_for_backward((probs, logits.shape))
        return float(total) / denominator

    @backward_method
    def backward(self, scale=1.0):
        """d(scale * loss)/d logits for the most recent pending forward, shape of its logits:
        (softmax - onehot(targets)) * mask / sum(mask) * scale (without the division for "sum").

        That forward wrote the gradient at scale 1 into its softmax buffer, which this
        returns (multiplied by ``scale`` in place when it is not 1): each forward is
        backpropagated once.
        """
        grad, logits_shape = self._saved_for_backward()
        if scale * 1.0 != 1.0:   # a bad scale raises here, with the record intact
            grad *= scale
        return grad.reshape(logits_shape)

    def _denominator(self, weight_sum):
        # An all-masked batch (weight sum 0) has loss 0 and gradient 0 rather than 0/0.
        if self.reduction == "sum" or weight_sum == 0:
            return 1.0
        return float(weight_sum)

    @staticmethod
    def _mask_weights(mask, leading_shape, dtype):
        """mask (...) bool or real weights >= 0 -> flat weights in the logits dtype."""
        xp = array_module_of(mask)
        mask = xp.asarray(mask)
        if mask.shape != leading_shape:
            raise ValueError(f"mask must have shape {leading_shape} (logits without V), got {mask.shape}")
        if mask.dtype != bool:
            if mask.dtype.kind not in "iuf":
                raise TypeError(f"mask must be boolean or real weights, got dtype {mask.dtype}")
            if not (xp.isfinite(mask) & (mask >= 0)).all():
                raise ValueError("mask must be boolean or hold finite weights >= 0")
        return mask.reshape(-1).astype(dtype)
