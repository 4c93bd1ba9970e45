"""The migrations build exactly the tables the code declares, and run both ways."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from slimline.db.migrate import alembic_config, current_revision, downgrade, main, upgrade
from slimline.db.session import make_engine
from slimline.db.tables import Base

TABLES = {"tenants", "api_keys", "models", "datasets", "jobs", "job_events", "scores", "artifacts"}


def _head(url: str) -> str:
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    assert head is not None
    return head


def _round_trip(url: str) -> None:
    engine = make_engine(url)
    try:
        upgrade(url)
        assert current_revision(engine) == _head(url)
        assert set(inspect(engine).get_table_names()) >= TABLES
        downgrade(url, "base")
        assert current_revision(engine) is None
        assert not TABLES & set(inspect(engine).get_table_names())
        upgrade(url)
        assert set(inspect(engine).get_table_names()) >= TABLES
        with engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
            )
        assert diff == [], f"migrations and slimline.db.tables disagree: {diff}"
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade_postgres_matches_tables(fresh_pg_url: str) -> None:
    _round_trip(fresh_pg_url)


def test_upgrade_downgrade_upgrade_sqlite_matches_tables(tmp_path: Path) -> None:
    _round_trip(f"sqlite:///{tmp_path / 'slimline.db'}")


def test_prestart_command_migrates_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nested' / 'slimline.db'}"
    assert main(["--url", url, "--wait", "5"]) == 0
    engine = make_engine(url)
    try:
        assert current_revision(engine) == _head(url)
    finally:
        engine.dispose()


def test_prestart_command_fails_when_database_unreachable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Port 1 refuses connections at once: the wait gives up and says why.
    code = main(["--url", "postgresql://postgres@127.0.0.1:1/x", "--wait", "0"])
    assert code == 1
    assert "error[unavailable]" in capsys.readouterr().err


@pytest.mark.slow
def test_prestart_processes_migrating_at_once_take_turns(fresh_pg_url: str) -> None:
    # Several replicas may start together; the advisory lock in env.py serialises them.
    cmd = [sys.executable, "-m", "slimline.db.migrate", "--url", fresh_pg_url, "--wait", "10"]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    engine = make_engine(fresh_pg_url)
    try:
        assert current_revision(engine) == _head(fresh_pg_url)
    finally:
        engine.dispose()
