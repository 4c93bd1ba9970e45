"""The access table: every route of the app, enumerated from ``app.routes`` (so a new route
cannot be forgotten), called with no credentials, a malformed one, a revoked key, another
tenant's key and the owner's key — each both as a bearer key and as the dashboard's session
cookie — and the status checked for each.

A route missing from ``ACCESS`` fails ``test_every_route_is_classified`` with its method and
path: add it to the table with what each caller must get. An entry whose route is gone fails
too. Kinds:

- ``api``: needs a key (bearer, or the session cookie plus ``X-Requested-With`` on a change):
  401 for none/malformed/revoked; ``other`` for another tenant (404 on the owner's records,
  2xx on its own lists/uploads), ``right`` for the owner.
- ``page``: a dashboard page signed in by the cookie only: no or a revoked cookie is sent to
  the sign-in page (303); ``other``/``right`` as given.
- ``public``: the same answer for everyone (health, the API docs, the sign-in page, static).
- ``signin``: ``POST /v1/session`` takes the key in its body: 401 unless it is a valid key.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.security.conftest import Api, auth, npz_bytes, pt2_bytes
from tests.service.test_jobs import SPEC

COOKIE = "slimline_session"
CSRF = {"X-Requested-With": "fetch"}
Call = Callable[[Api, dict[str, Any], dict[str, str]], httpx.Response]


def app_routes(app: FastAPI) -> Iterator[tuple[str, str]]:
    """(METHOD, path) of every route the app answers, mounts as ("MOUNT", path). FastAPI keeps
    included routers as lazily expanded entries; both shapes are walked."""
    for route in app.routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if contexts is not None:
            for ctx in contexts():
                for method in sorted(getattr(ctx.original_route, "methods", None) or ()):
                    if method != "HEAD":
                        yield method, ctx.path
        elif getattr(route, "methods", None):
            for method in sorted(route.methods):  # type: ignore[attr-defined]
                if method != "HEAD":
                    yield method, route.path  # type: ignore[attr-defined]
        else:
            yield "MOUNT", getattr(route, "path", repr(route))


@dataclass(frozen=True)
class Rule:
    kind: str  # api | page | public | signin
    call: Call
    right: int
    other: int | None = None  # None: same as right


def get(path: str, **kw: Any) -> Call:
    def call(a: Api, w: dict[str, Any], h: dict[str, str]) -> httpx.Response:
        return a.client.get(path.format(**w), headers=h, follow_redirects=False, **kw)

    return call


def post(
    path: str, body: Callable[[dict[str, Any]], dict[str, Any]] | None = None, **kw: Any
) -> Call:
    def call(a: Api, w: dict[str, Any], h: dict[str, str]) -> httpx.Response:
        extra = {"json": body(w)} if body else {}
        return a.client.post(path.format(**w), headers=h, follow_redirects=False, **extra, **kw)

    return call


def upload(path: str, name: str, data: Callable[[], bytes]) -> Call:
    def call(a: Api, w: dict[str, Any], h: dict[str, str]) -> httpx.Response:
        return a.client.post(path, headers=h, files={"file": (name, data())})

    return call


def delete(path: str) -> Call:
    def call(a: Api, w: dict[str, Any], h: dict[str, str]) -> httpx.Response:
        return a.client.delete(path, headers=h)

    return call


_n = iter(range(10**6))


def _fresh_npz() -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, x=np.full(3, next(_n), np.float32))
    return buf.getvalue()


def _job(w: dict[str, Any]) -> dict[str, Any]:
    return {**SPEC, "model": w["model"], "seed": next(_n)}


ACCESS: dict[tuple[str, str], Rule] = {
    # -- public
    ("GET", "/healthz"): Rule("public", get("/healthz"), 200),
    ("GET", "/readyz"): Rule("public", get("/readyz"), 200),
    ("GET", "/openapi.json"): Rule("public", get("/openapi.json"), 200),
    ("GET", "/docs"): Rule("public", get("/docs"), 200),
    ("GET", "/docs/oauth2-redirect"): Rule("public", get("/docs/oauth2-redirect"), 200),
    ("GET", "/redoc"): Rule("public", get("/redoc"), 200),
    ("GET", "/signin"): Rule("public", get("/signin"), 200),
    ("MOUNT", "/static"): Rule("public", get("/static/js/signin.js"), 200),
    ("GET", "/"): Rule("public", get("/"), 303),  # -> /jobs, which checks the cookie
    ("GET", "/dashboard"): Rule("public", get("/dashboard"), 303),
    ("DELETE", "/v1/session"): Rule("public", delete("/v1/session"), 204),  # sign-out
    # -- dashboard pages (cookie)
    ("GET", "/jobs"): Rule("page", get("/jobs"), 200, 200),
    ("GET", "/jobs/new"): Rule("page", get("/jobs/new"), 200, 200),
    ("GET", "/jobs/{job_id}"): Rule("page", get("/jobs/{done}"), 200, 404),
    # -- session
    ("POST", "/v1/session"): Rule("signin", post("/v1/session"), 200, 200),
    ("GET", "/v1/session"): Rule("api", get("/v1/session"), 200, 200),
    # -- the REST API
    ("GET", "/v1/models"): Rule("api", get("/v1/models"), 200, 200),
    ("POST", "/v1/models"): Rule(
        "api", upload("/v1/models", "m.pt2", lambda: pt2_bytes(str(next(_n)))), 201, 201
    ),
    ("GET", "/v1/models/{model_id}"): Rule("api", get("/v1/models/{model}"), 200, 404),
    ("GET", "/v1/datasets"): Rule("api", get("/v1/datasets"), 200, 200),
    ("POST", "/v1/datasets"): Rule("api", upload("/v1/datasets", "d.npz", _fresh_npz), 201, 201),
    ("GET", "/v1/datasets/{dataset_id}"): Rule("api", get("/v1/datasets/{dataset}"), 200, 404),
    ("POST", "/v1/jobs"): Rule("api", post("/v1/jobs", _job), 201, 404),
    ("GET", "/v1/jobs"): Rule("api", get("/v1/jobs"), 200, 200),
    ("GET", "/v1/jobs/{job_id}"): Rule("api", get("/v1/jobs/{done}"), 200, 404),
    ("GET", "/v1/jobs/{job_id}/events"): Rule("api", get("/v1/jobs/{done}/events"), 200, 404),
    ("POST", "/v1/jobs/{job_id}/cancel"): Rule("api", post("/v1/jobs/{queued}/cancel"), 200, 404),
    ("POST", "/v1/jobs/{job_id}/resolve"): Rule(
        "api", post("/v1/jobs/{done}/resolve", lambda w: {"budget": "1000"}), 200, 404
    ),
    ("GET", "/v1/jobs/{job_id}/artifacts"): Rule(
        "api", get("/v1/jobs/{done}/artifacts"), 200, 404
    ),
    ("GET", "/v1/jobs/{job_id}/report"): Rule("api", get("/v1/jobs/{done}/report"), 200, 404),
    ("GET", "/v1/artifacts/{artifact_id}"): Rule(
        "api", get("/v1/artifacts/{artifact}"), 200, 404
    ),
}  # fmt: skip
# Also called as an event stream: the 404 must come before the stream starts.
EXTRA: dict[str, Rule] = {
    "event stream": Rule("api", get("/v1/jobs/{done}/events", params={"stream": 1}), 200, 404),
    "job on the owner's dataset": Rule(
        "api", post("/v1/jobs", lambda w: {**_job(w), "data": w["dataset"]}), 201, 404
    ),
}


def test_every_route_is_classified(api: Api) -> None:
    routes = set(app_routes(api.client.app))  # type: ignore[arg-type]
    unclassified = sorted(routes - set(ACCESS))
    gone = sorted(set(ACCESS) - routes)
    assert not unclassified, (
        f"routes with no entry in tests/security/test_access.py ACCESS: {unclassified}; "
        "add each with who may call it and what every other caller gets"
    )
    assert not gone, f"ACCESS lists routes the app no longer has: {gone}"


def _callers(kind: str, keys: dict[str, str], method: str) -> list[tuple[str, dict[str, str]]]:
    """(who, headers) in the order they are tried: the owner last (it may change state)."""

    def cookie(key: str) -> dict[str, str]:
        return {"Cookie": f"{COOKIE}={key}", **(CSRF if method not in ("GET", "MOUNT") else {})}

    callers = [
        ("no credentials", {}),
        ("malformed Authorization", {"Authorization": "Basic b3duZXI6cHc="}),
        ("empty bearer", {"Authorization": "Bearer "}),
        ("revoked key", auth(keys["revoked"])),
        ("unknown key", auth("sl_" + "0" * 40)),
        ("revoked key as cookie", cookie(keys["revoked"])),
        ("other tenant's key", auth(keys["other"])),
        ("other tenant's cookie", cookie(keys["other"])),
        ("owner's key", auth(keys["right"])),
        ("owner's cookie", cookie(keys["right"])),
    ]
    if kind == "api" and method not in ("GET", "MOUNT"):
        # a change carried by the cookie alone, without X-Requested-With: cross-site, refused
        bare = {"Cookie": f"{COOKIE}={keys['right']}"}
        callers.insert(5, ("owner's cookie without X-Requested-With", bare))
    return callers


def _expected(rule: Rule, who: str) -> int:
    owner, other = rule.right, rule.other if rule.other is not None else rule.right
    if rule.kind == "public":
        return owner
    if rule.kind == "signin":
        return other if who.startswith("other") else owner if who.startswith("owner") else 401
    bad = 303 if rule.kind == "page" else 401
    if rule.kind == "page" and "cookie" not in who:
        return bad  # pages read the cookie only; a bearer header signs nothing in
    if who.startswith("other"):
        return other
    if who.startswith("owner") and "without" not in who:
        return owner
    return bad


def _signin_call(rule: Rule, who: str, headers: dict[str, str], keys: dict[str, str]) -> Call:
    """POST /v1/session carries its key in the body: map each caller to the body it sends."""
    key = (
        keys["right"] if who.startswith("owner") else keys["other"] if who.startswith("other")
        else keys["revoked"] if "revoked" in who else "sl_" + "0" * 40 if "unknown" in who
        else None
    )  # fmt: skip

    def call(a: Api, w: dict[str, Any], h: dict[str, str]) -> httpx.Response:
        body = {"key": key} if key and "key" in who else {}
        return a.client.post("/v1/session", json=body)

    return call


def test_access_table(api: Api, world: dict[str, Any]) -> None:
    keys = world["keys"]
    failures, rows = [], []
    table = [(f"{m} {p}", rule, m) for (m, p), rule in ACCESS.items()]
    table += [(name, rule, "POST" if "job on" in name else "GET") for name, rule in EXTRA.items()]
    for name, rule, method in table:
        for who, headers in _callers(rule.kind, keys, method):
            call = _signin_call(rule, who, headers, keys) if rule.kind == "signin" else rule.call
            api.client.cookies.clear()
            want = _expected(rule, who)
            if rule.kind == "signin" and "key" not in who:
                want = 401  # no key in the body (a cookie is not a sign-in)
            r = call(api, world, headers)
            rows.append((name, who, r.status_code))
            if r.status_code != want:
                failures.append(f"{name} with {who}: {r.status_code} != {want}: {r.text[:160]}")
                continue
            if want == 401:
                body = r.json()
                assert set(body) <= {"code", "message", "field"} and body["code"] == "unauthorized"
            if want == 303 and rule.kind == "page":
                assert r.headers["location"].startswith("/signin"), r.headers
            if want == 404 and rule.kind == "api":
                assert r.json()["code"] == "not_found", r.text
    print(json.dumps({"calls": len(rows), "failures": len(failures)}))
    assert not failures, "\n".join(failures)


def test_another_tenant_sees_none_of_the_owners_records(api: Api, world: dict[str, Any]) -> None:
    other = auth(world["keys"]["other"])
    assert api.client.get("/v1/models", headers=other).json() == []
    assert api.client.get("/v1/datasets", headers=other).json() == []
    assert api.client.get("/v1/jobs", headers=other).json()["items"] == []
    # nor can it use them as inputs: a job on the owner's model or dataset is "not found"
    mine = api.client.post(
        "/v1/models", headers=other, files={"file": ("m.pt2", pt2_bytes("other"))}
    ).json()["id"]
    r = api.client.post(
        "/v1/jobs", headers=other, json={**SPEC, "model": mine, "data": world["dataset"]}
    )
    assert r.status_code == 404 and r.json()["field"] == "data", r.text
    # the same bytes uploaded by two tenants are two records, each private
    twin = api.client.post("/v1/datasets", headers=other, files={"file": ("d.npz", npz_bytes())})
    assert twin.status_code == 201 and twin.json()["id"] != world["dataset"]


@pytest.mark.parametrize("kind", ["public", "page", "api", "signin"])
def test_every_kind_is_used(kind: str) -> None:
    assert any(rule.kind == kind for rule in ACCESS.values())


def test_a_new_route_is_caught_by_the_enumeration(api: Api) -> None:
    from fastapi import APIRouter

    app: FastAPI = api.client.app  # type: ignore[assignment]
    router = APIRouter(prefix="/v1/new")
    router.add_api_route("/{thing_id}", lambda thing_id: {}, methods=["GET", "DELETE"])
    app.include_router(router)
    app.add_api_route("/v1/plain", lambda: {}, methods=["PUT"])
    new = set(app_routes(app)) - set(ACCESS)
    assert new == {("GET", "/v1/new/{thing_id}"), ("DELETE", "/v1/new/{thing_id}"),
                   ("PUT", "/v1/plain")}  # fmt: skip


def test_the_openapi_document_says_which_routes_need_a_key(api: Api) -> None:
    """The schema's ``security`` is the access table's ``api`` kind, route for route."""
    spec = api.client.get("/openapi.json").json()
    documented = {
        (method.upper(), path)
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
        if op.get("security")
    }
    needs_key = {route for route, rule in ACCESS.items() if rule.kind == "api"}
    assert documented == needs_key
    assert set(spec["components"]["securitySchemes"]) == {"apiKey", "session"}


def test_an_idempotency_key_is_per_tenant(api: Api, world: dict[str, Any]) -> None:
    """Another tenant replaying the owner's Idempotency-Key gets its own job (or its own
    refusal), never the owner's job back."""
    owner, other = auth(world["keys"]["right"]), auth(world["keys"]["other"])
    key = {"Idempotency-Key": "shared-key-1"}
    first = api.client.post("/v1/jobs", headers=owner | key, json=_job(world))
    assert first.status_code == 201, first.text
    theirs = api.client.post(
        "/v1/models", headers=other, files={"file": ("m.pt2", pt2_bytes("their own"))}
    ).json()["id"]
    replay = api.client.post(
        "/v1/jobs", headers=other | key, json={**SPEC, "model": theirs, "seed": 5}
    )
    assert replay.status_code == 201 and replay.json()["id"] != first.json()["id"], replay.text
    # and the owner's model id under the owner's key, sent by the other tenant: not found
    steal = api.client.post("/v1/jobs", headers=other | key, json=_job(world))
    assert steal.status_code in (404, 409, 422) and first.json()["id"] not in steal.text
