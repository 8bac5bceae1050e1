"""A layer's input given as rows of a table, ``x = table[index]``: an embedding lookup fused
into the first recurrent layer.

The input projection of a token is ``W_ih table[index] + b_ih``: it depends only on the
token's table row. When the table has fewer rows than the batch has tokens (a character
vocabulary: 65-86 rows against 512-2048 tokens per batch), the projection is computed once
per table row, (V, G*H), and the forward loop copies each token's row of it in as the
token's step starts (``table_rows``); the backward loop adds each token's x-side gate
gradient into its table row as it goes (``table_grads``, (V, G*H)), and dW_ih and the
table's gradient come from those V rows, so all three products run over V rows instead of
T*B. Otherwise the driver gathers the tokens' rows and runs the layer as on any input,
scattering dx into the table.

The two ways give the same function; the sums in dW_ih and the table's gradient are grouped
differently (per table row first), so they may differ in the last bits.
"""
from .._matmul import matmul
from .._validation import check_token_ids


def check_index(xp, index, table_rows):
    """``index`` as a (T, B) int64 array of ``xp`` with values in [0, table_rows); TypeError
    or ValueError naming it otherwise."""
    index = check_token_ids(index, "index", table_rows)   # contiguous int64, where it was
    if index.ndim != 2 or index.shape[0] < 1 or index.shape[1] < 1:
        raise ValueError(f"index must be (T, B) row numbers of x with T, B >= 1, got shape "
                         f"{index.shape}")
    return xp.asarray(index)


def projects_table(table_rows, tokens):
    """Whether to project the table rows (fewer of them than tokens) rather than gather the
    tokens' rows and project those."""
    return table_rows < tokens


def project_table(ops, table, w_ih, b_ih):
    """W_ih table[v] + b_ih for every table row v, (V, G*H): an internal buffer of ``ops``
    (the forward loop copies each token's row in as its step starts; release it after)."""
    projected = ops.empty((table.shape[0], w_ih.shape[0]), table.dtype)
    ops.project_inputs(table, w_ih, b_ih, projected)
    return projected


def x_side_gate_grads(xp, gates, hn):
    """The x-side gate gradients of the rows of ``gates`` (N, G*H), dGh from the backward
    loop: dGh itself, but the GRU's n gate, whose x side is in ``hn`` (N, H) (None for the
    other cells)."""
    return gates if hn is None else xp.concatenate((gates[:, :2 * hn.shape[1]], hn), axis=1)


def add_table_grads(per_row, table, w_ih, grads, dtable):
    """``grads["weight_ih"] += D^T table`` and ``dtable += D W_ih``, from ``per_row`` = D
    (V, G*H): each table row's sum of its tokens' x-side gate gradients, as the backward loop
    adds them up (its ``table_grads``). (The bias gradient is the column sum of the same
    rows: the weight-gradient kernel adds it.) dtable None: the table's gradient is not
    wanted."""
    matmul(per_row, table, trans_a=True, out=grads["weight_ih"], beta=1.0)
    if dtable is not None:
        matmul(per_row, w_ih, out=dtable, beta=1.0)
