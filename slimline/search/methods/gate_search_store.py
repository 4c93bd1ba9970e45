"""bitshare's gate searches, kept between jobs on the same dense model and training data.

A gate search (`bitshare_gates.search_gates`) is a function of the model it starts from, the
training data, lambda, its knobs (steps, learning rates, group rows, batch size, seed) and how
it is computed (device, threads, torch version). The lambda search opens at the middle of its
bracket whatever the budget (`bitshare.LambdaBracket`), so a model compressed at several
budgets runs that first search, the same one, at each: on bytegpt 100 steps of about twice a
fine-tuning step's cost, 3 of the 4 benchmark budgets' first searches. Kept here, a later job
loads it instead.

One file per search, ``gates-<key>.safetensors`` in the dense-model cache's measurements folder
(`SearchContext.measurements`): the searched copy's tensors, and in the safetensors metadata the
key, the per-layer gate configurations and the last loss, as JSON. Written to a temporary name
and renamed, so a reader sees a whole file or none; a file that cannot be read, or that is for
another key or other layers, counts as absent. Nothing is unpickled. Only searches that ran all
their steps are kept (a stopped one is not the search another job would run).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from slimline.search.layers import LayerGeometry
from slimline.search.measurements import fingerprint
from slimline.search.methods.bitshare_gates import GatedConfig, GateSearch, search_gates
from slimline.search.store_folder import StoreFolder
from slimline.search.training import TrainData, set_training_mode

log = logging.getLogger(__name__)

FORMAT = 1
META = "slimline.gate_search"
# what reading a file that is truncated, foreign or for other layers raises
UNUSABLE = (OSError, SafetensorError, ValueError, KeyError, TypeError, IndexError, RuntimeError)


def search_key(
    model: nn.Module,
    geoms: list[LayerGeometry],
    data: TrainData,
    lam: float,
    device: torch.device | str,
    **knobs: Any,
) -> str:
    """What a gate search's result depends on: the model (`measurements.fingerprint`), the
    training tensors, the searched layers, lambda, device and every knob of the search."""
    layers = tuple(g.name for g in geoms)
    settings = tuple(sorted(knobs.items()))
    return fingerprint(
        model,
        [data.x_train, data.y_train],
        "gate-search",
        data.task,
        str(torch.device(device)),
        layers,
        float(lam).hex(),
        settings,
    )


def search_or_load(
    directory: StoreFolder | Path | None,
    model: nn.Module,
    geoms: list[LayerGeometry],
    data: TrainData,
    lam: float,
    device: torch.device | str,
    *,
    report: Callable[[int, float, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **knobs: Any,
) -> tuple[GateSearch, bool]:
    """``(search, loaded)``: the gate search at ``lam`` (`search_gates` with ``knobs``),
    loaded from ``directory`` when kept there, else run, and kept there when it ran all its
    steps. ``directory`` None: run, keep nothing."""
    key = None
    if directory is not None:
        key = search_key(model, geoms, data, lam, device, **knobs)
        found = load(directory, key, model, geoms, lam, device)
        if found is not None:
            return found, True
    found = search_gates(
        model, geoms, data, lam, **knobs, device=device, report=report, should_stop=should_stop
    )
    if key is not None and found.steps == knobs["steps"]:
        save(directory, key, found)
    return found, False


def load(
    directory: StoreFolder | Path | None,
    key: str,
    model: nn.Module,
    geoms: list[LayerGeometry],
    lam: float,
    device: torch.device | str,
) -> GateSearch | None:
    """The search kept under ``key``, its searched copy rebuilt from ``model``; None when
    there is none or it cannot be used."""
    folder = StoreFolder.of(directory)
    if folder is None:
        return None
    path = folder.file(f"gates-{key}.safetensors")
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})[META])
        tensors = load_file(str(path))
        if meta.get("format") != FORMAT or meta.get("key") != key:
            raise ValueError("another format or key")
        kept = meta["configs"]
        configs = {
            g.name: GatedConfig(bits=int(kept[g.name][0]), kept=float(kept[g.name][1]))
            for g in geoms
        }
        loss, steps = float(meta["loss"]), int(meta["steps"])
        work = copy.deepcopy(model)
        work.load_state_dict(tensors, strict=True)
    except UNUSABLE as exc:
        log.warning("gate search %s unusable (%s): searching again", path, exc)
        return None
    work.to(device)
    set_training_mode(work, False)
    StoreFolder.touch(path)  # used: pruning keeps it longer
    return GateSearch(lam=lam, configs=configs, model=work, loss=loss, steps=steps)


def save(directory: StoreFolder | Path | None, key: str, found: GateSearch) -> bool:
    """Keep ``found`` under ``key``, then hold the folder to its size (`StoreFolder.prune`);
    a folder that cannot be written is logged, not fatal. Returns whether the file was
    written."""
    folder = StoreFolder.of(directory)
    if folder is None:
        return False
    path = folder.file(f"gates-{key}.safetensors")
    meta = {
        "format": FORMAT,
        "key": key,
        "lambda": found.lam,
        "loss": found.loss,
        "steps": found.steps,
        "configs": {n: [c.bits, c.kept] for n, c in found.configs.items()},
    }
    tensors = {
        k: v.detach().cpu().contiguous().clone() for k, v in found.model.state_dict().items()
    }
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(tmp), metadata={META: json.dumps(meta, sort_keys=True)})
        os.replace(tmp, path)
    except (OSError, SafetensorError) as exc:
        log.warning("gate search not kept in %s: %s", path, exc)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        return False
    folder.prune(keep=path)
    return True
