"""The job runner and the upload inspection in-process, on SQLite (the Celery-driven paths
are tests/worker/test_celery_worker.py): time limit, errors, a lost job, uploads."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, update

from slimline import jobs
from slimline.config import Settings
from slimline.db.artifacts import job_artifacts
from slimline.db.job_records import JOBS
from slimline.db.migrate import upgrade
from slimline.db.session import make_engine, session_scope
from slimline.db.uploads import add_dataset, add_model, get_dataset, get_model, mark_model_invalid
from slimline.pipeline.stages import STAGE_FUNCTIONS, JobState
from slimline.worker.inspection import inspect_upload
from slimline.worker.runner import run_job
from tests.worker.conftest import events, job_spec_json, upload_weights

WORKER = "test-worker:1"


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = Settings(data_dir=tmp_path_factory.mktemp("runner"), heartbeat_s=0.2)
    upgrade(settings.database_url)
    return settings


@pytest.fixture(scope="module")
def engine(settings: Settings) -> Iterator[Engine]:
    eng = make_engine(settings.database_url)
    yield eng
    eng.dispose()


@pytest.fixture
def data_env(monkeypatch: pytest.MonkeyPatch, data_root: Path) -> None:
    monkeypatch.setenv("SLIMLINE_DATA_ROOT", str(data_root))


def new_job(engine: Engine, settings: Settings, weights: Path, spec: dict[str, Any]) -> str:
    tenant_id, model_id = upload_weights(engine, settings, weights)
    with session_scope(engine) as s:
        job, _ = jobs.create_job(s, tenant_id, spec, model_id=model_id, data_name="digits")
    return job.id


def load(engine: Engine, job_id: str) -> jobs.Job:
    with session_scope(engine) as s:
        return jobs.load_job(s, job_id)


def test_time_limit_stops_fine_tuning_and_keeps_a_feasible_result(
    engine: Engine, settings: Settings, digits_weights: Path, data_env: None
) -> None:
    spec = job_spec_json(100_000, epochs=1000, time_limit_s=0.001)
    job_id = new_job(engine, settings, digits_weights, spec)
    assert run_job(settings, job_id, WORKER, engine=engine) == "succeeded"
    job = load(engine, job_id)
    assert job.metrics is not None
    assert job.metrics["stopped_early"] == "time_limit"
    assert job.metrics["within_budget"] is True and job.metrics["verified"] is True
    limit = [
        e.data for e in events(engine, job_id) if e.data and e.data.get("event") == "time_limit"
    ]
    assert len(limit) == 1 and limit[0]["stopped_at_step"] < 100_000
    with session_scope(engine) as s:
        assert {a.kind for a in job_artifacts(s, job.tenant_id, job_id)} == {"checkpoint", "report"}


def test_bad_input_fails_the_job_for_good(
    engine: Engine, settings: Settings, digits_weights: Path, data_env: None
) -> None:
    job_id = new_job(engine, settings, digits_weights, {**job_spec_json(), "budget": "5000x"})
    sent: list[str] = []
    assert run_job(settings, job_id, WORKER, engine=engine, requeue=sent.append) == "failed"
    job = load(engine, job_id)
    assert job.error is not None and job.error["code"] == "infeasible_budget"
    assert job.error["retryable"] is False and "smallest size" in job.error["message"]
    assert sent == [] and job.attempts == 1


def test_an_unexpected_error_requeues_the_job_while_attempts_remain(
    engine: Engine,
    settings: Settings,
    digits_weights: Path,
    data_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(state: JobState, progress: Any) -> None:
        raise RuntimeError("GPU fell off the bus")

    monkeypatch.setitem(STAGE_FUNCTIONS, "plan", broken)
    job_id = new_job(engine, settings, digits_weights, job_spec_json())
    sent: list[str] = []
    assert run_job(settings, job_id, WORKER, engine=engine, requeue=sent.append) == "queued"
    job = load(engine, job_id)
    assert sent == [job_id] and job.status == "queued" and job.attempts == 1
    assert job.error is not None and job.error["retryable"] is True
    assert "GPU fell off the bus" in job.error["message"]
    # The next attempt resumes after inspect, which was saved before plan failed.
    monkeypatch.undo()
    assert run_job(settings, job_id, "test-worker:2", engine=engine) == "succeeded"
    resumed = [
        e.data for e in events(engine, job_id) if e.data and e.data.get("event") == "resumed"
    ]
    assert resumed == [{"event": "resumed", "finished": ["inspect"]}]
    assert load(engine, job_id).attempts == 2


def test_a_worker_that_lost_its_job_stops_without_writing(
    engine: Engine,
    settings: Settings,
    digits_weights: Path,
    data_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job_id = new_job(engine, settings, digits_weights, job_spec_json())
    plan = STAGE_FUNCTIONS["plan"]

    def taken_over(state: JobState, progress: Any) -> None:
        plan(state, progress)
        with session_scope(engine) as s:  # another worker claimed it meanwhile
            s.execute(update(JOBS).where(JOBS.c.id == job_id).values(worker="other:9"))

    monkeypatch.setitem(STAGE_FUNCTIONS, "plan", taken_over)
    assert run_job(settings, job_id, WORKER, engine=engine) == "lost"
    job = load(engine, job_id)
    assert job.status == "running" and job.worker == "other:9" and job.stage == "plan"
    assert not [e for e in events(engine, job_id) if e.stage == "fine-tune"]


def test_a_duplicate_message_does_nothing(
    engine: Engine, settings: Settings, digits_weights: Path, data_env: None
) -> None:
    job_id = new_job(engine, settings, digits_weights, {**job_spec_json(), "budget": "5000x"})
    assert run_job(settings, job_id, WORKER, engine=engine) == "failed"
    before = (load(engine, job_id), events(engine, job_id))
    assert run_job(settings, job_id, WORKER, engine=engine) == "skipped"
    assert (load(engine, job_id), events(engine, job_id)) == before


def _store(settings: Settings, name: str, data: bytes) -> str:
    rel = f"uploads/{uuid.uuid4().hex}/{name}"
    path = Path(settings.artifact_dir) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return rel


def test_inspect_uploads_ready_and_invalid(
    engine: Engine, settings: Settings, digits_weights: Path
) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.random((40, 1, 8, 8), dtype=np.float32),
        "y_train": rng.integers(0, 10, 40),
        "x_val": rng.random((10, 1, 8, 8), dtype=np.float32),
        "y_val": rng.integers(0, 10, 10),
    }
    npz = Path(settings.data_dir) / "d.npz"
    np.savez(npz, **arrays)
    with session_scope(engine) as s:
        tenant = jobs.create_tenant(s, f"t-{uuid.uuid4().hex[:6]}")
        ds, _ = add_dataset(
            s, tenant.id, sha256="a" * 64, filename="d.npz", bytes=npz.stat().st_size,
            path=_store(settings, "d.npz", npz.read_bytes()),
        )  # fmt: skip
        bad, _ = add_model(
            s, tenant.id, sha256="b" * 64, kind="pt2", filename="m.pt2", bytes=11,
            path=_store(settings, "m.pt2", b"not a zip!!"),
        )  # fmt: skip
    assert inspect_upload(settings, engine, "dataset", ds.id) == "ready"
    assert inspect_upload(settings, engine, "model", bad.id) == "invalid"
    assert inspect_upload(settings, engine, "model", bad.id) == "invalid"  # duplicate: no-op
    with session_scope(engine) as s:
        ds = get_dataset(s, tenant.id, ds.id)
        bad = get_model(s, tenant.id, bad.id)
    assert ds.summary == {
        "task": "classify", "train": 40, "val": 10, "input_shape": [1, 8, 8],
        "num_classes": 10, "dtype": "float32",
    }  # fmt: skip
    assert bad.error is not None and bad.error["code"] == "invalid_model"


def test_a_job_on_an_upload_inspection_refused_fails_with_its_reason(
    engine: Engine, settings: Settings, digits_weights: Path
) -> None:
    tenant_id, model_id = upload_weights(engine, settings, digits_weights)
    with session_scope(engine) as s:
        mark_model_invalid(s, model_id, {"code": "invalid_model", "message": "no layers"})
        job, _ = jobs.create_job(
            s, tenant_id, job_spec_json(), model_id=model_id, data_name="digits"
        )
    assert run_job(settings, job.id, WORKER, engine=engine) == "failed"
    error = load(engine, job.id).error
    assert (
        error is not None and error["code"] == "invalid_model" and "no layers" in error["message"]
    )


def test_inspect_an_uploaded_program(
    engine: Engine, settings: Settings, digits_weights: Path, tmp_path: Path
) -> None:
    import torch

    from slimline.models.program import export_program
    from slimline.models.zoo import load_zoo_model

    zoo = load_zoo_model("digits-cnn", {}, digits_weights)
    program = tmp_path / "digits.pt2"
    export_program(zoo, torch.randn(2, 1, 8, 8), program)
    with session_scope(engine) as s:
        tenant = jobs.create_tenant(s, f"t-{uuid.uuid4().hex[:6]}")
        up, _ = add_model(
            s, tenant.id, sha256="c" * 64, kind="pt2", filename="digits.pt2",
            bytes=program.stat().st_size, path=_store(settings, "d.pt2", program.read_bytes()),
        )  # fmt: skip
    assert inspect_upload(settings, engine, "model", up.id) == "ready"
    with session_scope(engine) as s:
        up = get_model(s, tenant.id, up.id)
    assert up.layers is not None and [x["kind"] for x in up.layers] == [
        "conv2d", "conv2d", "linear", "linear",
    ]  # fmt: skip
    assert up.dense_bytes is not None and up.smallest_bytes is not None
    assert 0 < up.smallest_bytes < up.dense_bytes // 16
