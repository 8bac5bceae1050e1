"""fastrnn._matmul: the dense products the layers run on fastrnn's own threads."""
import numpy as np
import pytest

import fastrnn
from fastrnn._matmul import matmul


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("m", [1, 17, 35, 300])
def test_matmul_matches_numpy_for_every_transpose(dtype, trans_a, trans_b, m, rng):
    k, n = 23, 41
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    expected = (a.T if trans_a else a) @ (b.T if trans_b else b)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(matmul(a, b, trans_a, trans_b), expected, rtol=tol, atol=tol)
    out = rng.standard_normal((m, n)).astype(dtype)
    start = out.copy()
    matmul(a, b, trans_a, trans_b, out=out, beta=1.0)
    np.testing.assert_allclose(out, start + expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("shape", [(300, 41), (41, 300)])
def test_matmul_with_bias_splits_either_side_of_c(shape, rng):
    """c of 128 rows or more is split by rows among the threads, of fewer by columns
    (_parts.pxd: GEMM_COLUMN_SPLIT_ROWS): each part must get its own columns of b and of the
    bias."""
    m, n = shape
    a, b = rng.standard_normal((m, 23)), rng.standard_normal((n, 23))
    bias = rng.standard_normal(n)
    for threads in (1, 2):
        previous = fastrnn.get_num_threads()
        try:
            fastrnn.set_num_threads(threads)
            product = matmul(a, b, trans_b=True, bias=bias)
        finally:
            fastrnn.set_num_threads(previous)
        np.testing.assert_allclose(product, a @ b.T + bias, rtol=1e-12, atol=1e-12)


def test_matmul_does_not_depend_on_the_thread_count(rng):
    a, b = rng.standard_normal((257, 64)), rng.standard_normal((64, 99))
    previous = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(1)
        one = matmul(a, b)
        fastrnn.set_num_threads(2)
        two = matmul(a, b)
    finally:
        fastrnn.set_num_threads(previous)
    np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(0, 5), (3, 1), (700, 300)])
def test_add_column_sums_adds_the_rows_in_order_on_any_thread_count(dtype, shape, rng):
    """Compiled: out[j] += a[0, j], then a[1, j], ...: the bits of that loop in NumPy, with
    1 or 2 threads; a non-contiguous a takes NumPy's own sum (to rounding)."""
    from fastrnn._matmul import add_column_sums
    a = rng.standard_normal(shape).astype(dtype)
    start = rng.standard_normal(shape[1]).astype(dtype)
    want = start.copy()
    for row in a:
        want += row
    previous = fastrnn.get_num_threads()
    try:
        for threads in (1, 2):
            fastrnn.set_num_threads(threads)
            out = start.copy()
            assert add_column_sums(a, out) is out
            np.testing.assert_array_equal(out, want)
    finally:
        fastrnn.set_num_threads(previous)
    strided = np.repeat(a, 2, axis=1)[:, ::2]
    np.testing.assert_allclose(add_column_sums(strided, start.copy()), want, rtol=1e-5)


def test_add_column_sums_refuses_a_wrong_or_overlapping_out(rng):
    from fastrnn._cpu import dense
    a = rng.standard_normal((4, 6))
    with pytest.raises(ValueError, match="out must have 6 entries"):
        dense.add_column_sums_to(a, np.zeros(5), 1)
    with pytest.raises(ValueError, match="out must not share memory with a"):
        dense.add_column_sums_to(a, a[1], 1)
