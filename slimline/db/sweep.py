"""The sweeper: repairs what dead workers and a lossy broker leave behind. Part of the job
state machine (``slimline.jobs`` re-exports it), kept apart because it acts on many jobs at
once while the rest acts on one. The API process and the workers may all run it
periodically; any number of sweepers at once is safe, since every change is conditional.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, update
from sqlalchemy.orm import Session

from slimline.db.job_records import JOBS, Job, add_status_event, job_from_row, utc_now


@dataclass(frozen=True)
class SweepResult:
    requeued: tuple[str, ...]  # running jobs whose worker died, back to queued
    failed: tuple[str, ...]  # ... that had used all their attempts
    cancelled: tuple[str, ...]  # ... whose cancel had been requested
    to_enqueue: tuple[str, ...]  # send these to the broker after commit (requeued included)


def sweep(
    session: Session,
    *,
    stale_after_s: float,
    requeue_after_s: float = 300.0,
    now: datetime | None = None,
) -> SweepResult:
    """Repair what dead workers and a lossy broker leave behind; run it periodically (any
    number of sweepers at once is safe: each change is conditional).

    Running jobs whose heartbeat is older than ``stale_after_s`` lost their worker: those
    with a cancel requested become cancelled, those out of attempts fail
    (``error.code == "worker_lost"``), the rest go back to queued (attempts kept). Queued jobs
    last sent to the broker more than ``requeue_after_s`` ago are re-sent (the broker may have
    lost them; a duplicate message is harmless since the claim is conditional). Send every id
    in ``to_enqueue`` after commit."""
    now = utc_now(now)
    cutoff = now - timedelta(seconds=stale_after_s)
    stale = [
        JOBS.c.status == "running",
        or_(JOBS.c.heartbeat_at < cutoff, JOBS.c.heartbeat_at.is_(None)),
    ]

    def apply(where: list[Any], **values: Any) -> list[Job]:
        q = update(JOBS).where(*where).values(**values, updated_at=now).returning(*JOBS.c)
        return [job_from_row(r) for r in session.execute(q)]

    cancelled = apply(
        [*stale, JOBS.c.cancel_requested.is_(True)], status="cancelled", finished_at=now
    )
    lost = {"code": "worker_lost", "message": "the worker stopped sending heartbeats"}
    failed = apply(
        [*stale, JOBS.c.attempts >= JOBS.c.max_attempts],
        status="failed",
        finished_at=now,
        error={**lost, "message": lost["message"] + " and the job has used all its attempts"},
    )
    requeued = apply(
        stale,
        status="queued",
        worker=None,
        heartbeat_at=None,
        enqueued_at=now,
        error={**lost, "retryable": True},
    )
    resend = apply(
        [
            JOBS.c.status == "queued",
            or_(
                JOBS.c.enqueued_at < now - timedelta(seconds=requeue_after_s),
                JOBS.c.enqueued_at.is_(None),
            ),
        ],
        enqueued_at=now,
    )
    for job in (*cancelled, *failed, *requeued):
        add_status_event(session, job, now, reason="worker_lost")
    requeued_ids = tuple(j.id for j in requeued)
    return SweepResult(
        requeued=requeued_ids,
        failed=tuple(j.id for j in failed),
        cancelled=tuple(j.id for j in cancelled),
        to_enqueue=requeued_ids + tuple(j.id for j in resend if j.id not in requeued_ids),
    )
