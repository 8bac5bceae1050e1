"""Run by tests/test_distributed.py, under ``mpiexec -n N`` (``distributed="mpi"``) or alone
(one process): train tiny float64 language models through the Python API, without and with
dropout, and save, from rank 0, every case's final parameters, validation losses and the
largest difference between the ranks' parameters to the .npz file named by argv[2].

    python mpi_worker.py mpi|single OUT.npz [fail|stop]

"fail" instead raises an error on the last rank at step 2 (the test expects every rank to
end); "stop" trains on a time limit with early stopping and saves every rank's step count and
number of validations (they must agree).
"""
import sys
import tempfile
from pathlib import Path

import numpy as np

from fastrnn import LanguageModel
from fastrnn.lm.train import Trainer

V = 11


def data():
    rng = np.random.default_rng(0)
    return {"stream": rng.integers(0, V, 1500),
            "val_stream": rng.integers(0, V, 300),
            # 21 sentences in batches of 5: the last batch has 1, so one rank's share is empty
            "sentences": [rng.integers(0, V, rng.integers(2, 12)) for _ in range(21)],
            "val_sentences": [rng.integers(0, V, rng.integers(1, 9)) for _ in range(7)]}


def trainer(case, distributed, dropout=0.0, **extra):
    d = data()
    if case == "sentences":   # GRU, summed loss, sentences of all lengths
        model = LanguageModel(V, embed_size=5, hidden_size=7, num_layers=2, cell="gru",
                              dropout=dropout, dtype=np.float64, seed=3)
        train, val = d["sentences"], d["val_sentences"]
        options = dict(batch_size=5, reduction="sum", clip=0.5)
    else:   # LSTM, mean loss, carried state across windows; 3 validation streams on 2 ranks;
        # per-layer sizes, so the carried state is a list over layers (the CLI test has one size)
        model = LanguageModel(V, embed_size=5, hidden_size=[7, 6], cell="lstm",
                              dropout=dropout, dtype=np.float64, seed=4)
        train, val = d["stream"], d["val_stream"]
        options = dict(batch_size=6, seq_len=9, reduction="mean", clip=0.05)
    options.update(dict(optimizer="adam", lr=0.01, eval_every=2, eval_batch_size=3), **extra)
    return Trainer(model, train, val, progress=False, distributed=distributed, **options)


def final(trainer):
    return ({k: v.copy() for k, v in trainer.model.params.items()},
            [r["val_loss"] for r in trainer.history])


def main(argv):
    mode, out = argv[0], Path(argv[1])
    distributed = "mpi" if mode == "mpi" else None
    if argv[2:] == ["fail"]:
        def fail(step, trainer):
            last = trainer.distributed.size - 1
            if step == 2 and trainer.distributed.rank == last:
                raise RuntimeError("deliberate failure")
        trainer("stream", distributed, max_steps=50, callback=fail).fit()
        return
    if argv[2:] == ["stop"]:
        from mpi4py import MPI
        on_time = trainer("stream", distributed, time_limit=0.3, eval_every=10 ** 6)
        on_time.fit()
        early = trainer("stream", distributed, max_steps=100, patience=2, eval_every=1, lr=0.5)
        early.fit()
        counts = MPI.COMM_WORLD.gather([(t.step, len(t.history), t.stopped_early)
                                        for t in (on_time, early)], root=0)
        if MPI.COMM_WORLD.rank == 0:
            np.savez(out, counts=np.array(counts))
        return
    results = {}
    # Truncated BPTT: each rank's windows of its share, a mean over the whole batch's tokens.
    t = trainer("sentences", distributed, max_steps=7, bptt_truncate=3, reduction="mean")
    t.fit()
    results["truncated"] = final(t)
    # "+dropout": every layer's masks (input, between the recurrent layers, output) must be
    # one process's, the sentence case with a rank whose share of the last batch is empty.
    for suffix, dropout in (("", 0.0), ("+dropout", 0.3)):
        for case in ("stream", "sentences"):
            t = trainer(case, distributed, dropout=dropout, max_steps=7)
            t.fit()
            results[case + suffix] = final(t)
        # Resumed: 4 steps and a checkpoint, then a new trainer from it to step 7.
        with tempfile.TemporaryDirectory() as tmp:
            path = str(Path(tmp) / "ckpt.npz")
            if distributed:   # every rank reads rank 0's file
                from mpi4py import MPI
                path = MPI.COMM_WORLD.bcast(path, root=0)
            first = trainer("stream", distributed, dropout=dropout, max_steps=4,
                            checkpoint_path=path)
            first.fit()
            resumed = trainer("stream", distributed, dropout=dropout, max_steps=7)
            resumed.load_checkpoint(path)
            resumed.fit()
            results["resumed" + suffix] = final(resumed)
            if distributed:
                MPI.COMM_WORLD.Barrier()   # rank 0 removes the directory after all have read it
    spread = 0.0
    if distributed:   # every rank must hold the same parameters
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
        everyone = comm.gather({c: r[0] for c, r in results.items()}, root=0)
        if comm.rank != 0:
            return
        spread = max(float(np.abs(other[c][k] - everyone[0][c][k]).max())
                     for other in everyone for c in results for k in everyone[0][c])
    arrays = {"spread": np.array(spread)}
    for case, (params, val) in results.items():
        arrays[f"{case}/val"] = np.array(val)
        arrays.update({f"{case}/{k}": v for k, v in params.items()})
    np.savez(out, **arrays)


if __name__ == "__main__":
    main(sys.argv[1:])
