"""Tenants and API keys: only a hash is stored, and revoked, wrong or malformed keys fail."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import Engine, select

from slimline import jobs
from slimline.db.session import session_scope
from slimline.db.tables import ApiKeyRow
from slimline.errors import Conflict, InvalidInput, NotFound
from tests.db.conftest import T0


def test_key_is_stored_only_as_its_hash_and_authenticates(engine: Engine) -> None:
    with session_scope(engine) as s:
        tenant = jobs.create_tenant(s, "vision-team", now=T0)
        key, record = jobs.create_api_key(s, tenant.id, now=T0)
    assert key.startswith("sl_") and len(key) == 3 + 43  # 32 bytes, urlsafe base64
    assert (
        record.prefix == key[3:11] and record.key_sha256 == hashlib.sha256(key.encode()).hexdigest()
    )
    with session_scope(engine) as s:
        stored = s.scalars(select(ApiKeyRow)).one()
        assert key not in {str(v) for v in vars(stored).values()}
        assert jobs.authenticate(s, key) == tenant
        assert jobs.find_tenant(s, "vision-team") == tenant
        assert jobs.find_tenant(s, "nobody") is None


def test_wrong_malformed_and_revoked_keys_fail(engine: Engine) -> None:
    with session_scope(engine) as s:
        tenant = jobs.create_tenant(s, "nlp")
        key, record = jobs.create_api_key(s, tenant.id)
        other_key, _ = jobs.create_api_key(s, tenant.id)
    with session_scope(engine) as s:
        assert jobs.authenticate(s, key[:-1] + ("A" if key[-1] != "A" else "B")) is None
        assert jobs.authenticate(s, "") is None
        assert jobs.authenticate(s, key[3:]) is None  # no sl_ prefix
        assert jobs.authenticate(s, "sl_" + "x" * 500) is None
        revoked = jobs.revoke_api_key(s, tenant.id, record.id, now=T0)
        assert revoked.revoked and revoked.revoked_at == T0
    with session_scope(engine) as s:
        assert jobs.authenticate(s, key) is None
        assert jobs.authenticate(s, other_key) == tenant  # the tenant's other key still works
        again = jobs.revoke_api_key(s, tenant.id, record.id)
        assert again.revoked_at == T0  # the first revocation time is kept
        assert [k.revoked for k in jobs.list_api_keys(s, tenant.id)].count(True) == 1


def test_tenants_cannot_revoke_each_others_keys(engine: Engine) -> None:
    with session_scope(engine) as s:
        a = jobs.create_tenant(s, "a")
        b = jobs.create_tenant(s, "b")
        key, record = jobs.create_api_key(s, a.id)
    with pytest.raises(NotFound), session_scope(engine) as s:
        jobs.revoke_api_key(s, b.id, record.id)
    with session_scope(engine) as s:
        assert jobs.authenticate(s, key) == a


def test_tenant_names_are_unique_and_validated(engine: Engine) -> None:
    with session_scope(engine) as s:
        jobs.create_tenant(s, "team")
        with pytest.raises(Conflict, match="taken"):
            jobs.create_tenant(s, " team ")
        with pytest.raises(InvalidInput):
            jobs.create_tenant(s, "   ")
        # The failed insert rolled back to its savepoint only: the session still works.
        assert jobs.find_tenant(s, "team") is not None
    with pytest.raises(NotFound), session_scope(engine) as s:
        jobs.create_api_key(s, "no-such-tenant")
