"""fastrnn: compiled RNN/GRU/LSTM kernels with a PyTorch-compatible NumPy API."""
__version__ = "0.1.0"

from . import functional, optim
from .layers import GRU, LSTM, RNN, Dropout, Embedding, Linear, SoftmaxCrossEntropy
from .text import (CharVocab, SentenceBatcher, StreamBatcher, SyntheticLanguage, WordVocab,
                   load_text, load_vocab, train_val_split)
from .threads import get_num_threads, set_num_threads, show_config
from .lm import LanguageModel
from .train import Trainer
from .checkpoint import CheckpointError

__all__ = ["RNN", "GRU", "LSTM", "Embedding", "Linear", "Dropout", "SoftmaxCrossEntropy",
           "CharVocab", "WordVocab", "load_vocab", "load_text", "train_val_split",
           "StreamBatcher", "SentenceBatcher", "SyntheticLanguage", "functional", "optim",
           "LanguageModel", "Trainer", "CheckpointError",
           "get_num_threads", "set_num_threads", "show_config", "__version__"]
