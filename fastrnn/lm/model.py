"""A recurrent language model: embedding -> dropout -> RNN -> dropout -> linear -> softmax.

The model is a thin composition of the layers in :mod:`fastrnn.layers`; every time step runs
in the compiled kernels (or, with ``device="cuda"``, in the CuPy GPU backend), and sampling
runs in the compiled loop of :mod:`fastrnn.lm.generation`.
"""
import contextlib
import math
import numbers

import numpy as np

from . import checkpoint
from .._device import normalize_device, to_device
from .._validation import as_float_dtype, check_int, check_token_ids
from ..cells import RECURRENT_INITS, check_init_std, get_cell, param_names, param_shapes
from ..layers import Dropout, Embedding, Linear, Module, OneHot, SoftmaxCrossEntropy
from ..layers.dropout import check_batch_share
from ..layers.loss import length_mask
from ..layers.recurrent import RecurrentLayer, hidden_sizes_per_layer
from .text.corpus import SentenceBatcher
from ..threads import blas_single_threaded
from .text.vocab import Vocab, vocab_from_dict

MODEL_KIND = "language-model"
LOSS_ON = ("all", "last")
"""Which predicted tokens a loss counts: every one, or each sequence's last (sequence to one)."""


def last_token_mask(lengths, T):
    """Boolean (T, B) loss mask, True at each sequence's last real step ``lengths[b] - 1``
    only (nothing for a length-0 sequence): the mask of sequence-to-one training.
    ``lengths``: (B,) non-negative ints, each <= T."""
    lengths = np.asarray(lengths, dtype=np.int64)
    mask = np.zeros((T, lengths.size), dtype=bool)
    running = np.flatnonzero(lengths > 0)
    mask[lengths[running] - 1, running] = True
    return mask


class LanguageModel(Module):
    """Next-token model over a vocabulary of ``vocab_size`` ids.

    Args:
        vocab_size: V, or pass ``vocab`` (a CharVocab/WordVocab) and V is taken from it; the
            vocabulary is then saved with the model so sampling needs no corpus.
        embed_size: E, the embedding width (default 64; with ``one_hot``, None or V).
        hidden_size: H, units per recurrent layer: one int for every layer, or a list of
            per-layer sizes, e.g. ``[128, 512]`` (layer l's input is layer l-1's output;
            ``rnn.weight_ih_l1`` then has shape (G*512, 128)).
        num_layers: stacked recurrent layers (default: the length of a ``hidden_size`` list,
            else 2); with a list it must equal the list's length.
        cell: "lstm", "gru", "rnn_tanh", "rnn_relu" or "rnn_identity" (linear), or its
            :class:`fastrnn.cells.CellSpec`;
            ``cell`` is then the CellSpec, as on the recurrent layers (``cell.name`` the name).
        dropout: probability applied to the embeddings, between recurrent layers and to the
            last layer's output (training mode only).
        tie_weights: share the embedding matrix with the output layer (needs E == the last
            layer's H; not with ``one_hot``).
        one_hot: feed each token as a one-hot vector of size V instead of an embedding: no
            embedding parameters (``embedding.weight`` is absent from ``params``,
            ``state_dict`` and files), layer 0's ``weight_ih`` is (G*H_0, V). Input dropout,
            if any, applies to the one-hot vectors as it does to embeddings.
        seed: seeds initialisation and dropout masks.
        dtype: float32 (default) or float64.
        init_std: None (default: PyTorch's initialisation) or σ: every weight (embedding,
            recurrent, output) drawn from N(0, σ²) and every bias zero.
        recurrent_init: "uniform" (default) or "identity" (Keras IRNN: W_hh = I, nothing else
            changed; combine with ``init_std`` for small input weights).
        forget_bias: None or the LSTM's forget-gate bias (e.g. 1.0), on ``bias_ih``.
        device: "cpu" (default) or "cuda" (CuPy arrays on the GPU; ``pip install 'fastrnn[gpu]'``).
            The parameters are initialised on the host first, so a seed gives the same model on
            either device; ``to(device)`` moves it later.

    Parameters are exposed in one flat dict, ``params`` (and ``grads``), with the layer as a
    prefix: ``embedding.weight``, ``rnn.weight_ih_l0``, ..., ``output.weight``, ``output.bias``.

    The recurrent state (``state`` of ``forward``, ``initial_state``) is h, or (h, c) for an
    LSTM, with h and c each one (L, B, H) array when every layer has H units, and a list of
    L arrays shaped (1, B, H_l) when the sizes differ (see
    :class:`fastrnn.layers.RecurrentLayer`).
    They are the layers' own arrays, so build an optimizer from them after moving the model.

    A :class:`fastrnn.layers.Module`: ``train``/``eval``, ``zero_grad``, ``state_dict``,
    ``load_state_dict``, ``to``, ``num_pending`` and ``clear_pending`` are the layer contract's,
    applied to the child layers ``embedding``, ``input_dropout``, ``rnn``, ``output_dropout``,
    ``output`` and ``loss``.
    """

    def __init__(self, vocab_size=None, embed_size=None, hidden_size=256, num_layers=None,
                 cell="lstm", dropout=0.0, tie_weights=False, seed=0, dtype=np.float32,
                 vocab=None, init_std=None, recurrent_init="uniform", forget_bias=None,
                 one_hot=False, device="cpu"):
        super().__init__()
        if vocab is not None:
            if not isinstance(vocab, Vocab):
                raise TypeError(f"vocab must be a CharVocab or WordVocab, got {type(vocab).__name__}")
            if vocab_size is not None and vocab_size != len(vocab):
                raise ValueError(f"vocab_size ({vocab_size}) must equal len(vocab) ({len(vocab)})")
            vocab_size = len(vocab)
        if vocab_size is None:
            raise ValueError("give vocab_size or vocab")
        self.vocab = vocab
        self.vocab_size = check_int(vocab_size, "vocab_size", 1)
        if not isinstance(one_hot, (bool, np.bool_)):
            raise TypeError(f"one_hot must be True or False, got {one_hot!r}")
        self.one_hot = bool(one_hot)
        if self.one_hot:
            if embed_size is not None and embed_size != self.vocab_size:
                raise ValueError(f"embed_size must be None or vocab_size ({self.vocab_size}) "
                                 f"with one_hot=True (the inputs are one-hot vectors), got "
                                 f"{embed_size!r}")
            if tie_weights:
                raise ValueError("tie_weights cannot be used with one_hot=True: there is no "
                                 "embedding matrix to share")
            embed_size = self.vocab_size
        self.embed_size = check_int(64 if embed_size is None else embed_size, "embed_size", 1)
        if num_layers is None and not isinstance(hidden_size, (list, tuple)):
            num_layers = 2
        self.hidden_sizes = hidden_sizes_per_layer(hidden_size, num_layers)
        self.num_layers = len(self.hidden_sizes)
        self.cell = get_cell(cell)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.tie_weights = bool(tie_weights)
        if self.tie_weights and self.embed_size != self.hidden_sizes[-1]:
            raise ValueError(f"tie_weights needs embed_size == the last layer's hidden_size, got "
                             f"{self.embed_size} and {self.hidden_sizes[-1]}")
        self.seed = check_int(seed, "seed", 0)
        self.dtype = as_float_dtype(dtype)
        self.init_std = check_init_std(init_std)
        if recurrent_init not in RECURRENT_INITS:
            raise ValueError(f"recurrent_init must be one of {RECURRENT_INITS}, got {recurrent_init!r}")
        self.recurrent_init = recurrent_init
        if forget_bias is not None:
            if isinstance(forget_bias, bool) or not isinstance(forget_bias, numbers.Real) \
                    or not math.isfinite(forget_bias):
                raise ValueError(f"forget_bias must be a finite number or None, got {forget_bias!r}")
            forget_bias = float(forget_bias)
        self.forget_bias = forget_bias

        seeds = [int(s) for s in np.random.SeedSequence(self.seed).generate_state(5)]
        # In the order of the forward pass; the Embedding before the output Linear that may
        # share its weight (``to`` moves the children in this order).
        if self.one_hot:
            self.add_layer("embedding", OneHot(self.vocab_size, dtype=self.dtype))
        else:
            self.add_layer("embedding", Embedding(self.vocab_size, self.embed_size,
                                                  dtype=self.dtype, seed=seeds[0]))
        self.add_layer("input_dropout", Dropout(self.dropout, seed=seeds[1]))
        self.add_layer("rnn", RecurrentLayer(self.cell, self.embed_size, list(self.hidden_sizes),
                                             self.num_layers, dropout=self.dropout,
                                             dtype=self.dtype, seed=seeds[2],
                                             recurrent_init=self.recurrent_init,
                                             forget_bias=self.forget_bias, init_std=self.init_std))
        self.add_layer("output_dropout", Dropout(self.dropout, seed=seeds[3]))
        if self.tie_weights:
            output = Linear.tied_to(self.embedding, seed=seeds[4])
        else:
            output = Linear(self.hidden_sizes[-1], self.vocab_size, dtype=self.dtype, seed=seeds[4])
        self.add_layer("output", output)
        # An int when every layer has that size (as given before per-layer sizes), else the list.
        self.hidden_size = self.rnn.hidden_size
        self.add_layer("loss", SoftmaxCrossEntropy())
        self.frozen = set()   # names of params the optimizers leave unchanged (see freeze)
        self._identity = (None, None)   # (device, dtype) and its _one_hot_table
        if self.init_std is not None:
            # The recurrent layer drew its own; the embedding and output layer are redrawn
            # here (on the host, so a seed gives the same model on either device).
            rng = np.random.default_rng([self.seed, 1])
            for name in ("embedding.weight", "output.weight"):
                if name in self.params:   # output.weight is absent when tied
                    weight = self.params[name]
                    weight[...] = rng.normal(0.0, self.init_std, weight.shape)
            self.params["output.bias"][...] = 0
        self.to(device)

    # ---- modes and parameters -------------------------------------------------------------

    def config(self):
        """The constructor arguments (without the vocabulary and the device, so that a saved
        model loads on any machine), JSON-serialisable."""
        return {"vocab_size": self.vocab_size, "embed_size": self.embed_size,
                "hidden_size": self.hidden_size, "num_layers": self.num_layers, "cell": self.cell.name,
                "dropout": self.dropout, "tie_weights": self.tie_weights, "seed": self.seed,
                "dtype": self.dtype.name, "init_std": self.init_std,
                "recurrent_init": self.recurrent_init, "forget_bias": self.forget_bias,
                "one_hot": self.one_hot}

    def freeze(self, name):
        """Keep parameter ``name`` (a key of ``params``, e.g. ``"embedding.weight"``) fixed.

        Its gradient is still computed by ``backward``; every optimizer of :mod:`fastrnn.optim`
        built with ``frozen=model.frozen`` (the :class:`~fastrnn.lm.train.Trainer` does so)
        skips it, and the Trainer leaves it out of gradient clipping. A tied output weight is
        the embedding's array, so freezing ``embedding.weight`` freezes both. Not saved with
        the model: freeze again after loading.
        """
        if name not in self.params:
            raise KeyError(f"no parameter named {name!r}; the names are {sorted(self.params)}")
        self.frozen.add(name)

    def unfreeze(self, name):
        """Let the optimizers update parameter ``name`` again (see :meth:`freeze`)."""
        if name not in self.params:
            raise KeyError(f"no parameter named {name!r}; the names are {sorted(self.params)}")
        self.frozen.discard(name)

    def _dropout_layers(self):
        return {"input": self.input_dropout, "rnn": self.rnn, "output": self.output_dropout}

    def rng_state(self):
        """States of the dropout generators (for exactly resumable training)."""
        return {name: layer.rng_state() for name, layer in self._dropout_layers().items()}

    def set_rng_state(self, state):
        for name, layer in self._dropout_layers().items():
            layer.set_rng_state(state[name])

    @contextlib.contextmanager
    def batch_part(self, share):
        """Inside ``with model.batch_part((steps, batch, start)):`` training forwards take a
        part of a whole (steps, batch) batch held by several processes (data-parallel
        training, :mod:`fastrnn.lm.distributed`): their (T, B) ids are rows ``[:T]`` and
        columns ``[start:start + B]`` of it. Every dropout layer then draws the whole batch's
        masks and applies this part, so the processes together apply the masks of one process
        holding the whole batch, and their generators stay in step with its (resumable from
        one checkpoint on any number of processes). ``share`` None: whole batches (no change).
        """
        share = check_batch_share(share, "share")
        layers = self._dropout_layers().values()
        for layer in layers:
            layer.batch_share = share
        try:
            yield self
        finally:
            for layer in layers:
                layer.batch_share = None

    def skip_dropout_masks(self, steps, batch):
        """Move the dropout generators as a training-mode forward on a whole (steps, batch)
        batch of ids does, computing nothing: a process with no part of a batch (see
        :meth:`batch_part`) keeps its generators in step with the others'."""
        steps, batch = check_int(steps, "steps", 1), check_int(batch, "batch", 1)
        self.input_dropout.skip_masks((steps, batch, self.embed_size), self.dtype)
        self.rnn.skip_dropout_masks(steps, batch)
        self.output_dropout.skip_masks((steps, batch, self.rnn.output_size), self.dtype)

    def initial_state(self, batch_size):
        """Zero recurrent state for ``batch_size`` streams: h, or (h, c) for an LSTM (on the
        model's device), in the format of the class docstring."""
        return self.rnn.zero_state(batch_size)

    # ---- forward / backward ---------------------------------------------------------------

    def logits(self, x, state=None, lengths=None):
        """x: int ids (T, B), NumPy or CuPy (moved to the model's device). Returns
        (logits (T, B, V), final state), on the model's device."""
        x = self._check_ids(x, "x")
        if self._lookup_in_rnn(x.size):
            table = self._one_hot_table() if self.one_hot else self.embedding.params["weight"]
            h, state = self.rnn.forward(table, state, lengths, index=x)
        else:
            h = self.input_dropout.forward(self.embedding.forward(x))
            h, state = self.rnn.forward(h, state, lengths)
        h = self.output_dropout.forward(h)
        return self.output.forward(h), state

    def forward(self, x, y, state=None, lengths=None, mask=None):
        """Mean cross-entropy (nats per token) of targets ``y`` given inputs ``x``.

        x, y: int ids (T, B), ``y`` usually ``x`` shifted by one step. state: carried recurrent
        state or None (zeros). lengths: (B,) real lengths of padded sequences; padded steps
        are masked out of the loss. mask: (T, B) boolean or real weights >= 0 multiplying each
        step's loss (combined with the lengths mask): e.g. sequence-to-one training puts 1 on
        the last step only. The mean is then the weighted sum over the sum of the weights
        (``reduction="sum"`` on ``self.loss``: the weighted sum). Returns ``(loss, final_state)``, the loss a Python float
        and the state on the model's device; ``self.loss.n_tokens`` is the number of tokens
        counted. Ids may be NumPy or CuPy arrays: they are moved to the model's device.
        """
        # One BLAS limit for all the layers' kernels (nested entries inside are ~free).
        with blas_single_threaded():
            logits, state = self.logits(x, state, lengths)
            y = self._check_ids(y, "y")
            if y.shape != logits.shape[:2]:
                raise ValueError(f"y must have the shape of x {logits.shape[:2]}, got {y.shape}")
            weights = None if lengths is None else length_mask(lengths, y.shape[0])
            if mask is not None:
                mask = to_device(mask, self.device)
                if mask.shape != y.shape:
                    raise ValueError(f"mask must have the shape of x {y.shape}, got {mask.shape}")
                weights = mask if weights is None else mask * to_device(weights, self.device)
            # Nothing else reads the logits: the loss turns them into its softmax in place.
            return self.loss.forward(logits, y, weights, overwrite_logits=True), state

    def _lookup_in_rnn(self, tokens):
        """Whether a forward on ``tokens`` ids hands them and the embedding table to the
        recurrent layer, which looks the rows up itself (``index``, see
        :class:`fastrnn.layers.RecurrentLayer`: for a vocabulary smaller than the batch's
        tokens its first layer then projects each table row once instead of each token).
        Not with dropout on the embeddings in training (each token's row then differs). With
        one-hot inputs the table is the (V, V) identity, used while it is no larger than the
        batch's one-hot vectors (V <= tokens)."""
        if self.training and self.input_dropout.p > 0.0:
            return False
        return not self.one_hot or self.vocab_size <= tokens

    def _one_hot_table(self):
        """The (V, V) identity in the model's dtype on its device: the rows one-hot inputs
        look up (made once per device)."""
        key = (self.device, self.dtype)
        if self._identity[0] != key:
            self._identity = key, to_device(np.eye(self.vocab_size, dtype=self.dtype), self.device)
        return self._identity[1]

    def backward(self, scale=1.0):
        """Backpropagate the most recent pending training-mode ``forward``'s loss (truncated
        at its initial state) and accumulate into ``grads``. Each layer keeps one record per
        forward, so ``forward(a); forward(b); backward(); backward()`` gives the gradient of
        both losses (LIFO); a forward in eval mode records nothing (RuntimeError here).
        ``scale``: backpropagate ``scale * loss`` (e.g. the token count for a summed loss)."""
        with blas_single_threaded():
            d = self.loss.backward(scale)
            d = self.output_dropout.backward(self.output.backward(d))
            d, _ = self.rnn.backward(d, state0_grad=False)   # truncated: no use for it
            if d.ndim == 2:   # the forward looked the rows up in the rnn: d is the table's
                if not self.one_hot:   # (the identity of one-hot inputs is no parameter)
                    self.embedding.grads["weight"] += d
            else:
                self.embedding.backward(self.input_dropout.backward(d))

    def _check_ids(self, ids, name):
        ids = check_token_ids(ids, name, self.vocab_size)
        if ids.ndim != 2:
            raise ValueError(f"{name} must be 2-D (T, B) token ids, got shape {ids.shape}")
        # Checked where they are (host batches: no device sync), then moved to the model.
        return to_device(ids, self.device)

    # ---- evaluation -----------------------------------------------------------------------

    def evaluate(self, ids, batch_size=16, seq_len=256, loss_on="all"):
        """Average nats per token, predicting each token from the ones before it.

        ids: a 1-D id stream, or a list of 1-D id arrays (sentences).
        loss_on: "all" (default) scores every predicted token; "last" (sentences only)
        scores each sentence's last id given the ones before it, and returns the mean of
        those over the sentences (nats per sentence; sequence-to-one models, as
        ``Trainer(loss_on="last")`` trains them).

        * Stream: cut into ``batch_size`` contiguous parts scored in parallel with state
          carried across windows of ``seq_len`` steps (the first token of each part has no
          context).
        * Sentences: each sentence is scored on its own from a zero state (its first id is
          context only, as in sentence-mode training), ``batch_size`` sentences per padded
          batch with a masked loss; ``seq_len`` is unused. The result is the total loss over
          every predicted token divided by their number, exactly what scoring the sentences
          one by one and weighting each by its token count gives. Sentences of fewer than 2
          ids predict nothing and are skipped.

        Runs in eval mode (no dropout, nothing recorded for backward) and restores the
        previous mode. Works on either device; ids may be NumPy or CuPy.
        """
        if loss_on not in LOSS_ON:
            raise ValueError(f"loss_on must be one of {LOSS_ON}, got {loss_on!r}")
        if isinstance(ids, (list, tuple)):
            return self._evaluate_sentences(ids, batch_size, loss_on == "last")
        if loss_on == "last":
            raise ValueError("loss_on='last' needs ids as a list of sentences (each scored on "
                             "its last token), got a stream")
        ids = check_token_ids(ids, "ids", self.vocab_size)
        if ids.ndim != 1 or ids.size < 2:
            raise ValueError(f"ids must be a 1-D stream of at least 2 tokens, got shape {ids.shape}")
        batch_size = max(1, min(check_int(batch_size, "batch_size", 1), (ids.size - 1) // 2))
        seq_len = check_int(seq_len, "seq_len", 1)
        stream_len = ids.size // batch_size
        streams = ids[:stream_len * batch_size].reshape(batch_size, stream_len).T

        def windows():
            for start in range(0, stream_len - 1, seq_len):
                stop = min(start + seq_len, stream_len - 1)
                yield streams[start:stop], streams[start + 1:stop + 1], None

        return self._mean_loss(windows(), carry_state=True)

    def _check_sentences(self, sentences, name="ids"):
        """The host (NumPy) int64 arrays of a list of 1-D id arrays with ids in ``[0, V)``,
        keeping those of at least 2 ids (the ones that predict something); ValueError or
        TypeError naming ``name[i]`` otherwise, and when no sentence has 2 ids."""
        if not isinstance(sentences, (list, tuple)):
            raise TypeError(f"{name} must be a list of 1-D id arrays, got {type(sentences).__name__}")
        checked = []
        for i, sentence in enumerate(sentences):
            sentence = to_device(check_token_ids(sentence, f"{name}[{i}]", self.vocab_size), "cpu")
            if sentence.ndim != 1:
                raise ValueError(f"{name}[{i}] must be a 1-D id array, got shape {sentence.shape}")
            if sentence.size >= 2:
                checked.append(sentence)
        if not checked:
            raise ValueError(f"{name} must include a sentence of at least 2 ids, got "
                             f"{len(sentences)} sentences, all shorter")
        return checked

    def _evaluate_sentences(self, sentences, batch_size, last_only=False):
        sentences = self._check_sentences(sentences)
        # Sorted by length so that each batch pads little; the total does not depend on order.
        sentences.sort(key=len)
        batcher = SentenceBatcher(sentences, check_int(batch_size, "batch_size", 1), shuffle=False)
        return self._mean_loss(iter(batcher), carry_state=False, last_only=last_only)

    def _mean_loss(self, batches, carry_state, last_only=False):
        """Token-weighted mean loss over ``(x, y, lengths)`` batches, in eval mode;
        ``last_only``: each sequence's last token only (sentence batches)."""
        was_training = self.training
        self.eval()
        total, count, state = 0.0, 0, None
        try:
            with blas_single_threaded():
                for x, y, lengths in batches:
                    mask = last_token_mask(lengths, x.shape[0]) if last_only else None
                    loss, state = self.forward(x, y, state if carry_state else None, lengths,
                                               mask)
                    total += loss * self.loss.n_tokens
                    count += self.loss.n_tokens
        finally:
            self.train(was_training)
        return total / count

    # ---- generation -----------------------------------------------------------------------

    def generate_ids(self, prime_ids, n_tokens, num_samples=1, temperature=1.0, top_k=0,
                     top_p=1.0, greedy=False, stop_id=None, banned_ids=(), seed=None,
                     min_length=0, weights="float32"):
        """Sample continuations of ``prime_ids`` (1-D, at least one id) in compiled code.

        Returns ``(tokens (num_samples, n_tokens) int64, lengths (num_samples,))``; a row that
        drew ``stop_id`` ends there (included), later positions hold -1. ``min_length`` (needs
        ``stop_id``): before that many tokens have been generated, ``stop_id`` has probability
        zero and the other tokens are renormalised (see
        :func:`fastrnn.lm.generation.generate_tokens`). ``weights="bfloat16"`` (float32
        models): multiply by a bfloat16 copy of the weights, faster at small batch and not
        exact (same function's docstring).

        A model on the GPU samples on the CPU too, from host copies of its weights: sampling
        is one token at a time for a few sequences, so it is bound by latency, and at these
        model sizes the compiled CPU loop beats one round of GPU kernel launches per token.
        (A persistent GPU sampling kernel would be future work.)
        """
        from .generation import generate_tokens

        prime_ids = check_token_ids(prime_ids, "prime_ids", self.vocab_size)
        if prime_ids.ndim != 1 or prime_ids.size == 0:
            raise ValueError(f"prime_ids must be a non-empty 1-D id array, got shape {prime_ids.shape}")
        num_samples = check_int(num_samples, "num_samples", 1)
        prime_ids = to_device(prime_ids, "cpu")

        def host(a):   # no copy on the CPU
            return None if a is None else to_device(a, "cpu")

        layers = [tuple(host(w) for w in weights) for weights in self.rnn.all_weights]
        prime = np.broadcast_to(prime_ids, (num_samples, prime_ids.size))
        tokens, lengths, _ = generate_tokens(
            self.cell.name, layers, host(self.embedding.params.get("weight")), host(self.output.weight),
            host(self.output.bias), np.ascontiguousarray(prime), n_tokens, temperature=temperature,
            top_k=top_k, top_p=top_p, greedy=greedy, stop_id=stop_id, banned_ids=banned_ids,
            seed=seed, min_length=min_length, weights=weights)
        return tokens, lengths

    def generate(self, n_tokens=200, prime=None, num_samples=1, temperature=1.0, top_k=0,
                 top_p=1.0, greedy=False, stop=None, allow_unknown=False, seed=None,
                 min_length=0, weights="float32"):
        """Sample ``num_samples`` texts of up to ``n_tokens`` tokens (needs ``vocab``).

        prime: text to continue (every token must be in the vocabulary); None starts from the
        end-of-sentence token if the vocabulary has one, else a newline, else token 0.
        stop: a token (e.g. "\\n" or "</s>") that ends a sample. allow_unknown=False never
        emits the unknown token. min_length (needs ``stop``): the stop token is suppressed
        until ``min_length`` tokens have been generated, i.e. its probability is set to zero
        and the rest renormalised, so a finished sample has at least ``min_length`` tokens
        before its stop token (sentences of at least N words). weights: "float32" or the
        faster, inexact "bfloat16" (see generate_ids). Returns a list of str, the generated
        text without the prime.
        """
        vocab = self._require_vocab()
        prime_ids = self._prime_ids(prime)
        stop_id = None
        if stop is not None:
            if not vocab.has(stop):
                raise ValueError(f"stop token {stop!r} is not in the vocabulary")
            stop_id = vocab.token_to_id(stop)
        if check_int(min_length, "min_length", 0) > 0 and stop_id is None:
            raise ValueError(f"min_length={min_length} needs stop: the end token it suppresses")
        banned = () if allow_unknown or vocab.unk is None or not vocab.has(vocab.unk) \
            else (vocab.unk_id,)
        tokens, lengths = self.generate_ids(prime_ids, n_tokens, num_samples, temperature, top_k,
                                            top_p, greedy, stop_id, banned, seed, min_length,
                                            weights)
        return [vocab.decode(row[:n]) for row, n in zip(tokens, lengths)]

    def _require_vocab(self):
        if self.vocab is None:
            raise ValueError("this model has no vocabulary: build it with vocab=..., or use generate_ids")
        return self.vocab

    def _prime_ids(self, prime):
        vocab = self._require_vocab()
        if prime is None or prime == "":
            for token in (vocab.eos, "\n"):
                if token is not None and vocab.has(token):
                    return np.array([vocab.token_to_id(token)], dtype=np.int64)
            return np.zeros(1, dtype=np.int64)
        unknown = vocab.unknown_tokens(prime)
        if unknown:
            listed = ", ".join(repr(t) for t in sorted(unknown)[:10])
            raise ValueError(f"prime has tokens that are not in the model's vocabulary: {listed}")
        ids = vocab.encode(prime)
        if ids.size == 0:
            return self._prime_ids(None)
        return ids

    # ---- files ----------------------------------------------------------------------------

    def save(self, path, extra=None):
        """Write the model (config, vocabulary, parameters) to ``path`` atomically.

        ``extra``: optional nested dict (e.g. a trainer's state) stored alongside; arrays in it
        are kept exactly (they must be NumPy arrays of a bool, integer or real float dtype:
        anything else raises TypeError before the file is touched). Read it back with
        ``LanguageModel.load(path, with_extra=True)``. A GPU model writes host copies of its
        parameters, so the file loads anywhere. A model beyond the limits a model file may
        declare (``MAX_VOCAB_SIZE``, ``MAX_WIDTH``, ``MAX_LAYERS``, ``MAX_PARAMETERS``) raises
        ValueError, since it could not be loaded back.
        """
        _check_config(self.config())
        extra_tree, extra_arrays = checkpoint.split_tree(extra, "extra")
        header = {"config": self.config(),
                  "vocab": None if self.vocab is None else self.vocab.to_dict(),
                  "extra": extra_tree}
        arrays = {f"params/{k}": to_device(v, "cpu") for k, v in self.params.items()}
        checkpoint.save(path, MODEL_KIND, header, {**arrays, **extra_arrays})

    @classmethod
    def load(cls, path, with_extra=False, device="cpu"):
        """Read a model written by :meth:`save` and place it on ``device``. Raises
        FileNotFoundError or :class:`fastrnn.lm.checkpoint.CheckpointError` (a ValueError) with
        the reason (and RuntimeError from ``require_gpu`` for an unusable "cuda").

        The file is checked before anything is built: the header's config within the limits
        a model file may declare (``MAX_VOCAB_SIZE``, ``MAX_WIDTH``, ``MAX_LAYERS``,
        ``MAX_PARAMETERS``), and every parameter array present with exactly the shape and
        dtype the config implies (see :func:`fastrnn.lm.checkpoint.load` for the file checks).
        """
        device = normalize_device(device)
        header, arrays = checkpoint.load(path, MODEL_KIND, check=_check_model_file)
        try:
            vocab = None if header.get("vocab") is None else vocab_from_dict(header["vocab"])
            model = cls(vocab=vocab, **header["config"])
            model.load_state_dict({k[len("params/"):]: v for k, v in arrays.items()
                                   if k.startswith("params/")})
            extra = checkpoint.join_tree(header.get("extra"), arrays)
        except checkpoint.CheckpointError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise checkpoint.CheckpointError(f"{path} is a damaged model file: {exc}") from exc
        model.to(device)
        return (model, extra) if with_extra else model

    def __repr__(self):
        return (f"LanguageModel(vocab_size={self.vocab_size}, embed_size={self.embed_size}, "
                f"hidden_size={self.hidden_size}, num_layers={self.num_layers}, cell={self.cell.name!r}, "
                f"dropout={self.dropout}, tie_weights={self.tie_weights}, "
                + ("one_hot=True, " if self.one_hot else "") +
                f"params={self.num_params():,}"
                + ("" if self.device == "cpu" else f", device={self.device!r}") + ")")


# ---- what a model file may declare ---------------------------------------------------------

MAX_VOCAB_SIZE = 2**21
"""Largest vocabulary a model file may declare (2,097,152 tokens)."""
MAX_WIDTH = 2**16
"""Largest ``embed_size`` / ``hidden_size`` (each layer's) a model file may declare (65,536);
a one-hot model's ``embed_size`` is its vocabulary size (``MAX_VOCAB_SIZE``)."""
MAX_LAYERS = 256
"""Most recurrent layers a model file may declare."""
MAX_PARAMETERS = 2**32
"""Most parameters a model file may declare (4,294,967,296: 16 GiB in float32)."""

_CONFIG_KEYS = ("vocab_size", "embed_size", "hidden_size", "num_layers", "cell", "dropout",
                "tie_weights", "seed", "dtype")
_OPTIONAL_CONFIG_KEYS = ("init_std", "recurrent_init", "forget_bias", "one_hot")
"""Options of issue 12: files written before them lack them (the defaults)."""


def parameter_shapes(config):
    """``{name: shape}`` of the parameters of a model with this ``config()``, computed without
    building it (the names of ``LanguageModel.params``)."""
    V, E = config["vocab_size"], config["embed_size"]
    sizes = hidden_sizes_per_layer(config["hidden_size"], config["num_layers"])
    cell = get_cell(config["cell"])
    shapes = {} if config.get("one_hot", False) else {"embedding.weight": (V, E)}
    for layer, H in enumerate(sizes):
        in_size = E if layer == 0 else sizes[layer - 1]
        for name, shape in zip(param_names(layer, False), param_shapes(cell, in_size, H)):
            shapes[f"rnn.{name}"] = shape
    if not config["tie_weights"]:
        shapes["output.weight"] = (V, sizes[-1])
    shapes["output.bias"] = (V,)
    return shapes


def _check_config(config):
    """Validate a model ``config()`` read from a file (types, ranges, the limits above)."""
    if not isinstance(config, dict):
        raise ValueError(f"config must be a dict, got {type(config).__name__}")
    if not set(_CONFIG_KEYS) <= set(config) <= set(_CONFIG_KEYS + _OPTIONAL_CONFIG_KEYS):
        raise ValueError(f"config must have the keys {sorted(_CONFIG_KEYS)} (and optionally "
                         f"{sorted(_OPTIONAL_CONFIG_KEYS)}), got {sorted(config)}")
    one_hot = config.get("one_hot", False)
    if not isinstance(one_hot, bool):
        raise ValueError(f"config one_hot must be true or false, got {one_hot!r}")
    for key, limit in (("vocab_size", MAX_VOCAB_SIZE),
                       ("embed_size", MAX_VOCAB_SIZE if one_hot else MAX_WIDTH),
                       ("num_layers", MAX_LAYERS)):
        value = check_int(config[key], f"config {key}", 1)
        if value > limit:
            raise ValueError(f"config {key} is {value:,}, more than the {limit:,} a model file "
                             "may declare")
    hidden = config["hidden_size"]
    for i, value in enumerate(hidden if isinstance(hidden, list) else [hidden]):
        value = check_int(value, "config hidden_size" + (f"[{i}]" if isinstance(hidden, list) else ""), 1)
        if value > MAX_WIDTH:
            raise ValueError(f"config hidden_size is {value:,}, more than the {MAX_WIDTH:,} a "
                             "model file may declare")
    sizes = hidden_sizes_per_layer(hidden, config["num_layers"])
    if one_hot and (config["embed_size"] != config["vocab_size"] or config["tie_weights"]):
        raise ValueError("config one_hot needs embed_size == vocab_size and no tie_weights")
    get_cell(config["cell"])
    dropout = config["dropout"]
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"config dropout must be a number in [0, 1), got {dropout!r}")
    if not isinstance(config["tie_weights"], bool):
        raise ValueError(f"config tie_weights must be true or false, got {config['tie_weights']!r}")
    if config["tie_weights"] and config["embed_size"] != sizes[-1]:
        raise ValueError("config tie_weights needs embed_size == the last layer's hidden_size")
    check_int(config["seed"], "config seed", 0)
    check_init_std(config.get("init_std"))
    if config.get("recurrent_init", "uniform") not in RECURRENT_INITS:
        raise ValueError(f"config recurrent_init must be one of {RECURRENT_INITS}")
    forget_bias = config.get("forget_bias")
    if forget_bias is not None and (isinstance(forget_bias, bool) or not isinstance(forget_bias, (int, float))
                                    or not math.isfinite(forget_bias) or config["cell"] != "lstm"):
        raise ValueError(f"config forget_bias must be null or a finite number (LSTM only), got {forget_bias!r}")
    if config["dtype"] not in ("float32", "float64"):
        raise ValueError(f"config dtype must be 'float32' or 'float64', got {config['dtype']!r}")
    total = sum(int(np.prod(shape)) for shape in parameter_shapes(config).values())
    if total > MAX_PARAMETERS:
        raise ValueError(f"config declares {total:,} parameters, more than the "
                         f"{MAX_PARAMETERS:,} a model file may hold")


def _check_model_file(header, specs):
    """``checkpoint.load`` check: the config and vocabulary in ``header`` are sane and
    ``specs`` (name -> (shape, dtype)) holds exactly the parameters they imply."""
    config = header.get("config")
    _check_config(config)
    vocab = header.get("vocab")
    if vocab is not None:
        tokens = vocab.get("tokens") if isinstance(vocab, dict) else None
        if not isinstance(tokens, list) or len(tokens) != config["vocab_size"]:
            raise ValueError(f"the vocabulary must list vocab_size={config['vocab_size']} tokens")
    dtype = np.dtype(config["dtype"])
    expected = {f"params/{k}": shape for k, shape in parameter_shapes(config).items()}
    present = {k for k in specs if k.startswith("params/")}
    missing, unexpected = sorted(set(expected) - present), sorted(present - set(expected))
    if missing or unexpected:
        raise ValueError(f"parameter arrays do not match the config: missing {missing}, "
                         f"unexpected {unexpected}")
    for key, shape in expected.items():
        got_shape, got_dtype = specs[key]
        if got_dtype != dtype:
            raise ValueError(f"{key} has dtype {got_dtype}, expected {dtype}")
        if got_shape != shape:
            raise ValueError(f"{key} has shape {got_shape}, expected {shape}")
