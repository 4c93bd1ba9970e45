"""Search methods side by side: accuracy per byte at fixed budgets, same fine-tuning for all.

Every method starts from the same cached dense weights and gets the same fine-tuning steps;
the table shows accuracy, retention, the measured file size and where the time went (search vs
fine-tuning). This is the issue-3 comparison, run in one process; the full suite (every task,
budget and SLOPE, a child process per cell) is bench.suite, whose cell function this uses.

    python -m bench.compare_methods [--models lenet5 lenet300] [--ratios 16 32 64]
        [--methods uniform constrained bitshare squantizer optuna] [--epochs 1]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
from pathlib import Path
from typing import Any

from bench import suite
from slimline.pipeline.sources import default_cache_dir

RESULTS = Path(__file__).resolve().parent / "results"
DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"
METHODS = ["uniform", "constrained", "bitshare", "squantizer", "optuna"]


def run_cell(
    model: str, method: str, ratio: float, args: argparse.Namespace, out: Path
) -> dict[str, Any]:
    """One cell in this process, through the suite's cell function (plain QAT for every
    method, as bench.suite runs the baselines)."""
    from slimline.search.settings import FinetuneSettings

    row = suite.run_cell(
        suite.Cell(
            task=model,
            method=method,
            ratio=ratio,
            search_method=method,
            finetune=FinetuneSettings.plain().to_dict(),
            train=True,
            epochs=args.epochs,
            max_steps=args.max_steps,
            data_root=str(args.data_root),
            cache_dir=str(args.cache_dir or default_cache_dir()),
            out=str(out),
        )
    )
    row["model"] = model
    if row["status"] != "ok":
        return {"model": model, "method": method, "ratio_target": ratio, "error": row["error"]}
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | target | method | accuracy | retention | file bytes | ratio | in budget "
        "| search s | fine-tune s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['model']} | {r['ratio_target']:g}x | {r['method']} | "
                f"error: {r['error'][:60]} | | | | | | |"
            )
            continue
        lines.append(
            f"| {r['model']} | {r['ratio_target']:g}x | {r['method']} | {100 * r['metric']:.2f}% "
            f"| {100 * r['retention']:.2f}% | {r['file_bytes']:,} | {r['ratio']:.1f}x "
            f"| {'yes' if r['within_budget'] else 'NO'} | {r['search_seconds']:.1f} "
            f"| {r['finetune_seconds']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", nargs="+", default=["lenet5", "lenet300"])
    p.add_argument("--ratios", nargs="+", type=float, default=[16, 32, 64])
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--epochs", type=float, default=1.0, help="fine-tuning epochs, every method")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--data-root", type=Path, default=DATA_ROOT)
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--tag", default="methods")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = RESULTS / ".work"
    work.mkdir(exist_ok=True)
    rows = []
    for model in args.models:
        for ratio in args.ratios:
            for method in args.methods:
                row = run_cell(model, method, ratio, args, work / f"{model}-{method}-{ratio:g}.st")
                rows.append(row)
                print(markdown([row]).splitlines()[-1], flush=True)
    date = dt.date.today().isoformat()
    meta = {
        "date": date,
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "epochs": args.epochs,
        "max_steps": args.max_steps,
    }
    stem = RESULTS / f"{date}-{args.tag}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    table = markdown(rows)
    stem.with_suffix(".md").write_text(
        f"# Methods side by side ({date})\n\n`python -m bench.compare_methods "
        f"--models {' '.join(args.models)} --ratios {' '.join(f'{r:g}' for r in args.ratios)} "
        f"--epochs {args.epochs:g}"
        + (f" --max-steps {args.max_steps}" if args.max_steps else "")
        + (f" --threads {args.threads}" if args.threads else "")
        + f"`\n\n{table}\n"
    )
    print("\n" + table)


if __name__ == "__main__":
    main()
