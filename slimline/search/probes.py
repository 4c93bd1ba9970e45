"""Probing: a few short fine-tunes that check the knapsack's plan against its neighbours.

The knapsack adds damages measured (or estimated) one layer at a time, before any training.
That ranks plans well where fine-tuning recovers little, and badly at extreme budgets, where
what matters is the damage fine-tuning cannot win back. On lenet5 at 256x the plan kept half
of conv1 at 2 bits (rated cheap: alone it costs little) and paid for it with the last layer;
fine-tuned for 300 steps it kept 91.99% of the dense accuracy. Doubling the damages of conv1
alone and solving again gives conv1 dense at 4 bits, conv2 at 1 in 16, fc2 at 3 in 16: the
same bytes, 95.27%. Thirty steps of fine-tuning already tell the two apart (51% against 32%
accuracy), while the damages rated them the other way round.

So, after scoring: split the layers into ``groups`` runs in execution order; for each, solve
the knapsack again with that group's damages multiplied by ``factor`` (a plan that spends more
bytes on those layers and takes them from the others); give each distinct plan, the
knapsack's own first, ``steps`` steps of the job's own fine-tuning, and keep the one with the
lowest loss on held-out training examples (never the validation set the job reports). The
first and the last group come first: the layers deployment toolchains keep at higher precision
for good reason. The probes' steps together stay within ``share`` of the job's fine-tuning
steps; groups that do not fit are not probed. Probing is search: it only chooses among plans
within the budget, and each probe starts from the dense weights.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from slimline.search.estimators import LossDeltaEstimator, calibration_examples
from slimline.search.options import Plan
from slimline.search.scoring import Scores
from slimline.search.training import TrainConfig

if TYPE_CHECKING:
    from slimline.search.methods.base import SearchContext
    from slimline.search.methods.constrained import ConstrainedSettings

# the held-out loss a probe is judged by: this many examples (1/8 as many sequences)
PROBE_EXAMPLES = 1024
PROBE_SEED_OFFSET = 4243  # probes draw other batches, and other examples, than the job


@dataclass(frozen=True)
class ProbeResult:
    plan: Plan
    group: list[str]  # the layers whose damages were raised ([] for the knapsack's plan)
    loss: float  # held-out loss after the probe's steps


def layer_groups(names: list[str], groups: int) -> list[list[str]]:
    """``names`` (execution order) in ``groups`` contiguous runs, first and last first."""
    runs = [list(r) for r in np.array_split(np.array(names, dtype=object), groups) if len(r)]
    if len(runs) <= 2:
        return runs
    return [runs[0], runs[-1], *runs[1:-1]]


def alternative_plans(
    scores: Scores, layer_budget: int, groups: int, factor: float, solver: str = "exact"
) -> list[tuple[list[str], Plan]]:
    """The knapsack's plan, then one plan per group with that group's damages times
    ``factor`` (each distinct plan once, in `layer_groups` order)."""
    base = scores.resolve(layer_budget, solver=solver)
    out: list[tuple[list[str], Plan]] = [([], base)]
    for group in layer_groups([ls.name for ls in scores.layers], groups):
        raised = [
            replace(ls, damage=ls.damage * factor) if ls.name in group else ls
            for ls in scores.layers
        ]
        plan = replace(scores, layers=raised).resolve(layer_budget, solver=solver)
        if all(plan != p for _, p in out):
            out.append((group, plan))
    return out


def best(results: list[ProbeResult]) -> ProbeResult:
    """The lowest held-out loss; the knapsack's own plan (first) wins a tie."""
    return min(results, key=lambda r: r.loss)


def run_probes(
    ctx: SearchContext, scores: Scores, cfg: TrainConfig, settings: ConstrainedSettings
) -> dict[str, Any]:
    """Probe the plans around the knapsack's (`alternative_plans`) with the job's fine-tuning
    settings; returns ``{"plan": Plan, "probes": [...], "seconds": s}`` (``plan`` None when
    there was nothing to probe: one distinct plan, or no room for two probes)."""
    from slimline.search.slope import SlopeRun  # imports the trainer only when probing

    t0 = time.perf_counter()
    total = cfg.steps(len(ctx.data.x_train))
    fits = int(settings.probe_share * total) // max(1, settings.probe_steps)
    candidates = alternative_plans(
        scores, ctx.layer_budget, settings.probe_groups, settings.probe_factor, settings.solver
    )[:fits]
    if len(candidates) < 2:
        return {"plan": None, "probes": [], "seconds": time.perf_counter() - t0}
    probe_cfg = replace(cfg, max_steps=settings.probe_steps, seed=cfg.seed + PROBE_SEED_OFFSET)
    judge = LossDeltaEstimator(examples=calibration_examples(ctx.data.task, PROBE_EXAMPLES))

    results = []
    for i, (group, plan) in enumerate(candidates):
        model = copy.deepcopy(ctx.model)  # every probe starts from the dense weights
        SlopeRun(
            model, ctx.geoms, plan, ctx.data, probe_cfg, ctx.finetune,
            teacher=ctx.teacher, device=ctx.device,
        ).run(should_stop=ctx.should_stop)  # fmt: skip
        judge.prepare(model, [], ctx.data, device=ctx.device, seed=ctx.seed + PROBE_SEED_OFFSET)
        results.append(ProbeResult(plan, group, judge.base_loss))
        if ctx.progress is not None:
            ctx.progress({"step": i + 1, "total": len(candidates), "probe_loss": judge.base_loss})
    chosen = best(results)
    return {
        "plan": chosen.plan,
        "probes": [{"raised": r.group, "plan": r.plan.to_strs(), "loss": r.loss} for r in results],
        "seconds": time.perf_counter() - t0,
    }
