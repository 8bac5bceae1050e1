"""The packed layout of a variable-length batch: where each real token goes.

A batch with lengths runs on the CPU's packed loops (``forward_loop_packed`` and friends in
``fastrnn/_cpu/recurrent.pyx``) so that its cost follows the real tokens instead of T * B.
The sequences are sorted by decreasing length (stable, so equal lengths keep their order)
and their real tokens laid out step by step, as in PyTorch's PackedSequence: packed row
``starts[s] + k`` is step s of the k-th longest sequence, and step s has ``counts[s]`` rows,
the sequences longer than s. Step s is time s, or time ``length - 1 - s`` in reverse.

Only host (NumPy) index arrays are made here; the driver gathers the layer's input into
this order and the kernels write the output back to time space through ``src``.
"""
import numpy as np


class Packing:
    """Index arrays of one packed batch (all int64, host):

    order   (B,)        the caller's batch index of each sorted sequence
    counts  (steps,)    rows of each packed step (non-increasing, counts[0] == B)
    src     (N,)        time-space row ``t * B + b`` of each packed row (N real tokens)
    prev_src (N - B,)   time-space row of the previous hidden state of packed rows B..N-1
                        (rows 0..B-1 are the first steps, whose previous state is h0)
    """

    __slots__ = ("order", "counts", "src", "prev_src")

    @property
    def rows(self):
        """N, the number of real tokens."""
        return self.src.shape[0]

    def __repr__(self):
        return f"Packing(B={self.order.shape[0]}, steps={self.counts.shape[0]}, rows={self.rows})"


def plan(lengths, B, reverse):
    """The :class:`Packing` of a batch of ``B`` sequences with validated ``lengths`` (int64
    (B,), values in [1, T]), walked from its last step to its first when ``reverse``."""
    order = np.argsort(-lengths, kind="stable")
    sorted_lengths = lengths[order]
    steps = int(sorted_lengths[0])
    # counts[s] = #{k : sorted_lengths[k] > s}: the sequences of length > s, summed from the
    # longest length down.
    per_length = np.bincount(sorted_lengths, minlength=steps + 1)
    counts = np.ascontiguousarray(np.cumsum(per_length[::-1])[::-1][1:steps + 1], dtype=np.int64)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rows = int(counts.sum())
    step = np.repeat(np.arange(steps, dtype=np.int64), counts)
    k = np.arange(rows, dtype=np.int64) - np.repeat(starts, counts)
    t = sorted_lengths[k] - 1 - step if reverse else step
    packing = Packing()
    packing.order = order.astype(np.int64)
    packing.counts = counts
    packing.src = np.ascontiguousarray(t * B + order[k], dtype=np.int64)
    # Packed row r >= B at step s pairs with row r - counts[s - 1] (the same sequence at s-1).
    prev_rows = np.arange(B, rows, dtype=np.int64) - np.repeat(counts[:-1], counts[1:])
    packing.prev_src = packing.src[prev_rows]
    return packing
