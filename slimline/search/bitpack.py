"""Fixed-width bit packing and N:M pattern codes: the two byte formats every layer stream uses.

The budget is the file size (DESIGN.md "Exact size accounting"), so a stream of ``count``
values at ``width`` bits is exactly ceil(count * width / 8) bytes: values back to back,
little-endian bit order (value i occupies bits [i*width, (i+1)*width) of the stream, bit j of
the stream is bit j % 8 of byte j // 8), and only the last byte is padded, with zeros.

Unlike the usual "one value per byte/nibble" packers, odd widths (3, 5, 6, 7, ...) are packed
densely too. Everything is vectorized: eight values of ``width`` bits are exactly ``width``
bytes, so the stream is built eight values at a time in two uint64 lanes (a loop over the eight
slots, never over values).

N:M patterns: each group of M positions with exactly N kept is stored as the rank of its kept
set among the C(M, N) combinations in lexicographic order, at ceil(log2 C(M, N)) bits — the
information bound rounded up per group (2:4 -> 3 bits instead of a 4-bit mask).
"""

from __future__ import annotations

import itertools
from functools import cache

import numpy as np
import torch

from slimline.search.options import nm_pattern_bits

MAX_WIDTH = 16
_U64 = np.dtype("<u8")


def packed_bytes(count: int, width: int) -> int:
    """Bytes of ``count`` values at ``width`` bits: ceil(count * width / 8)."""
    return (count * width + 7) // 8


def _check_width(width: int) -> None:
    if not isinstance(width, (int, np.integer)) or not 1 <= width <= MAX_WIDTH:
        raise ValueError(f"bit width must be an integer in 1..{MAX_WIDTH}, got {width!r}")


def pack_bits(values: np.ndarray | torch.Tensor, width: int) -> bytes:
    """Pack unsigned integers < 2**width back to back (see module docstring for the layout)."""
    _check_width(width)
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    v = np.asarray(values).reshape(-1)
    if v.size == 0:
        return b""
    if v.dtype.kind not in "iu":
        raise ValueError(f"pack_bits takes integer values, got dtype {v.dtype}")
    lo, hi = v.min(), v.max()
    if lo < 0 or hi >= (1 << width):
        raise ValueError(
            f"values must be in [0, {(1 << width) - 1}] for width {width}, "
            f"got range [{int(lo)}, {int(hi)}]"
        )
    count = v.size
    nbytes = packed_bytes(count, width)
    if width == 8:
        return v.astype(np.uint8).tobytes()
    if width == 16:
        return v.astype("<u2").tobytes()
    if width in (1, 2, 4):
        per = 8 // width
        u = v.astype(np.uint8)
        pad = (-count) % per
        if pad:
            u = np.concatenate([u, np.zeros(pad, np.uint8)])
        if width == 1:
            return np.packbits(u, bitorder="little").tobytes()
        # strided 1-D slices: numpy is much slower on a [n, per] broadcast with tiny rows
        out = u[0::per].copy()
        for j in range(1, per):
            out |= u[j::per] << np.uint8(j * width)
        return out.tobytes()
    return _pack_general(v, width, nbytes)


def _pack_general(v: np.ndarray, width: int, nbytes: int) -> bytes:
    """Any width <= 16: eight values fill exactly ``width`` bytes, built in one uint64 lane
    (width <= 8) or two (bits 64..127 in the second)."""
    count = v.size
    pad = (-count) % 8
    u = v.astype(np.uint64)
    if pad:
        u = np.concatenate([u, np.zeros(pad, np.uint64)])
    u = u.reshape(-1, 8)
    groups = u.shape[0]
    nlanes = 1 if width <= 8 else 2
    lanes = np.zeros((groups, nlanes), dtype=_U64)
    lo = lanes[:, 0]
    for j in range(8):
        off = j * width
        col = u[:, j]
        if off + width <= 64:
            lo |= col << np.uint64(off)
        elif off >= 64:
            lanes[:, 1] |= col << np.uint64(off - 64)
        else:  # straddles the two lanes
            lo |= col << np.uint64(off)  # high bits fall off the uint64
            lanes[:, 1] |= col >> np.uint64(64 - off)
    # lanes are little-endian uint64s, so their bytes are the stream in order
    stream = lanes.view(np.uint8).reshape(groups, 8 * nlanes)[:, :width]
    return stream.reshape(-1)[:nbytes].tobytes()


def unpack_bits(data: bytes | bytearray | memoryview, width: int, count: int) -> np.ndarray:
    """Inverse of `pack_bits`: ``count`` values as int64. ``data`` must be exactly the packed
    length (ceil(count * width / 8) bytes)."""
    _check_width(width)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    buf = np.frombuffer(data, dtype=np.uint8)
    nbytes = packed_bytes(count, width)
    if buf.size != nbytes:
        raise ValueError(f"{count} values at {width} bits take {nbytes} bytes, got {buf.size}")
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if width == 8:
        return buf.astype(np.int64)
    if width == 16:
        return buf.view("<u2").astype(np.int64)
    if width == 1:
        return np.unpackbits(buf, bitorder="little", count=count).astype(np.int64)
    if width in (2, 4):
        per = 8 // width
        low = np.uint8((1 << width) - 1)
        out = np.empty(buf.size * per, dtype=np.int64)
        for j in range(per):
            out[j::per] = (buf >> np.uint8(j * width)) & low
        return out[:count]
    return _unpack_general(buf, width, count)


def _unpack_general(buf: np.ndarray, width: int, count: int) -> np.ndarray:
    groups = -(-count // 8)
    nlanes = 1 if width <= 8 else 2
    if buf.size < groups * width:
        buf = np.concatenate([buf, np.zeros(groups * width - buf.size, np.uint8)])
    lanes = np.zeros((groups, 8 * nlanes), dtype=np.uint8)
    lanes[:, :width] = buf.reshape(groups, width)
    lanes64 = lanes.view(_U64)
    lo = lanes64[:, 0]
    mask = np.uint64((1 << width) - 1)
    out = np.empty((groups, 8), dtype=np.int64)
    for j in range(8):
        off = j * width
        if off + width <= 64:
            col = lo >> np.uint64(off)
        elif off >= 64:
            col = lanes64[:, 1] >> np.uint64(off - 64)
        else:
            col = (lo >> np.uint64(off)) | (lanes64[:, 1] << np.uint64(64 - off))
        out[:, j] = col & mask
    return out.reshape(-1)[:count]


# ------------------------------------------------------------------------ N:M pattern codes
@cache
def nm_tables(n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(mask_to_rank [2**m] int16, -1 where the mask does not keep exactly n;
    rank_to_bits [C(m, n), m] bool). Bit j of a mask integer is position j of the group."""
    if not 0 < n < m <= 8:
        raise ValueError(f"N:M pattern needs 0 < n < m <= 8, got {n}:{m}")
    combos = list(itertools.combinations(range(m), n))  # lexicographic order
    mask_to_rank = np.full(1 << m, -1, dtype=np.int16)
    rank_to_bits = np.zeros((len(combos), m), dtype=bool)
    for rank, combo in enumerate(combos):
        mask_to_rank[sum(1 << j for j in combo)] = rank
        rank_to_bits[rank, list(combo)] = True
    mask_to_rank.setflags(write=False)
    rank_to_bits.setflags(write=False)
    return mask_to_rank, rank_to_bits


def nm_ranks(mask: torch.Tensor | np.ndarray, n: int, m: int) -> np.ndarray:
    """Rank of every group of ``m`` along each row of ``mask`` [O, Kp] (row-major), int64."""
    mask_to_rank, _ = nm_tables(n, m)
    a = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if a.ndim != 2 or a.dtype != np.bool_:
        raise ValueError(f"an N:M mask is a 2-D bool array, got {a.ndim}-D {a.dtype}")
    if a.shape[1] % m:
        raise ValueError(f"N:M mask rows have {a.shape[1]} positions, not a multiple of m={m}")
    ints = _group_ints(a.reshape(-1), m)
    ranks: np.ndarray = mask_to_rank[ints]
    if ranks.size and ranks.min() < 0:
        bad = int(np.flatnonzero(ranks < 0)[0])
        row, g = divmod(bad, a.shape[1] // m)
        kept = int(np.count_nonzero(a.reshape(-1, m)[bad]))
        raise ValueError(f"N:M mask group {g} of row {row} keeps {kept} of {m}, not exactly {n}")
    out: np.ndarray = ranks.astype(np.int64)
    return out


def _group_ints(flat: np.ndarray, m: int) -> np.ndarray:
    """Each group of m (4 or 8) bools as an integer, bit j = position j (via np.packbits)."""
    packed = np.packbits(flat, bitorder="little")  # one byte = 8 positions
    if m == 8:
        return packed
    assert m == 4
    groups = flat.size // 4
    out = np.empty(2 * packed.size, dtype=np.uint8)
    out[0::2] = packed & np.uint8(0xF)
    out[1::2] = packed >> np.uint8(4)
    return out[:groups]


def _group_bits(ints: np.ndarray, m: int) -> np.ndarray:
    """Inverse of `_group_ints`: bool [len(ints) * m]."""
    if m == 4:
        if ints.size % 2:
            ints = np.concatenate([ints, np.zeros(1, np.uint8)])
        ints = ints[0::2] | (ints[1::2] << np.uint8(4))
    return np.unpackbits(ints, bitorder="little").view(bool)


def pack_nm_pattern(mask: torch.Tensor | np.ndarray, n: int, m: int) -> bytes:
    """N:M mask [O, Kp] -> one rank per group of m at `nm_pattern_bits(n, m)` bits."""
    return pack_bits(nm_ranks(mask, n, m), nm_pattern_bits(n, m))


def unpack_nm_pattern(
    data: bytes | bytearray | memoryview, n: int, m: int, rows: int, kp: int
) -> torch.Tensor:
    """Inverse of `pack_nm_pattern`: bool mask [rows, kp]."""
    if kp % m:
        raise ValueError(f"padded row length {kp} is not a multiple of m={m}")
    groups = rows * (kp // m)
    ranks = unpack_bits(data, nm_pattern_bits(n, m), groups)
    rank_to_int = nm_rank_ints(n, m)
    if ranks.size and ranks.max() >= rank_to_int.size:
        raise ValueError(
            f"N:M pattern code {int(ranks.max())} is out of range for {n}:{m} "
            f"(C({m},{n}) = {rank_to_int.size} patterns)"
        )
    bits = _group_bits(rank_to_int[ranks], m)[: groups * m]
    return torch.from_numpy(bits.reshape(rows, kp))


@cache
def nm_rank_ints(n: int, m: int) -> np.ndarray:
    """rank -> the group's mask as an integer (bit j = position j), uint8 [C(m, n)]."""
    _, rank_to_bits = nm_tables(n, m)
    weights = np.left_shift(1, np.arange(m))
    out: np.ndarray = (rank_to_bits.astype(np.int64) @ weights).astype(np.uint8)
    out.setflags(write=False)
    return out
