"""Unstructured position codes: round trips, exact lengths, and distance to log2 C(n, k)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from slimline.search.position_codes import (
    decode_positions,
    encode_positions,
    position_stream_bytes,
    rice_parameter,
)


def _log2_comb(n: int, k: int) -> float:
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2)


def _random_mask(n: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, k, replace=False)] = True
    return mask


def _round_trip(mask: np.ndarray) -> bytes:
    n, k = mask.size, int(mask.sum())
    data = encode_positions(mask)
    assert len(data) == position_stream_bytes(n, k, mask)
    assert len(data) <= position_stream_bytes(n, k)  # the bound without a mask holds
    assert len(data) <= math.ceil(n / 8)
    np.testing.assert_array_equal(decode_positions(data, n, k), mask)
    return data


@pytest.mark.parametrize("density", [0.5, 0.3, 0.25, 0.125, 0.0625, 0.01, 0.001])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 100, 1000, 12345])
def test_round_trip_random(n: int, density: float) -> None:
    k = max(1, round(density * n))
    _round_trip(_random_mask(n, k, seed=n))


@pytest.mark.parametrize("n", [1, 2, 8, 9, 64, 1000, 40000])
def test_round_trip_edges(n: int) -> None:
    first, last = np.zeros(n, bool), np.zeros(n, bool)
    first[0], last[-1] = True, True
    _round_trip(first)
    _round_trip(last)
    _round_trip(first | last)
    _round_trip(np.ones(n, bool))
    _round_trip(np.zeros(n, bool))
    if n > 1:
        all_but_one = np.ones(n, bool)
        all_but_one[n // 2] = False  # k = n - 1
        _round_trip(all_but_one)
        block = np.zeros(n, bool)
        block[: n // 2] = True  # long runs: unary parts of all zeros, then one huge gap
        _round_trip(block[::-1].copy())


def test_rice_is_used_when_sparse_and_bitmask_when_dense() -> None:
    n = 10000
    sparse = _random_mask(n, 50, seed=1)
    assert len(encode_positions(sparse)) < n // 8
    dense = _random_mask(n, 5000, seed=1)
    assert len(encode_positions(dense)) == n // 8


def test_accepts_2d_torch_mask_row_major() -> None:
    mask = torch.from_numpy(_random_mask(30 * 40, 100, seed=3).reshape(30, 40))
    data = encode_positions(mask)
    out = decode_positions(data, 1200, 100)
    assert torch.equal(torch.from_numpy(out.reshape(30, 40)), mask)


def test_rice_parameter_minimizes_the_bound() -> None:
    for n, k in ((1000, 1), (1000, 500), (10**6, 10**6 // 64), (100, 100), (5, 0)):
        r = rice_parameter(n, k)
        cost = [k * (s + 1) + ((n - k) >> s) for s in range(21)]
        assert cost[r] == min(cost) and cost.index(min(cost)) == r


def test_position_stream_bytes_rejects_wrong_k() -> None:
    mask = _random_mask(100, 10, seed=0)
    with pytest.raises(ValueError):
        position_stream_bytes(100, 11, mask)
    with pytest.raises(ValueError):
        position_stream_bytes(99, 10, mask)


def test_decode_rejects_corrupt_streams() -> None:
    mask = _random_mask(10000, 100, seed=0)
    data = encode_positions(mask)
    with pytest.raises(ValueError):
        decode_positions(data, 10000, 101)  # too few unary codes for k
    with pytest.raises(ValueError):
        decode_positions(data + bytes(2000), 10000, 100)  # longer than a bitmask
    with pytest.raises(ValueError):
        decode_positions(bytes(10000 // 8), 10000, 100)  # bitmask keeping none


@pytest.mark.parametrize("n", [100_000, 1_000_000])
def test_near_the_information_bound(n: int) -> None:
    ratios = {}
    for inv in (2, 4, 8, 16, 32, 64):
        k = n // inv
        data = _round_trip(_random_mask(n, k, seed=inv))
        ratios[inv] = 8 * len(data) / _log2_comb(n, k)
        if inv >= 8:
            assert ratios[inv] <= 1.12, ratios
            # the data-independent bound (used before masks exist) is still close
            assert 8 * position_stream_bytes(n, k) / _log2_comb(n, k) <= 1.12
    assert ratios[2] <= 1.001  # bitmask at density 1/2 is the bound
