"""Records tests run against a real Postgres (a fresh database per test session, migrated with
the real migrations, dropped at the end) and against SQLite, the embedded default.

``engine`` is parametrized over both backends, so every state-machine test is a contract test
that each implementation must pass. Tables are emptied before each test.
``SLIMLINE_TEST_POSTGRES`` points at another server (an admin URL, any database).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from slimline.db.migrate import upgrade
from slimline.db.session import make_engine, normalize_url, session_scope
from slimline.db.tables import Base
from slimline.db.tenants import Tenant, create_tenant
from slimline.db.uploads import add_model

PG_ADMIN = os.environ.get("SLIMLINE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
T0 = datetime(2030, 1, 1, tzinfo=UTC)  # tests pass time explicitly; nothing sleeps


def _conninfo(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_admin() -> URL:
    url = normalize_url(PG_ADMIN)
    problem = None
    try:
        with psycopg.connect(_conninfo(url), connect_timeout=5, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        problem = str(exc).strip()
    if problem is not None:
        pytest.fail(
            f"Postgres not reachable at {url.host}:{url.port} as {url.username!r} ({problem}). "
            "These tests need a real Postgres: start it with `service postgresql start` "
            "(or `pg_ctlcluster 15 main start`), or set SLIMLINE_TEST_POSTGRES to an admin URL "
            "such as postgresql://postgres@127.0.0.1:5432/postgres",
            pytrace=False,
        )
    return url


def create_pg_database(admin: URL) -> URL:
    name = f"slimline_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_conninfo(admin), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin.set(database=name)


def drop_pg_database(admin: URL, url: URL) -> None:
    with psycopg.connect(_conninfo(admin), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')


@pytest.fixture
def fresh_pg_url(pg_admin: URL) -> Iterator[str]:
    """An empty Postgres database of its own, for migration tests."""
    url = create_pg_database(pg_admin)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        drop_pg_database(pg_admin, url)


@pytest.fixture(scope="session")
def pg_engine(pg_admin: URL) -> Iterator[Engine]:
    url = create_pg_database(pg_admin)
    engine = None
    try:
        upgrade(url.render_as_string(hide_password=False))
        engine = make_engine(url, pool_size=8)
        yield engine
    finally:
        if engine is not None:
            engine.dispose()
        drop_pg_database(pg_admin, url)


@pytest.fixture(scope="session")
def sqlite_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'slimline.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


def empty_tables(engine: Engine) -> None:
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for name in tables:
                conn.execute(text(f"DELETE FROM {name}"))


@pytest.fixture(params=["postgres", "sqlite"])
def engine(request: pytest.FixtureRequest) -> Engine:
    """A migrated, emptied database on each backend."""
    eng: Engine = request.getfixturevalue(
        {"postgres": "pg_engine", "sqlite": "sqlite_engine"}[request.param]
    )
    empty_tables(eng)
    return eng


@pytest.fixture
def pg(pg_engine: Engine) -> Engine:
    """Postgres only (real concurrency)."""
    empty_tables(pg_engine)
    return pg_engine


def make_tenant(engine: Engine, name: str | None = None) -> tuple[Tenant, str]:
    """A tenant and one uploaded model of its own: ``(tenant, model_id)``."""
    with session_scope(engine) as s:
        tenant = create_tenant(s, name or f"team-{uuid.uuid4().hex[:8]}", now=T0)
        model, _ = add_model(
            s,
            tenant.id,
            sha256=uuid.uuid4().hex * 2,
            kind="zoo",
            zoo_name="lenet5",
            filename="lenet5.safetensors",
            path=f"{tenant.id}/models/lenet5.safetensors",
            bytes=1234,
            now=T0,
        )
    return tenant, model.id


SPEC = {"budget": "16x", "method": "uniform", "seed": 0}


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]
