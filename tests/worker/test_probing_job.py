"""Probing inside a job: the fine-tune stage holds it to search_share beside the plan stage's
scoring (`SearchContext.search_seconds`), and the report says why it stopped."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from slimline.pipeline.report import build_report, render_report
from slimline.pipeline.stages import run_job
from tests.worker.conftest import digits_spec


def test_probing_out_of_time_counts_the_plan_stages_scoring(
    digits_weights: Path, data_root: Path, tmp_path: Path
) -> None:
    # 20 steps hold two 8-step probes; a search_share of 1e-6 holds none, which the first
    # probe's pace shows after a few steps
    settings = {"probe_steps": 8, "probe_share": 1.0, "search_share": 1e-6}
    spec = digits_spec(digits_weights, tmp_path / "m.slim.safetensors", data_root)
    state = run_job(replace(spec, method="constrained", method_settings=settings))
    report = build_report(state)
    spent = report["scores_seconds"] + report["allocation_seconds"]
    assert spent > 0 and report["probes"] == []
    assert f"with scoring's {spent:.1f}s" in report["probes_stopped"]
    assert "probing stopped after" in render_report(report)
