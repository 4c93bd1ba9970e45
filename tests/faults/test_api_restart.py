"""The API process killed (kill -9) and restarted while uploads stream in: no half-written
upload is ever recorded or served. Uploads go to a temp name, are fsynced and renamed into
place only when whole; a file at a content address that does not hash to it is replaced; a
download is served only when the file's size and sha256 match the record."""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import URL

from slimline import jobs
from slimline.db.artifacts import add_artifact
from slimline.db.session import session_scope
from tests.faults.conftest import Cluster, PrivateRedis, cluster, free_port
from tests.worker.conftest import REPO, wait_for

pytestmark = pytest.mark.slow
BOUNDARY = "slimline-fault-test-boundary"


class ApiProcess:
    """``uvicorn`` serving ``create_app()`` (settings from the environment) in a child."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.env, self.port, self.log_path = env, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ApiProcess:
        code = (
            "import uvicorn; from slimline.service.app import create_app; "
            f"uvicorn.run(create_app(), host='127.0.0.1', port={self.port}, log_level='warning')"
        )
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code], env=self.env, cwd=REPO, stdout=log, stderr=log
            )

        def healthy() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log_path.read_text()
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for("the API to answer /healthz", healthy, 60, every_s=0.1)
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def multipart(weights: bytes) -> bytes:
    def part(headers: str, body: bytes) -> bytes:
        return f"--{BOUNDARY}\r\n{headers}\r\n\r\n".encode() + body + b"\r\n"

    return (
        part('Content-Disposition: form-data; name="name"', b"digits-cnn")
        + part('Content-Disposition: form-data; name="config"', b"{}")
        + part(
            'Content-Disposition: form-data; name="file"; filename="digits-cnn.safetensors"\r\n'
            "Content-Type: application/octet-stream",
            weights,
        )
        + f"--{BOUNDARY}--\r\n".encode()
    )


def start_upload(api: ApiProcess, key: str, body: bytes, send: int) -> socket.socket:
    """An upload whose first ``send`` bytes of ``body`` are sent; the rest never come."""
    sock = socket.create_connection(("127.0.0.1", api.port))
    head = (
        "POST /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {key}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body[:send])
    return sock


@pytest.fixture
def env(
    pg_admin: URL,
    private_redis: PrivateRedis,
    tmp_path: Path,
    data_root: Path,
    cache_dir: Path,
) -> Iterator[Cluster]:
    with cluster(pg_admin, private_redis, tmp_path, data_root, cache_dir, workers=0) as c:
        yield c


@pytest.fixture
def digits_weights(tmp_path: Path) -> Path:
    """Untrained digits-cnn weights: a valid upload, made at once (what they are does not
    matter here)."""
    from slimline.models.zoo import build_model, save_zoo_weights

    path = tmp_path / "digits-cnn.safetensors"
    save_zoo_weights(build_model("digits-cnn", {}), path)
    return path


def test_api_killed_during_uploads_serves_no_half_written_file(
    env: Cluster, digits_weights: Path, tmp_path: Path
) -> None:
    c = env
    api_env = dict(c.env)  # the database directly, the private Redis, the same store
    with session_scope(c.engine) as s:
        tenant = jobs.create_tenant(s, f"team-{uuid.uuid4().hex[:8]}")
        key, _ = jobs.create_api_key(s, tenant.id)
    h = {"Authorization": f"Bearer {key}"}
    weights = digits_weights.read_bytes()
    sha = hashlib.sha256(weights).hexdigest()
    body = multipart(weights)
    store = Path(c.settings.artifact_dir)
    port = free_port()

    api = ApiProcess(api_env, port, tmp_path / "api.log").start()
    try:
        socks = [start_upload(api, key, body, len(body) // 2) for _ in range(3)]

        def streaming() -> bool:  # every upload has bytes in a temp file of the store
            parts = list((store / "tmp").glob("*.part"))
            return len(parts) == 3 and all(p.stat().st_size > 0 for p in parts)

        wait_for("three uploads to be streaming into the store", streaming, 30)
        api.kill9()
        for sock in socks:
            sock.close()
        api.start()

        # Nothing of the cut uploads is recorded or at a content address.
        assert httpx.get(f"{api.url}/v1/models", headers=h).json() == []
        assert not (store / "tenants").exists() or not any((store / "tenants").rglob("*.*"))

        # A half-written file at the content address (an older, non-atomic writer that
        # died) is replaced by the whole upload, never kept.
        dest = store / "tenants" / tenant.id / "models" / f"{sha}.safetensors"
        dest.parent.mkdir(parents=True)
        dest.write_bytes(weights[: len(weights) // 2])
        r = httpx.post(
            f"{api.url}/v1/models",
            headers={**h, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
            content=body,
            timeout=60,
        )
        assert r.status_code == 201, r.text
        assert r.json()["sha256"] == sha
        assert hashlib.sha256(dest.read_bytes()).hexdigest() == sha
        assert len(list((store / "tmp").glob("*.part"))) <= 3  # only the cut uploads' left

        # A recorded artifact is served only while its bytes match the record.
        model_id = r.json()["id"]
        with session_scope(c.engine) as s:
            job, _ = jobs.create_job(s, tenant.id, {"budget": "16x"}, model_id=model_id,
                                     data_name="digits")  # fmt: skip
            rel = f"jobs/{job.id}/model.slim.safetensors"
            (store / rel).parent.mkdir(parents=True)
            shutil.copyfile(digits_weights, store / rel)
            art = add_artifact(s, tenant.id, kind="checkpoint", path=rel, bytes=len(weights),
                               sha256=sha, job_id=job.id)  # fmt: skip
        url = f"{api.url}/v1/artifacts/{art.id}"
        (store / rel).write_bytes(weights[: len(weights) // 2])  # half of it
        assert httpx.get(url, headers=h).status_code == 503
        (store / rel).write_bytes(weights[:-1] + bytes([weights[-1] ^ 1]))  # same size
        assert httpx.get(url, headers=h).status_code == 503
        shutil.copyfile(digits_weights, store / rel)
        got = httpx.get(url, headers=h)
        assert got.status_code == 200 and got.content == weights
        assert got.headers["etag"] == f'"{sha}"'
    finally:
        api.stop()
