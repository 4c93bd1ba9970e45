"""The main flow on the embedded default: SQLite and kombu's filesystem broker (no servers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from slimline.db import artifacts
from slimline.db.session import session_scope
from slimline.enqueue import INSPECT_UPLOAD, RUN_JOB
from tests.service.conftest import Api, auth, empty_tables, make_api, npz_bytes, pt2_bytes, sha256
from tests.service.test_jobs import SCORES, run_to_end


@pytest.fixture
def embedded(sqlite_engine: Engine, tmp_path: Path) -> Iterator[Api]:
    empty_tables(sqlite_engine)
    broker = f"filesystem://{tmp_path / 'broker'}"
    yield from make_api(tmp_path, sqlite_engine, broker)


def test_main_flow_on_sqlite_and_the_filesystem_broker(
    embedded: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = embedded
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # kombu's filesystem defaults are relative to it: none may be used
    tenant, key = api.tenant()
    h = auth(key)
    c = api.client
    model = c.post("/v1/models", headers=h, files={"file": ("m.pt2", pt2_bytes())}).json()["id"]
    ds = c.post("/v1/datasets", headers=h, files={"file": ("d.npz", npz_bytes())}).json()["id"]
    key_h = {**h, "Idempotency-Key": "once"}
    body = {"model": model, "data": ds, "budget": "12KiB", "method": "constrained"}
    job = c.post("/v1/jobs", headers=key_h, json=body)
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]
    assert c.post("/v1/jobs", headers=key_h, json=body).json()["id"] == job_id
    assert api.messages() == [
        (INSPECT_UPLOAD, ("model", model)),
        (INSPECT_UPLOAD, ("dataset", ds)),
        (RUN_JOB, (job_id,)),
    ]
    run_to_end(api, job_id)
    data = b"compressed"
    rel = f"tenants/{tenant.id}/jobs/{job_id}/model.slim.safetensors"
    (api.settings.artifact_dir / rel).parent.mkdir(parents=True)
    (api.settings.artifact_dir / rel).write_bytes(data)
    with session_scope(api.engine) as s:
        artifacts.save_scores(s, job_id, SCORES)
        artifacts.add_artifact(
            s, tenant.id, kind="checkpoint", path=rel, bytes=len(data), sha256=sha256(data),
            job_id=job_id,
        )  # fmt: skip
    got = c.get(f"/v1/jobs/{job_id}", headers=h).json()
    assert got["status"] == "succeeded" and got["metrics"] == {"accuracy": 0.9}
    stream = c.get(f"/v1/jobs/{job_id}/events", headers=h, params={"stream": 1}).text
    assert "event: end" in stream and '"succeeded"' in stream
    (art,) = c.get(f"/v1/jobs/{job_id}/artifacts", headers=h).json()
    assert c.get(art["url"], headers=h).content == data
    plan = c.post(f"/v1/jobs/{job_id}/resolve", headers=h, json={"budget": "1300"}).json()
    assert plan["plan"] == {"fc1": "fp16", "fc2": "fp16"}
    assert c.get("/readyz").json()["checks"] == {"database": "ok", "broker": "ok"}
    assert list(cwd.iterdir()) == []
