"""The upload limit on a real server (uvicorn, chunked body): the API answers 413 while the
client is still sending, having read only a few chunks past the limit, and keeps no file."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import uvicorn
from sqlalchemy import Engine

from slimline import jobs
from slimline.config import Settings
from slimline.db.session import session_scope
from slimline.enqueue import RecordingEnqueuer
from slimline.service.app import create_app
from tests.service.conftest import auth, files_under

LIMIT = 1024**2
CHUNK = 64 * 1024
BODY_CHUNKS = 2000  # 131 MB offered


def test_413_arrives_before_the_body_is_sent(tmp_path: Path, sqlite_engine: Engine) -> None:
    url = sqlite_engine.url.render_as_string(hide_password=False)
    settings = Settings(data_dir=tmp_path, database_url=url, max_upload_bytes=LIMIT)
    app = create_app(settings, enqueuer=RecordingEnqueuer())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        with session_scope(sqlite_engine) as ss:
            tenant = jobs.create_tenant(ss, f"big-{tmp_path.name}")
            key, _ = jobs.create_api_key(ss, tenant.id)
        sent = 0

        def body() -> Iterator[bytes]:
            nonlocal sent
            yield b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.npz"\r\n\r\n'
            for _ in range(BODY_CHUNKS):
                sent += CHUNK
                yield b"\0" * CHUNK
            yield b"\r\n--B--\r\n"

        headers = {**auth(key), "Content-Type": "multipart/form-data; boundary=B"}
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/datasets", content=body(), headers=headers, timeout=30
        )
        assert r.status_code == 413 and r.json()["code"] == "too_large"
        assert sent < BODY_CHUNKS * CHUNK / 4, sent  # cut off early, not after reading it all
        assert files_under(settings.artifact_dir) == []
    finally:
        server.should_exit = True
        thread.join(timeout=10)
