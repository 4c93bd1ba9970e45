"""Tenants and their API keys.

A key is ``sl_`` + 32 random bytes (urlsafe base64), shown once when created. The database
keeps its sha256 and the first characters of its random part (to tell keys apart in a
listing), never the key: a leaked database grants nothing. With 256 random bits a fast
unsalted hash is safe, and it lets ``authenticate`` find the key with one indexed lookup.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from slimline.db.tables import ApiKeyRow, TenantRow, new_id
from slimline.errors import Conflict, InvalidInput, NotFound

KEY_PREFIX = "sl_"
KEY_RANDOM_BYTES = 32
PREFIX_CHARS = 8


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str
    created_at: datetime


@dataclass(frozen=True)
class ApiKey:
    """A key's record; the key itself is never stored. ``prefix`` is shown as ``sl_<prefix>…``."""

    id: str
    tenant_id: str
    prefix: str
    key_sha256: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


def _tenant(row: TenantRow) -> Tenant:
    return Tenant(id=row.id, name=row.name, created_at=row.created_at)


def _api_key(row: ApiKeyRow) -> ApiKey:
    return ApiKey(
        id=row.id,
        tenant_id=row.tenant_id,
        prefix=row.prefix,
        key_sha256=row.key_sha256,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_tenant(session: Session, name: str, *, now: datetime | None = None) -> Tenant:
    """A new tenant; a taken name is a ``Conflict``."""
    name = name.strip()
    if not name or len(name) > 200:
        raise InvalidInput(
            f"tenant name {name!r} is not valid: expected 1 to 200 characters",
            field="name",
            value=name,
        )
    row = TenantRow(id=new_id(), name=name, created_at=now or datetime.now(UTC))
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        raise Conflict(
            f"tenant name {name!r} is taken: choose another name", field="name", value=name
        ) from None
    return _tenant(row)


def find_tenant(session: Session, name: str) -> Tenant | None:
    row = session.scalars(select(TenantRow).where(TenantRow.name == name.strip())).one_or_none()
    return _tenant(row) if row is not None else None


def get_tenant(session: Session, tenant_id: str) -> Tenant:
    row = session.get(TenantRow, tenant_id)
    if row is None:
        raise NotFound(f"tenant {tenant_id!r} not found", field="tenant_id", value=tenant_id)
    return _tenant(row)


def create_api_key(
    session: Session, tenant_id: str, *, now: datetime | None = None
) -> tuple[str, ApiKey]:
    """A new key for the tenant: ``(the key in plain text — show it once, ApiKey record)``."""
    get_tenant(session, tenant_id)
    key = KEY_PREFIX + secrets.token_urlsafe(KEY_RANDOM_BYTES)
    row = ApiKeyRow(
        id=new_id(),
        tenant_id=tenant_id,
        prefix=key[len(KEY_PREFIX) : len(KEY_PREFIX) + PREFIX_CHARS],
        key_sha256=hash_key(key),
        created_at=now or datetime.now(UTC),
        revoked_at=None,
    )
    session.add(row)
    session.flush()
    return key, _api_key(row)


def authenticate(session: Session, key: str) -> Tenant | None:
    """The tenant owning ``key``, or None for an unknown, malformed or revoked key."""
    if not key.startswith(KEY_PREFIX) or len(key) > 128:
        return None
    row = session.execute(
        select(TenantRow)
        .join(ApiKeyRow, ApiKeyRow.tenant_id == TenantRow.id)
        .where(ApiKeyRow.key_sha256 == hash_key(key), ApiKeyRow.revoked_at.is_(None))
    ).scalar_one_or_none()
    return _tenant(row) if row is not None else None


def list_api_keys(session: Session, tenant_id: str) -> list[ApiKey]:
    rows = session.scalars(
        select(ApiKeyRow)
        .where(ApiKeyRow.tenant_id == tenant_id)
        .order_by(ApiKeyRow.created_at, ApiKeyRow.id)
    )
    return [_api_key(r) for r in rows]


def revoke_api_key(
    session: Session, tenant_id: str, key_id: str, *, now: datetime | None = None
) -> ApiKey:
    """Revoke one of the tenant's keys (revoking twice keeps the first time). Another
    tenant's key is ``NotFound``, like a missing one."""
    session.execute(
        update(ApiKeyRow)
        .where(
            ApiKeyRow.id == key_id,
            ApiKeyRow.tenant_id == tenant_id,
            ApiKeyRow.revoked_at.is_(None),
        )
        .values(revoked_at=now or datetime.now(UTC))
        .execution_options(synchronize_session=False)
    )
    row = session.scalars(
        select(ApiKeyRow)
        .where(ApiKeyRow.id == key_id, ApiKeyRow.tenant_id == tenant_id)
        .execution_options(populate_existing=True)
    ).one_or_none()
    if row is None:
        raise NotFound(f"API key {key_id!r} not found", field="key_id", value=key_id)
    return _api_key(row)
