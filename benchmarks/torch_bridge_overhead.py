"""The overhead of fastrnn.torch around the engine, from torch.profiler.

    python benchmarks/torch_bridge_overhead.py --cell lstm --layout packed --threads 2
    python benchmarks/torch_bridge_overhead.py --layout padded --size 32 64 128 256

Times a forward+backward of a one-layer fastrnn.torch module (as ``fastrnn bench --cases
torch`` does: an unsorted PackedSequence with lengths uniform in [T/4, T] made by the
caller, or the padded batch; loss = sum of the output) under torch.profiler, and splits each
step's CPU time into the engine (the ops ``fastrnn::recurrent_forward`` and
``fastrnn::recurrent_backward`` with everything under them) and the rest. The caller's own
part (pack_padded_sequence, the loss and their backward) is profiled alone and taken off, so
that what is left is the bridge: conversions, autograd glue, PyTorch's autograd engine.
Profiles are CPU time, so the figure holds on a machine shared with other work where wall
times do not. Prints milliseconds per step (the best of ``--repeats`` profiles).
"""
import argparse

import numpy as np
import torch
from torch.nn.utils.rnn import pack_padded_sequence
from torch.profiler import ProfilerActivity, profile

import fastrnn.torch as ft

ENGINE_OPS = ("fastrnn::recurrent_forward", "fastrnn::recurrent_backward")


def _profiled_ms(step, steps, repeats, split_engine):
    """(CPU ms per step, of which engine ms) of the best of ``repeats`` profiles."""
    best = None
    for _ in range(repeats):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
        events = prof.events()
        total = sum(e.self_cpu_time_total for e in events) / steps / 1000
        engine = (sum(e.cpu_time_total for e in events if e.name in ENGINE_OPS) / steps / 1000
                  if split_engine else 0.0)
        if best is None or total - engine < best[0] - best[1]:
            best = (total, engine)
    return best


def bridge_overhead(cell="lstm", layout="packed", size=(32, 200, 128, 256), steps=5,
                    repeats=3, warmup=3, threads=2):
    """Per-step milliseconds: ``engine``, ``overhead`` (everything else), ``caller`` (the
    caller's packing and loss alone) and ``bridge`` = overhead - caller."""
    torch.set_num_threads(threads)
    B, T, I, H = size
    rng = np.random.default_rng(0)
    lengths = torch.from_numpy(rng.integers(max(1, T // 4), T + 1, size=B))
    x = torch.from_numpy(rng.standard_normal((T, B, I)).astype(np.float32)).requires_grad_(True)
    torch.manual_seed(0)
    module = {"lstm": ft.LSTM, "gru": ft.GRU}[cell](I, H)

    def caller_input():
        x.grad = None
        return pack_padded_sequence(x, lengths, enforce_sorted=False) if layout == "packed" else x

    def data(seq):
        return seq.data if layout == "packed" else seq

    def step():
        module.zero_grad(set_to_none=True)
        out, _ = module(caller_input())
        data(out).sum().backward()

    def caller_only():
        data(caller_input()).sum().backward()

    for _ in range(warmup):
        step()
        caller_only()
    total, engine = _profiled_ms(step, steps, repeats, split_engine=True)
    caller, _ = _profiled_ms(caller_only, steps, repeats, split_engine=False)
    overhead = total - engine
    return dict(engine=engine, overhead=overhead, caller=caller, bridge=overhead - caller)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cell", choices=("lstm", "gru"), default="lstm")
    parser.add_argument("--layout", choices=("packed", "padded"), default="packed")
    parser.add_argument("--size", type=int, nargs=4, default=(32, 200, 128, 256),
                        metavar=("B", "T", "I", "H"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="steps per profile")
    parser.add_argument("--repeats", type=int, default=3, help="profiles (the best is kept)")
    args = parser.parse_args(argv)
    if min(args.size) < 1 or args.threads < 1 or args.steps < 1 or args.repeats < 1:
        parser.error("--size, --threads, --steps and --repeats must be positive")
    r = bridge_overhead(args.cell, args.layout, tuple(args.size), args.steps, args.repeats,
                        threads=args.threads)
    B, T, I, H = args.size
    print(f"{args.cell} {args.layout} (B={B}, T={T}, I={I}, H={H}), {args.threads} threads, "
          f"ms per forward+backward: engine {r['engine']:.2f}; everything else "
          f"{r['overhead']:.2f} = the caller's packing and loss {r['caller']:.2f} + the bridge "
          f"{r['bridge']:.2f} ({100 * r['bridge'] / r['engine']:.1f}% of the engine)")


if __name__ == "__main__":
    main()
