"""Optimizers, global gradient clipping and learning-rate schedules for numpy parameters
(or CuPy parameters of a model on the GPU).

Every optimizer updates ``params`` in place from ``grads`` (two dicts with the same keys, as
exposed by each layer) and follows the update formula of its ``torch.optim`` namesake, so given
the same gradients it produces the same parameters up to rounding. ``state_dict`` holds the lr,
the step count and every per-parameter buffer, so a run restored from it continues bit-exactly.

Typical use::

    params = {f"{i}.{k}": v for i, layer in enumerate(layers) for k, v in layer.params.items()}
    grads = {f"{i}.{k}": v for i, layer in enumerate(layers) for k, v in layer.grads.items()}
    opt = Adam(params, grads, lr=1e-3)
    ...; clip_grad_norm(grads, 0.25); opt.step(); opt.zero_grad()

On the GPU the arrays are CuPy arrays (all on the device); every update runs there with the
array module of the parameters (``xp``), whose functions mirror NumPy's one for one, so the
NumPy path is exactly the code it always was. Optimizer buffers live on the parameters'
device; ``state_dict`` returns them where they are (copy them to the host to save them).
Build the optimizer after moving the model: it holds the parameter arrays themselves.
"""
import math
import numbers

import numpy as np

from . import threads
from ._cpu import update as _compiled
from ._device import array_module_of, device_of, is_device_array, to_device
from ._engine.cpu import zero_arrays
from ._validation import _shares_memory, as_float_dtype


def _check_real(value, name, low=0.0, high=math.inf, include_high=True):
    """Return ``value`` as a float in ``[low, high]`` (``[low, high)`` without include_high)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not (low <= value and (value <= high if include_high else value < high)):
        closing = "]" if include_high else ")"
        expected = f">= {low:g}" if high == math.inf else f"in [{low:g}, {high:g}{closing}"
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return value


def _check_count(value, name, minimum):
    """Return ``value`` as an int ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def _check_params_and_grads(params, grads):
    """Both dicts must pair each name with distinct float arrays of equal shape and dtype."""
    params, grads = dict(params), dict(grads)
    if params.keys() != grads.keys():
        missing = [k for k in params if k not in grads]
        unexpected = [k for k in grads if k not in params]
        raise ValueError(
            f"grads must have the same keys as params: missing {missing}, unexpected {unexpected}")
    seen = {}
    for name, param in params.items():
        grad = grads[name]
        if not _is_array(param) or not _is_array(grad):
            raise TypeError(f"params[{name!r}] and grads[{name!r}] must be numpy (or CuPy) arrays "
                            "(updated in place)")
        if is_device_array(param) != is_device_array(grad):
            raise TypeError(f"params[{name!r}] and grads[{name!r}] must be on the same device")
        as_float_dtype(param.dtype, f"params[{name!r}]'s dtype")
        if grad.shape != param.shape:
            raise ValueError(f"grads[{name!r}] must have shape {param.shape}, got {grad.shape}")
        if grad.dtype != param.dtype:
            raise TypeError(f"grads[{name!r}] must have dtype {param.dtype}, got {grad.dtype}")
        if id(param) in seen:
            # A tied weight listed under two names would be updated twice per step.
            raise ValueError(f"params[{name!r}] is the same array as params[{seen[id(param)]!r}]; "
                             "pass a shared (tied) weight once")
        seen[id(param)] = name
    return params, grads


def _is_array(a):
    """A numpy array, or a CuPy array (recognised without importing CuPy)."""
    return isinstance(a, np.ndarray) or is_device_array(a)


def _ema_(average, value, decay, work):
    """``average <- decay * average + (1 - decay) * value`` in place; ``work`` is scratch
    (it may be ``value`` itself)."""
    average *= decay
    array_module_of(work).multiply(value, 1.0 - decay, out=work)
    average += work


class Optimizer:
    """Shared machinery: parameter bookkeeping, ``step``, ``zero_grad``, ``lr``, state dicts.

    A subclass sets its hyper-parameters, then calls ``super().__init__`` and defines
    ``_new_state(param) -> dict`` (zero-initialised buffers for one parameter) and
    ``_update(param, grad, state, work)``: one in-place step for one parameter, where ``work``
    is a scratch array shaped like ``param`` and ``self.step_count`` is already the 1-based
    number of the step being taken. ``grad`` must never be modified (it is the layer's buffer).

    Frozen parameters: ``frozen`` holds names of ``params`` that ``step`` leaves exactly as
    they are (no update, no weight decay, their buffers untouched); their gradients may still
    be computed, and are ignored. A ``set`` is kept by reference, so passing a model's
    ``frozen`` set (``LanguageModel.frozen``) makes later ``model.freeze``/``unfreeze``
    calls take effect at the next step; :meth:`freeze`/:meth:`unfreeze` act on it too. The
    step count stays global: a parameter unfrozen later continues with the optimizer's
    count (torch keeps one per parameter), so Adam's bias correction is then already small.
    """

    def __init__(self, params, grads, lr, weight_decay=0.0, frozen=()):
        self.params, self.grads = _check_params_and_grads(params, grads)
        self.lr = lr
        self.weight_decay = _check_real(weight_decay, "weight_decay")
        self.step_count = 0
        self.frozen = frozen if isinstance(frozen, set) else set(frozen)
        for name in self.frozen:
            self._check_name(name)
        self.state = {name: self._new_state(param) for name, param in self.params.items()}
        self._work = {name: array_module_of(param).empty_like(param)
                      for name, param in self.params.items()}

    @property
    def lr(self):
        """Learning rate; schedules assign to it between steps."""
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = _check_real(value, "lr")

    def _check_name(self, name):
        if name not in self.params:
            raise KeyError(f"no parameter named {name!r}; the names are {sorted(self.params)}")

    def freeze(self, name):
        """Leave parameter ``name`` unchanged by later steps."""
        self._check_name(name)
        self.frozen.add(name)

    def unfreeze(self, name):
        """Update parameter ``name`` again from the next step."""
        self._check_name(name)
        self.frozen.discard(name)

    def step(self):
        self.step_count += 1
        names = [name for name in self.params if name not in self.frozen]
        if self._update_all(names):
            return
        for name in names:
            self._update(self.params[name], self.grads[name], self.state[name],
                         self._work[name])

    def zero_grad(self):
        zero_arrays(self.grads.values())

    def _new_state(self, param):
        raise NotImplementedError

    def _update(self, param, grad, state, work):
        raise NotImplementedError

    def _update_all(self, names):
        """Step the parameters ``names`` in one compiled pass, returning True; False, having
        done nothing, where the optimizer has no such pass or the arrays cannot take it
        (then ``step`` calls ``_update`` for each)."""
        return False

    def _with_l2_penalty(self, param, grad):
        """``grad + weight_decay * param`` (torch's coupled weight decay), as a new array so the
        layer's gradient buffer is left untouched; ``grad`` itself when there is no decay."""
        if self.weight_decay == 0.0:
            return grad
        xp = array_module_of(param)
        penalised = xp.multiply(param, self.weight_decay)
        penalised += grad
        return penalised

    def state_dict(self):
        """Copies of lr, step count and every per-parameter buffer."""
        return {
            "lr": self.lr,
            "step_count": self.step_count,
            "state": {name: {key: buf.copy() for key, buf in buffers.items()}
                      for name, buffers in self.state.items()},
        }

    def load_state_dict(self, state):
        """Restore what :meth:`state_dict` returned, copying into the existing buffers."""
        saved = state["state"]
        if saved.keys() != self.state.keys():
            raise KeyError(f"state_dict parameters {sorted(saved)} do not match {sorted(self.state)}")
        for name, buffers in self.state.items():
            if saved[name].keys() != buffers.keys():
                raise KeyError(f"state_dict buffers for {name!r} are {sorted(saved[name])}, "
                               f"expected {sorted(buffers)}")
            for key, buf in buffers.items():
                # Saved buffers may be host copies (a checkpoint): put them on buf's device.
                value = to_device(saved[name][key], device_of(buf))
                if value.shape != buf.shape:
                    raise ValueError(f"state_dict buffer {name!r}/{key!r} must have shape {buf.shape}, "
                                     f"got {value.shape}")
                buf[...] = value
        self.lr = state["lr"]
        self.step_count = _check_count(state["step_count"], "step_count", 0)
        return self


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, like ``torch.optim.SGD``."""

    def __init__(self, params, grads, lr, momentum=0.0, nesterov=False, weight_decay=0.0, dampening=0.0,
                 frozen=()):
        self.momentum = _check_real(momentum, "momentum")
        self.dampening = _check_real(dampening, "dampening", high=1.0)
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum == 0.0 or self.dampening != 0.0):
            raise ValueError("nesterov=True requires momentum > 0 and dampening = 0")
        super().__init__(params, grads, lr, weight_decay, frozen)

    def _new_state(self, param):
        xp = array_module_of(param)
        return {"momentum_buffer": xp.zeros_like(param)} if self.momentum else {}

    def _update(self, param, grad, state, work):
        xp = array_module_of(param)
        grad = self._with_l2_penalty(param, grad)
        if self.momentum:
            buf = state["momentum_buffer"]
            if self.step_count == 1:
                buf[...] = grad  # torch starts the buffer at the first gradient, undamped
            else:
                buf *= self.momentum
                xp.multiply(grad, 1.0 - self.dampening, out=work)
                buf += work
            if self.nesterov:
                xp.multiply(buf, self.momentum, out=work)
                work += grad
                grad = work
            else:
                grad = buf
        xp.multiply(grad, self.lr, out=work)
        param -= work


def _fusable(param, grad, *buffers):
    """Whether a compiled update may take these arrays: host ndarrays (not subclasses) of
    one float dtype and size, C-contiguous (their flat views are the arrays themselves),
    ``param`` and ``buffers`` writeable, and ``grad`` sharing no memory with ``param`` (the
    loop reads each element once and writes it once: aliasing would change what NumPy
    computes). The buffers are the optimizer's own arrays, never shared with anything.
    """
    arrays = (param, grad) + buffers
    for a in arrays:
        if type(a) is not np.ndarray or not a.flags.c_contiguous or a.dtype != param.dtype \
                or a.size != param.size:
            return False
    if not (param.flags.writeable and all(b.flags.writeable for b in buffers)):
        return False
    return not _shares_memory(param, grad)


class Adam(Optimizer):
    """Adam with bias correction; ``weight_decay`` is an L2 term added to the gradient, like
    ``torch.optim.Adam`` (see :class:`AdamW` for decoupled decay).

    Host (NumPy) parameters take one compiled pass over all of them (fastrnn/_cpu/update.pyx,
    adam_update_arrays) on fastrnn's threads: the same operations in the same order as the
    NumPy code below, so the same bits. Where that pass cannot take the arrays (one
    overlaps another, mixed dtypes) each parameter takes its own compiled pass, and CuPy
    parameters and unusual layouts the NumPy code.
    """

    def __init__(self, params, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 frozen=()):
        if len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = (_check_real(betas[0], "betas[0]", high=1.0, include_high=False),
                      _check_real(betas[1], "betas[1]", high=1.0, include_high=False))
        self.eps = _check_real(eps, "eps")
        super().__init__(params, grads, lr, weight_decay, frozen)

    def _new_state(self, param):
        xp = array_module_of(param)
        return {"exp_avg": xp.zeros_like(param), "exp_avg_sq": xp.zeros_like(param)}

    def _update(self, param, grad, state, work):
        if not self._fused_step(param, grad, state, l2_decay=self.weight_decay):
            self._adam_step(param, self._with_l2_penalty(param, grad), state, work)

    def _update_all(self, names):
        return self._fused_step_all(names, l2_decay=self.weight_decay)

    def _scalars(self, l2_decay, param_scale):
        """The compiled steps' scalar arguments: those NumPy's path uses (rounded to the
        arrays' precision by the call)."""
        beta1, beta2 = self.betas
        return (beta1, 1.0 - beta1, beta2, 1.0 - beta2,
                math.sqrt(1.0 - beta2 ** self.step_count), self.eps,
                self.lr / (1.0 - beta1 ** self.step_count), l2_decay != 0.0, l2_decay,
                param_scale, threads.get_num_threads())

    def _fused_step_all(self, names, l2_decay=0.0, param_scale=1.0):
        """The compiled step of every parameter of ``names`` in one pass (with ``param *=
        param_scale`` first, for AdamW); False, doing nothing, when the arrays cannot take
        it (update.pyx checks them as :func:`_fusable` does, and that no array it writes
        overlaps another)."""
        states = [self.state[name] for name in names]
        return _compiled.adam_update_arrays(
            [self.params[name] for name in names], [self.grads[name] for name in names],
            [state["exp_avg"] for state in states], [state["exp_avg_sq"] for state in states],
            *self._scalars(l2_decay, param_scale))

    def _fused_step(self, param, grad, state, l2_decay=0.0, param_scale=1.0):
        """The compiled step of one parameter (with ``param *= param_scale`` first, for
        AdamW); False, doing nothing, when the arrays cannot take it (see :func:`_fusable`)."""
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        if not _fusable(param, grad, exp_avg, exp_avg_sq):
            return False
        _compiled.adam_update(param.reshape(-1), grad.reshape(-1), exp_avg.reshape(-1),
                              exp_avg_sq.reshape(-1), *self._scalars(l2_decay, param_scale))
        return True

    def _adam_step(self, param, grad, state, work):
        xp = array_module_of(param)
        beta1, beta2 = self.betas
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        _ema_(exp_avg, grad, beta1, work)
        xp.square(grad, out=work)
        _ema_(exp_avg_sq, work, beta2, work)
        bias_correction1 = 1.0 - beta1 ** self.step_count
        bias_correction2 = 1.0 - beta2 ** self.step_count
        # param -= lr / bc1 * exp_avg / (sqrt(exp_avg_sq) / sqrt(bc2) + eps), as torch orders it
        xp.sqrt(exp_avg_sq, out=work)
        work /= math.sqrt(bias_correction2)
        work += self.eps
        xp.divide(exp_avg, work, out=work)
        work *= self.lr / bias_correction1
        param -= work


class AdamW(Adam):
    """Adam with decoupled weight decay (``param *= 1 - lr * weight_decay`` before the Adam
    step, gradient untouched), like ``torch.optim.AdamW``."""

    def __init__(self, params, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 frozen=()):
        super().__init__(params, grads, lr, betas, eps, weight_decay, frozen)

    def _update(self, param, grad, state, work):
        if not self._fused_step(param, grad, state, param_scale=1.0 - self.lr * self.weight_decay):
            param *= 1.0 - self.lr * self.weight_decay
            self._adam_step(param, grad, state, work)

    def _update_all(self, names):
        return self._fused_step_all(names, param_scale=1.0 - self.lr * self.weight_decay)


class Adagrad(Optimizer):
    """Adagrad (per-element lr scaled by the root of the summed squared gradients), like
    ``torch.optim.Adagrad`` without lr decay."""

    def __init__(self, params, grads, lr=1e-2, eps=1e-10, initial_accumulator_value=0.0, weight_decay=0.0,
                 frozen=()):
        self.eps = _check_real(eps, "eps")
        self.initial_accumulator_value = _check_real(initial_accumulator_value, "initial_accumulator_value")
        super().__init__(params, grads, lr, weight_decay, frozen)

    def _new_state(self, param):
        xp = array_module_of(param)
        return {"sum": xp.full_like(param, self.initial_accumulator_value)}

    def _update(self, param, grad, state, work):
        xp = array_module_of(param)
        grad = self._with_l2_penalty(param, grad)
        xp.square(grad, out=work)
        state["sum"] += work
        xp.sqrt(state["sum"], out=work)
        work += self.eps
        xp.divide(grad, work, out=work)
        work *= self.lr
        param -= work


class Adadelta(Optimizer):
    """Adadelta (step sizes from running averages of squared gradients and squared updates),
    like ``torch.optim.Adadelta``."""

    def __init__(self, params, grads, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, frozen=()):
        self.rho = _check_real(rho, "rho", high=1.0)
        self.eps = _check_real(eps, "eps")
        super().__init__(params, grads, lr, weight_decay, frozen)

    def _new_state(self, param):
        xp = array_module_of(param)
        return {"square_avg": xp.zeros_like(param), "acc_delta": xp.zeros_like(param)}

    def _update(self, param, grad, state, work):
        xp = array_module_of(param)
        grad = self._with_l2_penalty(param, grad)
        square_avg, acc_delta = state["square_avg"], state["acc_delta"]
        xp.square(grad, out=work)
        _ema_(square_avg, work, self.rho, work)
        # delta = sqrt(acc_delta + eps) / sqrt(square_avg + eps) * grad; one extra buffer
        # (std, reused below for delta**2) because delta and std are both alive at once.
        std = xp.add(square_avg, self.eps)
        xp.sqrt(std, out=std)
        xp.add(acc_delta, self.eps, out=work)
        xp.sqrt(work, out=work)
        work /= std
        work *= grad
        xp.square(work, out=std)
        _ema_(acc_delta, std, self.rho, std)
        work *= self.lr
        param -= work


class RMSprop(Optimizer):
    """RMSprop with optional momentum and centring, like ``torch.optim.RMSprop``."""

    def __init__(self, params, grads, lr=1e-2, alpha=0.99, eps=1e-8, momentum=0.0, centered=False,
                 weight_decay=0.0, frozen=()):
        self.alpha = _check_real(alpha, "alpha", high=1.0)
        self.eps = _check_real(eps, "eps")
        self.momentum = _check_real(momentum, "momentum")
        self.centered = bool(centered)
        super().__init__(params, grads, lr, weight_decay, frozen)

    def _new_state(self, param):
        xp = array_module_of(param)
        state = {"square_avg": xp.zeros_like(param)}
        if self.momentum:
            state["momentum_buffer"] = xp.zeros_like(param)
        if self.centered:
            state["grad_avg"] = xp.zeros_like(param)
        return state

    def _update(self, param, grad, state, work):
        xp = array_module_of(param)
        grad = self._with_l2_penalty(param, grad)
        square_avg = state["square_avg"]
        xp.square(grad, out=work)
        _ema_(square_avg, work, self.alpha, work)
        if self.centered:
            # Variance instead of raw second moment: square_avg - grad_avg**2.
            grad_avg = state["grad_avg"]
            _ema_(grad_avg, grad, self.alpha, work)
            xp.square(grad_avg, out=work)
            xp.subtract(square_avg, work, out=work)
            xp.sqrt(work, out=work)
        else:
            xp.sqrt(square_avg, out=work)
        work += self.eps
        xp.divide(grad, work, out=work)
        if self.momentum:
            buf = state["momentum_buffer"]
            buf *= self.momentum
            buf += work
            xp.multiply(buf, self.lr, out=work)
        else:
            work *= self.lr
        param -= work


def clip_grad_norm(grads, max_norm):
    """Scale gradients in place so their global L2 norm is at most ``max_norm``.

    grads: dict of arrays or iterable of arrays (an array listed twice, e.g. a tied weight's
    gradient, counts once). Like ``torch.nn.utils.clip_grad_norm_``, the scale is
    ``max_norm / (norm + 1e-6)`` and applied only when below 1. Returns the norm before
    clipping, as a float. NumPy gradients' squares are summed in float64, in an order that
    does not depend on the thread count; CuPy gradients are summed and scaled on the device,
    each array in its own precision.
    """
    max_norm = _check_real(max_norm, "max_norm")
    if max_norm == 0.0:
        raise ValueError("max_norm must be > 0, got 0.0")
    arrays = list(grads.values()) if isinstance(grads, dict) else list(grads)
    distinct = list({id(grad): grad for grad in arrays}.values())
    on_device = bool(distinct) and is_device_array(distinct[0])
    for grad in distinct:
        if not _is_array(grad):
            raise TypeError(f"grads must hold numpy arrays (or CuPy arrays; scaled in place), "
                            f"got {type(grad).__name__}")
        if is_device_array(grad) != on_device:
            raise TypeError("grads must all be on the same device")
        as_float_dtype(grad.dtype, "grads' dtype")
    if on_device:
        # Sum the squares on the device, in float64 and in the CPU path's order, and read
        # the total back once: one host sync per call instead of one per array.
        xp = array_module_of(distinct[0])
        squares = sum(xp.vdot(grad, grad).astype(np.float64) for grad in distinct)
        total_norm = math.sqrt(float(squares))
    else:
        # One compiled pass on fastrnn's threads, summing in float64 in an order that does
        # not depend on the thread count (update.pyx); NumPy's dot products for the arrays
        # it cannot take.
        squares = _compiled.sum_of_squares(distinct, threads.get_num_threads())
        if squares is None:
            squares = sum(float(np.vdot(grad, grad)) for grad in distinct)
        total_norm = math.sqrt(squares)
    scale = max_norm / (total_norm + 1e-6)
    if scale < 1.0 and (on_device or not _compiled.scale_arrays(distinct, scale,
                                                                threads.get_num_threads())):
        for grad in distinct:
            grad *= scale
    return total_norm


CLIP_MODES = ("norm", "param_norm", "value")
"""The Trainer's clipping modes: :func:`clip_grad_norm` over all gradients, over each
parameter's gradient on its own, or :func:`clip_grad_value`."""


def clip_grad_value(grads, clip_value):
    """Clamp every gradient element to ``[-clip_value, clip_value]`` in place, like
    ``torch.nn.utils.clip_grad_value_``. grads: dict or iterable of arrays (NumPy or CuPy)."""
    clip_value = _check_real(clip_value, "clip_value")
    arrays = list(grads.values()) if isinstance(grads, dict) else list(grads)
    for grad in {id(grad): grad for grad in arrays}.values():
        if not _is_array(grad):
            raise TypeError(f"grads must hold numpy (or CuPy) arrays, got {type(grad).__name__}")
        array_module_of(grad).clip(grad, -clip_value, clip_value, out=grad)


class _Schedule:
    """A learning-rate schedule driving ``optimizer.lr``; its state is the attributes named in
    ``_state_keys``."""

    _state_keys = ()

    def __init__(self, optimizer):
        self.optimizer = optimizer

    def state_dict(self):
        return {key: getattr(self, key) for key in self._state_keys}

    def load_state_dict(self, state):
        for key in self._state_keys:
            setattr(self, key, state[key])
        return self


class StepLR(_Schedule):
    """Multiply ``optimizer.lr`` by ``gamma`` every ``step_size`` epochs; call :meth:`step` once
    at the end of each epoch (like ``torch.optim.lr_scheduler.StepLR``)."""

    _state_keys = ("epoch",)

    def __init__(self, optimizer, step_size, gamma=0.1):
        super().__init__(optimizer)
        self.step_size = _check_count(step_size, "step_size", 1)
        self.gamma = _check_real(gamma, "gamma")
        self.epoch = 0

    def step(self):
        self.epoch += 1
        if self.epoch % self.step_size == 0:
            self.optimizer.lr *= self.gamma


class ReduceOnPlateau(_Schedule):
    """Multiply ``optimizer.lr`` by ``factor`` (floored at ``min_lr``) once the validation loss
    has failed to improve on its best for more than ``patience`` consecutive calls (like
    ``torch.optim.lr_scheduler.ReduceLROnPlateau`` in "min" mode). With the default
    ``factor=0.5`` it is the classic word-level language-model annealing, :class:`HalveOnPlateau`.
    A NaN loss counts as no improvement."""

    _state_keys = ("best", "bad_epochs")

    def __init__(self, optimizer, factor=0.5, patience=0, min_lr=0.0):
        super().__init__(optimizer)
        self.factor = _check_real(factor, "factor", high=1.0, include_high=False)
        self.patience = _check_count(patience, "patience", 0)
        self.min_lr = _check_real(min_lr, "min_lr")
        self.best = math.inf
        self.bad_epochs = 0

    def step(self, val_loss):
        """Record one validation loss; return True when this call lowered the lr."""
        val_loss = float(val_loss)
        if val_loss < self.best:
            self.best = val_loss
            self.bad_epochs = 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs <= self.patience:
            return False
        self.bad_epochs = 0
        old_lr = self.optimizer.lr
        self.optimizer.lr = max(old_lr * self.factor, self.min_lr)
        return self.optimizer.lr < old_lr


class HalveOnPlateau(ReduceOnPlateau):
    """:class:`ReduceOnPlateau` with its default ``factor=0.5``: halve the lr when the
    validation loss stops improving. The name the Trainer's ``schedule="plateau"`` and earlier
    versions use; ``factor`` is still accepted, but ``ReduceOnPlateau`` says what it does."""


OPTIMIZERS = {"adam": Adam, "adamw": AdamW, "sgd": SGD, "rmsprop": RMSprop, "adagrad": Adagrad,
              "adadelta": Adadelta}
"""The optimizers by the names the Trainer and the ``fastrnn train --optimizer`` option take."""
