"""Data-parallel training of a :class:`~fastrnn.LanguageModel` over MPI (mpi4py).

Every rank (one process each, started by ``mpiexec``) holds the whole model, the whole corpus
and the same batcher, so each builds the same global batch and takes its share of it: its
columns of the ``B`` streams (stream mode) or of the batch's sentences (sentence mode). Each
rank backpropagates its share's loss weighted by its share of the global batch's tokens
(``n_rank / n_batch`` for the mean loss, ``n_rank`` for the summed one), so that the *sum*
over ranks is the gradient one process computes on the whole batch. That sum is one in-place
``Allreduce`` on one flat, contiguous buffer (all the gradients packed in a fixed order, plus
one slot for the weighted loss); then every rank clips with the global norm and applies the
same update, so the parameters stay identical (up to the order of the floating-point sums:
within 1e-10 of one process in float64).

Dropout is one process's too: under ``model.batch_part`` every rank's dropout layers draw the
masks of the whole global batch from their generators (in the same state on every rank, as
one process's) and apply the rank's share of them (a rank with an empty share draws them
and applies none). The generators thus move exactly as one process's, on every rank, so a
checkpoint (rank 0's) resumes on any number of ranks. Drawing the whole batch's random
numbers on each rank costs little beside the step (T x B x width numbers per dropout layer,
against the matrix products).

Rank 0 alone writes checkpoints, logs and the progress bar. Validation is split across the
ranks and its (loss sum, token count) pairs reduced, so it equals one process's. The training
clock is rank 0's, broadcast after each step, so every rank takes the same stopping decision.
An exception on any rank prints one line naming the rank and ends every rank with
``MPI_Abort``: a rank that simply returned would leave the others waiting in a collective.

mpi4py is imported only when a distributed trainer is built (``import fastrnn`` never
imports it); without it, :class:`MPIUnavailableError` says what to install.
"""
import os
import sys
import zlib

import numpy as np

BACKENDS = ("mpi",)
INSTALL_HINT = 'pip install "fastrnn[mpi]" (mpi4py and an MPI library such as the mpich wheel)'


class MPIUnavailableError(ImportError):
    """mpi4py (or the MPI library under it) cannot be imported."""


def import_mpi():
    """The ``mpi4py.MPI`` module (initialising MPI), or MPIUnavailableError saying what to
    install."""
    try:
        from mpi4py import MPI
    except ImportError as exc:   # no mpi4py, or no libmpi under it
        raise MPIUnavailableError(f"distributed training needs mpi4py and an MPI library: "
                                  f"{INSTALL_HINT}; importing it failed: {exc}") from None
    return MPI


def share(n, rank, size):
    """This rank's slice ``[lo, hi)`` of ``n`` items cut into ``size`` ordered parts whose
    sizes differ by at most one."""
    return n * rank // size, n * (rank + 1) // size


class DataParallel:
    """The MPI side of a data-parallel :class:`~fastrnn.lm.train.Trainer` (built by it when
    ``distributed="mpi"``; every rank must build its Trainer with the same arguments).

    Args:
        trainer: the Trainer, fully built (mode, batcher, model, reduction set).
        backend: "mpi" (MPI_COMM_WORLD through mpi4py).
    """

    def __init__(self, trainer, backend="mpi"):
        if backend not in BACKENDS:
            raise ValueError(f"distributed must be one of {BACKENDS} or None, got {backend!r}")
        model = trainer.model
        if model.device != "cpu":
            raise ValueError(f"distributed training runs models on the CPU, this one is on "
                             f"{model.device!r}")
        MPI = import_mpi()
        self._MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.mode = trainer.mode
        self.model = model
        if self.mode == "stream" and trainer.batch_size < self.size:
            raise ValueError(f"batch_size ({trainer.batch_size}) must be at least the number of "
                             f"ranks ({self.size}): each rank takes a share of the streams")
        self.stream_share = share(trainer.batch_size, self.rank, self.size)
        # The gradients in a fixed order, packed into one buffer (+1 slot: the weighted loss).
        self._names = list(model.grads)
        self._sizes = [model.grads[k].size for k in self._names]
        self.buffer = np.zeros(sum(self._sizes) + 1, dtype=model.dtype)
        self._check_same_run(trainer)

    @property
    def is_root(self):
        """True on rank 0, the one that writes checkpoints, logs and the progress bar."""
        return self.rank == 0

    def _check_same_run(self, trainer):
        """Every rank must train the same model on the same data with the same settings:
        compare fingerprints (all ranks raise the same ValueError, so none is left waiting)."""
        data = trainer.batcher._streams if self.mode == "stream" else trainer.batcher._sentences
        crc = 0
        for part in ([data] if self.mode == "stream" else data):
            crc = zlib.crc32(np.ascontiguousarray(part).view(np.uint8), crc)
        for name in sorted(self.model.params):
            crc = zlib.crc32(np.ascontiguousarray(self.model.params[name]).view(np.uint8), crc)
        mine = (self.mode, trainer.batch_size, trainer.seq_len, len(trainer.batcher),
                trainer.reduction, self._names, crc)
        every = self.comm.allgather(mine)
        differing = [r for r, theirs in enumerate(every) if theirs != every[0]]
        if differing:
            raise ValueError(f"ranks {differing} train a different model, data or batch "
                             f"settings than rank 0: every rank must build the same Trainer")

    # ---- one step -------------------------------------------------------------------------

    def local_batch(self, x, y, lengths):
        """This rank's share of a global (T, B) batch: ``(x, y, lengths, n_batch, part)`` with
        ``n_batch`` the global batch's token count and ``part`` = (T, B, first column), for
        ``model.batch_part``: the dropout layers draw the global batch's masks and apply this
        share's. x is None when the share is empty (a last sentence batch with fewer
        sentences than ranks): the dropout generators are then moved past the global batch's
        masks here, so every rank's stay in step with one process's."""
        steps, batch = x.shape
        if lengths is None:   # stream mode: (T, B) windows, its columns of the streams
            lo, hi = self.stream_share
            return x[:, lo:hi], y[:, lo:hi], None, int(x.size), (steps, batch, lo)
        n_batch = int(lengths.sum())
        lo, hi = share(batch, self.rank, self.size)
        if hi == lo:
            self.model.skip_dropout_masks(steps, batch)
            return None, None, None, n_batch, None
        lengths = lengths[lo:hi]
        local_steps = int(lengths.max())   # no steps of padding only
        return (x[:local_steps, lo:hi], y[:local_steps, lo:hi], lengths, n_batch,
                (steps, batch, lo))

    def allreduce_grads(self, weighted_loss):
        """Sum the model's gradients and ``weighted_loss`` over the ranks, in place: pack, one
        Allreduce on the flat buffer, unpack. Returns the summed loss."""
        buffer, grads = self.buffer, self.model.grads
        offset = 0
        for name, size in zip(self._names, self._sizes):
            buffer[offset:offset + size] = grads[name].reshape(-1)
            offset += size
        buffer[-1] = weighted_loss
        self.comm.Allreduce(self._MPI.IN_PLACE, buffer, op=self._MPI.SUM)
        offset = 0
        for name, size in zip(self._names, self._sizes):
            grads[name].reshape(-1)[...] = buffer[offset:offset + size]
            offset += size
        return float(buffer[-1])

    def root_seconds(self, seconds):
        """Rank 0's training clock, on every rank (so all stop on the same step)."""
        value = np.array([seconds], dtype=np.float64)
        self.comm.Bcast(value, root=0)
        return float(value[0])

    # ---- validation -----------------------------------------------------------------------

    def evaluate(self, val_ids, batch_size):
        """``model.evaluate(val_ids, batch_size)`` split across the ranks: each scores its
        share and the (loss sum, token count) pairs are summed, so every rank gets the
        token-weighted mean over all of the data."""
        model = self.model
        total = count = 0.0
        if isinstance(val_ids, list):   # sentences (checked: all of >= 2 ids)
            # Sorted by length and dealt out in turn, so the ranks' shares cost about the same.
            ordered = sorted(val_ids, key=len)[self.rank::self.size]
            if ordered:
                count = float(sum(len(s) - 1 for s in ordered))
                total = model.evaluate(ordered, batch_size=batch_size) * count
        else:
            # model.evaluate's layout: B parallel parts of the stream, state carried across
            # windows of seq_len steps; this rank scores its columns.
            seq_len = 256
            parts = max(1, min(batch_size, (val_ids.size - 1) // 2))
            length = val_ids.size // parts
            lo, hi = share(parts, self.rank, self.size)
            streams = val_ids[:length * parts].reshape(parts, length).T[:, lo:hi]

            def windows():
                for start in range(0, length - 1, seq_len):
                    stop = min(start + seq_len, length - 1)
                    yield streams[start:stop], streams[start + 1:stop + 1], None

            if hi > lo:
                count = float((length - 1) * (hi - lo))
                total = model._mean_loss(windows(), carry_state=True) * count
        sums = np.array([total, count], dtype=np.float64)
        self.comm.Allreduce(self._MPI.IN_PLACE, sums, op=self._MPI.SUM)
        return float(sums[0] / sums[1])

    # ---- the carried state (stream mode) -------------------------------------------------

    def gather_carry(self, carry):
        """The whole batch's carried state from every rank's share (host arrays: h, or
        [h, c], each an (L, b, H) array or a list over layers of (1, b, H_l) arrays), on every
        rank: checkpoints hold the one-process layout."""
        if carry is None:
            return None
        return _concatenate_columns(self.comm.allgather(carry))

    def local_carry(self, carry):
        """This rank's columns of a whole batch's carried state."""
        if carry is None:
            return None
        lo, hi = self.stream_share
        return _map_arrays(carry, lambda a: np.ascontiguousarray(a[:, lo:hi]))

    # ---- failing together -----------------------------------------------------------------

    def fail(self, exc):
        """End every rank after ``exc`` on this one: one line on stderr, then MPI_Abort (the
        other ranks would otherwise wait forever in their next collective). With one rank,
        returns (the caller re-raises)."""
        abort(self.comm, exc)


def _concatenate_columns(parts):
    """One state from the ranks' shares (same nesting, arrays with the batch on axis 1)."""
    first = parts[0]
    if isinstance(first, (tuple, list)):
        return type(first)(_concatenate_columns([part[i] for part in parts])
                           for i in range(len(first)))
    return np.concatenate(parts, axis=1)


def _map_arrays(state, fn):
    """``state`` (an array or nested tuples/lists of arrays) with ``fn`` applied to each array,
    the nesting and its sequence types kept."""
    if isinstance(state, (tuple, list)):
        return type(state)(_map_arrays(part, fn) for part in state)
    return fn(state)


def describe(exc):
    """One line for an exception: its message (a KeyError's without the quotes)."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
    return f"{type(exc).__name__}: {message}"


def abort(comm, exc, code=1):
    """Print which rank failed and why, then ``comm.Abort(code)``; nothing with one rank."""
    if comm.Get_size() == 1:
        return
    if os.environ.get("FASTRNN_DEBUG") == "1":
        import traceback
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    print(f"fastrnn: error on rank {comm.Get_rank()} of {comm.Get_size()}: {describe(exc)} "
          f"(ending all ranks)", file=sys.stderr, flush=True)
    comm.Abort(code)
    # MPICH's MPI_Abort can return before the launcher kills this process: go no further.
    os._exit(code)


def run_command(command, args, user_errors=()):
    """Run the CLI ``command(args)`` on every rank of ``mpiexec``: only rank 0 prints to
    stdout, and an exception on any rank ends them all (exit code 2 for ``user_errors``,
    1 otherwise). Without mpi4py: one line saying what to install, exit code 2."""
    try:
        MPI = import_mpi()
    except MPIUnavailableError as exc:
        print(f"fastrnn: error: --distributed: {exc}", file=sys.stderr)
        return 2
    comm = MPI.COMM_WORLD
    if comm.Get_rank() != 0:
        sys.stdout = open(os.devnull, "w")
    try:
        return command(args)
    except BaseException as exc:
        abort(comm, exc, 2 if isinstance(exc, user_errors) else 1)
        raise   # one rank: the command's usual error handling
