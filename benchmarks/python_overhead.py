"""What a language-model training step spends outside its compiled kernels: the Python of the
Trainer, the model and its layers, and NumPy's small calls.

    python benchmarks/python_overhead.py --model small --threads 2 --steps 2000

Two figures, best / p10 / median over ``--steps`` steps of LM_MODELS[model] (Adam, clipping
at 5, as `fastrnn bench`):
- "outside": in real steps, the step's time minus the time inside the calls into
  fastrnn._cpu's modules (each call timed by a wrapper, which adds well under a
  microsecond per call). Python runs slower here than alone: the kernels leave its code
  and objects out of the caches.
- "stubbed": whole steps with every compiled call replaced by a stub that returns what the
  call returned the first time (numbers wrong, timing only): the Python alone, its data in
  cache.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fastrnn_bench  # noqa: E402  (next to this file)

from fastrnn._cpu import arrays, dense, loss, recurrent, update  # noqa: E402

KERNEL_MODULES = (recurrent, update, dense, loss, arrays)


class _Timed:
    """A compiled function (fused ones too: ``f["float"]``) that adds its seconds to
    ``clock[0]``."""

    def __init__(self, function, clock):
        self.function, self.clock = function, clock

    def __call__(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return self.function(*args, **kwargs)
        finally:
            self.clock[0] += time.perf_counter() - started

    def __getitem__(self, key):
        return _Timed(self.function[key], self.clock)


class _Stub:
    """A compiled function that runs once, then returns that first result."""

    def __init__(self, function, results, key):
        self.function, self.results, self.key = function, results, key

    def __call__(self, *args, **kwargs):
        if self.key not in self.results:
            self.results[self.key] = self.function(*args, **kwargs)
        return self.results[self.key]

    def __getitem__(self, key):
        return _Stub(self.function[key], self.results, (self.key, key))


def _replace_kernels(make):
    """Replace every public function of KERNEL_MODULES by make(function, name); returns the
    originals to put back."""
    saved = []
    for module in KERNEL_MODULES:
        for name in dir(module):
            function = getattr(module, name)
            if name.startswith("_") or not callable(function) or isinstance(function, type):
                continue
            saved.append((module, name, function))
            setattr(module, name, make(function, f"{module.__name__}.{name}"))
    return saved


def _restore(saved):
    for module, name, function in saved:
        setattr(module, name, function)


def python_overhead(model_name, threads=2, steps=2000, warmup=20):
    """{"outside": seconds per step outside the kernels, "step": the same steps' times,
    "stubbed": stubbed steps' times} (lists)."""
    times = {"outside": [], "step": [], "stubbed": []}
    with fastrnn_bench.thread_settings(threads):
        _, trainer, (x, y) = fastrnn_bench.lm_trainer(*fastrnn_bench.LM_MODELS[model_name])
        for _ in range(warmup):
            trainer.train_step((x, y))
        clock = [0.0]
        saved = _replace_kernels(lambda function, name: _Timed(function, clock))
        try:
            for _ in range(steps):
                clock[0] = 0.0
                started = time.perf_counter()
                trainer.train_step((x, y))
                elapsed = time.perf_counter() - started
                times["step"].append(elapsed)
                times["outside"].append(elapsed - clock[0])
        finally:
            _restore(saved)
        results = {}
        saved = _replace_kernels(lambda function, name: _Stub(function, results, name))
        try:
            for _ in range(warmup):
                trainer.train_step((x, y))
            for _ in range(steps):
                started = time.perf_counter()
                trainer.train_step((x, y))
                times["stubbed"].append(time.perf_counter() - started)
        finally:
            _restore(saved)
    return times


def main(argv=None):
    fastrnn_bench.spreads_main(__doc__.split("\n\n")[0], python_overhead, argv, steps=2000,
                               unit="µs")


if __name__ == "__main__":
    main()
