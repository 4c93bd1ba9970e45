"""Fixtures shared by the search-method tests: one briefly trained digits-cnn per session."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from slimline.models.datasets import Dataset, load_dataset
from slimline.models.zoo import build_model
from slimline.pipeline.stages import dense_checkpoint_bytes
from slimline.search.export import other_stored_bytes
from slimline.search.layers import find_layers
from slimline.search.methods import SearchContext
from slimline.search.training import TrainConfig, train

HEADER_SLACK = 1000  # bytes kept back for the container header, as the pipeline reserves


@pytest.fixture(scope="session")
def dense_digits() -> tuple[nn.Module, Dataset]:
    """digits-cnn after 300 steps on digits (~97%); tests must not change it (copy first)."""
    torch.manual_seed(0)
    model = build_model("digits-cnn")
    data = load_dataset("digits")
    train(model, data, TrainConfig(epochs=100, max_steps=300, lr=3e-3, batch_size=64))
    return model, data


def digits_context(
    model: nn.Module, data: Any, ratio: int, *, copy_model: bool = False, **kw: Any
) -> SearchContext:
    """A search context at ``ratio`` x of the model's dense fp32 checkpoint."""
    geoms = find_layers(model)
    return SearchContext(
        model=copy.deepcopy(model) if copy_model else model,
        geoms=geoms,
        data=data,
        payload_budget=dense_checkpoint_bytes(model) // ratio - HEADER_SLACK,
        other_bytes=other_stored_bytes(model, geoms),
        **kw,
    )
