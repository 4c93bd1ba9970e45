"""Service tests: the real app (``create_app``) over a real Postgres with the real migrations
(the records tests' database fixtures), and a real Redis broker for what the app enqueues.

Messages are read back with a kombu consumer from the queue Celery publishes to, so a test
sees exactly what a worker would receive. ``SLIMLINE_TEST_REDIS`` points at another Redis
(default database 14 on the local server; it is flushed before each test).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from queue import Empty
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from kombu import Connection
from sqlalchemy import Engine

from slimline import jobs
from slimline.config import Settings
from slimline.db.session import session_scope
from slimline.service.app import create_app
from tests.db.conftest import (  # noqa: F401 - fixtures
    empty_tables,
    pg_admin,
    pg_engine,
    sqlite_engine,
)

REDIS_URL = os.environ.get("SLIMLINE_TEST_REDIS", "redis://127.0.0.1:6379/14")
MAX_UPLOAD = 256 * 1024
QUEUE = "celery"  # Celery's default queue: where send_task puts a task with no routing


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"Redis not reachable at {REDIS_URL} ({exc}). Start it with `service redis-server "
            "start` or set SLIMLINE_TEST_REDIS.",
            pytrace=False,
        )
    return REDIS_URL


def drain(broker_url: str, transport_options: dict[str, Any] | None = None) -> list[Any]:
    """Every message waiting in Celery's queue, consumed: ``[(task name, args), ...]``."""
    out = []
    with Connection(broker_url, transport_options=transport_options or {}) as conn:
        q = conn.SimpleQueue(QUEUE)
        try:
            while True:
                try:
                    msg = q.get_nowait()
                except Empty:
                    break
                args, _kwargs, _embed = msg.payload
                out.append((msg.headers["task"], tuple(args)))
                msg.ack()
        finally:
            q.close()
    return out


@dataclass
class Api:
    client: TestClient
    settings: Settings
    engine: Engine
    broker_url: str
    transport_options: dict[str, Any]

    def tenant(self, name: str | None = None) -> tuple[jobs.Tenant, str]:
        with session_scope(self.engine) as s:
            t = jobs.create_tenant(s, name or f"team-{uuid.uuid4().hex[:8]}")
            key, _ = jobs.create_api_key(s, t.id)
        return t, key

    def messages(self) -> list[Any]:
        return drain(self.broker_url, self.transport_options)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def make_api(tmp: Path, engine: Engine, broker_url: str, **overrides: Any) -> Iterator[Api]:
    url = engine.url.render_as_string(hide_password=False)
    settings = Settings(
        data_dir=tmp,
        database_url=url,
        broker_url=broker_url,
        max_upload_bytes=MAX_UPLOAD,
        **overrides,
    )
    app = create_app(settings)
    app.state.sse_poll_s = 0.02
    from slimline.enqueue import broker_options

    opts = broker_options(settings)
    with TestClient(app) as client:
        yield Api(client, settings, engine, opts["broker"], opts["broker_transport_options"])


@pytest.fixture
def api(pg_engine: Engine, redis_url: str, tmp_path: Path) -> Iterator[Api]:  # noqa: F811
    """The app on Postgres (tables kept: every test makes its own tenants, and everything
    is per tenant) and Redis (its test database emptied)."""
    redis.Redis.from_url(redis_url).flushdb()
    yield from make_api(tmp_path, pg_engine, redis_url)


@pytest.fixture
def user(api: Api) -> tuple[jobs.Tenant, dict[str, str]]:
    tenant, key = api.tenant()
    return tenant, auth(key)


# ------------------------------------------------------------------------------ payloads
def pt2_bytes(tag: str = "") -> bytes:
    """A zip shaped like torch.export.save's archive (enough for the API's cheap check). The
    same ``tag`` gives the same bytes: the entries carry a fixed time, not the clock's (which
    made two calls straddling a 2-second tick differ, and a re-upload count as new)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in (
            ("model/archive_format", "pt2"),
            ("model/models/model.json", json.dumps({"tag": tag})),
        ):
            zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


def safetensors_bytes(n: int = 4) -> bytes:
    values = np.arange(n, dtype=np.float32)
    header = {"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, values.nbytes]}}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + values.tobytes()


def npz_bytes() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((4, 3), np.float32), y=np.arange(4))
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())
