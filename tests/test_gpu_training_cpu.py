"""The training stack on device="cuda", checked on any machine (no CuPy, no GPU needed).

fake_cupy.py stands in for CuPy (NumPy memory, CuPy's rules: no NumPy functions on device
arrays, no host/device mixing, host reads counted) and runs the GPU backend's generic code
with the NumPy reference kernels. With it, optimizers, LanguageModel, Trainer and the CLI run
their device code paths and must give what the CPU gives.
"""
import sys
import types

import numpy as np
import pytest

import fake_cupy
from fake_cupy import DeviceArray
from fastrnn import LanguageModel, Trainer, optim
from fastrnn.lm import checkpoint
from fastrnn._device import is_device_array
from fastrnn._gpu import GPUUnavailableError
from fastrnn.lm.cli import main

RTOL = 1e-10


@pytest.fixture
def cupy(monkeypatch):
    return fake_cupy.install(monkeypatch)


def _host(a):
    return a.get() if isinstance(a, DeviceArray) else a


# ---- optimizers and clipping ------------------------------------------------------------

OPTIMIZERS = [
    (optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    (optim.SGD, dict(lr=0.1)),
    (optim.Adam, dict(lr=1e-2, weight_decay=0.01)),
    (optim.AdamW, dict(lr=1e-2)),
    (optim.Adagrad, dict(lr=0.1, initial_accumulator_value=0.1)),
    (optim.Adadelta, dict(lr=1.0, weight_decay=0.01)),
    (optim.RMSprop, dict(lr=1e-2, momentum=0.5, centered=True)),
]


@pytest.mark.parametrize("cls,kwargs", OPTIMIZERS, ids=lambda v: getattr(v, "__name__", ""))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_optimizers_step_identically_on_device_arrays(cls, kwargs, dtype, cupy, rng):
    shapes = {"w": (4, 3), "b": (3,)}
    host_params = {k: rng.normal(size=s).astype(dtype) for k, s in shapes.items()}
    host_grads = {k: np.zeros(s, dtype) for k, s in shapes.items()}
    dev_params = {k: cupy.asarray(v) for k, v in host_params.items()}
    dev_grads = {k: cupy.asarray(v) for k, v in host_grads.items()}
    host_opt, dev_opt = cls(host_params, host_grads, **kwargs), cls(dev_params, dev_grads, **kwargs)
    assert all(is_device_array(b) for s in dev_opt.state.values() for b in s.values())
    for step in range(4):
        for k, s in shapes.items():
            g = rng.normal(size=s).astype(dtype)
            host_grads[k][...] = g
            dev_grads[k][...] = cupy.asarray(g)
        # The host sums the squares in float64 (one compiled pass), the device per array in
        # the arrays' precision: the norms agree to that rounding, not bit for bit.
        norms = [optim.clip_grad_norm(grads, 0.5) for grads in (host_grads, dev_grads)]
        assert isinstance(norms[1], float)
        assert norms[1] == pytest.approx(norms[0], rel=1e-6 if dtype == np.float32 else 1e-14)
        for k in shapes:   # so that both optimizers step from the same gradients
            dev_grads[k][...] = cupy.asarray(host_grads[k])
        host_opt.step()
        dev_opt.step()
        for k in shapes:
            assert is_device_array(dev_params[k])
            np.testing.assert_array_equal(dev_params[k].get(), host_params[k], err_msg=k)
    # A host copy of the device optimizer's state (what a checkpoint holds) restores exactly.
    saved = dev_opt.state_dict()
    saved["state"] = {n: {k: _host(b) for k, b in s.items()} for n, s in saved["state"].items()}
    restored = cls(dict(dev_params), dict(dev_grads), **kwargs).load_state_dict(saved)
    for name, buffers in restored.state.items():
        for key, buf in buffers.items():
            assert is_device_array(buf)
            np.testing.assert_array_equal(buf.get(), host_opt.state[name][key])


def test_clip_grad_norm_reads_the_device_once(cupy, rng):
    grads = [cupy.asarray(rng.normal(size=(5, 4))) for _ in range(6)]
    expected = optim.clip_grad_norm([g.get() for g in grads], 1.0)
    before = DeviceArray.syncs
    norm = optim.clip_grad_norm(grads + grads[:2], 1.0)    # repeated arrays count once
    assert DeviceArray.syncs - before == 1
    assert norm == pytest.approx(expected, rel=1e-14)   # see the test above
    assert optim.clip_grad_norm(grads, 1.0) == pytest.approx(1.0, rel=1e-5)


def test_optimizer_rejects_params_and_grads_on_different_devices(cupy):
    with pytest.raises(TypeError, match="same device"):
        optim.Adam({"w": cupy.asarray(np.zeros(3))}, {"w": np.zeros(3)})
    with pytest.raises(TypeError, match="same device"):
        optim.clip_grad_norm([cupy.asarray(np.zeros(3)), np.zeros(3)], 1.0)


# ---- LanguageModel and Trainer ----------------------------------------------------------

def make_model(device="cpu", **kwargs):
    settings = dict(embed_size=8, hidden_size=8, num_layers=2, cell="lstm", dropout=0.2, seed=1,
                    dtype=np.float64, device=device)
    settings.update(kwargs)
    return LanguageModel(13, **settings)


def stream(n=800, seed=0):
    return np.random.default_rng(seed).integers(0, 13, n)


def make_trainer(model, data, val, **kwargs):
    settings = dict(batch_size=3, seq_len=7, lr=1e-2, clip=0.5, progress=False,
                    schedule="plateau", eval_every=4)
    settings.update(kwargs)
    return Trainer(model, data, val, **settings)


def assert_same_params(model, reference):
    assert model.params.keys() == reference.params.keys()
    for name, param in reference.params.items():
        got = model.params[name]
        assert is_device_array(got) == (model.device == "cuda"), name
        np.testing.assert_allclose(_host(got), param, rtol=RTOL, atol=RTOL, err_msg=name)


@pytest.mark.parametrize("cell,tie,optimizer,mode", [
    ("lstm", False, "adam", "stream"), ("gru", True, "sgd", "stream"),
    ("rnn_tanh", False, "rmsprop", "sentences"), ("lstm", True, "adamw", "sentences")])
def test_trainer_on_device_matches_cpu(cell, tie, optimizer, mode, cupy):
    ids = stream()
    data = ids[:600] if mode == "stream" else [ids[i:i + 5 + i % 4] for i in range(0, 600, 9)]
    kwargs = dict(cell=cell, tie_weights=tie)
    cpu, gpu = make_model(**kwargs), make_model("cuda", **kwargs)
    assert gpu.device == "cuda" and "device='cuda'" in repr(gpu)
    assert gpu.config() == cpu.config()                  # no device: files load anywhere
    assert all(is_device_array(p) for p in gpu.params.values())
    if tie:
        assert gpu.output.weight is gpu.embedding.params["weight"]
    histories = []
    for model in (cpu, gpu):
        trainer = make_trainer(model, data, ids[600:], optimizer=optimizer, max_steps=9)
        histories.append(trainer.fit())
        if mode == "stream":
            carry = trainer.carry if isinstance(trainer.carry, tuple) else (trainer.carry,)
            assert all(is_device_array(c) == (model.device == "cuda") for c in carry)
    assert_same_params(gpu, cpu)
    for a, b in zip(*histories):
        assert a["step"] == b["step"]
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=RTOL)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=RTOL)


@pytest.mark.parametrize("one_hot", [False, True])
def test_trainer_on_device_with_the_lookup_in_the_rnn_matches_cpu(one_hot, cupy):
    """Without dropout the model hands the ids and its table (the embedding, or the identity
    of one-hot inputs) to the rnn, which looks the rows up on the device too (21 tokens per
    batch against V 13: the table is projected)."""
    ids = stream()
    kwargs = dict(dropout=0.0, one_hot=one_hot, embed_size=None if one_hot else 8)
    cpu, gpu = make_model(**kwargs), make_model("cuda", **kwargs)
    assert gpu._lookup_in_rnn(21)
    for model in (cpu, gpu):
        make_trainer(model, ids[:600], ids[600:], optimizer="adam", max_steps=6).fit()
    assert_same_params(gpu, cpu)


def test_device_checkpoints_hold_host_arrays_and_resume_exactly(tmp_path, cupy, monkeypatch):
    ids = stream()
    saved_arrays = []
    original_save = checkpoint.save

    def checked_save(path, kind, header, arrays):
        saved_arrays.extend(arrays.values())
        return original_save(path, kind, header, arrays)

    monkeypatch.setattr(checkpoint, "save", checked_save)
    straight = make_model()
    make_trainer(straight, ids[:600], ids[600:], max_steps=11).fit()

    path = tmp_path / "ckpt.npz"
    make_trainer(make_model("cuda"), ids[:600], ids[600:], max_steps=6, checkpoint_path=path).fit()
    assert saved_arrays and not any(isinstance(a, DeviceArray) for a in saved_arrays)
    # Resume on the device from a model with another init, and on the CPU: both continue.
    for device in ("cuda", "cpu"):
        model = make_model(device, seed=99)
        resumed = make_trainer(model, ids[:600], ids[600:], max_steps=11)
        resumed.load_checkpoint(path)
        assert resumed.step == 6
        carry = resumed.carry
        assert all(is_device_array(c) == (device == "cuda") for c in carry)
        resumed.fit()
        assert_same_params(model, straight)


def test_forward_evaluate_generate_save_load_on_device(tmp_path, cupy):
    cpu, gpu = make_model(dropout=0.0), make_model("cuda", dropout=0.0)
    ids = stream(200)
    x, y = ids[:60].reshape(20, 3), ids[1:61].reshape(20, 3)
    lengths = np.array([20, 7, 13])
    for args in ((x, y), (x, y, None, lengths)):
        loss_cpu, state_cpu = cpu.forward(*args)
        loss_gpu, state_gpu = gpu.forward(*args)
        assert isinstance(loss_gpu, float) and loss_gpu == pytest.approx(loss_cpu, rel=RTOL)
        assert is_device_array(state_gpu[0])
    # CuPy ids are accepted too, and a carried device state.
    loss_dev, _ = gpu.forward(cupy.asarray(x), cupy.asarray(y), state_gpu)
    assert loss_dev == pytest.approx(cpu.forward(x, y, state_cpu)[0], rel=RTOL)
    assert is_device_array(gpu.initial_state(2)[0])
    assert gpu.evaluate(ids, batch_size=4, seq_len=9) == pytest.approx(
        cpu.evaluate(ids, batch_size=4, seq_len=9), rel=RTOL)
    assert gpu.evaluate(cupy.asarray(ids)) == pytest.approx(cpu.evaluate(ids), rel=RTOL)
    # Generation runs the CPU loop on host copies: the same tokens as the CPU model.
    for kwargs in (dict(seed=5), dict(greedy=True)):
        t_cpu, n_cpu = cpu.generate_ids(ids[:4], 12, num_samples=2, **kwargs)
        t_gpu, n_gpu = gpu.generate_ids(cupy.asarray(ids[:4]), 12, num_samples=2, **kwargs)
        np.testing.assert_array_equal(t_gpu, t_cpu)
        np.testing.assert_array_equal(n_gpu, n_cpu)
    # Files hold host arrays and load on either device.
    path = tmp_path / "model.npz"
    gpu.save(path)
    with np.load(path) as npz:
        assert all(type(npz[k]) is np.ndarray for k in npz.files)
    on_cpu, on_gpu = LanguageModel.load(path), LanguageModel.load(path, device="cuda")
    assert on_cpu.device == "cpu" and on_gpu.device == "cuda"
    assert_same_params(on_gpu, cpu)
    assert_same_params(on_cpu, cpu)
    # And back: .to("cpu") gives NumPy arrays again (the tied weight included).
    tied = make_model("cuda", tie_weights=True).to("cpu")
    assert not any(is_device_array(p) for p in tied.params.values())
    assert tied.output.weight is tied.embedding.params["weight"]


def test_language_model_to_cuda_without_cupy_leaves_the_model_on_the_cpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    model = make_model()
    with pytest.raises(GPUUnavailableError, match="CuPy is not installed"):
        model.to("cuda")
    assert model.device == "cpu" and not any(is_device_array(p) for p in model.params.values())
    with pytest.raises(RuntimeError, match="CuPy is not installed"):
        make_model("cuda")


# ---- the command line -------------------------------------------------------------------

TINY = ["--embed", "8", "--hidden", "8", "--layers", "1", "--batch", "4", "--seq-len", "8",
        "--no-progress"]


@pytest.mark.parametrize("command", ["train", "sample", "eval", "demo"])
def test_cli_device_cuda_without_cupy_is_a_one_line_error(command, corpus, tmp_path, capsys,
                                                          monkeypatch):
    model = tmp_path / "model.npz"
    make_model().save(model)
    argv = {"train": ["train", str(corpus)], "sample": ["sample", str(model)],
            "eval": ["eval", str(model), str(corpus)], "demo": ["demo"]}[command]
    monkeypatch.setitem(sys.modules, "cupy", None)
    code = main(argv + ["--device", "cuda"])
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert lines == ["fastrnn: error: CuPy is not installed: pip install 'fastrnn[gpu]'"]


def test_cli_reports_a_missing_gpu_and_keeps_other_runtime_errors(corpus, capsys, monkeypatch):
    from fastrnn import _gpu
    from fastrnn.lm import cli
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 0)))
    monkeypatch.setattr(_gpu, "_import_cupy", lambda: fake)
    assert main(["train", str(corpus), "--device", "cuda"]) == 2
    assert capsys.readouterr().err.strip() == "fastrnn: error: no CUDA device found"

    def broken(args):
        raise RuntimeError("a bug, not a user error")

    build_parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(build_parser(), broken))
    with pytest.raises(RuntimeError, match="a bug"):
        main(["train", str(corpus)])


def _with_func(parser, func):
    parser._subparsers._group_actions[0].choices["train"].set_defaults(func=func)
    return parser


def test_cli_train_sample_eval_on_device(corpus, tmp_path, capsys, cupy):
    out = tmp_path / "model.npz"
    common = ["train", str(corpus), "--max-steps", "6", "--eval-every", "3", "--dtype", "float64",
              "--out", str(out), *TINY]
    assert main(common + ["--device", "cuda"]) == 0
    assert "device='cuda'" in capsys.readouterr().out
    gpu_model = LanguageModel.load(out)
    assert main(common) == 0
    assert_same_params(gpu_model, LanguageModel.load(out))
    assert main(["sample", str(out), "--device", "cuda", "--length", "10", "--seed", "1"]) == 0
    assert main(["eval", str(out), str(corpus), "--device", "cuda"]) == 0
    capsys.readouterr()
