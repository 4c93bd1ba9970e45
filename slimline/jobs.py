"""The job state machine: the one place that changes a job's status.

    queued -> running -> succeeded | failed | cancelled
      ^          |
      +----------+  retryable failure or dead worker, while attempts < max_attempts
    queued -> cancelled (at once);  running -> cancel requested -> cancelled (by the worker)

Every transition is one conditional UPDATE (``... WHERE id = :id AND status = 'running' AND
worker = :me``): it happens whole or not at all, so of two workers, a worker and the sweeper,
or a worker and a cancel, only one can win. A refused transition raises ``Conflict`` naming
the job's actual state. On Postgres the loser of a race blocks on the row lock, then re-checks
the WHERE against the winner's committed row (READ COMMITTED) and matches nothing; on SQLite
every transaction holds the database's write lock (``BEGIN IMMEDIATE``, see ``db.session``).

Functions take a session and never commit: the caller's ``session_scope`` does, and the caller
sends broker messages only after that commit. Time is a parameter (``now``, default the
caller's clock in UTC), so tests and the sweeper control it; machines must keep their clocks
in sync well within ``stale_after_s``. Each transition appends a "status" event in the same
transaction. The reads are ``slimline.db.job_records``; tenants and API keys are
``slimline.db.tenants``; both are re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, and_, func, insert, literal, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from slimline.db.job_records import (
    JOBS,
    TERMINAL,
    Job,
    JobEvent,
    add_event,
    add_status_event,
    count_jobs_since,
    get_job,
    job_events,
    job_from_row,
    job_not_found,
    json_object,
    list_jobs,
    load_job,
    utc_now,
)
from slimline.db.sweep import SweepResult, sweep
from slimline.db.tables import Base, UTCDateTime, new_id
from slimline.db.tenants import (
    ApiKey,
    Tenant,
    authenticate,
    create_api_key,
    create_tenant,
    find_tenant,
    get_tenant,
    list_api_keys,
    revoke_api_key,
)
from slimline.errors import Conflict, InvalidInput, NotFound

__all__ = [
    "TERMINAL", "ApiKey", "Job", "JobEvent", "SweepResult", "Tenant", "add_event",
    "authenticate", "cancel_requested", "claim_job", "count_jobs_since", "create_api_key",
    "create_job", "create_tenant", "fail_job", "find_tenant", "finish_job", "get_job",
    "get_tenant", "heartbeat", "job_events", "list_api_keys", "list_jobs", "load_job",
    "mark_cancelled", "request_cancel", "revoke_api_key", "set_progress", "sweep",
]  # fmt: skip

MODELS: Table = Base.metadata.tables["models"]
DATASETS: Table = Base.metadata.tables["datasets"]


def _update(session: Session, job_id: str, where: Iterable[Any], **values: Any) -> Job | None:
    """The conditional UPDATE every transition is: the new job, or None if ``where`` failed."""
    row = session.execute(
        update(JOBS).where(JOBS.c.id == job_id, *where).values(**values).returning(*JOBS.c)
    ).one_or_none()
    return job_from_row(row) if row is not None else None


def _refused(session: Session, job_id: str, action: str, allowed: str) -> Conflict:
    job = load_job(session, job_id)  # NotFound if there is no such job
    held = f" on {job.worker!r}" if job.status == "running" else ""
    cancel = " with a cancel requested" if job.cancel_requested else ""
    return Conflict(
        f"cannot {action} job {job_id!r}: it is {job.status}{held}{cancel}; only {allowed}",
        field="status",
        value=job.status,
    )


def _held_by(worker: str) -> list[Any]:
    return [JOBS.c.status == "running", JOBS.c.worker == worker]


def _require_owned(session: Session, table: Table, tenant_id: str, id_: str, field: str) -> None:
    found = session.execute(
        select(table.c.id).where(table.c.id == id_, table.c.tenant_id == tenant_id)
    ).one_or_none()
    if found is None:
        raise NotFound(f"{field.removesuffix('_id')} {id_!r} not found", field=field, value=id_)


def create_job(
    session: Session,
    tenant_id: str,
    spec: Mapping[str, Any],
    *,
    model_id: str,
    dataset_id: str | None = None,
    data_name: str | None = None,
    idempotency_key: str | None = None,
    max_attempts: int = 3,
    now: datetime | None = None,
) -> tuple[Job, bool]:
    """``(job, created)``: a new queued job, or the one an earlier create with the same
    ``idempotency_key`` made (``created=False``); a key reused for a different request is a
    ``Conflict``. The model and dataset must be the tenant's (else ``NotFound``).

    Concurrent creates with one key make one job: the loser's INSERT waits on the unique
    index, fails when the winner commits, rolls back to its savepoint and returns the
    winner's job. Send the job to the broker after commit."""
    now = utc_now(now)
    spec_json = json_object(spec, "spec")
    if max_attempts < 1:
        raise InvalidInput(f"max_attempts must be >= 1, got {max_attempts}", field="max_attempts")
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 255:
        raise InvalidInput("idempotency key must be 1 to 255 characters", field="idempotency_key")
    request = (model_id, dataset_id, data_name, spec_json)

    def earlier() -> Job | None:
        if idempotency_key is None:
            return None
        row = session.execute(
            select(JOBS).where(
                JOBS.c.tenant_id == tenant_id, JOBS.c.idempotency_key == idempotency_key
            )
        ).one_or_none()
        if row is None:
            return None
        job = job_from_row(row)
        if (job.model_id, job.dataset_id, job.data_name, job.spec) != request:
            raise Conflict(
                f"idempotency key {idempotency_key!r} was used for a different request "
                f"(job {job.id}): send a new key for a new job",
                field="idempotency_key",
                value=idempotency_key,
            )
        return job

    if (found := earlier()) is not None:
        return found, False
    _require_owned(session, MODELS, tenant_id, model_id, "model_id")
    if dataset_id is not None:
        _require_owned(session, DATASETS, tenant_id, dataset_id, "dataset_id")
    values = dict(
        id=new_id(), tenant_id=tenant_id, model_id=model_id, dataset_id=dataset_id,
        data_name=data_name, spec=spec_json, status="queued", stage=None, progress=0.0,
        metrics=None, plan=None, error=None, attempts=0, max_attempts=max_attempts, worker=None,
        heartbeat_at=None, cancel_requested=False, idempotency_key=idempotency_key,
        created_at=now, enqueued_at=now, started_at=None, finished_at=None, updated_at=now,
    )  # fmt: skip
    try:
        with session.begin_nested():
            row = session.execute(insert(JOBS).values(**values).returning(*JOBS.c)).one()
    except IntegrityError:
        if (found := earlier()) is not None:
            return found, False
        raise
    job = job_from_row(row)
    add_status_event(session, job, now)
    return job, True


def claim_job(
    session: Session,
    job_id: str,
    worker: str,
    *,
    now: datetime | None = None,
    stale_after_s: float = 120.0,
) -> Job | None:
    """Take the job for ``worker``: a queued job, or a running one whose heartbeat is older
    than ``stale_after_s`` (its worker died). None when another worker holds it, it is
    finished, its cancel was requested, or it has used all its attempts (the sweeper then
    fails it). Of any number of concurrent claimers exactly one wins. A missing job is
    ``NotFound``."""
    now = utc_now(now)
    cutoff = now - timedelta(seconds=stale_after_s)
    before = session.execute(select(JOBS.c.worker).where(JOBS.c.id == job_id)).one_or_none()
    if before is None:
        raise job_not_found(job_id)
    job = _update(
        session,
        job_id,
        [
            or_(
                JOBS.c.status == "queued",
                and_(JOBS.c.status == "running", JOBS.c.heartbeat_at < cutoff),
            ),
            JOBS.c.attempts < JOBS.c.max_attempts,
            JOBS.c.cancel_requested.is_(False),
        ],
        status="running",
        attempts=JOBS.c.attempts + 1,
        worker=worker,
        heartbeat_at=now,
        started_at=func.coalesce(JOBS.c.started_at, literal(now, UTCDateTime())),
        updated_at=now,
    )
    if job is None:
        return None
    taken_from = {"taken_from": before.worker} if before.worker else {}
    add_status_event(session, job, now, worker=worker, attempt=job.attempts, **taken_from)
    return job


def heartbeat(session: Session, job_id: str, worker: str, *, now: datetime | None = None) -> bool:
    """Refresh the heartbeat; returns whether a cancel was requested. ``Conflict`` if the
    job no longer runs on ``worker`` (finished, cancelled, or taken over after this worker
    was presumed dead): the worker must then stop without writing anything more."""
    now = utc_now(now)
    job = _update(session, job_id, _held_by(worker), heartbeat_at=now, updated_at=now)
    if job is None:
        raise _refused(session, job_id, "heartbeat", f"a job running on {worker!r} can")
    return job.cancel_requested


def set_progress(
    session: Session,
    job_id: str,
    stage: str,
    progress: float,
    event: Mapping[str, Any] | None = None,
    *,
    worker: str | None = None,
    now: datetime | None = None,
) -> Job:
    """Record the running job's stage and progress in [0, 1]; it also counts as a heartbeat.
    A new stage appends a "stage" event; ``event`` appends a "progress" event with that data.
    Pass ``worker`` so that a worker which lost the job cannot write to it."""
    now = utc_now(now)
    if not 0.0 <= progress <= 1.0:
        raise InvalidInput(f"progress must be in [0, 1], got {progress}", field="progress")
    where = _held_by(worker) if worker is not None else [JOBS.c.status == "running"]
    before = session.execute(select(JOBS.c.stage).where(JOBS.c.id == job_id)).scalar()
    job = _update(
        session, job_id, where, stage=stage, progress=progress, heartbeat_at=now, updated_at=now
    )
    if job is None:
        raise _refused(session, job_id, "record progress of", "a running job's can be")
    if before != stage:
        add_event(session, job_id, "stage", stage=stage, data={"from": before}, now=now)
    if event is not None:
        add_event(session, job_id, "progress", stage=stage, data=event, now=now)
    return job


def finish_job(
    session: Session,
    job_id: str,
    worker: str,
    metrics: Mapping[str, Any],
    plan: Mapping[str, Any] | None,
    *,
    now: datetime | None = None,
) -> Job:
    """running on ``worker`` -> succeeded, with its metrics and plan. A job whose cancel was
    requested but which finished first still succeeds: the result exists."""
    now = utc_now(now)
    job = _update(
        session,
        job_id,
        _held_by(worker),
        status="succeeded",
        progress=1.0,
        metrics=json_object(metrics, "metrics"),
        plan=json_object(plan, "plan"),
        error=None,
        finished_at=now,
        updated_at=now,
    )
    if job is None:
        raise _refused(session, job_id, "finish", f"a job running on {worker!r} can finish")
    add_status_event(session, job, now, worker=worker)
    return job


def fail_job(
    session: Session,
    job_id: str,
    worker: str,
    error: Mapping[str, Any],
    *,
    now: datetime | None = None,
) -> Job:
    """running on ``worker`` -> queued again if ``error["retryable"]`` is true, attempts are
    left and no cancel was requested (send it to the broker after commit), else -> failed.
    ``error`` is ``{"code", "message", "retryable"?, ...}``; it stays on the job either way."""
    now = utc_now(now)
    err = json_object(error, "error")
    assert err is not None
    if not isinstance(err.get("code"), str) or not isinstance(err.get("message"), str):
        raise InvalidInput("error must have a string 'code' and 'message'", field="error")
    job = None
    if err.get("retryable") is True:
        retry_ok = [JOBS.c.attempts < JOBS.c.max_attempts, JOBS.c.cancel_requested.is_(False)]
        job = _update(
            session,
            job_id,
            [*_held_by(worker), *retry_ok],
            status="queued",
            worker=None,
            heartbeat_at=None,
            error=err,
            enqueued_at=now,
            updated_at=now,
        )
    if job is None:
        job = _update(
            session,
            job_id,
            _held_by(worker),
            status="failed",
            error=err,
            finished_at=now,
            updated_at=now,
        )
    if job is None:
        raise _refused(session, job_id, "fail", f"a job running on {worker!r} can fail")
    add_status_event(session, job, now, worker=worker, code=err["code"], attempt=job.attempts)
    return job


def request_cancel(
    session: Session, tenant_id: str, job_id: str, *, now: datetime | None = None
) -> Job:
    """Cancel the tenant's job: a queued job is cancelled at once; a running one gets
    ``cancel_requested`` and its worker stops at its next check (``mark_cancelled``).
    Cancelling a cancelled job again returns it; a finished one is a ``Conflict``."""
    now = utc_now(now)
    mine = [JOBS.c.tenant_id == tenant_id]
    job = _update(
        session,
        job_id,
        [*mine, JOBS.c.status == "queued"],
        status="cancelled",
        finished_at=now,
        updated_at=now,
    )
    if job is not None:
        add_status_event(session, job, now)
        return job
    job = _update(
        session,
        job_id,
        [*mine, JOBS.c.status == "running", JOBS.c.cancel_requested.is_(False)],
        cancel_requested=True,
        updated_at=now,
    )
    if job is not None:
        add_event(session, job_id, "cancel_requested", stage=job.stage, now=now)
        return job
    job = get_job(session, tenant_id, job_id)  # NotFound for another tenant's job
    if job.status in ("cancelled", "running"):  # already cancelled, or already requested
        return job
    raise _refused(session, job_id, "cancel", "a queued or running job can be cancelled")


def cancel_requested(session: Session, job_id: str) -> bool:
    """Whether the worker running the job should stop now (cancel requested, or the job is
    already cancelled)."""
    row = session.execute(
        select(JOBS.c.status, JOBS.c.cancel_requested).where(JOBS.c.id == job_id)
    ).one_or_none()
    if row is None:
        raise job_not_found(job_id)
    return bool(row.cancel_requested) or row.status == "cancelled"


def mark_cancelled(
    session: Session, job_id: str, worker: str, *, now: datetime | None = None
) -> Job:
    """The worker's acknowledgement: running on ``worker`` with a cancel requested ->
    cancelled."""
    now = utc_now(now)
    job = _update(
        session,
        job_id,
        [*_held_by(worker), JOBS.c.cancel_requested.is_(True)],
        status="cancelled",
        finished_at=now,
        updated_at=now,
    )
    if job is None:
        allowed = f"a job running on {worker!r} with a cancel requested can be"
        raise _refused(session, job_id, "mark cancelled", allowed)
    add_status_event(session, job, now, worker=worker)
    return job
