"""Tests for fastrnn.lm.text: vocabularies, corpus loading, batchers and the synthetic language."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from fastrnn.lm.text import (END, END_OF_SENTENCE, CharVocab, Grammar, SentenceBatcher, State,
                          StreamBatcher, SyntheticLanguage, WordVocab, load_text, load_vocab,
                          split_sentences, train_val_split, vocab_from_dict)

SHARED_DATA = Path(__file__).parents[3] / "shared" / "data"


def first_batches(batcher, k):
    """The next ``k`` batches of ``batcher``, running on into later epochs as needed."""
    batches = []
    while len(batches) < k:
        for batch in batcher:
            batches.append(batch)
            if len(batches) == k:
                break
    return batches


def assert_batches_equal(got, expected):
    assert len(got) == len(expected)
    for got_batch, expected_batch in zip(got, expected):
        for got_array, expected_array in zip(got_batch, expected_batch):
            np.testing.assert_array_equal(got_array, expected_array)


# --- vocabularies ---------------------------------------------------------------------------

def test_char_vocab_round_trip():
    text = "hello, wörld\n"
    vocab = CharVocab.build(text)
    ids = vocab.encode(text)
    assert ids.dtype == np.int64 and ids.shape == (len(text),)
    assert vocab.decode(ids) == text
    assert vocab.decode([]) == ""


def test_char_vocab_orders_specials_then_frequency_then_token():
    vocab = CharVocab.build("xyyzzwwww", specials=["<pad>"])
    assert vocab.tokens == ["\ufffd", "<pad>", "w", "y", "z", "x"]
    assert vocab.unk_id == 0 and vocab.bos_id is None and vocab.eos_id is None


def test_max_size_counts_specials_and_unknowns_map_to_unk():
    vocab = CharVocab.build("aaabbc", max_size=3)
    assert vocab.tokens == ["\ufffd", "a", "b"]
    assert len(vocab) == 3
    np.testing.assert_array_equal(vocab.encode("cab?"), [0, 1, 2, 0])
    assert not vocab.has("c") and vocab.has("a")


def test_min_count_drops_rare_tokens():
    vocab = CharVocab.build("aaabbc", min_count=2, unk=None)
    assert vocab.tokens == ["a", "b"]
    assert vocab.unk_id is None


def test_encode_without_unk_names_the_unknown_tokens():
    vocab = CharVocab.build("abc", unk=None)
    with pytest.raises(ValueError, match="'z'"):
        vocab.encode("abz")
    assert vocab.unknown_tokens("abz!a") == {"z", "!"}
    assert vocab.unknown_tokens("cab") == set()


def test_word_tokenize_splits_punctuation_and_marks_line_ends():
    vocab = WordVocab.build("x")
    text = "\nHello, world! Don't stop.\n\n\nNext line"
    assert vocab.tokenize(text) == ["Hello", ",", "world", "!", "Don't", "stop", ".",
                                    END_OF_SENTENCE, "Next", "line"]
    no_eos = WordVocab.build("x", eos=None)
    assert no_eos.tokenize("a\nb") == ["a", "b"]


def test_word_vocab_lowercase_option():
    vocab = WordVocab.build("The cat saw the CAT", unk=None, eos=None, lowercase=True)
    assert vocab.tokens == ["cat", "the", "saw"]
    np.testing.assert_array_equal(vocab.encode("THE Cat"), [1, 0])


def test_word_vocab_cap_and_unk():
    vocab = WordVocab.build("the cat the dog the cat", max_size=4)
    assert vocab.tokens == ["<unk>", END_OF_SENTENCE, "the", "cat"]
    np.testing.assert_array_equal(vocab.encode("the dog"), [2, 0])


def test_word_vocab_specials_order_and_ids():
    vocab = WordVocab.build("b a b", bos="<s>", specials=["<pad>"])
    assert vocab.tokens == ["<unk>", "<s>", END_OF_SENTENCE, "<pad>", "b", "a"]
    assert (vocab.unk_id, vocab.bos_id, vocab.eos_id) == (0, 1, 2)
    assert vocab.token_to_id("a") == 5 and vocab.id_to_token(4) == "b"


def test_word_vocab_decode_round_trips_space_separated_lines():
    text = "the wug daxes a fep .\nsome blick snorps !\n"
    vocab = WordVocab.build(text)
    assert vocab.decode(vocab.encode(text)) == text


def test_decode_rejects_bad_ids():
    vocab = CharVocab.build("abc")
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        vocab.decode([0, 4])
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        vocab.decode([-1])
    with pytest.raises(ValueError, match="1-D"):
        vocab.decode([[0, 1]])
    with pytest.raises(TypeError, match="integer"):
        vocab.decode([0.5])


def test_lookups_reject_unknown_token_and_out_of_range_id():
    vocab = CharVocab.build("abc")
    with pytest.raises(KeyError, match="'z'"):
        vocab.token_to_id("z")
    with pytest.raises(ValueError, match="token_id"):
        vocab.id_to_token(len(vocab))


def test_constructor_and_build_validate_arguments():
    with pytest.raises(ValueError, match="unique"):
        CharVocab(["a", "b", "a"])
    with pytest.raises(ValueError, match="unk token"):
        CharVocab(["a"], unk="?")
    with pytest.raises(ValueError, match="different"):
        WordVocab(["<x>", "a"], unk="<x>", eos="<x>")
    with pytest.raises(ValueError, match="max_size"):
        WordVocab.build("a b", max_size=1)
    with pytest.raises(ValueError, match="min_count"):
        CharVocab.build("abc", min_count=0)
    with pytest.raises(TypeError, match="text must be a str"):
        CharVocab.build(b"abc")


@pytest.mark.parametrize("vocab", [
    CharVocab.build("hello world", specials=["<pad>"]),
    WordVocab.build("The cat. The dog!\n", bos="<s>", lowercase=True),
])
def test_vocab_dict_round_trip_through_json(vocab):
    d = json.loads(json.dumps(vocab.to_dict()))
    assert d["kind"] == vocab.kind
    rebuilt = vocab_from_dict(d)
    assert type(rebuilt) is type(vocab)
    assert rebuilt.to_dict() == vocab.to_dict()
    text = "the cat, hello"
    np.testing.assert_array_equal(rebuilt.encode(text), vocab.encode(text))


def test_vocab_save_and_load(tmp_path):
    vocab = WordVocab.build("a b b c c c", max_size=3, lowercase=True)
    path = tmp_path / "vocab.json"
    vocab.save(path)
    assert WordVocab.load(path).to_dict() == vocab.to_dict()
    assert load_vocab(path).lowercase is True
    with pytest.raises(ValueError, match="expected a 'char' vocabulary"):
        CharVocab.load(path)


def test_vocab_load_errors(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_vocab(missing)
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"kind": "char", "tokens": [', encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_vocab(corrupt)
    with pytest.raises(ValueError, match="'kind' must be one of"):
        vocab_from_dict({"kind": "byte", "tokens": ["a"]})
    with pytest.raises(ValueError, match="missing keys"):
        CharVocab.from_dict({"kind": "char"})
    with pytest.raises(ValueError, match="invalid 'word' vocabulary"):
        vocab_from_dict({"kind": "word", "tokens": ["a"], "options": {"stem": True}})


# --- corpus loading and splitting -----------------------------------------------------------

def test_load_text_reads_utf8_and_normalises_line_endings(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes("\ufeffüber\r\nzwei\rdrei\n".encode("utf-8"))
    assert load_text(path) == "über\nzwei\ndrei\n"


def test_load_text_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found: .*missing.txt"):
        load_text(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="directory"):
        load_text(tmp_path)
    blank = tmp_path / "blank.txt"
    blank.write_text(" \n\t\n", encoding="utf-8")
    with pytest.raises(ValueError, match="is empty"):
        load_text(blank)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="is empty"):
        load_text(empty)
    with_nul = tmp_path / "nul.bin"
    with_nul.write_bytes(b"abc\x00def")
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        load_text(with_nul)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        load_text(latin1)


def test_train_val_split_is_contiguous():
    ids = np.arange(100)
    train, val = train_val_split(ids, 0.1)
    np.testing.assert_array_equal(train, np.arange(90))
    np.testing.assert_array_equal(val, np.arange(90, 100))
    assert train.dtype == val.dtype == np.int64


def test_train_val_split_errors():
    with pytest.raises(ValueError, match="too short"):
        train_val_split(np.arange(10), 0.1)
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(np.arange(10), 1.0)
    with pytest.raises(ValueError, match="1-D"):
        train_val_split(np.zeros((4, 4), dtype=np.int64))


def test_split_sentences_keeps_eos_and_adds_bos():
    ids = [5, 6, 1, 7, 1, 8]
    pieces = split_sentences(ids, eos_id=1)
    assert [p.tolist() for p in pieces] == [[5, 6, 1], [7, 1], [8]]
    with_bos = split_sentences(ids, eos_id=1, bos_id=2)
    assert [p.tolist() for p in with_bos] == [[2, 5, 6, 1], [2, 7, 1], [2, 8]]


# --- StreamBatcher --------------------------------------------------------------------------

def test_stream_batcher_shapes_and_contents():
    batcher = StreamBatcher(np.arange(103), batch_size=4, seq_len=5)
    # 4 streams of 25 ids (3 dropped); 24 prediction steps each -> windows of 5, 5, 5, 5, 4.
    assert len(batcher) == 5
    windows = list(batcher)
    assert [x.shape for x, _ in windows] == [(5, 4)] * 4 + [(4, 4)]
    for k, (x, y) in enumerate(windows):
        assert x.dtype == y.dtype == np.int64
        t = np.arange(len(x))[:, None]
        b = np.arange(4)[None, :]
        np.testing.assert_array_equal(x, b * 25 + k * 5 + t)
        np.testing.assert_array_equal(y, x + 1)


def test_stream_batcher_windows_continue_each_stream():
    ids = np.random.default_rng(0).integers(0, 50, size=1000)
    windows = list(StreamBatcher(ids, batch_size=3, seq_len=7))
    x = np.concatenate([w[0] for w in windows])
    y = np.concatenate([w[1] for w in windows])
    streams = ids[:999].reshape(3, 333).T
    np.testing.assert_array_equal(x, streams[:-1])
    np.testing.assert_array_equal(y, streams[1:])


def test_stream_batcher_too_short_says_how_many_tokens():
    with pytest.raises(ValueError, match="at least 24 tokens, got 23"):
        StreamBatcher(np.arange(23), batch_size=4, seq_len=5)
    assert len(StreamBatcher(np.arange(24), batch_size=4, seq_len=5)) == 1


@pytest.mark.parametrize("k", [0, 3, 5, 7])
def test_stream_batcher_exact_resume(k):
    ids = np.random.default_rng(1).integers(0, 30, size=126)

    def make():
        return StreamBatcher(ids, batch_size=4, seq_len=6)  # streams of 31: 5 windows per epoch

    reference = first_batches(make(), 10)
    batcher = make()
    first_batches(batcher, k)
    state = json.loads(json.dumps(batcher.state_dict()))
    assert state == {"epoch": k // 5, "position": k % 5}
    fresh = make()
    fresh.load_state_dict(state)
    assert_batches_equal(first_batches(fresh, 10 - k), reference[k:])


def test_stream_batcher_epoch_rolls_over_with_last_window():
    batcher = StreamBatcher(np.arange(50), batch_size=2, seq_len=4)
    assert len(list(batcher)) == len(batcher)
    assert batcher.state_dict() == {"epoch": 1, "position": 0}
    assert len(list(batcher)) == len(batcher)
    assert batcher.epoch == 2


def test_load_state_dict_validates():
    batcher = StreamBatcher(np.arange(50), batch_size=2, seq_len=4)
    with pytest.raises(ValueError, match="position"):
        batcher.load_state_dict({"epoch": 0, "position": len(batcher)})
    with pytest.raises(ValueError, match="keys"):
        batcher.load_state_dict({"epoch": 0})
    with pytest.raises(ValueError, match="epoch"):
        batcher.load_state_dict({"epoch": -1, "position": 0})


def test_stream_batcher_validates_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        StreamBatcher(np.arange(50), batch_size=0, seq_len=4)
    with pytest.raises(TypeError, match="seq_len"):
        StreamBatcher(np.arange(50), batch_size=2, seq_len=4.0)
    with pytest.raises(TypeError, match="integers"):
        StreamBatcher(np.linspace(0, 1, 50), batch_size=2, seq_len=4)


# --- SentenceBatcher ------------------------------------------------------------------------

def test_sentence_batcher_pads_time_major():
    sentences = [np.array([1, 2, 3]), np.array([4, 5]), np.array([6]), np.array([7, 8, 9, 10])]
    batcher = SentenceBatcher(sentences, batch_size=2, shuffle=False, pad_id=0)
    assert batcher.num_sentences == 3 and len(batcher) == 2  # [6] is too short
    (x0, y0, len0), (x1, y1, len1) = list(batcher)
    np.testing.assert_array_equal(x0, [[1, 4], [2, 0]])
    np.testing.assert_array_equal(y0, [[2, 5], [3, 0]])
    np.testing.assert_array_equal(len0, [2, 1])
    np.testing.assert_array_equal(x1, [[7], [8], [9]])
    np.testing.assert_array_equal(y1, [[8], [9], [10]])
    assert len1.dtype == np.int64 and len1.tolist() == [3]


def test_sentence_batcher_mask():
    mask = SentenceBatcher.mask(np.array([2, 1, 3]), 3)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, [[True, True, True],
                                         [True, False, True],
                                         [False, False, True]])


def sentences_of_lengths(lengths):
    """Sentences whose first id is their index, so batches show which sentence went where."""
    return [np.arange(i, i + n) for i, n in enumerate(lengths)]


def first_ids(batcher):
    return [int(i) for x, _, lengths in batcher for i in x[0]]


def test_sentence_batcher_shuffles_reproducibly():
    sentences = sentences_of_lengths(np.random.default_rng(2).integers(2, 9, size=23))
    epoch0 = first_ids(SentenceBatcher(sentences, batch_size=5, seed=3))
    assert sorted(epoch0) == list(range(23)) and epoch0 != list(range(23))
    assert first_ids(SentenceBatcher(sentences, batch_size=5, seed=3)) == epoch0
    assert first_ids(SentenceBatcher(sentences, batch_size=5, seed=4)) != epoch0
    batcher = SentenceBatcher(sentences, batch_size=5, seed=3)
    list(batcher)
    assert first_ids(batcher) != epoch0  # a new permutation each epoch


@pytest.mark.parametrize("k", [2, 9])
def test_sentence_batcher_exact_resume(k):
    sentences = sentences_of_lengths(np.random.default_rng(5).integers(1, 9, size=40))

    def make():
        return SentenceBatcher(sentences, batch_size=6, seed=7)

    per_epoch = len(make())
    reference = first_batches(make(), 2 * per_epoch)
    batcher = make()
    first_batches(batcher, k)
    state = batcher.state_dict()
    assert state == {"epoch": k // per_epoch, "position": k % per_epoch}
    fresh = make()
    fresh.load_state_dict(state)
    assert_batches_equal(first_batches(fresh, 2 * per_epoch - k), reference[k:])


def test_sentence_batcher_errors():
    with pytest.raises(ValueError, match="at least 2 ids"):
        SentenceBatcher([np.array([1]), np.array([], dtype=np.int64)], batch_size=2)
    with pytest.raises(TypeError, match="sentences must be a list"):
        SentenceBatcher(np.arange(10), batch_size=2)
    with pytest.raises(ValueError, match=r"sentences\[1\] must be 1-D"):
        SentenceBatcher([np.arange(3), np.zeros((2, 2), dtype=np.int64)], batch_size=2)


# --- the synthetic language -----------------------------------------------------------------

def split_at_eos(tokens):
    sentences, current = [], []
    for token in tokens:
        current.append(token)
        if token == END_OF_SENTENCE:
            sentences.append(current)
            current = []
    assert not current
    return sentences


def test_analytic_entropy_matches_a_large_sample():
    language = SyntheticLanguage()
    sentences = split_at_eos(language.sample_tokens(4000, rng=123))
    nats = np.array([-language.log_prob(s) for s in sentences])
    lengths = np.array([len(s) for s in sentences])
    estimate = nats.sum() / lengths.sum()
    # Sentences are i.i.d., so the ratio estimator's standard error follows from the spread of
    # (nats - estimate * length) across sentences (delta method): about 0.004 nats here.
    std_error = np.std(nats - estimate * lengths, ddof=1) / (np.sqrt(len(lengths)) * lengths.mean())
    assert std_error < 0.005
    assert abs(estimate - language.entropy_per_token()) < 4 * std_error
    assert lengths.mean() == pytest.approx(language.grammar.expected_tokens_per_sentence(), rel=0.03)


def test_documented_entropy_rate():
    assert SyntheticLanguage().entropy_per_token() == pytest.approx(1.7743265, abs=1e-6)


def test_log_prob_equals_the_probability_used_in_generation():
    language = SyntheticLanguage(seed=11)
    for seed in range(5):
        tokens, generated_log_prob = language.sample_tokens(3, rng=seed, return_log_prob=True)
        assert language.log_prob(tokens) == pytest.approx(generated_log_prob, abs=1e-9)
        assert generated_log_prob < 0


def test_log_prob_of_a_hand_checked_sentence():
    # P(the) * P(subj_det -> subj_noun) * P(wug) * P(subj_noun -> verb_i) * P(snorps)
    # * P(verb_i -> punct) * P(.) * P(punct -> END), from the module docstring's tables.
    expected = math.log(.5 * .7 * .25 * .3 * .4 * .3 * .7 * 1.0)
    language = SyntheticLanguage()
    assert language.log_prob(["the", "wug", "snorps", ".", END_OF_SENTENCE]) == pytest.approx(expected)
    assert language.log_prob(["the"]) == pytest.approx(math.log(.5))
    assert language.log_prob([]) == 0.0


@pytest.mark.parametrize("tokens, bad", [
    (["the", "the"], "tokens\\[1\\] = 'the'"),
    (["wug"], "tokens\\[0\\] = 'wug' cannot follow the start"),
    (["the", "wug", "."], "tokens\\[2\\] = '.'"),
    (["the", END_OF_SENTENCE], "cannot end after state 'subj_det'"),
    (["the", "cat"], "tokens\\[1\\] = 'cat'"),
    (["a", "fep", "snorps", "!", "snorps"], "tokens\\[4\\]"),
])
def test_log_prob_rejects_ungrammatical_input(tokens, bad):
    with pytest.raises(ValueError, match=bad):
        SyntheticLanguage().log_prob(tokens)


def test_sampling_is_deterministic_from_seed():
    a = SyntheticLanguage(seed=4)
    b = SyntheticLanguage(seed=4)
    assert a.generate_text(20) == b.generate_text(20)
    assert a.generate_text(20) != SyntheticLanguage(seed=5).generate_text(20)
    assert a.generate_text(10, seed=9) == b.generate_text(10, seed=9)
    assert a.sample_tokens(10, rng=9) == b.sample_tokens(10, rng=9)
    assert a.sample_tokens(10, rng=np.random.default_rng(9)) == b.sample_tokens(10, rng=9)


def test_generated_text_format():
    text = SyntheticLanguage().generate_text(50, seed=1)
    lines = text.split("\n")
    assert len(lines) == 51 and lines[-1] == ""
    assert all(line.split()[-1] in {".", "!", "?"} for line in lines[:-1])


def test_word_vocab_on_generated_text_has_exactly_the_language_tokens():
    language = SyntheticLanguage()
    text = language.generate_text(2000, seed=2)
    vocab = WordVocab.build(text, unk=None)
    assert sorted(vocab.tokens) == sorted(language.word_types())
    assert len(language.word_types()) == 40
    assert vocab.unknown_tokens(text) == set()
    assert vocab.tokenize(text) == language.sample_tokens(2000, rng=2)
    assert vocab.decode(vocab.encode(text)) == text


def coin_grammar():
    """One word, x or y with equal odds, then the end: 2 tokens carrying ln 2."""
    return Grammar(classes={"W": {"x": .5, "y": .5}},
                   states={"w": State("W", {END: 1.0})}, start={"w": 1.0})


def test_tiny_grammars_have_hand_computed_entropy():
    assert SyntheticLanguage(grammar=coin_grammar()).entropy_per_token() == pytest.approx(
        math.log(2) / 2)
    # "x" repeated a geometric number of times (mean 2), each repeat a fair coin flip:
    # 2 ln 2 nats over 2 + 1 tokens.
    geometric = Grammar(classes={"X": {"x": 1.0}},
                        states={"x": State("X", {"x": .5, END: .5})}, start={"x": 1.0})
    assert geometric.expected_tokens_per_sentence() == pytest.approx(3.0)
    assert geometric.entropy_per_token() == pytest.approx(2 * math.log(2) / 3)
    tokens = ["x", "x", END_OF_SENTENCE]
    assert geometric.log_prob(tokens) == pytest.approx(2 * math.log(.5))


@pytest.mark.parametrize("kwargs, message", [
    (dict(classes={"A": {"x": 1.0}, "B": {"y": 1.0}},
          states={"a": State("A", {"b1": .5, "b2": .5}), "b1": State("B", {END: 1.0}),
                  "b2": State("B", {END: 1.0})},
          start={"a": 1.0}), "ambiguous"),
    # A word may be in two classes, but not in two that the same state may move to.
    (dict(classes={"A": {"x": 1.0}, "B": {"x": 1.0}},
          states={"a": State("A", {END: 1.0}), "b": State("B", {END: 1.0})},
          start={"a": .5, "b": .5}), "classes 'A' and 'B' both have an entry starting with 'x'"),
    (dict(classes={"A": {"x": .5, "y": .4}},
          states={"a": State("A", {END: 1.0})}, start={"a": 1.0}), "sum to 1"),
    (dict(classes={"A": {"x": 1.0}},
          states={"a": State("A", {"a": 1.0})}, start={"a": 1.0}), "never reach"),
    (dict(classes={"A": {"x": 1.0}, "B": {"y": 1.0}},
          states={"a": State("A", {END: 1.0}), "b": State("B", {END: 1.0})},
          start={"a": 1.0}), "cannot be reached"),
    (dict(classes={"A": {"two words": 1.0}},
          states={"a": State("A", {END: 1.0})}, start={"a": 1.0}), "single WordVocab token"),
])
def test_grammar_rejects_invalid_tables(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Grammar(**kwargs)


# --- a real corpus --------------------------------------------------------------------------

@pytest.mark.skipif(not (SHARED_DATA / "timemachine.txt").is_file(),
                    reason="shared/data/timemachine.txt is not available")
def test_word_vocab_on_the_time_machine():
    text = load_text(SHARED_DATA / "timemachine.txt")
    vocab = WordVocab.build(text, max_size=1000)
    assert len(vocab) == 1000 and vocab.unk_id is not None
    ids = vocab.encode(text)
    assert ids.shape == (len(vocab.tokenize(text)),)
    assert ids.min() >= 0 and ids.max() < 1000
    assert 0 < np.mean(ids == vocab.unk_id) < 0.2
    # Built from this very text, so the counts of the non-special ids never increase.
    counts = np.bincount(ids, minlength=len(vocab))[2:]
    assert np.all(np.diff(counts) <= 0)
    assert vocab.tokens[2] in {"the", ",", "."}
