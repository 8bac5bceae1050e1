"""The `fastrnn bench` table: fastrnn against PyTorch, timed in the same run as each other
and as the machine's large-GEMM rate. It lives in the source checkout, not in the installed
package: `fastrnn bench` finds it there (see fastrnn/lm/cli.py), or run it directly with
``python benchmarks/fastrnn_bench.py``. It times whichever fastrnn ``import fastrnn`` finds,
and says which on its first line.

    rows = run_kernel_benchmarks(threads=2)
    print(format_table(rows))

or ``fastrnn bench [--quick] [--threads N] [--cases kernels,lm,torch,jax,varlen,gpu]``
(:func:`main`). The same cases drive the pytest-benchmark suite next to this file
(test_cases.py), and the GPU cases (fastrnn_bench_gpu.py) run on this module's timer and table.

A case is a :class:`Case`: a name, a group (fastrnn and torch rows of one case share it), a
factory that prepares inputs and returns the zero-argument callable to time for fastrnn,
the same for torch (None where a case has no torch counterpart), and the GEMM flop count of
one call. New kinds of cases (training steps, generation) only need a function returning
more Cases and an entry in :data:`CASE_SETS`.
"""
import argparse
import contextlib
import gc
import os
import statistics
import sys
import time
import tracemalloc
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

import fastrnn
from fastrnn import functional as F
from fastrnn import threads as _threads
from fastrnn._gpu import GPUUnavailableError   # does not import CuPy
from fastrnn.cells import get_cell, param_names

# (batch, steps, input, hidden)
KERNEL_SIZES = [(32, 64, 128, 256), (64, 100, 512, 512), (256, 50, 256, 256), (1, 100, 512, 512)]
KERNEL_CELLS = ["rnn_tanh", "rnn_relu", "gru", "lstm"]
KERNEL_MODES = ["forward", "forward+backward"]
TORCH_MISSING = "n/a (torch not installed)"


@dataclass(frozen=True)
class Case:
    """One benchmark case. The factories do all setup (inputs, weights, modules) and return
    the callable to time; they are called once per run, outside the timed region."""
    name: str
    group: str
    make_fastrnn: Callable[[], Callable[[], object]]
    make_torch: Optional[Callable[[], Callable[[], object]]]
    flops: float
    params: dict = field(default_factory=dict)
    # Where the case runs: "cpu", or "cuda" (its callables wait for the GPU before returning,
    # and its GEMM share is against the GPU's GEMM rate).
    device: str = "cpu"
    # Untimed calls before timing (a GPU case's first calls compile kernels and fill pools).
    warmup: int = 1
    # Peak memory is measured on the host (tracemalloc, torch's CPU profiler): cpu cases only.
    host_memory: bool = True
    # What the "torch" column times: PyTorch, or another library the case names (then the
    # case set is empty when that library is missing, and the table says what it was).
    reference: str = "torch"


class CaseUnavailable(Exception):
    """Raised by a case factory that cannot run here; its message is the table's note
    (e.g. "n/a (torch without CUDA)")."""


def torch_available():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# ---- kernel cases ---------------------------------------------------------------------------

def kernel_flops(cell, mode, B, T, I, H):
    """GEMM flops of one call: forward 2*T*B*G*H*(I+H) (input projection and recurrence);
    backward twice that (dx and dW_ih, dh and dW_hh)."""
    fwd = 2.0 * T * B * get_cell(cell).gates * H * (I + H)
    return fwd if mode == "forward" else 3.0 * fwd


def _kernel_inputs(cell, B, T, I, H, dtype, seed=0):
    """Inputs, weights (PyTorch's default init range) and an output gradient, as numpy."""
    rng = np.random.default_rng(seed)
    GH = get_cell(cell).gates * H
    bound = 1.0 / np.sqrt(H)
    weights = [rng.uniform(-bound, bound, shape).astype(dtype)
               for shape in ((GH, I), (GH, H), (GH,), (GH,))]
    x = rng.standard_normal((T, B, I)).astype(dtype)
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    return x, weights, dy


def _fastrnn_kernel(cell, mode, B, T, I, H, dtype):
    def factory():
        x, (w_ih, w_hh, b_ih, b_hh), dy = _kernel_inputs(cell, B, T, I, H, dtype)
        if mode == "forward":
            return lambda: F.recurrent_forward(cell, x, w_ih, w_hh, b_ih, b_hh)

        def step():
            _, _, ws = F.recurrent_forward(cell, x, w_ih, w_hh, b_ih, b_hh)
            return F.recurrent_backward(ws, dy)
        return step
    return factory


def _torch_layer(cell, I, H, weights, dtype):
    """A one-layer torch.nn.RNN/GRU/LSTM of ``dtype`` holding ``weights`` (w_ih, w_hh,
    b_ih, b_hh)."""
    import torch
    tdtype = torch.float32 if np.dtype(dtype) == np.float32 else torch.float64
    if cell.startswith("rnn_"):
        module = torch.nn.RNN(I, H, nonlinearity=cell[4:])
    else:
        module = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell](I, H)
    module = module.to(tdtype)
    with torch.no_grad():
        for p, w in zip((module.weight_ih_l0, module.weight_hh_l0, module.bias_ih_l0,
                         module.bias_hh_l0), weights):
            p.copy_(torch.from_numpy(w))
    return module


def _torch_kernel(cell, mode, B, T, I, H, dtype):
    def factory():
        import torch
        x, weights, dy = _kernel_inputs(cell, B, T, I, H, dtype)
        module = _torch_layer(cell, I, H, weights, dtype)
        # x requires grad in both modes: fastrnn's forward always records what backward
        # needs, so torch's forward is timed as a training forward too, and backward
        # computes dx as fastrnn's does.
        xt = torch.from_numpy(x).requires_grad_(True)
        dyt = torch.from_numpy(dy)
        if mode == "forward":
            return lambda: module(xt)

        def step():
            module.zero_grad(set_to_none=True)
            xt.grad = None
            y, _ = module(xt)
            y.backward(dyt)
        return step
    return factory


def kernel_cases(cells=None, sizes=None, modes=None, dtype=np.float32):
    """The kernel cases: every cell x size x mode."""
    cases = []
    for cell in cells or KERNEL_CELLS:
        get_cell(cell)
        for (B, T, I, H) in sizes or KERNEL_SIZES:
            for mode in modes or KERNEL_MODES:
                group = f"{cell}-{mode}-B{B}T{T}I{I}H{H}"
                cases.append(Case(
                    name=group, group=group,
                    make_fastrnn=_fastrnn_kernel(cell, mode, B, T, I, H, dtype),
                    make_torch=_torch_kernel(cell, mode, B, T, I, H, dtype),
                    flops=kernel_flops(cell, mode, B, T, I, H),
                    params=dict(kind="kernel", cell=cell, mode=mode, B=B, T=T, I=I, H=H,
                                dtype=np.dtype(dtype).name)))
    return cases


# ---- language-model cases -------------------------------------------------------------------

# name: (vocab, embed, hidden, layers, batch, steps). "small" is fast.ai's lesson-6 character
# model (Nietzsche: 86 characters, embedding 42, one LSTM of 256, batches of 64 x 8), where a
# step is short enough that per-call overheads show.
LM_MODELS = {"char": (65, 64, 256, 2, 32, 64), "small": (86, 42, 256, 1, 64, 8),
             "word": (10000, 200, 200, 2, 20, 35)}
GENERATE_TOKENS = 500


def _lm_flops(V, E, H, L, tokens):
    """GEMM flops of forward+backward of embedding -> L-layer LSTM -> linear over ``tokens``."""
    recurrent = sum(kernel_flops("lstm", "forward+backward", tokens, 1, E if l == 0 else H, H)
                    for l in range(L))
    return recurrent + 3 * 2.0 * tokens * H * V


def _lm_batch(V, B, T, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))


def lm_trainer(V, E, H, L, B, T):
    """``(model, trainer, batch)`` of a training-step case: ``trainer.train_step(batch)`` is
    the Trainer's own step (forward, backward, clipping at 5, Adam at lr 2e-3)."""
    from fastrnn.lm.model import LanguageModel
    from fastrnn.lm.train import Trainer
    model = LanguageModel(V, E, H, L, seed=0)
    x, y = _lm_batch(V, B, T)
    trainer = Trainer(model, np.resize(x, B * (T + 1)), batch_size=B, seq_len=T,
                      optimizer="adam", lr=2e-3, clip=5.0, max_steps=1, progress=False)
    return model, trainer, (x, y)


def _fastrnn_train_step(V, E, H, L, B, T):
    def factory():
        _, trainer, batch = lm_trainer(V, E, H, L, B, T)
        return lambda: trainer.train_step(batch)
    return factory


def print_spreads(title, times, unit="ms"):
    """Print ``title`` and, for each ``{label: [seconds, ...]}`` of ``times``, the best, p10
    and median in ``unit`` ("ms" or "µs")."""
    scale = {"ms": 1e3, "µs": 1e6}[unit]
    print(f"{title} ({unit})")
    print(f"{'':16s} {'best':>9s} {'p10':>9s} {'median':>9s}")
    for label, seconds in times.items():
        values = np.array(seconds) * scale
        print(f"{label:16s} {values.min():9.3f} {np.percentile(values, 10):9.3f} "
              f"{np.median(values):9.3f}")


def _torch_lm(V, E, H, L):
    import torch

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(V, E)
            self.rnn = torch.nn.LSTM(E, H, L)
            self.output = torch.nn.Linear(H, V)

        def forward(self, x, state=None):
            y, state = self.rnn(self.embedding(x), state)
            return self.output(y), state
    return Model()


def _torch_train_step(V, E, H, L, B, T, convert=False):
    """One PyTorch training step; ``convert``: with the model's LSTM converted to
    fastrnn.torch (same weights)."""
    def factory():
        import torch
        model = _torch_lm(V, E, H, L)
        if convert:
            import fastrnn.torch
            fastrnn.torch.convert(model)
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        x, y = (torch.from_numpy(a) for a in _lm_batch(V, B, T))

        def step():
            opt.zero_grad(set_to_none=True)
            logits, _ = model(x)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
        return step
    return factory


def _fastrnn_generate(V, E, H, L, B, weights="float32"):
    def factory():
        from fastrnn.lm.model import LanguageModel
        model = LanguageModel(V, E, H, L, seed=0)
        prime = np.array([1])
        return lambda: model.generate_ids(prime, GENERATE_TOKENS, num_samples=B, top_k=0, seed=0,
                                          weights=weights)
    return factory


def _torch_generate(V, E, H, L, B):
    """The usual PyTorch sampling loop: one step of the model per token."""
    def factory():
        import torch
        model = _torch_lm(V, E, H, L).eval()
        generator = torch.Generator().manual_seed(0)

        def run():
            with torch.no_grad():
                token = torch.ones((1, B), dtype=torch.long)
                state = None
                for _ in range(GENERATE_TOKENS):
                    logits, state = model(token, state)
                    probs = torch.softmax(logits[0], dim=-1)
                    token = torch.multinomial(probs, 1, generator=generator).T
        return run
    return factory


def lm_step_parser(description, model="char", steps=30):
    """The command line of the scripts that time training steps of LM_MODELS (step_phases.py,
    and through spreads_main one_pass_ab.py and python_overhead.py): --model, --threads and
    --steps."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", choices=sorted(LM_MODELS), default=model)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=steps)
    return parser


def spreads_main(description, measure, argv=None, steps=1000, per="steps", unit="ms"):
    """The main of a script that times training steps into ``{label: [seconds, ...]}``:
    lm_step_parser's command line (default model small), ``measure(model, threads, steps)``,
    and its print_spreads table, titled with the settings and ``per``."""
    args = lm_step_parser(description, model="small", steps=steps).parse_args(argv)
    times = measure(args.model, args.threads, args.steps)
    print_spreads(f"{args.model} model, {args.threads} thread(s), {args.steps} {per}", times,
                  unit)


def lm_cases():
    """One training step of each of LM_MODELS (Adam, clipping at 5), and generation
    of GENERATE_TOKENS tokens from the character model at batch 1 and 64."""
    cases = []
    for name, (V, E, H, L, B, T) in LM_MODELS.items():
        group = f"train-step-{name}-V{V}E{E}H{H}L{L}-B{B}T{T}"
        cases.append(Case(name=group, group=group,
                          make_fastrnn=_fastrnn_train_step(V, E, H, L, B, T),
                          make_torch=_torch_train_step(V, E, H, L, B, T),
                          flops=_lm_flops(V, E, H, L, B * T),
                          params=dict(kind="train-step", model=name, tokens=B * T)))
    V, E, H, L, _, _ = LM_MODELS["char"]
    for B in (1, 64):
        group = f"generate-char-{GENERATE_TOKENS}-tokens-B{B}"
        forward_flops = _lm_flops(V, E, H, L, B * GENERATE_TOKENS) / 3
        cases.append(Case(name=group, group=group, make_fastrnn=_fastrnn_generate(V, E, H, L, B),
                          make_torch=_torch_generate(V, E, H, L, B), flops=forward_flops,
                          params=dict(kind="generate", model="char", tokens=B * GENERATE_TOKENS)))
    # The opt-in bfloat16 weights (not exact: README "Results" gives their accuracy).
    group = f"generate-char-{GENERATE_TOKENS}-tokens-B1-bf16-weights"
    cases.append(Case(name=group, group=group,
                      make_fastrnn=_fastrnn_generate(V, E, H, L, 1, weights="bfloat16"),
                      make_torch=_torch_generate(V, E, H, L, 1),
                      flops=_lm_flops(V, E, H, L, GENERATE_TOKENS) / 3,
                      params=dict(kind="generate", model="char", tokens=GENERATE_TOKENS)))
    return cases


# ---- PyTorch bridge cases (fastrnn.torch inside PyTorch's autograd) -------------------------

BRIDGE_SIZES = [(32, 200, 128, 256)]
# (cell, packed): packed variable-length LSTM and GRU, and the padded GRU (PyTorch's GRU
# never uses oneDNN on the CPU)
BRIDGE_RUNS = [("lstm", True), ("gru", True), ("gru", False)]


def _bridge_batch(B, T, I, dtype, seed=0):
    """A float batch (T, B, I), unsorted lengths uniform in [T/4, T] and an output gradient
    seed, as torch tensors."""
    import torch
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_normal((T, B, I)).astype(dtype))
    lengths = torch.from_numpy(rng.integers(max(1, T // 4), T + 1, size=B))
    return x, lengths


def _bridge_step(cell, B, T, I, H, dtype, convert, packed):
    """Forward+backward through autograd of a torch.nn recurrent module (converted to
    fastrnn.torch when ``convert``) on an unsorted PackedSequence (``packed``) or the padded
    batch, timed from packing to the parameter gradients."""
    def factory():
        import torch
        from torch.nn.utils.rnn import pack_padded_sequence
        x, lengths = _bridge_batch(B, T, I, dtype)
        torch.manual_seed(0)
        tdtype = torch.float32 if np.dtype(dtype) == np.float32 else torch.float64
        module = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell](I, H, dtype=tdtype)
        if convert:
            import fastrnn.torch
            module = fastrnn.torch.convert(module)
        xt = x.requires_grad_(True)

        def step():
            module.zero_grad(set_to_none=True)
            xt.grad = None
            if packed:
                out, _ = module(pack_padded_sequence(xt, lengths, enforce_sorted=False))
                out.data.sum().backward()
            else:
                out, _ = module(xt)
                out.sum().backward()
        return step
    return factory


def torch_bridge_cases(runs=None, sizes=None, dtype=np.float32):
    """Forward+backward through PyTorch's autograd, packed variable-length or padded:
    fastrnn.torch's module (the "fastrnn" column) against the same torch.nn module (the
    "torch" column). Empty without torch."""
    if not torch_available():
        return []
    cases = []
    for cell, packed in runs or BRIDGE_RUNS:
        for (B, T, I, H) in sizes or BRIDGE_SIZES:
            layout = "packed" if packed else "padded"
            group = f"torch-bridge-{layout}-{cell}-B{B}T{T}I{I}H{H}"
            flops = kernel_flops(cell, "forward+backward", B, T, I, H)
            if packed:   # about 5/8 of the steps are real ones (lengths uniform in [T/4, T])
                flops *= 5 / 8
            cases.append(Case(name=group, group=group,
                              make_fastrnn=_bridge_step(cell, B, T, I, H, dtype, True, packed),
                              make_torch=_bridge_step(cell, B, T, I, H, dtype, False, packed),
                              flops=flops,
                              params=dict(kind="torch-bridge", cell=cell, layout=layout, B=B,
                                          T=T, I=I, H=H, dtype=np.dtype(dtype).name),
                              # both columns allocate through torch and NumPy: tracemalloc
                              # would see only part of fastrnn's, so no memory column
                              host_memory=False))
    V, E, H, L, B, T = LM_MODELS["char"]
    group = f"torch-bridge-train-step-char-V{V}E{E}H{H}L{L}-B{B}T{T}"
    cases.append(Case(name=group, group=group,
                      make_fastrnn=_torch_train_step(V, E, H, L, B, T, convert=True),
                      make_torch=_torch_train_step(V, E, H, L, B, T),
                      flops=_lm_flops(V, E, H, L, B * T),
                      params=dict(kind="torch-bridge", model="char", tokens=B * T),
                      host_memory=False))
    return cases


# ---- JAX bridge cases (fastrnn.jax inside jax.jit(jax.grad)) --------------------------------

JAX_BRIDGE_SIZES = [(32, 64, 128, 256)]
JAX_REFERENCE = "pure JAX (lax.scan)"


def jax_available():
    try:
        import jax  # noqa: F401
    except ImportError:
        return False
    return True


def _jax_lstm_scan(params, x):
    """A one-layer LSTM in pure JAX (PyTorch's gate order): the input projection of all
    steps as one product, then ``lax.scan`` over the steps. Returns y (T, B, H)."""
    import jax
    import jax.numpy as jnp
    gates_x = x @ params["weight_ih_l0"].T + params["bias_ih_l0"] + params["bias_hh_l0"]
    w_hh_t = params["weight_hh_l0"].T
    H = w_hh_t.shape[0]

    def step(carry, gx):
        h, c = carry
        i, f, g, o = jnp.split(gx + h @ w_hh_t, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    zeros = jnp.zeros((x.shape[1], H), x.dtype)
    _, y = jax.lax.scan(step, (zeros, zeros), gates_x)
    return y


def _jax_grad_step(B, T, I, H, dtype, use_fastrnn):
    """``jax.jit(jax.grad(loss))`` with respect to the weights and x of a one-layer LSTM,
    loss = sum(y * dy): fastrnn.jax.lstm (``use_fastrnn``) or :func:`_jax_lstm_scan`, the
    same weights and inputs; timed until the gradients are ready."""
    def factory():
        import jax
        import jax.numpy as jnp
        x, weights, dy = _kernel_inputs("lstm", B, T, I, H, dtype)
        params = {k: jnp.asarray(w) for k, w in zip(param_names(0, False), weights)}
        x, dy = jnp.asarray(x), jnp.asarray(dy)
        if use_fastrnn:
            import fastrnn.jax

            def lstm(params, x):
                return fastrnn.jax.lstm(params, x)[0]
        else:
            lstm = _jax_lstm_scan
        grad = jax.jit(jax.grad(lambda p, x: (lstm(p, x) * dy).sum(), argnums=(0, 1)))
        return lambda: jax.block_until_ready(grad(params, x))
    return factory


def jax_bridge_cases(sizes=None, dtype=np.float32):
    """LSTM forward+backward as ``jax.jit(jax.grad(...))``: fastrnn.jax (the "fastrnn"
    column) against the same LSTM in pure JAX with ``lax.scan`` (the reference column).
    Empty without JAX. XLA sizes its CPU thread pool once, from the cores the process may
    use (it has no thread setting): run under ``taskset -c 0,1`` to compare on 2 cores."""
    if not jax_available():
        return []
    cases = []
    for (B, T, I, H) in sizes or JAX_BRIDGE_SIZES:
        group = f"jax-bridge-lstm-B{B}T{T}I{I}H{H}"
        cases.append(Case(name=group, group=group,
                          make_fastrnn=_jax_grad_step(B, T, I, H, dtype, True),
                          make_torch=_jax_grad_step(B, T, I, H, dtype, False),
                          flops=kernel_flops("lstm", "forward+backward", B, T, I, H),
                          params=dict(kind="jax-bridge", cell="lstm", B=B, T=T, I=I, H=H,
                                      dtype=np.dtype(dtype).name),
                          # XLA's buffers are invisible to tracemalloc
                          host_memory=False, reference=JAX_REFERENCE))
    return cases


# ---- variable-length batches (lengths U[T/4, T]) against the same batch padded -------------

VARLEN_SIZES = [(32, 200, 128, 256)]
VARLEN_CELLS = ["lstm", "gru"]


def varlen_lengths(B, T, seed=0):
    """Unsorted lengths uniform in [T/4, T], as int64 (the varlen and torch-bridge batches)."""
    return np.random.default_rng(seed).integers(max(1, T // 4), T + 1, size=B).astype(np.int64)


def _fastrnn_varlen(cell, B, T, I, H, dtype, with_lengths):
    def factory():
        x, (w_ih, w_hh, b_ih, b_hh), dy = _kernel_inputs(cell, B, T, I, H, dtype)
        lengths = varlen_lengths(B, T) if with_lengths else None

        def step():
            _, _, ws = F.recurrent_forward(cell, x, w_ih, w_hh, b_ih, b_hh, lengths=lengths)
            return F.recurrent_backward(ws, dy)
        return step
    return factory


def _torch_varlen(cell, B, T, I, H, dtype, with_lengths):
    """torch.nn's module on the padded batch, or packed from it (pack_padded_sequence with
    enforce_sorted=False) and padded back, so that both libraries take and return the same
    padded arrays."""
    def factory():
        import torch
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
        x, weights, dy = _kernel_inputs(cell, B, T, I, H, dtype)
        module = _torch_layer(cell, I, H, weights, dtype)
        xt = torch.from_numpy(x).requires_grad_(True)
        dyt = torch.from_numpy(dy)
        lengths = torch.from_numpy(varlen_lengths(B, T))

        def step():
            module.zero_grad(set_to_none=True)
            xt.grad = None
            if with_lengths:
                out, _ = module(pack_padded_sequence(xt, lengths, enforce_sorted=False))
                y, _ = pad_packed_sequence(out, total_length=T)
            else:
                y, _ = module(xt)
            y.backward(dyt)
        return step
    return factory


def varlen_cases(cells=None, sizes=None, dtype=np.float32):
    """One recurrent layer forward+backward on a batch with lengths uniform in [T/4, T]
    (fastrnn with lengths against PyTorch packed) and on the same batch padded (fastrnn and
    PyTorch without lengths): :func:`varlen_summary` puts each library's time with lengths
    next to its padded time and the share of real tokens."""
    cases = []
    for cell in cells or VARLEN_CELLS:
        for (B, T, I, H) in sizes or VARLEN_SIZES:
            real = float(varlen_lengths(B, T).sum()) / (T * B)
            for layout in ("lengths", "padded"):
                with_lengths = layout == "lengths"
                group = f"varlen-{cell}-{layout}-B{B}T{T}I{I}H{H}"
                flops = kernel_flops(cell, "forward+backward", B, T, I, H)
                cases.append(Case(
                    name=group, group=group,
                    make_fastrnn=_fastrnn_varlen(cell, B, T, I, H, dtype, with_lengths),
                    make_torch=_torch_varlen(cell, B, T, I, H, dtype, with_lengths),
                    flops=flops * real if with_lengths else flops,
                    params=dict(kind="varlen", cell=cell, layout=layout, B=B, T=T, I=I, H=H,
                                real_share=real, dtype=np.dtype(dtype).name)))
    return cases


def varlen_summary(rows):
    """Lines putting each varlen case's time with lengths over its padded time, against the
    share of real tokens (the ideal ratio; the target is at most 1.15 times it), from the
    medians of the repeats."""
    by_key = {(r["cell"], r["B"], r["T"], r["I"], r["H"], r["layout"]): r
              for r in rows if r.get("kind") == "varlen"}
    lines = []
    for (cell, B, T, I, H, layout), r in by_key.items():
        padded = by_key.get((cell, B, T, I, H, "padded"))
        if layout != "lengths" or padded is None:
            continue
        ratio = r["fastrnn_median_s"] / padded["fastrnn_median_s"]
        text = (f"varlen {cell} B{B}T{T}I{I}H{H}: real tokens {100 * r['real_share']:.1f}%; "
                f"fastrnn lengths/padded {ratio:.3f} ({ratio / r['real_share']:.2f}x the real "
                f"share)")
        if r["torch_median_s"] is not None and padded["torch_median_s"] is not None:
            text += (f"; PyTorch packed/padded "
                     f"{r['torch_median_s'] / padded['torch_median_s']:.3f}; PyTorch packed / "
                     f"fastrnn lengths {r['torch_median_s'] / r['fastrnn_median_s']:.2f}x")
        lines.append(text + " (medians)")
    return lines


def _gpu_cases(cuda_graphs=False):
    import fastrnn_bench_gpu   # next to this file; imported on demand (it needs CuPy)
    return fastrnn_bench_gpu.gpu_cases(cuda_graphs=cuda_graphs)


# Named case sets for --cases; new kinds of cases get an entry here.
CASE_SETS = {"kernels": kernel_cases, "lm": lm_cases, "torch": torch_bridge_cases,
             "jax": jax_bridge_cases, "varlen": varlen_cases,
             "gpu": _gpu_cases,
             "gpu-graphs": lambda: _gpu_cases(cuda_graphs=True)}


# ---- measuring ------------------------------------------------------------------------------

@contextlib.contextmanager
def thread_settings(threads):
    """fastrnn, BLAS and torch all on ``threads`` threads inside the block."""
    from threadpoolctl import threadpool_limits
    saved_fastrnn = _threads._num_threads
    saved_torch = None
    if torch_available():
        import torch
        saved_torch = torch.get_num_threads()
        torch.set_num_threads(threads)
    _threads.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads, user_api="blas"):
            yield
    finally:
        _threads._num_threads = saved_fastrnn
        if saved_torch is not None:
            import torch
            torch.set_num_threads(saved_torch)


def gemm_rate(n=2048, dtype=np.float32, repeat=3, xp=np, sync=None):
    """The large-GEMM rate in GFLOP/s: the best of ``repeat`` n x n x n products through the
    array module ``xp`` (numpy: its BLAS, with whatever thread limit is in force; cupy:
    cuBLAS, with ``sync`` waiting for the GPU inside the timed call)."""
    rng = np.random.default_rng(0)
    a = xp.asarray(rng.standard_normal((n, n)).astype(dtype))
    b = xp.asarray(rng.standard_normal((n, n)).astype(dtype))
    out = xp.empty((n, n), dtype)

    def product():
        xp.dot(a, b, out=out)
        if sync is not None:
            sync()
    product()
    best = min(_timed(product) for _ in range(max(1, repeat)))
    return 2.0 * n ** 3 / best / 1e9


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _fastrnn_peak_bytes(fn):
    """Peak of numpy allocations made during one call (tracemalloc sees numpy's buffers).
    The CPU engine's cache of internal buffers (fastrnn/_engine/buffers.py) is emptied first,
    so that the buffers it would otherwise hand back count in the call's peak."""
    from fastrnn._engine import cpu as _cpu_engine
    _cpu_engine._BUFFERS.clear()
    gc.collect()
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = fn()
        peak = tracemalloc.get_traced_memory()[1] - base
        del result
    finally:
        if not was_tracing:
            tracemalloc.stop()
    return peak


def _torch_peak_bytes(fn):
    """Peak of torch's CPU allocations during one call, from the profiler's memory records
    (allocations and frees in time order); None where the profiler cannot say."""
    try:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            result = fn()
            del result
        records = sorted((e.start_ns(), e.nbytes())
                         for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    except Exception:   # profiler API differences between torch versions
        return None
    running = peak = 0
    for _, nbytes in records:
        running += nbytes
        peak = max(peak, running)
    return peak


def alternating_times(runs, rounds, steps=1):
    """{name: [seconds, ...]}: ``rounds`` rounds over the callables ``runs`` ({name: fn}),
    in their order and reversed in every other round; in each, one untimed call (the other
    ran last) and then ``steps`` timed calls of each. Medians of such interleaved times
    compare two runs of one process on a machine whose load wanders."""
    times = {name: [] for name in runs}
    order = list(runs)
    for r in range(rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            runs[name]()
            for _ in range(steps):
                times[name].append(_timed(runs[name]))
    return times


MAX_ROUNDS = 1000   # run_case's rounds with min_time, at most


def run_case(case, repeat=5, memory=True, with_torch=True, min_time=0.0):
    """Time one case: fastrnn and torch alternately, ``repeat`` times each after
    ``case.warmup`` untimed calls, keeping the best (the least disturbed by other load) and
    the median. With ``min_time`` (seconds), rounds go on until fastrnn's timed calls add up
    to that much too (at most MAX_ROUNDS): on a shared machine the best of five calls of a
    fast case is mostly luck, for either library, and the best of many alternating ones
    comes near each library's undisturbed time (the small model's 8 ms step, busy machine,
    400 rounds: 1.56x best, 1.49x at the 10th percentile, where runs of 5 gave 1.43-1.46x).

    Each timed call follows an untimed call of the same library, as a training loop runs
    one library's steps back to back. Timed right after the other library's call, each ran
    slower (LSTM (32, 64, 128, 256), 2 threads: fastrnn 11.3 -> 11.8 ms, PyTorch 12.9 ->
    13.3 ms), mostly from finding its buffers out of the caches (a 64 MiB copy before each
    call cost fastrnn 0.25-0.3 ms). The libraries still alternate, so that changes in the
    machine's load reach both."""
    fr = case.make_fastrnn()
    tc = None
    torch_note = None
    if with_torch and case.make_torch is not None:
        if case.reference != "torch" or torch_available():
            try:
                tc = case.make_torch()
            except CaseUnavailable as exc:
                torch_note = str(exc)
        else:
            torch_note = TORCH_MISSING
    elif case.make_torch is None:
        torch_note = "n/a"
    else:
        torch_note = "n/a (skipped)"
    for _ in range(max(1, case.warmup)):
        fr()
        if tc is not None:
            tc()
    fr_times, tc_times = [], []
    while len(fr_times) < max(1, repeat) or (sum(fr_times) < min_time
                                             and len(fr_times) < MAX_ROUNDS):
        fr()
        fr_times.append(_timed(fr))
        if tc is not None:
            tc()
            tc_times.append(_timed(tc))
    row = dict(case=case.name, group=case.group, **case.params, device=case.device,
               flops=case.flops, reference=case.reference, rounds=len(fr_times),
               fastrnn_s=min(fr_times), fastrnn_median_s=statistics.median(fr_times),
               torch_s=min(tc_times) if tc_times else None,
               torch_median_s=statistics.median(tc_times) if tc_times else None,
               torch_note=torch_note)
    row["ratio"] = row["torch_s"] / row["fastrnn_s"] if row["torch_s"] else None
    row["gflops"] = case.flops / row["fastrnn_s"] / 1e9
    memory = memory and case.host_memory
    row["fastrnn_peak_bytes"] = _fastrnn_peak_bytes(fr) if memory else None
    row["torch_peak_bytes"] = _torch_peak_bytes(tc) if (memory and tc is not None) else None
    return row


CPU_GEMM_LABEL = "numpy sgemm 2048^3"
OWN_GEMM_LABEL = "fastrnn's own sgemm 2048^3"


def fastrnn_gemm_rate(n=2048, threads=1, repeat=3):
    """The large-GEMM rate in GFLOP/s of the product fastrnn's kernels run
    (fastrnn._cpu.dense.parallel_gemm: its own AVX-512 GEMM where the CPU has AVX-512, else
    BLAS), on ``threads`` threads."""
    from fastrnn._cpu import dense
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    out = np.empty((n, n), np.float32)

    def product():
        dense.parallel_gemm(False, False, a, b, out, np.float32(0), threads)
    product()
    best = min(_timed(product) for _ in range(max(1, repeat)))
    return 2.0 * n ** 3 / best / 1e9


def device_gemm_rate(device, quick=False, threads=1):
    """(GFLOP/s, label): the large-GEMM rate that the cases on ``device`` are compared with.
    On the CPU, the faster of NumPy's BLAS and fastrnn's own GEMM (where an environment
    holds the BLAS back, e.g. OPENBLAS_CORETYPE, the machine's rate is the other one)."""
    if device == "cpu":
        repeat = 1 if quick else 3
        return max((gemm_rate(repeat=repeat), CPU_GEMM_LABEL),
                   (fastrnn_gemm_rate(threads=threads, repeat=repeat), OWN_GEMM_LABEL))
    import fastrnn_bench_gpu
    return fastrnn_bench_gpu.gpu_gemm_rate(repeat=1 if quick else 3)


def run_kernel_benchmarks(cases=None, threads=2, repeat=5, quick=False, memory=True,
                          with_torch=True, progress=None, min_time=0.0):
    """Run benchmark cases (default: all kernel cases) and return one dict per case.

    Each row has: case, group, the case's params, device, flops, rounds (the timed calls of
    each library: ``repeat``, or more to fill ``min_time`` seconds, see run_case), fastrnn_s
    / torch_s (best of them; torch_s None with torch_note saying why), ratio (torch_s /
    fastrnn_s: > 1 means fastrnn is faster), gflops (achieved GEMM GFLOP/s of fastrnn),
    gemm_gflops (the large-GEMM rate of the case's device, named by gemm_label: the best
    measured in the run, before its first case and again, once, before each later one, so
    that a busy minute cannot lower the floor), gemm_share (gflops over it), gemm_floor_s
    (the GEMM floor: flops at that rate, so gemm_share = gemm_floor_s / fastrnn_s),
    torch_gemm_share (gemm_floor_s / torch_s, or None), threads, and fastrnn_peak_bytes /
    torch_peak_bytes (None where not measured). ``quick`` times each case twice and measures
    the GEMM rate once, for smoke tests (without min_time).
    """
    if cases is None:
        cases = kernel_cases()
    if quick:
        repeat, min_time = min(repeat, 2), 0.0
    rows = []
    rates = {}   # device: the best (GFLOP/s, label) measured so far
    with thread_settings(threads):
        for i, case in enumerate(cases):
            if case.device not in rates:
                rates[case.device] = device_gemm_rate(case.device, quick, threads)
            elif not quick:
                rates[case.device] = max(rates[case.device],
                                         device_gemm_rate(case.device, True, threads))
            if progress:
                progress(f"[{i + 1}/{len(cases)}] {case.name}")
            row = run_case(case, repeat=repeat, memory=memory, with_torch=with_torch,
                           min_time=min_time)
            row.update(threads=threads)
            rows.append(row)
    for row in rows:   # every case against its device's best rate of the whole run
        rate, label = rates[row["device"]]
        floor = row["flops"] / (rate * 1e9)
        row.update(gemm_gflops=rate, gemm_label=label, gemm_share=row["gflops"] / rate,
                   gemm_floor_s=floor,
                   torch_gemm_share=floor / row["torch_s"] if row["torch_s"] else None)
    return rows


# ---- reporting ------------------------------------------------------------------------------

COLUMNS = ["case", "fastrnn ms", "torch ms", "ratio", "calls", "GFLOP/s", "GEMM share",
           "floor ms", "torch share", "fastrnn MiB", "torch MiB"]


def _mib(nbytes):
    return "n/a" if nbytes is None else f"{nbytes / 2 ** 20:.1f}"


def format_table(rows):
    """A plain-text table of benchmark rows (ratio = torch time / fastrnn time)."""
    body = []
    for r in rows:
        torch_ms = f"{r['torch_s'] * 1e3:.2f}" if r["torch_s"] is not None else (r["torch_note"] or "n/a")
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "n/a"
        body.append([r["case"], f"{r['fastrnn_s'] * 1e3:.2f}", torch_ms, ratio,
                     str(r["rounds"]), f"{r['gflops']:.1f}", f"{100 * r['gemm_share']:.0f}%",
                     f"{r['gemm_floor_s'] * 1e3:.2f}",
                     "n/a" if r["torch_gemm_share"] is None else f"{100 * r['torch_gemm_share']:.0f}%",
                     _mib(r["fastrnn_peak_bytes"]), _mib(r["torch_peak_bytes"])])
    widths = [max(len(c), *(len(line[i]) for line in body)) if body else len(c)
              for i, c in enumerate(COLUMNS)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)   # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    lines = [fmt(COLUMNS), fmt(["-" * w for w in widths])] + [fmt(line) for line in body]
    if rows:
        rates = {r.get("gemm_label", CPU_GEMM_LABEL): r["gemm_gflops"] for r in rows}
        rate_text = "; ".join(f"large-GEMM rate ({label}) {rate:.1f} GFLOP/s"
                              for label, rate in rates.items())
        lines.append(f"threads {rows[0]['threads']}; {rate_text}; "
                     f"ratio = torch / fastrnn (> 1: fastrnn faster); "
                     f"times are the best of each library's calls (alternating, "
                     f"'calls' of each); floor = the case's GEMM flops at "
                     f"that rate (the best measured in the run, before each case), GEMM "
                     f"share / torch share = floor / each library's time")
        for reference in dict.fromkeys(r.get("reference", "torch") for r in rows):
            if reference != "torch":
                names = ", ".join(r["case"] for r in rows if r.get("reference") == reference)
                lines.append(f"the torch column of {names} times {reference}")
    return "\n".join(lines)


def main(argv=None):
    """``fastrnn bench [--quick] [--threads N] [--cases kernels,lm] [--repeat R]
    [--min-time S]``."""
    parser = argparse.ArgumentParser(
        prog="fastrnn bench",
        description="Benchmark fastrnn against PyTorch. Runs from a fastrnn source checkout: "
                    "`fastrnn bench` finds benchmarks/ in the current directory or above it, "
                    "or pass --from DIR (the checkout).")
    parser.add_argument("--quick", action="store_true",
                        help="time each case twice (a smoke test, not a measurement)")
    parser.add_argument("--threads", type=int, default=2, help="threads for fastrnn, BLAS and torch")
    parser.add_argument("--cases", default="kernels,lm",
                        help=f"comma-separated case sets: {', '.join(CASE_SETS)} (torch: "
                             f"fastrnn.torch inside PyTorch's autograd, against torch.nn; "
                             f"jax: fastrnn.jax under jax.jit(jax.grad), against a "
                             f"pure-JAX lax.scan LSTM; varlen: LSTM and GRU with lengths "
                             f"U[T/4, T] against the same batch padded, and PyTorch packed; "
                             f"gpu: the CUDA "
                             f"backend against cuDNN; gpu-graphs: the same with CUDA-graph replay)")
    parser.add_argument("--repeat", type=int, default=5,
                        help="timed calls per case, at least (best is kept)")
    parser.add_argument("--min-time", type=float, default=1.0,
                        help="seconds of fastrnn's timed calls per case, at least: fast cases "
                             f"get more calls, up to {MAX_ROUNDS} (0: exactly --repeat)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    args = parser.parse_args(argv)
    cases = []
    for name in args.cases.split(","):
        if name not in CASE_SETS:
            parser.error(f"unknown case set {name!r}; choose from {', '.join(CASE_SETS)}")
        try:
            cases += CASE_SETS[name]()
        except GPUUnavailableError as exc:
            print(f"{parser.prog}: error: --cases {name}: {exc}", file=sys.stderr)
            return 2
    print(f"timing fastrnn {fastrnn.__version__} from "
          f"{os.path.dirname(os.path.abspath(fastrnn.__file__))} with the benchmarks in "
          f"{os.path.dirname(os.path.abspath(__file__))}", flush=True)
    # OpenBLAS picks its kernels for the CPU unless OPENBLAS_CORETYPE says otherwise: a forced
    # older core (e.g. Haswell on an AVX-512 machine) halves every BLAS GEMM of both columns'
    # large products, so say so beside the figures.
    if os.environ.get("OPENBLAS_CORETYPE"):
        print(f"note: OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']} is set: OpenBLAS uses "
              f"that core's kernels, whatever this CPU has", flush=True)
    if args.repeat < 1 or not args.min_time >= 0:
        parser.error(f"--repeat must be at least 1 and --min-time at least 0, got "
                     f"{args.repeat} and {args.min_time}")
    rows = run_kernel_benchmarks(cases, threads=args.threads, repeat=args.repeat,
                                 quick=args.quick, memory=not args.no_memory,
                                 progress=lambda msg: print(msg, flush=True),
                                 min_time=args.min_time)
    print(format_table(rows))
    for line in varlen_summary(rows):
        print(line)
    return 0


if __name__ == "__main__":
    # Run as a script, this file is __main__; import it under its own name so that
    # fastrnn_bench_gpu and this code share one module.
    import fastrnn_bench
    sys.exit(fastrnn_bench.main())
