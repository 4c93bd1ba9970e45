"""One table from the suite's per-task JSON files: retention per method at each budget.

    python -m bench.summary bench/results/2026-11-23-lenet5.json bench/results/*-lenet300.json

Prints markdown: a row per (task, budget), a column per method, each cell the retention
(compressed metric / dense metric) in percent; the best of a row in bold; "inf." where the
method cannot reach the budget, "err." for a cell that failed, blank for a cell not run. Under
it, per slimline cell, the search's share of fine-tuning time (every scoring pass and solve,
the plan stage's and the re-projections', over fine-tuning without them). A warning follows
when the files of one task started from different dense weights (recorded sha256).
``--plots PREFIX`` also writes ``PREFIX-<task>.png`` from the merged cells.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ORDER = ["uniform-ptq", "uniform-qat", "squantizer", "constrained", "bitshare", "optuna"]


def _cells(paths: list[Path]) -> list[dict[str, Any]]:
    """Every file's cells, a later file's cell replacing an earlier one's (same task, budget
    and method), in the order they were first seen."""
    out: dict[tuple[str, float, str], dict[str, Any]] = {}
    for p in paths:
        data = json.loads(p.read_text())
        for c in data["cells"] if isinstance(data, dict) else data:
            out[(c["task"], float(c["ratio_target"]), _label(c))] = c
    return list(out.values())


def dense_mismatches(paths: list[Path]) -> list[str]:
    """One line per task whose files started from different dense weights (their recorded
    sha256 differ): retentions of those files are not comparable cell for cell."""
    seen: dict[str, dict[str, list[str]]] = {}
    for p in paths:
        data = json.loads(p.read_text())
        dense = data.get("meta", {}).get("dense", {}) if isinstance(data, dict) else {}
        for task, d in dense.items():
            digest = str(d.get("sha256") or "not recorded")[:12]
            seen.setdefault(task, {}).setdefault(digest, []).append(p.name)
    return [
        f"- {task}: dense weights differ between files: "
        + "; ".join(f"{digest}: {', '.join(names)}" for digest, names in sorted(by.items()))
        for task, by in sorted(seen.items())
        if len(by) > 1
    ]


def _label(c: dict[str, Any]) -> str:
    return str(c["method"])


def columns(labels: Iterable[str], first: Sequence[str] = ORDER) -> list[str]:
    """The method labels in a table's column order: those in ``first``, in its order, then
    the rest sorted."""
    given = set(labels)
    head = [m for m in first if m in given]
    return head + sorted(given - set(head))


def table(cells: list[dict[str, Any]]) -> str:
    methods = columns(_label(c) for c in cells)
    rows: dict[tuple[str, float], dict[str, dict[str, Any]]] = {}
    for c in cells:
        rows.setdefault((c["task"], float(c["ratio_target"])), {})[_label(c)] = c
    lines = [
        "| task | budget | " + " | ".join(methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for (task, budget), by in sorted(rows.items()):
        ok = [c["retention"] for c in by.values() if c.get("status") == "ok"]
        best = max(ok) if ok else None
        cols = []
        for m in methods:
            cell = by.get(m)
            if cell is None:
                cols.append("")
            elif cell.get("status") == "infeasible":
                cols.append("inf.")
            elif cell.get("status") != "ok":
                cols.append("err.")
            else:
                text = f"{100 * cell['retention']:.2f}"
                cols.append(f"**{text}**" if cell["retention"] == best else text)
        lines.append(f"| {task} | {budget:g}x | " + " | ".join(cols) + " |")
    return "\n".join(lines)


def search_share(cells: list[dict[str, Any]]) -> str:
    lines = []
    for c in cells:
        if _label(c) != "slimline" or c.get("status") != "ok" or c.get("scores_seconds") is None:
            continue
        search = (
            float(c["scores_seconds"])
            + float(c.get("allocation_seconds") or 0.0)
            + float(c.get("probe_seconds") or 0.0)
        )
        # re-projections and probes run inside the fine-tune stage
        inside = search - float(c.get("search_seconds") or 0.0)
        tuning = float(c["finetune_seconds"]) - max(0.0, inside)
        share = search / tuning if tuning > 0 else float("nan")
        lines.append(
            f"- {c['task']} {float(c['ratio_target']):g}x: search {search:.1f} s, fine-tuning "
            f"alone {tuning:.1f} s: +{100 * share:.0f}%"
        )
    return "\n".join(lines)


def write_plots(paths: list[Path], cells: list[dict[str, Any]], prefix: Path) -> list[Path]:
    """``<prefix>-<task>.png`` per task of the merged ``cells`` (`bench.suite.plot`: metric
    against file bytes, a line per method), with the dense model of the last file that holds
    the task: the figures of a table whose later files replaced some cells."""
    from bench.suite import plot

    metas: dict[str, dict[str, Any]] = {}
    for p in paths:
        data = json.loads(p.read_text())
        if isinstance(data, dict):
            for task in data.get("meta", {}).get("dense", {}):
                metas[task] = data["meta"]
    written = []
    for task, meta in metas.items():
        rows = [c for c in cells if c["task"] == task]
        methods = columns((_label(c) for c in rows), [*ORDER, "slimline"])
        doc = {"meta": {**meta, "methods": methods, "date": prefix.name}, "cells": rows}
        png = plot(doc, prefix.with_name(f"{prefix.name}-{task}.png"), task)
        if png is not None:
            written.append(png)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument(
        "--plots",
        type=Path,
        metavar="PREFIX",
        help="also write PREFIX-<task>.png, the merged table's plot per task",
    )
    args = p.parse_args(argv)
    cells = _cells(args.files)
    print(table(cells))
    if args.plots is not None:
        for png in write_plots(args.files, cells, args.plots):
            print(f"wrote {png}")
    mismatches = dense_mismatches(args.files)
    if mismatches:
        print("\nwarning: rows mix results from different dense models:\n" + "\n".join(mismatches))
    shares = search_share(cells)
    if shares:
        print("\nslimline's search time over fine-tuning alone:\n" + shares)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
