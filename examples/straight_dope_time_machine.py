"""MXNet "straight dope" char RNN on The Time Machine (seed 002), step by step, on fastrnn.

The tutorial chops the Project Gutenberg licence off the end of the book (its last 38,083
characters), maps characters to one-hot vectors, cuts the text into 32 contiguous streams
read in windows of 64 characters (the state carried from window to window, zeroed at each
epoch), and trains a one-hot -> tanh RNN (256) -> softmax model from scratch: every weight
N(0, 0.01²), mean cross-entropy, plain SGD at lr 0.5 halved every 100 epochs, for 2000
epochs. After each epoch it prints a moving average of the loss and two samples at
temperature 0.1 from the prefixes "The Time Ma" and "The Medical Man rose, came to the lamp,".

    python examples/straight_dope_time_machine.py --quick                  # < 60 s
    python examples/straight_dope_time_machine.py ../shared/data/timemachine.txt --time 600

The script ends with the validation loss (on the last 10% of the book, which the tutorial
does not hold out) and with PyTorch trained from the same weights on the same batches.
"""
import argparse
import math
import time

import numpy as np

import fastrnn

from _reference import add_common_options, apply_threads, nats_to_bits, print_side_by_side, side_by_side

LICENCE_CHARS = 38083   # the tutorial's count of Project Gutenberg legalese at the end
PREFIXES = ("The Time Ma", "The Medical Man rose, came to the lamp,")


def make_model(vocab, hidden, seed, dtype=np.float32):
    """one-hot -> tanh RNN (hidden) -> softmax, every weight N(0, 0.01^2)."""
    return fastrnn.LanguageModel(vocab=vocab, one_hot=True, hidden_size=hidden, num_layers=1,
                                 cell="rnn_tanh", init_std=0.01, seed=seed, dtype=dtype)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", nargs="?", help="timemachine.txt (omit with --quick)")
    add_common_options(parser, "training steps (windows of 32 x 64; --quick 150)")
    parser.add_argument("--epochs", type=int, default=2000, help="the tutorial's 2000")
    parser.add_argument("--licence-chars", type=int, default=None,
                        help=f"characters to drop from the end ({LICENCE_CHARS} for the book)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--sample-chars", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    apply_threads(args)
    if args.corpus is None and not args.quick:
        parser.error("give the corpus (timemachine.txt), or --quick")

    # -- the text, without the licence ---------------------------------------------------
    if args.corpus is not None:
        text = fastrnn.load_text(args.corpus)
        drop = LICENCE_CHARS if args.licence_chars is None else args.licence_chars
    else:
        text = fastrnn.SyntheticLanguage(seed=args.seed).generate_text(2000)
        drop = 0 if args.licence_chars is None else args.licence_chars
    print(text[:500])
    if drop:
        print(text[-drop + 8:-drop + 583])   # the tutorial's look at where the licence starts
        text = text[:-drop]
    steps = args.steps or (150 if args.quick else None)
    sample_chars = 200 if args.quick else args.sample_chars
    torch_steps = args.torch_steps or (10 if args.quick else 50)

    # -- characters and their ids ---------------------------------------------------------
    vocab = fastrnn.CharVocab.build(text, unk=None)
    print(vocab.tokens)
    print(f"Length of vocab: {len(vocab)}")
    ids = vocab.encode(text)
    print(len(ids))
    print(ids[:20].tolist())
    print(vocab.decode(ids[:39]))
    train_ids, val_ids = fastrnn.train_val_split(ids, 0.1)

    # -- 32 contiguous streams, windows of 64: check the batching as the tutorial does ----
    seq_len, batch_size = 64, 32
    batcher = fastrnn.StreamBatcher(train_ids, batch_size, seq_len)
    windows = iter(batcher)
    first, second = next(windows), next(windows)
    for b in range(3):
        print(f"***Batch {b}:***\n {vocab.decode(first[0][:, b])}{vocab.decode(second[0][:, b])}")
    print("Seq 0, Batch 0", vocab.decode(first[0][:, 0]))
    print("Seq 1, Batch 0", vocab.decode(second[0][:, 0]))
    print(vocab.decode(first[0][:, 2]))
    print(vocab.decode(first[1][:, 2]), "   <- labels: the inputs moved on by one")
    print(f"{len(batcher)} windows of {batch_size} x {seq_len} per epoch")

    # -- the model, its training and the tutorial's prints -------------------------------
    model = make_model(vocab, args.hidden, args.seed)
    print(f"one-hot -> rnn_tanh {args.hidden} -> softmax, weights N(0, 0.01^2): "
          f"{sum(p.size for p in model.params.values())} parameters; initial validation "
          f"loss {model.evaluate(val_ids):.4f} vs log V = {math.log(len(vocab)):.4f}")
    options = dict(batch_size=batch_size, seq_len=seq_len, optimizer="sgd", lr=0.5, clip=None,
                   schedule="step", lr_decay=0.5, lr_step_epochs=100)

    # The tutorial's prefixes, or (on generated text, which lacks capitals) its first words.
    prefixes = [p for p in PREFIXES if all(vocab.has(c) for c in p)] or [text[:11]]

    def each_epoch(record):
        when = f"Epoch {record['epoch'] - 1}" if record["step"] % len(batcher) == 0 \
            else f"Step {record['step']}"
        print(f"{when}. Loss: {record['train_loss']:.4f} "
              f"(validation {record['val_loss']:.4f}, lr {record['lr']:g})")
        for prefix in prefixes:
            print(f"prefix: {prefix}")
            print(prefix + model.generate(sample_chars, prime=prefix, temperature=0.1,
                                          seed=record["step"])[0])

    trainer = fastrnn.Trainer(model, train_ids, val_ids, max_epochs=args.epochs,
                              max_steps=steps, time_limit=args.time, log=each_epoch,
                              progress=not args.quick, **options)
    started = time.perf_counter()
    history = trainer.fit()
    seconds = time.perf_counter() - started
    final = history[-1]["val_loss"]

    print("\n== PyTorch from the same weights on the same windows")
    rows = side_by_side(lambda dtype: make_model(vocab, args.hidden, args.seed, dtype), train_ids,
                        torch_steps, options)
    worst = print_side_by_side(rows)

    print("\n== summary")
    print(f"validation loss {final:.4f} nats/char ({nats_to_bits(final):.3f} bits/char) after "
          f"{trainer.step} steps, {trainer.batcher.epoch} epochs, {seconds:.0f} s "
          f"({trainer.tokens / max(trainer.train_seconds, 1e-9):,.0f} chars/s); "
          f"log V = {math.log(len(vocab)):.4f}")
    return final, len(vocab), worst


if __name__ == "__main__":
    main()
