"""A finalized model to a checkpoint file and back, given the model's skeleton.

The file stores streams only; where each stream starts is derived from what both sides know:
the skeleton (the zoo architecture, or the user's `.pt2` program) gives the layers, their
shapes and the other tensors, the header's plan gives every option, and the header records the
one data-dependent length (unstructured position streams). That keeps the header to the plan
and a few numbers, which matters when the whole file is a few kilobytes.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from slimline.errors import InvalidCheckpoint
from slimline.search.accounting import layer_bytes
from slimline.search.checkpoint_file import (
    FileInfo,
    header_bytes_for,
    read_checkpoint,
    split_payload,
    write_checkpoint,
)
from slimline.search.finalize import (
    Finalized,
    _plain_state_dict,
    other_tensor_names,
    restore_layer,
    restore_others,
    stored_tensor,
)
from slimline.search.layers import LayerGeometry
from slimline.search.options import Plan
from slimline.search.packing import LayerStreams, pack_payload, unpack_payload

FORMAT_VERSION = 1
METRIC_FORMAT = "{:.6e}"  # fixed width, so the header's size is known before training


def fixed_metric(value: float) -> str:
    return METRIC_FORMAT.format(value)


def position_lengths(streams: dict[str, LayerStreams], plan: Plan) -> dict[str, int]:
    return {n: len(s.index) for n, s in streams.items() if plan[n].sparsity == "unstructured"}


def build_header(
    *,
    arch: dict[str, Any],
    task: str,
    plan: Plan,
    positions: dict[str, int],
    metrics: dict[str, float],
    accounting: dict[str, int],
) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "arch": arch,
        "task": task,
        "plan": plan.to_strs(),
        "pos": positions,
        "bytes": accounting,
        "metrics": {k: fixed_metric(v) for k, v in metrics.items()},
    }


def reserve_header_bytes(header: dict[str, Any], payload_bytes: int) -> int:
    """Container overhead of the file this header will go into."""
    return header_bytes_for(header, payload_bytes)


def write_model(
    path: str | os.PathLike[str], fin: Finalized, header: dict[str, Any]
) -> tuple[FileInfo, dict[str, LayerStreams]]:
    """Pack every payload and other tensor into one checkpoint file."""
    streams = {p.name: pack_payload(p) for p in fin.payloads}
    others = [_tensor_bytes(t) for t in fin.others.values()]
    info = write_checkpoint(path, header, list(streams.values()), others)
    return info, streams


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""


def other_stored_bytes(model: nn.Module, geoms: list[LayerGeometry]) -> int:
    """Bytes of the tensors stored as they are (floats at fp16)."""
    state = _plain_state_dict(model)
    return sum(_stored_nbytes(state[k]) for k in other_tensor_names(model, geoms))


def _stored_nbytes(t: torch.Tensor) -> int:
    return t.numel() * (2 if t.is_floating_point() else t.element_size())


def read_model(
    path: str | os.PathLike[str], skeleton: nn.Module, geoms: list[LayerGeometry]
) -> dict[str, Any]:
    """Fill ``skeleton`` (plain, unparametrized) from the file, in place; returns the header."""
    header, payload = read_checkpoint(path)
    try:
        plan = Plan.from_dict({"version": Plan.VERSION, "layers": header["plan"]})
        positions = {str(k): int(v) for k, v in header.get("pos", {}).items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidCheckpoint(f"{path}: header has no valid plan ({exc})", field="plan") from None
    # files written before embeddings became compressible store them as ordinary tensors
    geoms = [g for g in geoms if g.kind != "embedding" or g.name in plan]
    names = [g.name for g in geoms]
    if sorted(plan) != sorted(names):
        raise InvalidCheckpoint(
            f"{path}: the plan's layers {sorted(plan)} do not match the model's {sorted(names)}",
            field="plan",
        )
    lengths: list[int] = []
    for g in geoms:
        b = layer_bytes(plan[g.name], g, position_bytes=positions.get(g.name))
        lengths += [b.values, b.index, b.scales, b.bias]
    state = _plain_state_dict(skeleton)
    other_names = other_tensor_names(skeleton, geoms)
    lengths += [_stored_nbytes(state[k]) for k in other_names]
    chunks = split_payload(payload, lengths)
    for i, g in enumerate(geoms):
        v, ix, sc, bi = (bytes(c) for c in chunks[4 * i : 4 * i + 4])
        has_bias = g.has_bias or g.norm is not None
        p = unpack_payload(
            LayerStreams(values=v, index=ix, scales=sc, bias=bi),
            g.name,
            plan[g.name],
            g.shape,
            has_bias,
        )
        restore_layer(skeleton, g, p)
    others = {}
    for name, chunk in zip(other_names, chunks[4 * len(geoms) :], strict=True):
        ref = stored_tensor(state[name])
        others[name] = (
            torch.frombuffer(bytearray(chunk), dtype=ref.dtype).reshape(ref.shape)
            if ref.numel()
            else ref.clone()
        )
    restore_others(skeleton, others)
    return header
