"""Dependencies as ``Annotated`` aliases: settings, engine and enqueuer come from the app's
state (made in the lifespan, never at import); the tenant comes from the bearer key, or from
the dashboard's session cookie (``service.signin``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Engine

from slimline import jobs
from slimline.config import Settings
from slimline.db.session import session_scope
from slimline.enqueue import Enqueuer
from slimline.service.errors import Unauthorized
from slimline.service.signin import COOKIE, CSRF_HEADER


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def get_enqueuer(request: Request) -> Enqueuer:
    enqueuer: Enqueuer = request.app.state.enqueuer
    return enqueuer


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
EnqueuerDep = Annotated[Enqueuer, Depends(get_enqueuer)]


_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def _cookie_key(request: Request) -> str | None:
    """The key of the dashboard's session cookie; a change sent with only the cookie must
    carry ``X-Requested-With`` (no cross-site form or script can add it)."""
    key = request.cookies.get(COOKIE)
    if not key:
        return None
    if request.method not in _SAFE_METHODS and not request.headers.get(CSRF_HEADER):
        raise Unauthorized(
            f"a request signed in by the session cookie that changes something must send the "
            f"header '{CSRF_HEADER}' (the dashboard does)",
            field="authorization",
        )
    return key


def _bearer_key(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header and (key := _cookie_key(request)):
        return key
    if not header:
        raise Unauthorized(
            "missing API key: send the header 'Authorization: Bearer <key>' "
            "(create a key with `slimline keys create --tenant NAME`)",
            field="authorization",
        )
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized(
            "malformed Authorization header: expected 'Bearer <key>'", field="authorization"
        )
    return key.strip()


async def tenant_for_key(engine: Engine, key: str) -> jobs.Tenant | None:
    def lookup() -> jobs.Tenant | None:
        with session_scope(engine) as s:
            return jobs.authenticate(s, key)

    return await run_in_threadpool(lookup)


async def get_tenant(request: Request, engine: EngineDep) -> jobs.Tenant:
    tenant = await tenant_for_key(engine, _bearer_key(request))
    if tenant is None:
        raise Unauthorized("API key is not valid (unknown or revoked)", field="authorization")
    return tenant


TenantDep = Annotated[jobs.Tenant, Depends(get_tenant)]
