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

``WordVocab.build(..., tokenizer=f)`` replaces the regex with any callable ``f`` (str -> list of
str), applied to each line (the newline/``eos`` rule above still applies). A word vocabulary's
special tokens (``unk``, ``bos``, ``eos``, ``specials``) are never lower-cased or split: where
one stands alone in the text (between whitespace or the text's ends) it is one token as written.
``encode_tokens`` takes a list of tokens as given, with no tokenising or lower-casing at all.

``vocab.counts`` is how often each token occurred in the text the vocabulary was built from
(every token of that text, including those left out by ``max_size``/``min_count``); it is saved
with the vocabulary. Vocabularies built with the constructor, or saved before counts existed,
have ``counts = None``.

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


def _check_counts(counts):
    """A copy of ``counts`` as {str: int >= 0}, or ValueError naming the bad entry."""
    if not isinstance(counts, dict):
        raise ValueError(f"counts must be a dict of token -> count, got {type(counts).__name__}")
    for token, count in counts.items():
        if not isinstance(token, str) or not (isinstance(count, int)
                                              and not isinstance(count, bool) and count >= 0):
            raise ValueError(f"counts must map str tokens to integers >= 0, got "
                             f"{token!r}: {count!r}")
    return dict(counts)


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
        counts: optional {token: occurrences} of the text the vocabulary was built from
            (``build`` fills it in); kept as ``counts`` and saved.
    """

    kind = ""
    """Name stored in ``to_dict()["kind"]``; set by each subclass."""

    def __init__(self, tokens, *, unk=None, bos=None, eos=None, lowercase=False, counts=None):
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
        self._counts = None if counts is None else _check_counts(counts)

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

    @staticmethod
    def _special_tokens(unk, bos, eos, specials):
        """``unk``, ``bos``, ``eos`` (those given) then ``specials``, without repeats (list)."""
        special_tokens = [t for t in (unk, bos, eos) if t is not None]
        if isinstance(specials, str):
            raise TypeError(f"specials must be a sequence of str, got the str {specials!r}")
        return special_tokens + [t for t in dict.fromkeys(specials) if t not in special_tokens]

    @classmethod
    def _from_counts(cls, counts, *, max_size, min_count, unk, bos, eos, specials, **options):
        """Build from a ``Counter`` of token occurrences (see the module docstring for order)."""
        special_tokens = cls._special_tokens(unk, bos, eos, specials)
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
        return cls(tokens, unk=unk, bos=bos, eos=eos, counts=dict(counts), **options)

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

    @property
    def counts(self):
        """{token: occurrences} in the text this vocabulary was built from (every token of that
        text, also those without an id), or None (built from a token list, or saved by a
        fastrnn without counts). A copy."""
        return None if self._counts is None else dict(self._counts)

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
        return self._encode(self.tokenize(_check_text(text)), "text")

    def encode_tokens(self, tokens):
        """Ids of ``tokens`` (a list or tuple of str, taken exactly as given: not tokenised
        again, not lower-cased) as an int64 array of shape (len(tokens),).

        Unknown tokens map to ``unk_id``; without an ``unk`` they raise ValueError naming them.
        """
        if isinstance(tokens, str) or not isinstance(tokens, (list, tuple)):
            raise TypeError(f"tokens must be a list of str, got {type(tokens).__name__}")
        for i, token in enumerate(tokens):
            if not isinstance(token, str):
                raise TypeError(f"tokens[{i}] must be a str, got {type(token).__name__}")
        return self._encode(tokens, "tokens")

    def _encode(self, tokens, name):
        if self.unk is None:
            unknown = {t for t in tokens if t not in self._ids}
            if unknown:
                raise ValueError(f"{name} has tokens not in the vocabulary (which has no unk): "
                                 f"{_listed(unknown)}")
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
        d = {"kind": self.kind, "tokens": list(self._tokens), "unk": self.unk,
             "bos": self.bos, "eos": self.eos, "options": self._options()}
        if self._counts is not None:
            d["counts"] = dict(self._counts)
        return d

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
                       counts=d.get("counts"), **options)
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


def tokenize_words(text, eos=END_OF_SENTENCE, lowercase=False, tokenizer=None, specials=()):
    """Word tokens of ``text`` (str) as a list of str, by the rules in the module docstring.

    ``eos`` (str or None) is what a line break becomes; None treats line breaks as spaces.
    ``tokenizer``: None for the built-in word regex, or a callable str -> list of str applied
    to each line. ``specials``: tokens kept whole and never lower-cased where they stand alone
    between whitespace.
    """
    pieces = [(text, False)]
    protected = [t for t in specials if t]
    if protected:
        # Longest first, so that a special that contains another one wins.
        pattern = re.compile(r"(?<!\S)(" + "|".join(
            re.escape(t) for t in sorted(protected, key=len, reverse=True)) + r")(?!\S)")
        pieces = [(piece, i % 2 == 1) for i, piece in enumerate(pattern.split(text))]
    tokens = []
    for piece, is_special in pieces:
        if is_special:
            if piece != eos or (tokens and tokens[-1] != eos):
                tokens.append(piece)
            continue
        if lowercase:
            piece = piece.lower()
        if tokenizer is None:
            for match in _WORD_OR_NEWLINE.finditer(piece):
                token = match.group()
                if token != "\n":
                    tokens.append(token)
                elif eos is not None and tokens and tokens[-1] != eos:
                    tokens.append(eos)
            continue
        lines = piece.split("\n")
        for i, line in enumerate(lines):
            tokens += _call_tokenizer(tokenizer, line)
            if i + 1 < len(lines) and eos is not None and tokens and tokens[-1] != eos:
                tokens.append(eos)
    return tokens


def _call_tokenizer(tokenizer, line):
    """``tokenizer(line)``, checked to be a list of non-empty str."""
    tokens = tokenizer(line)
    if not isinstance(tokens, list):
        raise TypeError(f"tokenizer must return a list of str, got {type(tokens).__name__} "
                        f"for {line[:40]!r}")
    for token in tokens:
        if not isinstance(token, str) or not token:
            raise ValueError(f"tokenizer must return non-empty str tokens, got {token!r} "
                             f"for {line[:40]!r}")
    return tokens


def _tokenizer_name(tokenizer):
    """A readable name for a callable (recorded in a saved vocabulary; never called)."""
    module = getattr(tokenizer, "__module__", None)
    name = getattr(tokenizer, "__qualname__", None) or type(tokenizer).__qualname__
    return name if module in (None, "builtins") else f"{module}.{name}"


class _UnsavedTokenizer:
    """Stands in for a custom tokenizer that a saved vocabulary could not keep: using it says
    how to supply it again."""

    def __init__(self, name):
        self.name = name

    def __call__(self, line):
        raise ValueError(
            f"this vocabulary was built with the custom tokenizer {self.name!r}, which is not "
            "saved with it: give it again (load_vocab(path, tokenizer=...), "
            "vocab_from_dict(d, tokenizer=...), or vocab.tokenizer = ...) before encoding text")


class WordVocab(Vocab):
    """Word-level vocabulary; tokenisation and the newline convention are in the module doc.

    ``lowercase`` is described in :class:`Vocab`. ``tokenizer``: None for the built-in word
    regex, or a callable (str -> list of str) applied to each line of text. A callable cannot
    be saved: the saved vocabulary records its name, and loading it needs the callable again
    (``tokenizer=`` of ``load``/``load_vocab``/``vocab_from_dict``, or setting
    ``vocab.tokenizer``); until then everything works except tokenising text, which raises
    ValueError saying so.
    """

    kind = "word"

    def __init__(self, tokens, *, unk=None, bos=None, eos=None, lowercase=False, counts=None,
                 tokenizer=None):
        super().__init__(tokens, unk=unk, bos=bos, eos=eos, lowercase=lowercase, counts=counts)
        # Kept whole when tokenising; build() and from_dict() add the extra ``specials``.
        self._specials = self._special_tokens(unk, bos, eos, ())
        self._tokenizer = None
        self._tokenizer_name = None
        if tokenizer is not None:
            self.tokenizer = tokenizer

    @property
    def tokenizer(self):
        """The custom tokenizer (callable), or None for the built-in word regex."""
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer):
        if not callable(tokenizer) or isinstance(tokenizer, _UnsavedTokenizer):
            raise TypeError(f"tokenizer must be a callable (str -> list of str), got "
                            f"{type(tokenizer).__name__}")
        self._tokenizer = tokenizer
        self._tokenizer_name = _tokenizer_name(tokenizer)

    @property
    def specials(self):
        """The special tokens (unk, bos, eos, then the ``specials`` given), as a list."""
        return list(self._specials)

    @classmethod
    def build(cls, text, max_size=10000, min_count=1, unk="<unk>", bos=None,
              eos=END_OF_SENTENCE, lowercase=False, specials=(), tokenizer=None):
        """Vocabulary of the words of ``text`` (str).

        ``max_size`` (None = no cap) counts specials too. ``tokenizer``: see the class doc.
        """
        if tokenizer is not None and not callable(tokenizer):
            raise TypeError(f"tokenizer must be a callable (str -> list of str), got "
                            f"{type(tokenizer).__name__}")
        protected = cls._special_tokens(unk, bos, eos, specials)
        counts = Counter(tokenize_words(_check_text(text), eos=eos, lowercase=lowercase,
                                        tokenizer=tokenizer, specials=protected))
        vocab = cls._from_counts(counts, max_size=max_size, min_count=min_count, unk=unk,
                                 bos=bos, eos=eos, specials=specials, lowercase=lowercase,
                                 tokenizer=tokenizer)
        vocab._specials = protected
        return vocab

    def tokenize(self, text):
        return tokenize_words(_check_text(text), eos=self.eos, lowercase=self.lowercase,
                              tokenizer=self._tokenizer, specials=self._specials)

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

    def to_dict(self):
        d = super().to_dict()
        extra = [t for t in self._specials if t not in (self.unk, self.bos, self.eos)]
        if extra:
            d["specials"] = extra
        if self._tokenizer_name is not None:
            d["tokenizer"] = self._tokenizer_name
        return d

    @classmethod
    def from_dict(cls, d, tokenizer=None):
        """Rebuild from ``to_dict()`` output; ``tokenizer``: the callable the vocabulary was
        built with, if it recorded one (see the class doc)."""
        vocab = super().from_dict(d)
        specials = d.get("specials", [])
        if not isinstance(specials, list) or not all(isinstance(t, str) for t in specials):
            raise ValueError(f"vocabulary 'specials' must be a list of str, got {specials!r}")
        for token in specials:
            if not vocab.has(token):
                raise ValueError(f"vocabulary specials token {token!r} is not in its tokens")
        vocab._specials = cls._special_tokens(vocab.unk, vocab.bos, vocab.eos, specials)
        name = d.get("tokenizer")
        if name is not None and not isinstance(name, str):
            raise ValueError(f"vocabulary 'tokenizer' must be a name (str), got {name!r}")
        if name is None and tokenizer is not None:
            raise ValueError("tokenizer: this vocabulary was built with the built-in word "
                             "tokenizer; giving another would change how it encodes text")
        if tokenizer is not None:
            vocab.tokenizer = tokenizer
        elif name is not None:
            vocab._tokenizer = _UnsavedTokenizer(name)
            vocab._tokenizer_name = name
        return vocab

    @classmethod
    def load(cls, path, tokenizer=None):
        """Read a word vocabulary written by ``save`` (``tokenizer``: see ``from_dict``)."""
        return cls.from_dict(_read_json(path), tokenizer=tokenizer)


_VOCAB_CLASSES = {cls.kind: cls for cls in (CharVocab, WordVocab)}


def vocab_from_dict(d, tokenizer=None):
    """Rebuild a ``CharVocab`` or ``WordVocab`` from ``to_dict()`` output, by its "kind".

    ``tokenizer``: for a word vocabulary built with a custom tokenizer (see ``WordVocab``).
    """
    if not isinstance(d, dict):
        raise TypeError(f"vocabulary description must be a dict, got {type(d).__name__}")
    kind = d.get("kind")
    if kind not in _VOCAB_CLASSES:
        raise ValueError(f"vocabulary 'kind' must be one of {sorted(_VOCAB_CLASSES)}, got {kind!r}")
    if kind == WordVocab.kind:
        return WordVocab.from_dict(d, tokenizer=tokenizer)
    if tokenizer is not None:
        raise ValueError("tokenizer: only word vocabularies take a tokenizer")
    return _VOCAB_CLASSES[kind].from_dict(d)


def load_vocab(path, tokenizer=None):
    """Read a vocabulary of either kind written by ``save`` (``tokenizer``: see
    ``vocab_from_dict``)."""
    return vocab_from_dict(_read_json(path), tokenizer=tokenizer)


def _read_json(path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"vocabulary file {path} is not valid JSON: {exc}") from exc
