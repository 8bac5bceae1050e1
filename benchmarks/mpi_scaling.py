"""Tokens/s of data-parallel training (``Trainer(distributed="mpi")``) on the README's char-LM
training step: V 65, embedding 64, LSTM 2x256, global batch 32 x 64, Adam, clip 5, float32.

Compare the two ways to spend 2 cores (needs ``pip install "fastrnn[mpi]"``):

    python benchmarks/mpi_scaling.py --threads 2                       # 1 rank x 2 threads
    OMP_NUM_THREADS=1 mpiexec -n 2 python benchmarks/mpi_scaling.py --threads 1   # 2 ranks x 1

Without mpiexec (or with ``--single``) it runs one plain process (no MPI at all). Rank 0
prints the global tokens/s of the timed steps (after warm-up), the time per step and, under
MPI, the time of the gradient all-reduce per step and of packing/unpacking its buffer.
"""
import argparse
import os
import time

import numpy as np

from fastrnn import LanguageModel
from fastrnn.lm.train import Trainer
from fastrnn.threads import set_num_threads


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="OpenMP threads per rank")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32, help="global batch (streams)")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--embed", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=65)
    parser.add_argument("--single", action="store_true", help="one process, no MPI")
    args = parser.parse_args(argv)
    set_num_threads(args.threads)
    under_mpi = not args.single and any(k in os.environ for k in ("PMI_RANK", "OMPI_COMM_WORLD_RANK"))
    distributed = "mpi" if under_mpi else None

    rng = np.random.default_rng(0)
    ids = rng.integers(0, args.vocab, args.batch * args.seq_len * (args.steps + args.warmup + 2))
    model = LanguageModel(args.vocab, embed_size=args.embed, hidden_size=args.hidden,
                          num_layers=2, seed=0)
    trainer = Trainer(model, ids, batch_size=args.batch, seq_len=args.seq_len, clip=5.0,
                      max_steps=10 ** 9, progress=False, distributed=distributed)
    dist = trainer.distributed
    batches = iter(trainer.batcher)
    for _ in range(args.warmup):
        trainer.train_step(next(batches))
    reduce_seconds = 0.0
    if dist is not None:   # time the all-reduce inside the steps
        allreduce = dist.allreduce_grads

        def timed_allreduce(loss):
            nonlocal reduce_seconds
            started = time.perf_counter()
            result = allreduce(loss)
            reduce_seconds += time.perf_counter() - started
            return result

        dist.allreduce_grads = timed_allreduce
        dist.comm.Barrier()
    tokens0, started = trainer.tokens, time.perf_counter()
    for _ in range(args.steps):
        trainer.train_step(next(batches))
    seconds = time.perf_counter() - started
    tokens = trainer.tokens - tokens0
    if dist is not None and not dist.is_root:
        return
    ranks = 1 if dist is None else dist.size
    print(f"{ranks} rank(s) x {args.threads} thread(s), global batch {args.batch} x "
          f"{args.seq_len}, {model.num_params():,} parameters: {tokens / seconds:,.0f} tokens/s, "
          f"{1e3 * seconds / args.steps:.1f} ms/step")
    if dist is not None:
        pack = _pack_seconds(dist)
        print(f"  all-reduce of {dist.buffer.nbytes / 1e6:.2f} MB per step: "
              f"{1e3 * reduce_seconds / args.steps:.2f} ms (of which packing and unpacking "
              f"the flat buffer {1e3 * pack:.2f} ms)")


def _pack_seconds(dist, repeat=20):
    """Seconds to copy every gradient into the flat buffer and back (what making the
    gradients views of the buffer would save)."""
    grads = [dist.model.grads[k].reshape(-1) for k in dist._names]
    started = time.perf_counter()
    for _ in range(repeat):
        offset = 0
        for g in grads:
            dist.buffer[offset:offset + g.size] = g
            g[...] = dist.buffer[offset:offset + g.size]
            offset += g.size
    return (time.perf_counter() - started) / repeat


if __name__ == "__main__":
    main()
