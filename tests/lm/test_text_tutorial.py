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
    assert loaded.encode_tokens(["boat-lantern"]).tolist() == [vocab.token_to_id("boat-lantern")]
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
    text = ("SENTENCE_START Hello, World! SENTENCE_END\n"
            "SENTENCE_START <unk> <PAD> Bye SENTENCE_END\n")
    vocab = WordVocab.build(text, lowercase=True, bos="SENTENCE_START", eos="SENTENCE_END",
                            specials=["<PAD>"])
    assert vocab.tokenize(text) == [
        "SENTENCE_START", "hello", ",", "world", "!", "SENTENCE_END",
        "SENTENCE_START", "<unk>", "<PAD>", "bye", "SENTENCE_END"]
    assert vocab.specials == ["<unk>", "SENTENCE_START", "SENTENCE_END", "<PAD>"]
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


# --- grammars: phrases, shared words, hyphenated pairs, no end token -------------------------

from fastrnn.lm.text import (NONSENSE_GRAMMAR, THEANO_LSTM_GRAMMAR, SyntheticLanguage,  # noqa: E402
                             hyphenated_pairs, theano_lstm_grammar)


def notebook_entropy_per_predicted_token(in_jest_tokens):
    """The audit's hand computation from the notebook's own numbers, written out separately
    from the Grammar code: expected choice entropy of a sentence less its first (given) stop
    word, over its expected tokens less that one."""
    def h(weights):
        total = sum(weights)
        return -sum(w / total * math.log(w / total) for w in weights)
    h_stop = h([10, 5, 9, 3, 3, 2.5, 2.7, 4.5])
    h_punct = h([.49, .5, .03, .05, .05])
    coin = lambda p: h([p, 1 - p])  # noqa: E731
    clause_entropy = (h_stop + math.log(14) + coin(.3) + .3 * (math.log(7) + coin(.3))
                      + .09 * math.log(7) + math.log(11) + coin(.2)
                      + .2 * (math.log(14) + coin(.1) + .1 * math.log(14)) + h_punct)
    adverbs = .3 + .09
    clause_tokens = 4 + adverbs * (1 + (in_jest_tokens - 1) / 7) + .2
    clauses = 1.12 / .49   # geometric: each clause's mark is "." with probability .49/1.12
    return (clauses * clause_entropy - h_stop) / (clauses * clause_tokens - 1)


def test_theano_lstm_grammar_exact_entropy():
    assert round(THEANO_LSTM_GRAMMAR.entropy_per_token(predict_first=False), 4) == 2.3580
    assert THEANO_LSTM_GRAMMAR.entropy_per_token(predict_first=False) == pytest.approx(
        notebook_entropy_per_predicted_token(in_jest_tokens=2), abs=1e-12)
    one_token = theano_lstm_grammar(split_phrases=False)
    assert one_token.entropy_per_token(predict_first=False) == pytest.approx(
        notebook_entropy_per_predicted_token(in_jest_tokens=1), abs=1e-12)
    assert round(one_token.entropy_per_token(predict_first=False), 4) == 2.3896
    # Every token predicted (a begin-of-sentence token before the first).
    assert round(THEANO_LSTM_GRAMMAR.entropy_per_token(), 4) == 2.3185
    assert len(THEANO_LSTM_GRAMMAR.word_types()) == 8 + 14 + 14 * 14 + 11 + 7 + 5
    assert "in jest" in one_token.word_types() and "jest" not in one_token.word_types()


def notebook_sentence(rng):
    """theano_lstm's generate_nonsense, with its samplers, as the notebook writes it."""
    def sampler(table):
        if isinstance(table, list):
            table = {key: 1.0 for key in table}
        total = sum(table.values())
        keys, probs = list(table), [v / total for v in table.values()]

        def draw():
            sample, seen = rng.random(), 0.0
            for key, prob in zip(keys, probs):
                if seen + prob >= sample:
                    return key
                seen += prob
            return key
        return draw
    punctuation = sampler({".": 0.49, ",": 0.5, ";": 0.03, "?": 0.05, "!": 0.05})
    stop = sampler({"the": 10, "from": 5, "a": 9, "they": 3, "he": 3, "it": 2.5, "she": 2.7,
                    "in": 4.5})
    noun = sampler(["cat", "broom", "boat", "dog", "car", "wrangler", "mexico", "lantern",
                    "book", "paper", "joke", "calendar", "ship", "event"])
    verb = sampler(["ran", "stole", "carried", "could", "would", "do", "can", "carry",
                    "catapult", "jump", "duck"])
    adverb = sampler(["rapidly", "calmly", "cooly", "in jest", "fantastically", "angrily",
                      "dazily"])
    word = ""
    while not word.endswith("."):
        if word:
            word += " "
        word += stop() + " " + noun()
        if rng.random() > 0.7:
            word += " " + adverb()
            if rng.random() > 0.7:
                word += " " + adverb()
        word += " " + verb()
        if rng.random() > 0.8:
            word += " " + noun()
            if rng.random() > 0.9:
                word += "-" + noun()
        word += "." if len(word) > 500 else " " + punctuation()
    return word


def test_theano_lstm_grammar_describes_the_notebook_generator():
    import random
    rng = random.Random(0)
    grammar = THEANO_LSTM_GRAMMAR
    lines = [notebook_sentence(rng) for _ in range(3000)]
    # Leave out any sentence cut by the notebook's 500-character cap (not in the grammar).
    sentences = [line.split(" ") for line in lines if line.endswith(" .")]
    # Every notebook sentence is a sentence of the grammar (log_prob raises otherwise).
    nats = np.array([-grammar.log_prob(s) for s in sentences])
    lengths = np.array([len(s) for s in sentences])
    assert lengths.mean() == pytest.approx(grammar.expected_tokens_per_sentence(), rel=0.03)
    estimate = nats.sum() / lengths.sum()
    std_error = np.std(nats - estimate * lengths, ddof=1) / (np.sqrt(len(lengths)) * lengths.mean())
    assert abs(estimate - grammar.entropy_per_token()) < 4 * std_error


def test_theano_lstm_grammar_text_round_trips_with_str_split():
    language = SyntheticLanguage(seed=3, grammar=THEANO_LSTM_GRAMMAR)
    text = language.generate_text(400, seed=5)
    vocab = WordVocab.build(text, tokenizer=str.split, eos=None, unk=None, max_size=None)
    assert set(vocab.tokens) <= set(THEANO_LSTM_GRAMMAR.word_types())
    assert vocab.tokenize(text) == language.sample_tokens(400, rng=5)
    assert [s for s in language.sample_sentences(400, rng=5)] == [
        line.split() for line in text.splitlines()]
    assert all(line.split()[-1] == "." and "." not in line.split()[:-1]
               for line in text.splitlines())
    tokens, log_prob = language.sample_tokens(20, rng=1, return_log_prob=True)
    assert language.log_prob(tokens) == pytest.approx(log_prob, abs=1e-9)


def test_one_token_phrases_are_encoded_from_token_lists():
    grammar = theano_lstm_grammar(split_phrases=False)
    language = SyntheticLanguage(grammar=grammar)
    with pytest.raises(ValueError, match="tokenizer=None"):
        language.generate_text(3)
    vocab = WordVocab(grammar.word_types(), unk=None)
    tokens = language.sample_tokens(200, rng=2)
    assert "in jest" in tokens
    assert [vocab.id_to_token(i) for i in vocab.encode_tokens(tokens)] == tokens


def test_phrase_log_prob_by_hand():
    stop = {"the": 10, "from": 5, "a": 9, "they": 3, "he": 3, "it": 2.5, "she": 2.7, "in": 4.5}
    p_stop = lambda w: stop[w] / 39.7  # noqa: E731
    p_full_stop = .49 / 1.12
    # the cat [adverb "in jest", no 2nd] ran [no object] . -- then "in" starts a stop word.
    first = (p_stop("the") * (1 / 14) * .3 * (1 / 7) * .7 * (1 / 11)
             * .8 * p_full_stop)
    second = p_stop("in") * (1 / 14) * .7 * (1 / 11) * .2 * .1 * (1 / 196) * p_full_stop
    tokens = ["the", "cat", "in", "jest", "ran", ".", "in", "dog", "duck", "boat-lantern", "."]
    assert THEANO_LSTM_GRAMMAR.log_prob(tokens) == pytest.approx(math.log(first * second))
    one_token = theano_lstm_grammar(split_phrases=False)
    assert one_token.log_prob(["the", "cat", "in jest", "ran", "."]) == pytest.approx(
        math.log(first))
    with pytest.raises(ValueError, match=r"tokens\[3\] = 'ran' cannot follow state 'adverb' "
                                         "inside a phrase; expected 'jest'"):
        THEANO_LSTM_GRAMMAR.log_prob(["the", "cat", "in", "ran"])
    with pytest.raises(ValueError, match=r"tokens\[2\] = 'boat-lantern' cannot follow"):
        THEANO_LSTM_GRAMMAR.log_prob(["the", "cat", "boat-lantern"])


def tiny_phrase_grammar(**kwargs):
    """x or y, then the phrase "u v" or the word w: 2 ln 2 nats over 1 + 1.5 tokens."""
    return Grammar(classes={"F": {"x": .5, "y": .5}, "G": {("u", "v"): .5, "w": .5}},
                   states={"f": State("F", {"g": 1.0}), "g": State("G", {END: 1.0})},
                   start={"f": 1.0}, **kwargs)


def test_tiny_phrase_grammar_by_hand():
    grammar = tiny_phrase_grammar(end_token=None)
    assert grammar.expected_tokens_per_sentence() == pytest.approx(2.5)
    assert grammar.entropy_per_token() == pytest.approx(2 * math.log(2) / 2.5)
    assert grammar.entropy_per_token(predict_first=False) == pytest.approx(math.log(2) / 1.5)
    assert grammar.log_prob(["x", "u", "v", "y", "w"]) == pytest.approx(4 * math.log(.5))
    with_end = tiny_phrase_grammar()
    assert with_end.expected_tokens_per_sentence() == pytest.approx(3.5)
    assert with_end.entropy_per_token(predict_first=False) == pytest.approx(math.log(2) / 2.5)
    assert with_end.log_prob(["x", "w", END_OF_SENTENCE]) == pytest.approx(2 * math.log(.5))
    # Shared word: "x" is in F and G, which no state may both reach.
    shared = Grammar(classes={"F": {"x": 1.0}, "G": {"x": .5, "z": .5}},
                     states={"f": State("F", {"g": 1.0}), "g": State("G", {END: 1.0})},
                     start={"f": 1.0})
    assert shared.log_prob(["x", "x", END_OF_SENTENCE]) == pytest.approx(math.log(.5))
    assert shared.word_types() == ["x", "z", END_OF_SENTENCE]


@pytest.mark.parametrize("kwargs, message", [
    (dict(classes={"A": {("in", "jest"): .5, ("in", "vain"): .5}},
          states={"a": State("A", {END: 1.0})}, start={"a": 1.0}),
     "entries \\('in', 'jest'\\) and \\('in', 'vain'\\) that start with the same token 'in'"),
    (dict(classes={"A": {"x": 1.0}}, states={"a": State("A", {"a": .5, END: .5})},
          start={"a": 1.0}, end_token=None),
     "with end_token=None every state must end the sentence with probability 0 or 1"),
    (dict(classes={"A": {"in jest": 1.0}}, states={"a": State("A", {END: 1.0})},
          start={"a": 1.0}, tokenizer=str.split),
     "word 'in jest' must come back unchanged from the grammar's tokenizer"),
    (dict(classes={"A": {"x\ny": 1.0}}, states={"a": State("A", {END: 1.0})},
          start={"a": 1.0}, tokenizer=None), "without line breaks"),
    (dict(classes={"A": {(): 1.0}}, states={"a": State("A", {END: 1.0})},
          start={"a": 1.0}), "entries must be a str or a non-empty tuple"),
    (dict(classes={"A": {"x": 1.0}}, states={"a": State("A", {END: 1.0})},
          start={"a": 1.0}, end_token=""), "end_token must be a non-empty str or None"),
])
def test_grammar_rejects_ambiguous_or_unreadable_tables(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Grammar(**kwargs)


def test_grammar_argument_types_and_degenerate_rates():
    with pytest.raises(TypeError, match="tokenizer must be 'builtin', a callable or None"):
        tiny_phrase_grammar(tokenizer="split")
    one_token = Grammar(classes={"A": {"x": .5, "y": .5}}, states={"a": State("A", {END: 1.0})},
                        start={"a": 1.0}, end_token=None)
    with pytest.raises(ValueError, match="predict_first=False leaves no token to predict"):
        one_token.entropy_per_token(predict_first=False)
    assert one_token.entropy_per_token() == pytest.approx(math.log(2))


def test_hyphenated_pairs():
    pairs = hyphenated_pairs({"boat": .5, "cat": .5}, {"lantern": .25, "dog": .75})
    assert pairs == {"boat-lantern": .125, "boat-dog": .375, "cat-lantern": .125,
                     "cat-dog": .375}
    assert hyphenated_pairs({"a": 1.0}, {"b": 1.0}, sep="_") == {"a_b": 1.0}
    with pytest.raises(ValueError, match="left must be a non-empty dict"):
        hyphenated_pairs({}, {"b": 1.0})
    with pytest.raises(TypeError, match="sep must be a str"):
        hyphenated_pairs({"a": 1.0}, {"b": 1.0}, sep=1)


def test_nonsense_grammar_is_unchanged():
    assert NONSENSE_GRAMMAR.end_token == END_OF_SENTENCE
    assert NONSENSE_GRAMMAR.entropy_per_token() == pytest.approx(1.7743265, abs=1e-6)


def test_a_model_keeps_its_vocabulary_counts_and_tokenizer_name(tmp_path):
    from fastrnn.lm import LanguageModel
    vocab = WordVocab.build(TEXT, tokenizer=str.split)
    model = LanguageModel(vocab=vocab, embed_size=4, hidden_size=4, num_layers=1)
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = LanguageModel.load(path)
    assert loaded.vocab.counts == vocab.counts and loaded.vocab.tokens == vocab.tokens
    assert len(loaded.generate(5, seed=0)) == 1   # sampling needs no tokenizer
    with pytest.raises(ValueError, match="custom tokenizer 'str.split'"):
        loaded.generate(5, prime="the boat-lantern")
    loaded.vocab.tokenizer = str.split
    assert len(loaded.generate(5, prime="the boat-lantern", seed=0)) == 1
