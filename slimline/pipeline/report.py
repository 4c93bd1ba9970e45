"""The job report: one JSON-able dict with the figures a user decides on, and a terminal table.

Both ratios are reported (DESIGN.md): the file ratio (dense fp32 checkpoint / our file, every
byte counted) and the weight-bits ratio peers quote (fp32 weight bits / stored value bits).
"""

from __future__ import annotations

from typing import Any

from slimline.pipeline.stages import JobState
from slimline.search.accounting import dense_layer_bytes


def build_report(state: JobState) -> dict[str, Any]:
    assert state.plan is not None and state.planned is not None
    dense_metric = state.dense_metrics["metric"]
    layers = []
    for g in state.geoms:
        b = state.planned.layers[g.name]
        layers.append(
            {
                "name": g.name,
                "kind": g.kind,
                "shape": list(g.shape),
                "option": state.plan[g.name].to_str(),
                "bytes": b.total,
                "values": b.values,
                "index": b.index,
                "scales": b.scales,
                "bias": b.bias,
                "dense_bytes": dense_layer_bytes(g),
                "folded_norm": g.norm,
            }
        )
    weight_bits = sum(32 * g.numel for g in state.geoms)
    value_bits = sum(8 * state.planned.layers[g.name].values for g in state.geoms)
    report: dict[str, Any] = {
        "model": state.src.label if state.src else state.spec.model,
        "data": state.spec.data,
        "task": state.task,
        "method": state.spec.method,
        "budget": str(state.spec.budget),
        "budget_bytes": state.budget_bytes,
        "dense_bytes": state.dense_bytes,
        "planned_bytes": state.planned.payload + state.header_bytes,
        "payload_bytes": state.planned.payload,
        "header_bytes": state.header_bytes,
        "other_bytes": state.other_bytes,
        "file_bytes": state.file_bytes,
        "within_budget": state.file_bytes <= state.budget_bytes,
        "ratio": state.dense_bytes / state.file_bytes,
        "weight_bits_ratio": weight_bits / max(1, value_bits),
        "dense_metric": dense_metric,
        "metric": state.metrics.get("metric"),
        "retention": state.metrics.get("metric", 0.0) / dense_metric if dense_metric else None,
        "dense_eval": state.dense_metrics,
        "eval": state.metrics,
        "verify": state.verify,
        "weights_source": state.weights_source,
        "checkpoint": str(state.spec.out),
        "layers": layers,
        "timings": {k: round(v, 3) for k, v in state.timings.items()},
        "scores_seconds": state.search_report.get("scores_seconds"),
        "allocation_seconds": state.search_report.get("allocation_seconds"),
        # probing (constrained): the short fine-tunes that chose among nearby plans
        "probe_seconds": state.search_report.get("probe_seconds"),
        # the plan's scoring: losses measured, and looked up from earlier jobs' (`measurements`)
        "measured": state.search_report.get("measured"),
        "measured_reused": state.search_report.get("measured_reused"),
        "probes": state.search_report.get("probes", []),
        "probes_stopped": state.search_report.get("probes_stopped"),  # why, when time ran out
        # the dense model's loss on the probes' sample, the kept plan's excess over it, and the
        # distillation weight that excess turned on (None: none)
        "probe_dense_loss": state.search_report.get("probe_dense_loss"),
        "probe_gap": state.search_report.get("probe_gap"),
        "distilled": state.search_report.get("distilled"),
        "pareto": pareto_curve(state),
        "projections": state.search_report.get("projections", []),
        # bitshare: lambda, gated bytes and last loss of each gate search
        "searches": state.search_report.get("searches", []),
        "finetune": state.finetune_recipe,
        "total_seconds": round(sum(state.timings.values()), 3),
        "seed": state.spec.seed,
    }
    return report


def pareto_curve(state: JobState, points: int = 40) -> list[dict[str, float]] | None:
    """Least estimated damage at each file size, from the stored scores (no model needed)."""
    if state.scores is None:
        return None
    from slimline.search.scoring import Scores

    fixed = state.other_bytes + state.header_bytes
    return [
        {"file_bytes": int(p["bytes"]) + fixed, "damage": float(p["damage"])}
        for p in Scores.from_dict(state.scores).pareto(points)
    ]


def _kb(n: int) -> str:
    return f"{n / 1000:,.1f} KB" if n >= 1000 else f"{n} B"


def render_report(r: dict[str, Any]) -> str:
    lines = [
        f"slimline: {r['model']} on {r['data']}, method {r['method']}, budget {r['budget']} "
        f"({_kb(r['budget_bytes'])})",
        "",
        f"{'layer':<28} {'option':<20} {'bytes':>10} {'values':>9} {'index':>8} {'scales':>7} "
        f"{'bias':>6} {'vs fp32':>8}",
    ]
    for layer in r["layers"]:
        lines.append(
            f"{layer['name'][:28]:<28} {layer['option']:<20} {layer['bytes']:>10,} "
            f"{layer['values']:>9,} {layer['index']:>8,} {layer['scales']:>7,} "
            f"{layer['bias']:>6,} {layer['dense_bytes'] / max(1, layer['bytes']):>7.1f}x"
        )
    lines += [
        f"{'other tensors (fp16)':<28} {'':<20} {r['other_bytes']:>10,}",
        f"{'container header':<28} {'':<20} {r['header_bytes']:>10,}",
        "",
        f"file      {r['file_bytes']:,} bytes ({_kb(r['file_bytes'])}), budget "
        f"{r['budget_bytes']:,}: {'within budget' if r['within_budget'] else 'OVER BUDGET'}",
        f"ratio     {r['ratio']:.1f}x of the dense fp32 checkpoint ({_kb(r['dense_bytes'])}); "
        f"{r['weight_bits_ratio']:.1f}x on weight bits alone",
        f"metric    {r['metric']:.4f} (dense {r['dense_metric']:.4f}, retention "
        f"{100 * r['retention']:.2f}%)",
        f"verify    reloaded file equals trained model: {r['verify'].get('equal')} "
        f"({r['verify'].get('tensors', '?')} tensors, "
        f"{len(r['verify'].get('tensors_differ', []))} differ; max abs diff of the outputs "
        f"{r['verify'].get('max_abs_diff', float('nan')):.2e})",
        *(
            [
                f"search    scoring {r['scores_seconds']:.1f}s{_measured_text(r)}{_gate_text(r)}, "
                f"allocation "
                f"{r['allocation_seconds']:.3f}s, {len(r['projections'])} re-projections"
                + _probing_text(r)
            ]
            if r.get("scores_seconds") is not None
            else []
        ),
        *(
            [
                f"fine-tune {ft['epochs']:.3g} epochs, {ft['steps']:,} steps"
                + (
                    f" ({ft['stretch']:.3g}x the recipe: a budget past its reference ratio)"
                    if round(ft["stretch"], 2) > 1  # not "1x" for a budget just past it
                    else ""
                )
                + _distilled_text(r)
            ]
            if (ft := r.get("finetune"))
            else []
        ),
        "time      "
        + ", ".join(f"{k} {v:.1f}s" for k, v in r["timings"].items())
        + f"; total {r['total_seconds']:.1f}s",
        f"checkpoint {r['checkpoint']}",
    ]
    return "\n".join(lines)


def _measured_text(r: dict[str, Any]) -> str:
    """How many losses scoring measured, and how many it looked up instead."""
    if r.get("measured") is None:
        return ""
    reused = r.get("measured_reused") or 0
    return f" ({r['measured']:,} losses measured" + (
        f", {reused:,} looked up from earlier runs)" if reused else ")"
    )


def _gate_text(r: dict[str, Any]) -> str:
    """bitshare: how many gate searches ran, and how many were loaded from an earlier job's."""
    searches = r.get("searches") or []
    if not searches:
        return ""
    kept = sum(1 for s in searches if s.get("looked_up"))
    return f", {len(searches)} gate searches" + (
        f" ({kept} loaded from an earlier run)" if kept else ""
    )


def _distilled_text(r: dict[str, Any]) -> str:
    """Distillation that the probes' gap to the dense model turned on (constrained)."""
    if not r.get("distilled"):
        return ""
    return (
        f", distilled from the dense model (weight {r['distilled']:g}: the kept plan probed "
        f"{r['probe_gap']:+.4f} from its loss)"
    )


def _probing_text(r: dict[str, Any]) -> str:
    """The search line's account of probing: plans, the one kept, or why it stopped."""
    probes = r.get("probes") or []
    stopped = r.get("probes_stopped")
    if len(probes) >= 2:
        kept = min(probes, key=lambda p: p["loss"])["change"]
        text = f", probing {r['probe_seconds']:.1f}s ({len(probes)} plans, kept: {kept})"
        return text + (f"; stopped: {stopped}" if stopped else "")
    if stopped:
        return f", probing stopped after {r['probe_seconds']:.1f}s, knapsack's plan kept: {stopped}"
    return ""
