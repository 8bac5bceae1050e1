"""The CuPy backend on a real GPU: against the CPU engine (float64) and PyTorch cuDNN (float32).

Skipped on machines without CuPy or without a CUDA device. The GPU-free checks of the same
backend logic are in test_gpu_backend_cpu.py.
"""
import itertools

import numpy as np
import pytest

cp = pytest.importorskip("cupy")

import fastrnn  # noqa: E402
from fastrnn._gpu import backend as GB  # noqa: E402
from helpers import GATES, assert_close  # noqa: E402

if not fastrnn.gpu_available():
    pytest.skip("no CUDA device", allow_module_level=True)

T, B, I, H = 7, 5, 4, 6
LENGTHS = np.array([7, 1, 3, 2, 5])
CELLS = ("rnn_tanh", "rnn_relu", "rnn_identity", "gru", "lstm")


def make_layer(cell, num_layers, bidirectional, dtype, device="cpu", seed=0, **kw):
    kwargs = dict(num_layers=num_layers, bidirectional=bidirectional, dtype=dtype, seed=seed,
                  device=device, **kw)
    if cell.startswith("rnn"):
        return fastrnn.RNN(I, H, nonlinearity=cell[4:], **kwargs)
    return getattr(fastrnn, cell.upper())(I, H, **kwargs)


def _flat(state):
    return list(state) if isinstance(state, tuple) else [state]


def _host(a):
    return cp.asnumpy(a) if isinstance(a, cp.ndarray) else a


def _state(cell, rng, shape):
    if cell == "lstm":
        return rng.normal(size=shape), rng.normal(size=shape)
    return rng.normal(size=shape)


CASES = list(itertools.product(CELLS, (1, 2), (False, True), (False, True), (False, True)))


@pytest.mark.parametrize("cell,num_layers,bidirectional,with_lengths,with_state", CASES)
def test_float64_matches_cpu_engine(cell, num_layers, bidirectional, with_lengths,
                                    with_state, rng):
    D = 2 if bidirectional else 1
    x = rng.normal(size=(T, B, I))
    dy = rng.normal(size=(T, B, D * H))
    shape = (num_layers * D, B, H)
    state = _state(cell, rng, shape) if with_state else None
    dstate = _state(cell, rng, shape) if with_state else None   # final-state gradient
    lengths = LENGTHS if with_lengths else None

    cpu = make_layer(cell, num_layers, bidirectional, np.float64)
    gpu = make_layer(cell, num_layers, bidirectional, np.float64, device="cuda")
    y_c, s_c = cpu.forward(x, state, lengths=lengths)
    dx_c, ds_c = cpu.backward(dy, dstate)
    y_g, s_g = gpu.forward(cp.asarray(x), state, lengths=lengths)
    assert isinstance(y_g, cp.ndarray)
    dx_g, ds_g = gpu.backward(cp.asarray(dy), dstate)

    assert_close(_host(y_g), y_c, 1e-9, "y")
    assert_close(_host(dx_g), dx_c, 1e-9, "dx")
    for a, b in zip(_flat(s_g) + _flat(ds_g), _flat(s_c) + _flat(ds_c)):
        assert_close(_host(a), b, 1e-9, "state")
    for name in cpu.grads:
        assert isinstance(gpu.grads[name], cp.ndarray)
        assert_close(_host(gpu.grads[name]), cpu.grads[name], 1e-9, name)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("graphs", [False, True])
def test_functional_float64_matches_cpu_and_graph_replay(cell, graphs, rng):
    from fastrnn import functional as F
    G = GATES[cell]
    w = [rng.normal(scale=0.5, size=s) for s in ((G * H, I), (G * H, H), (G * H,), (G * H,))]
    x = rng.normal(size=(T, B, I))
    dy = rng.normal(size=(T, B, H))
    y_c, _, ws_c = F.recurrent_forward(cell, x, *w, lengths=LENGTHS, reverse=True)
    dx_c, _, g_c = F.recurrent_backward(ws_c, dy)
    wd = [cp.asarray(a) for a in w]
    xd, dyd = cp.asarray(x), cp.asarray(dy)
    GB.set_cuda_graphs(graphs)
    try:
        for _ in range(3):   # plain, capture, replay
            y_g, _, ws_g = GB.recurrent_forward(cell, xd, *wd, lengths=LENGTHS, reverse=True)
            dx_g, _, g_g = GB.recurrent_backward(ws_g, dyd)
            assert_close(_host(y_g), y_c, 1e-9, "y")
            assert_close(_host(dx_g), dx_c, 1e-9, "dx")
            for name in g_c:
                assert_close(_host(g_g[name]), g_c[name], 1e-9, name)
    finally:
        GB.set_cuda_graphs(False)


torch = None
try:
    import torch as _torch
    if _torch.cuda.is_available():
        torch = _torch
except ImportError:
    pass


@pytest.mark.skipif(torch is None, reason="PyTorch with CUDA is not available")
@pytest.mark.parametrize("cell,num_layers,bidirectional,with_lengths", [
    c[:4] for c in CASES if c[4]])
def test_float32_matches_torch_cudnn(cell, num_layers, bidirectional, with_lengths, rng):
    D = 2 if bidirectional else 1
    kwargs = dict(num_layers=num_layers, bidirectional=bidirectional)
    if cell.startswith("rnn"):
        ref = torch.nn.RNN(I, H, nonlinearity=cell[4:], **kwargs)
    else:
        ref = getattr(torch.nn, cell.upper())(I, H, **kwargs)
    ref = ref.cuda()
    ours = make_layer(cell, num_layers, bidirectional, np.float32)
    ours.load_state_dict({k: v.detach().cpu().numpy() for k, v in ref.state_dict().items()})
    ours.to("cuda")
    x = rng.normal(size=(T, B, I)).astype(np.float32)
    dy = rng.normal(size=(T, B, D * H)).astype(np.float32)
    shape = (num_layers * D, B, H)
    state = tuple(a.astype(np.float32) for a in _flat(_state(cell, rng, shape)))
    dstate = tuple(a.astype(np.float32) for a in _flat(_state(cell, rng, shape)))
    lengths = LENGTHS if with_lengths else None

    xt = torch.tensor(x, device="cuda", requires_grad=True)
    st = [torch.tensor(s, device="cuda", requires_grad=True) for s in state]
    inp = xt if lengths is None else torch.nn.utils.rnn.pack_padded_sequence(
        xt, torch.tensor(lengths), enforce_sorted=False)
    out, final = ref(inp, tuple(st) if cell == "lstm" else st[0])
    if lengths is not None:
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    finals = final if cell == "lstm" else (final,)
    loss = (out * torch.tensor(dy, device="cuda")).sum()
    for f, d in zip(finals, dstate):
        loss = loss + (f * torch.tensor(d, device="cuda")).sum()
    loss.backward()

    st_ours = state if cell == "lstm" else state[0]
    ds_ours = dstate if cell == "lstm" else dstate[0]
    y, s = ours.forward(cp.asarray(x), st_ours, lengths=lengths)
    dx, ds = ours.backward(cp.asarray(dy), ds_ours)
    assert_close(_host(y), out.detach().cpu().numpy(), 1e-5, "y")
    assert_close(_host(dx), xt.grad.cpu().numpy(), 1e-5, "dx")
    for a, b in zip(_flat(s), finals):
        assert_close(_host(a), b.detach().cpu().numpy(), 1e-5, "final state")
    for a, b in zip(_flat(ds), st):
        assert_close(_host(a), b.grad.cpu().numpy(), 1e-5, "dstate0")
    for name, p in ref.named_parameters():
        assert_close(_host(ours.grads[name]), p.grad.cpu().numpy(), 1e-5, name)


def test_to_round_trip_for_every_layer():
    layers = [fastrnn.LSTM(I, H, seed=0), fastrnn.GRU(I, H, bidirectional=True, seed=0),
              fastrnn.Embedding(10, I, seed=0), fastrnn.Linear(I, H, seed=0), fastrnn.Dropout(0.2)]
    for layer in layers:
        before = {k: v.copy() for k, v in layer.params.items()}
        assert layer.to("cuda") is layer and layer.device == "cuda"
        for k in layer.params:
            assert isinstance(layer.params[k], cp.ndarray)
            assert isinstance(layer.grads[k], cp.ndarray)
        layer.to("cpu")
        assert layer.device == "cpu"
        for k, v in before.items():
            assert isinstance(layer.params[k], np.ndarray)
            np.testing.assert_array_equal(layer.params[k], v)


def test_small_model_on_gpu_matches_cpu(rng):
    """Embedding -> LSTM -> tied Linear -> loss, float64, one forward/backward on each device."""
    ids = rng.integers(0, 11, size=(T, B))
    targets = rng.integers(0, 11, size=(T, B))
    results = []
    for device in ("cpu", "cuda"):
        emb = fastrnn.Embedding(11, I, dtype=np.float64, seed=1, device=device)
        rnn = fastrnn.LSTM(I, I, dtype=np.float64, seed=2, device=device)
        out = fastrnn.Linear.tied_to(emb, seed=3)
        loss_fn = fastrnn.SoftmaxCrossEntropy()
        y, _ = rnn.forward(emb.forward(ids))
        loss = loss_fn.forward(out.forward(y), targets)
        emb.backward(rnn.backward(out.backward(loss_fn.backward()))[0])
        grads = {k: _host(v) for layer in (emb, rnn, out) for k, v in layer.grads.items()}
        results.append((loss, grads))
    (l1, g1), (l2, g2) = results
    assert abs(l1 - l2) <= 1e-9 * max(1.0, abs(l1))
    for k in g1:
        assert_close(g2[k], g1[k], 1e-9, k)


def test_gpu_available():
    assert fastrnn.gpu_available() is True


# ---- the training stack on the GPU -------------------------------------------------------

def _train(device, mode, optimizer, steps=12, **model_kwargs):
    settings = dict(embed_size=16, hidden_size=16, num_layers=2, cell="lstm", dropout=0.2,
                    seed=1, dtype=np.float64, device=device)
    settings.update(model_kwargs)
    model = fastrnn.LanguageModel(23, **settings)
    ids = np.random.default_rng(0).integers(0, 23, 1500)
    data = ids[:1200] if mode == "stream" else [ids[i:i + 6 + i % 5] for i in range(0, 1200, 11)]
    trainer = fastrnn.Trainer(model, data, ids[1200:], batch_size=4, seq_len=12, lr=1e-2,
                              optimizer=optimizer, clip=0.5, eval_every=4, max_steps=steps,
                              progress=False)
    return model, trainer, trainer.fit()


@pytest.mark.parametrize("cell,tie,optimizer,mode", [
    ("lstm", False, "adam", "stream"), ("gru", True, "sgd", "sentences"),
    ("rnn_relu", False, "rmsprop", "stream")])
def test_language_model_training_on_gpu_matches_cpu(cell, tie, optimizer, mode):
    cpu, _, h_cpu = _train("cpu", mode, optimizer, cell=cell, tie_weights=tie)
    gpu, trainer, h_gpu = _train("cuda", mode, optimizer, cell=cell, tie_weights=tie)
    for name, p in cpu.params.items():
        assert isinstance(gpu.params[name], cp.ndarray), name
        assert_close(_host(gpu.params[name]), p, 1e-9, name)
    for a, b in zip(h_cpu, h_gpu):
        assert abs(a["val_loss"] - b["val_loss"]) <= 1e-9 * max(1.0, a["val_loss"])
    if mode == "stream":
        assert isinstance(trainer.carry[0] if cell == "lstm" else trainer.carry, cp.ndarray)
    # Generation on a GPU model (CPU loop on host copies) gives the CPU model's tokens.
    t_cpu, _ = cpu.generate_ids(np.array([1, 2]), 20, num_samples=2, seed=3)
    t_gpu, _ = gpu.generate_ids(np.array([1, 2]), 20, num_samples=2, seed=3)
    np.testing.assert_array_equal(t_gpu, t_cpu)


def test_gpu_checkpoint_resumes_on_either_device(tmp_path):
    straight, _, _ = _train("cpu", "stream", "adam", steps=10)
    path = tmp_path / "ckpt.npz"
    model, trainer, _ = _train("cuda", "stream", "adam", steps=5)
    trainer.save_checkpoint(path)
    for device in ("cuda", "cpu"):
        resumed, trainer, _ = _train(device, "stream", "adam", steps=1, seed=7)
        trainer.max_steps = 10
        trainer.load_checkpoint(path)
        trainer.fit()
        for name, p in straight.params.items():
            assert_close(_host(resumed.params[name]), p, 1e-9, name)


def test_cli_train_sample_eval_on_gpu(tmp_path):
    from fastrnn.lm.cli import main
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat.\nthe dog sat on the log.\n" * 30, encoding="utf-8")
    out = tmp_path / "model.npz"
    tiny = ["--embed", "8", "--hidden", "16", "--layers", "1", "--batch", "4", "--seq-len",
            "16", "--no-progress", "--max-steps", "20", "--eval-every", "10", "--dtype",
            "float64", "--out", str(out)]
    assert main(["train", str(corpus), "--device", "cuda", *tiny]) == 0
    on_gpu = fastrnn.LanguageModel.load(out)
    assert main(["train", str(corpus), *tiny]) == 0
    on_cpu = fastrnn.LanguageModel.load(out)
    for name, p in on_cpu.params.items():
        assert_close(on_gpu.params[name], p, 1e-9, name)
    assert main(["sample", str(out), "--device", "cuda", "--length", "20", "--seed", "1"]) == 0
    assert main(["eval", str(out), str(corpus), "--device", "cuda"]) == 0
