"""Kernels in a child made by fork after the parent ran them (issue 9, item 11).

libgomp keeps the threads of its last team; a forked child has none of them, and its first
parallel region with two threads waited for them forever. Forked children now run every
region on one thread, with the work split as in the parent, so their results are the
parent's bit for bit. Each child gets a deadline, so a regression fails instead of hanging.
"""
import multiprocessing
import sys

import numpy as np
import pytest

import fastrnn
from fastrnn import functional as F
from fastrnn._cpu import openmp as _openmp
from fastrnn.lm.generation import _generate_tokens
from helpers import GATES

pytestmark = pytest.mark.skipif(
    sys.platform == "win32" or "fork" not in multiprocessing.get_all_start_methods(),
    reason="needs the fork start method")

DEADLINE_S = 60


def _problem(cell, B):
    rng = np.random.default_rng(3)
    G = GATES[cell]
    T, I, H = 6, 5, 70
    return dict(cell=cell, x=rng.standard_normal((T, B, I)),
                w_ih=rng.standard_normal((G * H, I)) * 0.3,
                w_hh=rng.standard_normal((G * H, H)) * 0.3,
                b_ih=rng.standard_normal(G * H) * 0.1, b_hh=rng.standard_normal(G * H) * 0.1,
                lengths=np.arange(T, T - B, -1).clip(1)), rng.standard_normal((T, B, H))


def _train_step(args, dy):
    y, state, ws = F.recurrent_forward(**args)
    dx, dstate, grads = F.recurrent_backward(ws, dy)
    return [y, dx] + [grads[k] for k in sorted(grads)]


def _generate():
    rng = np.random.default_rng(4)
    V, E, H, L = 13, 6, 48, 2
    layers = [(rng.standard_normal((4 * H, E if l == 0 else H)) * 0.4,
               rng.standard_normal((4 * H, H)) * 0.4, np.zeros(4 * H), np.zeros(4 * H))
              for l in range(L)]
    out = []
    for split, B in (("rows", 2), ("batch", 11)):
        tokens, lengths, (h, c) = _generate_tokens(
            "lstm", layers, rng.standard_normal((V, E)), rng.standard_normal((V, H)), None,
            rng.integers(0, V, size=(B, 3)), 9, seed=2, split=split)
        out += [tokens, lengths, h, c]
    return out


def _work():
    out = []
    for cell, B in (("lstm", 3), ("gru", 12), ("rnn_tanh", 20)):
        args, dy = _problem(cell, B)
        out += _train_step(args, dy)
    return out + _generate()


def _child(queue):
    queue.put((_openmp.in_forked_child(), _work()))


@pytest.fixture
def two_threads():
    fastrnn.set_num_threads(2)
    yield
    fastrnn.set_num_threads(None)


def _run_in_fork():
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue,))
    proc.start()
    try:
        forked, results = queue.get(timeout=DEADLINE_S)
    except Exception:
        proc.kill()
        proc.join()
        pytest.fail(f"the forked child did not finish its kernels within {DEADLINE_S} s "
                    f"(exit code {proc.exitcode})")
    proc.join(DEADLINE_S)
    return forked, results


def test_forked_child_after_parent_ran_kernels(two_threads):
    # The parent starts OpenMP teams first (that is what used to break the child).
    parent = _work()
    assert not _openmp.in_forked_child()
    forked, child = _run_in_fork()
    assert forked
    assert len(child) == len(parent)
    for a, b in zip(child, parent):
        np.testing.assert_array_equal(a, b)


def test_forked_child_keeps_working_after_set_num_threads(two_threads):
    """Asking the child for more threads must not hang it either."""
    _work()
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()

    def child(q):
        fastrnn.set_num_threads(4)
        args, dy = _problem("lstm", 16)
        q.put(_train_step(args, dy)[0])

    proc = ctx.Process(target=child, args=(queue,))
    proc.start()
    try:
        y = queue.get(timeout=DEADLINE_S)
    except Exception:
        proc.kill()
        proc.join()
        pytest.fail(f"the forked child hung with 4 threads asked (exit code {proc.exitcode})")
    proc.join(DEADLINE_S)
    fastrnn.set_num_threads(4)
    args, dy = _problem("lstm", 16)
    np.testing.assert_array_equal(y, _train_step(args, dy)[0])


LATE_IMPORT_SCRIPT = """
import multiprocessing, sys
import numpy as np
import fastrnn
from fastrnn import functional as F
assert "fastrnn._cpu.generate" not in sys.modules

def generate(q):
    from fastrnn.lm.generation import _generate_tokens   # first imported in the child
    rng = np.random.default_rng(0)
    H = 64
    layers = [(rng.standard_normal((4 * H, 3)), rng.standard_normal((4 * H, H)), None, None)]
    tokens, _, _ = _generate_tokens("lstm", layers, rng.standard_normal((5, 3)),
                                    rng.standard_normal((5, H)), None, np.zeros((12, 2), int),
                                    4, seed=0, split=sys.argv[1])
    q.put(tokens.tolist())

if __name__ == "__main__":
    fastrnn.set_num_threads(2)
    rng = np.random.default_rng(1)
    F.lstm_forward(rng.standard_normal((3, 16, 4)), rng.standard_normal((64, 4)),
                   rng.standard_normal((64, 16)))   # the parent starts an OpenMP team
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=generate, args=(q,), daemon=True)
    p.start()
    print(len(q.get(timeout=float(sys.argv[2]))))
    p.join()
"""


@pytest.mark.parametrize("split", ["rows", "batch"])
def test_module_first_imported_in_forked_child(tmp_path, split):
    """Generation imported only in the child, after the parent ran recurrent kernels."""
    from helpers import run_python
    script = tmp_path / "late_import.py"
    script.write_text(LATE_IMPORT_SCRIPT)
    proc = run_python([str(script), split, str(DEADLINE_S)], cwd=tmp_path, capture_output=True,
                      text=True, timeout=DEADLINE_S + 30)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "12"
