"""Run the sweeper and send what it re-queued, by task name (no torch, no task imports).

``jobs.sweep`` only changes rows; the messages go out after its transaction commits, so a
job is never in the broker before its row says queued. The ``slimline.sweep`` task calls this
(from beat, in a deployment that runs it), and the embedded server calls it on a timer with
the API's sender, e.g. ``lambda job_id: enqueuer.send(RUN_JOB, job_id)``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from celery import Celery
from sqlalchemy import Engine

from slimline import jobs
from slimline.config import Settings
from slimline.db.session import session_scope
from slimline.worker.celery_app import TASK_RUN_JOB

log = logging.getLogger(__name__)


def send_run_job(app: Celery, job_id: str) -> None:
    """Hand the job to the broker (after its row was committed as queued)."""
    app.send_task(TASK_RUN_JOB, args=[job_id])


SendJob = Callable[[str], None]  # hands a job id to the broker as slimline.run_job


def sweep_and_send(send_job: SendJob, settings: Settings, engine: Engine) -> jobs.SweepResult:
    """One sweep: repair stale and lost jobs, then send every job it says to send."""
    with session_scope(engine) as session:
        result = jobs.sweep(
            session,
            stale_after_s=settings.stale_after_s,
            requeue_after_s=settings.requeue_after_s,
        )
    for job_id in result.to_enqueue:
        send_job(job_id)
    if result.requeued or result.failed or result.cancelled or result.to_enqueue:
        log.info(
            "sweep: requeued %s, failed %s, cancelled %s, sent %s",
            result.requeued, result.failed, result.cancelled, result.to_enqueue,
        )  # fmt: skip
    return result


def sweep_interval_s(settings: Settings) -> float:
    """How often a sweep timer runs: ``settings.sweep_interval_s``, else half a heartbeat
    interval but at least 5 s."""
    return settings.sweep_interval_s or max(5.0, settings.heartbeat_s / 2)


class SweepTimer:
    """Calls ``sweep_and_send`` every ``interval_s`` on a daemon thread (the embedded server
    has no beat). Errors are logged and the next tick tries again."""

    def __init__(
        self, send_job: SendJob, settings: Settings, engine: Engine, interval_s: float
    ) -> None:
        self._args = (send_job, settings, engine)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="slimline-sweep", daemon=True)

    @classmethod
    def from_settings(cls, send_job: SendJob, settings: Settings, engine: Engine) -> SweepTimer:
        """A timer every ``settings.sweep_interval_s`` (default ``max(5, heartbeat_s / 2)``)."""
        return cls(send_job, settings, engine, sweep_interval_s(settings))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._interval_s + 5)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                sweep_and_send(*self._args)
            except Exception:  # the database or broker is down: try again next tick
                log.exception("sweep failed")
