"""What the PyTorch and JAX bridges save by computing only the gradients that will be used:
an LSTM's forward + backward with its input differentiated and without (raw features: the
engine then skips the product dG W_ih), timed alternately in one process, medians compared.

    python benchmarks/bridge_wanted_grads.py --bridge torch --size 32 64 128 256 --rounds 12
    taskset -c 0,1 python benchmarks/bridge_wanted_grads.py --bridge jax --threads 2

torch: a fastrnn.torch LSTM, x.requires_grad True or False. jax: ``jax.jit(jax.grad(loss,
argnums=(0, 1)))`` (parameters and x) against ``jax.grad(loss)`` (parameters only).
"""
import argparse
import functools
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fastrnn_bench  # noqa: E402  (next to this file)


def _torch_steps(B, T, I, H):
    """{True: step with dx, False: step without}."""
    import torch
    import fastrnn.torch as ft
    gen = torch.Generator().manual_seed(0)
    rnn = ft.LSTM(I, H)
    x = torch.randn(T, B, I, generator=gen)

    def step(input_grad):
        y, _ = rnn(x.clone().requires_grad_(input_grad))
        y.sum().backward()
    return {wanted: functools.partial(step, wanted) for wanted in (True, False)}


def _jax_steps(B, T, I, H):
    import jax
    import fastrnn.jax as fj
    params = fj.init_params("lstm", I, H)
    x = jax.numpy.asarray(np.random.default_rng(0).standard_normal((T, B, I)), np.float32)

    def loss(params, x):
        return (fj.lstm(params, x)[0] ** 2).sum()
    grads = {True: jax.jit(jax.grad(loss, argnums=(0, 1))), False: jax.jit(jax.grad(loss))}
    return {wanted: (lambda g=g: jax.block_until_ready(g(params, x)))
            for wanted, g in grads.items()}


def alternating_step_times(B, T, I, H, rounds=12, threads=2, bridge="torch"):
    """{True: [...], False: [...]}: seconds of each timed step with x differentiated or not."""
    if bridge not in ("torch", "jax"):
        raise ValueError(f"bridge must be 'torch' or 'jax', got {bridge!r}")
    with fastrnn_bench.thread_settings(threads):
        steps = (_torch_steps if bridge == "torch" else _jax_steps)(B, T, I, H)
        return fastrnn_bench.alternating_times(steps, rounds)   # (the untimed calls compile jit)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bridge", choices=("torch", "jax"), default="torch")
    parser.add_argument("--size", type=int, nargs=4, default=(32, 64, 128, 256),
                        metavar=("B", "T", "I", "H"))
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    times = alternating_step_times(*args.size, rounds=args.rounds, threads=args.threads,
                                   bridge=args.bridge)
    wanted, skipped = (np.median(times[k]) * 1e3 for k in (True, False))
    best_wanted, best_skipped = (min(times[k]) * 1e3 for k in (True, False))
    print(f"{args.bridge}: LSTM {tuple(args.size)} forward + backward, median (best) of "
          f"{args.rounds}: x differentiated {wanted:.2f} ({best_wanted:.2f}) ms, raw features "
          f"{skipped:.2f} ({best_skipped:.2f}) ms ({wanted / skipped:.2f}x; "
          f"{args.threads} threads)")


if __name__ == "__main__":
    main()
