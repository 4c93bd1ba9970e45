"""bench.measurements on digits: the suite's plan stages against one store, counted per call."""

from __future__ import annotations

import json
from pathlib import Path

from bench import measurements


def test_later_plan_stages_look_up_what_the_first_measured(tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "m.json"
    measurements.main(
        [
            "--tasks",
            "digits",
            "--budgets",
            "16",
            "24",
            "--cache-dir",
            str(cache_dir),
            "--out",
            str(out),
        ]
    )
    doc = json.loads(out.read_text())
    assert doc["meta"]["matmul_gflops"] > 0
    s = doc["tasks"]["digits"]
    calls = s["calls"]
    assert [(c["budget"], c["method"]) for c in calls] == [
        (b, m) for b in (16.0, 24.0) for m in ("optuna", "constrained", "slimline")
    ]
    # optuna measures the whole front once; everything after looks it up
    assert calls[0]["measured"] > 0 and all(c["measured"] == 0 for c in calls[1:])
    assert calls[3]["reused"] == calls[0]["measured"] + calls[0]["reused"]
    assert s["losses_measured"] == calls[0]["measured"]
    assert s["losses_needed"] == sum(c["measured"] + c["reused"] for c in calls)
    assert s["scoring_seconds_without_store"] > s["scoring_seconds"] > 0
