"""Positions of the kept weights of an unstructured-sparse layer, coded near log2 C(n, k) bits.

At high sparsity the position code, not the values, is most of a layer's bytes (DESIGN.md
"Exact size accounting"), so a bitmask (n bits) is wasteful: k kept of n need only about
log2 C(n, k) bits. We use Golomb-Rice coded gaps, the classic near-optimal code for the
geometric gaps of a random mask (within a few percent of the bound at density <= 1/8), and
fall back to a plain bitmask when that is not larger.

Gaps over the row-major flattened mask: g_0 = p_0, g_i = p_i - p_{i-1} - 1. With Rice parameter
r, each gap is split into a low part (g & (2^r - 1)) and a high part (g >> r). Unlike the usual
interleaved Rice stream (low bits, unary, low bits, unary, ...), which must be decoded gap by
gap, we write all k low parts first as fixed r-bit fields, then all high parts as one unary
stream ((g >> r) zeros then a one, per gap). Both halves decode with whole-array operations:
the low fields are a reshape, and the positions of the ones in the unary stream give the high
parts by a difference. The two halves are one bit stream (only the last byte is padded):

    [k fields of r bits][unary: sum(g >> r) zeros + k ones][zero padding to a byte]

r depends only on (n, k) — it minimizes the data-independent upper bound of the stream's bits,
k*(r+1) + ((n-k) >> r) — so the decoder needs no side information. Which of the two codes a
stream uses is told by its length: the Rice stream is used only when strictly shorter than the
bitmask's ceil(n/8) bytes, so a stream of exactly ceil(n/8) bytes is a bitmask.
"""

from __future__ import annotations

import numpy as np
import torch

MAX_RICE_PARAMETER = 20


def _ceil8(bits: int) -> int:
    return (bits + 7) // 8


def rice_parameter(n: int, k: int) -> int:
    """The r in 0..20 minimizing k*(r+1) + ((n-k) >> r), ties to the smaller r."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    costs = [k * (r + 1) + ((n - k) >> r) for r in range(MAX_RICE_PARAMETER + 1)]
    return costs.index(min(costs))


def _rice_bound_bits(n: int, k: int, r: int) -> int:
    # sum(g) = p_last - (k - 1) <= n - k, and sum(g >> r) <= sum(g) >> r
    return k * (r + 1) + ((n - k) >> r)


def _flat_mask(mask: torch.Tensor | np.ndarray) -> np.ndarray:
    a = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if a.dtype != np.bool_:
        raise ValueError(f"a position mask is a bool array, got dtype {a.dtype}")
    return a.reshape(-1)


def _gaps(positions: np.ndarray) -> np.ndarray:
    return np.diff(positions, prepend=-1) - 1


def _rice_bits(gaps: np.ndarray, r: int) -> int:
    return int(gaps.size * (r + 1) + int((gaps >> r).sum()))


def position_stream_bytes(n: int, k: int, mask: torch.Tensor | np.ndarray | None = None) -> int:
    """Bytes of the position stream for k kept of n.

    With ``mask``: exactly ``len(encode_positions(mask))`` (computed without encoding).
    Without: the data-independent upper bound min(ceil(n/8), ceil((k*(r+1) + ((n-k)>>r))/8)),
    which no mask with k kept of n exceeds.
    """
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    bitmask = _ceil8(n)
    r = rice_parameter(n, k)
    if mask is None:
        return min(bitmask, _ceil8(_rice_bound_bits(n, k, r)))
    flat = _flat_mask(mask)
    if flat.size != n:
        raise ValueError(f"mask has {flat.size} positions, expected n={n}")
    positions = np.flatnonzero(flat)
    if positions.size != k:
        raise ValueError(f"mask keeps {positions.size} positions, expected k={k}")
    return min(bitmask, _ceil8(_rice_bits(_gaps(positions), r)))


def encode_positions(mask: torch.Tensor | np.ndarray) -> bytes:
    """The position stream of ``mask`` (any shape, read row-major): Rice or bitmask."""
    flat = _flat_mask(mask)
    n = flat.size
    positions = np.flatnonzero(flat)
    k = positions.size
    r = rice_parameter(n, k)
    gaps = _gaps(positions)
    total = _rice_bits(gaps, r)
    if _ceil8(total) >= _ceil8(n):
        return np.packbits(flat, bitorder="little").tobytes()
    bits = np.zeros(total, dtype=np.uint8)
    if r:
        low = gaps & ((1 << r) - 1)
        bits[: k * r] = ((low[:, None] >> np.arange(r)) & 1).reshape(-1)
    ones = np.cumsum((gaps >> r) + 1) - 1  # where each gap's unary code ends
    bits[k * r + ones] = 1
    return np.packbits(bits, bitorder="little").tobytes()


def decode_positions(data: bytes | bytearray | memoryview, n: int, k: int) -> np.ndarray:
    """Inverse of `encode_positions`: bool [n] with exactly k True. Raises ValueError when
    ``data`` is not a valid stream for k kept of n."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size == _ceil8(n):
        flat = np.unpackbits(buf, bitorder="little", count=n).astype(bool)
        if int(flat.sum()) != k:
            raise ValueError(f"position bitmask keeps {int(flat.sum())}, expected {k}")
        return flat
    if buf.size > _ceil8(n):
        raise ValueError(f"position stream of {buf.size} bytes is longer than a bitmask of {n}")
    r = rice_parameter(n, k)
    bits = np.unpackbits(buf, bitorder="little")
    if bits.size < k * r:
        raise ValueError(f"position stream too short for {k} fields of {r} bits")
    ones = np.flatnonzero(bits[k * r :])
    if ones.size != k:
        raise ValueError(f"position stream has {ones.size} unary codes, expected {k}")
    gaps = np.diff(ones, prepend=-1) - 1  # high parts
    if r:
        gaps <<= r
        weights = np.left_shift(1, np.arange(r, dtype=np.int64))
        gaps |= bits[: k * r].reshape(k, r).astype(np.int64) @ weights
    positions = np.cumsum(gaps + 1) - 1
    if k and positions[-1] >= n:
        raise ValueError(f"position stream points past the end ({int(positions[-1])} >= {n})")
    if _ceil8(k * r + (int(ones[-1]) + 1 if k else 0)) != buf.size:
        raise ValueError("position stream has trailing bytes")
    flat = np.zeros(n, dtype=bool)
    flat[positions] = True
    return flat
