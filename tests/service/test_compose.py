"""docker-compose.yml cannot run here (no Docker engine): check it against the code instead."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import yaml

from slimline.config import Settings
from slimline.db.session import normalize_url

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"
PREFIX = "SLIMLINE_"


def load() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


def command(service: dict[str, Any]) -> list[str]:
    cmd = service["command"]
    return cmd if isinstance(cmd, list) else shlex.split(cmd)


def test_services_and_commands() -> None:
    services = load()["services"]
    assert set(services) == {"postgres", "redis", "migrate", "api", "worker"}
    assert command(services["migrate"]) == ["python", "-m", "slimline.db.migrate", "--wait", "60"]
    api = command(services["api"])
    assert api[:3] == ["uvicorn", "slimline.service.app:create_app", "--factory"]
    assert command(services["worker"])[:2] == ["slimline", "worker"]
    assert services["migrate"]["restart"] == "no"  # one-shot


def test_environment_names_are_settings_fields() -> None:
    services = load()["services"]
    fields = set(Settings.model_fields)
    for name in ("migrate", "api", "worker"):
        env = services[name]["environment"]
        assert isinstance(env, dict), name
        names = {k.removeprefix(PREFIX).lower() for k in env if k.startswith(PREFIX)}
        assert names <= fields, (name, names - fields)
        assert {"database_url", "broker_url", "artifact_dir"} <= names
        # What the environment gives is what Settings will parse.
        settings = Settings(**{k.removeprefix(PREFIX).lower(): v for k, v in env.items()})
        db = normalize_url(settings.database_url.replace("${POSTGRES_PASSWORD:-slimline}", "pw"))
        assert (db.drivername, db.host, db.database) == (
            "postgresql+psycopg",
            "postgres",
            "slimline",
        )
        assert settings.broker_url.startswith("redis://redis:6379/")
        assert settings.filesystem_broker_dir is None
    env = services["api"]["environment"]
    assert env == services["worker"]["environment"] == services["migrate"]["environment"]


def test_volumes_dependencies_health_and_gpu() -> None:
    doc = load()
    services = doc["services"]
    artifact_dir = services["api"]["environment"]["SLIMLINE_ARTIFACT_DIR"]
    for name in ("api", "worker"):
        mounts = {m.split(":")[1]: m.split(":")[0] for m in services[name]["volumes"]}
        assert mounts.get(artifact_dir) == "artifacts", name  # the same shared volume
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    named = {m.split(":")[0] for s in services.values() for m in s.get("volumes", [])}
    assert named <= set(doc["volumes"])
    for name in ("postgres", "redis", "api"):
        assert services[name]["healthcheck"]["test"], name
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    (gpu,) = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["capabilities"] == ["gpu"] and gpu["count"] == 1
    assert "deploy" not in services["api"]  # the API never needs a GPU
    postgres_env = services["postgres"]["environment"]
    assert postgres_env["POSTGRES_DB"] == "slimline" and postgres_env["POSTGRES_USER"] == "slimline"


def test_the_worker_runs_one_job_at_a_time() -> None:
    # Concurrency comes from the worker's Celery app (the compose command adds no flag).
    from slimline.worker.celery_app import create_app

    env = load()["services"]["worker"]["environment"]
    settings = Settings(**{k.removeprefix(PREFIX).lower(): v for k, v in env.items()})
    conf = create_app(settings).conf
    assert (conf.worker_concurrency, conf.worker_prefetch_multiplier) == (1, 1)
    assert conf.task_acks_late is True
