"""squantizer: the global k found by bisection meets the budget, and its training pass keeps
exactly the planned count of weights per layer while the masks move with the weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from slimline.errors import InfeasibleBudget, InvalidOption
from slimline.pipeline.stages import exact_positions
from slimline.search.accounting import kept_count, layer_bytes, plan_bytes, unstructured_kept
from slimline.search.compressed import CompressedWeight, compressed_weights
from slimline.search.layers import LayerGeometry
from slimline.search.method_settings import SQuantizerSettings
from slimline.search.methods import get_method
from slimline.search.methods.base import SearchContext
from slimline.search.methods.squantizer import (
    MagnitudeStats,
    SQuantizerMethod,
    bound_bytes,
    density_for,
    fit_threshold,
    threshold_plan,
)
from slimline.search.options import LayerOption
from slimline.search.position_codes import position_stream_bytes
from slimline.search.training import TrainConfig, evaluate
from tests.search.conftest import digits_context


@pytest.fixture(scope="module")
def dense(dense_digits: tuple[nn.Module, object]) -> tuple[nn.Module, object]:
    return dense_digits


def context(model: nn.Module, data: object, ratio: int) -> SearchContext:
    return digits_context(model, data, ratio, copy_model=True)


def stats_of(ctx: SearchContext) -> list[MagnitudeStats]:
    return [MagnitudeStats.of(g, ctx.model.get_submodule(g.name).weight) for g in ctx.geoms]


@pytest.mark.parametrize("ratio", [8, 16, 32])
def test_bisection_on_k_meets_the_budget_with_the_least_pruning(dense, ratio: int) -> None:
    model, data = dense
    ctx = context(model, data, ratio)
    method = SQuantizerMethod()
    plan = method.propose(ctx)
    used = bound_bytes(plan, ctx.geoms)
    assert used <= ctx.layer_budget
    # the pipeline's own check: exact positions of the masks the dense weights give
    exact = plan_bytes(
        plan, ctx.geoms, ctx.other_bytes, 0, position_bytes=exact_positions(model, ctx.geoms, plan)
    )
    assert exact.payload <= ctx.payload_budget
    # tight: a slightly lower threshold would keep more weights and not fit
    stats = stats_of(ctx)
    looser = threshold_plan(stats, method.report["squantizer_k"] - 1e-6, 4)
    assert looser != plan and bound_bytes(looser, ctx.geoms) > ctx.layer_budget
    assert used > 0.85 * ctx.layer_budget  # and it uses the budget it has
    # every layer is what its threshold keeps
    for s in stats:
        assert kept_count(plan[s.geom.name], s.geom.rows, s.geom.row_len) == s.kept(
            method.report["squantizer_k"]
        )
        assert plan[s.geom.name].bits == 4


def test_larger_k_gives_fewer_bytes(dense) -> None:
    model, data = dense
    ctx = context(model, data, 16)
    stats = stats_of(ctx)
    lo = min(s.k_keeping_all() for s in stats)
    hi = max(s.k_keeping_none() for s in stats)
    ks = np.linspace(lo, hi, 200)
    sizes = [bound_bytes(threshold_plan(stats, float(k), 4), ctx.geoms) for k in ks]
    kept = np.array([[s.kept(float(k)) for s in stats] for k in ks])
    assert all(a >= b for a, b in zip(sizes, sizes[1:], strict=False))
    assert (np.diff(kept, axis=0) <= 0).all()
    assert sizes[0] > sizes[len(sizes) // 2] > sizes[-1]
    assert set(threshold_plan(stats, lo, 4).to_strs().values()) == {"dense/b4/ch"}
    assert set(threshold_plan(stats, hi, 4).to_strs().values()) == {"removed"}


def test_density_reproduces_the_kept_count_with_a_short_string() -> None:
    rng = np.random.default_rng(0)
    for shape in [(10, 64), (64, 512), (512, 2304), (7, 3, 3, 3)]:
        geom = LayerGeometry("x", "linear", shape, has_bias=False)
        for kept in [1, 2, geom.numel - 1, *rng.integers(1, geom.numel, 50).tolist()]:
            d = density_for(int(kept), geom)
            opt = LayerOption(sparsity="unstructured", density=d, bits=4, granularity="channel")
            assert unstructured_kept(opt, geom.rows, geom.row_len) == kept
            assert LayerOption.from_str(opt.to_str()) == opt
            # the header reserves room for "un0.046875/b8/g128"
            assert len(opt.to_str()) <= len("un0.046875/b8/g128"), opt.to_str()


def test_infeasible_budget_is_refused(dense) -> None:
    model, data = dense
    ctx = context(model, data, 16)
    floor = sum(layer_bytes(LayerOption.from_str("removed"), g).total for g in ctx.geoms)
    ctx.payload_budget = ctx.other_bytes + floor - 1
    with pytest.raises(InfeasibleBudget, match="removing every layer"):
        SQuantizerMethod().propose(ctx)
    k, plan, used = fit_threshold(stats_of(ctx), floor, 4)
    assert used == floor and set(plan.to_strs().values()) == {"removed"}


def test_settings_are_validated() -> None:
    assert SQuantizerSettings.from_dict({"bits": 3}).bits == 3  # type: ignore[attr-defined]
    with pytest.raises(InvalidOption, match="unknown setting"):
        SQuantizerSettings.from_dict({"k": 1.0})
    with pytest.raises(InvalidOption, match="bits"):
        SQuantizerSettings(bits=7)
    with pytest.raises(InvalidOption, match="dense_fraction"):
        SQuantizerSettings(dense_fraction=1.0)


def test_finetune_keeps_k_per_layer_every_step_and_ends_within_exact_bytes(
    dense, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, data = dense
    ctx = context(model, data, 16)
    method = SQuantizerMethod()
    plan = method.propose(ctx)
    assert any(o.sparsity == "unstructured" for o in plan.values())
    cfg = TrainConfig(epochs=3, lr=1e-3, batch_size=64)
    total = cfg.steps(len(data.x_train))
    dense_steps = total // 3

    refreshed: list[tuple[int, int]] = []  # (kept, planned) after every refresh
    masks_moved = []
    original = CompressedWeight.refresh_mask

    def spy(self: CompressedWeight, weight: torch.Tensor) -> None:
        before = None if self.mask is None else self.mask.clone()
        original(self, weight)
        if self.mask is not None:
            planned = kept_count(self.option, self.rows, self.row_len)
            refreshed.append((int(self.mask.sum()), planned))
            masks_moved.append(not torch.equal(before, self.mask))

    monkeypatch.setattr(CompressedWeight, "refresh_mask", spy)
    phases: list[str] = []
    ctx.progress = lambda e: phases.append(e["phase"])
    out = method.finetune(ctx, plan, cfg)
    assert out == plan

    sparse_layers = sum(1 for o in plan.values() if o.is_sparse)
    # refreshed before each compressed step and once after the last one
    assert len(refreshed) == sparse_layers * (total - dense_steps + 1)
    assert all(kept == planned for kept, planned in refreshed)
    assert any(masks_moved)  # the masks follow the weights, they are not frozen
    assert phases[0] == "dense" and phases[-1] == "compressed"

    cws = compressed_weights(ctx.model)
    assert set(cws) == {g.name for g in ctx.geoms}
    exact = 0
    for g in ctx.geoms:
        cw, opt = cws[g.name], plan[g.name]
        pos = None
        if opt.sparsity == "unstructured":
            assert int(cw.mask.sum()) == unstructured_kept(opt, g.rows, g.row_len)
            w = ctx.model.get_submodule(g.name).weight.detach().reshape(g.rows, g.row_len)
            assert (w[~cw.mask] == 0).all()
            pos = position_stream_bytes(g.numel, int(cw.mask.sum()), cw.mask.reshape(-1))
        exact += layer_bytes(opt, g, position_bytes=pos).total
    assert exact <= ctx.layer_budget
    assert evaluate(ctx.model, data)["metric"] > 0.8


def test_registered_by_name() -> None:
    method = get_method("squantizer", {"bits": 3})
    assert isinstance(method, SQuantizerMethod)
    assert method.settings == SQuantizerSettings(bits=3)
