"""The embedded default: SQLite and the filesystem broker, with a real worker process started
the way ``slimline serve`` starts it, and jobs sent the way the API sends them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import Engine

import slimline
from slimline import jobs
from slimline.config import Settings
from slimline.db.artifacts import job_artifacts
from slimline.db.migrate import upgrade
from slimline.db.session import make_engine, session_scope
from slimline.enqueue import RUN_JOB, CeleryEnqueuer
from slimline.pipeline.persist import file_sha256
from slimline.pipeline.stages import STAGES
from slimline.worker.celery_app import create_app
from slimline.worker.embedded import EmbeddedWorker, settings_env
from slimline.worker.sweeper import SweepTimer
from tests.worker.conftest import (
    READY_TIMEOUT_S,
    REPO,
    events,
    job_row,
    job_spec_json,
    upload_weights,
    wait_for,
    wait_status,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("embedded")
    settings = Settings(data_dir=root, heartbeat_s=0.3, stale_after_s=3.0, requeue_after_s=600.0)
    assert settings.uses_sqlite and settings.filesystem_broker_dir == root / "broker"
    upgrade(settings.database_url)
    return settings


@pytest.fixture(scope="module")
def engine(settings: Settings) -> Iterator[Engine]:
    eng = make_engine(settings.database_url)
    yield eng
    eng.dispose()


@pytest.fixture(scope="module")
def worker(settings: Settings, data_root: Path, cache_dir: Path) -> Iterator[EmbeddedWorker]:
    extra = {
        "SLIMLINE_DATA_ROOT": str(data_root),
        "SLIMLINE_CACHE_DIR": str(cache_dir),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
    }
    worker = EmbeddedWorker(settings, extra_env=extra).start()
    app = create_app(settings)

    def answered() -> bool:
        if not worker.alive():
            pytest.fail(f"worker exited:\n{worker.log_path.read_text()[-4000:]}")
        return bool(app.control.ping(destination=[worker.node_name], timeout=0.5))

    wait_for("the embedded worker to answer ping", answered, READY_TIMEOUT_S, every_s=0.1)
    yield worker
    worker.stop()


def test_settings_reach_the_worker_process_unchanged(settings: Settings) -> None:
    env = settings_env(settings)
    rebuilt = Settings(**{k.removeprefix("SLIMLINE_").lower(): v for k, v in env.items()})
    assert rebuilt == settings


def test_job_on_sqlite_and_the_filesystem_broker(
    engine: Engine, settings: Settings, worker: EmbeddedWorker, digits_weights: Path
) -> None:
    tenant_id, model_id = upload_weights(engine, settings, digits_weights)
    with session_scope(engine) as s:
        job, _ = jobs.create_job(
            s, tenant_id, job_spec_json(), model_id=model_id, data_name="digits"
        )
    sender = CeleryEnqueuer(settings)  # the API's way of sending
    sender.send(RUN_JOB, job.id)
    sender.close()

    job = wait_status(engine, job.id, "succeeded")
    assert job.attempts == 1
    evs = events(engine, job.id)
    assert [e.data["status"] for e in evs if e.kind == "status" and e.data] == [
        "queued", "running", "succeeded",
    ]  # fmt: skip
    assert [e.stage for e in evs if e.kind == "stage"] == list(STAGES)
    assert any(e.kind == "progress" and e.stage == "fine-tune" for e in evs)
    root = Path(settings.artifact_dir)
    with session_scope(engine) as s:
        arts = {a.kind: a for a in job_artifacts(s, tenant_id, job.id)}
    assert set(arts) == {"checkpoint", "report"}
    for art in arts.values():
        assert art.sha256 == file_sha256(root / art.path)
    model = slimline.load(root / arts["checkpoint"].path)
    assert model is not None and job.metrics is not None and job.metrics["verified"] is True


def test_a_job_whose_worker_died_is_resent_by_the_sweep_timer(
    engine: Engine, settings: Settings, worker: EmbeddedWorker, digits_weights: Path
) -> None:
    """The filesystem broker loses the message of a killed worker; the server's sweep timer
    re-queues the job once its heartbeat is stale, and a new worker resumes it."""
    tenant_id, model_id = upload_weights(engine, settings, digits_weights)
    with session_scope(engine) as s:
        job, _ = jobs.create_job(
            s, tenant_id, job_spec_json(), model_id=model_id, data_name="digits"
        )
    app: Celery = create_app(settings)
    app.send_task(RUN_JOB, args=[job.id])

    def fine_tuning() -> bool:
        row = job_row(engine, job.id)
        return row.status == "running" and row.stage == "fine-tune"

    wait_for("the job to be fine-tuning", fine_tuning, 60, every_s=0.02)
    assert worker.proc is not None
    worker.proc.kill()
    worker.proc.wait(timeout=30)
    worker.start()
    sender = CeleryEnqueuer(settings)  # the server sweeps with the API's sender
    timer = SweepTimer(lambda job_id: sender.send(RUN_JOB, job_id), settings, engine, 0.5)
    timer.start()
    try:
        done = wait_status(engine, job.id, "succeeded")
    finally:
        timer.stop()
        sender.close()
    assert done.attempts == 2
