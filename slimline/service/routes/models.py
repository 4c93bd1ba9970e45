"""Uploaded models: POST a .pt2 (or zoo name + config + safetensors, or a zoo name + config
alone), read them back.

A zoo model sent without a file has no weights: the worker trains its dense weights with the
model's default recipe (cached, as ``slimline compress`` does). Its record is content-addressed
by the sha256 of the canonical JSON ``{"config", "name"}`` (path empty, 0 bytes), so the same
name and config give the same record; inspection reads the architecture alone.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Engine

from slimline.db import uploads
from slimline.db.session import session_scope
from slimline.errors import InvalidInput, InvalidModel
from slimline.jobs import Tenant
from slimline.schemas import ErrorOut, ModelOut
from slimline.service import file_checks
from slimline.service import uploads as upload_service
from slimline.service.deps import EngineDep, EnqueuerDep, SettingsDep, TenantDep
from slimline.service.errors import RecordId
from slimline.service.multipart_stream import ReceivedForm, receive_multipart
from slimline.service.store import ArtifactStore

router = APIRouter(prefix="/v1/models", tags=["models"])
_ERRORS: dict[int | str, dict[str, object]] = {
    c: {"model": ErrorOut} for c in (400, 401, 404, 413, 422, 503)
}

_SAME: dict[int | str, dict[str, object]] = {
    200: {
        "model": ModelOut,
        "description": "the same bytes (or zoo name + config) were uploaded before: that record",
    }
}
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary",
                                 "description": ".pt2 program, or .safetensors zoo weights; "
                                                "leave out with a zoo name to have the worker "
                                                "train the dense weights"},
                        "name": {"type": "string", "description": "zoo model name"},
                        "config": {"type": "string", "description": "zoo config (JSON)"},
                    },
                }
            }
        },
    }
}  # fmt: skip


def zoo_sha256(name: str, config: dict[str, Any]) -> str:
    """The content address of a zoo model without weights: sha256 of canonical JSON."""
    blob = json.dumps({"name": name, "config": config}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _zoo_fields(fields: dict[str, str]) -> tuple[str, dict[str, Any]]:
    unknown = sorted(set(fields) - set(upload_service.MODEL_FIELDS))
    if unknown:
        raise InvalidInput(
            f"unexpected form fields {unknown}; expected file, and name + config for a zoo model",
            field=unknown[0],
        )
    name = upload_service.check_zoo_name(fields.get("name", ""))
    return name, upload_service.zoo_config(fields)


async def _record_form(
    form: ReceivedForm, store: ArtifactStore, engine: Engine, tenant: Tenant, max_upload: int
) -> tuple[uploads.ModelRecord, bool]:
    f = form.files.get("file")
    if f is None:
        if "name" not in form.fields:
            raise InvalidModel(
                "no file: send the model as the form field 'file', or a zoo model's 'name' "
                "(+ 'config') alone to have its dense weights trained",
                field="file",
            )
        name, config = _zoo_fields(form.fields)
        values: dict[str, Any] = dict(
            sha256=zoo_sha256(name, config), kind="zoo", filename=name, path="", bytes=0,
            zoo_name=name, config=config,
        )  # fmt: skip
    else:
        kind, zoo_name, config = await run_in_threadpool(
            upload_service.check_model, form.fields, f, max_upload
        )
        ext = file_checks.extension(f.filename)
        rel = await run_in_threadpool(upload_service.store_file, store, tenant, "models", f, ext)
        values = dict(
            sha256=f.sha256, kind=kind, filename=f.filename, path=rel, bytes=f.size,
            zoo_name=zoo_name, config=config,
        )  # fmt: skip

    def record() -> tuple[uploads.ModelRecord, bool]:
        with session_scope(engine) as s:
            return uploads.add_model(s, tenant.id, **values)

    return await run_in_threadpool(record)


@router.post(
    "", status_code=201, responses={**_ERRORS, **_SAME}, openapi_extra=_UPLOAD_BODY,
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
    """A ``.pt2`` program, a zoo ``name`` (+ ``config`` JSON) with ``.safetensors`` weights,
    or a zoo ``name`` (+ ``config``) with no file: the worker then trains the dense weights
    with the model's default recipe (cached). The record is inspected by a worker."""
    store = ArtifactStore(settings.artifact_dir)
    form = await receive_multipart(request, store, settings.max_upload_bytes, {"file"})
    try:
        rec, created = await _record_form(form, store, engine, tenant, settings.max_upload_bytes)
    finally:
        form.discard()
    await upload_service.inspect_upload(enqueuer, "model", rec.id, rec.status)
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
def get_model(model_id: RecordId, engine: EngineDep, tenant: TenantDep) -> ModelOut:
    with session_scope(engine) as s:
        return ModelOut.model_validate(uploads.get_model(s, tenant.id, model_id))
