"""What the machine's BLAS does on a kernel case's own products: each GEMM of a recurrent
layer's forward + backward (input projection, the T per-step products forward and backward,
dW_ih, dW_hh, dx) timed on its own at its own shape, best of ``--repeat``, next to the 2048³
sgemm rate that `fastrnn bench`'s GEMM floor uses. The large products run through NumPy on
the given threads; a per-step product as the kernels split it, each thread's rows on one
thread of BLAS, all threads at once (fastrnn's dense.parallel_gemm, the dense layers' GEMM:
SciPy's BLAS, the one fastrnn calls, on fastrnn's OpenMP threads). Timed alone instead, one
share as if the others ran beside it for free, the small model's forward steps took 1.9-2.5
ms against 2.7-3.4 ms at once (session 14): the threads' shares slow each other down.

    python benchmarks/blas_floor.py --cell lstm --size 32,64,128,256 --threads 2
    python benchmarks/blas_floor.py --model small --threads 2

--model takes a training step of one of `fastrnn bench`'s language models instead: every
LSTM layer's products as above (the first layer's input is the embedding) and the output
layer's three (logits, its weight gradient, the gradient into the LSTM), the GEMMs that
`fastrnn bench`'s floor for that case counts.

The sum is the time these products take through this BLAS with nothing else (no gate math,
no buffers): where it is above the 2048³ floor, the BLAS itself runs the case's shapes below
its large-GEMM rate, and a library that calls it cannot reach the floor.
"""
import argparse
import functools
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fastrnn_bench  # noqa: E402  (next to this file)
from fastrnn.cells import get_cell  # noqa: E402


PER_STEP = ("forward steps h W_hh^T", "backward steps dG_t W_hh")


def _random(rng, *shape):
    """A float32 operand of ``shape`` drawn from ``rng``."""
    return rng.standard_normal(shape).astype(np.float32)


def case_products(cell, B, T, I, H, seed=0):
    """{name: (a, b, count)}: the products ``a @ b`` (float32 NumPy operands, transposes as
    views) of one layer's forward + backward, each run ``count`` times per call. The
    per-step products (PER_STEP) are (B, .) x (., .): the kernels split their rows among
    the threads."""
    GH = get_cell(cell).gates * H
    rng = np.random.default_rng(seed)
    x, y = _random(rng, T * B, I), _random(rng, T * B, H)
    w_ih, w_hh = _random(rng, GH, I), _random(rng, GH, H)
    h, dg = _random(rng, B, H), _random(rng, T * B, GH)
    return {"input projection x W_ih^T": (x, w_ih.T, 1),
            PER_STEP[0]: (h, w_hh.T, T),
            PER_STEP[1]: (dg[:B], w_hh, T),
            "dW_ih = dG^T x": (dg.T, x, 1),
            "dW_hh = dG^T y": (dg.T, y, 1),
            "dx = dG W_ih": (dg, w_ih, 1)}


def model_products(model, seed=0):
    """{name: (a, b, count)}: the products of one training step of
    fastrnn_bench.LM_MODELS[model] (see case_products), layer by layer, then the output
    layer's."""
    V, E, H, L, B, T = fastrnn_bench.LM_MODELS[model]
    products = {}
    for layer in range(L):
        for name, product in case_products("lstm", B, T, E if layer == 0 else H, H,
                                           seed + layer).items():
            products[f"layer {layer}: {name}"] = product
    rng = np.random.default_rng(seed + L)
    y, w, dlogits = _random(rng, T * B, H), _random(rng, V, H), _random(rng, T * B, V)
    products.update({"output: logits y W^T": (y, w.T, 1),
                     "output: dW = dlogits^T y": (dlogits.T, y, 1),
                     "output: dy = dlogits W": (dlogits, w, 1)})
    return products


def is_per_step(name):
    """Whether product ``name`` (of case_products or model_products) is a per-step one."""
    return name.split(": ")[-1] in PER_STEP


def product_flops(products):
    """The GEMM flops of one call of ``products`` (case_products)."""
    return sum(2.0 * a.shape[0] * a.shape[1] * b.shape[1] * count
               for a, b, count in products.values())


def rows_on_threads(a, b, threads):
    """A callable computing ``a @ b`` (2-D float32, b possibly a transposed view) with a's rows
    split among ``threads`` of fastrnn's OpenMP threads, each calling BLAS on its rows (the
    caller keeps BLAS on one thread): fastrnn._cpu.dense.parallel_gemm with
    ``by_shape=False`` (on its own it splits the columns of so few rows). It cuts the rows in
    whole 16-row blocks, as the time loops cut their batch when it is a multiple of 16 rows
    per thread (the kernel cases of B >= 32, the char and small models); the word model's
    20 rows go 16 + 4 here, 10 + 10 in the loops."""
    from fastrnn._cpu import dense
    a = np.ascontiguousarray(a)
    trans_b = not b.flags.c_contiguous
    b = b.T if trans_b else b
    if not b.flags.c_contiguous:
        raise ValueError("b must be C-contiguous or the transpose of a C-contiguous array")
    out = np.empty((a.shape[0], b.shape[0] if trans_b else b.shape[1]), a.dtype)

    def product():
        dense.parallel_gemm(False, trans_b, a, b, out, 0.0, threads, None, False)   # rows
        return out
    return product


def blas_floor(cell, size, threads=2, repeat=20, model=None):
    """({name: seconds per call}, the 2048³ rate in GFLOP/s, the case's GEMM flops); with
    ``model``, of that language model's training step instead of the kernel case."""
    from threadpoolctl import threadpool_limits
    products = model_products(model) if model else case_products(cell, *size)
    times = {}
    with fastrnn_bench.thread_settings(threads):
        # The per-step products first: NumPy's BLAS workers keep spinning for a while after
        # a threaded product, and on the cores of fastrnn's threads they made the per-step
        # products that followed 25x slower (see fastrnn/_matmul.py).
        for name in sorted(products, key=lambda name: not is_per_step(name)):
            a, b, count = products[name]
            if is_per_step(name):   # as the kernels run them: each thread its share of the
                # rows, BLAS on one thread each, all at once
                product = rows_on_threads(a, b, threads)
                limit = threadpool_limits(limits=1, user_api="blas")
            else:
                product = functools.partial(np.matmul, a, b)
                limit = threadpool_limits(limits=threads, user_api="blas")
            with limit:
                product()
                times[name] = count * min(fastrnn_bench._timed(product) for _ in range(repeat))
        rate = fastrnn_bench.gemm_rate(repeat=3)
    return {name: times[name] for name in products}, rate, product_flops(products)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="lstm", choices=("rnn_tanh", "rnn_relu", "gru", "lstm"))
    parser.add_argument("--size", default="32,64,128,256", help="B,T,I,H")
    parser.add_argument("--model", choices=sorted(fastrnn_bench.LM_MODELS),
                        help="a training step of this language model instead")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.split(","))
    if len(size) != 4:
        parser.error(f"--size must be B,T,I,H, got {args.size!r}")
    times, rate, flops = blas_floor(args.cell, size, args.threads, args.repeat, args.model)
    for name, seconds in times.items():
        print(f"{name:40s} {seconds * 1e3:8.2f} ms")
    total = sum(times.values())
    floor = flops / (rate * 1e9)
    what = f"{args.model} model step" if args.model else f"{args.cell} {size}"
    print(f"{what}, {args.threads} threads: the products through BLAS "
          f"{total * 1e3:.2f} ms ({flops / total / 1e9:.0f} GFLOP/s), the 2048³ floor "
          f"{floor * 1e3:.2f} ms ({rate:.0f} GFLOP/s): BLAS reaches {floor / total:.0%} of it")


if __name__ == "__main__":
    main()
