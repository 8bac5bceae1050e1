"""Embedding, Linear (incl. tied weights), Dropout and SoftmaxCrossEntropy: values, finite-difference
gradients in float64, and error paths."""
import numpy as np
import pytest

import fastrnn
from fastrnn.layers.dropout import Dropout
from fastrnn.layers.embedding import Embedding, scatter_add_rows
from fastrnn.layers.linear import Linear
from fastrnn.layers.loss import SoftmaxCrossEntropy
from fastrnn.optim import SGD

import helpers


def numerical_gradient(f, x, eps=1e-6):
    """Central differences of the scalar ``f()`` w.r.t. every element of ``x``."""
    return helpers.numerical_gradient(f, x, range(x.size), eps).reshape(x.shape)


def assert_gradients_match(analytic, numeric, tol=1e-6):
    scale = np.linalg.norm(analytic) + np.linalg.norm(numeric)
    assert scale > 0
    assert np.linalg.norm(analytic - numeric) / scale < tol


# --------------------------------------------------------------------------- Embedding

def test_embedding_forward_looks_up_rows_for_any_id_shape():
    emb = Embedding(7, 3, seed=0)
    ids = np.array([[0, 6, 2], [2, 2, 5]])  # (T, B)
    out = emb.forward(ids)
    assert out.shape == (2, 3, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out, emb.params["weight"][ids])


def test_embedding_init_is_standard_normal_and_seeded():
    weight = Embedding(1000, 100, seed=1).params["weight"]
    assert abs(weight.mean()) < 0.01 and abs(weight.std() - 1) < 0.01
    np.testing.assert_array_equal(weight, Embedding(1000, 100, seed=1).params["weight"])
    assert not np.array_equal(weight, Embedding(1000, 100, seed=2).params["weight"])
    assert Embedding(4, 2, dtype=np.float64).params["weight"].dtype == np.float64


def test_embedding_backward_sums_repeated_ids_and_accumulates():
    emb = Embedding(5, 4, dtype=np.float64, seed=0)
    ids = np.array([[1, 3], [1, 1], [4, 3]])
    dy = np.random.default_rng(0).standard_normal((3, 2, 4))
    expected = np.zeros((5, 4))
    np.add.at(expected, ids.reshape(-1), dy.reshape(-1, 4))
    emb.forward(ids)
    assert emb.backward(dy) is None
    np.testing.assert_allclose(emb.grads["weight"], expected, rtol=1e-14)
    emb.forward(ids)   # each forward is backpropagated once (issue 9, item 1)
    emb.backward(dy)
    np.testing.assert_allclose(emb.grads["weight"], 2 * expected, rtol=1e-14)
    emb.zero_grad()
    assert not emb.grads["weight"].any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_scatter_add_rows_gives_add_ats_bits_on_any_thread_count(dtype, threads):
    """Rows sharing an id are added in order, as np.add.at does, whatever the threads (each
    owns a range of the table's rows); Zipf-like ids repeat the first rows many times."""
    rng = np.random.default_rng(3)
    for ids in (rng.integers(0, 50, 2048), np.minimum(rng.zipf(1.3, 2048) - 1, 49)):
        rows = rng.standard_normal((2048, 37)).astype(dtype)
        start = rng.standard_normal((50, 37)).astype(dtype)
        expected = start.copy()
        np.add.at(expected, ids, rows)
        target = start.copy()
        fastrnn.set_num_threads(threads)
        try:
            scatter_add_rows(target, ids, rows)
        finally:
            fastrnn.set_num_threads(None)
        np.testing.assert_array_equal(target, expected)


def test_scatter_add_rows_with_no_ids_is_a_no_op():
    target = np.ones((3, 2))
    scatter_add_rows(target, np.zeros(0, dtype=np.int64), np.zeros((0, 2)))
    np.testing.assert_array_equal(target, np.ones((3, 2)))


def test_embedding_weight_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    emb = Embedding(6, 3, dtype=np.float64, seed=0)
    ids = np.array([[0, 5], [5, 2], [0, 0]])
    projection = rng.standard_normal((3, 2, 3))

    def loss():
        return float(np.sum(emb.forward(ids) * projection))

    loss()
    emb.backward(projection)
    numeric = numerical_gradient(loss, emb.params["weight"])
    assert_gradients_match(emb.grads["weight"], numeric)


def test_embedding_padding_row_starts_at_zero_and_gets_no_gradient():
    emb = Embedding(5, 3, dtype=np.float64, seed=0, padding_idx=-1)  # normalised to 4
    assert emb.padding_idx == 4
    assert not emb.params["weight"][4].any()
    ids = np.array([4, 1, 4, 2])
    emb.forward(ids)
    emb.backward(np.ones((4, 3)))
    assert not emb.grads["weight"][4].any()
    np.testing.assert_array_equal(emb.grads["weight"][[1, 2]], np.ones((2, 3)))


def test_embedding_state_dict_round_trip():
    source, target = Embedding(4, 2, seed=0), Embedding(4, 2, seed=1)
    target.load_state_dict(source.state_dict())
    np.testing.assert_array_equal(target.params["weight"], source.params["weight"])


@pytest.mark.parametrize("ids, error, match", [
    (np.array([0, 7]), ValueError, "ids"),
    (np.array([-1, 0]), ValueError, "ids"),
    (np.array([0.0, 1.0]), TypeError, "ids"),
])
def test_embedding_rejects_bad_ids(ids, error, match):
    with pytest.raises(error, match=match):
        Embedding(7, 2).forward(ids)


def test_embedding_backward_rejects_bad_dy_and_missing_forward():
    emb = Embedding(7, 2)
    with pytest.raises(RuntimeError, match="before forward"):
        emb.backward(np.zeros((3, 2), np.float32))
    emb.forward(np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="dy"):
        emb.backward(np.zeros((3, 3), np.float32))
    with pytest.raises(TypeError, match="dy"):
        emb.backward(np.zeros((3, 2), np.float64))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(num_embeddings=0, embedding_dim=2), ValueError, "num_embeddings"),
    (dict(num_embeddings=3, embedding_dim=2.5), TypeError, "embedding_dim"),
    (dict(num_embeddings=3, embedding_dim=2, dtype=np.int32), TypeError, "dtype"),
    (dict(num_embeddings=3, embedding_dim=2, padding_idx=3), ValueError, "padding_idx"),
    (dict(num_embeddings=3, embedding_dim=2, padding_idx=-4), ValueError, "padding_idx"),
])
def test_embedding_rejects_bad_constructor_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        Embedding(**kwargs)


# --------------------------------------------------------------------------- Linear

def test_linear_forward_is_one_affine_map_over_the_last_axis():
    lin = Linear(4, 3, seed=0)
    x = np.random.default_rng(0).standard_normal((5, 2, 4)).astype(np.float32)
    y = lin.forward(x)
    assert y.shape == (5, 2, 3) and y.dtype == np.float32
    expected = x @ lin.params["weight"].T + lin.params["bias"]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_linear_init_matches_pytorch_bounds_and_names():
    lin = Linear(50, 400, seed=0)
    bound = 1 / np.sqrt(50)
    assert lin.params["weight"].shape == (400, 50) and lin.params["bias"].shape == (400,)
    for value in lin.params.values():
        assert np.abs(value).max() <= bound
        assert np.abs(value).max() > 0.95 * bound  # spread over the whole interval
    assert set(Linear(3, 2, bias=False).params) == {"weight"}


def test_linear_without_bias_has_no_offset():
    lin = Linear(3, 2, bias=False, dtype=np.float64, seed=0)
    x = np.ones((1, 3))
    np.testing.assert_allclose(lin.forward(x), x @ lin.params["weight"].T, rtol=1e-15)
    lin.backward(np.ones((1, 2)))
    assert set(lin.grads) == {"weight"}


@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradients_match_finite_differences(bias):
    rng = np.random.default_rng(1)
    lin = Linear(4, 3, bias=bias, dtype=np.float64, seed=0)
    x = rng.standard_normal((2, 5, 4))
    projection = rng.standard_normal((2, 5, 3))

    def loss():
        return float(np.sum(lin.forward(x) * projection))

    loss()
    dx = lin.backward(projection)
    assert dx.shape == x.shape
    assert_gradients_match(dx, numerical_gradient(loss, x))
    for name in lin.params:
        assert_gradients_match(lin.grads[name], numerical_gradient(loss, lin.params[name]))


def test_linear_backward_accumulates():
    lin = Linear(3, 2, dtype=np.float64, seed=0)
    x, dy = np.ones((4, 3)), np.ones((4, 2))
    lin.forward(x)
    lin.backward(dy)
    first = {name: grad.copy() for name, grad in lin.grads.items()}
    lin.forward(x)   # each forward is backpropagated once (issue 9, item 1)
    lin.backward(dy)
    for name, grad in lin.grads.items():
        np.testing.assert_allclose(grad, 2 * first[name], rtol=1e-15)


def test_tied_linear_shares_weight_and_grad_with_embedding():
    emb = Embedding(11, 4, dtype=np.float64, seed=0)
    lin = Linear.tied_to(emb, seed=1)
    assert lin.weight is emb.params["weight"] and lin.weight_grad is emb.grads["weight"]
    assert (lin.in_features, lin.out_features) == (4, 11) and lin.dtype == np.float64
    assert set(lin.params) == set(lin.grads) == {"bias"}
    assert set(Linear.tied_to(emb, bias=False).params) == set()


def test_tied_weight_gradient_arrives_from_both_uses():
    rng = np.random.default_rng(2)
    emb = Embedding(6, 3, dtype=np.float64, seed=0)
    lin = Linear.tied_to(emb, seed=1)
    ids = np.array([[0, 5], [3, 0]])
    projection = rng.standard_normal((2, 2, 6))

    def loss():
        return float(np.sum(lin.forward(emb.forward(ids)) * projection))

    loss()
    emb.backward(lin.backward(projection))
    numeric = numerical_gradient(loss, emb.params["weight"])
    assert_gradients_match(emb.grads["weight"], numeric)
    # Both paths really contribute: the output-projection path alone is not the whole gradient.
    emb.zero_grad()
    lin.backward(projection)
    assert not np.allclose(emb.grads["weight"], numeric)


def test_tied_weight_is_updated_once_by_an_optimizer_over_all_layers():
    emb = Embedding(5, 2, dtype=np.float64, seed=0)
    lin = Linear.tied_to(emb, seed=1)
    layers = {"emb": emb, "out": lin}
    params = {f"{prefix}.{k}": v for prefix, layer in layers.items() for k, v in layer.params.items()}
    grads = {f"{prefix}.{k}": v for prefix, layer in layers.items() for k, v in layer.grads.items()}
    before = emb.params["weight"].copy()
    emb.grads["weight"][...] = 1.0
    SGD(params, grads, lr=0.5).step()
    np.testing.assert_array_equal(lin.weight, before - 0.5)


def test_linear_rejects_bad_input():
    lin = Linear(3, 2)
    with pytest.raises(RuntimeError, match="before forward"):
        lin.backward(np.zeros((1, 2), np.float32))
    with pytest.raises(ValueError, match="x"):
        lin.forward(np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match="x"):
        lin.forward(np.float32(1.0))
    with pytest.raises(TypeError, match="x"):
        lin.forward(np.zeros((4, 3), np.float64))
    lin.forward(np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="dy"):
        lin.backward(np.zeros((4, 3), np.float32))
    with pytest.raises(TypeError, match="dy"):
        lin.backward(np.zeros((4, 2), np.float64))


@pytest.mark.parametrize("args, kwargs, error, match", [
    ((0, 2), {}, ValueError, "in_features"),
    ((2, -1), {}, ValueError, "out_features"),
    ((2, 2), dict(dtype="int64"), TypeError, "dtype"),
    ((2, 5), dict(weight_owner=Embedding(5, 3)), ValueError, "weight_owner"),
    ((3, 5), dict(weight_owner=Embedding(5, 3, dtype=np.float64)), TypeError, "weight_owner"),
    ((3, 5), dict(weight_owner=Dropout(0.1)), ValueError, "weight_owner"),
])
def test_linear_rejects_bad_constructor_arguments(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        Linear(*args, **kwargs)


# --------------------------------------------------------------------------- Dropout

def test_dropout_is_identity_in_eval_mode_and_for_p_zero():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(Dropout(0.5, seed=0).eval().forward(x), x)
    zero = Dropout(0.0, seed=0)
    np.testing.assert_array_equal(zero.forward(x), x)
    np.testing.assert_array_equal(zero.backward(x), x)


def test_dropout_drops_fraction_p_and_rescales_survivors():
    drop = Dropout(0.3, seed=0)
    x = np.ones((400, 500), np.float32)
    y = drop.forward(x)
    assert y.dtype == np.float32
    assert abs(np.mean(y == 0) - 0.3) < 0.005
    np.testing.assert_allclose(y[y != 0], 1 / 0.7, rtol=1e-6)
    dy = np.full_like(x, 2.0)
    np.testing.assert_array_equal(drop.backward(dy), np.where(y == 0, 0, dy * np.float32(1 / 0.7)))


def test_dropout_masks_are_reproducible_from_seed_and_rng_state():
    x = np.ones((8, 9))
    a, b = Dropout(0.5, seed=42), Dropout(0.5, seed=42)
    first = a.forward(x)
    np.testing.assert_array_equal(first, b.forward(x))
    state = a.rng_state()
    second = a.forward(x)
    assert not np.array_equal(first, second)  # a fresh mask on every call
    a.set_rng_state(state)
    np.testing.assert_array_equal(a.forward(x), second)
    resumed = Dropout(0.5, seed=0)
    resumed.set_rng_state(state)
    np.testing.assert_array_equal(resumed.forward(x), second)


def test_dropout_gradient_matches_finite_differences_for_a_fixed_mask():
    rng = np.random.default_rng(0)
    drop = Dropout(0.4, seed=3)
    x = rng.standard_normal((4, 5))
    projection = rng.standard_normal((4, 5))
    state = drop.rng_state()

    def loss():
        drop.set_rng_state(state)  # same mask on every evaluation
        return float(np.sum(drop.forward(x) * projection))

    loss()
    analytic = drop.backward(projection)
    assert_gradients_match(analytic, numerical_gradient(loss, x))


def test_dropout_rejects_bad_arguments():
    for p in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="p must"):
            Dropout(p)
    drop = Dropout(0.5)
    with pytest.raises(TypeError, match="x"):
        drop.forward(np.ones(3, dtype=np.int64))
    drop.forward(np.ones(3))
    with pytest.raises(ValueError, match="dy"):
        drop.backward(np.ones(4))


# --------------------------------------------------------------------------- SoftmaxCrossEntropy

def naive_cross_entropy(logits, targets):
    """Per-token -log softmax[target], written the textbook way (fine for small logits)."""
    probs = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    return -np.log(np.take_along_axis(probs, targets[..., None], axis=-1))[..., 0]


def test_loss_equals_naive_log_softmax_on_small_input():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 5))
    targets = rng.integers(0, 5, 6)
    loss_fn = SoftmaxCrossEntropy()
    expected = naive_cross_entropy(logits, targets).mean()
    assert loss_fn.forward(logits, targets) == pytest.approx(expected, rel=1e-13)
    assert loss_fn.n_tokens == 6
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    probs[np.arange(6), targets] -= 1
    np.testing.assert_allclose(loss_fn.backward(), probs / 6, rtol=1e-12, atol=1e-15)


def test_loss_accepts_time_batch_shape_and_float32():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((3, 2, 7)).astype(np.float32)
    targets = rng.integers(0, 7, (3, 2))
    loss_fn = SoftmaxCrossEntropy()
    loss = loss_fn.forward(logits, targets)
    grad = loss_fn.backward()
    assert isinstance(loss, float) and grad.shape == (3, 2, 7) and grad.dtype == np.float32
    flat = SoftmaxCrossEntropy()
    assert flat.forward(logits.reshape(6, 7), targets.reshape(6)) == pytest.approx(loss, rel=1e-6)
    np.testing.assert_allclose(flat.backward().reshape(3, 2, 7), grad, rtol=1e-6)


def test_loss_is_stable_for_huge_logits():
    logits = np.array([[1e4, 0.0, -1e4], [1e4, 1e4, 0.0]])
    loss_fn = SoftmaxCrossEntropy(reduction="sum")
    # Row 0: target 1 costs 1e4 nats; row 1: two tied maxima cost log 2.
    assert loss_fn.forward(logits, np.array([1, 0])) == pytest.approx(1e4 + np.log(2), rel=1e-15)
    grad = loss_fn.backward()
    assert np.isfinite(grad).all()
    np.testing.assert_allclose(grad, [[1, -1, 0], [-0.5, 0.5, 0]], atol=1e-15)
    huge = np.random.default_rng(0).standard_normal((4, 9)) * 1e4
    targets = np.arange(4)
    shifted = SoftmaxCrossEntropy().forward(huge - huge.max(axis=1, keepdims=True), targets)
    assert SoftmaxCrossEntropy().forward(huge.astype(np.float32), targets) == pytest.approx(shifted, rel=1e-6)


def test_loss_mask_excludes_positions_exactly():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((4, 3, 5))
    targets = rng.integers(0, 5, (4, 3))
    mask = rng.random((4, 3)) < 0.6
    mask[2] = False  # a fully masked time step
    loss_fn = SoftmaxCrossEntropy()
    loss = loss_fn.forward(logits, targets, mask)
    assert loss_fn.n_tokens == mask.sum()
    assert loss == pytest.approx(naive_cross_entropy(logits, targets)[mask].mean(), rel=1e-13)
    grad = loss_fn.backward()
    assert np.all(grad[~mask] == 0.0)
    assert np.all(np.abs(grad[mask]).sum(axis=-1) > 0)
    float_mask_loss = SoftmaxCrossEntropy().forward(logits, targets, mask.astype(np.float64))
    assert float_mask_loss == loss


def test_loss_with_everything_masked_is_zero_without_nan():
    loss_fn = SoftmaxCrossEntropy()
    logits = np.ones((2, 3, 4))
    assert loss_fn.forward(logits, np.zeros((2, 3), int), np.zeros((2, 3), bool)) == 0.0
    assert loss_fn.n_tokens == 0
    grad = loss_fn.backward()
    assert not np.isnan(grad).any() and not grad.any()


def test_loss_gradient_matches_finite_differences_with_mask():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((3, 2, 4))
    targets = rng.integers(0, 4, (3, 2))
    mask = np.array([[True, False], [False, False], [True, True]])  # middle row fully masked
    loss_fn = SoftmaxCrossEntropy()

    def loss():
        return loss_fn.forward(logits, targets, mask)

    loss()
    analytic = loss_fn.backward(scale=1.0)
    assert_gradients_match(analytic, numerical_gradient(loss, logits))


def test_loss_backward_scale_and_sum_reduction():
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((5, 3))
    targets = rng.integers(0, 3, 5)
    mean_fn, sum_fn = SoftmaxCrossEntropy(), SoftmaxCrossEntropy(reduction="sum")
    mean_loss, sum_loss = mean_fn.forward(logits, targets), sum_fn.forward(logits, targets)
    assert sum_loss == pytest.approx(5 * mean_loss, rel=1e-14)
    np.testing.assert_allclose(mean_fn.backward(scale=10.0), sum_fn.backward() * 2.0, rtol=1e-14)


def test_loss_matches_torch_cross_entropy():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((7, 6)) * 5
    targets = rng.integers(0, 6, 7)
    reference = torch.tensor(logits, requires_grad=True)
    torch_loss = torch.nn.functional.cross_entropy(reference, torch.tensor(targets))
    torch_loss.backward()
    loss_fn = SoftmaxCrossEntropy()
    assert loss_fn.forward(logits, targets) == pytest.approx(torch_loss.item(), rel=1e-13)
    np.testing.assert_allclose(loss_fn.backward(), reference.grad.numpy(), rtol=1e-12, atol=1e-16)


def test_loss_rejects_bad_input():
    loss_fn = SoftmaxCrossEntropy()
    logits = np.zeros((2, 3))
    with pytest.raises(ValueError, match="targets"):
        loss_fn.forward(logits, np.array([0, 3]))
    with pytest.raises(ValueError, match="targets"):
        loss_fn.forward(logits, np.array([0, -1]))
    with pytest.raises(ValueError, match="targets"):
        loss_fn.forward(logits, np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="targets"):
        loss_fn.forward(logits, np.array([0.0, 1.0]))
    with pytest.raises(TypeError, match="logits"):
        loss_fn.forward(np.zeros((2, 3), int), np.array([0, 1]))
    with pytest.raises(ValueError, match="logits"):
        loss_fn.forward(np.zeros(3), np.array(0))
    with pytest.raises(ValueError, match="mask"):
        loss_fn.forward(logits, np.array([0, 1]), mask=np.ones(3, bool))
    with pytest.raises(ValueError, match="mask"):
        loss_fn.forward(logits, np.array([0, 1]), mask=np.array([1, -2]))   # weights >= 0 (issue 12)
    with pytest.raises(ValueError, match="reduction"):
        SoftmaxCrossEntropy(reduction="none")


def test_loss_backward_needs_a_fresh_forward():
    loss_fn = SoftmaxCrossEntropy()
    with pytest.raises(RuntimeError, match="forward"):
        loss_fn.backward()
    loss_fn.forward(np.zeros((2, 3)), np.array([0, 1]))
    loss_fn.backward()
    with pytest.raises(RuntimeError, match="forward"):
        loss_fn.backward()


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_one_layer_final_state_is_the_callers_own(cell, rng):
    """A one-layer, one-direction layer returns its final state as a view of the kernel's
    fresh array (no stacked copy): writing into it, or running the layer again, must change
    neither the other call's state nor what backward uses."""
    layer = (fastrnn.LSTM if cell == "lstm" else fastrnn.GRU)(3, 4, dtype=np.float64, seed=0)
    x = rng.standard_normal((5, 2, 3))
    dy = rng.standard_normal((5, 2, 4))
    _, state = layer.forward(x)
    kept = [s.copy() for s in (state if cell == "lstm" else (state,))]
    dx_want, _ = layer.backward(dy)
    grads_want = {k: g.copy() for k, g in layer.grads.items()}
    layer.zero_grad()

    _, state = layer.forward(x)
    for s in (state if cell == "lstm" else (state,)):
        s[...] = 99.0                                  # the caller reuses its state array
    _, second = layer.forward(x, state)                # another call in between
    layer.backward(dy)                                  # ... backpropagated first (LIFO)
    layer.zero_grad()
    dx, _ = layer.backward(dy)                          # the first forward's backward
    np.testing.assert_array_equal(dx, dx_want)
    for k, g in layer.grads.items():
        np.testing.assert_array_equal(g, grads_want[k])
    _, third = layer.forward(x)
    for s, want in zip(third if cell == "lstm" else (third,), kept):
        np.testing.assert_array_equal(s, want)
        assert not any(np.shares_memory(s, o) for o in (second if cell == "lstm" else (second,)))
    layer.clear_pending()
