"""Alembic environment for slimline.

The URL comes from the caller (``slimline.db.migrate`` puts it in ``config.attributes["url"]``)
or, from the alembic command line, from ``SLIMLINE_DATABASE_URL`` through Settings; never from
alembic.ini. SQLite gets batch mode (it cannot ALTER most things in place).
"""

from __future__ import annotations

from logging.config import fileConfig
from typing import Any

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import text

from slimline.db.session import make_engine, normalize_url
from slimline.db.tables import Base, UTCDateTime

config = context.config
LOCK_KEY = 0x5_11_1E  # any constant shared by every slimline migration run
target_metadata = Base.metadata


def _url() -> str:
    url = config.attributes.get("url")
    if url:
        return str(url)
    # Only the alembic command line gets here; let it log as alembic.ini says.
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    from slimline.config import get_settings

    return normalize_url(get_settings().database_url).render_as_string(hide_password=False)


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | bool:
    # Migrations are frozen history and must not import app code that may change later:
    # our UTC wrapper is rendered as the plain column type it stores as.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run_migrations_offline() -> None:
    url = _url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        render_as_batch=url.startswith("sqlite"),
        render_item=render_item,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = _url()
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=connection.dialect.name == "sqlite",
                compare_type=True,
                render_item=render_item,
            )
            with context.begin_transaction():
                if connection.dialect.name == "postgresql":
                    # Processes migrating at once (several API replicas starting) take turns;
                    # the later ones then find the schema at head and do nothing.
                    connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
