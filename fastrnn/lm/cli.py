"""The ``fastrnn`` command: demo, train, sample, eval, info, plot, bench.

``fastrnn bench`` runs code that is not installed with the package: the benchmark harness
lives in a source checkout's ``benchmarks/`` directory (``benchmarks/fastrnn_bench.py``). The
command takes it from ``--from DIR`` (the checkout, or its benchmarks/ directory) or else from
the current directory or the nearest parent that has one (the way git and pytest find their
root), imports it with only that benchmarks/ directory on sys.path (the checkout's own
``fastrnn/`` never shadows the fastrnn that is running), hands it every other option, and
times the fastrnn this command runs (its first line says which). Outside a checkout it prints
one line saying so and exits 2; ``fastrnn bench --help`` there explains the same.

Mistakes a user can make (missing or unreadable files, bad options, foreign or corrupt model
files, a prime the vocabulary cannot encode, ``--device cuda`` without CuPy or a GPU) end with
one line on stderr and exit code 2.
Set FASTRNN_DEBUG=1 to see the traceback instead.
"""
import argparse
import importlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from .._gpu import GPUUnavailableError   # does not import CuPy
from .._version import __version__
from ..cells import CELLS, RECURRENT_INITS
from ..optim import CLIP_MODES, OPTIMIZERS
from .checkpoint import CheckpointError
from .model import LOSS_ON
from .curves import X_KEYS, JsonLinesLog, MissingExtraError, trim_log

EXIT_USER_ERROR = 2
# Errors the library raises for bad input, with messages meant for the user. Of the
# RuntimeErrors, only the "no CuPy / no GPU" one is the user's to fix: others are bugs and
# keep their traceback.
USER_ERRORS = (FileNotFoundError, IsADirectoryError, PermissionError, ValueError, KeyError,
               GPUUnavailableError, MissingExtraError)


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


def _key_value(text):
    """KEY=VALUE of --optimizer-option; VALUE read as JSON (0.95, true, [0.9, 0.98]), else
    taken as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE, got {text!r}")
    try:
        value = json.loads(value)
    except ValueError:
        pass
    return key, value


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _nonnegative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def _hidden_sizes(text):
    """--hidden: one size for every layer ("256") or one per layer ("128,512")."""
    parts = text.split(",")
    try:
        sizes = [int(part) for part in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or a comma list of them "
                                         f"(one per layer), got {text!r}") from None
    if min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive integers, got {text!r}")
    return sizes[0] if len(sizes) == 1 else sizes


def _nonnegative_float(text):
    value = float(text)
    if not value >= 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _decay(text):
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


def _fraction(text):
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


# ---- shared helpers -----------------------------------------------------------------------

def _check_device(args):
    """Fail fast, before any file is read, when --device cuda cannot be served."""
    from .._device import get_array_module
    get_array_module(args.device)   # CuPy and a GPU for "cuda" (RuntimeError naming what is missing)


def _set_threads(args):
    if getattr(args, "threads", None):
        from ..threads import set_num_threads
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


def _build_vocab(text, settings):
    from .text import CharVocab, WordVocab
    if settings["level"] == "char":
        return CharVocab.build(text, max_size=settings["max_vocab"],
                               min_count=settings["min_count"], lowercase=settings["lowercase"])
    return WordVocab.build(text, max_size=settings["max_vocab"] or 10000,
                           min_count=settings["min_count"], lowercase=settings["lowercase"],
                           unk=settings["unk"], bos=settings["bos"], eos=settings["eos"])


# Special tokens of a new word-level run when --unk/--eos/--bos are not given (bos only in
# sentence mode: it is what marks a model as a sentence model for ``fastrnn sample``).
_WORD_SPECIALS = {"unk": "<unk>", "eos": "</s>", "bos": "<s>"}


def _special_settings(settings):
    """Fill in (and check) the --unk/--eos/--bos settings of a new run, in place."""
    given = [_option(key) for key in _WORD_SPECIALS if settings[key] is not None]
    if settings["level"] != "word":
        if settings["sentences"] is not None:
            raise ValueError("--sentences needs --level word")
        if given:
            raise ValueError(f"{', '.join(given)}: special tokens need --level word")
        return
    if settings["bos"] is not None and settings["sentences"] is None:
        raise ValueError("--bos needs --sentences (sentence mode starts each sentence with it)")
    for key, default in _WORD_SPECIALS.items():
        if settings[key] is None and (key != "bos" or settings["sentences"] is not None):
            settings[key] = default
    named = [(key, settings[key]) for key in _WORD_SPECIALS if settings[key] is not None]
    for key, token in named:
        if not token.strip() or token != token.strip() or len(token.split()) != 1:
            raise ValueError(f"{_option(key)} must be one token without spaces, got {token!r}")
    tokens = [token for _, token in named]
    if len(set(tokens)) != len(tokens):
        raise ValueError(f"--unk, --eos and --bos must be different tokens, got "
                         f"{dict(named)}")


def _text_sentences(text, how):
    """The sentences of ``text``: cut by text_to_sentences ("text") or one per non-blank
    line ("lines"), each a str."""
    from .text import text_to_sentences
    if how == "lines":
        return [" ".join(line.split()) for line in text.split("\n") if line.strip()]
    return text_to_sentences(text)


def _split_sentences(sentences, val_fraction):
    """(train, val) lists of sentences; the last ``round(n * val_fraction)`` validate."""
    if val_fraction == 0:
        return sentences, None
    n_val = round(len(sentences) * val_fraction)
    if n_val < 1 or n_val >= len(sentences):
        raise ValueError(f"text has {len(sentences)} sentences: too few to hold out "
                         f"--val-fraction {val_fraction} of them for validation")
    return sentences[:-n_val], sentences[-n_val:]


def _sentence_ids(sentences, vocab):
    """Each sentence as int64 ids wrapped in the vocabulary's bos and eos."""
    bos, eos = np.array([vocab.bos_id]), np.array([vocab.eos_id])
    return [np.concatenate([bos, vocab.encode(sentence), eos]).astype(np.int64)
            for sentence in sentences]


# ---- commands -----------------------------------------------------------------------------

DEMO_TIME_LIMIT = 60.0


def cmd_demo(args):
    """Learn the built-in synthetic language and compare the loss with its true entropy."""
    from .model import LanguageModel
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
    # --max-steps alone makes the result independent of the machine's speed and load.
    time_limit = args.time_limit if args.time_limit is not None or args.max_steps is not None \
        else DEMO_TIME_LIMIT
    limits = [f"{args.max_steps} steps" if args.max_steps else None,
              f"{time_limit:g} s" if time_limit else None]
    print(f"Model: {model!r}; Adam, batch {args.batch} x {args.seq_len} steps, "
          f"{' or '.join(filter(None, limits))} of training.\n", flush=True)
    trainer = Trainer(model, train_ids, val_ids, batch_size=args.batch, seq_len=args.seq_len,
                      lr=args.lr, schedule="plateau", eval_every=args.eval_every,
                      max_steps=args.max_steps, time_limit=time_limit, progress=False,
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
    if args.distributed:   # under mpiexec: rank 0 prints, one rank's error ends all
        from .distributed import run_command
        return run_command(_train, args, USER_ERRORS)
    return _train(args)


def _train(args):
    from .model import LanguageModel
    from .text import load_text
    from .train import Trainer

    _check_device(args)
    _set_threads(args)
    if args.optimizer_option is not None:   # repeated KEY=VALUE -> one dict, as saved
        args.optimizer_option = dict(args.optimizer_option)
    if args.val_file is not None:
        if _given(args, "val_fraction"):
            raise ValueError("--val-file and --val-fraction exclude each other: validation "
                             "text comes from a separate file or from a split of the training text")
        args.val_file = os.path.abspath(args.val_file)   # as saved: resumable from elsewhere
    resume_state = None
    if args.resume:
        # The device is not a saved setting: a run may resume on another device.
        model, extra = LanguageModel.load(args.resume, with_extra=True, device=args.device)
        resume_state = _resume_state(args.resume, extra)
        settings = _resumed_settings(args, model, resume_state)
        if settings["val_file"] is not None and not _given(args, "val_file"):
            # Equal to the saved path when given (checked above): a path to read comes
            # from the command line only, never from the checkpoint.
            raise ValueError(f"{args.resume} validates on --val-file {settings['val_file']}: "
                             "give --val-file again to resume it")
        _check_work_left(args.resume, resume_state, settings)
        vocab = model.vocab
        out = args.out or args.resume
    else:
        settings = {key: _given_or_default(args, key) for key in TRAIN_SETTINGS}
        _special_settings(settings)
        if settings["val_file"] is not None:
            settings["val_fraction"] = 0.0   # the whole training text is for training
        model = vocab = None
        out = args.out or "model.npz"
    _check_schedule_options(args, settings)
    if args.log is not None and not args.resume and os.path.exists(args.log) \
            and os.path.getsize(args.log) > 0:
        raise ValueError(f"--log {args.log} already holds records: give a new file (a run "
                         "resumed with --resume appends to its log)")
    text = load_text(args.file)
    val_file_text = None if settings["val_file"] is None else load_text(settings["val_file"])
    if settings["sentences"] is None:
        train_text, val_text = _split_text(text, settings["val_fraction"])
        if val_file_text is not None:
            val_text = val_file_text
    else:
        train_sentences, val_sentences = _split_sentences(
            _text_sentences(text, settings["sentences"]), settings["val_fraction"])
        train_text = "".join(sentence + "\n" for sentence in train_sentences)
        if val_file_text is not None:   # cut into sentences as the training text is
            val_sentences = _text_sentences(val_file_text, settings["sentences"])
    if model is None:
        options = {key: _given_or_default(args, key) for key in MODEL_OPTIONS}
        vocab = _build_vocab(train_text, settings)
        model = LanguageModel(vocab=vocab, embed_size=options["embed"],
                              hidden_size=options["hidden"], num_layers=options["layers"],
                              cell=options["cell"], dropout=options["dropout"],
                              tie_weights=options["tie_weights"], seed=settings["seed"],
                              dtype=np.dtype(options["dtype"]), one_hot=options["one_hot"],
                              init_std=options["init_std"],
                              recurrent_init=options["recurrent_init"],
                              forget_bias=options["forget_bias"], device=args.device)
    for name in settings["freeze"] or ():
        if name not in model.params:
            raise ValueError(f"--freeze {name}: no such parameter; the names are "
                             f"{', '.join(sorted(model.params))}")
        model.freeze(name)
    unit = "char" if settings["level"] == "char" else "word"
    if settings["sentences"] is None:
        train_ids = vocab.encode(train_text)
        val_ids = None if val_text is None else vocab.encode(val_text)
        print(f"{args.file}: {len(train_ids):,} training and "
              f"{0 if val_ids is None else len(val_ids):,} validation {unit}s, "
              f"vocabulary {len(vocab):,}.")
    else:
        if vocab.bos is None or vocab.eos is None:
            raise CheckpointError(f"{args.resume}: its vocabulary has no begin and end of "
                                  "sentence tokens, which sentence mode needs")
        train_ids = _sentence_ids(train_sentences, vocab)
        val_ids = None if val_sentences is None else _sentence_ids(val_sentences, vocab)
        print(f"{args.file}: {len(train_ids):,} training and "
              f"{0 if val_ids is None else len(val_ids):,} validation sentences "
              f"({sum(map(len, train_ids)):,} training tokens with {vocab.bos} and "
              f"{vocab.eos}), vocabulary {len(vocab):,}.")
    if settings["bptt_truncate"] is not None and settings["sentences"] is None:
        raise ValueError("--bptt-truncate applies to sentence mode (--sentences); in stream "
                         "mode --seq-len is the truncation length")
    if settings["loss_on"] != "all" and settings["sentences"] is None:
        raise ValueError("--loss-on last applies to sentence mode (--sentences): the loss on "
                         "each sentence's last token")
    if val_file_text is not None and (not val_ids if settings["sentences"] else len(val_ids) < 2):
        raise ValueError(f"--val-file {settings['val_file']}: needs at least 2 tokens of "
                         f"validation text (a sentence in sentence mode)")
    if resume_state is None and vocab.kind == "word":
        _print_counts(vocab)
    print(f"{model!r}", flush=True)
    trainer = Trainer(model, train_ids, val_ids, batch_size=settings["batch"],
                      seq_len=settings["seq_len"], optimizer=settings["optimizer"],
                      lr=settings["lr"], clip=settings["clip"] or None,
                      optimizer_options=settings["optimizer_option"],
                      clip_mode=settings["clip_mode"], reduction=settings["reduction"],
                      schedule=settings["schedule"], lr_decay=settings["lr_decay"],
                      lr_step_epochs=settings["lr_step_epochs"],
                      bptt_truncate=settings["bptt_truncate"], loss_on=settings["loss_on"],
                      eval_every=settings["eval_every"],
                      patience=settings["patience"], max_steps=settings["max_steps"],
                      max_epochs=settings["epochs"], time_limit=settings["time_limit"],
                      checkpoint_path=out, checkpoint_every=settings["checkpoint_every"],
                      progress=not args.no_progress, log=_print_record, seed=settings["seed"],
                      distributed="mpi" if args.distributed else None)
    if resume_state is not None:
        # The model already holds the checkpoint's parameters; this restores the rest.
        trainer.load_state_dict(resume_state)
        if settings["patience"] is not None:
            trainer.stopped_early = trainer.evals_without_improvement >= settings["patience"]
        print(f"resumed from {args.resume} at step {trainer.step}", flush=True)
    trainer.settings = settings   # what the next --resume of this run starts from
    # The log is rank 0's alone in a distributed run (the Trainer logs there only).
    log_path = args.log if trainer.distributed is None or trainer.distributed.is_root else None
    if log_path is not None and args.resume and os.path.exists(log_path):
        dropped = trim_log(log_path, trainer.step)
        if dropped:
            print(f"{log_path}: dropped {dropped} record(s) after step {trainer.step}, the "
                  "checkpoint's (those steps are trained again)", flush=True)
    run_log = None if log_path is None else JsonLinesLog(log_path)   # appends
    if run_log is not None:
        trainer.log = lambda record: (_print_record(record), run_log(record))
    try:
        trainer.fit()
    finally:
        if run_log is not None:
            run_log.close()
    last = trainer.history[-1]
    if "val_loss" in last:
        print(f"final validation loss {last['val_loss']:.4f} nats/{unit} "
              f"({last['val_bits_per_token']:.3f} bits, perplexity {last['val_perplexity']:.2f})")
    print(f"saved {out}")
    return 0


def _print_counts(vocab):
    """003's report on a new word vocabulary: tokens found (special tokens aside), and the
    rarest one kept."""
    specials = set(vocab.specials)
    counts = {token: n for token, n in (vocab.counts or {}).items() if token not in specials}
    kept = [token for token in vocab.tokens if token in counts]
    line = f"found {len(counts):,} unique tokens"
    if kept:
        rarest = min(kept, key=lambda token: (counts[token], token))
        line += f"; least frequent kept: {rarest!r} ({counts[rarest]:,} times)"
    print(line)


def _check_schedule_options(args, settings):
    """--lr-decay and --lr-step-epochs only mean something with the schedule that uses them."""
    if _given(args, "lr_decay") and settings["schedule"] is None:
        raise ValueError("--lr-decay applies with --schedule step or plateau")
    if _given(args, "lr_step_epochs") and settings["schedule"] != "step":
        raise ValueError("--lr-step-epochs applies with --schedule step only")


# Training options saved in checkpoints so that --resume continues with the same settings,
# with their defaults. The options' argparse defaults are None ("not given"), so that a resume
# can tell the options given on its command line from the ones to take from the checkpoint.
TRAIN_DEFAULTS = {"level": "char", "batch": 32, "seq_len": 64, "optimizer": "adam", "lr": 2e-3,
                  "clip": 5.0, "schedule": None, "eval_every": 500, "patience": None,
                  "max_steps": None, "epochs": None, "time_limit": None,
                  "checkpoint_every": None, "val_fraction": 0.1, "seed": 0, "max_vocab": None,
                  "min_count": 1, "lowercase": False, "optimizer_option": None,
                  "clip_mode": "norm", "reduction": "mean", "sentences": None, "bos": None,
                  "eos": None, "unk": None, "lr_decay": 0.5, "lr_step_epochs": 1,
                  "val_file": None, "bptt_truncate": None, "loss_on": "all", "freeze": None}
# Settings added after the first checkpoints: a checkpoint without them ran with the default.
_LATER_SETTINGS = ("optimizer_option", "clip_mode", "reduction", "sentences", "bos", "eos", "unk",
                   "lr_decay", "lr_step_epochs", "val_file", "bptt_truncate", "loss_on", "freeze")
TRAIN_SETTINGS = tuple(TRAIN_DEFAULTS)
# The settings a resumed run may change: when to stop, validate and checkpoint. The others
# decide the data, the batches and the optimizer's path, so they must match the checkpoint
# for the resumed run to continue the same run.
RESUME_OVERRIDES = ("max_steps", "epochs", "time_limit", "eval_every", "checkpoint_every",
                    "patience")
# The model's shape, fixed by the checkpoint's model (LanguageModel.config() names).
# None: LanguageModel's own default (embed: 64, or V with --one-hot; layers: the length of a
# --hidden list, else 2).
MODEL_DEFAULTS = {"cell": "lstm", "embed": None, "hidden": 256, "layers": None, "dropout": 0.0,
                  "tie_weights": False, "dtype": "float32", "one_hot": False, "init_std": None,
                  "recurrent_init": "uniform", "forget_bias": None}
MODEL_OPTIONS = tuple(MODEL_DEFAULTS)
_CONFIG_NAMES = {"cell": "cell", "embed": "embed_size", "hidden": "hidden_size",
                 "layers": "num_layers", "dropout": "dropout", "tie_weights": "tie_weights",
                 "dtype": "dtype", "one_hot": "one_hot", "init_std": "init_std",
                 "recurrent_init": "recurrent_init", "forget_bias": "forget_bias"}
# The names come from the code's own tables, so a new cell or optimizer needs no CLI edit.
_CELLS = tuple(CELLS)
_OPTIMIZERS = tuple(OPTIMIZERS)


def _given(args, key):
    return getattr(args, key) is not None


def _given_or_default(args, key):
    value = getattr(args, key)
    return value if value is not None else {**TRAIN_DEFAULTS, **MODEL_DEFAULTS}[key]


def _option(key):
    return "--" + key.replace("_", "-")


def _check_saved_setting(key, value):
    """Validate one training setting read from a checkpoint (never trusted: a crafted file
    could hold anything) with the same rules as its command-line option."""
    def fail(expected):
        raise CheckpointError(f"checkpoint setting {key!r} must be {expected}, got {value!r}")

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    def is_real(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    optional = key in ("schedule", "patience", "max_steps", "epochs", "time_limit",
                       "checkpoint_every", "max_vocab", "optimizer_option", "sentences", "bos",
                       "eos", "unk", "val_file", "bptt_truncate", "freeze")
    if value is None and optional:
        return None
    if key in ("batch", "seq_len", "eval_every", "patience", "max_steps", "epochs",
               "checkpoint_every", "max_vocab", "min_count", "lr_step_epochs",
               "bptt_truncate"):
        if not is_int(value) or value < 1:
            fail("a positive integer")
    elif key in ("lr", "time_limit"):
        if not is_real(value) or value <= 0:
            fail("a positive number")
    elif key == "clip":
        if not is_real(value) or value < 0:
            fail("a number >= 0")
    elif key == "lr_decay":
        if not is_real(value) or not 0 < value < 1:
            fail("a number in (0, 1)")
    elif key == "val_file":
        if not isinstance(value, str) or not value:
            fail("a file name")
    elif key == "val_fraction":
        if not is_real(value) or not 0 <= value < 1:
            fail("a number in [0, 1)")
    elif key == "seed":
        if not is_int(value) or value < 0:
            fail("an integer >= 0")
    elif key == "optimizer_option":
        # Checked again by the optimizer itself; here: names and JSON scalars or lists.
        if not isinstance(value, dict) or not all(
                isinstance(k, str) and k.isidentifier() and
                (v is None or isinstance(v, (str, bool, int, float, list))) for k, v in value.items()):
            fail("a dict of option names to values")
    elif key == "freeze":
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            fail("a list of parameter names")
    elif key == "lowercase":
        if not isinstance(value, bool):
            fail("true or false")
    elif key in ("bos", "eos", "unk"):
        if not isinstance(value, str) or not value:
            fail("a token (str)")
    else:
        choices = {"level": ("char", "word"), "optimizer": _OPTIMIZERS,
                   "schedule": ("plateau", "step"), "clip_mode": CLIP_MODES,
                   "reduction": ("mean", "sum"), "sentences": ("text", "lines"),
                   "loss_on": LOSS_ON}[key]
        if value not in choices:
            fail(f"one of {choices}")
    return value


def _resume_state(path, extra):
    """The trainer state of a checkpoint, checked for structure (see train.check_state)."""
    from .train import check_state

    if not isinstance(extra, dict) or "trainer" not in extra:
        raise ValueError(f"{path} holds a model but no training state to resume from")
    try:
        return check_state(extra["trainer"])
    except ValueError as exc:
        raise CheckpointError(f"{path} holds a malformed training state: {exc}") from None


def _resumed_settings(args, model, state):
    """The settings of a resumed run: the checkpoint's, validated, with the limits given on
    the command line (RESUME_OVERRIDES) replacing them. Any other option given must match
    the checkpoint: ValueError otherwise. Keys outside TRAIN_SETTINGS are ignored: nothing
    read from a file decides a path."""
    if model.vocab is None:
        raise CheckpointError(f"{args.resume} holds a model without a vocabulary: the command "
                              "line cannot resume it")
    saved = state["settings"]
    recorded = {key: _check_saved_setting(key, saved[key]) for key in TRAIN_SETTINGS
                if key in saved}
    # What the vocabulary records itself wins over the settings.
    recorded["level"] = model.vocab.kind
    recorded["lowercase"] = model.vocab.lowercase
    for key in _WORD_SPECIALS:
        recorded[key] = getattr(model.vocab, key) if model.vocab.kind == "word" else None
    settings = {}
    for key in TRAIN_SETTINGS:
        if key in RESUME_OVERRIDES and _given(args, key):
            settings[key] = getattr(args, key)
            continue
        if key not in recorded:
            if key in RESUME_OVERRIDES or key in ("max_vocab", "min_count"):
                recorded[key] = None   # older checkpoints do not record these
            elif key in _LATER_SETTINGS:
                recorded[key] = TRAIN_DEFAULTS[key]
            else:
                raise CheckpointError(f"{args.resume}: the checkpoint's settings lack {key!r}")
        if _given(args, key) and getattr(args, key) != recorded[key]:
            raise ValueError(f"{_option(key)} {getattr(args, key)} does not match the checkpoint "
                             f"({recorded[key]!r}); a resumed run keeps it (only "
                             f"{', '.join(map(_option, RESUME_OVERRIDES))} may change)")
        settings[key] = recorded[key]
    config = model.config()
    for key in MODEL_OPTIONS:
        if _given(args, key) and getattr(args, key) != config[_CONFIG_NAMES[key]]:
            raise ValueError(f"{_option(key)} {getattr(args, key)} does not match the "
                             f"checkpoint's model ({config[_CONFIG_NAMES[key]]!r}): the model's "
                             "shape cannot change on resume")
    return settings


def _check_work_left(path, state, settings):
    """Refuse a resume that would train nothing, saying which limit to raise."""
    limits = (("max_steps", state["step"], "steps"),
              ("epochs", state["batcher"].get("epoch") if isinstance(state["batcher"], dict)
               else None, "epochs"),
              ("time_limit", state["train_seconds"], "seconds of training"))
    for key, done, unit in limits:
        limit = settings[key]
        if limit is not None and isinstance(done, (int, float)) and done >= limit:
            raise ValueError(f"{path} has already run {done:g} {unit}, reaching its "
                             f"{_option(key)} {limit:g} (a total over the whole run): give a "
                             f"larger {_option(key)} to train on")
    patience = settings["patience"]
    if state["stopped_early"] and (patience is None
                                   or state["evals_without_improvement"] >= patience):
        raise ValueError(f"{path} stopped early after {state['evals_without_improvement']} "
                         "validations without improvement: give a larger --patience to train on")


def cmd_sample(args):
    from .model import LanguageModel

    _check_device(args)
    _set_threads(args)
    # A GPU model samples with the CPU loop from host copies (see LanguageModel.generate_ids).
    model = LanguageModel.load(args.model, device=args.device)
    if model.vocab is not None and model.vocab.bos is not None:
        return _sample_sentences(model, args)   # stops at the model's eos unless --stop
    if args.min_length and args.stop is None:
        raise ValueError("--min-length needs --stop: the end token it suppresses")
    samples = model.generate(args.length, prime=args.prime, num_samples=args.num_samples,
                             temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                             greedy=args.greedy, stop=args.stop, seed=args.seed,
                             min_length=args.min_length, weights=args.weights)
    for i, sample in enumerate(samples):
        if args.num_samples > 1:
            print(f"--- sample {i + 1}")
        print((args.prime or "") + sample)
    return 0


def _sample_sentences(model, args):
    """``fastrnn sample`` for a sentence model (its vocabulary has a bos token): every sample
    starts from bos (then --prime, if given), stops at eos (or --stop) and never draws the
    unknown token or bos; the text printed leaves bos and the final eos out."""
    vocab = model.vocab
    prime = args.prime or ""
    unknown = vocab.unknown_tokens(prime)
    if unknown:
        listed = ", ".join(repr(t) for t in sorted(unknown)[:10])
        raise ValueError(f"prime has tokens that are not in the model's vocabulary: {listed}")
    prime_ids = np.concatenate([[vocab.bos_id], vocab.encode(prime)]).astype(np.int64)
    stop = vocab.eos if args.stop is None else args.stop
    if not vocab.has(stop):
        raise ValueError(f"stop token {stop!r} is not in the vocabulary")
    banned = tuple(i for i in (vocab.unk_id, vocab.bos_id) if i is not None)
    tokens, lengths = model.generate_ids(
        prime_ids, args.length, num_samples=args.num_samples, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, greedy=args.greedy,
        stop_id=vocab.token_to_id(stop), banned_ids=banned, seed=args.seed,
        min_length=args.min_length, weights=args.weights)
    for i, (row, n) in enumerate(zip(tokens, lengths)):
        ids = row[:n]
        if ids.size and ids[-1] == vocab.eos_id:
            ids = ids[:-1]
        if args.num_samples > 1:
            print(f"--- sample {i + 1}")
        print(" ".join(piece for piece in (prime.strip(), vocab.decode(ids)) if piece))
    return 0


def cmd_eval(args):
    from .model import LanguageModel
    from .text import load_text

    _check_device(args)
    _set_threads(args)
    model, extra = LanguageModel.load(args.model, with_extra=True, device=args.device)
    text = load_text(args.file)
    vocab = model._require_vocab()
    unknown = vocab.unknown_tokens(text)
    if vocab.bos is None:
        ids = vocab.encode(text)
        loss = model.evaluate(ids)
        n_tokens = len(ids)
    else:
        # A sentence model scores each sentence alone, wrapped as in training, cut the way
        # its training run cut them (saved with its trainer state; else by text_to_sentences).
        settings = extra.get("trainer", {}).get("settings", {}) if isinstance(extra, dict) else {}
        how = settings.get("sentences") if isinstance(settings, dict) else None
        how = _check_saved_setting("sentences", how) or "text"
        sentences = _sentence_ids(_text_sentences(text, how), vocab)
        if not sentences:
            raise ValueError(f"{args.file} has no sentences")
        loss = model.evaluate(sentences)
        n_tokens = sum(len(s) - 1 for s in sentences)
    print(f"{args.file}: {n_tokens:,} tokens, {loss:.4f} nats/token, "
          f"{loss / math.log(2):.4f} bits/token, perplexity {math.exp(min(loss, 700)):.2f}")
    if unknown:
        print(f"({len(unknown)} distinct tokens were not in the vocabulary and scored as unknown)")
    return 0


def cmd_info(args):
    from .checkpoint import read_header
    from .model import MODEL_KIND, LanguageModel

    model, extra = LanguageModel.load(args.model, with_extra=True)
    header = read_header(args.model, MODEL_KIND)
    print(f"{args.model}: written by fastrnn {header.get('fastrnn_version', '?')}")
    print(f"model: {model!r}")
    vocab = model.vocab
    if vocab is not None:
        print(f"vocabulary: {vocab.kind}, {len(vocab):,} tokens (unk={vocab.unk!r}, eos={vocab.eos!r})")
    trainer = _resume_state(args.model, extra) if isinstance(extra, dict) and "trainer" in extra \
        else None
    if trainer:
        print(f"training: step {trainer['step']:,}, {trainer['tokens']:,} tokens, "
              f"{trainer['train_seconds']:.0f} s")
        history = [r for r in trainer["history"] if isinstance(r.get("val_loss"), (int, float))]
        if history:
            print(f"last validation loss: {history[-1]['val_loss']:.4f} nats/token")
    return 0


def cmd_plot(args):
    from .curves import plot_logs

    out = plot_logs(args.logs, args.out, x=args.x, y=args.y)
    print(f"wrote {out}: {args.y} against {args.x} for {len(args.logs)} run(s)")
    return 0


# ---- parser -------------------------------------------------------------------------------

_TRAIN_EPILOG = """\
Resuming (--resume CHECKPOINT) continues the run saved in CHECKPOINT with its saved model,
vocabulary and settings, and writes to CHECKPOINT unless --out is given. The options marked *
(--max-steps, --epochs, --time-limit, --eval-every, --checkpoint-every, --patience) may be
given anew and replace the saved ones; the limits count the whole run, steps before the
resume included: --max-steps 2000 on a checkpoint at step 1500 trains 500 more steps. Every
other option, if given, must equal the checkpoint's (they decide the model, the data and the
optimizer's path): a different value is an error. Resuming a run that already reached its
limits is an error that says which limit to raise.
"""

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
    demo.add_argument("--time-limit", type=_positive_float,
                      help=f"seconds of training (default: {DEMO_TIME_LIMIT:g}, or none with "
                           "--max-steps)")
    demo.add_argument("--max-steps", type=_positive_int,
                      help="training steps: a result that does not depend on the machine's load")
    demo.add_argument("--sentences", type=_positive_int, default=20000)
    demo.add_argument("--cell", default="lstm", choices=list(_CELLS))
    demo.add_argument("--hidden", type=_positive_int, default=64)
    demo.add_argument("--batch", type=_positive_int, default=32)
    demo.add_argument("--seq-len", type=_positive_int, default=32)
    demo.add_argument("--lr", type=_positive_float, default=1e-2)
    demo.add_argument("--eval-every", type=_positive_int, default=100)
    _add_runtime_options(demo)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)

    train = sub.add_parser(
        "train", help="train a language model on a UTF-8 text file",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_TRAIN_EPILOG)
    # Options saved with a run default to None here ("not given") and get their defaults
    # (TRAIN_DEFAULTS, MODEL_DEFAULTS) in cmd_train, so that --resume sees what was given.
    train.add_argument("file")
    train.add_argument("--level", choices=["char", "word"], help="tokens (default: char)")
    train.add_argument("--cell", choices=list(_CELLS),
                       help="default: lstm")
    train.add_argument("--embed", type=_positive_int, help="embedding width (default: 64)")
    train.add_argument("--hidden", type=_hidden_sizes,
                       help="units per layer, or a comma list with one size per layer, e.g. "
                            "128,512 (default: 256)")
    train.add_argument("--layers", type=_positive_int,
                       help="recurrent layers (default: the length of a --hidden list, else 2)")
    train.add_argument("--one-hot", action="store_true", default=None,
                       help="feed tokens as one-hot vectors: no embedding (--embed: none or "
                            "the vocabulary size)")
    train.add_argument("--init-std", type=_positive_float, metavar="SIGMA",
                       help="draw every weight from N(0, SIGMA^2), biases zero (default: "
                            "PyTorch's uniform initialisation)")
    train.add_argument("--recurrent-init", choices=list(RECURRENT_INITS),
                       help="identity: W_hh = I (Keras IRNN; default: uniform)")
    train.add_argument("--forget-bias", type=float,
                       help="LSTM forget-gate bias, e.g. 1.0 (default: PyTorch's init)")
    train.add_argument("--freeze", action="append", metavar="NAME",
                       help="keep this parameter fixed (repeatable; e.g. embedding.weight)")
    train.add_argument("--dropout", type=_fraction, help="default: 0")
    train.add_argument("--tie-weights", action="store_true", default=None)
    train.add_argument("--seq-len", type=_positive_int, help="BPTT steps per batch (default: 64)")
    train.add_argument("--batch", type=_positive_int, help="parallel streams (default: 32)")
    train.add_argument("--optimizer", choices=list(_OPTIMIZERS), help="default: adam")
    train.add_argument("--lr", type=_positive_float, help="learning rate (default: 0.002)")
    train.add_argument("--clip", type=_nonnegative_float,
                       help="gradient clipping limit, 0: none (default: 5)")
    train.add_argument("--clip-mode", choices=list(CLIP_MODES),
                       help="what --clip limits: norm (all gradients' global norm, default), "
                            "param_norm (each parameter's gradient norm), value (each element)")
    train.add_argument("--optimizer-option", action="append", type=_key_value,
                       metavar="KEY=VALUE",
                       help="extra optimizer argument, repeatable, VALUE as JSON: "
                            "rho=0.95 eps=1e-6 (adadelta), betas=[0.9,0.98] (adam), "
                            "nesterov=true (sgd)")
    train.add_argument("--reduction", choices=["mean", "sum"],
                       help="train on the mean (default) or the summed loss of a batch")
    train.add_argument("--schedule", choices=["plateau", "step"], default=None,
                       help="learning-rate schedule (default: none)")
    train.add_argument("--lr-decay", type=_decay,
                       help="factor on the lr at each --schedule decay (default: 0.5)")
    train.add_argument("--lr-step-epochs", type=_positive_int,
                       help="--schedule step: decay every this many epochs (default: 1)")
    train.add_argument("--bptt-truncate", type=_positive_int, metavar="K",
                       help="sentence mode: backpropagate in consecutive windows of K steps "
                            "(state carried, gradient cut between windows; one update per batch)")
    train.add_argument("--loss-on", choices=LOSS_ON,
                       help="sentence mode: 'last' trains on each sentence's last token only "
                            "(sequence to one; validation likewise); default: all")
    train.add_argument("--time-limit", type=_positive_float,
                       help="stop after this many seconds of training in total *")
    train.add_argument("--max-steps", type=_positive_int, help="stop at this total step count *")
    train.add_argument("--epochs", type=_positive_int, help="stop after this many epochs in total *")
    train.add_argument("--eval-every", type=_positive_int,
                       help="validate every this many steps (default: 500) *")
    train.add_argument("--patience", type=_positive_int,
                       help="stop after this many validations without improvement *")
    train.add_argument("--val-fraction", type=_fraction,
                       help="share of the text held out for validation (default: 0.1)")
    train.add_argument("--val-file", metavar="PATH",
                       help="validate on this text file instead (encoded with the training "
                            "vocabulary); the whole training file is then trained on")
    train.add_argument("--max-vocab", type=_positive_int)
    train.add_argument("--min-count", type=_positive_int, help="default: 1")
    train.add_argument("--lowercase", action="store_true", default=None,
                       help="lowercase the text (char and word level); the model's vocabulary "
                            "records it, so sample, eval and --prime lowercase too")
    # Two flags, not an optional value after --sentences: that would swallow a file name
    # written after it.
    sentence_mode = train.add_mutually_exclusive_group()
    sentence_mode.add_argument(
        "--sentences", action="store_const", const="text", default=None,
        help="sentence mode (--level word): train on whole sentences, each wrapped in --bos "
             "and --eos, in padded shuffled batches, and validate on held-out sentences; the "
             "text is cut after . ! ? before a capital and at blank lines")
    sentence_mode.add_argument(
        "--sentence-lines", dest="sentences", action="store_const", const="lines",
        help="sentence mode with each non-blank line one sentence")
    train.add_argument("--bos", help="begin-of-sentence token in sentence mode (default: <s>)")
    train.add_argument("--eos", help="end-of-sentence token, and what a line break becomes "
                                     "(--level word; default: </s>)")
    train.add_argument("--unk", help="token for words left out of the vocabulary "
                                     "(--level word; default: <unk>)")
    train.add_argument("--dtype", choices=["float32", "float64"], help="default: float32")
    train.add_argument("--out", help="model/checkpoint file to write (default: model.npz, or "
                                     "the --resume file)")
    train.add_argument("--checkpoint-every", type=_positive_int,
                       help="also save every this many steps *")
    train.add_argument("--resume", metavar="CHECKPOINT", help="continue a run from its checkpoint")
    train.add_argument("--no-progress", action="store_true")
    train.add_argument("--distributed", action="store_true",
                       help="data-parallel over the ranks of mpiexec (needs fastrnn[mpi]); "
                            "--batch is the global batch")
    train.add_argument("--log", metavar="RUN.jsonl",
                       help="append every validation record to this file as a JSON line "
                            "(fastrnn plot draws it); a resumed run appends to its log")
    _add_runtime_options(train)
    train.add_argument("--seed", type=int, help="default: 0")
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
    sample.add_argument("--stop", default=None,
                        help="token that ends a sample (default for a model trained with "
                             "--sentences: its end-of-sentence token; such a model also starts "
                             "every sample from its begin-of-sentence token)")
    sample.add_argument("--min-length", type=_nonnegative_int, default=0,
                        help="suppress the stop token until this many tokens are generated "
                             "(its probability set to zero, the rest renormalised)")
    _add_runtime_options(sample)
    sample.add_argument("--weights", choices=("float32", "bfloat16"), default="float32",
                        help="bfloat16: multiply by a bfloat16 copy of the weights (float32 "
                             "models; faster at small batch, not exact: README Results)")
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

    plot = sub.add_parser("plot", help="draw learning curves from --log files (needs matplotlib: "
                                       'pip install "fastrnn[plot]")')
    plot.add_argument("logs", nargs="+", metavar="RUN.jsonl",
                      help="logs written by fastrnn train --log: one curve each")
    plot.add_argument("-o", "--out", required=True,
                      help="image to write (format from its extension: .png, .pdf, .svg, ...)")
    plot.add_argument("--x", choices=list(X_KEYS), default="step", help="default: step")
    plot.add_argument("--y", default="val_loss",
                      help="record key to draw: val_loss (default), train_loss, "
                           "val_bits_per_token, val_perplexity, lr, tokens_per_second")
    plot.set_defaults(func=cmd_plot)

    # Listed for --help only: main() hands "fastrnn bench ..." to _bench.
    sub.add_parser("bench", help="time fastrnn against PyTorch, from a source checkout "
                                 "(fastrnn bench --help)", add_help=False)
    return parser


# ---- fastrnn bench (the harness is in a source checkout; see the module docstring) ------------

BENCH_MODULE = "fastrnn_bench"
_BENCH_HELP = """\
usage: fastrnn bench [--from DIR] [options of the checkout's benchmarks]

Times fastrnn against PyTorch with the benchmarks of a fastrnn source checkout (its
benchmarks/ directory, which is not installed with the package). Run it inside the checkout,
or pass --from DIR (the checkout); `fastrnn bench --help` there lists the options.
"""


def find_benchmarks(checkout=None, start=None):
    """The benchmarks/ directory to run: that of ``checkout`` (a source checkout, or its
    benchmarks/ directory itself) when given, else that of ``start`` (default: the current
    directory) or of its nearest parent that has one. FileNotFoundError (one line) if none."""
    marker = BENCH_MODULE + ".py"
    if checkout is not None:
        root = Path(checkout).expanduser().resolve()
        for directory in (root / "benchmarks", root):
            if (directory / marker).is_file():
                return directory
        raise FileNotFoundError(f"--from {checkout}: expected a fastrnn source checkout "
                                f"(a directory with benchmarks/{marker})")
    here = (Path.cwd() if start is None else Path(start)).resolve()
    for directory in (here, *here.parents):
        if (directory / "benchmarks" / marker).is_file():
            return directory / "benchmarks"
    raise FileNotFoundError(f"fastrnn bench needs a fastrnn source checkout (the benchmarks are "
                            f"not installed with the package): run it inside one, or pass "
                            f"--from DIR; {here} is not in one")


def load_benchmarks(checkout=None, start=None):
    """Import the benchmark harness that :func:`find_benchmarks` finds and return the module.
    Only its benchmarks/ directory goes on sys.path (never the checkout: its unbuilt
    ``fastrnn/`` would shadow the fastrnn that is running)."""
    directory = find_benchmarks(checkout, start)
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    try:
        module = importlib.import_module(BENCH_MODULE)
    except ImportError as exc:   # e.g. a checkout whose benchmarks need another fastrnn
        raise ImportError(f"cannot import {directory / (BENCH_MODULE + '.py')}: {exc}") from exc
    loaded_from = Path(module.__file__).resolve().parent
    if loaded_from != directory:
        raise ValueError(f"{BENCH_MODULE} is already imported from {loaded_from}, "
                         f"not from {directory}")
    return module


def _bench(argv, debug=False):
    """``fastrnn bench [--from DIR] ...``: every option but --from goes to the harness."""
    parser = _Parser(prog="fastrnn bench", add_help=False, allow_abbrev=False)
    parser.add_argument("--from", dest="checkout", metavar="DIR")
    try:
        args, rest = parser.parse_known_args(argv)
        benchmarks = load_benchmarks(args.checkout)
    except _UsageError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USER_ERROR
    except (FileNotFoundError, ValueError, ImportError) as exc:
        if not ({"-h", "--help"} & set(argv)) or args.checkout is not None:
            if debug:
                raise
            print(f"fastrnn: error: {exc}", file=sys.stderr)
            return EXIT_USER_ERROR
        print(_BENCH_HELP, end="")
        return 0
    return benchmarks.main(rest)


def main(argv=None):
    parser = build_parser()
    debug = os.environ.get("FASTRNN_DEBUG") == "1"
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        return _bench(argv[1:], debug)
    try:
        args = parser.parse_args(argv)
        if args.version:
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
    except MemoryError as exc:
        if debug:
            raise
        print(f"fastrnn: error: not enough memory{f': {exc}' if str(exc) else ''} "
              "(choose smaller sizes)", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("fastrnn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
