"""``slimline keys create --tenant NAME``: a new API key for a tenant (made if new), shown once."""

from __future__ import annotations

from slimline import jobs
from slimline.config import Settings
from slimline.db.session import make_engine, session_scope


def create_key_command(settings: Settings, tenant_name: str) -> str:
    """Create the tenant if it does not exist, then a key for it; returns the key (print it:
    only its hash is stored). The database must be migrated."""
    engine = make_engine(settings.database_url)
    try:
        with session_scope(engine) as s:
            tenant = jobs.find_tenant(s, tenant_name) or jobs.create_tenant(s, tenant_name)
            key, _ = jobs.create_api_key(s, tenant.id)
        return key
    finally:
        engine.dispose()
