"""Fault tests: real Celery worker processes on a private Redis and a fresh Postgres database,
killed, cut off and restarted while they run jobs.

Each module builds a ``Cluster`` (``cluster(...)``): a migrated Postgres database of its own,
the package's private ``redis-server`` (started here on a free port, no persistence, so a
restart loses every message, as a crashed broker would), worker processes started with
``OMP_NUM_THREADS=1``, and a sweep timer in the test process that stands in for celery beat
(short ``stale_after_s`` / ``requeue_after_s`` so a dead worker or a lost message is repaired
within seconds). Jobs are the worker tests' quick digits-cnn / digits / uniform job.
Everything synchronizes on what the records say, polled with a deadline.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kombu.exceptions
import pytest
import redis
from celery import Celery
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from slimline import jobs
from slimline.config import Settings
from slimline.db.artifacts import job_artifacts
from slimline.db.migrate import upgrade
from slimline.db.session import make_engine, session_scope
from slimline.worker.celery_app import create_app
from slimline.worker.sweeper import SweepTimer, send_run_job
from tests.db.conftest import create_pg_database, drop_pg_database, pg_admin  # noqa: F401
from tests.worker.conftest import (  # noqa: F401 (fixtures, used by the fault tests)
    WorkerProcess,
    digits_weights,
    events,
    one_torch_thread,
    submit,
    upload_weights,
    wait_for,
    worker_env,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A ``redis-server`` of the tests' own on a free loopback port, without persistence:
    ``restart()`` comes back empty, as a broker that crashed would."""

    def __init__(self, log_dir: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server not found on PATH (apt-get install redis-server)")
        self.exe, self.port, self.log_dir = exe, free_port(), log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [
            self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.log_dir), "--protected-mode", "no",
        ]  # fmt: skip
        log = open(self.log_dir / "redis.log", "ab")  # noqa: SIM115 (the child keeps it)
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log)
        log.close()
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)

        def up() -> bool:
            with contextlib.suppress(redis.RedisError):
                return bool(client.ping())
            return False

        wait_for("the private redis-server to answer", up, 30, every_s=0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def restart(self) -> None:
        self.kill()
        self.start()


@pytest.fixture(scope="package")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


# Short everything: a dead worker is noticed within seconds, a lost message re-sent.
FAST = {
    "heartbeat_s": 0.3,
    "stale_after_s": 3.0,
    "requeue_after_s": 4.0,
    "sweep_interval_s": 0.5,
    "worker_write_backoff_s": 0.1,
    "worker_write_max_wait_s": 1.0,
    "worker_write_attempts": 40,
}


@dataclass
class Cluster:
    settings: Settings  # what the workers are given (database URL maybe through a proxy)
    engine: Engine  # the test's own, direct connection to the database
    app: Celery
    env: dict[str, str]
    log_dir: Path
    workers: list[WorkerProcess] = field(default_factory=list)
    sweeper: SweepTimer | None = None

    def start_worker(self, wait: bool = True) -> WorkerProcess:
        worker = WorkerProcess(self.app, self.env, self.log_dir)
        self.workers.append(worker)
        return self.wait_ready(worker) if wait else worker

    def wait_ready(self, worker: WorkerProcess) -> WorkerProcess:
        """Until the worker answers a ping (a broker connection that a restart of Redis
        closed under this process is opened again on the next try)."""

        def answered() -> bool:
            if worker.proc.poll() is not None:
                pytest.fail(f"worker exited with {worker.proc.returncode}:\n{worker.log()}")
            try:
                return bool(self.app.control.ping(destination=[worker.name], timeout=0.5))
            except (redis.RedisError, OSError, kombu.exceptions.KombuError):
                return False

        wait_for(f"worker {worker.name} to answer ping", answered, 90, every_s=0.1)
        return worker

    def live(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.proc.poll() is None]

    def holder(self, job: jobs.Job) -> WorkerProcess:
        """The live worker process that holds ``job`` (its row names ``host:pid``)."""
        assert job.worker is not None
        pid = int(job.worker.rsplit(":", 1)[1])
        (worker,) = [w for w in self.live() if w.proc.pid == pid]
        return worker

    def start_sweeper(self) -> None:
        """celery beat's part: sweep every ``settings.sweep_interval_s``."""
        send = lambda job_id: send_run_job(self.app, job_id)  # noqa: E731
        self.sweeper = SweepTimer.from_settings(send, self.settings, self.engine)
        self.sweeper.start()

    def logs(self) -> str:
        return "\n".join(f"--- {w.name}\n{w.log()}" for w in self.workers)

    def stop(self) -> None:
        if self.sweeper is not None:
            self.sweeper.stop()
        for worker in self.live():  # warm shutdowns side by side, then wait for each
            worker.proc.terminate()
        for worker in self.workers:
            worker.stop()


@contextlib.contextmanager
def cluster(
    pg_admin: URL,  # noqa: F811 (the fixture's value)
    redis_server: PrivateRedis,
    root: Path,
    data_root: Path,
    cache_dir: Path,
    *,
    database_url: str | None = None,
    workers: int = 2,
    **overrides: Any,
) -> Iterator[Cluster]:
    """A fresh migrated database, ``workers`` ready worker processes and a sweep timer.
    ``database_url`` (e.g. through a proxy) is what the workers use; the test's engine
    always connects directly."""
    redis.Redis.from_url(redis_server.url).flushall()  # messages an earlier module left
    url = create_pg_database(pg_admin)
    direct = url.render_as_string(hide_password=False)
    engine = None
    c = None
    try:
        upgrade(direct)
        engine = make_engine(direct)
        settings = Settings(
            data_dir=root,
            database_url=database_url or direct,
            broker_url=redis_server.url,
            **{**FAST, **overrides},
        )
        app = create_app(settings)
        env = worker_env(settings, data_root, cache_dir)
        for name in ("sweep_interval_s", *[k for k in FAST if k.startswith("worker_write")]):
            value = getattr(settings, name)
            if value is not None:
                env[f"SLIMLINE_{name.upper()}"] = str(value)
        c = Cluster(settings, engine, app, env, root)
        for _ in range(workers):
            c.start_worker(wait=False)
        for w in c.workers:
            c.wait_ready(w)
        c.start_sweeper()
        yield c
    finally:
        if c is not None:
            c.stop()
        if engine is not None:
            engine.dispose()
        drop_pg_database(pg_admin, url)


# --- reading the records ---------------------------------------------------------------------


def row(engine: Engine, job_id: str) -> tuple[str, str | None, str | None, int]:
    """``(status, stage, worker, attempts)``: one cheap query, for tight polling."""
    with engine.connect() as conn:
        r = conn.execute(
            text("SELECT status, stage, worker, attempts FROM jobs WHERE id = :id"), {"id": job_id}
        ).one()
    return r.status, r.stage, r.worker, r.attempts


def load(engine: Engine, job_id: str) -> jobs.Job:
    with session_scope(engine) as s:
        return jobs.load_job(s, job_id)


def wait_final(engine: Engine, job_ids: list[str], timeout_s: float, logs: Any = None) -> None:
    """Until every job is in a final state (any of them)."""

    def done() -> bool:
        return all(row(engine, j)[0] in jobs.TERMINAL for j in job_ids)

    try:
        wait_for(f"{len(job_ids)} job(s) to finish", done, timeout_s, every_s=0.2)
    except BaseException:
        if logs is not None:
            print(logs())
        raise


def checkpoint_sha(engine: Engine, job: jobs.Job) -> str:
    with session_scope(engine) as s:
        arts = {a.kind: a for a in job_artifacts(s, job.tenant_id, job.id)}
    return arts["checkpoint"].sha256


def status_events(engine: Engine, job_id: str) -> list[str]:
    return [e.data["status"] for e in events(engine, job_id) if e.kind == "status" and e.data]
