"""The records schema (SQLAlchemy 2.0 declarative). Alembic migrations must match it exactly;
``tests/db`` checks that autogenerate finds no difference.

Portable on purpose: the same tables serve Postgres (the real deployment) and SQLite (the
embedded default). Hence strings with CHECK constraints instead of native enums, sqlalchemy's
JSON, uuid4 strings as ids, and ``UTCDateTime`` so that both backends hand back aware UTC
datetimes (SQLite keeps no zone; we store UTC and re-attach it on read).

Rows never leave ``slimline.db`` and ``slimline.jobs``: callers get frozen dataclasses.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
UPLOAD_STATUSES = ("pending", "ready", "invalid")
MODEL_KINDS = ("zoo", "pt2")
ARTIFACT_KINDS = ("checkpoint", "report", "model", "dataset", "epoch")

# Named constraints: Alembic (and SQLite batch mode) can only alter what it can name.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def new_id() -> str:
    return str(uuid.uuid4())


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class UTCDateTime(TypeDecorator[datetime]):
    """``timestamp with time zone`` on Postgres; on SQLite a UTC string. Always aware UTC out;
    naive datetimes are refused on the way in (they are a bug: whose clock?)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware (UTC) datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# Postgres gets a bigserial; SQLite only auto-increments an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class TenantRow(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime]


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    # First characters of the random part, to tell keys apart in listings; not a secret.
    prefix: Mapped[str] = mapped_column(String(16))
    # sha256 hex of the whole key. The key itself is shown once and never stored: it has 256
    # random bits, so an unsalted fast hash cannot be brute-forced.
    key_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class ModelRow(Base):
    __tablename__ = "models"
    __table_args__ = (
        UniqueConstraint("tenant_id", "sha256"),
        CheckConstraint(_in("kind", MODEL_KINDS), name="kind"),
        CheckConstraint(_in("status", UPLOAD_STATUSES), name="status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    sha256: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(8))
    zoo_name: Mapped[str | None] = mapped_column(String(64))
    config: Mapped[dict[str, Any] | None]
    filename: Mapped[str] = mapped_column(String(255))
    # Relative to Settings.artifact_dir.
    path: Mapped[str] = mapped_column(String(1024))
    bytes: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[dict[str, Any] | None]
    # Filled by the inspection task: compressible layers, dense fp32 checkpoint bytes and the
    # smallest file slimline can reach (a budget below it is refused at once).
    layers: Mapped[list[Any] | None]
    dense_bytes: Mapped[int | None] = mapped_column(BigInteger)
    smallest_bytes: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime]


class DatasetRow(Base):
    __tablename__ = "datasets"
    __table_args__ = (
        UniqueConstraint("tenant_id", "sha256"),
        CheckConstraint(_in("status", UPLOAD_STATUSES), name="status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    sha256: Mapped[str] = mapped_column(String(64))
    filename: Mapped[str] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(String(1024))
    bytes: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[dict[str, Any] | None]
    # Shapes, dtypes, class count, split sizes: what inspection found.
    summary: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime]


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        CheckConstraint(_in("status", JOB_STATUSES), name="status"),
        CheckConstraint("progress >= 0 AND progress <= 1", name="progress"),
        # Listing a tenant's jobs newest first, keyset-paged on (created_at, id).
        Index(None, "tenant_id", "created_at", "id"),
        Index(None, "tenant_id", "status", "created_at", "id"),
        # The sweeper: running jobs by heartbeat, queued jobs by last send.
        Index(None, "status", "heartbeat_at"),
        Index(None, "status", "enqueued_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"))
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"))
    data_name: Mapped[str | None] = mapped_column(String(64))
    spec: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16))
    stage: Mapped[str | None] = mapped_column(String(32))
    progress: Mapped[float] = mapped_column(Float)
    metrics: Mapped[dict[str, Any] | None]
    plan: Mapped[dict[str, Any] | None]
    error: Mapped[dict[str, Any] | None]
    attempts: Mapped[int] = mapped_column(Integer)
    # Fixed at creation, so API and workers with different settings agree on a job's retries.
    max_attempts: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[datetime | None]
    cancel_requested: Mapped[bool] = mapped_column(Boolean)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime]
    # Last time the job was handed to the broker (creation, retry or sweeper re-send).
    enqueued_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]


class JobEventRow(Base):
    """Append-only: a job's timeline (transitions, stages, progress notes, epoch metrics)."""

    __tablename__ = "job_events"
    __table_args__ = (Index(None, "job_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(32))
    stage: Mapped[str | None] = mapped_column(String(32))
    data: Mapped[dict[str, Any] | None]


class ScoreRow(Base):
    """A job's stored scores (bytes and damage per layer x option): re-solving for another
    budget reads these and needs no model."""

    __tablename__ = "scores"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    data: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


class ArtifactRow(Base):
    __tablename__ = "artifacts"
    __table_args__ = (CheckConstraint(_in("kind", ARTIFACT_KINDS), name="kind"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    job_id: Mapped[str | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), index=True
    )
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    # Relative to Settings.artifact_dir.
    path: Mapped[str] = mapped_column(String(1024))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
