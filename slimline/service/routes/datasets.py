"""Uploaded datasets: POST an .npz or .safetensors file, read them back."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from slimline.db import uploads
from slimline.db.session import session_scope
from slimline.schemas import DatasetOut, ErrorOut
from slimline.service import uploads as upload_service
from slimline.service.deps import EngineDep, EnqueuerDep, SettingsDep, TenantDep
from slimline.service.errors import RecordId

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])
_ERRORS: dict[int | str, dict[str, object]] = {
    c: {"model": ErrorOut} for c in (400, 401, 404, 413, 422, 503)
}
_SAME: dict[int | str, dict[str, object]] = {
    200: {"model": DatasetOut, "description": "the same bytes were uploaded before: that record"}
}
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary",
                                            "description": ".npz or .safetensors"}},
                }
            }
        },
    }
}  # fmt: skip


@router.post("", status_code=201, responses={**_ERRORS, **_SAME}, openapi_extra=_UPLOAD_BODY)
async def upload_dataset(
    request: Request,
    response: Response,
    settings: SettingsDep,
    engine: EngineDep,
    enqueuer: EnqueuerDep,
    tenant: TenantDep,
) -> DatasetOut:
    rec, created = await upload_service.upload_dataset(request, settings, engine, enqueuer, tenant)
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/v1/datasets/{rec.id}"
    return DatasetOut.model_validate(rec)


@router.get("", responses=_ERRORS)
def list_datasets(engine: EngineDep, tenant: TenantDep) -> list[DatasetOut]:
    with session_scope(engine) as s:
        return [DatasetOut.model_validate(d) for d in uploads.list_datasets(s, tenant.id)]


@router.get("/{dataset_id}", responses=_ERRORS)
def get_dataset(dataset_id: RecordId, engine: EngineDep, tenant: TenantDep) -> DatasetOut:
    with session_scope(engine) as s:
        return DatasetOut.model_validate(uploads.get_dataset(s, tenant.id, dataset_id))
