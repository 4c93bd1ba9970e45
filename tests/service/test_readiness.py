"""Readiness against dead dependencies, the no-torch rule, the method list, the key command."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from slimline import jobs
from slimline.config import Settings
from slimline.db.session import make_engine, session_scope
from slimline.schemas import METHODS
from slimline.service.app import create_app
from slimline.service.keys import create_key_command
from tests.service.conftest import Api, auth

CLOSED = "127.0.0.1:1"  # nothing listens on port 1


def test_readyz_reports_each_dependency(api: Api) -> None:
    r = api.client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"] == {"database": "ok", "broker": "ok"}


def test_database_down_is_503_from_readyz_and_from_writes(tmp_path: Path, redis_url: str) -> None:
    settings = Settings(
        data_dir=tmp_path, database_url=f"postgresql://postgres@{CLOSED}/x", broker_url=redis_url
    )
    with TestClient(create_app(settings)) as client:
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["code"] == "unavailable"
        assert "database" in r.json()["message"] and "broker" not in r.json()["message"]
        assert client.get("/healthz").status_code == 200  # the process itself is alive
        body = {"model": "00000000-0000-0000-0000-000000000000", "data": "digits", "budget": "8x"}
        w = client.post("/v1/jobs", headers=auth("sl_x"), json=body)
        assert w.status_code == 503 and "database unavailable" in w.json()["message"]
        w = client.get("/v1/jobs", headers=auth("sl_abc"))
        assert w.status_code == 503 and w.json()["code"] == "unavailable"


def test_broker_down_is_503_from_readyz(tmp_path: Path, sqlite_engine: Engine) -> None:
    url = sqlite_engine.url.render_as_string(hide_password=False)
    settings = Settings(data_dir=tmp_path, database_url=url, broker_url=f"redis://{CLOSED}/0")
    with TestClient(create_app(settings)) as client:
        r = client.get("/readyz")
        assert r.status_code == 503 and "broker" in r.json()["message"]


def test_the_api_never_imports_torch(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        from fastapi.testclient import TestClient
        from slimline.config import Settings
        from slimline.service.app import create_app
        import slimline.schemas, slimline.enqueue, slimline.service.keys
        app = create_app(Settings(data_dir={str(tmp_path)!r}))
        with TestClient(app) as c:
            assert c.get("/healthz").status_code == 200
            assert c.get("/openapi.json").status_code == 200
        leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
        assert not leaked, leaked
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_method_list_matches_the_registry() -> None:
    # In a separate process: the registry imports torch, this test process must stay clean.
    code = "import json; from slimline.search.methods import method_names; "
    code += "print(json.dumps(method_names()))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert sorted(json.loads(out.stdout)) == sorted(METHODS)


def test_keys_create_command(tmp_path: Path, sqlite_engine: Engine) -> None:
    url = sqlite_engine.url.render_as_string(hide_password=False)
    settings = Settings(data_dir=tmp_path, database_url=url)
    name = f"acme-{tmp_path.name}"
    first = create_key_command(settings, name)
    second = create_key_command(settings, name)
    assert first != second and first.startswith("sl_")
    engine = make_engine(url)
    try:
        with session_scope(engine) as s:
            a, b = jobs.authenticate(s, first), jobs.authenticate(s, second)
            assert a is not None and b is not None and a.id == b.id and a.name == name
    finally:
        engine.dispose()


def test_broker_down_after_commit(api: Api) -> None:
    """An upload whose inspection cannot be queued is 503 (uploading again repairs it); a job
    is accepted anyway: its row is committed and the sweeper sends it later."""
    from slimline.enqueue import INSPECT_UPLOAD, RUN_JOB, RecordingEnqueuer
    from tests.service.conftest import pt2_bytes

    sender = RecordingEnqueuer()
    _, key = api.tenant()
    h = auth(key)
    with TestClient(create_app(api.settings, enqueuer=sender)) as client:
        sender.down = True
        r = client.post("/v1/models", headers=h, files={"file": ("m.pt2", pt2_bytes("down"))})
        assert r.status_code == 503 and "upload the same file again" in r.json()["message"]
        job_body = {"data": "digits", "budget": "8x"}
        assert client.get("/readyz").status_code == 503
        sender.down = False
        again = client.post("/v1/models", headers=h, files={"file": ("m.pt2", pt2_bytes("down"))})
        assert again.status_code == 200 and again.json()["status"] == "pending"
        model = again.json()["id"]
        assert sender.sent == [(INSPECT_UPLOAD, ("model", model))]
        sender.down = True
        job = client.post("/v1/jobs", headers=h, json={"model": model, **job_body})
        assert job.status_code == 201 and job.json()["status"] == "queued"
        assert [t for t, _ in sender.sent] == [INSPECT_UPLOAD]  # nothing sent, row committed
        assert RUN_JOB not in [t for t, _ in sender.sent]
