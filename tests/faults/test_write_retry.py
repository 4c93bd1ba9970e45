"""The worker's write retries: bounded by a setting, with exponential backoff, only for a
database that is unavailable; and the runner's writes (claim, progress, heartbeat, finish,
fail) riding out a database that drops answers, in-process on SQLite."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from slimline import jobs
from slimline.config import Settings
from slimline.db.artifacts import job_artifacts
from slimline.db.migrate import upgrade
from slimline.db.session import make_engine, session_scope
from slimline.errors import Conflict, Unavailable
from slimline.pipeline.stages import STAGES
from slimline.worker import heartbeat, runner
from slimline.worker.heartbeat import WriteRetry
from tests.worker.conftest import events, job_spec_json, upload_weights


class Flaky:
    """A write that finds the database unavailable ``failures`` times, then succeeds."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls, self.retried = failures, 0, []

    def __call__(self, retried: bool) -> str:
        self.calls += 1
        self.retried.append(retried)
        if self.calls <= self.failures:
            raise Unavailable("database unavailable (test)")
        return "written"


def test_the_bound_and_backoff_are_settings(tmp_path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        worker_write_attempts=4,
        worker_write_backoff_s=0.5,
        worker_write_max_wait_s=1.5,
    )
    retry = WriteRetry.from_settings(settings)
    assert (retry.attempts, retry.backoff_s, retry.max_wait_s) == (4, 0.5, 1.5)
    assert [retry.wait_s(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 1.5, 1.5]
    defaults = WriteRetry.from_settings(Settings(data_dir=tmp_path))
    # The defaults ride out a 10 s outage (the fault test's) with room to spare.
    assert sum(defaults.wait_s(n) for n in range(1, defaults.attempts)) > 20
    with pytest.raises(ValueError):
        Settings(data_dir=tmp_path, worker_write_attempts=0)


def test_a_write_is_retried_with_backoff_until_it_succeeds() -> None:
    waits: list[float] = []
    retry = WriteRetry(attempts=5, backoff_s=0.1, max_wait_s=0.3, sleep=waits.append)
    write = Flaky(failures=3)
    assert retry.call("test write", write) == "written"
    assert write.calls == 4 and write.retried == [False, True, True, True]
    assert waits == [0.1, 0.2, 0.3]


def test_the_retries_are_bounded() -> None:
    waits: list[float] = []
    retry = WriteRetry(attempts=3, backoff_s=0.1, max_wait_s=10, sleep=waits.append)
    write = Flaky(failures=100)
    with pytest.raises(Unavailable):
        retry.call("test write", write)
    assert write.calls == 3 and waits == [0.1, 0.2]


def test_only_an_unavailable_database_is_retried() -> None:
    calls = []

    def refused(retried: bool) -> None:
        calls.append(retried)
        raise Conflict("another worker holds the job")

    with pytest.raises(Conflict):
        WriteRetry(attempts=5, sleep=lambda s: None).call("test write", refused)
    assert calls == [False]


# --- the runner's writes, in-process on SQLite, through a database that drops its answers ------


class FlakyScope:
    """Stands in for ``session_scope`` in one module. ``after``: every other transaction
    commits and then raises ``Unavailable`` (the connection dropped before the answer came
    back: the retry must see that its own write went through). ``before``: every other
    transaction raises before it starts."""

    def __init__(self, mode: str) -> None:
        self.mode, self.calls, self.failed = mode, 0, 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def __call__(self, engine: Engine) -> Iterator[Session]:
        with self._lock:
            fail = self.calls % 2 == 0
            self.calls += 1
            self.failed += fail
        if fail and self.mode == "before":
            raise Unavailable("database unavailable (test: before)")
        with session_scope(engine) as s:
            yield s
        if fail and self.mode == "after":
            raise Unavailable("database unavailable (test: answer lost)")


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Engine]]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("retry"),
        heartbeat_s=0.2,
        worker_write_attempts=3,
        worker_write_backoff_s=0.01,
    )
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    yield settings, engine
    engine.dispose()


def _job(settings: Settings, engine: Engine, weights: Path, spec: dict[str, Any]) -> str:
    tenant_id, model_id = upload_weights(engine, settings, weights)
    with session_scope(engine) as s:
        job, _ = jobs.create_job(s, tenant_id, spec, model_id=model_id, data_name="digits")
    return job.id


def test_claim_progress_and_finish_survive_lost_answers(
    local: tuple[Settings, Engine],
    digits_weights: Path,
    data_root: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings, engine = local
    monkeypatch.setenv("SLIMLINE_DATA_ROOT", str(data_root))
    runner_scope, beat_scope = FlakyScope("after"), FlakyScope("before")
    monkeypatch.setattr(runner, "session_scope", runner_scope)  # claim, finish
    monkeypatch.setattr(heartbeat, "session_scope", beat_scope)  # heartbeats, progress
    job_id = _job(settings, engine, digits_weights, job_spec_json(20))
    assert runner.run_job(settings, job_id, "retry-worker:1", engine=engine) == "succeeded"
    with session_scope(engine) as s:
        job = jobs.load_job(s, job_id)
        arts = job_artifacts(s, job.tenant_id, job_id)
    assert job.status == "succeeded" and job.attempts == 1  # one claim, though tried twice
    assert sorted(a.kind for a in arts) == ["checkpoint", "report"]  # recorded once
    assert runner_scope.failed == 2  # the claim's and the result's answers were lost
    assert beat_scope.failed >= 5
    statuses = [e.data["status"] for e in events(engine, job_id) if e.kind == "status" and e.data]
    assert statuses == ["queued", "running", "succeeded"]
    stages = [e.stage for e in events(engine, job_id) if e.kind == "stage"]
    assert stages == list(STAGES)


def test_a_failure_whose_answer_was_lost_is_recorded_once(
    local: tuple[Settings, Engine],
    digits_weights: Path,
    data_root: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings, engine = local
    monkeypatch.setenv("SLIMLINE_DATA_ROOT", str(data_root))
    job_id = _job(settings, engine, digits_weights, {**job_spec_json(20), "budget": "5000x"})
    scope = FlakyScope("after")
    scope.calls = 1  # the claim goes through; the failure's answer is lost
    monkeypatch.setattr(runner, "session_scope", scope)
    assert runner.run_job(settings, job_id, "retry-worker:2", engine=engine) == "failed"
    with session_scope(engine) as s:
        job = jobs.load_job(s, job_id)
    assert job.error is not None and job.error["code"] == "infeasible_budget"
    assert scope.failed == 1
    statuses = [e.data["status"] for e in events(engine, job_id) if e.kind == "status" and e.data]
    assert statuses == ["queued", "running", "failed"]


def test_a_database_gone_for_longer_than_the_retries_is_an_error(
    local: tuple[Settings, Engine], digits_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, engine = local
    job_id = _job(settings, engine, digits_weights, job_spec_json(20))

    def down(engine: Engine) -> Any:
        raise Unavailable("database unavailable (test: down)")

    monkeypatch.setattr(runner, "session_scope", down)
    with pytest.raises(Unavailable):  # the task retries it later (tasks.run_job)
        runner.run_job(settings, job_id, "retry-worker:3", engine=engine)
    with session_scope(engine) as s:
        assert jobs.load_job(s, job_id).status == "queued"
