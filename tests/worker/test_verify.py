"""The verify stage: a reloaded file must hold every tensor of the trained model, bit for bit."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from torch import nn

from slimline.pipeline.stages import STAGE_FUNCTIONS, STAGES, JobState, tensors_differ, verify
from tests.worker.conftest import digits_spec


def _quiet(stage: str, event: dict[str, object]) -> None:
    pass


@pytest.fixture(scope="module")
def exported(
    digits_weights: Path, data_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> JobState:
    """A digits job run up to and including export."""
    out = tmp_path_factory.mktemp("verify") / "model.slim.safetensors"
    state = JobState(spec=digits_spec(digits_weights, out, data_root))
    for name in STAGES[: STAGES.index("export") + 1]:
        t0 = time.perf_counter()
        STAGE_FUNCTIONS[name](state, _quiet)
        state.timings[name] = time.perf_counter() - t0
    return state


def test_the_exported_file_verifies_tensor_by_tensor(exported: JobState) -> None:
    assert exported.model is not None
    verify(exported, _quiet)
    v = exported.verify
    assert v["equal"] is True and v["tensors_differ"] == []
    # every tensor of the model was compared, not a subset
    counted = [k for k in exported.model.state_dict() if not k.endswith("num_batches_tracked")]
    assert v["tensors"] >= len(counted) > 0
    assert v["probe_examples"] == min(256, len(exported.data.x_val))
    assert v["max_abs_diff"] <= 1e-5


def test_one_changed_bit_in_the_trained_model_fails_verify(exported: JobState) -> None:
    assert exported.model is not None
    name, param = next(iter(exported.model.named_parameters()))
    saved = param.detach().clone()
    try:
        with torch.no_grad():
            flat = param.view(-1)
            flat[0] = torch.nextafter(flat[0], torch.tensor(float("inf")))
        verify(exported, _quiet)
        assert exported.verify["equal"] is False
        assert exported.verify["tensors_differ"] == [name]
    finally:
        with torch.no_grad():
            param.copy_(saved)
    verify(exported, _quiet)
    assert exported.verify["equal"] is True


def test_tensors_differ_names_missing_reshaped_and_retyped_entries() -> None:
    a = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    b = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    b.load_state_dict(a.state_dict())
    b[1].num_batches_tracked += 5  # not stored in a file, not a difference
    assert tensors_differ(a, b) == []
    b[1].running_mean = b[1].running_mean.double()
    assert tensors_differ(a, b) == ["1.running_mean"]
    c = nn.Sequential(nn.Linear(3, 2, bias=False), nn.BatchNorm1d(2))
    c.load_state_dict(a.state_dict(), strict=False)
    assert tensors_differ(a, c) == ["0.bias"]
    d = nn.Sequential(nn.Linear(4, 2), nn.BatchNorm1d(2))
    assert "0.weight" in tensors_differ(a, d)
