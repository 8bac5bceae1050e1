"""Hardening of the functional kernels' entry points (issue 9, items 3, 7, 10, 12).

Every caller-supplied buffer is either computed into exactly (bitwise the same numbers as
with plain contiguous arrays) or refused with an error naming it; a workspace is consumed by
exactly one backward even from several threads; the BLAS thread limit is restored.
"""
import json
import os
import threading

import numpy as np
import pytest

import fastrnn
from fastrnn import functional as F
from fastrnn import threads
from fastrnn._matmul import matmul
from helpers import GATES

T, B, I, H = 5, 3, 4, 6
CELLS = list(GATES)


def weights(cell, rng, dtype=np.float64, h=H, i=I):
    G = GATES[cell]
    return [rng.normal(scale=0.5, size=s).astype(dtype) for s in ((G * h, i), (G * h, h), (G * h,), (G * h,))]


def run(cell, x, w, dy, out=None, **backward_kwargs):
    y, state, ws = F.recurrent_forward(cell, x, *w, lengths=[5, 2, 4], out=out)
    dx, dstate0, grads = F.recurrent_backward(ws, dy, **backward_kwargs)
    return y, dx, grads


def assert_same(a, b):
    ya, dxa, ga = a
    yb, dxb, gb = b
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_array_equal(dxa, dxb)
    for name in ga:
        np.testing.assert_array_equal(ga[name], gb[name], err_msg=name)


def field_of_structured(shape, width, dtype=np.float64):
    """A (…, width) view whose row stride is not a multiple of the item size."""
    rec = np.zeros(shape, dtype=np.dtype([("pad", "u1"), ("v", dtype, (width,))], align=False))
    return rec["v"]


# ---- item 3: out= and dy layouts ----------------------------------------------------------

OUT_LAYOUTS = {
    "reversed time": lambda: np.zeros((T, B, H))[::-1],
    "reversed batch": lambda: np.zeros((T, B, H))[:, ::-1],
    "reversed features": lambda: np.zeros((T, B, H))[:, :, ::-1],
    "half of a bidirectional output": lambda: np.zeros((T, B, 2 * H))[:, :, H:],
    "every other feature": lambda: np.zeros((T, B, 2 * H))[:, :, ::2],
    "batch-first transpose": lambda: np.zeros((B, T, H)).transpose(1, 0, 2),
    "structured field": lambda: field_of_structured((T, B), H),
    "fortran order": lambda: np.asfortranarray(np.zeros((T, B, H))),
}


@pytest.mark.parametrize("layout", list(OUT_LAYOUTS))
@pytest.mark.parametrize("cell", CELLS)
def test_strided_out_gives_bitwise_the_contiguous_result(cell, layout, rng):
    w = weights(cell, rng)
    x, dy = rng.normal(size=(T, B, I)), rng.normal(size=(T, B, H))
    expected = run(cell, x, w, dy)
    out = OUT_LAYOUTS[layout]()
    got = run(cell, x, w, dy, out=out)
    assert got[0] is out
    assert_same(got, expected)   # y, dx and every weight gradient, dW_hh included


@pytest.mark.parametrize("layout", list(OUT_LAYOUTS))
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_strided_dy_gives_bitwise_the_contiguous_result(cell, layout, rng):
    w = weights(cell, rng)
    x, dy = rng.normal(size=(T, B, I)), rng.normal(size=(T, B, H))
    expected = run(cell, x, w, dy)
    strided = OUT_LAYOUTS[layout]()
    strided[...] = dy
    assert_same(run(cell, x, w, strided), expected)


def test_out_with_one_row_is_accepted(rng):
    w = weights("lstm", rng)
    x, dy = rng.normal(size=(1, 1, I)), rng.normal(size=(1, 1, H))
    y, _, ws = F.lstm_forward(x, *w)
    dx, _, g = F.lstm_backward(ws, dy)
    out = np.zeros((3, 1, H))[1:2]
    y2, _, ws2 = F.lstm_forward(x, *w, out=out)
    dx2, _, g2 = F.lstm_backward(ws2, dy)
    assert_same((y2, dx2, g2), (y, dx, g))


def overlapping_out():
    return np.lib.stride_tricks.as_strided(np.zeros(H * B + T), (T, B, H), (8, 8 * H, 8))


@pytest.mark.parametrize("make_out, error, match", [
    (lambda x, w: np.zeros((T, B, H + 1)), ValueError, r"out must have shape \(5, 3, 6\)"),
    (lambda x, w: np.zeros((T, B, H), np.float32), TypeError, "out must have dtype float64"),
    (lambda x, w: np.zeros((T, B, H)).tolist(), TypeError, "out must be a numpy.ndarray"),
    (lambda x, w: np.ma.zeros((T, B, H)), TypeError, "out must be a numpy.ndarray"),
    (lambda x, w: np.broadcast_to(np.zeros(H), (T, B, H)), ValueError, "out must be writeable"),
    (lambda x, w: np.lib.stride_tricks.as_strided(np.zeros(H), (T, B, H), (0, 0, 8)),
     ValueError, "out must not have elements that share memory"),
    (lambda x, w: overlapping_out(), ValueError, "out must not have elements that share memory"),
])
def test_bad_out_is_refused(make_out, error, match, rng):
    w = weights("lstm", rng)
    x = rng.normal(size=(T, B, I))
    with pytest.raises(error, match=match):
        F.lstm_forward(x, *w, out=make_out(x, w))


def test_out_aliasing_the_weights_is_refused(rng):
    w = weights("rnn_tanh", rng, h=H, i=H)
    x = rng.normal(size=(1, 1, H))
    with pytest.raises(ValueError, match="out must not share memory with w_hh"):
        F.rnn_tanh_forward(x, *w, out=w[1][:1].reshape(1, 1, H))
    with pytest.raises(ValueError, match="out must not share memory with b_hh"):
        F.rnn_tanh_forward(x, *w, out=w[3].reshape(1, 1, H))
    with pytest.raises(ValueError, match="out must not share memory with x"):
        F.rnn_tanh_forward(x, *w, out=x)
    with pytest.raises(ValueError, match="out must not share memory with w_ih"):
        F.rnn_tanh_forward(x, *w, out=w[0][::-1][:1].reshape(1, 1, H))


# ---- item 7: caller gradient buffers -------------------------------------------------------

def forward_ws(rng, bias=True, cell="lstm", i=I):
    w = weights(cell, rng, i=i)
    if not bias:
        w = w[:2] + [None, None]
    x = rng.normal(size=(T, B, i))
    _, _, ws = F.recurrent_forward(cell, x, *w)
    return ws, x, w


def good_grads(bias=True, i=I):
    G = 4
    g = {"weight_ih": np.zeros((G * H, i)), "weight_hh": np.zeros((G * H, H))}
    if bias:
        g.update(bias_ih=np.zeros(G * H), bias_hh=np.zeros(G * H))
    return g


class NdarraySubclass(np.ndarray):
    pass


BAD_GRADS = [
    ("weight_hh", lambda a: a[:-1], ValueError, r"grads\['weight_hh'\] must have shape \(24, 6\)"),
    ("weight_ih", lambda a: np.zeros(3), ValueError, r"grads\['weight_ih'\] must have shape"),
    ("weight_hh", lambda a: a.astype(np.float32), TypeError, r"grads\['weight_hh'\] must have dtype float64"),
    ("weight_hh", lambda a: np.asfortranarray(a), ValueError, r"grads\['weight_hh'\] must be C-contiguous"),
    ("weight_ih", lambda a: np.zeros((a.shape[0], 2 * a.shape[1]))[:, ::2], ValueError,
     r"grads\['weight_ih'\] must be C-contiguous"),
    ("bias_hh", lambda a: np.zeros(2 * a.size)[::-2], ValueError, r"grads\['bias_hh'\] must be C-contiguous"),
    ("bias_ih", lambda a: np.broadcast_to(a, a.shape), ValueError, r"grads\['bias_ih'\] must be writeable"),
    ("weight_hh", lambda a: a.view(NdarraySubclass), TypeError, r"grads\['weight_hh'\] must be a numpy.ndarray"),
    ("weight_hh", lambda a: a.tolist(), TypeError, r"grads\['weight_hh'\] must be a numpy.ndarray"),
    ("bias_ih", lambda a: None, TypeError, r"grads\['bias_ih'\] must be a numpy.ndarray"),
]


@pytest.mark.parametrize("key, spoil, error, match", BAD_GRADS)
def test_bad_gradient_buffer_is_refused_and_ws_survives(key, spoil, error, match, rng):
    ws, _, _ = forward_ws(rng)
    grads = good_grads()
    grads[key] = spoil(grads[key])
    with pytest.raises(error, match=match):
        F.lstm_backward(ws, None, grads=grads)
    F.lstm_backward(ws, None, grads=good_grads())   # the refused call did not consume ws


def test_gradient_dict_keys_are_checked(rng):
    ws, _, _ = forward_ws(rng)
    grads = good_grads()
    del grads["bias_hh"]
    with pytest.raises(ValueError, match=r"grads is missing \['bias_hh'\]"):
        F.lstm_backward(ws, None, grads=grads)
    with pytest.raises(ValueError, match=r"grads has unexpected keys \['extra'\]"):
        F.lstm_backward(ws, None, grads={**good_grads(), "extra": np.zeros(1)})
    with pytest.raises(TypeError, match="grads must be a dict"):
        F.lstm_backward(ws, None, grads=list(good_grads().values()))
    ws_nobias, _, _ = forward_ws(rng, bias=False)
    with pytest.raises(ValueError, match="unexpected keys.*no biases"):
        F.lstm_backward(ws_nobias, None, grads=good_grads())
    F.lstm_backward(ws_nobias, None, grads=good_grads(bias=False))


def test_aliased_gradient_buffers_are_refused(rng):
    ws, x, w = forward_ws(rng, i=H)
    grads = good_grads(i=H)
    grads["weight_ih"] = grads["weight_hh"]
    with pytest.raises(ValueError, match=r"grads\['weight_ih'\] must not share memory with grads\['weight_hh'\]"):
        F.lstm_backward(ws, None, grads=grads)
    grads = good_grads(i=H)
    grads["weight_hh"] = w[1]
    with pytest.raises(ValueError, match=r"grads\['weight_hh'\] must not share memory with w_hh"):
        F.lstm_backward(ws, None, grads=grads)
    with pytest.raises(ValueError, match="dx_out must not share memory with x"):
        F.lstm_backward(ws, None, dx_out=x)


@pytest.mark.parametrize("spoil, error, match", [
    (lambda: np.zeros((T, B, I + 1)), ValueError, r"dx_out must have shape \(5, 3, 4\)"),
    (lambda: np.zeros((T, B, I), np.float32), TypeError, "dx_out must have dtype float64"),
    (lambda: np.zeros((T, B, I))[::-1], ValueError, "dx_out must be C-contiguous"),
    (lambda: np.broadcast_to(np.zeros(I), (T, B, I)), ValueError, "dx_out must be"),
    (lambda: np.ma.zeros((T, B, I)), TypeError, "dx_out must be a numpy.ndarray"),
])
def test_bad_dx_out_is_refused(spoil, error, match, rng):
    ws, _, _ = forward_ws(rng)
    with pytest.raises(error, match=match):
        F.lstm_backward(ws, None, dx_out=spoil())


def test_replaced_workspace_arrays_are_refused(rng):
    ws, _, _ = forward_ws(rng)
    ws.chist = None
    with pytest.raises(ValueError, match="ws.chist"):
        F.lstm_backward(ws, None)
    ws, _, _ = forward_ws(rng)
    ws.gates = ws.gates[:1].copy()
    with pytest.raises(ValueError, match="ws.gates"):
        F.lstm_backward(ws, None)


@pytest.mark.parametrize("spoil, error, match", [
    (lambda m, n: np.zeros((m - 1, n)), ValueError, r"out must have shape \(9, 7\)"),
    (lambda m, n: np.zeros((m, n), np.float32), TypeError, "out must have dtype float64"),
    (lambda m, n: np.lib.stride_tricks.as_strided(np.zeros(n), (m, n), (0, 8)), ValueError,
     "out must not have elements that share memory"),
])
def test_matmul_refuses_a_bad_out(spoil, error, match, rng):
    a, b = rng.normal(size=(9, 5)), rng.normal(size=(5, 7))
    with pytest.raises(error, match=match):
        matmul(a, b, out=spoil(9, 7))


def test_matmul_checks_the_inner_dimension_and_aliasing(rng):
    a = rng.normal(size=(6, 6))
    with pytest.raises(ValueError, match=r"op\(a\) is \(6, 6\) but op\(b\) is \(5, 6\)"):
        matmul(a, rng.normal(size=(5, 6)))
    with pytest.raises(ValueError, match="out must not share memory with a"):
        matmul(a, rng.normal(size=(6, 6)), out=a, beta=1.0)


def test_matmul_into_a_strided_out_is_exact(rng):
    a, b = rng.normal(size=(9, 5)), rng.normal(size=(5, 7))
    out = np.zeros((9, 14))[:, ::2]
    out[...] = 1.0
    matmul(a, b, out=out, beta=1.0)
    np.testing.assert_allclose(out, 1.0 + a @ b, rtol=1e-13)


# ---- item 10: one workspace, several threads -----------------------------------------------

def test_concurrent_backwards_on_one_workspace_run_exactly_once(rng, monkeypatch):
    n = 4
    w = weights("rnn_tanh", rng)
    x, dy = rng.normal(size=(T, B, I)), rng.normal(size=(T, B, H))
    _, _, ws = F.rnn_tanh_forward(x, *w)
    # Hold every thread inside backward's argument checks (after the early consumed test)
    # until all of them are there, so that they all race for the same workspace.
    barrier = threading.Barrier(n, timeout=30)
    from fastrnn._engine import driver
    state_array = driver._state_array

    def wait_for_all(*args, **kwargs):
        barrier.wait()
        return state_array(*args, **kwargs)

    monkeypatch.setattr(driver, "_state_array", wait_for_all)
    results, errors = [], []

    def worker():
        try:
            results.append(F.rnn_tanh_backward(ws, dy))
        except ValueError as exc:
            errors.append(str(exc))

    workers = [threading.Thread(target=worker) for _ in range(n)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert len(results) == 1 and len(errors) == n - 1
    assert all("already consumed" in e for e in errors)
    monkeypatch.undo()
    _, _, ws2 = F.rnn_tanh_forward(x, *w)
    dx, _, grads = F.rnn_tanh_backward(ws2, dy)
    np.testing.assert_array_equal(results[0][0], dx)
    np.testing.assert_array_equal(results[0][2]["weight_hh"], grads["weight_hh"])


# ---- item 12: BLAS thread limit --------------------------------------------------------------

def blas_thread_counts():
    return [lib["num_threads"] for lib in threads._threadpool_controller().info()
            if lib["user_api"] == "blas"]


@pytest.fixture
def blas_counts():
    """BLAS's thread counts before the test; skips where it has one thread anyway (a leaked
    limit of 1 would not show)."""
    pytest.importorskip("threadpoolctl")
    counts = blas_thread_counts()
    if not counts or max(counts) < 2:
        pytest.skip("needs a BLAS library found by threadpoolctl running more than one thread")
    return counts


def test_interleaved_limits_from_two_threads_restore_blas(blas_counts):
    # Thread A enters, thread B enters, A leaves, B leaves: the order that leaked before.
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def thread_a():
        with threads.blas_single_threaded():
            a_in.set()
            b_in.wait(30)
        a_out.set()

    def thread_b():
        a_in.wait(30)
        with threads.blas_single_threaded():
            b_in.set()
            a_out.wait(30)

    workers = [threading.Thread(target=thread_a), threading.Thread(target=thread_b)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert blas_thread_counts() == blas_counts


def test_concurrent_kernels_leave_blas_as_it_was(blas_counts, rng):
    w = weights("lstm", rng, dtype=np.float32)
    x = rng.normal(size=(T, B, I)).astype(np.float32)
    a, b = rng.normal(size=(8, 256)).astype(np.float32), rng.normal(size=(86, 256)).astype(np.float32)
    start = threading.Barrier(4, timeout=30)

    def worker():
        start.wait()
        for _ in range(30):
            _, _, ws = F.lstm_forward(x, *w)
            F.lstm_backward(ws, None)
            matmul(a, b, trans_b=True)

    workers = [threading.Thread(target=worker) for _ in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert blas_thread_counts() == blas_counts


def test_a_thread_other_than_the_first_to_limit_blas_limits_and_restores_it(blas_counts):
    # threadpoolctl lets only the first Python thread to set a pthreads OpenBLAS (while it
    # lives) change it: the limit must still hold in a training thread started later.
    with threads.blas_single_threaded():   # this thread limits first
        pass
    inside = []

    def worker():
        with threads.blas_single_threaded():
            inside.append(blas_thread_counts())

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert set(inside[0]) == {1}
    assert blas_thread_counts() == blas_counts


def test_nested_limits_and_exceptions_restore_blas(blas_counts):
    with threads.blas_single_threaded():
        with threads.blas_single_threaded():
            assert set(blas_thread_counts()) == {1}
        assert set(blas_thread_counts()) == {1}
    assert blas_thread_counts() == blas_counts
    with pytest.raises(RuntimeError, match="boom"):
        with threads.blas_single_threaded():
            with threads.blas_single_threaded():
                raise RuntimeError("boom")
    assert blas_thread_counts() == blas_counts
    with threads.blas_single_threaded(active=False):
        assert blas_thread_counts() == blas_counts


def test_zero_hidden_units_are_refused_like_the_layers():
    with pytest.raises(ValueError, match=r"H >= 1"):
        F.lstm_forward(np.zeros((2, 3, 4)), np.zeros((0, 4)), np.zeros((0, 0)))
    with pytest.raises(ValueError, match="hidden_size must be >= 1"):
        fastrnn.LSTM(4, 0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_restores_blas_held_by_a_thread_of_its_parent(blas_counts):
    # Another thread holds the limit when the parent forks: that thread does not exist in
    # the child, so the child must not wait for it to leave before restoring BLAS.
    entered, release = threading.Event(), threading.Event()

    def holder():
        with threads.blas_single_threaded():
            entered.set()
            release.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    entered.wait(30)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:   # child: one kernel-sized block, then report BLAS's thread counts
        try:
            with threads.blas_single_threaded():
                pass
            os.write(write_end, json.dumps(blas_thread_counts()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child_counts = json.loads(pipe.read() or "null")
    os.waitpid(pid, 0)
    release.set()
    t.join()
    assert child_counts == blas_counts
    assert blas_thread_counts() == blas_counts
