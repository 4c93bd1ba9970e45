"""`uniform`: the same option on every layer — what a user picks without slimline.

Among uniform options (every N:M pattern, unstructured densities, dense; 2..8 bits with
per-channel scales, or fp16) whose exact bytes fit, it tries the ``tries`` that use the most
bytes, as a user would try a few recipes, and keeps the one whose compressed model has the
lowest loss on a calibration sample (``tries=1``: simply the most bytes under the budget).
"""

from __future__ import annotations

import copy

from slimline.errors import InfeasibleBudget
from slimline.search.accounting import layer_bytes
from slimline.search.compressed import apply_plan
from slimline.search.estimators import LossDeltaEstimator, calibration_examples
from slimline.search.layers import LayerGeometry
from slimline.search.masks import option_mask
from slimline.search.method_settings import UniformSettings
from slimline.search.methods.base import SearchContext, SearchMethod, register
from slimline.search.options import BITS, DENSITIES, NM_PATTERNS, LayerOption, Plan


def uniform_candidates() -> list[LayerOption]:
    sparsities: list[dict[str, object]] = [{"sparsity": "dense"}]
    sparsities += [{"sparsity": "nm", "n": n, "m": m} for n, m in NM_PATTERNS]
    sparsities += [{"sparsity": "unstructured", "density": d} for d in DENSITIES]
    out = []
    for sp in sparsities:
        for b in BITS:
            gran = {"granularity": "none"} if b == 16 else {"granularity": "channel"}
            out.append(LayerOption(bits=b, **sp, **gran))
    return out


@register
class UniformMethod(SearchMethod):
    name = "uniform"
    settings_cls = UniformSettings
    settings: UniformSettings

    def min_layer_bytes(self, geoms: list[LayerGeometry]) -> int:
        # the position-code bound stands in for the exact (mask-dependent) unstructured cost
        return min(sum(layer_bytes(o, g).total for g in geoms) for o in uniform_candidates())

    def propose(self, ctx: SearchContext) -> Plan:
        costed = []
        for opt in uniform_candidates():
            total = sum(layer_bytes(opt, g).total for g in ctx.geoms)
            costed.append((total, opt))
        costed.sort(key=lambda t: -t[0])
        names = [g.name for g in ctx.geoms]
        fitting: list[Plan] = []
        for bound, opt in costed:
            if len(fitting) >= max(1, self.settings.tries):
                break
            if bound <= ctx.layer_budget or (
                opt.sparsity == "unstructured" and self._exact(ctx, opt) <= ctx.layer_budget
            ):
                fitting.append(Plan.uniform(names, opt))
        if not fitting:
            smallest = costed[-1][0] + ctx.other_bytes
            raise InfeasibleBudget(
                f"the uniform method cannot fit {ctx.payload_budget} payload bytes: its "
                f"smallest uniform plan ({costed[-1][1].to_str()}) needs {smallest} bytes",
                field="budget",
                value=ctx.payload_budget,
            )
        if len(fitting) == 1:
            return fitting[0]
        losses = [self._calibration_loss(ctx, p) for p in fitting]
        self.report["uniform_tried"] = {
            next(iter(p.to_strs().values())): round(v, 5)
            for p, v in zip(fitting, losses, strict=True)
        }
        return fitting[losses.index(min(losses))]

    def _calibration_loss(self, ctx: SearchContext, plan: Plan) -> float:
        model = copy.deepcopy(ctx.model)
        apply_plan(model, plan, ctx.geoms)
        n = calibration_examples(ctx.data.task, self.settings.calibration_examples)
        est = LossDeltaEstimator(examples=n)
        est.prepare(model, ctx.geoms, ctx.data, device=ctx.device, seed=ctx.seed)
        return est.base_loss

    @staticmethod
    def _exact(ctx: SearchContext, opt: LayerOption) -> int:
        """Exact bytes of an unstructured uniform option, from the masks it would pick."""
        total = 0
        for g in ctx.geoms:
            w = ctx.model.get_submodule(g.name).weight.detach().reshape(g.rows, g.row_len)
            total += layer_bytes(opt, g, mask=option_mask(opt, w)).total
        return total
