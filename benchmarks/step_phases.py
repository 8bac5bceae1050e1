"""Where a language-model training step spends its time: each phase of ``Trainer.train_step``
(every layer's forward and backward, zero_grad, clipping, the optimizer), timed by wrapping
those methods, best and median of ``--steps`` steps.

    python benchmarks/step_phases.py --model word --threads 1 --steps 30

The models are fastrnn_bench.LM_MODELS' (the `fastrnn bench` training-step cases: Adam,
lr 2e-3, clipping at 5). Phases do not add up to the total exactly: the rest is the step's
own Python (argument checks, the BLAS thread limit) and timer overhead. On a busy machine
take the best column; a phase's median far above its best means other work got in the way.
"""
import collections
import functools
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fastrnn_bench  # noqa: E402  (next to this file)

LAYERS = ("embedding", "input_dropout", "rnn", "output_dropout", "output", "loss")


def timed(times, label, method):
    """``method`` wrapped to append its seconds to ``times[label]`` on every call."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            times[label].append(time.perf_counter() - started)
    return wrapper


def step_phases(model_name, threads=1, steps=30, warmup=3):
    """{phase: list of seconds} over ``steps`` training steps of LM_MODELS[model_name]; the
    key "step" is the whole ``train_step``."""
    times = collections.defaultdict(list)
    with fastrnn_bench.thread_settings(threads):
        model, trainer, (x, y) = fastrnn_bench.lm_trainer(*fastrnn_bench.LM_MODELS[model_name])
        for name in LAYERS:
            layer = getattr(model, name)
            layer.forward = timed(times, f"{name} forward", layer.forward)
            layer.backward = timed(times, f"{name} backward", layer.backward)
        model.zero_grad = timed(times, "zero_grad", model.zero_grad)
        trainer._clip = timed(times, "clip", trainer._clip)
        trainer.optimizer.step = timed(times, "optimizer", trainer.optimizer.step)
        trainer.train_step = timed(times, "step", trainer.train_step)
        for _ in range(warmup):
            trainer.train_step((x, y))
        times.clear()
        for _ in range(steps):
            trainer.train_step((x, y))
    return dict(times)


def format_phases(times):
    total = min(times["step"])
    lines = [f"{'phase':22s} {'best ms':>9s} {'median ms':>10s} {'share':>6s}"]
    for label, values in times.items():
        best = min(values)
        lines.append(f"{label:22s} {best * 1e3:9.3f} {np.median(values) * 1e3:10.3f} "
                     f"{100 * best / total:5.1f}%")
    return "\n".join(lines)


def main(argv=None):
    args = fastrnn_bench.lm_step_parser(__doc__.split("\n\n")[0], model="char",
                                        steps=30).parse_args(argv)
    times = step_phases(args.model, args.threads, args.steps)
    print(f"{args.model} model, {args.threads} thread(s), {args.steps} steps")
    print(format_phases(times))
    return 0


if __name__ == "__main__":
    sys.exit(main())
