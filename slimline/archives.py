"""Limits on zip archives (``.pt2`` programs, ``.npz`` datasets) read from strangers.

Torch-free and shared: the API checks an upload with them before it is stored, and
`slimline.models.program.load_program` checks a ``.pt2`` again before torch reads it (a job's
program, or a file a user loads locally).
"""

from __future__ import annotations

import os
import sys
import zipfile

# A zip's members may unpack to at most this many times the upload limit in all, and a zip
# that unpacks to more than SMALL_EXPANSION bytes may not be compressed more than
# MAX_RATIO:1: torch.export.save and np.savez store members uncompressed, np.savez_compressed
# reaches a few times on real data, a zip bomb reaches a thousand.
EXPANSION_FACTOR = 4
MAX_RATIO = 100
SMALL_EXPANSION = 64 * 1024**2
MAX_ZIP_MEMBERS = 10_000


def check_expansion(
    infos: list[zipfile.ZipInfo],
    size: int,
    filename: str,
    *,
    max_upload: int,
    error: type,
    field: str = "file",
) -> None:
    """Refuse a zip bomb from its central directory alone (nothing is decompressed): the
    sizes it declares bound what a reader unpacks (Python's zipfile and torch's reader stop
    at the declared size). Members named like paths out of the archive are refused too."""
    if len(infos) > MAX_ZIP_MEMBERS:
        raise error(
            f"{filename!r} has {len(infos)} archive members; at most {MAX_ZIP_MEMBERS}",
            field=field,
        )
    for info in infos:
        name = info.filename
        parts = name.replace("\\", "/").split("/")
        if name.startswith("/") or ".." in parts or "\x00" in name or ":" in parts[0]:
            raise error(
                f"{filename!r} has an archive member named {name[:100]!r}, a path that points "
                "outside the archive; refused (slimline never extracts it, but nothing should)",
                field=field,
            )
    expanded = sum(max(i.file_size, 0) for i in infos)
    cap = EXPANSION_FACTOR * max_upload
    ratio = expanded / max(size, 1)
    if expanded > cap or (expanded > SMALL_EXPANSION and ratio > MAX_RATIO):
        raise error(
            f"{filename!r} unpacks to {expanded} bytes from {size} ({ratio:.0f}:1), more than "
            f"{'the ' + str(cap) + '-byte cap' if expanded > cap else f'{MAX_RATIO}:1'}; "
            "refused as a zip bomb: store members uncompressed (torch.export.save, np.savez)",
            field=field,
        )


def check_archive_file(
    path: str | os.PathLike[str], *, error: type, field: str, max_bytes: int | None = None
) -> None:
    """`check_expansion` on a zip file on disk (with no size limit known, only the ratio rule
    and the member rules apply). A file that is not a readable zip is left to its reader."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError):
        return
    size = os.path.getsize(path)
    limit = max_bytes if max_bytes is not None else sys.maxsize // (2 * EXPANSION_FACTOR)
    check_expansion(infos, size, os.fspath(path), max_upload=limit, error=error, field=field)
