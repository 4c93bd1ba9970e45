"""bench.targets: issue #4's default-recipe targets read from job reports."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from bench import targets

REPORT = Path(__file__).parents[2] / "bench/results/2026-11-24h-lenet300-64x-default.json"


def _report() -> dict[str, Any]:
    return json.loads(REPORT.read_text())


def test_a_report_splits_its_search_from_fine_tuning_alone() -> None:
    r = _report()
    # probing runs inside the fine-tune stage and counts as search
    assert r["probe_seconds"] > 0
    r["scores_seconds"], r["allocation_seconds"], r["probe_seconds"] = 3.0, 0.5, 6.5
    r["timings"]["fine-tune"] = 46.5
    assert targets.search_split(r) == pytest.approx((10.0, 40.0))
    got = targets.row(r)
    assert got["search_share"] == pytest.approx(0.25) and got["search_met"]
    r["probe_seconds"] = 6.6  # just past a quarter
    assert not targets.row(r)["search_met"]


def test_retention_and_bytes_against_the_targets(tmp_path: Path) -> None:
    r = _report()
    got = targets.row(r)
    assert (got["model"], got["budget"], got["retention_target"]) == ("lenet300", "64x", 0.995)
    assert got["retention_met"] and got["within_budget"]
    assert got["file_bytes"] == r["file_bytes"] <= got["budget_bytes"] == r["budget_bytes"]
    below = copy.deepcopy(r)
    below["retention"] = 0.9949
    assert targets.row(below)["retention_met"] is False
    other = copy.deepcopy(r)
    other["budget"] = "48x"  # no target at this budget
    assert targets.row(other)["retention_met"] is None
    # the command: rc 0 when every report meets its targets, 1 when one misses
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(r))
    bad.write_text(json.dumps(below))
    assert targets.main([str(good)]) == 0
    assert targets.main([str(good), str(bad)]) == 1


def test_the_table_names_what_missed(capsys: pytest.CaptureFixture[str]) -> None:
    r = _report()
    r["retention"] = 0.9
    print(targets.table([targets.row(r), targets.row(_report())]))
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4
    assert "| 90.00% | >= 99.5% | **missed** |" in out[2]
    assert f"| {_report()['retention']:.2%} | >= 99.5% | met |" in out[3]
