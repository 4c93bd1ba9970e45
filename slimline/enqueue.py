"""Sending tasks to the workers by name, from a process that must not import them.

The API never imports ``slimline.worker.tasks`` (which imports torch): it sends a message
naming the task (``send_task``) through a bare ``Celery`` client app that knows only the
broker. Tasks take ids only and re-read the world from the records; send after the commit
that made those records (Celery's guide), so a worker never gets an id it cannot read.

``broker_options(settings)`` is the one place that turns ``Settings.broker_url`` into Celery
broker settings — the worker's app uses it too, so both ends agree on the filesystem
transport's folders in the embedded deployment.
"""

from __future__ import annotations

from typing import Any, Protocol

from celery import Celery

from slimline.config import Settings
from slimline.errors import Unavailable

RUN_JOB = "slimline.run_job"  # args: [job_id]
INSPECT_UPLOAD = "slimline.inspect_upload"  # args: ["model" | "dataset", upload_id]
RESOLVE_SCORES = "slimline.resolve_scores"  # reserved; the API re-solves in process (numpy)
BROKER_TIMEOUT_S = 3.0


class Enqueuer(Protocol):
    """What the API needs of the broker. Tests may pass a recording one."""

    def send(self, task: str, *args: str) -> None:
        """Send ``task`` with ``args``; ``Unavailable`` if the broker cannot take it."""

    def ping(self) -> None:
        """Return if the broker accepts connections, else raise ``Unavailable``."""

    def close(self) -> None:
        """Release connections."""


def broker_options(settings: Settings) -> dict[str, Any]:
    """Celery configuration for ``settings.broker_url`` (``Celery(**broker_options(s))``)."""
    folder = settings.filesystem_broker_dir
    if folder is not None:
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        transport = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            # Exchange bindings; kombu's default is "control" in the working directory.
            "control_folder": str(folder / "control"),
        }
        return {"broker": "filesystem://", "broker_transport_options": transport}
    transport = {"socket_connect_timeout": BROKER_TIMEOUT_S, "socket_timeout": BROKER_TIMEOUT_S}
    return {"broker": settings.broker_url, "broker_transport_options": transport}


class CeleryEnqueuer:
    """Sends by task name through a Celery client app (no task module imported)."""

    def __init__(self, settings: Settings) -> None:
        self._app = Celery("slimline-api", set_as_current=False, **broker_options(settings))
        self._app.conf.update(
            broker_connection_retry=False,
            broker_connection_max_retries=1,
            task_publish_retry=True,
            task_publish_retry_policy={
                "max_retries": 2,
                "interval_start": 0.0,
                "interval_step": 0.2,
                "interval_max": 0.5,
            },
        )

    def send(self, task: str, *args: str) -> None:
        try:
            self._app.send_task(task, args=list(args))
        except Exception as exc:  # kombu/redis raise many types; all mean "not sent"
            raise Unavailable(f"broker unavailable, task {task} not sent: {exc}") from exc

    def ping(self) -> None:
        try:
            with self._app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, interval_start=0, timeout=BROKER_TIMEOUT_S)
        except Exception as exc:
            raise Unavailable(f"broker unavailable: {exc}") from exc

    def close(self) -> None:
        self._app.close()


class RecordingEnqueuer:
    """Keeps what would be sent, in order, for tests that do not exercise the broker."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[str, ...]]] = []
        self.down = False

    def send(self, task: str, *args: str) -> None:
        if self.down:
            raise Unavailable(f"broker unavailable, task {task} not sent")
        self.sent.append((task, args))

    def ping(self) -> None:
        if self.down:
            raise Unavailable("broker unavailable")

    def close(self) -> None:
        pass
