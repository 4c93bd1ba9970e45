"""Service settings, read from ``SLIMLINE_*`` environment variables.

Built once by ``get_settings()`` and passed down: nothing in slimline reads settings (or the
environment) at import time, so tests and the embedded server can build their own ``Settings``
with explicit values. With no configuration at all the defaults give the embedded deployment:
a SQLite file and a serverless (filesystem) Celery broker under ``data_dir``. Setting
``SLIMLINE_DATABASE_URL`` (Postgres) and ``SLIMLINE_BROKER_URL`` (Redis) gives the real one.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from slimline.search.store_folder import DEFAULT_MAX_BYTES

MIB = 1024**2
FILESYSTEM_BROKER = "filesystem://"


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/slimline``, else ``~/.local/share/slimline``."""
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "slimline"


class Settings(BaseSettings):
    """Every knob the service, the worker and the records layer read. Frozen: build a new one
    with ``Settings(**overrides)`` to change a value (not ``model_copy``, which would not
    re-derive the paths that default to places under ``data_dir``)."""

    model_config = SettingsConfigDict(env_prefix="SLIMLINE_", frozen=True, extra="ignore")

    # Root of everything the embedded deployment keeps on disk (SQLite file, broker queues,
    # artifacts); the paths below default to places under it.
    data_dir: Path = Field(default_factory=default_data_dir)
    # SQLAlchemy URL of the records database. Default: SQLite at data_dir/slimline.db.
    # "postgresql://..." is read as "postgresql+psycopg://..." (psycopg 3 is the driver we ship).
    database_url: str = ""
    # Celery broker. Default "filesystem:///<data_dir>/broker": kombu's filesystem transport,
    # which needs no server; the worker reads the folder from ``filesystem_broker_dir``.
    broker_url: str = ""
    # Celery result backend; None = none. The job row is the truth, never the result backend.
    result_backend: str | None = None
    # Where checkpoints, reports, uploads and epoch snapshots live; shared by API and workers.
    # Artifact rows store paths relative to this directory, so it can move.
    artifact_dir: Path = Path()
    # Largest accepted upload (model or dataset), in bytes; larger uploads get 413 mid-stream.
    max_upload_bytes: int = Field(default=512 * MIB, gt=0)
    # Most compressible layers a model may have; more is refused at inspection (422).
    max_layers: int = Field(default=2000, gt=0)
    # Largest the dense-model cache's measurements folder may grow (kept calibration losses and
    # bitshare's opening gate searches, `slimline.search.store_folder`), bytes; past it the
    # least recently used files are removed.
    measured_max_bytes: int = Field(default=DEFAULT_MAX_BYTES, gt=0)
    # Default wall-clock limit of one job, seconds; the best feasible result so far is kept.
    job_time_limit_s: float = Field(default=6 * 3600.0, gt=0)
    # How often a running worker refreshes its job's heartbeat, seconds.
    heartbeat_s: float = Field(default=30.0, gt=0)
    # A running job whose heartbeat is older than this is presumed dead and re-queued by the
    # sweeper (or claimed by another worker). Several heartbeats long, so one slow write is
    # not a death; it must also exceed the clock skew between machines.
    stale_after_s: float = Field(default=120.0, gt=0)
    # A queued job whose last send to the broker is older than this is sent again by the
    # sweeper (the broker may have lost it); duplicates are harmless, the claim is conditional.
    requeue_after_s: float = Field(default=300.0, gt=0)
    # Runs a job gets (the first included) before a retryable failure or a dead worker
    # fails it for good.
    max_attempts: int = Field(default=3, ge=1)
    # Job creations per tenant per minute before the API answers 429.
    rate_limit_jobs_per_minute: int = Field(default=60, gt=0)
    # A worker's writes to the job's records (claim, heartbeat, progress, fail, finish) that
    # find the database unavailable are tried this many times in all before the worker gives
    # up on that write, waiting between tries ``worker_write_backoff_s``, doubling each time,
    # at most ``worker_write_max_wait_s``. The defaults ride out an outage of about 30 s.
    worker_write_attempts: int = Field(default=10, ge=1)
    worker_write_backoff_s: float = Field(default=0.25, ge=0)
    worker_write_max_wait_s: float = Field(default=5.0, ge=0)
    # How often a sweep timer made by ``worker.sweeper.SweepTimer.from_settings`` runs the
    # sweeper, seconds; None = ``max(5, heartbeat_s / 2)``.
    sweep_interval_s: float | None = Field(default=None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _derive_paths(cls, values: Any) -> Any:
        # Runs before validation so the frozen model is built whole: database, broker and
        # artifact locations default to places under data_dir, whichever data_dir was chosen.
        if not isinstance(values, dict):
            return values
        data_dir = Path(values.get("data_dir") or default_data_dir()).expanduser()
        values = dict(values)
        values["data_dir"] = data_dir
        if not values.get("database_url"):
            values["database_url"] = f"sqlite:///{data_dir / 'slimline.db'}"
        if not values.get("broker_url"):
            values["broker_url"] = f"{FILESYSTEM_BROKER}{data_dir / 'broker'}"
        if not values.get("artifact_dir"):
            values["artifact_dir"] = data_dir / "artifacts"
        if values.get("result_backend") == "":
            values["result_backend"] = None
        return values

    @property
    def uses_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def filesystem_broker_dir(self) -> Path | None:
        """The folder of a ``filesystem://`` broker (for kombu's ``data_folder_in/out`` and
        ``data_folder_processed`` transport options), or None for a server broker."""
        if not self.broker_url.startswith(FILESYSTEM_BROKER):
            return None
        rest = self.broker_url[len(FILESYSTEM_BROKER) :]
        return Path(rest) if rest else self.data_dir / "broker"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment on first call."""
    return Settings()
