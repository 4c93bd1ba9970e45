"""`slimline keys create` on the embedded default (SQLite): the key printed authenticates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from slimline import jobs
from slimline.config import Settings
from slimline.db.session import make_engine, session_scope


def test_keys_create_prints_a_working_key_once(tmp_path: Path) -> None:
    env = {"SLIMLINE_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    run = [sys.executable, "-m", "slimline.cli", "keys", "create", "--tenant", "acme"]
    first = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120)
    second = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0 and second.returncode == 0, first.stderr
    key1, key2 = first.stdout.strip(), second.stdout.strip()
    assert key1.startswith("sl_") and key1 != key2
    engine = make_engine(Settings(data_dir=tmp_path).database_url)
    try:
        with session_scope(engine) as s:
            t1, t2 = jobs.authenticate(s, key1), jobs.authenticate(s, key2)
            assert t1 is not None and t2 is not None and t1.id == t2.id and t1.name == "acme"
            assert jobs.authenticate(s, key1 + "x") is None
    finally:
        engine.dispose()
    assert key1 not in (tmp_path / "slimline.db").read_bytes().decode("latin-1")
