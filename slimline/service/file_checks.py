"""Cheap format checks on an upload before it is recorded: no torch, nothing executed.

They catch the common mistakes at once (a pickle or a ``torch.save`` file sent as a model, a
truncated file, the wrong extension) with a message that says what to send instead. The
worker's inspection task does the real, thorough check (``slimline.models._pt2_guard`` for a
``.pt2``), so passing here means "worth inspecting", not "safe".
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path, PurePosixPath

from slimline.errors import InvalidData, InvalidModel

MAX_SAFETENSORS_HEADER = 100 * 1024**2
PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
SAVE_HINT = "export the model with torch.export.save(torch.export.export(model, args), 'm.pt2')"


def extension(filename: str) -> str:
    return PurePosixPath(filename.lower()).suffix


def _zip_names(path: Path) -> list[str] | None:
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return None


def check_pt2(path: Path, head: bytes, filename: str) -> None:
    """A ``.pt2`` is a torch.export archive: a zip with an ``archive_format`` member and no
    pickles. A bare pickle or a ``torch.save`` checkpoint (a zip around ``data.pkl``) is
    refused without being read further."""
    if head.startswith(PICKLE_MAGIC):
        raise InvalidModel(
            f"{filename!r} is a Python pickle, which slimline never loads (it can run code); "
            f"{SAVE_HINT}",
            field="file",
        )
    names = _zip_names(path)
    if names is None:
        raise InvalidModel(
            f"{filename!r} is not a .pt2 archive (not a zip file); {SAVE_HINT}", field="file"
        )
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


def check_safetensors(path: Path, size: int, filename: str, *, field: str, model: bool) -> None:
    """An 8-byte little-endian header length, then that many bytes of JSON object."""
    error = InvalidModel if model else InvalidData
    if size < 8:
        raise error(f"{filename!r} is too short to be a safetensors file", field=field)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > min(MAX_SAFETENSORS_HEADER, size - 8):
            raise error(
                f"{filename!r} is not a safetensors file: header length {n} exceeds the file "
                f"or the {MAX_SAFETENSORS_HEADER}-byte cap",
                field=field,
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = None
    if not isinstance(header, dict) or not all(
        isinstance(v, dict) and "dtype" in v and "shape" in v
        for k, v in header.items()
        if k != "__metadata__"
    ):
        raise error(f"{filename!r} is not a safetensors file: bad header", field=field)


def check_npz(path: Path, head: bytes, filename: str) -> None:
    if head.startswith(PICKLE_MAGIC):
        raise InvalidData(
            f"{filename!r} is a Python pickle; send np.savez arrays (.npz) or safetensors",
            field="file",
        )
    names = _zip_names(path)
    if names is None:
        raise InvalidData(f"{filename!r} is not an .npz file (not a zip file)", field="file")
    bad = [n for n in names if not n.endswith(".npy")]
    if bad or not names:
        raise InvalidData(
            f"{filename!r} is not an .npz of arrays: members {bad[:3] or names} are not .npy",
            field="file",
        )
