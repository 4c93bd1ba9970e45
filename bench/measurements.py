"""How many forward passes the measurement store saves the benchmark suite's plan stages.

The suite scores each task's dense model once per cell of the methods that score it: optuna
(every layer's front measured in full, the same at every budget), Yang et al.'s constrained
and slimline (the far options each budget's allocation picks). This runs those plan stages in
the suite's order (per budget: optuna, constrained, slimline; optuna with one one-step trial,
its scoring being what is measured here) against one fresh store, as the suite's cells share
one cache folder, and counts per call the losses measured and those looked up; measured +
looked up is what the call would have run without the store. Seconds per measured loss come
from the same run, so the saving is also given in seconds of this machine.

    python -m bench.measurements [--tasks bytegpt lenet5] [--budgets 8 16 24 32]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bench.suite import TASKS, matmul_gflops
from slimline.budget import parse_budget
from slimline.pipeline import stages
from slimline.search.methods import get_method

RESULTS = Path(__file__).resolve().parent / "results"
# the suite's methods that score the dense model, in its order, with their plan-stage settings
METHODS = (
    ("optuna", "optuna", {"trials": 1, "proxy_steps": 1}),
    ("constrained", "constrained", {"projections": 3}),
    ("slimline", "constrained", {"search_share": None}),
)


def plan_stages(
    task: str, budgets: list[float], cache_dir: Path | None, data_root: str | None, store: Path
) -> list[dict[str, Any]]:
    t = TASKS[task]
    rows = []
    for ratio in budgets:
        spec = stages.JobSpec(
            model=t.model, data=t.data, budget=parse_budget(f"{ratio:g}x"),
            data_root=data_root, cache_dir=cache_dir, device="cpu",
        )  # fmt: skip
        state = stages.JobState(spec=spec)
        stages.inspect(state, lambda *_: None)
        for label, method, settings in METHODS:
            ctx = replace(stages.search_context(state, "plan", lambda *_: None), measurements=store)
            m = get_method(method, settings)
            t0 = time.perf_counter()
            m.propose(ctx)
            row = {
                "task": task,
                "budget": ratio,
                "method": label,
                "measured": m.report["measured"],
                "reused": m.report["measured_reused"],
                "measured_seconds": round(m.report["measured_seconds"], 3),
                "scores_seconds": round(m.report["scores_seconds"], 3),
                "propose_seconds": round(time.perf_counter() - t0, 3),
            }
            rows.append(row)
            print(
                f"{task:9s} {ratio:4g}x {label:12s} measured {row['measured']:5d}, looked up "
                f"{row['reused']:5d}, scoring {row['scores_seconds']:7.1f}s",
                flush=True,
            )
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ran = sum(r["measured"] for r in rows)
    needed = sum(r["measured"] + r["reused"] for r in rows)
    scoring = sum(r["scores_seconds"] for r in rows)
    # what a measured loss took here; the rest of scoring (the Fisher pass, compressing every
    # candidate) is the same with or without the store
    per_loss = sum(r["measured_seconds"] for r in rows) / max(1, ran)
    return {
        "losses_needed": needed,
        "losses_measured": ran,
        "seconds_per_loss": round(per_loss, 4),
        "scoring_seconds": round(scoring, 1),
        "scoring_seconds_without_store": round(scoring + (needed - ran) * per_loss, 1),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=["bytegpt", "lenet5"], choices=list(TASKS))
    p.add_argument("--budgets", nargs="+", type=float, help="default: the suite's")
    p.add_argument("--cache-dir", type=Path, help="dense models (default: the suite's cache)")
    p.add_argument("--data-root")
    p.add_argument("--out", type=Path, help="JSON file (default: bench/results/...)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # as one suite cell (--threads 1)
    cache = args.cache_dir or RESULTS / ".work" / "cache"
    out: dict[str, Any] = {
        "meta": {
            "date": dt.date.today().isoformat(),
            "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "threads": 1,
            "matmul_gflops": matmul_gflops(),  # machines differ: bench.suite.matmul_gflops
        },
        "tasks": {},
    }
    for task in args.tasks:
        budgets = args.budgets or TASKS[task].budgets
        with tempfile.TemporaryDirectory() as store:
            rows = plan_stages(task, budgets, cache, args.data_root, Path(store))
        out["tasks"][task] = {"calls": rows, **summarize(rows)}
        s = out["tasks"][task]
        print(
            f"{task}: {s['losses_measured']:,} of {s['losses_needed']:,} losses measured; scoring "
            f"{s['scoring_seconds']:.0f}s, about {s['scoring_seconds_without_store']:.0f}s "
            f"without the store ({s['seconds_per_loss']:.3f}s a loss)",
            flush=True,
        )
    path = args.out or RESULTS / f"measurements-{out['meta']['date']}.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
