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
    """c taller than wide is split by rows among the threads, wider than tall by columns:
    each part must get its own columns of b and of the bias."""
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
