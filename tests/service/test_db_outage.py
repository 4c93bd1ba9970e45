"""Postgres going away and coming back, through a TCP proxy the test can cut: /readyz and
requests answer 503 while it is gone and recover by themselves when it returns."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from slimline.config import Settings
from slimline.enqueue import RecordingEnqueuer
from slimline.service.app import create_app
from tests.faults.proxy import Proxy
from tests.service.conftest import Api, auth


@pytest.fixture
def proxy(pg_engine: Engine) -> Iterator[Proxy]:
    url = pg_engine.url
    p = Proxy((url.host or "127.0.0.1", url.port or 5432))
    p.restore()
    yield p
    p.cut()


def test_database_outage_and_recovery(api: Api, pg_engine: Engine, proxy: Proxy) -> None:
    _, key = api.tenant()
    h = auth(key)
    url = pg_engine.url.set(host="127.0.0.1", port=proxy.port)
    proxied = url.render_as_string(hide_password=False)
    settings = Settings(**{**api.settings.model_dump(), "database_url": proxied})
    with TestClient(create_app(settings, enqueuer=RecordingEnqueuer())) as client:
        assert client.get("/readyz").status_code == 200
        assert client.get("/v1/jobs", headers=h).status_code == 200
        proxy.cut()
        down = client.get("/readyz")
        assert down.status_code == 503 and "database" in down.json()["message"]
        r = client.get("/v1/jobs", headers=h)
        assert r.status_code == 503 and r.json()["code"] == "unavailable"
        body = {"model": "00000000-0000-0000-0000-000000000000", "data": "digits", "budget": "8x"}
        assert client.post("/v1/jobs", headers=h, json=body).status_code == 503
        proxy.restore()
        assert client.get("/readyz").status_code == 200
        assert client.get("/v1/jobs", headers=h).status_code == 200
