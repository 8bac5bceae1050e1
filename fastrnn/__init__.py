"""fastrnn: compiled RNN/GRU/LSTM kernels with a PyTorch-compatible NumPy API."""
from ._version import __version__

from . import functional, optim
from ._gpu import gpu_available
from .layers import (GRU, LSTM, RNN, Dropout, Embedding, Linear, NoPendingForwardError,
                     SoftmaxCrossEntropy)
from .lm import (CharVocab, CheckpointError, LanguageModel, SentenceBatcher, StreamBatcher,
                 SyntheticLanguage, Trainer, WordVocab, load_text, load_vocab, train_val_split)
from .threads import get_num_threads, set_num_threads, show_config

__all__ = ["RNN", "GRU", "LSTM", "Embedding", "Linear", "Dropout", "SoftmaxCrossEntropy",
           "NoPendingForwardError", "LanguageModel", "Trainer", "CheckpointError",
           "CharVocab", "WordVocab", "load_vocab", "load_text", "train_val_split",
           "StreamBatcher", "SentenceBatcher", "SyntheticLanguage", "functional", "optim",
           "get_num_threads", "set_num_threads", "show_config", "gpu_available", "__version__"]
