"""Generation with bfloat16 weights (opt-in, weights="bfloat16"): exactly the float32 loop's
algorithm on weights rounded to bfloat16, checked against the float64 NumPy reference run on
those rounded weights; the float32 path is untouched; bad requests refused."""
import sys
from pathlib import Path

import numpy as np
import pytest

import fastrnn
from fastrnn.lm.generation import _generate_tokens
from fastrnn.lm.model import LanguageModel
from test_generation import CELLS, make_model, np_greedy


# The NumPy twin of the kernel's rounding lives with the accuracy benchmark that reports it.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from bf16_generation import to_bf16  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_threads():
    yield
    fastrnn.set_num_threads(None)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("table", [True, False])
@pytest.mark.parametrize("threads", [1, 2])
def test_bf16_weights_equal_the_reference_on_rounded_weights(cell, table, threads):
    """H = 37 and E = 7: odd column counts (a zero-padded last pair) and row groups that do not
    fill 16 rows, split between threads; B = 3 rows; the state after 10 steps and greedy
    tokens against float64 NumPy with the same rounded weights."""
    fastrnn.set_num_threads(threads)
    layers, emb, out_w, out_b = make_model(cell, V=11, E=7, H=37, L=2, dtype=np.float32,
                                           seed=3, scale=0.3)
    rounded = [(to_bf16(w_ih) if (l > 0 or not table) else w_ih, to_bf16(w_hh), b_ih, b_hh)
               for l, (w_ih, w_hh, b_ih, b_hh) in enumerate(layers)]
    prime = np.random.default_rng(4).integers(0, 11, (3, 3))
    want_tok, _, want_h, want_c = np_greedy(cell, rounded, emb, to_bf16(out_w), out_b, prime, 10)
    tokens, lengths, state = _generate_tokens(cell, layers, emb, out_w, out_b, prime, 10,
                                              greedy=True, layer0_table=table,
                                              weights="bfloat16")
    np.testing.assert_array_equal(tokens, want_tok)
    h = state[0] if cell == "lstm" else state
    tol = 3e-5 * max(1.0, np.abs(want_h).max())
    np.testing.assert_allclose(h, want_h, rtol=0, atol=tol)
    if cell == "lstm":
        np.testing.assert_allclose(state[1], want_c, rtol=0, atol=tol)
    # The float32 path is not rounded: it follows the unrounded reference.
    tokens32, _, state32 = _generate_tokens(cell, layers, emb, out_w, out_b, prime, 10,
                                            greedy=True, layer0_table=table)
    ref_tok, _, ref_h, _ = np_greedy(cell, layers, emb, out_w, out_b, prime, 10)
    np.testing.assert_array_equal(tokens32, ref_tok)
    h32 = state32[0] if cell == "lstm" else state32
    np.testing.assert_allclose(h32, ref_h, rtol=0, atol=2e-5 * max(1.0, np.abs(ref_h).max()))
    assert np.abs(h32 - h).max() > 0   # the rounding is really there


def test_bf16_sampling_is_reproducible_and_thread_independent():
    model = LanguageModel(30, 8, 40, 2, seed=1)
    runs = []
    for threads in (1, 2, 1):
        fastrnn.set_num_threads(threads)
        runs.append(model.generate_ids(np.array([1, 2]), 50, num_samples=2, seed=7,
                                       weights="bfloat16")[0])
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_array_equal(runs[0], runs[2])


@pytest.mark.parametrize("cell", CELLS)
def test_bf16_avx2_twin_gives_the_generic_kernels_bits(cell):
    """fr_matvec_bf16 runs an AVX2 twin (csrc/bf16.h) on CPUs without AVX-512, or with the
    AVX-512 kernels turned off: it must do the generic code's FMAs in the same order, so
    tokens and states equal the generic code's to the bit. H = 37, E = 7: partial groups of
    16 rows, odd column counts; two threads."""
    from fastrnn._cpu import generate, recurrent
    if not recurrent._has_narrow_twins():
        pytest.skip("no AVX2 on this CPU: only the generic kernel runs")
    fastrnn.set_num_threads(2)
    layers, emb, out_w, out_b = make_model(cell, V=11, E=7, H=37, L=2, dtype=np.float32,
                                           seed=5, scale=0.3)
    prime = np.random.default_rng(6).integers(0, 11, (3, 3))
    runs = []
    try:
        for kinds in ("narrow", "generic"):
            generate._force_kernels(kinds)
            tokens, _, state = _generate_tokens(cell, layers, emb, out_w, out_b, prime, 12,
                                                greedy=True, layer0_table=False,
                                                weights="bfloat16")
            runs.append((tokens, *(state if cell == "lstm" else (state,))))
    finally:
        generate._force_kernels("best")
    for got, want in zip(*runs):
        np.testing.assert_array_equal(got, want)


def test_bf16_weights_are_refused_where_they_do_not_apply():
    layers, emb, out_w, out_b = make_model("lstm", dtype=np.float64)
    prime = np.zeros((1, 1), np.int64)
    with pytest.raises(ValueError, match="needs a float32 model"):
        _generate_tokens("lstm", layers, emb, out_w, out_b, prime, 3, weights="bfloat16")
    layers, emb, out_w, out_b = make_model("lstm", dtype=np.float32)
    with pytest.raises(ValueError, match="split='rows'"):
        _generate_tokens("lstm", layers, emb, out_w, out_b, prime, 3, weights="bfloat16",
                         split="batch")
    with pytest.raises(ValueError, match="weights must be one of"):
        _generate_tokens("lstm", layers, emb, out_w, out_b, prime, 3, weights="float16")


def test_cli_sample_with_bf16_weights(tmp_path, capsys):
    from helpers import cli_error_line
    from fastrnn.lm.cli import main
    from fastrnn.lm.text import CharVocab
    model = LanguageModel(vocab=CharVocab.build("abc\n"), embed_size=4, hidden_size=6,
                          num_layers=1, seed=1)
    path = tmp_path / "model.npz"
    model.save(path)
    assert main(["sample", str(path), "--prime", "a", "--length", "20", "--seed", "5",
                 "--weights", "bfloat16"]) == 0
    expected = model.generate(20, prime="a", seed=5, weights="bfloat16")
    assert capsys.readouterr().out == f"a{expected[0]}\n"
    model64 = LanguageModel(vocab=CharVocab.build("abc\n"), embed_size=4, hidden_size=6,
                            num_layers=1, seed=1, dtype=np.float64)
    model64.save(tmp_path / "model64.npz")
    assert "float32" in cli_error_line(capsys, ["sample", str(tmp_path / "model64.npz"),
                                                "--weights", "bfloat16"])
    assert "--weights" in cli_error_line(capsys, ["sample", str(path), "--weights", "fp8"])


def test_bf16_benchmark_script_reports_its_figures():
    """benchmarks/bf16_generation.py (the README's accuracy figures) on a tiny model."""
    import bf16_generation as bench
    from fastrnn.lm.text import CharVocab
    text = "the quick brown fox jumps over the lazy dog\n" * 30
    model = LanguageModel(vocab=CharVocab.build(text), embed_size=4, hidden_size=8,
                          num_layers=2, seed=1)
    r = bench.measure(model, model.vocab.encode(text), samples=3, length=10, repeat=1)
    assert 0 < r["logit_max_abs"] < 0.1 and r["logit_mean_abs"] <= r["logit_max_abs"]
    assert abs(r["val_loss_float32"] - r["val_loss_bfloat16"]) < 0.01
    assert 0 <= r["identical_samples"] <= 3 and 0 <= r["mean_common_prefix"] <= 10
    assert r["us_per_token_float32"] > 0 and r["us_per_token_bfloat16"] > 0
    np.testing.assert_array_equal(bench.to_bf16(np.float32([1.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8])),
                                  [1.0, 1.0, 1 + 4 * 2 ** -8])   # ties to even
