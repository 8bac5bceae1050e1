"""64-bit offsets in the compiled kernels (issue 9, item 8).

Row offsets such as ``gates + row * GH`` and ``y + prev * ldy`` pass 2^31 elements at sizes
that fit in memory (T=513, B=256, H=4096 LSTM); in C int they wrapped and the kernels wrote
before their buffers. Tested without allocating such arrays: through the offset helper the
kernels use, and end to end with an output whose rows are 2^24 elements apart in a sparse
anonymous mapping (nothing but the touched pages is ever backed by memory).
"""
import mmap
import platform
import sys
import textwrap

import numpy as np
import pytest

from fastrnn import functional as F
from fastrnn._cpu import recurrent as _kernels

from helpers import run_python


def test_time_space_offset_is_64_bit():
    # T=513, B=256, H=4096 LSTM: the last row of gates starts past 2^31 elements.
    T, B, GH = 513, 256, 4 * 4096
    t, b = T - 1, B - 1
    expected = (t * B + b) * GH
    assert expected > 2 ** 31
    assert _kernels._time_space_offset(t, B, b, GH) == expected
    # A strided output (y + prev * ldy): 300 rows 2^24 elements apart.
    assert _kernels._time_space_offset(299, 1, 0, 1 << 24) == 299 << 24


def _map_noreserve():
    """mmap's MAP_NORESERVE flag (Python < 3.13 lacks the constant; 0x4000 on Linux x86-64
    and arm64), or None where unknown."""
    if hasattr(mmap, "MAP_NORESERVE"):
        return mmap.MAP_NORESERVE
    if sys.platform.startswith("linux") and platform.machine() in ("x86_64", "aarch64"):
        return 0x4000
    return None


def _sparse_mapping_available():
    return _map_noreserve() is not None


def _sparse_mapping(nbytes):
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _map_noreserve()
    return mmap.mmap(-1, nbytes, flags=flags)


# The strided run goes in a child process: before the fix it writes before the buffer, which
# crashes the process rather than failing an assertion.
STRIDED_SCRIPT = textwrap.dedent("""
    import mmap, sys
    import numpy as np
    from fastrnn import functional as F

    def sparse_rows(T, B, H, ld):
        # (T, B, H) view of rows ld elements apart, in a mapping backed only where touched.
        n = T * B * ld
        mm = mmap.mmap(-1, n * 8, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | NORESERVE)
        return mm, np.frombuffer(mm, dtype=np.float64, count=n).reshape(T, B, ld)[:, :, :H]

    T, B, lengths = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "lengths"
    NORESERVE = int(sys.argv[4])
    H, I, ld = 5, 3, 1 << 24
    assert (T * B - 1) * ld > 2 ** 31
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I))
    w_ih, w_hh = rng.standard_normal((4 * H, I)) * 0.3, rng.standard_normal((4 * H, H)) * 0.3
    dy = rng.standard_normal((T, B, H))
    lens = np.arange(T, T - B, -1) if lengths else None
    y_ref, _, ws = F.lstm_forward(x, w_ih, w_hh, lengths=lens)
    dx_ref, _, g_ref = F.lstm_backward(ws, dy)
    mm_y, out = sparse_rows(T, B, H, ld)
    mm_dy, dy_strided = sparse_rows(T, B, H, ld)
    dy_strided[...] = dy
    y, _, ws = F.lstm_forward(x, w_ih, w_hh, lengths=lens, out=out)
    assert y.strides[1] == ld * 8
    dx, _, g = F.lstm_backward(ws, dy_strided)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)
    for k in g_ref:
        np.testing.assert_allclose(g[k], g_ref[k], rtol=1e-12, atol=1e-12)
    print("ok")
""")


@pytest.mark.skipif(not _sparse_mapping_available(), reason="needs a sparse mapping (mmap MAP_NORESERVE)")
@pytest.mark.parametrize("T, B, lengths", [(130, 1, "none"), (16, 9, "none"), (16, 9, "lengths")],
                         ids=["columns-path", "batch-path", "batch-path-lengths"])
def test_rows_past_2_31_elements(T, B, lengths, tmp_path):
    """y + row * ldy past 2^31 elements, forward, backward and weight gradients: the small-
    batch (matvec) and large-batch (packed GEMM) loops, with and without lengths."""
    script = tmp_path / "strided.py"
    script.write_text(STRIDED_SCRIPT)
    proc = run_python([str(script), str(T), str(B), lengths, str(_map_noreserve())],
                      cwd=tmp_path, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "Cannot allocate memory" in proc.stderr:
        pytest.skip("the system refuses a sparse 20 GB mapping")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")


@pytest.mark.skipif(not _sparse_mapping_available(), reason="needs a sparse mapping (mmap MAP_NORESERVE)")
def test_row_stride_beyond_blas_int_is_refused():
    """A leading dimension that does not fit BLAS's int is refused with a ValueError."""
    T, B, H, I = 2, 1, 3, 2
    ld = (1 << 31) + 16
    n = T * B * ld
    try:
        mm = _sparse_mapping(n * 8)
    except OSError:
        pytest.skip("the system refuses a sparse 32 GB mapping")
    out = np.frombuffer(mm, dtype=np.float64, count=n).reshape(T, B, ld)[:, :, :H]
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="row stride of y .*more than BLAS can take"):
        F.rnn_tanh_forward(rng.standard_normal((T, B, I)), rng.standard_normal((H, I)),
                           rng.standard_normal((H, H)), out=out)
    del out
    mm.close()


def test_blas_sizes_checked_at_entry():
    """Sizes past a C int are refused before any kernel runs (here: T*B rows)."""
    w_hh = np.zeros((4, 4))
    h = np.zeros((1 << 16, 4))
    gates = np.zeros((1, 4))
    with pytest.raises(ValueError, match="T\\*B .*more than BLAS can take"):
        _kernels.forward_loop(0, False, 1 << 16, 1 << 16, w_hh, np.zeros(4), h, None, None,
                              gates, None, None, gates, 1)
