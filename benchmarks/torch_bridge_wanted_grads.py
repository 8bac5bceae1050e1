"""What the PyTorch bridge saves by computing only the gradients autograd will use: a
fastrnn.torch LSTM's forward + backward through autograd with its input needing a gradient
and without (raw features: the engine then skips the product dG W_ih), timed alternately in
one process, medians compared.

    python benchmarks/torch_bridge_wanted_grads.py --size 32 64 128 256 --rounds 12 --threads 2
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

import fastrnn.torch as ft

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fastrnn_bench  # noqa: E402  (next to this file)


def alternating_step_times(B, T, I, H, rounds=12, threads=2):
    """{True: [...], False: [...]}: seconds of each timed step with x.requires_grad so."""
    gen = torch.Generator().manual_seed(0)
    rnn = ft.LSTM(I, H)
    x = torch.randn(T, B, I, generator=gen)

    def step(input_grad):
        y, _ = rnn(x.clone().requires_grad_(input_grad))
        y.sum().backward()

    times = {True: [], False: []}
    with fastrnn_bench.thread_settings(threads):
        for r in range(rounds):
            for input_grad in ((True, False) if r % 2 == 0 else (False, True)):
                step(input_grad)   # untimed: the other kind ran last
                started = time.perf_counter()
                step(input_grad)
                times[input_grad].append(time.perf_counter() - started)
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=4, default=(32, 64, 128, 256),
                        metavar=("B", "T", "I", "H"))
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    times = alternating_step_times(*args.size, rounds=args.rounds, threads=args.threads)
    wanted, skipped = np.median(times[True]) * 1e3, np.median(times[False]) * 1e3
    print(f"LSTM {tuple(args.size)} forward + backward, median of {args.rounds}: x needs a "
          f"gradient {wanted:.2f} ms, raw features {skipped:.2f} ms "
          f"({wanted / skipped:.2f}x; {args.threads} threads)")


if __name__ == "__main__":
    main()
