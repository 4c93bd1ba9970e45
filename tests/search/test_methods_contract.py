"""One contract, every search method (optuna's style: the same tests over each implementation).

On digits-cnn with the digits data, at 8x, 16x and 32x of the dense checkpoint: the plan covers
every layer and its exact bytes fit the budget; the dense model handed in is left unchanged;
fine-tuning leaves every planned layer parametrized and the final plan (from the masks training
ended with) still fits; settings round-trip and unknown settings are refused.
"""

from __future__ import annotations

import copy

import pytest
import torch

from slimline.errors import InvalidOption
from slimline.search.accounting import plan_bytes
from slimline.search.compressed import compressed_weights
from slimline.search.estimators import estimator_names
from slimline.search.method_settings import ESTIMATOR_NAMES, METHOD_SETTINGS
from slimline.search.methods import SearchContext, get_method, method_names
from slimline.search.position_codes import position_stream_bytes
from slimline.search.settings import FinetuneSettings
from slimline.search.training import TrainConfig
from tests.search.conftest import digits_context

HEADER_SLACK = 1000
RATIOS = (8, 16, 32)
# quick settings so the contract runs in CI; each method's defaults are exercised elsewhere
QUICK = {
    "optuna": {"trials": 3, "proxy_steps": 5},
    "bitshare": {"search_steps": 40},
}


@pytest.fixture(scope="module")
def digits(dense_digits):  # type: ignore[no-untyped-def]
    return dense_digits


def _ctx(model, data, ratio: int) -> SearchContext:  # type: ignore[no-untyped-def]
    return digits_context(model, data, ratio)


def _method(name: str):  # type: ignore[no-untyped-def]
    try:
        return get_method(name, QUICK.get(name))
    except InvalidOption:
        return get_method(name)


def test_all_methods_are_registered() -> None:
    assert {"uniform", "constrained"} <= set(method_names())


@pytest.mark.slow
@pytest.mark.parametrize("name", method_names())
def test_plans_fit_at_every_budget_and_leave_the_model_alone(name: str, digits) -> None:  # type: ignore[no-untyped-def]
    model, data = digits
    before = copy.deepcopy(model.state_dict())
    for ratio in RATIOS:
        ctx = _ctx(model, data, ratio)
        plan = _method(name).propose(ctx)
        assert set(plan) == {g.name for g in ctx.geoms}
        mb = plan_bytes(plan, ctx.geoms, ctx.other_bytes, 0)  # upper bound for unstructured
        exact = _exact_bytes_from_masks_of_a_copy(model, ctx, plan)
        assert min(mb.payload, exact) <= ctx.payload_budget, (name, ratio)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), f"{name} changed the model"


def _exact_bytes_from_masks_of_a_copy(model, ctx, plan) -> int:  # type: ignore[no-untyped-def]
    from slimline.search.compressed import apply_plan

    m = copy.deepcopy(model)
    apply_plan(m, plan, ctx.geoms)
    return _payload_from_masks(m, ctx, plan)


def _payload_from_masks(m, ctx, plan) -> int:  # type: ignore[no-untyped-def]
    cws = compressed_weights(m)
    pos = {
        g.name: position_stream_bytes(
            g.numel, int(cws[g.name].mask.sum()), cws[g.name].mask.reshape(-1)
        )
        for g in ctx.geoms
        if plan[g.name].sparsity == "unstructured"
    }
    return plan_bytes(plan, ctx.geoms, ctx.other_bytes, 0, position_bytes=pos).payload


@pytest.mark.slow
@pytest.mark.parametrize("name", method_names())
def test_finetune_ends_parametrized_and_within_budget(name: str, digits) -> None:  # type: ignore[no-untyped-def]
    model, data = digits
    work = copy.deepcopy(model)
    ctx = _ctx(work, data, 16)
    method = _method(name)
    plan = method.propose(ctx)
    final = method.finetune(ctx, plan, TrainConfig(epochs=1, max_steps=30, lr=5e-4, batch_size=64))
    assert set(compressed_weights(work)) == {g.name for g in ctx.geoms}
    assert _payload_from_masks(work, ctx, final) <= ctx.payload_budget


@pytest.mark.parametrize("name", method_names())
def test_settings_round_trip_and_unknown_keys_are_refused(name: str) -> None:
    method = get_method(name)
    again = get_method(name, method.settings.to_dict())
    assert again.settings == method.settings
    with pytest.raises(InvalidOption, match="no_such_knob"):
        get_method(name, {"no_such_knob": 1})
    # a value of the wrong type is refused by name, whatever the setting (JSON gives lists)
    for knob in method.settings.to_dict():
        with pytest.raises(InvalidOption, match="wrong type") as err:
            get_method(name, {knob: [1]})
        assert err.value.field == f"settings.{knob}" and err.value.value == [1]


def test_the_torch_free_settings_table_matches_the_registry() -> None:
    # the API checks method_settings with METHOD_SETTINGS, without importing the methods
    assert set(METHOD_SETTINGS) == set(method_names())
    for name in method_names():
        assert get_method(name).settings_cls is METHOD_SETTINGS[name]
    assert tuple(estimator_names()) == ESTIMATOR_NAMES
    for knob, bad in (("estimator", "fisherr"), ("solver", "simplex")):
        with pytest.raises(InvalidOption, match=f"settings.{knob} = '{bad}'"):
            get_method("constrained", {knob: bad})


def test_settings_take_json_scalars_of_their_type() -> None:
    def refused(data: dict[str, object]) -> str:
        with pytest.raises(InvalidOption) as err:
            FinetuneSettings.from_dict(data, field="finetune")
        return err.value.message

    assert FinetuneSettings.from_dict({"distill": 1, "temperature": 2}).distill == 1  # ints
    assert FinetuneSettings.from_dict({"distill": None}).distill is None
    assert refused({"distill": "0.3"}) == (
        "finetune.distill = '0.3' is of the wrong type; accepted: a number or null"
    )
    assert "accepted: a number" in refused({"cosine": True})  # true is not 1 here
    assert "accepted: a number" in refused({"cosine": None})  # not optional
    assert "accepted: an integer" in refused({"refresh_every": 2.5})
    assert get_method("constrained", {"joint_removal": False}).settings.joint_removal is False
    with pytest.raises(InvalidOption, match="accepted: true or false"):
        get_method("constrained", {"joint_removal": 0})


def test_a_language_calibration_measures_an_eighth_as_many_sequences() -> None:
    from slimline.search.estimators import calibration_examples

    # a language example is a whole sequence (128 tokens for bytegpt)
    assert calibration_examples("language", 512) == 64
    assert calibration_examples("language", 10) == 4
    assert calibration_examples("classification", 512) == 512


def test_slimline_fine_tunes_on_the_batches_every_method_does(digits) -> None:  # type: ignore[no-untyped-def]
    """Without the ADMM phase (slimline's default) the constrained method's fine-tuning of a
    plan draws the batches the default fine-tuning of every other method draws: a plan
    fine-tuned by either ends with the same weights, so the benchmark's methods differ by
    their plans and not by their batch order (it drew the next seed's batches, and at bytegpt
    8x that alone moved the retention of one plan by 0.24 points)."""
    model, data = digits
    cfg = TrainConfig(epochs=1, max_steps=12, lr=5e-4, batch_size=64)
    ends = []
    for name, settings in [("uniform", None), ("constrained", {"probe_groups": 0})]:
        work = copy.deepcopy(model)
        ctx = _ctx(work, data, 16)
        plan = get_method("uniform").propose(ctx)
        get_method(name, settings).finetune(ctx, plan, cfg)
        ends.append(work.state_dict())
    assert ends[0].keys() == ends[1].keys()
    assert all(torch.equal(ends[0][k], ends[1][k]) for k in ends[0])
