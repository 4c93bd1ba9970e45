"""The dashboard's pages: static HTML shells from ``service/static/pages`` whose scripts read
the REST API with the session cookie. The routes check the cookie first, so a visitor who is
not signed in is sent to the sign-in page, and another tenant's job (or an unknown id) gets
the not-found page with status 404, not an empty shell."""

from __future__ import annotations

from functools import cache
from importlib import resources
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from slimline import jobs
from slimline.db.session import session_scope
from slimline.errors import NotFound
from slimline.service.deps import EngineDep, tenant_for_key
from slimline.service.signin import COOKIE

router = APIRouter(tags=["dashboard"], include_in_schema=False)
STATIC = resources.files("slimline.service") / "static"


def static_files() -> StaticFiles:
    """``/static``: the pages' scripts, styles and the vendored chart library."""
    return StaticFiles(directory=str(STATIC))


@cache
def _page(name: str) -> str:
    return (STATIC / "pages" / f"{name}.html").read_text(encoding="utf-8")


def _html(name: str, status: int = 200) -> HTMLResponse:
    headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
    return HTMLResponse(_page(name), status_code=status, headers=headers)


async def _signed_in(request: Request, engine: EngineDep) -> jobs.Tenant | None:
    key = request.cookies.get(COOKIE)
    return await tenant_for_key(engine, key) if key else None


def _to_signin(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/signin?next={quote(target, safe='')}", status_code=303)


@router.get("/")
@router.get("/dashboard")
def home() -> RedirectResponse:
    return RedirectResponse("/jobs", status_code=303)


@router.get("/signin")
def signin_page() -> Response:
    return _html("signin")


@router.get("/jobs")
async def jobs_page(request: Request, engine: EngineDep) -> Response:
    if await _signed_in(request, engine) is None:
        return _to_signin(request)
    return _html("jobs")


@router.get("/jobs/new")
async def submit_page(request: Request, engine: EngineDep) -> Response:
    if await _signed_in(request, engine) is None:
        return _to_signin(request)
    return _html("submit")


@router.get("/jobs/{job_id}")
async def job_page(job_id: str, request: Request, engine: EngineDep) -> Response:
    tenant = await _signed_in(request, engine)
    if tenant is None:
        return _to_signin(request)

    def owned() -> bool:
        try:
            with session_scope(engine) as s:
                jobs.get_job(s, tenant.id, job_id)
        except NotFound:
            return False
        return True

    return _html("job") if await run_in_threadpool(owned) else _html("not_found", status=404)
