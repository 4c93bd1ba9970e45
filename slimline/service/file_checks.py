"""Cheap format checks on an upload before it is recorded: no torch, nothing executed.

They catch the common mistakes at once (a pickle or a ``torch.save`` file sent as a model, a
truncated file, the wrong extension) with a message that says what to send instead. The
worker's inspection task does the real, thorough check (``slimline.models._pt2_guard`` for a
``.pt2``), so passing here means "worth inspecting", not "safe".
"""

from __future__ import annotations

import json
import math
import struct
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from slimline.archives import check_expansion
from slimline.errors import InvalidData, InvalidInput, InvalidModel
from slimline.schemas import MAX_SETTINGS_DEPTH, json_depth

MAX_SAFETENSORS_HEADER = 100 * 1024**2
PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
SAVE_HINT = "export the model with torch.export.save(torch.export.export(model, args), 'm.pt2')"
MAX_JSON_DEPTH = MAX_SETTINGS_DEPTH
SAFETENSORS_DTYPES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


def extension(filename: str) -> str:
    return PurePosixPath(filename.lower()).suffix


def load_json_text(text: str | bytes, *, field: str, what: str, error: type = InvalidInput) -> Any:
    """``json.loads`` that refuses deep nesting with ``error`` naming ``field`` (Python's
    parser recurses: a few thousand ``[`` would otherwise be a RecursionError, a 500)."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise error(
            f"{what} nests too deeply (at most {MAX_JSON_DEPTH} levels)", field=field
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{what} is not valid JSON: {exc}", field=field) from None
    if json_depth(value) > MAX_JSON_DEPTH:
        raise error(f"{what} nests too deeply (at most {MAX_JSON_DEPTH} levels)", field=field)
    return value


def _zip_infos(path: Path) -> list[zipfile.ZipInfo] | None:
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError):
        return None


def _zip_names(path: Path) -> list[str] | None:
    infos = _zip_infos(path)
    return None if infos is None else [i.filename for i in infos]


def _refuse_empty(size: int, filename: str, error: type) -> None:
    if size == 0:
        raise error(f"{filename!r} is empty (0 bytes)", field="file")


def check_pt2(path: Path, head: bytes, filename: str, *, size: int, max_upload: int) -> None:
    """A ``.pt2`` is a torch.export archive: a zip with an ``archive_format`` member and no
    pickles. A bare pickle or a ``torch.save`` checkpoint (a zip around ``data.pkl``) is
    refused without being read further, and so is an archive that would unpack to far more
    than it weighs."""
    _refuse_empty(size, filename, InvalidModel)
    if head.startswith(PICKLE_MAGIC):
        raise InvalidModel(
            f"{filename!r} is a Python pickle, which slimline never loads (it can run code); "
            f"{SAVE_HINT}",
            field="file",
        )
    infos = _zip_infos(path)
    if infos is None:
        raise InvalidModel(
            f"{filename!r} is not a .pt2 archive (not a zip file, or a truncated one); {SAVE_HINT}",
            field="file",
        )
    names = [i.filename for i in infos]
    if any(n.endswith(".pkl") for n in names):
        raise InvalidModel(
            f"{filename!r} is a torch.save checkpoint (a pickle inside a zip), not a "
            f"torch.export program; {SAVE_HINT}",
            field="file",
        )
    if not any(PurePosixPath(n).name == "archive_format" for n in names):
        raise InvalidModel(
            f"{filename!r} is a zip but not a torch.export .pt2 archive (no archive_format "
            f"member); {SAVE_HINT}",
            field="file",
        )
    check_expansion(infos, size, filename, max_upload=max_upload, error=InvalidModel)


def check_safetensors(path: Path, size: int, filename: str, *, field: str, model: bool) -> None:
    """An 8-byte little-endian header length, then that many bytes of JSON object whose
    tensors have a known dtype, a shape, and data offsets that lie inside the file and span
    exactly their shape's bytes (so a truncated file is caught here, not by the worker)."""
    error = InvalidModel if model else InvalidData
    _refuse_empty(size, filename, error)
    if size < 8:
        raise error(f"{filename!r} is too short to be a safetensors file", field=field)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > min(MAX_SAFETENSORS_HEADER, size - 8):
            raise error(
                f"{filename!r} is not a safetensors file (or it is truncated): header length "
                f"{n} exceeds the file or the {MAX_SAFETENSORS_HEADER}-byte cap",
                field=field,
            )
        raw = f.read(n)
    what = f"{filename!r} is not a safetensors file: its header"
    header = load_json_text(raw, field=field, what=what, error=error)
    if not isinstance(header, dict):
        raise error(f"{filename!r} is not a safetensors file: bad header", field=field)
    data_bytes = size - 8 - n
    for name, t in header.items():
        if name == "__metadata__":
            if not isinstance(t, dict) or not all(isinstance(v, str) for v in t.values()):
                raise error(f"{filename!r}: __metadata__ must map names to strings", field=field)
            continue
        if not isinstance(t, dict) or not {"dtype", "shape", "data_offsets"} <= set(t):
            raise error(
                f"{filename!r} is not a safetensors file: bad header entry {name[:80]!r}",
                field=field,
            )
        dtype, shape, offsets = t["dtype"], t["shape"], t["data_offsets"]
        if dtype not in SAFETENSORS_DTYPES:
            raise error(
                f"{filename!r}: tensor {name[:80]!r} has dtype {str(dtype)[:20]!r}; accepted: "
                f"{', '.join(SAFETENSORS_DTYPES)}",
                field=field,
            )
        ints = isinstance(shape, list) and isinstance(offsets, list) and len(offsets) == 2
        ints = ints and all(type(d) is int and d >= 0 for d in [*shape, *offsets])
        if not ints:
            raise error(
                f"{filename!r}: tensor {name[:80]!r} has a malformed shape or data_offsets",
                field=field,
            )
        begin, end = offsets
        want = math.prod(shape) * SAFETENSORS_DTYPES[dtype]
        if not begin <= end <= data_bytes or end - begin != want:
            raise error(
                f"{filename!r}: tensor {name[:80]!r} (shape {shape[:8]}, {dtype}) needs {want} "
                f"bytes at [{begin}, {end}) but the file has {data_bytes} data bytes; the file "
                "is truncated or corrupt",
                field=field,
            )


def _npy_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[Any, tuple[int, ...], int]:
    """(dtype, shape, header bytes) of one ``.npy`` member, read from its first bytes only
    (numpy's header reader: a literal, never code)."""
    import numpy as np
    from numpy.lib import format as npy

    with zf.open(info) as m:
        version = npy.read_magic(m)
        start = {(1, 0): 10, (2, 0): 12, (3, 0): 12}[version]
        if version == (1, 0):
            shape, _, dtype = npy.read_array_header_1_0(m)
        else:
            shape, _, dtype = npy.read_array_header_2_0(m)
        header_len = m.tell() if m.seekable() else start
    return np.dtype(dtype), tuple(shape), header_len


def check_npz(path: Path, head: bytes, filename: str, *, size: int, max_upload: int) -> None:
    """An ``np.savez`` archive: ``.npy`` members of plain (not object) dtypes whose declared
    shape matches their stored bytes, unpacking to a bounded size."""
    _refuse_empty(size, filename, InvalidData)
    if head.startswith(PICKLE_MAGIC):
        raise InvalidData(
            f"{filename!r} is a Python pickle; send np.savez arrays (.npz) or safetensors",
            field="file",
        )
    infos = _zip_infos(path)
    if infos is None:
        raise InvalidData(
            f"{filename!r} is not an .npz file (not a zip file, or a truncated one)",
            field="file",
        )
    names = [i.filename for i in infos]
    bad = [n for n in names if not n.endswith(".npy")]
    if bad or not names:
        raise InvalidData(
            f"{filename!r} is not an .npz of arrays: members {bad[:3] or names} are not .npy",
            field="file",
        )
    check_expansion(infos, size, filename, max_upload=max_upload, error=InvalidData)
    with zipfile.ZipFile(path) as zf:
        for info in infos:
            key = info.filename.removesuffix(".npy")[:80]
            try:
                dtype, shape, header_len = _npy_header(zf, info)
            except Exception as exc:  # noqa: BLE001 - any unreadable header is the same answer
                raise InvalidData(
                    f"{filename!r}: array {key!r} is not a readable .npy array "
                    f"({type(exc).__name__}: {str(exc)[:200]})",
                    field=key,
                ) from None
            if dtype.hasobject:
                raise InvalidData(
                    f"{filename!r}: array {key!r} is an object array ({dtype}), which would be "
                    "unpickled (that can run code); store numeric arrays only",
                    field=key,
                )
            want = math.prod(shape) * dtype.itemsize
            if info.file_size - header_len != want:
                raise InvalidData(
                    f"{filename!r}: array {key!r} declares shape {shape[:8]} of {dtype} "
                    f"({want} bytes) but holds {info.file_size - header_len}; the file is "
                    "truncated or corrupt",
                    field=key,
                )
