"""The measurements folder's size limit (`store_folder`): least recently used files go first."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from torch import nn

from slimline.budget import Budget
from slimline.config import Settings
from slimline.pipeline.stages import JobSpec, JobState, search_context
from slimline.search.measurements import MeasuredLosses
from slimline.search.methods import gate_search_store
from slimline.search.methods.bitshare_gates import GatedConfig, GateSearch
from slimline.search.store_folder import DEFAULT_MAX_BYTES, StoreFolder


def _file(folder: Path, name: str, size: int, age: float) -> Path:
    """A file of ``size`` bytes last used ``age`` seconds ago."""
    p = folder / name
    p.write_bytes(b"x" * size)
    t = p.stat().st_mtime - age
    os.utime(p, (t, t))
    return p


def test_prune_removes_the_least_recently_used_until_the_rest_fit(tmp_path: Path) -> None:
    old = _file(tmp_path, "measured-a.json", 400, age=300)
    (tmp_path / "measured-a.lock").touch()
    mid = _file(tmp_path, "gates-b.safetensors", 400, age=200)
    new = _file(tmp_path, "measured-c.json", 400, age=100)
    other = _file(tmp_path, "dense-model.safetensors", 5000, age=1000)  # not the stores'
    removed = StoreFolder(tmp_path, max_bytes=900).prune(keep=new)
    assert removed == [old]
    assert not old.exists() and not (tmp_path / "measured-a.lock").exists()
    assert mid.exists() and new.exists() and other.exists()
    # the file just written stays, even when it alone is over the limit
    assert StoreFolder(tmp_path, max_bytes=10).prune(keep=mid) == [new]
    assert mid.exists()


def test_reading_a_file_keeps_it_longer(tmp_path: Path) -> None:
    first, second = MeasuredLosses.open(tmp_path, "f1"), MeasuredLosses.open(tmp_path, "f2")
    first.put("k", 1.0)
    second.put("k", 2.0)
    first.save()
    second.save()
    for p, age in ((first.path, 300), (second.path, 200)):
        assert p is not None
        t = p.stat().st_mtime - age
        os.utime(p, (t, t))
    again = MeasuredLosses.open(tmp_path, "f1")  # read: now the most recently used
    assert again.get("k") == 1.0
    assert first.path is not None and second.path is not None
    size = first.path.stat().st_size
    removed = StoreFolder(tmp_path, max_bytes=size + 1).prune(keep=tmp_path / "none")
    assert removed == [second.path]


def test_saving_losses_holds_the_folder_to_its_limit(tmp_path: Path) -> None:
    folder = StoreFolder(tmp_path, max_bytes=1)
    a = MeasuredLosses.open(folder, "fa")
    a.put("k", 1.0)
    a.save()
    b = MeasuredLosses.open(folder, "fb")
    b.put("k", 2.0)
    b.save()
    assert a.path is not None and b.path is not None
    assert not a.path.exists() and b.path.exists()
    assert MeasuredLosses.open(folder, "fa").get("k") is None  # gone: measured again
    assert b.values == {"k": 2.0}


def test_saving_a_gate_search_holds_the_folder_to_its_limit(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    found = GateSearch(0.1, {"": GatedConfig(4, 1.0)}, model, loss=1.0, steps=10)
    folder = StoreFolder(tmp_path, max_bytes=1)
    old = _file(tmp_path, "measured-x.json", 10, age=100)
    assert gate_search_store.save(folder, "k1", found)
    assert not old.exists()
    assert gate_search_store.save(folder, "k2", found)
    assert [p.name for p in tmp_path.iterdir()] == ["gates-k2.safetensors"]


def test_the_limit_is_a_setting_that_reaches_the_plan_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Settings().measured_max_bytes == DEFAULT_MAX_BYTES
    monkeypatch.setenv("SLIMLINE_MEASURED_MAX_BYTES", "12345")
    assert Settings().measured_max_bytes == 12345
    monkeypatch.setenv("SLIMLINE_MEASURED_MAX_BYTES", "0")
    with pytest.raises(ValueError, match="measured_max_bytes"):
        Settings()
    with pytest.raises(ValueError, match="max_bytes"):
        StoreFolder(tmp_path, max_bytes=0)
    spec = JobSpec(
        model="lenet300", data="mnist", budget=Budget(ratio=8.0), cache_dir=tmp_path,
        measured_max_bytes=12345,
    )  # fmt: skip
    state = JobState(spec=spec, model=nn.Linear(2, 2))
    ctx = search_context(state, "plan", lambda stage, event: None)
    assert ctx.measurements == StoreFolder(tmp_path / "measured", 12345)
    assert search_context(state, "fine-tune", lambda stage, event: None).measurements is None
