"""The compiled softmax + cross-entropy of float32 logits (csrc/softmax.h) against the same
computation in float64 NumPy, through the layer and directly."""
import numpy as np
import pytest

from fastrnn._cpu import loss as loss_kernels
from fastrnn._softmax import softmax_cross_entropy_rows
from fastrnn.layers import SoftmaxCrossEntropy


def _exact(logits, targets):
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return p, -np.log(p[np.arange(len(targets)), targets])


# V: one column, only the tail (< 32 lanes), one block + tail, a word-level vocabulary.
@pytest.mark.parametrize("V", [1, 5, 33, 10000])
def test_compiled_softmax_matches_float64(V, rng):
    N = 37
    logits = (rng.standard_normal((N, V)) * 4).astype(np.float32)
    logits[0, :] = 0.0                     # all equal
    if V > 1:
        logits[1, 0] = 200.0               # the others far below -87 after the shift: exact 0
    targets = rng.integers(0, V, size=N)
    probs, token_loss = softmax_cross_entropy_rows(logits, targets)
    assert probs.dtype == np.float32 and token_loss.dtype == np.float64
    want_p, want_loss = _exact(logits, targets)
    np.testing.assert_allclose(probs, want_p, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(token_loss, want_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    if V > 1:
        assert (probs[1, 1:] == 0).all() and probs[1, 0] == 1.0


def test_compiled_softmax_gives_the_same_bits_on_any_thread_count(rng):
    logits = rng.standard_normal((300, 500)).astype(np.float32)
    targets = rng.integers(0, 500, size=300)
    outs = []
    for threads in (1, 2, 3):
        probs = np.empty_like(logits)
        token_loss = np.empty(300)
        loss_kernels.softmax_cross_entropy(logits, targets, probs, token_loss, threads)
        outs.append((probs, token_loss))
    for probs, token_loss in outs[1:]:
        np.testing.assert_array_equal(probs, outs[0][0])
        np.testing.assert_array_equal(token_loss, outs[0][1])


@pytest.mark.parametrize("V", [1, 5, 33, 500])
def test_gradient_written_with_the_softmax_has_the_bits_of_numpys(V, rng):
    """grad_scale: the kernel writes (softmax - onehot) * scale per row in its last pass;
    the bits must be those of NumPy's ``p[r, t] -= 1; p *= scale[:, None]`` on its softmax,
    whatever the thread count (the float64 array-module path is that NumPy code)."""
    N = 41
    logits = (rng.standard_normal((N, V)) * 4).astype(np.float32)
    targets = rng.integers(0, V, size=N)
    scale = rng.uniform(-2.0, 2.0, N).astype(np.float32)
    scale[3] = 0.0
    probs, token_loss = softmax_cross_entropy_rows(logits, targets)
    want = probs.copy()
    want[np.arange(N), targets] -= 1
    want *= scale[:, None]
    for threads in (1, 2):
        grad, loss = np.empty_like(logits), np.empty(N)
        loss_kernels.softmax_cross_entropy(logits, targets, grad, loss, threads, scale)
        np.testing.assert_array_equal(grad, want)
        np.testing.assert_array_equal(loss, token_loss)
    probs64, _ = softmax_cross_entropy_rows(logits.astype(np.float64), targets)
    want64 = probs64.copy()
    want64[np.arange(N), targets] -= 1
    want64 *= scale.astype(np.float64)[:, None]
    grad64, _ = softmax_cross_entropy_rows(logits.astype(np.float64), targets,
                                           grad_scale=scale.astype(np.float64))
    np.testing.assert_array_equal(grad64, want64)


@pytest.mark.parametrize("gradient", [False, True])
def test_compiled_softmax_in_place_gives_the_bits_of_a_separate_buffer(gradient, rng):
    """probs may be logits itself (the language model's logits are dead once the loss has
    them): each row is read before it is overwritten, and its target logit kept first."""
    N, V = 29, 77   # two 32-lane blocks and a tail
    logits = (rng.standard_normal((N, V)) * 4).astype(np.float32)
    targets = rng.integers(0, V, size=N)
    scale = rng.uniform(0.5, 2.0, N).astype(np.float32) if gradient else None
    want, want_loss = np.empty_like(logits), np.empty(N)
    loss_kernels.softmax_cross_entropy(logits, targets, want, want_loss, 2, scale)
    got_loss = np.empty(N)
    loss_kernels.softmax_cross_entropy(logits, targets, logits, got_loss, 2, scale)
    np.testing.assert_array_equal(logits, want)
    np.testing.assert_array_equal(got_loss, want_loss)


def test_compiled_softmax_propagates_nan_and_zeroes_minus_inf():
    logits = np.array([[0.0, np.nan, 1.0], [0.0, -np.inf, 1.0]], np.float32)
    probs, token_loss = softmax_cross_entropy_rows(logits, np.array([0, 0]))
    assert np.isnan(token_loss[0])
    assert probs[1, 1] == 0 and np.isfinite(token_loss[1])
    np.testing.assert_allclose(probs[1], _exact(logits[1:], np.array([0]))[0][0], rtol=1e-6)


def test_compiled_softmax_refuses_bad_buffers_and_ids(rng):
    logits = rng.standard_normal((4, 6)).astype(np.float32)
    targets = np.array([0, 1, 2, 3])
    with pytest.raises(ValueError, match="probs must have shape"):
        loss_kernels.softmax_cross_entropy(logits, targets, np.empty((4, 5), np.float32),
                                           np.empty(4), 1)
    with pytest.raises(ValueError, match="token_loss"):
        loss_kernels.softmax_cross_entropy(logits, targets, np.empty((4, 6), np.float32),
                                           np.empty(3), 1)
    wider = np.zeros((5, 6), np.float32)
    wider[:4] = logits
    with pytest.raises(ValueError, match="probs must not share memory with logits"):
        loss_kernels.softmax_cross_entropy(wider[:4], targets, wider[1:], np.empty(4), 1)
    with pytest.raises(ValueError, match="grad_scale must have 4 entries"):
        loss_kernels.softmax_cross_entropy(logits, targets, np.empty((4, 6), np.float32),
                                           np.empty(4), 1, np.ones(3, np.float32))
    probs = np.empty((4, 6), np.float32)
    with pytest.raises(ValueError, match="probs must not share memory with grad_scale"):
        loss_kernels.softmax_cross_entropy(logits, targets, probs, np.empty(4), 1,
                                           probs[0, :4])
    ids = np.array([0, 1, 2, 3, 0, 0])
    with pytest.raises(ValueError, match="token_loss must not share memory with targets"):
        loss_kernels.softmax_cross_entropy(logits, ids[:4], np.empty((4, 6), np.float32),
                                           ids[2:].view(np.float64), 1)
    shared = np.zeros(8)   # token_loss (4 float64) over the memory of grad_scale
    with pytest.raises(ValueError, match="token_loss must not share memory with grad_scale"):
        loss_kernels.softmax_cross_entropy(logits, targets, np.empty((4, 6), np.float32),
                                           shared[:4], 1, shared[2:].view(np.float32)[:4])
    with pytest.raises(ValueError, match="token_loss must not share memory with grad_scale"):
        # only grad_scale's last 8 bytes (of 16) lie under token_loss's first ones
        loss_kernels.softmax_cross_entropy(logits, targets, np.empty((4, 6), np.float32),
                                           shared[3:7], 1, shared.view(np.float32)[4:8])
    with pytest.raises(ValueError, match=r"targets\[2\] = 6"):
        loss_kernels.softmax_cross_entropy(logits, np.array([0, 1, 6, 3]),
                                           np.empty((4, 6), np.float32), np.empty(4), 1)


@pytest.mark.parametrize("masked", [False, True])
def test_loss_layer_float32_equals_its_float64_result(masked, rng):
    """The layer's loss and gradient (compiled in float32) against the float64 layer."""
    logits = rng.standard_normal((5, 7, 40)).astype(np.float32)
    targets = rng.integers(0, 40, size=(5, 7))
    mask = rng.random((5, 7)) < 0.7 if masked else None
    results = []
    for dtype in (np.float32, np.float64):
        layer = SoftmaxCrossEntropy()
        value = layer.forward(logits.astype(dtype), targets, mask)
        results.append((value, layer.backward(2.0)))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_loss_layer_gradient_is_the_exact_one_at_any_scale(masked, scale, rng):
    """The forward writes the gradient at scale 1; backward(scale) must give scale times
    (softmax - onehot) * weight / sum(weights), as computed here in float64."""
    N, V = 23, 31
    logits = rng.standard_normal((N, V)).astype(np.float32)
    targets = rng.integers(0, V, size=N)
    weights = rng.uniform(0.0, 2.0, N) * (rng.random(N) < 0.7) if masked else np.ones(N)
    layer = SoftmaxCrossEntropy()
    value = layer.forward(logits, targets, weights if masked else None)
    p, token_loss = _exact(logits, targets)
    p[np.arange(N), targets] -= 1
    want = p * (weights / weights.sum())[:, None] * scale
    assert value == pytest.approx(token_loss @ weights / weights.sum(), rel=1e-6)
    with pytest.raises(TypeError):
        layer.backward("2")           # refused before the saved gradient is touched
    np.testing.assert_allclose(layer.backward(scale), want, rtol=1e-5, atol=1e-8)


def test_loss_layer_in_eval_mode_gives_the_same_loss_and_keeps_nothing(rng):
    logits = rng.standard_normal((6, 9)).astype(np.float32)
    targets = rng.integers(0, 9, size=6)
    layer = SoftmaxCrossEntropy()
    training = layer.forward(logits, targets)
    layer.backward()
    layer.eval()
    assert layer.forward(logits, targets) == training
    with pytest.raises(RuntimeError):
        layer.backward()


def test_loss_layer_overwrites_logits_only_when_asked(rng):
    """overwrite_logits=True: C-contiguous float32 logits hold the gradient (one (N, V) buffer
    less), with the values the default gives; the default, and logits the kernel cannot
    write in place, leave the caller's array alone."""
    logits = rng.standard_normal((4, 5, 70)).astype(np.float32)
    targets = rng.integers(0, 70, size=(4, 5))
    original = logits.copy()
    layer = SoftmaxCrossEntropy()
    value = layer.forward(logits, targets)
    grad = layer.backward(1.5)
    np.testing.assert_array_equal(logits, original)
    strided = np.repeat(original, 2, axis=2)[:, :, ::2]   # not C-contiguous
    assert layer.forward(strided, targets, overwrite_logits=True) == value
    np.testing.assert_array_equal(layer.backward(1.5), grad)
    np.testing.assert_array_equal(strided, original)
    assert layer.forward(logits, targets, overwrite_logits=True) == value
    in_place = layer.backward(1.5)
    assert np.shares_memory(in_place, logits)
    np.testing.assert_array_equal(in_place, grad)
