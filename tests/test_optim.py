"""Optimizers against hand-written update formulas and torch.optim, gradient clipping, schedules,
state dicts and argument checking."""
import math

import numpy as np
import pytest

from fastrnn.optim import (SGD, Adadelta, Adagrad, Adam, AdamW, HalveOnPlateau, RMSprop, StepLR,
                           clip_grad_norm)

P0, G1, G2 = 1.5, 0.4, -0.7  # start value and the gradients of two successive steps


def two_steps(make_optimizer):
    """Run two steps on a single scalar parameter; return its values after each."""
    params, grads = {"w": np.array([P0])}, {"w": np.array([G1])}
    optimizer = make_optimizer(params, grads)
    optimizer.step()
    after_first = params["w"][0]
    grads["w"][0] = G2
    optimizer.step()
    return after_first, params["w"][0]


def sgd_momentum_expected(lr=0.1, momentum=0.9, dampening=0.1, wd=0.01):
    d1 = G1 + wd * P0
    buf1 = d1  # first buffer is the raw gradient, no dampening
    p1 = P0 - lr * buf1
    d2 = G2 + wd * p1
    buf2 = momentum * buf1 + (1 - dampening) * d2
    return p1, p1 - lr * buf2


def sgd_nesterov_expected(lr=0.1, momentum=0.9):
    buf1 = G1
    p1 = P0 - lr * (G1 + momentum * buf1)
    buf2 = momentum * buf1 + G2
    return p1, p1 - lr * (G2 + momentum * buf2)


def adam_expected(lr=0.01, b1=0.9, b2=0.999, eps=1e-8, wd=0.0, decoupled=False):
    p, m, v = P0, 0.0, 0.0
    values = []
    for t, g in ((1, G1), (2, G2)):
        if decoupled:
            p *= 1 - lr * wd
        else:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        p = p - lr * m_hat / (math.sqrt(v_hat) + eps)
        values.append(p)
    return tuple(values)


def adagrad_expected(lr=0.1, eps=1e-10, init=0.5):
    s1 = init + G1 ** 2
    p1 = P0 - lr * G1 / (math.sqrt(s1) + eps)
    s2 = s1 + G2 ** 2
    return p1, p1 - lr * G2 / (math.sqrt(s2) + eps)


def adadelta_expected(lr=1.0, rho=0.9, eps=1e-6):
    sq1 = (1 - rho) * G1 ** 2
    delta1 = math.sqrt(0 + eps) / math.sqrt(sq1 + eps) * G1
    acc1 = (1 - rho) * delta1 ** 2
    p1 = P0 - lr * delta1
    sq2 = rho * sq1 + (1 - rho) * G2 ** 2
    delta2 = math.sqrt(acc1 + eps) / math.sqrt(sq2 + eps) * G2
    return p1, p1 - lr * delta2


def rmsprop_expected(lr=0.01, alpha=0.99, eps=1e-8):
    sq1 = (1 - alpha) * G1 ** 2
    p1 = P0 - lr * G1 / (math.sqrt(sq1) + eps)
    sq2 = alpha * sq1 + (1 - alpha) * G2 ** 2
    return p1, p1 - lr * G2 / (math.sqrt(sq2) + eps)


def rmsprop_centered_momentum_expected(lr=0.01, alpha=0.9, eps=1e-8, momentum=0.5):
    sq1, avg1 = (1 - alpha) * G1 ** 2, (1 - alpha) * G1
    buf1 = G1 / (math.sqrt(sq1 - avg1 ** 2) + eps)
    p1 = P0 - lr * buf1
    sq2, avg2 = alpha * sq1 + (1 - alpha) * G2 ** 2, alpha * avg1 + (1 - alpha) * G2
    buf2 = momentum * buf1 + G2 / (math.sqrt(sq2 - avg2 ** 2) + eps)
    return p1, p1 - lr * buf2


HAND_CASES = {
    "sgd": (lambda p, g: SGD(p, g, lr=0.1), (P0 - 0.1 * G1, P0 - 0.1 * G1 - 0.1 * G2)),
    "sgd_momentum": (lambda p, g: SGD(p, g, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01),
                     sgd_momentum_expected()),
    "sgd_nesterov": (lambda p, g: SGD(p, g, lr=0.1, momentum=0.9, nesterov=True), sgd_nesterov_expected()),
    "adam": (lambda p, g: Adam(p, g, lr=0.01), adam_expected()),
    "adam_l2": (lambda p, g: Adam(p, g, lr=0.01, betas=(0.8, 0.95), weight_decay=0.1),
                adam_expected(b1=0.8, b2=0.95, wd=0.1)),
    "adamw": (lambda p, g: AdamW(p, g, lr=0.01, weight_decay=0.1), adam_expected(wd=0.1, decoupled=True)),
    "adagrad": (lambda p, g: Adagrad(p, g, lr=0.1, initial_accumulator_value=0.5), adagrad_expected()),
    "adadelta": (lambda p, g: Adadelta(p, g), adadelta_expected()),
    "rmsprop": (lambda p, g: RMSprop(p, g), rmsprop_expected()),
    "rmsprop_centered_momentum": (lambda p, g: RMSprop(p, g, alpha=0.9, momentum=0.5, centered=True),
                                  rmsprop_centered_momentum_expected()),
}


@pytest.mark.parametrize("case", sorted(HAND_CASES))
def test_two_steps_match_hand_computed_formula(case):
    make_optimizer, expected = HAND_CASES[case]
    np.testing.assert_allclose(two_steps(make_optimizer), expected, rtol=1e-12)


def test_adam_first_step_moves_by_lr_times_sign():
    # With bias correction, step 1 is lr * g / (|g| + eps) ~= lr * sign(g) for any gradient scale.
    params, grads = {"w": np.array([0.0, 0.0])}, {"w": np.array([1e-3, -50.0])}
    Adam(params, grads, lr=0.1).step()
    np.testing.assert_allclose(params["w"], [-0.1, 0.1], rtol=1e-4)


# (our class, torch.optim class name, keyword arguments shared by both)
TORCH_CASES = [
    (SGD, "SGD", dict(lr=0.1)),
    (SGD, "SGD", dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    (SGD, "SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    (Adam, "Adam", dict(lr=1e-2)),
    (Adam, "Adam", dict(lr=1e-2, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1)),
    (AdamW, "AdamW", dict(lr=1e-2)),
    (AdamW, "AdamW", dict(lr=1e-2, betas=(0.5, 0.6), weight_decay=0.3)),
    (Adagrad, "Adagrad", dict(lr=0.1)),
    (Adagrad, "Adagrad", dict(lr=0.1, eps=1e-6, initial_accumulator_value=0.1, weight_decay=0.01)),
    (Adadelta, "Adadelta", dict()),
    (Adadelta, "Adadelta", dict(lr=0.5, rho=0.8, eps=1e-4, weight_decay=0.01)),
    (RMSprop, "RMSprop", dict(lr=1e-2)),
    (RMSprop, "RMSprop", dict(lr=1e-2, alpha=0.9, momentum=0.9, centered=True, weight_decay=0.01)),
    (RMSprop, "RMSprop", dict(lr=1e-2, momentum=0.5)),
]


def random_problem(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    shapes = {"weight": (3, 4), "bias": (5,)}
    params = {name: rng.standard_normal(shape).astype(dtype) for name, shape in shapes.items()}
    grads = {name: np.zeros_like(value) for name, value in params.items()}
    gradient_sequence = [{name: rng.standard_normal(shape).astype(dtype) for name, shape in shapes.items()}
                         for _ in range(5)]
    return params, grads, gradient_sequence


@pytest.mark.parametrize("ours, torch_name, kwargs", TORCH_CASES)
def test_five_steps_match_torch_optim(ours, torch_name, kwargs):
    torch = pytest.importorskip("torch")
    params, grads, gradient_sequence = random_problem()
    tensors = {name: torch.tensor(value.copy(), requires_grad=True) for name, value in params.items()}
    reference = getattr(torch.optim, torch_name)(list(tensors.values()), foreach=False, **kwargs)
    optimizer = ours(params, grads, **kwargs)
    for step_grads in gradient_sequence:
        for name, value in step_grads.items():
            grads[name][...] = value
            tensors[name].grad = torch.tensor(value)
        optimizer.step()
        reference.step()
        for name, value in params.items():
            np.testing.assert_allclose(value, tensors[name].detach().numpy(), rtol=1e-12, atol=1e-15)


def run_steps(optimizer, gradient_sequence):
    """Copy each step's gradients into the optimizer's grads, step, and return the final params."""
    for step_grads in gradient_sequence:
        for name, value in step_grads.items():
            optimizer.grads[name][...] = value
        optimizer.step()
    return {name: value.copy() for name, value in optimizer.params.items()}


@pytest.mark.parametrize("ours, torch_name, kwargs", TORCH_CASES)
def test_state_dict_round_trip_resumes_bit_exactly(ours, torch_name, kwargs):
    params, grads, gradient_sequence = random_problem(seed=1)
    optimizer = ours(params, grads, **kwargs)
    run_steps(optimizer, gradient_sequence[:2])
    optimizer.lr = 0.5 * optimizer.lr  # as a schedule would; the saved state must carry it
    checkpoint_params = {name: value.copy() for name, value in params.items()}
    checkpoint = optimizer.state_dict()
    uninterrupted = run_steps(optimizer, gradient_sequence[2:])

    fresh_grads = {name: np.zeros_like(value) for name, value in checkpoint_params.items()}
    resumed = ours(checkpoint_params, fresh_grads, **kwargs)
    resumed.load_state_dict(checkpoint)
    assert resumed.step_count == 2 and resumed.lr == optimizer.lr
    continued = run_steps(resumed, gradient_sequence[2:])
    for name in params:
        np.testing.assert_array_equal(continued[name], uninterrupted[name])


def test_state_dict_is_a_copy():
    params, grads, _ = random_problem()
    grads["weight"][...] = 1.0
    optimizer = Adam(params, grads)
    optimizer.step()
    saved = optimizer.state_dict()
    snapshot = saved["state"]["weight"]["exp_avg"].copy()
    optimizer.step()
    np.testing.assert_array_equal(saved["state"]["weight"]["exp_avg"], snapshot)


def test_load_state_dict_rejects_mismatched_state():
    params, grads, _ = random_problem()
    state = Adam(params, grads).state_dict()
    other_params = {"weight": np.zeros((3, 4))}
    with pytest.raises(KeyError):
        Adam(other_params, {"weight": np.zeros((3, 4))}).load_state_dict(state)
    with pytest.raises(KeyError):
        SGD(params, grads, lr=0.1, momentum=0.9).load_state_dict(state)
    state["state"]["bias"]["exp_avg"] = np.zeros(6)
    with pytest.raises(ValueError, match="bias"):
        Adam(params, grads).load_state_dict(state)


def test_float32_parameters_stay_float32():
    params, grads, gradient_sequence = random_problem(dtype=np.float32)
    for name, value in gradient_sequence[0].items():
        grads[name][...] = value
    for ours, _, kwargs in TORCH_CASES:
        ours(params, grads, **kwargs).step()
    assert all(value.dtype == np.float32 and np.isfinite(value).all() for value in params.values())


def test_step_leaves_gradients_untouched_and_zero_grad_clears_them():
    params, grads, _ = random_problem()
    grads["weight"][...] = 2.0
    optimizer = SGD(params, grads, lr=0.1, momentum=0.9, weight_decay=0.5)
    optimizer.step()
    assert np.all(grads["weight"] == 2.0)
    optimizer.zero_grad()
    assert not any(grad.any() for grad in grads.values())


@pytest.mark.parametrize("make, error, match", [
    (lambda p, g: SGD(p, g, lr=-0.1), ValueError, "lr"),
    (lambda p, g: SGD(p, g, lr="fast"), TypeError, "lr"),
    (lambda p, g: SGD(p, g, lr=0.1, momentum=-0.5), ValueError, "momentum"),
    (lambda p, g: SGD(p, g, lr=0.1, dampening=1.5), ValueError, "dampening"),
    (lambda p, g: SGD(p, g, lr=0.1, nesterov=True), ValueError, "nesterov"),
    (lambda p, g: SGD(p, g, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), ValueError, "nesterov"),
    (lambda p, g: SGD(p, g, lr=0.1, weight_decay=-1), ValueError, "weight_decay"),
    (lambda p, g: Adam(p, g, betas=(1.0, 0.999)), ValueError, r"betas\[0\]"),
    (lambda p, g: Adam(p, g, betas=(0.9, -0.1)), ValueError, r"betas\[1\]"),
    (lambda p, g: Adam(p, g, betas=(0.9, 0.99, 0.9)), ValueError, "betas"),
    (lambda p, g: Adam(p, g, eps=-1e-8), ValueError, "eps"),
    (lambda p, g: AdamW(p, g, weight_decay=-0.1), ValueError, "weight_decay"),
    (lambda p, g: Adagrad(p, g, initial_accumulator_value=-1), ValueError, "initial_accumulator_value"),
    (lambda p, g: Adagrad(p, g, eps=float("nan")), ValueError, "eps"),
    (lambda p, g: Adadelta(p, g, rho=1.1), ValueError, "rho"),
    (lambda p, g: RMSprop(p, g, alpha=-0.1), ValueError, "alpha"),
    (lambda p, g: RMSprop(p, g, momentum=-1), ValueError, "momentum"),
])
def test_bad_hyper_parameters_are_rejected(make, error, match):
    params, grads, _ = random_problem()
    with pytest.raises(error, match=match):
        make(params, grads)


def test_lr_assignment_is_checked():
    params, grads, _ = random_problem()
    optimizer = Adam(params, grads)
    optimizer.lr = 0.25
    assert optimizer.lr == 0.25
    with pytest.raises(ValueError, match="lr"):
        optimizer.lr = -1.0


@pytest.mark.parametrize("params, grads, error, match", [
    ({"a": np.zeros(2)}, {"b": np.zeros(2)}, ValueError, "same keys"),
    ({"a": np.zeros(2)}, {"a": np.zeros(3)}, ValueError, r"grads\['a'\]"),
    ({"a": np.zeros(2)}, {"a": np.zeros(2, np.float32)}, TypeError, r"grads\['a'\]"),
    ({"a": np.zeros(2, int)}, {"a": np.zeros(2, int)}, TypeError, r"params\['a'\]"),
    ({"a": [0.0, 1.0]}, {"a": np.zeros(2)}, TypeError, r"params\['a'\]"),
])
def test_mismatched_params_and_grads_are_rejected(params, grads, error, match):
    with pytest.raises(error, match=match):
        SGD(params, grads, lr=0.1)


def test_same_array_listed_twice_is_rejected():
    shared = np.zeros(3)
    with pytest.raises(ValueError, match="tied"):
        SGD({"a": shared, "b": shared}, {"a": np.zeros(3), "b": np.zeros(3)}, lr=0.1)


# --------------------------------------------------------------------------- clip_grad_norm

def test_clip_grad_norm_scales_to_max_norm_and_returns_the_original_norm():
    grads = {"a": np.array([3.0, 4.0]), "b": np.array([[12.0]])}  # global norm 13
    assert clip_grad_norm(grads, 6.5) == pytest.approx(13.0, rel=1e-15)
    scale = 6.5 / (13.0 + 1e-6)
    np.testing.assert_allclose(grads["a"], [3 * scale, 4 * scale], rtol=1e-15)
    np.testing.assert_allclose(grads["b"], [[12 * scale]], rtol=1e-15)
    assert math.sqrt(sum(np.sum(g ** 2) for g in grads.values())) == pytest.approx(6.5, rel=1e-6)


def test_clip_grad_norm_leaves_small_gradients_alone_and_takes_lists():
    grads = [np.array([0.3, 0.4], np.float32)]
    assert clip_grad_norm(grads, 1.0) == pytest.approx(0.5, rel=1e-7)
    np.testing.assert_array_equal(grads[0], np.array([0.3, 0.4], np.float32))


def test_clip_grad_norm_counts_a_shared_array_once():
    shared = np.array([3.0, 4.0])
    assert clip_grad_norm([shared, shared], 100.0) == pytest.approx(5.0, rel=1e-15)


def test_clip_grad_norm_matches_torch():
    torch = pytest.importorskip("torch")
    _, _, gradient_sequence = random_problem()
    grads = gradient_sequence[0]
    tensors = [torch.zeros(v.shape, dtype=torch.float64, requires_grad=True) for v in grads.values()]
    for tensor, value in zip(tensors, grads.values()):
        tensor.grad = torch.tensor(value)
    expected_norm = torch.nn.utils.clip_grad_norm_(tensors, 0.5).item()
    assert clip_grad_norm(grads, 0.5) == pytest.approx(expected_norm, rel=1e-13)
    for tensor, value in zip(tensors, grads.values()):
        np.testing.assert_allclose(value, tensor.grad.numpy(), rtol=1e-13)


@pytest.mark.parametrize("grads, max_norm, error, match", [
    ([np.ones(2)], 0.0, ValueError, "max_norm"),
    ([np.ones(2)], -1.0, ValueError, "max_norm"),
    ([[1.0, 2.0]], 1.0, TypeError, "numpy arrays"),
    ([np.ones(2, int)], 1.0, TypeError, "dtype"),
])
def test_clip_grad_norm_rejects_bad_arguments(grads, max_norm, error, match):
    with pytest.raises(error, match=match):
        clip_grad_norm(grads, max_norm)


# --------------------------------------------------------------------------- schedules

def make_optimizer(lr=1.0):
    return SGD({"w": np.zeros(1)}, {"w": np.zeros(1)}, lr=lr)


def test_step_lr_decays_every_step_size_epochs():
    optimizer = make_optimizer()
    schedule = StepLR(optimizer, step_size=2, gamma=0.5)
    lrs = []
    for _ in range(5):
        schedule.step()
        lrs.append(optimizer.lr)
    assert lrs == [1.0, 0.5, 0.5, 0.25, 0.25]


def test_step_lr_state_dict_round_trip():
    optimizer = make_optimizer()
    schedule = StepLR(optimizer, step_size=3, gamma=0.1)
    schedule.step()
    schedule.step()
    state = schedule.state_dict()
    resumed_optimizer = make_optimizer(optimizer.lr)
    resumed = StepLR(resumed_optimizer, step_size=3, gamma=0.1).load_state_dict(state)
    schedule.step()
    resumed.step()
    assert resumed_optimizer.lr == optimizer.lr == pytest.approx(0.1)


def test_halve_on_plateau_reduces_only_when_validation_stalls():
    optimizer = make_optimizer()
    schedule = HalveOnPlateau(optimizer)
    reductions = [schedule.step(loss) for loss in (5.0, 4.0, 4.5, 3.0, 3.0, float("nan"))]
    assert reductions == [False, False, True, False, True, True]
    assert optimizer.lr == 0.125 and schedule.best == 3.0


def test_halve_on_plateau_patience_and_min_lr():
    optimizer = make_optimizer()
    schedule = HalveOnPlateau(optimizer, factor=0.1, patience=1, min_lr=0.05)
    lrs = []
    for loss in (1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0):
        schedule.step(loss)
        lrs.append(optimizer.lr)
    assert lrs == [1.0, 1.0, 0.1, 0.1, 0.05, 0.05, 0.05]
    assert schedule.step(3.0) is False  # lr already at its floor


def test_halve_on_plateau_state_dict_round_trip():
    optimizer = make_optimizer()
    schedule = HalveOnPlateau(optimizer, patience=1)
    schedule.step(2.0)
    schedule.step(2.5)
    resumed_optimizer = make_optimizer()
    resumed = HalveOnPlateau(resumed_optimizer, patience=1).load_state_dict(schedule.state_dict())
    assert resumed.step(2.5) and schedule.step(2.5)
    assert resumed_optimizer.lr == optimizer.lr == 0.5


@pytest.mark.parametrize("make, error, match", [
    (lambda opt: StepLR(opt, step_size=0), ValueError, "step_size"),
    (lambda opt: StepLR(opt, step_size=1.5), TypeError, "step_size"),
    (lambda opt: StepLR(opt, step_size=1, gamma=-0.5), ValueError, "gamma"),
    (lambda opt: HalveOnPlateau(opt, factor=1.0), ValueError, "factor"),
    (lambda opt: HalveOnPlateau(opt, factor=-0.5), ValueError, "factor"),
    (lambda opt: HalveOnPlateau(opt, patience=-1), ValueError, "patience"),
    (lambda opt: HalveOnPlateau(opt, min_lr=-1e-3), ValueError, "min_lr"),
])
def test_bad_schedule_arguments_are_rejected(make, error, match):
    with pytest.raises(error, match=match):
        make(make_optimizer())
