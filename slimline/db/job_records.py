"""Jobs as frozen records, and the reads: one job, a tenant's job list (keyset-paged), a
job's events. The writes (every status change) are ``slimline.jobs``, which re-exports these.

Listing is newest first, keyset-paged on ``(created_at, id)``: a page costs an index range
scan however deep it is, and jobs created while a client pages never shift what it sees.
The cursor is opaque to clients (urlsafe base64 of ``[created_at, id]``).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, Table, and_, func, insert, or_, select
from sqlalchemy.orm import Session

from slimline.db.tables import JOB_STATUSES, Base
from slimline.errors import InvalidInput, NotFound

JOBS: Table = Base.metadata.tables["jobs"]
EVENTS: Table = Base.metadata.tables["job_events"]
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
MAX_PAGE = 500


@dataclass(frozen=True)
class Job:
    id: str
    tenant_id: str
    model_id: str
    dataset_id: str | None
    data_name: str | None
    spec: dict[str, Any]
    status: str  # queued | running | succeeded | failed | cancelled
    stage: str | None
    progress: float  # in [0, 1]
    metrics: dict[str, Any] | None
    plan: dict[str, Any] | None
    error: dict[str, Any] | None  # {"code", "message", "retryable"?, ...}; the last one
    attempts: int  # claims so far, the current run included
    max_attempts: int
    worker: str | None  # who holds it while running
    heartbeat_at: datetime | None
    cancel_requested: bool
    idempotency_key: str | None
    created_at: datetime
    enqueued_at: datetime | None  # last hand-over to the broker
    started_at: datetime | None  # first claim
    finished_at: datetime | None
    updated_at: datetime

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True)
class JobEvent:
    """One line of a job's timeline. ``kind`` is "status" for transitions (``data["status"]``
    is the new status), "stage" when the stage changes (``data["from"]`` the old one),
    "progress" for a worker's notes, or whatever a worker appends (e.g. "epoch")."""

    id: int
    job_id: str
    at: datetime
    kind: str
    stage: str | None
    data: dict[str, Any] | None


_JOB_FIELDS = tuple(f.name for f in fields(Job))
_EVENT_FIELDS = tuple(f.name for f in fields(JobEvent))


def job_from_row(row: Row[Any]) -> Job:
    m = row._mapping
    return Job(**{name: m[name] for name in _JOB_FIELDS})


def event_from_row(row: Row[Any]) -> JobEvent:
    m = row._mapping
    return JobEvent(**{name: m[name] for name in _EVENT_FIELDS})


def utc_now(now: datetime | None = None) -> datetime:
    """``now`` checked to be aware, or the current time in UTC."""
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError(f"naive datetime {now!r}: pass an aware (UTC) datetime")
    return now


def json_object(value: Mapping[str, Any] | None, field: str) -> dict[str, Any] | None:
    """A JSON round trip: refuses what the database could not store, and gives back exactly
    what a later read returns (tuples become lists, keys strings)."""
    if value is None:
        return None
    try:
        out = json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{field} must be a JSON object: {exc}", field=field) from None
    assert isinstance(out, dict)
    return out


def job_not_found(job_id: str) -> NotFound:
    return NotFound(f"job {job_id!r} not found", field="job_id", value=job_id)


def load_job(session: Session, job_id: str) -> Job:
    """Any tenant's job, for the worker and the sweeper (they get only an id)."""
    row = session.execute(select(JOBS).where(JOBS.c.id == job_id)).one_or_none()
    if row is None:
        raise job_not_found(job_id)
    return job_from_row(row)


def get_job(session: Session, tenant_id: str, job_id: str) -> Job:
    """The tenant's job; another tenant's job is ``NotFound`` exactly like a missing one."""
    row = session.execute(
        select(JOBS).where(JOBS.c.id == job_id, JOBS.c.tenant_id == tenant_id)
    ).one_or_none()
    if row is None:
        raise job_not_found(job_id)
    return job_from_row(row)


def add_event(
    session: Session,
    job_id: str,
    kind: str,
    *,
    stage: str | None = None,
    data: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> JobEvent:
    """Append to the job's timeline (no state check: the log is append-only)."""
    if not 1 <= len(kind) <= 32:
        raise InvalidInput(f"event kind {kind!r}: expected 1 to 32 characters", field="kind")
    values = dict(job_id=job_id, at=utc_now(now), kind=kind, stage=stage)
    row = session.execute(
        insert(EVENTS).values(**values, data=json_object(data, "data")).returning(*EVENTS.c)
    ).one()
    return event_from_row(row)


def add_status_event(session: Session, job: Job, now: datetime, **data: Any) -> JobEvent:
    """A transition's line in the timeline: kind "status", ``data["status"]`` the new one."""
    data = {"status": job.status, **data}
    return add_event(session, job.id, "status", stage=job.stage, data=data, now=now)


def job_events(
    session: Session, tenant_id: str, job_id: str, *, after_id: int = 0, limit: int = 100
) -> list[JobEvent]:
    """The tenant's job's events with id > ``after_id``, oldest first; poll with the last id
    seen. (On Postgres a concurrent writer may commit a lower id slightly later; a job has
    one writer at a time, so in practice ids appear in order.)"""
    _check_limit(limit)
    get_job(session, tenant_id, job_id)
    rows = session.execute(
        select(EVENTS)
        .where(EVENTS.c.job_id == job_id, EVENTS.c.id > after_id)
        .order_by(EVENTS.c.id)
        .limit(limit)
    )
    return [event_from_row(r) for r in rows]


def encode_cursor(job: Job) -> str:
    raw = json.dumps([job.created_at.isoformat(), job.id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, job_id = json.loads(raw)
        at = datetime.fromisoformat(created)
        if at.tzinfo is None or not isinstance(job_id, str):
            raise ValueError(cursor)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise InvalidInput(
            f"cursor {cursor!r} is not valid: pass the next_cursor of a previous page",
            field="cursor",
            value=cursor,
        ) from None
    return at, job_id


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(
            f"limit must be between 1 and {MAX_PAGE}, got {limit}", field="limit", value=limit
        )


def _statuses(status: str | Iterable[str] | None) -> list[str] | None:
    if status is None:
        return None
    wanted = [status] if isinstance(status, str) else list(status)
    bad = [s for s in wanted if s not in JOB_STATUSES]
    if bad or not wanted:
        raise InvalidInput(
            f"status {bad or wanted!r} is not valid: expected one of {', '.join(JOB_STATUSES)}",
            field="status",
            value=status,
        )
    return wanted


def list_jobs(
    session: Session,
    tenant_id: str,
    *,
    status: str | Iterable[str] | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[Job], str | None]:
    """The tenant's jobs, newest first: ``(page, next_cursor)``; ``next_cursor`` is None on
    the last page. ``status`` filters to one status or any of several."""
    _check_limit(limit)
    wanted = _statuses(status)
    q = select(JOBS).where(JOBS.c.tenant_id == tenant_id)
    if wanted is not None:
        q = q.where(JOBS.c.status.in_(wanted))
    if cursor is not None:
        at, last_id = decode_cursor(cursor)
        q = q.where(or_(JOBS.c.created_at < at, and_(JOBS.c.created_at == at, JOBS.c.id < last_id)))
    q = q.order_by(JOBS.c.created_at.desc(), JOBS.c.id.desc()).limit(limit + 1)
    jobs = [job_from_row(r) for r in session.execute(q)]
    if len(jobs) > limit:
        return jobs[:limit], encode_cursor(jobs[limit - 1])
    return jobs, None


def count_jobs_since(session: Session, tenant_id: str, since: datetime) -> int:
    """Jobs the tenant created at or after ``since`` (for the API's rate limit)."""
    q = select(func.count()).where(JOBS.c.tenant_id == tenant_id, JOBS.c.created_at >= since)
    return int(session.execute(q).scalar_one())
