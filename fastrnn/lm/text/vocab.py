"""Character and word vocabularies: text <-> int64 token ids, with JSON serialisation.

Both kinds share one implementation of building, encoding, decoding and saving; they differ
only in how text is cut into tokens and how tokens are joined back:

* ``CharVocab``: every Unicode code point is a token; decoding concatenates.
* ``WordVocab``: tokens are matched by the regex ``\\w+(?:['’]\\w+)*|[^\\w\\s]``: runs of
  letters/digits/underscores (keeping inner apostrophes, so "don't" is one token) and every
  other non-space character (punctuation, symbols) on its own. Line breaks mark sentence ends:
  with ``eos`` set (default ``"</s>"``), a newline that follows at least one token becomes
  the ``eos`` token, and a run of blank lines gives a single ``eos``. Decoding joins tokens
  with single spaces and renders ``eos`` as a newline, so one-sentence-per-line text whose
  tokens are space-separated (as :mod:`fastrnn.lm.text.synthetic` writes) round-trips exactly.

Ids are assigned specials first (``unk``, ``bos``, ``eos``, then any extra ``specials`` in
the order given), then tokens by descending count, ties broken by the token string.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

from ..._validation import check_int, check_token_ids
from ..checkpoint import atomic_write

END_OF_SENTENCE = "</s>"
"""The token a line break becomes in word-level text (``WordVocab``'s default ``eos``)."""

_WORD_OR_NEWLINE = re.compile(r"\n|\w+(?:['’]\w+)*|[^\w\s]")

# How many unknown tokens an error message lists before eliding the rest.
_MAX_LISTED = 10


def _check_text(text, name="text"):
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")
    return text


def _listed(tokens):
    """``tokens`` (a set) as a short, sorted, readable list for error messages."""
    shown = sorted(tokens)[:_MAX_LISTED]
    more = len(tokens) - len(shown)
    return ", ".join(map(repr, shown)) + (f" and {more} more" if more else "")


class Vocab:
    """Shared base: a fixed list of tokens and their ids. Subclasses define tokenisation.

    Args:
        tokens: the tokens in id order (unique, non-empty strings).
        unk: token that unknown tokens map to when encoding, or None to reject unknowns.
        bos, eos: optional begin/end-of-sentence tokens; like ``unk`` they must be in ``tokens``.
        lowercase: lower-case text before tokenising (so "T" and "t", or "The" and "the",
            share an id). Saved with the vocabulary, so every text it encodes later (a model's
            evaluation text, a sampling prime) is lower-cased the same way.
    """

    kind = ""
    """Name stored in ``to_dict()["kind"]``; set by each subclass."""

    def __init__(self, tokens, *, unk=None, bos=None, eos=None, lowercase=False):
        if isinstance(tokens, str) or not hasattr(tokens, "__iter__"):
            raise TypeError(f"tokens must be a list of str, got {type(tokens).__name__}")
        tokens = list(tokens)
        if not tokens:
            raise ValueError("tokens must not be empty")
        for token in tokens:
            if not isinstance(token, str) or not token:
                raise ValueError(f"tokens must be non-empty strings, got {token!r}")
        self._tokens = tokens
        self._ids = {token: i for i, token in enumerate(tokens)}
        if len(self._ids) != len(tokens):
            duplicated = {t for t, n in Counter(tokens).items() if n > 1}
            raise ValueError(f"tokens must be unique, got duplicates: {_listed(duplicated)}")
        named = {"unk": unk, "bos": bos, "eos": eos}
        for name, token in named.items():
            if token is not None and token not in self._ids:
                raise ValueError(f"{name} token {token!r} is not in tokens")
        given = [token for token in named.values() if token is not None]
        if len(set(given)) != len(given):
            raise ValueError(f"unk, bos and eos must be different tokens, got {named}")
        self.unk, self.bos, self.eos = unk, bos, eos
        if not isinstance(lowercase, bool):
            raise TypeError(f"lowercase must be a bool, got {type(lowercase).__name__}")
        self.lowercase = lowercase

    # --- subclass hooks -------------------------------------------------------------------

    def tokenize(self, text):
        """Split ``text`` (str) into a list of token strings."""
        raise NotImplementedError

    def _join(self, tokens):
        """Inverse of ``tokenize`` (as far as it can be): list of token strings -> str."""
        raise NotImplementedError

    def _options(self):
        """Constructor keywords (beyond tokens and specials) to serialise."""
        return {"lowercase": self.lowercase}

    # --- building -------------------------------------------------------------------------

    @classmethod
    def _from_counts(cls, counts, *, max_size, min_count, unk, bos, eos, specials, **options):
        """Build from a ``Counter`` of token occurrences (see the module docstring for order)."""
        special_tokens = [t for t in (unk, bos, eos) if t is not None]
        if isinstance(specials, str):
            raise TypeError(f"specials must be a sequence of str, got the str {specials!r}")
        special_tokens += [t for t in specials if t not in special_tokens]
        min_count = check_int(min_count, "min_count", 1)
        if max_size is None:
            max_size = len(special_tokens) + len(counts)
        max_size = check_int(max_size, "max_size", max(1, len(special_tokens)))
        ranked = sorted(
            (token for token, count in counts.items()
             if count >= min_count and token not in special_tokens),
            key=lambda token: (-counts[token], token))
        tokens = special_tokens + ranked[:max_size - len(special_tokens)]
        if not tokens:
            raise ValueError(f"no token occurs at least min_count={min_count} times")
        return cls(tokens, unk=unk, bos=bos, eos=eos, **options)

    # --- lookups --------------------------------------------------------------------------

    def __len__(self):
        return len(self._tokens)

    def __repr__(self):
        return f"{type(self).__name__}(size={len(self)}, unk={self.unk!r})"

    @property
    def tokens(self):
        """All tokens in id order (a copy)."""
        return list(self._tokens)

    @property
    def unk_id(self):
        """Id of the unknown-token marker, or None if unknown tokens are rejected."""
        return None if self.unk is None else self._ids[self.unk]

    @property
    def bos_id(self):
        return None if self.bos is None else self._ids[self.bos]

    @property
    def eos_id(self):
        return None if self.eos is None else self._ids[self.eos]

    def has(self, token):
        """True if ``token`` (str) has its own id."""
        return token in self._ids

    def token_to_id(self, token):
        """Id of ``token``; KeyError if it is not in the vocabulary (``encode`` maps to unk)."""
        try:
            return self._ids[token]
        except KeyError:
            raise KeyError(f"token {token!r} is not in the vocabulary") from None

    def id_to_token(self, token_id):
        """Token string for the integer ``token_id`` in ``[0, len(self))``."""
        token_id = check_int(token_id, "token_id", 0)
        if token_id >= len(self):
            raise ValueError(f"token_id must be in [0, {len(self)}), got {token_id}")
        return self._tokens[token_id]

    def unknown_tokens(self, text):
        """Set of tokens of ``text`` that have no id (e.g. to reject a generation prime)."""
        return {t for t in self.tokenize(_check_text(text)) if t not in self._ids}

    # --- encoding -------------------------------------------------------------------------

    def encode(self, text):
        """Token ids of ``text`` as an int64 array of shape (n_tokens,).

        Unknown tokens map to ``unk_id``; without an ``unk`` they raise ValueError naming them.
        """
        tokens = self.tokenize(_check_text(text))
        if self.unk is None:
            unknown = {t for t in tokens if t not in self._ids}
            if unknown:
                raise ValueError(
                    f"text has tokens not in the vocabulary (which has no unk): {_listed(unknown)}")
        unk_id = self.unk_id
        return np.fromiter((self._ids.get(t, unk_id) for t in tokens),
                           dtype=np.int64, count=len(tokens))

    def decode(self, ids):
        """Text for a 1-D sequence of integer ids, each in ``[0, len(self))``."""
        ids = np.asarray(ids)
        if ids.ndim != 1:
            raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
        if ids.size == 0:
            return ""
        ids = check_token_ids(ids, "ids", len(self))
        return self._join([self._tokens[i] for i in ids.tolist()])

    # --- serialisation --------------------------------------------------------------------

    def to_dict(self):
        """JSON-serialisable description; ``vocab_from_dict`` rebuilds it."""
        return {"kind": self.kind, "tokens": list(self._tokens), "unk": self.unk,
                "bos": self.bos, "eos": self.eos, "options": self._options()}

    @classmethod
    def from_dict(cls, d):
        """Rebuild a vocabulary of this class from ``to_dict()`` output."""
        if not isinstance(d, dict):
            raise TypeError(f"vocabulary description must be a dict, got {type(d).__name__}")
        missing = [key for key in ("kind", "tokens") if key not in d]
        if missing:
            raise ValueError(f"vocabulary description is missing keys {missing}")
        if d["kind"] != cls.kind:
            raise ValueError(f"expected a {cls.kind!r} vocabulary, got kind {d['kind']!r}")
        options = d.get("options") or {}
        if not isinstance(options, dict):
            raise ValueError(f"vocabulary 'options' must be a dict, got {options!r}")
        try:
            return cls(d["tokens"], unk=d.get("unk"), bos=d.get("bos"), eos=d.get("eos"),
                       **options)
        except TypeError as exc:
            raise ValueError(f"invalid {cls.kind!r} vocabulary description: {exc}") from exc

    def save(self, path):
        """Write ``to_dict()`` as UTF-8 JSON to ``path``, atomically (encoded in full first, so
        a failure leaves the previous file untouched)."""
        data = json.dumps(self.to_dict(), ensure_ascii=False).encode("utf-8")
        atomic_write(path, lambda f: f.write(data))

    @classmethod
    def load(cls, path):
        """Read a vocabulary of this class written by ``save``."""
        return cls.from_dict(_read_json(path))


class CharVocab(Vocab):
    """Character-level vocabulary: one token per Unicode code point."""

    kind = "char"

    @classmethod
    def build(cls, text, max_size=None, min_count=1, unk="\ufffd", specials=(), lowercase=False):
        """Vocabulary of the characters of ``text`` (str).

        ``max_size`` (None = no cap) counts specials too. ``unk`` defaults to U+FFFD, the
        Unicode replacement character; pass None to make unknown characters an error.
        ``lowercase=True`` counts (and later encodes) ``text.lower()``.
        """
        _check_text(text)
        counts = Counter(text.lower() if lowercase else text)
        return cls._from_counts(counts, max_size=max_size, min_count=min_count, unk=unk,
                                bos=None, eos=None, specials=specials, lowercase=lowercase)

    def tokenize(self, text):
        _check_text(text)
        return list(text.lower() if self.lowercase else text)

    def _join(self, tokens):
        return "".join(tokens)


def tokenize_words(text, eos=END_OF_SENTENCE, lowercase=False):
    """Word tokens of ``text`` (str) as a list of str, by the rules in the module docstring.

    ``eos`` (str or None) is what a line break becomes; None treats line breaks as spaces.
    """
    if lowercase:
        text = text.lower()
    tokens = []
    for match in _WORD_OR_NEWLINE.finditer(text):
        token = match.group()
        if token != "\n":
            tokens.append(token)
        elif eos is not None and tokens and tokens[-1] != eos:
            tokens.append(eos)
    return tokens


class WordVocab(Vocab):
    """Word-level vocabulary; tokenisation and the newline convention are in the module doc.

    ``lowercase`` is described in :class:`Vocab`.
    """

    kind = "word"

    @classmethod
    def build(cls, text, max_size=10000, min_count=1, unk="<unk>", bos=None,
              eos=END_OF_SENTENCE, lowercase=False, specials=()):
        """Vocabulary of the words of ``text`` (str).

        ``max_size`` (None = no cap) counts specials too.
        """
        counts = Counter(tokenize_words(_check_text(text), eos=eos, lowercase=lowercase))
        return cls._from_counts(counts, max_size=max_size, min_count=min_count, unk=unk,
                                bos=bos, eos=eos, specials=specials, lowercase=lowercase)

    def tokenize(self, text):
        return tokenize_words(_check_text(text), eos=self.eos, lowercase=self.lowercase)

    def _join(self, tokens):
        pieces = []
        for token in tokens:
            if token == self.eos:
                pieces.append("\n")
            else:
                if pieces and pieces[-1] != "\n":
                    pieces.append(" ")
                pieces.append(token)
        return "".join(pieces)


_VOCAB_CLASSES = {cls.kind: cls for cls in (CharVocab, WordVocab)}


def vocab_from_dict(d):
    """Rebuild a ``CharVocab`` or ``WordVocab`` from ``to_dict()`` output, by its "kind"."""
    if not isinstance(d, dict):
        raise TypeError(f"vocabulary description must be a dict, got {type(d).__name__}")
    kind = d.get("kind")
    if kind not in _VOCAB_CLASSES:
        raise ValueError(f"vocabulary 'kind' must be one of {sorted(_VOCAB_CLASSES)}, got {kind!r}")
    return _VOCAB_CLASSES[kind].from_dict(d)


def load_vocab(path):
    """Read a vocabulary of either kind written by ``save``."""
    return vocab_from_dict(_read_json(path))


def _read_json(path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"vocabulary file {path} is not valid JSON: {exc}") from exc
