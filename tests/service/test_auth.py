"""Every route against no key, a revoked key, another tenant's key and the owner's key."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from slimline import jobs
from slimline.db import artifacts
from slimline.db.session import session_scope
from tests.service.conftest import Api, auth, npz_bytes, pt2_bytes, sha256
from tests.service.test_jobs import SCORES, SPEC, run_to_end

Call = Callable[[Api, dict[str, str]], Any]


@pytest.fixture
def world(api: Api) -> dict[str, Any]:
    owner, owner_key = api.tenant()
    _, other_key = api.tenant()
    with session_scope(api.engine) as s:
        revoked_key, rec = jobs.create_api_key(s, owner.id)
        jobs.revoke_api_key(s, owner.id, rec.id)
    h = auth(owner_key)
    c = api.client
    model = c.post("/v1/models", headers=h, files={"file": ("m.pt2", pt2_bytes())}).json()["id"]
    dataset = c.post("/v1/datasets", headers=h, files={"file": ("d.npz", npz_bytes())}).json()
    done = c.post("/v1/jobs", headers=h, json={"model": model, **SPEC}).json()["id"]
    queued = c.post("/v1/jobs", headers=h, json={"model": model, **SPEC, "seed": 1}).json()["id"]
    run_to_end(api, done)
    data = b"ckpt"
    rel = f"tenants/{owner.id}/jobs/{done}/ckpt.safetensors"
    (api.settings.artifact_dir / rel).parent.mkdir(parents=True)
    (api.settings.artifact_dir / rel).write_bytes(data)
    with session_scope(api.engine) as s:
        artifacts.save_scores(s, done, SCORES)
        art = artifacts.add_artifact(
            s, owner.id, kind="checkpoint", path=rel, bytes=4, sha256=sha256(data), job_id=done
        )
    return {
        "keys": {"right": owner_key, "revoked": revoked_key, "other": other_key},
        "model": model, "dataset": dataset["id"], "done": done, "queued": queued,
        "artifact": art.id,
    }  # fmt: skip


# (name, request, expected status for: right key, other tenant's key)
ROUTES: list[tuple[str, Callable[[Api, dict[str, Any], dict[str, str]], Any], int, int]] = [
    ("list models", lambda a, w, h: a.client.get("/v1/models", headers=h), 200, 200),
    ("get model", lambda a, w, h: a.client.get(f"/v1/models/{w['model']}", headers=h), 200, 404),
    ("upload model", lambda a, w, h: a.client.post(
        "/v1/models", headers=h, files={"file": ("x.pt2", pt2_bytes("x"))}), 201, 201),
    ("list datasets", lambda a, w, h: a.client.get("/v1/datasets", headers=h), 200, 200),
    ("get dataset", lambda a, w, h: a.client.get(
        f"/v1/datasets/{w['dataset']}", headers=h), 200, 404),
    ("upload dataset", lambda a, w, h: a.client.post(
        "/v1/datasets", headers=h, files={"file": ("x.npz", npz_bytes())}), 200, 201),
    ("create job", lambda a, w, h: a.client.post(
        "/v1/jobs", headers=h, json={"model": w["model"], **SPEC, "seed": 7}), 201, 404),
    ("create job on a dataset", lambda a, w, h: a.client.post(
        "/v1/jobs", headers=h, json={**SPEC, "model": w["model"], "data": w["dataset"]}),
     201, 404),
    ("list jobs", lambda a, w, h: a.client.get("/v1/jobs", headers=h), 200, 200),
    ("get job", lambda a, w, h: a.client.get(f"/v1/jobs/{w['done']}", headers=h), 200, 404),
    ("events", lambda a, w, h: a.client.get(f"/v1/jobs/{w['done']}/events", headers=h),
     200, 404),
    ("event stream", lambda a, w, h: a.client.get(
        f"/v1/jobs/{w['done']}/events", headers=h, params={"stream": 1}), 200, 404),
    ("resolve", lambda a, w, h: a.client.post(
        f"/v1/jobs/{w['done']}/resolve", headers=h, json={"budget": "1000"}), 200, 404),
    ("job artifacts", lambda a, w, h: a.client.get(
        f"/v1/jobs/{w['done']}/artifacts", headers=h), 200, 404),
    ("download", lambda a, w, h: a.client.get(
        f"/v1/artifacts/{w['artifact']}", headers=h), 200, 404),
    ("cancel", lambda a, w, h: a.client.post(
        f"/v1/jobs/{w['queued']}/cancel", headers=h), 200, 404),
]  # fmt: skip


def test_every_route_by_key(api: Api, world: dict[str, Any]) -> None:
    keys = world["keys"]
    failures = []
    for name, call, right, other in ROUTES:
        for who, headers, want in (
            ("no key", {}, 401),
            ("malformed", {"Authorization": "Basic abc"}, 401),
            ("revoked", auth(keys["revoked"]), 401),
            ("other tenant", auth(keys["other"]), other),
            ("owner", auth(keys["right"]), right),
        ):
            r = call(api, world, headers)
            if r.status_code != want:
                failures.append(f"{name} with {who}: {r.status_code} != {want}: {r.text[:200]}")
            elif want in (401, 404):
                assert set(r.json()) <= {"code", "message", "field"}, r.json()
            if want == 401:
                assert r.headers.get("www-authenticate") == "Bearer"
    assert not failures, "\n".join(failures)


def test_lists_show_only_the_tenants_own(api: Api, world: dict[str, Any]) -> None:
    other = auth(world["keys"]["other"])
    for path in ("/v1/models", "/v1/datasets"):
        assert api.client.get(path, headers=other).json() == []
    assert api.client.get("/v1/jobs", headers=other).json()["items"] == []


def test_unauthenticated_routes(api: Api) -> None:
    assert api.client.get("/healthz").json()["status"] == "ok"
    assert api.client.get("/readyz").status_code == 200
    assert api.client.get("/docs").status_code == 200
    spec = api.client.get("/openapi.json").json()
    assert "/v1/jobs/{job_id}/resolve" in spec["paths"]
    assert "slimline" in api.client.get("/").text
    missing = api.client.get("/v1/nothing")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
