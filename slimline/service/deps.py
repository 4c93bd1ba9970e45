"""Dependencies as ``Annotated`` aliases: settings, engine and enqueuer come from the app's
state (made in the lifespan, never at import); the tenant comes from the bearer key."""

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


def _bearer_key(request: Request) -> str:
    header = request.headers.get("authorization")
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


async def get_tenant(request: Request, engine: EngineDep) -> jobs.Tenant:
    key = _bearer_key(request)

    def lookup() -> jobs.Tenant | None:
        with session_scope(engine) as s:
            return jobs.authenticate(s, key)

    tenant = await run_in_threadpool(lookup)
    if tenant is None:
        raise Unauthorized("API key is not valid (unknown or revoked)", field="authorization")
    return tenant


TenantDep = Annotated[jobs.Tenant, Depends(get_tenant)]
