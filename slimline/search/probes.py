"""Probing: a few short fine-tunes that check the knapsack's plan against its neighbours.

The knapsack adds damages measured (or estimated) one layer at a time, before any training.
That ranks plans well where fine-tuning recovers little, and badly at extreme budgets, where
what matters is the damage fine-tuning cannot win back. On lenet5 at 256x the plan kept half
of conv1 at 2 bits (rated cheap: alone it costs little) and paid for it with the last layer;
fine-tuned for 300 steps it kept 91.99% of the dense accuracy. Doubling the damages of conv1
alone and solving again gives conv1 dense at 4 bits, conv2 at 1 in 16, fc2 at 3 in 16: the
same bytes, 95.27%. Thirty steps of fine-tuning already tell the two apart (51% against 32%
accuracy), while the damages rated them the other way round.

The ranking errs in two ways that fine-tuning shows. Unstructured sparsity at high sparsity
looks worse before training than it is after: magnitude pruning removes much at first, and
the free positions (re-picked while the masks warm up) let training win most of it back, as
pruning with retraining does (Han et al. 2015); N:M at 2 bits recovers less. lenet5 conv2 at 1
in 16 unstructured was rated 6x worse than 1:8 and was equal after 300 steps; lenet300 at 24x
took fc1 at 2:8 / 2 bits (rated 0.11 against 0.30 for 1 in 8 unstructured) and kept 99.34%,
where fc1 at 3 in 16 unstructured keeps 99.84%. And some layers matter more after training
than alone. It also errs the other way where sparsity and low precision meet in many layers
at once: each layer's damage is measured alone, while their effects compound (the SLOPE
paper's point about masking and quantizing naively); at bytegpt 24x the plan with every sparse
option's damage doubled kept 91.31% where the knapsack's kept 90.18% (its 30-step probe loss
2.021 against 2.095).

So, after scoring, the knapsack is solved again with every sparse option's damage (N:M,
unstructured, removed) times ``factor``, then with every unstructured option's damage
divided by ``factor``, and, the layers split into ``groups`` contiguous runs (first and last
first: the layers deployment toolchains keep at higher precision for good reason), once with
each group's damages times ``factor``, then the knapsack's plan with its largest layer
moved, in place, to its least-damage unstructured option of no more bytes (no re-weighting
reaches that one: the knapsack then buys that layer more bits and starves the others; at
lenet300 24x it kept 99.79% where the knapsack's 2:8 kept 99.33%), then with the largest
layer's damages divided by ``factor`` (fine-tuning wins back most where there are the most
weights; at lenet300 64x it gave fc1 fewer bytes and fc2 more: 98.28% against 98.17% after
300 steps; after the default 10 epochs 99.62% against 99.77%, 14 of 10,000 test images,
where seeds alone move the former plan by 0.10, and 60- and 120-step probes rank it first
too). Where the damages are so far apart that these re-weightings give back plans already
listed, the largest layer is held below, then above, its bytes in the knapsack's plan (only
its options of fewer, or more, bytes) and the knapsack solved again for the rest (lenet300
64x with seed 4: five of seven candidates repeated the first two and the knapsack's plan,
probed 0.52, was kept, 97.86%; fc1 held below its bytes probed 0.26 and kept 98.26%;
over seeds 0-4, 98.21% against 98.12%). Each distinct plan, the knapsack's own first, gets
``steps`` steps of the job's own fine-tuning from the dense weights, and the one with the
lowest loss on a fixed sample of training examples (its own seed; never the validation set
the job reports) is fine-tuned in full. The probes' steps together stay within ``share`` of
the job's fine-tuning steps; candidates that do not fit are not probed (the last ones first,
so the last few only where the others repeat plans). Every candidate but the in-place one is
an exact knapsack solution; that one has no more bytes than the knapsack's: all fit.

Probing is also held to time (`ProbeClock`): scoring and probing together stay within
``search_share`` of the job's fine-tuning time, which the first probe's pace (seconds a step)
estimates. When, a few steps into the first probe, two probes would not fit beside what scoring
took, probing stops there and the knapsack's plan is fine-tuned (bytegpt at 16x with its
one-epoch recipe: 51.5 s of scoring, and two probes would have made it 74.7 s against the
69.5 s a quarter of about 278 s of fine-tuning allows); a later probe is started only if it
fits. How many plans a job probes then depends on the machine's speed; the
report says how many were and why it stopped, and a resumed job reads the choice
(``probes.json``). ``search_share`` None: no time limit (the benchmark suite, where no method's
search is).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from slimline.search.estimators import LossDeltaEstimator, calibration_examples
from slimline.search.options import Plan
from slimline.search.scoring import LayerScores, Scores
from slimline.search.training import TrainConfig

if TYPE_CHECKING:
    from slimline.search.method_settings import ConstrainedSettings
    from slimline.search.methods.base import SearchContext

# a probe is judged by its loss on this many training examples (1/8 as many sequences)
PROBE_EXAMPLES = 1024
PROBE_SEED_OFFSET = 4243  # probes draw other batches, and other examples, than the job


PACE_STEPS = 5  # steps of the first probe after which its pace decides whether two probes fit


class ProbeClock:
    """Holds probing to ``share`` of the fine-tuning time: ``spent`` seconds of search so far
    (scoring, allocation), ``total`` steps of fine-tuning, at the pace (seconds a step) the
    first probe shows. ``share`` None: no limit. ``now`` is the clock (a fake one in tests).

    `poll` is the first probe's ``should_stop``: it notes when each step starts and, once
    `PACE_STEPS` steps are done, stops the probe when two probes would not fit. `fits_another`
    is asked before every later probe, with the mean probe's seconds.
    """

    def __init__(
        self,
        share: float | None,
        spent: float,
        total: int,
        probe_steps: int,
        now: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.share, self.spent, self.total, self.probe_steps = share, spent, total, probe_steps
        self.now = now
        self.started = now()
        self.polls: list[float] = []  # when each step of the first probe started
        self.stopped: str | None = None  # why probing stopped early, for the report

    @property
    def pace(self) -> float | None:
        """Seconds a training step, from the first probe's steps after its first (which
        carries the set-up); None before two polls."""
        if len(self.polls) >= 3:
            return (self.polls[-1] - self.polls[1]) / (len(self.polls) - 2)
        if len(self.polls) == 2:
            return self.polls[1] - self.polls[0]
        return None

    def allowance(self) -> float | None:
        """Seconds of search the job allows: ``share`` of ``total`` steps at the pace."""
        pace = self.pace
        return None if self.share is None or pace is None else self.share * self.total * pace

    def poll(self) -> bool:
        """``should_stop`` of the first probe: True once it is clear two probes do not fit."""
        self.polls.append(self.now())
        allowed, pace = self.allowance(), self.pace
        if allowed is None or pace is None or len(self.polls) <= PACE_STEPS:
            return False
        needed = self.spent + 2 * self.probe_steps * pace
        if needed > allowed:
            self.stopped = (
                f"two probes need about {needed:.1f}s of search with scoring's {self.spent:.1f}s;"
                f" search_share {self.share:g} of about {self.total * pace:.1f}s of fine-tuning"
                f" ({self.total} steps) allows {allowed:.1f}s"
            )
            return True
        return False

    def fits_another(self, probes_done: int) -> bool:
        """Whether one more probe, as long as the mean one so far, stays within the
        allowance; notes why not."""
        allowed = self.allowance()
        if allowed is None or probes_done == 0:
            return True
        probing = self.now() - self.started
        if self.spent + probing * (probes_done + 1) / probes_done <= allowed:
            return True
        plans = f"{probes_done} plan{'s' if probes_done > 1 else ''}"
        self.stopped = (
            f"after {plans}: one more needs about {probing / probes_done:.1f}s beyond"
            f" {self.spent + probing:.1f}s of search; search_share {self.share:g} allows"
            f" {allowed:.1f}s"
        )
        return False


@dataclass(frozen=True)
class ProbeResult:
    plan: Plan
    change: str  # how its damages differ from the knapsack's: "knapsack", "unstructured / 2"...
    loss: float  # loss on the judging sample after the probe's steps


def layer_groups(names: list[str], groups: int) -> list[list[str]]:
    """``names`` (execution order) in ``groups`` contiguous runs, first and last first."""
    runs = [list(r) for r in np.array_split(np.array(names, dtype=object), groups) if len(r)]
    if len(runs) <= 2:
        return runs
    return [runs[0], runs[-1], *runs[1:-1]]


def alternative_plans(
    scores: Scores, layer_budget: int, groups: int, factor: float, solver: str = "exact"
) -> list[tuple[str, Plan]]:
    """``(change, plan)``: the knapsack's plan; the plan with every sparse option's damage
    times ``factor``; with every unstructured option's damage divided by ``factor``; then one
    plan per group of layers with that group's damages times ``factor`` (`layer_groups`
    order); then the knapsack's plan with its largest layer unstructured in place
    (`_unstructured_in_place`); last, the plan with the largest layer's damages divided by
    ``factor``. Each distinct plan once. Joint removals (`Scores.joints`) keep their damages."""
    out: list[tuple[str, Plan]] = [("knapsack", scores.resolve(layer_budget, solver=solver))]

    def keep(change: str, plan: Plan) -> None:
        if all(plan != p for _, p in out):
            out.append((change, plan))

    def add(change: str, layers: list[LayerScores]) -> None:
        keep(change, replace(scores, layers=layers).resolve(layer_budget, solver=solver))

    add(
        f"sparse x {factor:g}",
        [
            replace(ls, damage=np.where(_sparse(ls), ls.damage * factor, ls.damage))
            for ls in scores.layers
        ],
    )
    add(
        f"unstructured / {factor:g}",
        [
            replace(ls, damage=np.where(_unstructured(ls), ls.damage / factor, ls.damage))
            for ls in scores.layers
        ],
    )
    for group in layer_groups([ls.name for ls in scores.layers], groups):
        add(
            f"{_span(group)} x {factor:g}",
            [replace(ls, damage=ls.damage * factor) if ls.name in group else ls
             for ls in scores.layers],
        )  # fmt: skip
    # the knapsack's plan with the layer of the most bytes swapped, in place, to its
    # least-damage unstructured option of no more bytes: the damages rate unstructured
    # sparsity at few bits worst before training (`_unstructured`), so no re-weighting of them
    # alone reaches this neighbour (lenet300 24x: fc1 at 2:8 / 2 bits probed 0.037; 3 in 16 /
    # 2 bits with the rest unchanged 0.015, and kept 99.79% against 99.33% after 300 steps)
    swapped = _unstructured_in_place(scores, out[0][1])
    if swapped is not None:
        keep(*swapped)
    # and the other way round from "<group> x factor": the largest layer's damages divided, as
    # fine-tuning recovers most where there are the most weights (lenet300 64x: fc1 at 1 in
    # 32 and fc2 at 2:4, both 2 bits, fc3 dense at 3 bits probed 0.24 against 0.35 for the
    # best re-weighting before it, and kept 98.28% against 98.17% after 300 steps)
    big = _largest(scores)
    add(
        f"{big.name} / {factor:g}",
        [replace(ls, damage=ls.damage / factor) if ls is big else ls for ls in scores.layers],
    )
    # and where the re-weightings give back plans already listed (their damages apart by more
    # than ``factor``), the largest layer held below, then above, its bytes in the knapsack's
    # plan, the rest re-solved for what that leaves (lenet300 64x, seed 4: five of
    # seven candidates repeated the first two, and the knapsack's plan, probed 0.52, was kept)
    for fewer in (True, False):
        limited = _largest_limited(scores, out[0][1], fewer)
        # fewer bytes always fit (the rest as the knapsack had it); more may leave the others
        # no room at all
        if limited is not None and limited.min_bytes() <= layer_budget:
            keep(f"{big.name} {'fewer' if fewer else 'more'} bytes",
                 limited.resolve(layer_budget, solver=solver))  # fmt: skip
    return out


def _largest(scores: Scores) -> LayerScores:
    """The layer of the most bytes at its widest option (the first of equals)."""
    return max(scores.layers, key=lambda ls: int(ls.bytes.max()))


def _largest_limited(scores: Scores, plan: Plan, fewer: bool) -> Scores | None:
    """``scores`` with the largest layer's options limited to those of fewer (``fewer``) or
    more bytes than it has in ``plan``, joints naming the others dropped; None where there are
    none or that layer is tied to others (`Scores.groups`)."""
    big = _largest(scores)
    if any(big.name in g for g in scores.groups if len(g) > 1):
        return None
    now = big.bytes[big.options.index(plan[big.name])]
    kept = np.flatnonzero(big.bytes < now if fewer else big.bytes > now)
    if not len(kept):
        return None
    names = {big.options[i].to_str() for i in kept}
    limited = replace(
        big, options=[big.options[i] for i in kept], bytes=big.bytes[kept], damage=big.damage[kept]
    )
    joints = [
        jt for jt in scores.joints
        if all(o in names for n, o in zip(jt.layers, jt.options, strict=True) if n == big.name)
    ]  # fmt: skip
    layers = [limited if ls is big else ls for ls in scores.layers]
    return replace(scores, layers=layers, joints=joints)


def _unstructured_in_place(scores: Scores, plan: Plan) -> tuple[str, Plan] | None:
    """``plan`` with its largest layer (most bytes at its widest option) at that layer's
    least-damage unstructured option of no more bytes than the plan's; None where that layer
    is unstructured already, has no such option, or is tied to others (`Scores.groups`)."""
    big = _largest(scores)
    if any(big.name in g for g in scores.groups if len(g) > 1):
        return None
    now = big.options.index(plan[big.name])
    unstructured = _unstructured(big)
    fits = unstructured & (big.bytes <= big.bytes[now])
    if unstructured[now] or not fits.any():
        return None
    pick = int(np.flatnonzero(fits)[np.argmin(big.damage[fits])])
    return f"{big.name} unstructured", Plan({**plan, big.name: big.options[pick]})


def _sparse(ls: LayerScores) -> np.ndarray:
    return np.array([o.sparsity != "dense" for o in ls.options], dtype=bool)


def _unstructured(ls: LayerScores) -> np.ndarray:
    return np.array([o.sparsity == "unstructured" for o in ls.options], dtype=bool)


def _span(group: list[str]) -> str:
    return group[0] if len(group) == 1 else f"{group[0]}..{group[-1]}"


def best(results: list[ProbeResult]) -> ProbeResult:
    """The lowest loss; the knapsack's own plan (first) wins a tie."""
    return min(results, key=lambda r: r.loss)


def run_probes(
    ctx: SearchContext,
    scores: Scores,
    cfg: TrainConfig,
    settings: ConstrainedSettings,
    spent: float = 0.0,
) -> dict[str, Any]:
    """Probe the plans around the knapsack's (`alternative_plans`) with the job's fine-tuning
    settings, within ``settings.search_share`` of the fine-tuning time beside the ``spent``
    seconds of scoring (`ProbeClock`); returns ``{"plan": Plan, "probes": [...], "seconds":
    s, "stopped": why or None, "dense_loss": the dense model's loss on the probes' sample, None
    where nothing was probed}`` (``plan`` None when there was nothing to choose from: one
    distinct plan, no room for two probes in ``probe_share`` of the steps, or no time for two).
    """
    from slimline.search.slope import SlopeRun  # imports the trainer only when probing

    t0 = time.perf_counter()
    total = cfg.steps(len(ctx.data.x_train))
    fits = int(settings.probe_share * total) // max(1, settings.probe_steps)
    candidates = alternative_plans(
        scores, ctx.layer_budget, settings.probe_groups, settings.probe_factor, settings.solver
    )[:fits]
    if len(candidates) < 2:
        return {"plan": None, "probes": [], "seconds": time.perf_counter() - t0, "stopped": None}
    probe_cfg = replace(cfg, max_steps=settings.probe_steps, seed=cfg.seed + PROBE_SEED_OFFSET)
    judge = LossDeltaEstimator(examples=calibration_examples(ctx.data.task, PROBE_EXAMPLES))
    clock = ProbeClock(settings.search_share, spent, total, settings.probe_steps)
    cancelled = ctx.should_stop or (lambda: False)

    def first_should_stop() -> bool:  # the first probe also shows the pace
        return cancelled() or clock.poll()

    results = []
    # the global RNG (dropout) is left as it was: the job's fine-tuning does not depend on
    # how many probes ran, which the machine's speed decides
    cuda = [ctx.device.index or 0] if ctx.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        for i, (change, plan) in enumerate(candidates):
            if not clock.fits_another(i):
                break
            model = copy.deepcopy(ctx.model)  # every probe starts from the dense weights
            SlopeRun(
                model, ctx.geoms, plan, ctx.data, probe_cfg, ctx.finetune,
                teacher=ctx.teacher, device=ctx.device,
            ).run(should_stop=first_should_stop if i == 0 else cancelled)  # fmt: skip
            if clock.stopped is not None or cancelled():
                break
            seed = ctx.seed + PROBE_SEED_OFFSET
            judge.prepare(model, [], ctx.data, device=ctx.device, seed=seed)
            results.append(ProbeResult(plan, change, judge.base_loss))
            if ctx.progress is not None:
                event = {"step": i + 1, "total": len(candidates), "probe_loss": judge.base_loss}
                ctx.progress(event)
    chosen = best(results) if len(results) >= 2 else None
    dense_loss = None
    if results and not cancelled():  # the dense model on the same sample: the probes' floor
        judge.prepare(ctx.model, [], ctx.data, device=ctx.device, seed=ctx.seed + PROBE_SEED_OFFSET)
        dense_loss = judge.base_loss
    return {
        "plan": None if chosen is None else chosen.plan,
        "probes": [{"change": r.change, "plan": r.plan.to_strs(), "loss": r.loss} for r in results],
        "dense_loss": dense_loss,
        "seconds": time.perf_counter() - t0,
        "stopped": clock.stopped,
    }
