"""Uploaded models and datasets (content-addressed per tenant), artifacts and stored scores."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine

from slimline import jobs
from slimline.db import artifacts, uploads
from slimline.db.session import session_scope
from slimline.errors import Conflict, InvalidInput, NotFound
from tests.db.conftest import SPEC, make_tenant

SHA = "ab" * 32


def test_same_bytes_give_the_same_model_per_tenant(engine: Engine) -> None:
    a, _ = make_tenant(engine)
    b, _ = make_tenant(engine)
    args: dict[str, Any] = dict(sha256=SHA, kind="pt2", filename="m.pt2", path="x/m.pt2", bytes=10)
    with session_scope(engine) as s:
        first, created = uploads.add_model(s, a.id, **args)
        again, created_again = uploads.add_model(s, a.id, **args)
        theirs, created_b = uploads.add_model(s, b.id, **args)
    assert created and not created_again and again == first
    assert created_b and theirs.id != first.id
    assert first.status == "pending" and first.layers is None
    with session_scope(engine) as s:
        ready = uploads.mark_model_ready(
            s, first.id, layers=[{"name": "fc1", "shape": (10, 4)}], dense_bytes=400,
            smallest_bytes=30,
        )  # fmt: skip
        assert ready.status == "ready" and ready.layers == [{"name": "fc1", "shape": [10, 4]}]
        assert uploads.get_model(s, a.id, first.id) == ready
        listed = [m.id for m in uploads.list_models(s, a.id)]
        assert first.id in listed and len(listed) == 2  # make_tenant uploaded one too
        with pytest.raises(NotFound):
            uploads.get_model(s, b.id, first.id)
        with pytest.raises(Conflict, match="already ready"):
            uploads.mark_model_invalid(s, first.id, {"code": "x", "message": "y"})
        with pytest.raises(InvalidInput):
            uploads.add_model(s, a.id, **{**args, "kind": "pickle"})


def test_dataset_lifecycle(engine: Engine) -> None:
    a, _ = make_tenant(engine)
    with session_scope(engine) as s:
        ds, created = uploads.add_dataset(s, a.id, sha256=SHA, filename="d.npz", path="d", bytes=5)
        bad = uploads.mark_dataset_invalid(s, ds.id, {"code": "invalid_data", "message": "no y"})
    assert created and bad.status == "invalid" and bad.error == {
        "code": "invalid_data", "message": "no y"}  # fmt: skip
    with session_scope(engine) as s:
        assert uploads.load_dataset_record(s, ds.id) == bad
        assert uploads.list_datasets(s, a.id) == [bad]


def test_artifacts_and_scores_belong_to_the_jobs_tenant(engine: Engine) -> None:
    a, model_id = make_tenant(engine)
    b, _ = make_tenant(engine)
    with session_scope(engine) as s:
        job, _ = jobs.create_job(s, a.id, SPEC, model_id=model_id)
        ckpt = artifacts.add_artifact(
            s, a.id, kind="checkpoint", path=f"{a.id}/{job.id}/model.safetensors", bytes=60000,
            sha256=SHA, job_id=job.id,
        )  # fmt: skip
        artifacts.add_artifact(s, a.id, kind="report", path="r.json", bytes=9, sha256=SHA,
                               job_id=job.id)  # fmt: skip
        artifacts.save_scores(s, job.id, {"layers": {"fc1": [1, 2]}})
        artifacts.save_scores(s, job.id, {"layers": {"fc1": [3]}})  # a re-run replaces them
    with session_scope(engine) as s:
        assert artifacts.get_artifact(s, a.id, ckpt.id) == ckpt
        assert [x.kind for x in artifacts.job_artifacts(s, a.id, job.id)] == [
            "checkpoint", "report"]  # fmt: skip
        assert artifacts.job_artifacts(s, a.id, job.id, kind="report")[0].path == "r.json"
        assert artifacts.get_scores(s, a.id, job.id) == {"layers": {"fc1": [3]}}
        for call in (
            lambda: artifacts.get_artifact(s, b.id, ckpt.id),
            lambda: artifacts.job_artifacts(s, b.id, job.id),
            lambda: artifacts.get_scores(s, b.id, job.id),
            lambda: artifacts.add_artifact(
                s, b.id, kind="report", path="p", bytes=1, sha256=SHA, job_id=job.id
            ),  # fmt: skip
        ):
            with pytest.raises(NotFound):
                call()
        for path in ("/etc/passwd", "../up", ""):
            with pytest.raises(InvalidInput):
                artifacts.add_artifact(s, a.id, kind="report", path=path, bytes=1, sha256=SHA)
