"""Exact byte accounting: what an option costs on a layer, and what a plan costs for a model.

The budget is the size of the file the user downloads (DESIGN.md "Exact size accounting"), so
every count here is the length of a stream the packer really writes, byte-aligned per stream:
  values  kept weights x bits
  index   N:M pattern codes at ceil(log2 C(M,N)) bits per group of M, or unstructured
          positions (Rice-coded gaps, or a bitmask where that is smaller)
  scales  fp16 per output channel / per group / per tensor
  bias    fp16 per output channel when the layer has a bias or a norm folded into it
Tensors that are not compressed (LayerNorm, biases of other layers, tied weights, ...) are stored
as fp16 (integer buffers at their own width) and counted as "other".

Unlike peers, who count weight bits only, nothing the runnable model needs is left out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from slimline.errors import InvalidOption
from slimline.search.layers import LayerGeometry
from slimline.search.options import (
    BITS,
    DENSITIES,
    FP16,
    NM_PATTERNS,
    REMOVED,
    LayerOption,
    Plan,
    nm_pattern_bits,
)
from slimline.search.payload import scale_shape


@dataclass(frozen=True)
class LayerBytes:
    """Bytes of each stream of one compressed layer."""

    values: int
    index: int
    scales: int
    bias: int

    @property
    def total(self) -> int:
        return self.values + self.index + self.scales + self.bias

    @property
    def overhead(self) -> int:
        """Bytes that are not weight values: scales, bias and folded norms."""
        return self.scales + self.bias


def _ceil8(bits: int) -> int:
    return (bits + 7) // 8


def unstructured_kept(option: LayerOption, rows: int, row_len: int) -> int:
    """Weights kept by an unstructured option: round(density * n), at least 1."""
    return max(1, round(option.density * rows * row_len))


def padded_row_len(option: LayerOption, row_len: int) -> int:
    """Row length after padding to a multiple of M (N:M only); padding is counted."""
    if option.sparsity == "nm":
        return -(-row_len // option.m) * option.m
    return row_len


def kept_count(option: LayerOption, rows: int, row_len: int) -> int:
    if option.sparsity == "removed":
        return 0
    if option.sparsity == "nm":
        return rows * (padded_row_len(option, row_len) // option.m) * option.n
    if option.sparsity == "unstructured":
        return unstructured_kept(option, rows, row_len)
    return rows * row_len


def layer_bytes(
    option: LayerOption,
    geom: LayerGeometry,
    *,
    position_bytes: int | None = None,
    mask: torch.Tensor | None = None,
) -> LayerBytes:
    """Exact bytes of ``option`` on ``geom``.

    For unstructured options the position stream's length depends on which weights are kept:
    pass the layer's ``mask`` ([O, K] bool) or its already computed ``position_bytes`` for the
    exact figure; with neither, the data-independent upper bound is used, so a plan costed
    before masks exist never under-counts. Other options ignore both.
    """
    rows, k = geom.rows, geom.row_len
    bias = 2 * rows if (geom.has_bias or geom.norm is not None) else 0
    if option.sparsity == "removed":
        return LayerBytes(0, 0, 0, bias)
    kept = kept_count(option, rows, k)
    values = _ceil8(kept * option.bits)
    if option.sparsity == "nm":
        groups = rows * (padded_row_len(option, k) // option.m)
        index = _ceil8(groups * nm_pattern_bits(option.n, option.m))
    elif option.sparsity == "unstructured":
        if position_bytes is None:
            from slimline.search.position_codes import position_stream_bytes

            flat = None if mask is None else mask.reshape(-1)
            position_bytes = position_stream_bytes(rows * k, kept, flat)
        index = position_bytes
    else:
        index = 0
    scales = 0
    if option.quantized:
        srows, scols = scale_shape(option, rows, k)
        if geom.norm is not None and srows == 1:
            # A folded norm scales each output channel: a per-tensor scale becomes per-channel.
            srows = rows
        scales = 2 * srows * scols
    return LayerBytes(values, index, scales, bias)


def dense_layer_bytes(geom: LayerGeometry) -> int:
    """fp32 bytes of the layer's weight and bias in the uncompressed model (ratio's numerator)."""
    return 4 * geom.numel + (4 * geom.rows if geom.has_bias else 0)


def layer_options(
    geom: LayerGeometry,
    *,
    bits: Iterable[int] = BITS,
    patterns: Iterable[tuple[int, int]] = NM_PATTERNS,
    densities: Iterable[float] = DENSITIES,
    granularities: Iterable[str] = ("channel", "tensor"),
    group_sizes: Iterable[int] = (),
    allow_removed: bool = True,
) -> list[LayerOption]:
    """Every option ``geom`` can take (the search space for one layer).

    N:M patterns with M longer than a row are skipped (all padding); unstructured densities
    that keep every weight or the same count as a denser option are skipped; group sizes at
    least as long as the row are skipped (they equal per-channel scales).
    """
    out: list[LayerOption] = [FP16]
    sparsities: list[dict[str, object]] = [{"sparsity": "dense"}]
    sparsities += [{"sparsity": "nm", "n": n, "m": m} for n, m in patterns if m <= geom.row_len]
    seen_k: set[int] = set()
    for d in densities:
        k = max(1, round(d * geom.numel))
        if k < geom.numel and k not in seen_k:
            seen_k.add(k)
            sparsities.append({"sparsity": "unstructured", "density": d})
    grans: list[dict[str, object]] = [{"granularity": g} for g in granularities]
    grans += [{"granularity": "group", "group_size": g} for g in group_sizes if g < geom.row_len]
    for sp in sparsities:
        if sp["sparsity"] != "dense":
            out.append(LayerOption(bits=16, **sp))
        for b in bits:
            if b == 16:
                continue
            for g in grans:
                out.append(LayerOption(bits=b, **sp, **g))
    if allow_removed:
        out.append(REMOVED)
    return out


@dataclass(frozen=True)
class ModelBytes:
    """Bytes of a whole plan: compressed layers, everything else, and the dense reference."""

    layers: dict[str, LayerBytes]
    other: int  # every tensor the model needs that no option applies to
    dense: int  # fp32 bytes of the same tensors (payload only, no container)

    @property
    def payload(self) -> int:
        return sum(b.total for b in self.layers.values()) + self.other


def plan_bytes(
    plan: Plan,
    geoms: Iterable[LayerGeometry],
    other_bytes: int,
    other_dense_bytes: int,
    *,
    position_bytes: Mapping[str, int] | None = None,
) -> ModelBytes:
    """Exact payload bytes of ``plan`` (container header not included; see checkpoint_file)."""
    geoms = list(geoms)
    names = {g.name for g in geoms}
    if set(plan) != names:
        missing, extra = sorted(names - set(plan)), sorted(set(plan) - names)
        raise InvalidOption(
            f"plan does not match the model's layers (missing: {missing}, unknown: {extra})",
            field="plan",
            value=sorted(plan),
        )
    pos = position_bytes or {}
    layers = {g.name: layer_bytes(plan[g.name], g, position_bytes=pos.get(g.name)) for g in geoms}
    dense = sum(dense_layer_bytes(g) for g in geoms) + other_dense_bytes
    return ModelBytes(layers=layers, other=other_bytes, dense=dense)


def smallest_option_bytes(geom: LayerGeometry) -> int:
    """The least bytes any option can give this layer (removed: bias only)."""
    return layer_bytes(REMOVED, geom).total


def bits_per_weight(total_bytes: int, weights: int) -> float:
    return 8.0 * total_bytes / max(1, weights)


def log2_comb(n: int, k: int) -> float:
    """log2 C(n, k), the information bound of a position set (via lgamma, no big ints)."""
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2)
