"""The kernels' large products on fastrnn's own AVX-512 packed GEMM (csrc/gemm.h) against
BLAS and a float64 product: every operand layout, sizes that cross its row, column and k
blocks and leave partial panels, beta 0 and 1; and its results do not depend on the thread
count. Without AVX-512 both runs are BLAS and the comparisons still hold."""
import numpy as np
import pytest

from fastrnn._cpu import dense

# (m, n, k): partial panels (n 37), rows past one row block (130 > 128), k past one k block
# (300 > 256), columns past one column block (2100 > 2048), the smallest sizes it takes.
SHAPES = [(64, 37, 20), (130, 96, 300), (40, 2100, 33), (32, 16, 1), (200, 64, 700)]


def _product(trans_a, trans_b, m, n, k, dtype, rng):
    a = rng.normal(size=(k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.normal(size=(n, k) if trans_b else (k, n)).astype(dtype)
    c0 = rng.normal(size=(m, n)).astype(dtype)
    exact = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
    return a, b, c0, exact


def _run(trans_a, trans_b, a, b, c0, beta, threads, blas):
    c = c0.copy()
    dense._force_blas_gemm(blas)
    try:
        dense.parallel_gemm(trans_a, trans_b, a, b, c, c.dtype.type(beta), threads)
    finally:
        dense._force_blas_gemm(False)
    return c


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("beta", [0, 1])
def test_own_gemm_equals_blas_and_the_exact_product(dtype, trans_a, trans_b, beta, rng):
    tol = 1e-4 if dtype == np.float32 else 1e-12
    for m, n, k in SHAPES:
        a, b, c0, exact = _product(trans_a, trans_b, m, n, k, dtype, rng)
        want = exact + beta * c0.astype(np.float64)
        scale = np.sqrt(k)   # the size of the sum's rounding error
        own = _run(trans_a, trans_b, a, b, c0, beta, 2, blas=False)
        blas = _run(trans_a, trans_b, a, b, c0, beta, 2, blas=True)
        np.testing.assert_allclose(own, want, rtol=0, atol=tol * scale, err_msg=f"{m, n, k}")
        np.testing.assert_allclose(own, blas, rtol=0, atol=tol * scale, err_msg=f"{m, n, k}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a", [False, True])
def test_own_gemm_gives_the_same_bits_on_any_thread_count(dtype, trans_a, rng):
    """Each element is summed in one fixed order whatever rows a thread owns."""
    a, b, c0, _ = _product(trans_a, True, 301, 70, 290, dtype, rng)
    first = _run(trans_a, True, a, b, c0, 0, 1, blas=False)
    for threads in (2, 3, 4):
        np.testing.assert_array_equal(_run(trans_a, True, a, b, c0, 0, threads, blas=False),
                                      first)

