"""Saving a `JobState` after each stage and restoring it, so a redelivered job resumes.

The CLI runs the stages back to back in one process; a worker can die between any two (or in
the middle of one). After each stage the worker calls `save_stage`, which writes what that
stage produced and only then adds the stage to ``manifest.json`` (atomically: write a
temporary file, fsync, rename). `load_state` rebuilds the state the last finished stage left,
so the next attempt starts at the first unfinished stage. A stage that was running when the
worker died is simply run again; its half-written files are not in the manifest.

What each stage leaves, and how it comes back (no pickle anywhere: JSON and safetensors):

- inspect: the dense weights (``dense.safetensors``) and the small facts (layer names, byte
  counts, dense metrics, task). Restoring rebuilds the model from its source (zoo name +
  config, or the ``.pt2``), loads the weights, and re-reads the data from the spec (the data
  are never copied into a job's folder).
- plan: the plan, exact position bytes, scores and the method's report (JSON).
- fine-tune: the trained compressed model, i.e. the parametrized state_dict with its masks
  and learned steps (``finetuned.safetensors``), and the final plan. Restoring re-applies the
  plan (`apply_plan`) to the dense model and loads that state_dict strictly.
- export: the checkpoint's sha256 and sizes, and the metrics; the in-memory model is made
  final again with `finalize` (deterministic), so verify compares the file with the model.
- verify: its result.

A state restored after any stage continues to the same checkpoint bytes as an uninterrupted
run with the same seed on the same device (tests/worker/test_persist.py). Inside fine-tuning
the trainer keeps its own checkpoints (``JobState.checkpoint_dir``, the worker sets it): a
fine-tune stage run again from the plan's state continues from the last one.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from slimline.pipeline.sources import build_skeleton, resolve_model
from slimline.pipeline.stages import STAGES, JobSpec, JobState
from slimline.search.accounting import plan_bytes
from slimline.search.compressed import apply_plan
from slimline.search.finalize import finalize
from slimline.search.layers import find_layers
from slimline.search.options import Plan

MANIFEST = "manifest.json"
VERSION = 1


def spec_fingerprint(spec: JobSpec) -> str:
    """What the saved stages depend on; stages saved for another spec are not restored."""
    keys = {
        "model": spec.model,
        "data": spec.data,
        "budget": str(spec.budget),
        "method": spec.method,
        "epochs": spec.epochs,
        "seed": spec.seed,
        "weights": spec.weights,
        "config": spec.config,
        "max_steps": spec.max_steps,
        "method_settings": spec.method_settings,
        "finetune": spec.finetune,
    }
    blob = json.dumps(keys, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_durably(tmp: Path, path: Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, sort_keys=True))
    _replace_durably(tmp, path)


def _read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    assert isinstance(data, dict), path
    return data


def _write_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(tmp))
    _replace_durably(tmp, path)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def finished_stages(spec: JobSpec, directory: Path) -> tuple[str, ...]:
    """The stages saved for ``spec`` in ``directory``, in order (empty if none)."""
    path = directory / MANIFEST
    if not path.is_file():
        return ()
    manifest = _read_json(path)
    if manifest.get("version") != VERSION or manifest.get("spec") != spec_fingerprint(spec):
        return ()
    done = tuple(manifest.get("finished", ()))
    if done != STAGES[: len(done)]:
        raise ValueError(f"{path}: finished stages {done} are not a prefix of {STAGES}")
    return done


def save_stage(state: JobState, stage: str, directory: Path) -> None:
    """Write what ``stage`` produced, then record it (and the stages before it) as finished."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {STAGES}")
    directory.mkdir(parents=True, exist_ok=True)
    common = {"timings": state.timings}
    if stage == "inspect":
        assert state.model is not None
        _write_tensors(directory / "dense.safetensors", state.model.state_dict())
        facts = {
            "layers": [asdict(g) for g in state.geoms],
            "task": state.task,
            "dense_bytes": state.dense_bytes,
            "other_bytes": state.other_bytes,
            "budget_bytes": state.budget_bytes,
            "header_reserve": state.header_reserve,
            "dense_metrics": state.dense_metrics,
            "weights_source": state.weights_source,
        }
        _write_json(directory / "inspect.json", {**facts, **common})
    elif stage == "plan":
        assert state.plan is not None
        _write_json(directory / "plan.json", {**_plan_facts(state), **common})
    elif stage == "fine-tune":
        assert state.model is not None and state.plan is not None
        _write_tensors(directory / "finetuned.safetensors", state.model.state_dict())
        _write_json(directory / "finetune.json", {**_plan_facts(state), **common})
    elif stage == "export":
        out = Path(state.spec.out)
        facts = {
            "checkpoint_sha256": file_sha256(out),
            "file_bytes": state.file_bytes,
            "header_bytes": state.header_bytes,
            "metrics": state.metrics,
        }
        _write_json(directory / "export.json", {**facts, **common})
    else:
        _write_json(directory / "verify.json", {"verify": state.verify, **common})
    finished = STAGES[: STAGES.index(stage) + 1]
    manifest = {"version": VERSION, "spec": spec_fingerprint(state.spec), "finished": finished}
    _write_json(directory / MANIFEST, manifest)


def _plan_facts(state: JobState) -> dict[str, Any]:
    assert state.plan is not None
    return {
        "plan": state.plan.to_dict(),
        "positions": state.positions,
        "scores": getattr(state, "scores", None),
        "search_report": getattr(state, "search_report", {}),
    }


def _restore_plan(state: JobState, facts: Mapping[str, Any]) -> None:
    state.plan = Plan.from_dict(facts["plan"])
    state.positions = {str(k): int(v) for k, v in facts["positions"].items()}
    state.scores = facts.get("scores")
    state.search_report = dict(facts.get("search_report") or {})
    state.planned = plan_bytes(
        state.plan, state.geoms, state.other_bytes, 0, position_bytes=state.positions
    )


def load_state(spec: JobSpec, directory: Path) -> tuple[JobState, tuple[str, ...]]:
    """The state after the last stage saved in ``directory``, and the finished stages.

    Raises if the saved files do not fit the rebuilt model (a changed source); the caller
    then starts the job over.
    """
    from slimline.models.datasets import load_dataset

    state = JobState(spec=spec)
    done = finished_stages(spec, directory)
    if not done:
        return state, ()
    facts = _read_json(directory / "inspect.json")
    state.src = resolve_model(spec.model, config=spec.config or None, weights=spec.weights)
    torch.manual_seed(spec.seed)
    model = build_skeleton(state.src)
    model.load_state_dict(load_file(str(directory / "dense.safetensors")), strict=True)
    state.model = model
    state.geoms = find_layers(model)
    saved = [layer["name"] for layer in facts["layers"]]
    if [g.name for g in state.geoms] != saved:
        raise ValueError(f"{directory}: saved layers {saved} do not match the model's")
    state.task = facts["task"]
    state.dense_bytes = int(facts["dense_bytes"])
    state.other_bytes = int(facts["other_bytes"])
    state.budget_bytes = int(facts["budget_bytes"])
    state.header_reserve = int(facts["header_reserve"])
    state.dense_metrics = dict(facts["dense_metrics"])
    state.weights_source = facts["weights_source"]
    state.data = load_dataset(spec.data, spec.data_root)
    last = facts
    if "plan" in done:
        last = _read_json(directory / "plan.json")
        _restore_plan(state, last)
    if "fine-tune" in done:
        last = _read_json(directory / "finetune.json")
        state.dense_model = copy.deepcopy(model)
        _restore_plan(state, last)
        assert state.plan is not None
        apply_plan(model, state.plan, state.geoms)
        model.load_state_dict(load_file(str(directory / "finetuned.safetensors")), strict=True)
    if "export" in done:
        last = _read_json(directory / "export.json")
        out = Path(spec.out)
        if not out.is_file() or file_sha256(out) != last["checkpoint_sha256"]:
            raise ValueError(f"checkpoint {out} is missing or differs from the exported one")
        finalize(model, state.geoms)  # the in-memory model computes what the file holds
        state.metrics = dict(last["metrics"])
        state.file_bytes = int(last["file_bytes"])
        state.header_bytes = int(last["header_bytes"])
    if "verify" in done:
        last = _read_json(directory / "verify.json")
        state.verify = dict(last["verify"])
    state.timings = {str(k): float(v) for k, v in last.get("timings", {}).items()}
    return state, done
