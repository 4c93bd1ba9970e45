"""Uploaded models: POST a .pt2 (or zoo name + config + safetensors), read them back."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from slimline.db import uploads
from slimline.db.session import session_scope
from slimline.schemas import ErrorOut, ModelOut
from slimline.service import uploads as upload_service
from slimline.service.deps import EngineDep, EnqueuerDep, SettingsDep, TenantDep

router = APIRouter(prefix="/v1/models", tags=["models"])
_ERRORS: dict[int | str, dict[str, object]] = {
    c: {"model": ErrorOut} for c in (400, 401, 404, 413, 422, 503)
}

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary",
                                 "description": ".pt2 program, or .safetensors zoo weights"},
                        "name": {"type": "string", "description": "zoo model name"},
                        "config": {"type": "string", "description": "zoo config (JSON)"},
                    },
                }
            }
        },
    }
}  # fmt: skip


@router.post(
    "", status_code=201, responses=_ERRORS, openapi_extra=_UPLOAD_BODY,
    summary="Upload a model (streamed; same bytes twice give the same record)",
)  # fmt: skip
async def upload_model(
    request: Request,
    response: Response,
    settings: SettingsDep,
    engine: EngineDep,
    enqueuer: EnqueuerDep,
    tenant: TenantDep,
) -> ModelOut:
    rec, created = await upload_service.upload_model(request, settings, engine, enqueuer, tenant)
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/v1/models/{rec.id}"
    return ModelOut.model_validate(rec)


@router.get("", responses=_ERRORS)
async def list_models(engine: EngineDep, tenant: TenantDep) -> list[ModelOut]:
    def read() -> list[uploads.ModelRecord]:
        with session_scope(engine) as s:
            return uploads.list_models(s, tenant.id)

    return [ModelOut.model_validate(m) for m in await run_in_threadpool(read)]


@router.get("/{model_id}", responses=_ERRORS)
def get_model(model_id: str, engine: EngineDep, tenant: TenantDep) -> ModelOut:
    with session_scope(engine) as s:
        return ModelOut.model_validate(uploads.get_model(s, tenant.id, model_id))
