"""Dashboard tests: a real ``slimline serve`` process (the embedded default: SQLite, the
filesystem broker and a real Celery worker child) driven by headless Chromium through
Playwright's Python API, with Debian's ``/usr/bin/chromium`` (never a browser download).

Missing Chromium is installed with ``apt-get install -y chromium`` when that is possible;
otherwise the tests fail saying what to install. Screenshots go to ``test-artifacts/screenshots``
(gitignored; the README names it).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.db.conftest import pg_admin, pg_engine  # noqa: F401 (fixtures)
from tests.service.conftest import api, redis_url  # noqa: F401 (fixtures)
from tests.worker.conftest import digits_weights  # noqa: F401 (a fixture: dense weights)

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("SLIMLINE_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
START_TIMEOUT_S = 120.0


def ensure_chromium() -> Path:
    """Debian's chromium, installed with apt-get if missing; a clear failure if impossible."""
    if CHROMIUM.is_file():
        return CHROMIUM
    apt = shutil.which("apt-get")
    why = "apt-get is not available"
    if apt and os.geteuid() == 0:
        done = subprocess.run(
            [apt, "install", "-y", "--no-install-recommends", "chromium"],
            capture_output=True, text=True, timeout=900,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )  # fmt: skip
        if CHROMIUM.is_file():
            return CHROMIUM
        why = f"`apt-get install -y chromium` failed: {done.stderr[-800:]}"
    elif apt:
        why = "not root, so apt-get cannot install it"
    pytest.fail(
        f"the dashboard tests need Chromium at {CHROMIUM} ({why}). Install Debian's package "
        "(`sudo apt-get install -y chromium`) or set SLIMLINE_CHROMIUM to a Chromium binary.",
        pytrace=False,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A running ``slimline serve``: its base URL, the printed sign-in link, the local key."""

    base: str
    signin_url: str
    key: str
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.key}", **kw.pop("headers", {})}
        return httpx.request(method, self.base + path, headers=headers, timeout=30, **kw)


def _wait_for_signin_line(server_log: Path, proc: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    pattern = re.compile(r"dashboard (http://\S+/signin#token=\S+)")
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"slimline serve exited:\n{server_log.read_text()[-3000:]}")
        if m := pattern.search(server_log.read_text(errors="replace")):
            return m.group(1)
        time.sleep(0.1)  # polling the server's output for a line; the deadline bounds it
    pytest.fail(f"slimline serve printed no sign-in link:\n{server_log.read_text()[-3000:]}")


def _wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"slimline serve exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)  # polling readiness of a starting server; the deadline bounds it
    pytest.fail(f"{base}/readyz not ready in {START_TIMEOUT_S}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="package")
def server(
    tmp_path_factory: pytest.TempPathFactory, data_root: Path, cache_dir: Path
) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("dashboard")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLIMLINE_")}
    env.update(
        SLIMLINE_DATA_DIR=str(root / "data"),
        SLIMLINE_DATA_ROOT=str(data_root),
        SLIMLINE_CACHE_DIR=str(cache_dir),
        SLIMLINE_HEARTBEAT_S="0.5",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONPATH=str(REPO),
    )
    log_path = root / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "slimline.cli", "serve", "--port", str(port)],
            env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        signin = _wait_for_signin_line(log_path, proc)
        _wait_ready(base, proc, log_path)
        key = (root / "data" / "local.key").read_text().strip()
        yield Server(base, signin, key, root / "data", log_path, proc)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    chromium = ensure_chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "playwright is not installed: `.venv/bin/pip install -e '.[dev]'` (the Python "
            "package only; the tests use Debian's chromium, never `playwright install`)",
            pytrace=False,
        )
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(chromium), headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="package")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
