"""bitshare: the bit-sharing quantizer, its gates, the search and plans on the byte budget."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from torch import nn

from slimline.errors import InvalidOption
from slimline.search.accounting import layer_bytes, layer_options, plan_bytes
from slimline.search.compressed import apply_plan
from slimline.search.layers import find_layers
from slimline.search.method_settings import BitShareSettings
from slimline.search.methods import SearchContext, get_method
from slimline.search.methods.bitshare import LambdaBracket
from slimline.search.methods.bitshare_gates import (
    BitShareWeight,
    GatedConfig,
    OptionGrid,
    discretize,
    gate_ste,
    search_gates,
    share_bits,
)
from slimline.search.options import REMOVED, LayerOption, Plan
from slimline.search.position_codes import position_stream_bytes
from slimline.search.scoring import candidate_options
from tests.search.conftest import digits_context

ONE, ZERO = torch.tensor(1.0), torch.tensor(0.0)


# ------------------------------------------------------------------------------ quantizer
def test_both_gates_open_is_8_bit_quantization_of_z() -> None:
    z = torch.rand(10_000, generator=torch.Generator().manual_seed(0))
    z_hat = share_bits(z, ONE, ONE)
    assert (z_hat - z).abs().max() <= 1 / (2 * 255) + 1e-6
    codes = z_hat * 255
    assert torch.allclose(codes, codes.round(), atol=1e-4)  # on the 8-bit grid


def test_closed_gates_give_exactly_the_coarser_grids() -> None:
    z = torch.rand(10_000, generator=torch.Generator().manual_seed(1))
    assert torch.equal(share_bits(z, ZERO, ONE), discretize(z, 1 / 3))
    assert torch.equal(share_bits(z, ZERO, ZERO), discretize(z, 1 / 3))
    four = share_bits(z, ONE, ZERO)
    assert (four - z).abs().max() <= 1 / 30 + 1e-6
    assert torch.allclose(four * 15, (four * 15).round(), atol=1e-4)


def test_gradients_reach_clip_thresholds_and_weights() -> None:
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(8, 12) * 0.1)
    q = BitShareWeight(w.detach(), group_rows=4)
    target = torch.randn(8, 12)
    loss = ((q(w) - target) ** 2).sum()
    geom = find_layers(nn.Sequential(nn.Linear(12, 8)))[0]
    (loss + torch.log(q.expected_bytes(geom))).backward()
    for name, grad in [
        ("w", w.grad),
        ("v", q.v.grad),
        ("alpha4", q.alpha4.grad),
        ("alpha8", q.alpha8.grad),
        ("alpha_p", q.alpha_p.grad),
    ]:
        assert grad is not None and torch.isfinite(grad).all(), name
        assert grad.abs().sum() > 0, name


def test_gate_is_hard_forward_and_sigmoid_backward() -> None:
    a = torch.tensor([0.1, 0.4, 0.6, 2.0], requires_grad=True)
    alpha = torch.tensor(0.5, requires_grad=True)
    g = gate_ste(a, alpha)
    assert g.tolist() == [0.0, 0.0, 1.0, 1.0]
    da, dalpha = torch.autograd.grad(g.sum(), [a, alpha])
    sig = torch.sigmoid(a.detach() - 0.5)
    slope = sig * (1 - sig)
    assert torch.allclose(da, slope)
    assert torch.allclose(dalpha, -slope.sum())


def test_expected_bytes_follow_the_accounting() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(40, 12)
    geom = find_layers(nn.Sequential(layer))[0]
    q = BitShareWeight(layer.weight.detach(), group_rows=4)

    def cost() -> float:
        q(layer.weight.detach())
        return float(q.expected_bytes(geom).detach())

    def option(bits: int) -> int:
        return layer_bytes(LayerOption(bits=bits, granularity="channel"), geom).total

    assert cost() == option(8)
    assert q.config(layer.weight.detach()) == GatedConfig(bits=8, kept=1.0)
    with torch.no_grad():
        q.alpha8.fill_(2.0)  # above any normalised residual: the 8-bit gate closes
    assert cost() == option(4)
    assert q.config(layer.weight.detach()).bits == 4
    with torch.no_grad():
        q.alpha4.fill_(2.0)
    assert cost() == option(2)
    with torch.no_grad():
        q.alpha_p.fill_(2.0)  # every group pruned: the bias is all that is left
    assert cost() == layer_bytes(REMOVED, geom).total
    assert q.config(layer.weight.detach()) == GatedConfig(bits=2, kept=0.0)
    assert torch.count_nonzero(q(layer.weight.detach())) == 0


def test_kept_fraction_maps_to_removed_dense_or_nearest_density() -> None:
    geom = find_layers(nn.Sequential(nn.Linear(64, 32)))[0]
    grid = OptionGrid(layer_options(geom))
    assert grid.nearest(GatedConfig(bits=4, kept=0.0)) == REMOVED
    assert grid.nearest(GatedConfig(bits=4, kept=1.0)) == LayerOption(bits=4, granularity="channel")
    assert grid.nearest(GatedConfig(bits=2, kept=0.3)) == LayerOption(
        sparsity="unstructured", density=0.25, bits=2, granularity="channel"
    )
    steps = grid.steps(GatedConfig(bits=4, kept=1.0))
    fp16 = grid.options.index(LayerOption())
    assert steps[fp16].tolist() == [0, 4]  # same level; 4 -> 5 -> 6 -> 8 -> 16 bits


def test_a_gated_point_with_no_option_on_it_still_has_neighbours() -> None:
    # low densities come at 2-4 bits only: 8 bits with 1/16 kept is 3 width steps from them
    geom = find_layers(nn.Sequential(nn.Linear(512, 64)))[0]
    grid = OptionGrid(candidate_options(geom))  # bitshare's candidates
    cfg = GatedConfig(bits=8, kept=0.0625)
    closest = int(grid.steps(cfg).max(axis=1).min())
    assert closest > 1
    near = grid.near(cfg, 1)
    assert near and grid.nearest(cfg) in near  # before, none: the search crashed on it
    assert len(near) < len(grid.options) // 4  # a neighbourhood, not every candidate
    assert len(grid.near(cfg, closest)) == len(near)  # as close as the closest, no closer


def test_settings_are_validated_and_round_trip() -> None:
    method = get_method("bitshare", {"search_steps": 10, "lambda_iters": 2})
    assert isinstance(method.settings, BitShareSettings)
    assert BitShareSettings.from_dict(method.settings.to_dict()) == method.settings
    with pytest.raises(InvalidOption, match="lambda_max"):
        BitShareSettings(lambda_min=1.0, lambda_max=0.5)
    with pytest.raises(InvalidOption, match="group_rows"):
        get_method("bitshare", {"group_rows": 0})


# ------------------------------------------------------------------------ the lambda bracket
def _searches_to_land(
    bracket: LambdaBracket, size_of: Any, budget: float, most: int = 12
) -> tuple[list[tuple[float, int]], list[float]]:
    """Drive the bracket against ``size_of(lambda)`` until the bytes land in [0.9, 1] budget;
    the (lambda, bytes) tried and the bracket's (log) width after each."""
    tried, widths = [], []
    for _ in range(most):
        lam = bracket.next()
        assert math.exp(bracket.lo) < lam < math.exp(bracket.hi)  # strictly inside
        size = size_of(lam)
        tried.append((lam, size))
        bracket.record(lam, size, fits=size <= budget)
        widths.append(bracket.hi - bracket.lo)
        if 0.9 * budget <= size <= budget:
            break
    return tried, widths


@pytest.mark.parametrize("slope", [0.3, 1.0, 2.5])
@pytest.mark.parametrize("at", [0.003, 0.2, 3.0])  # the lambda that gives the budget
def test_the_secant_lands_in_the_window_in_few_searches(slope: float, at: float) -> None:
    # gated bytes fall as a power of lambda (log-linear), as the log-bytes penalty makes them
    budget = 30_000.0

    def size_of(lam: float) -> int:
        return int(0.95 * budget * (lam / at) ** -slope)

    tried, _ = _searches_to_land(LambdaBracket(1e-3, 10.0, 0.95 * budget), size_of, budget)
    assert 0.9 * budget <= tried[-1][1] <= budget, tried
    assert len(tried) <= 4, tried
    # plain bisection on the same curve needs at least as many searches
    bisect = LambdaBracket(1e-3, 10.0, 0.95 * budget)
    bisect.next = lambda: math.exp((bisect.lo + bisect.hi) / 2)  # type: ignore[method-assign]
    assert len(_searches_to_land(bisect, size_of, budget)[0]) >= len(tried)


def test_the_bracket_shrinks_on_a_curve_that_is_not_monotone() -> None:
    # the search collapses past some lambda: the bytes drop to almost nothing
    def size_of(lam: float) -> int:
        return 100 if lam > 0.5 else int(10_000 * lam**-0.5)

    bracket = LambdaBracket(1e-3, 10.0, 0.95 * 30_000)
    tried, widths = _searches_to_land(bracket, size_of, 30_000.0, most=8)
    assert all(b < a for a, b in zip(widths, widths[1:], strict=False)), widths
    assert 0.9 * 30_000 <= tried[-1][1] <= 30_000, tried  # lands before the collapse


# ------------------------------------------------------------------- on digits-cnn, for real
HEADER_SLACK = 1000
QUICK = {"search_steps": 60, "lambda_iters": 4}  # shorter than the defaults, same code paths


@pytest.fixture(scope="module")
def digits(dense_digits: tuple[nn.Module, Any]) -> tuple[nn.Module, Any]:
    return dense_digits


def _ctx(model: nn.Module, data: Any, ratio: int, **kw: Any) -> SearchContext:
    return digits_context(model, data, ratio, **kw)


def _exact_layer_bytes(model: nn.Module, ctx: SearchContext, plan: Plan) -> int:
    """Layer bytes from the masks fine-tuning will start with (a parametrized copy)."""
    work = copy.deepcopy(model)
    cws = apply_plan(work, plan, ctx.geoms)
    pos = {}
    for g in ctx.geoms:
        mask = cws[g.name].mask
        if plan[g.name].sparsity == "unstructured":
            assert mask is not None
            pos[g.name] = position_stream_bytes(g.numel, int(mask.sum()), mask.reshape(-1))
    return plan_bytes(plan, ctx.geoms, 0, 0, position_bytes=pos).payload


@pytest.mark.slow
def test_plans_fit_8x_16x_32x_exactly_and_leave_the_model_alone(digits: Any) -> None:
    model, data = digits
    before = copy.deepcopy(model.state_dict())
    for ratio in (8, 16, 32):
        events: list[dict[str, Any]] = []
        ctx = _ctx(model, data, ratio, progress=events.append)
        method = get_method("bitshare", QUICK)
        plan = method.propose(ctx)
        assert set(plan) == {g.name for g in ctx.geoms}
        assert _exact_layer_bytes(model, ctx, plan) <= ctx.layer_budget, ratio
        # at these ratios 8 bits everywhere does not fit: the search ran and reported
        assert method.report["searches"], ratio
        assert events and {"step", "total", "loss", "bytes", "lambda"} <= set(events[-1])
        steps = [e["step"] for e in events]
        assert steps == sorted(steps) and steps[-1] <= events[-1]["total"]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
def test_larger_lambda_gives_fewer_bytes(digits: Any) -> None:
    model, data = digits
    geoms = find_layers(model)
    sizes = []
    for lam in (0.01, 0.1, 1.0):
        found = search_gates(
            model, geoms, data, lam, steps=100, lr=1e-3, gate_lr=1e-2, group_rows=4, batch_size=64
        )
        sizes.append(
            sum(found.configs[g.name].kept * g.numel * found.configs[g.name].bits for g in geoms)
        )
    assert sizes[0] > sizes[1] > sizes[2], sizes


def test_a_generous_budget_needs_no_search(digits: Any) -> None:
    model, data = digits
    ctx = _ctx(model, data, 3)  # 8 bits everywhere is about 4x
    method = get_method("bitshare")
    plan = method.propose(ctx)
    assert method.report["searches"] == []
    assert _exact_layer_bytes(model, ctx, plan) <= ctx.layer_budget


def test_a_stop_request_still_gives_a_plan_within_budget(digits: Any) -> None:
    model, data = digits
    ctx = _ctx(model, data, 16, should_stop=lambda: True)
    method = get_method("bitshare")
    plan = method.propose(ctx)
    assert len(method.report["searches"]) == 1  # stopped before its first step
    assert _exact_layer_bytes(model, ctx, plan) <= ctx.layer_budget
