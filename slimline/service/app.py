"""The FastAPI app factory. ``uvicorn slimline.service.app:create_app --factory`` serves it.

Nothing is created at import: settings are read (or passed in) when the app is built, and the
database engine and the broker client are made in the lifespan and closed with it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

import slimline
from slimline.config import Settings, get_settings
from slimline.db.session import make_engine
from slimline.enqueue import CeleryEnqueuer, Enqueuer
from slimline.service.errors import install_error_handler
from slimline.service.routes import (
    artifacts,
    dashboard,
    datasets,
    health,
    job_report,
    jobs,
    models,
    session,
)
from slimline.service.signin import SigninTokens
from slimline.service.store import ArtifactStore


def create_app(settings: Settings | None = None, *, enqueuer: Enqueuer | None = None) -> FastAPI:
    """The API for ``settings`` (default: from the environment). ``enqueuer`` replaces the
    Celery client (tests); by default one is built from ``settings.broker_url``."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url)
        sender = enqueuer or CeleryEnqueuer(settings)
        ArtifactStore(settings.artifact_dir).ensure()
        app.state.settings, app.state.engine, app.state.enqueuer = settings, engine, sender
        try:
            yield
        finally:
            if enqueuer is None:
                sender.close()
            engine.dispose()

    app = FastAPI(
        title="slimline",
        version=slimline.__version__,
        summary="Compress PyTorch models into a byte budget.",
        lifespan=lifespan,
    )
    install_error_handler(app)
    app.state.signin_tokens = SigninTokens()  # `slimline serve` issues its sign-in link here
    for module in (health, models, datasets, jobs, job_report, artifacts, session, dashboard):
        app.include_router(module.router)
    app.mount("/static", dashboard.static_files(), name="static")
    return app
