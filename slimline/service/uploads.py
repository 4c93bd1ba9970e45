"""Model and dataset uploads: stream, check, store by content address, record, inspect.

The bytes land in the store under ``tenants/<tenant>/<models|datasets>/<sha256><ext>``: the
client's file name never becomes a path (it is only recorded, reduced to its last component).
The record starts ``pending`` and the worker's ``slimline.inspect_upload`` task settles it;
that task is sent after the record is committed, and sent again when the same bytes are
uploaded while the record is still pending (so a lost message is repaired by retrying).
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Engine

from slimline.config import Settings
from slimline.db import uploads
from slimline.db.session import session_scope
from slimline.enqueue import INSPECT_UPLOAD, Enqueuer
from slimline.errors import InvalidData, InvalidInput, InvalidModel, Unavailable
from slimline.jobs import Tenant
from slimline.service import file_checks
from slimline.service.multipart_stream import ReceivedFile, receive_multipart
from slimline.service.store import ArtifactStore

MODEL_FIELDS = ("file", "name", "config")
DATASET_EXTENSIONS = (".npz", ".safetensors")


async def inspect_upload(enqueuer: Enqueuer, what: str, upload_id: str, status: str) -> None:
    if status != "pending":
        return
    try:
        await run_in_threadpool(enqueuer.send, INSPECT_UPLOAD, what, upload_id)
    except Unavailable as exc:
        raise Unavailable(
            f"the {what} is stored ({upload_id}) but its inspection could not be queued "
            f"({exc.message}); upload the same file again to retry"
        ) from exc


def store_file(store: ArtifactStore, tenant: Tenant, what: str, f: ReceivedFile, ext: str) -> str:
    rel = f"tenants/{tenant.id}/{what}/{f.sha256}{ext}"
    store.commit(f.path, rel, f.sha256)
    return rel


def check_zoo_name(name: str) -> str:
    """The zoo model's name, stripped; ``InvalidModel`` naming ``name`` unless well-formed."""
    name = name.strip()
    if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").isalnum():
        raise InvalidModel(f"zoo name {name[:80]!r} is not a valid model name", field="name")
    return name  # an unknown one is recorded and refused by the inspection (with the list)


def zoo_config(form_fields: dict[str, str]) -> dict[str, Any]:
    """The zoo ``config`` form field: a JSON object of bounded depth (default ``{}``)."""
    config = file_checks.load_json_text(
        form_fields.get("config") or "{}", field="config", what="config", error=InvalidModel
    )
    if not isinstance(config, dict):
        raise InvalidModel("config must be a JSON object", field="config")
    return config


def check_model(
    form_fields: dict[str, str], f: ReceivedFile, max_upload: int
) -> tuple[str, str | None, Any]:
    """(kind, zoo name, config) after the cheap checks; raises ``InvalidModel``."""
    unknown = sorted(set(form_fields) - set(MODEL_FIELDS))
    if unknown:
        raise InvalidInput(
            f"unexpected form fields {unknown}; expected file, and name + config for a zoo model",
            field=unknown[0],
        )
    ext = file_checks.extension(f.filename)
    name = form_fields.get("name")
    if name is None:
        if "config" in form_fields:
            raise InvalidModel("config is only for a zoo model: send name too", field="name")
        if ext != ".pt2":
            raise InvalidModel(
                f"file {f.filename!r}: expected a .pt2 program, or a zoo model as name + config "
                "+ a .safetensors weights file",
                field="file",
            )
        file_checks.check_pt2(f.path, f.head, f.filename, size=f.size, max_upload=max_upload)
        return "pt2", None, None
    name = check_zoo_name(name)
    if ext != ".safetensors":
        raise InvalidModel(
            f"file {f.filename!r}: a zoo model's weights must be a .safetensors file",
            field="file",
        )
    config = zoo_config(form_fields)
    file_checks.check_safetensors(f.path, f.size, f.filename, field="file", model=True)
    return "zoo", name, config


def _check_dataset(form_fields: dict[str, str], f: ReceivedFile, max_upload: int) -> str:
    if form_fields:
        raise InvalidInput(
            f"unexpected form fields {sorted(form_fields)}; send only 'file'",
            field=sorted(form_fields)[0],
        )
    ext = file_checks.extension(f.filename)
    if ext == ".npz":
        file_checks.check_npz(f.path, f.head, f.filename, size=f.size, max_upload=max_upload)
    elif ext == ".safetensors":
        file_checks.check_safetensors(f.path, f.size, f.filename, field="file", model=False)
    else:
        raise InvalidData(
            f"file {f.filename!r}: expected one of {', '.join(DATASET_EXTENSIONS)}", field="file"
        )
    return ext


async def upload_dataset(
    request: Request, settings: Settings, engine: Engine, enqueuer: Enqueuer, tenant: Tenant
) -> tuple[uploads.DatasetRecord, bool]:
    store = ArtifactStore(settings.artifact_dir)
    form = await receive_multipart(request, store, settings.max_upload_bytes, {"file"})
    try:
        f = form.files.get("file")
        if f is None:
            raise InvalidData("no file: send the dataset as the form field 'file'", field="file")
        ext = await run_in_threadpool(_check_dataset, form.fields, f, settings.max_upload_bytes)
        rel = await run_in_threadpool(store_file, store, tenant, "datasets", f, ext)
    finally:
        form.discard()

    def record() -> tuple[uploads.DatasetRecord, bool]:
        with session_scope(engine) as s:
            return uploads.add_dataset(
                s, tenant.id, sha256=f.sha256, filename=f.filename, path=rel, bytes=f.size
            )

    rec, created = await run_in_threadpool(record)
    await inspect_upload(enqueuer, "dataset", rec.id, rec.status)
    return rec, created
