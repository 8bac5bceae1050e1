# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The fused softmax + cross-entropy of the loss layer for float32 NumPy arrays, rows split
among fastrnn's OpenMP threads (csrc/softmax.h says what is fused and how exact it is)."""
from cython.parallel cimport prange
from libc.stdint cimport int64_t

import numpy as np

from ._openmp cimport fr_team_threads, join_fork_guard
from ._spans cimport Span, bytes_span, spans_meet

join_fork_guard()

cdef enum:
    # Logits per thread below which another thread costs more than it saves. A softmax
    # element costs ~7 cycles (an exp, two passes), far more than an optimizer pass's
    # (_parts.MIN_PER_THREAD, 32 Ki): the kernel on 1 / 2 threads, 2 cores, float32:
    # 128 x 65 logits 22 / 18 us, 256 x 86 44 / 27 us, 512 x 86 (the fast.ai model's step)
    # 81 / 56 us, 2048 x 65 235 / 125 us.
    MIN_LOGITS_PER_THREAD = 4096

cdef extern from "softmax.h" nogil:
    double fr_softmax_xent_row_f(int V, const float* x, int target, float* probs,
                                 const float* grad_scale)


cdef int _apart(str name, const Span* a, str other, const Span* b) except -1:
    if spans_meet(a, b):
        raise ValueError(f"{name} must not share memory with {other}")
    return 0


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
    # Both C-contiguous with the same shape: sharing the first element means the same rows.
    in_place = N > 0 and &probs[0, 0] == &logits[0, 0]
    # Byte ranges that meet (NumPy's may_share_memory), compared in C: 4-6 NumPy calls cost
    # about as much as the fast.ai model's softmax itself.
    cdef Span s_logits = bytes_span(&logits[0, 0] if N else NULL, N * V * sizeof(float), 0)
    cdef Span s_probs = bytes_span(&probs[0, 0] if N else NULL, N * V * sizeof(float), 1)
    cdef Span s_loss = bytes_span(&token_loss[0] if N else NULL, N * sizeof(double), 1)
    cdef Span s_targets = bytes_span(&targets[0] if N else NULL, N * sizeof(int64_t), 0)
    cdef Span s_scale
    _apart("token_loss", &s_loss, "logits", &s_logits)
    _apart("token_loss", &s_loss, "probs", &s_probs)
    _apart("token_loss", &s_loss, "targets", &s_targets)
    _apart("probs", &s_probs, "targets", &s_targets)
    if not in_place:
        _apart("probs", &s_probs, "logits (unless it is logits itself)", &s_logits)
    if grad_scale is not None:   # read like logits: only the outputs must stay apart from it
        s_scale = bytes_span(&grad_scale[0] if N else NULL, N * sizeof(float), 0)
        _apart("probs", &s_probs, "grad_scale", &s_scale)
        _apart("token_loss", &s_loss, "grad_scale", &s_scale)
    for r in range(N):
        if targets[r] < 0 or targets[r] >= V:
            raise ValueError(f"targets[{r}] = {targets[r]} is not in [0, {V})")
    cdef int nt = fr_team_threads(min(num_threads, max(1, N * V // MIN_LOGITS_PER_THREAD)))
    cdef const float* scales = NULL if grad_scale is None or N == 0 else &grad_scale[0]
    for r in prange(N, nogil=True, num_threads=nt, schedule="static"):
        token_loss[r] = fr_softmax_xent_row_f(<int>V, &logits[r, 0], <int>targets[r], &probs[r, 0],
                                              NULL if scales == NULL else scales + r)
