"""The reddit-comment RNN/LSTM blog with its TFLearn char LSTM (seed 003), on fastrnn.

The blog splits reddit comments into sentences, wraps each in SENTENCE_START ... SENTENCE_END,
keeps the 4000 most frequent words (the rest become UNKNOWN_TOKEN), and then:
  1. a vanilla tanh RNN (hidden 10, truncated BPTT): checks that the untrained model's loss
     is log V, prints its most likely word at each step of a sentence, and trains on 1000
     random sentences with SGD (lr 0.005, one sentence per step, summed loss), halving the
     lr whenever the loss rises; it generates sentences from SENTENCE_START until
     SENTENCE_END, never UNKNOWN_TOKEN, at least 10 words long;
  2. an LSTM (hidden 20), the same check, 2 epochs on 100 sentences, 2 sentences;
  3. TFLearn's char LSTM: semi-redundant 20-character windows every 2 characters, one-hot
     input -> LSTM 128 -> dropout -> LSTM 512 -> dropout -> softmax of the 21st character
     (sequence to one), Adam 1e-3, batch 512, gradients clipped at 5, 10% validation; after
     each epoch it samples 600 characters at temperatures 0.8 and 0.3 from a random seed
     of the text.

    python examples/wildml_reddit_rnn.py --quick                              # < 60 s
    python examples/wildml_reddit_rnn.py reddit-comments-2015-08.csv        # or any text file

It ends with the initial losses against log V, each model's loss, and PyTorch trained from
the same weights on the same batches (the char LSTM without dropout, whose masks differ).
"""
import argparse
import csv
import math
import time

import numpy as np

import fastrnn
from fastrnn.lm.text import split_sentences, text_to_sentences

from _reference import add_common_options, apply_threads, print_side_by_side, side_by_side

START, END, UNKNOWN = "SENTENCE_START", "SENTENCE_END", "UNKNOWN_TOKEN"


def read_comments(path):
    """The text of a reddit CSV's ``body`` column (one paragraph per comment, so that no
    sentence runs from one comment into the next), or of a plain text file."""
    if str(path).endswith(".csv"):
        with open(path, newline="", encoding="utf-8") as f:
            return "\n\n".join(row["body"] for row in csv.DictReader(f))
    return fastrnn.load_text(path)


def generate_sentences(model, vocab, n, min_length, seed):
    """Sentences from SENTENCE_START until SENTENCE_END, never UNKNOWN_TOKEN, at least
    ``min_length`` words (the blog's generate_sentence/generate)."""
    tokens, lengths = model.generate_ids([vocab.bos_id], 100, num_samples=n, stop_id=vocab.eos_id,
                                         banned_ids=(vocab.unk_id,), min_length=min_length,
                                         seed=seed)
    for row, n_ids in zip(tokens, lengths):
        words = [vocab.id_to_token(i) for i in row[:n_ids] if i != vocab.eos_id]
        print(" ".join(words))


def predict(model, vocab, sentence):
    """The most likely next word at each step (the blog's predict)."""
    model.eval()
    logits, _ = model.logits(sentence[:, None])
    model.train()
    print("Preds at each time step:\n",
          " ".join(vocab.id_to_token(int(i)) for i in np.asarray(logits)[:, 0].argmax(axis=1)))


def initial_loss_check(model, vocab, ids, n_sentences, log_v):
    """The blog's sanity check before training: next-word predictions for one sentence, and
    the loss on the first sentences against log V (the loss of uniform predictions)."""
    predict(model, vocab, ids[10 % len(ids)])
    initial = model.evaluate(ids[:n_sentences])
    print(f"Expected Loss for random predictions: {log_v:f}")
    print(f"Actual loss: {initial:f}")
    return initial


def word_model(vocab, cell, hidden, seed):
    return fastrnn.LanguageModel(vocab=vocab, embed_size=hidden, hidden_size=hidden,
                                 num_layers=1, cell=cell, seed=seed)


def train_with_sgd(model, sentences, epochs, bptt_truncate, lr=0.005):
    """The blog's train_with_sgd: one sentence per step, summed loss, SGD, the loss on the
    training sentences after every epoch and the lr halved when it rises."""
    print(f"Loss after num_examples_seen=0 epoch=0: {model.evaluate(sentences):f}")

    def after_epoch(record):
        print(f"Loss after num_examples_seen={record['step']} epoch={record['epoch']}: "
              f"{record['val_loss']:f} (lr {record['lr']:g})")

    options = dict(batch_size=1, shuffle=True, optimizer="sgd", lr=lr, reduction="sum",
                   clip=None, schedule="plateau", lr_decay=0.5, max_epochs=epochs,
                   eval_every=len(sentences), log=after_epoch, progress=False, seed=10)
    trainer = fastrnn.Trainer(model, sentences, sentences, bptt_truncate=bptt_truncate, **options)
    trainer.fit()
    return trainer.history[-1]["val_loss"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", nargs="?", help="reddit CSV (column 'body') or a text file")
    add_common_options(parser, "cap on the char LSTM's steps (default: 10 epochs; --quick 30)")
    parser.add_argument("--vocabulary-size", type=int, default=4000)
    parser.add_argument("--bptt-truncate", type=int, default=512,
                        help="the blog trains its RNN with 512 (4 for its first check)")
    parser.add_argument("--seed", type=int, default=10)
    args = parser.parse_args(argv)
    apply_threads(args)
    if args.corpus is None and not args.quick:
        parser.error("give the corpus (a reddit CSV or a text file), or --quick")
    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)

    # -- data preprocessing: sentences, a 4000-word vocabulary, start/end tokens ----------
    # Generated text: one sentence per paragraph (it has no capitals to find sentences by).
    text = read_comments(args.corpus) if args.corpus else \
        fastrnn.SyntheticLanguage(seed=args.seed).generate_text(3000).replace("\n", "\n\n")
    sentences = text_to_sentences(text)
    print(f"Parsed {len(sentences)} sentences.")
    lines = "\n".join(sentences) + "\n"
    found = fastrnn.WordVocab.build(lines, max_size=None, unk=None, lowercase=True)
    print(f"Found {len(found)} unique words tokens.")
    vocab = fastrnn.WordVocab.build(lines, max_size=args.vocabulary_size, unk=UNKNOWN, bos=START,
                                    eos=END, lowercase=True)
    print(f"Using vocabulary size {len(vocab)}.")
    least = vocab.tokens[-1]
    print(f"Least frequent word in vocab: {least!r}, which appeared {vocab.counts[least]} times.")
    ids = split_sentences(vocab.encode(lines), vocab.eos_id, vocab.bos_id)
    print(f"Example sentence: '{START} {sentences[0]} {END}'")
    print(f"Example sentence after Pre-processing: {[vocab.id_to_token(i) for i in ids[0]]}")
    log_v = math.log(len(vocab))
    figures = {}

    # -- 1. vanilla RNN: the log V check, predictions, training, generation --------------
    rnn = word_model(vocab, "rnn_tanh", 10, args.seed)
    figures["RNN initial"] = initial_loss_check(rnn, vocab, ids, 100, log_v)
    subset = [ids[i] for i in rng.integers(0, len(ids), size=1000 if not args.quick else 300)]
    figures["RNN trained"] = train_with_sgd(rnn, subset, epochs=10 if not args.quick else 2,
                                            bptt_truncate=args.bptt_truncate)
    generate_sentences(rnn, vocab, 10, min_length=10, seed=args.seed)

    # -- 2. LSTM: the same check, 2 epochs on 100 sentences -------------------------------
    lstm = word_model(vocab, "lstm", 20, args.seed)
    figures["LSTM initial"] = initial_loss_check(lstm, vocab, ids, 1000, log_v)
    subset = [ids[i] for i in rng.integers(0, len(ids), size=100)]
    figures["LSTM trained"] = train_with_sgd(lstm, subset, epochs=2, bptt_truncate=1000)
    generate_sentences(lstm, vocab, 2, min_length=3, seed=args.seed)

    # -- 3. TFLearn: char LSTM 128 -> 512, sequence to one --------------------------------
    maxlen = 20
    char_text = text[:30000] if args.quick else text
    chars = fastrnn.CharVocab.build(char_text, unk=None)
    char_ids = chars.encode(char_text)
    windows = [char_ids[i:i + maxlen + 1] for i in range(0, len(char_ids) - maxlen, 2)]
    order = rng.permutation(len(windows))
    n_val = len(windows) // 10
    val = [windows[i] for i in order[:min(n_val, 500) if args.quick else n_val]]
    train = [windows[i] for i in order[n_val:]]
    print(f"\n{len(windows)} semi-redundant sequences of {maxlen} characters, {len(chars)} characters")

    def char_lstm(dropout, dtype=np.float32):
        return fastrnn.LanguageModel(vocab=chars, one_hot=True, hidden_size=[128, 512],
                                     cell="lstm", dropout=dropout, seed=args.seed, dtype=dtype)

    model = char_lstm(0.4)   # TFLearn's dropout(0.6) keeps 60%
    batch_size = 64 if args.quick else 512   # 512 x 20 steps of LSTM 512 is ~80 GFLOP a step
    per_epoch = math.ceil(len(train) / batch_size)
    epochs = 10
    # Sequence to one: the loss on each window's last character only (TFLearn's model has
    # no return_seq); validation (10% of the windows) by the same rule.
    char_options = dict(batch_size=batch_size, optimizer="adam", lr=1e-3, clip=5.0,
                        loss_on="last")
    sample_rng = np.random.default_rng(args.seed)

    def after_epoch(record):
        # TFLearn's per-epoch report, then 600 characters at temperatures 0.8 and 0.3
        # from a random 20-character seed of the text.
        epoch = record["epoch"] if record["step"] % per_epoch == 0 else record["epoch"] + 1
        print(f"Training Step: {record['step']} | total loss: {record['train_loss']:.5f} | "
              f"val_loss: {record['val_loss']:.5f}\n| Adam | epoch: {epoch:03d}")
        start = int(sample_rng.integers(0, len(char_ids) - maxlen))
        seed_text = chars.decode(char_ids[start:start + maxlen])
        print("-- TESTING...")
        for temperature in (0.8, 0.3):
            print(f"-- Test with temperature of {temperature} --")
            print(seed_text + model.generate(600 if not args.quick else 120, prime=seed_text,
                                             temperature=temperature, seed=record["step"])[0])

    trainer = fastrnn.Trainer(model, train, val, max_epochs=epochs,
                              max_steps=args.steps or (15 if args.quick else None),
                              time_limit=args.time, eval_every=per_epoch, log=after_epoch,
                              progress=False, seed=args.seed, **char_options)
    char_started = time.perf_counter()
    figures["char LSTM validation"] = trainer.fit()[-1]["val_loss"]
    print(f"char LSTM: {trainer.step} steps ({trainer.batcher.epoch} epochs, "
          f"{time.perf_counter() - char_started:.0f} s)")

    print("\n-- PyTorch from the same weights on the same batches (no dropout)")
    compared = print_side_by_side(side_by_side(
        lambda dtype: char_lstm(0.0, dtype), train, args.torch_steps or (5 if args.quick else 30),
        dict(char_options, seed=1)))

    print(f"\n== summary (log V = {log_v:.4f} for {len(vocab)} words; "
          f"{time.perf_counter() - started:.0f} s)")
    for name, value in figures.items():
        print(f"{name:>22}: {value:.4f} nats")
    print(f"{'initial - log V':>22}: RNN {figures['RNN initial'] - log_v:+.4f}, "
          f"LSTM {figures['LSTM initial'] - log_v:+.4f} (the blog: +0.0006, +0.00001)")
    if compared is not None:
        print(f"PyTorch at equal steps: largest difference {compared:.2e} nats/char")
    return figures, log_v, compared


if __name__ == "__main__":
    main()
