"""A PyTorch training step against the same step with fastrnn, timed interleaved: rounds
alternate which goes first, and the medians are compared. On a shared machine PyTorch's own
step time swings between runs of the same process; medians of interleaved steps give a
steadier ratio than best-of-N of two separate runs.

    python benchmarks/torch_bridge_ab.py --rounds 8 --steps 5 --threads 2
    python benchmarks/torch_bridge_ab.py --fastrnn native --model small

The models and steps are `fastrnn bench`'s (LM_MODELS: embedding, LSTM, linear,
cross-entropy, Adam, clipping at 5). ``--fastrnn converted`` (the default) is PyTorch's model
with ``fastrnn.torch.convert`` (the torch-bridge train-step case, char model); ``native`` is
fastrnn's own LanguageModel and Trainer step (the train-step cases).
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fastrnn_bench  # noqa: E402  (next to this file)


def interleaved_step_times(rounds=8, steps=5, threads=2, fastrnn="converted", model="char"):
    """{fastrnn: [...], "torch": [...]}: seconds of each timed step; ``fastrnn`` is
    "converted" or "native", ``model`` a key of fastrnn_bench.LM_MODELS."""
    V, E, H, L, B, T = fastrnn_bench.LM_MODELS[model]
    if fastrnn == "converted":
        ours = fastrnn_bench._torch_train_step(V, E, H, L, B, T, convert=True)
    elif fastrnn == "native":
        ours = fastrnn_bench._fastrnn_train_step(V, E, H, L, B, T)
    else:
        raise ValueError(f"fastrnn must be 'converted' or 'native', got {fastrnn!r}")
    with fastrnn_bench.thread_settings(threads):
        runs = {fastrnn: ours(), "torch": fastrnn_bench._torch_train_step(V, E, H, L, B, T)()}
        return fastrnn_bench.alternating_times(runs, rounds, steps)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fastrnn", choices=("converted", "native"), default="converted",
                        help="PyTorch's model converted with fastrnn.torch, or fastrnn's own")
    parser.add_argument("--model", choices=sorted(fastrnn_bench.LM_MODELS), default="char")
    args = parser.parse_args(argv)
    times = interleaved_step_times(args.rounds, args.steps, args.threads, args.fastrnn,
                                   args.model)
    ours, plain = np.median(times[args.fastrnn]), np.median(times["torch"])
    print(f"{args.model} model, median step: {args.fastrnn} {ours * 1e3:.2f} ms, torch "
          f"{plain * 1e3:.2f} ms, ratio {plain / ours:.2f}x (best "
          f"{min(times[args.fastrnn]) * 1e3:.2f} / {min(times['torch']) * 1e3:.2f} ms; "
          f"{args.threads} threads)")


if __name__ == "__main__":
    main()
