"""A `LayerPayload` as the four byte streams the checkpoint stores, and back.

Streams per compressed layer (DESIGN.md section 5; their lengths are exactly what
`accounting.layer_bytes` counts, which a test checks option by option):
  values  kept codes at ``option.bits`` bits each (`bitpack.pack_bits`); 16-bit values are the
          fp16 bit patterns
  index   N:M pattern ranks (`bitpack.pack_nm_pattern`) or unstructured positions
          (`position_codes.encode_positions` of the [O, K] mask); empty for dense and removed
  scales  fp16 little-endian, row-major [O|1, G|1]; empty for fp16 values and removed layers
  bias    fp16 little-endian [O]; empty when the layer has none

Nothing here is a format of its own: the reader derives every count (kept weights, groups,
scales) from the option and the weight's shape, so the streams carry no lengths or shapes.
Scales and bias must already be fp16: packing never rounds, so `dequantize` of the unpacked
payload equals `dequantize` of the original bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from slimline.errors import InvalidCheckpoint
from slimline.search.accounting import kept_count, padded_row_len, unstructured_kept
from slimline.search.bitpack import pack_bits, pack_nm_pattern, unpack_bits, unpack_nm_pattern
from slimline.search.options import LayerOption
from slimline.search.payload import LayerPayload, scale_shape
from slimline.search.position_codes import decode_positions, encode_positions

# kept_count, padded_row_len and unstructured_kept are defined once, in accounting, and
# re-exported: the packer and the byte count must agree on them.
__all__ = [
    "LayerStreams",
    "kept_count",
    "pack_payload",
    "padded_row_len",
    "unpack_payload",
    "unstructured_kept",
]


@dataclass(frozen=True)
class LayerStreams:
    """The bytes of one compressed layer, in file order."""

    values: bytes
    index: bytes
    scales: bytes
    bias: bytes

    def as_list(self) -> list[bytes]:
        return [self.values, self.index, self.scales, self.bias]

    def lengths(self) -> tuple[int, int, int, int]:
        return len(self.values), len(self.index), len(self.scales), len(self.bias)

    @property
    def total(self) -> int:
        return sum(self.lengths())


def _fp16_bytes(t: torch.Tensor, what: str, name: str) -> bytes:
    if t.dtype != torch.float16:
        raise ValueError(
            f"layer {name!r}: {what} must be float16 (packing never rounds), got {t.dtype}"
        )
    return t.detach().cpu().contiguous().view(torch.int16).numpy().astype("<i2").tobytes()


def _fp16_tensor(data: bytes | memoryview, shape: tuple[int, ...]) -> torch.Tensor:
    a = np.frombuffer(data, dtype="<i2").astype(np.int16)  # copy: writable, native order
    return torch.from_numpy(a).view(torch.float16).reshape(shape)


def pack_payload(p: LayerPayload) -> LayerStreams:
    """The four streams of ``p`` (see module docstring)."""
    opt = p.option
    rows, k = p.rows, p.row_len
    kept = kept_count(opt, rows, k)
    if opt.sparsity == "removed":
        values, index, scales = b"", b"", b""
    else:
        if p.codes.numel() != kept:
            raise ValueError(
                f"layer {p.name!r}: {opt.to_str()} on {tuple(p.shape)} keeps {kept} weights, "
                f"but the payload has {p.codes.numel()} codes"
            )
        values = pack_bits(p.codes.detach().cpu().numpy().reshape(-1), opt.bits)
        if opt.sparsity == "nm":
            expected = (rows, padded_row_len(opt, k))
            _check_mask(p, expected)
            index = pack_nm_pattern(p.mask, opt.n, opt.m)
        elif opt.sparsity == "unstructured":
            _check_mask(p, (rows, k))
            index = encode_positions(p.mask)
        else:
            if p.mask is not None:
                raise ValueError(f"layer {p.name!r}: a dense payload has no mask")
            index = b""
        if opt.quantized:
            if p.scales is None:
                raise ValueError(f"layer {p.name!r}: {opt.to_str()} needs scales")
            _check_scales(p)
            scales = _fp16_bytes(p.scales, "scales", p.name)
        else:
            scales = b""
    bias = b""
    if p.bias is not None:
        if p.bias.numel() != rows:
            raise ValueError(f"layer {p.name!r}: bias has {p.bias.numel()} entries, not {rows}")
        bias = _fp16_bytes(p.bias, "bias", p.name)
    return LayerStreams(values=values, index=index, scales=scales, bias=bias)


def _check_mask(p: LayerPayload, shape: tuple[int, int]) -> None:
    if p.mask is None or tuple(p.mask.shape) != shape or p.mask.dtype != torch.bool:
        got = None if p.mask is None else (tuple(p.mask.shape), p.mask.dtype)
        raise ValueError(
            f"layer {p.name!r}: {p.option.to_str()} needs a bool mask {shape}, got {got}"
        )
    kept = int(np.count_nonzero(p.mask.detach().cpu().numpy()))  # numpy: ~20x torch's sum
    if kept != p.codes.numel():
        raise ValueError(
            f"layer {p.name!r}: mask keeps {kept} but there are {p.codes.numel()} codes"
        )


def _check_scales(p: LayerPayload) -> None:
    assert p.scales is not None
    srows, scols = scale_shape(p.option, p.rows, p.row_len)
    allowed = {(srows, scols)}
    if p.option.granularity == "tensor":
        allowed.add((p.rows, 1))  # a folded norm turns a per-tensor scale per-channel
    if tuple(p.scales.shape) not in allowed:
        raise ValueError(
            f"layer {p.name!r}: scales of shape {tuple(p.scales.shape)}, "
            f"expected one of {sorted(allowed)}"
        )


def unpack_payload(
    streams: LayerStreams,
    name: str,
    option: LayerOption,
    shape: tuple[int, ...],
    has_bias: bool,
) -> LayerPayload:
    """Rebuild the payload `pack_payload` packed. ``has_bias``: a bias (or folded norm shift)
    was stored. A per-tensor option's scales are [1, 1], or [O, 1] when a norm was folded
    into them (told apart by the stream's length). Corrupt or inconsistent streams raise
    `InvalidCheckpoint` naming the layer."""
    try:
        return _unpack(streams, name, option, tuple(shape), has_bias)
    except ValueError as exc:
        raise InvalidCheckpoint(f"layer {name!r} ({option.to_str()}): {exc}", field=name) from None


def _unpack(
    s: LayerStreams, name: str, opt: LayerOption, shape: tuple[int, ...], has_bias: bool
) -> LayerPayload:
    rows, k = shape[0], math.prod(shape[1:])
    kept = kept_count(opt, rows, k)
    mask: torch.Tensor | None = None
    scales: torch.Tensor | None = None
    if opt.sparsity == "removed":
        for what, data in (("values", s.values), ("index", s.index), ("scales", s.scales)):
            if len(data):
                raise ValueError(f"a removed layer stores no {what}, got {len(data)} bytes")
        codes = torch.zeros(0, dtype=torch.int64)
    else:
        codes = torch.from_numpy(unpack_bits(s.values, opt.bits, kept))
        if opt.sparsity == "nm":
            mask = unpack_nm_pattern(s.index, opt.n, opt.m, rows, padded_row_len(opt, k))
        elif opt.sparsity == "unstructured":
            mask = torch.from_numpy(decode_positions(s.index, rows * k, kept).reshape(rows, k))
        elif len(s.index):
            raise ValueError(f"a dense layer stores no index, got {len(s.index)} bytes")
        if opt.quantized:
            srows, scols = scale_shape(opt, rows, k)
            if opt.granularity == "tensor" and len(s.scales) == 2 * rows:
                srows = rows
            if len(s.scales) != 2 * srows * scols:
                raise ValueError(
                    f"scales stream has {len(s.scales)} bytes, expected {2 * srows * scols}"
                )
            scales = _fp16_tensor(s.scales, (srows, scols))
        elif len(s.scales):
            raise ValueError(f"fp16 values have no scales, got {len(s.scales)} bytes")
    bias = None
    if has_bias:
        if len(s.bias) != 2 * rows:
            raise ValueError(f"bias stream has {len(s.bias)} bytes, expected {2 * rows}")
        bias = _fp16_tensor(s.bias, (rows,))
    elif len(s.bias):
        raise ValueError(f"no bias expected, got {len(s.bias)} bytes")
    return LayerPayload(
        name=name, option=opt, shape=shape, mask=mask, codes=codes, scales=scales, bias=bias
    )
