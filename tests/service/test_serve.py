"""`slimline serve` on the embedded default: a fresh data dir comes up migrated, with a local
key that works, a worker child process, and /healthz and /readyz green; it shuts down cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, proc: subprocess.Popen[bytes], deadline_s: float) -> httpx.Response:
    deadline = time.monotonic() + deadline_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, "slimline serve exited early"
        try:
            r = httpx.get(url, timeout=2)
            if r.status_code == 200:
                return r
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.2)  # polling a server that is starting; the deadline bounds it
    raise AssertionError(f"{url} not ready in {deadline_s}s: {last}")


def test_serve_starts_the_embedded_default(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "SLIMLINE_DATA_DIR": str(tmp_path / "data")}
    env = {
        k: v for k, v in env.items() if not k.startswith("SLIMLINE_") or k == "SLIMLINE_DATA_DIR"
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "slimline.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(f"{base}/healthz", proc, 120)
        ready = _wait_ready(f"{base}/readyz", proc, 60)
        assert ready.json()["checks"]["database"] and ready.json()["checks"]["broker"]
        key_file = tmp_path / "data" / "local.key"
        assert key_file.stat().st_mode & 0o077 == 0  # only the owner can read the key
        key = key_file.read_text().strip()
        ok = httpx.get(f"{base}/v1/jobs", headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200 and ok.json()["items"] == []
        bad = httpx.get(f"{base}/v1/jobs", headers={"Authorization": "Bearer sl_nope"})
        assert bad.status_code == 401
        assert (tmp_path / "data" / "slimline.db").is_file()
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode()[-2000:]
    assert b"serving on http://127.0.0.1" in out
