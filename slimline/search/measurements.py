"""Measured calibration losses, kept between jobs on the same dense model and calibration set.

Scoring measures the loss of the calibration set with one layer's weight replaced by a
candidate's compressed image (`estimators.LossDeltaEstimator`): one forward pass each, and on
bytegpt 2,500 of them for a search space measured in full (optuna's), several hundred for a
budget's allocation. A loss is a function of the model's tensors, the calibration examples, the
replaced weights and how the forward pass is computed (device, threads, torch version), so it
can be looked up instead of measured again: a second job on the same model and data at another
budget, or another method, measures only what the first did not.

A `MeasuredLosses` holds the losses of one (model, calibration set, computation) fingerprint,
keyed by each change's layer names and the hash of the weights put there; with a ``path`` it is
read from that file when opened and merged back into it by `save` (under a file lock, so two
jobs saving at once keep both's entries; a file that cannot be read counts as empty). The files
are JSON written by slimline; nothing is unpickled.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from slimline.search.store_folder import StoreFolder

log = logging.getLogger(__name__)

FORMAT = 1  # the file layout; a file of another format is ignored (and overwritten on save)


def _update(h: hashlib._Hash, t: torch.Tensor) -> None:
    t = t.detach().contiguous().cpu()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def tensor_hash(t: torch.Tensor) -> str:
    h = hashlib.sha256()
    _update(h, t)
    return h.hexdigest()[:32]


def fingerprint(model: nn.Module, tensors: Sequence[torch.Tensor], *extra: object) -> str:
    """What a measured loss depends on besides the change: what ``model`` computes (its class,
    its printed structure, its ``config``, a graph module's code) with which tensors, the
    calibration ``tensors``, the torch version, the threads, and ``extra`` (task, device,
    chunking, the unchanged model's loss: two models whose tensors are equal but whose forward
    passes differ, say in their number of attention heads, already differ there)."""
    h = hashlib.sha256()
    code = getattr(model, "code", None)  # a graph module's Python code
    arch = (type(model).__module__, type(model).__qualname__, repr(model), str(code or ""))
    h.update(repr((arch, repr(getattr(model, "config", None)))).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        _update(h, t)
    for t in tensors:
        _update(h, t)
    h.update(repr((torch.__version__, torch.get_num_threads(), *extra)).encode())
    return h.hexdigest()[:32]


def change_key(changes: Iterable[tuple[str, torch.Tensor]]) -> str:
    """Layer names and the hashes of the weights put there, order-free."""
    return ";".join(sorted(f"{name}={tensor_hash(w)}" for name, w in changes))


class MeasuredLosses:
    """Losses by change key for one fingerprint (see the module doc)."""

    def __init__(
        self, fingerprint: str, path: Path | None = None, folder: StoreFolder | None = None
    ) -> None:
        self.fingerprint, self.path, self.folder = fingerprint, path, folder
        self.values: dict[str, float] = {}
        self.new: dict[str, float] = {}  # measured here, not yet saved
        if path is not None:
            self.values.update(self._read())
            StoreFolder.touch(path)  # used: pruning keeps it longer

    @classmethod
    def open(cls, directory: StoreFolder | Path | None, fingerprint: str) -> MeasuredLosses:
        """The losses kept in ``directory`` (a `StoreFolder`, held to its size limit when
        saving; a bare path gets the default limit) for ``fingerprint``; None: none kept."""
        folder = StoreFolder.of(directory)
        if folder is None:
            return cls(fingerprint)
        return cls(fingerprint, folder.file(f"measured-{fingerprint}.json"), folder)

    def get(self, key: str) -> float | None:
        return self.values.get(key)

    def put(self, key: str, loss: float) -> None:
        self.values[key] = loss
        self.new[key] = loss

    def _read(self) -> dict[str, float]:
        assert self.path is not None
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("measured losses %s unreadable (%s): starting empty", self.path, exc)
            return {}
        if (
            not isinstance(raw, dict)
            or raw.get("format") != FORMAT
            or raw.get("fingerprint") != self.fingerprint
            or not isinstance(raw.get("losses"), dict)
        ):
            log.warning("measured losses %s are not for this fingerprint: ignored", self.path)
            return {}
        return {str(k): float(v) for k, v in raw["losses"].items() if isinstance(v, int | float)}

    def save(self) -> int:
        """Merge what was measured here into the file; returns how many entries it holds. A
        folder that cannot be written costs the next job its lookups, not this job its run:
        the error is logged and the entries stay in memory."""
        if self.path is None or not self.new:
            return len(self.values)
        try:
            merged = self._merge_into_file()
        except OSError as exc:
            log.warning("measured losses not kept in %s: %s", self.path, exc)
            return len(self.values)
        self.values.update(merged)
        self.new = {}
        if self.folder is not None:
            self.folder.prune(keep=self.path)
        return len(merged)

    def _merge_into_file(self) -> dict[str, float]:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            merged = {**self._read(), **self.new}
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            body = {"format": FORMAT, "fingerprint": self.fingerprint, "losses": merged}
            tmp.write_text(json.dumps(body, sort_keys=True))
            os.replace(tmp, self.path)
        return merged
