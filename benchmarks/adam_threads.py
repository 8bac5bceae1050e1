"""The compiled Adam update (fastrnn/_cpu/update.pyx) on one thread and on two, over array
sizes: where a second thread starts to pay (_parts.pxd's MIN_PER_THREAD).

    python benchmarks/adam_threads.py

Arrays stay in cache between calls, as a model's parameters do between steps. Below
MIN_PER_THREAD elements per thread the kernel runs on one thread whatever it is asked, so
those rows read about 1.0x; rebuild with MIN_PER_THREAD = 1 to see the crossover itself.
"""
import time

import numpy as np

from fastrnn._cpu import update


def median_us(n, num_threads, rng):
    p, g, m, v = (rng.standard_normal(n).astype(np.float32) for _ in range(4))
    v = np.abs(v)
    times = []
    for _ in range(max(20, 2_000_000 // n)):
        started = time.perf_counter()
        update.adam_update(p, g, m, v, 0.9, 0.1, 0.999, 0.001, 1.0, 1e-8, 1e-3, False, 0.0,
                           1.0, num_threads)
        times.append(time.perf_counter() - started)
    return np.median(times) * 1e6


def main():
    rng = np.random.default_rng(0)
    for n in (1 << 10, 1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22):
        one, two = median_us(n, 1, rng), median_us(n, 2, rng)
        print(f"n = {n:8d}: 1 thread {one:8.1f} us, 2 threads {two:8.1f} us, {one / two:.2f}x")


if __name__ == "__main__":
    main()
