"""How a running job talks to its row: heartbeats (which bring back cancellation) and progress.

Both write through ``slimline.jobs`` with the worker's name in the condition, so a worker that
was presumed dead and replaced cannot write to the job any more: it gets ``Conflict``, which
here becomes ``lost`` / ``JobLost``, and it stops. A database outage is not a reason to stop
a job: every write is tried again while the database is unavailable (``WriteRetry``: a
bounded number of tries with exponential backoff, from ``Settings.worker_write_*``), so a
short outage only pauses the job. A heartbeat or progress write still failing after the last
try is logged and skipped; if the outage outlasts ``stale_after_s`` the sweeper presumes the
worker dead and another attempt resumes the job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Engine

from slimline import jobs
from slimline.config import Settings
from slimline.db.session import session_scope
from slimline.errors import Conflict, Unavailable

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 1.0  # least time between two progress writes of one stage


class JobLost(Exception):
    """Another worker holds the job now (this one was presumed dead): stop, write nothing."""


T = TypeVar("T")


@dataclass(frozen=True)
class WriteRetry:
    """How a worker retries a write that found the database unavailable: ``attempts`` tries
    in all, waiting ``backoff_s``, then twice that, ... at most ``max_wait_s`` between two.
    Only ``Unavailable`` is retried; any other error (``Conflict`` included) is raised at once.
    """

    attempts: int = 10
    backoff_s: float = 0.25
    max_wait_s: float = 5.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> WriteRetry:
        return cls(
            attempts=settings.worker_write_attempts,
            backoff_s=settings.worker_write_backoff_s,
            max_wait_s=settings.worker_write_max_wait_s,
        )

    def wait_s(self, failures: int) -> float:
        """The wait after the ``failures``-th failed try (1-based)."""
        return float(min(self.max_wait_s, self.backoff_s * 2.0 ** (failures - 1)))

    def call(self, what: str, write: Callable[[bool], T]) -> T:
        """``write(retried)`` until it does not raise ``Unavailable`` or the tries are spent
        (then the last ``Unavailable`` is raised). ``retried`` is True from the second try
        on: an earlier try may have committed before the connection dropped, which a
        conditional write then sees as a ``Conflict`` with itself."""
        failures = 0
        while True:
            try:
                return write(failures > 0)
            except Unavailable as exc:
                failures += 1
                if failures >= self.attempts:
                    log.error("%s: database unavailable after %d tries: %s", what, failures, exc)
                    raise
                wait = self.wait_s(failures)
                log.warning(
                    "%s: database unavailable (try %d of %d), again in %.2fs: %s",
                    what, failures, self.attempts, wait, exc,
                )  # fmt: skip
                self.sleep(wait)


class Heartbeat:
    """Refreshes the job's heartbeat on a daemon thread and remembers what it learned."""

    def __init__(
        self,
        engine: Engine,
        job_id: str,
        worker: str,
        every_s: float,
        retry: WriteRetry | None = None,
    ) -> None:
        self.engine, self.job_id, self.worker, self.every_s = engine, job_id, worker, every_s
        self.retry = retry or WriteRetry()
        self._lock = threading.Lock()  # the loop and the runner's beats do not overlap
        self.cancelled = threading.Event()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="slimline-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.every_s + 30)

    def beat(self) -> None:
        """One heartbeat now (retried while the database is unavailable); sets ``cancelled``
        or ``lost``. An outage that outlasts the retries is logged (the job is presumed dead
        only after ``stale_after_s`` without a heartbeat)."""

        def write(retried: bool) -> bool:
            with session_scope(self.engine) as s:
                return jobs.heartbeat(s, self.job_id, self.worker)

        with self._lock:
            if self.lost.is_set():
                return
            try:
                if self.retry.call(f"heartbeat of job {self.job_id}", write):
                    self.cancelled.set()
            except Conflict:
                self.lost.set()
            except Unavailable as exc:
                log.warning("heartbeat of job %s failed: %s", self.job_id, exc)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s) and not self.lost.is_set():
            self.beat()


@dataclass
class ProgressWriter:
    """The stages' progress callback: writes the stage, its fraction and throttled events."""

    engine: Engine
    job_id: str
    worker: str
    every_s: float = PROGRESS_EVERY_S
    retry: WriteRetry = field(default_factory=WriteRetry)
    _stage: str = ""
    _last: float = 0.0
    fraction: float = 0.0
    last_step: int = 0

    def write(self, stage: str, fraction: float, event: Mapping[str, Any] | None) -> None:
        """Record progress (retried while the database is unavailable); ``JobLost`` if the
        job is no longer this worker's."""

        def once(retried: bool) -> None:
            with session_scope(self.engine) as s:
                jobs.set_progress(s, self.job_id, stage, fraction, event, worker=self.worker)

        try:
            self.retry.call(f"progress of job {self.job_id}", once)
        except Conflict as exc:
            raise JobLost(str(exc)) from exc
        except Unavailable as exc:  # progress is not worth failing a job over
            log.warning("progress of job %s not written: %s", self.job_id, exc)
        self._stage, self._last, self.fraction = stage, time.monotonic(), fraction

    def __call__(self, stage: str, event: dict[str, Any]) -> None:
        step, total = event.get("step"), event.get("total")
        fraction = self.fraction if stage == self._stage else 0.0
        if isinstance(step, int) and isinstance(total, int) and total > 0:
            fraction = min(1.0, max(0.0, step / total))
            if stage == "fine-tune":
                self.last_step = step
        due = time.monotonic() - self._last >= self.every_s
        # named events (resumed, ...) and training checkpoints are never thinned out
        marked = "event" in event or bool(event.get("checkpoint"))
        if stage != self._stage or due or marked or fraction >= 1.0:
            self.write(stage, fraction, event)
