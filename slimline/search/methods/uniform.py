"""`uniform`: the same option on every layer — what a user picks without slimline.

Among uniform options (every N:M pattern, unstructured densities, dense; 2..8 bits with
per-channel scales, or fp16) it takes the least-compressing one whose exact bytes fit: the
most bytes under the budget, which on a plain recipe usually means the least damage.
"""

from __future__ import annotations

from slimline.errors import InfeasibleBudget
from slimline.search.accounting import layer_bytes
from slimline.search.layers import LayerGeometry
from slimline.search.masks import option_mask
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

    def min_layer_bytes(self, geoms: list[LayerGeometry]) -> int:
        # the position-code bound stands in for the exact (mask-dependent) unstructured cost
        return min(sum(layer_bytes(o, g).total for g in geoms) for o in uniform_candidates())

    def propose(self, ctx: SearchContext) -> Plan:
        costed = []
        for opt in uniform_candidates():
            total = sum(layer_bytes(opt, g).total for g in ctx.geoms)
            costed.append((total, opt))
        costed.sort(key=lambda t: -t[0])
        for bound, opt in costed:
            if bound <= ctx.layer_budget:
                return Plan.uniform([g.name for g in ctx.geoms], opt)
            if opt.sparsity == "unstructured" and self._exact(ctx, opt) <= ctx.layer_budget:
                return Plan.uniform([g.name for g in ctx.geoms], opt)
        smallest = costed[-1][0] + ctx.other_bytes
        raise InfeasibleBudget(
            f"the uniform method cannot fit {ctx.payload_budget} payload bytes: its smallest "
            f"uniform plan ({costed[-1][1].to_str()}) needs {smallest} bytes",
            field="budget",
            value=ctx.payload_budget,
        )

    @staticmethod
    def _exact(ctx: SearchContext, opt: LayerOption) -> int:
        """Exact bytes of an unstructured uniform option, from the masks it would pick."""
        total = 0
        for g in ctx.geoms:
            w = ctx.model.get_submodule(g.name).weight.detach().reshape(g.rows, g.row_len)
            total += layer_bytes(opt, g, mask=option_mask(opt, w)).total
        return total
