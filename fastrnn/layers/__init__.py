"""Layers with explicit forward/backward over numpy arrays (see base.Layer for the contract)."""
from .base import Layer, Module, NoPendingForwardError
from .dropout import Dropout
from .embedding import Embedding, OneHot
from .linear import Linear
from .loss import SoftmaxCrossEntropy
from .recurrent import GRU, LSTM, RNN, RecurrentLayer

__all__ = ["Layer", "Module", "NoPendingForwardError", "Dropout", "Embedding", "OneHot", "Linear", "SoftmaxCrossEntropy", "RNN", "GRU",
           "LSTM", "RecurrentLayer"]
