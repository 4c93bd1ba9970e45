"""The dense model's metrics are evaluated once per cached dense model and read back after."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from slimline.models.datasets import load_dataset
from slimline.models.zoo import build_model
from slimline.pipeline.sources import dense_metrics
from slimline.search.training import evaluate


@pytest.fixture(scope="module")
def model_and_data():  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return build_model("digits-cnn"), load_dataset("digits")


def test_evaluated_once_then_read_back(tmp_path: Path, model_and_data) -> None:  # type: ignore[no-untyped-def]
    model, data = model_and_data
    weights = tmp_path / "dense-digits-cnn-abc.safetensors"
    weights.write_bytes(b"")  # only its name matters here
    cpu = torch.device("cpu")
    first = dense_metrics(f"trained:{weights}", model, data, cpu)
    assert first == evaluate(model, data)
    sidecar = weights.with_suffix(".metrics.json")
    assert json.loads(sidecar.read_text()) == first
    # a later job reads the file instead of evaluating: a planted value comes back
    sidecar.write_text(json.dumps({"metric": 0.125, "loss": 2.5}))
    assert dense_metrics(f"cache:{weights}", model, data, cpu) == {"metric": 0.125, "loss": 2.5}
    # an unreadable sidecar is evaluated and rewritten, never trusted
    sidecar.write_text("{not json")
    assert dense_metrics(f"cache:{weights}", model, data, cpu) == first
    assert json.loads(sidecar.read_text()) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([weights.name, sidecar.name])


def test_weights_outside_the_cache_are_always_evaluated(tmp_path: Path, model_and_data) -> None:  # type: ignore[no-untyped-def]
    model, data = model_and_data
    for source in ("program", str(tmp_path / "user.safetensors")):
        assert dense_metrics(source, model, data, torch.device("cpu")) == evaluate(model, data)
    assert list(tmp_path.iterdir()) == []
