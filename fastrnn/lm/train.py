"""Training loop for :class:`fastrnn.LanguageModel`: truncated BPTT, validation, checkpoints.

Two ways to batch a corpus:

* stream (``train_data`` is a 1-D id array): the batch is ``batch_size`` parallel streams of
  the corpus; the recurrent state is carried from one window of ``seq_len`` steps to the next
  and cut for the gradient (stateful truncated BPTT). The state is reset at each epoch.
* sentences (``train_data`` is a list of 1-D id arrays): padded batches of whole sentences
  with their lengths, each starting from a zero state; padding costs no loss or gradient.
  ``bptt_truncate=K`` runs the batch's time axis in consecutive windows of K steps, carrying
  the state forward and cutting the gradient between windows (see :meth:`Trainer.train_step`).

Everything that decides the next step (parameters, optimizer buffers, schedule, batch
position, dropout generators, the carried state) is saved in checkpoints, so a resumed run
produces bit-for-bit the same parameters as one that was never interrupted.

A model on the GPU (``LanguageModel(..., device="cuda")``, moved before the Trainer is built)
trains there: batches are cut on the host and copied over by the model, the carried state
stays on the device, and checkpoints hold host copies of it and of the optimizer buffers,
restored to the model's device on resume (so a checkpoint loads on either device).
"""
import collections
import copy
import inspect
import math
import time

import numpy as np

from .. import optim
from .checkpoint import CheckpointError
from .._device import to_device
from .._validation import check_int, check_token_ids
from .model import LOSS_ON, LanguageModel, last_token_mask
from ..threads import blas_single_threaded
from .text.corpus import SentenceBatcher, StreamBatcher

OPTIMIZERS = optim.OPTIMIZERS   # the Trainer's optimizer names: fastrnn.optim's table
SCHEDULES = (None, "plateau", "step")
CLIP_MODES = optim.CLIP_MODES
REDUCTIONS = ("mean", "sum")   # the loss layer's (fastrnn.layers.loss.REDUCTIONS)


class Trainer:
    """Fits a :class:`LanguageModel`.

    After each step ``trainer.last_loss`` holds that step's mean loss (what
    :meth:`train_step` returned; None before the first step and after a resume), e.g. for a
    ``callback`` that prints or stores it.

    Args:
        model: the LanguageModel to train (updated in place), on its final device: the
            optimizer holds its parameter arrays.
        train_data: 1-D int ids (stream mode) or a list of 1-D id arrays (sentence mode).
        val_ids: validation data scored by ``model.evaluate`` (nats per token), or None: a
            1-D id stream (scored as parallel streams with carried state), or a list of 1-D
            id arrays (each sentence scored alone from a zero state, ``eval_batch_size``
            sentences per padded batch, as sentence-mode training sees them). Checked here,
            before any training.
        batch_size, seq_len: B streams x T steps per window (stream mode); sentence mode uses
            ``batch_size`` sentences per batch.
        optimizer: one of ``OPTIMIZERS``; ``lr``, ``weight_decay`` and ``momentum`` (SGD,
            RMSprop) go to it, and so does ``optimizer_options``, a dict of its other keyword
            arguments (e.g. ``{"rho": 0.95, "eps": 1e-6}`` for Adadelta, ``{"betas": (0.9,
            0.98)}`` for Adam, ``{"nesterov": True}`` for SGD).
        clip: the clipping limit, or None. ``clip_mode`` says what it limits: "norm" (default)
            the global L2 norm of all gradients; "param_norm" each parameter's gradient norm
            on its own (theano_lstm's ``max_norm``); "value" each gradient element, clamped
            to [-clip, clip]. Frozen parameters are left out.
        reduction: "mean" (default) trains on the mean loss per token; "sum" on the summed
            loss of the batch (gradients ``n_tokens`` times larger). ``train_step`` and the
            history report the mean either way.
        shuffle: sentence mode only: reshuffle the sentences every epoch (default) or keep
            their order.
        loss_on: "all" (default): every predicted token counts. "last" (sentence mode only):
            sequence-to-one training, as Keras's and TFLearn's models without
            ``return_sequences``: each sentence's loss is that of its last predicted token
            (its last id given the ones before it) and nothing else; the step's loss is the
            mean of those over the batch's sentences (``reduction="mean"``) or their sum
            ("sum"). Validation on sentences then uses the same rule
            (``model.evaluate(val_ids, loss_on="last")``: nats per sentence), and a stream of
            ``val_ids`` is refused. Works with ``bptt_truncate`` (the last token's gradient
            flows back to the start of its window); not with ``distributed``.
        bptt_truncate: sentence mode only: None (default: backpropagate through whole
            sentences) or K >= 1: truncated BPTT in consecutive windows of K steps (chunked
            form; see :meth:`train_step`). Stream mode refuses it: there ``seq_len`` is the
            truncation length.
        callback: optional ``callback(step, trainer)`` called after every training step (and
            its validation and checkpoint), e.g. to sample, print or change
            ``trainer.optimizer.lr``. To train further after ``fit`` returns, raise
            ``trainer.max_steps`` (or ``max_epochs``/``time_limit``) and call ``fit`` again.
        schedule: None, "plateau" (multiply lr by ``lr_decay`` when validation loss does not
            improve) or "step" (multiply by ``lr_decay`` every ``lr_step_epochs`` epochs).
        eval_every: validate every this many steps (default: once per epoch) and at the end.
        patience: stop after this many validations without a new best (early stopping).
        max_steps, max_epochs, time_limit (seconds of training): whichever comes first ends
            ``fit``; at least one must be given.
        checkpoint_path, checkpoint_every: save model + trainer state every this many steps
            and at the end (atomically); resume with :meth:`load_checkpoint`.
        progress: show a tqdm progress bar with loss and tokens/s.
        log: optional callable receiving each validation record (a dict).
        seed: seeds the sentence shuffling.
        distributed: None (one process) or "mpi": data-parallel over the ranks of ``mpiexec``
            (:mod:`fastrnn.lm.distributed`, needs mpi4py). Every rank builds the same Trainer;
            ``batch_size`` is the global batch, each rank computing its share; the result is
            one process's (float64: within 1e-10), dropout included (each rank applies its
            share of one process's masks). Rank 0 alone logs, shows progress and
            writes checkpoints (``save_checkpoint`` and ``state_dict`` are then collective:
            call them on every rank); ``callback`` runs on every rank.
    """

    def __init__(self, model, train_data, val_ids=None, *, batch_size=32, seq_len=64,
                 optimizer="adam", lr=2e-3, weight_decay=0.0, momentum=0.0,
                 optimizer_options=None, clip=5.0, clip_mode="norm", reduction="mean",
                 shuffle=True, loss_on="all", bptt_truncate=None, callback=None,
                 schedule=None, lr_decay=0.5, lr_step_epochs=1, eval_every=None,
                 eval_batch_size=16, patience=None, max_steps=None, max_epochs=None,
                 time_limit=None, checkpoint_path=None, checkpoint_every=None, progress=True,
                 log=None, seed=0, distributed=None):
        if not isinstance(model, LanguageModel):
            raise TypeError(f"model must be a LanguageModel, got {type(model).__name__}")
        self.model = model
        self.batch_size = check_int(batch_size, "batch_size", 1)
        self.seq_len = check_int(seq_len, "seq_len", 1)
        if isinstance(train_data, (list, tuple)):
            self.mode = "sentences"
            eos = 0 if model.vocab is None or model.vocab.eos is None else model.vocab.eos_id
            self.batcher = SentenceBatcher(list(train_data), self.batch_size, shuffle=shuffle,
                                           seed=seed, pad_id=eos)
        else:
            self.mode = "stream"
            self.batcher = StreamBatcher(train_data, self.batch_size, self.seq_len)
        self.bptt_truncate = None if bptt_truncate is None else \
            check_int(bptt_truncate, "bptt_truncate", 1)
        if self.bptt_truncate is not None and self.mode == "stream":
            raise ValueError("bptt_truncate is for sentence mode (train_data a list of "
                             "sentences); in stream mode seq_len is the truncation length: "
                             "set seq_len instead")
        if loss_on not in LOSS_ON:
            raise ValueError(f"loss_on must be one of {LOSS_ON}, got {loss_on!r}")
        if loss_on == "last" and self.mode == "stream":
            raise ValueError("loss_on='last' is for sentence mode (train_data a list of "
                             "sentences, the loss on each one's last token); a stream has no "
                             "last token per sentence")
        if loss_on == "last" and distributed is not None:
            raise ValueError("loss_on='last' is not supported with distributed training yet")
        self.loss_on = loss_on
        if loss_on == "last" and val_ids is not None and not isinstance(val_ids, (list, tuple)):
            raise ValueError("val_ids must be a list of sentences with loss_on='last' (each "
                             "scored on its last token), got a stream")
        self.val_ids = self._check_val_ids(val_ids)
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
        self.optimizer = self._make_optimizer(optimizer, lr, weight_decay, momentum,
                                              optimizer_options)
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        self.schedule_name = schedule
        try:
            if schedule == "plateau":
                self.schedule = optim.ReduceOnPlateau(self.optimizer, factor=lr_decay)
            elif schedule == "step":
                self.schedule = optim.StepLR(self.optimizer, lr_step_epochs, gamma=lr_decay)
            else:
                self.schedule = None
        except (TypeError, ValueError) as exc:   # the schedules name their own arguments
            name = "lr_step_epochs" if str(exc).startswith("step_size") else "lr_decay"
            raise type(exc)(f"{name}: {exc}") from None
        self.clip = None if clip is None else float(clip)
        if self.clip is not None and not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip must be a finite number > 0 or None, got {clip!r}")
        if clip_mode not in CLIP_MODES:
            raise ValueError(f"clip_mode must be one of {CLIP_MODES}, got {clip_mode!r}")
        self.clip_mode = clip_mode
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable(step, trainer), got {type(callback).__name__}")
        self.callback = callback
        self.eval_every = len(self.batcher) if eval_every is None else check_int(eval_every, "eval_every", 1)
        self.eval_batch_size = check_int(eval_batch_size, "eval_batch_size", 1)
        self.patience = None if patience is None else check_int(patience, "patience", 1)
        self.max_steps = None if max_steps is None else check_int(max_steps, "max_steps", 1)
        self.max_epochs = None if max_epochs is None else check_int(max_epochs, "max_epochs", 1)
        self.time_limit = None if time_limit is None else float(time_limit)
        if self.max_steps is None and self.max_epochs is None and self.time_limit is None:
            raise ValueError("give at least one of max_steps, max_epochs or time_limit")
        if self.time_limit is not None and not self.time_limit > 0:
            raise ValueError(f"time_limit must be > 0 seconds, got {time_limit!r}")
        self.checkpoint_path = checkpoint_path
        self.checkpoint_every = None if checkpoint_every is None else \
            check_int(checkpoint_every, "checkpoint_every", 1)
        self.progress, self.log = bool(progress), log
        self.settings = {}   # free-form, JSON-serialisable; saved with checkpoints (the CLI's options)
        # Progress of the run: all saved in checkpoints.
        self.step = 0
        self.tokens = 0
        self.train_seconds = 0.0
        self.carry = None
        self.history = []
        self.best_val = math.inf
        self.evals_without_improvement = 0
        self.stopped_early = False
        self.last_loss = None   # the latest step's mean loss (not saved: not needed to resume)
        self.distributed = None
        if distributed is not None:   # imports mpi4py only here
            if self.bptt_truncate is not None and model.dropout > 0:
                # A rank's share of a window is not a slice of the window's batch once
                # sentences end (its rows drop out), so its dropout masks could not be one
                # process's.
                raise ValueError("distributed training with bptt_truncate needs dropout=0: "
                                 "dropout masks of truncated windows cannot be split exactly "
                                 "across ranks")
            from .distributed import DataParallel
            self.distributed = DataParallel(self, distributed)

    def _check_val_ids(self, val_ids):
        """Host copies of the validation data: None, a list of sentences or a 1-D stream."""
        if val_ids is None:
            return None
        if isinstance(val_ids, (list, tuple)):
            return self.model._check_sentences(val_ids, "val_ids")
        val_ids = to_device(check_token_ids(val_ids, "val_ids", self.model.vocab_size), "cpu")
        if val_ids.ndim != 1 or val_ids.size < 2:
            raise ValueError("val_ids must be a 1-D stream of at least 2 tokens or a list of "
                             f"1-D id arrays, got shape {val_ids.shape}")
        return val_ids

    def _make_optimizer(self, name, lr, weight_decay, momentum, options):
        kwargs = {"lr": lr, "weight_decay": weight_decay}
        if name in ("sgd", "rmsprop"):
            kwargs["momentum"] = momentum
        options = {} if options is None else options
        if not isinstance(options, dict):
            raise TypeError(f"optimizer_options must be a dict, got {type(options).__name__}")
        reserved = sorted(set(options) & {"params", "grads", "frozen"})
        if reserved:
            raise ValueError(f"optimizer_options may not set {reserved}")
        kwargs.update(options)   # an option overrides lr/weight_decay/momentum too
        try:
            return OPTIMIZERS[name](self.model.params, self.model.grads, frozen=self.model.frozen,
                                    **kwargs)
        except TypeError as exc:
            if "unexpected keyword" not in str(exc):
                raise
            accepted = [p for p in inspect.signature(OPTIMIZERS[name]).parameters
                        if p not in ("params", "grads", "frozen")]
            raise ValueError(f"optimizer_options {sorted(options)}: {name} takes {accepted}") from None

    # ---- one step -------------------------------------------------------------------------

    def train_step(self, batch):
        """Forward, backward, clip and update on one batch; returns the mean loss (nats).

        With ``bptt_truncate=K`` and a sentence batch of more than K steps, the batch's
        padded time axis is cut into consecutive windows ``[0, K), [K, 2K), ...``. Each
        window runs forward from the previous window's final state (without dropout the
        forward values and the loss are the untruncated ones, up to rounding; dropout draws
        its masks window by window) and is backpropagated at once, treating that incoming
        state as a constant (detached): the gradient of a token's loss flows back to the
        start of its window only, i.e. ``t mod K + 1`` steps for step ``t`` (from 0).
        The windows' gradients add up to the gradient of the batch's loss (mean over all of
        the batch's tokens, or their sum) with the state cut every K steps; then it is
        clipped once and the optimizer makes one update. Sentences that have ended drop out
        of the later windows. (003's numpy ``bptt_truncate=K`` instead lets every output's
        gradient flow back K + 1 steps, a sliding window that costs K + 1 backward steps per
        output; the chunked form costs one backward pass, like untruncated training.)
        """
        model = self.model
        x, y, lengths = batch if self.mode == "sentences" else (*batch, None)
        mask = None if self.loss_on == "all" else last_token_mask(lengths, x.shape[0])
        n_batch = None   # tokens in the whole batch, of which this process has n_tokens
        part = None   # where this process's share lies in the whole batch (for dropout)
        if self.distributed is not None:   # this rank's share of the global batch
            x, y, lengths, n_batch, part = self.distributed.local_batch(x, y, lengths)
        # BLAS stays on one thread for the whole step: fastrnn's kernels bring their own
        # threads, and idle BLAS workers would spin on the same cores (see fastrnn/_matmul.py).
        with blas_single_threaded():
            model.zero_grad()
            loss, state, n_tokens = 0.0, None, 0
            if x is not None and self.bptt_truncate is not None \
                    and x.shape[0] > self.bptt_truncate:
                # (distributed training refuses dropout with bptt_truncate: see __init__)
                n_tokens = int(np.sum(lengths))
                n_batch = n_tokens if n_batch is None else n_batch
                if self.loss_on == "last":
                    n_tokens = n_batch = int(np.count_nonzero(lengths))
                loss = self._truncated_backward(x, y, lengths, n_batch, mask)
            elif x is not None:   # None: an empty share of a short last batch
                with model.batch_part(part):   # part: this share of the whole batch's masks
                    loss, state = model.forward(x, y, self.carry, lengths, mask)
                n_tokens = int(model.loss.n_tokens)
                n_batch = n_tokens if n_batch is None else n_batch
                try:
                    # The summed loss is n_tokens times the mean (0/1 masks); a share of a
                    # mean is weighted by its share of the batch's tokens.
                    model.backward(n_tokens / n_batch if self.reduction == "mean"
                                   else float(n_tokens))
                except BaseException:
                    # Interrupted (Ctrl-C) or failed between forward and backward: drop the
                    # forward's records so that they neither hold memory nor pair with a
                    # later step's backward.
                    model.clear_pending()
                    raise
            if self.distributed is not None:   # the sums over the ranks: the whole batch's
                loss = self.distributed.allreduce_grads(loss * n_tokens) / n_batch
            if self.clip is not None:
                self._clip({k: g for k, g in model.grads.items() if k not in model.frozen})
            self.optimizer.step()
        self.carry = state if self.mode == "stream" else None
        self.step += 1
        # Tokens read (with loss_on="last" more than the n_batch counted in the loss).
        self.tokens += n_batch if mask is None else int(np.sum(lengths))
        self.last_loss = loss
        return loss

    def _truncated_backward(self, x, y, lengths, n_batch, mask=None):
        """Gradients of one sentence batch ``x, y (T, B), lengths (B,)`` by truncated BPTT in
        windows of ``bptt_truncate`` steps, accumulated into the zeroed ``model.grads``
        (see :meth:`train_step`); ``n_batch``: the tokens of the whole batch (more than these
        when this is one rank's share), which a mean loss is divided by; ``mask``: None or
        the (T, B) 0/1 loss mask (``loss_on="last"``), cut into the same windows. Returns
        the mean loss over these sentences' counted tokens."""
        model, window = self.model, self.bptt_truncate
        lengths = np.asarray(lengths, dtype=np.int64)
        rows = np.arange(x.shape[1])   # the batch's sentences still running in this window
        total, counted, state = 0.0, 0, None
        for start in range(0, x.shape[0], window):
            running = lengths[rows] > start
            if not running.any():
                break
            if not running.all():   # drop the ended sentences' rows from the carried state
                keep = to_device(np.flatnonzero(running), model.device)
                state = None if state is None else \
                    (tuple(s[:, keep] for s in state) if isinstance(state, tuple) else state[:, keep])
                rows = rows[running]
            stop = min(start + window, x.shape[0])
            window_lengths = np.minimum(lengths[rows] - start, stop - start)
            loss, state = model.forward(x[start:stop, rows], y[start:stop, rows], state,
                                        window_lengths,
                                        None if mask is None else mask[start:stop, rows])
            n_tokens = int(model.loss.n_tokens)
            try:
                # This window's share of the batch's mean (or sum): its mean loss times
                # n_tokens / n_batch (or n_tokens). The state it started from is a constant.
                model.backward(n_tokens / n_batch if self.reduction == "mean" else float(n_tokens))
            except BaseException:
                model.clear_pending()
                raise
            total += loss * n_tokens
            counted += n_tokens
        return total / counted

    def _clip(self, grads):
        if self.clip_mode == "norm":
            optim.clip_grad_norm(grads, self.clip)
        elif self.clip_mode == "param_norm":
            for grad in grads.values():
                optim.clip_grad_norm([grad], self.clip)
        else:
            optim.clip_grad_value(grads, self.clip)

    # ---- the loop -------------------------------------------------------------------------

    def fit(self):
        """Train until a stopping condition; returns ``history`` (list of validation records)."""
        from tqdm.auto import tqdm

        root = self.distributed is None or self.distributed.is_root
        bar = tqdm(total=self.max_steps, initial=self.step, disable=not (self.progress and root),
                   unit="step", dynamic_ncols=True, mininterval=0.5)
        self.model.train()
        recent = collections.deque(maxlen=50)   # the last losses, for the progress bar
        try:
            while not self._should_stop():
                epoch = self.batcher.epoch
                if self.batcher.position == 0:
                    self.carry = None   # each epoch starts the streams from a zero state
                batch = next(iter(self.batcher))
                started = time.perf_counter()
                loss = self.train_step(batch)
                self.train_seconds += time.perf_counter() - started
                if self.distributed is not None:   # one clock, so all ranks stop together
                    self.train_seconds = self.distributed.root_seconds(self.train_seconds)
                recent.append(loss)
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(recent):.3f}",
                                tok_s=f"{self.tokens / max(self.train_seconds, 1e-9):,.0f}",
                                refresh=False)
                if self.batcher.epoch != epoch and self.schedule_name == "step":
                    self.schedule.step()
                if self.step % self.eval_every == 0:
                    self._validate(float(np.mean(recent)))
                if self.checkpoint_every and self.step % self.checkpoint_every == 0:
                    self.save_checkpoint()
                if self.callback is not None:
                    self.callback(self.step, self)
            if not self.history or self.history[-1]["step"] != self.step:
                self._validate(float(np.mean(recent)) if recent else math.nan)
            if self.checkpoint_path is not None:
                self.save_checkpoint()
        except BaseException as exc:
            if self.distributed is not None:   # one rank's error ends all ranks, no hang
                self.distributed.fail(exc)
            raise
        finally:
            bar.close()
        return self.history

    def _should_stop(self):
        if self.stopped_early:
            return True
        if self.max_steps is not None and self.step >= self.max_steps:
            return True
        if self.max_epochs is not None and self.batcher.epoch >= self.max_epochs:
            return True
        return self.time_limit is not None and self.train_seconds >= self.time_limit

    def _validate(self, train_loss):
        record = {"step": self.step, "epoch": self.batcher.epoch, "tokens": self.tokens,
                  "train_seconds": round(self.train_seconds, 3),
                  "tokens_per_second": self.tokens / max(self.train_seconds, 1e-9),
                  "train_loss": train_loss, "lr": self.optimizer.lr}
        if self.val_ids is not None:
            if self.distributed is not None:
                val = self.distributed.evaluate(self.val_ids, batch_size=self.eval_batch_size)
            else:
                val = self.model.evaluate(self.val_ids, batch_size=self.eval_batch_size,
                                          loss_on=self.loss_on)
            self.model.train()
            record.update(val_loss=val, val_perplexity=math.exp(min(val, 700.0)),
                          val_bits_per_token=val / math.log(2))
            if val < self.best_val:
                self.best_val, self.evals_without_improvement = val, 0
            else:
                self.evals_without_improvement += 1
                if self.patience is not None and self.evals_without_improvement >= self.patience:
                    self.stopped_early = True
            if self.schedule_name == "plateau":
                self.schedule.step(val)
        self.history.append(record)
        if self.log is not None and (self.distributed is None or self.distributed.is_root):
            self.log(record)
        return record

    # ---- checkpoints ----------------------------------------------------------------------

    def state_dict(self):
        """Everything besides the parameters that decides the rest of the run; arrays are
        host (NumPy) copies, whatever the model's device, so that checkpoints can hold them."""
        carry = _map_state(self.carry, lambda a: to_device(a, "cpu"), list)
        if self.distributed is not None:   # the whole batch's state, from every rank's share
            carry = self.distributed.gather_carry(carry)
        optimizer = self.optimizer.state_dict()
        optimizer["state"] = {name: {key: to_device(buf, "cpu") for key, buf in buffers.items()}
                              for name, buffers in optimizer["state"].items()}
        return {"step": self.step, "tokens": self.tokens, "train_seconds": self.train_seconds,
                "optimizer": optimizer,
                "schedule": None if self.schedule is None else self.schedule.state_dict(),
                "batcher": self.batcher.state_dict(), "rng": self.model.rng_state(),
                "carry": carry, "history": self.history, "best_val": self.best_val,
                "evals_without_improvement": self.evals_without_improvement,
                "stopped_early": self.stopped_early, "mode": self.mode,
                "settings": self.settings}

    def load_state_dict(self, state):
        """Restore a :meth:`state_dict` (e.g. from a checkpoint): all or nothing.

        Everything is checked first (:func:`check_state`, then against this trainer: mode,
        optimizer buffers' names, shapes and dtypes, schedule, batch position, generator
        states, carried state); a malformed state raises ValueError and leaves the trainer
        and its model untouched.
        """
        state = check_state(state)
        self._check_fits(state)
        self.step, self.tokens = state["step"], state["tokens"]
        self.train_seconds = state["train_seconds"]
        self.optimizer.load_state_dict(state["optimizer"])   # buffers go to their device
        if self.schedule is not None and state["schedule"] is not None:
            self.schedule.load_state_dict(state["schedule"])
        self.batcher.load_state_dict(state["batcher"])
        self.model.set_rng_state(copy.deepcopy(state["rng"]))
        carry, device = state["carry"], self.model.device
        carry = _map_state(carry, lambda a: to_device(a, device), list)
        if carry is not None and self.model.cell.has_cell_state:
            carry = tuple(carry)   # (h, c), each an array or a list over layers
        if self.distributed is not None:   # this rank's share of the whole batch's state
            carry = self.distributed.local_carry(carry)
        self.carry = carry
        self.history = [dict(record) for record in state["history"]]
        self.best_val = state["best_val"]
        self.evals_without_improvement = state["evals_without_improvement"]
        self.stopped_early = state["stopped_early"]
        self.settings = dict(state["settings"])
        return self

    def _check_fits(self, state):
        """Raise ValueError unless ``state`` (already through :func:`check_state`) fits this
        trainer and its model, so that applying it cannot fail half-way."""
        if state["mode"] != self.mode:
            raise ValueError(f"checkpoint was trained in {state['mode']!r} mode, this trainer "
                             f"uses {self.mode!r}")
        opt = state["optimizer"]
        if not isinstance(opt["state"], dict) or opt["state"].keys() != self.optimizer.state.keys():
            raise ValueError(f"trainer state optimizer buffers are for the parameters "
                             f"{sorted(opt['state']) if isinstance(opt['state'], dict) else opt['state']!r}, "
                             f"expected {sorted(self.optimizer.state)}")
        for name, buffers in self.optimizer.state.items():
            saved = opt["state"][name]
            if not isinstance(saved, dict) or saved.keys() != buffers.keys():
                raise ValueError(f"trainer state optimizer buffers for {name!r} must be "
                                 f"{sorted(buffers)}")
            for key, buf in buffers.items():
                _check_saved_array(saved[key], f"optimizer buffer {name!r}/{key!r}", buf.shape,
                                   np.dtype(buf.dtype))
        if self.schedule is not None and state["schedule"] is not None:
            schedule = state["schedule"]
            keys = self.schedule.state_dict().keys()
            if not isinstance(schedule, dict) or set(schedule) != set(keys) or not all(
                    _is_real(schedule[k]) for k in keys):
                raise ValueError(f"trainer state schedule must be a dict of numbers with keys "
                                 f"{sorted(keys)}, got {schedule!r}")
        # The batcher checks its own state; try it on a shallow copy (shares the data).
        copy.copy(self.batcher).load_state_dict(state["batcher"])
        current = self.model.rng_state()
        rng = state["rng"]
        if not isinstance(rng, dict) or rng.keys() != current.keys():
            raise ValueError(f"trainer state rng must be a dict with keys {sorted(current)}")
        for name, saved in rng.items():
            _check_generator_state(saved, current[name], f"rng[{name!r}]")
        self._check_carry(state["carry"])

    def _check_carry(self, carry):
        if carry is None:
            return
        if self.mode != "stream":
            raise ValueError("trainer state carry must be null in sentence mode")
        model = self.model
        shapes = model.rnn.state_shapes(self.batch_size)
        parts = 2 if model.cell.has_cell_state else 1
        if parts == 2 and not (isinstance(carry, list) and len(carry) == 2):
            raise ValueError("trainer state carry must be a list [h, c] for an LSTM")
        for i, part in enumerate(carry if parts == 2 else [carry]):
            if model.rnn.uniform:
                _check_saved_array(part, f"carry[{i}]", shapes[0], model.dtype)
                continue
            # Layers of different sizes: a list of per-layer arrays (the state format).
            if not (isinstance(part, list) and len(part) == len(shapes)):
                raise ValueError(f"trainer state carry[{i}] must be a list of {len(shapes)} "
                                 "arrays, one per layer (the hidden sizes differ)")
            for layer, (array, shape) in enumerate(zip(part, shapes)):
                _check_saved_array(array, f"carry[{i}][{layer}]", shape, model.dtype)

    def save_checkpoint(self, path=None):
        """Model + trainer state to ``path`` (default ``checkpoint_path``), atomically."""
        path = self.checkpoint_path if path is None else path
        if path is None:
            raise ValueError("no checkpoint path: pass path or set checkpoint_path")
        state = self.state_dict()   # collective when distributed
        if self.distributed is None or self.distributed.is_root:
            self.model.save(path, extra={"trainer": state})

    def load_checkpoint(self, path):
        """Restore the parameters and trainer state saved by :meth:`save_checkpoint`.

        All or nothing: the file, the model's config and the whole trainer state are checked
        before the parameters are copied; any problem raises ValueError (a
        :class:`fastrnn.lm.checkpoint.CheckpointError` for the file) and changes nothing.
        """
        saved, extra = LanguageModel.load(path, with_extra=True)
        # The seed and the init options only decide initialisation and dropout streams, both
        # restored below.
        initial = ("seed", "init_std", "recurrent_init", "forget_bias")
        architecture = [{k: v for k, v in m.config().items() if k not in initial}
                        for m in (saved, self.model)]
        if architecture[0] != architecture[1]:
            raise ValueError(f"checkpoint {path} holds a different model: {architecture[0]} vs "
                             f"{architecture[1]}")
        if not isinstance(extra, dict) or "trainer" not in extra:
            raise ValueError(f"{path} holds a model but no training state to resume from")
        try:
            state = check_state(extra["trainer"])
            self._check_fits(state)
        except ValueError as exc:
            raise CheckpointError(f"{path} holds a malformed training state: {exc}") from exc
        self.model.load_state_dict(saved.params)   # host arrays, copied to the model's device
        return self.load_state_dict(state)


# ---- checking saved trainer states ----------------------------------------------------------

def _is_real(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _map_state(state, fn, sequence_type):
    """A recurrent state (None, an array, or nested tuples/lists of arrays) with ``fn``
    applied to each array and every tuple/list made a ``sequence_type``."""
    if state is None:
        return None
    if isinstance(state, (tuple, list)):
        return sequence_type(_map_state(part, fn, sequence_type) for part in state)
    return fn(state)


def _check_saved_array(value, name, shape, dtype):
    if not isinstance(value, np.ndarray):
        raise ValueError(f"trainer state {name} must be an array, got {type(value).__name__}")
    if value.shape != tuple(shape) or value.dtype != dtype:
        raise ValueError(f"trainer state {name} must have shape {tuple(shape)} and dtype {dtype}, "
                         f"got {value.shape} and {value.dtype}")


def _check_generator_state(saved, current, name):
    """Check ``saved`` is a state the generator that produced ``current`` accepts, by
    setting it on a fresh generator of the same kind."""
    bit_generator = getattr(np.random, str(current.get("bit_generator")))
    try:
        bit_generator().state = copy.deepcopy(saved)
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
        raise ValueError(f"trainer state {name} is not a {current['bit_generator']} generator "
                         f"state: {exc}") from None


def check_state(state):
    """Check the structure of a saved trainer state (what :meth:`Trainer.state_dict` returns,
    as read back from a file) without a Trainer: the counters' types and ranges, the history
    records, the nested dicts. Returns it with numbers as Python int/float/bool. Raises
    ValueError naming the first bad entry (what :meth:`Trainer.load_state_dict` then checks
    against the trainer is in ``_check_fits``)."""
    if not isinstance(state, dict):
        raise ValueError(f"trainer state must be a dict, got {type(state).__name__}")
    required = ("step", "tokens", "train_seconds", "optimizer", "schedule", "batcher", "rng",
                "carry", "history", "best_val", "evals_without_improvement", "stopped_early",
                "mode")
    missing = [key for key in required if key not in state]
    if missing:
        raise ValueError(f"trainer state is missing {missing}")
    checked = dict(state)
    for key in ("step", "tokens", "evals_without_improvement"):
        if not isinstance(state[key], int) or isinstance(state[key], bool) or state[key] < 0:
            raise ValueError(f"trainer state {key} must be a non-negative integer, "
                             f"got {state[key]!r}")
    seconds = state["train_seconds"]
    if not _is_real(seconds) or not 0 <= seconds < math.inf:
        raise ValueError(f"trainer state train_seconds must be a finite number >= 0, got {seconds!r}")
    checked["train_seconds"] = float(seconds)
    if not _is_real(state["best_val"]) or math.isnan(state["best_val"]):
        raise ValueError(f"trainer state best_val must be a number, got {state['best_val']!r}")
    checked["best_val"] = float(state["best_val"])
    if not isinstance(state["stopped_early"], bool):
        raise ValueError(f"trainer state stopped_early must be true or false, "
                         f"got {state['stopped_early']!r}")
    if state["mode"] not in ("stream", "sentences"):
        raise ValueError(f"trainer state mode must be 'stream' or 'sentences', got {state['mode']!r}")
    opt = state["optimizer"]
    if not isinstance(opt, dict) or not {"lr", "step_count", "state"} <= set(opt):
        raise ValueError("trainer state optimizer must be a dict with lr, step_count and state")
    if not _is_real(opt["lr"]) or not 0 <= opt["lr"] < math.inf:
        raise ValueError(f"trainer state optimizer lr must be a finite number >= 0, got {opt['lr']!r}")
    if not isinstance(opt["step_count"], int) or isinstance(opt["step_count"], bool) \
            or opt["step_count"] < 0:
        raise ValueError(f"trainer state optimizer step_count must be a non-negative integer, "
                         f"got {opt['step_count']!r}")
    if not isinstance(opt["state"], dict):
        raise ValueError("trainer state optimizer state must be a dict")
    history = state["history"]
    if not isinstance(history, list):
        raise ValueError("trainer state history must be a list of records")
    for i, record in enumerate(history):
        if not isinstance(record, dict) or not all(
                isinstance(k, str) and (v is None or isinstance(v, (int, float, str)))
                for k, v in record.items()):
            raise ValueError(f"trainer state history[{i}] must be a dict of numbers and strings")
        if not isinstance(record.get("step"), int):
            raise ValueError(f"trainer state history[{i}] must have an integer step")
    settings = state.get("settings")
    if settings is None:
        settings = {}
    if not isinstance(settings, dict):
        raise ValueError(f"trainer state settings must be a dict, got {type(settings).__name__}")
    checked["settings"] = settings
    return checked
