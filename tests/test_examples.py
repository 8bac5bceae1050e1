"""The four tutorial examples run end to end with --quick (as CI runs them) and end with
sane figures: losses below log V, the entropy gap reported, PyTorch agreeing at equal steps.

Each runs in a child process on generated text (no corpus), under a minute.
"""
import math
import re
import sys
from pathlib import Path

import pytest

from helpers import run_python

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FLOAT = r"([-+]?\d+\.\d+(?:e[-+]?\d+)?)"


def run_example(name, tmp_path, *args):
    if not (EXAMPLES / name).exists():
        pytest.skip("examples/ is not in this installation")
    result = run_python([str(EXAMPLES / name), *args], cwd=tmp_path, capture_output=True,
                        text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def figure(output, pattern):
    """The float(s) of the last line matching ``pattern`` (a regex with FLOAT groups)."""
    matches = re.findall(pattern, output)
    assert matches, f"no line matches {pattern!r} in:\n{output[-3000:]}"
    last = matches[-1]
    return tuple(map(float, last)) if isinstance(last, tuple) else float(last)


def check_torch(output):
    """Where PyTorch is installed, fastrnn's losses equal PyTorch's at every compared step
    (both in float64, same weights and batches)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        assert "PyTorch comparison skipped: PyTorch is not installed" in output
        return
    worst = re.findall(r"largest \|fastrnn - PyTorch\| over \d+ steps: " + FLOAT, output)
    assert worst, output[-3000:]
    assert max(map(float, worst)) < 1e-9


def test_theano_lstm_nonsense(tmp_path):
    out = run_example("theano_lstm_nonsense.py", tmp_path, "--quick")
    entropy, every_word, log_v = figure(
        out, r"exact entropy of the grammar, first word given .*?: " + FLOAT
        + r" nats/token \[every word predicted: " + FLOAT + r"\]; log V = " + FLOAT)
    # The notebook's grammar, scored as the notebook trains (first word given)
    assert (entropy, every_word) == (2.3580, 2.3185)
    assert 0 < entropy < log_v
    rows = re.findall(r"held-out " + FLOAT + r", training " + FLOAT + r", entropy " + FLOAT
                      + r", gap " + FLOAT, out)
    assert len(rows) == 2   # the RNN and the LSTM
    for held_out, training, reported, gap in map(lambda r: tuple(map(float, r)), rows):
        assert reported == entropy
        assert training < log_v and held_out < log_v          # both models learned something
        assert held_out >= entropy - 0.02                     # nothing beats the entropy
        assert gap == pytest.approx(held_out - entropy, abs=2e-4)
    errors = [float(e) for e in re.findall(r"epoch \d+, error=" + FLOAT, out)]
    assert errors[-1] < errors[0]                             # the notebook's printed error falls
    assert re.search(r"^   the .+", out, re.M)                 # greedy continuations of "the"
    check_torch(out)


def test_fastai_nietzsche(tmp_path):
    out = run_example("fastai_nietzsche.py", tmp_path, "--quick")
    log_v = figure(out, r"summary: validation loss, nats per predicted character \(log V = "
                   + FLOAT)
    losses = dict((name.strip(), float(v)) for name, v in
                  re.findall(r"^ *([\w -]+): " + FLOAT + r"$", out.split("== summary")[-1], re.M))
    assert set(losses) >= {"3-char", "8-char RNN", "sequence RNN", "one-hot RNN",
                           "stateful LSTM", "NumPy RNN", "one-hot GRU"}
    for name, loss in losses.items():
        assert math.isfinite(loss) and loss < log_v, name
    assert re.search(r"get_next\(' th'\) = '.'", out)
    assert "[' ', 't', 'h', 'i', 's', ' ', 'i', 's']" in out
    assert re.search(r"^Error:\d+\.\d+", out, re.M)
    check_torch(out)


def test_straight_dope_time_machine(tmp_path):
    out = run_example("straight_dope_time_machine.py", tmp_path, "--quick")
    initial, log_v = figure(out, r"initial validation loss " + FLOAT + r" vs log V = " + FLOAT)
    assert initial == pytest.approx(log_v, abs=0.01)   # N(0, 0.01^2) weights: uniform output
    final = figure(out, r"validation loss " + FLOAT + r" nats/char")
    assert final < log_v - 0.2
    assert re.search(r"^Epoch 0\. Loss: ", out, re.M)
    assert "prefix: " in out
    assert "<- labels: the inputs moved on by one" in out
    check_torch(out)


def test_wildml_reddit_rnn(tmp_path):
    out = run_example("wildml_reddit_rnn.py", tmp_path, "--quick")
    log_v = figure(out, r"Expected Loss for random predictions: " + FLOAT)
    initial = [float(v) for v in re.findall(r"^Actual loss: " + FLOAT, out, re.M)]
    assert len(initial) == 2 and all(abs(v - log_v) < 0.15 for v in initial)
    trained = figure(out, r"RNN trained: " + FLOAT)
    assert trained < log_v - 0.3
    char_loss = figure(out, r"char LSTM validation: " + FLOAT)
    assert math.isfinite(char_loss)
    assert "-- Test with temperature of 0.3 --" in out
    assert "Example sentence after Pre-processing: ['SENTENCE_START'" in out
    check_torch(out)


def test_examples_refuse_a_missing_corpus(tmp_path):
    """Without --quick a corpus is required: one usage line, exit 2."""
    for name in ("fastai_nietzsche.py", "straight_dope_time_machine.py", "wildml_reddit_rnn.py"):
        result = run_python([str(EXAMPLES / name)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
        assert result.returncode == 2
        assert "give the corpus" in result.stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
