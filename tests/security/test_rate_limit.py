"""The job-creation rate limit (``Settings.rate_limit_jobs_per_minute``), beyond the basic 429
of tests/service/test_jobs.py: it counts per tenant, across all of the tenant's keys (a second
key is not a second allowance), another tenant is not slowed by the first, a refused request
leaves no job and sends nothing, and it holds under concurrent requests over real HTTP."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import Engine

from slimline import jobs
from slimline.db.session import session_scope
from slimline.enqueue import RUN_JOB
from tests.security.conftest import Api, Live, auth, free_socket, pt2_bytes
from tests.service.conftest import make_api
from tests.service.test_jobs import SPEC

LIMIT = 3


@pytest.fixture
def limited(pg_engine: Engine, redis_url: str, tmp_path: Path) -> Iterator[Api]:
    redis.Redis.from_url(redis_url).flushdb()
    yield from make_api(tmp_path, pg_engine, redis_url, rate_limit_jobs_per_minute=LIMIT)


def _model(api: Api, h: dict[str, str]) -> str:
    r = api.client.post("/v1/models", headers=h, files={"file": ("m.pt2", pt2_bytes("rl"))})
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


def test_the_limit_is_per_tenant_across_its_keys(limited: Api) -> None:
    api = limited
    tenant, key_a = api.tenant()
    with session_scope(api.engine) as s:
        key_b, _ = jobs.create_api_key(s, tenant.id)
    a, b = auth(key_a), auth(key_b)
    model = _model(api, a)
    api.messages()
    codes = [
        api.client.post("/v1/jobs", headers=h, json={**SPEC, "model": model, "seed": i}).status_code
        for i, h in enumerate([a, b, a, b, a])
    ]
    assert codes == [201, 201, 201, 429, 429], codes
    r = api.client.post("/v1/jobs", headers=b, json={**SPEC, "model": model, "seed": 99})
    assert r.status_code == 429 and r.json()["code"] == "rate_limited"
    assert str(LIMIT) in r.json()["message"] and r.headers["retry-after"] == "60"
    # the refused requests left no job behind and sent nothing to a worker
    assert len(api.client.get("/v1/jobs", headers=a).json()["items"]) == LIMIT
    assert [m[0] for m in api.messages()] == [RUN_JOB] * LIMIT
    # another tenant has its own allowance
    _, other_key = api.tenant()
    o = auth(other_key)
    other_model = _model(api, o)
    r = api.client.post("/v1/jobs", headers=o, json={**SPEC, "model": other_model})
    assert r.status_code == 201, r.text


@pytest.fixture
def live_limited(pg_engine: Engine, redis_url: str, tmp_path: Path) -> Iterator[Live]:
    """A real uvicorn (threads answer concurrently) with the limit set low."""
    import uvicorn

    from slimline.config import Settings
    from slimline.enqueue import broker_options
    from slimline.service.app import create_app
    from tests.service.conftest import MAX_UPLOAD

    redis.Redis.from_url(redis_url).flushdb()
    settings = Settings(
        data_dir=tmp_path,
        database_url=pg_engine.url.render_as_string(hide_password=False),
        broker_url=redis_url,
        max_upload_bytes=MAX_UPLOAD,
        rate_limit_jobs_per_minute=LIMIT,
    )
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning"))
    sock = free_socket()
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive()
        thread.join(0.02)
    host, port = sock.getsockname()
    base = f"http://{host}:{port}"
    opts = broker_options(settings)
    client = httpx.Client(base_url=base, timeout=30)
    try:
        yield Live(
            base,
            Api(client, settings, pg_engine, opts["broker"], opts["broker_transport_options"]),  # type: ignore[arg-type]
        )
    finally:
        client.close()
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_the_limit_holds_under_concurrent_requests(live_limited: Live) -> None:
    api = live_limited.api
    _, key = api.tenant()
    h = auth(key)
    model = _model(api, h)
    codes: Counter[int] = Counter()
    start = threading.Barrier(8)

    def submit(seed: int) -> None:
        with httpx.Client(base_url=live_limited.base_url, timeout=30) as c:
            start.wait()
            r = c.post("/v1/jobs", headers=h, json={**SPEC, "model": model, "seed": seed})
            codes[r.status_code] += 1

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert codes == Counter({201: LIMIT, 429: 8 - LIMIT}), codes
    assert len(api.client.get("/v1/jobs", headers=h).json()["items"]) == LIMIT
