"""bench.suite end to end on digits with a few steps: every recorded field, the files it writes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from bench import suite
from slimline.search.method_settings import OptunaSettings
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
    assert dense["sha256"] == hashlib.sha256(Path(dense["path"]).read_bytes()).hexdigest()
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
    assert f"weights sha256 {dense['sha256'][:12]}" in md
    speed = doc["meta"]["matmul_gflops"]  # a 512^3 product: 0.27 GFLOP, far from 1 ms here
    assert 0.1 < speed < 1e4 and f"({speed:g} GFLOP/s a thread)" in md
    assert doc["meta"]["cpu_model"] and f"{doc['meta']['cpu_model']}, " in md
    assert dense["reference"] == "off"  # --dense-steps: a short model, never the reference

    # --resume skips the recorded cells: nothing runs again.
    args.resume = True
    suite.run_suite(args, [])
    again = json.loads(stem.with_suffix(".json").read_text())
    assert [c["total_seconds"] for c in again["cells"]] == [
        c["total_seconds"] for c in doc["cells"]
    ]


@pytest.mark.slow
def test_cells_run_side_by_side(tmp_path: Path, data_root: Path, cache_dir: Path) -> None:
    args = suite.parse_args(
        [
            "--tasks", "digits", "--methods", "uniform-ptq", "uniform-qat", "--budgets", "16",
            "32", "--max-steps", "3", "--dense-steps", "150", "--jobs", "2", "--date",
            "2000-01-02", "--data-root", str(data_root), "--cache-dir", str(cache_dir),
            "--results", str(tmp_path),
        ]
    )  # fmt: skip
    suite.run_suite(args, [])
    doc = json.loads((tmp_path / "2000-01-02-digits.json").read_text())
    assert doc["meta"]["jobs"] == 2 and doc["meta"]["wall_seconds"] > 0
    got = {(c["method"], c["ratio_target"]): c for c in doc["cells"]}
    assert set(got) == {(m, r) for m in ("uniform-ptq", "uniform-qat") for r in (16.0, 32.0)}
    for key, cell in got.items():
        assert cell["status"] == "ok" and cell["reload_equal"] and cell["within_budget"], key
    # the markdown lists every cell in the suite's order, whichever finished first
    md = (tmp_path / "2000-01-02-digits.md").read_text()
    order = [line.split(" | ")[1:3] for line in md.splitlines() if line.startswith("| digits")]
    assert order == [["16x", "uniform-ptq"], ["16x", "uniform-qat"], ["32x", "uniform-ptq"],
                     ["32x", "uniform-qat"]]  # fmt: skip
    assert "2 cells at once" in md


def test_longest_cells_go_first_and_jobs_default_to_the_cores() -> None:
    args = suite.parse_args(["--max-steps", "10"])
    cells = suite.make_cells("bytegpt", [16.0], list(suite.METHODS.values()), args, None)
    cells += suite.make_cells("digits", [16.0], list(suite.METHODS.values()), args, None)
    ranked = sorted(cells, key=lambda c: -suite.cell_cost(c))
    assert (ranked[0].task, ranked[0].method) == ("bytegpt", "bitshare")
    assert ranked[-1].task == "digits"
    assert suite.default_jobs(1) == max(1, os.cpu_count() or 1)
    assert suite.parse_args(["--device", "cuda"]).jobs == 1  # one GPU: one cell at a time
    with pytest.raises(SystemExit):
        suite.parse_args(["--jobs", "0"])


@pytest.mark.parametrize("cap", [10, 100, 200, 300, 100_000])
def test_optuna_trials_come_out_of_the_step_cap(cap: int) -> None:
    settings, rest = suite.optuna_split(cap, {})
    trials, proxy = settings["trials"], settings["proxy_steps"]
    assert trials == suite.OPTUNA_TRIALS and 1 <= proxy <= OptunaSettings().proxy_steps
    if cap >= 2 * trials:
        assert trials * proxy + rest == cap  # the same steps in total as every other method
        assert trials * proxy <= suite.OPTUNA_PROXY_SHARE * cap
    # explicit settings are kept; their steps still come out of the cap
    kept, rest = suite.optuna_split(cap, {"trials": 2, "proxy_steps": 3})
    assert kept == {"trials": 2, "proxy_steps": 3} and rest == max(1, cap - 6)
    args = suite.parse_args(["--max-steps", str(cap)])
    cell = suite.make_cells("lenet5", [64.0], [suite.METHODS["optuna"]], args, None)[0]
    assert cell.method_settings == settings and cell.max_steps == suite.optuna_split(cap, {})[1]


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


def test_resume_refuses_cells_from_other_dense_weights(capsys: pytest.CaptureFixture[str]) -> None:
    ok = {"status": "ok", "sha256": "a" * 64}
    suite.check_same_dense("lenet5", ok, dict(ok))  # the same weights: carried on
    with pytest.raises(SystemExit, match="sha256 bbbbbbbbbbbb.*started from aaaaaaaaaaaa"):
        suite.check_same_dense("lenet5", ok, {"status": "ok", "sha256": "b" * 64})
    suite.check_same_dense("lenet5", {"status": "ok"}, ok)  # an older file: a warning only
    assert "does not record its dense weights' sha256" in capsys.readouterr().out


def test_summary_warns_when_files_started_from_other_dense_weights(tmp_path: Path) -> None:
    from bench import summary

    def doc(name: str, digest: str | None) -> Path:
        dense = {"status": "ok", **({"sha256": digest} if digest else {})}
        path = tmp_path / name
        path.write_text(json.dumps({"meta": {"dense": {"lenet5": dense}}, "cells": []}))
        return path

    a, b, c = doc("a.json", "1" * 64), doc("b.json", "1" * 64), doc("c.json", "2" * 64)
    assert summary.dense_mismatches([a, b]) == []
    (line,) = summary.dense_mismatches([a, b, c])
    assert (
        line == "- lenet5: dense weights differ between files: 111111111111: a.json, b.json; "
        "222222222222: c.json"
    )
    (line,) = summary.dense_mismatches([a, doc("d.json", None)])
    assert "not recorded: d.json" in line


def test_summary_takes_a_later_files_cell_for_the_table_and_the_search_times(
    tmp_path: Path,
) -> None:
    from bench import summary

    def cell(retention: float, probe: float) -> dict[str, Any]:
        return {
            "task": "lenet5", "ratio_target": 8.0, "method": "slimline", "status": "ok",
            "retention": retention, "scores_seconds": 1.0, "allocation_seconds": 0.0,
            "probe_seconds": probe, "search_seconds": 1.0, "finetune_seconds": 10.0 + probe,
        }  # fmt: skip

    first, later = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({"cells": [cell(0.99, 2.0)]}))
    later.write_text(json.dumps({"cells": [cell(0.995, 4.0)]}))
    cells = summary._cells([first, later])
    assert [c["retention"] for c in cells] == [0.995]
    assert "99.50" in summary.table(cells) and "99.00" not in summary.table(cells)
    (line,) = summary.search_share(cells).splitlines()
    assert line == "- lenet5 8x: search 5.0 s, fine-tuning alone 10.0 s: +50%"


def test_summary_plots_the_merged_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import summary

    def cell(method: str, metric: float) -> dict[str, Any]:
        return {"task": "lenet5", "ratio_target": 8.0, "method": method, "status": "ok",
                "retention": metric, "metric": metric, "file_bytes": 100}  # fmt: skip

    def meta(date: str, dense_metric: float) -> dict[str, Any]:
        return {"date": date, "methods": ["?"], "dense": {"lenet5": {"metric": dense_metric}}}

    first, later = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({"meta": meta("a", 0.99), "cells": [
        cell("slimline", 0.9), cell("bitshare", 0.8), cell("uniform-ptq", 0.5)]}))  # fmt: skip
    later.write_text(json.dumps({"meta": meta("b", 0.98), "cells": [cell("slimline", 0.95)]}))
    seen: list[tuple[dict[str, Any], Path, str]] = []

    def plot(doc: dict[str, Any], path: Path, task: str) -> Path:
        seen.append((doc, path, task))
        return path

    monkeypatch.setattr(suite, "plot", plot)
    cells = summary._cells([first, later])
    written = summary.write_plots([first, later], cells, tmp_path / "table")
    assert written == [tmp_path / "table-lenet5.png"]
    ((doc, _, task),) = seen
    assert task == "lenet5" and doc["meta"]["date"] == "table"
    assert doc["meta"]["methods"] == ["uniform-ptq", "bitshare", "slimline"]
    assert doc["meta"]["dense"]["lenet5"]["metric"] == 0.98  # the last file's dense model
    assert sorted((c["method"], c["metric"]) for c in doc["cells"]) == [
        ("bitshare", 0.8), ("slimline", 0.95), ("uniform-ptq", 0.5)]  # fmt: skip


def test_slimline_columns_probe_without_a_time_limit() -> None:
    # no method's search is held to time in the suite, so slimline's plans do not depend on
    # the machine's speed; the job's default (search_share 0.25) is for users' jobs
    from slimline.search.method_settings import ConstrainedSettings

    assert ConstrainedSettings().search_share == 0.25
    assert suite.METHODS["slimline"].settings == {"search_share": None}
    ablation = suite.ablation_methods()
    assert all(m.settings and m.settings["search_share"] is None for m in ablation.values())
    assert ablation["slimline-admm"].settings == {"search_share": None, "projections": 3}


def test_finetune_seed_keeps_the_dense_weights_of_the_seed(data_root: Path) -> None:
    dense = {"status": "ok", "path": "/cache/dense-lenet5-abc.safetensors", "weights": None}
    base = ["--max-steps", "1", "--data-root", str(data_root), "--seed", "0"]
    plain = suite.parse_args(base)
    seeded = suite.parse_args([*base, "--finetune-seed", "2"])
    assert suite._cell_weights(dense, plain) is None  # the job finds the cache by its seed
    assert suite._cell_weights(dense, seeded) == dense["path"]  # not the seed-2 dense model
    short = {**dense, "weights": "/cache/dense-lenet5-short-abc.safetensors"}
    assert suite._cell_weights(short, seeded) == short["weights"]
    methods = [suite.METHODS["slimline"]]
    (cell,) = suite.make_cells("lenet5", [8.0], methods, seeded, dense["path"])
    assert cell.seed == 2 and cell.weights == dense["path"]
    (cell,) = suite.make_cells("lenet5", [8.0], methods, plain, None)
    assert cell.seed == 0 and cell.weights is None


def test_seeds_table_gives_mean_and_spread_per_method(tmp_path: Path) -> None:
    from bench import seeds

    def run(name: str, seed: int | None, cells: dict[str, float]) -> Path:
        path = tmp_path / name
        meta = {"seed": 0, "finetune_seed": seed, "dense": {}}
        rows = [
            {"task": "lenet5", "ratio_target": 8.0, "method": m, "status": "ok", "retention": r}
            for m, r in cells.items()
        ]
        rows.append({"task": "lenet5", "ratio_target": 8.0, "method": "optuna", "status": "error"})
        path.write_text(json.dumps({"meta": meta, "cells": rows}))
        return path

    files = [
        run("s0.json", None, {"slimline": 0.9990, "bitshare": 1.0010, "uniform-qat": 0.99}),
        run("s1.json", 1, {"slimline": 1.0020, "bitshare": 0.9990}),
        run("s2.json", 2, {"slimline": 1.0000, "bitshare": 0.9980}),
    ]
    runs = seeds.by_seed(files)
    assert runs[("lenet5", 8.0, "slimline")] == {0: 0.9990, 1: 1.0020, 2: 1.0000}
    lines = seeds.table(runs).splitlines()
    assert lines[0] == "| task | budget | bitshare | slimline |"  # one seed: left out
    assert lines[2] == ("| lenet5 | 8x | 99.93 (99.80-100.10, 3) | **100.03** (99.90-100.20, 3) |")
    # seed by seed, slimline - bitshare is -0.2, +0.3, +0.2 points: mean +0.1, sd 0.265,
    # t(0.975, 2 df) 4.303, so +-0.657: the interval holds zero
    (row,) = seeds.paired_table(runs).splitlines()[2:]
    assert row == "| lenet5 | 8x | 3 | +0.10 (-0.56..+0.76) noise |"


def test_a_paired_gap_is_ahead_or_behind_only_where_its_interval_leaves_out_zero() -> None:
    from bench import seeds

    lead, other = {0: 1.0, 1: 1.001, 2: 1.002}, {0: 0.999, 1: 0.9995, 2: 1.0005}
    d = seeds.paired(lead, other)  # +0.10, +0.15, +0.15 points: +0.133 +- 0.072
    assert d is not None and d["seeds"] == 3
    assert d["mean"] == pytest.approx(0.1333, abs=1e-3)
    assert (d["low"], d["high"]) == (
        pytest.approx(0.0616, abs=1e-3),
        pytest.approx(0.2051, abs=1e-3),
    )
    assert seeds.verdict(d) == "ahead"
    behind = seeds.paired(other, lead)
    assert behind is not None and seeds.verdict(behind) == "behind"
    assert seeds.paired({0: 1.0, 1: 1.0}, {1: 0.9, 2: 0.9}) is None  # one seed in common
