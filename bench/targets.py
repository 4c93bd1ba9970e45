"""Issue #4's default-recipe targets, checked from `slimline compress` reports.

    python -m bench.targets bench/results/2026-11-24i-*-default.json

Each FILE is the JSON report of one default-recipe job (`slimline compress MODEL --data
mnist|pycode --budget Nx --report FILE`). Prints markdown: a row per report with its retention
against the accuracy target of its model and budget (`RETENTION`; "-" where there is none),
its file bytes against the budget, and the search's time against fine-tuning alone, which
must stay within `SEARCH_SHARE`: scoring and solving (the plan stage) plus probing (inside
the fine-tune stage) over the fine-tune stage without the probing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

# (model, budget) -> least retention (compressed metric / dense metric)
RETENTION = {
    ("lenet5", "128x"): 0.995,
    ("lenet5", "256x"): 0.99,
    ("lenet300", "64x"): 0.995,
    ("lenet300", "128x"): 0.99,
    ("bytegpt", "16x"): 0.98,
    ("bytegpt", "32x"): 0.95,
}
SEARCH_SHARE = 0.25  # the search adds at most this share to the time of fine-tuning alone


def search_split(report: dict[str, Any]) -> tuple[float, float]:
    """(search seconds, fine-tuning seconds without the search) of one job's report."""
    probing = float(report.get("probe_seconds") or 0.0)
    search = sum(float(report.get(k) or 0.0) for k in ("scores_seconds", "allocation_seconds"))
    return search + probing, float(report["timings"]["fine-tune"]) - probing


def row(report: dict[str, Any]) -> dict[str, Any]:
    """One report's figures and whether each target holds (None: no target)."""
    want = RETENTION.get((report["model"], str(report["budget"])))
    search, tuning = search_split(report)
    share = search / tuning if tuning > 0 else float("inf")
    return {
        "model": report["model"],
        "budget": str(report["budget"]),
        "retention": float(report["retention"]),
        "retention_target": want,
        "retention_met": None if want is None else float(report["retention"]) >= want,
        "file_bytes": int(report["file_bytes"]),
        "budget_bytes": int(report["budget_bytes"]),
        "within_budget": int(report["file_bytes"]) <= int(report["budget_bytes"]),
        "search_seconds": search,
        "finetune_seconds": tuning,
        "search_share": share,
        "search_met": share <= SEARCH_SHARE,
    }


def _yes(flag: bool | None) -> str:
    return "-" if flag is None else ("met" if flag else "**missed**")


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | budget | retention | target | | file bytes | budget bytes "
        f"| search s | fine-tune s | search share (<= {SEARCH_SHARE:.0%}) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        want = "-" if r["retention_target"] is None else f">= {r['retention_target']:.1%}"
        lines.append(
            f"| {r['model']} | {r['budget']} | {r['retention']:.2%} | {want} "
            f"| {_yes(r['retention_met'])} | {r['file_bytes']:,} | {r['budget_bytes']:,} "
            f"| {r['search_seconds']:.1f} | {r['finetune_seconds']:.1f} "
            f"| {r['search_share']:.1%} {_yes(r['search_met'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.targets", description=__doc__.split("\n")[0])
    p.add_argument("reports", nargs="+", type=Path, help="`slimline compress --report` files")
    args = p.parse_args(argv)
    rows = [row(json.loads(path.read_text())) for path in args.reports]
    print(table(rows))
    missed = [
        r
        for r in rows
        if r["retention_met"] is False or not r["within_budget"] or not r["search_met"]
    ]
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
