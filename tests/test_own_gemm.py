"""The kernels' large products on fastrnn's own AVX-512 packed GEMM (csrc/gemm.h) against
BLAS and a float64 product: every operand layout, sizes that cross its row, column and k
blocks and leave partial panels, beta 0 and 1; and its results do not depend on the thread
count. Without AVX-512 both runs are BLAS: the comparisons with the exact product still
hold, the claims about the own GEMM's bits (any thread count, any stride) are skipped, since
BLAS (OpenBLAS on a Zen 3, seen) sums the rows of different splits differently."""
import numpy as np
import pytest

from fastrnn._cpu import dense

own_gemm_only = pytest.mark.skipif(not dense.own_gemm_active(),
                                   reason="no AVX-512: the products run on BLAS")

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


@own_gemm_only
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a", [False, True])
def test_own_gemm_gives_the_same_bits_on_any_thread_count(dtype, trans_a, rng):
    """Each element is summed in one fixed order whatever rows a thread owns."""
    a, b, c0, _ = _product(trans_a, True, 301, 70, 290, dtype, rng)
    first = _run(trans_a, True, a, b, c0, 0, 1, blas=False)
    for threads in (2, 3, 4):
        np.testing.assert_array_equal(_run(trans_a, True, a, b, c0, 0, threads, blas=False),
                                      first)



@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("blas", [False, True])
def test_bias_in_the_product_equals_copying_it_in_first(dtype, trans_b, blas, rng):
    """c = a op(b) + bias in one pass (the tiles add the bias as they store the first k
    block; on BLAS the bias is copied in first) gives the bits of c = bias; c += a op(b),
    and the exact product plus the bias to rounding."""
    tol = 1e-4 if dtype == np.float32 else 1e-12
    for m, n, k in SHAPES:
        a, b, _, exact = _product(False, trans_b, m, n, k, dtype, rng)
        bias = rng.normal(size=n).astype(dtype)
        copied_in = np.broadcast_to(bias, (m, n)).copy()
        want = _run(False, trans_b, a, b, copied_in, 1, 2, blas)
        got = np.full((m, n), np.nan, dtype)
        dense._force_blas_gemm(blas)
        try:
            dense.parallel_gemm(False, trans_b, a, b, got, dtype(0), 2, bias)
        finally:
            dense._force_blas_gemm(False)
        np.testing.assert_array_equal(got, want, err_msg=f"{m, n, k}")
        np.testing.assert_allclose(got, exact + bias, rtol=0, atol=tol * np.sqrt(k))


def test_bias_is_refused_where_it_does_not_apply(rng):
    a = rng.normal(size=(40, 8)).astype(np.float32)
    b = rng.normal(size=(8, 20)).astype(np.float32)
    c = np.empty((40, 20), np.float32)
    with pytest.raises(ValueError, match="bias must have 20 entries"):
        dense.parallel_gemm(False, False, a, b, c, np.float32(0), 2, np.zeros(19, np.float32))
    with pytest.raises(ValueError, match="not transposed and beta 0"):
        dense.parallel_gemm(False, False, a, b, c, np.float32(1), 2, np.zeros(20, np.float32))
    from fastrnn._matmul import matmul
    with pytest.raises(ValueError, match="bias goes with"):
        matmul(a.T.copy(), b, trans_a=True, bias=np.zeros(20, np.float32))
    np.testing.assert_allclose(matmul(a, b, bias=np.ones(20, np.float32)), a @ b + 1, rtol=1e-5)


@own_gemm_only
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("beta", [0, 1])
def test_transposed_a_with_rows_4_kib_apart_gives_the_bits_of_any_other_stride(dtype, beta, rng):
    """A transposed a whose rows are a multiple of 4 KiB apart (a (T*B, 4H) gate gradient
    with H = 256 in float32) is copied block by block into a padded buffer before the tiles
    read it (csrc/gemm_impl.h): the same values in the same order, so the same bits as with
    rows 16 elements further apart, which it reads in place. 3 threads leave partial row
    blocks; k = 300 a partial k block."""
    m, n, k = 4096 // np.dtype(dtype).itemsize, 70, 300
    wide = rng.normal(size=(k, m + 16)).astype(dtype)
    aliased = np.ascontiguousarray(wide[:, :m])   # rows exactly 4 KiB apart: copied
    b = rng.normal(size=(k, n)).astype(dtype)
    c0 = rng.normal(size=(m + 16, n)).astype(dtype)
    copied = _run(True, False, aliased, b, c0[:m], beta, 3, blas=False)
    in_place = _run(True, False, wide, b, c0, beta, 3, blas=False)
    np.testing.assert_array_equal(copied, in_place[:m])
    want = aliased.T.astype(np.float64) @ b.astype(np.float64) + beta * c0[:m]
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(copied, want, rtol=0, atol=tol * np.sqrt(k))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_input_projection_claims_only_its_own_lines(dtype, threads, rng):
    """recurrent.project_inputs has the GEMM claim each block of the gate buffer (rep stosb)
    before writing it: the gates equal the unclaimed product's bits, and nothing outside
    them changes. The shapes take each path of the claim: rows past one row block in
    whole-row spans (300 rows), the split by gate columns of short inputs (100 rows), whose
    spans are parts of rows, and gate columns past one column block (2100). On BLAS (no
    claim) the gates equal the product to rounding, and nothing outside them changes."""
    from fastrnn._cpu import recurrent
    for rows, GH, I in [(300, 1024, 40), (100, 512, 40), (150, 2100, 20)]:
        x = rng.normal(size=(rows, I)).astype(dtype)
        w_ih = rng.normal(size=(GH, I)).astype(dtype)
        b_ih = rng.normal(size=GH).astype(dtype)
        want = np.full((rows, GH), np.nan, dtype)
        dense.parallel_gemm(False, True, x, w_ih, want, dtype(0), threads, b_ih)
        guard = 4096 // np.dtype(dtype).itemsize   # a page of sentinels on each side
        buffer = np.full(guard + rows * GH + guard, -7.0, dtype)
        gates = buffer[guard:guard + rows * GH].reshape(rows, GH)
        gates[...] = np.nan
        recurrent.project_inputs(x, w_ih, b_ih, gates, threads)
        if dense.own_gemm_active():
            np.testing.assert_array_equal(gates, want, err_msg=f"{rows, GH, I}")
        else:
            tol = 1e-5 if dtype == np.float32 else 1e-13
            np.testing.assert_allclose(gates, want, rtol=tol, atol=tol, err_msg=f"{rows, GH, I}")
        assert (buffer[:guard] == -7).all() and (buffer[guard + rows * GH:] == -7).all()
