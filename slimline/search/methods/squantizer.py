"""`squantizer`: statistics-aware sparsity, then quantization, in one training pass.

SQuantizer (Park, Xu, Brick, arXiv 1812.08301) prunes each layer at the threshold
t = mean(|W|) + k * std(|W|), quantizes the survivors, and recomputes the mask from the current
weights at every step of a single training pass whose first part (about a third) is dense.
One k for the whole network means each layer is pruned relative to its own spread of weights.

What we do differently:
  - k is not hand-set: one global k is found by bisection so the plan fits the byte budget.
    The bytes are counted with the data-independent upper bound of the unstructured position
    stream (`layer_bytes` without ``position_bytes``): the mask changes every step, so its exact
    Rice length is not known when the plan is made, and the bound holds for every mask.
  - The threshold is turned into our options: a layer becomes unstructured at the density its
    threshold keeps (a short decimal whose `unstructured_kept` is exactly that count), dense at
    the same bit-width when that is no larger in bytes (keeping everything, or so much that the
    position stream costs more than the dropped values), removed when nothing is kept.
  - While training, the mask keeps the top-k magnitudes with k fixed per layer (the planned
    count). At a fixed sparsity this is the same set as the statistics threshold, and it keeps
    the byte accounting exact whatever the weights do.
  - Survivors are quantized by our quantizer (per-channel learned fp16 step sizes, LSQ-style
    straight-through rounding), not uniformly over [t, max|W|]; activations stay float.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from slimline.errors import InfeasibleBudget, SlimlineError
from slimline.search.accounting import layer_bytes, unstructured_kept
from slimline.search.compressed import CompressedWeight, apply_plan
from slimline.search.layers import LayerGeometry
from slimline.search.method_settings import SQuantizerSettings
from slimline.search.methods.base import SearchContext, SearchMethod, register
from slimline.search.options import REMOVED, LayerOption, Plan
from slimline.search.training import TrainConfig, batches, set_training_mode, task_loss

BISECTION_STEPS = 100  # far more than needed: the plan stops changing long before


@dataclass(frozen=True)
class MagnitudeStats:
    """What the threshold of one layer needs: its sorted |W| and their mean and std."""

    geom: LayerGeometry
    sorted_abs: np.ndarray  # float64 [numel], ascending
    mean: float
    std: float  # population std, floored so a constant layer still has a direction

    @classmethod
    def of(cls, geom: LayerGeometry, weight: torch.Tensor) -> MagnitudeStats:
        a = np.sort(weight.detach().abs().double().cpu().numpy().reshape(-1))
        return cls(geom, a, float(a.mean()), max(float(a.std()), 1e-12))

    def kept(self, k: float) -> int:
        """How many weights |W| >= mean + k * std keeps."""
        t = self.mean + k * self.std
        return int(self.sorted_abs.size - np.searchsorted(self.sorted_abs, t, side="left"))

    def k_keeping_all(self) -> float:
        return (float(self.sorted_abs[0]) - self.mean) / self.std - 1.0

    def k_keeping_none(self) -> float:
        return (float(self.sorted_abs[-1]) - self.mean) / self.std + 1.0


def quantized_option(bits: int, **sparsity: object) -> LayerOption:
    gran = "none" if bits == 16 else "channel"
    return LayerOption(bits=bits, granularity=gran, **sparsity)


def density_for(kept: int, geom: LayerGeometry) -> float:
    """The shortest decimal density in (0, 1) whose `unstructured_kept` on ``geom`` is ``kept``.

    Short because the option string goes into the checkpoint header, whose size is reserved
    for a density of a few digits before the plan exists.
    """
    exact = kept / geom.numel
    for places in range(1, 18):
        d = round(exact, places)
        if 0.0 < d < 1.0:
            probe = LayerOption(sparsity="unstructured", density=d, bits=16)
            if unstructured_kept(probe, geom.rows, geom.row_len) == kept:
                return d
    return exact


def option_for_kept(kept: int, geom: LayerGeometry, bits: int) -> LayerOption:
    """The option a threshold keeping ``kept`` weights maps to (see module docstring)."""
    if kept == 0:
        return REMOVED
    dense = quantized_option(bits)
    if kept >= geom.numel:
        return dense
    sparse = quantized_option(bits, sparsity="unstructured", density=density_for(kept, geom))
    if layer_bytes(dense, geom).total <= layer_bytes(sparse, geom).total:
        return dense
    return sparse


def threshold_plan(stats: Sequence[MagnitudeStats], k: float, bits: int) -> Plan:
    """The plan the statistics threshold at global ``k`` gives."""
    return Plan({s.geom.name: option_for_kept(s.kept(k), s.geom, bits) for s in stats})


def bound_bytes(plan: Plan, geoms: Sequence[LayerGeometry]) -> int:
    """Layer bytes of ``plan`` with unstructured positions at their mask-independent bound."""
    return sum(layer_bytes(plan[g.name], g).total for g in geoms)


def fit_threshold(
    stats: Sequence[MagnitudeStats], budget: int, bits: int
) -> tuple[float, Plan, int]:
    """(k, plan, bound bytes) for the smallest global k whose plan fits ``budget``.

    The bytes never grow with k (each layer keeps fewer weights, and an option's bound grows
    with the kept count), so bisection finds the least pruning that fits.
    """
    geoms = [s.geom for s in stats]
    lo = min(s.k_keeping_all() for s in stats)
    hi = max(s.k_keeping_none() for s in stats)
    plan_hi = threshold_plan(stats, hi, bits)
    bytes_hi = bound_bytes(plan_hi, geoms)
    if bytes_hi > budget:
        raise InfeasibleBudget(
            f"squantizer cannot fit {budget} layer bytes: removing every layer still takes "
            f"{bytes_hi} bytes (biases and folded norms)",
            field="budget",
            value=budget,
        )
    plan_lo = threshold_plan(stats, lo, bits)
    bytes_lo = bound_bytes(plan_lo, geoms)
    if bytes_lo <= budget:
        return lo, plan_lo, bytes_lo
    for _ in range(BISECTION_STEPS):  # invariant: plan(lo) over budget, plan(hi) fits
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        plan_mid = threshold_plan(stats, mid, bits)
        if plan_mid == plan_hi:
            hi = mid
            continue
        bytes_mid = bound_bytes(plan_mid, geoms)
        if bytes_mid <= budget:
            hi, plan_hi, bytes_hi = mid, plan_mid, bytes_mid
        else:
            lo = mid
    return hi, plan_hi, bytes_hi


def exact_layer_bytes(
    plan: Plan, geoms: Sequence[LayerGeometry], cws: dict[str, CompressedWeight]
) -> int:
    """Layer bytes of ``plan`` with the position streams of the masks the layers carry now."""
    total = 0
    for g in geoms:
        total += layer_bytes(plan[g.name], g, mask=cws[g.name].mask).total
    return total


def cosine_lr(cfg: TrainConfig, step: int, total: int) -> float:
    """The learning rate `training.train`'s cosine schedule gives at ``step`` of ``total``."""
    lr_min = cfg.lr * cfg.lr_min_ratio
    return lr_min + (cfg.lr - lr_min) * (1.0 + math.cos(math.pi * step / total)) / 2.0


@register
class SQuantizerMethod(SearchMethod):
    name = "squantizer"
    settings_cls = SQuantizerSettings

    def propose(self, ctx: SearchContext) -> Plan:
        s: SQuantizerSettings = self.settings  # type: ignore[assignment]
        stats = [MagnitudeStats.of(g, ctx.model.get_submodule(g.name).weight) for g in ctx.geoms]
        k, plan, _ = fit_threshold(stats, ctx.layer_budget, s.bits)
        self.report["squantizer_k"] = k  # the global threshold multiplier the budget gave
        return plan

    def finetune(self, ctx: SearchContext, plan: Plan, cfg: TrainConfig) -> Plan:
        """SQuantizer's single pass: dense steps, then compressed steps with masks refreshed
        (top-k by magnitude, k fixed per layer) before every step and once at the end.

        One Adam and one cosine schedule span both phases, as in one training run; the scales
        join the optimizer when compression starts.
        """
        s: SQuantizerSettings = self.settings  # type: ignore[assignment]
        model, data = ctx.model, ctx.data
        total = cfg.steps(len(data.x_train)) if cfg.epochs > 0 else 0
        dense_steps = int(total * s.dense_fraction)
        model.to(ctx.device)
        set_training_mode(model, True)
        opt = torch.optim.Adam(
            [p for p in model.parameters() if p.requires_grad],
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
        )
        cws: dict[str, CompressedWeight] | None = None
        report_every = max(1, total // 50)
        for step, (x, y) in enumerate(batches(data, cfg.batch_size, cfg.seed)):
            if step >= total or (ctx.should_stop is not None and ctx.should_stop()):
                break
            if cws is None and step >= dense_steps:
                cws = apply_plan(model, plan, ctx.geoms)
                steps = [cw.step for cw in cws.values() if cw.step is not None]
                if steps:
                    opt.add_param_group({"params": steps})
            if cws is not None:
                _refresh_masks(model, cws)
            for group in opt.param_groups:
                group["lr"] = cosine_lr(cfg, step, total)
            x, y = x.to(ctx.device), y.to(ctx.device)
            loss = task_loss(data.task, model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ctx.progress and (step % report_every == 0 or step == total - 1):
                phase = "dense" if cws is None else "compressed"
                loss_value = float(loss.detach())
                ctx.progress({"step": step + 1, "total": total, "loss": loss_value, "phase": phase})
        set_training_mode(model, False)
        if cws is None:  # no compressed step ran (no steps, or stopped early)
            cws = apply_plan(model, plan, ctx.geoms)
        _refresh_masks(model, cws)  # the deployed mask is the threshold of the final weights
        used = exact_layer_bytes(plan, ctx.geoms, cws)
        if used > ctx.layer_budget:
            raise SlimlineError(
                f"squantizer ended fine-tuning at {used} layer bytes, over the {ctx.layer_budget} "
                "byte allowance; this is a bug in the method, please report it",
                field="method",
            )
        return plan


def _refresh_masks(model: torch.nn.Module, cws: dict[str, CompressedWeight]) -> None:
    for name, cw in cws.items():
        cw.refresh_mask(model.get_submodule(name).parametrizations["weight"].original)
