"""Jobs over the API: create (committed, then sent), validation, idempotency, rate limit,
listing, events (paged and streamed), cancel, re-solve, artifacts."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from slimline import jobs
from slimline.db import artifacts, uploads
from slimline.db.session import session_scope
from slimline.enqueue import RUN_JOB, RecordingEnqueuer
from slimline.schemas import METHODS, NAMED_DATASETS
from slimline.service.app import create_app
from tests.service.conftest import Api, auth, make_api, pt2_bytes, sha256

SPEC = {"data": "digits", "budget": "16x", "method": "uniform"}


def upload_model(api: Api, h: dict[str, str], tag: str = "") -> str:
    r = api.client.post("/v1/models", headers=h, files={"file": ("m.pt2", pt2_bytes(tag))})
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


def make_ready(api: Api, model_id: str, dense: int, smallest: int) -> None:
    with session_scope(api.engine) as s:
        uploads.mark_model_ready(s, model_id, layers=[], dense_bytes=dense, smallest_bytes=smallest)


def submit(api: Api, h: dict[str, str], model_id: str, **spec: Any) -> Any:
    return api.client.post("/v1/jobs", headers=h, json={"model": model_id, **SPEC, **spec})


def run_to_end(api: Api, job_id: str, *, status: str = "succeeded") -> None:
    """Drive a job like a worker would, through the state machine."""
    with session_scope(api.engine) as s:
        jobs.claim_job(s, job_id, "w1")
    with session_scope(api.engine) as s:
        jobs.set_progress(s, job_id, "plan", 0.5, {"step": 1}, worker="w1")
    with session_scope(api.engine) as s:
        if status == "succeeded":
            jobs.finish_job(s, job_id, "w1", {"accuracy": 0.9}, {"version": 1, "layers": {}})
        else:
            jobs.fail_job(s, job_id, "w1", {"code": "boom", "message": "no"})


@pytest.fixture
def model(api: Api, user) -> str:
    _, h = user
    model_id = upload_model(api, h)
    api.messages()  # the inspection message
    return model_id


def test_create_commits_the_row_then_sends_run_job(api: Api, user, model: str) -> None:
    tenant, h = user
    r = submit(api, h, model, budget="60KB", epochs=2, seed=3, time_limit_s=60)
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] == "queued" and r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["spec"]["budget"] == "60000" and job["data_name"] == "digits"
    with session_scope(api.engine) as s:
        assert jobs.get_job(s, tenant.id, job["id"]).status == "queued"
    assert api.messages() == [(RUN_JOB, (job["id"],))]


def test_send_happens_after_commit(api: Api, user, model: str) -> None:
    seen: list[str] = []

    class Checking(RecordingEnqueuer):
        def send(self, task: str, *args: str) -> None:
            # A fresh session sees only committed rows.
            with session_scope(api.engine) as s:
                seen.append(jobs.load_job(s, args[0]).status)
            super().send(task, *args)

    tenant, h = user
    sender = Checking()
    with TestClient(create_app(api.settings, enqueuer=sender)) as client:
        r = client.post("/v1/jobs", headers=h, json={"model": model, **SPEC})
    assert r.status_code == 201 and seen == ["queued"]
    assert sender.sent == [(RUN_JOB, (r.json()["id"],))]


def test_idempotency_key_makes_one_job_and_one_message(api: Api, user, model: str) -> None:
    _, h = user
    key = {**h, "Idempotency-Key": "abc-123"}
    a = api.client.post("/v1/jobs", headers=key, json={"model": model, **SPEC})
    b = api.client.post("/v1/jobs", headers=key, json={"model": model, **SPEC})
    assert (a.status_code, b.status_code) == (201, 200)
    assert a.json()["id"] == b.json()["id"]
    assert api.messages() == [(RUN_JOB, (a.json()["id"],))]
    other = api.client.post("/v1/jobs", headers=key, json={"model": model, **SPEC, "seed": 9})
    assert other.status_code == 409 and other.json()["field"] == "idempotency_key"
    assert len(api.client.get("/v1/jobs", headers=h).json()["items"]) == 1


def test_infeasible_budget_is_refused_naming_the_smallest_size(api: Api, user, model: str) -> None:
    _, h = user
    make_ready(api, model, dense=100_000, smallest=5_000)
    for budget in ("50x", "4000", "4KB"):
        r = submit(api, h, model, budget=budget)
        assert r.status_code == 422, r.text
        err = r.json()
        assert err["code"] == "infeasible_budget" and err["field"] == "budget"
        assert "5000 bytes" in err["message"] and "20.0x" in err["message"]
    assert submit(api, h, model, budget="20x").status_code == 201
    assert submit(api, h, model, budget=5000, seed=1).status_code == 201
    assert len(api.messages()) == 2


def test_pending_model_is_accepted_and_invalid_one_refused(api: Api, user, model: str) -> None:
    _, h = user
    assert submit(api, h, model, budget="1000000x").status_code == 201  # the worker decides
    with session_scope(api.engine) as s:
        uploads.mark_model_invalid(s, model, {"code": "invalid_model", "message": "no layers"})
    r = submit(api, h, model, seed=5)
    assert r.status_code == 422 and "no layers" in r.json()["message"]


@pytest.mark.parametrize(
    ("change", "code", "field", "needle"),
    [
        ({"method": "magic"}, "invalid_input", "method", ", ".join(METHODS)),
        ({"data": "imagenet"}, "invalid_data", "data", ", ".join(NAMED_DATASETS)),
        ({"budget": "lots"}, "invalid_budget", "budget", "20x"),
        ({"budget": "0.5x"}, "invalid_budget", "budget", "at least 1x"),
        ({"epochs": -1}, "invalid_input", "epochs", "greater than 0"),
        ({"colour": "red"}, "invalid_input", "colour", "Extra inputs"),
        ({"data": str(uuid.uuid4())}, "not_found", "data", "not found"),
        ({"model": str(uuid.uuid4())}, "not_found", "model", "not found"),
    ],
)
def test_bad_requests_name_the_field(
    api: Api, user, model: str, change: dict[str, Any], code: str, field: str, needle: str
) -> None:
    _, h = user
    r = api.client.post("/v1/jobs", headers=h, json={"model": model, **SPEC, **change})
    assert r.status_code == (404 if code == "not_found" else 422), r.text
    err = r.json()
    assert (err["code"], err["field"]) == (code, field)
    assert needle in err["message"]
    assert api.messages() == []


def test_malformed_json_is_400(api: Api, user) -> None:
    _, h = user
    r = api.client.post(
        "/v1/jobs", headers={**h, "Content-Type": "application/json"}, content=b"{nope"
    )
    assert r.status_code == 400 and r.json()["code"] == "bad_request"


def test_rate_limit_is_429(pg_engine, redis_url, tmp_path) -> None:
    redis.Redis.from_url(redis_url).flushdb()
    for api in make_api(tmp_path, pg_engine, redis_url, rate_limit_jobs_per_minute=2):
        _, key = api.tenant()
        h = auth(key)
        model = upload_model(api, h)
        first = {**h, "Idempotency-Key": "k"}
        body = {"model": model, **SPEC}
        codes = [api.client.post("/v1/jobs", headers=first, json=body).status_code]
        codes += [submit(api, h, model, seed=i).status_code for i in (1, 2)]
        assert codes == [201, 201, 429]
        r = submit(api, h, model, seed=9)
        assert r.json()["code"] == "rate_limited" and r.headers["retry-after"] == "60"
        # A replay of an earlier request is not a new job: not limited.
        assert api.client.post("/v1/jobs", headers=first, json=body).status_code == 200
        assert len(api.messages()) == 1 + 2  # the inspection and two jobs


def test_listing_pages_and_filters(api: Api, user, model: str) -> None:
    _, h = user
    ids = [submit(api, h, model, seed=i).json()["id"] for i in range(5)]
    assert api.client.post(f"/v1/jobs/{ids[0]}/cancel", headers=h).status_code == 200
    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.client.get("/v1/jobs", headers=h, params=params).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    cancelled = api.client.get("/v1/jobs", headers=h, params={"status": "cancelled"}).json()
    assert [j["id"] for j in cancelled["items"]] == [ids[0]]
    both = api.client.get("/v1/jobs", headers=h, params={"status": ["cancelled", "queued"]})
    assert len(both.json()["items"]) == 5
    bad = api.client.get("/v1/jobs", headers=h, params={"status": "done"})
    assert bad.status_code == 422 and bad.json()["field"] == "status"
    bad_cursor = api.client.get("/v1/jobs", headers=h, params={"cursor": "zzz"})
    assert bad_cursor.status_code == 422 and bad_cursor.json()["field"] == "cursor"
    assert api.client.get("/v1/jobs", headers=h, params={"limit": 0}).json()["field"] == "limit"


def test_events_page_with_after_id(api: Api, user, model: str) -> None:
    _, h = user
    job_id = submit(api, h, model).json()["id"]
    run_to_end(api, job_id)
    url = f"/v1/jobs/{job_id}/events"
    everything = api.client.get(url, headers=h).json()
    kinds = [e["kind"] for e in everything["items"]]
    assert kinds[0] == "status" and "stage" in kinds and "progress" in kinds
    assert everything["items"][-1]["data"]["status"] == "succeeded"
    got, after = [], 0
    while True:
        page = api.client.get(url, headers=h, params={"after_id": after, "limit": 2}).json()
        got += page["items"]
        after = page["last_id"]
        if not page["more"]:
            break
    assert [e["id"] for e in got] == [e["id"] for e in everything["items"]]
    assert after == everything["last_id"]


def _parse_sse(text: str) -> list[dict[str, str]]:
    out = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        out.append(fields)
    return out


def test_event_stream_ends_when_the_job_is_final(api: Api, user, model: str) -> None:
    _, h = user
    job_id = submit(api, h, model).json()["id"]
    driver = threading.Thread(target=lambda: (time.sleep(0.3), run_to_end(api, job_id)))
    driver.start()
    t0 = time.monotonic()
    with api.client.stream(
        "GET", f"/v1/jobs/{job_id}/events", headers={**h, "Accept": "text/event-stream"}
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    driver.join()
    assert time.monotonic() - t0 < 10
    blocks = _parse_sse(text)
    assert blocks[-1]["event"] == "end" and '"succeeded"' in blocks[-1]["data"]
    statuses = [b["data"] for b in blocks if b.get("event") == "status"]
    assert len(statuses) == 3  # queued, running, succeeded
    ids = [int(b["id"]) for b in blocks if "id" in b]
    assert ids == sorted(ids)
    # Resuming from the last id sent gives only the end.
    again = api.client.get(
        f"/v1/jobs/{job_id}/events", headers={**h, "Last-Event-ID": str(ids[-1])},
        params={"stream": 1},
    )  # fmt: skip
    assert [b["event"] for b in _parse_sse(again.text)] == ["end"]


def test_cancel(api: Api, user, model: str) -> None:
    _, h = user
    queued = submit(api, h, model).json()["id"]
    r = api.client.post(f"/v1/jobs/{queued}/cancel", headers=h)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert api.client.post(f"/v1/jobs/{queued}/cancel", headers=h).status_code == 200
    running = submit(api, h, model, seed=1).json()["id"]
    with session_scope(api.engine) as s:
        jobs.claim_job(s, running, "w1")
    r = api.client.post(f"/v1/jobs/{running}/cancel", headers=h)
    assert r.json()["status"] == "running" and r.json()["cancel_requested"] is True
    done = submit(api, h, model, seed=2).json()["id"]
    run_to_end(api, done)
    r = api.client.post(f"/v1/jobs/{done}/cancel", headers=h)
    assert r.status_code == 409 and r.json()["code"] == "conflict"


SCORES = {
    "version": 1,
    "estimator": "fisher",
    "groups": [],
    "fixed_bytes": 100,
    "dense_bytes": 10_000,
    "layers": [
        {"name": "fc1", "options": ["fp16", "b4/ch", "removed"], "bytes": [800, 220, 0],
         "damage": [0.0, 0.1, 5.0]},
        {"name": "fc2", "options": ["fp16", "b2/ch", "removed"], "bytes": [400, 60, 0],
         "damage": [0.0, 0.4, 1.0]},
    ],
}  # fmt: skip


def test_resolve_stored_scores_for_another_budget(api: Api, user, model: str) -> None:
    tenant, h = user
    job_id = submit(api, h, model).json()["id"]
    url = f"/v1/jobs/{job_id}/resolve"
    r = api.client.post(url, headers=h, json={"budget": "1000"})
    assert r.status_code == 409 and "no stored scores" in r.json()["message"]
    run_to_end(api, job_id)
    with session_scope(api.engine) as s:
        artifacts.save_scores(s, job_id, SCORES)
    big = api.client.post(url, headers=h, json={"budget": 1300}).json()
    assert big["plan"] == {"fc1": "fp16", "fc2": "fp16"} and big["bytes"] == 1300
    mid = api.client.post(url, headers=h, json={"budget": "800"}).json()
    assert mid["plan"] == {"fc1": "b4/ch", "fc2": "fp16"} and mid["bytes"] == 720
    assert mid["fixed_bytes"] == 100 and mid["budget_bytes"] == 800
    ratio = api.client.post(url, headers=h, json={"budget": "25x"}).json()  # 400 bytes
    assert ratio["budget_bytes"] == 400 and ratio["plan"] == {"fc1": "b4/ch", "fc2": "b2/ch"}
    low = api.client.post(url, headers=h, json={"budget": "50"})
    assert low.status_code == 422 and low.json()["code"] == "infeasible_budget"
    assert "100 bytes" in low.json()["message"]
    bad = api.client.post(url, headers=h, json={"budget": "cheap"})
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_budget"


def test_resolve_takes_fixed_and_dense_bytes_from_the_job_metrics(api: Api, user, model) -> None:
    # What the worker stores: Scores.to_dict() alone; the job's metrics have the rest.
    _, h = user
    job_id = submit(api, h, model).json()["id"]
    with session_scope(api.engine) as s:
        jobs.claim_job(s, job_id, "w1")
    metrics = {"other_bytes": 60, "header_bytes": 40, "dense_bytes": 10_000}
    with session_scope(api.engine) as s:
        jobs.finish_job(s, job_id, "w1", metrics, None)
        scores = {k: v for k, v in SCORES.items() if k not in ("fixed_bytes", "dense_bytes")}
        artifacts.save_scores(s, job_id, scores)
    r = api.client.post(f"/v1/jobs/{job_id}/resolve", headers=h, json={"budget": "25x"}).json()
    assert r["fixed_bytes"] == 100 and r["budget_bytes"] == 400
    assert r["plan"] == {"fc1": "b4/ch", "fc2": "b2/ch"} and r["bytes"] == 380


def test_artifacts_download_with_etag(api: Api, user, model: str) -> None:
    tenant, h = user
    job_id = submit(api, h, model).json()["id"]
    run_to_end(api, job_id)
    data = b"checkpoint bytes" * 100
    rel = f"tenants/{tenant.id}/jobs/{job_id}/model.slim.safetensors"
    path = api.settings.artifact_dir / rel
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    with session_scope(api.engine) as s:
        art = artifacts.add_artifact(
            s, tenant.id, kind="checkpoint", path=rel, bytes=len(data), sha256=sha256(data),
            job_id=job_id,
        )  # fmt: skip
    listed = api.client.get(f"/v1/jobs/{job_id}/artifacts", headers=h).json()
    assert [a["id"] for a in listed] == [art.id] and listed[0]["url"] == f"/v1/artifacts/{art.id}"
    r = api.client.get(f"/v1/artifacts/{art.id}", headers=h)
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-length"] == str(len(data))
    assert r.headers["etag"] == f'"{sha256(data)}"'
    again = api.client.get(
        f"/v1/artifacts/{art.id}", headers={**h, "If-None-Match": r.headers["etag"]}
    )
    assert again.status_code == 304 and again.content == b""
    # A record whose file escapes the store (here through a symlink) is never served.
    outside = api.settings.data_dir / "secret.txt"
    outside.write_text("secret")
    link_rel = f"tenants/{tenant.id}/jobs/{job_id}/report.json"
    (api.settings.artifact_dir / link_rel).symlink_to(outside)
    with session_scope(api.engine) as s:
        bad = artifacts.add_artifact(
            s, tenant.id, kind="report", path=link_rel, bytes=6, sha256="0" * 64, job_id=job_id
        )
    r = api.client.get(f"/v1/artifacts/{bad.id}", headers=h)
    assert r.status_code == 404 and "outside" in r.json()["message"]


def test_settings_are_checked_before_a_job_is_made(api: Api, user, model: str) -> None:  # type: ignore[no-untyped-def]
    _, h = user
    make_ready(api, model, dense=100_000, smallest=5_000)
    for bad, name in (
        ({"distill": 2}, "distill"),
        ({"warmup": 0.1}, "warmup"),
        ({"cosine": "0.5"}, "cosine"),  # a string where a number goes
    ):
        r = submit(api, h, model, budget="10x", finetune=bad)
        assert r.status_code == 422, r.text
        assert r.json()["field"].startswith("finetune") and name in r.json()["message"]
    # the method's own settings likewise: a wrong type, a value out of range, an unknown name
    for method, bad, name in (
        ("constrained", {"probe_steps": 2.5}, "probe_steps"),
        ("optuna", {"sampler": "grid"}, "sampler"),
        ("bitshare", {"no_such_knob": 1}, "no_such_knob"),
    ):
        r = submit(api, h, model, budget="10x", method=method, method_settings=bad)
        assert r.status_code == 422, r.text
        assert r.json()["field"].startswith("method_settings") and name in r.json()["message"]
    assert api.messages() == []
    ok = submit(api, h, model, budget="10x", finetune={"distill": 0.3, "cosine": 0.5})
    assert ok.status_code == 201, ok.text
    assert ok.json()["spec"]["finetune"] == {"distill": 0.3, "cosine": 0.5}
