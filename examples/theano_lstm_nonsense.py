"""theano_lstm's "nonsense language" notebook (seed 000), step by step, on fastrnn.

The notebook samples 100 sentences from a hand-written grammar, builds a vocabulary with an
unknown word, pads the sentences into one matrix with their lengths, and trains an
embedding (10) -> RNN or LSTM (10) -> softmax model on the summed, masked loss with Adadelta
(rho 0.95, eps 1e-6, each parameter's gradient clipped to norm 5), one full batch per
epoch, printing the error every 100 epochs and a greedy continuation of "the" (until ".")
every 500. Its RNN is theano_lstm's default, a linear recurrent cell.

Here the grammar is the notebook's own, written down as ``fastrnn.lm.text.THEANO_LSTM_GRAMMAR``,
which knows its exact entropy: the script ends with each model's held-out loss against that
floor, and with PyTorch trained from the same weights on the same batches (the LSTM; PyTorch
has no linear RNN).

    python examples/theano_lstm_nonsense.py --quick        # < 60 s
    python examples/theano_lstm_nonsense.py                # the notebook's 10,000 epochs
    python examples/theano_lstm_nonsense.py --sentences 5000 --batch-size 100 --steps 5000

The notebook's 100 sentences are memorised long before 10,000 epochs (the training loss
falls below the entropy, the held-out loss rises far above it); the second command trains
on enough sentences to approach the entropy.

As in the notebook, a sentence's first word is given and every later word (the final "."
included) is predicted, so the floor is the grammar's entropy per predicted token with the
first word given, ``entropy_per_token(predict_first=False)`` = 2.3580 nats (2.3185 if the
first word were predicted too, from a begin-of-sentence token). One change: the vocabulary
lists every word of the language, not only those of the 100 training sentences, so that no
held-out word becomes the unknown word (which would merge rare words and let the held-out
loss dip below the entropy).
"""
import argparse
import math
import time

import numpy as np

import fastrnn
from fastrnn.lm.text import THEANO_LSTM_GRAMMAR

from _reference import add_common_options, apply_threads, print_side_by_side, side_by_side

UNKNOWN = "**UNKNOWN**"


def make_model(vocab, cell, seed, dtype=np.float32):
    """embedding 10 -> ``cell`` 10 -> softmax (the notebook's sizes)."""
    return fastrnn.LanguageModel(vocab=vocab, embed_size=10, hidden_size=10, num_layers=1,
                                 cell=cell, seed=seed, dtype=dtype)


def trainer_options(n_sentences, epochs):
    """The notebook's training: full batch, summed loss, Adadelta, per-parameter clip 5."""
    return dict(batch_size=n_sentences, shuffle=False, optimizer="adadelta", lr=1.0,
                optimizer_options={"rho": 0.95, "eps": 1e-6}, clip=5.0, clip_mode="param_norm",
                reduction="sum", max_steps=epochs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_options(parser, "epochs (full-batch steps) per model (default 10000; --quick 400)")
    parser.add_argument("--sentences", type=int, default=100, help="training sentences (100)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="sentences per step (default: all of them, the notebook's full batch)")
    parser.add_argument("--cells", default="rnn_identity,lstm",
                        help="model variants, comma-separated (the notebook's RNN and LSTM)")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    apply_threads(args)
    epochs = args.steps or (400 if args.quick else 10000)
    torch_steps = args.torch_steps or (20 if args.quick else 100)

    # -- data: sentences from the grammar, as the notebook's generate_dataset(100) --------
    language = fastrnn.SyntheticLanguage(seed=args.seed, grammar=THEANO_LSTM_GRAMMAR)
    train_tokens = language.sample_sentences(args.sentences, rng=args.seed)
    heldout_tokens = language.sample_sentences(2000, rng=args.seed + 1)
    print(f"{len(train_tokens)} training sentences, e.g.: {' '.join(train_tokens[0])}")

    # -- vocabulary with an unknown word (id 0), as the notebook's Vocab -----------------
    seen = list(dict.fromkeys(t for sentence in train_tokens for t in sentence))
    unseen = sorted(set(language.word_types()) - set(seen))
    vocab = fastrnn.WordVocab([UNKNOWN] + seen + unseen, unk=UNKNOWN)
    print(f"vocabulary: {len(vocab)} tokens (unknown word {UNKNOWN!r} = id {vocab.unk_id}; "
          f"{len(seen)} seen in training, {len(unseen)} more words of the language)")
    train = [vocab.encode_tokens(s) for s in train_tokens]
    heldout = [vocab.encode_tokens(s) for s in heldout_tokens]
    lengths = [len(s) for s in train]
    print(f"padded matrix: {len(train)} x {max(lengths)} (lengths {min(lengths)}..{max(lengths)})")
    # The first word is given (never predicted), as in the notebook and in sentence batches.
    entropy = THEANO_LSTM_GRAMMAR.entropy_per_token(predict_first=False)
    print(f"exact entropy of the grammar, first word given (as the notebook trains; "
          f"entropy_per_token(predict_first=False)): {entropy:.4f} nats/token "
          f"[every word predicted: {THEANO_LSTM_GRAMMAR.entropy_per_token():.4f}]; "
          f"log V = {math.log(len(vocab)):.4f}")

    results = {}
    n_train_tokens = sum(len(s) - 1 for s in train)
    for cell in args.cells.split(","):
        model = make_model(vocab, cell, args.seed)
        print(f"\n== {model.cell.name}: embedding 10 -> {model.cell.name} 10 -> softmax "
              f"({sum(p.size for p in model.params.values())} parameters)")
        stop_id = vocab.token_to_id(".")
        prime = [vocab.token_to_id("the")]

        def report(step, trainer):
            # The notebook prints the summed training error every 100 epochs and a greedy
            # continuation of "the" every 500.
            if step % 100 == 0 or step == 1:
                error = trainer.model.evaluate(train) * n_train_tokens
                print(f"epoch {step}, error={error:.2f}")
            if step % 500 == 0 or step == 1:
                ids, n = trainer.model.generate_ids(prime, 30, greedy=True, stop_id=stop_id)
                print("   the " + " ".join(vocab.id_to_token(i) for i in ids[0][:n[0]]))

        options = trainer_options(args.batch_size or len(train), epochs)
        if args.time:
            options["time_limit"] = args.time
        trainer = fastrnn.Trainer(model, train, val_ids=heldout, eval_every=epochs,
                                  progress=False, callback=report, **options)
        started = time.perf_counter()
        trainer.fit()
        seconds = time.perf_counter() - started
        loss, fit = model.evaluate(heldout), model.evaluate(train)
        results[model.cell.name] = (loss, fit, trainer.step, seconds)
        print(f"{model.cell.name}: held-out {loss:.4f} nats/token after {trainer.step} steps "
              f"({seconds:.1f} s); exact entropy {entropy:.4f}; gap {loss - entropy:+.4f}")

        rows = side_by_side(lambda dtype: make_model(vocab, cell, args.seed, dtype), train, torch_steps,
                            trainer_options(args.batch_size or len(train), torch_steps))
        print_side_by_side(rows)

    print("\n== summary: loss against the grammar's exact entropy (nats/token; a training "
          "loss below the entropy means the sentences were memorised)")
    for name, (loss, fit, steps, seconds) in results.items():
        print(f"{name:>12}: held-out {loss:.4f}, training {fit:.4f}, entropy {entropy:.4f}, "
              f"gap {loss - entropy:+.4f} ({steps} steps, {seconds:.1f} s)")
    return results, entropy


if __name__ == "__main__":
    main()
