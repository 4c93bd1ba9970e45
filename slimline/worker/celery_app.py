"""The Celery app, built from ``Settings`` by a factory; ``app`` is made on first access.

``celery -A slimline.worker.celery_app:app worker`` reads ``app``: a module ``__getattr__``
builds it then from ``get_settings()``, so importing this module reads no settings and opens
no connection (HOUSE_STYLE rule 5). Tests and the embedded server call ``create_app`` with
their own ``Settings``.

Why these options (Celery's own guide for long, idempotent tasks):

- ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged only when its
  task returns, so a worker killed mid-job leaves it to be delivered again. Safe because every
  task is idempotent: ``run_job`` claims the job with a conditional update, so a duplicate
  delivery of a running or finished job does nothing.
- ``worker_prefetch_multiplier = 1`` and concurrency 1: a worker holds one job at a time (one
  job per GPU); a second message waits in the broker for a free worker, not in this one.
- JSON only: messages carry ids, never pickles.
- The result backend is whatever settings say (default none): the job row is the truth.

With the embedded default the broker is kombu's filesystem transport under
``settings.filesystem_broker_dir``: no server, one folder of message files shared by the API
process and the worker process on one machine. It polls the folder, and it cannot hold a
message back for redelivery (a message is taken off the folder when fetched), so a worker that
dies loses its message; the sweeper re-sends the job (``slimline.sweep``).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from slimline.config import Settings, get_settings
from slimline.enqueue import INSPECT_UPLOAD, RUN_JOB, broker_options

TASK_RUN_JOB = RUN_JOB  # the names the API sends (slimline.enqueue)
TASK_INSPECT_UPLOAD = INSPECT_UPLOAD
TASK_SWEEP = "slimline.sweep"
# How often a filesystem broker's folder is polled for new messages, seconds.
FILESYSTEM_POLL_S = 0.2


def broker_conf(settings: Settings) -> dict[str, Any]:
    """Broker settings: the API's (``enqueue.broker_options``, so both ends agree on the
    filesystem transport's folders), plus what only a consumer needs there: the control
    folder (exchange bindings, remote control) inside the broker folder, and the poll rate."""
    opts = broker_options(settings)
    transport = dict(opts["broker_transport_options"])
    broker_dir = settings.filesystem_broker_dir
    if broker_dir is not None:
        control = broker_dir / "control"
        control.mkdir(parents=True, exist_ok=True)
        transport.update(
            control_folder=str(control),
            processed_folder=str(broker_dir / "processed"),
            polling_interval=FILESYSTEM_POLL_S,
        )
    return {"broker_url": opts["broker"], "broker_transport_options": transport}


def create_app(settings: Settings) -> Celery:
    """A Celery app for ``settings`` with slimline's tasks registered (nothing connects)."""
    app = Celery("slimline", set_as_current=False)
    conf: dict[str, Any] = {
        "result_backend": settings.result_backend,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": 1,
        "task_track_started": False,
        "task_ignore_result": settings.result_backend is None,
        "broker_connection_retry_on_startup": True,
        "enable_utc": True,
        # The sweeper, for a deployment that runs beat (the embedded server calls it itself).
        "beat_schedule": {"sweep": {"task": TASK_SWEEP, "schedule": _sweep_interval_s(settings)}},
    }
    conf.update(broker_conf(settings))
    app.conf.update(conf)
    app.conf.slimline_settings = settings

    from slimline.worker.tasks import register_tasks

    register_tasks(app)
    return app


def app_settings(app: Celery) -> Settings:
    """The settings ``app`` was built from."""
    settings = app.conf.slimline_settings
    assert isinstance(settings, Settings)
    return settings


_app: Celery | None = None


def __getattr__(name: str) -> Any:
    # PEP 562: ``app`` is built on first access (by the celery command), not at import.
    global _app
    if name == "app":
        if _app is None:
            _app = create_app(get_settings())
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _sweep_interval_s(settings: Settings) -> float:
    from slimline.worker.sweeper import sweep_interval_s  # it imports this module

    return sweep_interval_s(settings)
