"""Where a recurrent layer's forward + backward spends its time: each compiled stage of the
CPU engine (input projection, forward loop, backward loop, weight gradients) timed by
wrapping the CpuOps methods, median and best of ``--calls`` calls, next to the whole call.

    python benchmarks/stage_timings.py --cell lstm --size 32,64,128,256 --threads 2
    python benchmarks/stage_timings.py --model small --threads 2

Sizes are (B, T, I, H) as in `fastrnn bench`'s kernel cases; --model times a whole training
step of one of its language models instead (the stages then sum over the layers). The stages
do not add up to the whole exactly: the rest is the driver's Python and the buffers (and,
for a model, its other layers, clipping and the optimizer).
"""
import argparse
import collections
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fastrnn_bench  # noqa: E402  (next to this file)
from step_phases import timed  # noqa: E402

STAGES = ("project_inputs", "forward_loop", "backward_loop", "weight_grads")


def stage_timings(cell, size, threads=1, calls=100, warmup=5, model=None):
    """{stage: list of seconds} over ``calls`` forward + backward calls (or training steps of
    fastrnn_bench.LM_MODELS[model]); "call" is the whole, the stages are summed per call."""
    from fastrnn._engine.cpu import CpuOps
    times = collections.defaultdict(list)
    this_call = collections.defaultdict(list)   # a stage runs once per layer and direction
    originals = {name: getattr(CpuOps, name) for name in STAGES}

    with fastrnn_bench.thread_settings(threads):
        if model is None:
            step = fastrnn_bench._fastrnn_kernel(cell, "forward+backward", *size, np.float32)()
        else:
            step = fastrnn_bench._fastrnn_train_step(*fastrnn_bench.LM_MODELS[model])()
        try:
            for name, method in originals.items():
                setattr(CpuOps, name, staticmethod(timed(this_call, name, method)))
            for _ in range(warmup):
                step()
            for _ in range(calls):
                this_call.clear()
                started = time.perf_counter()
                step()
                times["call"].append(time.perf_counter() - started)
                for name in STAGES:
                    times[name].append(sum(this_call[name]))
        finally:
            for name, method in originals.items():
                setattr(CpuOps, name, staticmethod(method))
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cell", default="lstm", choices=("rnn_tanh", "rnn_relu", "gru", "lstm"))
    parser.add_argument("--size", default="32,64,128,256", help="B,T,I,H")
    parser.add_argument("--model", choices=("char", "small", "word"),
                        help="time a training step of this language model instead")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calls", type=int, default=100)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split(","))
    times = stage_timings(args.cell, size, args.threads, args.calls, model=args.model)
    what = f"{args.model} model step" if args.model else f"{args.cell} {size}"
    print(f"{what}, {args.threads} threads, {args.calls} calls (ms)")
    print(f"{'stage':16s} {'median':>8s} {'best':>8s}")
    for name in STAGES + ("call",):
        values = np.array(times[name]) * 1e3
        print(f"{name:16s} {np.median(values):8.3f} {values.min():8.3f}")


if __name__ == "__main__":
    main()
