"""The language-model application built on fastrnn's layers: the model, its trainer, text
loading and vocabularies, checkpoints, sampling and the ``fastrnn`` command line.

The kernel library (cells, functional, layers, optim, threads) does not import this package;
this package imports the library. ``generation`` (and with it the compiled sampling kernel) is
imported on first use, not here.
"""
from .checkpoint import CheckpointError
from .model import LanguageModel
from .text import (CharVocab, SentenceBatcher, StreamBatcher, SyntheticLanguage, WordVocab,
                   load_text, load_vocab, train_val_split)
from .train import Trainer

__all__ = ["LanguageModel", "Trainer", "CheckpointError", "CharVocab", "WordVocab", "load_vocab",
           "load_text", "train_val_split", "StreamBatcher", "SentenceBatcher", "SyntheticLanguage"]
