"""Postgres going away and coming back, through a TCP proxy the test can cut: /readyz and
requests answer 503 while it is gone and recover by themselves when it returns."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from slimline.config import Settings
from slimline.enqueue import RecordingEnqueuer
from slimline.service.app import create_app
from tests.service.conftest import Api, auth


class Proxy:
    """Forwards 127.0.0.1:<port> to a backend; ``cut()`` drops every connection and stops
    listening, ``restore()`` listens again on the same port."""

    def __init__(self, backend: tuple[str, int]) -> None:
        self.backend = backend
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._socks: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()

    def restore(self) -> None:
        lst = socket.socket()
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind(("127.0.0.1", self.port))
        lst.listen(16)
        self._listener = lst
        threading.Thread(target=self._accept, args=(lst,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            socks, self._socks = self._socks, []
            if self._listener is not None:
                socks.append(self._listener)
                self._listener = None
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _accept(self, lst: socket.socket) -> None:
        while True:
            try:
                client, _ = lst.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.backend)
            with self._lock:
                self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


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
