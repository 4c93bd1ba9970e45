"""The Celery tasks: thin edges that take ids, re-read the world and call the runner.

``slimline.run_job(job_id)``, ``slimline.inspect_upload(kind, record_id)`` and
``slimline.sweep()`` are sent by name (the API never imports this module). Each is
idempotent: the job claim and the upload settlement are conditional updates, so a message
delivered twice does its work once. Nothing here imports torch at import time and no task
waits on another task's result.

The database engine is made once per worker process on first use (after any fork), never at
import.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from celery import Celery, Task
from sqlalchemy import Engine

from slimline.config import Settings
from slimline.db.session import make_engine
from slimline.errors import Unavailable
from slimline.worker.celery_app import (
    TASK_INSPECT_UPLOAD,
    TASK_RUN_JOB,
    TASK_SWEEP,
    app_settings,
)

log = logging.getLogger(__name__)

_engines: dict[tuple[int, str], Engine] = {}
# Retries of a task that found the database unavailable, and the wait between them.
UNAVAILABLE_RETRIES = 20
UNAVAILABLE_WAIT_S = 15.0


def process_engine(settings: Settings) -> Engine:
    """This process's engine for ``settings.database_url`` (made on first use; a forked child
    makes its own rather than share its parent's connections)."""
    key = (os.getpid(), settings.database_url)
    engine = _engines.get(key)
    if engine is None:
        engine = _engines[key] = make_engine(settings.database_url)
    return engine


def worker_name(task: Task[Any, Any]) -> str:
    """Who holds a claimed job: the Celery node name and the process id."""
    host = task.request.hostname or socket.gethostname()
    return f"{host}:{os.getpid()}"


def run_job(task: Task[Any, Any], job_id: str) -> str:
    """``slimline.run_job``: claim the job and run what remains of it."""
    from slimline.worker.runner import run_job as run
    from slimline.worker.sweeper import send_run_job

    app = task.app
    settings = app_settings(app)
    try:
        return run(
            settings,
            job_id,
            worker_name(task),
            engine=process_engine(settings),
            requeue=lambda jid: send_run_job(app, jid),
        )
    except Unavailable as exc:  # before the claim or after losing the database
        raise task.retry(exc=exc, countdown=UNAVAILABLE_WAIT_S) from exc


def inspect_upload(task: Task[Any, Any], kind: str, record_id: str) -> str:
    """``slimline.inspect_upload``: inspect a pending model or dataset upload."""
    from slimline.worker.inspection import inspect_upload as inspect

    settings = app_settings(task.app)
    try:
        return inspect(settings, process_engine(settings), kind, record_id)
    except Unavailable as exc:
        raise task.retry(exc=exc, countdown=UNAVAILABLE_WAIT_S) from exc


def sweep(task: Task[Any, Any]) -> dict[str, list[str]]:
    """``slimline.sweep``: re-queue jobs of dead workers, re-send jobs the broker lost."""
    from slimline.worker.sweeper import send_run_job, sweep_and_send

    app = task.app
    settings = app_settings(app)
    result = sweep_and_send(lambda jid: send_run_job(app, jid), settings, process_engine(settings))
    return {"requeued": list(result.requeued), "sent": list(result.to_enqueue)}


def register_tasks(app: Celery) -> None:
    """Register slimline's tasks on ``app`` (``create_app`` calls this)."""
    retried = {"bind": True, "acks_late": True, "max_retries": UNAVAILABLE_RETRIES}
    app.task(name=TASK_RUN_JOB, **retried)(run_job)
    app.task(name=TASK_INSPECT_UPLOAD, **retried)(inspect_upload)
    app.task(name=TASK_SWEEP, bind=True, acks_late=True)(sweep)
