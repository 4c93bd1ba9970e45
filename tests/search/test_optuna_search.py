"""optuna: plans within budget, no over-budget plan ever trained, studies shared through storage."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from torch import nn

from slimline.errors import InfeasibleBudget, InvalidOption
from slimline.pipeline.stages import exact_positions
from slimline.search.accounting import plan_bytes
from slimline.search.layers import LayerGeometry
from slimline.search.method_settings import OptunaSettings
from slimline.search.methods import get_method, optuna_search
from slimline.search.methods.base import SearchContext
from slimline.search.methods.optuna_search import (
    Choices,
    OptunaMethod,
    pareto_indices,
    plan_of,
    repair,
    search_space,
)
from slimline.search.options import LayerOption, Plan
from slimline.search.scoring import LayerScores, Scores
from tests.search.conftest import digits_context

QUICK = {"trials": 6, "proxy_steps": 10, "val_samples": 256}


@pytest.fixture(scope="module")
def dense(dense_digits: tuple[nn.Module, object]) -> tuple[nn.Module, object]:
    return dense_digits


def context(model: nn.Module, data: object, ratio: int) -> SearchContext:
    return digits_context(model, data, ratio)


def exact_payload(model: nn.Module, ctx: SearchContext, plan: Plan) -> int:
    """The pipeline's check: exact positions of the masks the dense weights give."""
    pos = exact_positions(model, ctx.geoms, plan)
    return plan_bytes(plan, ctx.geoms, ctx.other_bytes, 0, position_bytes=pos).payload


@pytest.mark.parametrize("ratio", [8, 16, 32])
def test_plans_fit_and_no_over_budget_plan_is_ever_trained(
    dense, ratio: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, data = dense
    ctx = context(model, data, ratio)
    before = copy.deepcopy(model.state_dict())
    trained: list[int] = []  # exact payload of every plan the proxy trains
    proxy = optuna_search.proxy_loss

    def spy(ctx_: SearchContext, plan: Plan, *args: object) -> float:
        trained.append(exact_payload(model, ctx, plan))
        return proxy(ctx_, plan, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(optuna_search, "proxy_loss", spy)
    method = OptunaMethod(OptunaSettings(**QUICK))  # type: ignore[arg-type]
    plan = method.propose(ctx)

    assert set(plan) == {g.name for g in ctx.geoms}
    assert exact_payload(model, ctx, plan) <= ctx.payload_budget
    assert trained and max(trained) <= ctx.payload_budget
    trials = method.study.trials
    assert len(trials) == QUICK["trials"]
    assert trials[0].user_attrs["source"] == "knapsack"  # the warm start comes first
    for t in trials:
        evaluated = Plan({n: LayerOption.from_str(s) for n, s in t.user_attrs["plan"].items()})
        assert t.user_attrs["bytes"] <= t.user_attrs["budget"] == ctx.layer_budget
        assert exact_payload(model, ctx, evaluated) <= ctx.payload_budget
        assert t.user_attrs["repaired"] == (t.user_attrs["sampled_bytes"] > ctx.layer_budget)
        assert bool(t.user_attrs["repairs"]) == t.user_attrs["repaired"]
    # the returned plan is the best trial's
    best = min((t for t in trials if t.value is not None), key=lambda t: t.value)
    assert plan.to_strs() == best.user_attrs["plan"]
    if ratio == 32:  # random start-up draws at 32x are almost all over budget
        assert any(t.user_attrs["repaired"] for t in trials)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not hasattr(model.get_submodule(ctx.geoms[0].name), "parametrizations")


@pytest.mark.slow
def test_two_calls_share_one_study_through_sqlite(dense, tmp_path: Path) -> None:
    model, data = dense
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    settings = OptunaSettings(**QUICK, storage=storage)  # type: ignore[arg-type]
    first, second = OptunaMethod(settings), OptunaMethod(settings)
    first.propose(context(model, data, 16))
    plan = second.propose(context(model, data, 16))

    name = first.report["optuna_study"]
    assert second.report["optuna_study"] == name  # equal jobs derive the same study name
    study = optuna.load_study(study_name=name, storage=storage)
    n = QUICK["trials"]
    assert len(study.trials) == 2 * n  # the warm start is not enqueued twice
    assert second.report["optuna_trials"] == 2 * n
    assert sum(t.user_attrs.get("source") == "knapsack" for t in study.trials) == 1
    assert plan.to_strs() == study.best_trial.user_attrs["plan"]  # best over both calls
    # the second call's sampler saw the first call's history: it did not redraw its points
    params = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(params[n:]) - set(params[:n])) > 0


def test_nsga2_sampler_fits_the_budget(dense) -> None:
    model, data = dense
    ctx = context(model, data, 16)
    method = OptunaMethod(OptunaSettings(trials=3, proxy_steps=3, val_samples=128, sampler="nsga2"))
    plan = method.propose(ctx)
    assert exact_payload(model, ctx, plan) <= ctx.payload_budget


def test_repair_takes_the_cheapest_damage_per_byte_moves() -> None:
    opts = [LayerOption.from_str(s) for s in ("removed", "dense/b2/ch", "dense/b4/ch")]
    a = Choices(("a",), opts, np.array([0, 100, 200]), np.array([10.0, 2.0, 1.0]))
    b = Choices(("b",), opts, np.array([0, 100, 200]), np.array([50.0, 5.0, 0.0]))
    # a: 200->100 costs 1.0 damage for 100 bytes; b: 200->100 costs 5.0: a moves first
    fixed = repair([a, b], [2, 2], 300)
    assert fixed.choice == [1, 2]
    assert fixed.moves == [("a", "dense/b4/ch", "dense/b2/ch")]
    assert (fixed.bytes_before, fixed.bytes_after) == (400, 300)
    fixed = repair([a, b], [2, 2], 150)
    assert fixed.bytes_after <= 150 and fixed.choice == [0, 1]
    assert repair([a, b], [1, 1], 500).moves == []  # a plan that fits is left alone
    with pytest.raises(InfeasibleBudget):
        repair([a, b], [2, 2], -1)


def test_pareto_indices_drop_dominated_options() -> None:
    costs = np.array([10, 20, 20, 30, 40, 5])
    damage = np.array([5.0, 6.0, 3.0, 3.0, 1.0, 9.0])
    # 20/6 is dominated by 10/5; 30/3 by 20/3
    assert pareto_indices(costs, damage) == [5, 0, 2, 4]


def test_search_space_merges_tied_layers_and_keeps_the_warm_start() -> None:
    opts = [
        LayerOption.from_str(s) for s in ("removed", "dense/b2/ch", "nm2:4/b4/ch", "dense/b4/ch")
    ]
    geoms = [LayerGeometry(n, "linear", (4, 8), has_bias=False) for n in ("a", "b", "c")]
    scores = Scores(
        [
            LayerScores("a", opts, np.array([0, 10, 30, 20]), np.array([9.0, 3.0, 2.5, 1.0])),
            LayerScores("b", opts, np.array([0, 10, 30, 20]), np.array([9.0, 3.0, 2.5, 1.0])),
            LayerScores("c", opts, np.array([0, 10, 30, 20]), np.array([9.0, 3.0, 2.5, 1.0])),
        ],
        "fisher",
        groups=[["a", "c"]],
    )
    space = search_space(scores, geoms, None)
    assert [lc.names for lc in space] == [("a", "c"), ("b",)]
    # nm2:4/b4 costs more than dense/b4 and hurts more: dominated, not offered
    assert [o.to_str() for o in space[1].options] == ["removed", "dense/b2/ch", "dense/b4/ch"]
    assert space[0].bytes.tolist() == [0, 20, 40] and space[0].damage.tolist() == [18, 6, 2]
    assert plan_of(space, [1, 2]).to_strs() == {
        "a": "dense/b2/ch",
        "c": "dense/b2/ch",
        "b": "dense/b4/ch",
    }
    warm = Plan({"a": opts[2], "b": opts[0], "c": opts[2]})
    space = search_space(scores, geoms, warm)  # a warm start is always a choice
    assert "nm2:4/b4/ch" in [o.to_str() for o in space[0].options]
    assert "nm2:4/b4/ch" not in [o.to_str() for o in space[1].options]


def test_settings_refuse_unknown_keys_and_bad_values() -> None:
    s = OptunaSettings.from_dict({"trials": 4, "sampler": "nsga2"})
    assert s.to_dict()["trials"] == 4 and OptunaSettings.from_dict(s.to_dict()) == s
    with pytest.raises(InvalidOption, match="unknown setting"):
        OptunaSettings.from_dict({"n_trials": 4})
    with pytest.raises(InvalidOption, match="sampler"):
        OptunaSettings(sampler="cmaes")
    with pytest.raises(InvalidOption, match="trials"):
        OptunaSettings(trials=0)


def test_a_stopped_search_returns_the_knapsack_plan_untrained(
    dense, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, data = dense
    ctx = context(model, data, 16)
    ctx.should_stop = lambda: True
    monkeypatch.setattr(optuna_search, "proxy_loss", lambda *a: pytest.fail("trained"))
    method = OptunaMethod(OptunaSettings(trials=5))
    plan = method.propose(ctx)
    assert plan == method.last_scores.resolve(ctx.layer_budget)
    assert [t.state for t in method.study.trials] == [optuna.trial.TrialState.PRUNED]


def test_registered_by_name() -> None:
    method = get_method("optuna", {"trials": 2, "sampler": "nsga2"})
    assert isinstance(method, OptunaMethod)
    assert method.settings == OptunaSettings(trials=2, sampler="nsga2")
