"""The artifact store: a directory shared by the API and the workers.

Records hold paths relative to ``Settings.artifact_dir``; ``resolve`` turns one into a real
path and refuses any that would leave the directory (``..``, absolute paths, symlinks out).
New files are written under ``tmp/`` and renamed into place after an fsync, so a reader never
sees half a file and a crash leaves only temp files behind.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from slimline.errors import NotFound

TMP = "tmp"


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()

    def ensure(self) -> None:
        (self.root / TMP).mkdir(parents=True, exist_ok=True)

    def resolve(self, rel: str) -> Path:
        """The file at ``rel`` inside the store; ``NotFound`` for a path outside it."""
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise NotFound(f"artifact path {rel!r} is outside the artifact store", field="path")
        return path

    def temp_path(self) -> Path:
        self.ensure()
        return self.root / TMP / f"{uuid.uuid4().hex}.part"

    def commit(self, tmp: Path, rel: str) -> Path:
        """Move the fsynced temp file to ``rel`` (replacing nothing: same name, same bytes,
        as names are content addresses) and fsync the directory."""
        dest = self.resolve(rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            tmp.unlink(missing_ok=True)
            return dest
        os.replace(tmp, dest)
        fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return dest
