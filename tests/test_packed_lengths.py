"""Batches with lengths above the small-batch size run packed (fastrnn/_engine/packing.py and
the *_packed kernels of fastrnn/_cpu/recurrent.pyx): only the real tokens are projected,
stepped and summed into the weight gradients. These tests use B >= 9 so that the packed path
runs, and check it against PyTorch's PackedSequence, finite differences, the time-space
loops it replaces and the padded run without lengths."""
import numpy as np
import pytest

import fastrnn
from fastrnn import _engine
from fastrnn import functional as F
from fastrnn._cpu import recurrent as _kernels
from fastrnn._engine import packing as _packing
from fastrnn._engine.cpu import CpuOps
from fastrnn.cells import get_cell
from helpers import assert_close, recurrent_layer_gradient_errors

CELLS = ["rnn_tanh", "rnn_relu", "rnn_identity", "gru", "lstm"]
T, B, I, H = 7, 13, 5, 6
# unsorted, with a length 1 and the full length, and ties
LENGTHS = np.array([3, 7, 1, 5, 7, 2, 4, 4, 6, 1, 3, 7, 2])


def test_the_packed_path_runs_for_these_batches():
    assert B >= _engine.cpu_ops().packed_min_batch > 8


def _weights(cell, rng, Hs=H, Is=I, dtype=np.float64):
    G = get_cell(cell).gates
    return [rng.normal(scale=0.4, size=s).astype(dtype)
            for s in ((G * Hs, Is), (G * Hs, Hs), (G * Hs,), (G * Hs,))]


def _state(cell, rng, Bs=B, Hs=H, dtype=np.float64):
    if get_cell(cell).has_cell_state:
        return tuple(rng.normal(size=(Bs, Hs)).astype(dtype) for _ in range(2))
    return rng.normal(size=(Bs, Hs)).astype(dtype)


def _arrays(state):
    return list(state) if isinstance(state, tuple) else [state]


def _run(cell, x, w, lengths, reverse, dy, state=None, dstate=None):
    y, final, ws = F.recurrent_forward(cell, x, *w, state=state, lengths=lengths,
                                       reverse=reverse)
    dx, dstate0, grads = F.recurrent_backward(ws, dy, dstate)
    return y, _arrays(final), dx, _arrays(dstate0), grads


@pytest.fixture
def time_space_loops(monkeypatch):
    """Run batches with lengths on the time-space loops, as before the packed path."""
    def use():
        monkeypatch.setattr(CpuOps, "packed_min_batch", None)
    return use


# ---- the packing itself ---------------------------------------------------------------------

@pytest.mark.parametrize("reverse", [False, True])
def test_packing_lists_each_real_token_once_step_by_step(reverse):
    p = _packing.plan(LENGTHS, B, reverse)
    order = np.argsort(-LENGTHS, kind="stable")
    np.testing.assert_array_equal(p.order, order)
    np.testing.assert_array_equal(p.counts, [(LENGTHS > s).sum() for s in range(T)])
    expected, prev = [], []
    for s in range(T):
        for k, b in enumerate(order):
            if LENGTHS[b] > s:
                t = LENGTHS[b] - 1 - s if reverse else s
                expected.append(t * B + b)
                if s > 0:
                    prev.append((t + 1 if reverse else t - 1) * B + b)
    np.testing.assert_array_equal(p.src, expected)
    np.testing.assert_array_equal(p.prev_src, prev)
    assert p.rows == LENGTHS.sum()


# ---- against PyTorch and finite differences -------------------------------------------------

@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_torch_packed_sequence(cell, num_layers, bidirectional, dtype):
    pytest.importorskip("torch")
    import test_recurrent_torch as ref
    rng = np.random.default_rng(3)
    ours, reference = ref.make_pair(cell, num_layers, bidirectional, dtype)
    D = 2 if bidirectional else 1
    x = rng.normal(size=(T, B, ref.I)).astype(dtype)
    shape = (num_layers * D, B, ref.H)
    fresh = (lambda: tuple(rng.normal(size=shape).astype(dtype) for _ in range(2))) \
        if cell == "lstm" else (lambda: rng.normal(size=shape).astype(dtype))
    state, dstate = fresh(), fresh()
    dy = rng.normal(size=(T, B, D * ref.H)).astype(dtype)
    y, final = ours.forward(x, state, LENGTHS)
    dx, dstate0 = ours.backward(dy, dstate)
    ref_y, ref_final, ref_dx, ref_dstate0, ref_grads = ref.run_torch(
        reference, x, state, LENGTHS, dy, dstate, False)
    rtol = ref.RTOL[dtype]
    assert_close(y, ref_y, rtol, "y")
    for k, (a, b) in enumerate(zip(_arrays(final), ref_final)):
        assert_close(a, b, rtol, f"final state {k}")
    assert_close(dx, ref_dx, rtol, "dx")
    for k, (a, b) in enumerate(zip(_arrays(dstate0), ref_dstate0)):
        assert_close(a, b, rtol, f"dstate0 {k}")
    for name, g in ref_grads.items():
        assert_close(ours.grads[name], g, rtol, name)


@pytest.mark.parametrize("cell", CELLS)
def test_gradients_match_finite_differences(cell):
    rng = np.random.default_rng(5)
    layer = fastrnn.RNN if cell.startswith("rnn_") else getattr(fastrnn, cell.upper())
    kwargs = dict(nonlinearity=cell[4:]) if cell.startswith("rnn_") else {}
    layer = layer(I, H, num_layers=2, bidirectional=True, dtype=np.float64, seed=2, **kwargs)
    x = rng.normal(size=(T, B, I))
    shape = (4, B, H)
    fresh = (lambda: (rng.normal(size=shape), rng.normal(size=shape))) if cell == "lstm" \
        else (lambda: rng.normal(size=shape))
    state, dstate = fresh(), fresh()
    dy = rng.normal(size=(T, B, 2 * H))

    errors, dx = recurrent_layer_gradient_errors(layer, x, state, LENGTHS, dy, dstate, rng)
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-6, f"{worst}: relative error {errors[worst]:.2e}"
    for b, n in enumerate(LENGTHS):
        assert np.all(dx[n:, b] == 0)


# ---- against the time-space loops and the padded run ----------------------------------------

LENGTH_CASES = {"unsorted": LENGTHS,
                "sorted": np.sort(LENGTHS)[::-1].copy(),
                "all equal, short": np.full(B, 4),
                "all whole": np.full(B, T),
                "one of length 1": np.array([T] * (B - 1) + [1]),
                "all length 1": np.ones(B, dtype=np.int64)}


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("case", list(LENGTH_CASES))
@pytest.mark.parametrize("reverse", [False, True])
def test_matches_the_time_space_loops(cell, case, reverse, time_space_loops):
    """Every output and gradient as the time-space loops compute them (float64): the
    recurrence is the same per row; only BLAS's sums in the input projection and the
    weight gradients may round differently."""
    rng = np.random.default_rng(8)
    lengths = LENGTH_CASES[case]
    w = _weights(cell, rng)
    x = rng.normal(size=(T, B, I))
    dy = rng.normal(size=(T, B, H))
    state, dstate = _state(cell, rng), _state(cell, rng)
    packed = _run(cell, x, w, lengths, reverse, dy, state, dstate)
    time_space_loops()
    plain = _run(cell, x, w, lengths, reverse, dy, state, dstate)
    for name, a, b in [("y", packed[0], plain[0]), ("dx", packed[2], plain[2])] + \
            [(f"final {k}", a, b) for k, (a, b) in enumerate(zip(packed[1], plain[1]))] + \
            [(f"dstate0 {k}", a, b) for k, (a, b) in enumerate(zip(packed[3], plain[3]))] + \
            [(k, packed[4][k], plain[4][k]) for k in plain[4]]:
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=name)
    for b, n in enumerate(lengths):
        assert np.all(packed[0][n:, b] == 0) and np.all(packed[2][n:, b] == 0)


@pytest.mark.parametrize("cell", CELLS)
def test_equals_the_padded_run_on_the_real_tokens(cell):
    """Forward in time, a sequence's real steps do not see its padding: the padded run
    without lengths, with the output gradient zero past each length, has the same outputs
    on the real tokens, the same dx and the same weight gradients."""
    rng = np.random.default_rng(9)
    w = _weights(cell, rng)
    x = rng.normal(size=(T, B, I))
    real = np.arange(T)[:, None] < LENGTHS[None, :]
    dy = rng.normal(size=(T, B, H)) * real[:, :, None]
    state = _state(cell, rng)
    y, _, dx, dstate0, grads = _run(cell, x, w, LENGTHS, False, dy, state)
    y_pad, _, dx_pad, dstate0_pad, grads_pad = _run(cell, x, w, None, False, dy, state)
    np.testing.assert_allclose(y[real], y_pad[real], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(dx, dx_pad, rtol=1e-10, atol=1e-12)
    for a, b in zip(dstate0, dstate0_pad):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    for name in grads:
        np.testing.assert_allclose(grads[name], grads_pad[name], rtol=1e-10, atol=1e-12,
                                   err_msg=name)


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn_tanh"])
def test_thread_count_does_not_change_the_bits(cell):
    """Each thread takes a contiguous share of each step's active sequences, the shares
    moving (with a barrier) where a sequence ends: 1 and 2 threads give identical bits (the
    GEMM parts stay 2); 3 threads agree to rounding (3 GEMM parts)."""
    rng = np.random.default_rng(10)
    Hs, Bs = 40, 17
    w = _weights(cell, rng, Hs=Hs)
    x = rng.normal(size=(T, Bs, I))
    dy = rng.normal(size=(T, Bs, Hs))
    lengths = rng.integers(1, T + 1, size=Bs)
    results = []
    try:
        for n in (1, 2, 3):
            fastrnn.set_num_threads(n)
            results.append([_run(cell, x, w, lengths, rev, dy) for rev in (False, True)])
    finally:
        fastrnn.set_num_threads(None)
    for other, exact in ((results[1], True), (results[2], False)):
        for a, b in zip(results[0], other):
            pairs = [(a[0], b[0]), (a[2], b[2])] + list(zip(a[1] + a[3], b[1] + b[3])) + \
                [(a[4][name], b[4][name]) for name in a[4]]
            for u, v in pairs:
                if exact:
                    np.testing.assert_array_equal(u, v)
                else:
                    np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-13)


def test_strided_out_and_accumulated_dx():
    """out= a strided view gets the outputs and zeros past the lengths; dx_out accumulates."""
    rng = np.random.default_rng(11)
    w = _weights("lstm", rng)
    x = rng.normal(size=(T, B, I))
    dy = rng.normal(size=(T, B, H))
    big = np.full((T, B, 2 * H), 7.0)
    out = big[:, :, :H]
    y, _, ws = F.recurrent_forward("lstm", x, *w, lengths=LENGTHS, out=out)
    assert y is out
    y_ref, _, ws_ref = F.recurrent_forward("lstm", x, *w, lengths=LENGTHS)
    np.testing.assert_array_equal(out, y_ref)
    assert np.all(big[:, :, H:] == 7.0)
    dx_out = np.ones((T, B, I))
    dx, _, _ = F.recurrent_backward(ws, dy, dx_out=dx_out)
    dx_ref, _, _ = F.recurrent_backward(ws_ref, dy)
    assert dx is dx_out
    np.testing.assert_allclose(dx_out, dx_ref + 1.0, rtol=1e-13, atol=1e-13)


# ---- the kernels check what they are given --------------------------------------------------

def _kernel_args(kind=None):
    rng = np.random.default_rng(12)
    cell = get_cell("lstm")
    p = _packing.plan(LENGTHS, B, False)
    GH = cell.gates * H
    N = p.rows
    return dict(p=p, w_hh=rng.normal(size=(GH, H)), b_hh=np.zeros(GH),
                h=np.zeros((B, H)), c=np.zeros((B, H)), gates=np.zeros((T * B, GH)),
                chist=np.zeros((T * B, H)), y=np.zeros((T * B, H)),
                kind=cell.kind, N=N)


def _forward_packed(a, counts=None, src=None, gates=None, y=None):
    _kernels.forward_loop_packed(a["kind"], T, B, LENGTHS,
                                 a["p"].counts if counts is None else counts,
                                 a["p"].src if src is None else src, a["w_hh"], a["b_hh"],
                                 a["h"], a["c"], a["gates"] if gates is None else gates, None,
                                 a["chist"], a["y"] if y is None else y, 2)


def test_packed_kernels_refuse_an_inconsistent_packing():
    a = _kernel_args()
    _forward_packed(a)   # the consistent call runs
    counts = a["p"].counts.copy()
    counts[1], counts[2] = counts[2], counts[1] + 1
    with pytest.raises(ValueError, match="counts must be non-increasing"):
        _forward_packed(a, counts=counts)
    with pytest.raises(ValueError, match=r"counts\[0\] must be B"):
        _forward_packed(a, counts=a["p"].counts[1:].copy())
    with pytest.raises(ValueError, match="src"):
        _forward_packed(a, src=a["p"].src[:-1].copy())
    bad = a["p"].src.copy()
    bad[-1] = T * B
    with pytest.raises(ValueError, match=r"src must hold time-space rows in \[0, 91\)"):
        _forward_packed(a, src=bad)
    with pytest.raises(ValueError, match="gates must have at least"):
        _forward_packed(a, gates=np.zeros((a["N"] - 1, 4 * H)))
    with pytest.raises(ValueError, match="y"):
        _forward_packed(a, y=np.zeros((T * B - 1, H)))
    with pytest.raises(ValueError, match="dh"):
        _kernels.backward_loop_packed(a["kind"], T, B, a["p"].counts, a["p"].src, a["w_hh"],
                                      a["h"], a["c"], a["gates"], None, a["chist"], a["y"],
                                      None, np.zeros((B - 1, H)), np.zeros((B, H)), 2)
    for name, short in (("gates", np.zeros((a["N"] - 1, 4 * H))),
                        ("chist", np.zeros((a["N"] - 1, H)))):
        args = {"gates": a["gates"], "chist": a["chist"], name: short}
        with pytest.raises(ValueError, match=f"{name} must have at least {a['N']} rows"):
            _kernels.backward_loop_packed(a["kind"], T, B, a["p"].counts, a["p"].src,
                                          a["w_hh"], a["h"], a["c"], args["gates"], None,
                                          args["chist"], a["y"], None, np.zeros((B, H)),
                                          np.zeros((B, H)), 2)
    with pytest.raises(ValueError, match="h_prev"):
        _kernels.weight_grads_packed(a["kind"], np.zeros((a["N"], I)), np.zeros((4 * H, I)),
                                     np.zeros((a["N"] - 1, H)), np.zeros((a["N"], 4 * H)), None,
                                     np.zeros((4 * H, I)), np.zeros((4 * H, H)), None, None,
                                     None, 2)


@pytest.mark.parametrize("case", ["unsorted", "all whole"])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_torch_bridge_rebuilt_workspace_takes_the_forward_path(cell, case):
    """fastrnn.torch rebuilds the workspace in its backward from the caller's lengths: it
    must take the path its forward took (packed, or the plain loops when all are whole)."""
    torch = pytest.importorskip("torch")
    import fastrnn.torch as fastrnn_torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    lengths = torch.from_numpy(LENGTH_CASES[case])
    torch.manual_seed(0)
    make = getattr(torch.nn, cell.upper())
    reference = make(I, H, bidirectional=True, dtype=torch.float64)
    ours = fastrnn_torch.convert(make(I, H, bidirectional=True, dtype=torch.float64))
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    dy = torch.randn(T, B, 2 * H, dtype=torch.float64)
    results = []
    for module in (ours, reference):
        xt = x.clone().requires_grad_(True)
        out, _ = module(pack_padded_sequence(xt, lengths, enforce_sorted=False))
        y, _ = pad_packed_sequence(out, total_length=T)
        (y * dy).sum().backward()
        results.append([y.detach().numpy(), xt.grad.numpy()] +
                       [p.grad.numpy() for p in module.parameters()])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_row_gather_and_scatter_add_match_numpy(dtype, threads, rng):
    """The packed path moves rows between time space and packed order with compiled, threaded
    gathers and scatter-adds (NumPy's take and fancy-index add ran on one thread)."""
    src = rng.normal(size=(40, 7)).astype(dtype)
    strided = rng.normal(size=(40, 12)).astype(dtype)[:, 2:9]   # rows 12 elements apart
    index = rng.permutation(40)[:25].astype(np.int64)
    for s in (src, strided):
        out = np.full((25, 7), np.nan, dtype)
        _kernels.gather_rows(s, index, out, threads)
        np.testing.assert_array_equal(out, s[index])
    dst = rng.normal(size=(40, 7)).astype(dtype)
    rows = rng.normal(size=(25, 7)).astype(dtype)
    expected = dst.copy()
    expected[index] += rows
    _kernels.scatter_add_rows(dst, index, rows, threads)
    np.testing.assert_array_equal(dst, expected)
    # A repeated row gets its rows added in order (the embedding's gradient), as np.add.at.
    repeated = np.array([3, 0, 3, 3, 39, 0], np.int64)
    rows = rng.normal(size=(6, 7)).astype(dtype)
    expected = dst.copy()
    np.add.at(expected, repeated, rows)
    _kernels.scatter_add_rows(dst, repeated, rows, threads)
    np.testing.assert_array_equal(dst, expected)


def test_row_gather_and_scatter_add_refuse_bad_indices_and_buffers():
    src = np.zeros((5, 3))
    with pytest.raises(ValueError, match=r"index must be in \[0, 5\), got 5 at 1"):
        _kernels.gather_rows(src, np.array([0, 5], np.int64), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"index must be in \[0, 5\), got -1 at 0"):
        _kernels.gather_rows(src, np.array([-1], np.int64), np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"out must have shape \(2, 3\)"):
        _kernels.gather_rows(src, np.array([0, 1], np.int64), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="out must not share memory with src"):
        _kernels.gather_rows(src, np.array([0, 1], np.int64), src[3:5])
    with pytest.raises(ValueError, match="src rows must be contiguous"):
        _kernels.gather_rows(np.zeros((5, 6))[:, ::2], np.array([0], np.int64), np.zeros((1, 3)))
    dst = np.zeros((5, 3))
    with pytest.raises(ValueError, match=r"index must be in \[0, 5\), got 9 at 0"):
        _kernels.scatter_add_rows(dst, np.array([9], np.int64), np.ones((1, 3)))
    with pytest.raises(ValueError, match=r"rows must have shape \(2, 3\)"):
        _kernels.scatter_add_rows(dst, np.array([0, 1], np.int64), np.ones((3, 3)))
    with pytest.raises(ValueError, match="rows must not share memory with dst"):
        _kernels.scatter_add_rows(dst, np.array([0, 1], np.int64), dst[2:4])
    # An index living in the array written: the first write would change the rows still to
    # come, after their range was checked.
    table = np.zeros((4, 2))
    index = table[3].view(np.int64)   # two int64 row numbers in the table's last row
    index[:] = [0, 1]
    with pytest.raises(ValueError, match="index must not share memory with dst"):
        _kernels.scatter_add_rows(table, index, np.ones((2, 2)))
    with pytest.raises(ValueError, match="index must not share memory with out"):
        _kernels.gather_rows(np.zeros((4, 2)), index, table[2:])
    np.testing.assert_array_equal(dst, 0)   # nothing written by a refused call
