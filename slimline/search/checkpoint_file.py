"""The checkpoint container: one safetensors file holding one uint8 tensor and a JSON header.

The budget is the size of this file (DESIGN.md section 5), so the container must cost next to
nothing. safetensors spends ~80 header bytes per tensor (name, dtype, shape, offsets), which for
a model of a few dozen layers x four streams would blow the 1% header allowance on an ~86 KB
file; so every stream of every layer is concatenated into a single tensor ``payload``, and the
stream boundaries are derived from the plan (and recorded in the caller's header where they
depend on data). The caller's header dict is stored, as compact JSON, in the safetensors
``__metadata__`` entry ``slimline``.

The file is written by hand rather than by ``safetensors.torch.save_file``: same format (8-byte
little-endian header length, JSON header, data), but compact JSON and no alignment padding, so
`header_bytes_for` can predict the overhead to the byte before training starts. Any
safetensors reader opens it. Reading never unpickles and validates everything it relies on.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimline.errors import InvalidCheckpoint
from slimline.search.packing import LayerStreams

PAYLOAD_TENSOR = "payload"
METADATA_KEY = "slimline"
# A sane cap on the JSON header so a corrupt length cannot make us read gigabytes.
MAX_HEADER_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class FileInfo:
    """Sizes of a written checkpoint. header_bytes = container overhead = file - payload."""

    file_bytes: int
    header_bytes: int
    payload_bytes: int


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _header_json(header: dict[str, Any], payload_bytes: int) -> bytes:
    outer = {
        "__metadata__": {METADATA_KEY: _dumps(header)},
        PAYLOAD_TENSOR: {
            "dtype": "U8",
            "shape": [payload_bytes],
            "data_offsets": [0, payload_bytes],
        },
    }
    return _dumps(outer).encode("utf-8")


def header_bytes_for(header: dict[str, Any], payload_bytes: int) -> int:
    """Exact container overhead (file bytes - payload bytes) `write_checkpoint` will produce."""
    return 8 + len(_header_json(header, payload_bytes))


def stream_list(layers: Sequence[LayerStreams], others: Sequence[bytes]) -> list[bytes]:
    """Every stream in file order: per layer values, index, scales, bias; then the others."""
    out: list[bytes] = []
    for layer in layers:
        out.extend(layer.as_list())
    out.extend(others)
    return out


def write_checkpoint(
    path: str | os.PathLike[str],
    header: dict[str, Any],
    layers: Sequence[LayerStreams],
    others: Sequence[bytes],
) -> FileInfo:
    """Write atomically (temp file in the same directory, fsync, rename)."""
    path = Path(path)
    payload_bytes = sum(len(b) for b in stream_list(layers, others))
    head = _header_json(header, payload_bytes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; a checkpoint is a file to hand out
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(head)))
            f.write(head)
            for chunk in stream_list(layers, others):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    file_bytes = os.path.getsize(path)
    return FileInfo(
        file_bytes=file_bytes, header_bytes=file_bytes - payload_bytes, payload_bytes=payload_bytes
    )


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_layout(path: Path) -> tuple[dict[str, Any], int, int]:
    """(caller's header, offset of the payload, payload length), all validated."""

    def bad(problem: str) -> InvalidCheckpoint:
        return InvalidCheckpoint(
            f"{path} is not a valid slimline checkpoint: {problem}",
            field="checkpoint",
            value=str(path),
        )

    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            first = f.read(8)
            if len(first) < 8:
                raise bad(f"file is {size} bytes, too short for a safetensors header length")
            (n,) = struct.unpack("<Q", first)
            if n < 2 or n > min(MAX_HEADER_BYTES, size - 8):
                raise bad(
                    f"header length {n} does not fit a file of {size} bytes "
                    "(truncated, or not a safetensors file)"
                )
            raw = f.read(n)
    except OSError as exc:
        raise InvalidCheckpoint(
            f"cannot read checkpoint {path}: {exc.strerror or exc}",
            field="checkpoint",
            value=str(path),
        ) from None
    try:
        outer = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"header is not UTF-8 JSON ({exc})") from None
    if not isinstance(outer, dict):
        raise bad("header is not a JSON object")
    meta = outer.get("__metadata__")
    if not isinstance(meta, dict) or not isinstance(meta.get(METADATA_KEY), str):
        raise bad(f"no '{METADATA_KEY}' entry in the safetensors metadata")
    tensors = {k: v for k, v in outer.items() if k != "__metadata__"}
    if set(tensors) != {PAYLOAD_TENSOR}:
        raise bad(f"expected exactly one tensor {PAYLOAD_TENSOR!r}, got {sorted(tensors)}")
    entry = tensors[PAYLOAD_TENSOR]
    payload_bytes = size - 8 - n
    if (
        not isinstance(entry, dict)
        or entry.get("dtype") != "U8"
        or entry.get("shape") != [payload_bytes]
        or entry.get("data_offsets") != [0, payload_bytes]
    ):
        raise bad(
            f"tensor {PAYLOAD_TENSOR!r} is {entry!r}, expected a U8 tensor of the "
            f"{payload_bytes} bytes after the header (truncated or extended file?)"
        )
    try:
        header = json.loads(meta[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise bad(f"'{METADATA_KEY}' metadata is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise bad(f"'{METADATA_KEY}' metadata is not a JSON object")
    return header, 8 + n, payload_bytes


def read_checkpoint_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The caller's header dict. Anything malformed raises `InvalidCheckpoint`."""
    return _read_layout(Path(path))[0]


def read_checkpoint_payload(path: str | os.PathLike[str]) -> bytes:
    """The concatenated streams (validated against the header first)."""
    return read_checkpoint(path)[1]


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Any], bytes]:
    """(header dict, payload bytes) in one pass."""
    p = Path(path)
    header, offset, length = _read_layout(p)
    try:
        with open(p, "rb") as f:
            f.seek(offset)
            payload = f.read(length)
    except OSError as exc:
        raise InvalidCheckpoint(
            f"cannot read checkpoint {p}: {exc.strerror or exc}", field="checkpoint", value=str(p)
        ) from None
    if len(payload) != length:
        raise InvalidCheckpoint(f"{p} changed while being read", field="checkpoint", value=str(p))
    return header, payload


def split_payload(payload: bytes | memoryview, lengths: Sequence[int]) -> list[memoryview]:
    """Cut the payload into streams of the given lengths (zero-copy views)."""
    view = memoryview(payload)
    if any(n < 0 for n in lengths) or sum(lengths) != len(view):
        raise InvalidCheckpoint(
            f"stream lengths add up to {sum(lengths)} bytes but the payload has {len(view)} "
            "(checkpoint does not match its plan)",
            field="payload",
            value=len(view),
        )
    out: list[memoryview] = []
    start = 0
    for n in lengths:
        out.append(view[start : start + n])
        start += n
    return out
