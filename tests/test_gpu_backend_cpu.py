"""The GPU backend's logic, checked on any machine (no CuPy, no GPU needed).

* the engine's GPU step loop (fastrnn._engine.reference.StepOps, which CudaOps extends) runs
  with NumPy and the reference step kernels (ReferenceOps), against the CPU engine
  (fastrnn.functional);
* the layers' plumbing, with the reference Ops standing in for the CPU kernels;
* the errors when "cuda" is asked for without CuPy or without a device;
* the CUDA source compiles (when nvcc is on PATH).
"""
import itertools
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

import fastrnn
from fastrnn import _device, _engine, _gpu
from fastrnn import functional as F
from fastrnn._engine.reference import ReferenceOps
from fastrnn._gpu import backend as GB
from helpers import GATES, assert_close, run_python

T, B, I, H = 6, 5, 4, 3
LENGTHS = [6, 1, 3, 2, 5]
SHORT_LENGTHS = [4, 1, 3, 2, 4]     # no sequence reaches the last steps
RTOL = 1e-10


def make_inputs(cell, rng, bias=True):
    G = GATES[cell]
    w = [rng.normal(scale=0.5, size=s) for s in ((G * H, I), (G * H, H))]
    w += [rng.normal(scale=0.5, size=(G * H,)) for _ in range(2)] if bias else [None, None]
    x = rng.normal(size=(T, B, I))
    return x, w


def state_like(cell, rng):
    if cell == "lstm":
        return rng.normal(size=(B, H)), rng.normal(size=(B, H))
    return rng.normal(size=(B, H))


def _flat(state):
    return list(state) if isinstance(state, tuple) else [state]


@pytest.mark.parametrize("cell,reverse,lengths,with_state,with_dstate,with_dy", [
    (cell, reverse, lengths, st, dst, dy)
    for cell, reverse, lengths, (st, dst, dy) in itertools.product(
        GATES, (False, True), (None, LENGTHS, SHORT_LENGTHS),
        ((False, False, True), (True, True, True), (True, True, False), (False, True, True)))
])
def test_backend_logic_matches_cpu_engine(cell, reverse, lengths, with_state, with_dstate,
                                          with_dy, rng):
    x, w = make_inputs(cell, rng)
    state = state_like(cell, rng) if with_state else None
    dstate = state_like(cell, rng) if with_dstate else None
    dy = rng.normal(size=(T, B, H)) if with_dy else None

    y_ref, st_ref, ws_ref = F.recurrent_forward(cell, x, *w, state=state, lengths=lengths,
                                                reverse=reverse)
    y, st, ws = _engine.forward(ReferenceOps(np), cell, x, *w, state=state, lengths=lengths,
                                reverse=reverse)
    assert_close(y, y_ref, RTOL, "y")
    for a, b in zip(_flat(st), _flat(st_ref)):
        assert_close(a, b, RTOL, "final state")

    dx_ref, ds_ref, g_ref = F.recurrent_backward(ws_ref, dy, dstate)
    dx, ds, g = _engine.backward(ws, dy, dstate)
    assert_close(dx, dx_ref, RTOL, "dx")
    for a, b in zip(_flat(ds), _flat(ds_ref)):
        assert_close(a, b, RTOL, "dstate0")
    assert set(g) == set(g_ref)
    for name in g_ref:
        assert_close(g[name], g_ref[name], RTOL, name)


@pytest.mark.parametrize("cell", list(GATES))
def test_backend_logic_strided_out_accumulation_and_no_bias(cell, rng):
    """Output into one half of a bidirectional buffer, gradients accumulated into given
    arrays, dx accumulated into dx_out, no biases, strided dy, lengths as a list."""
    x, w = make_inputs(cell, rng, bias=False)
    results = []
    for impl in ("cpu", "backend"):
        out = np.full((T, B, 2 * H), np.nan)
        grads = {"weight_ih": np.ones_like(w[0]), "weight_hh": np.ones_like(w[1])}
        dx_out = np.ones((T, B, I))
        dy = np.arange(T * B * 2 * H, dtype=np.float64).reshape(T, B, 2 * H) / 100
        if impl == "cpu":
            _, st, ws = F.recurrent_forward(cell, x, *w, lengths=LENGTHS, reverse=True,
                                            out=out[:, :, H:])
            _, ds, _ = F.recurrent_backward(ws, dy[:, :, H:], None, grads, dx_out)
        else:
            _, st, ws = _engine.forward(ReferenceOps(np), cell, x, *w, lengths=LENGTHS,
                                        reverse=True, out=out[:, :, H:])
            _, ds, _ = _engine.backward(ws, dy[:, :, H:], None, grads, dx_out)
        results.append((out, _flat(st), _flat(ds), grads, dx_out))
    (o1, s1, d1, g1, x1), (o2, s2, d2, g2, x2) = results
    assert np.isnan(o2[:, :, :H]).all()   # the other half untouched
    assert_close(o2[:, :, H:], o1[:, :, H:], RTOL, "y")
    for a, b in zip(s2 + d2, s1 + d1):
        assert_close(a, b, RTOL, "states")
    assert set(g2) == {"weight_ih", "weight_hh"}
    for name in g1:
        assert_close(g2[name], g1[name], RTOL, name)
    assert_close(x2, x1, RTOL, "dx")


def test_backend_workspace_is_consumed_once(rng):
    x, w = make_inputs("gru", rng)
    _, _, ws = _engine.forward(ReferenceOps(np), "gru", x, *w)
    _engine.backward(ws, np.ones((T, B, H)))
    with pytest.raises(ValueError, match="already consumed"):
        _engine.backward(ws, np.ones((T, B, H)))
    with pytest.raises(TypeError, match="workspace"):
        _engine.backward(object())


@pytest.mark.parametrize("cell,num_layers,bidirectional,with_lengths", [
    ("lstm", 2, True, True), ("gru", 2, True, False), ("rnn_tanh", 1, True, True),
    ("rnn_relu", 2, False, True), ("rnn_identity", 2, True, True), ("lstm", 1, False, False)])
def test_layer_plumbing_with_backend_logic(cell, num_layers, bidirectional, with_lengths,
                                           monkeypatch, rng):
    def make():
        kwargs = dict(num_layers=num_layers, bidirectional=bidirectional, dtype=np.float64,
                      seed=3, dropout=0.3)
        if cell.startswith("rnn"):
            return fastrnn.RNN(I, H, nonlinearity=cell[4:], **kwargs)
        return getattr(fastrnn, cell.upper())(I, H, **kwargs)

    D = 2 if bidirectional else 1
    x = rng.normal(size=(T, B, I))
    dy = rng.normal(size=(T, B, D * H))
    lengths = LENGTHS if with_lengths else None
    shape = (num_layers * D, B, H)
    state = (rng.normal(size=shape), rng.normal(size=shape)) if cell == "lstm" else rng.normal(size=shape)
    results = []
    for use_backend in (False, True):
        layer = make()
        if use_backend:
            monkeypatch.setattr(_engine, "cpu_ops", lambda: ReferenceOps(np))
        y, st = layer.forward(x, state, lengths=lengths)
        dx, ds = layer.backward(dy, state)
        results.append((y, _flat(st), dx, _flat(ds), layer.grads))
    (y1, s1, dx1, ds1, g1), (y2, s2, dx2, ds2, g2) = results
    assert_close(y2, y1, RTOL, "y")
    assert_close(dx2, dx1, RTOL, "dx")
    for a, b in zip(s2 + ds2, s1 + ds1):
        assert_close(a, b, RTOL, "states")
    for name in g1:
        assert_close(g2[name], g1[name], RTOL, name)


# ---- errors without CuPy / without a device ---------------------------------------------------

def _no_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)   # "import cupy" now raises ImportError


def test_cuda_without_cupy_raises_a_clear_error(monkeypatch):
    _no_cupy(monkeypatch)
    assert fastrnn.gpu_available() is False
    message = "CuPy is not installed: pip install 'fastrnn\\[gpu\\]'"
    with pytest.raises(_gpu.GPUUnavailableError, match=message):
        _gpu.require_gpu()
    assert issubclass(_gpu.GPUUnavailableError, RuntimeError)
    with pytest.raises(RuntimeError, match=message):
        fastrnn.LSTM(3, 4, device="cuda")
    for layer in (fastrnn.GRU(3, 4), fastrnn.Linear(3, 4), fastrnn.Embedding(5, 3),
                  fastrnn.Dropout(0.1)):
        with pytest.raises(RuntimeError, match=message):
            layer.to("cuda")
        assert layer.device == "cpu"
    with pytest.raises(RuntimeError, match=message):
        GB.recurrent_forward("gru", np.zeros((2, 1, 3)), np.zeros((12, 3)), np.zeros((12, 4)))


def test_cuda_without_device_raises_a_clear_error(monkeypatch):
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 0)))
    monkeypatch.setattr(_gpu, "_import_cupy", lambda: fake)
    assert fastrnn.gpu_available() is False
    with pytest.raises(RuntimeError, match="no CUDA device found"):
        fastrnn.RNN(3, 4, device="cuda")

    def failing():
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    fake.cuda.runtime.getDeviceCount = failing
    assert fastrnn.gpu_available() is False
    with pytest.raises(_gpu.GPUUnavailableError, match="no CUDA device found"):
        _gpu.require_gpu()


def test_gpu_available_never_raises(monkeypatch):
    def broken():
        raise OSError("libcudart.so: cannot open shared object file")

    monkeypatch.setattr(_gpu, "_import_cupy", broken)
    assert fastrnn.gpu_available() is False
    with pytest.raises(_gpu.GPUUnavailableError, match="CuPy failed to import"):
        _gpu.require_gpu()


def test_importing_fastrnn_does_not_import_cupy(tmp_path):
    code = ("import sys, fastrnn, fastrnn._gpu, fastrnn._gpu.backend; "
            "fastrnn.LSTM(3, 4).to('cpu'); assert 'cupy' not in sys.modules")
    run_python(["-c", code], cwd=tmp_path, check=True)


def test_device_helpers():
    a = np.arange(3.0)
    assert _device.to_device(a, "cpu") is a
    assert _device.get_array_module("cpu") is np
    assert _device.normalize_device("CUDA") == "cuda"
    with pytest.raises(ValueError, match="device must be one of"):
        _device.normalize_device("tpu")
    with pytest.raises(ValueError, match="device must be one of"):
        fastrnn.LSTM(3, 4, device="gpu")
    layer = fastrnn.LSTM(3, 4)
    params = dict(layer.params)
    assert layer.to("cpu") is layer and layer.device == "cpu"
    assert all(layer.params[k] is v for k, v in params.items())


def test_tied_linear_follows_the_owner_arrays():
    emb = fastrnn.Embedding(7, 3, seed=0)
    lin = fastrnn.Linear.tied_to(emb)
    new_weight = emb.params["weight"].copy()
    emb.params["weight"] = new_weight     # what Embedding.to(device) does
    assert lin.weight is new_weight and lin.weight_grad is emb.grads["weight"]
    assert lin.bias is lin.params["bias"]
    assert fastrnn.Linear(3, 2, bias=False).bias is None


# ---- the CUDA source ----------------------------------------------------------------------------

def test_kernel_names_are_in_the_source():
    source = GB.KERNEL_SOURCE.read_text()
    names = GB.all_kernel_names()
    n = 2 * 2 * len(GATES)   # kernels x dtypes x cells of the table
    assert len(names) == n and len(set(names)) == n
    for which in ("fr_forward_step", "fr_backward_step"):
        assert f"__global__ void {which}(" in source


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_cuda_source_compiles(tmp_path):
    """Compile kernels.cu to PTX with every template instance RawModule asks for."""
    refs = ",\n".join(f"(const void*)&{name}" for name in GB.all_kernel_names())
    src = tmp_path / "check.cu"
    src.write_text(GB.KERNEL_SOURCE.read_text() + f"\nconst void* fr_instances[] = {{\n{refs}\n}};\n")
    result = subprocess.run(["nvcc", "-ptx", "-arch=sm_80", "-Werror", "all-warnings",
                             str(src), "-o", str(tmp_path / "check.ptx")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    ptx = (tmp_path / "check.ptx").read_text()
    assert ptx.count(".entry") == 2 * 2 * len(GATES)
