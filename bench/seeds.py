"""Retention over fine-tuning seeds: whether a gap between two methods is more than noise.

    python -m bench.seeds bench/results/2026-11-23h-lenet300.json \\
        bench/results/2026-11-23i-seed1-lenet300.json bench/results/2026-11-23i-seed2-lenet300.json

The files are suite runs from the same dense weights (``bench.suite --finetune-seed N`` keeps
the dense model of ``--seed`` and changes only the seed of search and fine-tuning). Per (task,
budget), each method run with two or more seeds gets its mean retention, the lowest and the
highest; the best mean of a row is in bold. A second table sets slimline beside each other
method seed by seed (the seeds both ran; a seed gives every method the same batch order): the
mean difference in points with its 95% interval (Student's t over the paired differences),
and "ahead" or "behind" only where the interval leaves out zero, else "noise". A warning
follows when the files of a task started from different dense weights.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from scipy import stats

from bench.summary import ORDER, columns, dense_mismatches

CONFIDENCE = 0.95  # of the interval of a paired difference


def by_seed(paths: list[Path]) -> dict[tuple[str, float, str], dict[int, float]]:
    """``{(task, budget, method): {seed: retention}}`` of the cells that ran (a later file's
    cell replaces an earlier one of the same seed)."""
    out: dict[tuple[str, float, str], dict[int, float]] = {}
    for p in paths:
        doc = json.loads(p.read_text())
        meta = doc.get("meta", {})
        seed = meta.get("finetune_seed")
        seed = int(meta.get("seed", 0) if seed is None else seed)
        for c in doc["cells"]:
            if c.get("status") == "ok":
                key = (c["task"], float(c["ratio_target"]), str(c["method"]))
                out.setdefault(key, {})[seed] = float(c["retention"])
    return out


def table(runs: dict[tuple[str, float, str], dict[int, float]]) -> str:
    """Markdown: a row per (task, budget) with a method of two or more seeds; per method "mean
    (lowest-highest, seeds)" in percent."""
    multi = {k: v for k, v in runs.items() if len(v) >= 2}
    methods = columns((k[2] for k in multi), [*ORDER, "slimline"])
    rows = sorted({(k[0], k[1]) for k in multi})
    lines = ["| task | budget | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for task, budget in rows:
        means = {
            m: statistics.fmean(multi[(task, budget, m)].values())
            for m in methods
            if (task, budget, m) in multi
        }
        best = max(means.values())
        cols = []
        for m in methods:
            if m not in means:
                cols.append("")
                continue
            vals = multi[(task, budget, m)].values()
            text = f"{100 * means[m]:.2f}"
            text = f"**{text}**" if means[m] == best else text
            cols.append(f"{text} ({100 * min(vals):.2f}-{100 * max(vals):.2f}, {len(vals)})")
        lines.append(f"| {task} | {budget:g}x | " + " | ".join(cols) + " |")
    return "\n".join(lines)


def paired(seeds: dict[int, float], against: dict[int, float]) -> dict[str, float] | None:
    """The paired difference ``seeds - against`` ({seed: retention}) over the seeds both
    have, in points: mean, lowest and highest of its `CONFIDENCE` interval, and the seeds;
    None under two seeds."""
    common = sorted(set(seeds) & set(against))
    if len(common) < 2:
        return None
    diff = [100 * (seeds[s] - against[s]) for s in common]
    mean = statistics.fmean(diff)
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, len(diff) - 1) * statistics.stdev(diff)
    half /= len(diff) ** 0.5
    return {"mean": mean, "low": mean - half, "high": mean + half, "seeds": len(diff)}


def verdict(d: dict[str, float]) -> str:
    """ "ahead" or "behind" where the interval leaves out zero, else "noise"."""
    return "ahead" if d["low"] > 0 else "behind" if d["high"] < 0 else "noise"


def paired_table(
    runs: dict[tuple[str, float, str], dict[int, float]], lead: str = "slimline"
) -> str:
    """Markdown: a row per (task, budget) where ``lead`` and another method share two or more
    seeds; per other method "+mean (low..high) verdict" in points."""
    pairs = {
        (t, b, m): d
        for (t, b, m), v in runs.items()
        if m != lead and (t, b, lead) in runs
        for d in [paired(runs[(t, b, lead)], v)]
        if d is not None
    }
    methods = columns(k[2] for k in pairs)
    head = "| task | budget | seeds | " + " | ".join(f"{lead} - {m}" for m in methods) + " |"
    lines = [head, "|---|---|---|" + "---|" * len(methods)]
    for task, budget in sorted({(k[0], k[1]) for k in pairs}):
        cols = []
        for m in methods:
            d = pairs.get((task, budget, m))
            cols.append(
                ""
                if d is None
                else f"{d['mean']:+.2f} ({d['low']:+.2f}..{d['high']:+.2f}) {verdict(d)}"
            )
        n = max(int(d["seeds"]) for k, d in pairs.items() if k[:2] == (task, budget))
        lines.append(f"| {task} | {budget:g}x | {n} | " + " | ".join(cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.seeds", description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="+", type=Path, help="suite JSON files, one seed each")
    args = p.parse_args(argv)
    print("Retention (%) over fine-tuning seeds: mean (lowest-highest, seeds)\n")
    runs = by_seed(args.files)
    print(table(runs))
    print(
        f"\nslimline minus each method, seed by seed (points; {100 * CONFIDENCE:g}% interval; "
        "ahead / behind only where it leaves out zero)\n"
    )
    print(paired_table(runs))
    warnings = dense_mismatches(args.files)
    if warnings:
        print("\nWarning:\n" + "\n".join(warnings))


if __name__ == "__main__":
    main()
