"""Packing speed and density: how fast a layer's payload becomes bytes and back, and how many
bits per weight the file really spends (BENCHMARKS.md "Speed figures").

An 11M-weight [4096, 2688] layer at 2:4 sparsity, 4-bit codes, per-channel fp16 scales. Times
are the best of 3 and are put next to a plain ``numpy.copy`` of the same number of packed bytes,
measured in the same run, so the figure means something on any machine.

    python -m bench.pack [--rows 4096] [--cols 2688] [--repeat 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slimline.search.options import LayerOption, nm_pattern_bits
from slimline.search.packing import pack_payload, unpack_payload
from slimline.search.payload import LayerPayload, dequantize

RESULTS = Path(__file__).resolve().parent / "results"


def best_of(repeat: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def make_payload(rows: int, cols: int, seed: int = 0) -> LayerPayload:
    opt = LayerOption(sparsity="nm", n=2, m=4, bits=4, granularity="channel")
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(rows, cols // 4, 4, generator=g)
    idx = scores.topk(2, dim=-1).indices
    mask = torch.zeros(rows, cols // 4, 4, dtype=torch.bool).scatter_(-1, idx, True)
    mask = mask.reshape(rows, cols)
    kept = rows * cols // 2
    codes = torch.randint(0, 16, (kept,), generator=g)
    scales = (torch.rand(rows, 1, generator=g) * 0.1 + 1e-3).half()
    return LayerPayload(
        name="bench",
        option=opt,
        shape=(rows, cols),
        mask=mask,
        codes=codes,
        scales=scales,
        bias=None,
    )


def run(rows: int, cols: int, repeat: int) -> dict[str, Any]:
    p = make_payload(rows, cols)
    weights = rows * cols
    opt = p.option
    t_pack, streams = best_of(repeat, lambda: pack_payload(p))
    t_unpack, q = best_of(
        repeat, lambda: unpack_payload(streams, "bench", opt, p.shape, has_bias=False)
    )
    t_deq, w = best_of(repeat, lambda: dequantize(q))
    assert torch.equal(w, dequantize(p)), "unpacked payload does not dequantize to the original"

    total_bytes = streams.total
    src = np.frombuffer(b"".join(streams.as_list()), dtype=np.uint8)
    t_copy, _ = best_of(max(repeat, 5), lambda: np.copy(src))

    bits_formula = (
        opt.bits * opt.n / opt.m + nm_pattern_bits(opt.n, opt.m) / opt.m + 16 * rows / weights
    )
    copy_bps = total_bytes / t_copy
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "threads": torch.get_num_threads(),
        },
        "layer": {"shape": [rows, cols], "option": opt.to_str(), "weights": weights},
        "streams": dict(zip(("values", "index", "scales", "bias"), streams.lengths(), strict=True)),
        "bytes": total_bytes,
        "bits_per_weight": 8 * total_bytes / weights,
        "bits_per_weight_formula": bits_formula,
        "seconds": {"pack": t_pack, "unpack": t_unpack, "dequantize": t_deq, "copy": t_copy},
        "weights_per_s": {
            "pack": weights / t_pack,
            "unpack": weights / t_unpack,
            "unpack+dequantize": weights / (t_unpack + t_deq),
        },
        "bytes_per_s": {
            "pack": total_bytes / t_pack,
            "unpack": total_bytes / t_unpack,
            "copy": copy_bps,
        },
        "slowdown_vs_copy": {"pack": t_pack / t_copy, "unpack": t_unpack / t_copy},
    }


def table(r: dict[str, Any]) -> str:
    s, wps, bps = r["seconds"], r["weights_per_s"], r["bytes_per_s"]
    lines = [
        f"layer {r['layer']['shape']} {r['layer']['option']}: {r['layer']['weights']:,} weights, "
        f"{r['bytes']:,} bytes in streams {r['streams']}",
        f"bits/weight: {r['bits_per_weight']:.6f} (formula {r['bits_per_weight_formula']:.6f})",
        "",
        "| step | seconds | M weights/s | MB/s (packed) | x copy time |",
        "|---|---|---|---|---|",
        f"| pack | {s['pack']:.4f} | {wps['pack'] / 1e6:.1f} | {bps['pack'] / 1e6:.0f} "
        f"| {r['slowdown_vs_copy']['pack']:.1f} |",
        f"| unpack | {s['unpack']:.4f} | {wps['unpack'] / 1e6:.1f} | {bps['unpack'] / 1e6:.0f} "
        f"| {r['slowdown_vs_copy']['unpack']:.1f} |",
        f"| dequantize | {s['dequantize']:.4f} "
        f"| {r['layer']['weights'] / s['dequantize'] / 1e6:.1f} | | |",
        f"| numpy.copy | {s['copy']:.5f} | | {bps['copy'] / 1e6:.0f} | 1.0 |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=2688)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    if args.cols % 4:
        ap.error("--cols must be a multiple of 4 (2:4 groups)")
    r = run(args.rows, args.cols, args.repeat)
    print(table(r))
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"pack-{dt.date.today().isoformat()}.json"
        out.write_text(json.dumps(r, indent=2) + "\n")
        print(f"\nwrote {out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out}")


if __name__ == "__main__":
    main()
