"""A built-in nonsense language whose exact entropy is known: the floor for any model's loss.

Sentences come from a probabilistic finite-state grammar. Each state emits one word from its
word class (every word belongs to exactly one class, with fixed probabilities within the
class), then moves to a next state or ends the sentence. The states that may follow any one
state emit from *different* classes, so each word determines the next state: every token
sequence has at most one derivation, and the next-token distribution given a prefix depends
only on the state reached. That makes the exact log-probability of a text, and the exact
entropy rate of the language, computable.

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
        classes: {class name: {word: probability}}; a word may belong to one class only.
        states: {state name: State}; every state must be reachable and able to reach END.
        start: {state name: probability} for a sentence's first state.
    """

    def __init__(self, classes, states, start):
        for name, table in (("classes", classes), ("states", states)):
            if not isinstance(table, dict) or not table:
                raise ValueError(f"{name} must be a non-empty dict, got {table!r}")
        self.classes = {name: _Categorical(words, f"classes[{name!r}]")
                        for name, words in classes.items()}
        self._class_of = {}
        for name, words in self.classes.items():
            for word in words.outcomes:
                _check_word(word)
                if word in self._class_of:
                    raise ValueError(f"word {word!r} is in both classes {self._class_of[word]!r} "
                                     f"and {name!r}; every word must have one class")
                self._class_of[word] = name
        self._emit_log_prob = {word: lp for words in self.classes.values()
                               for word, lp in zip(words.outcomes, words.log_probs)}
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
        self._successor = {source: self._successors_by_class(source, dist)
                           for source, dist in self.transitions.items()}
        self._check_connected()

    def _successors_by_class(self, source, dist):
        """{class: (next state, log-prob)} for one source; the class must pick the state."""
        by_class = {}
        for target, lp in zip(dist.outcomes, dist.log_probs):
            if target == END:
                continue
            if target not in self.states:
                raise ValueError(f"{_where(source)} leads to unknown state {target!r}")
            word_class = self.states[target].word_class
            if word_class in by_class:
                raise ValueError(
                    f"{_where(source)} leads to states {by_class[word_class][0]!r} and {target!r}, "
                    f"which both emit class {word_class!r}: the grammar would be ambiguous")
            by_class[word_class] = (target, lp)
        return by_class

    def _check_connected(self):
        """Every state reachable from the start, and END reachable from every state."""
        reached, frontier = set(), [None]
        while frontier:
            for target, _ in self._successor[frontier.pop()].values():
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
                       if any(target in ending for target, _ in self._successor[name].values())}
            changed = len(ending) != before
        stuck = set(self.states) - ending
        if stuck:
            raise ValueError(
                f"states {sorted(stuck)} can never reach {END}: sentences would not end")

    def word_types(self):
        """Every token the language uses, ``END_OF_SENTENCE`` last (list of str)."""
        return list(self._class_of) + [END_OF_SENTENCE]

    def sample_sentence(self, rng):
        """One sentence as (list of tokens ending in ``END_OF_SENTENCE``, its log-probability)."""
        state, log_prob = self.transitions[None].sample(rng)
        tokens = []
        while state != END:
            word, word_lp = self.classes[self.states[state].word_class].sample(rng)
            tokens.append(word)
            next_state, step_lp = self.transitions[state].sample(rng)
            log_prob += word_lp + step_lp
            state = next_state
        tokens.append(END_OF_SENTENCE)
        return tokens, log_prob

    def log_prob(self, tokens):
        """Exact natural-log probability of a token sequence (list of str), as a float.

        ``tokens`` must start at a sentence start and may stop anywhere (the result is then the
        probability of that prefix). Raises ValueError at the first token the grammar cannot
        produce there.
        """
        if isinstance(tokens, str) or not hasattr(tokens, "__iter__"):
            raise TypeError(f"tokens must be a list of str, got {type(tokens).__name__}")
        state, total = None, 0.0
        for i, token in enumerate(tokens):
            if token == END_OF_SENTENCE and state is not None:
                dist = self.transitions[state]
                if END not in dist.outcomes:
                    raise ValueError(f"tokens[{i}] = {token!r}: a sentence cannot end after "
                                     f"state {state!r}")
                state, total = None, total + dist.log_probs[dist.outcomes.index(END)]
                continue
            successor = self._successor[state].get(self._class_of.get(token))
            if successor is None:
                allowed = sorted(self._successor[state])
                if state is not None and END in self.transitions[state].outcomes:
                    allowed.append(repr(END_OF_SENTENCE))
                raise ValueError(f"tokens[{i}] = {token!r} cannot follow {_where(state)}; "
                                 f"expected a word of {allowed}")
            state, step_lp = successor
            total += step_lp + self._emit_log_prob[token]
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

    def expected_tokens_per_sentence(self):
        """Mean sentence length in tokens, ``END_OF_SENTENCE`` included (float)."""
        return float(self._expected_visits().sum()) + 1.0

    def entropy_per_token(self):
        """Exact entropy rate in nats per token (float): the lowest achievable mean loss.

        Sentences are i.i.d. and every token sequence has a single derivation, so the rate is
        (expected entropy of all choices made in a sentence) / (expected tokens per sentence).
        Each visit to a state makes two choices (its word, then its successor); the start
        makes one; ``END_OF_SENTENCE`` is certain and adds a token but no entropy.
        """
        visits = self._expected_visits()
        per_visit = np.array([self.classes[state.word_class].entropy()
                              + self.transitions[name].entropy()
                              for name, state in self.states.items()])
        per_sentence = self.transitions[None].entropy() + float(visits @ per_visit)
        return per_sentence / (float(visits.sum()) + 1.0)


def _where(state):
    return "the start of a sentence" if state is None else f"state {state!r}"


def _check_word(word):
    # A word must come back unchanged from WordVocab's tokenizer, or a vocabulary built from
    # generated text would not have exactly the language's tokens.
    if not isinstance(word, str) or tokenize_words(word, eos=None) != [word]:
        raise ValueError(f"word {word!r} must be a single WordVocab token (a word or one "
                         "punctuation character)")


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

    def sample_tokens(self, n_sentences, rng=None, return_log_prob=False):
        """Tokens of ``n_sentences`` sentences, each closed by ``END_OF_SENTENCE``.

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
        the same seed gives the same tokens from both.
        """
        sentences = self._sentences(n_sentences, seed, "seed")
        return "".join(" ".join(sentence[:-1]) + "\n" for sentence, _ in sentences)

    def entropy_per_token(self):
        """Exact entropy rate, nats per token (see ``Grammar.entropy_per_token``)."""
        return self.grammar.entropy_per_token()

    def log_prob(self, tokens):
        """Exact log-probability of ``tokens`` (see ``Grammar.log_prob``)."""
        return self.grammar.log_prob(tokens)

    def word_types(self):
        """All tokens of the language (list of str)."""
        return self.grammar.word_types()
