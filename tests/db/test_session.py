"""Engines, transactions and settings: the SQLite embedded default is set up for several
processes, outages become ``Unavailable``, and settings derive their paths from data_dir."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from slimline import jobs
from slimline.config import Settings
from slimline.db.migrate import upgrade
from slimline.db.session import make_engine, normalize_url, ping, session_scope
from slimline.errors import Unavailable
from tests.db.conftest import T0


def test_sqlite_uses_wal_foreign_keys_and_immediate_transactions(sqlite_engine: Engine) -> None:
    with sqlite_engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30000
    # Foreign keys are enforced: a key for a missing tenant is refused.
    with pytest.raises(IntegrityError, match="FOREIGN KEY"), sqlite_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO api_keys (id, tenant_id, prefix, key_sha256, created_at) "
                "VALUES ('k', 'missing', 'p', 'h', '2030-01-01')"
            )
        )


def test_session_scope_commits_or_rolls_back(engine: Engine) -> None:
    with pytest.raises(RuntimeError), session_scope(engine) as s:
        jobs.create_tenant(s, "rolled-back", now=T0)
        raise RuntimeError("boom")
    with session_scope(engine) as s:
        assert jobs.find_tenant(s, "rolled-back") is None
        jobs.create_tenant(s, "kept", now=T0)
    with session_scope(engine) as s:
        assert jobs.find_tenant(s, "kept") is not None


def test_unreachable_database_is_unavailable() -> None:
    engine = make_engine("postgresql://postgres@127.0.0.1:1/none")
    with pytest.raises(Unavailable, match="database unavailable") as info:
        ping(engine)
    assert info.value.http_status == 503
    with pytest.raises(Unavailable), session_scope(engine) as s:
        jobs.find_tenant(s, "x")


def test_urls_and_in_memory_sqlite() -> None:
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("sqlite:///x.db").drivername == "sqlite"
    with pytest.raises(ValueError, match="in-memory"):
        make_engine("sqlite://")


def test_settings_default_to_the_embedded_deployment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("DATA_DIR", "DATABASE_URL", "BROKER_URL", "ARTIFACT_DIR", "RESULT_BACKEND"):
        monkeypatch.delenv(f"SLIMLINE_{name}", raising=False)
    monkeypatch.setenv("SLIMLINE_DATA_DIR", str(tmp_path))
    s = Settings()
    assert s.database_url == f"sqlite:///{tmp_path}/slimline.db" and s.uses_sqlite
    assert s.broker_url == f"filesystem://{tmp_path}/broker"
    assert s.filesystem_broker_dir == tmp_path / "broker"
    assert s.artifact_dir == tmp_path / "artifacts" and s.result_backend is None
    assert (s.max_upload_bytes, s.max_layers, s.max_attempts) == (512 * 1024**2, 2000, 3)
    assert (s.heartbeat_s, s.stale_after_s, s.job_time_limit_s) == (30.0, 120.0, 6 * 3600.0)
    with pytest.raises(ValidationError, match="frozen"):
        s.max_attempts = 5  # type: ignore[misc]
    # The default URL works with no other setup: the directory is created on first use.
    upgrade(s.database_url)
    with session_scope(make_engine(s.database_url)) as session:
        assert jobs.find_tenant(session, "nobody") is None


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLIMLINE_DATABASE_URL", "postgresql://slimline@db:5432/slimline")
    monkeypatch.setenv("SLIMLINE_BROKER_URL", "redis://redis:6379/0")
    monkeypatch.setenv("SLIMLINE_MAX_ATTEMPTS", "5")
    s = Settings()
    assert (s.database_url, s.broker_url, s.max_attempts) == (
        "postgresql://slimline@db:5432/slimline", "redis://redis:6379/0", 5,
    )  # fmt: skip
    assert not s.uses_sqlite and s.filesystem_broker_dir is None
    monkeypatch.setenv("SLIMLINE_MAX_ATTEMPTS", "0")
    with pytest.raises(ValidationError, match="max_attempts"):
        Settings()


def test_records_do_not_import_torch() -> None:
    # The API process imports these; it must not pay for (or depend on) torch.
    code = (
        "import sys, slimline.jobs, slimline.config, slimline.db.migrate, slimline.db.uploads, "
        "slimline.db.artifacts; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
