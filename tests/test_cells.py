"""fastrnn/cells.py is the one table of cells: the ids and gate counts compiled into the C
kernels (csrc/cells.h, _cells.pxd) and the GPU kernels (fastrnn/_gpu/kernels.cu) must be its."""
import re
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
