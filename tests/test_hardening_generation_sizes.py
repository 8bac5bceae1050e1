"""Generation buffer sizes in 64 bits, checked before anything is allocated (issue 9, item 9).

The per-thread scratch was ``stride = 2*B*G*H + ...`` in C int: a 1024-unit LSTM generating
233017 rows on 2 threads wrapped it and the kernel wrote far past a small buffer (SIGSEGV).
"""
import numpy as np
import pytest

import fastrnn
from fastrnn._cpu import generate as _gen
from fastrnn.lm.generation import _generate_tokens


def test_scratch_of_the_reported_case_is_exact():
    # 1024-unit LSTM, 233017 rows, 2 threads, split batch: each thread's scratch holds its
    # own half of the rows, and the sizes are exact integers past 2^31 elements.
    G, L, B, H, E, V = 4, 1, 233017, 1024, 64, 65
    sizes = _gen._buffer_sizes(G, B, [H] * L, E, V, 200, 2, False, 4)
    rows = (B + 1) // 2
    stride = 2 * rows * G * H + rows * H + 2 * L * G * H + H + 16
    assert stride * 2 > 2 ** 31
    assert sizes["scratch"] == 2 * stride * 4
    assert sizes["tokens"] == B * 200 * 8
    assert sizes["logits"] == B * V * 4


def test_row_split_scratch_covers_the_one_thread_fallback():
    # Splitting rows, a short OpenMP team falls back to one thread using all units and rows:
    # the buffer sized for nt threads must hold that thread's scratch.
    for H in (1, 15, 16, 17, 100, 1024):
        for nt in (2, 3, 4):
            rows, units = _gen._thread_layout(4, 5, [H, 7], nt, True)
            assert nt * _gen._scratch_stride(4, 2, rows, units) >= _gen._scratch_stride(4, 2, 5, H)


def test_sizes_that_cannot_be_addressed_raise_memory_error():
    with pytest.raises(MemoryError, match="generation would need .* bytes"):
        _gen._buffer_sizes(4, 1 << 30, [1 << 20] * 2, 16, 100, 1 << 40, 2, False, 4)


def test_generate_loop_refuses_before_allocating(rng):
    """Through the kernel entry: n_tokens so large that tokens alone cannot be addressed."""
    V, E, H, G = 5, 3, 4, 4
    args = dict(kind=3, embedding=rng.standard_normal((V, E)),
                w_ih=[rng.standard_normal((G * H, E))], w_hh=[rng.standard_normal((G * H, H))],
                b_ih=[np.zeros(G * H)], b_hh=[np.zeros(G * H)], table=None,
                out_w=rng.standard_normal((V, H)), out_b=np.zeros(V),
                prime=np.zeros((2, 1), dtype=np.int64), n_tokens=1 << 62, uniforms=None,
                h=[np.zeros((2, H))], c=[np.zeros((2, H))], temperature=1.0, top_k=0,
                top_p=1.0, greedy=True, stop_id=-1, banned=np.zeros(V, dtype=np.uint8),
                num_threads=1, split_rows=False)
    with pytest.raises(MemoryError, match="generation would need"):
        _gen.generate_loop(**args)


@pytest.mark.parametrize("B", [9, 13, 40])
def test_split_batch_rows_per_thread_match_one_thread(rng, B):
    """The moderate case: split-batch generation with uneven thread slices (each thread's
    scratch holds only its rows) gives the one-thread tokens, and its states up to rounding
    (a thread's BLAS call covers its slice of rows, so the last bits can differ)."""
    V, E, H, L = 11, 5, 20, 2
    G = 4
    layers = [(rng.standard_normal((G * H, E if l == 0 else H)) * 0.5,
               rng.standard_normal((G * H, H)) * 0.5, rng.standard_normal(G * H) * 0.1,
               rng.standard_normal(G * H) * 0.1) for l in range(L)]
    emb, out_w, out_b = rng.standard_normal((V, E)), rng.standard_normal((V, H)), np.zeros(V)
    prime = rng.integers(0, V, size=(B, 3))
    results = []
    try:
        for nt in (1, 2, 3):
            fastrnn.set_num_threads(nt)
            results.append(_generate_tokens("lstm", layers, emb, out_w, out_b, prime, 12,
                                            seed=5, stop_id=3, split="batch"))
    finally:
        fastrnn.set_num_threads(None)
    for tokens, lengths, (h, c) in results[1:]:
        np.testing.assert_array_equal(tokens, results[0][0])
        np.testing.assert_array_equal(lengths, results[0][1])
        np.testing.assert_allclose(h, results[0][2][0], rtol=0, atol=1e-12)
        np.testing.assert_allclose(c, results[0][2][1], rtol=0, atol=1e-12)
