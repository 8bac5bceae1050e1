"""fastrnn.torch against PyTorch itself: a model converted with ``convert`` gives PyTorch's
outputs, final states and every parameter gradient; the custom ops pass gradcheck/opcheck."""
import copy

import numpy as np
import pytest

from helpers import spy_engine_backward

torch = pytest.importorskip("torch")
ft = pytest.importorskip("fastrnn.torch")
from torch.nn.utils.rnn import (PackedSequence, pack_padded_sequence,  # noqa: E402
                                pad_packed_sequence)

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
KINDS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
VOCAB, EMB, H, B, T = 11, 5, 6, 4, 7
LENGTHS = torch.tensor([3, 7, 1, 5])   # unsorted


def make_rnn(kind, dtype, **kwargs):
    kwargs = {**dict(num_layers=2, bidirectional=True, batch_first=True, dtype=dtype), **kwargs}
    if kind.startswith("rnn"):
        return torch.nn.RNN(EMB, H, nonlinearity=kind[4:], **kwargs)
    return getattr(torch.nn, kind.upper())(EMB, H, **kwargs)


class Model(torch.nn.Module):
    """embedding -> 2-layer bidirectional batch_first RNN -> linear."""

    def __init__(self, kind, dtype, **rnn_kwargs):
        super().__init__()
        self.embedding = torch.nn.Embedding(VOCAB, EMB, dtype=dtype)
        self.rnn = make_rnn(kind, dtype, **rnn_kwargs)
        self.head = torch.nn.Linear(2 * H, 3, dtype=dtype)

    def forward(self, tokens, lengths=None, hx=None):
        x = self.embedding(tokens)
        if lengths is not None:
            x = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, final = self.rnn(x, hx)
        if lengths is not None:
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
        return self.head(out), final


def finals_of(final):
    return list(final) if isinstance(final, tuple) else [final]


def run(model, tokens, lengths, hx, loss_on):
    model.zero_grad()
    leaves = None
    if hx is not None:
        leaves = [h.clone().requires_grad_(True) for h in finals_of(hx)]
        hx = tuple(leaves) if isinstance(hx, tuple) else leaves[0]
    logits, final = model(tokens, lengths, hx)
    finals = finals_of(final)
    gen = torch.Generator().manual_seed(1)
    loss = 0
    if "out" in loss_on:
        loss = loss + (logits * torch.randn(logits.shape, generator=gen, dtype=logits.dtype)).sum()
    if "state" in loss_on:
        for f in finals:
            loss = loss + (f * torch.randn(f.shape, generator=gen, dtype=f.dtype)).sum()
    loss.backward()
    grads = {k: (torch.zeros_like(p) if p.grad is None else p.grad.clone())
             for k, p in model.named_parameters()}
    hx_grads = [leaf.grad.clone() for leaf in leaves] if leaves else []
    return logits.detach(), [f.detach() for f in finals], grads, hx_grads


def assert_close(a, b, tol, what):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("packed, with_hx, loss_on", [
    (True, False, ("out",)), (True, True, ("out", "state")), (False, False, ("state",)),
    (False, True, ("out", "state")), (True, False, ("state",))])
def test_converted_model_matches_pytorch(kind, dtype, packed, with_hx, loss_on):
    torch.manual_seed(0)
    reference = Model(kind, dtype)
    converted = ft.convert(copy.deepcopy(reference))
    assert type(converted.rnn) is {"lstm": ft.LSTM, "gru": ft.GRU}.get(kind, ft.RNN)
    tokens = torch.randint(0, VOCAB, (B, T))
    lengths = LENGTHS if packed else None
    hx = None
    if with_hx:
        shape = (4, B, H)
        hx = torch.randn(shape, dtype=dtype)
        if kind == "lstm":
            hx = (hx, torch.randn(shape, dtype=dtype))
    expected = run(reference, tokens, lengths, hx, loss_on)
    got = run(converted, tokens, lengths, hx, loss_on)
    tol = TOL[dtype]
    assert_close(got[0], expected[0], tol, "outputs")
    for g, e in zip(got[1], expected[1]):
        assert_close(g, e, tol, "final state")
    assert got[2].keys() == expected[2].keys()
    for name in expected[2]:
        assert_close(got[2][name], expected[2][name], tol, f"grad of {name}")
    for g, e in zip(got[3], expected[3]):
        assert_close(g, e, tol, "grad of hx")


@pytest.mark.parametrize("kind", KINDS)
def test_packed_output_is_pytorchs_packed_sequence(kind):
    """Same PackedSequence type, data, batch_sizes and indices as PyTorch's."""
    torch.manual_seed(0)
    reference = make_rnn(kind, torch.float64, batch_first=False)
    ours = ft.convert(copy.deepcopy(reference))
    x = torch.randn(T, B, EMB, dtype=torch.float64)
    packed = pack_padded_sequence(x, LENGTHS, enforce_sorted=False)
    expected, _ = reference(packed)
    got, _ = ours(packed)
    assert type(got) is type(expected)
    assert_close(got.data, expected.data, 1e-10, "packed data")
    assert torch.equal(got.batch_sizes, expected.batch_sizes)
    assert torch.equal(got.sorted_indices, expected.sorted_indices)
    assert torch.equal(got.unsorted_indices, expected.unsorted_indices)


@pytest.mark.parametrize("kind", KINDS)
def test_unbatched_input_without_bias(kind):
    torch.manual_seed(0)
    reference = make_rnn(kind, torch.float64, bias=False)
    ours = ft.convert(copy.deepcopy(reference))
    x = torch.randn(T, EMB, dtype=torch.float64)
    expected_out, expected_final = reference(x)
    got_out, got_final = ours(x)
    assert_close(got_out, expected_out, 1e-10, "unbatched output")
    for g, e in zip(finals_of(got_final), finals_of(expected_final)):
        assert_close(g, e, 1e-10, "unbatched final state")


def test_convert_keeps_parameter_objects_and_names_both_ways():
    model = Model("lstm", torch.float32)
    before = dict(model.named_parameters())
    state = model.state_dict()
    ft.convert(model)
    assert isinstance(model.rnn, ft.LSTM)
    after = dict(model.named_parameters())
    assert after.keys() == before.keys()
    assert all(after[k] is before[k] for k in before)
    ft.convert(model, inverse=True)
    assert type(model.rnn) is torch.nn.LSTM
    assert all(p is before[k] for k, p in model.named_parameters())
    # state_dicts are interchangeable
    fresh = ft.LSTM(EMB, H, num_layers=2, bidirectional=True, batch_first=True)
    fresh.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("rnn.")})
    assert set(fresh.state_dict()) == set(model.rnn.state_dict())


def test_char_lm_training_follows_the_unconverted_loss_curve():
    """Five Adam steps of an embedding -> 2-layer LSTM -> linear char model in float64."""
    def losses(convert):
        torch.manual_seed(0)
        model = Model("lstm", torch.float64, bidirectional=False)
        model.head = torch.nn.Linear(H, VOCAB, dtype=torch.float64)
        if convert:
            ft.convert(model)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
        tokens = torch.randint(0, VOCAB, (B, T + 1), generator=torch.Generator().manual_seed(5))
        curve = []
        for _ in range(5):   # the same batch: the loss must fall
            optimizer.zero_grad()
            logits, _ = model(tokens[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB),
                                                     tokens[:, 1:].reshape(-1))
            loss.backward()
            optimizer.step()
            curve.append(loss.item())
        return curve

    expected, got = losses(False), losses(True)
    assert max(abs(a - b) for a, b in zip(got, expected)) < 1e-9, (got, expected)
    assert expected[-1] < expected[0]


def test_constructor_matches_pytorch_init():
    torch.manual_seed(3)
    expected = torch.nn.GRU(EMB, H, num_layers=2, bidirectional=True)
    torch.manual_seed(3)
    got = ft.GRU(EMB, H, num_layers=2, bidirectional=True)
    for (kg, vg), (ke, ve) in zip(got.named_parameters(), expected.named_parameters()):
        assert kg == ke and torch.equal(vg, ve)


def test_dropout_between_layers_only_in_training():
    torch.manual_seed(0)
    rnn = ft.LSTM(EMB, H, num_layers=2, dropout=0.5)
    x = torch.randn(T, B, EMB)
    rnn.eval()
    a, _ = rnn(x)
    b, _ = rnn(x)
    assert torch.equal(a, b)
    rnn.train()
    c, _ = rnn(x)
    assert not torch.equal(a, c)


def test_unsupported_options_are_named():
    with pytest.raises(ValueError, match="proj_size"):
        ft.LSTM(EMB, H, proj_size=2)
    with pytest.raises(ValueError, match="device"):
        ft.GRU(EMB, H, device="meta")
    with pytest.raises(TypeError, match="float32 or float64"):
        ft.RNN(EMB, H, dtype=torch.float16)
    rnn = ft.GRU(EMB, H)
    with pytest.raises(TypeError, match="dtype"):
        rnn(torch.randn(T, B, EMB, dtype=torch.float64))
    with pytest.raises(ValueError, match="h_0 must have shape"):
        rnn(torch.randn(T, B, EMB), torch.zeros(2, B, H))


def test_the_linear_cell_is_refused_with_its_alternative():
    """torch.nn.RNN has no nonlinearity="identity": the bridge says so and names fastrnn.RNN."""
    for make in (lambda: ft.RNN(EMB, H, nonlinearity="identity"),
                 lambda: ft.RNN(EMB, H, 1, "identity")):
        with pytest.raises(ValueError, match=r"no nonlinearity='identity'.*fastrnn\.RNN"):
            make()


def test_import_fastrnn_does_not_import_torch():
    import subprocess
    import sys
    code = "import sys, fastrnn; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def op_args(kind, with_lengths, reverse, dtype=torch.float64, bias=True):
    gen = torch.Generator().manual_seed(2)
    G = {"lstm": 4, "gru": 3}.get(kind, 1)
    t, b, i, h = 4, 3, 2, 3

    def rand(*shape):
        return (0.5 * torch.randn(shape, generator=gen, dtype=dtype)).requires_grad_(True)

    return (rand(t, b, i), rand(G * h, i), rand(G * h, h), rand(G * h) if bias else None,
            rand(G * h) if bias else None, rand(b, h), rand(b, h) if kind == "lstm" else None,
            torch.tensor([2, 4, 1]) if with_lengths else None, kind, reverse)


def differentiable_outputs(*args):
    y, h_T, c_T, *_ = ft.recurrent_forward_op(*args)
    return (y, h_T, c_T) if args[6] is not None else (y, h_T)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("with_lengths, reverse, bias", [
    (False, False, True), (True, True, True), (True, False, False)])
def test_gradcheck_on_the_op(kind, with_lengths, reverse, bias):
    args = op_args(kind, with_lengths, reverse, bias=bias)
    assert torch.autograd.gradcheck(differentiable_outputs, args, eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("kind", KINDS)
def test_opcheck(kind):
    for with_lengths in (False, True):
        args = op_args(kind, with_lengths, reverse=with_lengths)
        torch.library.opcheck(ft.recurrent_forward_op, args)


def test_torch_compile_gives_the_eager_result(tmp_path, monkeypatch):
    """Dynamo does not trace into recurrent modules (a graph break: the module runs
    eagerly inside the compiled model); the result and gradients must still be exact.
    Compiled afresh: PyTorch's compile caches do not see a custom op's schema change
    (pytorch/pytorch#144344), so an older fastrnn's cached graphs must not answer here."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    model = ft.convert(Model("gru", torch.float64))
    tokens = torch.randint(0, VOCAB, (B, T))
    expected = run(model, tokens, None, None, ("out", "state"))
    compiled = torch.compile(model)
    got = run(compiled, tokens, None, None, ("out", "state"))
    assert_close(got[0], expected[0], 1e-12, "compiled outputs")
    for name in expected[2]:
        assert_close(got[2]["_orig_mod." + name], expected[2][name], 1e-12,
                     f"compiled grad of {name}")


# ---- PackedSequence conversion (one gather each way) and the backward without copies ----

PACKED_BATCHES = {   # name: (lengths, T)
    "unsorted": ([3, 7, 1, 5], 7),
    "ties": ([4, 2, 4, 4, 2, 1], 4),
    "all full": ([5, 5, 5], 5),
    "length one": ([1, 3, 1, 1], 3),
    "above the engine's packed batch": ([9, 1, 4, 9, 7, 2, 2, 5, 8, 3, 6, 9], 9),
}


def packed_run(module, x, lengths, enforce_sorted, hx):
    """Forward + backward of ``module`` on x (T, B, F) packed with ``lengths``; returns the
    packed output, the final states, and the gradients of x, hx and every parameter."""
    module.zero_grad()
    x = x.clone().requires_grad_(True)
    leaves = [h.clone().requires_grad_(True) for h in finals_of(hx)]
    hx = tuple(leaves) if len(leaves) == 2 else leaves[0]
    packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    out, final = module(packed, hx)
    gen = torch.Generator().manual_seed(4)
    loss = (out.data * torch.randn(out.data.shape, generator=gen, dtype=x.dtype)).sum()
    for f in finals_of(final):
        loss = loss + (f * torch.randn(f.shape, generator=gen, dtype=x.dtype)).sum()
    loss.backward()
    grads = {k: p.grad.clone() for k, p in module.named_parameters()}
    return out, [f.detach() for f in finals_of(final)], x.grad, [h.grad for h in leaves], grads


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch", list(PACKED_BATCHES))
@pytest.mark.parametrize("enforce_sorted", [False, True])
def test_packed_input_matches_pytorch(kind, batch, enforce_sorted):
    """2-layer bidirectional: packed output (data and indices), final states, the input's,
    hx's and every parameter's gradient equal torch.nn's, in float64."""
    lengths, steps = PACKED_BATCHES[batch]
    lengths = torch.tensor(lengths)
    if enforce_sorted:
        lengths = lengths.sort(descending=True).values
    torch.manual_seed(0)
    reference = make_rnn(kind, torch.float64, batch_first=False)
    ours = ft.convert(copy.deepcopy(reference))
    batch_size = lengths.shape[0]
    x = torch.randn(steps, batch_size, EMB, dtype=torch.float64)
    hx = torch.randn(4, batch_size, H, dtype=torch.float64)
    hx = (hx, torch.randn_like(hx)) if kind == "lstm" else hx
    expected = packed_run(reference, x, lengths, enforce_sorted, hx)
    got = packed_run(ours, x, lengths, enforce_sorted, hx)
    out, out_expected = got[0], expected[0]
    assert type(out) is PackedSequence
    assert_close(out.data, out_expected.data, 1e-10, "packed data")
    assert torch.equal(out.batch_sizes, out_expected.batch_sizes)
    for name in ("sorted_indices", "unsorted_indices"):
        g, e = getattr(out, name), getattr(out_expected, name)
        assert (g is None and e is None) or torch.equal(g, e), name
    for g, e in zip(got[1], expected[1]):
        assert_close(g, e, 1e-10, "final state")
    assert_close(got[2], expected[2], 1e-10, "grad of the input")
    for g, e in zip(got[3], expected[3]):
        assert_close(g, e, 1e-10, "grad of hx")
    for name in expected[4]:
        assert_close(got[4][name], expected[4][name], 1e-10, f"grad of {name}")


def test_gather_rows_gradcheck_and_opcheck():
    """fastrnn::gather_rows (the packed output) and its backward, the scatter of the
    packed input: exact values, zero gradient at the rows not gathered."""
    gen = torch.Generator().manual_seed(0)
    rows = torch.tensor([5, 0, 3, 6])
    padded = torch.randn(7, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.equal(ft.gather_rows_op(padded, rows), padded.detach()[rows])
    grad = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    ft.gather_rows_op(padded, rows).backward(grad)
    expected = torch.zeros_like(padded)
    expected[rows] = grad
    assert torch.equal(padded.grad, expected)
    assert torch.autograd.gradcheck(lambda p: ft.gather_rows_op(p, rows), (padded,))
    assert torch.autograd.gradgradcheck(lambda p: ft.gather_rows_op(p, rows), (padded,))
    torch.library.opcheck(ft.gather_rows_op, (padded, rows))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("x_grad, hx_grad", [(False, False), (False, True), (True, False)])
@pytest.mark.parametrize("packed", [False, True])
def test_only_the_gradients_autograd_wants_are_computed(kind, x_grad, hx_grad, packed,
                                                       monkeypatch):
    """Raw features (x needs no gradient) and a detached initial state: the engine is told
    (input_grad / state0_grad False) and skips their products; the parameter gradients and
    the wanted input gradients still match PyTorch's, and the unwanted ones stay None."""
    torch.manual_seed(0)
    ref = make_rnn(kind, torch.float64, batch_first=False)
    ours = ft.convert(copy.deepcopy(ref))
    x = torch.randn(T, B, EMB, dtype=torch.float64)
    hx = torch.randn(4, B, H, dtype=torch.float64)
    hx = (hx, torch.randn(4, B, H, dtype=torch.float64)) if kind == "lstm" else hx
    told = spy_engine_backward(monkeypatch)   # the PyTorch model never calls it
    results = []
    for model in (ref, ours):
        leaves = [t.clone().requires_grad_(hx_grad) for t in finals_of(hx)]
        xin = x.clone().requires_grad_(x_grad)
        inp = pack_padded_sequence(xin, LENGTHS, enforce_sorted=False) if packed else xin
        out, _ = model(inp, tuple(leaves) if kind == "lstm" else leaves[0])
        y = out.data if packed else out   # a PackedSequence's rows, or the tensor
        (y * torch.sin(y)).sum().backward()
        results.append(({k: p.grad.clone() for k, p in model.named_parameters()},
                        xin.grad, [leaf.grad for leaf in leaves]))
        model.zero_grad()
    (ref_grads, ref_dx, ref_dh), (grads, dx, dh) = results
    for k in ref_grads:
        assert_close(grads[k], ref_grads[k], 1e-10, f"grad of {k}")
    assert (dx is None) == (not x_grad) == (ref_dx is None)
    if x_grad:
        assert_close(dx, ref_dx, 1e-10, "dx")
    for got, expected in zip(dh, ref_dh):
        assert (got is None) == (not hx_grad) == (expected is None)
        if hx_grad:
            assert_close(got, expected, 1e-10, "dh0")
    # 2 layers x 2 directions, top layer first: only layer 0 may skip dx.
    assert [t[:2] for t in told] == [(True, hx_grad)] * 2 + [(x_grad, hx_grad)] * 2


@pytest.mark.parametrize("kind", KINDS)
def test_retained_graph_gives_the_same_gradients_twice(kind):
    """A backward that keeps the graph runs the engine on copies of the saved activations
    (a second backward reads them again); one that frees it overwrites them, and a second
    backward is then PyTorch's usual error, never gradients from overwritten buffers."""
    torch.manual_seed(0)
    rnn = ft.convert(make_rnn(kind, torch.float64, batch_first=False))
    x = torch.randn(T, B, EMB, dtype=torch.float64)
    out, _ = rnn(pack_padded_sequence(x, LENGTHS, enforce_sorted=False))
    loss = (out.data * torch.randn(out.data.shape, dtype=torch.float64)).sum()
    loss.backward(retain_graph=True)
    first = {k: p.grad.clone() for k, p in rnn.named_parameters()}
    rnn.zero_grad()
    loss.backward()   # frees the graph: may overwrite
    for k, p in rnn.named_parameters():
        torch.testing.assert_close(p.grad, first[k], rtol=0, atol=0, msg=k)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        loss.backward()


def test_a_torch_without_the_graph_task_functions_copies_the_activations(monkeypatch):
    """Where torch lacks the private functions that say whether the graph is kept, every
    backward copies the saved activations: a second backward with retain_graph is still
    right, and the first gives the same gradients as the overwriting path."""
    torch.manual_seed(0)
    rnn = ft.convert(make_rnn("lstm", torch.float64, batch_first=False))
    x = torch.randn(T, B, EMB, dtype=torch.float64)
    seed = None
    grads = []
    for missing in (False, True):
        if missing:
            monkeypatch.setattr(ft, "_graph_task_keeps_graph", None)
        rnn.zero_grad()
        out, _ = rnn(pack_padded_sequence(x, LENGTHS, enforce_sorted=False))
        seed = torch.randn(out.data.shape, dtype=torch.float64) if seed is None else seed
        (out.data * seed).sum().backward()
        grads.append({k: p.grad.clone() for k, p in rnn.named_parameters()})
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=0, atol=0, msg=k)
    assert not ft._may_overwrite_saved(None, None)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch_size", [3, 12])   # the engine's plain and packed loops
def test_forward_op_outputs_do_not_depend_on_stale_memory(kind, batch_size):
    """With lengths the engine leaves some rows of gates/hn/chist unwritten; the op zeroes
    them, so its outputs are a function of its inputs (opcheck's premise), whatever memory
    its buffers come from."""
    gen = torch.Generator().manual_seed(1)
    G = {"lstm": 4, "gru": 3}.get(kind, 1)
    steps, i, h = 6, 3, 4

    def rand(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64)

    lengths = torch.randint(1, steps + 1, (batch_size,), generator=gen)
    lengths[0] = steps
    args = (rand(steps, batch_size, i), rand(G * h, i), rand(G * h, h), rand(G * h), rand(G * h),
            rand(batch_size, h), rand(batch_size, h) if kind == "lstm" else None, lengths, kind,
            True)
    runs = []
    for stale in (0.0, float("nan")):
        junk = [np.full(steps * batch_size * cols, stale) for cols in (G * h, h, h)]
        del junk   # freed: the op's buffers may reuse this memory
        runs.append(ft.recurrent_forward_op(*args))
    for got, expected in zip(*runs):
        assert torch.equal(got, expected)


def test_malformed_packed_sequence_is_refused():
    rnn = ft.GRU(EMB, H)
    x = torch.randn(T, B, EMB)
    good = pack_padded_sequence(x, LENGTHS, enforce_sorted=False)
    bad_indices = PackedSequence(good.data, good.batch_sizes, torch.tensor([1, 1, 0, 2]),
                                 good.unsorted_indices)
    with pytest.raises(ValueError, match="sorted_indices must be a permutation"):
        rnn(bad_indices)
    rising = PackedSequence(good.data[:3], torch.tensor([1, 2]), None, None)
    with pytest.raises(ValueError, match="batch_sizes must be positive and non-increasing"):
        rnn(rising)
    short = PackedSequence(good.data[:-1], good.batch_sizes, good.sorted_indices,
                           good.unsorted_indices)
    with pytest.raises(ValueError, match=r"input.data must be 2-D with one row per real step"):
        rnn(short)


@pytest.mark.parametrize("kind", KINDS)
def test_backward_op_opcheck_and_the_overwriting_path_agree(kind):
    """The backward op passes opcheck (its schema test sees any input it changes); the
    modules' overwriting path computes the same gradients; None stands for a zero output
    gradient."""
    args = op_args(kind, with_lengths=True, reverse=True)
    x, w_ih, w_hh, _, _, h0, c0, lengths, cell, reverse = (
        a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    with torch.no_grad():
        y, h_T, _, gates, hn, chist = ft.recurrent_forward_op(*args)
    gen = torch.Generator().manual_seed(3)
    dy = torch.randn(y.shape, generator=gen, dtype=y.dtype)
    dh = torch.randn(h_T.shape, generator=gen, dtype=y.dtype)
    dc = torch.randn(h_T.shape, generator=gen, dtype=y.dtype) if kind == "lstm" else None

    def backward_args(dy, dh, dc, input_grad=True, state0_grad=True):
        return (x, w_ih, w_hh, True, h0, c0, lengths, y, gates.clone(), hn.clone(),
                chist.clone(), dy, dh, dc, cell, reverse, input_grad, state0_grad)

    for wanted in ((True, True), (False, True), (True, False), (False, False)):
        torch.library.opcheck(ft.recurrent_backward_op, backward_args(dy, dh, dc, *wanted))
    zero_h = torch.zeros_like(h_T)
    zero_c = zero_h if kind == "lstm" else None
    for grads, as_zeros in (((dy, dh, dc), (dy, dh, dc)),
                            ((None, dh, dc), (torch.zeros_like(y), dh, dc)),
                            ((dy, None, None), (dy, zero_h, zero_c))):
        expected = ft.recurrent_backward_op(*backward_args(*as_zeros))
        got = ft._recurrent_backward(*backward_args(*grads), overwrite_saved=True)
        for g, e in zip(got, expected):
            assert torch.equal(g, e)
    # Not wanted: dx / dh0, dc0 come back empty, the weight gradients to the bit.
    full = ft.recurrent_backward_op(*backward_args(dy, dh, dc))
    for input_grad, state0_grad in ((False, True), (True, False), (False, False)):
        got = ft.recurrent_backward_op(*backward_args(dy, dh, dc, input_grad, state0_grad))
        wanted = (input_grad, True, True, True, True, state0_grad,
                  state0_grad and kind == "lstm")
        for g, e, w in zip(got, full, wanted):
            assert torch.equal(g, e) if w else g.shape == (0,)


def test_bridge_overhead_benchmark_sees_the_engine_ops(monkeypatch):
    """benchmarks/torch_bridge_overhead.py splits a step into the engine's ops and the rest:
    both layouts must find the ops by name (the overwriting backward keeps the op's name)."""
    import importlib
    from pathlib import Path
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    overhead = importlib.import_module("torch_bridge_overhead")
    for cell, layout in (("lstm", "packed"), ("gru", "padded")):
        r = overhead.bridge_overhead(cell, layout, size=(9, 5, 3, 4), steps=1, repeats=1,
                                     warmup=1, threads=1)
        assert r["engine"] > 0 and r["overhead"] > 0 and r["caller"] > 0
        assert r["bridge"] == pytest.approx(r["overhead"] - r["caller"])
    rnn = ft.LSTM(EMB, H)
    x = torch.randn(T, B, EMB)
    with torch.profiler.profile() as prof:
        rnn(pack_padded_sequence(x, LENGTHS, enforce_sorted=False))[0].data.sum().backward()
    assert set(overhead.ENGINE_OPS) <= {e.name for e in prof.events()}


def test_interleaved_ab_benchmark_times_both_models(monkeypatch, capsys):
    """benchmarks/torch_bridge_ab.py times the converted and the plain model in alternating
    rounds and prints the median ratio."""
    import importlib
    from pathlib import Path
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    ab = importlib.import_module("torch_bridge_ab")
    times = ab.interleaved_step_times(rounds=2, steps=1, threads=1)
    assert len(times["converted"]) == len(times["torch"]) == 2
    assert all(t > 0 for ts in times.values() for t in ts)
    ab.main(["--rounds", "1", "--steps", "1", "--threads", "1"])
    assert "ratio" in capsys.readouterr().out
    native = ab.interleaved_step_times(rounds=2, steps=1, threads=1, fastrnn="native",
                                       model="small")
    assert len(native["native"]) == len(native["torch"]) == 2
    with pytest.raises(ValueError, match="fastrnn must be 'converted' or 'native'"):
        ab.interleaved_step_times(rounds=1, steps=1, fastrnn="jax")


def test_wanted_grads_benchmark_times_both_kinds(monkeypatch, capsys):
    """benchmarks/bridge_wanted_grads.py times the LSTM with and without an input gradient,
    alternately, and prints both medians (the JAX bridge's run: test_jax_bridge.py)."""
    import importlib
    from pathlib import Path
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    bench = importlib.import_module("bridge_wanted_grads")
    times = bench.alternating_step_times(2, 3, 4, 5, rounds=2, threads=1)
    assert len(times[True]) == len(times[False]) == 2
    bench.main(["--size", "2", "3", "4", "5", "--rounds", "1", "--threads", "1"])
    assert "raw features" in capsys.readouterr().out
    with pytest.raises(ValueError, match="bridge must be 'torch' or 'jax'"):
        bench.alternating_step_times(2, 3, 4, 5, bridge="mxnet")
