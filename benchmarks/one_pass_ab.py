"""The optimizer's one-pass kernels against one call per parameter, inside a training step.

fastrnn/_cpu/update.pyx runs Adam, zero_grad's fill, the clipping norm and its scaling each as
one compiled pass over all parameters (adam_update_arrays, zero_arrays, sum_of_squares,
scale_arrays). Each of them may decline arrays it cannot take, and then its caller runs the
per-parameter path (adam_update, zero_fill, NumPy's dot products and ``*=``). This script
makes them decline on every other step, so that the two paths alternate in one process and
share its noise, and prints the best, 10th percentile and median step time of each:

    python benchmarks/one_pass_ab.py --model small --threads 2 --steps 3000

The models are fastrnn_bench.LM_MODELS' (the `fastrnn bench` training-step cases: Adam, lr
2e-3, clipping at 5).
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fastrnn_bench  # noqa: E402  (next to this file)

ONE_PASS = ("adam_update_arrays", "zero_arrays", "sum_of_squares", "scale_arrays")
# What each one-pass kernel returns when it declines its arrays.
DECLINED = {"adam_update_arrays": False, "zero_arrays": False, "sum_of_squares": None,
            "scale_arrays": False}


def one_pass_ab(model_name, threads=1, steps=1000, warmup=10):
    """{"one pass": seconds, "per parameter": seconds}, lists of ``steps`` step times each,
    the two alternating (which goes first alternates too)."""
    from fastrnn import threads as fastrnn_threads
    from fastrnn._cpu import update
    V, E, H, L, B, T = fastrnn_bench.LM_MODELS[model_name]
    one_pass = {name: getattr(update, name) for name in ONE_PASS}
    per_parameter = {name: (lambda value: lambda *args: value)(DECLINED[name])
                     for name in ONE_PASS}
    times = {"one pass": [], "per parameter": []}
    with fastrnn_bench.thread_settings(threads), fastrnn_threads.blas_single_threaded():
        step = fastrnn_bench._fastrnn_train_step(V, E, H, L, B, T)()
        try:
            for _ in range(warmup):
                step()
            for i in range(steps):
                order = ("one pass", "per parameter") if i % 2 else ("per parameter", "one pass")
                for label in order:
                    kernels = one_pass if label == "one pass" else per_parameter
                    for name, kernel in kernels.items():
                        setattr(update, name, kernel)
                    started = time.perf_counter()
                    step()
                    times[label].append(time.perf_counter() - started)
        finally:
            for name, kernel in one_pass.items():
                setattr(update, name, kernel)
    return times


def main(argv=None):
    fastrnn_bench.spreads_main(__doc__.split("\n\n")[0], one_pass_ab, argv, steps=1000,
                               per="steps of each")


if __name__ == "__main__":
    main()
