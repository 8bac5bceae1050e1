"""The small contract every fastrnn layer follows.

A layer owns ``params`` and ``grads``: dicts of numpy arrays with the same keys and shapes.
``backward`` returns the input gradient and *accumulates* into ``grads`` (like PyTorch), so
``zero_grad()`` must be called between steps.

Forward records and backward (a layer used several times before backward)
    Each ``forward`` in training mode pushes what its ``backward`` needs (inputs, dropout
    masks, softmax probabilities, recurrent workspaces) onto the layer's own stack, and each
    ``backward`` pops the most recent one (LIFO, the order of reverse-mode differentiation).
    So one layer may be applied several times before backpropagating, as in a model unrolled
    over time steps that shares its embedding, output and recurrent layers:
    ``lin.forward(x1); lin.forward(x2); lin.backward(d2); lin.backward(d1)`` accumulates
    exactly ``d1ᵀx1 + d2ᵀx2``. A backward with nothing pending raises
    :class:`NoPendingForwardError` (a RuntimeError); a backward that raises (e.g. on a badly
    shaped ``dy``) leaves its record pending. Records hold references to the forward's inputs,
    not copies (as the kernels' workspaces do): do not modify an input in place before its
    backward.

    Forwards in eval mode (``eval()``) record nothing, so a backward needs a training-mode
    forward. Why: evaluation and inference call forward many times and never backward; if
    those calls were recorded, every batch of ``LanguageModel.evaluate`` or of a user's own
    eval loop would stay in memory for good. Eval mode is fastrnn's "no grad" mode; to get
    gradients without dropout, use ``p=0`` (or ``dropout=0``) in training mode.
    A training-mode forward that will never be backpropagated (an aborted step, logits
    computed for logging) leaves its record pending until ``clear_pending()`` drops it.
    ``zero_grad()`` deliberately keeps pending records: ``forward; zero_grad; backward`` is
    a common order (fastrnn's Trainer uses it) and must keep working. ``num_pending`` says
    how many records wait.

Threads
    A layer object runs one forward or backward at a time (a per-layer lock: calls from
    several threads are serialised, never interleaved inside a kernel or an accumulation
    into ``grads``). Pending records belong to the thread that made them: while any are
    pending, a training-mode forward or a backward from another thread raises RuntimeError,
    because LIFO pairing across threads would backpropagate one thread's gradient through
    another thread's inputs. Separate layer objects in separate threads are independent.
    A tied ``Linear`` shares its weight owner's lock (both add into one gradient array). A
    child made with ``fork`` starts with fresh locks, so a lock held by another thread of
    the parent at the fork cannot hang it.

``device`` is "cpu" (numpy arrays) or "cuda" (CuPy arrays, ``pip install 'fastrnn[gpu]'``);
``to(device)`` moves every array in ``params`` and ``grads``.

A :class:`Module` is a layer made of named child layers (``LanguageModel`` is one): its
``params``/``grads`` are the children's arrays under prefixed names, and the modes, ``to`` and
the pending records reach every child.
"""
import functools
import os
import threading
import weakref

import numpy as np

from .._device import get_array_module, normalize_device, to_device
from .._engine.cpu import zero_arrays


# Every layer alive, so that a forked child can replace their locks (below).
_LIVE_LAYERS = weakref.WeakSet()


def _new_locks_after_fork():
    # A fork while another thread was inside a layer's forward or backward would leave that
    # layer's lock held forever in the child (only the forking thread survives a fork), and
    # the child would hang on its first call. The child starts with fresh locks; records that
    # thread left pending stay and are refused with the other-thread error (clear_pending()).
    for layer in list(_LIVE_LAYERS):
        layer._own_lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_locks_after_fork)


class NoPendingForwardError(RuntimeError, ValueError):
    """``backward`` with no pending training-mode forward. A RuntimeError like the other
    call-order errors; also a ValueError, which the recurrent layers raised for it before."""


def forward_method(forward):
    """Decorator for a layer's ``forward``: runs it holding the layer's lock, after checking
    (in training mode) that no other thread has records pending. The body keeps what its
    backward needs with ``self._save_for_backward(record)``."""
    @functools.wraps(forward)
    def locked_forward(self, *args, **kwargs):
        with self._lock:
            if self.training:
                self._check_thread("forward")
            return forward(self, *args, **kwargs)
    return locked_forward


def backward_method(backward):
    """Decorator for a layer's ``backward``: runs it holding the layer's lock, after checking
    that a record of this thread is pending. The body reads it with
    ``self._saved_for_backward()``; it is popped when the body returns (not when it raises,
    so a call with a bad ``dy`` can be retried)."""
    @functools.wraps(backward)
    def locked_backward(self, *args, **kwargs):
        with self._lock:
            self._saved_for_backward()   # a clear error before any work
            result = backward(self, *args, **kwargs)
            self._records.pop()
            if not self._records:
                self._records_thread = None
            return result
    return locked_backward


class Layer:
    def __init__(self):
        self.params = {}
        self.grads = {}
        self.training = True
        self.device = "cpu"
        self._init_records()

    def _init_records(self):
        self._own_lock = threading.RLock()
        self._records = []             # LIFO: one entry per training-mode forward not yet backpropagated
        self._records_thread = None    # the thread that made them (None when there are none)
        _LIVE_LAYERS.add(self)

    @property
    def _lock(self):
        """The lock that serialises this layer's forward and backward calls."""
        return self._own_lock

    # ---- forward records ------------------------------------------------------------------

    def _check_thread(self, action):
        owner = self._records_thread
        if self._records and owner is not threading.current_thread():
            raise RuntimeError(
                f"{type(self).__name__}.{action} called from thread {threading.current_thread().name!r} "
                f"while {len(self._records)} forward record(s) of thread {owner.name!r} are pending: "
                "one layer object cannot be trained from several threads at once (give each "
                "thread its own layer, or call clear_pending() to drop the other thread's records)")

    def _save_for_backward(self, record):
        """Push what the next backward needs (training mode only; call inside ``forward``)."""
        if not self.training:
            return
        self._records.append(record)
        self._records_thread = threading.current_thread()

    def _saved_for_backward(self):
        """The most recent pending record (call inside ``backward``); RuntimeError if none."""
        if not self._records:
            raise NoPendingForwardError(
                f"{type(self).__name__}.backward called before forward: no training-mode forward "
                "is pending (a backward without a preceding forward, or one more backward than "
                "forwards; forwards in eval mode record nothing)")
        self._check_thread("backward")
        return self._records[-1]

    @property
    def num_pending(self):
        """Number of training-mode forwards not yet backpropagated."""
        return len(self._records)

    def clear_pending(self):
        """Drop every pending forward record (e.g. after an aborted step); returns self."""
        with self._lock:
            self._records.clear()
            self._records_thread = None
        return self

    def __getstate__(self):
        # Copies and pickles carry the parameters, not the lock or the pending records (which
        # may hold compiled workspaces): a copy starts with nothing pending.
        state = self.__dict__.copy()
        for key in ("_own_lock", "_records", "_records_thread"):
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_records()

    # ---- device, modes, parameters --------------------------------------------------------

    @property
    def xp(self):
        """The array module of the layer's device: numpy, or cupy for "cuda"."""
        return get_array_module(self.device)

    def to(self, device):
        """Move every parameter and gradient to ``device`` ("cpu" or "cuda"); returns self.
        Arrays already there are kept as they are (no copy). Refused (RuntimeError) while
        forward records are pending: they hold arrays of the old device."""
        device = normalize_device(device)
        with self._lock:
            if self._records and device != self.device:
                raise RuntimeError(
                    f"{type(self).__name__}.to({device!r}) with {len(self._records)} forward "
                    "record(s) pending: backpropagate them or call clear_pending() first")
            get_array_module(device)   # a clear RuntimeError when CuPy or the GPU is missing
            for arrays in (self.params, self.grads):
                for key, value in arrays.items():
                    arrays[key] = to_device(value, device)
            self.device = device
        return self

    def zero_grad(self):
        """Zero ``grads`` in place (pending forward records are kept; see the module doc)."""
        zero_arrays(self.grads.values())

    def train(self, mode=True):
        """Training mode (``mode=True``: dropout active, forwards recorded for backward) or
        eval mode; returns self."""
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


class Module(Layer):
    """A layer made of named child layers, following the same contract.

    ``params``/``grads`` are one flat dict over the children, each key prefixed with the
    child's name (``"embedding.weight"``, ``"rnn.weight_ih_l0"``): the children's own arrays,
    so ``zero_grad``, ``state_dict``, ``load_state_dict`` and an optimizer built from
    ``params`` act on them directly. ``train``/``eval``, ``to``, ``num_pending`` and
    ``clear_pending`` reach every child. Children are kept in registration order, which is
    also the order ``to`` moves them in (register the owner of a shared weight first).
    """

    def __init__(self):
        super().__init__()
        self._children = {}

    def add_layer(self, name, layer):
        """Register ``layer`` as the child ``name`` (also set as an attribute); returns it."""
        if not isinstance(layer, Layer):
            raise TypeError(f"{name} must be a fastrnn Layer, got {type(layer).__name__}")
        self._children[name] = layer
        setattr(self, name, layer)
        self._collect_arrays()
        return layer

    def children(self):
        """The child layers, in registration order."""
        return tuple(self._children.values())

    def _collect_arrays(self):
        """(Re)build the flat ``params``/``grads`` dicts from the children's arrays."""
        self.params = {f"{n}.{k}": v for n, layer in self._children.items()
                       for k, v in layer.params.items()}
        self.grads = {f"{n}.{k}": v for n, layer in self._children.items()
                      for k, v in layer.grads.items()}

    def to(self, device):
        """Move every child to ``device``; returns self. ``params``/``grads`` then hold the
        new arrays: build an optimizer after the move. Refused (RuntimeError) while forwards
        are pending."""
        device = normalize_device(device)
        get_array_module(device)   # a clear RuntimeError before anything moves
        if device != self.device and self.num_pending:
            raise RuntimeError(f"{type(self).__name__}.to({device!r}) with forwards pending: "
                               "backpropagate them or call clear_pending() first")
        for layer in self.children():
            layer.to(device)
        self._collect_arrays()
        self.device = device
        return self

    def train(self, mode=True):
        """Training or eval mode for this module and every child; returns self."""
        super().train(mode)
        for layer in self.children():
            layer.train(mode)
        return self

    @property
    def num_pending(self):
        """Number of training-mode forwards not yet backpropagated (the most of any child)."""
        return max((layer.num_pending for layer in self.children()), default=0)

    def clear_pending(self):
        """Drop every pending forward record of every child; returns self."""
        for layer in self.children():
            layer.clear_pending()
        return self

    def num_params(self):
        """Number of parameter values (a tied weight counts once)."""
        return int(sum(p.size for p in self.params.values()))
