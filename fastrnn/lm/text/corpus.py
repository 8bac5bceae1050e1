"""Reading corpora and cutting token-id streams into training batches.

Two batchers, both time-major (arrays are ``(T, B)``, like the RNN layers) and both exactly
resumable: ``state_dict()`` is ``{"epoch", "position"}`` where ``position`` is the index of the
next batch of that epoch, so restoring it into a fresh batcher over the same data continues
with the very batch that would have come next.

* ``StreamBatcher``: truncated BPTT over one long stream, for hidden state carried across
  windows (column ``b`` of window ``k + 1`` continues column ``b`` of window ``k``).
* ``SentenceBatcher``: independent padded sentences, reshuffled every epoch.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from ..._validation import check_int, check_nonnegative_ints
from ...layers.loss import length_mask


def load_text(path):
    """Contents of the UTF-8 text file at ``path`` as a str, line endings normalised to "\\n".

    A leading byte-order mark is dropped. Raises FileNotFoundError if there is no such file,
    ValueError if ``path`` is a directory, holds binary data, or is empty or only whitespace.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"text file not found: {path}")
    if path.is_dir():
        raise ValueError(f"text path must be a file, got the directory {path}")
    data = path.read_bytes()
    # NUL never occurs in real text but decodes as valid UTF-8, so check for it explicitly.
    if b"\x00" in data:
        raise ValueError(f"text file {path} is not UTF-8 text (it contains NUL bytes)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"text file {path} is not UTF-8 text: {exc}") from exc
    if not text.strip():
        raise ValueError(f"text file {path} is empty")
    return text.replace("\r\n", "\n").replace("\r", "\n")


# A sentence end candidate: a run of . ! ? with any closing quotes or brackets after it, then
# whitespace. It ends a sentence if the next character opens one (see text_to_sentences).
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s)")
_OPENS_SENTENCE = "\"'“‘(["
_BLANK_LINE = re.compile(r"\n[^\S\n]*\n")


def text_to_sentences(text):
    """Cut ``text`` (str) into sentences: a list of str, in order, none empty.

    A simple rule in place of a trained splitter (such as nltk's ``sent_tokenize``): a sentence
    ends after a run of ``.``, ``!`` or ``?`` (and any closing quotes or brackets right after
    it) that is followed by whitespace and then an upper-case letter, an opening quote or
    bracket, or the end of the text; and at every blank line. Runs of whitespace inside a
    sentence (line breaks included) become one space, and each sentence is stripped. It knows
    no abbreviations: "Mr. Smith" is cut after "Mr.".
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    sentences = []
    for paragraph in _BLANK_LINE.split(text):
        start = 0
        for match in _SENTENCE_END.finditer(paragraph):
            rest = paragraph[match.end():].lstrip()
            if not rest or rest[0].isupper() or rest[0] in _OPENS_SENTENCE:
                sentences.append(paragraph[start:match.end()])
                start = match.end()
        sentences.append(paragraph[start:])
    return [" ".join(s.split()) for s in sentences if s.strip()]


def train_val_split(ids, val_fraction=0.1, min_tokens=2):
    """Split a 1-D id stream into contiguous ``(train, val)``; the last part is validation.

    ``val = ids[n - round(n * val_fraction):]``. Raises ValueError if either part would have
    fewer than ``min_tokens`` ids (2 is the least that gives one input/target pair).
    """
    ids = check_nonnegative_ints(ids, "ids")
    if not isinstance(val_fraction, (int, float)) or not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")
    min_tokens = check_int(min_tokens, "min_tokens", 1)
    n_val = round(len(ids) * val_fraction)
    n_train = len(ids) - n_val
    if min(n_train, n_val) < min_tokens:
        raise ValueError(
            f"ids is too short to split with val_fraction={val_fraction}: got {len(ids)} ids, "
            f"giving {n_train} train and {n_val} validation, each needs at least {min_tokens}")
    return ids[:n_train], ids[n_train:]


def split_sentences(ids, eos_id, bos_id=None):
    """Cut a 1-D id stream after every ``eos_id``; return a list of int64 arrays.

    Each sentence keeps its trailing ``eos_id`` (so a model learns to end sentences); a tail
    without one is kept as a last sentence. With ``bos_id`` each sentence is prefixed by it,
    so the first word is predicted too (``SentenceBatcher`` never predicts a sentence's first id).
    """
    ids = check_nonnegative_ints(ids, "ids")
    eos_id = check_int(eos_id, "eos_id", 0)
    ends = np.flatnonzero(ids == eos_id) + 1
    pieces = [piece for piece in np.split(ids, ends) if piece.size]
    if bos_id is None:
        return pieces
    bos = np.array([check_int(bos_id, "bos_id", 0)], dtype=np.int64)
    return [np.concatenate([bos, piece]) for piece in pieces]


class _ResumableBatcher:
    """Epoch/position bookkeeping shared by the batchers.

    Subclasses define ``__len__`` (batches per epoch, >= 1) and ``_batch(epoch, position)``.
    The batcher is its own cursor: each ``for`` loop over it runs the rest of the current
    epoch. Position advances as each batch is handed out, and the epoch counter moves on
    with the last one, so the state always names the next batch to be produced.
    """

    def __init__(self):
        self._epoch = 0
        self._position = 0

    def __len__(self):
        raise NotImplementedError

    def _batch(self, epoch, position):
        raise NotImplementedError

    @property
    def epoch(self):
        """Epoch of the next batch (int, from 0)."""
        return self._epoch

    @property
    def position(self):
        """Index within its epoch of the next batch (int in ``[0, len(self))``)."""
        return self._position

    def __iter__(self):
        epoch = self._epoch
        while self._epoch == epoch:
            batch = self._batch(self._epoch, self._position)
            self._position += 1
            if self._position == len(self):
                self._epoch, self._position = self._epoch + 1, 0
            yield batch

    def state_dict(self):
        """``{"epoch": int, "position": int}``: where iteration will continue."""
        return {"epoch": self._epoch, "position": self._position}

    def load_state_dict(self, state):
        """Continue from a ``state_dict()`` of a batcher built over the same data and settings."""
        if not isinstance(state, dict) or set(state) != {"epoch", "position"}:
            raise ValueError(
                f"state must be a dict with keys 'epoch' and 'position', got {state!r}")
        epoch = check_int(state["epoch"], "state['epoch']", 0)
        position = check_int(state["position"], "state['position']", 0)
        if position >= len(self):
            raise ValueError(f"state['position'] must be < {len(self)} (batches per epoch), "
                             f"got {position}")
        self._epoch, self._position = epoch, position


class StreamBatcher(_ResumableBatcher):
    """Truncated-BPTT windows over one id stream.

    The stream (length N) is cut into ``batch_size`` contiguous parallel streams of length
    ``L = N // batch_size`` (the remainder is dropped). Window ``k`` yields ``(x, y)``, int64
    arrays of shape ``(T, batch_size)`` with ``x[t, b] = stream_b[k * seq_len + t]`` and
    ``y[t, b] = stream_b[k * seq_len + t + 1]``; ``T = seq_len`` except possibly for the last,
    shorter window. There are ``ceil((L - 1) / seq_len)`` windows per epoch.

    Args:
        ids: 1-D integer token ids, at least ``batch_size * (seq_len + 1)`` of them.
        batch_size: number of parallel streams B.
        seq_len: window length T (number of BPTT steps).
    """

    def __init__(self, ids, batch_size, seq_len):
        super().__init__()
        ids = check_nonnegative_ints(ids, "ids")
        self.batch_size = check_int(batch_size, "batch_size", 1)
        self.seq_len = check_int(seq_len, "seq_len", 1)
        needed = self.batch_size * (self.seq_len + 1)
        if len(ids) < needed:
            raise ValueError(
                f"ids is too short: batch_size={self.batch_size} streams with one window of "
                f"seq_len={self.seq_len} each need at least {needed} tokens, got {len(ids)}")
        stream_len = len(ids) // self.batch_size
        # (L, B), C-contiguous so that every window is a contiguous block of rows.
        self._streams = np.ascontiguousarray(
            ids[:stream_len * self.batch_size].reshape(self.batch_size, stream_len).T)
        self._num_windows = math.ceil((stream_len - 1) / self.seq_len)

    def __len__(self):
        return self._num_windows

    def _batch(self, epoch, position):
        start = position * self.seq_len
        stop = min(start + self.seq_len, len(self._streams) - 1)
        return self._streams[start:stop].copy(), self._streams[start + 1:stop + 1].copy()


class SentenceBatcher(_ResumableBatcher):
    """Padded batches of independent sentences, reshuffled each epoch.

    A sentence ``s`` of length L contributes ``x = s[:-1]``, ``y = s[1:]`` (L - 1 steps);
    sentences with fewer than 2 ids are skipped. Each batch is ``(x, y, lengths)``: x and y
    int64 ``(T, B)`` padded with ``pad_id`` where ``T = max(lengths)``, and ``lengths`` int64
    ``(B,)``. The last batch of an epoch may have fewer than ``batch_size`` sentences.
    The order of epoch ``e`` is a permutation drawn from ``(seed, e)`` alone, which is what
    makes resuming exact without saving generator state.

    Args:
        sentences: list of 1-D integer id arrays.
        batch_size: sentences per batch B.
        shuffle: permute the sentences every epoch (else keep their order).
        seed: non-negative int for the permutations.
        pad_id: id written into padding positions (masked out by ``mask``).
    """

    def __init__(self, sentences, batch_size, shuffle=True, seed=0, pad_id=0):
        super().__init__()
        if isinstance(sentences, np.ndarray) or not isinstance(sentences, (list, tuple)):
            raise TypeError(
                f"sentences must be a list of 1-D id arrays, got {type(sentences).__name__}")
        checked = [check_nonnegative_ints(s, f"sentences[{i}]") for i, s in enumerate(sentences)]
        self._sentences = [s for s in checked if len(s) >= 2]
        if not self._sentences:
            raise ValueError(f"sentences must include one of at least 2 ids, got {len(sentences)} "
                             "sentences, all shorter")
        self.batch_size = check_int(batch_size, "batch_size", 1)
        self.shuffle = bool(shuffle)
        self.seed = check_int(seed, "seed", 0)
        self.pad_id = check_int(pad_id, "pad_id", 0)
        self._order_cache = (None, None)  # (epoch, permutation): one epoch is used at a time

    def __len__(self):
        return math.ceil(len(self._sentences) / self.batch_size)

    @property
    def num_sentences(self):
        """Number of sentences kept (those with at least 2 ids)."""
        return len(self._sentences)

    def _order(self, epoch):
        if not self.shuffle:
            return np.arange(len(self._sentences))
        cached_epoch, order = self._order_cache
        if cached_epoch != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self._sentences))
            self._order_cache = (epoch, order)
        return order

    def _batch(self, epoch, position):
        chosen = self._order(epoch)[position * self.batch_size:(position + 1) * self.batch_size]
        batch = [self._sentences[i] for i in chosen]
        lengths = np.array([len(s) - 1 for s in batch], dtype=np.int64)
        x = np.full((lengths.max(), len(batch)), self.pad_id, dtype=np.int64)
        y = x.copy()
        for b, sentence in enumerate(batch):
            x[:lengths[b], b] = sentence[:-1]
            y[:lengths[b], b] = sentence[1:]
        return x, y, lengths

    @staticmethod
    def mask(lengths, T):
        """Boolean ``(T, B)`` mask, True where step ``t < lengths[b]`` (a real, unpadded step):
        :func:`fastrnn.layers.loss.length_mask`, the mask LanguageModel applies to its loss."""
        return length_mask(lengths, T)
