"""The softmax and per-token cross-entropy of the loss layer, fused where it can be.

float32 NumPy logits go to the compiled kernel (fastrnn/_cpu/loss.pyx: one read of the
logits, one write of the softmax, rows split among fastrnn's threads); other dtypes (float64,
for gradient checks) and device arrays take the array-module code below, which is exact to
its library's exp and log.
"""
import numpy as np

from . import threads
from ._cpu import loss as _loss


def softmax_cross_entropy_rows(logits, targets, xp=np, grad_scale=None, overwrite_logits=False):
    """``(probs (N, V), token_loss (N,))`` of logits (N, V) and valid integer targets (N,):
    probs = softmax(logits) along V, token_loss[r] = -log probs[r, targets[r]]. token_loss
    is float64 on the compiled path, else the logits' dtype.

    With ``grad_scale`` (N,), of the logits' dtype and module, the first array is the
    gradient instead: row r is (softmax - onehot(targets[r])) * grad_scale[r], written in the
    same pass on the compiled path (and to the same bits as the array-module code).
    ``overwrite_logits``: the first array may be ``logits`` itself, overwritten (the compiled
    path does so when ``logits`` is a writeable C-contiguous array), else it is new."""
    if type(logits) is np.ndarray and logits.dtype == np.float32:
        if overwrite_logits and logits.flags.c_contiguous and logits.flags.writeable:
            probs = logits
        else:
            logits = np.ascontiguousarray(logits)
            probs = np.empty(logits.shape, np.float32)
        token_loss = np.empty(logits.shape[0], np.float64)
        _loss.softmax_cross_entropy(logits, np.ascontiguousarray(targets, dtype=np.int64), probs,
                                    token_loss, threads.get_num_threads(),
                                    None if grad_scale is None
                                    else np.ascontiguousarray(grad_scale, dtype=np.float32))
        return probs, token_loss
    shifted = logits - logits.max(axis=-1).reshape(-1, 1)
    # Read the target logits before exp overwrites ``shifted`` in place.
    target_shifted = shifted[xp.arange(targets.size), targets]
    probs = xp.exp(shifted, out=shifted)
    sum_exp = probs.sum(axis=1)
    probs /= sum_exp[:, None]
    # -log softmax[target] = log(sum exp(shifted)) - shifted[target]
    token_loss = xp.log(sum_exp) - target_shifted
    if grad_scale is not None:
        probs[xp.arange(targets.size), targets] -= 1
        probs *= grad_scale[:, None]
    return probs, token_loss
