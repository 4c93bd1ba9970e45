"""Scoring: candidate options, one calibration pass, exact bytes, damage that ranks like the loss.

Real MNIST from ../shared/data throughout. The ground-truth check trains a LeNet-5 briefly and
compares, layer by layer, Fisher damage with the measured loss increase of each option.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn
from torch.nn.utils import parametrize

from slimline.errors import InvalidOption
from slimline.models.datasets import load_dataset
from slimline.models.lenet import LeNet5, LeNet5Config
from slimline.search.accounting import kept_count, layer_bytes, plan_bytes
from slimline.search.compressed import CompressedWeight
from slimline.search.estimators import (
    FisherEstimator,
    LossDeltaEstimator,
    get_estimator,
)
from slimline.search.layers import LayerGeometry, find_layers
from slimline.search.options import FP16, REMOVED, LayerOption
from slimline.search.position_codes import position_stream_bytes
from slimline.search.scoring import Scores, candidate_options, front_indices, score_model
from slimline.search.training import TrainConfig, evaluate, train

DATA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@dataclass
class Split:
    """A TrainData over a slice of MNIST."""

    task: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


@pytest.fixture(scope="module")
def mnist() -> Split:
    data = load_dataset("mnist", DATA_ROOT)
    return Split("classify", data.x_train, data.y_train, data.x_val, data.y_val)


def small_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 24),
        nn.ReLU(),
        nn.Linear(24, 24),
        nn.ReLU(),
        nn.Linear(24, 24),
        nn.ReLU(),
        nn.Linear(24, 10),
    )


def conv_bn() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 4, 5, stride=2),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 12 * 12, 10),
    )


def few_options(geom: LayerGeometry) -> list[LayerOption]:
    return [FP16, LayerOption(bits=4, granularity="channel"), REMOVED]


def exact_position_bytes(model: nn.Module, plan, geoms: list[LayerGeometry]) -> dict[str, int]:
    out = {}
    for g in geoms:
        opt = plan[g.name]
        if opt.sparsity == "unstructured":
            mask = CompressedWeight(opt, model.get_submodule(g.name).weight.detach()).mask
            out[g.name] = position_stream_bytes(g.numel, int(mask.sum()), mask.reshape(-1))
    return out


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "device": {p.device for p in model.parameters()},
        "hooks": [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()],
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), k
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["device"] == before["device"]
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert after["hooks"] == before["hooks"]


# ------------------------------------------------------------------------ candidate options
def test_candidate_options_of_a_big_layer() -> None:
    geom = LayerGeometry("fc", "linear", (500, 800), has_bias=True)
    opts = candidate_options(geom)
    assert 60 <= len(opts) <= 120
    assert len(set(opts)) == len(opts)
    assert opts[0] == FP16 and opts[-1] == REMOVED
    assert {o.granularity for o in opts} == {"none", "channel", "tensor"}
    # one scale per tensor only where 500 fp16 scales would outweigh 10% of the values
    for o in opts:
        if o.granularity == "tensor":
            kept = kept_count(o, 500, 800)
            assert o.sparsity == "unstructured" and 0.1 * kept * o.bits / 8 < 1000, o
    kinds = {(o.sparsity, o.n, o.m) for o in opts}
    assert ("nm", 2, 4) in kinds and ("nm", 4, 8) in kinds and ("unstructured", 0, 0) in kinds
    assert all(layer_bytes(o, geom).total > 0 for o in opts)


def test_small_layers_also_get_per_tensor_scales_unless_a_norm_is_folded() -> None:
    small = LayerGeometry("conv1", "conv2d", (20, 1, 5, 5), has_bias=True)
    assert "tensor" in {o.granularity for o in candidate_options(small)}
    folded = LayerGeometry("conv1", "conv2d", (20, 1, 5, 5), has_bias=False, norm="bn1")
    assert "tensor" not in {o.granularity for o in candidate_options(folded)}
    short = LayerGeometry("fc", "linear", (10, 6), has_bias=True)  # rows of 6: no 1:8 etc.
    assert all(o.m <= 6 for o in candidate_options(short))


# ------------------------------------------------------------------- one calibration pass
@pytest.mark.parametrize("estimator", ["fisher-quadratic", "hessian"])
def test_scoring_runs_the_model_batches_times_whatever_the_options(mnist, estimator) -> None:
    """The calibration pass is one pass (the Fisher estimator's measurement of far options
    aside: `test_far_options_on_the_front_are_measured`)."""
    model = small_mlp()
    geoms = find_layers(model)
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    counts = []
    for options in (few_options, candidate_options):
        calls.clear()
        est = FisherEstimator(measure_above=0) if estimator == "fisher-quadratic" else estimator
        s = score_model(model, geoms, mnist, estimator=est, options=options, batches=3)
        counts.append(len(calls))
        assert sum(len(ls.options) for ls in s.layers) == sum(len(options(g)) for g in geoms)
    assert counts == [3, 3]


def test_scores_are_exact_bytes_and_damage_of_the_compressed_weight(mnist) -> None:
    model = small_mlp()
    geoms = find_layers(model)
    progress = []
    quadratic = FisherEstimator(measure_above=0)
    s = score_model(model, geoms, mnist, estimator=quadratic, batches=2, progress=progress.append)
    assert progress == [{"step": i, "total": 4} for i in range(1, 5)]
    assert s.estimator == "fisher"
    est = FisherEstimator(measure_above=0)
    est.prepare(model, geoms, mnist, batches=2)
    for g, ls in zip(geoms, s.layers, strict=True):
        w = model.get_submodule(g.name).weight.detach()
        assert ls.name == g.name and ls.options == candidate_options(g)
        for opt, b, d in zip(ls.options, ls.bytes, ls.damage, strict=True):
            cw = CompressedWeight(opt, w)
            pos = None
            if opt.sparsity == "unstructured":
                pos = position_stream_bytes(g.numel, int(cw.mask.sum()), cw.mask.reshape(-1))
            assert b == layer_bytes(opt, g, position_bytes=pos).total
            with torch.no_grad():
                assert d == pytest.approx(est.damage(g, w, cw(w)), rel=1e-6)
        fp16, removed = ls.options.index(FP16), ls.options.index(REMOVED)
        assert ls.damage[fp16] < ls.damage[removed]
        assert ls.bytes[removed] == int(ls.bytes.min())


@pytest.mark.parametrize("estimator", ["fisher", "hessian", "loss"])
def test_the_model_is_left_unchanged(mnist, estimator) -> None:
    model = conv_bn().train()
    model[4].bias.requires_grad_(False)
    before = snapshot(model)
    geoms = find_layers(model)
    assert geoms[0].norm == "1"
    score_model(model, geoms, mnist, estimator=estimator, options=few_options, batches=2)
    assert_unchanged(model, before)


def test_graph_modules_score_like_their_eager_model(mnist, tmp_path: Path) -> None:
    from slimline.models.program import export_program, load_program, set_graph_training

    eager = conv_bn().eval()
    export_program(eager, mnist.x_val[:2], tmp_path / "m.pt2")
    gm = load_program(tmp_path / "m.pt2")
    set_graph_training(gm, True)
    calls = []
    gm.register_forward_pre_hook(lambda *_: calls.append(1))
    before = snapshot(gm)
    s_graph = score_model(gm, find_layers(gm), mnist, options=candidate_options, batches=2)
    assert len(calls) >= 2  # the calibration pass, then the far options measured
    assert_unchanged(gm, before)
    s_eager = score_model(eager, find_layers(eager), mnist, options=candidate_options, batches=2)
    for a, b in zip(s_graph.layers, s_eager.layers, strict=True):
        assert a.options == b.options
        np.testing.assert_array_equal(a.bytes, b.bytes)
        np.testing.assert_allclose(a.damage, b.damage, rtol=1e-4, atol=1e-12)
    # still in training mode: batch statistics, as the eager model in train mode
    x = mnist.x_val[:16]
    torch.testing.assert_close(gm(x), copy.deepcopy(eager).train()(x), atol=1e-5, rtol=0)


def test_unknown_estimator_lists_the_names() -> None:
    with pytest.raises(InvalidOption, match="fisher, hessian, loss"):
        get_estimator("variance")


def test_parametrized_layers_are_refused(mnist) -> None:
    from slimline.search.compressed import apply_plan
    from slimline.search.options import Plan

    model = small_mlp()
    geoms = find_layers(model)
    apply_plan(model, Plan.uniform([g.name for g in geoms], FP16), geoms)
    with pytest.raises(InvalidOption, match="parametrized"):
        score_model(model, geoms, mnist, options=few_options, batches=1)


# --------------------------------------------------------------------- the three estimators
def test_fisher_is_the_per_example_squared_gradient_with_labels_from_the_model(mnist) -> None:
    """F = mean over calibration batches of (examples in the batch) x (gradient of the batch's
    mean loss)^2, the labels drawn from the model's own prediction: E[batch gradient^2] is the
    per-example Fisher divided by the examples, since sampled labels make the per-example
    gradients independent with mean zero."""
    from slimline.search.estimators import _sample_labels
    from slimline.search.training import batches, task_loss

    model = small_mlp()
    geoms = find_layers(model)
    est = FisherEstimator()
    est.prepare(model, geoms, mnist, batches=3, batch_size=16, seed=5)
    w = model[7].weight
    manual, gen = torch.zeros_like(w), torch.Generator().manual_seed(5)
    for _, (x, _y) in zip(range(3), batches(mnist, 16, 5), strict=False):
        logits = model(x)
        (g,) = torch.autograd.grad(task_loss("classify", logits, _sample_labels(logits, gen)), [w])
        manual += 16 * g**2 / 3
    torch.testing.assert_close(est.fisher["7"], manual, rtol=1e-5, atol=1e-12)
    geom, delta = geoms[3], torch.randn_like(w) * 1e-2
    assert est.damage(geom, w, w) == 0.0
    assert est.damage(geom, w, w + delta) == pytest.approx(float((manual * delta**2).sum()))
    assert est.damage(geom, w, w + 2 * delta) == pytest.approx(4 * est.damage(geom, w, w + delta))

    empirical = FisherEstimator(sampled=False)  # the data's labels, no per-example scaling
    empirical.prepare(model, geoms, mnist, batches=3, batch_size=16, seed=5)
    manual = torch.zeros_like(w)
    for _, (x, y) in zip(range(3), batches(mnist, 16, 5), strict=False):
        (g,) = torch.autograd.grad(task_loss("classify", model(x), y), [w])
        manual += g**2 / 3
    torch.testing.assert_close(empirical.fisher["7"], manual, rtol=1e-5, atol=1e-12)


def test_fisher_damage_is_in_the_units_of_the_measured_loss_increase(mnist) -> None:
    """sum F (w - w_hat)^2 estimates twice the loss increase (the quadratic term of the loss's
    expansion), the units the measured damages of far options come in: near options agree
    with what is measured to within a small factor. The squared batch gradient of the data's
    labels (the empirical Fisher of a trained model) falls short by orders of magnitude, and
    then every near option looked free next to any measured far one."""
    model = small_mlp()
    train(model, mnist, TrainConfig(epochs=1, max_steps=300, lr=3e-3, batch_size=64))
    geoms = find_layers(model)
    truth = LossDeltaEstimator(examples=2048)
    truth.prepare(model, geoms, mnist)
    ratios: dict[str, list[float]] = {"sampled": [], "empirical": []}
    for kind in ratios:
        est = FisherEstimator(sampled=kind == "sampled")
        est.prepare(model, geoms, mnist)
        for g in geoms:
            w = model.get_submodule(g.name).weight.detach().clone()
            for opt in candidate_options(g):
                with torch.no_grad():
                    w_hat = CompressedWeight(opt, w)(w)
                relative = float(((w - w_hat) ** 2).sum() / (w**2).sum())
                real = 2 * truth.damage(g, w, w_hat)
                if 0.02 < relative < 0.2 and real > 1e-4:  # near, and above the noise
                    ratios[kind].append(real / est.estimate(g, w, w_hat)[0])
    sampled, empirical = np.median(ratios["sampled"]), np.median(ratios["empirical"])
    assert len(ratios["sampled"]) >= 10
    assert 0.25 <= sampled <= 4, sampled
    assert empirical > 20, empirical


def test_hutchinson_trace_matches_the_exact_hessian_trace(mnist) -> None:
    from slimline.search.estimators import HessianTraceEstimator
    from slimline.search.training import batches, task_loss

    # 2x2 pooled MNIST, labels mod 3: small enough for the exact Hessian
    x = nn.functional.avg_pool2d(mnist.x_train[:512], 14).flatten(1)  # [512, 4]
    small = Split("classify", x, mnist.y_train[:512] % 3, x[:8], mnist.y_train[:8] % 3)
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    geoms = find_layers(model)
    est = HessianTraceEstimator(probes=300)
    est.prepare(model, geoms, small, batches=2, batch_size=64)
    for geom, layer in zip(geoms, (model[0], model[2]), strict=True):
        exact = 0.0
        for _, (xb, yb) in zip(range(2), batches(small, 64, 0), strict=False):

            def loss_of(w, xb=xb, yb=yb, name=f"{geom.name}.weight"):
                out = torch.func.functional_call(model, {name: w}, (xb,))
                return task_loss("classify", out, yb)

            h = torch.autograd.functional.hessian(loss_of, layer.weight.detach())
            exact += float(h.reshape(layer.weight.numel(), -1).diagonal().sum()) / 2
        assert est.scale[geom.name] * geom.numel == pytest.approx(exact, rel=0.1)


def test_loss_delta_is_the_measured_loss_change(mnist) -> None:
    from slimline.search.training import task_loss

    model = small_mlp()
    geoms = find_layers(model)
    est = LossDeltaEstimator(examples=300, split="val")
    est.prepare(model, geoms, mnist)
    x, y = mnist.x_val[:300], mnist.y_val[:300]
    with torch.no_grad():
        base = float(task_loss("classify", model(x), y))
        w = model[3].weight.detach().clone()
        w_hat = w * 0.5
        got = est.damage(geoms[1], w, w_hat)
        model[3].weight.copy_(w_hat)
        expected = float(task_loss("classify", model(x), y)) - base
        model[3].weight.copy_(w)
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-7)
    assert torch.equal(model[3].weight, w)
    assert est.damage(geoms[1], w, w) == 0.0


# --------------------------------------------------------------------- stored scores, plans
def test_scores_round_trip_resolve_within_budget_and_pareto(mnist) -> None:
    model = small_mlp()
    geoms = find_layers(model)
    s = score_model(model, geoms, mnist, batches=2)
    back = Scores.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back.to_dict() == s.to_dict()
    for a, b in zip(back.layers, s.layers, strict=True):
        assert a.options == b.options
        np.testing.assert_array_equal(a.bytes, b.bytes)
        np.testing.assert_array_equal(a.damage, b.damage)

    lo, hi = s.min_bytes(), s.max_bytes()
    assert lo < hi
    for frac in (0.0, 0.02, 0.1, 0.3, 0.7, 1.0):
        budget = int(lo + frac * (hi - lo))
        plan = back.resolve(budget)
        a = back.allocation(budget)
        exact = plan_bytes(
            plan, geoms, 0, 0, position_bytes=exact_position_bytes(model, plan, geoms)
        )
        used = sum(lb.total for lb in exact.layers.values())
        assert used == a.bytes <= budget
        greedy = back.resolve(budget, solver="greedy")
        assert set(greedy) == set(plan)

    front = s.pareto(10)
    assert front[0]["bytes"] == lo and front[-1]["bytes"] == hi
    assert all(p["bytes"] <= q["bytes"] for p, q in zip(front, front[1:], strict=False))
    assert all(p["damage"] >= q["damage"] for p, q in zip(front, front[1:], strict=False))
    json.dumps(front)


def test_tied_layers_take_the_same_option(mnist) -> None:
    model = small_mlp()
    geoms = find_layers(model)
    names = [g.name for g in geoms]
    assert names == ["1", "3", "5", "7"]
    s = score_model(model, geoms, mnist, batches=2, groups=[["3", "5"]])
    back = Scores.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back.groups == [["3", "5"]]
    lo, hi = back.min_bytes(), back.max_bytes()
    for frac in (0.05, 0.2, 0.5):
        plan = back.resolve(int(lo + frac * (hi - lo)))
        assert plan["3"] == plan["5"]
    with pytest.raises(InvalidOption, match="same options"):
        Scores([s.layers[0], s.layers[1]], "fisher", [["1", "3"]])
    with pytest.raises(InvalidOption, match="unknown layers"):
        Scores(s.layers, "fisher", [["3", "nope"]])


# ------------------------------------------------------------- damage ranks like the loss
@pytest.fixture
def one_thread():
    """Intra-op threads off: on a loaded 2-core machine they mostly wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_fisher_damage_ranks_options_like_the_measured_loss_on_lenet5(mnist, one_thread) -> None:
    """Spearman per layer >= 0.8 between Fisher damage and the measured loss increase.

    LeNet-5 trained for one epoch on 8,000 images (~95%); every third candidate option of
    each layer (to keep the test short: the full sets give 0.95-0.997), the loss measured on
    2,000 held-out images.
    """
    torch.manual_seed(0)
    model = LeNet5(LeNet5Config())
    subset = Split(
        "classify",
        mnist.x_train[:8000],
        mnist.y_train[:8000],
        mnist.x_val[:2000],
        mnist.y_val[:2000],
    )
    train(model, subset, TrainConfig(epochs=1, batch_size=64, lr=2e-3))
    assert evaluate(model, subset)["metric"] > 0.93
    geoms = find_layers(model)
    fisher, truth = FisherEstimator(), LossDeltaEstimator(split="val")
    fisher.prepare(model, geoms, subset)
    truth.prepare(model, geoms, subset)
    rho = {}
    for g in geoms:
        w = model.get_submodule(g.name).weight.detach().clone()
        est, real = [], []
        for opt in candidate_options(g)[::3]:
            with torch.no_grad():
                w_hat = CompressedWeight(opt, w)(w)
            est.append(fisher.damage(g, w, w_hat))
            real.append(truth.damage(g, w, w_hat))
        rho[g.name] = spearmanr(est, real).statistic
    print("Spearman(fisher, measured loss increase) per layer:", rho)
    assert all(r >= 0.8 for r in rho.values()), rho


def test_far_options_on_the_front_are_measured(mnist) -> None:
    """Options that move a layer far are rated by what they measurably cost where the
    allocator could pick them: on each layer's bytes-vs-damage front every far option's
    damage is the estimator's full `damage` (max of Fisher and twice the measured loss
    increase); elsewhere it is at least the Fisher estimate. Removing a layer is far."""
    model = small_mlp()
    geoms = find_layers(model)
    s = score_model(model, geoms, mnist, batches=2)
    est, quad = FisherEstimator(), FisherEstimator(measure_above=0)
    est.prepare(model, geoms, mnist, batches=2)
    quad.prepare(model, geoms, mnist, batches=2)
    for g, ls in zip(geoms, s.layers, strict=True):
        w = model.get_submodule(g.name).weight.detach()
        front = set(front_indices(ls.bytes, ls.damage))
        for j, opt in enumerate(ls.options):
            with torch.no_grad():
                w_hat = CompressedWeight(opt, w)(w)
            fisher = quad.damage(g, w, w_hat)
            assert ls.damage[j] >= fisher * (1 - 1e-9)
            _, far = est.estimate(g, w, w_hat)
            if far and j in front:
                assert ls.damage[j] == pytest.approx(est.damage(g, w, w_hat), rel=1e-6)
        removed = ls.options.index(REMOVED)  # the fewest bytes: always on the front
        zeros = torch.zeros_like(w)
        assert est.estimate(g, w, zeros)[1], "removing a layer is far"
        assert ls.damage[removed] == pytest.approx(est.damage(g, w, zeros), rel=1e-6)
        assert ls.damage[removed] >= quad.damage(g, w, zeros) * (1 - 1e-9)


def test_a_second_pass_reuses_the_measurements_of_the_first(mnist) -> None:
    """ADMM re-projections re-score a few hundred steps on: far options measured before are
    scaled by the ratio measured then instead of being run again."""
    model = small_mlp()
    geoms = find_layers(model)
    calls: list[int] = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    est = FisherEstimator()
    first = score_model(model, geoms, mnist, estimator=est, batches=2)
    n_first, calls[:] = len(calls), []
    est.reuse_measurements = True
    second = score_model(model, geoms, mnist, estimator=est, batches=2)
    assert est.ratios and len(calls) < n_first
    for a, b in zip(first.layers, second.layers, strict=True):
        assert np.allclose(a.damage, b.damage, rtol=1e-9)


@pytest.mark.parametrize("share", [0.02, 0.05, 0.15, 0.4])
def test_measuring_for_a_budget_gives_the_fully_measured_optimum(mnist, share: float) -> None:
    """With a budget, far options are measured only where that budget's allocation picks
    them; the plan's damage (under the scores that measured every far option on the front)
    is still the optimum, at fewer forward passes; with monotone bounds too, here."""
    model = small_mlp()
    train(model, mnist, TrainConfig(epochs=1, max_steps=150, lr=3e-3, batch_size=64))
    geoms = find_layers(model)
    calls: list[int] = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    full = score_model(model, geoms, mnist, batches=2)
    n_full, calls[:] = len(calls), []
    budget = int(full.min_bytes() + share * (full.max_bytes() - full.min_bytes()))
    lazy = score_model(model, geoms, mnist, batches=2, budget=budget, monotone=False)
    n_lazy, calls[:] = len(calls), []
    assert n_lazy < n_full

    def damage_under_full(scores: Scores) -> float:
        plan = scores.resolve(budget)
        return sum(
            float(ls.damage[[o.to_str() for o in ls.options].index(plan[ls.name].to_str())])
            for ls in full.layers
        )

    assert damage_under_full(lazy) == pytest.approx(damage_under_full(full), rel=1e-9)
    # what the lazy scores say the plan costs is what it costs
    chosen = lazy.allocation(budget)
    assert chosen.damage == pytest.approx(damage_under_full(lazy), rel=1e-9)
    assert chosen.bytes <= budget

    # A measured damage bounding the layer's options that compress at least as much rules
    # them out without running the model; damage does grow along those chains here, so the
    # plan is the same, at no more forward passes.
    bounded = score_model(model, geoms, mnist, batches=2, budget=budget, monotone=True)
    assert len(calls) <= n_lazy
    assert bounded.resolve(budget) == lazy.resolve(budget)
    assert bounded.allocation(budget).damage == pytest.approx(chosen.damage, rel=1e-9)


def test_compresses_at_least_is_within_a_family() -> None:
    from slimline.search.scoring import compresses_at_least

    o = LayerOption.from_str
    assert compresses_at_least(o("un0.125/b2/ch"), o("un0.25/b3/ch"))
    assert compresses_at_least(o("un0.25/b3/ch"), o("un0.25/b3/ch"))  # itself
    assert not compresses_at_least(o("un0.125/b4/ch"), o("un0.25/b3/ch"))  # more bits
    assert not compresses_at_least(o("un0.125/b2/t"), o("un0.25/b3/ch"))  # other scales
    assert compresses_at_least(o("nm1:8/b2/ch"), o("nm2:8/b4/ch"))
    assert not compresses_at_least(o("nm1:4/b2/ch"), o("nm2:8/b4/ch"))  # other group length
    assert not compresses_at_least(o("nm1:8/b2/ch"), o("un0.25/b3/ch"))  # other kind
    assert compresses_at_least(o("dense/b2/ch"), o("dense/b4/ch"))
    assert compresses_at_least(REMOVED, o("un0.25/b3/ch")) and compresses_at_least(REMOVED, FP16)
    assert not compresses_at_least(FP16, REMOVED)


def test_options_past_a_tenth_of_relative_error_are_measured_by_default() -> None:
    geom = LayerGeometry("fc", "linear", (4, 10), has_bias=False)
    w = torch.ones(4, 10)
    w_hat = w.clone()
    w_hat[:, :3] = 0.0  # relative squared error 0.3: measured at 0.1, not at 0.5
    default, loose = FisherEstimator(), FisherEstimator(measure_above=0.5)
    for est in (default, loose):
        est.fisher = {"fc": torch.ones(4, 10)}
    assert default.estimate(geom, w, w_hat) == (12.0, True)
    assert loose.estimate(geom, w, w_hat) == (12.0, False)
    assert default.estimate(geom, w, w * 0.9)[1] is False  # relative error 0.01


def test_the_measuring_threshold_is_a_constrained_setting(dense_digits) -> None:  # type: ignore[no-untyped-def]
    from slimline.search.methods import get_method
    from tests.search.conftest import digits_context

    model, data = dense_digits
    method = get_method("constrained", {"measure_above": 0.5, "calibration_batches": 2})
    method.propose(digits_context(model, data, 16, copy_model=True))
    assert isinstance(method._estimator, FisherEstimator)
    assert method._estimator.measure_above == 0.5
    with pytest.raises(InvalidOption) as err:
        get_method("constrained", {"measure_above": -1.0})
    assert err.value.field == "settings.measure_above"
