"""Engines and transactions. Nothing happens at import: the app's lifespan and the worker's
process init call ``make_engine(settings.database_url)`` and pass the engine on.

SQLite (the embedded default) is made fit for several processes: WAL (readers never block the
writer), foreign keys on, a busy timeout, and every transaction opened with ``BEGIN IMMEDIATE``.
SQLite allows one writer at a time anyway; taking the write lock when the transaction starts,
rather than at its first write, means a read-then-write transaction waits its turn instead of
failing with "database is locked" when another process wrote in between. It also makes
SAVEPOINT work, which pysqlite's own transaction handling breaks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from slimline.errors import Unavailable

SQLITE_BUSY_TIMEOUT_S = 30.0


def normalize_url(url: str | URL) -> URL:
    """``postgres://`` and ``postgresql://`` mean psycopg 3, the driver slimline ships."""
    u = make_url(url)
    if u.drivername in ("postgres", "postgresql"):
        u = u.set(drivername="postgresql+psycopg")
    return u


def _sqlite_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # Let SQLAlchemy, not pysqlite, decide where transactions begin (see "begin" below).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; fsync at checkpoints
    finally:
        cursor.close()


def _sqlite_on_begin(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str | URL, **kwargs: Any) -> Engine:
    """An engine for ``url`` (Postgres or SQLite) with stale connections detected before use.

    For a SQLite file the parent directory is created, so the embedded default works on a
    fresh machine. In-memory SQLite is refused: every connection would get its own database.
    """
    u = normalize_url(url)
    if u.get_backend_name() == "sqlite":
        if not u.database or u.database == ":memory:":
            raise ValueError(
                f"database_url {str(u)!r}: in-memory SQLite is not supported; "
                "use a file, e.g. sqlite:////path/to/slimline.db"
            )
        Path(u.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        connect_args = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S}
        connect_args.update(kwargs.pop("connect_args", {}))
        engine = create_engine(u, pool_pre_ping=True, connect_args=connect_args, **kwargs)
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    return create_engine(u, pool_pre_ping=True, **kwargs)


def is_unavailable(exc: BaseException) -> bool:
    """True for errors that mean "the database cannot be reached (or is locked) right now"
    rather than "this statement is wrong"."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any exception.

    Database outages surface as ``Unavailable`` (HTTP 503), so callers and the API's error
    handler need not know SQLAlchemy's exception types. Objects stay readable after commit.
    """
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except BaseException as exc:
        # If the connection is gone the pool discards it; the original error is what matters.
        with suppress(DBAPIError):
            session.rollback()
        if isinstance(exc, DBAPIError) and is_unavailable(exc):
            raise Unavailable(
                f"database unavailable ({engine.url.render_as_string(hide_password=True)}): "
                f"{exc.orig}"
            ) from exc
        raise
    finally:
        session.close()


def ping(engine: Engine) -> None:
    """Raise ``Unavailable`` unless the database answers a trivial query (for ``/readyz``
    and the prestart wait)."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except DBAPIError as exc:
        raise Unavailable(
            f"database unavailable ({engine.url.render_as_string(hide_password=True)}): {exc.orig}"
        ) from exc
