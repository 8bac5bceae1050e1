"""The compiled Adam/AdamW step (fastrnn/_cpu/update.pyx) equals the NumPy step bit for bit.

Both paths do the same float operations in the same order, in the arrays' precision, so the
results must be identical, not merely close (the NumPy code is the one tested against
torch.optim and the hand-written formulas in test_optim.py). The NumPy path is the one
arrays that the compiled loop cannot take go through: here Fortran-ordered copies of the
same values (and, for 1-D arrays, strided views), so no test hook is needed.
"""
import numpy as np
import pytest

from fastrnn import optim, threads
from fastrnn.optim import Adam, AdamW

SHAPES = {"small": (3, 7), "bias": (11,), "large": (300, 250)}   # large: split among 2 threads
# (75,000 elements: at least _parts.pxd's MIN_PER_THREAD, 32 Ki, per thread)


def _problem(dtype, seed=0, steps=6):
    rng = np.random.default_rng(seed)
    params = {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}
    grads = [{k: (rng.standard_normal(s) * 10.0 ** rng.integers(-6, 3)).astype(dtype)
              for k, s in SHAPES.items()} for _ in range(steps)]
    return params, grads


def _numpy_path_copy(a):
    """The same values in a layout the compiled loop refuses (so NumPy's code runs)."""
    if a.ndim >= 2:
        return np.asfortranarray(a)
    strided = np.zeros(2 * a.size, a.dtype)[::2]
    strided[...] = a
    return strided


def _run(make, params, grad_steps, layout=lambda a: a.copy()):
    params = {k: layout(v) for k, v in params.items()}
    grads = {k: layout(np.zeros_like(v)) for k, v in params.items()}
    optimizer = make(params, grads)
    for step in grad_steps:
        for k, g in step.items():
            grads[k][...] = g
        optimizer.step()
    return optimizer


OPTIMIZERS = [
    lambda p, g: Adam(p, g, lr=2e-3),
    lambda p, g: Adam(p, g, lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01),
    lambda p, g: AdamW(p, g, lr=1e-2, weight_decay=0.1),
    lambda p, g: AdamW(p, g, lr=3e-3, betas=(0.5, 0.9), weight_decay=0.0),
]


@pytest.mark.parametrize("make", OPTIMIZERS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("num_threads", [1, 2])
def test_compiled_adam_equals_the_numpy_step_bit_for_bit(make, dtype, num_threads, monkeypatch):
    calls = []
    compiled = optim._compiled.adam_update
    monkeypatch.setattr(optim._compiled, "adam_update",
                        lambda *args: calls.append(args[0].size) or compiled(*args))
    monkeypatch.setattr(threads, "_num_threads", num_threads)
    params, grad_steps = _problem(dtype)
    fused = _run(make, params, grad_steps)
    assert sorted(set(calls)) == sorted(int(np.prod(s)) for s in SHAPES.values())
    calls.clear()
    reference = _run(make, params, grad_steps, layout=_numpy_path_copy)
    assert calls == []   # the reference really took NumPy's code
    for name in SHAPES:
        assert fused.params[name].dtype == dtype
        np.testing.assert_array_equal(fused.params[name], reference.params[name], strict=True)
        for key in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_array_equal(fused.state[name][key], reference.state[name][key])
        assert not np.array_equal(fused.params[name], params[name])   # it did move


def test_compiled_adam_leaves_gradients_untouched_and_skips_frozen():
    params, grad_steps = _problem(np.float32)
    original = {k: v.copy() for k, v in params.items()}
    optimizer = _run(lambda p, g: Adam(p, g, lr=1e-2, weight_decay=0.1, frozen={"bias"}),
                     params, grad_steps)
    for name, g in grad_steps[-1].items():
        np.testing.assert_array_equal(optimizer.grads[name], g)
    np.testing.assert_array_equal(optimizer.params["bias"], original["bias"])
    assert not optimizer.state["bias"]["exp_avg"].any()


def test_arrays_sharing_memory_take_the_numpy_step(monkeypatch):
    """A gradient that is a view of its parameter: the one-pass loop would read updated
    values, so the NumPy code (which reads the gradient before writing) runs instead."""
    monkeypatch.setattr(optim._compiled, "adam_update",
                        lambda *args: pytest.fail("the compiled step must not run"))
    storage = np.arange(1.0, 9.0, dtype=np.float32)
    param, grad = storage[:6], storage[2:]
    optimizer = Adam({"w": param}, {"w": grad}, lr=0.1)
    optimizer.step()
    assert np.isfinite(param).all()


def test_kernel_checks_its_arrays():
    """The compiled entry refuses what it cannot write safely, before touching anything."""
    update = optim._compiled.adam_update
    a, b, c = (np.zeros(5, np.float32) for _ in range(3))
    scalars = (0.9, 0.1, 0.999, 0.001, 1.0, 1e-8, 1e-3, False, 0.0, 1.0)
    with pytest.raises(ValueError, match="must have param's 5 elements"):
        update(a, b, c, np.zeros(4, np.float32), *scalars)
    with pytest.raises(ValueError):   # not contiguous
        update(np.zeros(10, np.float32)[::2], b, c, a, *scalars)
    with pytest.raises((ValueError, TypeError)):   # mixed dtypes
        update(a, b, c, np.zeros(5, np.float64), *scalars)
    readonly = np.zeros(5, np.float32)
    readonly.flags.writeable = False
    with pytest.raises((ValueError, TypeError)):
        update(readonly, b, c, a, *scalars)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("num_threads", [1, 2, 3])
def test_zero_fill_zeroes_every_element_of_every_thread_share(dtype, num_threads):
    """n is not a multiple of the thread count and is large enough to be split
    (MIN_PER_THREAD = 32 Ki): every share, including the last element, is zeroed, and
    nothing past the array is touched."""
    storage = np.full(100_003 + 1, np.nan, dtype)
    a = storage[:-1]
    optim._compiled.zero_fill(a, num_threads)
    assert not np.any(a), "an element was left"
    assert np.isnan(storage[-1]), "zero_fill wrote past the array"


def test_zero_grad_zeroes_contiguous_strided_and_integer_arrays(monkeypatch):
    """Layer and optimizer zero_grad (zero_arrays): the compiled fill for contiguous float
    arrays, NumPy's for the rest; both leave every element zero."""
    from fastrnn._engine.cpu import zero_arrays
    from fastrnn.layers import Linear
    monkeypatch.setattr(threads, "_num_threads", 2)
    grads = {"w": np.full((400, 300), np.nan, np.float32),   # 120,000: split in two
             "strided": np.full((50, 8), np.nan)[:, ::2]}
    Adam({k: np.zeros_like(g) for k, g in grads.items()}, grads).zero_grad()
    for name, g in grads.items():
        assert not np.any(g), name
    ints = np.ones(7, np.int64)
    zero_arrays([ints])
    assert not np.any(ints)
    layer = Linear(300, 400)
    for g in layer.grads.values():
        g[...] = np.nan
    layer.zero_grad()
    assert all(not np.any(g) for g in layer.grads.values())
