"""bench.suite end to end on digits with a few steps: every recorded field, the files it writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import suite
from slimline.search.settings import FinetuneSettings


@pytest.mark.slow
def test_suite_cells_on_digits(tmp_path: Path, data_root: Path, cache_dir: Path) -> None:
    args = suite.parse_args(
        [
            "--tasks", "digits", "--methods", "uniform-qat", "--budgets", "16",
            "--max-steps", "5", "--dense-steps", "150", "--threads", "1", "--date", "2000-01-01",
            "--data-root", str(data_root), "--cache-dir", str(cache_dir),
            "--results", str(tmp_path),
        ]
    )  # fmt: skip
    files = suite.run_suite(args, [])
    stem = tmp_path / "2000-01-01-digits"
    assert stem.with_suffix(".json") in files and stem.with_suffix(".md") in files

    doc = json.loads(stem.with_suffix(".json").read_text())
    dense = doc["meta"]["dense"]["digits"]
    assert dense["status"] == "ok" and len(dense["hash"]) == 16 and dense["metric"] > 0.5
    assert dense["recipe"]["max_steps"] == 150 and dense["weights"] == dense["path"]
    cells = {c["ratio_target"]: c for c in doc["cells"]}
    assert set(cells) == {16.0}

    ok = cells[16.0]
    assert ok["status"] == "ok", ok.get("traceback")
    assert ok["method"] == "uniform-qat" and ok["search_method"] == "uniform"
    assert ok["finetune_settings"] == FinetuneSettings.plain().to_dict() and ok["max_steps"] == 5
    assert ok["within_budget"] is True and ok["reload_equal"] is True
    assert ok["file_bytes"] <= ok["budget_bytes"] and ok["planned_bytes"] > 0
    assert abs(ok["retention"] - ok["metric"] / dense["metric"]) < 1e-9
    for key in ("search_seconds", "finetune_seconds", "total_seconds", "peak_rss_mb"):
        assert ok[key] >= 0, key
    assert ok["peak_rss_mb"] > 50  # the child's own peak (torch is loaded)

    md = stem.with_suffix(".md").read_text()
    assert "| digits | 16x | uniform-qat |" in md and "| yes | yes |" in md

    # --resume skips the recorded cells: nothing runs again.
    args.resume = True
    suite.run_suite(args, [])
    again = json.loads(stem.with_suffix(".json").read_text())
    assert [c["total_seconds"] for c in again["cells"]] == [
        c["total_seconds"] for c in doc["cells"]
    ]


def test_an_unreachable_budget_is_recorded_infeasible(tmp_path: Path, data_root: Path) -> None:
    cell = suite.make_cells(
        "digits",
        [1000.0],
        [suite.METHODS["uniform-qat"]],
        suite.parse_args(["--max-steps", "1", "--data-root", str(data_root)]),
        None,
    )[0]
    row = suite.run_cell(cell)  # infeasible at inspect, before any data or training
    assert row["status"] == "infeasible" and "budget" in row["error"]
    line = suite.markdown([row]).splitlines()[-1]
    assert line.startswith("| digits | 1000x | uniform-qat | infeasible: budget")


def test_baselines_use_plain_finetuning() -> None:
    plain = FinetuneSettings.plain().to_dict()
    for label, m in suite.METHODS.items():
        assert m.finetune_settings() == ({} if label == "slimline" else plain), label
    assert not suite.METHODS["uniform-ptq"].train
    assert suite.ablation_methods()["naive"].finetune_settings() == plain
