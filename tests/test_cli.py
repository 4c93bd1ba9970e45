"""`slimline compress` end to end on the embedded default, and clear errors for bad input."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import slimline
from slimline.cli import main

REPO = Path(__file__).resolve().parents[1]


def run_cli(
    args: list[str], cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    out = cache_dir.parent / "out.safetensors"
    code = main(["compress", *args, "--cache-dir", str(cache_dir), "--out", str(out)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_compress_digits_16x_end_to_end(tmp_path: Path, cache_dir: Path) -> None:
    """The README's demo job through the real entry point, in a subprocess."""
    out, report = tmp_path / "d.safetensors", tmp_path / "d.json"
    env = {**os.environ, "SLIMLINE_CACHE_DIR": str(cache_dir)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "slimline.cli",
            "compress",
            "digits-cnn",
            "--data",
            "digits",
            "--budget",
            "16x",
            "--out",
            str(out),
            "--report",
            str(report),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(report.read_text())
    assert out.stat().st_size == r["file_bytes"] <= r["budget_bytes"] == r["dense_bytes"] // 16
    assert r["planned_bytes"] == r["file_bytes"]
    assert r["ratio"] >= 16.0
    assert r["verify"]["equal"] and r["verify"]["max_abs_diff"] <= 1e-5
    assert r["retention"] > 0.9  # a 16x uniform plan on digits keeps most of the accuracy
    for key in (
        "budget_bytes",
        "dense_bytes",
        "planned_bytes",
        "file_bytes",
        "ratio",
        "dense_metric",
        "metric",
        "retention",
        "method",
        "layers",
        "timings",
    ):
        assert key in r
    assert sum(layer["bytes"] for layer in r["layers"]) + r["other_bytes"] == r["payload_bytes"]
    assert "[fine-tune]" in proc.stderr and "within budget" in proc.stdout
    model = slimline.load(out)
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


def test_unknown_model(cache_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["resnet999", "--data", "digits", "--budget", "16x"], cache_dir, capsys)
    assert code == 2
    assert "error[invalid_model]" in err and "resnet999" in err and "lenet5" in err
    assert "Traceback" not in err


def test_unreadable_pt2(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"this is not an archive")
    code, _, err = run_cli([str(bad), "--data", "digits", "--budget", "16x"], cache_dir, capsys)
    assert code == 2 and "error[invalid_model]" in err and "Traceback" not in err


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.mkdir, (str(Path(os.environ["EVIL_MARK"])),))


def test_pickle_model_is_refused_and_never_run(
    tmp_path: Path,
    cache_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mark = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_MARK", str(mark))
    evil = tmp_path / "model.pt2"
    evil.write_bytes(pickle.dumps(_Evil()))
    code, _, err = run_cli([str(evil), "--data", "digits", "--budget", "16x"], cache_dir, capsys)
    assert code == 2 and "error[invalid_model]" in err
    assert not mark.exists()


@pytest.mark.parametrize("budget", ["20y", "-5", "abc", "0.5x", "1e400"])
def test_malformed_budget(budget: str, cache_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(
        ["digits-cnn", "--data", "digits", "--budget", budget], cache_dir, capsys
    )
    assert code == 2 and "error[invalid_budget]" in err and "'20x'" in err


def test_infeasible_budget_fails_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty_cache = tmp_path / "cache"
    code, _, err = run_cli(
        [
            "lenet5",
            "--data",
            "mnist",
            "--budget",
            "100B",
            "--data-root",
            str(tmp_path / "no-such-root"),
        ],
        empty_cache,
        capsys,
    )
    assert code == 2 and "error[infeasible_budget]" in err
    assert "100 bytes" in err and "smallest size" in err
    assert not empty_cache.exists()  # nothing was trained or cached (and no data was needed)


@pytest.mark.parametrize(
    ("flag", "value", "field"),
    [
        ("--method-settings", '{"probe_steps": 2.5}', "settings.probe_steps = 2.5"),
        ("--method-settings", '{"no_such_knob": 1}', "no_such_knob"),
        ("--finetune", '{"distill": "high"}', "finetune.distill = 'high'"),
    ],
)
def test_bad_settings_fail_before_training(
    flag: str, value: str, field: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty_cache = tmp_path / "cache"
    code, _, err = run_cli(
        ["lenet5", "--data", "mnist", "--budget", "20x", flag, value,
         "--data-root", str(tmp_path / "no-such-root")],
        empty_cache,
        capsys,
    )  # fmt: skip
    assert code == 2 and "error[invalid_option]" in err and field in err
    assert not empty_cache.exists()  # refused before a dense model was trained (or data read)


def test_uniform_method_infeasible_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # above the all-removed floor but below every uniform option
    empty_cache = tmp_path / "cache"
    code, _, err = run_cli(
        ["digits-cnn", "--data", "digits", "--budget", "1200", "--method", "uniform"],
        empty_cache,
        capsys,
    )
    assert code == 2 and "error[infeasible_budget]" in err
    assert "the uniform method reaches" in err
    assert not empty_cache.exists()


def test_bad_dataset_file(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "d.npz"
    x = np.random.rand(20, 1, 8, 8).astype(np.float32)
    x[3, 0, 0, 0] = np.nan
    y = np.zeros(20, dtype=np.int64)
    np.savez(data, x_train=x, y_train=y, x_val=x, y_val=y)
    code, _, err = run_cli(
        ["digits-cnn", "--data", str(data), "--budget", "16x"], cache_dir, capsys
    )
    assert code == 2 and "error[invalid_data]" in err and "NaN" in err


def test_dataset_that_does_not_fit_the_model(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "d.npz"
    x = np.random.rand(20, 3, 5, 5).astype(np.float32)
    y = np.zeros(20, dtype=np.int64)
    np.savez(data, x_train=x, y_train=y, x_val=x, y_val=y)
    code, _, err = run_cli(
        ["digits-cnn", "--data", str(data), "--budget", "16x"], cache_dir, capsys
    )
    assert code == 2 and "error[invalid_data]" in err and "(3, 5, 5)" in err


@pytest.mark.slow
def test_compress_a_pt2_program(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A user's torch.export program (with BatchNorm, trained through the graph) end to end."""
    from torch import nn

    from slimline.models.program import export_program

    torch.manual_seed(0)
    user_model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 10),
    ).eval()
    program = tmp_path / "user.pt2"
    export_program(user_model, torch.randn(2, 1, 8, 8), program)
    out, report = tmp_path / "u.safetensors", tmp_path / "u.json"
    code = main(
        [
            "compress",
            str(program),
            "--data",
            "digits",
            "--budget",
            "6x",
            "--epochs",
            "2",
            "--out",
            str(out),
            "--report",
            str(report),
        ]
    )
    _, err = capsys.readouterr()
    assert code == 0, err
    r = json.loads(report.read_text())
    assert r["file_bytes"] <= r["budget_bytes"] and r["verify"]["equal"]
    assert r["weights_source"] == "program"
    assert any(layer["folded_norm"] for layer in r["layers"])
    model = slimline.load(out, program=program)
    assert model(torch.zeros(4, 1, 8, 8)).shape == (4, 10)


def _jobs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], budgets: list[str]
) -> list[tuple[dict[str, Any], str]]:
    """``slimline compress ARGS --budget B`` for each budget in turn: (report, printed text)."""
    reports = []
    for i, budget in enumerate(budgets):
        report = tmp_path / f"r{i}.json"
        out = tmp_path / f"o{i}.safetensors"
        code = main(
            ["compress", *args, "--budget", budget, "--out", str(out), "--report", str(report)]
        )
        text, err = capsys.readouterr()
        assert code == 0, err
        reports.append((json.loads(report.read_text()), text))
    return reports


def test_a_second_job_on_the_same_model_looks_up_its_measurements(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three jobs on one dense model (16x, 24x, 16x) in a fresh cache folder: the last one's
    scoring runs no loss it can look up there (`slimline.search.measurements`), says so, and
    plans as the first did."""
    mine = tmp_path / "cache"
    mine.mkdir()
    args = ["digits-cnn", "--data", "digits", "--max-steps", "3", "--cache-dir", str(mine)]
    reports = _jobs(tmp_path, capsys, args, ["16x", "24x", "16x"])
    (first, text0), _, (again, text2) = reports
    assert first["measured"] > 0 and "losses measured" in text0
    assert "looked up from earlier runs" not in text0 and "looked up from earlier runs" in text2
    assert again["measured"] == 0
    assert again["measured_reused"] >= first["measured"]
    assert [x["option"] for x in again["layers"]] == [x["option"] for x in first["layers"]]
    assert list((mine / "measured").glob("measured-*.json"))


def test_a_bitshare_job_at_another_budget_loads_the_opening_gate_search(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """bitshare's first gate search is the same at every budget: the second job (another
    budget, same cache folder) loads it (`gate_search_store`) and says so."""
    mine = tmp_path / "cache"
    args = ["digits-cnn", "--data", "digits", "--max-steps", "3", "--cache-dir", str(mine)]
    args += ["--method", "bitshare", "--method-settings", '{"search_steps": 30}']
    reports = _jobs(tmp_path, capsys, args, ["16x", "32x"])
    (first, text0), (second, text1) = reports
    assert [s["looked_up"] for s in first["searches"]][0] is False
    assert [s["looked_up"] for s in second["searches"]][0] is True
    assert "gate searches" in text0 and "loaded from an earlier run" not in text0
    assert "1 loaded from an earlier run" in text1
    assert len(list((mine / "measured").glob("gates-*.safetensors"))) == 1
