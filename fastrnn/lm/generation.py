"""Autoregressive text generation with a compiled per-token loop.

    tokens, lengths, state = generate_tokens("lstm", layers, embedding, out_weight, out_bias,
                                             prime, n_tokens=200, temperature=0.8, top_k=20,
                                             seed=0)

Everything per token (embedding lookup, every layer's cell, output layer, softmax with
temperature, banned ids, top-k / top-p, the draw, feeding the token back) runs in
fastrnn/_cpu/generate.pyx without the GIL. This module checks the arguments and picks how
the kernel uses the threads.
"""
import numbers

import numpy as np

from .. import threads
from .._cpu import generate as _kernel
from .._validation import as_float_dtype, check_array, check_int, check_token_ids
from ..cells import get_cell

# Layer 0's input gates come from a precomputed (V, G*H) table when it is at most this big and
# the call consumes enough tokens to pay for building it; otherwise they are projected per token.
TABLE_MAX_BYTES = 32 << 20
# Up to this many batch rows per thread the threads split the hidden units (each keeps its
# slice of the weights in cache); above it they split the batch.
ROW_SPLIT_MAX_ROWS_PER_THREAD = 4


WEIGHT_FORMATS = ("float32", "bfloat16")


def generate_tokens(cell, layers, embedding, out_weight, out_bias, prime, n_tokens, state=None,
                    temperature=1.0, top_k=0, top_p=1.0, greedy=False, stop_id=None,
                    banned_ids=(), seed=None, min_length=0, weights="float32"):
    """Generate ``n_tokens`` tokens for every row of ``prime`` with a stacked unidirectional RNN.

    cell: "lstm", "gru", "rnn_tanh", "rnn_relu" or "rnn_identity".
    layers: list over layers of ``(w_ih (G*H_l, in_l), w_hh (G*H_l, H_l), b_ih (G*H_l,) or
    None, b_hh (G*H_l,) or None)`` in PyTorch's layout; ``in_l`` is E for layer 0 and
    H_{l-1} above. The layers' sizes H_l may differ.
    embedding (V, E), or None for one-hot inputs (layer 0's w_ih is then (G*H_0, V): a token's
    input gates are a column of it); out_weight (V, H_last); out_bias (V,) or None. One
    float dtype for all (float32 or float64).
    prime: int array (B, P), P >= 1, ids in [0, V). Each row is fed token by token; the
    distribution after its last token gives the first generated token.
    state: None (zeros), h, or (h, c) for the LSTM: the state before the prime, in the
    format of :class:`fastrnn.layers.RecurrentLayer`: h an (L, B, H) array when every layer
    has H units, else a list over layers of (1, B, H_l) arrays.

    Returns ``(tokens, lengths, final_state)``: tokens (B, n_tokens) int64, lengths (B,)
    int64. A row stops at ``stop_id`` (included in its tokens and counted in its length);
    later positions hold -1. final_state (shaped like ``state``) is the state after each
    row's last consumed token: the prime and the generated tokens except the last one
    (the stop token, or the n_tokens-th), so ``generate_tokens(..., prime=last_tokens,
    state=final_state)`` continues exactly where this call ended.

    Sampling: logits / temperature (> 0); banned_ids get probability zero; top_k > 0 keeps
    the k most likely; top_p < 1 keeps the smallest most-likely set whose probability
    reaches top_p (after top-k); then one draw. greedy=True takes the argmax of the allowed
    logits instead (temperature, top_k, top_p and seed then have no effect). The draws use
    ``np.random.default_rng(seed).random((n_tokens, B))``, so a seed gives the same tokens
    whatever the thread count.

    min_length: an int >= 0 (needs ``stop_id`` when > 0). While fewer than ``min_length``
    tokens have been generated in a row, ``stop_id`` is suppressed: its probability is set to
    zero and the others are renormalised (exactly as a banned id; greedy takes the best other
    token). So a row that stops has at least ``min_length`` tokens before its stop token
    (003's "sentences of at least N words"). Suppressing is not rejection: the rows are drawn
    from the model conditioned step by step, not from whole samples filtered by length.

    weights: "float32" (default: the model's own weights, exact) or "bfloat16", an opt-in
    for float32 models: the recurrent and output layers multiply by a copy of their weights
    rounded to bfloat16 (8 significant bits), with float32 sums and states, which halves the
    bytes each token reads (faster at small batch, where generation is bound by moving the
    weights; each row is multiplied on its own, so with more rows it gains less: measured on
    a 2x256 char LSTM, 2 threads, 1.7x faster than float32 at batch 1, 1.3x at batch 2, the
    same at 4 to 8, 0.87x at 16, 0.71x at 64). Logits then differ from the float32 ones by
    about 1e-2 relative, so sampled
    text can differ; README "Results" gives measured figures. The threads always split the
    hidden units (``split`` "rows") with bfloat16 weights.
    """
    return _generate_tokens(cell, layers, embedding, out_weight, out_bias, prime, n_tokens,
                            state, temperature, top_k, top_p, greedy, stop_id, banned_ids, seed,
                            min_length, weights=weights)


def _generate_tokens(cell, layers, embedding, out_weight, out_bias, prime, n_tokens, state=None,
                     temperature=1.0, top_k=0, top_p=1.0, greedy=False, stop_id=None,
                     banned_ids=(), seed=None, min_length=0, *, layer0_table=None, split=None,
                     weights="float32"):
    """generate_tokens, with its automatic choices open to tests and benchmarks:
    ``layer0_table`` (True/False: build layer 0's (V, G*H) input-gate table or project per
    token) and ``split`` ("rows"/"batch": how the threads share the work)."""
    spec = get_cell(cell)
    G = spec.gates
    one_hot = embedding is None
    if one_hot:   # V and the dtype from the output layer; E = V
        out_weight = np.asarray(out_weight)
        dtype = as_float_dtype(out_weight.dtype, "out_weight.dtype")
        out_weight = check_array(out_weight, "out_weight", ndim=2, dtype=dtype)
        V = E = out_weight.shape[0]
        if V < 1:
            raise ValueError(f"out_weight must have shape (V, H) with V >= 1, got {out_weight.shape}")
    else:
        embedding = np.asarray(embedding)
        dtype = as_float_dtype(embedding.dtype, "embedding.dtype")
        embedding = check_array(embedding, "embedding", ndim=2, dtype=dtype)
        V, E = embedding.shape
        if V < 1 or E < 1:
            raise ValueError(f"embedding must have shape (V, E) with V, E >= 1, got {embedding.shape}")

    if not isinstance(layers, (list, tuple)) or len(layers) == 0:
        raise ValueError("layers must be a non-empty list of (w_ih, w_hh, b_ih, b_hh) tuples")
    w_ih_list, w_hh_list, b_ih_list, b_hh_list = [], [], [], []
    hidden_sizes = []
    for l, layer in enumerate(layers):
        if not isinstance(layer, (list, tuple)) or len(layer) != 4:
            raise ValueError(f"layers[{l}] must be a tuple (w_ih, w_hh, b_ih, b_hh)")
        w_ih, w_hh, b_ih, b_hh = layer
        w_hh = check_array(w_hh, f"layers[{l}] w_hh", ndim=2, dtype=dtype)
        H = w_hh.shape[1]
        if H < 1:
            raise ValueError(f"layers[{l}] w_hh must have H >= 1 columns, got {w_hh.shape}")
        if w_hh.shape != (G * H, H):
            raise ValueError(f"layers[{l}] w_hh must have shape ({G * H}, {H}) for a {spec.name} "
                             f"cell with hidden size {H}, got {w_hh.shape}")
        in_dim = E if l == 0 else hidden_sizes[-1]
        hidden_sizes.append(H)
        w_ih = check_array(w_ih, f"layers[{l}] w_ih", ndim=2, shape=(G * H, in_dim), dtype=dtype)
        b_ih = (np.zeros(G * H, dtype) if b_ih is None else
                check_array(b_ih, f"layers[{l}] b_ih", ndim=1, shape=(G * H,), dtype=dtype))
        b_hh = (np.zeros(G * H, dtype) if b_hh is None else
                check_array(b_hh, f"layers[{l}] b_hh", ndim=1, shape=(G * H,), dtype=dtype))
        w_ih_list.append(w_ih)
        w_hh_list.append(w_hh)
        b_ih_list.append(b_ih)
        b_hh_list.append(b_hh)
    out_weight = check_array(out_weight, "out_weight", ndim=2, shape=(V, hidden_sizes[-1]),
                             dtype=dtype)
    out_bias = (np.zeros(V, dtype) if out_bias is None else
                check_array(out_bias, "out_bias", ndim=1, shape=(V,), dtype=dtype))

    if prime is None:
        raise ValueError("prime is required, got None")
    prime_arr = np.asarray(prime)
    if prime_arr.ndim != 2 or prime_arr.shape[0] < 1 or prime_arr.shape[1] < 1:
        raise ValueError(f"prime must be a 2-D (B, P) array of token ids with B, P >= 1, "
                         f"got shape {prime_arr.shape}")
    prime_arr = check_token_ids(prime_arr, "prime", V)
    B, P = prime_arr.shape
    n_tokens = check_int(n_tokens, "n_tokens", 1)

    h, c = _initial_state(spec, state, hidden_sizes, B, dtype)

    if not isinstance(greedy, (bool, np.bool_)):
        raise TypeError(f"greedy must be a bool, got {type(greedy).__name__}")
    greedy = bool(greedy)
    if (isinstance(temperature, bool) or not isinstance(temperature, numbers.Real)
            or not np.isfinite(temperature) or temperature <= 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    top_k = check_int(top_k, "top_k", 0)
    if (isinstance(top_p, bool) or not isinstance(top_p, numbers.Real)
            or not (0 < top_p <= 1)):
        raise ValueError(f"top_p must be a number in (0, 1], got {top_p!r}")
    if stop_id is None:
        stop = -1
    else:
        if isinstance(stop_id, bool) or not isinstance(stop_id, (int, np.integer)):
            raise TypeError(f"stop_id must be an integer token id or None, got "
                            f"{type(stop_id).__name__}")
        if not 0 <= stop_id < V:
            raise ValueError(f"stop_id must be a token id in [0, {V}), got {stop_id}")
        stop = int(stop_id)
    banned = _banned_mask(banned_ids, V)
    min_length = check_int(min_length, "min_length", 0)
    if min_length > 0:
        if stop_id is None:
            raise ValueError(f"min_length={min_length} needs stop_id: the end token it "
                             "suppresses before min_length tokens")
        others_allowed = banned == 0
        others_allowed[stop] = False
        if not others_allowed.any():
            raise ValueError(f"min_length={min_length} suppresses stop_id {stop}, and "
                             "banned_ids ban every other token: no token could be drawn")

    if greedy:
        uniforms = None
    else:
        try:
            rng = np.random.default_rng(seed)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"seed must be None, an int or a numpy Generator/SeedSequence, "
                            f"got {seed!r}") from exc
        uniforms = rng.random((n_tokens, B))

    GH0 = G * hidden_sizes[0]
    if one_hot:
        # A one-hot input's gates are a column of W_ih plus b_ih: the table is W_ih^T + b_ih,
        # read by the kernel as for an embedding (never a (V, V) identity).
        table = np.ascontiguousarray(w_ih_list[0].T + b_ih_list[0], dtype=dtype)
    else:
        if layer0_table is None:
            consumed = B * (P + n_tokens - 1)
            use_table = (V * GH0 * dtype.itemsize <= TABLE_MAX_BYTES and V <= 4 * consumed)
        else:
            use_table = bool(layer0_table)
        table = None
        if use_table:
            # On one BLAS thread, as the loop: woken BLAS workers would spin beside it.
            with threads.blas_single_threaded():
                table = embedding @ w_ih_list[0].T
            table += b_ih_list[0]
            table = np.ascontiguousarray(table, dtype=dtype)

    nt = threads.get_num_threads()
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"weights must be one of {WEIGHT_FORMATS}, got {weights!r}")
    bf16 = weights == "bfloat16"
    if bf16 and dtype != np.float32:
        raise ValueError(f"weights='bfloat16' needs a float32 model, got {dtype}")
    if split is None:
        split_rows = bf16 or B <= ROW_SPLIT_MAX_ROWS_PER_THREAD * nt
    elif split in ("rows", "batch"):
        split_rows = split == "rows"
        if bf16 and not split_rows:
            raise ValueError("weights='bfloat16' runs with the rows split (split='rows')")
    else:
        raise ValueError(f"split must be None, 'rows' or 'batch', got {split!r}")

    with threads.blas_single_threaded():
        # The specialisation named, not found from the arguments: the embedding may be None.
        kernel = _kernel.generate_loop["float" if dtype == np.float32 else "double"]
        tokens, lengths = kernel(
            spec.kind, embedding, w_ih_list, w_hh_list, b_ih_list, b_hh_list, table,
            out_weight, out_bias, prime_arr, n_tokens, uniforms, h, c, float(temperature),
            top_k, float(top_p), greedy, stop, banned, nt, split_rows, min_length, bf16)
    h = _state_format(h, hidden_sizes)
    final_state = (h, _state_format(c, hidden_sizes)) if spec.has_cell_state else h
    return tokens, lengths, final_state


def _state_format(arrays, hidden_sizes):
    """The kernel's per-layer (B, H_l) arrays in the layers' state format: one (L, B, H) array
    when the sizes are equal, else a list of (1, B, H_l) arrays."""
    if len(set(hidden_sizes)) == 1:
        return np.stack(arrays)
    return [a[None] for a in arrays]


def _state_part(part, name, hidden_sizes, B, dtype):
    """Fresh C-contiguous (B, H_l) arrays, one per layer, of one of h, c (zeros for None):
    the kernel updates them in place."""
    L = len(hidden_sizes)
    if part is None:
        return [np.zeros((B, H), dtype) for H in hidden_sizes]
    if len(set(hidden_sizes)) == 1:
        if isinstance(part, (tuple, list)):
            raise ValueError(f"{name} must be one ({L}, {B}, {hidden_sizes[0]}) array, "
                             f"not a {type(part).__name__}")
        part = check_array(part, name, ndim=3, shape=(L, B, hidden_sizes[0]), dtype=dtype,
                           contiguous=False)
        return [np.array(part[l], dtype=dtype, order="C") for l in range(L)]
    if not isinstance(part, (tuple, list)) or len(part) != L:
        raise ValueError(f"{name} must be a list of {L} arrays shaped (1, B, H_l), one per "
                         f"layer (the hidden sizes {hidden_sizes} differ)")
    return [np.array(check_array(a, f"{name}[{l}]", ndim=3, shape=(1, B, H), dtype=dtype,
                                 contiguous=False)[0], dtype=dtype, order="C")
            for l, (a, H) in enumerate(zip(part, hidden_sizes))]


def _initial_state(spec, state, hidden_sizes, B, dtype):
    """``(h, c)`` as lists of fresh (B, H_l) arrays (c None without a cell state)."""
    if spec.has_cell_state:
        if state is None:
            return (_state_part(None, "state h", hidden_sizes, B, dtype),
                    _state_part(None, "state c", hidden_sizes, B, dtype))
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise ValueError(f"state must be None or a tuple (h, c) for an LSTM, got "
                             f"{type(state).__name__}")
        return (_state_part(state[0], "state h", hidden_sizes, B, dtype),
                _state_part(state[1], "state c", hidden_sizes, B, dtype))
    if state is not None and len(set(hidden_sizes)) == 1 and isinstance(state, (tuple, list)):
        raise ValueError(f"state must be None or a single array h for a {spec.name} cell, "
                         f"not a tuple")
    return _state_part(state, "state", hidden_sizes, B, dtype), None


def _banned_mask(banned_ids, V):
    if banned_ids is None:
        banned_ids = ()
    if isinstance(banned_ids, (int, np.integer)) and not isinstance(banned_ids, bool):
        banned_ids = (banned_ids,)
    try:
        ids = np.asarray(list(banned_ids) if not isinstance(banned_ids, np.ndarray) else banned_ids)
    except TypeError:
        raise TypeError(f"banned_ids must be a sequence of token ids, got "
                        f"{type(banned_ids).__name__}") from None
    ids = ids.reshape(-1)
    if ids.size == 0:
        ids = ids.astype(np.int64)
    ids = check_token_ids(ids, "banned_ids", V)
    mask = np.zeros(V, dtype=np.uint8)
    mask[ids] = 1
    if mask.all():
        raise ValueError(f"banned_ids must leave at least one token allowed; all {V} are banned")
    return mask
