"""The compiled facts behind the argument checks (fastrnn/_cpu/arrays.pyx): which arrays'
byte ranges meet, and an integer array's range; and the checks built on them."""
import itertools

import numpy as np
import pytest

from fastrnn._cpu import arrays
from fastrnn._validation import (check_array, check_no_shared_memory, check_token_ids,
                                 has_internal_overlap)


def _views(rng):
    """Arrays over one buffer and a few others: slices, steps, negative strides, transposes,
    broadcasts, empty ones."""
    base = np.arange(240, dtype=np.float64).reshape(12, 20)
    other = np.zeros((5, 7), np.float32)
    views = [base, base[2:5], base[:, 3:9], base[::3, ::-2], base[::-1], base.T[4:6],
             base[7:, 18:], base[0, :0], base.reshape(-1)[1::2], base.reshape(-1)[::2],
             np.broadcast_to(base[3, :1], (4, 6)), other, other[::-1, 2], base[11, 19:],
             np.zeros(0), base[5], base[5, 3:3]]
    order = rng.permutation(len(views))
    return [views[i] for i in order]


def _bytes_meet(a, b):
    # NumPy's own byte ranges are the oracle.
    lo_a, hi_a = np.lib.array_utils.byte_bounds(a)
    lo_b, hi_b = np.lib.array_utils.byte_bounds(b)
    return a.size > 0 and b.size > 0 and lo_a < hi_b and lo_b < hi_a


@pytest.mark.parametrize("seed", range(5))
def test_meeting_pairs_are_the_pairs_whose_byte_ranges_meet_in_order(seed):
    views = _views(np.random.default_rng(seed))
    for n_written in (0, 1, 4, len(views)):
        expected = [(i, j) for i in range(n_written) for j in range(i + 1, len(views))
                    if _bytes_meet(views[i], views[j])]
        assert arrays.meeting_pairs(views, n_written) == expected


def test_meeting_pairs_leave_other_arrays_to_the_caller():
    a = np.zeros(4)
    assert arrays.meeting_pairs([a, np.ma.zeros(4)], 1) is None
    assert arrays.meeting_pairs([a, [0.0]], 1) is None
    assert arrays.meeting_pairs([], 0) == []


@pytest.mark.parametrize("dtype", [np.int64, np.int32])
def test_int_range_is_min_and_max(dtype, rng):
    for shape in [(1,), (7,), (3, 5), (64, 8)]:
        a = rng.integers(-1000, 1000, shape).astype(dtype)
        assert arrays.int_range(a) == (a.min(), a.max())
        assert all(type(v) is int for v in arrays.int_range(a))


def test_int_range_leaves_other_arrays_to_numpy():
    a = np.arange(10)
    for other in (a[::2], a[:0], a.astype(np.uint8), a.astype(np.int16), a.astype(">i8"),
                  a.astype(np.float64), np.ma.masked_array(a), list(a)):
        assert arrays.int_range(other) is None


def test_interleaved_arrays_meet_but_do_not_share():
    a = np.zeros(10)
    check_no_shared_memory({"out": a[::2]}, {"x": a[1::2]})   # bytes interleave: no error
    with pytest.raises(ValueError, match="out must not share memory with y"):
        check_no_shared_memory({"out": a[::2]}, {"x": a[1::2], "y": a[4:5]})


def test_the_first_pair_in_order_is_named():
    a, b = np.zeros(6), np.zeros(6)
    with pytest.raises(ValueError, match="out1 must not share memory with w"):
        check_no_shared_memory({"out1": a, "out2": b}, {"x": np.zeros(2), "w": a[::-1],
                                                         "v": b})
    with pytest.raises(ValueError, match="out2 must not share memory with v"):
        check_no_shared_memory({"out1": a, "out2": b, "none": None}, {"v": b[3:]})


def test_subclasses_are_still_checked_pair_by_pair():
    a = np.zeros(6)
    with pytest.raises(ValueError, match="out must not share memory with x"):
        check_no_shared_memory({"out": a}, {"x": a[2:].view(np.ma.MaskedArray)})


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.int16, np.uint8])
def test_token_ids_out_of_range_are_refused_with_their_range(dtype):
    ids = np.array([[3, 4], [9, 0]], dtype)
    assert check_token_ids(ids, "x", 10).dtype == np.int64
    with pytest.raises(ValueError, match=r"x must hold token ids in \[0, 9\), got values in "
                                         r"\[0, 9\]"):
        check_token_ids(ids, "x", 9)
    if np.dtype(dtype).kind == "i":
        ids[1, 1] = -2
        with pytest.raises(ValueError, match=r"got values in \[-2, 9\]"):
            check_token_ids(ids, "x", 10)
        with pytest.raises(ValueError, match=r"got values in \[-2, 4\]"):
            check_token_ids(ids[:, 1], "x", 10)   # strided: NumPy's reductions


def test_internal_overlap_of_ordered_and_other_layouts():
    a = np.zeros((4, 6), np.float32)
    assert not has_internal_overlap(a)
    assert not has_internal_overlap(np.asfortranarray(a))
    assert not has_internal_overlap(a[:, ::2])
    assert has_internal_overlap(np.broadcast_to(a[0], (3, 6)))
    assert has_internal_overlap(np.lib.stride_tricks.as_strided(a, (3, 4), (8, 4)))


def test_check_array_keeps_numpy_0d_to_1d_and_copies_only_strided_input():
    assert check_array(np.float64(2.0), "x").shape == (1,)
    a = np.zeros((3, 4))
    assert check_array(a, "x") is a
    strided = a[:, ::2]
    assert check_array(strided, "x", contiguous=False) is strided
    copy = check_array(strided, "x")
    assert copy.flags.c_contiguous and not np.shares_memory(copy, a)
    with pytest.raises(ValueError, match=r"x must have shape \(3, 5\)"):
        check_array(a, "x", shape=(3, 5))
    with pytest.raises(ValueError, match=r"x must have shape \(\?, 4, 1\)"):
        check_array(a, "x", shape=(None, 4, 1))
    with pytest.raises(TypeError, match="x must have dtype float32, got float64"):
        check_array(a, "x", dtype=np.float32)


def test_pairs_of_all_views_agree_with_numpy():
    # Every meeting pair is decided exactly: the check raises iff NumPy says they share.
    views = _views(np.random.default_rng(0))
    for a, b in itertools.combinations(views, 2):
        shares = np.shares_memory(a, b)
        try:
            check_no_shared_memory({"a": a}, {"b": b})
            raised = False
        except ValueError:
            raised = True
        assert raised == shares
