"""benchmarks/fastrnn_bench.py (the `fastrnn bench` harness, in the checkout, not the
package): the rows and the table (no timing assertions)."""
import contextlib
import re
from pathlib import Path

import numpy as np
import pytest

from fastrnn.lm.cli import load_benchmarks

benchmarks = load_benchmarks(Path(__file__).resolve().parents[1])


@pytest.fixture
def tiny_case():
    return benchmarks.kernel_cases(cells=["lstm"], sizes=[(2, 3, 4, 5)],
                                   modes=["forward+backward"])


def test_kernel_cases_cover_cells_sizes_and_modes():
    cases = benchmarks.kernel_cases()
    assert len(cases) == len(benchmarks.KERNEL_CELLS) * len(benchmarks.KERNEL_SIZES) * 2
    assert len({c.group for c in cases}) == len(cases)
    lstm = [c for c in cases if c.params["cell"] == "lstm" and c.params["B"] == 32]
    fwd = 2 * 64 * 32 * 4 * 256 * (128 + 256)
    assert sorted(c.flops for c in lstm) == [fwd, 3 * fwd]


def test_alternating_times_reverse_the_order_every_other_round():
    calls = []
    runs = {name: (lambda name=name: calls.append(name)) for name in ("a", "b")}
    times = benchmarks.alternating_times(runs, rounds=2, steps=2)
    assert calls == ["a"] * 3 + ["b"] * 3 + ["b"] * 3 + ["a"] * 3   # untimed + 2 timed each
    assert {k: len(v) for k, v in times.items()} == {"a": 4, "b": 4}


def test_every_case_is_compared_with_the_runs_best_gemm_rate(monkeypatch):
    """The rate is measured before the first case (in full) and again before each later one
    (quickly); every row's floor and shares use the best of them, so a rate measured in a
    busy minute cannot lower the floor of any case."""
    cases = benchmarks.kernel_cases(cells=["gru", "lstm", "rnn_tanh"], sizes=[(2, 3, 4, 5)],
                                    modes=["forward"])
    measured = iter([(100.0, "numpy"), (300.0, "numpy"), (200.0, "numpy")])
    calls = []

    def fake_rate(device, quick=False, threads=1):
        calls.append(quick)
        return next(measured)
    monkeypatch.setattr(benchmarks, "device_gemm_rate", fake_rate)
    rows = benchmarks.run_kernel_benchmarks(cases, threads=1, memory=False, with_torch=False,
                                            repeat=1)
    assert calls == [False, True, True]
    for row in rows:
        assert row["gemm_gflops"] == 300.0
        assert row["gemm_floor_s"] == pytest.approx(row["flops"] / 300e9)
        assert row["gemm_share"] == pytest.approx(row["gflops"] / 300.0)


def test_run_kernel_benchmarks_rows_and_table(tiny_case):
    rows = benchmarks.run_kernel_benchmarks(tiny_case, threads=1, quick=True)
    assert len(rows) == 1
    row = rows[0]
    assert row["case"] == "lstm-forward+backward-B2T3I4H5" and row["threads"] == 1
    assert row["fastrnn_s"] > 0 and row["gflops"] > 0 and row["gemm_gflops"] > 0
    assert row["gemm_share"] == pytest.approx(row["gflops"] / row["gemm_gflops"])
    # the floor: the case's GEMM flops at the measured rate; each share is floor / time
    assert row["gemm_floor_s"] == pytest.approx(row["flops"] / (row["gemm_gflops"] * 1e9))
    assert row["gemm_share"] == pytest.approx(row["gemm_floor_s"] / row["fastrnn_s"])
    assert row["fastrnn_peak_bytes"] > 0
    if benchmarks.torch_available():
        assert row["torch_s"] > 0
        assert row["ratio"] == pytest.approx(row["torch_s"] / row["fastrnn_s"])
        assert row["torch_gemm_share"] == pytest.approx(row["gemm_floor_s"] / row["torch_s"])
    else:
        assert row["torch_s"] is None and row["torch_note"] == benchmarks.TORCH_MISSING
        assert row["torch_gemm_share"] is None
    table = benchmarks.format_table(rows).splitlines()
    assert table[0].split() == ["case", "fastrnn", "ms", "torch", "ms", "ratio", "calls",
                                "GFLOP/s", "GEMM", "share", "floor", "ms", "torch", "share",
                                "fastrnn", "MiB", "torch", "MiB"]
    assert table[2].split()[0] == "lstm-forward+backward-B2T3I4H5"
    assert row["rounds"] == 2   # quick: each library timed twice
    assert re.search(r"\s\d+%\s", table[2])   # GEMM share (the torch column may say "n/a (...)")


def test_lm_cases_include_the_small_model_step():
    """fast.ai's lesson-6 model (V 86, E 42, one LSTM of 256, B 64 x T 8) is a training-step
    case, with the GEMM flops of its step (LSTM forward + backward, output layer x 3)."""
    steps = {c.params["model"]: c for c in benchmarks.lm_cases() if c.params["kind"] == "train-step"}
    assert set(steps) == {"char", "small", "word"}
    small = steps["small"]
    assert small.name == "train-step-small-V86E42H256L1-B64T8" and small.params["tokens"] == 512
    lstm = 3 * 2.0 * 512 * 4 * 256 * (42 + 256)
    assert small.flops == pytest.approx(lstm + 3 * 2.0 * 512 * 256 * 86)


def test_torch_missing_is_reported(tiny_case, monkeypatch):
    monkeypatch.setattr(benchmarks, "torch_available", lambda: False)
    monkeypatch.setattr(benchmarks, "thread_settings", _no_thread_settings)
    rows = benchmarks.run_kernel_benchmarks(tiny_case, threads=1, quick=True, memory=False)
    assert rows[0]["torch_s"] is None and rows[0]["ratio"] is None
    assert benchmarks.TORCH_MISSING in benchmarks.format_table(rows)


def test_main_prints_the_table(capsys, monkeypatch, tiny_case):
    monkeypatch.setitem(benchmarks.CASE_SETS, "kernels", lambda: tiny_case)
    assert benchmarks.main(["--quick", "--threads", "1", "--no-memory"]) == 0
    out = capsys.readouterr().out
    assert "lstm-forward+backward-B2T3I4H5" in out and "GEMM share" in out and "calls" in out
    with pytest.raises(SystemExit):
        benchmarks.main(["--cases", "nope"])


def test_gemm_rate_is_positive():
    assert benchmarks.gemm_rate(n=64, dtype=np.float32, repeat=1) > 0
    assert benchmarks.fastrnn_gemm_rate(n=64, threads=2, repeat=1) > 0


@contextlib.contextmanager
def _no_thread_settings(threads):
    yield


def test_jax_bridge_case_rows_name_their_reference():
    pytest.importorskip("jax")
    cases = benchmarks.jax_bridge_cases(sizes=[(2, 3, 4, 5)])
    assert [c.reference for c in cases] == [benchmarks.JAX_REFERENCE]
    rows = benchmarks.run_kernel_benchmarks(cases, threads=1, quick=True, memory=False)
    assert rows[0]["fastrnn_s"] > 0 and rows[0]["torch_s"] > 0   # JAX runs without torch
    assert rows[0]["reference"] == benchmarks.JAX_REFERENCE
    table = benchmarks.format_table(rows)
    assert ("the torch column of jax-bridge-lstm-B2T3I4H5 times "
            f"{benchmarks.JAX_REFERENCE}") in table


def test_jax_bridge_reference_is_the_same_lstm():
    """The pure-JAX LSTM of the reference column computes PyTorch's LSTM (fastrnn.jax's)."""
    pytest.importorskip("jax")
    fj = pytest.importorskip("fastrnn.jax")
    x, weights, _ = benchmarks._kernel_inputs("lstm", 2, 3, 4, 5, np.float32)
    params = dict(zip(benchmarks.param_names(0, False), weights))
    np.testing.assert_allclose(benchmarks._jax_lstm_scan(params, x),
                               fj.lstm(params, x)[0], rtol=1e-5, atol=1e-6)


def test_step_phases_times_every_phase_of_a_training_step(capsys):
    """benchmarks/step_phases.py (the profile of one step; loaded next to fastrnn_bench)."""
    import importlib
    phases = importlib.import_module("step_phases")   # benchmarks/ is on sys.path (above)
    times = phases.step_phases("small", threads=1, steps=2, warmup=1)
    # Without dropout the model hands the ids to the rnn, which looks the embedding rows up
    # itself: the embedding and input-dropout layers are not called.
    called = [layer for layer in phases.LAYERS if layer not in ("embedding", "input_dropout")]
    expected = {"step", "zero_grad", "clip", "optimizer"} | {
        f"{layer} {way}" for layer in called for way in ("forward", "backward")}
    assert set(times) == expected
    assert all(len(v) == 2 and min(v) > 0 for v in times.values())
    assert phases.main(["--model", "small", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "small model, 1 thread(s), 1 steps" in out and "optimizer" in out


def test_one_pass_ab_alternates_the_two_paths_and_restores_the_kernels(capsys, monkeypatch):
    """benchmarks/one_pass_ab.py: each path timed on its own steps (the per-parameter one
    really taken), and update.pyx's one-pass kernels back in place afterwards."""
    import importlib
    from fastrnn._cpu import update
    ab = importlib.import_module("one_pass_ab")
    before = {name: getattr(update, name) for name in ab.ONE_PASS}
    calls = []
    per_parameter = update.adam_update
    monkeypatch.setattr(update, "adam_update",
                        lambda *args: calls.append(args[0].size) or per_parameter(*args))
    times = ab.one_pass_ab("small", threads=1, steps=2, warmup=1)
    assert {k: len(v) for k, v in times.items()} == {"one pass": 2, "per parameter": 2}
    assert len(calls) == 2 * 7   # two per-parameter steps of the small model's 7 parameters
    assert {name: getattr(update, name) for name in ab.ONE_PASS} == before
    ab.main(["--model", "small", "--steps", "1"])
    assert "one pass" in capsys.readouterr().out


def test_python_overhead_times_the_step_outside_and_without_its_kernels(capsys, monkeypatch):
    """benchmarks/python_overhead.py: the stubbed steps call each kernel once only (the
    first), the timed ones exclude the kernels' time, and every kernel is put back."""
    import importlib
    from fastrnn._cpu import update
    po = importlib.import_module("python_overhead")
    calls = []
    zero_arrays = update.zero_arrays   # called once per step (zero_grad)
    monkeypatch.setattr(update, "zero_arrays", lambda *a: calls.append(1) or zero_arrays(*a))
    before = [(m, n, getattr(m, n)) for m in po.KERNEL_MODULES for n in dir(m)]
    times = po.python_overhead("small", threads=1, steps=3, warmup=1)
    assert {k: len(v) for k, v in times.items()} == {"outside": 3, "step": 3, "stubbed": 3}
    assert all(0 < o < s for o, s in zip(times["outside"], times["step"]))
    # warm-up, 3 timed steps, then only the stubs' first call of their 1 + 3 steps
    assert len(calls) == 1 + 3 + 1
    assert np.median(times["stubbed"]) < np.median(times["step"])
    assert all(getattr(m, n) is f for m, n, f in before)
    po.main(["--model", "small", "--steps", "2"])
    assert "stubbed" in capsys.readouterr().out


@pytest.fixture
def floor():
    """benchmarks/blas_floor.py (benchmarks/ is on sys.path: see load_benchmarks above)."""
    import importlib
    return importlib.import_module("blas_floor")


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_blas_floor_times_the_cases_own_products(cell, capsys, floor):
    """benchmarks/blas_floor.py: its products are the case's GEMMs (their flops are
    kernel_flops, the floor's) and each is timed; the printed line compares their sum with
    the floor."""
    size = (3, 4, 5, 6)
    products = floor.case_products(cell, *size)
    assert floor.product_flops(products) == benchmarks.kernel_flops(cell, "forward+backward",
                                                                    *size)
    times, rate, flops = floor.blas_floor(cell, size, threads=1, repeat=1)
    assert set(times) == set(products) and min(times.values()) > 0 and rate > 0
    assert flops == floor.product_flops(products)
    floor.main(["--cell", cell, "--size", "3,4,5,6", "--threads", "1", "--repeat", "1"])
    assert "BLAS reaches" in capsys.readouterr().out


@pytest.mark.parametrize("model", sorted(benchmarks.LM_MODELS))
def test_blas_floor_times_a_model_steps_own_products(model, capsys, monkeypatch, floor):
    """blas_floor.py --model: the products of a language model's training step are the GEMMs
    `fastrnn bench`'s floor counts for it (_lm_flops), every layer's and the output layer's,
    the per-step ones split as the kernels split them."""
    V, E, H, L, B, T = benchmarks.LM_MODELS[model]
    products = floor.model_products(model)
    assert floor.product_flops(products) == benchmarks._lm_flops(V, E, H, L, B * T)
    assert sum(floor.is_per_step(name) for name in products) == 2 * L
    monkeypatch.setitem(benchmarks.LM_MODELS, "small", (7, 3, 4, 2, 5, 3))   # quick to time
    times, rate, flops = floor.blas_floor(None, None, threads=1, repeat=1, model="small")
    assert len(times) == 6 * 2 + 3 and min(times.values()) > 0 and rate > 0
    floor.main(["--model", "small", "--threads", "1", "--repeat", "1"])
    out = capsys.readouterr().out
    assert "layer 1: dW_hh = dG^T y" in out and "small model step, 1 threads" in out


@pytest.mark.parametrize("threads", [1, 2])
def test_blas_floor_runs_a_per_step_product_on_the_threads_rows(threads, rng, floor):
    """blas_floor.rows_on_threads: the per-step products (b a weight or its transpose) as
    a @ b, each thread's rows on its own BLAS call."""
    a = rng.standard_normal((40, 24)).astype(np.float32)
    w = rng.standard_normal((56, 24)).astype(np.float32)
    for b in (w.T, np.ascontiguousarray(w.T)):
        with benchmarks.thread_settings(threads):
            got = floor.rows_on_threads(a, b, threads)()
        np.testing.assert_allclose(got, a @ b, rtol=1e-5, atol=1e-5)


def test_varlen_cases_and_summary(capsys, monkeypatch):
    """The varlen set: lengths and padded rows of each cell, and a summary line putting the
    time with lengths over the padded time next to the share of real tokens."""
    cases = benchmarks.varlen_cases()
    assert {(c.params["cell"], c.params["layout"]) for c in cases} == {
        (cell, layout) for cell in ("lstm", "gru") for layout in ("lengths", "padded")}
    assert all((c.params["B"], c.params["T"], c.params["I"], c.params["H"]) == (32, 200, 128, 256)
               for c in cases)
    lengths = benchmarks.varlen_lengths(32, 200)
    assert lengths.min() >= 50 and lengths.max() <= 200
    tiny = benchmarks.varlen_cases(cells=["gru"], sizes=[(10, 6, 3, 4)])
    monkeypatch.setitem(benchmarks.CASE_SETS, "varlen", lambda: tiny)
    assert benchmarks.main(["--quick", "--threads", "1", "--no-memory", "--cases", "varlen"]) == 0
    out = capsys.readouterr().out
    assert "varlen-gru-lengths-B10T6I3H4" in out and "varlen-gru-padded-B10T6I3H4" in out
    (line,) = [s for s in out.splitlines() if s.startswith("varlen gru B10T6I3H4")]
    share = benchmarks.varlen_lengths(10, 6).sum() / 60
    assert f"real tokens {100 * share:.1f}%" in line and "fastrnn lengths/padded" in line
    if benchmarks.torch_available():
        assert "PyTorch packed/padded" in line


def test_torch_char_curve_writes_records_fastrnn_plot_reads(tmp_path, monkeypatch):
    """benchmarks/torch_char_curve.py (PyTorch's loop for the README's training curve): a
    short run writes --log records with the keys fastrnn plot draws."""
    pytest.importorskip("torch")
    import importlib
    import json
    curve = importlib.import_module("torch_char_curve")   # benchmarks/ is on sys.path
    log = tmp_path / "torch.jsonl"
    corpus = tmp_path / "corpus.txt"   # 32 streams x 64 steps need 2,080 training characters
    corpus.write_text("the cat sat on the mat.\n" * 150, encoding="utf-8")
    monkeypatch.setattr("sys.argv", ["torch_char_curve.py", str(corpus), "--time-limit", "0.2",
                                     "--eval-every", "2", "--threads", "1", "--log", str(log)])
    curve.main()
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records and all({"step", "train_seconds", "train_loss", "val_loss"} <= set(r)
                           for r in records)
    assert records[-1]["train_seconds"] >= 0.2


def test_each_timed_call_follows_a_call_of_the_same_library():
    """run_case alternates the libraries, but each timed call comes right after an untimed
    call of its own library (as in a training loop), not after the other library's."""
    calls = []

    def maker(name):
        return lambda: (lambda: calls.append(name))

    case = benchmarks.Case(name="order", group="order", make_fastrnn=maker("fastrnn"),
                           make_torch=maker("torch"), flops=1.0, host_memory=False,
                           reference="order")
    benchmarks.run_case(case, repeat=3, memory=False)
    assert calls == ["fastrnn", "torch"] + ["fastrnn", "fastrnn", "torch", "torch"] * 3


def _case_taking(seconds):
    """A case whose fastrnn call takes ``seconds`` and whose torch call takes none, on the
    clock of _fake_clock (no real waiting, so the rounds do not depend on the machine)."""
    return benchmarks.Case(name="timed", group="timed", make_fastrnn=lambda: (lambda: seconds),
                           make_torch=lambda: (lambda: 0.0), flops=1.0, host_memory=False,
                           reference="timed")


@pytest.fixture
def _fake_clock(monkeypatch):
    """run_case's timer returns what the timed call returns (its seconds)."""
    monkeypatch.setattr(benchmarks, "_timed", lambda fn: fn())


def test_min_time_adds_rounds_until_fastrnns_calls_fill_it(_fake_clock):
    """With min_time, a fast case runs more alternating rounds than ``repeat``, until
    fastrnn's timed calls add up to min_time; both libraries get the same number of calls
    (reported as rounds). Without it, exactly ``repeat``."""
    row = benchmarks.run_case(_case_taking(0.002), repeat=2, memory=False, min_time=0.05)
    assert 25 >= row["rounds"] >= 0.05 / 0.0025
    assert row["fastrnn_s"] * row["rounds"] >= 0.05 * 0.9
    row = benchmarks.run_case(_case_taking(0.002), repeat=2, memory=False)
    assert row["rounds"] == 2
    row = benchmarks.run_case(_case_taking(0.02), repeat=4, memory=False, min_time=0.01)
    assert row["rounds"] == 4   # repeat is the least


def test_min_time_stops_at_max_rounds(monkeypatch):
    monkeypatch.setattr(benchmarks, "MAX_ROUNDS", 7)
    calls = []

    def fastrnn_call():   # fails at once, instead of running 60 s, if the cap is ignored
        calls.append(None)
        if len(calls) > 100:
            raise RuntimeError("run_case went past MAX_ROUNDS")
    case = benchmarks.Case(name="cap", group="cap", make_fastrnn=lambda: fastrnn_call,
                           make_torch=lambda: (lambda: None), flops=1.0, host_memory=False,
                           reference="cap")
    row = benchmarks.run_case(case, repeat=2, memory=False, min_time=60.0)
    assert row["rounds"] == 7


def test_quick_ignores_min_time(tiny_case):
    rows = benchmarks.run_kernel_benchmarks(tiny_case, threads=1, quick=True, memory=False,
                                            min_time=30.0)
    assert rows[0]["rounds"] == 2


def test_main_checks_repeat_and_min_time(capsys):
    for argv in (["--repeat", "0"], ["--min-time", "-1"], ["--min-time", "nan"]):
        with pytest.raises(SystemExit) as exc:
            benchmarks.main(argv + ["--quick"])
        assert exc.value.code == 2
        assert "--min-time" in capsys.readouterr().err
