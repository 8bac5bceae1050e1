"""Affine map over the last axis, optionally sharing its weight with an Embedding."""

import numpy as np

from .._device import to_device
from .._matmul import add_column_sums, matmul
from .._validation import as_float_dtype, check_array, check_int
from .base import Layer, backward_method, forward_method


class Linear(Layer):
    """``y = x @ weight.T + bias``: (..., in_features) -> (..., out_features).

    Parameters (PyTorch names and init): ``weight`` (out_features, in_features) and ``bias``
    (out_features,), both U(-1/sqrt(in_features), 1/sqrt(in_features)).

    Tied weights (an output projection reusing the input embedding, as in Press & Wolf 2017):
    ``Linear.tied_to(embedding)`` or ``Linear(D, V, weight_owner=embedding)``. The layer then
    reads ``embedding.params["weight"]`` (V, D) and accumulates into ``embedding.grads["weight"]``
    (the very same arrays, available here as ``self.weight`` / ``self.weight_grad``), so the
    gradient from both uses adds up in one place. The shared weight is deliberately *not*
    listed in this layer's ``params``/``grads``: only ``bias`` is, so an optimizer built from
    every layer's params updates the shared matrix exactly once, ``zero_grad`` on the embedding
    clears it, and it is saved once, under the embedding's state_dict.

    ``device="cuda"`` (or ``.to("cuda")``) keeps the arrays on the GPU (CuPy). A tied layer
    reads the owner's arrays wherever they are: move the owner too.
    """

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, seed=None,
                 weight_owner=None, device="cpu"):
        super().__init__()
        self.in_features = check_int(in_features, "in_features", 1)
        self.out_features = check_int(out_features, "out_features", 1)
        self.dtype = as_float_dtype(dtype)

        rng = np.random.default_rng(seed)
        bound = 1.0 / np.sqrt(self.in_features)
        if weight_owner is None:
            weight = self._uniform(rng, bound, (self.out_features, self.in_features))
            self.params["weight"] = weight
            self.grads["weight"] = np.zeros_like(weight)
            self._weight_owner = self
        else:
            self._borrow_weight(weight_owner)
            self._weight_owner = weight_owner
        if bias:
            self.params["bias"] = self._uniform(rng, bound, (self.out_features,))
            self.grads["bias"] = np.zeros_like(self.params["bias"])
        self.to(device)

    @property
    def _lock(self):
        # Both layers of a tied pair accumulate into the owner's weight gradient: the owner's
        # lock serialises them, so two threads never add into that array at the same time.
        owner = self._weight_owner
        return owner._lock if owner is not self and isinstance(owner, Layer) else self._own_lock

    # The arrays are looked up on each use, so they follow ``to(device)`` (here or, for a
    # tied weight, on the owner).
    @property
    def weight(self):
        return self._weight_owner.params["weight"]

    @property
    def weight_grad(self):
        return self._weight_owner.grads["weight"]

    @property
    def bias(self):
        return self.params.get("bias")

    @classmethod
    def tied_to(cls, embedding, bias=True, seed=None):
        """Output projection (..., D) -> (..., V) sharing ``embedding``'s (V, D) weight and grad."""
        num_embeddings, embedding_dim = embedding.params["weight"].shape
        return cls(embedding_dim, num_embeddings, bias=bias, dtype=embedding.params["weight"].dtype,
                   seed=seed, weight_owner=embedding, device=getattr(embedding, "device", "cpu"))

    def _uniform(self, rng, bound, shape):
        return rng.uniform(-bound, bound, shape).astype(self.dtype)

    def _borrow_weight(self, owner):
        weight, grad = owner.params.get("weight"), owner.grads.get("weight")
        expected = (self.out_features, self.in_features)
        if weight is None or grad is None:
            raise ValueError("weight_owner must be a layer with params['weight'] and grads['weight']")
        if weight.shape != expected or grad.shape != expected:
            raise ValueError(
                f"weight_owner's weight must have shape (out_features, in_features) = {expected}, "
                f"got {weight.shape}")
        if weight.dtype != self.dtype:
            raise TypeError(f"weight_owner's weight must have dtype {self.dtype}, got {weight.dtype}")
        return weight, grad

    @forward_method
    def forward(self, x):
        """x: (..., in_features) in the layer dtype. Returns (..., out_features)."""
        x = to_device(x, self.device)
        x = check_array(x, "x", dtype=self.dtype)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must have shape (..., {self.in_features}), got {x.shape}")
        leading_shape = x.shape[:-1]
        # One GEMM over all leading positions (e.g. every time step of every sequence).
        x2d = x.reshape(-1, self.in_features)
        self._save_for_backward((x2d, leading_shape))
        y = matmul(x2d, self.weight, trans_b=True, bias=self.bias)
        return y.reshape(leading_shape + (self.out_features,))

    @backward_method
    def backward(self, dy):
        """dy: (..., out_features), for the most recent pending forward (see base.Layer).
        Accumulates dW = dy^T x and db = sum(dy); returns dx (..., in)."""
        x2d, leading_shape = self._saved_for_backward()
        dy = to_device(dy, self.device)
        dy = check_array(dy, "dy", dtype=self.dtype, shape=leading_shape + (self.out_features,))
        dy2d = dy.reshape(-1, self.out_features)
        matmul(dy2d, x2d, trans_a=True, out=self.weight_grad, beta=1.0)
        if self.bias is not None:
            add_column_sums(dy2d, self.grads["bias"])
        dx = matmul(dy2d, self.weight)
        return dx.reshape(leading_shape + (self.in_features,))
