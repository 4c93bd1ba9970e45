"""Probing the knapsack's plan with short fine-tunes (slimline.search.probes, `constrained`)."""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from slimline.errors import InvalidOption
from slimline.search.estimators import LossDeltaEstimator, calibration_examples
from slimline.search.methods import get_method
from slimline.search.methods.base import SearchContext
from slimline.search.options import LayerOption, Plan
from slimline.search.probes import (
    PACE_STEPS,
    PROBE_EXAMPLES,
    PROBE_SEED_OFFSET,
    ProbeClock,
    _largest_limited,
    _unstructured_in_place,
    alternative_plans,
    layer_groups,
    run_probes,
)
from slimline.search.scoring import JointDamage, LayerScores, Scores
from slimline.search.settings import FinetuneSettings
from slimline.search.slope import SlopeRun
from slimline.search.training import TrainConfig
from tests.search.conftest import digits_context


def test_layer_groups_are_contiguous_runs_with_the_first_and_last_first() -> None:
    names = list("abcdefg")
    assert layer_groups(names, 3) == [list("abc"), list("fg"), list("de")]
    assert layer_groups(names, 1) == [names]
    assert layer_groups(list("abc"), 8) == [["a"], ["c"], ["b"]]


def _scores() -> Scores:
    opts = [
        LayerOption.from_str(s) for s in ("removed", "dense/b2/ch", "dense/b4/ch", "un0.25/b2/ch")
    ]
    cost = np.array([0, 10, 20, 10])
    return Scores(
        [
            LayerScores("a", opts, cost, np.array([10.0, 3.5, 1.5, 3.6])),
            LayerScores("b", opts, cost, np.array([10.0, 4.0, 1.0, 9.0])),
        ],
        "fisher",
    )


def test_alternatives_discount_unstructured_then_raise_each_group_once() -> None:
    # budget 30: the knapsack takes a at 2 bits, b at 4 (3.5 + 1.0 against 1.5 + 4.0); with
    # unstructured damages halved, a's 1 in 4 (1.8) beats its 2 bits; with a's damages
    # doubled it is a at 4 bits, b at 2 (3.0 + 4.0 against 7.0 + 1.0); doubling b's gives
    # the knapsack's plan again, which is not probed twice
    scores = _scores()
    found = alternative_plans(scores, 30, groups=2, factor=2.0)
    assert [change for change, _ in found][:3] == ["knapsack", "unstructured / 2", "a x 2"]
    assert found[0][1] == scores.resolve(30)
    assert found[0][1].to_strs() == {"a": "dense/b2/ch", "b": "dense/b4/ch"}
    assert found[1][1].to_strs() == {"a": "un0.25/b2/ch", "b": "dense/b4/ch"}
    assert found[2][1].to_strs() == {"a": "dense/b4/ch", "b": "dense/b2/ch"}


def test_alternatives_raise_every_sparse_damage_first() -> None:
    # budget 30, a's 1 in 4 rated 1.8: the knapsack takes it with b at 4 bits (2.8); with
    # every sparse damage doubled (a's 1 in 4: 3.6) a goes to 2 bits (3.5 + 1.0); halving the
    # unstructured damages, or doubling either layer's, gives the knapsack's plan again
    opts = [
        LayerOption.from_str(s) for s in ("removed", "dense/b2/ch", "dense/b4/ch", "un0.25/b2/ch")
    ]
    cost = np.array([0, 10, 20, 10])
    scores = Scores(
        [
            LayerScores("a", opts, cost, np.array([10.0, 3.5, 1.5, 1.8])),
            LayerScores("b", opts, cost, np.array([10.0, 4.0, 1.0, 9.0])),
        ],
        "fisher",
    )
    found = alternative_plans(scores, 30, groups=2, factor=2.0)
    assert found[0][1].to_strs() == {"a": "un0.25/b2/ch", "b": "dense/b4/ch"}
    assert [change for change, _ in found][:2] == ["knapsack", "sparse x 2"]
    assert found[1][1].to_strs() == {"a": "dense/b2/ch", "b": "dense/b4/ch"}


def _big_small(groups: list[list[str]] | None = None) -> Scores:
    big = [LayerOption.from_str(s) for s in ("nm2:8/b2/ch", "un0.1875/b2/ch", "un0.1875/b3/ch",
                                             "dense/b2/ch")]  # fmt: skip
    small = [LayerOption.from_str(s) for s in ("dense/b2/ch", "dense/b4/ch", "un0.5/b2/ch")]
    layers = [
        LayerScores("big", big, np.array([30, 28, 40, 60]), np.array([1.0, 3.0, 1.5, 0.5])),
        LayerScores("small", small, np.array([10, 20, 8]), np.array([2.0, 0.2, 5.0])),
    ]
    if groups:  # "twin": big's options and damages, tied to it
        layers.append(replace(layers[0], name="twin"))
    return Scores(layers, "fisher", groups or [])


def test_alternatives_end_with_the_largest_layer_unstructured_in_place() -> None:
    # budget 50: the knapsack takes big at 2:8 (1.0) and small at 4 bits (0.2); halving the
    # unstructured damages (big's 3 in 16 at 2 bits: 1.5) or doubling any set of damages
    # keeps that plan, and at 3 bits big's 3 in 16 (0.75) leaves small only its own 1 in 2
    # (2.5). The in-place swap keeps small and puts big at 3 in 16 / 2 bits (28 of 30 bytes)
    scores = _big_small()
    found = alternative_plans(scores, 50, groups=2, factor=2.0)
    assert [change for change, _ in found][:2] == ["knapsack", "big unstructured"]
    assert found[0][1].to_strs() == {"big": "nm2:8/b2/ch", "small": "dense/b4/ch"}
    assert found[1][1].to_strs() == {"big": "un0.1875/b2/ch", "small": "dense/b4/ch"}


def test_unstructured_in_place_only_where_it_changes_a_free_layer() -> None:
    scores = _big_small()
    knapsack = scores.resolve(50)
    assert _unstructured_in_place(scores, knapsack) is not None
    # already unstructured: nothing to swap
    assert _unstructured_in_place(scores, Plan({**knapsack, "big": LayerOption.from_str(
        "un0.1875/b3/ch")})) is None  # fmt: skip
    # no unstructured option within the plan's bytes for big (27 < 28)
    cheap = replace(scores.layers[0], bytes=np.array([27, 28, 40, 60]))
    tight = replace(scores, layers=[cheap, scores.layers[1]])
    assert _unstructured_in_place(tight, tight.resolve(50)) is None
    # tied layers take one option together: a swap of one alone would break the tie
    tied = _big_small(groups=[["big", "twin"]])
    assert _unstructured_in_place(tied, tied.resolve(80)) is None


def test_alternatives_end_with_the_largest_layers_damages_divided() -> None:
    # budget 60: the knapsack keeps big at 4 bits and both small layers at 2 (0.5 + 1.4 + 1.2
    # against 3.4 + 0.5 + 0.4); doubling any one layer's damages keeps that plan, halving
    # big's moves its 20 bytes to the small layers (1.7 + 0.5 + 0.4 against 0.25 + 2.6)
    b2, b4 = LayerOption.from_str("dense/b2/ch"), LayerOption.from_str("dense/b4/ch")
    scores = Scores(
        [
            LayerScores("big", [b2, b4], np.array([20, 40]), np.array([3.4, 0.5])),
            LayerScores("s1", [b2, b4], np.array([10, 20]), np.array([1.4, 0.5])),
            LayerScores("s2", [b2, b4], np.array([10, 20]), np.array([1.2, 0.4])),
        ],
        "fisher",
    )
    found = alternative_plans(scores, 60, groups=3, factor=2.0)
    assert [change for change, _ in found] == ["knapsack", "big / 2"]
    assert found[0][1].to_strs() == {"big": "dense/b4/ch", "s1": "dense/b2/ch", "s2": "dense/b2/ch"}
    assert found[1][1].to_strs() == {"big": "dense/b2/ch", "s1": "dense/b4/ch", "s2": "dense/b4/ch"}


def _stuck(groups: list[list[str]] | None = None) -> Scores:
    """Damages so far apart that no re-weighting by 2 moves the knapsack's plan (budget 50:
    big at 3 bits and small at 4, 1.0 + 0.5, against 0.9 + 5.0 and 9.0 + 0.5)."""
    big = [LayerOption.from_str(s) for s in ("removed", "dense/b2/ch", "dense/b3/ch",
                                             "dense/b4/ch")]  # fmt: skip
    small = [LayerOption.from_str(s) for s in ("removed", "dense/b2/ch", "dense/b4/ch",
                                               "dense/b8/ch")]  # fmt: skip
    layers = [
        LayerScores("big", big, np.array([0, 20, 30, 40]), np.array([50.0, 9.0, 1.0, 0.9])),
        LayerScores("small", small, np.array([0, 10, 20, 40]), np.array([50.0, 5.0, 0.5, 0.1])),
    ]
    if groups:  # "twin": big's options and damages, tied to it (a tied layer has no joints)
        layers.append(replace(layers[0], name="twin"))
        return Scores(layers, "fisher", groups)
    joint = JointDamage(["big", "small"], ["removed", "removed"], 60.0)
    return Scores(layers, "fisher", [], [joint])


def test_alternatives_end_with_the_largest_layer_below_then_above_its_bytes() -> None:
    scores = _stuck()
    found = alternative_plans(scores, 50, groups=2, factor=2.0)
    assert [change for change, _ in found] == ["knapsack", "big fewer bytes", "big more bytes"]
    assert found[0][1].to_strs() == {"big": "dense/b3/ch", "small": "dense/b4/ch"}
    # big at 2 bits leaves small 30 bytes (4 bits); at 4 bits, 10 (2 bits): both exact knapsack
    # solutions with big limited, so both fit the budget
    assert found[1][1].to_strs() == {"big": "dense/b2/ch", "small": "dense/b4/ch"}
    assert found[2][1].to_strs() == {"big": "dense/b4/ch", "small": "dense/b2/ch"}


def test_the_largest_layer_above_its_bytes_only_where_the_others_still_fit() -> None:
    # budget 40, no layer can be removed: the knapsack takes big at 3 bits and small at 2
    # (1.0 + 3.0 against 9.0 + 0.5, and so with either layer's damages doubled or halved);
    # big at 4 bits (40) leaves small nothing, so there is no "more bytes" plan, and no error
    b2, b3, b4 = (LayerOption.from_str(f"dense/b{b}/ch") for b in (2, 3, 4))
    scores = Scores(
        [
            LayerScores("big", [b2, b3, b4], np.array([20, 30, 40]), np.array([9.0, 1.0, 0.9])),
            LayerScores("small", [b2, b4], np.array([10, 20]), np.array([3.0, 0.5])),
        ],
        "fisher",
    )
    found = alternative_plans(scores, 40, groups=2, factor=2.0)
    assert [change for change, _ in found] == ["knapsack", "big fewer bytes"]
    assert found[1][1].to_strs() == {"big": "dense/b2/ch", "small": "dense/b4/ch"}


def test_the_largest_layer_limited_keeps_only_joints_of_its_remaining_options() -> None:
    scores = _stuck()
    knapsack = scores.resolve(50)
    fewer = _largest_limited(scores, knapsack, True)
    more = _largest_limited(scores, knapsack, False)
    assert fewer is not None and more is not None
    assert fewer.layers[0].option_strs() == ["removed", "dense/b2/ch"]
    assert more.layers[0].option_strs() == ["dense/b4/ch"]
    assert len(fewer.joints) == 1 and more.joints == []  # big "removed" is not among more's
    # nothing below the cheapest option, nothing above the widest; tied layers move together
    assert _largest_limited(scores, Plan({**knapsack, "big": scores.layers[0].options[0]}),
                            True) is None  # fmt: skip
    assert _largest_limited(scores, Plan({**knapsack, "big": scores.layers[0].options[3]}),
                            False) is None  # fmt: skip
    tied = _stuck(groups=[["big", "twin"]])
    assert _largest_limited(tied, tied.resolve(80), True) is None


def test_probe_settings_are_checked_by_name() -> None:
    with pytest.raises(InvalidOption) as err:
        get_method("constrained", {"probe_factor": 1.0})
    assert err.value.field == "settings.probe_factor"
    assert "above 1" in err.value.message


def test_probing_keeps_the_plan_with_the_lowest_loss_and_a_resumed_job_reads_it(  # type: ignore[no-untyped-def]
    dense_digits, tmp_path: Path
) -> None:
    model, data = dense_digits
    cfg = TrainConfig(epochs=1, lr=1e-3, batch_size=64, seed=1)  # 23 steps: room for 2 probes
    settings = {
        "calibration_batches": 2, "probe_steps": 5, "probe_factor": 1000.0, "search_share": None,
    }  # fmt: skip

    def run(checkpoint_dir):  # type: ignore[no-untyped-def]
        ctx = digits_context(model, data, 16, copy_model=True, checkpoint_dir=checkpoint_dir)
        method = get_method("constrained", settings)
        plan = method.propose(ctx)
        torch.manual_seed(0)
        return method, plan, method.finetune(ctx, plan, cfg), ctx

    method, knapsack, chosen, ctx = run(tmp_path)
    probes = method.report["probes"]
    assert len(probes) == 2  # 11 of the 23 steps (probe_share 0.5) hold two 5-step probes
    assert probes[0]["change"] == "knapsack" and probes[0]["plan"] == knapsack.to_strs()
    assert probes[1]["plan"] != probes[0]["plan"]
    assert chosen.to_strs() == min(probes, key=lambda p: p["loss"])["plan"]
    # each probe's loss is what its plan scores after 5 steps from the dense weights
    judge = LossDeltaEstimator(examples=calibration_examples(data.task, PROBE_EXAMPLES))
    for probe in probes:
        trial = copy.deepcopy(model)
        plan = Plan({n: LayerOption.from_str(o) for n, o in probe["plan"].items()})
        probe_cfg = TrainConfig(epochs=1, lr=1e-3, batch_size=64, seed=1 + PROBE_SEED_OFFSET,
                                max_steps=5)  # fmt: skip
        SlopeRun(trial, ctx.geoms, plan, data, probe_cfg, ctx.finetune).run()
        judge.prepare(trial, [], data, seed=PROBE_SEED_OFFSET)
        assert judge.base_loss == pytest.approx(probe["loss"], rel=1e-9)
    # a job resumed before its first SLOPE checkpoint takes the recorded choice instead of
    # probing again (shown by recording the other plan)
    shutil.rmtree(tmp_path / "slope")
    saved = tmp_path / "probes.json"
    record = json.loads(saved.read_text())
    other = next(p["plan"] for p in probes if p["plan"] != chosen.to_strs())
    record["plan"] = Plan({n: LayerOption.from_str(o) for n, o in other.items()}).to_json()
    saved.write_text(json.dumps(record))
    assert run(tmp_path)[2].to_strs() == other


def test_no_probing_without_room_for_two_probes(dense_digits) -> None:  # type: ignore[no-untyped-def]
    model, data = dense_digits
    cfg = TrainConfig(epochs=1, lr=1e-3, batch_size=64, seed=1)
    ctx = digits_context(model, data, 16, copy_model=True)
    method = get_method("constrained", {"calibration_batches": 2, "probe_steps": 12})
    plan = method.propose(ctx)
    assert method.finetune(ctx, plan, cfg) == plan  # 11 steps hold no 12-step probe
    assert "probes" not in method.report


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _first_probe(clock: ProbeClock, fake: FakeClock, steps: int, pace: float) -> int:
    """Poll as the trainer does before each of ``steps`` steps taking ``pace`` seconds (the
    first 3 s longer: set-up); the steps run before the clock stopped the probe."""
    for step in range(steps):
        if clock.poll():
            return step
        fake.t += pace + (3.0 if step == 0 else 0.0)
    return steps


def test_the_first_probe_stops_once_its_pace_shows_two_probes_do_not_fit() -> None:
    # 1000 steps at 0.5 s: 500 s of fine-tuning, a quarter of it 125 s; two 30-step probes
    # take 30 s, so 95 s of scoring leave room and 96 s do not
    for spent, expected in ((95.0, 30), (96.0, PACE_STEPS)):
        fake = FakeClock()
        clock = ProbeClock(0.25, spent, 1000, 30, now=fake)
        assert _first_probe(clock, fake, 30, 0.5) == expected
        assert clock.pace == pytest.approx(0.5)  # the first step's set-up left out
        assert (clock.stopped is None) == (expected == 30)
    assert clock.stopped is not None and "search_share 0.25" in clock.stopped
    assert "allows 125.0s" in clock.stopped


def test_later_probes_run_while_the_mean_probe_fits_and_none_without_a_limit() -> None:
    fake = FakeClock()
    clock = ProbeClock(0.25, 60.0, 1000, 30, now=fake)  # 125 s allowed at 0.5 s a step
    assert _first_probe(clock, fake, 30, 0.5) == 30
    fake.t += 2.0  # judging the first probe: it took 20 s in all
    assert clock.fits_another(1) and clock.fits_another(2)  # 60 + 20 * 3 = 120 s
    fake.t += 40.0  # two more probes done, 60 s of probing
    assert not clock.fits_another(3)  # 60 + 20 * 4 = 140 s
    assert clock.stopped is not None and "after 3 plans" in clock.stopped
    untimed = ProbeClock(None, 1e9, 10, 30, now=fake)
    assert _first_probe(untimed, fake, 30, 0.5) == 30 and untimed.fits_another(5)


def test_probing_out_of_time_keeps_the_knapsacks_plan_and_says_why(  # type: ignore[no-untyped-def]
    dense_digits,
) -> None:
    model, data = dense_digits
    cfg = TrainConfig(epochs=1, lr=1e-3, batch_size=64, seed=1)  # 23 steps
    ctx = digits_context(model, data, 16, copy_model=True)
    settings = {
        "calibration_batches": 2,
        "probe_steps": 8,
        "probe_share": 1.0,
        "search_share": 1e-6,
    }
    method = get_method("constrained", settings)
    plan = method.propose(ctx)
    assert method.finetune(ctx, plan, cfg) == plan
    assert method.report["probes"] == []  # the first probe was stopped after its pace showed
    assert "search_share 1e-06" in method.report["probes_stopped"]
    assert method.report["probe_seconds"] > 0


def test_probing_leaves_the_global_rng_as_it_found_it(dense_digits) -> None:  # type: ignore[no-untyped-def]
    # a model that draws from the global RNG in training (as dropout does): how many probe
    # steps ran, which time decides, must not change the job's own fine-tuning
    model, data = dense_digits
    ctx = digits_context(model, data, 16, copy_model=True)

    def draw(module: torch.nn.Module, inputs: object, output: object) -> None:
        if module.training:
            torch.rand(1)

    ctx.model.register_forward_hook(draw)
    settings = {"calibration_batches": 2, "probe_steps": 3, "probe_factor": 1000.0}
    method = get_method("constrained", {**settings, "search_share": None})
    method.propose(ctx)
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    cfg = TrainConfig(epochs=1, lr=1e-3, batch_size=64, seed=1, max_steps=12)
    found = run_probes(ctx, method.last_scores, cfg, method.settings)
    assert len(found["probes"]) == 2  # they ran, drawing from the RNG
    assert torch.equal(torch.random.get_rng_state(), before)


def test_search_share_is_checked_by_name() -> None:
    with pytest.raises(InvalidOption) as err:
        get_method("constrained", {"search_share": 0})
    assert err.value.field == "settings.search_share"
    assert get_method("constrained", {"search_share": None}).settings.search_share is None


def test_the_report_text_says_how_probing_went_and_what_fine_tuning_ran() -> None:
    from slimline.pipeline.report import render_report

    probes = [
        {"change": "knapsack", "plan": {}, "loss": 2.1},
        {"change": "conv1 x 2", "plan": {}, "loss": 1.9},
    ]
    report = {
        "model": "lenet5", "data": "mnist", "method": "constrained", "budget": "256x",
        "budget_bytes": 6737, "layers": [], "other_bytes": 0, "header_bytes": 575,
        "file_bytes": 6560, "within_budget": True, "ratio": 262.9, "dense_bytes": 1766296,
        "weight_bits_ratio": 1359.1, "metric": 0.9857, "dense_metric": 0.9928,
        "retention": 0.9928, "verify": {"equal": True, "tensors": 8, "max_abs_diff": 0.0},
        "scores_seconds": 6.3, "allocation_seconds": 0.002, "projections": [],
        "probe_seconds": 15.6, "probes": probes, "timings": {"plan": 6.3},
        "total_seconds": 6.3, "checkpoint": "x.slim.safetensors",
    }  # fmt: skip
    text = render_report(report)
    assert "probing 15.6s (2 plans, kept: conv1 x 2)" in text
    recipe = {"epochs": 4.0, "steps": 1876, "stretch": 1.0}
    line = "fine-tune 4 epochs, 1,876 steps"
    assert f"{line}\n" in render_report({**report, "finetune": recipe})
    gapped = {**report, "finetune": recipe, "distilled": 0.5, "probe_gap": -0.0014}
    want = f"{line}, distilled from the dense model (weight 0.5: the kept plan probed -0.0014"
    assert want in render_report(gapped)
    assert "probing" not in render_report({**report, "probes": []})
    why = "two probes need about 99.0s of search"
    text = render_report({**report, "probes": [], "probes_stopped": why})
    assert f"probing stopped after 15.6s, knapsack's plan kept: {why}" in text
    # the fine-tuning line names a stretched recipe, but not one stretched by a rounding
    recipe = {"epochs": 4.0, "steps": 1876, "stretch": 1.0}
    for stretch, shown in ((1.004, None), (1.03, "1.03x the recipe"), (6.0, "6x the recipe")):
        line = next(
            x
            for x in render_report(
                {**report, "finetune": {**recipe, "stretch": stretch}}
            ).splitlines()
            if x.startswith("fine-tune")
        )
        assert (shown is None and "recipe" not in line) or (shown is not None and shown in line)


def _gapped(loss: float, dense: float, teacher: bool = True, **settings: object):  # type: ignore[no-untyped-def]
    method = get_method("constrained", settings)
    method.report.update(probes=[{"loss": loss + 1.0}, {"loss": loss}], probe_dense_loss=dense)
    net = torch.nn.Linear(2, 2)
    ctx = SearchContext(
        model=net, geoms=[], data=None, payload_budget=0, other_bytes=0,  # type: ignore[arg-type]
        teacher=net if teacher else None,
    )  # fmt: skip
    return method, ctx


def test_distillation_turns_on_where_the_kept_plan_probed_within_the_gap() -> None:
    method, ctx = _gapped(0.515, dense=0.5)  # the best probe 0.015 above the dense model
    out = method._gap_distillation(ctx)
    assert out.finetune.distill == 0.5 and method.report["distilled"] == 0.5
    assert method.report["probe_gap"] == pytest.approx(0.015)
    assert ctx.finetune.distill is None  # the job's own context is left as it was
    method, ctx = _gapped(0.525, dense=0.5)  # 0.025 above: past the default 0.02
    assert method._gap_distillation(ctx).finetune.distill is None
    assert "distilled" not in method.report and method.report["probe_gap"] == pytest.approx(0.025)
    method, ctx = _gapped(0.475, dense=0.5)  # 0.025 below: the teacher is the weaker model
    assert method._gap_distillation(ctx).finetune.distill is None
    method, ctx = _gapped(0.525, dense=0.5, distill_gap=0.03, distill_weight=0.25)
    assert method._gap_distillation(ctx).finetune.distill == 0.25
    # never: without the setting, without a teacher, or with a weight the settings chose
    for method, ctx in (_gapped(0.5, 0.5, distill_gap=None), _gapped(0.5, 0.5, teacher=False)):
        assert method._gap_distillation(ctx) is ctx and "distilled" not in method.report
    for weight in (0.1, 0.0):  # 0 set by the user is a choice too: plain fine-tuning
        method, ctx = _gapped(0.5, dense=0.5)
        chosen = replace(ctx, finetune=FinetuneSettings(distill=weight))
        assert method._gap_distillation(chosen).finetune.distill == weight
        assert "distilled" not in method.report and method.report["probe_gap"] == 0.0
    # nothing probed, nothing decided
    method = get_method("constrained")
    assert method._gap_distillation(ctx) is ctx and "probe_gap" not in method.report


def test_distillation_settings_are_checked_by_name() -> None:
    for name, value, accepted in (
        ("distill_gap", -0.1, "0 or more, or null"),
        ("distill_weight", 0.0, "in (0, 1]"),
    ):
        with pytest.raises(InvalidOption) as err:
            get_method("constrained", {name: value})
        assert err.value.field == f"settings.{name}" and accepted in err.value.message


def test_a_small_gap_fine_tunes_the_kept_plan_with_distillation(dense_digits) -> None:  # type: ignore[no-untyped-def]
    model, data = dense_digits
    cfg = TrainConfig(epochs=1, lr=1e-3, batch_size=64, seed=1, max_steps=12)
    settings = {"calibration_batches": 2, "probe_steps": 3, "probe_factor": 1000.0,
                "search_share": None}  # fmt: skip
    ends = {}
    for gap in (None, 100.0):  # never, and always
        ctx = digits_context(model, data, 16, copy_model=True, teacher=model)
        method = get_method("constrained", {**settings, "distill_gap": gap})
        plan = method.propose(ctx)
        torch.manual_seed(0)
        chosen = method.finetune(ctx, plan, cfg)
        ends[gap] = ctx.model
    report = method.report
    # the dense model's loss on the probes' own sample
    judge = LossDeltaEstimator(examples=calibration_examples(data.task, PROBE_EXAMPLES))
    judge.prepare(model, [], data, seed=PROBE_SEED_OFFSET)
    assert report["probe_dense_loss"] == pytest.approx(judge.base_loss, rel=1e-9)
    best_probe = min(p["loss"] for p in report["probes"])
    assert report["probe_gap"] == pytest.approx(best_probe - judge.base_loss, rel=1e-9)
    assert report["distilled"] == 0.5
    # the kept plan fine-tuned with distillation from the dense weights, as SLOPE runs it
    trial = copy.deepcopy(model)
    torch.manual_seed(0)
    distilled = FinetuneSettings(distill=0.5)
    SlopeRun(trial, ctx.geoms, chosen, data, cfg, distilled, teacher=copy.deepcopy(model)).run()
    want, got, plain = trial.state_dict(), ends[100.0].state_dict(), ends[None].state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert not all(torch.equal(want[k], plain[k]) for k in want)
