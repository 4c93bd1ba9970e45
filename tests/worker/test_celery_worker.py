"""A real Celery worker process on Redis and Postgres runs jobs end to end, survives kill -9,
honours cancellation and ignores duplicate messages.

``SLIMLINE_TEST_REDIS`` names the Redis database the tests use (default db 13 on localhost);
its Celery queue is purged at the start.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.engine import URL

import slimline
from slimline import jobs
from slimline.config import Settings
from slimline.db.artifacts import get_scores, job_artifacts
from slimline.db.migrate import upgrade
from slimline.db.session import make_engine, session_scope
from slimline.db.uploads import get_model
from slimline.pipeline.persist import file_sha256, finished_stages
from slimline.pipeline.stages import STAGES
from slimline.search.train_checkpoint import load_checkpoint
from slimline.worker.celery_app import TASK_INSPECT_UPLOAD, TASK_RUN_JOB, TASK_SWEEP, create_app
from slimline.worker.runner import build_spec, job_dir
from tests.db.conftest import create_pg_database, drop_pg_database
from tests.worker.conftest import (
    FT_STEPS,
    WorkerProcess,
    events,
    job_row,
    job_spec_json,
    submit,
    upload_weights,
    wait_for,
    wait_status,
    worker_env,
)

pytestmark = pytest.mark.slow
REDIS_URL = os.environ.get("SLIMLINE_TEST_REDIS", "redis://127.0.0.1:6379/13")


@pytest.fixture(scope="module")
def settings(pg_admin: URL, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"Redis not reachable at {REDIS_URL} ({exc}): start it with `service redis-server "
            "start`, or set SLIMLINE_TEST_REDIS",
            pytrace=False,
        )
    url = create_pg_database(pg_admin)
    try:
        upgrade(url.render_as_string(hide_password=False))
        root = tmp_path_factory.mktemp("celery-pg")
        yield Settings(
            data_dir=root,
            database_url=url.render_as_string(hide_password=False),
            broker_url=REDIS_URL,
            heartbeat_s=0.3,
            stale_after_s=3.0,
            requeue_after_s=600.0,
        )
    finally:
        drop_pg_database(pg_admin, url)


@pytest.fixture(scope="module")
def engine(settings: Settings) -> Iterator[Engine]:
    eng = make_engine(settings.database_url)
    yield eng
    eng.dispose()


@pytest.fixture(scope="module")
def app(settings: Settings) -> Celery:
    app = create_app(settings)
    app.control.purge()  # messages a previous run left behind
    return app


class Workers:
    """The module's worker processes; ``current`` is the live one."""

    def __init__(self, app: Celery, env: dict[str, str], log_dir: Path) -> None:
        self.app, self.env, self.log_dir = app, env, log_dir
        self.all: list[WorkerProcess] = []
        self.current = self.start()

    def start(self) -> WorkerProcess:
        worker = WorkerProcess(self.app, self.env, self.log_dir)
        self.all.append(worker)
        self.current = worker.wait_ready()
        return worker


@pytest.fixture(scope="module")
def workers(app: Celery, settings: Settings, data_root: Path, cache_dir: Path) -> Iterator[Workers]:
    pool = Workers(app, worker_env(settings, data_root, cache_dir), Path(settings.data_dir))
    yield pool
    for worker in pool.all:
        worker.stop()


@pytest.fixture(scope="module")
def upload(engine: Engine, settings: Settings, digits_weights: Path) -> tuple[str, str]:
    return upload_weights(engine, settings, digits_weights)


@pytest.fixture(scope="module")
def finished_job(
    app: Celery, engine: Engine, workers: Workers, upload: tuple[str, str]
) -> jobs.Job:
    """The standard job, run uninterrupted: the reference for the others."""
    job_id = submit(app, engine, *upload, job_spec_json())
    return wait_status(engine, job_id, "succeeded")


def test_inspect_upload_records_layers_and_sizes(
    app: Celery, engine: Engine, workers: Workers, upload: tuple[str, str]
) -> None:
    tenant_id, model_id = upload
    app.send_task(TASK_INSPECT_UPLOAD, args=["model", model_id])

    def settled() -> object:
        with session_scope(engine) as s:
            model = get_model(s, tenant_id, model_id)
        return model if model.status != "pending" else None

    model = wait_for("the upload to be inspected", settled, 60)
    assert model.status == "ready", model.error
    assert [(x["name"], x["kind"]) for x in model.layers] == [
        ("conv1", "conv2d"), ("conv2", "conv2d"), ("fc1", "linear"), ("fc2", "linear"),
    ]  # fmt: skip
    assert model.layers[2]["shape"] == [64, 512]
    # The numbers the job's own inspect stage computes.
    assert model.dense_bytes is not None and model.smallest_bytes is not None
    assert 150_000 < model.dense_bytes < 160_000
    assert 0 < model.smallest_bytes < model.dense_bytes // 16


def test_job_runs_to_success_with_artifacts_and_events(
    engine: Engine, settings: Settings, finished_job: jobs.Job
) -> None:
    job = finished_job
    assert job.attempts == 1 and job.progress == 1.0 and job.error is None
    evs = events(engine, job.id)
    statuses = [e.data["status"] for e in evs if e.kind == "status" and e.data]
    assert statuses == ["queued", "running", "succeeded"]
    assert [e.stage for e in evs if e.kind == "stage"] == list(STAGES)
    steps = [e.data for e in evs if e.kind == "progress" and e.stage == "fine-tune" and e.data]
    assert any(d.get("step") == d.get("total") == FT_STEPS for d in steps), steps
    assert any(d.get("event") == "end" for d in steps)

    with session_scope(engine) as s:
        arts = {a.kind: a for a in job_artifacts(s, job.tenant_id, job.id)}
        scores = get_scores(s, job.tenant_id, job.id)
    assert set(arts) == {"checkpoint", "report"}
    assert scores is None  # uniform scores nothing
    root = Path(settings.artifact_dir)
    for art in arts.values():
        path = root / art.path
        assert art.bytes == path.stat().st_size and art.sha256 == file_sha256(path)
    assert arts["checkpoint"].path == f"jobs/{job.id}/model.slim.safetensors"

    assert job.metrics is not None and job.plan is not None
    assert job.metrics["within_budget"] is True and job.metrics["verified"] is True
    assert arts["checkpoint"].bytes == job.metrics["file_bytes"] <= job.metrics["budget_bytes"]
    model = slimline.load(root / arts["checkpoint"].path)
    from slimline.models.datasets import load_dataset
    from slimline.search.training import evaluate

    data = load_dataset("digits")
    assert evaluate(model, data)["metric"] == pytest.approx(job.metrics["metric"], abs=1e-6)
    assert job.metrics["metric"] > 0.5  # ten classes: far above chance


def test_duplicate_message_for_a_finished_job_does_nothing(
    app: Celery, engine: Engine, workers: Workers, finished_job: jobs.Job
) -> None:
    before_events = events(engine, finished_job.id)
    ran = workers.current.processed(TASK_RUN_JOB)
    app.send_task(TASK_RUN_JOB, args=[finished_job.id])
    wait_for(
        "the duplicate to be processed", lambda: workers.current.processed(TASK_RUN_JOB) > ran, 30
    )
    assert job_row(engine, finished_job.id) == finished_job
    assert events(engine, finished_job.id) == before_events


def test_cancel_stops_a_running_job_within_a_few_steps(
    app: Celery, engine: Engine, settings: Settings, workers: Workers, upload: tuple[str, str]
) -> None:
    tenant_id, model_id = upload
    job_id = submit(app, engine, tenant_id, model_id, job_spec_json(100_000, epochs=1000))

    def training() -> bool:
        return any(
            e.kind == "progress" and e.stage == "fine-tune" and e.data and e.data.get("step")
            for e in events(engine, job_id)
        )

    wait_for("fine-tuning to report a step", training, 60)
    with session_scope(engine) as s:
        jobs.request_cancel(s, tenant_id, job_id)
    requested = datetime.now(UTC)
    job = wait_status(engine, job_id, "cancelled", timeout_s=30)
    assert job.finished_at is not None
    assert (job.finished_at - requested).total_seconds() < 10
    cancel = [e.data for e in events(engine, job_id) if e.data and e.data.get("event") == "cancel"]
    assert len(cancel) == 1 and 0 < cancel[0]["stopped_at_step"] < 100_000
    assert not (job_dir(settings, job_id) / "model.slim.safetensors").exists()
    with session_scope(engine) as s:
        assert job_artifacts(s, tenant_id, job_id) == []


def test_kill9_during_fine_tuning_resumes_on_another_worker(
    app: Celery,
    engine: Engine,
    settings: Settings,
    workers: Workers,
    upload: tuple[str, str],
    finished_job: jobs.Job,
) -> None:
    """The new worker restores the state the plan stage saved and goes on fine-tuning from
    the last checkpoint the dead worker wrote (every quarter of the 100 steps here), not from
    step 0. Fine-tuning is seeded and the checkpoint holds the optimizer and RNG state, so the
    file is byte for byte the uninterrupted run's."""
    job_id = submit(app, engine, *upload, job_spec_json())

    def checkpointed() -> jobs.Job | None:
        job = job_row(engine, job_id)
        if job.status != "running" or job.stage != "fine-tune":
            return None
        marks = [e.data["step"] for e in events(engine, job_id)
                 if e.data and e.data.get("checkpoint")]  # fmt: skip
        return job if marks and marks[-1] < FT_STEPS else None

    held = wait_for("a fine-tuning checkpoint", checkpointed, 90, every_s=0.02)
    victim = workers.current
    assert held.worker is not None and held.worker.endswith(f":{victim.proc.pid}")
    victim.kill9()
    spec = build_spec(settings, held, *_records(engine, held))
    assert finished_stages(spec, job_dir(settings, job_id) / "stages") == ("inspect", "plan")
    saved = load_checkpoint(job_dir(settings, job_id) / "finetune-checkpoints")
    assert saved is not None and 0 < saved["step"] < FT_STEPS

    workers.start()

    def stale() -> bool:
        job = job_row(engine, job_id)
        assert job.heartbeat_at is not None
        age = (datetime.now(UTC) - job.heartbeat_at).total_seconds()
        return age > settings.stale_after_s + 0.5

    wait_for("the dead worker's heartbeat to go stale", stale, 30)
    app.send_task(TASK_SWEEP)
    job = wait_status(engine, job_id, "succeeded")

    assert job.attempts == 2
    assert job.worker is not None and job.worker.endswith(f":{workers.current.proc.pid}")
    evs = events(engine, job_id)
    statuses = [e.data["status"] for e in evs if e.kind == "status" and e.data]
    assert statuses == ["queued", "running", "queued", "running", "succeeded"]
    resumed = [e.data for e in evs if e.data and e.data.get("event") == "resumed"]
    assert resumed == [
        {"event": "resumed", "finished": ["inspect", "plan"]},
        {"event": "resumed", "step": saved["step"], "total": FT_STEPS},
    ]
    root = Path(settings.artifact_dir)
    with session_scope(engine) as s:
        mine = {a.kind: a for a in job_artifacts(s, job.tenant_id, job_id)}
        ref = {a.kind: a for a in job_artifacts(s, job.tenant_id, finished_job.id)}
    assert mine["checkpoint"].sha256 == ref["checkpoint"].sha256
    assert (root / mine["checkpoint"].path).read_bytes() == (
        root / ref["checkpoint"].path
    ).read_bytes()
    assert job.metrics is not None and finished_job.metrics is not None
    assert job.metrics["metric"] == finished_job.metrics["metric"]


def _records(engine: Engine, job: jobs.Job) -> tuple[object, None]:
    from slimline.db.uploads import load_model_record

    with session_scope(engine) as s:
        return load_model_record(s, job.model_id), None
