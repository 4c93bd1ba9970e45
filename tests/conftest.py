"""Shared fixtures: the real data beside the repo, and a dense-model cache per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# Two cores: torch's default of one thread per core oversubscribes as soon as a worker process
# or a second test process runs beside this one, and runs then slow down tenfold.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (DATA_ROOT / "mnist").is_dir():
        pytest.fail(
            f"real test data missing: expected {DATA_ROOT} (../shared/data beside the repo)"
        )
    return DATA_ROOT


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("slimline-cache")
