"""A PyTorch char-model training step with and without ``fastrnn.torch.convert``, timed
interleaved: rounds alternate which model goes first, and the medians are compared. On a
shared machine PyTorch's own step time swings between runs of the same process; medians of
interleaved steps give a steadier ratio than best-of-N of two separate runs.

    python benchmarks/torch_bridge_ab.py --rounds 8 --steps 5 --threads 2

The models and the step are `fastrnn bench`'s torch-bridge train-step case (embedding 64,
2-layer LSTM 256, linear, cross-entropy, Adam, clipping at 5; B 32 x T 64).
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fastrnn_bench  # noqa: E402  (next to this file)


def interleaved_step_times(rounds=8, steps=5, threads=2):
    """{"converted": [...], "torch": [...]}: seconds of each timed step."""
    V, E, H, L, B, T = fastrnn_bench.LM_MODELS["char"]
    times = {"converted": [], "torch": []}
    with fastrnn_bench.thread_settings(threads):
        runs = {"converted": fastrnn_bench._torch_train_step(V, E, H, L, B, T, convert=True)(),
                "torch": fastrnn_bench._torch_train_step(V, E, H, L, B, T)()}
        order = list(runs)
        for r in range(rounds):
            for name in (order if r % 2 == 0 else order[::-1]):
                runs[name]()   # untimed: the other model ran last
                for _ in range(steps):
                    started = time.perf_counter()
                    runs[name]()
                    times[name].append(time.perf_counter() - started)
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    times = interleaved_step_times(args.rounds, args.steps, args.threads)
    converted, plain = np.median(times["converted"]), np.median(times["torch"])
    print(f"median step: converted {converted * 1e3:.2f} ms, torch {plain * 1e3:.2f} ms, "
          f"ratio {plain / converted:.2f}x (best {min(times['converted']) * 1e3:.2f} / "
          f"{min(times['torch']) * 1e3:.2f} ms; {args.threads} threads)")


if __name__ == "__main__":
    main()
