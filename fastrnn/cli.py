"""The ``fastrnn`` command: demo, train, sample, eval, info, bench.

Mistakes a user can make (missing or unreadable files, bad options, foreign or corrupt model
files, a prime the vocabulary cannot encode, ``--device cuda`` without CuPy or a GPU) end with
one line on stderr and exit code 2.
Set FASTRNN_DEBUG=1 to see the traceback instead.
"""
import argparse
import math
import os
import sys
import time

import numpy as np

from ._gpu import GPUUnavailableError   # does not import CuPy

EXIT_USER_ERROR = 2
# Errors the library raises for bad input, with messages meant for the user. Of the
# RuntimeErrors, only the "no CuPy / no GPU" one is the user's to fix: others are bugs and
# keep their traceback.
USER_ERRORS = (FileNotFoundError, IsADirectoryError, PermissionError, ValueError, KeyError,
               GPUUnavailableError)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (and exit code 2)."""

    def error(self, message):
        raise _UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


class _UsageError(Exception):
    pass


def _positive_float(text):
    value = float(text)
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _fraction(text):
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


# ---- shared helpers -----------------------------------------------------------------------

def _check_device(args):
    """Fail fast, before any file is read, when --device cuda cannot be served."""
    if args.device != "cpu":
        from ._gpu import require_gpu
        require_gpu()


def _set_threads(args):
    if getattr(args, "threads", None):
        from .threads import set_num_threads
        set_num_threads(args.threads)


def _print_record(record, entropy=None):
    line = (f"step {record['step']:>6}  {record['train_seconds']:7.1f}s  "
            f"{record['tokens_per_second']:>9,.0f} tok/s  train {record['train_loss']:.4f}")
    if "val_loss" in record:
        line += (f"  val {record['val_loss']:.4f} nats ({record['val_bits_per_token']:.3f} bits, "
                 f"ppl {record['val_perplexity']:.2f})")
        if entropy is not None:
            line += f"  gap {record['val_loss'] - entropy:+.4f}"
    print(line, flush=True)


def _split_text(text, val_fraction):
    """Cut text into (train, val) at a line break near ``1 - val_fraction`` of its length."""
    if val_fraction == 0:
        return text, None
    cut = int(len(text) * (1 - val_fraction))
    newline = text.rfind("\n", 0, cut)
    if newline > len(text) // 2:
        cut = newline + 1
    train, val = text[:cut], text[cut:]
    if not val.strip() or not train.strip():
        raise ValueError(f"text is too short to split off a validation part of {val_fraction}")
    return train, val


def _build_vocab(text, level, max_vocab, min_count, lowercase):
    from .text import CharVocab, WordVocab
    if level == "char":
        return CharVocab.build(text, max_size=max_vocab, min_count=min_count)
    return WordVocab.build(text, max_size=max_vocab or 10000, min_count=min_count,
                           lowercase=lowercase)


# ---- commands -----------------------------------------------------------------------------

def cmd_demo(args):
    """Learn the built-in synthetic language and compare the loss with its true entropy."""
    from .lm import LanguageModel
    from .text import SyntheticLanguage, WordVocab
    from .train import Trainer

    _check_device(args)
    _set_threads(args)
    language = SyntheticLanguage(seed=args.seed)
    entropy = language.entropy_per_token()
    train_text = language.generate_text(args.sentences, seed=args.seed + 1)
    val_text = language.generate_text(max(args.sentences // 10, 100), seed=args.seed + 2)
    vocab = WordVocab.build(train_text)
    train_ids, val_ids = vocab.encode(train_text), vocab.encode(val_text)
    model = LanguageModel(vocab=vocab, embed_size=32, hidden_size=args.hidden, num_layers=1,
                          cell=args.cell, seed=args.seed, device=args.device)
    print(f"fastrnn demo: a {len(vocab)}-word synthetic language ({len(train_ids):,} training "
          f"tokens, {len(val_ids):,} validation tokens).")
    print(f"Its true entropy is {entropy:.4f} nats/token: no model can score lower.")
    print(f"Model: {model!r}; Adam, batch {args.batch} x {args.seq_len} steps, "
          f"{args.time_limit:g} s of training.\n", flush=True)
    trainer = Trainer(model, train_ids, val_ids, batch_size=args.batch, seq_len=args.seq_len,
                      lr=args.lr, schedule="plateau", eval_every=args.eval_every,
                      time_limit=args.time_limit, progress=False,
                      log=lambda r: _print_record(r, entropy))
    trainer.fit()
    final = trainer.history[-1]["val_loss"]
    print(f"\nValidation loss {final:.4f} nats/token vs entropy {entropy:.4f}: "
          f"gap {final - entropy:.4f} nats/token.")
    print("\nSamples (temperature 1):")
    for sentence in model.generate(60, num_samples=5, stop=vocab.eos, seed=args.seed):
        print("  " + sentence.replace(f" {vocab.eos}", "").strip())
    return 0


def cmd_train(args):
    from .lm import LanguageModel
    from .text import load_text
    from .train import Trainer

    _check_device(args)
    _set_threads(args)
    text = load_text(args.file)
    resume_state = None
    if args.resume:
        # The device is not a saved setting: a run may resume on another device.
        model, extra = LanguageModel.load(args.resume, with_extra=True, device=args.device)
        if not extra or "trainer" not in extra:
            raise ValueError(f"{args.resume} holds a model but no training state to resume from")
        resume_state = extra["trainer"]
        vocab = model.vocab
        settings = resume_state["settings"]
        for key, value in settings.items():
            setattr(args, key, value)
        train_text, val_text = _split_text(text, args.val_fraction)
    else:
        train_text, val_text = _split_text(text, args.val_fraction)
        vocab = _build_vocab(train_text, args.level, args.max_vocab, args.min_count, args.lowercase)
        model = LanguageModel(vocab=vocab, embed_size=args.embed, hidden_size=args.hidden,
                              num_layers=args.layers, cell=args.cell, dropout=args.dropout,
                              tie_weights=args.tie_weights, seed=args.seed,
                              dtype=np.float64 if args.dtype == "float64" else np.float32,
                              device=args.device)
    train_ids = vocab.encode(train_text)
    val_ids = None if val_text is None else vocab.encode(val_text)
    unit = "char" if args.level == "char" else "word"
    print(f"{args.file}: {len(train_ids):,} training and "
          f"{0 if val_ids is None else len(val_ids):,} validation {unit}s, vocabulary {len(vocab):,}.")
    print(f"{model!r}", flush=True)
    settings = {k: getattr(args, k) for k in TRAIN_SETTINGS}
    trainer = Trainer(model, train_ids, val_ids, batch_size=args.batch, seq_len=args.seq_len,
                      optimizer=args.optimizer, lr=args.lr, clip=args.clip or None,
                      schedule=args.schedule, eval_every=args.eval_every, patience=args.patience,
                      max_steps=args.max_steps, max_epochs=args.epochs,
                      time_limit=args.time_limit, checkpoint_path=args.out,
                      checkpoint_every=args.checkpoint_every, progress=not args.no_progress,
                      log=_print_record, seed=args.seed)
    trainer.settings = settings
    if resume_state is not None:
        trainer.model.load_state_dict(model.params)
        trainer.load_state_dict(resume_state)
        print(f"resumed from {args.resume} at step {trainer.step}", flush=True)
    trainer.fit()
    last = trainer.history[-1]
    if "val_loss" in last:
        print(f"final validation loss {last['val_loss']:.4f} nats/{unit} "
              f"({last['val_bits_per_token']:.3f} bits, perplexity {last['val_perplexity']:.2f})")
    print(f"saved {args.out}")
    return 0


# Training options saved in checkpoints so that --resume continues with the same settings.
TRAIN_SETTINGS = ("level", "batch", "seq_len", "optimizer", "lr", "clip", "schedule",
                  "eval_every", "patience", "max_steps", "epochs", "time_limit",
                  "checkpoint_every", "val_fraction", "seed")


def cmd_sample(args):
    from .lm import LanguageModel

    _check_device(args)
    _set_threads(args)
    # A GPU model samples with the CPU loop from host copies (see LanguageModel.generate_ids).
    model = LanguageModel.load(args.model, device=args.device)
    samples = model.generate(args.length, prime=args.prime, num_samples=args.num_samples,
                             temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                             greedy=args.greedy, stop=args.stop, seed=args.seed)
    for i, sample in enumerate(samples):
        if args.num_samples > 1:
            print(f"--- sample {i + 1}")
        print((args.prime or "") + sample)
    return 0


def cmd_eval(args):
    from .lm import LanguageModel
    from .text import load_text

    _check_device(args)
    _set_threads(args)
    model = LanguageModel.load(args.model, device=args.device)
    text = load_text(args.file)
    vocab = model._require_vocab()
    unknown = vocab.unknown_tokens(text)
    ids = vocab.encode(text)
    loss = model.evaluate(ids)
    print(f"{args.file}: {len(ids):,} tokens, {loss:.4f} nats/token, "
          f"{loss / math.log(2):.4f} bits/token, perplexity {math.exp(min(loss, 700)):.2f}")
    if unknown:
        print(f"({len(unknown)} distinct tokens were not in the vocabulary and scored as unknown)")
    return 0


def cmd_info(args):
    from .checkpoint import load
    from .lm import MODEL_KIND, LanguageModel

    model, extra = LanguageModel.load(args.model, with_extra=True)
    header, _ = load(args.model, MODEL_KIND)
    print(f"{args.model}: written by fastrnn {header['fastrnn_version']}")
    print(f"model: {model!r}")
    vocab = model.vocab
    if vocab is not None:
        print(f"vocabulary: {vocab.kind}, {len(vocab):,} tokens (unk={vocab.unk!r}, eos={vocab.eos!r})")
    trainer = (extra or {}).get("trainer")
    if trainer:
        print(f"training: step {trainer['step']:,}, {trainer['tokens']:,} tokens, "
              f"{trainer['train_seconds']:.0f} s")
        history = [r for r in trainer["history"] if "val_loss" in r]
        if history:
            print(f"last validation loss: {history[-1]['val_loss']:.4f} nats/token")
    return 0


# ---- parser -------------------------------------------------------------------------------

def _add_runtime_options(parser):
    """--threads and --device, shared by the commands that run a model."""
    parser.add_argument("--threads", type=_positive_int, help="OpenMP threads (default: all cores)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="where to run (cuda needs CuPy and a GPU: pip install 'fastrnn[gpu]')")


def build_parser():
    parser = _Parser(prog="fastrnn",
                     description="Fast RNN language models on the CPU (or a CUDA GPU).")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    demo = sub.add_parser("demo", help="train on the built-in synthetic language and sample")
    demo.add_argument("--time-limit", type=_positive_float, default=60.0, help="seconds of training")
    demo.add_argument("--sentences", type=_positive_int, default=20000)
    demo.add_argument("--cell", default="lstm", choices=["lstm", "gru", "rnn_tanh", "rnn_relu"])
    demo.add_argument("--hidden", type=_positive_int, default=64)
    demo.add_argument("--batch", type=_positive_int, default=32)
    demo.add_argument("--seq-len", type=_positive_int, default=32)
    demo.add_argument("--lr", type=_positive_float, default=1e-2)
    demo.add_argument("--eval-every", type=_positive_int, default=100)
    _add_runtime_options(demo)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)

    train = sub.add_parser("train", help="train a language model on a UTF-8 text file")
    train.add_argument("file")
    train.add_argument("--level", choices=["char", "word"], default="char")
    train.add_argument("--cell", choices=["lstm", "gru", "rnn_tanh", "rnn_relu"], default="lstm")
    train.add_argument("--embed", type=_positive_int, default=64)
    train.add_argument("--hidden", type=_positive_int, default=256)
    train.add_argument("--layers", type=_positive_int, default=2)
    train.add_argument("--dropout", type=_fraction, default=0.0)
    train.add_argument("--tie-weights", action="store_true")
    train.add_argument("--seq-len", type=_positive_int, default=64)
    train.add_argument("--batch", type=_positive_int, default=32)
    train.add_argument("--optimizer", default="adam",
                       choices=["adam", "adamw", "sgd", "rmsprop", "adagrad", "adadelta"])
    train.add_argument("--lr", type=_positive_float, default=2e-3)
    train.add_argument("--clip", type=float, default=5.0, help="gradient-norm limit (0: none)")
    train.add_argument("--schedule", choices=["plateau", "step"], default=None)
    train.add_argument("--time-limit", type=_positive_float, help="seconds of training")
    train.add_argument("--max-steps", type=_positive_int)
    train.add_argument("--epochs", type=_positive_int)
    train.add_argument("--eval-every", type=_positive_int, default=500)
    train.add_argument("--patience", type=_positive_int)
    train.add_argument("--val-fraction", type=_fraction, default=0.1)
    train.add_argument("--max-vocab", type=_positive_int)
    train.add_argument("--min-count", type=_positive_int, default=1)
    train.add_argument("--lowercase", action="store_true", help="word level: lowercase the text")
    train.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    train.add_argument("--out", default="model.npz", help="model/checkpoint file to write")
    train.add_argument("--checkpoint-every", type=_positive_int)
    train.add_argument("--resume", metavar="CHECKPOINT", help="continue a run from its checkpoint")
    train.add_argument("--no-progress", action="store_true")
    _add_runtime_options(train)
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(func=cmd_train)

    sample = sub.add_parser("sample", help="generate text from a trained model")
    sample.add_argument("model")
    sample.add_argument("--prime", default=None)
    sample.add_argument("--length", type=_positive_int, default=500)
    sample.add_argument("--temperature", type=_positive_float, default=1.0)
    sample.add_argument("--top-k", type=int, default=0)
    sample.add_argument("--top-p", type=float, default=1.0)
    sample.add_argument("--greedy", action="store_true")
    sample.add_argument("--num-samples", type=_positive_int, default=1)
    sample.add_argument("--stop", default=None, help="token that ends a sample")
    _add_runtime_options(sample)
    sample.add_argument("--seed", type=int, default=None)
    sample.set_defaults(func=cmd_sample)

    ev = sub.add_parser("eval", help="score a text file: nats/token, bits, perplexity")
    ev.add_argument("model")
    ev.add_argument("file")
    _add_runtime_options(ev)
    ev.set_defaults(func=cmd_eval)

    info = sub.add_parser("info", help="describe a model file")
    info.add_argument("model")
    info.set_defaults(func=cmd_info)

    # Listed for --help only: main() hands "fastrnn bench ..." to fastrnn.benchmarks.main.
    sub.add_parser("bench", help="time fastrnn against PyTorch (fastrnn bench --help)",
                   add_help=False)
    return parser


def main(argv=None):
    parser = build_parser()
    debug = os.environ.get("FASTRNN_DEBUG") == "1"
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        # The benchmark runner has its own options; hand them over untouched.
        from . import benchmarks
        return benchmarks.main(argv[1:])
    try:
        args = parser.parse_args(argv)
        if args.version:
            from . import __version__
            print(f"fastrnn {__version__}")
            return 0
        if args.command is None:
            parser.print_help()
            return EXIT_USER_ERROR
        return args.func(args)
    except _UsageError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USER_ERROR
    except USER_ERRORS as exc:
        if debug:
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"fastrnn: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("fastrnn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
