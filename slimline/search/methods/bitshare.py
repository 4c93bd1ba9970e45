"""`bitshare`: single-path bit sharing (SBS; Liu, Zhuang et al., TPAMI 2023, arXiv 2101.04935).

The search trains a copy of the model whose weights go through the bit-sharing quantizer of
`bitshare_gates`: 2 bits plus gated residuals to 4 and 8 bits, and a 0-bit gate per group of
output channels, under task loss + lambda * log(bytes). The gates it ends with say, per layer, a
width and a kept fraction; the plan is built from them. Then (base class) quantization-aware
fine-tuning of the fixed plan, from the same dense weights every method starts from.

What we do differently from the paper:
  - the cost is the layer's bytes in slimline's accounting, not BOPs;
  - lambda is not a hand-set knob: a root search on log(lambda) (`LambdaBracket`: bisection,
    then secant steps), a few short searches from the same dense start, puts the gated
    configuration's bytes near the budget. Those bytes are exact (positions included) for the
    options nearest the gates, so the lambda search corrects what the search's differentiable
    estimate leaves out;
  - the paper has no hard constraint; we project exactly onto the byte budget with the
    multiple-choice knapsack of `allocation`: each layer may take the option nearest its gated
    configuration or a neighbour (one step more/fewer bits, denser/sparser; or the closest
    options, where the grid holds nothing that near), with damage = the
    Fisher estimate on the searched weights plus a penalty per step away from the gated
    configuration (`distance_penalty` x the mean damage of the gated options). If no plan of
    neighbours fits, the neighbourhood widens, ending at every candidate;
  - slimline has no "some output channels removed" option, so a kept fraction f maps to the
    options that express it: f = 0 -> removed, f = 1 -> dense, otherwise the sparsity level
    (unstructured density or N:M ratio) nearest f in log scale — weights, not channels, go;
  - the widest width is 8 bits; fp16 is reachable only as the projection's "more bits"
    neighbour of 8;
  - the opening search (lambda at the middle of the bracket, whatever the budget) is kept
    between jobs on the same model and data (`gate_search_store`, in the dense-model cache's
    measurements folder): a second budget loads it instead of training it again;
  - when every layer at 8 bits, nothing pruned, already fits, no search runs (it could only
    close gates the budget does not ask to close) and the candidates are scored on the dense
    weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from torch import nn

from slimline.errors import InfeasibleBudget
from slimline.search.accounting import layer_bytes
from slimline.search.estimators import FisherEstimator
from slimline.search.layers import LayerGeometry
from slimline.search.masks import option_mask
from slimline.search.method_settings import BitShareSettings
from slimline.search.methods import gate_search_store
from slimline.search.methods.base import SearchContext, SearchMethod, register
from slimline.search.methods.bitshare_gates import (
    GatedConfig,
    GateSearch,
    OptionGrid,
    within,
)
from slimline.search.options import LayerOption, Plan
from slimline.search.training import Progress

if TYPE_CHECKING:
    from slimline.search.scoring import Scores

# the next lambda stays this share of the (log) bracket away from either end (`LambdaBracket`)
LAMBDA_STEP_MARGIN = 0.1


class ExactBytes:
    """Exact layer bytes of options on the dense weights the plan will be fine-tuned from
    (unstructured position streams from the magnitude masks `CompressedWeight` will pick)."""

    def __init__(self, model: nn.Module, geoms: list[LayerGeometry]) -> None:
        self.weights = {
            g.name: model.get_submodule(g.name).weight.detach().cpu().reshape(g.rows, g.row_len)
            for g in geoms
        }
        self._cache: dict[tuple[str, LayerOption], int] = {}

    def __call__(self, geom: LayerGeometry, option: LayerOption) -> int:
        key = (geom.name, option)
        if key not in self._cache:
            mask = None
            if option.sparsity == "unstructured":
                mask = option_mask(option, self.weights[geom.name])
            self._cache[key] = layer_bytes(option, geom, mask=mask).total
        return self._cache[key]


class LambdaBracket:
    """Where the next gate search's lambda goes. Lambdas that gave bytes over the budget bound
    the bracket from below, those that fit from above (log scale). The first lambda halves the
    bracket; then log bytes are taken as linear in log lambda (the log-bytes penalty makes them
    nearly so): through the last search with slope -1 after one search, the secant of the
    last two after that, aiming at ``target`` bytes; the step is kept inside the bracket,
    `LAMBDA_STEP_MARGIN` of it from either end, so the bracket always shrinks, and a secant
    that does not fall (noise, a collapsed search) bisects instead. On power-law curves of
    bytes against lambda, bisection needs 3-8 searches (100 training steps each) to land in a
    10% window that the secant reaches in 2-4 (tests/search/test_bitshare.py). bytegpt's
    curve is no power law: the bytes fall off a cliff between lambda 0.33 and 0.56 (248 KB to
    29 KB), so at 16x and 32x both take all 5 searches; the secant's came closer to the budget
    (16x: 248 KB against 156 KB for 219 KB; 32x: 149 KB against 156 KB for 110 KB)."""

    def __init__(self, lambda_min: float, lambda_max: float, target: float) -> None:
        self.lo, self.hi = math.log(lambda_min), math.log(lambda_max)
        self.target = math.log(target)
        self.points: list[tuple[float, float]] = []  # (log lambda, log bytes), oldest first

    def next(self) -> float:
        width = self.hi - self.lo
        x = self.lo + width / 2
        if self.points:
            x1, f1 = self.points[-1]
            slope = -1.0
            if len(self.points) > 1:
                x0, f0 = self.points[-2]
                slope = (f1 - f0) / (x1 - x0) if x1 != x0 else 0.0
            if slope < 0:
                x = x1 + (self.target - f1) / slope
            margin = LAMBDA_STEP_MARGIN * width
            x = min(self.hi - margin, max(self.lo + margin, x))
        return math.exp(x)

    def record(self, lam: float, size: int, *, fits: bool) -> None:
        """The search at ``lam`` gave ``size`` bytes, which ``fits`` the budget or not."""
        x = math.log(lam)
        self.points.append((x, math.log(max(size, 1))))
        if fits:
            self.hi = x
        else:
            self.lo = x


# ------------------------------------------------------------------------------ the method
@register
class BitShareMethod(SearchMethod):
    """SBS search and exact projection (`propose`), then the base class's plain QAT.

    After `propose`, `report` holds: ``searches`` (lambda, exact gated bytes and last loss of
    each search), ``lambda`` and ``gated`` (the configuration the plan was projected from),
    ``gated_bytes``, ``radius`` (ladder steps the plan may stray from it; None: any) and the
    seconds of search, scoring and allocation.
    """

    name = "bitshare"
    settings_cls = BitShareSettings
    _estimator: FisherEstimator | None = None  # one per propose (see `score`)

    @property
    def config(self) -> BitShareSettings:
        assert isinstance(self.settings, BitShareSettings)
        return self.settings

    def propose(self, ctx: SearchContext) -> Plan:
        from slimline.search.scoring import candidate_options

        t0 = time.perf_counter()
        exact = ExactBytes(ctx.model, ctx.geoms)
        grids = {g.name: OptionGrid(candidate_options(g)) for g in ctx.geoms}

        def gated_bytes(configs: dict[str, GatedConfig]) -> int:
            return sum(exact(g, grids[g.name].nearest(configs[g.name])) for g in ctx.geoms)

        self.report = {"searches": [], "scores_seconds": 0.0, "allocation_seconds": 0.0}
        self._estimator = None
        widest = {g.name: GatedConfig(bits=8, kept=1.0) for g in ctx.geoms}
        if gated_bytes(widest) <= ctx.layer_budget:
            configs, searched = widest, ctx.model  # scoring leaves the model unchanged
        else:
            found = self.bisect_lambda(ctx, gated_bytes)
            configs, searched = found.configs, found.model
            self.report["lambda"] = found.lam
        self.report["gated_bytes"] = gated_bytes(configs)
        self.report["gated"] = {n: f"b{c.bits}/kept{c.kept:.3f}" for n, c in configs.items()}
        t1 = time.perf_counter()
        # Score the neighbourhoods first (a fraction of the candidates, so a fraction of the
        # time); only if no plan of neighbours fits, score everything and widen.
        near = {n: grid.near(configs[n], 1) for n, grid in grids.items()}
        try:
            scores = self.score(ctx, searched, near)
            plan = self.project(ctx, scores, grids, configs, exact, radii=(1,))
        except InfeasibleBudget:
            scores = self.score(ctx, searched, {n: grid.options for n, grid in grids.items()})
            plan = self.project(ctx, scores, grids, configs, exact, radii=(2, 4, None))
        self.last_scores = scores
        self.report["search_seconds"] = t1 - t0
        return plan

    def score(
        self, ctx: SearchContext, model: nn.Module, options: dict[str, list[LayerOption]]
    ) -> Scores:
        """Fisher damage of each layer's ``options`` on ``model`` (the searched weights)."""
        from slimline.search.scoring import count_measurements, score_model

        t0 = time.perf_counter()
        if self._estimator is None:  # one for both passes: the second looks up the first's
            self._estimator = FisherEstimator()
        scores = score_model(
            model,
            ctx.geoms,
            ctx.data,
            estimator=self._estimator,
            options=lambda g: options[g.name],
            batches=self.config.calib_batches,
            batch_size=self.config.calib_batch_size,
            device=ctx.device,
            seed=ctx.seed,
        )
        self.report["scores_seconds"] += time.perf_counter() - t0
        count_measurements(self.report, self._estimator)
        return scores

    def bisect_lambda(
        self, ctx: SearchContext, gated_bytes: Callable[[dict[str, GatedConfig]], int]
    ) -> GateSearch:
        """Searches at lambdas chosen on a log scale until the gated bytes land within
        `tolerance` under the budget; returns the search whose bytes came closest to the
        budget in ratio. Closest, not "fullest that fits": past some lambda the search
        collapses (the log penalty's pull grows as the bytes shrink) to nearly every group
        pruned, a configuration that fits but that no projection can repair, while a slight
        overshoot is one neighbour away from fitting.

        Lambdas come from a `LambdaBracket` (bisection, then the secant)."""
        s, budget = self.config, ctx.layer_budget
        bracket = LambdaBracket(s.lambda_min, s.lambda_max, (1 - s.tolerance / 2) * budget)
        total = s.lambda_iters * s.search_steps
        every = max(1, total // 50)
        best: tuple[float, GateSearch] | None = None
        knobs = {
            "steps": s.search_steps,
            "lr": s.lr,
            "gate_lr": s.gate_lr,
            "group_rows": s.group_rows,
            "batch_size": s.batch_size,
            "seed": ctx.seed,
        }
        for i in range(s.lambda_iters):
            lam = bracket.next()
            report = _reporter(ctx.progress, lam, i * s.search_steps, total, every)
            # the opening lambda is the same at every budget: kept between jobs
            found, looked_up = gate_search_store.search_or_load(
                ctx.measurements if i == 0 else None,
                ctx.model,
                ctx.geoms,
                ctx.data,
                lam,
                ctx.device,
                report=report,
                should_stop=ctx.should_stop,
                **knobs,
            )
            size = gated_bytes(found.configs)
            if looked_up and report is not None:
                report(s.search_steps, found.loss, float(size))
            self.report["searches"].append(
                {"lambda": lam, "bytes": size, "loss": found.loss, "looked_up": looked_up}
            )
            miss = abs(math.log(max(size, 1) / budget))
            if best is None or miss < best[0]:
                best = (miss, found)
            bracket.record(lam, size, fits=size <= budget)
            stop = ctx.should_stop is not None and ctx.should_stop()
            if stop or (1 - s.tolerance) * budget <= size <= budget:
                break
        assert best is not None
        return best[1]

    def project(
        self,
        ctx: SearchContext,
        scores: Scores,
        grids: dict[str, OptionGrid],
        configs: dict[str, GatedConfig],
        exact: ExactBytes,
        radii: tuple[int | None, ...],
    ) -> Plan:
        """The least-damage plan within the budget among the scored options at most ``radius``
        ladder steps from each gated configuration (or the closest ones, `within`; see the
        module doc), for the first radius (None: any distance) at which a plan fits."""
        from slimline.search.allocation import allocate

        geoms = {g.name: g for g in ctx.geoms}
        steps = []
        for ls in scores.layers:
            grid = grids[ls.name]
            away = dict(zip(grid.options, grid.steps(configs[ls.name]), strict=True))
            steps.append(np.array([away[o] for o in ls.options], dtype=np.int64).reshape(-1, 2))
        nbytes = [
            np.array([exact(geoms[ls.name], o) for o in ls.options], dtype=np.int64)
            for ls in scores.layers
        ]
        damage = [np.asarray(ls.damage, dtype=np.float64) for ls in scores.layers]
        # the penalty's unit: what the gated options themselves are estimated to cost
        gated = [
            float(d[int(np.argmin(st.sum(axis=1)))]) for d, st in zip(damage, steps, strict=True)
        ]
        unit = [x for x in gated if x > 0] or [float(x) for d in damage for x in d if x > 0]
        ref = float(np.mean(unit)) if unit else 1.0
        for radius in radii:
            keep = [
                np.flatnonzero(within(st, radius if radius is not None else int(st.max())))
                for st in steps
            ]
            penalized = [
                d[k] + self.config.distance_penalty * ref * st[k].sum(axis=1)
                for d, st, k in zip(damage, steps, keep, strict=True)
            ]
            t0 = time.perf_counter()
            try:
                alloc = allocate(
                    [b[k] for b, k in zip(nbytes, keep, strict=True)], penalized, ctx.layer_budget
                )
            except InfeasibleBudget:
                continue
            finally:
                self.report["allocation_seconds"] += time.perf_counter() - t0
            self.report["radius"] = radius
            plan = Plan(
                {
                    ls.name: ls.options[int(k[c])]
                    for ls, k, c in zip(scores.layers, keep, alloc.choice, strict=True)
                }
            )
            total = sum(exact(geoms[n], plan[n]) for n in plan)
            assert total <= ctx.layer_budget, (total, ctx.layer_budget)
            return plan
        floor = sum(int(b.min()) for b in nbytes)
        raise InfeasibleBudget(
            f"bitshare cannot fit {ctx.layer_budget} layer bytes: its smallest plan needs "
            f"{floor} bytes (payload {floor + ctx.other_bytes})",
            field="budget",
            value=ctx.payload_budget,
        )


def _reporter(
    progress: Progress | None, lam: float, offset: int, total: int, every: int
) -> Callable[[int, float, float], None] | None:
    """Progress events of one search, numbered across the whole bisection."""
    if progress is None:
        return None

    def report(step: int, loss: float, cost: float) -> None:
        done = offset + step
        if done % every == 0 or done == total:
            progress({"step": done, "total": total, "loss": loss, "bytes": cost, "lambda": lam})

    return report
