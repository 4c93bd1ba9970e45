"""Soak: N tenants submit M small jobs each through the REST API while jobs are cancelled and
worker processes are killed at random; at the end every job must be in a final state, none may
have run twice to completion, every succeeded job's checkpoint must verify, and no tenant may
have seen another's data.

    python -m bench.soak                                  # 3 tenants x 4 jobs, 2 workers
    python -m bench.soak --tenants 4 --jobs 5 --workers 3 --kills 4 --cancel-rate 0.2

Bounded in count (``--tenants`` x ``--jobs``) and in time (``--time-limit``: when it is up the
run stops and whatever is not final counts as lost). Loopback only: a private ``redis-server``
on a free port (no persistence), a fresh database on the local Postgres
(``SLIMLINE_SOAK_POSTGRES``, an admin URL; dropped at the end), the API (uvicorn) on
127.0.0.1, ``celery worker`` child processes with one thread each, and a sweep timer in this
process standing in for celery beat. Jobs are digits-cnn on the named ``digits`` data, method
uniform, ``--steps`` fine-tuning steps, from dense weights trained here for a few steps.

What is counted (printed, and written to ``bench/results/soak-<date>.json``):

- submitted, completed (succeeded), cancelled, failed;
- killed (jobs whose worker was killed under them) and killed-and-recovered (of those, the
  ones that still reached a final state other than failed, on another worker);
- lost: jobs not in a final state at the end, or failed for an infrastructure reason (must be 0);
- duplicated: jobs with more than one "succeeded" transition, or more than one checkpoint or
  report artifact (must be 0);
- verified: succeeded jobs whose checkpoint, downloaded through the API, hashes to the ETag and
  to the recorded sha256, with the recorded size;
- isolation violations: a tenant's listing holding another's job, or another tenant's job,
  events, artifacts or model answering anything but 404 (must be 0).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
PG_ADMIN = os.environ.get("SLIMLINE_SOAK_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
TERMINAL = ("succeeded", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what: str, check: Any, timeout_s: float, every_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(every_s)


# --- the pieces ---------------------------------------------------------------------------------


class Redis:
    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise SystemExit("redis-server not found on PATH")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        log = open(workdir / "redis.log", "wb")  # noqa: SIM115 (the child keeps it)
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir)],
            stdout=log, stderr=log,
        )  # fmt: skip
        log.close()
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)

        def up() -> bool:
            with contextlib.suppress(redis.RedisError):
                return bool(client.ping())
            return False

        wait_until("redis-server", up, 30)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)


class Worker:
    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.name = f"soak-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
        self.log_path = workdir / f"{self.name.split('@')[0]}.log"
        argv = [
            sys.executable, "-m", "celery", "-A", "slimline.worker.celery_app:app", "worker",
            "--pool=solo", "-c", "1", "-n", self.name, "--loglevel=INFO", "--without-gossip",
            "--without-mingle",
        ]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=log, stderr=log)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


class Api:
    """The API app under uvicorn on a loopback port, in a thread of this process."""

    def __init__(self, settings: Any) -> None:
        import uvicorn

        from slimline.service.app import create_app

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until("the API", self._healthy, 60)

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def train_dense(path: Path, steps: int) -> None:
    """Dense digits-cnn weights, trained for a few steps (one thread)."""
    import torch

    from slimline.models.datasets import load_dataset
    from slimline.models.zoo import build_model, save_zoo_weights
    from slimline.search.training import TrainConfig, train

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model("digits-cnn", {})
    train(
        model,
        load_dataset("digits"),
        TrainConfig(epochs=10, lr=3e-3, batch_size=64, max_steps=steps, seed=0),
    )
    save_zoo_weights(model, path)


# --- the run ------------------------------------------------------------------------------------


@dataclass
class Tenant:
    name: str
    id: str
    key: str
    model_id: str = ""
    jobs: list[str] = field(default_factory=list)

    @property
    def h(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@dataclass
class Tally:
    killed_jobs: set[str] = field(default_factory=set)
    kills: int = 0
    cancel_requests: int = 0
    cancel_refused: int = 0  # 409: the job had already finished
    isolation_checks: int = 0
    isolation_violations: list[str] = field(default_factory=list)


def check_isolation(client: httpx.Client, tenants: list[Tenant], tally: Tally) -> None:
    """Each tenant's listing holds only its jobs; another tenant's things answer 404."""
    for t in tenants:
        listed: list[str] = []
        cursor = None
        while True:
            params = {"limit": 100, **({"cursor": cursor} if cursor else {})}
            r = client.get("/v1/jobs", headers=t.h, params=params)
            r.raise_for_status()
            body = r.json()
            items = body["items"] if isinstance(body, dict) else body
            listed += [j["id"] for j in items]
            cursor = body.get("next_cursor") if isinstance(body, dict) else None
            if not cursor:
                break
        tally.isolation_checks += 1
        foreign = set(listed) - set(t.jobs)
        if foreign:
            tally.isolation_violations.append(f"{t.name} lists jobs not its own: {foreign}")
        for other in tenants:
            if other is t or not other.jobs:
                continue
            job_id = random.choice(other.jobs)
            for path in (
                f"/v1/jobs/{job_id}",
                f"/v1/jobs/{job_id}/events",
                f"/v1/jobs/{job_id}/artifacts",
                f"/v1/models/{other.model_id}",
            ):
                tally.isolation_checks += 1
                code = client.get(path, headers=t.h).status_code
                if code != 404:
                    tally.isolation_violations.append(f"{t.name} GET {path}: {code}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from slimline import jobs
    from slimline.config import Settings
    from slimline.db.migrate import upgrade
    from slimline.db.session import make_engine, normalize_url, session_scope
    from slimline.worker.celery_app import create_app as celery_app
    from slimline.worker.sweeper import SweepTimer, send_run_job

    rng = random.Random(args.seed)
    random.seed(args.seed)
    started = time.monotonic()
    deadline = started + args.time_limit
    workdir = Path(tempfile.mkdtemp(prefix="slimline-soak-"))
    admin = normalize_url(PG_ADMIN)
    db_name = f"slimline_soak_{uuid.uuid4().hex[:10]}"
    import psycopg

    conninfo = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as pconn:
        pconn.execute(f'CREATE DATABASE "{db_name}"')
    db_url = admin.set(database=db_name).render_as_string(hide_password=False)
    redis_server = Redis(workdir)
    workers: list[Worker] = []
    api: Api | None = None
    sweeper = None
    engine = None
    try:
        upgrade(db_url)
        engine = make_engine(db_url)
        settings = Settings(
            data_dir=workdir,
            database_url=db_url,
            broker_url=redis_server.url,
            heartbeat_s=0.5,
            stale_after_s=4.0,
            requeue_after_s=8.0,
            sweep_interval_s=1.0,
            worker_write_backoff_s=0.1,
            worker_write_max_wait_s=1.0,
            worker_write_attempts=30,
        )
        weights = workdir / "digits-cnn.safetensors"
        print(f"soak: training dense digits-cnn weights ({args.dense_steps} steps)", flush=True)
        train_dense(weights, args.dense_steps)

        env = {k: v for k, v in os.environ.items() if not k.startswith("SLIMLINE_")}
        env.update(
            SLIMLINE_DATA_DIR=str(workdir),
            SLIMLINE_DATABASE_URL=db_url,
            SLIMLINE_BROKER_URL=redis_server.url,
            SLIMLINE_ARTIFACT_DIR=str(settings.artifact_dir),
            SLIMLINE_HEARTBEAT_S=str(settings.heartbeat_s),
            SLIMLINE_STALE_AFTER_S=str(settings.stale_after_s),
            SLIMLINE_REQUEUE_AFTER_S=str(settings.requeue_after_s),
            SLIMLINE_WORKER_WRITE_BACKOFF_S="0.1",
            SLIMLINE_WORKER_WRITE_MAX_WAIT_S="1.0",
            SLIMLINE_WORKER_WRITE_ATTEMPTS="30",
            SLIMLINE_CACHE_DIR=str(workdir / "cache"),
            OMP_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
            PYTHONPATH=str(REPO),
        )
        workers = [Worker(env, workdir) for _ in range(args.workers)]
        app = celery_app(settings)
        sweeper = SweepTimer.from_settings(lambda j: send_run_job(app, j), settings, engine)
        sweeper.start()
        api = Api(settings)
        client = httpx.Client(base_url=api.url, timeout=60)

        tenants: list[Tenant] = []
        with session_scope(engine) as s:
            for i in range(args.tenants):
                rec = jobs.create_tenant(s, f"soak-{i}-{uuid.uuid4().hex[:6]}")
                key, _ = jobs.create_api_key(s, rec.id)
                tenants.append(Tenant(rec.name, rec.id, key))
        blob = weights.read_bytes()
        for t in tenants:
            r = client.post(
                "/v1/models",
                headers=t.h,
                data={"name": "digits-cnn", "config": "{}"},
                files={"file": ("digits-cnn.safetensors", blob, "application/octet-stream")},
            )
            r.raise_for_status()
            t.model_id = r.json()["id"]

        # Submit in a shuffled order, with a duplicate POST now and then (same key: one job).
        order = [t for t in tenants for _ in range(args.jobs)]
        rng.shuffle(order)
        duplicates_sent = 0
        for n, t in enumerate(order):
            body = {
                "model": t.model_id, "data": "digits", "budget": "16x", "method": "uniform",
                "seed": rng.randrange(1000), "finetune": {"max_steps": args.steps},
            }  # fmt: skip
            idem = {"Idempotency-Key": f"soak-{n}"}
            r = client.post("/v1/jobs", headers={**t.h, **idem}, json=body)
            r.raise_for_status()
            t.jobs.append(r.json()["id"])
            if rng.random() < 0.2:
                again = client.post("/v1/jobs", headers={**t.h, **idem}, json=body)
                duplicates_sent += 1
                assert again.json()["id"] == t.jobs[-1], "idempotency key made a second job"
        all_jobs = {j: t for t in tenants for j in t.jobs}
        print(f"soak: submitted {len(all_jobs)} jobs for {len(tenants)} tenants", flush=True)

        # Chaos until every job is final (or the time is up).
        tally = Tally()
        to_cancel = {j for j in all_jobs if rng.random() < args.cancel_rate}
        cancel_after = {j: time.monotonic() + rng.uniform(0, args.cancel_window) for j in to_cancel}
        kill_budget = args.kills
        next_kill = time.monotonic() + rng.uniform(2, args.kill_every)
        next_probe = time.monotonic()

        def rows() -> dict[str, tuple[str, str | None, str | None]]:
            assert engine is not None
            with engine.connect() as conn:
                got = conn.execute(text("SELECT id, status, stage, worker FROM jobs")).all()
            return {r.id: (r.status, r.stage, r.worker) for r in got}

        while time.monotonic() < deadline:
            now_rows = rows()
            if all(now_rows[j][0] in TERMINAL for j in all_jobs):
                break
            now = time.monotonic()
            for j in sorted(to_cancel):
                if now >= cancel_after[j]:
                    to_cancel.discard(j)
                    r = client.post(f"/v1/jobs/{j}/cancel", headers=all_jobs[j].h)
                    tally.cancel_requests += 1
                    if r.status_code == 409:
                        tally.cancel_refused += 1
                    elif r.status_code != 200:
                        raise RuntimeError(f"cancel {j}: {r.status_code} {r.text}")
            if kill_budget > 0 and now >= next_kill:
                running = [
                    (j, w) for j, (st, _, w) in now_rows.items()
                    if st == "running" and w and j not in tally.killed_jobs
                ]  # fmt: skip
                live = {w.proc.pid: w for w in workers if w.alive()}
                candidates = [(j, live[int(w.rsplit(":", 1)[1])]) for j, w in running
                              if int(w.rsplit(":", 1)[1]) in live]  # fmt: skip
                if candidates:
                    job_id, victim = rng.choice(candidates)
                    victim.kill9()
                    tally.kills += 1
                    tally.killed_jobs.add(job_id)
                    kill_budget -= 1
                    workers.append(Worker(env, workdir))
                    stage = now_rows[job_id][1]
                    print(f"soak: killed the worker of job {job_id[:8]} in {stage}", flush=True)
                next_kill = now + rng.uniform(2, args.kill_every)
            if now >= next_probe:
                check_isolation(client, tenants, tally)
                next_probe = now + 5.0
            time.sleep(0.2)

        # The end: count, check every job's records and every succeeded job's checkpoint.
        check_isolation(client, tenants, tally)
        final = rows()
        with engine.connect() as conn:
            succeeded_events: dict[str, int] = dict(
                conn.execute(
                    text(
                        "SELECT job_id, count(*) FROM job_events WHERE kind = 'status' "
                        "AND data->>'status' = 'succeeded' GROUP BY job_id"
                    )
                ).all()
            )
            art_counts = conn.execute(
                text("SELECT job_id, kind, count(*) AS n FROM artifacts GROUP BY job_id, kind")
            ).all()
            rows_attempts = conn.execute(text("SELECT id, attempts FROM jobs")).all()
            attempts: dict[str, int] = {r.id: r.attempts for r in rows_attempts}
            errors: dict[str, Any] = dict(conn.execute(text("SELECT id, error FROM jobs")).all())
        duplicated = {j for j, n in succeeded_events.items() if n > 1}
        duplicated |= {r.job_id for r in art_counts if r.n > 1}
        status = {j: final[j][0] for j in all_jobs}
        not_final = [j for j, st in status.items() if st not in TERMINAL]
        failed = [j for j, st in status.items() if st == "failed"]
        verified, unverified = 0, []
        for j, t in all_jobs.items():
            if status[j] != "succeeded":
                continue
            arts = client.get(f"/v1/jobs/{j}/artifacts", headers=t.h).json()
            ckpt = [a for a in arts if a["kind"] == "checkpoint"]
            if len(ckpt) != 1:
                unverified.append(j)
                continue
            r = client.get(ckpt[0]["url"], headers=t.h)
            sha = hashlib.sha256(r.content).hexdigest()
            ok = (
                r.status_code == 200
                and sha == ckpt[0]["sha256"]
                and r.headers.get("etag") == f'"{sha}"'
                and len(r.content) == ckpt[0]["bytes"]
            )
            if ok:
                verified += 1
            else:
                unverified.append(j)
        killed = sorted(tally.killed_jobs)
        recovered = [j for j in killed if status[j] in ("succeeded", "cancelled")]
        result = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "params": {
                "tenants": args.tenants,
                "jobs_per_tenant": args.jobs,
                "workers": args.workers,
                "kills": args.kills,
                "cancel_rate": args.cancel_rate,
                "steps": args.steps,
                "seed": args.seed,
                "time_limit_s": args.time_limit,
            },  # fmt: skip
            "submitted": len(all_jobs),
            "duplicate_posts": duplicates_sent,
            "completed": sum(1 for st in status.values() if st == "succeeded"),
            "cancelled": sum(1 for st in status.values() if st == "cancelled"),
            "failed": len(failed),
            "cancel_requests": tally.cancel_requests,
            "cancel_refused_already_finished": tally.cancel_refused,
            "worker_kills": tally.kills,
            "killed": len(killed),
            "killed_and_recovered": len(recovered),
            "killed_attempts": {j[:8]: attempts[j] for j in killed},
            "lost": len(not_final)
            + sum(1 for j in failed if (errors[j] or {}).get("code") == "worker_lost"),
            "duplicated": len(duplicated),
            "verified": verified,
            "unverified": len(unverified),
            "isolation_checks": tally.isolation_checks,
            "isolation_violations": tally.isolation_violations,
            "failed_errors": {j[:8]: errors[j] for j in failed},
            "seconds": round(time.monotonic() - started, 1),
        }
        client.close()
        return result
    finally:
        if sweeper is not None:
            sweeper.stop()
        if api is not None:
            api.stop()
        for w in workers:
            if w.alive():
                w.proc.terminate()
        for w in workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.proc.wait(timeout=30)
            if w.alive():
                w.kill9()
        redis_server.stop()
        if engine is not None:
            engine.dispose()
        with psycopg.connect(conninfo, autocommit=True) as pconn:
            pconn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"soak: logs kept in {workdir}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tenants", type=int, default=3)
    p.add_argument("--jobs", type=int, default=4, help="jobs per tenant")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--kills", type=int, default=3, help="worker kills, at most")
    p.add_argument("--kill-every", type=float, default=8.0, help="most seconds between kills")
    p.add_argument("--cancel-rate", type=float, default=0.25, help="share of jobs cancelled")
    p.add_argument("--cancel-window", type=float, default=30.0, help="cancel within (s)")
    p.add_argument("--steps", type=int, default=40, help="fine-tuning steps per job")
    p.add_argument("--dense-steps", type=int, default=150)
    p.add_argument("--time-limit", type=float, default=900.0, help="seconds, all in")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    p.add_argument("--out", type=Path, default=None, help="default bench/results/soak-<date>.json")
    args = p.parse_args(argv)
    result = run(args)
    out = args.out or RESULTS / f"soak-{datetime.now(UTC).date().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    for k in (
        "submitted", "completed", "cancelled", "failed", "killed", "killed_and_recovered",
        "lost", "duplicated", "verified", "unverified", "isolation_checks", "seconds",
    ):  # fmt: skip
        print(f"{k:>22}: {result[k]}")
    print(f"{'isolation_violations':>22}: {len(result['isolation_violations'])}")
    print(f"soak: written to {out}")
    ok = (
        result["lost"] == 0
        and result["duplicated"] == 0
        and result["unverified"] == 0
        and not result["isolation_violations"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
