"""Saving a job's state after each stage and restoring it continues to the same checkpoint."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from slimline.pipeline.persist import finished_stages, load_state, save_stage
from slimline.pipeline.stages import STAGE_FUNCTIONS, STAGES, JobSpec, JobState
from tests.worker.conftest import digits_spec


def _quiet(stage: str, event: dict[str, object]) -> None:
    pass


def run_from(state: JobState, done: tuple[str, ...], directory: Path) -> JobState:
    """The remaining stages, saving after each (what the worker's runner does)."""
    for name in STAGES:
        if name in done:
            continue
        t0 = time.perf_counter()
        STAGE_FUNCTIONS[name](state, _quiet)
        state.timings[name] = time.perf_counter() - t0
        save_stage(state, name, directory)
    return state


@pytest.fixture(scope="module")
def reference(
    digits_weights: Path,
    data_root: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[JobSpec, Path, JobState]:
    """An uninterrupted run that saved every stage."""
    root = tmp_path_factory.mktemp("reference")
    spec = digits_spec(digits_weights, root / "model.slim.safetensors", data_root)
    state = run_from(JobState(spec=spec), (), root / "stages")
    return spec, root / "stages", state


@pytest.mark.parametrize("stage", STAGES[:-1])
def test_restored_after_a_stage_continues_to_the_same_checkpoint(
    reference: tuple[JobSpec, Path, JobState], stage: str, tmp_path: Path
) -> None:
    spec, stages_dir, ref = reference
    directory = tmp_path / "stages"
    shutil.copytree(stages_dir, directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["finished"] = list(STAGES[: STAGES.index(stage) + 1])
    (directory / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "model.slim.safetensors"
    if stage == "export":  # the exported file is part of what export left
        shutil.copyfile(spec.out, out)
    mine = replace(spec, out=out)

    state, done = load_state(mine, directory)
    assert done == STAGES[: STAGES.index(stage) + 1]
    assert state.plan == (ref.plan if "plan" in done else None)
    final = run_from(state, done, directory)

    assert out.read_bytes() == Path(spec.out).read_bytes()
    assert final.metrics == ref.metrics and final.verify == ref.verify
    assert final.verify["equal"] is True
    assert finished_stages(mine, directory) == STAGES


def test_nothing_saved_or_another_spec_restores_nothing(
    reference: tuple[JobSpec, Path, JobState], tmp_path: Path
) -> None:
    spec, stages_dir, _ = reference
    assert load_state(spec, tmp_path)[1] == ()
    other = replace(spec, seed=spec.seed + 1)
    assert finished_stages(other, stages_dir) == ()
    assert finished_stages(spec, stages_dir) == STAGES


def test_a_stage_not_in_the_manifest_is_not_restored(
    reference: tuple[JobSpec, Path, JobState], tmp_path: Path
) -> None:
    """Files of a stage that was running when the worker died are ignored."""
    spec, stages_dir, _ = reference
    directory = tmp_path / "stages"
    shutil.copytree(stages_dir, directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["finished"] = ["inspect", "plan"]
    (directory / "manifest.json").write_text(json.dumps(manifest))
    state, done = load_state(spec, directory)
    assert done == ("inspect", "plan")
    assert state.model is not None
    assert not hasattr(state.model.get_submodule(state.geoms[0].name), "parametrizations")
    assert state.metrics == {}


def test_an_uploaded_program_restores_after_fine_tuning(
    digits_weights: Path, data_root: Path, tmp_path: Path
) -> None:
    """A .pt2 (graph module) comes back the same way: rebuilt from the program, the plan
    re-applied to its weights, the trained parametrized state loaded."""
    from slimline.models.program import export_program
    from slimline.models.zoo import load_zoo_model

    program = tmp_path / "digits.pt2"
    export_program(
        load_zoo_model("digits-cnn", {}, digits_weights), torch.randn(2, 1, 8, 8), program
    )
    spec = replace(
        digits_spec(digits_weights, tmp_path / "ref.slim.safetensors", data_root),
        model=str(program),
        weights=None,
    )
    run_from(JobState(spec=spec), (), tmp_path / "ref")

    directory = tmp_path / "resumed"
    shutil.copytree(tmp_path / "ref", directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["finished"] = ["inspect", "plan", "fine-tune"]
    (directory / "manifest.json").write_text(json.dumps(manifest))
    mine = replace(spec, out=tmp_path / "resumed.slim.safetensors")
    state, done = load_state(mine, directory)
    assert done == ("inspect", "plan", "fine-tune") and state.source.program == program
    final = run_from(state, done, directory)
    assert Path(mine.out).read_bytes() == Path(spec.out).read_bytes()
    assert final.verify["equal"] is True
