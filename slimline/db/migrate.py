"""Schema migrations through Alembic's command API, for the tests, the embedded server's
startup and the deployment's one-shot prestart step::

    python -m slimline.db.migrate            # wait for the database, then upgrade to head
    python -m slimline.db.migrate --wait 60  # give up (exit 1) after 60 s

The URL comes from the caller (or ``SLIMLINE_DATABASE_URL`` / Settings for the command line),
never from ``alembic.ini``. The scripts live in ``migrations/`` at the repository root (an
editable install, a checkout or the container image); ``SLIMLINE_MIGRATIONS_DIR`` overrides.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine

from slimline.db.session import make_engine, normalize_url, ping
from slimline.errors import Unavailable

REPO_ROOT = Path(__file__).resolve().parents[2]


def migrations_dir() -> Path:
    path = Path(os.environ.get("SLIMLINE_MIGRATIONS_DIR") or REPO_ROOT / "migrations")
    if not (path / "env.py").is_file():
        raise FileNotFoundError(
            f"Alembic scripts not found at {path}: run from a checkout or an editable install, "
            "or set SLIMLINE_MIGRATIONS_DIR to the folder holding env.py"
        )
    return path


def alembic_config(url: str) -> Config:
    """An Alembic config for ``url``; ``env.py`` reads the URL from ``attributes``."""
    ini = REPO_ROOT / "alembic.ini"
    cfg = Config(str(ini)) if ini.is_file() else Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["url"] = normalize_url(url).render_as_string(hide_password=False)
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Downgrade to ``revision`` ("base" drops every table slimline created)."""
    command.downgrade(alembic_config(url), revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for an empty one."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def wait_for_database(url: str, timeout_s: float = 60.0, interval_s: float = 1.0) -> None:
    """Poll until the database answers; raise ``Unavailable`` after ``timeout_s``."""
    engine = make_engine(url)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                ping(engine)
                return
            except Unavailable:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(interval_s)
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    from slimline.config import get_settings

    parser = argparse.ArgumentParser(prog="python -m slimline.db.migrate", description=__doc__)
    parser.add_argument("--url", help="database URL (default: SLIMLINE_DATABASE_URL / Settings)")
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the db")
    parser.add_argument("--revision", default="head")
    args = parser.parse_args(argv)
    url = args.url or get_settings().database_url
    try:
        wait_for_database(url, timeout_s=args.wait)
    except Unavailable as exc:
        print(f"error[{exc.code}]: {exc.message}", file=sys.stderr)
        return 1
    upgrade(url, args.revision)
    return 0


if __name__ == "__main__":
    sys.exit(main())
