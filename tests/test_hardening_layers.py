"""Issue 9, items 1 and 10: a layer applied several times before backward (LIFO records),
eval mode records nothing, and one layer object used from several threads."""
import copy
import os
import threading

import numpy as np
import pytest

from fastrnn import LanguageModel
from fastrnn.layers import (GRU, LSTM, RNN, Dropout, Embedding, Linear, NoPendingForwardError,
                            SoftmaxCrossEntropy)
from helpers import gradient_check_error

V, E, H, B = 7, 6, 6, 3
RECURRENT = {"rnn": RNN, "gru": GRU, "lstm": LSTM}


# ---- the LIFO order of the issue ------------------------------------------------------------

def test_linear_applied_twice_then_backward_in_reverse_order_is_exact(rng):
    lin = Linear(4, 3, dtype=np.float64, seed=0)
    x1, x2 = rng.standard_normal((5, 4)), rng.standard_normal((2, 5, 4))
    d1, d2 = rng.standard_normal((5, 3)), rng.standard_normal((2, 5, 3))
    lin.forward(x1)
    lin.forward(x2)
    dx2 = lin.backward(d2)
    dx1 = lin.backward(d1)
    w = lin.params["weight"]
    np.testing.assert_allclose(lin.grads["weight"], d1.T @ x1 + d2.reshape(-1, 3).T @ x2.reshape(-1, 4),
                               rtol=1e-13)
    np.testing.assert_allclose(lin.grads["bias"], d1.sum(0) + d2.sum((0, 1)), rtol=1e-13)
    np.testing.assert_allclose(dx1, d1 @ w, rtol=1e-13)
    np.testing.assert_allclose(dx2, d2 @ w, rtol=1e-13)
    assert lin.num_pending == 0


def test_embedding_applied_twice_pairs_each_backward_with_its_ids(rng):
    emb = Embedding(V, 2, dtype=np.float64, seed=0)
    ids1, ids2 = np.array([0, 1, 1]), np.array([[5, 6], [6, 2]])
    d1, d2 = rng.standard_normal((3, 2)), rng.standard_normal((2, 2, 2))
    emb.forward(ids1)
    emb.forward(ids2)
    emb.backward(d2)
    emb.backward(d1)
    expected = np.zeros((V, 2))
    np.add.at(expected, ids1, d1)
    np.add.at(expected, ids2.reshape(-1), d2.reshape(-1, 2))
    np.testing.assert_allclose(emb.grads["weight"], expected, rtol=1e-14)


def test_dropout_keeps_each_calls_mask_for_its_own_backward():
    drop = Dropout(0.5, seed=3)
    x = np.ones((50,))
    y1, y2 = drop.forward(x), drop.forward(x)
    assert not np.array_equal(y1, y2)   # a new mask per call
    np.testing.assert_array_equal(drop.backward(x), y2)
    np.testing.assert_array_equal(drop.backward(x), y1)


def test_loss_keeps_each_calls_probabilities_and_token_count(rng):
    logits1, logits2 = rng.standard_normal((4, V)), rng.standard_normal((3, V))
    t1, t2 = rng.integers(0, V, 4), rng.integers(0, V, 3)
    mask1 = np.array([1, 1, 0, 1], bool)

    def alone(logits, targets, mask=None):
        loss = SoftmaxCrossEntropy()
        loss.forward(logits, targets, mask)
        return loss.backward(2.0)

    loss = SoftmaxCrossEntropy()
    loss.forward(logits1, t1, mask1)
    loss.forward(logits2, t2)
    assert loss.n_tokens == 3   # the last call's count
    np.testing.assert_allclose(loss.backward(2.0), alone(logits2, t2), rtol=1e-15)
    np.testing.assert_allclose(loss.backward(2.0), alone(logits1, t1, mask1), rtol=1e-15)


@pytest.mark.parametrize("cell", sorted(RECURRENT))
def test_recurrent_layer_applied_to_two_segments_then_backward_in_reverse_order(cell, rng):
    layer = RECURRENT[cell](E, H, num_layers=2, dtype=np.float64, seed=0)
    x1, x2 = rng.standard_normal((4, B, E)), rng.standard_normal((3, B, E))
    dy1, dy2 = rng.standard_normal((4, B, H)), rng.standard_normal((3, B, H))

    reference = RECURRENT[cell](E, H, num_layers=2, dtype=np.float64, seed=0)
    reference.forward(x1)
    ref_dx1, _ = reference.backward(dy1)
    reference.forward(x2)
    ref_dx2, _ = reference.backward(dy2)

    layer.forward(x1)
    layer.forward(x2)
    dx2, _ = layer.backward(dy2)
    dx1, _ = layer.backward(dy1)
    np.testing.assert_allclose(dx1, ref_dx1, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dx2, ref_dx2, rtol=1e-12, atol=1e-14)
    for key in layer.grads:
        np.testing.assert_allclose(layer.grads[key], reference.grads[key], rtol=1e-12, atol=1e-14)


# ---- finite differences: a 3-step unrolled char model sharing every layer -------------------

class UnrolledCharModel:
    """The classic tutorial model: one Embedding, Dropout, recurrent layer, Linear and loss
    applied once per character for 3 steps, the state carried, the three losses summed."""

    def __init__(self, cell, tied):
        self.emb = Embedding(V, E, dtype=np.float64, seed=1)
        self.drop = Dropout(0.3, seed=2)
        self.rnn = RECURRENT[cell](E, H, num_layers=2, dropout=0.25, dtype=np.float64, seed=3)
        self.out = Linear.tied_to(self.emb, seed=4) if tied else Linear(H, V, dtype=np.float64, seed=4)
        self.loss = SoftmaxCrossEntropy()
        self.layers = [self.emb, self.drop, self.rnn, self.out, self.loss]
        self._rng_states = (self.drop.rng_state(), self.rnn.rng_state())

    def forward(self, x, y):
        """x, y: (3, B) ids. Every call draws the same dropout masks."""
        self.drop.set_rng_state(self._rng_states[0])
        self.rnn.set_rng_state(self._rng_states[1])
        total, state = 0.0, None
        for t in range(x.shape[0]):
            h = self.drop.forward(self.emb.forward(x[t:t + 1]))
            h, state = self.rnn.forward(h, state)
            total += self.loss.forward(self.out.forward(h), y[t:t + 1])
        return total

    def backward(self, steps):
        dstate = None
        for _ in range(steps):
            d = self.out.backward(self.loss.backward())
            d, dstate = self.rnn.backward(d, dstate)
            self.emb.backward(self.drop.backward(d))

    def loss_only(self, x, y):
        value = self.forward(x, y)
        for layer in self.layers:
            layer.clear_pending()
        return value


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("cell", sorted(RECURRENT))
def test_layers_used_three_times_match_finite_differences(cell, tied, rng):
    model = UnrolledCharModel(cell, tied)
    x, y = rng.integers(0, V, (3, B)), rng.integers(0, V, (3, B))
    model.forward(x, y)
    assert [layer.num_pending for layer in model.layers] == [3, 3, 3, 3, 3]
    model.backward(3)
    assert [layer.num_pending for layer in model.layers] == [0] * 5
    checked = {"embedding.weight": (model.emb.params["weight"], model.emb.grads["weight"])}
    for name, layer in (("output", model.out), ("rnn", model.rnn)):
        for key in layer.params:
            checked[f"{name}.{key}"] = (layer.params[key], layer.grads[key])
    for name, (param, grad) in checked.items():
        error = gradient_check_error(lambda: model.loss_only(x, y), param, grad, rng, samples=10)
        assert error < 1e-6, f"{name}: relative error {error:.2e}"


# ---- a clear error with nothing pending --------------------------------------------------

def _layer_and_call(kind, rng):
    """(layer, forward(), backward()) for one small layer of each kind."""
    if kind == "linear":
        layer = Linear(E, V, dtype=np.float64)
        return layer, lambda: layer.forward(np.ones((2, E))), lambda: layer.backward(np.ones((2, V)))
    if kind == "embedding":
        layer = Embedding(V, E, dtype=np.float64)
        return layer, lambda: layer.forward(np.array([1, 2])), lambda: layer.backward(np.ones((2, E)))
    if kind == "dropout":
        layer = Dropout(0.5, seed=0)
        return layer, lambda: layer.forward(np.ones(4)), lambda: layer.backward(np.ones(4))
    if kind == "loss":
        layer = SoftmaxCrossEntropy()
        return layer, lambda: layer.forward(np.zeros((2, V)), np.array([0, 1])), layer.backward
    layer = RECURRENT[kind](E, H, dtype=np.float64)
    return (layer, lambda: layer.forward(np.ones((2, 1, E))),
            lambda: layer.backward(np.ones((2, 1, H))))


KINDS = ["linear", "embedding", "dropout", "loss", "rnn", "gru", "lstm"]


@pytest.mark.parametrize("kind", KINDS)
def test_backward_with_nothing_pending_raises_a_clear_error(kind, rng):
    layer, forward, backward = _layer_and_call(kind, rng)
    with pytest.raises(NoPendingForwardError, match="backward called before forward"):
        backward()
    forward()
    forward()
    backward()
    backward()
    with pytest.raises(RuntimeError, match="one more backward than forwards"):
        backward()


@pytest.mark.parametrize("kind", KINDS)
def test_eval_mode_forwards_record_nothing(kind, rng):
    layer, forward, backward = _layer_and_call(kind, rng)
    layer.eval()
    for _ in range(5):
        forward()
    assert layer.num_pending == 0
    with pytest.raises(NoPendingForwardError, match="eval mode record nothing"):
        backward()
    layer.train()
    forward()
    layer.eval()
    forward()   # not recorded: the backward below is the training-mode forward's
    backward()
    assert layer.num_pending == 0


@pytest.mark.parametrize("kind", KINDS)
def test_clear_pending_drops_records_and_zero_grad_keeps_them(kind, rng):
    layer, forward, backward = _layer_and_call(kind, rng)
    forward()
    layer.zero_grad()
    backward()   # forward; zero_grad; backward works
    forward()
    forward()
    assert layer.clear_pending().num_pending == 0
    with pytest.raises(NoPendingForwardError):
        backward()


def test_a_failed_backward_keeps_its_record(rng):
    lin = Linear(3, 2, dtype=np.float64, seed=0)
    x, dy = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    lin.forward(x)
    with pytest.raises(ValueError, match="dy"):
        lin.backward(np.ones((5, 2)))
    lin.backward(dy)
    np.testing.assert_allclose(lin.grads["weight"], dy.T @ x, rtol=1e-14)


def test_copies_start_with_nothing_pending_and_keep_their_parameters():
    emb = Embedding(V, E, dtype=np.float64, seed=0)
    lin = Linear.tied_to(emb)
    lin.forward(np.ones((2, E)))
    emb_copy, lin_copy = copy.deepcopy((emb, lin))
    assert lin_copy.num_pending == 0 and lin.num_pending == 1
    assert lin_copy.weight is emb_copy.params["weight"]
    np.testing.assert_array_equal(lin_copy.weight, lin.weight)
    lin_copy.forward(np.ones((2, E)))
    lin_copy.backward(np.ones((2, V)))


def test_moving_a_layer_with_pending_records_is_refused():
    lin = Linear(3, 2)
    lin.forward(np.ones((1, 3), np.float32))
    with pytest.raises(RuntimeError, match="pending"):
        lin.to("cuda")


# ---- the language model ------------------------------------------------------------------

def _model(dropout=0.2, **kwargs):
    return LanguageModel(V, embed_size=E, hidden_size=H, num_layers=2, cell="lstm", dropout=dropout,
                         dtype=np.float64, seed=5, **kwargs)


@pytest.mark.parametrize("tie", [False, True])
def test_language_model_forward_twice_then_backward_twice(tie, rng):
    xa, ya = rng.integers(0, V, (4, 2)), rng.integers(0, V, (4, 2))
    xb, yb = rng.integers(0, V, (5, 3)), rng.integers(0, V, (5, 3))
    reference = _model(tie_weights=tie)
    reference.zero_grad()
    reference.forward(xa, ya)
    reference.backward()
    reference.forward(xb, yb)
    reference.backward()

    model = _model(tie_weights=tie)
    model.zero_grad()
    model.forward(xa, ya)
    model.forward(xb, yb)
    assert model.num_pending == 2
    model.backward()
    model.backward()
    assert model.num_pending == 0
    for key in model.grads:
        np.testing.assert_allclose(model.grads[key], reference.grads[key], rtol=1e-11, atol=1e-14)


def test_language_model_evaluate_and_eval_mode_leave_nothing_pending(rng):
    model = _model()
    ids = rng.integers(0, V, 200)
    model.evaluate(ids, batch_size=2, seq_len=8)
    assert model.training and model.num_pending == 0
    model.eval()
    model.forward(ids[:10, None], ids[1:11, None])
    assert model.num_pending == 0
    with pytest.raises(NoPendingForwardError, match="eval mode"):
        model.backward()
    model.train()
    model.logits(ids[:10, None])
    assert model.num_pending == 1
    assert model.clear_pending().num_pending == 0


# ---- threads ------------------------------------------------------------------------------

def _run_in_thread(fn):
    """Run ``fn`` in a new thread, wait for it; return (result, exception)."""
    outcome = {}

    def target():
        try:
            outcome["result"] = fn()
        except BaseException as exc:   # handed back to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    return outcome.get("result"), outcome.get("error")


@pytest.mark.parametrize("kind", KINDS)
def test_another_thread_cannot_push_or_pop_while_records_are_pending(kind, rng):
    layer, forward, backward = _layer_and_call(kind, rng)
    forward()
    for call in (forward, backward):
        _, error = _run_in_thread(call)
        assert isinstance(error, RuntimeError) and "thread" in str(error), error
    assert layer.num_pending == 1
    backward()
    # Nothing pending: another thread may use the layer now.
    _, error = _run_in_thread(lambda: (forward(), backward()))
    assert error is None
    # Eval-mode forwards from other threads record nothing and are always allowed.
    forward()
    layer.eval()
    _, error = _run_in_thread(forward)
    assert error is None


@pytest.mark.parametrize("kind", ["linear", "lstm"])
def test_one_layer_hammered_from_four_threads_gives_exact_gradients_or_clear_errors(kind):
    """Every thread runs forward+backward pairs on its own data; a pair is either refused
    with the thread error or counted. The gradient must be exactly the sum of the counted
    pairs, whatever the interleaving."""
    rng = np.random.default_rng(0)
    if kind == "linear":
        layer = Linear(E, V, dtype=np.float64, seed=0)
        data = [(rng.standard_normal((8, E)), rng.standard_normal((8, V))) for _ in range(4)]
    else:
        layer = LSTM(E, H, dtype=np.float64, seed=0)
        data = [(rng.standard_normal((5, 2, E)), rng.standard_normal((5, 2, H))) for _ in range(4)]

    def single_pair_grads(x, dy):
        alone = copy.deepcopy(layer)
        alone.forward(x)
        alone.backward(dy)
        return alone.grads

    expected_per_thread = [single_pair_grads(x, dy) for x, dy in data]
    counts, unexpected = [0] * 4, []
    start = threading.Barrier(4)

    def worker(index):
        x, dy = data[index]
        start.wait()
        for _ in range(60):
            try:
                layer.forward(x)
            except RuntimeError as exc:
                if "thread" not in str(exc):
                    unexpected.append(exc)
                continue
            try:
                layer.backward(dy)   # our records are pending: no other thread may pop them
            except BaseException as exc:
                unexpected.append(exc)
                continue
            counts[index] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not unexpected, unexpected
    assert layer.num_pending == 0 and sum(counts) > 0
    for key, grad in layer.grads.items():
        expected = sum(n * g[key] for n, g in zip(counts, expected_per_thread))
        np.testing.assert_allclose(grad, expected, rtol=1e-10, atol=1e-12)


def test_separate_layers_in_separate_threads_keep_working(rng):
    x, dy = rng.standard_normal((5, 2, E)), rng.standard_normal((5, 2, H))
    reference = GRU(E, H, dtype=np.float64, seed=0)
    reference.forward(x)
    reference.backward(dy)
    layers = [GRU(E, H, dtype=np.float64, seed=0) for _ in range(4)]
    errors = []

    def work(layer):
        try:
            for _ in range(10):
                layer.forward(x)
                layer.backward(dy)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(layer,)) for layer in layers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for layer in layers:
        for key in layer.grads:
            np.testing.assert_allclose(layer.grads[key], 10 * reference.grads[key], rtol=1e-12)


def _eval_forward_in_child(layer, queue):
    layer.eval()
    queue.put(float(layer.forward(np.ones(3)).sum()))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_while_another_thread_holds_a_layer_lock_can_use_the_layer():
    import multiprocessing

    drop = Dropout(0.5, seed=0)
    inside, release = threading.Event(), threading.Event()

    def hold_the_lock():
        with drop._lock:   # as a forward or backward running in this thread would
            inside.set()
            release.wait()

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    inside.wait()
    try:
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        child = context.Process(target=_eval_forward_in_child, args=(drop, queue))
        child.start()
        child.join(timeout=120)   # a guard against hanging the suite, not a timing check
        hung = child.is_alive()
        if hung:
            child.kill()
            child.join()
    finally:
        release.set()
        holder.join()
    assert not hung, "the forked child hung on the layer's lock"
    assert child.exitcode == 0 and queue.get(timeout=60) == 3.0
