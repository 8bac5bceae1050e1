"""Model and training-state files: one ``.npz`` holding arrays plus a JSON header.

Why ``.npz`` and not pickle: loading never executes code from the file (``allow_pickle=False``),
the arrays keep their exact bits, and NumPy alone reads it. Nested state (optimizer buffers,
random-generator states, counters) is split by :func:`split_tree` into flat arrays and a
JSON tree that points at them, and joined back by :func:`join_tree`.

Files are written atomically: to a temporary file in the same directory, flushed to disk,
then renamed over the target, so an interrupted save never leaves a truncated file behind and
never destroys the previous one.
"""
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

FORMAT = "fastrnn"
FORMAT_VERSION = 1
_HEADER_KEY = "__header__"
_ARRAY_TAG = "__array__"


class CheckpointError(ValueError):
    """A file that is not a readable fastrnn checkpoint of the expected kind and version."""


def split_tree(tree, prefix):
    """Replace every ndarray leaf of a nested dict/list by a reference.

    Returns ``(json_tree, arrays)``: ``json_tree`` is JSON-serialisable (arrays become
    ``{"__array__": key}``), ``arrays`` maps the keys (``prefix/path/to/leaf``) to the arrays.
    """
    arrays = {}

    def walk(node, path):
        if isinstance(node, np.ndarray):
            arrays[path] = node
            return {_ARRAY_TAG: path}
        if isinstance(node, dict):
            return {str(k): walk(v, f"{path}/{k}") for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(node)]
        if isinstance(node, np.generic):
            return node.item()
        return node

    return walk(tree, prefix), arrays


def join_tree(json_tree, arrays):
    """Inverse of :func:`split_tree`."""
    if isinstance(json_tree, dict):
        if set(json_tree) == {_ARRAY_TAG}:
            key = json_tree[_ARRAY_TAG]
            if key not in arrays:
                raise CheckpointError(f"checkpoint is missing the array {key!r}")
            return arrays[key]
        return {k: join_tree(v, arrays) for k, v in json_tree.items()}
    if isinstance(json_tree, list):
        return [join_tree(v, arrays) for v in json_tree]
    return json_tree


def save(path, kind, header, arrays):
    """Atomically write ``arrays`` (dict str -> ndarray) and a JSON ``header`` to ``path``.

    ``kind`` names what the file holds (e.g. "language-model"); :func:`load` checks it.
    """
    from . import __version__

    path = Path(path)
    full_header = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind,
                   "fastrnn_version": __version__, **header}
    encoded = np.frombuffer(json.dumps(full_header).encode("utf-8"), dtype=np.uint8)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise FileNotFoundError(f"directory for the checkpoint does not exist: {directory}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{_HEADER_KEY: encoded}, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load(path, kind):
    """Read a file written by :func:`save`: returns ``(header, arrays)``.

    Raises FileNotFoundError for a missing file and :class:`CheckpointError` for a corrupt
    or foreign file, one of another kind, or one from an incompatible format version.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"model path must be a file, got the directory {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if _HEADER_KEY not in npz.files:
                raise CheckpointError(f"{path} is not a fastrnn model file (no header)")
            header = json.loads(npz[_HEADER_KEY].tobytes().decode("utf-8"))
            arrays = {name: npz[name] for name in npz.files if name != _HEADER_KEY}
    except CheckpointError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not a readable fastrnn model file "
                              f"(corrupt or another format): {exc}") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fastrnn model file")
    if header.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by fastrnn {header.get('fastrnn_version', '?')} in file format "
            f"{header.get('format_version')!r}; this fastrnn reads format {FORMAT_VERSION}")
    if header.get("kind") != kind:
        raise CheckpointError(f"{path} holds a {header.get('kind')!r}, expected a {kind!r}")
    return header, arrays
