"""`LayerPayload`: a compressed layer as integers, a mask and fp16 numbers — what the file holds.

This is the contract between fine-tuning (which produces payloads when the model is finalized),
the packer (which turns payloads into byte streams and back) and the loader (which turns
payloads into fp32 weights). `dequantize` is the one function that maps a payload to weights;
the in-memory finalized model and the reloaded model both go through it, which is why the
reloaded model's outputs equal the trained model's bit for bit.

Quantizer levels (2..8 bits, b bits, codes c in [0, 2^b - 1], q = c - 2^(b-1)):
  dense layers:   w = q * s                 (zero is a level: dense weights need it)
  sparse layers:  w = (q + 1/2) * s         (zero-free, mid-rise: the mask already encodes zeros,
                                             so all 2^b levels go to non-zero magnitudes)
with s the fp16 scale of the weight's output channel, group of input weights, or tensor.
A BatchNorm folded into a per-tensor option multiplies each channel differently, so its scales
become per-channel ([O, 1]); accounting counts them so and the unpacker tells by the length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slimline.search.options import LayerOption


def level_offset(option: LayerOption) -> float:
    """0.5 for sparse options (zero-free levels), 0 for dense ones."""
    return 0.5 if option.is_sparse else 0.0


def code_range(bits: int) -> tuple[int, int]:
    """Signed integer range (qmin, qmax) of a b-bit code."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def scale_shape(option: LayerOption, rows: int, row_len: int) -> tuple[int, int]:
    """Shape of the scale matrix [rows or 1, groups per row or 1]."""
    if option.granularity == "channel":
        return rows, 1
    if option.granularity == "group":
        return rows, -(-row_len // option.group_size)
    return 1, 1


@dataclass
class LayerPayload:
    """One compressed layer, ready to pack.

    Shapes (rows = output channels O, row_len = K = in/groups * kernel size):
      mask:   bool [O, Kp] where Kp = K padded up to a multiple of M for N:M (else Kp = K);
              None for dense. Padding columns may be marked kept (an N:M group needs exactly N)
              and are dropped when the weight is rebuilt.
      codes:  int64 [kept] unsigned codes of the kept values in row-major order of the mask
              (for 16 bits: the fp16 bit patterns as int64 in [0, 65535]).
      scales: fp16 [O or 1, groups or 1] for 2..8 bits; None for 16 bits and removed.
      bias:   fp16 [O] or None (also holds a folded norm's shift).
    """

    name: str
    option: LayerOption
    shape: tuple[int, ...]  # the weight's shape, e.g. (O, I/groups, kh, kw)
    mask: torch.Tensor | None
    codes: torch.Tensor
    scales: torch.Tensor | None
    bias: torch.Tensor | None

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def row_len(self) -> int:
        k = 1
        for d in self.shape[1:]:
            k *= d
        return k


def dequantize(p: LayerPayload) -> torch.Tensor:
    """fp32 weight of ``p.shape`` rebuilt from codes, mask and scales (vectorized)."""
    rows, k = p.rows, p.row_len
    opt = p.option
    if opt.sparsity == "removed":
        return torch.zeros(p.shape, dtype=torch.float32)
    kp = p.mask.shape[1] if p.mask is not None else k
    if opt.bits == 16:
        values = p.codes.to(torch.int32).to(torch.int16).view(torch.float16).to(torch.float32)
    else:
        qmin, _ = code_range(opt.bits)
        q = (p.codes + qmin).to(torch.float32) + level_offset(opt)  # [kept]
        assert p.scales is not None
        s_full = expand_scales(p.scales.to(torch.float32), opt, rows, kp)  # [O, Kp]
        # scatter the levels first, then scale densely: bit-identical to scaling the kept
        # values, and ~3x faster than gathering scales through the boolean mask
        return (_scatter(q, p.mask, rows, kp) * s_full)[:, :k].reshape(p.shape).contiguous()
    return _scatter(values, p.mask, rows, kp)[:, :k].reshape(p.shape).contiguous()


def _scatter(values: torch.Tensor, mask: torch.Tensor | None, rows: int, kp: int) -> torch.Tensor:
    """Kept values [kept] into a zero [O, Kp] matrix at the mask's positions (row-major)."""
    if mask is None:
        return values.reshape(rows, kp)
    return torch.zeros(rows, kp, dtype=torch.float32).masked_scatter_(mask, values)


def expand_scales(s: torch.Tensor, opt: LayerOption, rows: int, kp: int) -> torch.Tensor:
    """[O|1, G|1] scales -> [O, Kp], one scale per weight position."""
    if opt.granularity == "group":
        s = s.repeat_interleave(opt.group_size, dim=1)[:, :kp]
        if s.shape[1] < kp:  # padding columns beyond the last group reuse its scale
            s = torch.cat([s, s[:, -1:].expand(-1, kp - s.shape[1])], dim=1)
    return s.expand(rows, kp)
