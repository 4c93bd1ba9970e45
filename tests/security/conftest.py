"""Security tests: the real app over the real Postgres (fresh database, real migrations) and
the real Redis broker, as in tests/service; plus a real uvicorn on loopback for the schema fuzz
and the header limits, and a populated "world" of two tenants and a revoked key.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn
from sqlalchemy import Engine

from slimline import jobs
from slimline.config import Settings
from slimline.db import artifacts
from slimline.db.session import session_scope
from slimline.enqueue import broker_options
from slimline.service.app import create_app
from tests.service.conftest import (  # noqa: F401 - fixtures
    MAX_UPLOAD,
    Api,
    api,
    auth,
    empty_tables,
    npz_bytes,
    pg_admin,
    pg_engine,
    pt2_bytes,
    redis_url,
    sha256,
    sqlite_engine,
    user,
)
from tests.service.test_jobs import SCORES, SPEC, run_to_end


def build_world(api: Api) -> dict[str, Any]:  # noqa: F811
    """An owner with a model, a dataset, a finished job (scores, an artifact on disk), a
    queued job and a revoked key; another tenant with a key of its own."""
    owner, owner_key = api.tenant()
    other, other_key = api.tenant()
    with session_scope(api.engine) as s:
        revoked_key, rec = jobs.create_api_key(s, owner.id)
        jobs.revoke_api_key(s, owner.id, rec.id)
    h = auth(owner_key)
    c = api.client
    model = c.post("/v1/models", headers=h, files={"file": ("m.pt2", pt2_bytes("world"))})
    dataset = c.post("/v1/datasets", headers=h, files={"file": ("d.npz", npz_bytes())})
    assert model.status_code == 201 and dataset.status_code == 201, (model.text, dataset.text)
    model_id, dataset_id = model.json()["id"], dataset.json()["id"]
    done = c.post("/v1/jobs", headers=h, json={"model": model_id, **SPEC}).json()["id"]
    queued = c.post("/v1/jobs", headers=h, json={"model": model_id, **SPEC, "seed": 1})
    run_to_end(api, done)
    data = b"ckpt"
    rel = f"tenants/{owner.id}/jobs/{done}/ckpt.safetensors"
    (api.settings.artifact_dir / rel).parent.mkdir(parents=True)
    (api.settings.artifact_dir / rel).write_bytes(data)
    report = json.dumps({"layers": [], "pareto": []}).encode()
    report_rel = f"tenants/{owner.id}/jobs/{done}/report.json"
    (api.settings.artifact_dir / report_rel).write_bytes(report)
    with session_scope(api.engine) as s:
        artifacts.save_scores(s, done, SCORES)
        art = artifacts.add_artifact(
            s, owner.id, kind="checkpoint", path=rel, bytes=4, sha256=sha256(data), job_id=done
        )
        artifacts.add_artifact(
            s, owner.id, kind="report", path=report_rel, bytes=len(report),
            sha256=sha256(report), job_id=done,
        )  # fmt: skip
    api.messages()
    return {
        "owner": owner, "other": other,
        "keys": {"right": owner_key, "revoked": revoked_key, "other": other_key},
        "model": model_id, "dataset": dataset_id, "done": done,
        "queued": queued.json()["id"], "artifact": art.id,
    }  # fmt: skip


@pytest.fixture
def world(api: Api) -> dict[str, Any]:  # noqa: F811
    return build_world(api)


@dataclass
class Live:
    """The app served by a real uvicorn on 127.0.0.1 (its own thread); ``api.client`` is an
    httpx client on it (same interface as the TestClient of ``Api``)."""

    base_url: str
    api: Api


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture
def live(
    pg_engine: Engine,  # noqa: F811
    redis_url: str,  # noqa: F811
    tmp_path: Path,
) -> Iterator[Live]:
    redis.Redis.from_url(redis_url).flushdb()
    settings = Settings(
        data_dir=tmp_path,
        database_url=pg_engine.url.render_as_string(hide_password=False),
        broker_url=redis_url,
        max_upload_bytes=MAX_UPLOAD,
        rate_limit_jobs_per_minute=1_000_000,  # the fuzz creates jobs; 429 is tested apart
    )
    app = create_app(settings)
    sock = free_socket()
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    host, port = sock.getsockname()
    base_url = f"http://{host}:{port}"
    opts = broker_options(settings)
    client = httpx.Client(base_url=base_url, timeout=30)
    over_http = Api(client, settings, pg_engine, opts["broker"], opts["broker_transport_options"])  # type: ignore[arg-type]
    try:
        yield Live(base_url, over_http)
    finally:
        client.close()
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        redis.Redis.from_url(redis_url).flushdb()
