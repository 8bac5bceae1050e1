"""The CPU engine keeps its internal buffers (saved activations, scratch) between calls
(fastrnn/_engine/buffers.py): reused only when nobody else can see them, bounded in size,
and invisible in the results."""
import numpy as np
import pytest

from fastrnn import functional as F
from fastrnn._engine import cpu
from fastrnn._engine.buffers import BufferCache
from helpers import GATES


def test_a_released_buffer_is_handed_back_for_the_same_shape_and_dtype():
    cache = BufferCache()
    a = cache.empty((3, 4), np.float32)
    address = a.ctypes.data
    released = [a]
    del a
    cache.release(released)
    assert released == [] and cache.nbytes == 48
    assert cache.empty((3, 4), np.float64).ctypes.data != address   # other dtype: new
    assert cache.empty((4, 3), np.float32).ctypes.data != address   # other shape: new
    b = cache.empty((3, 4), np.float32)
    assert b.ctypes.data == address and cache.nbytes == 0


@pytest.mark.parametrize("holder", ["reference", "view", "not_owner"])
def test_a_buffer_someone_else_holds_is_not_kept(holder):
    cache = BufferCache()
    a = cache.empty((8, 8), np.float64)
    kept = {"reference": lambda: a, "view": lambda: a[2:], "not_owner": lambda: None}[holder]()
    released = [a[:] if holder == "not_owner" else a]
    del a
    cache.release(released)
    assert cache.nbytes == 0
    assert kept is not None or holder == "not_owner"


def test_the_cache_keeps_at_most_max_bytes_oldest_dropped_first():
    cache = BufferCache(max_bytes=3 * 800)
    arrays = [cache.empty((100,), np.float64) for _ in range(4)]
    addresses = [a.ctypes.data for a in arrays]
    cache.release(arrays)   # pops from the end: the last one is released first, so oldest
    assert cache.nbytes == 3 * 800
    kept = {cache.empty((100,), np.float64).ctypes.data for _ in range(3)}
    assert kept == set(addresses[:3])
    too_big = [np.empty(3 * 800 + 8, np.uint8)]
    cache.release(too_big)
    assert cache.nbytes == 0
    cache.release([cache.empty((2,), np.float32)])
    cache.clear()
    assert cache.nbytes == 0


@pytest.mark.parametrize("cell", list(GATES))
def test_reused_buffers_leave_results_unchanged_and_held_arrays_alone(cell, rng):
    """Forward+backward three times on the CPU engine: the second and third reuse the first's
    buffers and must give the first's results bit for bit. An array a caller took from a
    workspace (ws.gates) is never reused under it."""
    T, B, I, H = 5, 3, 4, 6
    G = GATES[cell]
    w = [rng.normal(scale=0.4, size=s) for s in ((G * H, I), (G * H, H), (G * H,), (G * H,))]
    x = rng.normal(size=(T, B, I))
    dy = rng.normal(size=(T, B, H))
    cpu._BUFFERS.clear()
    results = []
    for _ in range(3):
        y, _, ws = F.recurrent_forward(cell, x, *w)
        dx, _, grads = F.recurrent_backward(ws, dy)
        results.append((y, dx, grads))
    assert cpu._BUFFERS.nbytes > 0
    for y, dx, grads in results[1:]:
        np.testing.assert_array_equal(y, results[0][0])
        np.testing.assert_array_equal(dx, results[0][1])
        for name in grads:
            np.testing.assert_array_equal(grads[name], results[0][2][name])

    y, _, ws = F.recurrent_forward(cell, x, *w)
    held = ws.gates
    F.recurrent_backward(ws, dy)
    snapshot = held.copy()
    for _ in range(2):
        _, _, ws2 = F.recurrent_forward(cell, 2 * x, *w)
        F.recurrent_backward(ws2, dy)
    np.testing.assert_array_equal(held, snapshot)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_stacked_layers_reuse_the_gradient_between_layers_and_return_a_fresh_dx(bidirectional,
                                                                                 rng):
    """A 3-layer LSTM takes the gradient between stacked layers from the cache and hands it
    back: repeated steps give the same gradients bit for bit, and the dx it returns is the
    caller's (a later step does not write into it)."""
    from fastrnn.layers.recurrent import LSTM
    layer = LSTM(4, 5, num_layers=3, bidirectional=bidirectional, dropout=0.3, seed=1,
                 dtype=np.float64)
    x = rng.normal(size=(6, 3, 4))
    dy = rng.normal(size=(6, 3, 10 if bidirectional else 5))
    cpu._BUFFERS.clear()
    runs = []
    for _ in range(3):
        layer.set_rng_state(np.random.default_rng(7).bit_generator.state)
        layer.zero_grad()
        layer.forward(x)
        dx, _ = layer.backward(dy)
        runs.append((dx, dx.copy(), {k: g.copy() for k, g in layer.grads.items()}))
    assert any(a.shape == (6, 3, 10 if bidirectional else 5) for a in cpu._BUFFERS._free)
    layer.forward(-x)   # another step, other numbers: it must not write into the dx above
    layer.backward(2 * dy)
    for dx, dx_then, grads in runs:
        np.testing.assert_array_equal(dx, dx_then)   # untouched by the later steps
        np.testing.assert_array_equal(dx, runs[0][0])
        for k in grads:
            np.testing.assert_array_equal(grads[k], runs[0][2][k])
