"""Postgres cut off for 10 s while a job runs (a TCP proxy the test cuts, between the database
and both the API and the worker): the API answers 503 meanwhile, from /readyz, reads and
writes; the worker retries its writes (progress, heartbeat) and pauses on them; when the
database is back the same attempt goes on and the job finishes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import URL

from slimline import jobs
from slimline.config import Settings
from slimline.db.session import session_scope
from slimline.service.app import create_app
from tests.faults.conftest import PrivateRedis, cluster, load, row, status_events, wait_final
from tests.faults.proxy import Proxy
from tests.worker.conftest import events, job_spec_json, submit, upload_weights, wait_for

pytestmark = pytest.mark.slow
OUTAGE_S = 10.0


@pytest.fixture
def proxy(pg_admin: URL) -> Iterator[Proxy]:
    p = Proxy((pg_admin.host or "127.0.0.1", pg_admin.port or 5432))
    p.restore()
    yield p
    p.cut()


def test_postgres_outage_during_a_job(
    pg_admin: URL,
    private_redis: PrivateRedis,
    proxy: Proxy,
    tmp_path: Path,
    data_root: Path,
    cache_dir: Path,
    digits_weights: Path,
) -> None:
    # The test's engine connects directly; the worker's and the API's URL go through the
    # proxy. The database name is only known once the cluster made it, so the cluster's
    # workers get the proxied URL through a second settings object built from it.
    with cluster(
        pg_admin, private_redis, tmp_path, data_root, cache_dir, workers=0,
        stale_after_s=60.0, requeue_after_s=120.0,
    ) as c:  # fmt: skip
        proxied = c.engine.url.set(host="127.0.0.1", port=proxy.port)
        c.env["SLIMLINE_DATABASE_URL"] = proxied.render_as_string(hide_password=False)
        worker = c.start_worker()
        tenant_id, model_id = upload_weights(c.engine, c.settings, digits_weights)
        with session_scope(c.engine) as s:
            key, _ = jobs.create_api_key(s, tenant_id)
        h = {"Authorization": f"Bearer {key}"}
        api_settings = c.settings.model_dump()
        api_settings["database_url"] = proxied.render_as_string(hide_password=False)
        job_id = submit(c.app, c.engine, tenant_id, model_id, job_spec_json(150))
        body = {"model": model_id, "data": "digits", "budget": "16x", "method": "uniform"}
        with TestClient(create_app(Settings(**api_settings))) as api:
            assert api.get("/readyz").status_code == 200

            def training() -> bool:
                return any(
                    e.kind == "progress" and e.stage == "fine-tune" and e.data
                    and e.data.get("step")
                    for e in events(c.engine, job_id)
                )  # fmt: skip

            wait_for("fine-tuning to report a step", training, 90, every_s=0.05)
            proxy.cut()
            cut_at = time.monotonic()
            answers: dict[str, set[int]] = {"readyz": set(), "get": set(), "post": set()}
            while time.monotonic() - cut_at < OUTAGE_S:
                answers["readyz"].add(api.get("/readyz").status_code)
                answers["get"].add(api.get(f"/v1/jobs/{job_id}", headers=h).status_code)
                answers["post"].add(api.post("/v1/jobs", headers=h, json=body).status_code)
                assert row(c.engine, job_id)[0] == "running"  # in flight, waiting on its writes
                time.sleep(0.5)  # the outage's length is the test's; this paces the polling
            assert answers == {"readyz": {503}, "get": {503}, "post": {503}}, answers
            proxy.restore()

            wait_final(c.engine, [job_id], 120, c.logs)
            job = load(c.engine, job_id)
            assert job.status == "succeeded", job.error
            assert job.attempts == 1  # the same attempt rode the outage out
            assert status_events(c.engine, job_id) == ["queued", "running", "succeeded"]
            assert job.metrics is not None and job.metrics["verified"] is True
            assert "database unavailable (try" in worker.log_path.read_text(errors="replace")
            assert api.get("/readyz").status_code == 200
            got = api.get(f"/v1/jobs/{job_id}", headers=h)
            assert got.status_code == 200 and got.json()["status"] == "succeeded"
