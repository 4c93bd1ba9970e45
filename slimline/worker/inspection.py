"""Inspect an uploaded model or dataset: what the API needs to refuse a job at once.

For a model: its compressible layers (name, kind, shape), the dense fp32 checkpoint size and
the smallest file slimline can reach (every layer removed, other tensors at fp16, the header
reserve: the same arithmetic as the job's inspect stage, ``pipeline.stages.smallest_bytes``).
For a dataset: a summary (task, sizes, input shape, classes). A file that cannot be read is
marked invalid with the error's message, which says what to fix; nothing is unpickled
(``load_program`` and the dataset readers refuse pickles).

An upload is inspected once: settling it is conditional on ``pending``, so a duplicate message
finds it settled and does nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from slimline.config import Settings
from slimline.db import uploads
from slimline.db.session import session_scope
from slimline.errors import Conflict, InvalidInput, InvalidModel, SlimlineError, Unavailable

log = logging.getLogger(__name__)

KINDS = ("model", "dataset")


MAX_EXPANSION = 4  # x the upload limit: the API's cap (service.file_checks), checked again here


def refuse_zip_bomb(path: Path, max_bytes: int) -> None:
    """An archive whose members declare more than ``max_bytes`` unpacked is refused before
    any reader (torch's included) inflates it; read from the central directory only."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            expanded = sum(i.file_size for i in zf.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # not a zip: the loader says what it is
    if expanded > max_bytes:
        raise InvalidModel(
            f"the archive unpacks to {expanded} bytes, more than {max_bytes}: refused as a "
            "zip bomb",
            field="model",
            value=expanded,
        )


def model_facts(
    record: uploads.ModelRecord,
    artifact_dir: Path,
    max_layers: int,
    max_unpacked: int | None = None,
) -> dict[str, Any]:
    """Layers, dense bytes and smallest reachable bytes of an uploaded model."""
    from slimline.budget import Budget
    from slimline.pipeline.sources import ModelSource, build_skeleton
    from slimline.pipeline.stages import (
        JobSpec,
        JobState,
        dense_checkpoint_bytes,
        header_reserve,
        smallest_bytes,
    )
    from slimline.search.export import other_stored_bytes
    from slimline.search.layers import find_layers

    path = artifact_dir / record.path
    if record.kind == "zoo":
        if not record.zoo_name:
            raise InvalidModel("a zoo model upload needs a zoo name", field="zoo_name")
        from slimline.models.zoo import build_model, load_zoo_model

        config = dict(record.config or {})
        if record.path:
            model = load_zoo_model(record.zoo_name, config, path)
        else:
            model = build_model(record.zoo_name, config)
        src = ModelSource(zoo=record.zoo_name, config=config)
    else:
        if max_unpacked is not None:
            refuse_zip_bomb(path, max_unpacked)
        src = ModelSource(program=path)
        model = build_skeleton(src)
    geoms = find_layers(model)
    if not geoms:
        raise InvalidModel(
            "the model has no compressible layer (Linear or Conv1d/Conv2d weights)",
            field="model",
        )
    if len(geoms) > max_layers:
        raise InvalidModel(
            f"the model has {len(geoms)} compressible layers; at most {max_layers} are accepted",
            field="model",
            value=len(geoms),
        )
    # The job's own arithmetic, on a state that holds just what it reads.
    state = JobState(spec=JobSpec(model=src.label, data="", budget=Budget(ratio=1.0)))
    state.src, state.geoms = src, geoms
    state.other_bytes = other_stored_bytes(model, geoms)
    state.header_reserve = header_reserve(state)
    floor, _ = smallest_bytes(state)
    return {
        "layers": [{"name": g.name, "kind": g.kind, "shape": list(g.shape)} for g in geoms],
        "dense_bytes": dense_checkpoint_bytes(model),
        "smallest_bytes": floor,
    }


def dataset_summary(record: uploads.DatasetRecord, artifact_dir: Path) -> dict[str, Any]:
    from slimline.models.datasets import load_dataset

    data = load_dataset(str(artifact_dir / record.path))
    return {
        "task": data.task,
        "train": len(data.x_train),
        "val": len(data.x_val),
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "dtype": str(data.x_train.dtype).removeprefix("torch."),
    }


def _error(exc: Exception, what: str) -> dict[str, Any]:
    if isinstance(exc, SlimlineError):
        return exc.to_dict()
    code = "invalid_model" if what == "model" else "invalid_data"
    return {"code": code, "message": f"the {what} could not be read: {type(exc).__name__}: {exc}"}


def inspect_upload(settings: Settings, engine: Engine, kind: str, record_id: str) -> str:
    """Inspect upload ``record_id`` of ``kind`` ("model" | "dataset"); returns its status."""
    if kind not in KINDS:
        raise InvalidInput(f"upload kind {kind!r}: expected one of {KINDS}", field="kind")
    artifact_dir = Path(settings.artifact_dir)
    with session_scope(engine) as s:
        record: uploads.ModelRecord | uploads.DatasetRecord = (
            uploads.load_model_record(s, record_id)
            if kind == "model"
            else uploads.load_dataset_record(s, record_id)
        )
    if record.status != "pending":
        return record.status  # a duplicate message
    facts: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    try:
        if isinstance(record, uploads.ModelRecord):
            cap = MAX_EXPANSION * settings.max_upload_bytes
            facts = model_facts(record, artifact_dir, settings.max_layers, cap)
        else:
            facts = {"summary": dataset_summary(record, artifact_dir)}
    except Unavailable:
        raise
    except Exception as exc:  # the upload is bad: say why, on the record
        error = _error(exc, kind)
        log.info("%s %s is invalid: %s", kind, record_id, error["message"])
    try:
        with session_scope(engine) as s:
            if kind == "model":
                settled: Any = (
                    uploads.mark_model_ready(s, record_id, **facts)
                    if facts is not None
                    else uploads.mark_model_invalid(s, record_id, error or {})
                )
            else:
                settled = (
                    uploads.mark_dataset_ready(s, record_id, **facts)
                    if facts is not None
                    else uploads.mark_dataset_invalid(s, record_id, error or {})
                )
    except Conflict:  # settled meanwhile by a duplicate message
        return "settled"
    return str(settled.status)
