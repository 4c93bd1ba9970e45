"""Artifact downloads with Content-Length and an ETag (the sha256 recorded at write time)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Response
from fastapi.responses import FileResponse

from slimline.db import artifacts
from slimline.db.session import session_scope
from slimline.schemas import ArtifactOut, ErrorOut
from slimline.service.deps import EngineDep, SettingsDep, TenantDep
from slimline.service.errors import RecordId
from slimline.service.store import ArtifactStore

router = APIRouter(prefix="/v1/artifacts", tags=["artifacts"])
_ERRORS: dict[int | str, dict[str, object]] = {c: {"model": ErrorOut} for c in (401, 404, 503)}


def artifact_out(a: artifacts.Artifact) -> ArtifactOut:
    return ArtifactOut(
        id=a.id, job_id=a.job_id, kind=a.kind, bytes=a.bytes, sha256=a.sha256,
        created_at=a.created_at, url=f"/v1/artifacts/{a.id}",
    )  # fmt: skip


def _etag_matches(header: str | None, etag: str) -> bool:
    if header is None:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


@router.get(
    "/{artifact_id}",
    response_class=FileResponse,
    responses={**_ERRORS, 200: {"content": {"application/octet-stream": {}}}, 304: {}},
)
def download_artifact(
    artifact_id: RecordId,
    settings: SettingsDep,
    engine: EngineDep,
    tenant: TenantDep,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    with session_scope(engine) as s:
        art = artifacts.get_artifact(s, tenant.id, artifact_id)
    etag = f'"{art.sha256}"'
    if _etag_matches(if_none_match, etag):
        return Response(status_code=304, headers={"ETag": etag})
    # Size and sha256 checked against the record: half a file is never served (503).
    path = ArtifactStore(settings.artifact_dir).verified(art.path, art.sha256, art.bytes)
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=path.name,
        headers={"ETag": etag, "Cache-Control": "private, max-age=0"},
    )
