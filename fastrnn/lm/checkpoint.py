"""Model and training-state files: one ``.npz`` holding arrays plus a JSON header.

Why ``.npz`` and not pickle: loading never executes code from the file (``allow_pickle=False``),
the arrays keep their exact bits, and NumPy alone reads it. Nested state (optimizer buffers,
random-generator states, counters) is split by :func:`split_tree` into flat arrays and a
JSON tree that points at them, and joined back by :func:`join_tree`.

Files are written atomically (:func:`atomic_write`): to a temporary file
``<target>.<pid>.<random>.tmp`` in the same directory, flushed to disk, then renamed over the
target, so an interrupted save never leaves a truncated file behind and never destroys the
previous one. The temporary files a killed process left for the same target are removed by
the next save of that target.

Loading treats the file as untrusted and reads it in this order, so that a small hostile file
cannot make it allocate or decompress much:

1. the zip directory: every member must be a stored (uncompressed) ``.npy`` whose size agrees
   with the file's, so what a load reads is bounded by the size of the file itself
   (fastrnn writes uncompressed files; a compressed one is refused, never inflated);
2. the JSON header (at most ``MAX_HEADER_BYTES``, nested at most ``MAX_JSON_DEPTH`` deep):
   format, version and kind;
3. every array's dtype and shape, from the ``.npy`` headers alone (no data read): plain
   bool/int/float dtypes only (no objects, complex, strings or records), and sizes that
   match the member; then the caller's ``check(header, specs)`` compares them with what the
   header declares;
4. only then the array data.
"""
import json
import os
import re
import secrets
import stat
import threading
import zipfile
from pathlib import Path

import numpy as np

from .._version import __version__

FORMAT = "fastrnn"
FORMAT_VERSION = 1
_HEADER_KEY = "__header__"
_ARRAY_TAG = "__array__"

MAX_HEADER_BYTES = 64 * 2**20
"""Largest JSON header a file may hold (64 MiB: a two-million-word vocabulary fits)."""
MAX_JSON_DEPTH = 32
"""Deepest nesting of lists/dicts a header may have (fastrnn writes at most about 8)."""
MAX_MEMBERS = 100_000
"""Most arrays a file may hold."""
_ARRAY_KINDS = "biuf"   # bool, signed and unsigned integers, real floats


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
            if not isinstance(key, str) or key not in arrays:
                raise CheckpointError(f"checkpoint is missing the array {key!r}")
            return arrays[key]
        return {k: join_tree(v, arrays) for k, v in json_tree.items()}
    if isinstance(json_tree, list):
        return [join_tree(v, arrays) for v in json_tree]
    return json_tree


# ---- writing --------------------------------------------------------------------------------

_TMP_SUFFIX = ".tmp"
_writing = set()             # temporary files this process is writing right now
_writing_lock = threading.Lock()


def _temp_pattern(name):
    """Regex for the temporary files of the target file ``name`` (see :func:`atomic_write`)."""
    return re.compile(re.escape(name) + r"\.(\d+)\.[0-9a-f]{16}" + re.escape(_TMP_SUFFIX))


def _process_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True    # someone else's process (or a pid we cannot ask about): keep its file
    return True


def _remove_stale_temp_files(directory, name):
    """Delete the temporary files an interrupted save of ``directory/name`` left behind.

    Only regular files (never symlinks or directories) whose name matches this target's own
    pattern exactly, and whose writer is gone: another live process may be saving the same
    target right now, and this process's own saves in flight are in ``_writing``.
    """
    pattern = _temp_pattern(name)
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None:
            continue
        path = os.path.join(directory, entry.name)
        pid = int(match.group(1))
        with _writing_lock:
            in_flight = path in _writing
        if in_flight or (pid != os.getpid() and _process_exists(pid)):
            continue
        try:
            if stat.S_ISREG(os.lstat(path).st_mode):
                os.remove(path)
        except OSError:
            pass   # gone already, or not ours to remove: never fail a save over it


def atomic_write(path, write):
    """Write ``path`` atomically: ``write(f)`` fills a binary file object, which becomes
    ``path`` only once it is complete and on disk.

    The temporary file is ``<path>.<pid>.<16 hex digits>.tmp`` in the same directory; it is
    removed if ``write`` fails, and temporary files of the same target left by a killed
    process are removed before writing. Raises FileNotFoundError if the directory does not
    exist; whatever ``write`` raises leaves the previous ``path`` untouched.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise FileNotFoundError(f"directory to write {path.name} in does not exist: {directory}")
    _remove_stale_temp_files(directory, path.name)
    tmp = os.path.join(directory, f"{path.name}.{os.getpid()}.{secrets.token_hex(8)}{_TMP_SUFFIX}")
    with _writing_lock:
        _writing.add(tmp)
    try:
        # "x": never open (or follow) something that already has this name.
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise
    finally:
        with _writing_lock:
            _writing.discard(tmp)


def _check_array_to_save(key, array):
    if not isinstance(key, str) or not key or key == _HEADER_KEY:
        raise ValueError(f"array names must be non-empty strings other than {_HEADER_KEY!r}, "
                         f"got {key!r}")
    if not isinstance(array, np.ndarray):
        raise TypeError(f"array {key!r} must be a NumPy array, got {type(array).__name__}")
    if array.dtype.kind not in _ARRAY_KINDS or not array.dtype.isnative:
        raise TypeError(f"array {key!r} has dtype {array.dtype}: a model file holds only "
                        "native bool, integer and real float arrays")


def save(path, kind, header, arrays):
    """Atomically write ``arrays`` (dict str -> ndarray) and a JSON ``header`` to ``path``.

    ``kind`` names what the file holds (e.g. "language-model"); :func:`load` checks it.
    Whatever :func:`load` would refuse (object, complex or string arrays, a header that is
    not JSON or too large or deep) is refused here, before the file is touched.
    """
    for key, array in arrays.items():
        _check_array_to_save(key, array)
    full_header = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind,
                   "fastrnn_version": __version__, **header}
    _check_depth(full_header)
    try:
        encoded = json.dumps(full_header).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise TypeError(f"checkpoint header must be JSON-serialisable: {exc}") from exc
    if len(encoded) > MAX_HEADER_BYTES:
        raise ValueError(f"checkpoint header is {len(encoded):,} bytes, more than the "
                         f"{MAX_HEADER_BYTES:,} a file may hold")
    encoded = np.frombuffer(encoded, dtype=np.uint8)
    atomic_write(path, lambda f: np.savez(f, **{_HEADER_KEY: encoded}, **arrays))


# ---- reading --------------------------------------------------------------------------------

def _check_depth(tree, limit=MAX_JSON_DEPTH):
    """Raise ValueError if lists/dicts in ``tree`` nest deeper than ``limit`` (no recursion)."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list, tuple)):
            if depth > limit:
                raise ValueError(f"header nests deeper than {limit} levels")
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)


def _read_npy_header(fp, name):
    """(shape, fortran_order, dtype, header_length) of the ``.npy`` stream ``fp``, reading
    only its header."""
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(fp)
    else:
        raise ValueError(f"array {name!r} uses .npy format {version}, expected 1.0 or 2.0")
    return shape, fortran_order, dtype, fp.tell()


def _member_specs(zf, file_size):
    """Check the zip directory and every member's ``.npy`` header; returns
    ``{name: (info, shape, dtype)}`` without reading any array data."""
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise ValueError(f"it holds {len(infos):,} arrays, more than {MAX_MEMBERS:,}")
    specs, total = {}, 0
    for info in infos:
        if not info.filename.endswith(".npy"):
            raise ValueError(f"member {info.filename!r} is not a .npy array")
        name = info.filename[:-len(".npy")]
        if name in specs:
            raise ValueError(f"array {name!r} appears twice")
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise ValueError(f"array {name!r} is compressed; fastrnn reads only the uncompressed "
                             "files it writes")
        total += info.file_size
        if total > file_size:
            raise ValueError("its arrays claim more bytes than the file holds")
        with zf.open(info) as fp:
            shape, _, dtype, offset = _read_npy_header(fp, name)
        if dtype.kind not in _ARRAY_KINDS or not dtype.isnative or dtype.hasobject:
            raise ValueError(f"array {name!r} has dtype {dtype}; expected native bool, integer "
                             "or real float")
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if offset + nbytes != info.file_size:
            raise ValueError(f"array {name!r} declares shape {shape} of {dtype} ({nbytes:,} "
                             f"bytes) but holds {info.file_size - offset:,}")
        specs[name] = (info, tuple(shape), dtype)
    return specs


def _parse_header(zf, specs, path, kind):
    if _HEADER_KEY not in specs:
        raise CheckpointError(f"{path} is not a fastrnn model file (no header)")
    info, shape, dtype = specs[_HEADER_KEY]
    if dtype != np.uint8 or len(shape) != 1:
        raise ValueError(f"its header must be 1-D uint8, got shape {shape} of {dtype}")
    if shape[0] > MAX_HEADER_BYTES:
        raise ValueError(f"its header is {shape[0]:,} bytes, more than {MAX_HEADER_BYTES:,}")
    with zf.open(info) as fp:
        data = np.lib.format.read_array(fp, allow_pickle=False)
    try:
        header = json.loads(data.tobytes().decode("utf-8"))
    except RecursionError:
        raise ValueError(f"its header nests deeper than {MAX_JSON_DEPTH} levels") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fastrnn model file")
    if header.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by fastrnn {header.get('fastrnn_version', '?')} in file format "
            f"{header.get('format_version')!r}; this fastrnn reads format {FORMAT_VERSION}")
    if header.get("kind") != kind:
        raise CheckpointError(f"{path} holds a {header.get('kind')!r}, expected a {kind!r}")
    _check_depth(header)
    return header


def _open_checked(path, kind, check, read_arrays):
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"model path must be a file, got the directory {path}")
    with open(path, "rb") as f:
        if f.read(6) == b"\x93NUMPY":
            raise CheckpointError(f"{path} is a single NumPy .npy array, not a fastrnn model "
                                  "file (.npz)")
    arrays = {}
    try:
        with zipfile.ZipFile(path) as zf:
            specs = _member_specs(zf, os.path.getsize(path))
            header = _parse_header(zf, specs, path, kind)
            del specs[_HEADER_KEY]
            if check is not None:
                try:
                    check(header, {name: spec[1:] for name, spec in specs.items()})
                except CheckpointError:
                    raise
                except (ValueError, TypeError, KeyError) as exc:
                    raise CheckpointError(f"{path} is a damaged model file: "
                                          f"{exc.args[0] if exc.args else exc}") from exc
            if read_arrays:
                for name, (info, _, _) in specs.items():
                    with zf.open(info) as fp:
                        arrays[name] = np.lib.format.read_array(fp, allow_pickle=False)
    except CheckpointError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, UnicodeDecodeError,
            NotImplementedError) as exc:
        raise CheckpointError(f"{path} is not a readable fastrnn model file "
                              f"(corrupt or another format): {exc}") from exc
    return header, arrays


def load(path, kind, check=None):
    """Read a file written by :func:`save`: returns ``(header, arrays)``.

    ``check(header, specs)``, if given, is called after the header is read and before any
    array data is: ``specs`` maps each array's name to its ``(shape, dtype)``. It raises
    ValueError (or CheckpointError) to refuse the file.

    Raises FileNotFoundError for a missing file and :class:`CheckpointError` for a corrupt
    or foreign file, one of another kind, or one from an incompatible format version.
    """
    return _open_checked(path, kind, check, read_arrays=True)


def read_header(path, kind):
    """The JSON header of a file written by :func:`save`, checked like :func:`load` does,
    without reading the arrays."""
    return _open_checked(path, kind, None, read_arrays=False)[0]
