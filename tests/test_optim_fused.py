"""The compiled Adam/AdamW step (fastrnn/_cpu/update.pyx) equals the NumPy step bit for bit.

Both paths do the same float operations in the same order, in the arrays' precision, so the
results must be identical, not merely close (the NumPy code is the one tested against
torch.optim and the hand-written formulas in test_optim.py). The NumPy path is the one
arrays that the compiled loop cannot take go through: here Fortran-ordered copies of the
same values (and, for 1-D arrays, strided views), so no test hook is needed.
"""
import math

import numpy as np
import pytest

from fastrnn import optim, threads
from fastrnn.optim import Adam, AdamW

# large: split among 2 threads (75,000 elements: at least _parts.pxd's MIN_PER_THREAD, 32 Ki,
# per thread); middle: one thread's, not the first's (update.pyx's one pass).
SHAPES = {"small": (3, 7), "bias": (11,), "large": (300, 250), "middle": (200, 200)}


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


def _count_compiled_calls(monkeypatch, one_pass):
    """Record the sizes of the arrays the compiled steps update. ``one_pass``: Adam takes
    adam_update_arrays (all parameters at once), else that pass declines (as it does for
    arrays it cannot take) and each parameter takes adam_update."""
    calls = []
    each, all_at_once = optim._compiled.adam_update, optim._compiled.adam_update_arrays

    def recorded_all(params, *args):
        taken = one_pass and all_at_once(params, *args)
        if taken:
            calls.extend(p.size for p in params)
        return taken
    monkeypatch.setattr(optim._compiled, "adam_update",
                        lambda *args: calls.append(args[0].size) or each(*args))
    monkeypatch.setattr(optim._compiled, "adam_update_arrays", recorded_all)
    return calls


@pytest.mark.parametrize("make", OPTIMIZERS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("num_threads", [1, 2, 3])
@pytest.mark.parametrize("one_pass", [True, False], ids=["one-pass", "per-parameter"])
def test_compiled_adam_equals_the_numpy_step_bit_for_bit(make, dtype, num_threads, one_pass,
                                                         monkeypatch):
    calls = _count_compiled_calls(monkeypatch, one_pass)
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


# ---- the passes over all parameters at once (update.pyx: adam_update_arrays, zero_arrays,
# ---- scale_arrays, sum_of_squares)

SCALARS = (0.9, 0.1, 0.999, 0.001, 0.5, 1e-8, 1e-3, False, 0.0, 1.0)


def _adam_lists(sizes, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(n).astype(dtype) for n in sizes] for _ in range(4)]


def test_one_pass_adam_equals_one_call_per_array_bit_for_bit():
    """Sizes below, at and above what one thread takes, on 1 to 3 threads: every element
    gets what its own array's call gives it."""
    sizes = [0, 5, 40_000, 100_003, 16, 70_000]
    for num_threads in (1, 2, 3):
        together, apart = _adam_lists(sizes), _adam_lists(sizes)
        assert optim._compiled.adam_update_arrays(*together, *SCALARS, num_threads) is True
        for arrays in zip(*apart):
            optim._compiled.adam_update(*arrays, *SCALARS, num_threads)
        for role_together, role_apart in zip(together, apart):
            for a, b in zip(role_together, role_apart):
                np.testing.assert_array_equal(a, b, strict=True)


def _views(storage, *spans):
    return [storage[lo:hi] for lo, hi in spans]


def _refused_lists():
    """Lists the one pass must decline: (what, params, grads, exp_avgs, exp_avg_sqs)."""
    f = lambda *shape: np.zeros(shape, np.float32)   # noqa: E731
    storage = np.zeros(100, np.float32)
    readonly = f(4)
    readonly.flags.writeable = False

    class Sub(np.ndarray):
        pass
    return [
        ("params overlapping", _views(storage, (0, 10), (5, 15)), [f(10), f(10)],
         [f(10), f(10)], [f(10), f(10)]),
        ("a param overlapping another's grad", _views(storage, (20, 24), (40, 44)),
         [f(4), storage[22:26]], [f(4), f(4)], [f(4), f(4)]),
        ("a buffer overlapping a grad", [f(4)], [storage[:4]], [storage[2:6]], [f(4)]),
        ("a param inside a long read-only grad", [f(8), storage[50:58]], [storage, f(8)][::-1],
         [f(8), f(8)], [f(8), f(8)]),
        ("not contiguous", [f(20)[::2]], [f(10)], [f(10)], [f(10)]),
        ("a read-only param", [readonly], [f(4)], [f(4)], [f(4)]),
        ("two dtypes", [f(4), np.zeros(4)], [f(4), np.zeros(4)], [f(4), np.zeros(4)],
         [f(4), np.zeros(4)]),
        ("a size mismatch in a group", [f(4)], [f(5)], [f(4)], [f(4)]),
        ("a subclass", [f(4).view(Sub)], [f(4)], [f(4)], [f(4)]),
        ("not an array", [[0.0] * 4], [f(4)], [f(4)], [f(4)]),
        ("integers", [np.zeros(4, np.int32)], [np.zeros(4, np.int32)],
         [np.zeros(4, np.int32)], [np.zeros(4, np.int32)]),
    ]


@pytest.mark.parametrize("case", _refused_lists(), ids=lambda case: case[0])
def test_one_pass_adam_declines_arrays_it_cannot_take_and_touches_nothing(case):
    _, *lists = case
    before = [[np.array(a, copy=True) for a in role] for role in lists]
    assert optim._compiled.adam_update_arrays(*lists, *SCALARS, 2) is False
    for role, saved in zip(lists, before):
        for a, b in zip(role, saved):
            np.testing.assert_array_equal(np.asarray(a), b)


def test_one_pass_adam_takes_read_only_and_shared_gradients():
    """Gradients are only read: read-only ones, and one gradient for two parameters, are
    fine."""
    params, _, exp_avgs, exp_avg_sqs = _adam_lists([6, 6])
    grad = np.ones(6, np.float32)
    grad.flags.writeable = False
    assert optim._compiled.adam_update_arrays(params, [grad, grad], exp_avgs, exp_avg_sqs,
                                              *SCALARS, 2) is True


def test_one_pass_adam_checks_the_lists():
    a = [np.zeros(3, np.float32)]
    with pytest.raises(ValueError, match="one length"):
        optim._compiled.adam_update_arrays(a, a + a, a, a, *SCALARS, 1)
    with pytest.raises(TypeError, match="expected list"):
        optim._compiled.adam_update_arrays(tuple(a), a, a, a, *SCALARS, 1)
    with pytest.raises(TypeError, match="expected list, got NoneType"):
        optim._compiled.sum_of_squares(None, 1)


def test_overlapping_parameters_take_the_per_parameter_steps(monkeypatch):
    """Two parameters that are views of one buffer: the one pass declines, and each takes
    its own step in turn, as an optimizer of each alone would."""
    storage, expected = (np.linspace(-1, 1, 20, dtype=np.float32) for _ in range(2))
    grads = {"a": np.full(12, 0.5, np.float32), "b": np.full(12, -2.0, np.float32)}
    calls = _count_compiled_calls(monkeypatch, one_pass=True)
    Adam({"a": storage[:12], "b": storage[8:]}, grads, lr=0.1).step()
    assert calls == [12, 12]   # adam_update twice, not the one pass
    Adam({"a": expected[:12]}, {"a": grads["a"]}, lr=0.1).step()
    Adam({"b": expected[8:]}, {"b": grads["b"]}, lr=0.1).step()
    np.testing.assert_array_equal(storage, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("num_threads", [1, 2, 3])
def test_zero_and_scale_arrays_cover_every_element(dtype, num_threads):
    """Each array, its last element included, and nothing past it."""
    rng = np.random.default_rng(1)
    sizes = [1, 100_003, 33, 70_001, 0]
    storages = [rng.standard_normal(n + 1).astype(dtype) for n in sizes]
    arrays = [s[:-1] for s in storages]
    expected = [a * 0.37 for a in arrays]   # NumPy's a *= 0.37
    assert optim._compiled.scale_arrays(arrays, 0.37, num_threads) is True
    for a, e, s in zip(arrays, expected, storages):
        np.testing.assert_array_equal(a, e, strict=True)
    tails = [s[-1] for s in storages]
    assert optim._compiled.zero_arrays(arrays, num_threads) is True
    assert not any(a.any() for a in arrays)
    assert [s[-1] for s in storages] == tails


def test_zero_and_scale_arrays_decline_overlapping_arrays():
    storage = np.ones(10, np.float32)
    assert optim._compiled.zero_arrays(_views(storage, (0, 6), (5, 10)), 2) is False
    assert optim._compiled.scale_arrays(_views(storage, (0, 6), (5, 10)), 2.0, 2) is False
    np.testing.assert_array_equal(storage, 1)
    assert optim._compiled.zero_arrays(_views(storage, (0, 5), (5, 10)), 2) is True


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sum_of_squares_is_exact_to_float64_rounding_and_independent_of_threads(dtype):
    rng = np.random.default_rng(2)
    arrays = [(rng.standard_normal(n) * 10.0 ** rng.integers(-3, 3)).astype(dtype)
              for n in (0, 7, 8193, 100_003, 1, 70_000)]
    exact = math.fsum(float(v) ** 2 for a in arrays for v in a)
    sums = {t: optim._compiled.sum_of_squares(arrays, t) for t in (1, 2, 3, 4)}
    assert sums[1] == pytest.approx(exact, rel=1e-13)
    assert len(set(sums.values())) == 1, sums   # the same bits on every thread count


def test_sum_of_squares_takes_read_only_and_overlapping_arrays_and_declines_the_rest():
    storage = np.arange(10, dtype=np.float32)
    storage.flags.writeable = False
    assert optim._compiled.sum_of_squares([storage[:6], storage[4:]], 2) == \
        float(np.sum(storage[:6] ** 2) + np.sum(storage[4:] ** 2))
    assert optim._compiled.sum_of_squares([np.zeros(4), np.zeros(4, np.float32)], 2) is None
    assert optim._compiled.sum_of_squares([np.zeros((4, 4))[:, 0]], 2) is None
    assert optim._compiled.sum_of_squares([np.zeros(4, np.int64)], 2) is None
    assert optim._compiled.sum_of_squares([], 2) == 0.0


def test_clip_grad_norm_compiled_and_numpy_paths_agree():
    """Float32 gradients (the compiled passes) and the same values in a layout they decline
    (NumPy's dot products and *=): both norms are the exact one to their rounding, and both
    leave the gradients at max_norm."""
    rng = np.random.default_rng(3)
    grads = [rng.standard_normal(s).astype(np.float32) for s in [(300, 250), (11,), (40, 7)]]
    numpy_path = [_numpy_path_copy(g) for g in grads]
    exact = math.sqrt(math.fsum(float(v) ** 2 for g in grads for v in g.ravel()))
    assert optim.clip_grad_norm(grads, 1.0) == pytest.approx(exact, rel=1e-12)
    assert optim.clip_grad_norm(numpy_path, 1.0) == pytest.approx(exact, rel=1e-5)
    for clipped in (grads, numpy_path):
        after = math.sqrt(math.fsum(float(v) ** 2 for g in clipped for v in g.ravel()))
        assert after == pytest.approx(1.0, rel=1e-5)
