"""The artifact store: a directory shared by the API and the workers.

Records hold paths relative to ``Settings.artifact_dir``; ``resolve`` turns one into a real
path and refuses any that would leave the directory (``..``, absolute paths, symlinks out).

What is written, the API restarting or a worker dying at any moment, never shows as half a
file, and what is read is what was recorded:

- New files are written under ``tmp/`` (fsynced by the writer) and renamed into place by
  ``commit``, which then fsyncs the directory, so a reader never sees half a file and a crash
  leaves only temp files behind (``discard_stale_temp`` removes old ones; ``ensure`` does so
  once per process). A file already at the destination is kept only if its bytes hash to the
  sha256 being committed (names are content addresses); anything else there is replaced.
- ``verified`` is how a file is read back for serving: its size and sha256 must match the
  record, else ``Unavailable`` (503: it is not served). The check is remembered per file
  identity (inode, size, mtime), so a file is hashed once, not on every download.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import uuid
from pathlib import Path

from slimline.errors import NotFound, Unavailable

TMP = "tmp"
TEMP_MAX_AGE_S = 24 * 3600.0  # temp files older than this are leftovers of a dead writer
log = logging.getLogger(__name__)

_verified: dict[tuple[str, int, int, int, str], None] = {}  # (path, inode, size, mtime, sha)
_verified_lock = threading.Lock()
_VERIFIED_MAX = 4096
_cleaned: set[Path] = set()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()

    def ensure(self) -> None:
        (self.root / TMP).mkdir(parents=True, exist_ok=True)
        if self.root not in _cleaned:
            _cleaned.add(self.root)
            self.discard_stale_temp()

    def discard_stale_temp(self, older_than_s: float = TEMP_MAX_AGE_S) -> int:
        """Delete temp files older than ``older_than_s`` (left by a writer that died); how
        many. Younger ones may belong to an upload in progress in another process."""
        cutoff = time.time() - older_than_s
        removed = 0
        for path in (self.root / TMP).glob("*.part"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        if removed:
            log.info("artifact store: removed %d stale temp file(s)", removed)
        return removed

    def resolve(self, rel: str) -> Path:
        """The file at ``rel`` inside the store; ``NotFound`` for a path outside it."""
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise NotFound(f"artifact path {rel!r} is outside the artifact store", field="path")
        return path

    def temp_path(self) -> Path:
        self.ensure()
        return self.root / TMP / f"{uuid.uuid4().hex}.part"

    def commit(self, tmp: Path, rel: str, sha256: str | None = None) -> Path:
        """Move the fsynced temp file to ``rel`` and fsync the directory. Names are content
        addresses: a file already there with the same bytes (``sha256``, when given) is kept
        and the temp file dropped; one with other bytes (a damaged or half-written file from
        an older writer) is replaced."""
        dest = self.resolve(rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            if sha256 is None or file_sha256(dest) == sha256:
                tmp.unlink(missing_ok=True)
                return dest
            log.warning("artifact store: %s does not hold its content address; replaced", rel)
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
        return dest

    def verified(self, rel: str, sha256: str, size: int | None = None) -> Path:
        """The file at ``rel``, checked against its record before it is served: ``NotFound``
        if it is missing, ``Unavailable`` if its size or sha256 differ (a file being replaced
        or damaged is never served)."""
        path = self.resolve(rel)
        try:
            st = path.stat()
        except FileNotFoundError:
            missing = f"artifact {rel!r} is recorded but its file is missing from the store"
            raise NotFound(missing, field="path") from None
        key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns, sha256)
        with _verified_lock:
            if key in _verified:
                return path
        if size is not None and st.st_size != size:
            raise Unavailable(
                f"artifact file {rel!r} has {st.st_size} bytes, not the {size} recorded: "
                "it is not served (being rewritten or damaged); try again later"
            )
        actual = file_sha256(path)
        if actual != sha256:
            raise Unavailable(
                f"artifact file {rel!r} does not match its recorded sha256: it is not served "
                "(being rewritten or damaged); try again later"
            )
        with _verified_lock:
            if len(_verified) >= _VERIFIED_MAX:
                _verified.clear()
            _verified[key] = None
        return path
