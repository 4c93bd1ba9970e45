"""Retention over fine-tuning seeds: whether a gap between two methods is more than noise.

    python -m bench.seeds bench/results/2026-11-23h-lenet300.json \\
        bench/results/2026-11-23i-seed1-lenet300.json bench/results/2026-11-23i-seed2-lenet300.json

The files are suite runs from the same dense weights (``bench.suite --finetune-seed N`` keeps
the dense model of ``--seed`` and changes only the seed of search and fine-tuning). Per (task,
budget), each method run with two or more seeds gets its mean retention, the lowest and the
highest; the best mean of a row is in bold. A warning follows when the files of a task started
from different dense weights.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bench.summary import ORDER, dense_mismatches


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
    methods = [m for m in [*ORDER, "slimline"] if any(k[2] == m for k in multi)]
    methods += sorted({k[2] for k in multi} - set(methods))
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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.seeds", description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="+", type=Path, help="suite JSON files, one seed each")
    args = p.parse_args(argv)
    print("Retention (%) over fine-tuning seeds: mean (lowest-highest, seeds)\n")
    print(table(by_seed(args.files)))
    warnings = dense_mismatches(args.files)
    if warnings:
        print("\nWarning:\n" + "\n".join(warnings))


if __name__ == "__main__":
    main()
