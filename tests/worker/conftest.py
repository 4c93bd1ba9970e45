"""Worker tests: the job runner in-process (persist/restore), and real Celery worker processes
(Redis + Postgres, and the embedded default: SQLite + the filesystem broker).

Jobs run digits-cnn on the named ``digits`` data with ``--method uniform`` and a few
fine-tuning steps. The dense weights are a model upload (a zoo name + safetensors), trained
here for a few steps once per session, so no test pays for the dense recipe.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch
from celery import Celery
from sqlalchemy import Engine

from slimline import jobs
from slimline.budget import parse_budget
from slimline.config import Settings
from slimline.db.session import session_scope
from slimline.db.uploads import add_model
from slimline.pipeline.persist import file_sha256
from slimline.pipeline.stages import JobSpec
from slimline.worker.celery_app import TASK_RUN_JOB
from tests.db.conftest import pg_admin  # noqa: F401 (a fixture, used by the worker tests)

T = TypeVar("T")

SEED = 0
FT_STEPS = 100  # fine-tuning steps of the standard job: long enough to kill the worker in


def _train_dense(path: Path, data_root: Path) -> None:
    from slimline.models.datasets import load_dataset
    from slimline.models.zoo import build_model, save_zoo_weights
    from slimline.search.training import TrainConfig, train

    torch.manual_seed(SEED)
    model = build_model("digits-cnn", {})
    data = load_dataset("digits", data_root)
    train(model, data, TrainConfig(epochs=10, lr=3e-3, batch_size=64, max_steps=150, seed=SEED))
    save_zoo_weights(model, path)


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Jobs run in this process on one thread, like the workers (OMP_NUM_THREADS=1): the
    machine's cores are shared, and one thread count means one summation order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits_weights(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """Dense digits-cnn weights (safetensors), as a user would upload them."""
    path = tmp_path_factory.mktemp("weights") / "digits-cnn.safetensors"
    _train_dense(path, data_root)
    return path


def digits_spec(weights: Path, out: Path, data_root: Path, max_steps: int = 20) -> JobSpec:
    return JobSpec(
        model="digits-cnn",
        data="digits",
        budget=parse_budget("16x"),
        method="uniform",
        seed=SEED,
        data_root=str(data_root),
        weights=str(weights),
        out=out,
        device="cpu",
        max_steps=max_steps,
    )


# --- real worker processes -------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 90.0


def wait_for(
    what: str, check: Callable[[], T | None], timeout_s: float, every_s: float = 0.05
) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}", pytrace=False)
        time.sleep(every_s)


def worker_env(settings: Settings, data_root: Path, cache_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLIMLINE_")}
    env.update(
        SLIMLINE_DATA_DIR=str(settings.data_dir),
        SLIMLINE_DATABASE_URL=settings.database_url,
        SLIMLINE_BROKER_URL=settings.broker_url,
        SLIMLINE_ARTIFACT_DIR=str(settings.artifact_dir),
        SLIMLINE_HEARTBEAT_S=str(settings.heartbeat_s),
        SLIMLINE_STALE_AFTER_S=str(settings.stale_after_s),
        SLIMLINE_REQUEUE_AFTER_S=str(settings.requeue_after_s),
        SLIMLINE_DATA_ROOT=str(data_root),
        SLIMLINE_CACHE_DIR=str(cache_dir),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONPATH=str(REPO),
    )
    return env


class WorkerProcess:
    """``celery worker --pool=solo -c 1`` as a child process, with its log in a file."""

    def __init__(self, app: Celery, env: dict[str, str], log_dir: Path) -> None:
        self.app = app
        self.name = f"slimline-test-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
        self.log_path = log_dir / f"{self.name.split('@')[0]}.log"
        argv = [
            sys.executable, "-m", "celery", "-A", "slimline.worker.celery_app:app", "worker",
            "--pool=solo", "-c", "1", "-n", self.name, "--loglevel=INFO", "--without-gossip",
            "--without-mingle",
        ]  # fmt: skip
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=self._log, stderr=self._log)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_ready(self) -> WorkerProcess:
        def answered() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            return bool(self.app.control.ping(destination=[self.name], timeout=0.5))

        wait_for(f"worker {self.name} to answer ping", answered, READY_TIMEOUT_S, every_s=0.1)
        return self

    def processed(self, task_name: str) -> int:
        """How many ``task_name`` tasks this worker has run (its remote-control stats)."""
        stats = self.app.control.inspect(destination=[self.name], timeout=1.0).stats() or {}
        return int(stats.get(self.name, {}).get("total", {}).get(task_name, 0))

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # warm shutdown
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._log.close()


def upload_weights(engine: Engine, settings: Settings, weights: Path) -> tuple[str, str]:
    """A tenant and its digits-cnn upload (zoo name + safetensors) in the artifact store:
    ``(tenant_id, model_id)``."""
    rel = f"uploads/{uuid.uuid4().hex}/digits-cnn.safetensors"
    dest = Path(settings.artifact_dir) / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, dest)
    with session_scope(engine) as s:
        tenant = jobs.create_tenant(s, f"team-{uuid.uuid4().hex[:8]}")
        model, _ = add_model(
            s, tenant.id, sha256=file_sha256(dest), kind="zoo", zoo_name="digits-cnn",
            filename="digits-cnn.safetensors", path=rel, bytes=dest.stat().st_size,
        )  # fmt: skip
    return tenant.id, model.id


def submit(app: Celery, engine: Engine, tenant_id: str, model_id: str, spec: dict[str, Any]) -> str:
    """Create a queued job on named data ``digits`` and send it after the commit."""
    with session_scope(engine) as s:
        job, _ = jobs.create_job(s, tenant_id, spec, model_id=model_id, data_name="digits")
    app.send_task(TASK_RUN_JOB, args=[job.id])
    return job.id


def job_row(engine: Engine, job_id: str) -> jobs.Job:
    with session_scope(engine) as s:
        return jobs.load_job(s, job_id)


def wait_status(engine: Engine, job_id: str, status: str, timeout_s: float = 120.0) -> jobs.Job:
    def reached() -> jobs.Job | None:
        job = job_row(engine, job_id)
        if job.terminal and job.status != status:
            pytest.fail(f"job {job_id} ended {job.status} (error {job.error}), not {status}")
        return job if job.status == status else None

    return wait_for(f"job {job_id} to be {status}", reached, timeout_s)


def events(engine: Engine, job_id: str) -> list[jobs.JobEvent]:
    """All the job's events, oldest first."""
    out: list[jobs.JobEvent] = []
    with session_scope(engine) as s:
        tenant_id = jobs.load_job(s, job_id).tenant_id
        while page := jobs.job_events(s, tenant_id, job_id, after_id=out[-1].id if out else 0):
            out += page
    return out


def job_spec_json(max_steps: int = FT_STEPS, **extra: Any) -> dict[str, Any]:
    return {"budget": "16x", "method": "uniform", "seed": SEED, "max_steps": max_steps, **extra}
