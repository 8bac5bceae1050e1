"""The text features the classic tutorials need: pre-split tokens, pluggable tokenizers, token
counts, the sentence splitter, and grammars with phrases, shared words and hyphenated pairs."""
import json
import math
from collections import Counter

import numpy as np
import pytest

from fastrnn.lm.text import (END, END_OF_SENTENCE, CharVocab, Grammar, State, WordVocab,
                             load_vocab, text_to_sentences, vocab_from_dict)


# --- encode_tokens --------------------------------------------------------------------------

def test_encode_tokens_takes_tokens_as_given():
    vocab = WordVocab.build("the boat-lantern ran in jest\n", tokenizer=str.split, unk="<unk>")
    ids = vocab.encode_tokens(["boat-lantern", "in", "jest", "ran"])
    assert ids.dtype == np.int64 and ids.shape == (4,)
    assert [vocab.id_to_token(i) for i in ids] == ["boat-lantern", "in", "jest", "ran"]
    # Never re-tokenised: "in jest" is one (unknown) token, not "in" + "jest".
    assert vocab.encode_tokens(["in jest"]).tolist() == [vocab.unk_id]
    assert vocab.encode_tokens([]).shape == (0,)
    # Never lower-cased either, even by a lower-casing vocabulary.
    lower = WordVocab.build("The cat\n", lowercase=True)
    assert lower.encode_tokens(["The", "the"]).tolist() == [lower.unk_id, lower.token_to_id("the")]


def test_encode_tokens_errors_name_the_argument():
    strict = WordVocab.build("a b\n", unk=None)
    with pytest.raises(ValueError, match="tokens has tokens not in the vocabulary.*'c'"):
        strict.encode_tokens(["a", "c"])
    with pytest.raises(TypeError, match="tokens must be a list of str, got str"):
        strict.encode_tokens("a b")
    with pytest.raises(TypeError, match=r"tokens\[1\] must be a str, got int"):
        strict.encode_tokens(["a", 3])
    # encode keeps naming its own argument.
    with pytest.raises(ValueError, match="text has tokens not in the vocabulary"):
        strict.encode("a c")
    chars = CharVocab.build("abc", unk=None)
    assert chars.encode_tokens(["c", "a"]).tolist() == chars.encode("ca").tolist()


# --- pluggable tokenizer --------------------------------------------------------------------

TEXT = "the boat-lantern ran in jest .\nthe cat could duck , she ran ;\n"


def test_custom_tokenizer_is_used_per_line_and_round_trips():
    vocab = WordVocab.build(TEXT, tokenizer=str.split, unk=None)
    assert vocab.tokenizer is str.split
    assert vocab.tokenize(TEXT) == ["the", "boat-lantern", "ran", "in", "jest", ".",
                                    END_OF_SENTENCE, "the", "cat", "could", "duck", ",", "she",
                                    "ran", ";", END_OF_SENTENCE]
    assert vocab.decode(vocab.encode(TEXT)) == TEXT
    # The built-in regex would have split the hyphenated pair.
    assert "boat-lantern" not in WordVocab.build(TEXT).tokens


def test_custom_tokenizer_save_and_load(tmp_path):
    vocab = WordVocab.build(TEXT, tokenizer=str.split)
    path = tmp_path / "vocab.json"
    vocab.save(path)
    assert json.loads(path.read_text())["tokenizer"] == "str.split"
    loaded = load_vocab(path)   # loads, but cannot tokenise text until given the tokenizer
    assert loaded.tokens == vocab.tokens and loaded.counts == vocab.counts
    assert loaded.decode(vocab.encode(TEXT)) == TEXT
    assert loaded.encode_tokens(["boat-lantern"]).tolist() == vocab.encode_tokens(["boat-lantern"]).tolist()
    with pytest.raises(ValueError, match="custom tokenizer 'str.split', which is not saved"):
        loaded.encode(TEXT)
    loaded.tokenizer = str.split
    np.testing.assert_array_equal(loaded.encode(TEXT), vocab.encode(TEXT))
    again = load_vocab(path, tokenizer=str.split)
    np.testing.assert_array_equal(again.encode(TEXT), vocab.encode(TEXT))
    assert WordVocab.load(path, tokenizer=str.split).tokenizer is str.split


def test_tokenizer_errors_name_the_argument(tmp_path):
    with pytest.raises(TypeError, match="tokenizer must be a callable"):
        WordVocab.build(TEXT, tokenizer="split")
    with pytest.raises(TypeError, match="tokenizer must return a list of str"):
        WordVocab.build(TEXT, tokenizer=lambda line: tuple(line.split()))
    with pytest.raises(ValueError, match="tokenizer must return non-empty str tokens"):
        WordVocab.build(TEXT, tokenizer=lambda line: line.split(" "))
    builtin = WordVocab.build(TEXT)
    with pytest.raises(ValueError, match="tokenizer: this vocabulary was built with the built-in"):
        vocab_from_dict(builtin.to_dict(), tokenizer=str.split)
    with pytest.raises(ValueError, match="tokenizer: only word vocabularies"):
        vocab_from_dict(CharVocab.build("ab").to_dict(), tokenizer=str.split)
    with pytest.raises(TypeError, match="tokenizer must be a callable"):
        builtin.tokenizer = 3


def test_special_tokens_are_never_lower_cased_or_split():
    text = "SENTENCE_START Hello, World! SENTENCE_END\nSENTENCE_START <unk> Bye SENTENCE_END\n"
    vocab = WordVocab.build(text, lowercase=True, bos="SENTENCE_START", eos="SENTENCE_END",
                            specials=["<unk>"])
    assert vocab.tokenize(text) == [
        "SENTENCE_START", "hello", ",", "world", "!", "SENTENCE_END",
        "SENTENCE_START", "<unk>", "bye", "SENTENCE_END"]
    assert "sentence_start" not in vocab.tokens
    # Only where they stand alone: inside a longer word they are ordinary text.
    assert vocab.tokenize("XSENTENCE_START") == ["xsentence_start"]
    # Kept through save/load, with a custom tokenizer too.
    again = vocab_from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert again.tokenize(text) == vocab.tokenize(text)
    split = WordVocab.build("A-B <unk> C\n", tokenizer=lambda s: s.replace("<", " < ").split(),
                            lowercase=True)
    assert split.tokenize("A-B <unk> C") == ["a-b", "<unk>", "c"]


# --- counts ---------------------------------------------------------------------------------

def test_counts_cover_every_token_of_the_text_and_round_trip(tmp_path):
    text = "a a a b b c d\ne e\n"
    vocab = WordVocab.build(text, max_size=4)   # <unk>, </s>, a, b: c, d, e left out
    assert vocab.counts == {"a": 3, "b": 2, "c": 1, "d": 1, "e": 2, END_OF_SENTENCE: 2}
    assert vocab.counts == dict(Counter(vocab.tokenize(text)))
    # 003's report: tokens found, and the least frequent word kept.
    assert len(vocab.counts) == 6
    kept = [t for t in vocab.tokens if t not in (vocab.unk, vocab.eos)]
    assert min(kept, key=vocab.counts.get) == "b"
    path = tmp_path / "v.json"
    vocab.save(path)
    assert load_vocab(path).counts == vocab.counts
    chars = CharVocab.build("abca")
    assert chars.counts == {"a": 2, "b": 1, "c": 1}
    assert CharVocab.from_dict(json.loads(json.dumps(chars.to_dict()))).counts == chars.counts
    vocab.counts["a"] = 99   # a copy
    assert vocab.counts["a"] == 3


def test_vocabularies_without_counts_load_with_none():
    old = {"kind": "word", "tokens": ["<unk>", "</s>", "a"], "unk": "<unk>", "bos": None,
           "eos": "</s>", "options": {"lowercase": False}}
    assert vocab_from_dict(old).counts is None
    assert WordVocab(["x", "y"]).counts is None
    with pytest.raises(ValueError, match="counts must map str tokens to integers >= 0"):
        vocab_from_dict({**old, "counts": {"a": -1}})
    with pytest.raises(ValueError, match="counts must be a dict"):
        vocab_from_dict({**old, "counts": [1, 2]})


# --- sentences ------------------------------------------------------------------------------

def test_text_to_sentences_rule():
    text = ("I joined a new league. They have different rules!  \"Really?\" he asked.\n"
            "it was 3.5 km away. so what? (Fine.) Yes\n\n"
            "A new paragraph without a full stop\nthat spans lines\n\n\n  Last one?")
    assert text_to_sentences(text) == [
        "I joined a new league.", "They have different rules!",
        "\"Really?\" he asked. it was 3.5 km away. so what?", "(Fine.)", "Yes",
        "A new paragraph without a full stop that spans lines", "Last one?"]
    assert text_to_sentences("") == [] and text_to_sentences(" \n\n ") == []
    assert text_to_sentences("One. Two.") == ["One.", "Two."]
    assert text_to_sentences("Él dijo. Ésta es.") == ["Él dijo.", "Ésta es."]
    with pytest.raises(TypeError, match="text must be a str, got list"):
        text_to_sentences(["a"])
