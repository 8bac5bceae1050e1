"""A built-in nonsense language whose exact entropy is known: the floor for any model's loss.

Sentences come from a probabilistic finite-state grammar. Each state emits one entry of its
word class (a word, or a phrase of several tokens, with fixed probabilities within the class),
then moves to a next state or ends the sentence. The states that may follow any one state
emit from classes with no first token in common, so each token determines the next state
(a word may be in several classes, as long as no state can move to two of them): every token
sequence has at most one derivation, and the next-token distribution given a prefix depends
only on the state reached. That makes the exact log-probability of a text, and the exact
entropy rate of the language, computable. ``Grammar`` takes any such tables;
``NONSENSE_GRAMMAR`` (below, one word per token, every word in one class) is the default
language, and ``THEANO_LSTM_GRAMMAR`` is theano_lstm's notebook language (phrases, a word
shared between classes, hyphenated noun pairs, no end token).

Word classes (probability of each word within its class)::

    DET     the .5  a .3  every .1  some .1
    ADJ     blorpy .3  snazzle .25  grindy .2  fuzzle .15  tovy .1
    NOUN    wug .25  blick .2  fep .15  zorb .12  kiki .1  bouba .08  toma .06  plim .04
    VERB_T  daxes .3  florps .25  zibs .2  mimbles .15  glorks .1
    VERB_I  snorps .4  wibbles .3  tazzes .2  plinks .1
    ADV     quibly .5  snarfly .3  dwindly .2
    PREP    on .35  under .25  near .2  with .2
    CONJ    and .6  but .3  so .1
    PUNCT   . .7  ! .15  ? .15

States (a sentence starts in subj_det)::

    state      class   next state (probability)
    subj_det   DET     subj_adj .3, subj_noun .7
    subj_adj   ADJ     subj_adj .2, subj_noun .8
    subj_noun  NOUN    verb_t .5, verb_i .3, pre_adv .2
    pre_adv    ADV     verb_t .6, verb_i .4
    verb_t     VERB_T  obj_det 1
    obj_det    DET     obj_adj .25, obj_noun .75
    obj_adj    ADJ     obj_adj .2, obj_noun .8
    obj_noun   NOUN    prep .25, conj .15, punct .6
    verb_i     VERB_I  post_adv .3, prep .3, conj .1, punct .3
    post_adv   ADV     prep .3, conj .1, punct .6
    prep       PREP    pp_det 1
    pp_det     DET     pp_adj .2, pp_noun .8
    pp_adj     ADJ     pp_adj .2, pp_noun .8
    pp_noun    NOUN    prep .15, conj .15, punct .7
    conj       CONJ    subj_det 1
    punct      PUNCT   END 1

After END the token ``"</s>"`` (``END_OF_SENTENCE``, with probability 1) closes the sentence;
in text it is a line break, which is also how ``WordVocab`` reads line breaks, so
``WordVocab.build(generate_text(...))`` has exactly this language's tokens. That gives 40 word
types, 10.06 tokens per sentence on average and an entropy rate of 1.7743 nats per token
(``entropy_per_token()``).
"""
from __future__ import annotations

import math
from bisect import bisect_right
from itertools import accumulate
from typing import NamedTuple

import numpy as np

from ..._validation import check_int
from .vocab import END_OF_SENTENCE, tokenize_words

END = "<end>"
"""Transition target meaning "the sentence ends here" (then ``END_OF_SENTENCE`` follows)."""

# Tolerance on a distribution's total probability, for tables written as decimals.
_SUM_TOLERANCE = 1e-9


class State(NamedTuple):
    """A grammar state: it emits one word of ``word_class`` and then moves on.

    ``next`` maps a state name, or ``END``, to its probability.
    """

    word_class: str
    next: dict


class _Categorical:
    """A finite distribution {outcome: probability}, sampled from one uniform draw."""

    def __init__(self, probs, name):
        if not isinstance(probs, dict) or not probs:
            raise ValueError(f"{name} must be a non-empty dict of probabilities, got {probs!r}")
        for outcome, p in probs.items():
            if not isinstance(p, (int, float)) or not 0.0 < p <= 1.0:
                raise ValueError(f"{name}[{outcome!r}] must be a probability in (0, 1], got {p!r}")
        total = sum(probs.values())
        if abs(total - 1.0) > _SUM_TOLERANCE:
            raise ValueError(f"{name} probabilities must sum to 1, got {total}")
        self.outcomes = list(probs)
        self.probs = [float(p) for p in probs.values()]
        self.log_probs = [math.log(p) for p in self.probs]
        self._cdf = list(accumulate(self.probs))

    def entropy(self):
        """Entropy in nats."""
        return -sum(p * lp for p, lp in zip(self.probs, self.log_probs))

    def sample(self, rng):
        """(outcome, its log-probability) for a ``np.random.Generator``."""
        # min(): the CDF's rounded last entry may fall just below a draw close to 1.
        i = min(bisect_right(self._cdf, rng.random()), len(self.outcomes) - 1)
        return self.outcomes[i], self.log_probs[i]


class Grammar:
    """A validated, unambiguous probabilistic finite-state grammar (see the module docstring).

    Args:
        classes: {class name: {entry: probability}}. An entry is a token (str), or a phrase
            of several tokens (a tuple of str, e.g. ``("in", "jest")``) emitted one after the
            other. Within a class no two entries may start with the same token; a token may
            belong to several classes (see "unambiguous" below).
        states: {state name: State}; every state must be reachable and able to reach END.
        start: {state name: probability} for a sentence's first state.
        end_token: the token that closes every sentence (default ``END_OF_SENTENCE``), or None
            for sentences with no end token; then every state must end the sentence with
            probability 0 or 1, so that where a sentence ends follows from its tokens.
        tokenizer: how the grammar's text (``generate_text``) is read back into tokens, and so
            which tokens are allowed: ``"builtin"`` (default), WordVocab's built-in word rule
            (each token one such word); a callable str -> list of str, as given to
            ``WordVocab.build(..., tokenizer=...)`` (each token must come back from it
            unchanged, e.g. "boat-lantern" with ``str.split``); or None: tokens are only used
            as lists (``sample_tokens`` with ``vocab.encode_tokens``), may hold spaces
            ("in jest"), and ``generate_text`` is refused.

    Unambiguous: from any state (and from the start) the next token picks the next state, i.e.
    the classes of the states it may move to share no first token. With the rule inside a
    class, every token sequence has at most one derivation, which makes ``log_prob`` and
    ``entropy_per_token`` exact.
    """

    def __init__(self, classes, states, start, *, end_token=END_OF_SENTENCE, tokenizer="builtin"):
        for name, table in (("classes", classes), ("states", states)):
            if not isinstance(table, dict) or not table:
                raise ValueError(f"{name} must be a non-empty dict, got {table!r}")
        if not (tokenizer is None or tokenizer == "builtin" or callable(tokenizer)):
            raise TypeError(f"tokenizer must be 'builtin', a callable or None, got {tokenizer!r}")
        if end_token is not None and (not isinstance(end_token, str) or not end_token):
            raise ValueError(f"end_token must be a non-empty str or None, got {end_token!r}")
        self.end_token = end_token
        self.tokenizer = tokenizer
        self.classes = {}
        # {class: {first token: (entry as a tuple of tokens, its log-probability)}}
        self._first = {}
        for name, entries in classes.items():
            if not isinstance(entries, dict) or not entries:
                raise ValueError(f"classes[{name!r}] must be a non-empty dict of probabilities, "
                                 f"got {entries!r}")
            phrases = {self._check_entry(entry, name): p for entry, p in entries.items()}
            self.classes[name] = _Categorical(phrases, f"classes[{name!r}]")
            first = {}
            for phrase, lp in zip(self.classes[name].outcomes, self.classes[name].log_probs):
                if phrase[0] in first:
                    raise ValueError(
                        f"classes[{name!r}] has entries {first[phrase[0]][0]!r} and {phrase!r} "
                        f"that start with the same token {phrase[0]!r}: the grammar would be "
                        "ambiguous")
                first[phrase[0]] = (phrase, lp)
            self._first[name] = first
        if END in states:
            raise ValueError(f"{END!r} is reserved for the end of a sentence, not a state name")
        for name, state in states.items():
            if not isinstance(state, State):
                raise TypeError(f"states[{name!r}] must be a State, got {type(state).__name__}")
            if state.word_class not in self.classes:
                raise ValueError(f"state {name!r} emits unknown class {state.word_class!r}")
        self.states = dict(states)
        # Keyed by state name; None stands for the start of a sentence.
        self.transitions = {None: _Categorical(start, "start")}
        self.transitions.update((name, _Categorical(state.next, f"states[{name!r}].next"))
                                for name, state in states.items())
        self._successor = {source: self._successors_by_token(source, dist)
                           for source, dist in self.transitions.items()}
        self._check_connected()
        # States after which the sentence surely ends (with no end token, the next token then
        # starts a new sentence).
        self._ends = set()
        for name in self.states:
            dist = self.transitions[name]
            p_end = dist.probs[dist.outcomes.index(END)] if END in dist.outcomes else 0.0
            if p_end == 1.0:
                self._ends.add(name)
            elif end_token is None and p_end > 0.0:
                raise ValueError(
                    f"with end_token=None every state must end the sentence with probability 0 "
                    f"or 1 (so that where a sentence ends follows from its tokens); state "
                    f"{name!r} ends it with probability {p_end}")

    def _check_entry(self, entry, class_name):
        """A class entry as a tuple of tokens, each checked against the tokenizer."""
        phrase = (entry,) if isinstance(entry, str) else entry
        if not isinstance(phrase, tuple) or not phrase:
            raise ValueError(f"classes[{class_name!r}] entries must be a str or a non-empty tuple "
                             f"of str, got {entry!r}")
        for token in phrase:
            self._check_token(token)
        return phrase

    def _check_token(self, token):
        # A token must come back unchanged from the tokenizer, or a vocabulary built from
        # generated text would not have exactly the language's tokens.
        if not isinstance(token, str) or not token or token != token.strip() or "\n" in token:
            raise ValueError(f"word {token!r} must be a non-empty str without line breaks or "
                             "surrounding spaces")
        if token == self.end_token:
            raise ValueError(f"word {token!r} is the grammar's end_token")
        if self.tokenizer == "builtin":
            if tokenize_words(token, eos=None) != [token]:
                raise ValueError(f"word {token!r} must be a single WordVocab token (a word or "
                                 "one punctuation character)")
        elif self.tokenizer is not None:
            got = self.tokenizer(token)
            if got != [token]:
                raise ValueError(f"word {token!r} must come back unchanged from the grammar's "
                                 f"tokenizer, got {got!r}")

    def _successors_by_token(self, source, dist):
        """{first token: (next state, log-prob)} for one source; the token must pick the state."""
        by_token, state_of_class = {}, {}
        for target, lp in zip(dist.outcomes, dist.log_probs):
            if target == END:
                continue
            if target not in self.states:
                raise ValueError(f"{_where(source)} leads to unknown state {target!r}")
            word_class = self.states[target].word_class
            if word_class in state_of_class:
                raise ValueError(
                    f"{_where(source)} leads to states {state_of_class[word_class]!r} and "
                    f"{target!r}, which both emit class {word_class!r}: the grammar would be "
                    "ambiguous")
            state_of_class[word_class] = target
            for token in self._first[word_class]:
                if token in by_token:
                    other = by_token[token][0]
                    raise ValueError(
                        f"{_where(source)} leads to states {other!r} and {target!r}, whose "
                        f"classes {self.states[other].word_class!r} and {word_class!r} both have "
                        f"an entry starting with {token!r}: the grammar would be ambiguous")
                by_token[token] = (target, lp)
        return by_token

    def _targets(self, source):
        """The states (not END) that ``source`` may move to."""
        return [t for t in self.transitions[source].outcomes if t != END]

    def _check_connected(self):
        """Every state reachable from the start, and END reachable from every state."""
        reached, frontier = set(), [None]
        while frontier:
            for target in self._targets(frontier.pop()):
                if target not in reached:
                    reached.add(target)
                    frontier.append(target)
        unreachable = set(self.states) - reached
        if unreachable:
            raise ValueError(f"states {sorted(unreachable)} cannot be reached from the start")
        ending = {name for name in self.states if END in self.transitions[name].outcomes}
        changed = True
        while changed:
            before = len(ending)
            ending |= {name for name in self.states
                       if any(target in ending for target in self._targets(name))}
            changed = len(ending) != before
        stuck = set(self.states) - ending
        if stuck:
            raise ValueError(
                f"states {sorted(stuck)} can never reach {END}: sentences would not end")

    def word_types(self):
        """Every token the language uses, in class order, ``end_token`` (if any) last (list)."""
        tokens = dict.fromkeys(token for dist in self.classes.values()
                               for phrase in dist.outcomes for token in phrase)
        return list(tokens) + ([] if self.end_token is None else [self.end_token])

    def sample_sentence(self, rng):
        """One sentence as (list of tokens, ending in ``end_token`` if there is one, and its
        log-probability)."""
        state, log_prob = self.transitions[None].sample(rng)
        tokens = []
        while state != END:
            phrase, word_lp = self.classes[self.states[state].word_class].sample(rng)
            tokens.extend(phrase)
            next_state, step_lp = self.transitions[state].sample(rng)
            log_prob += word_lp + step_lp
            state = next_state
        if self.end_token is not None:
            tokens.append(self.end_token)
        return tokens, log_prob

    def log_prob(self, tokens):
        """Exact natural-log probability of a token sequence (list of str), as a float.

        ``tokens`` must start at a sentence start and may stop anywhere (the result is then the
        probability of that prefix). Raises ValueError at the first token the grammar cannot
        produce there.
        """
        if isinstance(tokens, str) or not hasattr(tokens, "__iter__"):
            raise TypeError(f"tokens must be a list of str, got {type(tokens).__name__}")
        state, total, pending = None, 0.0, ()
        for i, token in enumerate(tokens):
            if pending:
                if token != pending[0]:
                    raise ValueError(f"tokens[{i}] = {token!r} cannot follow {_where(state)} "
                                     f"inside a phrase; expected {pending[0]!r}")
                pending = pending[1:]
            elif token == self.end_token and state is not None:
                dist = self.transitions[state]
                if END not in dist.outcomes:
                    raise ValueError(f"tokens[{i}] = {token!r}: a sentence cannot end after "
                                     f"state {state!r}")
                state, total = None, total + dist.log_probs[dist.outcomes.index(END)]
                continue
            else:
                successor = self._successor[state].get(token)
                if successor is None:
                    allowed = sorted({self.states[target].word_class
                                      for target in self._targets(state)})
                    if state is not None and END in self.transitions[state].outcomes:
                        allowed.append(repr(self.end_token))
                    raise ValueError(f"tokens[{i}] = {token!r} cannot follow {_where(state)}; "
                                     f"expected a word of {allowed}")
                state, step_lp = successor
                phrase, phrase_lp = self._first[self.states[state].word_class][token]
                total += step_lp + phrase_lp
                pending = phrase[1:]
            if not pending and self.end_token is None and state in self._ends:
                state = None   # no end token: the next token starts a new sentence
        return total

    def _expected_visits(self):
        """Expected visits per sentence to each state, as an array in ``self.states`` order.

        Solves ``v = start + v Q`` with Q the state-to-state transition matrix; END being
        reachable from every state (checked at construction) makes ``I - Q`` invertible.
        """
        index = {name: i for i, name in enumerate(self.states)}
        start = np.zeros(len(index))
        transfer = np.zeros((len(index), len(index)))
        for source, dist in self.transitions.items():
            row = start if source is None else transfer[index[source]]
            for target, p in zip(dist.outcomes, dist.probs):
                if target != END:
                    row[index[target]] += p
        return np.linalg.solve((np.eye(len(index)) - transfer).T, start)

    def _tokens_per_visit(self):
        """Mean number of tokens each state emits per visit, in ``self.states`` order."""
        return np.array([sum(p * len(phrase) for phrase, p in
                             zip(self.classes[state.word_class].outcomes,
                                 self.classes[state.word_class].probs))
                         for state in self.states.values()])

    def expected_tokens_per_sentence(self):
        """Mean sentence length in tokens, ``end_token`` (if any) included (float)."""
        return (float(self._expected_visits() @ self._tokens_per_visit())
                + (self.end_token is not None))

    def entropy_per_token(self, predict_first=True):
        """Exact entropy rate in nats per predicted token (float): the lowest achievable mean
        loss of a model trained on this language's sentences.

        Sentences are i.i.d. and every token sequence has a single derivation, so the rate is
        (expected entropy of all choices made in a sentence) / (expected tokens per sentence).
        Each visit to a state makes two choices (its entry, then its successor); the start
        makes one; the later tokens of a phrase and ``end_token`` are certain and add tokens
        but no entropy.

        ``predict_first``: True (default) counts every token of a sentence, its first included
        (a model that sees a begin-of-sentence token, or the previous sentence's end, before
        it). False leaves the first token out of both sums: the model is given it and
        predicts the rest, as in sentence batches without a begin-of-sentence token
        (``SentenceBatcher`` never predicts a sentence's first id).
        """
        visits = self._expected_visits()
        per_visit = np.array([self.classes[state.word_class].entropy()
                              + self.transitions[name].entropy()
                              for name, state in self.states.items()])
        per_sentence = self.transitions[None].entropy() + float(visits @ per_visit)
        tokens = self.expected_tokens_per_sentence()
        if not predict_first:
            # The first token picks the first state and its class's entry (unambiguity), so
            # it carries the start's entropy and that of the first class's entry.
            start = self.transitions[None]
            first = start.entropy() + sum(
                p * self.classes[self.states[name].word_class].entropy()
                for name, p in zip(start.outcomes, start.probs))
            per_sentence, tokens = per_sentence - first, tokens - 1.0
            if tokens <= 0.0:
                raise ValueError("predict_first=False leaves no token to predict: every "
                                 "sentence of this grammar is a single token")
        return per_sentence / tokens


def hyphenated_pairs(left, right, sep="-"):
    """Class entries for two words joined into one token, such as "boat-lantern": a dict
    {left word + sep + right word: p_left * p_right} over every pair of the two
    {word: probability} tables (each summing to 1, so the result does too)."""
    for name, table in (("left", left), ("right", right)):
        if not isinstance(table, dict) or not table:
            raise ValueError(f"{name} must be a non-empty dict of word probabilities, "
                             f"got {table!r}")
    if not isinstance(sep, str):
        raise TypeError(f"sep must be a str, got {type(sep).__name__}")
    return {f"{a}{sep}{b}": pa * pb for a, pa in left.items() for b, pb in right.items()}


def _where(state):
    return "the start of a sentence" if state is None else f"state {state!r}"


NONSENSE_GRAMMAR = Grammar(
    classes={
        "DET": {"the": .5, "a": .3, "every": .1, "some": .1},
        "ADJ": {"blorpy": .3, "snazzle": .25, "grindy": .2, "fuzzle": .15, "tovy": .1},
        "NOUN": {"wug": .25, "blick": .2, "fep": .15, "zorb": .12, "kiki": .1, "bouba": .08,
                 "toma": .06, "plim": .04},
        "VERB_T": {"daxes": .3, "florps": .25, "zibs": .2, "mimbles": .15, "glorks": .1},
        "VERB_I": {"snorps": .4, "wibbles": .3, "tazzes": .2, "plinks": .1},
        "ADV": {"quibly": .5, "snarfly": .3, "dwindly": .2},
        "PREP": {"on": .35, "under": .25, "near": .2, "with": .2},
        "CONJ": {"and": .6, "but": .3, "so": .1},
        "PUNCT": {".": .7, "!": .15, "?": .15},
    },
    states={
        "subj_det": State("DET", {"subj_adj": .3, "subj_noun": .7}),
        "subj_adj": State("ADJ", {"subj_adj": .2, "subj_noun": .8}),
        "subj_noun": State("NOUN", {"verb_t": .5, "verb_i": .3, "pre_adv": .2}),
        "pre_adv": State("ADV", {"verb_t": .6, "verb_i": .4}),
        "verb_t": State("VERB_T", {"obj_det": 1.0}),
        "obj_det": State("DET", {"obj_adj": .25, "obj_noun": .75}),
        "obj_adj": State("ADJ", {"obj_adj": .2, "obj_noun": .8}),
        "obj_noun": State("NOUN", {"prep": .25, "conj": .15, "punct": .6}),
        "verb_i": State("VERB_I", {"post_adv": .3, "prep": .3, "conj": .1, "punct": .3}),
        "post_adv": State("ADV", {"prep": .3, "conj": .1, "punct": .6}),
        "prep": State("PREP", {"pp_det": 1.0}),
        "pp_det": State("DET", {"pp_adj": .2, "pp_noun": .8}),
        "pp_adj": State("ADJ", {"pp_adj": .2, "pp_noun": .8}),
        "pp_noun": State("NOUN", {"prep": .15, "conj": .15, "punct": .7}),
        "conj": State("CONJ", {"subj_det": 1.0}),
        "punct": State("PUNCT", {END: 1.0}),
    },
    start={"subj_det": 1.0},
)
"""The grammar tabulated in the module docstring."""


def _normalised(weights):
    """{word: weight} -> {word: probability}, as theano_lstm's ``Sampler`` normalises them."""
    total = sum(weights.values())
    return {word: weight / total for word, weight in weights.items()}


def _uniform(words):
    return {word: 1.0 / len(words) for word in words}


def theano_lstm_grammar(split_phrases=True):
    """The nonsense language of theano_lstm's tutorial notebook, written down as a Grammar.

    Its ``generate_nonsense`` builds a sentence from clauses, each: a stop word, a noun, an
    adverb with probability 0.3 (and then a second one with 0.3), a verb, then with 0.2 a
    noun (joined to a second noun by "-" with 0.1 of that: "boat-lantern" is one token), then
    a punctuation mark; only "." ends the sentence, any other mark starts a new clause. The
    samplers' weights are normalised as its ``Sampler`` does (punctuation: . 0.49, "," 0.5,
    ; 0.03, ? 0.05, ! 0.05 out of 1.12; uniform nouns, verbs and adverbs). Sentences have
    no end token (the final "." is their last token). Not modelled: the notebook's cap that
    ends a sentence with "." glued to its last word once it passes 500 characters (it needs
    about 17 clauses, probability about 6e-5 per sentence).

    ``split_phrases``: True (default) reads the adverb "in jest" as the notebook's vocabulary
    does (``line.split(" ")``): two tokens "in" and "jest", "in" being a stop word too; the
    grammar's text then round-trips through ``WordVocab.build(text, tokenizer=str.split,
    eos=None)``. False keeps "in jest" as one token (``tokenizer=None``: use
    ``sample_tokens`` and ``vocab.encode_tokens``).
    """
    nouns = _uniform(["cat", "broom", "boat", "dog", "car", "wrangler", "mexico", "lantern",
                      "book", "paper", "joke", "calendar", "ship", "event"])
    in_jest = ("in", "jest") if split_phrases else "in jest"
    punctuation = _normalised({".": 0.49, ",": 0.5, ";": 0.03, "?": 0.05, "!": 0.05})
    p_end = punctuation.pop(".")
    p_object, p_pair = 0.2, 0.1
    after_verb = {"object": p_object * (1 - p_pair), "pair": p_object * p_pair,
                  "full_stop": (1 - p_object) * p_end, "mark": (1 - p_object) * (1 - p_end)}
    return Grammar(
        classes={
            "STOP": _normalised({"the": 10, "from": 5, "a": 9, "they": 3, "he": 3, "it": 2.5,
                                 "she": 2.7, "in": 4.5}),
            "NOUN": nouns,
            "PAIR": hyphenated_pairs(nouns, nouns),
            "VERB": _uniform(["ran", "stole", "carried", "could", "would", "do", "can", "carry",
                              "catapult", "jump", "duck"]),
            "ADVERB": _uniform(["rapidly", "calmly", "cooly", in_jest, "fantastically",
                                "angrily", "dazily"]),
            "FULL_STOP": {".": 1.0},
            "MARK": _normalised(punctuation),
        },
        states={
            "stop": State("STOP", {"subject": 1.0}),
            "subject": State("NOUN", {"adverb": 0.3, "verb": 0.7}),
            "adverb": State("ADVERB", {"adverb2": 0.3, "verb": 0.7}),
            "adverb2": State("ADVERB", {"verb": 1.0}),
            "verb": State("VERB", after_verb),
            "object": State("NOUN", {"full_stop": p_end, "mark": 1 - p_end}),
            "pair": State("PAIR", {"full_stop": p_end, "mark": 1 - p_end}),
            "full_stop": State("FULL_STOP", {END: 1.0}),
            "mark": State("MARK", {"stop": 1.0}),
        },
        start={"stop": 1.0},
        end_token=None,
        tokenizer=str.split if split_phrases else None,
    )


THEANO_LSTM_GRAMMAR = theano_lstm_grammar()
"""theano_lstm's nonsense language (``theano_lstm_grammar()``): 2.3580 nats per predicted token
as its notebook trains (``entropy_per_token(predict_first=False)``)."""


class SyntheticLanguage:
    """Seeded sampler for a ``Grammar`` (by default the nonsense language above).

    Args:
        seed: int seeding the generator used when a method is given no ``rng``/``seed``.
        grammar: the ``Grammar`` to sample; it is fixed, only sampling depends on seeds.
    """

    def __init__(self, seed=0, grammar=NONSENSE_GRAMMAR):
        if not isinstance(grammar, Grammar):
            raise TypeError(f"grammar must be a Grammar, got {type(grammar).__name__}")
        self.grammar = grammar
        self._rng = np.random.default_rng(check_int(seed, "seed", 0))

    def _generator(self, rng, name):
        """None -> this language's own generator; int -> a fresh one; Generator -> itself."""
        if rng is None:
            return self._rng
        if isinstance(rng, np.random.Generator):
            return rng
        return np.random.default_rng(check_int(rng, name, 0))

    def _sentences(self, n_sentences, rng, name):
        n_sentences = check_int(n_sentences, "n_sentences", 0)
        generator = self._generator(rng, name)
        return [self.grammar.sample_sentence(generator) for _ in range(n_sentences)]

    def sample_sentences(self, n_sentences, rng=None):
        """``n_sentences`` sentences, each a list of str tokens (ending in the grammar's
        ``end_token`` if it has one); ``rng`` as in ``sample_tokens``, which gives the same
        tokens for the same seed."""
        return [sentence for sentence, _ in self._sentences(n_sentences, rng, "rng")]

    def sample_tokens(self, n_sentences, rng=None, return_log_prob=False):
        """Tokens of ``n_sentences`` sentences, each closed by the grammar's ``end_token``.

        ``rng``: None, an int seed or a ``np.random.Generator``. Returns a list of str, or
        ``(tokens, log_prob)`` with ``return_log_prob``, the log-probability being the sum of
        the log-probabilities of the choices made while sampling.
        """
        sentences = self._sentences(n_sentences, rng, "rng")
        tokens = [token for sentence, _ in sentences for token in sentence]
        if return_log_prob:
            return tokens, sum(log_prob for _, log_prob in sentences)
        return tokens

    def generate_text(self, n_sentences, seed=None):
        """``n_sentences`` sentences as text: one per line, tokens separated by spaces (str).

        ``seed``: None, an int or a ``np.random.Generator``, as ``rng`` in ``sample_tokens``;
        the same seed gives the same tokens from both. The end token (if any) is the line
        break. Read back with the grammar's tokenizer (``WordVocab.build(text,
        tokenizer=..., eos=grammar.end_token)``); a grammar with ``tokenizer=None`` has tokens
        that text cannot keep apart, and raises ValueError.
        """
        if self.grammar.tokenizer is None:
            raise ValueError("this grammar's tokens are not read from text (tokenizer=None): "
                             "use sample_tokens or sample_sentences with vocab.encode_tokens")
        sentences = self._sentences(n_sentences, seed, "seed")
        cut = -1 if self.grammar.end_token is not None else None
        return "".join(" ".join(sentence[:cut]) + "\n" for sentence, _ in sentences)

    def entropy_per_token(self):
        """Exact entropy rate, nats per token (see ``Grammar.entropy_per_token``)."""
        return self.grammar.entropy_per_token()

    def log_prob(self, tokens):
        """Exact log-probability of ``tokens`` (see ``Grammar.log_prob``)."""
        return self.grammar.log_prob(tokens)

    def word_types(self):
        """All tokens of the language (list of str)."""
        return self.grammar.word_types()
