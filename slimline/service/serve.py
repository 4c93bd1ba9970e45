"""``slimline serve``: the embedded default on one machine — API, dashboard and one worker.

With no configuration: SQLite and kombu's filesystem broker under ``data_dir`` (no server
needed), the same tasks and code path as the deployment. The API runs in this process (no
torch here); the worker is a child ``celery worker`` process (`worker.embedded`), and a sweep
timer re-queues jobs of a dead worker and re-sends jobs the broker lost (the filesystem broker
cannot redeliver). On first start a local tenant and key are created and the key is written to
``data_dir/local.key`` (mode 0600) for the CLI; later starts reuse it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from slimline import jobs
from slimline.config import Settings
from slimline.db.migrate import upgrade
from slimline.db.session import make_engine, session_scope

LOCAL_TENANT = "local"
log = logging.getLogger(__name__)


def local_key_path(settings: Settings) -> Path:
    return Path(settings.data_dir) / "local.key"


def ensure_local_key(settings: Settings) -> str:
    """The local tenant's key, created (and stored for the CLI) on first start."""
    path = local_key_path(settings)
    engine = make_engine(settings.database_url)
    try:
        if path.is_file():
            key = path.read_text().strip()
            with session_scope(engine) as s:
                if jobs.authenticate(s, key) is not None:
                    return key
        with session_scope(engine) as s:
            tenant = jobs.find_tenant(s, LOCAL_TENANT) or jobs.create_tenant(s, LOCAL_TENANT)
            key, _ = jobs.create_api_key(s, tenant.id)
    finally:
        engine.dispose()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Migrate, start the worker and the sweeper, then serve until interrupted."""
    import uvicorn

    from slimline.enqueue import CeleryEnqueuer
    from slimline.service.app import create_app
    from slimline.worker.embedded import EmbeddedWorker
    from slimline.worker.sweeper import SweepTimer

    upgrade(settings.database_url)
    key = ensure_local_key(settings)
    worker = EmbeddedWorker(settings).start()
    engine = make_engine(settings.database_url)
    enqueuer = CeleryEnqueuer(settings)
    timer = SweepTimer.from_settings(
        lambda job_id: enqueuer.send("slimline.run_job", job_id), settings, engine
    )
    timer.start()
    app = create_app(settings, enqueuer=enqueuer)
    signin = app.state.signin_tokens.issue(key)  # one-time; in the fragment, so in no log
    print(f"slimline: serving on http://{host}:{port}/  (API docs: /docs)", flush=True)
    print(f"slimline: dashboard http://{host}:{port}/signin#token={signin}", flush=True)
    print(f"slimline: local API key in {local_key_path(settings)}", flush=True)
    print(f"slimline: worker log in {worker.log_path}", flush=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        timer.stop()
        worker.stop()
        enqueuer.close()
        engine.dispose()
