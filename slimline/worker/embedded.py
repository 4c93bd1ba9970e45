"""The worker half of the embedded default: one Celery worker process beside the API.

``slimline serve`` with no configuration runs the API in its own process and starts this
worker as a child: the same ``celery worker`` the deployment runs, on the same tasks, with
SQLite and the filesystem broker that the default ``Settings`` name. The child gets the
parent's settings through ``SLIMLINE_*`` variables, so both read one database, one broker
folder and one artifact store. It is a separate process, not a thread, so the API process
never imports torch or touches CUDA, and a job that crashes the worker leaves the API up.

There is no beat here: the server calls ``sweeper.SweepTimer`` to re-queue the jobs of a
dead worker (the filesystem broker cannot redeliver a message) and re-send lost ones.
Nothing in this module imports torch.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import IO

from slimline.config import Settings

ENV_PREFIX = "SLIMLINE_"


def settings_env(settings: Settings) -> dict[str, str]:
    """``SLIMLINE_*`` variables from which a child process rebuilds ``settings``."""
    out = {}
    for name, value in settings.model_dump().items():
        if value is not None:
            out[ENV_PREFIX + name.upper()] = str(value)
    return out


def worker_argv(node_name: str, loglevel: str = "INFO") -> list[str]:
    """``celery worker`` for one job at a time: solo pool, concurrency 1 (one job per GPU)."""
    return [
        sys.executable, "-m", "celery", "-A", "slimline.worker.celery_app:app", "worker",
        "--pool=solo", "--concurrency=1", "-n", node_name, f"--loglevel={loglevel}",
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip


class EmbeddedWorker:
    """A ``celery worker`` child process running on ``settings``; its output goes to
    ``log_path`` (default: ``data_dir/worker.log``)."""

    def __init__(
        self,
        settings: Settings,
        *,
        log_path: Path | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.node_name = f"slimline-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
        self.log_path = log_path or Path(settings.data_dir) / "worker.log"
        self.extra_env = dict(extra_env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        data_root = os.environ.get("SLIMLINE_DATA_ROOT")  # read by the datasets module
        if data_root:
            env["SLIMLINE_DATA_ROOT"] = data_root
        cache = os.environ.get("SLIMLINE_CACHE_DIR")
        if cache:
            env["SLIMLINE_CACHE_DIR"] = cache
        env.update(settings_env(self.settings))
        env.update(self.extra_env)
        return env

    def start(self) -> EmbeddedWorker:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            worker_argv(self.node_name), env=self.env(), stdout=self._log, stderr=self._log
        )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 30.0) -> None:
        """Warm shutdown, waiting up to ``timeout_s`` for the running task, then kill: a
        killed job is re-queued by the sweeper and resumes from its last finished stage."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout_s)
        if self._log is not None:
            self._log.close()
            self._log = None
