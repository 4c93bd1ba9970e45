"""Uploaded models and datasets: content-addressed per tenant by sha256, so uploading the
same bytes twice gives the same record. A record starts ``pending``; the worker's inspection
task marks it ``ready`` (with what it found: layers, dense and smallest reachable bytes for a
model, a summary for a dataset) or ``invalid`` (with an error that says what to fix).

Models and datasets share one implementation over their two tables; the public functions
are the typed faces of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Table, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from slimline.db.job_records import json_object, utc_now
from slimline.db.tables import MODEL_KINDS, Base, new_id
from slimline.errors import Conflict, InvalidInput, NotFound

MODELS: Table = Base.metadata.tables["models"]
DATASETS: Table = Base.metadata.tables["datasets"]


@dataclass(frozen=True)
class ModelRecord:
    id: str
    tenant_id: str
    sha256: str
    kind: str  # zoo | pt2
    zoo_name: str | None
    config: dict[str, Any] | None
    filename: str
    path: str  # relative to Settings.artifact_dir
    bytes: int
    status: str  # pending | ready | invalid
    error: dict[str, Any] | None
    layers: list[Any] | None
    dense_bytes: int | None
    smallest_bytes: int | None
    created_at: datetime


@dataclass(frozen=True)
class DatasetRecord:
    id: str
    tenant_id: str
    sha256: str
    filename: str
    path: str  # relative to Settings.artifact_dir
    bytes: int
    status: str  # pending | ready | invalid
    error: dict[str, Any] | None
    summary: dict[str, Any] | None
    created_at: datetime


R = TypeVar("R", ModelRecord, DatasetRecord)


def _record(cls: type[R], row: Any) -> R:
    m = row._mapping
    return cls(**{f.name: m[f.name] for f in fields(cls)})


def _add(
    session: Session, table: Table, cls: type[R], tenant_id: str, values: dict[str, Any]
) -> tuple[R, bool]:
    if len(values["sha256"]) != 64:
        raise InvalidInput("sha256 must be 64 hex characters", field="sha256")

    def existing() -> R | None:
        row = session.execute(
            select(table).where(table.c.tenant_id == tenant_id, table.c.sha256 == values["sha256"])
        ).one_or_none()
        return _record(cls, row) if row is not None else None

    if (found := existing()) is not None:
        return found, False
    try:
        with session.begin_nested():
            row = session.execute(
                insert(table)
                .values(id=new_id(), tenant_id=tenant_id, status="pending", error=None, **values)
                .returning(*table.c)
            ).one()
    except IntegrityError:  # a concurrent upload of the same bytes won
        if (found := existing()) is not None:
            return found, False
        raise
    return _record(cls, row), True


def _get(session: Session, table: Table, cls: type[R], id_: str, tenant_id: str | None) -> R:
    q = select(table).where(table.c.id == id_)
    if tenant_id is not None:
        q = q.where(table.c.tenant_id == tenant_id)
    row = session.execute(q).one_or_none()
    if row is None:
        what = "model" if table is MODELS else "dataset"
        raise NotFound(f"{what} {id_!r} not found", field=f"{what}_id", value=id_)
    return _record(cls, row)


def _list(session: Session, table: Table, cls: type[R], tenant_id: str) -> list[R]:
    q = select(table).where(table.c.tenant_id == tenant_id)
    rows = session.execute(q.order_by(table.c.created_at.desc(), table.c.id.desc()))
    return [_record(cls, r) for r in rows]


def _settle(session: Session, table: Table, cls: type[R], id_: str, values: dict[str, Any]) -> R:
    """pending -> ready | invalid; settling twice is a Conflict (inspection runs once)."""
    row = session.execute(
        update(table)
        .where(table.c.id == id_, table.c.status == "pending")
        .values(**values)
        .returning(*table.c)
    ).one_or_none()
    if row is None:
        current = _get(session, table, cls, id_, None)
        raise Conflict(
            f"{table.name[:-1]} {id_!r} is already {current.status}; only a pending upload "
            "can be marked inspected",
            field="status",
            value=current.status,
        )
    return _record(cls, row)


def add_model(
    session: Session,
    tenant_id: str,
    *,
    sha256: str,
    kind: str,
    filename: str,
    path: str,
    bytes: int,
    zoo_name: str | None = None,
    config: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> tuple[ModelRecord, bool]:
    """``(record, created)``; the same bytes uploaded again return the first record."""
    if kind not in MODEL_KINDS:
        raise InvalidInput(
            f"model kind {kind!r}: expected one of {MODEL_KINDS}", field="kind", value=kind
        )
    values = dict(
        sha256=sha256, kind=kind, filename=filename, path=path, bytes=bytes, zoo_name=zoo_name,
        config=json_object(config, "config"), layers=None, dense_bytes=None,
        smallest_bytes=None, created_at=utc_now(now),
    )  # fmt: skip
    return _add(session, MODELS, ModelRecord, tenant_id, values)


def get_model(session: Session, tenant_id: str, model_id: str) -> ModelRecord:
    """The tenant's model; another tenant's is ``NotFound``."""
    return _get(session, MODELS, ModelRecord, model_id, tenant_id)


def load_model_record(session: Session, model_id: str) -> ModelRecord:
    """Any tenant's model, for the worker."""
    return _get(session, MODELS, ModelRecord, model_id, None)


def list_models(session: Session, tenant_id: str) -> list[ModelRecord]:
    return _list(session, MODELS, ModelRecord, tenant_id)


def mark_model_ready(
    session: Session, model_id: str, *, layers: list[Any], dense_bytes: int, smallest_bytes: int
) -> ModelRecord:
    layers_json = json_object({"layers": layers}, "layers")
    assert layers_json is not None
    values = dict(
        status="ready",
        layers=layers_json["layers"],
        dense_bytes=dense_bytes,
        smallest_bytes=smallest_bytes,
    )
    return _settle(session, MODELS, ModelRecord, model_id, values)


def mark_model_invalid(session: Session, model_id: str, error: Mapping[str, Any]) -> ModelRecord:
    values = dict(status="invalid", error=json_object(error, "error"))
    return _settle(session, MODELS, ModelRecord, model_id, values)


def add_dataset(
    session: Session,
    tenant_id: str,
    *,
    sha256: str,
    filename: str,
    path: str,
    bytes: int,
    now: datetime | None = None,
) -> tuple[DatasetRecord, bool]:
    """``(record, created)``; the same bytes uploaded again return the first record."""
    values = dict(
        sha256=sha256, filename=filename, path=path, bytes=bytes, summary=None,
        created_at=utc_now(now),
    )  # fmt: skip
    return _add(session, DATASETS, DatasetRecord, tenant_id, values)


def get_dataset(session: Session, tenant_id: str, dataset_id: str) -> DatasetRecord:
    """The tenant's dataset; another tenant's is ``NotFound``."""
    return _get(session, DATASETS, DatasetRecord, dataset_id, tenant_id)


def load_dataset_record(session: Session, dataset_id: str) -> DatasetRecord:
    """Any tenant's dataset, for the worker."""
    return _get(session, DATASETS, DatasetRecord, dataset_id, None)


def list_datasets(session: Session, tenant_id: str) -> list[DatasetRecord]:
    return _list(session, DATASETS, DatasetRecord, tenant_id)


def mark_dataset_ready(
    session: Session, dataset_id: str, *, summary: Mapping[str, Any]
) -> DatasetRecord:
    values = dict(status="ready", summary=json_object(summary, "summary"))
    return _settle(session, DATASETS, DatasetRecord, dataset_id, values)


def mark_dataset_invalid(
    session: Session, dataset_id: str, error: Mapping[str, Any]
) -> DatasetRecord:
    values = dict(status="invalid", error=json_object(error, "error"))
    return _settle(session, DATASETS, DatasetRecord, dataset_id, values)
