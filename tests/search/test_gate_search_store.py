"""bitshare's opening gate search, kept between jobs (`gate_search_store`)."""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from slimline.search.layers import find_layers
from slimline.search.methods import gate_search_store as store
from slimline.search.methods import get_method
from slimline.search.methods.bitshare_gates import search_gates
from tests.search.conftest import digits_context

KNOBS = {"steps": 20, "lr": 1e-3, "gate_lr": 1e-2, "group_rows": 4, "batch_size": 64, "seed": 0}
QUICK = {"search_steps": 40, "lambda_iters": 3}


def _search(model: nn.Module, data: Any, lam: float = 0.1) -> Any:
    return search_gates(model, find_layers(model), data, lam, **KNOBS)


def test_a_kept_search_loads_to_the_same_weights_gates_and_loss(
    dense_digits: tuple[nn.Module, Any], tmp_path: Path
) -> None:
    model, data = dense_digits
    geoms = find_layers(model)
    found = _search(model, data)
    assert found.steps == KNOBS["steps"]
    key = store.search_key(model, geoms, data, 0.1, "cpu", **KNOBS)
    assert store.load(tmp_path, key, model, geoms, 0.1, "cpu") is None  # nothing kept yet
    assert store.save(tmp_path, key, found)
    back = store.load(tmp_path, key, model, geoms, 0.1, "cpu")
    assert back is not None
    assert back.configs == found.configs and back.loss == found.loss and back.steps == found.steps
    mine, theirs = found.model.state_dict(), back.model.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    # the searched copy is its own: the dense model is untouched
    assert not torch.equal(
        back.model.state_dict()["conv1.weight"], model.state_dict()["conv1.weight"]
    )


def test_the_key_changes_with_lambda_knobs_data_and_weights(
    dense_digits: tuple[nn.Module, Any],
) -> None:
    model, data = dense_digits
    geoms = find_layers(model)
    key = store.search_key(model, geoms, data, 0.1, "cpu", **KNOBS)
    assert key == store.search_key(model, geoms, data, 0.1, "cpu", **KNOBS)
    assert key != store.search_key(model, geoms, data, 0.1000001, "cpu", **KNOBS)
    assert key != store.search_key(model, geoms, data, 0.1, "cpu", **{**KNOBS, "seed": 1})
    assert key != store.search_key(model, geoms[1:], data, 0.1, "cpu", **KNOBS)
    shuffled = dataclasses.replace(data, y_train=data.y_train.roll(1))
    assert key != store.search_key(model, geoms, shuffled, 0.1, "cpu", **KNOBS)
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.conv1.weight[0, 0, 0, 0] += 1e-3
    assert key != store.search_key(changed, geoms, data, 0.1, "cpu", **KNOBS)


def test_a_damaged_or_foreign_file_counts_as_absent(
    dense_digits: tuple[nn.Module, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, data = dense_digits
    geoms = find_layers(model)
    found = _search(model, data)
    key = store.search_key(model, geoms, data, 0.1, "cpu", **KNOBS)
    store.save(tmp_path, key, found)
    path = tmp_path / f"gates-{key}.safetensors"
    # kept under another key (a renamed file): not this search
    path.rename(tmp_path / "gates-other.safetensors")
    assert store.load(tmp_path, "other", model, geoms, 0.1, "cpu") is None
    # for other layers: not this search either
    store.save(tmp_path, key, found)
    assert store.load(tmp_path, key, nn.Linear(2, 2), geoms, 0.1, "cpu") is None
    # truncated
    path.write_bytes(path.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        assert store.load(tmp_path, key, model, geoms, 0.1, "cpu") is None
    assert "unusable" in caplog.text


def test_a_folder_that_cannot_be_written_is_not_fatal(
    dense_digits: tuple[nn.Module, Any], tmp_path: Path
) -> None:
    model, data = dense_digits
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert not store.save(blocker / "sub", "k", _search(model, data))


@pytest.mark.slow
def test_a_second_budget_loads_the_opening_search_and_plans_as_without_it(
    dense_digits: tuple[nn.Module, Any], tmp_path: Path
) -> None:
    model, data = dense_digits
    fresh = get_method("bitshare", QUICK)
    plan_fresh = fresh.propose(digits_context(model, data, 32))
    warm_up = get_method("bitshare", QUICK)  # another budget keeps the opening search
    warm_up.propose(digits_context(model, data, 16, measurements=tmp_path))
    assert [s["looked_up"] for s in warm_up.report["searches"]][0] is False
    assert list(tmp_path.glob("gates-*.safetensors"))
    events: list[dict[str, Any]] = []
    kept = get_method("bitshare", QUICK)
    ctx = digits_context(model, data, 32, measurements=tmp_path, progress=events.append)
    plan_kept = kept.propose(ctx)
    looked = [s["looked_up"] for s in kept.report["searches"]]
    assert looked[0] is True and not any(looked[1:])
    assert plan_kept == plan_fresh
    strip = [{k: v for k, v in s.items() if k != "looked_up"} for s in kept.report["searches"]]
    assert strip == [
        {k: v for k, v in s.items() if k != "looked_up"} for s in fresh.report["searches"]
    ]
    assert events and events[-1]["step"] <= events[-1]["total"]


def test_a_stopped_search_is_not_kept(dense_digits: tuple[nn.Module, Any], tmp_path: Path) -> None:
    model, data = dense_digits
    method = get_method("bitshare", QUICK)
    method.propose(digits_context(model, data, 16, measurements=tmp_path, should_stop=lambda: True))
    assert method.report["searches"][0]["looked_up"] is False
    assert not list(tmp_path.glob("gates-*"))
