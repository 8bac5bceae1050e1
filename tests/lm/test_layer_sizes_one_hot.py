"""Issue 12: per-layer hidden sizes (``hidden_size=[128, 512]``) and one-hot inputs
(``one_hot=True``) on LanguageModel, the recurrent layers, the compiled generator, the
Trainer's carried state, model files and the CLI."""
import numpy as np
import pytest

import fastrnn
from fastrnn import LanguageModel, Trainer
from fastrnn.layers import GRU, LSTM
from fastrnn.lm import checkpoint
from fastrnn.lm.generation import _generate_tokens
from helpers import assert_model_gradients_match, cli_error_line

CELLS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
V = 11


def _model(cell="lstm", hidden_size=(3, 5), one_hot=False, **kwargs):
    settings = dict(embed_size=None if one_hot else 4, cell=cell, seed=3, dtype=np.float64,
                    one_hot=one_hot)
    settings.update(kwargs)
    return LanguageModel(V, hidden_size=list(hidden_size), **settings)


def _random_state(model, B, rng):
    state = model.initial_state(B)
    if isinstance(state, tuple):
        return tuple(_randomise(part, rng) for part in state)
    return _randomise(state, rng)


def _randomise(part, rng):
    if isinstance(part, list):
        return [rng.standard_normal(a.shape) * 0.5 for a in part]
    return rng.standard_normal(part.shape) * 0.5


# ---- structure and errors -----------------------------------------------------------------

def test_per_layer_sizes_shape_the_parameters_and_the_state():
    model = _model("lstm", (3, 5))
    assert model.num_layers == 2 and model.hidden_size == [3, 5]
    assert model.params["rnn.weight_ih_l0"].shape == (12, 4)
    assert model.params["rnn.weight_ih_l1"].shape == (20, 3)
    assert model.params["rnn.weight_hh_l1"].shape == (20, 5)
    assert model.params["output.weight"].shape == (V, 5)
    h, c = model.initial_state(2)
    assert [a.shape for a in h] == [(1, 2, 3), (1, 2, 5)] == [a.shape for a in c]
    # Equal sizes keep one stacked array (today's format), an int today's model exactly.
    same = LanguageModel(V, embed_size=4, hidden_size=[6, 6], seed=3)
    assert same.hidden_size == 6 and same.initial_state(2)[0].shape == (2, 2, 6)
    plain = LanguageModel(V, embed_size=4, hidden_size=6, seed=3)
    assert plain.num_layers == 2 and plain.config() == same.config()
    for name, value in plain.params.items():
        np.testing.assert_array_equal(same.params[name], value)
    assert LanguageModel(V, hidden_size=[4, 5, 6]).num_layers == 3


def test_one_hot_has_no_embedding_parameters():
    model = _model("gru", (6,), one_hot=True)
    assert "embedding.weight" not in model.params and "embedding.weight" not in model.state_dict()
    assert model.embed_size == V and model.params["rnn.weight_ih_l0"].shape == (18, V)
    assert "one_hot=True" in repr(model)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(hidden_size=[3, 5], num_layers=3), ValueError, "hidden_size lists 2 layer sizes"),
    (dict(hidden_size=[]), ValueError, "non-empty list"),
    (dict(hidden_size=[3, 0]), ValueError, r"hidden_size\[1\] must be >= 1"),
    (dict(hidden_size=[3, 2.5]), TypeError, r"hidden_size\[1\] must be an integer"),
    (dict(hidden_size=[3, 5], embed_size=3, tie_weights=True), ValueError,
     "tie_weights needs embed_size == the last layer's hidden_size"),
    (dict(one_hot=True, embed_size=4), ValueError, "embed_size must be None or vocab_size"),
    (dict(one_hot=True, hidden_size=V, tie_weights=True), ValueError, "tie_weights cannot"),
    (dict(one_hot=1), TypeError, "one_hot must be True or False"),
])
def test_bad_arguments_are_refused(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        LanguageModel(V, **kwargs)


def test_a_state_in_the_wrong_format_is_refused(rng):
    model = _model("gru", (3, 5))
    x = rng.integers(0, V, (4, 2))
    with pytest.raises(ValueError, match="must be a list of 2 arrays, one per layer"):
        model.forward(x, x, np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match=r"state\[1\] must have shape"):
        model.forward(x, x, [np.zeros((1, 2, 3)), np.zeros((1, 2, 3))])
    tied = LanguageModel(V, embed_size=5, hidden_size=[3, 5], tie_weights=True)
    assert tied.output.weight is tied.embedding.params["weight"]


# ---- gradients: float64 central finite differences of the whole loss --------------------

@pytest.mark.parametrize("cell", CELLS)
def test_per_layer_sizes_gradients_match_finite_differences(cell, rng):
    model = _model(cell, (3, 5))
    x, y = rng.integers(0, V, (6, 3)), rng.integers(0, V, (6, 3))
    state = _random_state(model, 3, rng)
    lengths = np.array([6, 3, 5])

    def loss():
        return model.forward(x, y, state, lengths)[0]

    assert_model_gradients_match(model, loss, rng)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("hidden_size", [(4,), (3, 5)])
def test_one_hot_gradients_match_finite_differences(cell, hidden_size, rng):
    model = _model(cell, hidden_size, one_hot=True)
    x, y = rng.integers(0, V, (6, 2)), rng.integers(0, V, (6, 2))

    def loss():
        return model.forward(x, y)[0]

    assert_model_gradients_match(model, loss, rng)


# ---- PyTorch with the same weights ------------------------------------------------------

def _torch_stack(torch, model):
    """One one-layer torch module per layer, with the model's weights."""
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[model.cell.name]
    layers = []
    sizes = model.rnn.hidden_sizes
    for l, H in enumerate(sizes):
        module = cls(model.embed_size if l == 0 else sizes[l - 1], H).double()
        with torch.no_grad():
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(module, f"{kind}_l0").copy_(
                    torch.from_numpy(model.params[f"rnn.{kind}_l{l}"]))
        layers.append(module)
    out = torch.nn.Linear(sizes[-1], V).double()
    with torch.no_grad():
        out.weight.copy_(torch.from_numpy(model.params["output.weight"]))
        out.bias.copy_(torch.from_numpy(model.params["output.bias"]))
    return layers, out


def _torch_loss(torch, model, layers, out, inputs, y, state):
    h, finals = inputs, []
    for l, module in enumerate(layers):
        if model.cell.has_cell_state:
            init = (torch.from_numpy(state[0][l]), torch.from_numpy(state[1][l]))
        else:
            init = torch.from_numpy(state[l])
        h, final = module(h, init)
        finals.append(final)
    logits = out(h)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), torch.from_numpy(y).reshape(-1))
    return loss, finals


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("one_hot", [False, True])
def test_per_layer_stack_matches_torch_layers(cell, one_hot, rng):
    """hidden_size=[3, 5] equals two one-layer torch modules; one_hot equals torch with an
    identity embedding."""
    torch = pytest.importorskip("torch")
    model = _model(cell, (3, 5), one_hot=one_hot)
    layers, out = _torch_stack(torch, model)
    emb = torch.nn.Embedding(V, model.embed_size).double()
    with torch.no_grad():
        emb.weight.copy_(torch.eye(V, dtype=torch.float64) if one_hot else
                         torch.from_numpy(model.params["embedding.weight"]))
    x, y = rng.integers(0, V, (7, 2)), rng.integers(0, V, (7, 2))
    state = _random_state(model, 2, rng)
    loss, final = model.forward(x, y, state)
    model.zero_grad()
    model.backward()
    ref, ref_final = _torch_loss(torch, model, layers, out, emb(torch.from_numpy(x)), y, state)
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-12)
    for l in range(2):
        if cell == "lstm":
            np.testing.assert_allclose(final[0][l], ref_final[l][0].detach().numpy(), rtol=1e-12)
            np.testing.assert_allclose(final[1][l], ref_final[l][1].detach().numpy(), rtol=1e-12)
        else:
            np.testing.assert_allclose(final[l], ref_final[l].detach().numpy(), rtol=1e-12)
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            np.testing.assert_allclose(model.grads[f"rnn.{kind}_l{l}"],
                                       getattr(layers[l], f"{kind}_l0").grad.numpy(),
                                       rtol=1e-9, atol=1e-12, err_msg=f"{kind}_l{l}")
    np.testing.assert_allclose(model.grads["output.weight"], out.weight.grad.numpy(), rtol=1e-10)
    if not one_hot:
        np.testing.assert_allclose(model.grads["embedding.weight"], emb.weight.grad.numpy(),
                                   rtol=1e-9, atol=1e-12)


def test_bidirectional_layer_with_per_layer_sizes_matches_torch(rng):
    torch = pytest.importorskip("torch")
    layer = GRU(4, [3, 5], bidirectional=True, dtype=np.float64, seed=1)
    assert layer.num_layers == 2 and layer.params["weight_ih_l1_reverse"].shape == (15, 6)
    refs = [torch.nn.GRU(4, 3, bidirectional=True).double(),
            torch.nn.GRU(6, 5, bidirectional=True).double()]
    with torch.no_grad():
        for l, ref in enumerate(refs):
            for name, param in ref.named_parameters():
                param.copy_(torch.from_numpy(layer.params[name.replace("l0", f"l{l}")]))
    x = rng.standard_normal((5, 2, 4))
    state = [rng.standard_normal((2, 2, 3)), rng.standard_normal((2, 2, 5))]
    y, final = layer.forward(x, state)
    h = torch.from_numpy(x)
    for l, ref in enumerate(refs):
        h, ref_final = ref(h, torch.from_numpy(state[l]))
        np.testing.assert_allclose(final[l], ref_final.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(y, h.detach().numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="hidden_size lists 2 layer sizes"):
        LSTM(4, [3, 5], num_layers=1)


# ---- generation ---------------------------------------------------------------------------

def _stepwise_greedy(model, prime, n_tokens):
    """Greedy tokens from model.logits one step at a time (the reference)."""
    model.eval()
    state, tokens = None, []
    logits, state = model.logits(prime[:, None], state)
    for _ in range(n_tokens):
        token = int(np.argmax(logits[-1, 0]))
        tokens.append(token)
        logits, state = model.logits(np.array([[token]]), state)
    return tokens


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("hidden_size, one_hot", [((20, 40), False), ((40, 20), False),
                                                  ((20, 7, 33), True), ((24,), True)])
@pytest.mark.parametrize("split", ["rows", "batch"])
def test_greedy_generation_matches_step_by_step_forward(cell, hidden_size, one_hot, split, rng):
    model = _model(cell, hidden_size, one_hot=one_hot, seed=int(rng.integers(100)))
    for name, param in model.params.items():   # larger weights: a less flat distribution
        param *= 3.0
    prime = rng.integers(0, V, 4)
    reference = _stepwise_greedy(model, prime, 15)
    layers = [tuple(w) for w in model.rnn.all_weights]
    embedding = None if one_hot else model.params["embedding.weight"]
    for threads in (1, 2):
        fastrnn.set_num_threads(threads)
        try:
            for table in (True, False):
                tokens, lengths, _ = _generate_tokens(
                    cell, layers, embedding, model.output.weight, model.output.bias,
                    np.stack([prime, prime]), 15, greedy=True, split=split, layer0_table=table)
                assert tokens.tolist() == [reference, reference]
        finally:
            fastrnn.set_num_threads(None)
    tokens, lengths = model.generate_ids(prime, 15, num_samples=3, greedy=True)
    assert tokens.tolist() == [reference] * 3 and lengths.tolist() == [15] * 3


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_generation_final_state_continues_a_forward(cell, rng):
    """The final state of the compiled loop (in the layered format) is the forward's state
    after the consumed tokens, and feeds back into both."""
    model = _model(cell, (3, 5), one_hot=True)
    model.eval()
    layers = [tuple(w) for w in model.rnn.all_weights]
    prime = rng.integers(0, V, (2, 5))
    state = _random_state(model, 2, rng)
    tokens, lengths, final = _generate_tokens(cell, layers, None, model.output.weight,
                                              model.output.bias, prime, 6, state=state, seed=4)
    consumed = np.concatenate([prime, tokens[:, :-1]], axis=1).T
    _, expected = model.logits(consumed, state)
    flat = (lambda s: list(s[0]) + list(s[1])) if cell == "lstm" else list
    for got, want in zip(flat(final), flat(expected)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    # A seed gives the same tokens whatever the thread count.
    fastrnn.set_num_threads(2)
    try:
        again = _generate_tokens(cell, layers, None, model.output.weight, model.output.bias,
                                 prime, 6, state=state, seed=4)[0]
    finally:
        fastrnn.set_num_threads(None)
    np.testing.assert_array_equal(again, tokens)


# ---- training: carried state, checkpoints -----------------------------------------------

def _stream(n=1500):
    return np.resize(np.random.default_rng(0).integers(0, V, 17), n)


@pytest.mark.parametrize("cell, one_hot", [("lstm", False), ("gru", True)])
def test_resuming_a_per_layer_one_hot_run_is_exact(cell, one_hot, tmp_path):
    ids = _stream()

    def run(model, **kwargs):
        return Trainer(model, ids[:1200], ids[1200:], batch_size=3, seq_len=8, lr=1e-2,
                       progress=False, eval_every=5, **kwargs)

    def make(seed=1):
        return _model(cell, (6, 9), one_hot=one_hot, dropout=0.2, seed=seed, dtype=np.float32)

    straight = make()
    run(straight, max_steps=14).fit()
    path = tmp_path / "ckpt.npz"
    first = run(make(), max_steps=7, checkpoint_path=path)
    first.fit()
    carry = first.carry[0] if cell == "lstm" else first.carry
    assert [a.shape for a in carry] == [(1, 3, 6), (1, 3, 9)]
    resumed_model = make(seed=99)
    resumed = run(resumed_model, max_steps=14)
    resumed.load_checkpoint(path)
    assert resumed.step == 7
    resumed.fit()
    for name, param in straight.params.items():
        np.testing.assert_array_equal(resumed_model.params[name], param, err_msg=name)
    # A carried state of the wrong layout is refused before anything changes.
    state = first.state_dict()
    state["carry"] = np.zeros((2, 3, 6), np.float32) if cell == "gru" else [np.zeros((2, 3, 6))] * 2
    with pytest.raises(ValueError, match="carry"):
        run(make(), max_steps=14).load_state_dict(state)


def test_model_files_round_trip_and_old_files_still_load(tmp_path, rng):
    model = _model("lstm", (3, 5), one_hot=True)
    path = tmp_path / "m.npz"
    model.save(path)
    with np.load(path) as npz:
        assert not any("embedding" in key for key in npz.files)
    loaded = LanguageModel.load(path)
    assert loaded.config() == model.config() and loaded.config()["hidden_size"] == [3, 5]
    for name, param in model.params.items():
        np.testing.assert_array_equal(loaded.params[name], param)
    x = rng.integers(0, V, (5, 2))
    assert loaded.forward(x, x)[0] == model.forward(x, x)[0]
    # A file written before these options (no one_hot key, an int hidden_size) loads as before.
    old = LanguageModel(V, embed_size=4, hidden_size=6, seed=2)
    config = old.config()
    del config["one_hot"]
    checkpoint.save(tmp_path / "old.npz", "language-model",
                    {"config": config, "vocab": None, "extra": None},
                    {f"params/{k}": v for k, v in old.params.items()})
    again = LanguageModel.load(tmp_path / "old.npz")
    assert again.config() == old.config() and not again.one_hot
    # A file whose arrays do not fit its per-layer sizes is refused.
    bad = model.config()
    bad["hidden_size"] = [3, 6]
    checkpoint.save(tmp_path / "bad.npz", "language-model", {"config": bad, "vocab": None,
                                                             "extra": None},
                    {f"params/{k}": v for k, v in model.params.items()})
    with pytest.raises(checkpoint.CheckpointError, match="has shape"):
        LanguageModel.load(tmp_path / "bad.npz")
    bad["hidden_size"], bad["num_layers"] = [3, 5], 3
    checkpoint.save(tmp_path / "bad.npz", "language-model", {"config": bad, "vocab": None,
                                                             "extra": None},
                    {f"params/{k}": v for k, v in model.params.items()})
    with pytest.raises(checkpoint.CheckpointError, match="hidden_size lists 2"):
        LanguageModel.load(tmp_path / "bad.npz")


def test_per_layer_one_hot_model_on_the_gpu_stand_in_matches_cpu(monkeypatch, rng):
    import fake_cupy
    fake_cupy.install(monkeypatch)
    cpu = _model("lstm", (3, 5), one_hot=True)
    gpu = _model("lstm", (3, 5), one_hot=True, device="cuda")
    ids = _stream(400)
    cpu_trainer = Trainer(cpu, ids[:300], ids[300:], batch_size=3, seq_len=7, lr=1e-2,
                          progress=False, max_steps=6, eval_every=3)
    gpu_trainer = Trainer(gpu, ids[:300], ids[300:], batch_size=3, seq_len=7, lr=1e-2,
                          progress=False, max_steps=6, eval_every=3)
    for a, b in zip(cpu_trainer.fit(), gpu_trainer.fit()):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-10)
    for name, param in cpu.params.items():
        np.testing.assert_allclose(gpu.params[name].get(), param, rtol=1e-10, atol=1e-12)
    t_cpu, _ = cpu.generate_ids(ids[:4], 10, seed=3)
    t_gpu, _ = gpu.generate_ids(ids[:4], 10, seed=3)
    np.testing.assert_array_equal(t_gpu, t_cpu)


# ---- CLI ----------------------------------------------------------------------------------

def test_cli_trains_resumes_and_samples_per_layer_one_hot(tmp_path, capsys):
    from fastrnn.lm.cli import main
    corpus = tmp_path / "t.txt"
    corpus.write_text("the cat sat on the mat. " * 60)
    out = tmp_path / "m.npz"
    common = ["--batch", "4", "--seq-len", "8", "--eval-every", "3", "--no-progress"]
    assert main(["train", str(corpus), "--hidden", "8,12", "--one-hot", "--max-steps", "3",
                 "--out", str(out), *common]) == 0
    model = LanguageModel.load(out)
    assert model.hidden_size == [8, 12] and model.num_layers == 2 and model.one_hot
    assert main(["train", str(corpus), "--resume", str(out), "--max-steps", "6",
                 "--hidden", "8,12", "--one-hot", "--no-progress"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert main(["sample", str(out), "--length", "20", "--seed", "1"]) == 0
    assert capsys.readouterr().out.strip()
    line = cli_error_line(capsys, ["train", str(corpus), "--resume", str(out), "--hidden", "8",
                                   "--max-steps", "9"])
    assert "--hidden 8 does not match the checkpoint's model ([8, 12])" in line
    line = cli_error_line(capsys, ["train", str(corpus), "--hidden", "8,x"])
    assert "--hidden" in line and "comma list" in line
    line = cli_error_line(capsys, ["train", str(corpus), "--hidden", "8,12", "--layers", "3"])
    assert "hidden_size lists 2 layer sizes" in line
    line = cli_error_line(capsys, ["train", str(corpus), "--one-hot", "--embed", "5"])
    assert "embed_size must be None or vocab_size" in line
