"""Liveness (the process answers) and readiness (the database and the broker answer)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from slimline.db.session import ping
from slimline.errors import Unavailable
from slimline.schemas import ErrorOut, HealthOut
from slimline.service.deps import EngineDep, EnqueuerDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> HealthOut:
    return HealthOut(status="ok")


@router.get("/readyz", responses={503: {"model": ErrorOut}})
async def readyz(engine: EngineDep, enqueuer: EnqueuerDep) -> HealthOut:
    checks: dict[str, str] = {}
    for name, check in (("database", lambda: ping(engine)), ("broker", enqueuer.ping)):
        try:
            await run_in_threadpool(check)
            checks[name] = "ok"
        except Unavailable as exc:
            checks[name] = exc.message
    down = {k: v for k, v in checks.items() if v != "ok"}
    if down:
        raise Unavailable("not ready: " + "; ".join(f"{k}: {v}" for k, v in down.items()))
    return HealthOut(status="ready", checks=checks)
