"""What bfloat16 weights (generate(..., weights="bfloat16")) cost in accuracy and gain in
speed, for a trained language model:

    python benchmarks/bf16_generation.py MODEL.npz TEXT --threads 2

* logits: the model's logits on the last 10 % of TEXT with float32 weights and with every
  recurrent and output weight rounded to bfloat16 (what the bfloat16 loop multiplies by):
  the largest and mean absolute difference, and the validation loss of each;
* sampled text: ``--samples`` samples of ``--length`` tokens with the same seeds, float32 and
  bfloat16: how many are identical, and the mean length of their common prefix;
* speed: batch-1 generation of 500 tokens, best of ``--repeat``, both ways.
"""
import argparse
import time

import numpy as np


def to_bf16(a):
    """a rounded to bfloat16 (nearest, ties to even), as float32 values."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    return u.view(np.float32)


def _rounded_copy(model):
    """A copy of ``model`` whose recurrent weights and output weight are rounded to bfloat16
    (the embedding and the biases are not: the bfloat16 loop keeps them in float32)."""
    import copy
    rounded = copy.deepcopy(model)
    state = {k: (to_bf16(v) if ("weight_hh" in k or "weight_ih" in k or k.endswith("output.weight"))
                 else v) for k, v in model.state_dict().items()}
    rounded.load_state_dict(state)
    return rounded


def measure(model, text_ids, samples=20, length=200, repeat=5, seed=0):
    """A dict of the figures described in the module docstring."""
    import fastrnn
    held_out = text_ids[int(0.9 * len(text_ids)):]
    rounded = _rounded_copy(model)
    probe = held_out[:4097]
    model.eval()
    rounded.eval()
    logits32 = model.logits(probe[None, :-1].T)[0]
    logits16 = rounded.logits(probe[None, :-1].T)[0]
    diff = np.abs(np.asarray(logits32, np.float64) - np.asarray(logits16, np.float64))
    result = dict(logit_max_abs=float(diff.max()), logit_mean_abs=float(diff.mean()),
                  logit_std=float(np.asarray(logits32).std()))
    result.update(val_loss_float32=float(model.evaluate(held_out)),
                  val_loss_bfloat16=float(rounded.evaluate(held_out)))
    prime = held_out[:1]
    same, prefix = 0, []
    for s in range(samples):
        a = model.generate_ids(prime, length, seed=seed + s)[0][0]
        b = model.generate_ids(prime, length, seed=seed + s, weights="bfloat16")[0][0]
        differ = np.nonzero(a != b)[0]
        same += differ.size == 0
        prefix.append(length if differ.size == 0 else int(differ[0]))
    result.update(samples=samples, identical_samples=same, mean_common_prefix=float(np.mean(prefix)))
    for weights in ("float32", "bfloat16"):
        best = np.inf
        for _ in range(repeat):
            started = time.perf_counter()
            model.generate_ids(prime, 500, seed=seed, weights=weights)
            best = min(best, time.perf_counter() - started)
        result[f"us_per_token_{weights}"] = best / 500 * 1e6
    result["threads"] = fastrnn.get_num_threads()
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("text")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--length", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    import fastrnn
    from fastrnn.lm.model import LanguageModel
    fastrnn.set_num_threads(args.threads)
    model = LanguageModel.load(args.model)
    with open(args.text, encoding="utf-8") as f:
        ids = model.vocab.encode(f.read())
    for key, value in measure(model, ids, args.samples, args.length, args.repeat).items():
        print(f"{key:24s} {value:.6g}" if isinstance(value, float) else f"{key:24s} {value}")


if __name__ == "__main__":
    main()
