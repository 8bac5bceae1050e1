"""fastrnn: compiled RNN/GRU/LSTM kernels with a PyTorch-compatible NumPy API."""
__version__ = "0.1.0"

from . import functional
from .layers.recurrent import GRU, LSTM, RNN
from .threads import get_num_threads, set_num_threads, show_config

__all__ = ["RNN", "GRU", "LSTM", "functional", "get_num_threads", "set_num_threads",
           "show_config", "__version__"]
