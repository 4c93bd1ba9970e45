"""Artifacts (files in the artifact store, recorded with size and sha256 so a download can
send Content-Length and an ETag without reading the file) and a job's stored scores.

Paths are relative to ``Settings.artifact_dir``; resolving them (and refusing any that would
leave that directory) is the caller's business, which knows the directory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

from sqlalchemy import Table, delete, insert, select
from sqlalchemy.orm import Session

from slimline.db.job_records import JOBS, get_job, json_object, utc_now
from slimline.db.tables import ARTIFACT_KINDS, Base, new_id
from slimline.errors import InvalidInput, NotFound

ARTIFACTS: Table = Base.metadata.tables["artifacts"]
SCORES: Table = Base.metadata.tables["scores"]


@dataclass(frozen=True)
class Artifact:
    id: str
    job_id: str | None
    tenant_id: str
    kind: str  # checkpoint | report | model | dataset | epoch
    path: str  # relative to Settings.artifact_dir
    bytes: int
    sha256: str
    created_at: datetime


def _artifact(row: Any) -> Artifact:
    m = row._mapping
    return Artifact(**{f.name: m[f.name] for f in fields(Artifact)})


def add_artifact(
    session: Session,
    tenant_id: str,
    *,
    kind: str,
    path: str,
    bytes: int,
    sha256: str,
    job_id: str | None = None,
    now: datetime | None = None,
) -> Artifact:
    """Record a file already written (and fsynced) to the artifact store."""
    if kind not in ARTIFACT_KINDS:
        raise InvalidInput(
            f"artifact kind {kind!r}: expected one of {ARTIFACT_KINDS}", field="kind", value=kind
        )
    rel = PurePosixPath(path)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise InvalidInput(
            f"artifact path {path!r} must be relative to the artifact directory, without '..'",
            field="path",
            value=path,
        )
    if job_id is not None:
        owner = session.execute(select(JOBS.c.tenant_id).where(JOBS.c.id == job_id)).scalar()
        if owner != tenant_id:
            raise NotFound(f"job {job_id!r} not found", field="job_id", value=job_id)
    row = session.execute(
        insert(ARTIFACTS)
        .values(
            id=new_id(),
            job_id=job_id,
            tenant_id=tenant_id,
            kind=kind,
            path=str(rel),
            bytes=bytes,
            sha256=sha256,
            created_at=utc_now(now),
        )  # fmt: skip
        .returning(*ARTIFACTS.c)
    ).one()
    return _artifact(row)


def get_artifact(session: Session, tenant_id: str, artifact_id: str) -> Artifact:
    """The tenant's artifact; another tenant's is ``NotFound``."""
    row = session.execute(
        select(ARTIFACTS).where(ARTIFACTS.c.id == artifact_id, ARTIFACTS.c.tenant_id == tenant_id)
    ).one_or_none()
    if row is None:
        raise NotFound(
            f"artifact {artifact_id!r} not found", field="artifact_id", value=artifact_id
        )
    return _artifact(row)


def job_artifacts(
    session: Session, tenant_id: str, job_id: str, kind: str | None = None
) -> list[Artifact]:
    """The tenant's job's artifacts, oldest first (the newest of a kind is the last)."""
    get_job(session, tenant_id, job_id)  # NotFound for another tenant's job
    q = select(ARTIFACTS).where(ARTIFACTS.c.job_id == job_id)
    if kind is not None:
        q = q.where(ARTIFACTS.c.kind == kind)
    rows = session.execute(q.order_by(ARTIFACTS.c.created_at, ARTIFACTS.c.id))
    return [_artifact(r) for r in rows]


def save_scores(
    session: Session, job_id: str, data: Mapping[str, Any], *, now: datetime | None = None
) -> None:
    """Store (or replace: a re-run scores again) the job's scores."""
    payload = json_object(data, "scores")
    session.execute(delete(SCORES).where(SCORES.c.job_id == job_id))
    session.execute(insert(SCORES).values(job_id=job_id, data=payload, created_at=utc_now(now)))


def get_scores(session: Session, tenant_id: str, job_id: str) -> dict[str, Any] | None:
    """The tenant's job's stored scores, or None if it has none (yet)."""
    get_job(session, tenant_id, job_id)
    row = session.execute(select(SCORES.c.data).where(SCORES.c.job_id == job_id)).one_or_none()
    return dict(row.data) if row is not None else None
