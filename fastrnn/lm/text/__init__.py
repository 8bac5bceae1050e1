"""Text for language models: vocabularies, corpora and batchers, and a synthetic language."""
from .corpus import (SentenceBatcher, StreamBatcher, load_text, split_sentences, text_to_sentences,
                     train_val_split)
from .synthetic import (END, NONSENSE_GRAMMAR, THEANO_LSTM_GRAMMAR, Grammar, State,
                        SyntheticLanguage, hyphenated_pairs, theano_lstm_grammar)
from .vocab import (END_OF_SENTENCE, CharVocab, Vocab, WordVocab, load_vocab, tokenize_words,
                    vocab_from_dict)

__all__ = [
    "CharVocab", "WordVocab", "Vocab", "vocab_from_dict", "load_vocab", "tokenize_words",
    "END_OF_SENTENCE",
    "load_text", "train_val_split", "split_sentences", "text_to_sentences", "StreamBatcher",
    "SentenceBatcher",
    "SyntheticLanguage", "Grammar", "State", "END", "NONSENSE_GRAMMAR", "THEANO_LSTM_GRAMMAR",
    "theano_lstm_grammar", "hyphenated_pairs",
]
