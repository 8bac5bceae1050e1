"""Training logs as JSON lines, and learning curves drawn from them.

``fastrnn train --log run.jsonl`` appends every validation record (the dicts of
``Trainer.history``) to a file as one JSON object per line; ``fastrnn plot`` reads such files
and draws one curve per file. Drawing needs matplotlib, an optional extra
(``pip install "fastrnn[plot]"``); nothing else here does.
"""
import io
import json
import math
from pathlib import Path

from .checkpoint import atomic_write

# The x axes a curve can be drawn against (keys of every validation record).
X_KEYS = ("step", "train_seconds", "tokens", "epoch")
_AXIS_LABELS = {"step": "training step", "train_seconds": "training time (s)",
                "tokens": "training tokens", "epoch": "epoch",
                "val_loss": "validation loss (nats/token)",
                "train_loss": "training loss (nats/token)",
                "val_bits_per_token": "validation bits/token",
                "val_perplexity": "validation perplexity", "lr": "learning rate",
                "tokens_per_second": "tokens/s"}
PLOT_EXTRA = 'pip install "fastrnn[plot]"'


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message says what to install."""


class JsonLinesLog:
    """Appends records (dicts) to ``path`` as JSON lines, flushing each line, so that a
    crashed or interrupted run keeps every record written before. Usable as the Trainer's
    ``log`` callable; close it (or use it as a context manager) when done."""

    def __init__(self, path):
        self.path = Path(path)
        self._file = open(self.path, "a", encoding="utf-8")

    def __call__(self, record):
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_log(path):
    """The records of a JSON-lines log as a list of dicts (blank lines skipped). ValueError
    naming the file and line for a line that is not a JSON object."""
    with open(path, encoding="utf-8") as f:
        return [record for _, record in _parse(path, f)]


def _parse(path, lines):
    """(line, record) pairs of the non-blank ``lines`` of the log ``path``."""
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{path} line {number}: not valid JSON ({exc})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path} line {number}: expected a JSON object (a record), "
                             f"got {type(record).__name__}")
        records.append((line, record))
    return records


def trim_log(path, step):
    """Prepare the log of a run resumed from its checkpoint at ``step`` for appending: drop
    the records after ``step`` (logged by the interrupted run after its last checkpoint: the
    resumed run redoes those steps and logs them again) and a last line cut short by a
    crash (no newline, not valid JSON). Rewritten atomically if anything changes; returns
    the number of lines dropped. ValueError naming the file and line for any other bad line."""
    with open(path, encoding="utf-8", newline="") as f:
        lines = f.readlines()
    dropped = 0
    if lines and not lines[-1].endswith("\n"):
        try:
            json.loads(lines[-1])
            lines[-1] += "\n"   # complete but for its newline
        except ValueError:
            lines.pop()
            dropped += 1
    kept = [line for line, record in _parse(path, lines)
            if not (isinstance(record.get("step"), int) and record["step"] > step)]
    dropped += len([line for line in lines if line.strip()]) - len(kept)
    text = "".join(kept)
    with open(path, encoding="utf-8", newline="") as f:
        unchanged = f.read() == text
    if not unchanged:
        atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    return dropped


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _points(records, path, x, y):
    """The finite (x, y) pairs of one log; ValueError when it has none."""
    points = [(r[x], r[y]) for r in records if _is_number(r.get(x)) and _is_number(r.get(y))]
    if not points:
        keys = sorted({k for r in records for k, v in r.items() if _is_number(v)})
        raise ValueError(f"{path} has no record with numbers for both {x!r} and {y!r} "
                         f"(its records have {keys or 'no numbers'})")
    return points


def plot_logs(paths, out, x="step", y="val_loss"):
    """Draw ``y`` against ``x`` from each JSON-lines log in ``paths`` (one line per file,
    labelled with the file's name) and write the figure to ``out`` atomically, in the format
    its extension names (png, pdf, svg, ...). Every file is read and checked before anything
    is drawn. MissingExtraError without matplotlib; ValueError for bad logs or keys."""
    if x not in X_KEYS:
        raise ValueError(f"x must be one of {X_KEYS}, got {x!r}")
    if not paths:
        raise ValueError("paths must name at least one log file")
    curves = [(Path(p).name, _points(read_log(p), p, x, y)) for p in paths]
    try:
        from matplotlib.figure import Figure   # no pyplot: no global state, no display
    except ImportError:
        raise MissingExtraError(f"plotting needs matplotlib: {PLOT_EXTRA}") from None
    out = Path(out)
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    formats = figure.canvas.get_supported_filetypes()
    file_format = out.suffix[1:].lower()
    if file_format not in formats:
        raise ValueError(f"output {out} must end in one of "
                         f"{', '.join('.' + f for f in sorted(formats))}")
    axes = figure.add_subplot()
    for label, points in curves:
        xs, ys = zip(*points)
        axes.plot(xs, ys, marker="o" if len(points) < 30 else None, markersize=3, label=label)
    axes.set_xlabel(_AXIS_LABELS.get(x, x))
    axes.set_ylabel(_AXIS_LABELS.get(y, y))
    axes.grid(True, alpha=0.3)
    axes.legend()
    buffer = io.BytesIO()
    figure.savefig(buffer, format=file_format)   # drawn in memory: a failure writes nothing
    atomic_write(out, lambda f: f.write(buffer.getvalue()))
    return out
