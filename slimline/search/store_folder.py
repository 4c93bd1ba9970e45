"""The folder where measurements outlive a job, and the limit on its size.

Kept there (`SearchContext.measurements`): calibration losses (`measurements`, a few hundred KB
per model and calibration set) and bitshare's opening gate searches (`gate_search_store`, a
model's size each). Every model a worker compresses leaves files, so the folder is held to
``max_bytes``: after each write the least recently used files go, oldest first, until the rest
fit. "Used" is the modification time: writing a file sets it and reading one touches it. The
file just written stays even when it alone is over the limit (the job that wrote it may read it
again). A file removed under another job's feet costs that job its lookups, nothing else:
readers treat a missing file as empty.

On a service worker the limit is ``Settings.measured_max_bytes`` (``SLIMLINE_MEASURED_MAX_BYTES``);
elsewhere `DEFAULT_MAX_BYTES`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 1024**3  # 1 GiB
# what the folder's stores write; anything else there is left alone (and not counted)
KEPT = ("measured-*.json", "gates-*.safetensors")


@dataclass(frozen=True)
class StoreFolder:
    path: Path
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        if self.max_bytes <= 0:
            raise ValueError(f"max_bytes = {self.max_bytes!r}: accepted: above 0")

    @classmethod
    def of(cls, where: StoreFolder | Path | str | None) -> StoreFolder | None:
        """``where`` as a StoreFolder (a bare path gets the default limit); None stays None."""
        if where is None or isinstance(where, StoreFolder):
            return where
        return cls(Path(where))

    def file(self, name: str) -> Path:
        return self.path / name

    @staticmethod
    def touch(path: Path) -> None:
        """Mark ``path`` as just used (read), so pruning keeps it longer."""
        with contextlib.suppress(OSError):
            os.utime(path)

    def prune(self, keep: Path) -> list[Path]:
        """Remove the least recently used kept files until the folder fits ``max_bytes``,
        never ``keep``; returns what was removed. Errors are logged, not raised."""
        files = []
        for pattern in KEPT:
            for p in self.path.glob(pattern):
                try:
                    st = p.stat()
                except OSError:
                    continue  # removed meanwhile
                files.append((st.st_mtime, p, st.st_size))
        total = sum(size for _, _, size in files)
        removed: list[Path] = []
        for _, p, size in sorted(files):
            if total <= self.max_bytes:
                break
            if p == keep:
                continue
            try:
                p.unlink()
            except FileNotFoundError:
                pass  # another job pruned it
            except OSError as exc:
                log.warning("could not remove %s from the measurements folder: %s", p, exc)
                continue
            with contextlib.suppress(OSError):
                p.with_suffix(".lock").unlink(missing_ok=True)
            total -= size
            removed.append(p)
        if removed:
            log.info(
                "measurements folder %s over %d bytes: removed %d least recently used files",
                self.path,
                self.max_bytes,
                len(removed),
            )
        return removed
