"""How a running job talks to its row: heartbeats (which bring back cancellation) and progress.

Both write through ``slimline.jobs`` with the worker's name in the condition, so a worker that
was presumed dead and replaced cannot write to the job any more: it gets ``Conflict``, which
here becomes ``lost`` / ``JobLost``, and it stops. A database outage is not a reason to stop
a job: a missed heartbeat or progress write is logged, and if the outage outlasts
``stale_after_s`` the sweeper presumes the worker dead and another attempt resumes the job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from slimline import jobs
from slimline.db.session import session_scope
from slimline.errors import Conflict, Unavailable

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 1.0  # least time between two progress writes of one stage


class JobLost(Exception):
    """Another worker holds the job now (this one was presumed dead): stop, write nothing."""


class Heartbeat:
    """Refreshes the job's heartbeat on a daemon thread and remembers what it learned."""

    def __init__(self, engine: Engine, job_id: str, worker: str, every_s: float) -> None:
        self.engine, self.job_id, self.worker, self.every_s = engine, job_id, worker, every_s
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
        """One heartbeat now; sets ``cancelled`` or ``lost``. Database outages are logged (the
        job is presumed dead only after ``stale_after_s`` without one)."""
        try:
            with session_scope(self.engine) as s:
                if jobs.heartbeat(s, self.job_id, self.worker):
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
    _stage: str = ""
    _last: float = 0.0
    fraction: float = 0.0
    last_step: int = 0

    def write(self, stage: str, fraction: float, event: Mapping[str, Any] | None) -> None:
        try:
            with session_scope(self.engine) as s:
                jobs.set_progress(s, self.job_id, stage, fraction, event, worker=self.worker)
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
        if stage != self._stage or due or fraction >= 1.0:
            self.write(stage, fraction, event)
