"""Bit packing and N:M pattern codes: layout, round trips, exact lengths, rejection."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from slimline.search.bitpack import (
    nm_tables,
    pack_bits,
    pack_nm_pattern,
    packed_bytes,
    unpack_bits,
    unpack_nm_pattern,
)
from slimline.search.options import NM_PATTERNS, nm_pattern_bits


def _reference_pack(values: np.ndarray, width: int) -> bytes:
    bits = ((values[:, None] >> np.arange(width)) & 1).astype(np.uint8).reshape(-1)
    return np.packbits(bits, bitorder="little").tobytes()


@pytest.mark.parametrize("width", range(1, 17))
def test_pack_bits_round_trip_every_width(width: int) -> None:
    rng = np.random.default_rng(width)
    for count in (0, 1, 2, 7, 8, 9, 15, 16, 17, 1000, 4099):
        v = rng.integers(0, 1 << width, count)
        data = pack_bits(v, width)
        assert len(data) == packed_bytes(count, width) == math.ceil(count * width / 8)
        assert data == _reference_pack(v, width)  # little-endian bit order, no extra padding
        out = unpack_bits(data, width, count)
        assert out.dtype == np.int64
        np.testing.assert_array_equal(out, v)


@pytest.mark.parametrize("width", range(1, 17))
def test_pack_bits_all_ones_and_zeros(width: int) -> None:
    ones = np.full(13, (1 << width) - 1)
    data = pack_bits(ones, width)
    total = 13 * width
    # every value bit is 1, the padding bits of the last byte are 0
    assert int.from_bytes(data, "little") == (1 << total) - 1
    np.testing.assert_array_equal(unpack_bits(data, width, 13), ones)
    zeros = np.zeros(13, dtype=np.int64)
    assert pack_bits(zeros, width) == bytes(packed_bytes(13, width))


def test_pack_bits_known_layout() -> None:
    # 3-bit values 1, 2, 7 -> bits 100 010 111 (LSB first) -> 0b11010001, 0b1
    assert pack_bits(np.array([1, 2, 7]), 3) == bytes([0b11010001, 0b1])
    assert pack_bits(np.array([0x1, 0xF]), 4) == bytes([0xF1])
    assert pack_bits(np.array([0x1234]), 16) == bytes([0x34, 0x12])


def test_pack_bits_accepts_torch_and_memoryview() -> None:
    v = torch.tensor([3, 0, 5, 6, 1], dtype=torch.int64)
    data = pack_bits(v, 3)
    np.testing.assert_array_equal(unpack_bits(memoryview(data), 3, 5), v.numpy())


@pytest.mark.parametrize(
    ("values", "width"),
    [([0, 8], 3), ([-1], 4), ([1 << 16], 16), ([1], 0), ([1], 17), ([0.5], 4)],
)
def test_pack_bits_rejects_bad_input(values: list[float], width: int) -> None:
    with pytest.raises(ValueError):
        pack_bits(np.array(values), width)


def test_unpack_bits_rejects_wrong_length() -> None:
    data = pack_bits(np.arange(8), 3)
    with pytest.raises(ValueError):
        unpack_bits(data + b"\0", 3, 8)
    with pytest.raises(ValueError):
        unpack_bits(data[:-1], 3, 8)


def test_nm_tables_are_lexicographic() -> None:
    for n, m in NM_PATTERNS:
        mask_to_rank, rank_to_bits = nm_tables(n, m)
        combos = list(itertools.combinations(range(m), n))
        assert rank_to_bits.shape == (math.comb(m, n), m)
        for rank, combo in enumerate(combos):
            assert tuple(np.flatnonzero(rank_to_bits[rank])) == combo
            assert mask_to_rank[sum(1 << j for j in combo)] == rank
        assert (mask_to_rank >= 0).sum() == len(combos)


def _random_nm_mask(rows: int, kp: int, n: int, m: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(rows, kp // m, m, generator=g)
    idx = scores.topk(n, dim=-1).indices
    mask = torch.zeros(rows, kp // m, m, dtype=torch.bool)
    mask.scatter_(-1, idx, True)
    return mask.reshape(rows, kp)


@pytest.mark.parametrize(("n", "m"), NM_PATTERNS)
def test_nm_pattern_round_trip(n: int, m: int) -> None:
    bits = {(2, 4): 3, (1, 4): 2, (1, 8): 3, (2, 8): 5, (4, 8): 7}[(n, m)]
    assert nm_pattern_bits(n, m) == bits
    for rows, kp in ((1, m), (3, 5 * m), (64, 40 * m)):
        mask = _random_nm_mask(rows, kp, n, m, seed=rows)
        data = pack_nm_pattern(mask, n, m)
        assert len(data) == math.ceil(rows * kp // m * bits / 8)
        out = unpack_nm_pattern(data, n, m, rows, kp)
        assert out.dtype == torch.bool and out.shape == (rows, kp)
        assert torch.equal(out, mask)


def test_nm_pattern_known_code() -> None:
    # 2:4 combos in order: (0,1) (0,2) (0,3) (1,2) (1,3) (2,3); keep (1,3) -> rank 4
    mask = torch.tensor([[False, True, False, True]])
    assert pack_nm_pattern(mask, 2, 4) == bytes([4])


@pytest.mark.parametrize(("n", "m"), NM_PATTERNS)
def test_nm_pattern_rejects_wrong_count(n: int, m: int) -> None:
    mask = _random_nm_mask(4, 3 * m, n, m, seed=0)
    mask[2, m] = not mask[2, m]  # one group now keeps n +- 1
    with pytest.raises(ValueError, match="row 2"):
        pack_nm_pattern(mask, n, m)
    with pytest.raises(ValueError):
        pack_nm_pattern(torch.ones(2, m + 1, dtype=torch.bool), n, m)  # not a multiple of m


def test_unpack_nm_pattern_rejects_out_of_range_rank() -> None:
    data = pack_bits(np.array([7]), 3)  # 2:4 has only 6 patterns
    with pytest.raises(ValueError):
        unpack_nm_pattern(data, 2, 4, 1, 4)
