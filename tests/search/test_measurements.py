"""Measured losses kept between runs (`slimline.search.measurements`): a second scoring of the same
model and data looks its measurements up and gets the very same scores; anything that changes a
measured loss (weights, calibration set, the change itself) misses; files survive two writers
and refuse being misread. On the briefly trained digits-cnn (real scikit-learn digits)."""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from slimline.models.datasets import Dataset
from slimline.search.estimators import FisherEstimator, LossDeltaEstimator
from slimline.search.layers import find_layers
from slimline.search.measurements import MeasuredLosses, change_key, fingerprint
from slimline.search.methods import get_method
from slimline.search.scoring import count_measurements, score_model
from tests.search.conftest import digits_context


def scored(model: nn.Module, data: Dataset, store: Path | None, budget: int | None = None):
    est = FisherEstimator()
    scores = score_model(
        model, find_layers(model), data, estimator=est, batches=2, budget=budget, store=store
    )
    report: dict = {}
    count_measurements(report, est)
    assert (report.pop("measured_seconds") > 0) == (report["measured"] > 0)
    return scores, report


def test_a_second_scoring_reuses_every_measurement_and_scores_the_same(
    dense_digits: tuple[nn.Module, Dataset], tmp_path: Path
) -> None:
    model, data = dense_digits
    first, r1 = scored(model, data, tmp_path)
    # options whose compressed weights come out equal are measured once even in one run
    assert r1["measured"] > 10 and r1["measured_reused"] < r1["measured"] // 10
    files = list(tmp_path.glob("measured-*.json"))
    assert len(files) == 1
    assert len(json.loads(files[0].read_text())["losses"]) == r1["measured"]
    second, r2 = scored(model, data, tmp_path)
    assert r2 == {"measured": 0, "measured_reused": r1["measured"] + r1["measured_reused"]}
    for a, b in zip(first.layers, second.layers, strict=True):
        assert a.name == b.name and np.array_equal(a.bytes, b.bytes)
        assert np.array_equal(a.damage, b.damage), a.name  # bit for bit
    # without a store nothing is written and everything is measured again
    third, r3 = scored(model, data, None)
    assert r3 == r1
    assert all(
        np.array_equal(a.damage, b.damage) for a, b in zip(first.layers, third.layers, strict=True)
    )


def test_other_weights_or_another_budget_measure_what_is_new(
    dense_digits: tuple[nn.Module, Dataset], tmp_path: Path
) -> None:
    model, data = dense_digits
    ref = model.state_dict()
    _, loose = scored(model, data, tmp_path, budget=None)
    # a tight budget's lazy measurements are a subset of the full front's: all reused
    _, tight = scored(model, data, tmp_path, budget=digits_context(model, data, 16).layer_budget)
    assert tight["measured"] == 0 and tight["measured_reused"] > 0
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).mul_(1.01)
    _, moved = scored(other, data, tmp_path)
    # nothing of the first model's is reused (only its own equal images, as in any run)
    assert moved["measured"] > 10 and moved["measured_reused"] < moved["measured"] // 10
    assert len(list(tmp_path.glob("measured-*.json"))) == 2
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
    assert loose["measured"] > 0


def test_the_fingerprint_covers_the_calibration_set_and_the_key_the_change() -> None:
    model = nn.Linear(3, 2)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    base = fingerprint(model, (x, y), "classify", "cpu", 1024)
    assert fingerprint(model, (x, y), "classify", "cpu", 1024) == base
    assert fingerprint(model, (x[:3], y[:3]), "classify", "cpu", 1024) != base
    assert fingerprint(model, (x, y), "classify", "cpu", 512) != base
    # equal tensors, another computation: the architecture is part of the fingerprint
    torch.manual_seed(0)
    relu = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    tanh = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2))
    tanh.load_state_dict(relu.state_dict())
    assert fingerprint(relu, (x, y)) != fingerprint(tanh, (x, y))
    w = torch.randn(2, 3)
    key = change_key([("a", w), ("b", w * 2)])
    assert key == change_key([("b", w * 2), ("a", w)])  # order-free
    assert key != change_key([("a", w), ("b", w * 3)])
    assert change_key([("a", w)]) != change_key([("a", w.double())])


def test_two_writers_keep_both_and_a_bad_file_counts_as_empty(tmp_path: Path) -> None:
    def write(i: int) -> None:
        store = MeasuredLosses.open(tmp_path, "f")
        for j in range(50):
            store.put(f"{i}-{j}", float(i * 100 + j))
        store.save()

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    back = MeasuredLosses.open(tmp_path, "f")
    assert len(back.values) == 200 and back.get("3-49") == 349.0
    (tmp_path / "measured-g.json").write_text("{not json")
    assert MeasuredLosses.open(tmp_path, "g").values == {}
    (tmp_path / "measured-h.json").write_text(
        json.dumps({"format": 1, "fingerprint": "other", "losses": {"k": 1.0}})
    )
    assert MeasuredLosses.open(tmp_path, "h").values == {}
    # a folder that cannot be written: the run goes on, what it measured stays in memory
    blocked = tmp_path / "file"
    blocked.write_text("")
    store = MeasuredLosses.open(blocked / "sub", "f")
    store.put("k", 1.5)
    assert store.save() == 1 and store.get("k") == 1.5 and store.new == {"k": 1.5}


def test_a_lookup_is_what_measuring_gives(
    dense_digits: tuple[nn.Module, Dataset], tmp_path: Path
) -> None:
    model, data = dense_digits
    geom = find_layers(model)[0]
    w = model.get_submodule(geom.name).weight
    w_hat = torch.zeros_like(w)
    fresh = LossDeltaEstimator(examples=64)
    fresh.prepare(model, [geom], data)
    measured = fresh.damage(geom, w, w_hat)
    assert measured > 0
    stored = LossDeltaEstimator(examples=64)
    stored.store_dir = tmp_path
    stored.prepare(model, [geom], data)
    assert stored.damage(geom, w, w_hat) == measured and stored.runs == 1
    stored.save()
    again = LossDeltaEstimator(examples=64)
    again.store_dir = tmp_path
    again.prepare(model, [geom], data)
    assert again.damage(geom, w, w_hat) == measured
    assert (again.runs, again.reused) == (0, 1)


@pytest.mark.parametrize("method", ["constrained", "optuna"])
def test_methods_report_what_they_measured_and_reused(
    dense_digits: tuple[nn.Module, Dataset], tmp_path: Path, method: str
) -> None:
    model, data = dense_digits
    settings = {"trials": 2, "proxy_steps": 2} if method == "optuna" else {}
    plans, reports = [], []
    for _ in range(2):
        m = get_method(method, settings)
        plans.append(m.propose(digits_context(model, data, 16, measurements=tmp_path)))
        reports.append(m.report)
    assert plans[0].to_strs() == plans[1].to_strs()
    first, second = reports
    assert first["measured"] > 0 and second["measured"] == 0
    assert second["measured_reused"] == first["measured"] + first["measured_reused"]


def test_preparing_again_on_the_same_model_keeps_what_was_measured(
    dense_digits: tuple[nn.Module, Dataset],
) -> None:
    """One estimator for two scoring passes over the same weights (bitshare's neighbourhood,
    then every candidate) measures each loss once; on other weights it starts over."""
    model, data = dense_digits
    geom = find_layers(model)[0]
    w = model.get_submodule(geom.name).weight
    est = LossDeltaEstimator(examples=64)
    est.prepare(model, [geom], data)
    first = est.damage(geom, w, torch.zeros_like(w))
    est.prepare(model, [geom], data)
    assert est.damage(geom, w, torch.zeros_like(w)) == first
    assert (est.runs, est.reused) == (1, 1)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.get_submodule(geom.name).weight.mul_(0.5)
    est.prepare(other, [geom], data)
    est.damage(geom, w, torch.zeros_like(w))
    assert (est.runs, est.reused) == (2, 1)
