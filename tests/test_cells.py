"""fastrnn/cells.py is the one table of cells: the ids and gate counts compiled into the C
kernels (csrc/cells.h, _cells.pxd) and the GPU kernels (fastrnn/_gpu/kernels.cu) must be its."""
import re

import numpy as np
import pytest
from pathlib import Path

from fastrnn._cpu import recurrent
from fastrnn.cells import CELLS

ROOT = Path(__file__).resolve().parents[1]


def _defines(path, prefix):
    """{name: value} of the `#define <prefix>NAME <int>` lines of a source file, name lower-cased."""
    text = path.read_text()
    return {m.group(1).lower(): int(m.group(2))
            for m in re.finditer(rf"^#define {prefix}(\w+) (\d+)\s*$", text, re.M)}


def test_compiled_cell_ids_are_the_table():
    assert recurrent.CELL_IDS == {name: spec.kind for name, spec in CELLS.items()}


def test_compiled_gate_counts_are_the_table():
    assert recurrent.CELL_GATES == {spec.kind: spec.gates for spec in CELLS.values()}


def test_cpu_header_cell_ids_are_the_table():
    assert _defines(ROOT / "csrc" / "cells.h", "FR_K_") == {n: s.kind for n, s in CELLS.items()}


def test_gpu_cell_ids_are_the_table():
    assert _defines(ROOT / "fastrnn" / "_gpu" / "kernels.cu", "FR_") == \
        {n: s.kind for n, s in CELLS.items()}


def test_ids_are_distinct():
    assert len({spec.kind for spec in CELLS.values()}) == len(CELLS)


def test_init_params_is_the_layers_initialiser():
    """The layers take their initial weights from cells.init_params (one definition)."""
    import fastrnn
    from fastrnn.cells import init_params

    layer = fastrnn.LSTM(5, 7, seed=3, forget_bias=1.0)
    init_seed, _ = np.random.SeedSequence(3).spawn(2)
    arrays = init_params("lstm", np.random.default_rng(init_seed), 5, 7, forget_bias=1.0)
    for key, value in zip(("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"), arrays):
        np.testing.assert_array_equal(layer.params[key], value)
    assert np.all(arrays[2][7:14] == 1.0) and np.all(arrays[3][7:14] == 0.0)


def test_init_params_identity_and_errors():
    from fastrnn.cells import init_params

    # Keras IRNN: W_hh = I and nothing else changed (W_ih and the biases keep their draw).
    uniform = init_params("rnn_relu", np.random.default_rng(0), 4, 6, dtype=np.float64)
    w_ih, w_hh, b_ih, b_hh = init_params("rnn_relu", np.random.default_rng(0), 4, 6,
                                         recurrent_init="identity", dtype=np.float64)
    np.testing.assert_array_equal(w_hh, np.eye(6))
    for got, drawn in zip((w_ih, b_ih, b_hh), (uniform[0], uniform[2], uniform[3])):
        np.testing.assert_array_equal(got, drawn)
    with pytest.raises(ValueError, match="recurrent_init"):
        init_params("gru", np.random.default_rng(0), 4, 6, recurrent_init="orthogonal")
    with pytest.raises(ValueError, match="forget_bias applies to LSTM only"):
        init_params("gru", np.random.default_rng(0), 4, 6, forget_bias=1.0)


def test_init_params_init_std():
    """init_std: weights N(0, σ²), biases zero; identity and forget_bias applied on top."""
    from fastrnn.cells import init_params

    w_ih, w_hh, b_ih, b_hh = init_params("lstm", np.random.default_rng(1), 300, 200,
                                         dtype=np.float64, init_std=0.01)
    for w in (w_ih, w_hh):
        assert abs(w.mean()) < 1e-4 and abs(w.std() - 0.01) < 2e-4
    assert not b_ih.any() and not b_hh.any()
    w_ih, w_hh, b_ih, b_hh = init_params("lstm", np.random.default_rng(1), 3, 4,
                                         recurrent_init="identity", forget_bias=1.0, init_std=0.5)
    np.testing.assert_array_equal(w_hh, np.eye(16, 4))
    np.testing.assert_array_equal(b_ih, np.r_[np.zeros(4), np.ones(4), np.zeros(8)])
    assert not b_hh.any() and w_ih.std() > 0.2
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="init_std"):
            init_params("gru", np.random.default_rng(0), 4, 6, init_std=bad)
    with pytest.raises(TypeError, match="init_std"):
        init_params("gru", np.random.default_rng(0), 4, 6, init_std="0.1")
