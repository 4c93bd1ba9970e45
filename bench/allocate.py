"""Allocation speed and greedy's optimality gap on realistic 200-layer x 40-option instances.

Each instance has layers of 1k to 2M weights (log-uniform) with real option bytes (forty of
`scoring.candidate_options` per layer, costed by `accounting.layer_bytes`) and damages shaped
like real ones: sensitivity x weights x relative error, where the relative error of an option is
the weight energy its magnitude mask removes (Gaussian weights; N:M a little worse than
unstructured at the same density) plus the quantization noise of the survivors (~4^-bits),
times log-normal noise. Budgets at 25/50/75% between the smallest and the largest useful size.
Times are medians of ``--repeat`` runs; HiGHS (``solver="milp"``) is timed once as reference.

    python -m bench.allocate [--layers 200] [--options 40] [--instances 3] [--repeat 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy

from slimline.search.accounting import layer_bytes
from slimline.search.allocation import allocate, byte_range, lp_bound
from slimline.search.layers import LayerGeometry
from slimline.search.options import LayerOption
from slimline.search.scoring import candidate_options

RESULTS = Path(__file__).resolve().parent / "results"
FRACTIONS = (0.25, 0.50, 0.75)


def _removed_energy(density: float) -> float:
    """Share of a Gaussian tensor's energy outside its ``density`` largest magnitudes."""
    if density >= 1.0:
        return 0.0
    t = math.sqrt(2.0) * _erfinv(1.0 - density)  # P(|w| > t) = density
    kept = 2.0 * (t * math.exp(-t * t / 2) / math.sqrt(2 * math.pi) + 0.5 * math.erfc(t / 2**0.5))
    return max(0.0, 1.0 - kept)


def _erfinv(y: float) -> float:
    from scipy.special import erfinv

    return float(erfinv(y))


def relative_error(opt: LayerOption) -> float:
    """Typical ||w - w_hat||^2 / ||w||^2 of an option on a Gaussian weight tensor."""
    if opt.sparsity == "removed":
        return 1.0
    density = {"dense": 1.0, "nm": opt.n / max(1, opt.m), "unstructured": opt.density}
    rho = density[opt.sparsity]
    pruned = _removed_energy(rho) * (1.3 if opt.sparsity == "nm" else 1.0)
    quant = 2e-8 if opt.bits == 16 else 3.0 * 4.0 ** (-opt.bits)
    quant *= 1.5 if opt.granularity == "tensor" else 1.0
    return pruned + (1.0 - pruned) * quant


def instance(
    seed: int, layers: int, options: int
) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """(bytes per layer, damage per layer, weights per layer)."""
    rng = np.random.default_rng(seed)
    all_b, all_d, sizes = [], [], []
    for i in range(layers):
        numel = int(np.exp(rng.uniform(np.log(1e3), np.log(2e6))))
        row_len = int(rng.choice([9, 27, 64, 144, 256, 576, 1152, 2304]))
        rows = max(1, numel // row_len)
        geom = LayerGeometry(f"l{i}", "linear", (rows, row_len), has_bias=True)
        opts = candidate_options(geom)
        keep = [0, len(opts) - 1]  # fp16 and removed always on offer
        middle = rng.choice(np.arange(1, len(opts) - 1), options - 2, replace=False)
        opts = [opts[j] for j in sorted([*keep, *middle.tolist()])]
        sensitivity = float(np.exp(rng.normal(0.0, 1.5)))
        noise = np.exp(rng.normal(0.0, 0.3, len(opts)))
        all_b.append(np.array([layer_bytes(o, geom).total for o in opts], dtype=np.int64))
        all_d.append(
            sensitivity * np.array([relative_error(o) for o in opts]) * noise * geom.numel / 1e6
        )
        sizes.append(geom.numel)
    return all_b, all_d, sizes


def median_time(repeat: int, fn: Any) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def run(layers: int, options: int, instances: int, repeat: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for seed in range(instances):
        b, d, sizes = instance(seed, layers, options)
        lo, hi = byte_range(b, d)
        for frac in FRACTIONS:
            budget = int(lo + frac * (hi - lo))
            t_exact, exact = median_time(repeat, lambda: allocate(b, d, budget))  # noqa: B023
            t_greedy, greedy = median_time(
                repeat,
                lambda: allocate(b, d, budget, solver="greedy"),  # noqa: B023
            )
            t_milp, milp = median_time(1, lambda: allocate(b, d, budget, solver="milp"))  # noqa: B023
            lp = lp_bound(b, d, budget)
            rows.append(
                {
                    "instance": seed,
                    "weights": int(sum(sizes)),
                    "budget_fraction": frac,
                    "budget": budget,
                    "exact": {"seconds": t_exact, "bytes": exact.bytes, "damage": exact.damage},
                    "greedy": {
                        "seconds": t_greedy,
                        "bytes": greedy.bytes,
                        "damage": greedy.damage,
                        "gap": greedy.damage / exact.damage - 1.0,
                    },
                    "milp": {
                        "seconds": t_milp,
                        "damage": milp.damage,
                        "gap": milp.damage / exact.damage - 1.0,
                    },
                    "lp_bound": lp,
                }
            )
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
        },
        "layers": layers,
        "options": options,
        "repeat": repeat,
        "rows": rows,
        "summary": {
            "exact_seconds_max": max(r["exact"]["seconds"] for r in rows),
            "exact_seconds_median": statistics.median(r["exact"]["seconds"] for r in rows),
            "greedy_seconds_median": statistics.median(r["greedy"]["seconds"] for r in rows),
            "greedy_gap_max": max(r["greedy"]["gap"] for r in rows),
            "milp_seconds_median": statistics.median(r["milp"]["seconds"] for r in rows),
        },
    }


def table(r: dict[str, Any]) -> str:
    lines = [
        f"{r['layers']} layers x {r['options']} options; medians of {r['repeat']} runs "
        f"(HiGHS: one run)",
        "",
        "| instance | budget | exact ms | greedy ms | greedy gap | HiGHS ms | HiGHS gap "
        "| exact vs LP |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        e, g, m = row["exact"], row["greedy"], row["milp"]
        lines.append(
            f"| {row['instance']} | {row['budget_fraction']:.0%} ({row['budget']:,} B) "
            f"| {e['seconds'] * 1e3:.1f} | {g['seconds'] * 1e3:.1f} | {g['gap']:.2e} "
            f"| {m['seconds'] * 1e3:.0f} | {m['gap']:.2e} "
            f"| +{e['damage'] / row['lp_bound'] - 1:.1e} |"
        )
    s = r["summary"]
    lines += [
        "",
        f"exact: median {s['exact_seconds_median'] * 1e3:.1f} ms, max "
        f"{s['exact_seconds_max'] * 1e3:.1f} ms; greedy: median "
        f"{s['greedy_seconds_median'] * 1e3:.1f} ms, worst gap {s['greedy_gap_max']:.2e}; "
        f"HiGHS: median {s['milp_seconds_median'] * 1e3:.0f} ms",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=200)
    ap.add_argument("--options", type=int, default=40)
    ap.add_argument("--instances", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    r = run(args.layers, args.options, args.instances, args.repeat)
    print(table(r))
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"allocate-{dt.date.today().isoformat()}.json"
        out.write_text(json.dumps(r, indent=2) + "\n")
        print(f"\nwrote {out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out}")


if __name__ == "__main__":
    main()
