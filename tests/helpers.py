"""Shared test utilities: tolerances against a reference, finite differences, data paths."""
from pathlib import Path

import numpy as np

from fastrnn.cells import CELLS

# Gate blocks per cell, by name, from the one table (fastrnn/cells.py).
GATES = {name: spec.gates for name, spec in CELLS.items()}

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


def relative_error(actual, expected):
    """max |actual - expected| over the reference's scale (at least 1)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape}"
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    return float(np.abs(actual - expected).max(initial=0.0)) / scale


def assert_close(actual, expected, rtol, name=""):
    err = relative_error(actual, expected)
    assert err <= rtol, f"{name}: relative error {err:.3e} > {rtol:.0e}"
    return err


def numerical_gradient(loss_fn, array, indices, eps=1e-6):
    """Central differences of the scalar ``loss_fn()`` w.r.t. ``array`` at flat ``indices``."""
    flat = array.reshape(-1)
    grads = np.empty(len(indices))
    for n, i in enumerate(indices):
        saved = flat[i]
        flat[i] = saved + eps
        up = loss_fn()
        flat[i] = saved - eps
        down = loss_fn()
        flat[i] = saved
        grads[n] = (up - down) / (2 * eps)
    return grads


def gradient_check_error(loss_fn, array, analytic, rng, samples=12, eps=1e-6):
    """Norm-wise relative error between ``analytic`` and central differences at a random
    sample of entries of ``array`` (modified in place and restored)."""
    size = array.size
    indices = rng.choice(size, size=min(samples, size), replace=False)
    numeric = numerical_gradient(loss_fn, array, indices, eps)
    exact = np.asarray(analytic).reshape(-1)[indices]
    denom = np.linalg.norm(numeric) + np.linalg.norm(exact)
    return 0.0 if denom == 0 else float(np.linalg.norm(numeric - exact) / denom)


def _state_arrays(state):
    """A recurrent layer's state as a list of arrays: [h] or [h, c]."""
    return list(state) if isinstance(state, tuple) else [state]


def recurrent_layer_gradient_errors(layer, x, state, lengths, dy, dstate, rng):
    """Backpropagate loss = sum(y * dy) + sum(final_state * dstate) through ``layer`` (float64)
    and return ``(errors, dx)``: errors maps "x", each parameter name and "state0"/"state1"
    (when ``state`` is given) to the relative error of its gradient against central
    differences of the loss. ``state``/``dstate`` may be None."""
    def loss():
        y, final = layer.forward(x, state, lengths)
        total = np.sum(y * dy)
        if dstate is not None:
            total += sum(np.sum(f * d) for f, d in zip(_state_arrays(final), _state_arrays(dstate)))
        return total

    layer.zero_grad()
    loss()
    dx, dstate0 = layer.backward(dy, dstate)
    errors = {"x": gradient_check_error(loss, x, dx, rng)}
    for name in layer.params:
        errors[name] = gradient_check_error(loss, layer.params[name], layer.grads[name], rng)
    if state is not None:
        for k, (s, ds) in enumerate(zip(_state_arrays(state), _state_arrays(dstate0))):
            errors[f"state{k}"] = gradient_check_error(loss, s, ds, rng)
    return errors, dx


def run_python(args, cwd, **kwargs):
    """Run ``python *args`` in a child process that imports the same fastrnn as this one.

    ``cwd`` should be outside the source tree: ``python -m``/``-c`` put the working directory
    first on sys.path, and a checkout's ``fastrnn/`` has no compiled extensions unless built
    in place. PYTHONPATH names the directory this process imported fastrnn from.
    """
    import os
    import subprocess
    import sys

    import fastrnn

    env = dict(os.environ, PYTHONPATH=str(Path(fastrnn.__file__).resolve().parents[1]))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, **kwargs)


def assert_model_gradients_match(model, loss, rng, tol=1e-6):
    """Run ``loss()`` (a training-mode forward of ``model``), backpropagate it, and check every
    parameter's gradient against central differences of ``loss`` (relative error < ``tol``)."""
    loss()
    model.zero_grad()
    model.backward()
    analytic = {k: g.copy() for k, g in model.grads.items()}
    for name, param in model.params.items():
        err = gradient_check_error(loss, param, analytic[name], rng)
        assert err < tol, f"{name}: {err:.2e}"


def cli_error_line(capsys, argv):
    """Run the ``fastrnn`` command's main(argv), expect exit code 2 and a single line on
    stderr (no traceback); return that line."""
    from fastrnn.lm.cli import main
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def spy_engine_backward(monkeypatch):
    """Record what each call of the engine's backward (fastrnn._engine.backward, which the
    bridges call) is told: a list that gets ``(input_grad, state0_grad, dy is None, dstate is
    None)`` per call, the call itself unchanged."""
    from fastrnn import _engine
    told = []
    engine_backward = _engine.backward

    def spy(ws, dy=None, dstate=None, grads=None, dx_out=None, state0_grad=True,
            input_grad=True):
        told.append((input_grad, state0_grad, dy is None, dstate is None))
        return engine_backward(ws, dy, dstate, grads, dx_out, state0_grad, input_grad)
    monkeypatch.setattr(_engine, "backward", spy)
    return told


def torch_copy_of_model(model, torch_dtype):
    """PyTorch's (Embedding, LSTM or GRU, Linear) with a LanguageModel's weights (untied),
    in ``torch_dtype``."""
    import torch
    rnn_class = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[model.cell.name]
    emb = torch.nn.Embedding(model.vocab_size, model.embed_size).to(torch_dtype)
    rnn = rnn_class(model.embed_size, model.hidden_size, model.num_layers).to(torch_dtype)
    fc = torch.nn.Linear(model.hidden_size, model.vocab_size).to(torch_dtype)
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(model.params["embedding.weight"]))
        for k, v in rnn.named_parameters():
            v.copy_(torch.from_numpy(model.params[f"rnn.{k}"]))
        fc.weight.copy_(torch.from_numpy(model.params["output.weight"]))
        fc.bias.copy_(torch.from_numpy(model.params["output.bias"]))
    return emb, rnn, fc
