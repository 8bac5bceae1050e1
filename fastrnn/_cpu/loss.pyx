# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The fused softmax + cross-entropy of the loss layer for float32 NumPy arrays, rows split
among fastrnn's OpenMP threads (csrc/softmax.h says what is fused and how exact it is)."""
from cython.parallel cimport prange
from libc.stdint cimport int64_t

import numpy as np

from ._openmp cimport join_fork_guard
from ._parts cimport _element_threads

join_fork_guard()

cdef extern from "softmax.h" nogil:
    double fr_softmax_xent_row_f(int V, const float* x, int target, float* probs,
                                 const float* grad_scale)


def softmax_cross_entropy(const float[:, ::1] logits not None, const int64_t[::1] targets not None,
                          float[:, ::1] probs not None, double[::1] token_loss not None,
                          int num_threads=1, const float[::1] grad_scale=None):
    """probs (N, V) = softmax(logits (N, V)) along V; token_loss (N,) = -log probs[r,
    targets[r]] (float64). With grad_scale (N,), probs gets the loss gradient instead:
    row r is (softmax - onehot(targets[r])) * grad_scale[r]. targets must be valid ids (the
    caller checks them: an id outside [0, V) raises ValueError here before anything is
    written). probs may be logits itself (overwritten in place, row by row); otherwise
    probs and token_loss must share memory with no other argument."""
    cdef Py_ssize_t N = logits.shape[0], V = logits.shape[1], r
    if probs.shape[0] != N or probs.shape[1] != V:
        raise ValueError(f"probs must have shape ({N}, {V}), got ({probs.shape[0]}, "
                         f"{probs.shape[1]})")
    if targets.shape[0] != N or token_loss.shape[0] != N:
        raise ValueError(f"targets and token_loss must have {N} entries, got "
                         f"{targets.shape[0]} and {token_loss.shape[0]}")
    if grad_scale is not None and grad_scale.shape[0] != N:
        raise ValueError(f"grad_scale must have {N} entries, got {grad_scale.shape[0]}")
    if V < 1 or V > 2147483647:
        raise ValueError(f"the vocabulary size V must be in [1, 2^31), got {V}")
    logits_a, probs_a, loss_a = np.asarray(logits), np.asarray(probs), np.asarray(token_loss)
    # Both C-contiguous with the same shape: sharing the first element means the same rows.
    in_place = N > 0 and &probs[0, 0] == &logits[0, 0]
    targets_a = np.asarray(targets)
    pairs = [("token_loss", loss_a, "logits", logits_a), ("token_loss", loss_a, "probs", probs_a),
             ("token_loss", loss_a, "targets", targets_a), ("probs", probs_a, "targets", targets_a)]
    if not in_place:
        pairs.append(("probs", probs_a, "logits", logits_a))
    if grad_scale is not None:   # read like logits: only the outputs must stay apart from it
        scale_a = np.asarray(grad_scale)
        pairs += [("probs", probs_a, "grad_scale", scale_a),
                  ("token_loss", loss_a, "grad_scale", scale_a)]
    for name, a, other, b in pairs:
        if np.may_share_memory(a, b):
            raise ValueError(f"{name} must not share memory with {other}"
                             + (" (unless it is logits itself)" if name == "probs"
                                and other == "logits" else ""))
    for r in range(N):
        if targets[r] < 0 or targets[r] >= V:
            raise ValueError(f"targets[{r}] = {targets[r]} is not in [0, {V})")
    cdef int nt = _element_threads(N * V, num_threads)
    cdef const float* scales = NULL if grad_scale is None or N == 0 else &grad_scale[0]
    for r in prange(N, nogil=True, num_threads=nt, schedule="static"):
        token_loss[r] = fr_softmax_xent_row_f(<int>V, &logits[r, 0], <int>targets[r], &probs[r, 0],
                                              NULL if scales == NULL else scales + r)
