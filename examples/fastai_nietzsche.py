"""fast.ai lesson 6 on Nietzsche (seed 001), every model of the lesson, on fastrnn.

The lesson builds, on character ids of a text (with a padding character "\\0" added):
  1. the 3-char model: 3 embedded characters (42) -> hidden 256 -> the 4th character;
  2. the 8-char unrolled RNN: ReLU, identity-initialised hidden-to-hidden weights, the 9th
     character predicted from 8 (Keras's SimpleRNN is "nearly exactly" the same);
  3. the sequence model: the same RNN predicting the next character at each of the 8 steps;
  4. the one-hot sequence model: the same with one-hot inputs instead of an embedding;
  5. a stateful LSTM: windows that continue each other, the state carried between them,
     Adam then lr 1e-4;
  6. the pure-NumPy RNN: one-hot, ReLU, W_h = I, no biases, SGD on one sequence at a time
     with the summed loss, printing the mean error per sequence every 1000 sequences;
  7. a GRU on one-hot inputs.
Each is trained with Adam (lr 1e-3, batch 64) unless said, and tested as the lesson does:
the most likely next character after 'phi', ' th', ' an', 'for thos', 'part of ',
'queens a', and at every position of ' this is' and ' part of'.

    python examples/fastai_nietzsche.py --quick                                  # < 60 s
    python examples/fastai_nietzsche.py nietzsche.txt          # or ../shared/data/tinyshakespeare.txt

It ends with every model's validation loss (last 10% of the windows), against log V, and
with PyTorch trained from the same weights on the same batches (models 3 and 5).

Differences from the lesson, by necessity: the 3- and 8-char Keras models add a ReLU input
projection to a tanh hidden projection ("merge"), which is no standard cell: a ReLU RNN
stands in; fastrnn has no BatchNormalization (the lesson puts one before its stateful LSTM)
and no ReLU GRU (Keras's GRU(activation='relu')): the GRU here is the standard tanh one.
"""
import argparse
import math
import time

import numpy as np

import fastrnn

from _reference import add_common_options, apply_threads, print_side_by_side, side_by_side

N_FAC, N_HIDDEN, BATCH = 42, 256, 64


def windows_of(ids, cs):
    """Non-overlapping windows of cs + 1 ids every cs characters (the lesson's c*_dat)."""
    return [ids[i:i + cs + 1] for i in range(0, len(ids) - cs - 1, cs)]


def split(windows):
    n_val = max(1, len(windows) // 10)
    return windows[:-n_val], windows[-n_val:]


def model_with(vocab, seed, one_hot=False, **kwargs):
    """LanguageModel with the lesson's sizes; one_hot=True feeds one-hot vectors."""
    if one_hot:
        return fastrnn.LanguageModel(vocab=vocab, one_hot=True, num_layers=1, seed=seed, **kwargs)
    return fastrnn.LanguageModel(vocab=vocab, embed_size=N_FAC, num_layers=1, seed=seed,
                                 **kwargs)


def get_next(model, vocab, inp):
    """The most likely next character after ``inp`` (the lesson's get_next)."""
    ids, _ = model.generate_ids(vocab.encode(inp), 1, greedy=True)
    return vocab.id_to_token(int(ids[0, 0]))


def get_nexts(model, vocab, inp):
    """The most likely next character at every position of ``inp`` (get_nexts)."""
    model.eval()
    logits, _ = model.logits(vocab.encode(inp)[:, None])
    model.train()
    print(list(inp))
    return [vocab.id_to_token(int(i)) for i in np.asarray(logits)[:, 0].argmax(axis=1)]


def describe(model, name):
    sizes = {k: v.size for k, v in model.params.items()}
    print(f"\n== {name}: {model.cell.name}, {sum(sizes.values()):,} parameters "
          + ", ".join(f"{k} {v:,}" for k, v in sizes.items()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", nargs="?", help="nietzsche.txt or any text (omit with --quick)")
    add_common_options(parser, "cap on the training steps of each model (default: the "
                               "lesson's epochs; --quick 80)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    apply_threads(args)
    if args.corpus is None and not args.quick:
        parser.error("give the corpus (nietzsche.txt or another text), or --quick")
    steps_cap = args.steps or (80 if args.quick else None)
    torch_steps = args.torch_steps or (10 if args.quick else 50)

    # -- setup: the text, the characters and the padding character -----------------------
    text = fastrnn.load_text(args.corpus) if args.corpus else \
        fastrnn.SyntheticLanguage(seed=args.seed).generate_text(1500)
    print("corpus length:", len(text))
    vocab = fastrnn.CharVocab.build(text, unk=None, specials=("\0",))
    print("total chars", len(vocab))
    ids = vocab.encode(text)
    print(ids[:10].tolist())
    print(repr(vocab.decode(ids[:70])))
    log_v = math.log(len(vocab))
    results = {}

    def steps_for(windows, epochs):
        steps = epochs * math.ceil(len(windows) / BATCH)
        return min(steps, steps_cap) if steps_cap else steps

    def sequence_to_one(model, train, val, epochs):
        """Keras's model.fit on windows, the loss on each one's last character (no
        return_sequences); returns the validation loss by the same rule."""
        trainer = fastrnn.Trainer(model, train, val, batch_size=BATCH, optimizer="adam",
                                  lr=1e-3, clip=None, loss_on="last",
                                  max_steps=steps_for(train, epochs), time_limit=args.time,
                                  progress=False)
        return trainer.fit()[-1]["val_loss"]

    # -- 1. the 3-char model -------------------------------------------------------------
    train3, val3 = split(windows_of(ids, 3))
    print(f"3-char windows: {len(train3) + len(val3)}; first inputs {[w[:3].tolist() for w in train3[:4]]}, "
          f"targets {[int(w[3]) for w in train3[:4]]}")
    model = model_with(vocab, args.seed, hidden_size=N_HIDDEN, cell="rnn_relu")
    describe(model, "3-char model")
    # The lesson's lr changes (1e-6, 0.01, 1e-6, 0.01 over 4 x 4 epochs) are mostly typos
    # that leave Keras's lr at 1e-3 ("model.optimizer.lr = ..." sets a Python attribute);
    # 16 epochs at 1e-3 is what it ran.
    results["3-char"] = sequence_to_one(model, train3, val3, 16)
    for inp in ("phi", " th", " an"):
        print(f"get_next({inp!r}) = {get_next(model, vocab, inp)!r}")

    # -- 2. the 8-char RNN, sequence to one (and Keras's SimpleRNN, the same model) -------
    train8, val8 = split(windows_of(ids, 8))
    print(f"\n8-char windows: {len(train8) + len(val8)}; the first: "
          f"{vocab.decode(train8[0][:8])!r} -> {vocab.decode(train8[0][8:])!r}")
    model = model_with(vocab, args.seed, hidden_size=N_HIDDEN, cell="rnn_relu",
                       recurrent_init="identity")
    describe(model, "8-char RNN, identity-initialised ReLU (Keras: 3,612 + 76,544 + 22,102; "
             "fastrnn has two bias vectors)")
    results["8-char RNN"] = sequence_to_one(model, train8, val8, 12)
    for inp in ("for thos", "part of ", "queens a"):
        print(f"get_next({inp!r}) = {get_next(model, vocab, inp)!r}")

    # -- 3. returning sequences: the next character at each of the 8 steps --------------
    def sequence_options(epochs):
        return dict(batch_size=BATCH, optimizer="adam", lr=1e-3, clip=None,
                    max_steps=steps_for(train8, epochs), time_limit=args.time, progress=False)

    def sequence_model(dtype=np.float32):
        return model_with(vocab, args.seed, hidden_size=N_HIDDEN, cell="rnn_relu",
                          recurrent_init="identity", dtype=dtype)

    model = sequence_model()
    describe(model, "sequence model (return_sequences)")
    trainer = fastrnn.Trainer(model, train8, val8, **sequence_options(8))
    results["sequence RNN"] = trainer.fit()[-1]["val_loss"]
    for inp in (" this is", " part of"):
        print(get_nexts(model, vocab, inp))
    print("\n-- PyTorch from the same weights on the same batches")
    compared = print_side_by_side(side_by_side(
        sequence_model, train8, torch_steps,
        dict(sequence_options(8), max_steps=torch_steps, time_limit=None)))

    # -- 4. one-hot inputs ----------------------------------------------------------------
    model = model_with(vocab, args.seed, one_hot=True, hidden_size=N_HIDDEN, cell="rnn_relu",
                       recurrent_init="identity")
    describe(model, "one-hot sequence model")
    trainer = fastrnn.Trainer(model, train8, val8, **sequence_options(8))
    results["one-hot RNN"] = trainer.fit()[-1]["val_loss"]
    print(get_nexts(model, vocab, " this is"))

    # -- 5. stateful LSTM: windows continue each other, state carried ---------------------
    train_ids, val_ids = fastrnn.train_val_split(ids, 0.1)

    def stateful_model(dtype=np.float32):
        return model_with(vocab, args.seed, hidden_size=N_HIDDEN, cell="lstm", dtype=dtype)

    stateful = dict(batch_size=BATCH, seq_len=8, optimizer="adam", lr=1e-3, clip=None,
                    progress=False)
    model = stateful_model()
    describe(model, "stateful LSTM (no BatchNormalization in fastrnn)")
    per_epoch = len(fastrnn.StreamBatcher(train_ids, BATCH, 8))
    first = min(4 * per_epoch, steps_cap // 2) if steps_cap else 4 * per_epoch
    trainer = fastrnn.Trainer(model, train_ids, val_ids, max_steps=first, **stateful)
    print(f"after 4 epochs at lr 1e-3: {trainer.fit()[-1]['val_loss']:.4f}")
    trainer.optimizer.lr = 1e-4          # the lesson's "model.optimizer.lr = 1e-4", then
    trainer.max_steps = 2 * first        # fit again: raise the limit and call fit()
    results["stateful LSTM"] = trainer.fit()[-1]["val_loss"]
    print(f"after 4 more at lr 1e-4: {results['stateful LSTM']:.4f}")
    print("\n-- PyTorch from the same weights on the same windows")
    compared = max(compared or 0.0, print_side_by_side(side_by_side(
        stateful_model, train_ids, torch_steps, dict(stateful))) or 0.0)

    # -- 6. the pure-NumPy RNN: one sequence at a time, summed loss, SGD ------------------
    model = model_with(vocab, args.seed, one_hot=True, hidden_size=N_HIDDEN, cell="rnn_relu",
                       recurrent_init="identity", init_std=math.sqrt(2.0 / len(vocab)))
    describe(model, "NumPy RNN (one-hot, ReLU, W_h = I, SGD on single sequences)")
    n_sequences = min(10000, len(train8)) if not args.quick else 2000

    def error(record):
        if record["step"] % 1000 == 0:
            # train_loss is the mean loss per character of the last 50 sequences; the lesson
            # prints the summed loss per 8-character sequence.
            print(f"Error:{8 * record['train_loss']:.4f}")

    trainer = fastrnn.Trainer(model, train8, val8, batch_size=1, shuffle=False, optimizer="sgd",
                              lr=1e-5 if not args.quick else 1e-3, reduction="sum", clip=None,
                              max_steps=n_sequences, eval_every=1000, log=error, progress=False)
    results["NumPy RNN"] = trainer.fit()[-1]["val_loss"]

    # -- 7. GRU on one-hot inputs ---------------------------------------------------------
    model = model_with(vocab, args.seed, one_hot=True, hidden_size=N_HIDDEN, cell="gru")
    describe(model, "one-hot GRU (tanh; the lesson's Keras GRU uses ReLU)")
    trainer = fastrnn.Trainer(model, train8, val8, **sequence_options(8))
    results["one-hot GRU"] = trainer.fit()[-1]["val_loss"]
    print(get_nexts(model, vocab, " this is"))

    print(f"\n== summary: validation loss, nats per predicted character (log V = {log_v:.4f})")
    for name, loss in results.items():
        print(f"{name:>14}: {loss:.4f}")
    if compared is not None:
        print(f"PyTorch at equal steps: largest difference {compared:.2e} nats/char")
    return results, log_v, compared


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"({time.perf_counter() - started:.0f} s)")
