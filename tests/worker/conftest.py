"""Worker tests: the job runner in-process (persist/restore), and real Celery worker processes
(Redis + Postgres, and the embedded default: SQLite + the filesystem broker).

Jobs run digits-cnn on the named ``digits`` data with ``--method uniform`` and a few
fine-tuning steps. The dense weights are a model upload (a zoo name + safetensors), trained
here for a few steps once per session, so no test pays for the dense recipe.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from slimline.budget import parse_budget
from slimline.pipeline.stages import JobSpec

SEED = 0
FT_STEPS = 60  # fine-tuning steps of the standard job: long enough to kill the worker in


def _train_dense(path: Path, data_root: Path) -> None:
    from slimline.models.datasets import load_dataset
    from slimline.models.zoo import build_model, save_zoo_weights
    from slimline.search.training import TrainConfig, train

    torch.manual_seed(SEED)
    model = build_model("digits-cnn", {})
    data = load_dataset("digits", data_root)
    train(model, data, TrainConfig(epochs=10, lr=3e-3, batch_size=64, max_steps=150, seed=SEED))
    save_zoo_weights(model, path)


@pytest.fixture(scope="session")
def digits_weights(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """Dense digits-cnn weights (safetensors), as a user would upload them."""
    path = tmp_path_factory.mktemp("weights") / "digits-cnn.safetensors"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _train_dense(path, data_root)
    finally:
        torch.set_num_threads(threads)
    return path


def digits_spec(weights: Path, out: Path, data_root: Path, max_steps: int = 20) -> JobSpec:
    return JobSpec(
        model="digits-cnn",
        data="digits",
        budget=parse_budget("16x"),
        method="uniform",
        seed=SEED,
        data_root=str(data_root),
        weights=str(weights),
        out=out,
        device="cpu",
        max_steps=max_steps,
    )
